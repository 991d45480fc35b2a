//! Throwaway PostgreSQL (`wal_level=logical`) and Redis servers on free ports in temp dirs,
//! for tests, benchmarks and `walbust demo`. Never touches services already running on the
//! machine. When run as root, PostgreSQL runs as the `postgres` OS user (it refuses root).
//! Servers stop (and their directories are removed) on drop, also when a test panics.

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("PostgreSQL server binaries not found (looked in $WALBUST_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin); install them with `apt-get install -y postgresql`")]
    PgMissing,
    #[error("redis-server not found on PATH; install it with `apt-get install -y redis-server`")]
    RedisMissing,
    #[error("running as root, but there is no `postgres` OS user to run PostgreSQL as (PostgreSQL refuses root); install the postgresql package or run as another user")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0} did not become ready in time; its log ends with:\n{1}")]
    NotReady(String, String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1, never the same twice in this process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port == 0 {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

fn unique_dir(kind: &str) -> Result<PathBuf, HarnessError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("walbust-{kind}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// uid and gid of the `postgres` OS user.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn find_pg_bindir() -> Option<PathBuf> {
    let ok = |p: &Path| p.join("initdb").is_file() && p.join("postgres").is_file();
    if let Ok(dir) = std::env::var("WALBUST_PG_BINDIR") {
        let p = PathBuf::from(dir);
        if ok(&p) {
            return Some(p);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if ok(&p) {
            return Some(p);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, p)| ok(p))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Settings for a PostgreSQL instance.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Extra `-c name=value` settings.
    pub extra_conf: Vec<(String, String)>,
    /// Replaces pg_hba.conf when set.
    pub hba_lines: Option<Vec<String>>,
    /// Password for the `postgres` superuser (set after start).
    pub superuser_password: Option<String>,
}

/// A running throwaway PostgreSQL.
pub struct PgInstance {
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    options: PgOptions,
    running: bool,
}

impl PgInstance {
    pub fn start() -> Result<PgInstance, HarnessError> {
        PgInstance::start_with(PgOptions::default())
    }

    pub fn start_with(options: PgOptions) -> Result<PgInstance, HarnessError> {
        let bin = find_pg_bindir().ok_or(HarnessError::PgMissing)?;
        let run_as = if is_root() {
            Some(postgres_user().ok_or(HarnessError::NoPostgresUser)?)
        } else {
            None
        };
        let root = unique_dir("pg")?;
        let data = root.join("data");
        let socket = root.join("sock");
        std::fs::create_dir_all(&socket)?;
        if let Some((uid, gid)) = run_as {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid))?;
        }
        let mut pg = PgInstance {
            root,
            data,
            socket,
            bin,
            port: 0,
            run_as,
            options,
            running: false,
        };
        let out = pg
            .command("initdb")
            .args(["-D"])
            .arg(&pg.data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                what: "initdb".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        if let Some(lines) = &pg.options.hba_lines {
            std::fs::write(pg.data.join("pg_hba.conf"), lines.join("\n") + "\n")?;
        }
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port();
            match pg.start_server() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        // Some PostgreSQL builds restrict which libraries may be output plugins; allow the ones
        // walbust's tests and sample captures use.
        let restricted = pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'",
        )?;
        if restricted.trim() == "1" {
            pg.psql(
                "postgres",
                "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json; SELECT pg_reload_conf();",
            )?;
            // The reload is asynchronous: wait until new sessions see it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if pg.psql("postgres", "SHOW output_plugin_libraries")?.trim() == "pgoutput, test_decoding, wal2json" {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(pw) = pg.options.superuser_password.clone() {
            pg.psql(
                "postgres",
                &format!("ALTER USER postgres PASSWORD '{}'", pw.replace('\'', "''")),
            )?;
        }
        Ok(pg)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGPASSWORD").env("PGTZ", "UTC");
        cmd
    }

    fn start_server(&mut self) -> Result<(), HarnessError> {
        let mut settings = vec![
            ("listen_addresses".to_string(), "127.0.0.1".to_string()),
            ("unix_socket_directories".into(), self.socket.display().to_string()),
            ("wal_level".into(), "logical".into()),
            ("max_wal_senders".into(), "20".into()),
            ("max_replication_slots".into(), "20".into()),
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("shared_buffers".into(), "64MB".into()),
            ("max_connections".into(), "50".into()),
            ("timezone".into(), "UTC".into()),
            ("log_min_messages".into(), "warning".into()),
        ];
        settings.extend(self.options.extra_conf.iter().cloned());
        let mut opts = format!("-p {}", self.port);
        for (k, v) in &settings {
            opts.push_str(&format!(" -c {k}={}", shell_quote(v)));
        }
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &opts, "start"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(HarnessError::NotReady(
                format!("PostgreSQL on port {}", self.port),
                log_tail(&self.log_path()),
            ));
        }
        self.running = true;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::NotReady(
            format!("PostgreSQL on port {}", self.port),
            log_tail(&self.log_path()),
        ))
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn socket_dir(&self) -> &Path {
        &self.socket
    }
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
    pub fn superuser(&self) -> &str {
        "postgres"
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname` (with the password when one is set).
    pub fn url(&self, dbname: &str) -> String {
        match &self.options.superuser_password {
            Some(pw) => format!("postgres://postgres:{pw}@127.0.0.1:{}/{dbname}", self.port),
            None => format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port),
        }
    }

    pub fn conn_string(&self, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={dbname}", self.port)
    }

    pub fn create_database(&self, name: &str) -> Result<(), HarnessError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )
        .map(|_| ())
    }

    fn psql_command(&self, dbname: &str) -> Command {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h"])
            .arg(&self.socket)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", dbname]);
        cmd
    }

    /// Runs SQL through psql (unaligned, tuples only) and returns its output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, HarnessError> {
        let mut child = self
            .psql_command(dbname)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                what: "psql".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn psql_file(&self, dbname: &str, path: &Path) -> Result<String, HarnessError> {
        let sql = std::fs::read_to_string(path)?;
        self.psql(dbname, &sql)
    }

    /// Applies every `*.sql` file of `dir` in name order (e.g. the repository's `migrations/`).
    pub fn apply_migrations(&self, dbname: &str, dir: &Path) -> Result<(), HarnessError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        for file in files {
            self.psql_file(dbname, &file)?;
        }
        Ok(())
    }

    /// Restarts on the same port: `fast` shuts down cleanly, otherwise `immediate` (crash-like).
    pub fn restart(&mut self, fast: bool) -> Result<(), HarnessError> {
        self.stop_server(if fast { "fast" } else { "immediate" });
        self.start_server()
    }

    /// Reloads the configuration (e.g. after editing pg_hba.conf).
    pub fn reload(&self) -> Result<(), HarnessError> {
        self.psql("postgres", "SELECT pg_reload_conf()").map(|_| ())
    }

    fn stop_server(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let stopped = self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-D"])
            .arg(&self.data)
            .args(["-m", mode, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped && mode != "immediate" {
            // A fast shutdown waits for walsenders to be acknowledged; don't wait forever.
            let _ = self
                .command("pg_ctl")
                .args(["-w", "-t", "30", "-D"])
                .arg(&self.data)
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.running = false;
    }

    /// Stops the server and removes its directory. Idempotent.
    pub fn stop(&mut self) {
        self.stop_server("immediate");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shell_quote(v: &str) -> String {
    if v.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:".contains(c)) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// A running throwaway redis-server.
pub struct RedisInstance {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl RedisInstance {
    pub fn start() -> Result<RedisInstance, HarnessError> {
        RedisInstance::start_with_args(&[])
    }

    /// With extra redis-server arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with_args(extra_args: &[&str]) -> Result<RedisInstance, HarnessError> {
        let dir = unique_dir("redis")?;
        let mut redis = RedisInstance {
            dir,
            port: 0,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        let mut last = None;
        for _ in 0..5 {
            redis.port = free_port();
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e @ HarnessError::RedisMissing) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::RedisMissing))
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => HarnessError::RedisMissing,
                _ => HarnessError::Io(e),
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(HarnessError::NotReady(
            format!("redis-server on port {}", self.port),
            log_tail(&log),
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the server but keeps its port and directory, for [`RedisInstance::restart`]
    /// (simulates an outage).
    pub fn stop_keep_port(&mut self) {
        self.kill();
    }

    /// Kills and starts again on the same port (with an empty dataset).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisInstance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A throwaway Redis Cluster of `n` primaries (no replicas), created with `redis-cli --cluster`.
pub struct RedisCluster {
    pub nodes: Vec<RedisInstance>,
}

impl RedisCluster {
    pub fn start(n: usize) -> Result<RedisCluster, HarnessError> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(RedisInstance::start_with_args(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])?);
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| HarnessError::Command {
                what: "redis-cli --cluster create".into(),
                detail: format!("{e}; install redis-tools"),
            })?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                what: "redis-cli --cluster create".into(),
                detail: String::from_utf8_lossy(&out.stdout).into_owned(),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port().to_string(), "cluster", "info"])
                    .output()?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(HarnessError::NotReady(
                        "redis cluster".into(),
                        String::from_utf8_lossy(&info.stdout).into_owned(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(RedisCluster { nodes })
    }

    /// Seed URLs, comma-separated (walbust's cluster target syntax).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}

/// Test certificates made with `openssl`: a CA and a server certificate it signed for
/// `subject_alt_name` (e.g. `IP:127.0.0.1` or `DNS:db.internal`). Returns the paths of
/// (ca.crt, server.crt, server.key) inside `dir`.
pub fn make_test_certs(dir: &Path, subject_alt_name: &str) -> Result<(PathBuf, PathBuf, PathBuf), HarnessError> {
    let run = |args: &[&str]| -> Result<(), HarnessError> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| HarnessError::Command {
                what: "openssl".into(),
                detail: format!("{e}; install openssl"),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Command {
                what: format!("openssl {}", args.first().unwrap_or(&"")),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=walbust test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(ec);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca)?;
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=walbust test server",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    csr.extend(ec);
    run(&csr)?;
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={subject_alt_name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ])?;
    Ok((dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key")))
}

/// Peak resident memory of this process in MB (`VmHWM`), for benchmarks.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn ping(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_not_handed_out_twice() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }

    #[test]
    fn quoting_for_pg_ctl_options() {
        assert_eq!(shell_quote("logical"), "logical");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}

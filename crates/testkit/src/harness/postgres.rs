//! Throwaway PostgreSQL servers: finding the server binaries, initdb, pg_ctl start/stop/restart
//! on a free port, psql, and running as the `postgres` OS user when run as root.

use super::{free_port, log_tail, unique_dir, HarnessError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(super) fn is_root() -> bool {
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
        pg.allow_output_plugins()?;
        if let Some(pw) = pg.options.superuser_password.clone() {
            pg.psql(
                "postgres",
                &format!("ALTER USER postgres PASSWORD '{}'", pw.replace('\'', "''")),
            )?;
        }
        Ok(pg)
    }

    /// Some PostgreSQL builds restrict which libraries may be output plugins; allow the ones
    /// walbust's tests and sample captures use.
    fn allow_output_plugins(&self) -> Result<(), HarnessError> {
        let restricted = self.psql(
            "postgres",
            "SELECT count(*) FROM pg_settings WHERE name = 'output_plugin_libraries'",
        )?;
        if restricted.trim() == "1" {
            self.psql(
                "postgres",
                "ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding, wal2json; SELECT pg_reload_conf();",
            )?;
            // The reload is asynchronous: wait until new sessions see it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.psql("postgres", "SHOW output_plugin_libraries")?.trim() == "pgoutput, test_decoding, wal2json"
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
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

    /// A physical standby of this server taken now with `pg_basebackup -R` (asynchronous;
    /// replication slots are not copied). Not started: see [`PgInstance::take_over_as_primary`].
    pub fn standby(&self) -> Result<PgInstance, HarnessError> {
        let root = unique_dir("pg-standby")?;
        let data = root.join("data");
        let socket = root.join("sock");
        std::fs::create_dir_all(&socket)?;
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::chown(&root, Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid))?;
        }
        let out = self
            .command("pg_basebackup")
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-h"])
            .arg(&self.socket)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .output()?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                what: "pg_basebackup".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(PgInstance {
            root,
            data,
            socket,
            bin: self.bin.clone(),
            port: self.port,
            run_as: self.run_as,
            options: self.options.clone(),
            running: false,
        })
    }

    /// Failover: the primary `old` dies (immediate stop) and this standby starts on its port
    /// and is promoted (a new timeline), as behind a service address that moved. Whatever the
    /// primary wrote after the standby last received WAL is gone.
    pub fn take_over_as_primary(&mut self, old: &mut PgInstance) -> Result<(), HarnessError> {
        old.stop_server("immediate");
        self.port = old.port;
        self.start_server()?;
        let out = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("promote")
            .output()?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                what: "pg_ctl promote".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_pg_ctl_options() {
        assert_eq!(shell_quote("logical"), "logical");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}

//! Throwaway redis-server instances on free ports (restartable, to simulate outages) and Redis
//! Clusters of them.

use super::{free_port, log_tail, unique_dir, HarnessError};
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        self.spawn_with(&[])
    }

    fn spawn_with(&mut self, more_args: &[&str]) -> Result<(), HarnessError> {
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
            .args(more_args)
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

    /// Kills and starts again on the same port with an empty dataset (any snapshot or AOF
    /// left by [`RedisInstance::save`] or [`RedisInstance::enable_aof`] is removed first).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.remove_persistence();
        self.spawn()
    }

    /// kill -9 and start again on the same port from what is on disk: the snapshot of the last
    /// [`RedisInstance::save`] (a restore from an older snapshot).
    pub fn restart_from_snapshot(&mut self) -> Result<(), HarnessError> {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        self.spawn()
    }

    /// kill -9 and start again from the append-only file (see [`RedisInstance::enable_aof`]);
    /// afterwards the AOF is switched off and removed again.
    pub fn restart_from_aof(&mut self) -> Result<(), HarnessError> {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.spawn_with(&["--appendonly", "yes"])?;
        self.command(&["CONFIG", "SET", "appendonly", "no"])?;
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        Ok(())
    }

    /// A replica of this server (`--replicaof`) on a port of its own, waiting until the first
    /// sync finished.
    pub fn start_replica(&self) -> Result<RedisInstance, HarnessError> {
        let port = self.port.to_string();
        let replica = RedisInstance::start_with_args(&["--replicaof", "127.0.0.1", &port])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if replica
                .query(&["INFO", "replication"])?
                .contains("master_link_status:up")
            {
                return Ok(replica);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady(
            format!("redis replica of port {port}"),
            String::new(),
        ))
    }

    /// The replica stops following this server (a network partition): it keeps what it had.
    pub fn detach(&self) -> Result<(), HarnessError> {
        self.command(&["REPLICAOF", "NO", "ONE"])
    }

    /// Failover to `replica` (see [`RedisInstance::start_replica`], [`RedisInstance::detach`]):
    /// this server dies (kill -9) and the replica's dataset, whatever it had received, is what
    /// this address serves from now on (as when a Sentinel or a service address moves to the
    /// promoted replica). The replica then follows this address again.
    pub fn fail_over_to(&mut self, replica: &RedisInstance) -> Result<(), HarnessError> {
        self.kill();
        replica.detach()?;
        replica.command(&["SAVE"])?;
        std::fs::copy(replica.dir.join("dump.rdb"), self.dir.join("dump.rdb"))?;
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
        self.spawn()?;
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        replica.command(&["REPLICAOF", "127.0.0.1", &self.port.to_string()])
    }

    /// `SAVE`: a snapshot on disk that [`RedisInstance::restart_from_snapshot`] loads.
    pub fn save(&self) -> Result<(), HarnessError> {
        self.command(&["SAVE"])
    }

    /// Switches on the append-only file with `appendfsync everysec` and waits for its first
    /// rewrite.
    pub fn enable_aof(&self) -> Result<(), HarnessError> {
        self.command(&["CONFIG", "SET", "appendfsync", "everysec"])?;
        self.command(&["CONFIG", "SET", "appendonly", "yes"])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let info = self.query(&["INFO", "persistence"])?;
            if info.contains("aof_enabled:1") && info.contains("aof_rewrite_in_progress:0") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady("redis AOF rewrite".into(), String::new()))
    }

    fn remove_persistence(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        let _ = std::fs::remove_dir_all(self.dir.join("appendonlydir"));
    }

    fn command(&self, args: &[&str]) -> Result<(), HarnessError> {
        self.query(args).map(|_| ())
    }

    /// Runs a command with redis-cli; its output.
    fn query(&self, args: &[&str]) -> Result<String, HarnessError> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map_err(HarnessError::Io)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.starts_with("ERR") {
            return Err(HarnessError::NotReady(format!("redis-cli {}", args.join(" ")), text));
        }
        Ok(text)
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
        RedisCluster::start_with_args(n, &[])
    }

    /// With extra redis-server arguments for every node (e.g. keyspace notifications). A node
    /// restarted with [`RedisInstance::restart`] keeps its `nodes.conf`, so it comes back empty
    /// but owning its slots (a shard restart).
    pub fn start_with_args(n: usize, extra_args: &[&str]) -> Result<RedisCluster, HarnessError> {
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ];
            args.extend_from_slice(extra_args);
            nodes.push(RedisInstance::start_with_args(&args)?);
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

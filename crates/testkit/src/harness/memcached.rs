//! A throwaway memcached on a free port (no UDP), killed on drop.

use super::{free_port, HarnessError};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MemcachedInstance {
    port: u16,
    child: Option<Child>,
}

impl MemcachedInstance {
    pub fn start() -> Result<MemcachedInstance, HarnessError> {
        let mut last = None;
        for _ in 0..5 {
            let mut m = MemcachedInstance {
                port: free_port(),
                child: None,
            };
            match m.spawn() {
                Ok(()) => return Ok(m),
                Err(e @ HarnessError::MemcachedMissing) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::MemcachedMissing))
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut command = Command::new("memcached");
        command
            .args(["-l", "127.0.0.1", "-U", "0", "-m", "64", "-p"])
            .arg(self.port.to_string());
        // memcached refuses root without a user to run as.
        if super::postgres::is_root() {
            command.args(["-u", "root"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => HarnessError::MemcachedMissing,
                _ => HarnessError::Io(e),
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    self.child = None;
                    return Err(HarnessError::NotReady(
                        format!("memcached on port {} ({status})", self.port),
                        err,
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(HarnessError::NotReady(
            format!("memcached on port {}", self.port),
            String::new(),
        ))
    }

    fn ping(&self) -> bool {
        self.command("mn\r\n").is_some_and(|r| r.starts_with("MN"))
    }

    /// Sends `request` (meta or text protocol, with its `\r\n`) and returns what came back
    /// within a short read.
    pub fn command(&self, request: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
        s.write_all(request.as_bytes()).ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"\r\n") && (out.ends_with(b"MN\r\n") || !request.contains("mn\r\n")) {
                break;
            }
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let reply = self.command(&format!("mg {key} v\r\nmn\r\n"))?;
        let mut lines = reply.split("\r\n");
        match lines.next() {
            Some(l) if l.starts_with("VA ") => lines.next().map(str::to_string),
            _ => None,
        }
    }

    pub fn set(&self, key: &str, value: &str) {
        let _ = self.command(&format!("ms {key} {} T0\r\n{value}\r\nmn\r\n", value.len()));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills and starts again, empty, on the same port.
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
}

impl Drop for MemcachedInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

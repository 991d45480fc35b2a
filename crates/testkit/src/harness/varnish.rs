//! A throwaway Varnish (`varnishd` with vmod xkey, Debian's varnish and varnish-modules) on a
//! free port, running docs/varnish.vcl in front of [`Origin`]: a small HTTP server whose pages
//! carry surrogate keys and a counter, so a test tells a cached page from a fresh one.

use super::{free_port, log_tail, unique_dir, HarnessError};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The VCL operators are given; the harness runs it with its backend's port replaced.
pub const VARNISH_VCL: &str = include_str!("../../../../docs/varnish.vcl");

/// Surrogate keys (the `xkey` response header) of a page, by path.
pub type KeysFor = dyn Fn(&str) -> String + Send + Sync;

/// An HTTP origin on a free port: every response is cacheable for five minutes, carries
/// `xkey: <keys_for(path)>` and the body `<path> <n>`, `n` counting the requests it served.
pub struct Origin {
    port: u16,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    pub fn start(keys_for: Arc<KeysFor>) -> Result<Origin, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served2, stop2) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &served2, keys_for.as_ref());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Origin {
            port,
            served,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests the origin answered.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

fn serve(stream: TcpStream, served: &AtomicU64, keys_for: &KeysFor) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
    let body = format!("{path} {n}");
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=300\r\nxkey: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        keys_for(&path),
        body.len()
    )?;
    stream.flush()
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response read by [`VarnishInstance::get`].
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The header block, one `name: value` a line.
    pub headers: String,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Served from the cache: Varnish's `X-Varnish` names this request and the one that cached it.
    pub fn is_hit(&self) -> bool {
        self.header("x-varnish")
            .is_some_and(|v| v.split_whitespace().count() == 2)
    }
}

/// A running throwaway varnishd in front of an [`Origin`].
pub struct VarnishInstance {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    pub origin: Origin,
}

impl VarnishInstance {
    /// Varnish with [`VARNISH_VCL`] in front of a new origin whose pages carry `keys_for(path)`.
    pub fn start(keys_for: Arc<KeysFor>) -> Result<VarnishInstance, HarnessError> {
        let origin = Origin::start(keys_for)?;
        let dir = unique_dir("varnish")?;
        let vcl = VARNISH_VCL.replace(".port = \"8080\";", &format!(".port = \"{}\";", origin.port()));
        let vcl_path = dir.join("walbust.vcl");
        std::fs::write(&vcl_path, vcl)?;
        let mut varnish = VarnishInstance {
            dir,
            port: 0,
            child: None,
            origin,
        };
        let mut last = None;
        for _ in 0..3 {
            varnish.port = free_port();
            match varnish.spawn(&vcl_path) {
                Ok(()) => return Ok(varnish),
                Err(e @ HarnessError::VarnishMissing) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(HarnessError::VarnishMissing))
    }

    fn spawn(&mut self, vcl: &std::path::Path) -> Result<(), HarnessError> {
        let log = self.dir.join("varnishd.log");
        let workdir = self.dir.join("n");
        // Foreground (-F) so the harness owns the process; no management port (-T none). As
        // root, varnishd drops to its own users (jail `unix`, the package's default).
        let child = Command::new(varnishd())
            .arg("-F")
            .arg("-n")
            .arg(&workdir)
            .args([
                "-a",
                &format!("127.0.0.1:{}", self.port),
                "-T",
                "none",
                "-s",
                "malloc,16m",
            ])
            .arg("-f")
            .arg(vcl)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => HarnessError::VarnishMissing,
                _ => HarnessError::Io(e),
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // A purge of a key nothing has: answered by the VCL itself once it is loaded.
            if let Ok(r) = self.request("PURGE", "/", &[("xkey", "walbust-harness-ready")]) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(HarnessError::NotReady(
            format!("varnishd on port {}", self.port),
            log_tail(&log),
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The purge url for a `[[purge]] kind = "xkey"` target.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// `GET path` through Varnish.
    pub fn get(&self, path: &str) -> Result<Response, HarnessError> {
        self.request("GET", path, &[])
    }

    /// One request on its own connection.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response, HarnessError> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HarnessError::Command {
                what: format!("{method} {path} through varnishd"),
                detail: format!("unreadable response `{status_line}`"),
            })?;
        Ok(Response {
            status,
            headers: headers.replace("\r\n", "\n"),
            body: body.to_string(),
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets the manager stop its worker process; SIGKILL would orphan it.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn varnishd() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/varnishd");
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from("varnishd")
    }
}

impl Drop for VarnishInstance {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

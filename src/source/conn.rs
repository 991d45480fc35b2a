//! A replication-protocol connection to PostgreSQL, built on `postgres-protocol` message
//! encoding over tokio TCP or Unix sockets (tokio-postgres cannot do CopyBoth).
//!
//! Owns: startup with `replication=database`, authentication (trust, cleartext, md5,
//! SCRAM-SHA-256), simple queries (IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT …), entering
//! CopyBoth mode with START_REPLICATION, and exchanging CopyData frames. Passwords are never
//! put into errors or logs.

use super::tls::{negotiate, AsyncStream, TlsError, TlsOptions};
use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walbust_core::bytes::{Cursor, Truncated};

/// An error from the server (ErrorResponse), with the fields operators need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " hint: {h}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Connect { target: String, source: io::Error },
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] io::Error),
    #[error("PostgreSQL: {0}")]
    Server(ServerError),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("TLS: {0}")]
    TlsSetup(#[source] TlsError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("bad connection settings: {0}")]
    Config(String),
}

impl From<TlsError> for ConnError {
    fn from(e: TlsError) -> ConnError {
        match e {
            TlsError::Config(m) => ConnError::Config(m),
            TlsError::Handshake(m) => ConnError::Tls(m),
            e @ (TlsError::Rustls(_) | TlsError::Verifier(_)) => ConnError::TlsSetup(e),
            TlsError::Protocol(m) => ConnError::Protocol(m),
            TlsError::Io(e) => ConnError::Io(e),
        }
    }
}

impl ConnError {
    /// Errors worth a retry: network trouble, server shutdown/restart, terminated backends,
    /// and "replication slot is active" (another instance holds it).
    pub fn is_transient(&self) -> bool {
        match self {
            ConnError::Connect { .. } | ConnError::Io(_) => true,
            ConnError::Server(e) => {
                e.code.starts_with("08") // connection exceptions
                    || e.code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                    || e.code == "55006" // object in use: slot active for another PID
                    || e.code == "53300" // too many connections
                    || e.code == "40001"
            }
            _ => false,
        }
    }

    pub fn server(&self) -> Option<&ServerError> {
        match self {
            ConnError::Server(e) => Some(e),
            _ => None,
        }
    }
}

/// Where and how to connect; parsed from a libpq-style URL or key=value string.
#[derive(Clone)]
pub struct ConnectOptions {
    pub config: tokio_postgres::Config,
    pub tls: TlsOptions,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("password", &self.config.get_password().map(|_| "<redacted>"))
            .field("tls", &self.tls.mode)
            .finish()
    }
}

impl ConnectOptions {
    /// Parses `postgres://user:pass@host:port/db?sslmode=verify-full&sslrootcert=ca.pem` or
    /// `host=… port=… user=… dbname=… sslmode=…`. The TLS settings tokio-postgres does not
    /// know (`verify-ca`, `verify-full`, `sslrootcert`) are taken out first.
    pub fn parse(text: &str) -> Result<ConnectOptions, ConnError> {
        let (rest, tls) = TlsOptions::extract(text)?;
        let config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            ConnError::Config(format!(
                "{e} (the connection string was not printed because it may hold a password)"
            ))
        })?;
        Ok(ConnectOptions { config, tls })
    }

    /// The connection string for tokio-postgres' ordinary SQL connections.
    pub fn sql_config(&self) -> tokio_postgres::Config {
        self.config.clone()
    }

    fn targets(&self) -> Vec<Target> {
        let hosts = self.config.get_hosts();
        let ports = self.config.get_ports();
        let port_for = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        if hosts.is_empty() {
            return vec![
                Target::Unix(PathBuf::from("/var/run/postgresql"), port_for(0)),
                Target::Tcp("localhost".into(), port_for(0)),
            ];
        }
        hosts
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                tokio_postgres::config::Host::Tcp(name) => Target::Tcp(name.clone(), port_for(i)),
                tokio_postgres::config::Host::Unix(dir) => Target::Unix(dir.clone(), port_for(i)),
            })
            .collect()
    }

    /// The user name, defaulting to the OS user like libpq.
    pub fn user(&self) -> String {
        self.config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into())
    }
}

#[derive(Clone, Debug)]
enum Target {
    Tcp(String, u16),
    Unix(PathBuf, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(h, p) => write!(f, "{h}:{p}"),
            Target::Unix(d, p) => write!(f, "{}/.s.PGSQL.{p}", d.display()),
        }
    }
}

/// A backend message: its type byte and body.
#[derive(Debug)]
pub struct BackendMessage {
    pub tag: u8,
    pub body: Bytes,
}

/// One row of a simple query result (text values).
pub type Row = Vec<Option<String>>;

/// A result set of a simple query: column names and rows.
#[derive(Debug, Default, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

impl QueryResult {
    /// The value of `column` in the first row.
    pub fn first(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.first()?.get(i)?.as_deref()
    }
}

/// A connection in replication mode.
pub struct ReplicationConnection {
    stream: Box<dyn AsyncStream>,
    read: BytesMut,
    write: BytesMut,
    pub parameters: HashMap<String, String>,
    pub backend_pid: Option<i32>,
    target: String,
}

impl From<Truncated> for ConnError {
    fn from(t: Truncated) -> ConnError {
        ConnError::Protocol(format!("server message {t}"))
    }
}

/// A NUL-terminated string of a server message (server text is UTF-8: client_encoding).
fn cstr(c: &mut Cursor<'_>, what: &'static str) -> Result<String, ConnError> {
    Ok(String::from_utf8_lossy(c.cstr_bytes(what)?).into_owned())
}

/// ErrorResponse / NoticeResponse fields.
fn parse_error(body: &[u8]) -> Result<ServerError, ConnError> {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut c = Cursor::new(body);
    while c.remaining() > 0 {
        let field = c.u8("error field type")?;
        if field == 0 {
            break;
        }
        let value = cstr(&mut c, "error field")?;
        match field {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    Ok(e)
}

/// RowDescription: the column names.
fn row_description(body: &[u8]) -> Result<Vec<String>, ConnError> {
    let mut c = Cursor::new(body);
    let n = c.i16("RowDescription field count")?;
    let mut columns = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        columns.push(cstr(&mut c, "RowDescription field name")?);
        // Table OID, column number, type OID, type size, type modifier, format code.
        c.take(18, "RowDescription field")?;
    }
    Ok(columns)
}

/// DataRow: text values, `None` for NULL.
fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, ConnError> {
    let mut c = Cursor::new(body);
    let n = c.i16("DataRow value count")?;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = c.i32("DataRow value length")?;
        row.push(match usize::try_from(len) {
            Ok(len) => Some(String::from_utf8_lossy(c.take(len, "DataRow value")?).into_owned()),
            Err(_) => None,
        });
    }
    Ok(row)
}

impl ReplicationConnection {
    /// Connects, authenticates and waits until the server is ready for queries.
    pub async fn connect(options: &ConnectOptions) -> Result<ReplicationConnection, ConnError> {
        let timeout = options
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(30));
        let mut last = None;
        for target in options.targets() {
            match tokio::time::timeout(timeout, Self::connect_one(options, &target)).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => {
                    // Authentication and server errors are definite: don't try other hosts.
                    if !matches!(e, ConnError::Connect { .. }) {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(_) => {
                    last = Some(ConnError::Connect {
                        target: target.to_string(),
                        source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnError::Config("no host to connect to".into())))
    }

    async fn connect_one(options: &ConnectOptions, target: &Target) -> Result<ReplicationConnection, ConnError> {
        let connect_err = |source| ConnError::Connect {
            target: target.to_string(),
            source,
        };
        let stream: Box<dyn AsyncStream> = match target {
            Target::Tcp(host, port) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_err)?;
                let _ = tcp.set_nodelay(true);
                negotiate(tcp, host, &options.tls).await?
            }
            Target::Unix(dir, port) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(tokio::net::UnixStream::connect(&path).await.map_err(connect_err)?)
            }
        };
        let mut conn = ReplicationConnection {
            stream,
            read: BytesMut::with_capacity(256 * 1024),
            write: BytesMut::with_capacity(1024),
            parameters: HashMap::new(),
            backend_pid: None,
            target: target.to_string(),
        };
        conn.startup(options).await?;
        Ok(conn)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    async fn startup(&mut self, options: &ConnectOptions) -> Result<(), ConnError> {
        let user = options.user();
        let dbname = options.config.get_dbname().unwrap_or(&user).to_string();
        let app = options.config.get_application_name().unwrap_or("walbust").to_string();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &user),
            ("database", &dbname),
            ("replication", "database"),
            ("application_name", &app),
            ("client_encoding", "UTF8"),
        ];
        let opts;
        if let Some(o) = options.config.get_options() {
            opts = o.to_string();
            params.push(("options", &opts));
        }
        frontend::startup_message(params.iter().copied(), &mut self.write)?;
        self.flush().await?;
        let password = options.config.get_password();
        loop {
            let msg = self.recv().await?;
            let mut body = Cursor::new(&msg.body);
            match msg.tag {
                b'R' => self.authenticate(&mut body, &user, password).await?,
                b'S' => {
                    let k = cstr(&mut body, "parameter name")?;
                    let v = cstr(&mut body, "parameter value")?;
                    self.parameters.insert(k, v);
                }
                b'K' => self.backend_pid = body.i32("backend pid").ok(),
                b'Z' => return Ok(()),
                b'E' => {
                    let e = parse_error(&msg.body)?;
                    if e.code == "28P01" || e.code == "28000" {
                        return Err(ConnError::Auth(format!("{} ({})", e.message, e.code)));
                    }
                    return Err(ConnError::Server(e));
                }
                b'N' => {}
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    /// Answers one AuthenticationRequest (`R`).
    async fn authenticate(
        &mut self,
        body: &mut Cursor<'_>,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ConnError> {
        let asked = |method: &str| {
            password.ok_or_else(|| {
                ConnError::Auth(format!(
                    "the server asks user `{user}` for {method}; put it in the connection URL or PGPASSWORD"
                ))
            })
        };
        match body.i32("authentication request")? {
            0 => {}
            3 => {
                frontend::password_message(asked("a password")?, &mut self.write)?;
                self.flush().await?;
            }
            5 => {
                let pw = asked("an md5 password")?;
                let mut salt = [0u8; 4];
                salt.copy_from_slice(body.take(4, "md5 salt")?);
                let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, salt);
                frontend::password_message(hash.as_bytes(), &mut self.write)?;
                self.flush().await?;
            }
            10 => {
                let pw = asked("a SCRAM password")?;
                let mut mechanisms = Vec::new();
                while body.rest().first().is_some_and(|b| *b != 0) {
                    mechanisms.push(cstr(body, "SASL mechanism")?);
                }
                if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                    return Err(ConnError::Auth(format!(
                        "the server offers SASL mechanisms {mechanisms:?}; walbust supports SCRAM-SHA-256"
                    )));
                }
                self.scram(pw).await?;
            }
            other => {
                return Err(ConnError::Auth(format!(
                    "the server asks for an authentication method walbust does not support (code {other}); use trust, password, md5 or scram-sha-256 in pg_hba.conf"
                )))
            }
        }
        Ok(())
    }

    async fn scram(&mut self, password: &[u8]) -> Result<(), ConnError> {
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut self.write)?;
        self.flush().await?;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'R' => {
                    let mut c = Cursor::new(&msg.body);
                    let code = c.i32("SASL message")?;
                    let body = c.rest();
                    match code {
                        11 => {
                            scram
                                .update(body)
                                .map_err(|e| ConnError::Auth(format!("SCRAM exchange failed: {e}")))?;
                            frontend::sasl_response(scram.message(), &mut self.write)?;
                            self.flush().await?;
                        }
                        12 => {
                            scram
                                .finish(body)
                                .map_err(|e| ConnError::Auth(format!("SCRAM server signature invalid: {e}")))?;
                            return Ok(());
                        }
                        other => {
                            return Err(ConnError::Protocol(format!("unexpected SASL step {other}")));
                        }
                    }
                }
                b'E' => {
                    let e = parse_error(&msg.body)?;
                    return Err(ConnError::Auth(format!("{} ({})", e.message, e.code)));
                }
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected message {:?} during SCRAM",
                        other as char
                    )))
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        self.stream.write_all(&self.write).await?;
        self.stream.flush().await?;
        self.write.clear();
        Ok(())
    }

    /// True when a complete backend message is already buffered (receiving it won't wait).
    pub fn has_buffered_message(&self) -> bool {
        let mut head = Cursor::new(&self.read);
        match (head.u8("message type"), head.i32("message length")) {
            (Ok(_), Ok(len)) => len >= 4 && self.read.len() > len as usize,
            _ => false,
        }
    }

    /// A complete backend message already read, if there is one (no I/O).
    fn buffered(&mut self) -> Result<Option<BackendMessage>, ConnError> {
        let mut head = Cursor::new(&self.read);
        let (Ok(tag), Ok(len)) = (head.u8("message type"), head.i32("message length")) else {
            return Ok(None);
        };
        if len < 4 {
            return Err(ConnError::Protocol(format!("invalid message length {len}")));
        }
        let total = len as usize + 1;
        if self.read.len() < total {
            return Ok(None);
        }
        let mut frame = self.read.split_to(total);
        Ok(Some(BackendMessage {
            tag,
            body: frame.split_off(5).freeze(),
        }))
    }

    /// Receives one backend message.
    pub async fn recv(&mut self) -> Result<BackendMessage, ConnError> {
        loop {
            if let Some(message) = self.buffered()? {
                return Ok(message);
            }
            let mut head = Cursor::new(&self.read);
            match (head.u8("message type"), head.i32("message length")) {
                (Ok(_), Ok(len)) => self.read.reserve(len as usize + 1 - self.read.len()),
                _ => self.read.reserve(64 * 1024),
            }
            let n = self.stream.read_buf(&mut self.read).await?;
            if n == 0 {
                return Err(ConnError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    /// Runs a simple query (replication commands or SQL) and returns its last result set.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ConnError> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'T' => {
                    result = QueryResult {
                        columns: row_description(&msg.body)?,
                        rows: Vec::new(),
                    };
                }
                b'D' => result.rows.push(data_row(&msg.body)?),
                b'E' => error = Some(parse_error(&msg.body)?),
                b'Z' => {
                    return match error {
                        Some(e) => Err(ConnError::Server(e)),
                        None => Ok(result),
                    }
                }
                // CommandComplete, EmptyQueryResponse, Notice, ParameterStatus
                b'C' | b'I' | b'N' | b'S' => {}
                // CopyOut/CopyBoth would be a protocol misuse here.
                other => {
                    return Err(ConnError::Protocol(format!(
                        "unexpected message {:?} in simple query",
                        other as char
                    )))
                }
            }
        }
    }

    /// Sends `START_REPLICATION …` and waits for CopyBothResponse (`W`), which
    /// `postgres_protocol::message::backend::Message::parse` does not know.
    pub async fn start_copy_both(&mut self, command: &str) -> Result<(), ConnError> {
        frontend::query(command, &mut self.write)?;
        self.flush().await?;
        loop {
            let msg = self.recv().await?;
            match msg.tag {
                b'W' => return Ok(()),
                b'E' => {
                    let e = parse_error(&msg.body)?;
                    // Drain to ReadyForQuery so the connection stays usable.
                    loop {
                        let m = self.recv().await?;
                        if m.tag == b'Z' {
                            break;
                        }
                    }
                    return Err(ConnError::Server(e));
                }
                b'N' | b'S' => {}
                other => {
                    return Err(ConnError::Protocol(format!(
                        "expected CopyBothResponse, got {:?}",
                        other as char
                    )))
                }
            }
        }
    }

    /// In CopyBoth mode: the next CopyData payload, or `None` when the server ended the copy.
    pub async fn recv_copy_data(&mut self) -> Result<Option<Bytes>, ConnError> {
        loop {
            if let Some(data) = copy_data(self.recv().await?)? {
                return Ok(data);
            }
        }
    }

    /// Like [`ReplicationConnection::recv_copy_data`], for what was already read only:
    /// `Ok(None)` when no whole message is buffered. The stream drains a read this way, without
    /// going back through its `select!` per message.
    pub fn try_recv_copy_data(&mut self) -> Result<Option<Option<Bytes>>, ConnError> {
        while let Some(message) = self.buffered()? {
            if let Some(data) = copy_data(message)? {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }

    /// Sends one CopyData payload (e.g. a standby status update).
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        self.write.extend_from_slice(b"d");
        self.write
            .extend_from_slice(&((payload.len() + 4) as i32).to_be_bytes());
        self.write.extend_from_slice(payload);
        self.flush().await
    }

    /// Ends CopyBoth from our side and closes the connection politely.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.write);
        frontend::terminate(&mut self.write);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
    }
}

/// A message during CopyBoth: `Some(Some(data))` for CopyData, `Some(None)` when the server
/// ended the copy (CopyDone, possibly followed by CommandComplete and ReadyForQuery, e.g. a
/// walsender shutting down: the stream is over), `None` for a notice or parameter status.
fn copy_data(msg: BackendMessage) -> Result<Option<Option<Bytes>>, ConnError> {
    match msg.tag {
        b'd' => Ok(Some(Some(msg.body))),
        b'c' | b'C' | b'Z' => Ok(Some(None)),
        b'E' => Err(ConnError::Server(parse_error(&msg.body)?)),
        b'N' | b'S' => Ok(None),
        other => Err(ConnError::Protocol(format!(
            "unexpected message {:?} while streaming",
            other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_are_parsed() {
        let mut body = Vec::new();
        for (f, v) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "55006"),
            (b'M', "replication slot \"s\" is active for PID 42"),
        ] {
            body.push(f);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let e = parse_error(&body).unwrap();
        assert_eq!(e.code, "55006");
        assert!(ConnError::Server(e).is_transient());
    }

    #[test]
    fn options_redact_passwords() {
        let o = ConnectOptions::parse("postgres://u:secret@localhost:5433/db").unwrap();
        let text = format!("{o:?}");
        assert!(!text.contains("secret"), "{text}");
        let err = ConnectOptions::parse("postgres://u:secret@localhost:5433/db?nonsense=1").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

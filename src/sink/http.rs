//! HTTP caches and CDNs: [`PurgeTarget`] purges by surrogate key — Varnish with the xkey vmod,
//! Fastly, Cloudflare — from one `[[purge]]` configuration entry ([`PurgeConfig`]). It owns the
//! mapping from a batch's actions to surrogate keys, the request shape of each kind, batching
//! into requests of at most N keys, the rate limit and the short in-place retries.
//!
//! HTTP caches keep nothing walbust could read back, so the target has no watermark and no gap
//! mark (the trait's defaults): a replay purges again, which is harmless. A batch is applied
//! when every request of it was answered with a 2xx; any other answer fails the batch, which the
//! daemon then applies again whole.

use crate::config::purge::Endpoint;
pub use crate::config::purge::*;
use crate::rules::RuleSet;
use crate::sink::{Batch, Sink, SinkFuture};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use walbust_core::plan::Actions;

const RETRY_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// How much of an error response's body goes into the error message.
const ERROR_BODY_CHARS: usize = 300;

/// A purge target could not apply, or cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{target}: cannot connect: {source}; check the url and that the service is running")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: TLS: {source}")]
    Tls {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: request failed: {source}")]
    Request {
        target: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{target}: no answer within {timeout:?} (purge[].timeout)")]
    Timeout { target: String, timeout: Duration },
    #[error("{target}: {what} answered {status}: {body}; {hint}")]
    Status {
        target: String,
        what: &'static str,
        status: u16,
        body: String,
        hint: &'static str,
    },
    #[error(
        "{target}: key `{key}` cannot be sent in an HTTP header (control characters); change the rule that renders it"
    )]
    BadKey { target: String, key: String },
    #[error("{target}: {field}: {message}")]
    Setup {
        target: String,
        field: String,
        message: String,
    },
}

impl HttpError {
    /// The failure's kind for metrics and logs (see [`crate::sink::SinkError::kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect { .. } | HttpError::Request { .. } => "connection",
            HttpError::Tls { .. } => "tls",
            HttpError::Timeout { .. } => "timeout",
            HttpError::Status { status, .. } => match status {
                401 | 403 => "permission",
                429 => "rate_limited",
                500..=599 => "unavailable",
                _ => "configuration",
            },
            HttpError::BadKey { .. } | HttpError::Setup { .. } => "configuration",
        }
    }

    /// Worth another attempt within the same `apply`.
    fn transient(&self) -> bool {
        matches!(self.kind(), "connection" | "timeout" | "rate_limited" | "unavailable")
    }
}

fn status_hint(kind: PurgeKind, status: u16) -> &'static str {
    match (status, kind) {
        (401 | 403, PurgeKind::Xkey) => "allow walbust's address in the VCL's purge ACL",
        (401 | 403, _) => "check the token in the environment variable named by token_env and that it may purge",
        (429, _) => "rate limited by the service; lower rate_limit (retried)",
        (500..=599, _) => "the service failed (retried)",
        (_, PurgeKind::Xkey) => {
            "check the url and that the VCL handles PURGE with xkey.purge and BAN (see docs/varnish.vcl), answering 200"
        }
        _ => "check the url (service or zone id) and the request format",
    }
}

/// One HTTP request of a purge round.
#[derive(Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Surrogate keys it purges (0: purge everything).
    pub keys: usize,
}

impl fmt::Debug for PurgeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| match k.as_str() {
                "fastly-key" | "authorization" => (k.as_str(), "***"),
                _ => (k.as_str(), v.as_str()),
            })
            .collect();
        f.debug_struct("PurgeRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// A token bucket: `rate` requests per second with bursts of up to `max(rate, 1)`.
struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: f64) -> RateLimit {
        RateLimit {
            rate,
            tokens: rate.max(1.0),
            last: Instant::now(),
        }
    }

    /// How long to wait before the next request may go (and takes its token).
    fn take(&mut self, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let burst = self.rate.max(1.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// An HTTP cache or CDN purged by surrogate key. See the module documentation.
pub struct PurgeTarget {
    name: String,
    kind: PurgeKind,
    endpoint: Endpoint,
    token: Option<String>,
    sources: Vec<KeySource>,
    strip_prefix: String,
    /// `<rule prefix><tag_prefix>` of every rule, longest first: a tag key minus its prefix is
    /// the tag's name.
    tag_prefixes: Vec<String>,
    max_keys: usize,
    header: String,
    coalesce: Duration,
    timeout: Duration,
    rate: RateLimit,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<SendRequest<Full<Bytes>>>,
    last_round: Option<Instant>,
    round_trips: u64,
}

impl fmt::Debug for PurgeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeTarget")
            .field("name", &self.name)
            .field("path", &self.endpoint.path)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

impl PurgeTarget {
    /// A target for entry `i` of a validated configuration. `token` is the value of its
    /// `token_env`; `tag_prefix` is `rules.tag_prefix`.
    pub fn new(
        i: usize,
        config: &PurgeConfig,
        token: Option<String>,
        rules: &RuleSet,
        tag_prefix: &str,
    ) -> Result<PurgeTarget, HttpError> {
        let name = config.target_name(i);
        let setup = |field: &str, message: String| HttpError::Setup {
            target: name.clone(),
            field: format!("purge[{i}].{field}"),
            message,
        };
        let endpoint = Endpoint::parse(&config.url).map_err(|m| setup("url", m))?;
        if config.kind != PurgeKind::Xkey && token.as_deref().is_none_or(str::is_empty) {
            return Err(setup(
                "token_env",
                format!(
                    "environment variable {} is not set or empty; export the API token in it",
                    config.token_env.as_deref().unwrap_or("(none)")
                ),
            ));
        }
        let tls = if endpoint.tls {
            Some(tls_connector().map_err(|m| setup("url", m))?)
        } else {
            None
        };
        let mut tag_prefixes: Vec<String> = rules
            .rules
            .iter()
            .map(|r| format!("{}{tag_prefix}", r.prefix))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        tag_prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Ok(PurgeTarget {
            kind: config.kind,
            endpoint,
            token,
            sources: config.surrogate_keys.clone(),
            strip_prefix: config.strip_prefix.clone(),
            tag_prefixes,
            max_keys: config.max_keys_per_request(),
            header: config
                .header
                .clone()
                .unwrap_or_else(|| DEFAULT_XKEY_HEADER.into())
                .to_ascii_lowercase(),
            coalesce: config.coalesce,
            timeout: config.timeout,
            rate: RateLimit::new(config.rate_limit()),
            tls,
            conn: None,
            last_round: None,
            round_trips: 0,
            name,
        })
    }

    /// The surrogate keys of a batch's actions, deduplicated and sorted.
    pub fn surrogate_keys(&self, actions: &Actions) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for source in &self.sources {
            match source {
                KeySource::Tags => {
                    for tag_key in &actions.tags {
                        let name = self
                            .tag_prefixes
                            .iter()
                            .find_map(|p| tag_key.strip_prefix(p.as_str()))
                            .unwrap_or(tag_key);
                        keys.insert(name.to_string());
                    }
                }
                KeySource::Keys => {
                    for key in actions.delete.iter().chain(actions.bump.keys()) {
                        keys.insert(key.strip_prefix(self.strip_prefix.as_str()).unwrap_or(key).to_string());
                    }
                }
            }
        }
        keys.remove("");
        keys
    }

    /// The requests that purge a batch: everything when it holds a pattern (no surrogate key
    /// stands for a pattern), else its keys in requests of at most `max_keys`.
    pub fn requests(&self, actions: &Actions) -> Result<Vec<PurgeRequest>, HttpError> {
        if !actions.delete_matching.is_empty() {
            return Ok(vec![self.purge_all_request()]);
        }
        let keys = self.surrogate_keys(actions);
        let mut chunks: Vec<Vec<&str>> = Vec::new();
        let mut bytes = 0;
        for key in &keys {
            if self.kind == PurgeKind::Xkey && key.chars().any(|c| c.is_control()) {
                return Err(HttpError::BadKey {
                    target: self.name.clone(),
                    key: key.clone(),
                });
            }
            let full = chunks.last().is_none_or(|c| {
                c.len() >= self.max_keys
                    || (self.kind == PurgeKind::Xkey && bytes + 1 + key.len() > XKEY_MAX_HEADER_BYTES)
            });
            if full {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += key.len() + 1;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(key);
            }
        }
        Ok(chunks.into_iter().map(|chunk| self.keys_request(&chunk)).collect())
    }

    fn keys_request(&self, keys: &[&str]) -> PurgeRequest {
        let path = self.endpoint.path.clone();
        match self.kind {
            PurgeKind::Xkey => PurgeRequest {
                method: "PURGE",
                path,
                headers: vec![(self.header.clone(), keys.join(" "))],
                body: None,
                keys: keys.len(),
            },
            PurgeKind::Fastly => PurgeRequest {
                method: "POST",
                path,
                headers: self.json_headers(),
                body: Some(serde_json::json!({ "surrogate_keys": keys }).to_string()),
                keys: keys.len(),
            },
            PurgeKind::Cloudflare => PurgeRequest {
                method: "POST",
                path,
                headers: self.json_headers(),
                body: Some(serde_json::json!({ "tags": keys }).to_string()),
                keys: keys.len(),
            },
        }
    }

    /// Everything the target holds: the kind's purge-all.
    pub fn purge_all_request(&self) -> PurgeRequest {
        match self.kind {
            // vmod xkey has no purge-all: a ban of every object (see docs/varnish.vcl).
            PurgeKind::Xkey => PurgeRequest {
                method: "BAN",
                path: self.endpoint.path.clone(),
                headers: Vec::new(),
                body: None,
                keys: 0,
            },
            PurgeKind::Fastly => PurgeRequest {
                method: "POST",
                path: format!("{}_all", self.endpoint.path),
                headers: self.json_headers(),
                body: None,
                keys: 0,
            },
            PurgeKind::Cloudflare => PurgeRequest {
                method: "POST",
                path: self.endpoint.path.clone(),
                headers: self.json_headers(),
                body: Some(r#"{"purge_everything":true}"#.into()),
                keys: 0,
            },
        }
    }

    fn json_headers(&self) -> Vec<(String, String)> {
        let token = self.token.clone().unwrap_or_default();
        let auth = match self.kind {
            PurgeKind::Fastly => ("fastly-key".to_string(), token),
            _ => ("authorization".to_string(), format!("Bearer {token}")),
        };
        vec![
            auth,
            ("content-type".into(), "application/json".into()),
            ("accept".into(), "application/json".into()),
        ]
    }

    /// Sends every request in order, each retried briefly; the first that fails for good fails
    /// the round.
    async fn send_all(&mut self, requests: &[PurgeRequest], what: &'static str) -> Result<(), HttpError> {
        if let Some(last) = self.last_round {
            let due = last + self.coalesce;
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        self.last_round = Some(Instant::now());
        for request in requests {
            self.send_with_retries(request, what).await?;
        }
        Ok(())
    }

    async fn send_with_retries(&mut self, request: &PurgeRequest, what: &'static str) -> Result<(), HttpError> {
        let mut delay = RETRY_INITIAL_DELAY;
        let mut attempt = 1;
        loop {
            let wait = self.rate.take(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let (result, retry_after) = self.send(request, what).await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.transient() && attempt < PURGE_ATTEMPTS => {
                    let wait = retry_after.unwrap_or(delay);
                    if wait > MAX_RETRY_AFTER {
                        return Err(e);
                    }
                    tracing::debug!(target = %self.name, error = %e, ?wait, "purge request failed; retrying");
                    tokio::time::sleep(wait).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request; on failure also the service's `Retry-After`, when it said one.
    async fn send(&mut self, request: &PurgeRequest, what: &'static str) -> (Result<(), HttpError>, Option<Duration>) {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner(request, what)).await {
            Ok(result) => result,
            Err(_) => {
                // A connection with a request cut off mid-flight cannot be reused.
                self.conn = None;
                (
                    Err(HttpError::Timeout {
                        target: self.name.clone(),
                        timeout,
                    }),
                    None,
                )
            }
        }
    }

    async fn send_inner(
        &mut self,
        request: &PurgeRequest,
        what: &'static str,
    ) -> (Result<(), HttpError>, Option<Duration>) {
        let built = self.build(request);
        let http_request = match built {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        self.round_trips += 1;
        let sender = match self.connection().await {
            Ok(s) => s,
            Err(e) => return (Err(e), None),
        };
        let response = match sender.send_request(http_request).await {
            Ok(r) => r,
            Err(source) => {
                self.conn = None;
                return (
                    Err(HttpError::Request {
                        target: self.name.clone(),
                        source,
                    }),
                    None,
                );
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let keep = !response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        // The body is read whole so the connection can carry the next request.
        let body = match response.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(source) => {
                self.conn = None;
                return (
                    Err(HttpError::Request {
                        target: self.name.clone(),
                        source,
                    }),
                    None,
                );
            }
        };
        if !keep {
            self.conn = None;
        }
        // Cloudflare's API can say `"success": false` in a 2xx; anything else that is 2xx purged.
        if status.is_success() && !(self.kind == PurgeKind::Cloudflare && reports_failure(&body)) {
            return (Ok(()), None);
        }
        let text: String = String::from_utf8_lossy(&body).chars().take(ERROR_BODY_CHARS).collect();
        (
            Err(HttpError::Status {
                target: self.name.clone(),
                what,
                status: status.as_u16(),
                body: text.trim().to_string(),
                hint: status_hint(self.kind, status.as_u16()),
            }),
            retry_after,
        )
    }

    fn build(&self, request: &PurgeRequest) -> Result<hyper::Request<Full<Bytes>>, HttpError> {
        let bad = |key: &str| HttpError::BadKey {
            target: self.name.clone(),
            key: key.to_string(),
        };
        let mut builder = hyper::Request::builder()
            .method(request.method)
            .uri(request.path.as_str())
            .header(hyper::header::HOST, self.endpoint.authority.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("walbust/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &request.headers {
            // Bytes, not visible ASCII only: keys rendered from UTF-8 text go as the origin
            // sends them in its own header (Varnish compares bytes).
            let value = hyper::header::HeaderValue::from_bytes(value.as_bytes()).map_err(|_| bad(value))?;
            builder = builder.header(name.as_str(), value);
        }
        builder
            .body(Full::new(Bytes::from(request.body.clone().unwrap_or_default())))
            .map_err(|e| HttpError::Setup {
                target: self.name.clone(),
                field: "url".into(),
                message: e.to_string(),
            })
    }

    /// The kept-alive connection, or a new one.
    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        if let Some(conn) = &mut self.conn {
            if conn.ready().await.is_err() {
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        match &mut self.conn {
            Some(conn) => Ok(conn),
            None => Err(HttpError::Connect {
                target: self.name.clone(),
                source: std::io::Error::other("no connection"),
            }),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let connect_error = |source| HttpError::Connect {
            target: self.name.clone(),
            source,
        };
        let tcp = tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(connect_error)?;
        let _ = tcp.set_nodelay(true);
        let request_error = |source| HttpError::Request {
            target: self.name.clone(),
            source,
        };
        match &self.tls {
            Some(tls) => {
                let server = rustls::pki_types::ServerName::try_from(self.endpoint.host.clone()).map_err(|e| {
                    HttpError::Tls {
                        target: self.name.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                    }
                })?;
                let stream = tls.connect(server, tcp).await.map_err(|source| HttpError::Tls {
                    target: self.name.clone(),
                    source,
                })?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(request_error)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(sender)
            }
            None => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(request_error)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(sender)
            }
        }
    }
}

/// A JSON answer with `"success": false`.
fn reports_failure(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("success") == Some(&serde_json::Value::Bool(false)))
}

/// TLS with the system's roots and rustls's ring provider (as for PostgreSQL).
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Sink for PurgeTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply<'a>(&'a mut self, batch: &'a Batch) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            let requests = self.requests(batch.merged())?;
            if requests.is_empty() {
                return Ok(());
            }
            let what = if requests[0].keys == 0 { "purge-all" } else { "purge" };
            self.send_all(&requests, what).await?;
            Ok(())
        })
    }

    fn bump_epoch(&mut self) -> SinkFuture<'_, Option<i64>> {
        Box::pin(async move {
            let request = self.purge_all_request();
            self.send_all(std::slice::from_ref(&request), "purge-all").await?;
            Ok(None)
        })
    }

    fn take_round_trips(&mut self) -> u64 {
        std::mem::take(&mut self.round_trips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        let text =
            "version: 1\nprefix: \"shop:\"\nrules:\n  - name: p\n    table: products\n    delete: [\"product:{id}\"]\n";
        crate::rules::load_str("r.yaml", text).unwrap().rules
    }

    fn target(kind: PurgeKind, url: &str, f: impl FnOnce(&mut PurgeConfig)) -> PurgeTarget {
        let mut config = PurgeConfig::new(kind, url);
        if kind != PurgeKind::Xkey {
            config.token_env = Some("TOKEN".into());
        }
        f(&mut config);
        config.validate(0).unwrap();
        PurgeTarget::new(0, &config, Some("s3cret".into()), &rules(), "tag:").unwrap()
    }

    fn actions(deleted: &[&str], bumped: &[&str], tags: &[&str]) -> Actions {
        let mut a = Actions::default();
        a.delete.extend(deleted.iter().map(|s| s.to_string()));
        for b in bumped {
            a.bump.insert(b.to_string(), 1);
        }
        a.tags.extend(tags.iter().map(|s| s.to_string()));
        a
    }

    #[test]
    fn tags_go_by_name_and_keys_lose_the_stripped_prefix() {
        let t = target(PurgeKind::Xkey, "http://127.0.0.1:6081/", |c| {
            c.strip_prefix = "shop:".into()
        });
        let keys = t.surrogate_keys(&actions(
            &["shop:product:1"],
            &["shop:ver:product:1"],
            &["shop:tag:category:5"],
        ));
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(keys, ["category:5", "product:1", "ver:product:1"]);
        let t = target(PurgeKind::Xkey, "http://127.0.0.1:6081/", |c| {
            c.surrogate_keys = vec![KeySource::Tags]
        });
        let keys = t.surrogate_keys(&actions(&["shop:product:1"], &[], &["shop:tag:category:5"]));
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), ["category:5"]);
    }

    #[test]
    fn xkey_requests_are_purges_with_space_separated_keys_split_by_count() {
        let t = target(PurgeKind::Xkey, "http://127.0.0.1:6081/purge", |c| {
            c.max_keys_per_request = Some(2);
            c.header = Some("xkey-purge".into());
        });
        let requests = t.requests(&actions(&["a", "b", "c"], &[], &[])).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, "PURGE");
        assert_eq!(requests[0].path, "/purge");
        assert_eq!(requests[0].headers, vec![("xkey-purge".to_string(), "a b".to_string())]);
        assert_eq!(requests[1].headers, vec![("xkey-purge".to_string(), "c".to_string())]);
        assert_eq!(requests[0].body, None);
    }

    #[test]
    fn xkey_headers_stay_under_varnish_header_limit() {
        let t = target(PurgeKind::Xkey, "http://127.0.0.1:6081/", |_| {});
        let long: Vec<String> = (0..100).map(|i| format!("{i:0>200}")).collect();
        let refs: Vec<&str> = long.iter().map(String::as_str).collect();
        let requests = t.requests(&actions(&refs, &[], &[])).unwrap();
        assert!(requests.len() > 1);
        assert!(requests.iter().all(|r| r.headers[0].1.len() <= XKEY_MAX_HEADER_BYTES));
        assert_eq!(requests.iter().map(|r| r.keys).sum::<usize>(), 100);
        let bad = t.requests(&actions(&["a\nb"], &[], &[])).unwrap_err();
        assert_eq!(bad.kind(), "configuration");
    }

    #[test]
    fn fastly_and_cloudflare_send_json_with_the_token_and_their_limits() {
        let t = target(PurgeKind::Fastly, "https://api.fastly.com/service/SVC/purge", |_| {});
        let deleted: Vec<String> = (0..600).map(|i| format!("k{i:03}")).collect();
        let refs: Vec<&str> = deleted.iter().map(String::as_str).collect();
        let requests = t.requests(&actions(&refs, &[], &[])).unwrap();
        assert_eq!(requests.iter().map(|r| r.keys).collect::<Vec<_>>(), [256, 256, 88]);
        let r = &requests[2];
        assert_eq!((r.method, r.path.as_str()), ("POST", "/service/SVC/purge"));
        assert!(r.headers.contains(&("fastly-key".into(), "s3cret".into())));
        assert!(r.headers.contains(&("content-type".into(), "application/json".into())));
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["surrogate_keys"][0], "k512");
        assert_eq!(body["surrogate_keys"].as_array().unwrap().len(), 88);
        let all = t.purge_all_request();
        assert_eq!((all.method, all.path.as_str()), ("POST", "/service/SVC/purge_all"));

        let t = target(
            PurgeKind::Cloudflare,
            "https://api.cloudflare.com/client/v4/zones/Z/purge_cache",
            |_| {},
        );
        let requests = t.requests(&actions(&refs, &[], &[])).unwrap();
        assert_eq!(requests.len(), 6);
        assert!(requests[0]
            .headers
            .contains(&("authorization".into(), "Bearer s3cret".into())));
        assert_eq!(requests[0].body.as_deref().unwrap().matches(',').count(), 99);
        assert!(requests[0].body.as_deref().unwrap().starts_with(r#"{"tags":["k000","#));
        let all = t.purge_all_request();
        assert_eq!(all.body.as_deref(), Some(r#"{"purge_everything":true}"#));
        // A pattern has no surrogate key: the batch purges everything.
        let mut with_pattern = actions(&["a"], &[], &[]);
        with_pattern.delete_matching.insert("search:*".into());
        assert_eq!(t.requests(&with_pattern).unwrap(), vec![all]);
    }

    #[test]
    fn the_token_never_shows() {
        let t = target(PurgeKind::Fastly, "https://api.fastly.com/service/SVC/purge", |_| {});
        let dbg = format!("{t:?} {:?}", t.requests(&actions(&["a"], &[], &[])).unwrap());
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert_eq!(t.name(), "purge[0] fastly https://api.fastly.com");
    }

    #[test]
    fn validation_names_the_field() {
        let check = |f: &dyn Fn(&mut PurgeConfig)| {
            let mut c = PurgeConfig::new(PurgeKind::Fastly, "https://api.fastly.com/service/S/purge");
            c.token_env = Some("T".into());
            f(&mut c);
            c.validate(3).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert_eq!(check(&|_| {}), "");
        assert!(check(&|c| c.token_env = None).starts_with("purge[3].token_env:"));
        assert!(check(&|c| c.url = "ftp://x".into()).starts_with("purge[3].url:"));
        assert!(check(&|c| c.url = "https://api.fastly.com/service/S".into()).starts_with("purge[3].url:"));
        assert!(check(&|c| c.max_keys_per_request = Some(300)).starts_with("purge[3].max_keys_per_request:"));
        assert!(check(&|c| c.rate_limit = Some(-1.0)).starts_with("purge[3].rate_limit:"));
        assert!(check(&|c| c.timeout = Duration::ZERO).starts_with("purge[3].timeout:"));
        assert!(check(&|c| c.surrogate_keys.clear()).starts_with("purge[3].surrogate_keys:"));
        assert!(check(&|c| c.header = Some("xkey".into())).starts_with("purge[3].header:"));
        let mut x = PurgeConfig::new(PurgeKind::Xkey, "http://h:6081/");
        x.token_env = Some("T".into());
        assert!(x
            .validate(0)
            .unwrap_err()
            .to_string()
            .starts_with("purge[0].token_env:"));
    }

    #[test]
    fn cloudflare_success_false_is_a_failure_and_utf8_keys_go_as_bytes() {
        assert!(reports_failure(br#"{"success":false,"errors":[{"code":1134}]}"#));
        assert!(!reports_failure(br#"{"success":true}"#));
        assert!(!reports_failure(b"Invalidated 0 objects"));
        let t = target(PurgeKind::Xkey, "http://127.0.0.1:6081/", |_| {});
        let requests = t.requests(&actions(&["café:1"], &[], &[])).unwrap();
        let built = t.build(&requests[0]).unwrap();
        assert_eq!(built.headers()["xkey"].as_bytes(), "café:1".as_bytes());
        assert_eq!(built.headers()["host"], "127.0.0.1:6081");
        assert_eq!(built.method(), "PURGE");
    }

    #[test]
    fn the_rate_limit_spaces_requests_after_the_burst() {
        let mut r = RateLimit::new(2.0);
        let now = Instant::now();
        assert_eq!(r.take(now), Duration::ZERO);
        assert_eq!(r.take(now), Duration::ZERO);
        let wait = r.take(now);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(RateLimit::new(0.0).take(now), Duration::ZERO);
    }
}

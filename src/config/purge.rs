//! The `[[purge]]` configuration entry: which HTTP cache or CDN, where, with which credential,
//! and how requests are shaped and paced. Checked by [`PurgeConfig::validate`]; the target that
//! uses it is `sink::http::PurgeTarget`.

use super::{duration_text, ConfigError};
use hyper::Uri;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Fastly's documented limit for one batch surrogate-key purge.
pub const FASTLY_MAX_KEYS_PER_REQUEST: usize = 256;
/// Cloudflare's documented limit of tags per purge request (every plan today; it was 30 on
/// older plans: lower `max_keys_per_request` for those).
pub const CLOUDFLARE_MAX_KEYS_PER_REQUEST: usize = 100;
/// xkey has no documented limit; the header length is what bounds it (see below).
pub const XKEY_MAX_KEYS_PER_REQUEST: usize = 256;
/// Keys per xkey header are also bounded in bytes: Varnish refuses request headers longer than
/// `http_req_hdr_len` (8 KiB by default) with a 400.
pub const XKEY_MAX_HEADER_BYTES: usize = 6 * 1024;
/// Requests per second: Cloudflare allows 5 purge requests per second on the Pro plan (more on
/// Business and Enterprise, 5 per minute on Free); Fastly documents no purge rate limit;
/// a Varnish of one's own takes what it gets.
pub const CLOUDFLARE_RATE_LIMIT: f64 = 5.0;
pub const FASTLY_RATE_LIMIT: f64 = 50.0;
pub const XKEY_RATE_LIMIT: f64 = 0.0;
pub const DEFAULT_PURGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Off: the daemon's adaptive batching already merges what commits while a purge is in flight.
pub const DEFAULT_PURGE_COALESCE: Duration = Duration::ZERO;
/// The request header an xkey purge carries its keys in (the vmod's current example VCL).
pub const DEFAULT_XKEY_HEADER: &str = "xkey";
/// Attempts of one request within one `apply` (429, 5xx, connection errors) before the batch
/// fails and the daemon's own backoff takes over.
pub const PURGE_ATTEMPTS: u32 = 3;
/// A `Retry-After` longer than this fails the batch at once instead of holding `apply`.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Which service's request shape a `[[purge]]` entry speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeKind {
    /// Varnish with vmod xkey: `PURGE` with the keys in a header; purge-all is a `BAN`.
    Xkey,
    /// Fastly's batch surrogate-key purge; purge-all is `purge_all`.
    Fastly,
    /// Cloudflare's purge by cache tags; purge-all is `purge_everything`.
    Cloudflare,
}

impl PurgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Xkey => "xkey",
            PurgeKind::Fastly => "fastly",
            PurgeKind::Cloudflare => "cloudflare",
        }
    }

    pub fn default_max_keys(self) -> usize {
        match self {
            PurgeKind::Xkey => XKEY_MAX_KEYS_PER_REQUEST,
            PurgeKind::Fastly => FASTLY_MAX_KEYS_PER_REQUEST,
            PurgeKind::Cloudflare => CLOUDFLARE_MAX_KEYS_PER_REQUEST,
        }
    }

    pub fn default_rate_limit(self) -> f64 {
        match self {
            PurgeKind::Xkey => XKEY_RATE_LIMIT,
            PurgeKind::Fastly => FASTLY_RATE_LIMIT,
            PurgeKind::Cloudflare => CLOUDFLARE_RATE_LIMIT,
        }
    }
}

/// Which actions of a batch become surrogate keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// Tags, by name as written in the rules (`category:5`, not the Redis set key).
    Tags,
    /// Deleted keys and version keys, with `strip_prefix` removed.
    Keys,
}

/// What a rule's `delete_matching` pattern does to a purge target: patterns have no surrogate
/// key, so the only exact-or-coarser action is to purge everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternPolicy {
    /// Refuse to start with rules that use `delete_matching`.
    #[default]
    Refuse,
    /// Purge everything for every batch that holds a pattern.
    PurgeAll,
}

/// One `[[purge]]` table.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeConfig {
    pub kind: PurgeKind,
    /// Where purge requests go: the Varnish listener; Fastly's
    /// `https://api.fastly.com/service/<id>/purge`; Cloudflare's
    /// `https://api.cloudflare.com/client/v4/zones/<zone>/purge_cache`.
    pub url: String,
    /// The environment variable that holds the API token (Fastly, Cloudflare).
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default = "default_sources")]
    pub surrogate_keys: Vec<KeySource>,
    /// Removed from the start of deleted and version keys before they are sent.
    #[serde(default)]
    pub strip_prefix: String,
    /// Keys per request; the kind's documented limit when not set.
    #[serde(default)]
    pub max_keys_per_request: Option<usize>,
    /// Minimum time between the starts of two purge rounds (one round = every request of a
    /// batch); what commits meanwhile gathers into the next batch (see docs/configuration.md).
    #[serde(default = "default_coalesce", with = "duration_text")]
    pub coalesce: Duration,
    /// Requests per second at most (0: unlimited); the kind's default when not set.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// One request, connection included.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// xkey: the request header the VCL reads the keys from.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub delete_matching: PatternPolicy,
}

fn default_sources() -> Vec<KeySource> {
    vec![KeySource::Tags, KeySource::Keys]
}

fn default_coalesce() -> Duration {
    DEFAULT_PURGE_COALESCE
}

fn default_timeout() -> Duration {
    DEFAULT_PURGE_TIMEOUT
}

impl fmt::Debug for PurgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeConfig")
            .field("kind", &self.kind)
            .field("url", &crate::sink::redis::redact_url(&self.url))
            .field("token_env", &self.token_env)
            .field("surrogate_keys", &self.surrogate_keys)
            .field("strip_prefix", &self.strip_prefix)
            .field("max_keys_per_request", &self.max_keys_per_request())
            .field("coalesce", &self.coalesce)
            .field("rate_limit", &self.rate_limit())
            .field("timeout", &self.timeout)
            .field("header", &self.header)
            .field("delete_matching", &self.delete_matching)
            .finish()
    }
}

fn invalid(field: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

impl PurgeConfig {
    /// A target of `kind` at `url` with every default.
    pub fn new(kind: PurgeKind, url: impl Into<String>) -> PurgeConfig {
        PurgeConfig {
            kind,
            url: url.into(),
            token_env: None,
            surrogate_keys: default_sources(),
            strip_prefix: String::new(),
            max_keys_per_request: None,
            coalesce: DEFAULT_PURGE_COALESCE,
            rate_limit: None,
            timeout: DEFAULT_PURGE_TIMEOUT,
            header: None,
            delete_matching: PatternPolicy::Refuse,
        }
    }

    pub fn max_keys_per_request(&self) -> usize {
        self.max_keys_per_request.unwrap_or(self.kind.default_max_keys())
    }

    pub fn rate_limit(&self) -> f64 {
        self.rate_limit.unwrap_or(self.kind.default_rate_limit())
    }

    /// Every check of entry `i` that the configuration alone decides, naming the field.
    pub fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("purge[{i}].{name}");
        let endpoint = Endpoint::parse(&self.url).map_err(|message| invalid(field("url"), message))?;
        if self.kind == PurgeKind::Fastly && !endpoint.path.ends_with("/purge") {
            return Err(invalid(
                field("url"),
                "a Fastly url is the batch purge endpoint, https://api.fastly.com/service/<service id>/purge",
            ));
        }
        match (&self.token_env, self.kind) {
            (None, PurgeKind::Fastly | PurgeKind::Cloudflare) => {
                return Err(invalid(
                    field("token_env"),
                    format!(
                        "a {} target needs an API token: set token_env to the name of the environment variable that holds it",
                        self.kind.as_str()
                    ),
                ))
            }
            (Some(_), PurgeKind::Xkey) => {
                return Err(invalid(
                    field("token_env"),
                    "xkey targets send no credential; remove token_env and restrict PURGE and BAN with an ACL in the VCL",
                ))
            }
            (Some(name), _) if name.is_empty() || name.contains('=') => {
                return Err(invalid(
                    field("token_env"),
                    "must be the name of an environment variable, e.g. FASTLY_API_TOKEN (not the token itself)",
                ))
            }
            _ => {}
        }
        if self.surrogate_keys.is_empty() {
            return Err(invalid(
                field("surrogate_keys"),
                "must name at least one of \"tags\" and \"keys\"",
            ));
        }
        let limit = self.kind.default_max_keys();
        match self.max_keys_per_request {
            Some(0) => return Err(invalid(field("max_keys_per_request"), "must be at least 1")),
            Some(n) if self.kind != PurgeKind::Xkey && n > limit => {
                return Err(invalid(
                    field("max_keys_per_request"),
                    format!(
                        "{} accepts at most {limit} keys per request; set {limit} or less",
                        self.kind.as_str()
                    ),
                ))
            }
            _ => {}
        }
        let rate = self.rate_limit();
        if !rate.is_finite() || rate < 0.0 {
            return Err(invalid(
                field("rate_limit"),
                "must be a number of requests per second, 0 for unlimited",
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid(field("timeout"), "must be longer than zero, e.g. 5s"));
        }
        match (&self.header, self.kind) {
            (Some(_), PurgeKind::Fastly | PurgeKind::Cloudflare) => {
                return Err(invalid(
                    field("header"),
                    "only xkey targets take a header name; remove it",
                ))
            }
            (Some(h), PurgeKind::Xkey) if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                return Err(invalid(
                    field("header"),
                    format!("`{h}` is not an HTTP header name; use the one your VCL reads, e.g. xkey or xkey-purge"),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// The name for logs and metric labels: no path, no credentials.
    pub fn target_name(&self, i: usize) -> String {
        match Endpoint::parse(&self.url) {
            Ok(e) => format!("purge[{i}] {} {}://{}", self.kind.as_str(), e.scheme(), e.authority),
            Err(_) => format!("purge[{i}] {}", self.kind.as_str()),
        }
    }
}

/// The parsed `url` of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host[:port]`, for the Host header.
    pub(crate) authority: String,
    /// Path and query.
    pub(crate) path: String,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL ({e}); write e.g. http://127.0.0.1:6081/"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}` must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| format!("`{url}` has no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err("credentials in the url are not supported; use token_env".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        Ok(Endpoint {
            tls,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            authority: authority.as_str().to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        })
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

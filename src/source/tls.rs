//! TLS for replication connections (rustls): libpq's `sslmode` semantics — disable, prefer,
//! require (encrypt, no verification unless a root certificate is given), verify-ca (chain
//! only), verify-full (chain and host name) — with system roots plus an optional
//! `sslrootcert` file.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A byte stream to the server: plain TCP or Unix socket, or TLS over TCP.
pub(crate) trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

/// Bad TLS settings or a failed negotiation; the connection maps it into its own error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("bad connection settings: {0}")]
    Config(String),
    #[error("{0}")]
    Handshake(String),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        match text {
            "disable" => Some(SslMode::Disable),
            "allow" | "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl TlsOptions {
    /// Takes `sslmode` and `sslrootcert` out of a URL or key=value connection string and
    /// returns the rest (with `sslmode=disable`, since TLS is negotiated here, not by
    /// tokio-postgres' parser).
    pub fn extract(text: &str) -> Result<(String, TlsOptions), TlsError> {
        let mut options = TlsOptions::default();
        let mut take = |key: &str, value: &str| -> Result<bool, TlsError> {
            match key {
                "sslmode" => {
                    options.mode = SslMode::parse(value).ok_or_else(|| {
                        TlsError::Config(format!(
                            "unknown sslmode `{value}`; use disable, prefer, require, verify-ca or verify-full"
                        ))
                    })?;
                    Ok(true)
                }
                "sslrootcert" => {
                    options.root_cert = Some(PathBuf::from(value));
                    Ok(true)
                }
                _ => Ok(false),
            }
        };
        let trimmed = text.trim();
        let rest = if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            match trimmed.split_once('?') {
                None => trimmed.to_string(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        if !take(k, &percent_decode(v))? {
                            kept.push(pair.to_string());
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            let mut kept = Vec::new();
            for (k, v, raw) in split_key_values(trimmed) {
                if !take(&k, &v)? {
                    kept.push(raw);
                }
            }
            kept.join(" ")
        };
        Ok((rest, options))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits `k=v k2='quoted value'` into (key, value, raw text).
fn split_key_values(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '=' {
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && chars[i] == '\'' {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && !chars[i].is_whitespace() {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        if !key.is_empty() {
            let raw: String = chars[start..i.min(chars.len())].iter().collect();
            out.push((key, value, raw));
        }
    }
    out
}

/// The certificate checks of `sslmode=require` and `verify-ca` (`verify-full` uses rustls's own
/// verifier). Without a chain verifier any certificate is accepted (`require` without a root
/// certificate encrypts only); with one, the chain must lead to a trusted root but the host
/// name is not checked (`verify-ca`). Handshake signatures are always verified.
#[derive(Debug)]
struct LenientVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn root_store(options: &TlsOptions) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &options.root_cert {
        use rustls::pki_types::pem::PemObject;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::Handshake(format!("cannot read sslrootcert {}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| TlsError::Handshake(format!("bad certificate in {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Handshake(format!("unusable certificate in {}: {e}", path.display())))?;
        }
    }
    Ok(roots)
}

fn client_config(options: &TlsOptions) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let verify_chain = matches!(options.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (options.mode == SslMode::Require && options.root_cert.is_some());
    let config = if !verify_chain {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LenientVerifier { provider, chain: None }))
            .with_no_client_auth()
    } else {
        let roots = Arc::new(root_store(options)?);
        if options.mode == SslMode::VerifyFull {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LenientVerifier {
                    provider,
                    chain: Some(chain),
                }))
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// Sends SSLRequest when the mode asks for TLS and wraps the socket.
pub(crate) async fn negotiate(
    mut tcp: tokio::net::TcpStream,
    host: &str,
    options: &TlsOptions,
) -> Result<Box<dyn AsyncStream>, TlsError> {
    if options.mode == SslMode::Disable {
        return Ok(Box::new(tcp));
    }
    let mut request = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {}
        b'N' if options.mode == SslMode::Prefer => return Ok(Box::new(tcp)),
        b'N' => {
            return Err(TlsError::Handshake(format!(
                "the server at {host} does not accept TLS but sslmode={:?} requires it; enable ssl on the server or relax sslmode",
                options.mode
            )
            .to_lowercase()))
        }
        other => {
            return Err(TlsError::Protocol(format!(
                "unexpected answer {:?} to SSLRequest",
                other as char
            )))
        }
    }
    let config = client_config(options)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Handshake(format!("invalid server name {host}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| TlsError::Handshake(format!("handshake with {host} failed: {e}")))?;
    Ok(Box::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_tls_settings_from_urls_and_key_values() {
        let (rest, o) =
            TlsOptions::extract("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(o.mode, SslMode::VerifyFull);
        assert_eq!(o.root_cert.unwrap(), PathBuf::from("/tmp/ca.pem"));
        let (rest, o) = TlsOptions::extract("host=h sslmode=require user='a b' sslrootcert=/x.pem").unwrap();
        assert_eq!(rest, "host=h user='a b'");
        assert_eq!(o.mode, SslMode::Require);
        let (_, o) = TlsOptions::extract("postgres://h/db").unwrap();
        assert_eq!(o.mode, SslMode::Prefer);
        assert!(TlsOptions::extract("postgres://h/db?sslmode=maybe").is_err());
    }
}

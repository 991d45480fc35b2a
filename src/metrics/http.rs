//! The HTTP endpoints, served with hyper: `/metrics` (the exposition), `/healthz` (200 while
//! the process runs) and `/readyz` (200 when streaming, the last apply reached every target,
//! and the lag is under the bound).

use super::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// A slow or silent client gets this long to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ready_max_lag_bytes: u64) {
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let response = respond(&metrics, request.uri().path(), ready_max_lag_bytes);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

fn respond(metrics: &Metrics, path: &str, ready_max_lag_bytes: u64) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.render()),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => readiness(metrics, ready_max_lag_bytes),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn readiness(metrics: &Metrics, ready_max_lag_bytes: u64) -> (StatusCode, &'static str, String) {
    let connected = metrics.replication_connected();
    let redis = metrics.redis_ok();
    let lag = metrics.lag_bytes();
    let ready = connected && redis && lag <= ready_max_lag_bytes;
    let body = format!(
        "replication_connected {connected}\nredis_reachable {redis}\nlag_bytes {lag} (max {ready_max_lag_bytes})\n"
    );
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, "text/plain", body)
}

//! The agent's HTTP endpoints (hyper 1, HTTP/1.1 only):
//!
//! - `GET /metrics`: Prometheus/OpenMetrics text of [`Metrics`];
//! - `GET /healthz`: 200 while the agent runs;
//! - `GET /readyz`: 200 once the first full sync is applied, 503 before and while any
//!   network namespace is claimed by several Pods ([`crate::trust`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Liveness and readiness flags served by `/healthz` and `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    /// The agent's loop runs.
    pub running: AtomicBool,
    /// The first full sync has been applied.
    pub ready: AtomicBool,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Answers one request.
pub fn respond(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => text(StatusCode::OK, OPENMETRICS, metrics.encode()),
        "/healthz" | "/livez" if health.running.load(Ordering::SeqCst) => {
            text(StatusCode::OK, PLAIN, "ok\n".into())
        }
        "/healthz" | "/livez" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not running\n".into(),
        ),
        "/readyz" if metrics.netns_conflicts.get() > 0 => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "network namespace claimed by several Pods (see netpol_netns_conflicts)\n".into(),
        ),
        "/readyz" if health.ready.load(Ordering::SeqCst) => {
            text(StatusCode::OK, PLAIN, "ready\n".into())
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "first sync not applied yet\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

/// Serves the endpoints on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_follows_the_flag() {
        let m = Metrics::new();
        let h = Health::default();
        assert_eq!(
            respond("/readyz", &m, &h).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond("/healthz", &m, &h).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.running.store(true, Ordering::SeqCst);
        h.ready.store(true, Ordering::SeqCst);
        assert_eq!(respond("/readyz", &m, &h).status(), StatusCode::OK);
        assert_eq!(respond("/healthz", &m, &h).status(), StatusCode::OK);
        assert_eq!(respond("/metrics", &m, &h).status(), StatusCode::OK);
        assert_eq!(respond("/nope", &m, &h).status(), StatusCode::NOT_FOUND);
        // See: #11
        m.netns_conflicts.set(1);
        assert_eq!(
            respond("/readyz", &m, &h).status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready while a netns is shared"
        );
    }
}

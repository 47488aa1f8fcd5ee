//! The agent's HTTP endpoints (hyper 1, HTTP/1.1 only):
//!
//! - `GET /metrics`: Prometheus/OpenMetrics text of [`Metrics`];
//! - `GET /healthz`: 200 while the agent runs;
//! - `GET /readyz`: 200 once the first full sync is applied, 503 before and while any
//!   network namespace is claimed by several Pods ([`crate::trust`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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

/// Bounds of the HTTP side, so that no client can exhaust the agent's file descriptors
/// or tasks (the port is open on the node's network: `0.0.0.0:9090` in the DaemonSet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A client must send a complete request head within this time (hyper's
    /// `header_read_timeout`), else the connection is closed.
    pub header_read: Duration,
    /// A connection is closed after this long, whatever it does (keep-alive included).
    pub connection: Duration,
    /// Connections served at once; a connection beyond it is closed at once.
    pub max_connections: usize,
    /// First pause after an accept error (`EMFILE`, `ENFILE`, ...); doubles per
    /// consecutive error up to `accept_backoff_max`.
    pub accept_backoff: Duration,
    /// Longest pause after accept errors.
    pub accept_backoff_max: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(5),
            connection: Duration::from_secs(30),
            max_connections: 64,
            accept_backoff: Duration::from_millis(50),
            accept_backoff_max: Duration::from_secs(1),
        }
    }
}

/// Serves the endpoints on `listener` with the default [`HttpLimits`] until `shutdown`
/// turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) {
    serve_with(listener, metrics, health, shutdown, HttpLimits::default()).await;
}

/// Serves the endpoints on `listener` within `limits` until `shutdown` turns true.
///
/// Accept errors are logged once per burst (with the count at its end) and paced by a
/// doubling pause; connections over `limits.max_connections` are closed without being
/// read; each connection lives at most `limits.connection`.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
    limits: HttpLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Consecutive accept errors, and connections refused over the cap, in this burst.
    let mut accept_errors: u64 = 0;
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                if accept_errors > 0 {
                    tracing::warn!(errors = accept_errors, "accepting HTTP connections again");
                    accept_errors = 0;
                }
                a
            }
            Err(e) => {
                accept_errors += 1;
                if accept_errors == 1 {
                    tracing::warn!(error = %e, "accept failed: pausing (logged once per burst)");
                }
                let exp = u32::try_from(accept_errors - 1).unwrap_or(u32::MAX).min(16);
                let pause = limits
                    .accept_backoff
                    .saturating_mul(1u32 << exp)
                    .min(limits.accept_backoff_max);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused == 1 {
                tracing::warn!(%peer, max = limits.max_connections, "too many HTTP connections: closing new ones (logged once per burst)");
            }
            drop(stream);
            continue;
        };
        if refused > 0 && slots.available_permits() + 1 >= limits.max_connections {
            // The burst is over: the server is (nearly) idle again.
            tracing::info!(refused, "HTTP connection burst over");
            refused = 0;
        }
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = respond(req.uri().path(), &metrics, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "http connection ended with an error");
                }
                Err(_) => tracing::debug!(%peer, "http connection closed: lifetime bound"),
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

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads until the server closes (or resets) the connection within `bound`; what
    /// it sent.
    async fn closed_within(s: &mut tokio::net::TcpStream, bound: Duration) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        tokio::time::timeout(bound, s.read_to_end(&mut buf))
            .await
            .ok()
            .map(|_| buf)
    }

    // See: #11
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_half_sent_connections_are_capped_closed_and_real_requests_served() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        health.running.store(true, Ordering::SeqCst);
        let (stop, stopped) = watch::channel(false);
        let limits = HttpLimits {
            header_read: Duration::from_millis(300),
            connection: Duration::from_secs(10),
            max_connections: 8,
            ..HttpLimits::default()
        };
        let server = tokio::spawn(serve_with(
            listener,
            Arc::new(Metrics::new()),
            health,
            stopped,
            limits,
        ));
        for round in 0..2 {
            // The cap's worth of clients that never finish their request head.
            let mut idle = Vec::new();
            for _ in 0..limits.max_connections {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .unwrap();
                idle.push(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Over the cap: closed at once, unanswered (well before the header timeout).
            let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
            let sent = closed_within(&mut extra, Duration::from_secs(2)).await;
            assert_eq!(
                sent.as_deref(),
                Some(&b""[..]),
                "round {round}: over-cap connection served or left open"
            );
            // The idle ones: closed by the header read timeout.
            for s in &mut idle {
                let took = closed_within(s, Duration::from_secs(3)).await;
                assert!(took.is_some(), "round {round}: idle connection left open");
            }
            // The slots are free again: a real request is served.
            let resp = get(addr, "/healthz").await;
            assert!(resp.starts_with("HTTP/1.1 200"), "round {round}: {resp}");
        }
        stop.send(true).unwrap();
        server.await.unwrap();
    }
}

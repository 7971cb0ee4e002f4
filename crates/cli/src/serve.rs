//! The HTTP server of `lineup dev`: the API's router on hyper's HTTP/1, with the limits
//! `axum::serve` does not set. A client must send its headers within `HEADER_TIMEOUT`
//! (one that never finishes them does not hold a connection forever), and hyper takes
//! up to `HYPER_MAX_HEADERS` headers so that the router, not hyper, refuses a request
//! with too many: as a JSON 431 (`lineup_api::MAX_HEADERS`) rather than an empty one.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;
use tracing::{debug, warn};

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const HYPER_MAX_HEADERS: usize = 1_000;
/// How long open connections (long polls) get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(25);

pub async fn serve(listener: tokio::net::TcpListener, app: Router, stop: impl Future<Output = ()>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_headers(HYPER_MAX_HEADERS);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        warn!("connections did not drain in time");
    }
}

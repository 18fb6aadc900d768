//! The admin listener: liveness, readiness and metrics, plain HTTP.
//!
//! It binds to loopback by default and never serves anything secret, so it
//! can be scraped and probed by the local Nomad client without TLS.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::AppState;

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

async fn handle(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        (&http::Method::GET, "/readyz") => {
            let mut problems = Vec::new();
            match state.ingest.consul().leader().await {
                Ok(leader) if !leader.is_empty() => {}
                Ok(_) => problems.push("consul has no leader".to_string()),
                Err(e) => {
                    state.metrics.consul_error(e.op());
                    problems.push(format!("consul unreachable: {e}"));
                }
            }
            if state.certs.as_ref().is_none_or(|c| c.not_after() == 0) {
                problems.push("TLS certificate not loaded".into());
            }
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n".into(), "text/plain")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", problems.join("; ")),
                    "text/plain",
                )
            }
        }
        (&http::Method::GET, "/metrics") => {
            if let Some(c) = &state.certs {
                state.metrics.tls_not_after.set(c.not_after());
            }
            text(
                StatusCode::OK,
                state.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Serve the admin endpoints until `shutdown`.
///
/// # Errors
///
/// Never in practice; accept errors are logged and retried.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = watcher.watch(conn).await;
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

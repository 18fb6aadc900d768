//! The webhook listener: HTTPS in, one answer out, nothing kept.
//!
//! Every connection lives in its own task, which does the TLS handshake
//! and all I/O under timeouts, so a slow or silent client costs one permit
//! of a bounded semaphore and nothing else. Requests are routed by the
//! secret in their path; the outcome of each is logged once, here.

pub mod admin;
pub mod guard;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ServiceConfig};
use crate::ingest::{Change, Ingest, IngestError, Outcome};
use crate::metrics::{Metrics, WebhookLabels};
use crate::tls::CertStore;
use crate::webhook::{self, Parsed, WebhookError};
use guard::FailGuard;

/// Largest webhook body accepted (contract: 1 MiB → 413).
pub const MAX_BODY: usize = 1024 * 1024;

/// Timeouts and caps of the listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake: Duration,
    pub header_read: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// Everything a request handler needs, shared by all connections.
pub struct AppState {
    pub config: Arc<Config>,
    pub ingest: Ingest,
    pub metrics: Arc<Metrics>,
    pub guard: FailGuard,
    pub limits: Limits,
    pub certs: Option<Arc<CertStore>>,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        ingest: Ingest,
        metrics: Arc<Metrics>,
        certs: Option<Arc<CertStore>>,
    ) -> Self {
        let limits = Limits {
            max_connections: config.max_connections,
            ..Limits::default()
        };
        AppState {
            guard: FailGuard::new(config.failed_attempts_per_minute),
            config,
            ingest,
            metrics,
            limits,
            certs,
        }
    }
}

/// Why a request was not accepted. [`Rejection::response`] is the one
/// place that maps a failure to an HTTP status.
#[derive(Debug)]
enum Rejection {
    NotFound,
    RateLimited(Duration),
    Forbidden,
    TooLarge,
    BodyTimeout,
    Signature(WebhookError),
    BadRequest(String),
    Ingest(IngestError),
}

impl Rejection {
    fn outcome(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::RateLimited(_) => "rate_limited",
            Rejection::Forbidden => "forbidden",
            Rejection::TooLarge => "too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::Signature(_) => "unauthorized",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Ingest(IngestError::Corrupt { .. }) => "error",
            Rejection::Ingest(_) => "unavailable",
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let (status, body, retry_after) = match self {
            // SECURITY: one body for every unknown path and wrong secret,
            // so an answer never tells a near miss from nonsense.
            Rejection::NotFound => (StatusCode::NOT_FOUND, json!({"error": "not found"}), None),
            Rejection::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "too many failed attempts"}),
                Some(wait.as_secs().max(1)),
            ),
            Rejection::Forbidden => (
                StatusCode::FORBIDDEN,
                json!({"error": "source address not allowed"}),
                None,
            ),
            Rejection::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("body over {MAX_BODY} bytes")}),
                None,
            ),
            Rejection::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "body not received in time"}),
                None,
            ),
            Rejection::Signature(e) => (
                StatusCode::UNAUTHORIZED,
                json!({"error": e.to_string()}),
                None,
            ),
            Rejection::BadRequest(reason) => {
                (StatusCode::BAD_REQUEST, json!({"error": reason}), None)
            }
            Rejection::Ingest(e @ IngestError::Corrupt { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": e.to_string()}),
                None,
            ),
            Rejection::Ingest(IngestError::Pinned(_)) | Rejection::Ingest(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "state store unavailable, nothing was written; retry later"}),
                Some(5),
            ),
        };
        let mut resp = json_response(status, &body);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What one request did, for the log line and the metrics.
struct Report {
    service: Option<usize>,
    tag: Option<String>,
    outcome: &'static str,
}

/// Serve webhooks on `listener` until `shutdown` completes, then drain
/// open connections for at most `limits.shutdown_grace`.
///
/// # Errors
///
/// Only when the listener itself fails in a way that retrying cannot fix.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    // Cancelled when shutdown starts: connections still in their TLS
    // handshake (or silent, like a TCP health check) give up at once
    // instead of holding the drain until the handshake timeout.
    let stopping = tokio_util::sync::CancellationToken::new();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let stopping = stopping.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let handshake = tokio::time::timeout(state.limits.handshake, acceptor.accept(tcp));
            let handshake = tokio::select! {
                r = handshake => r,
                () = stopping.cancelled() => return,
            };
            let tls = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, peer, &state).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    drop(listener);
    stopping.cancel();
    tracker.close();
    let grace = state.limits.shutdown_grace;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "connections still open at the shutdown deadline; closing them");
        }
    }
    Ok(())
}

/// Handle one request: log it once, count it once.
pub async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: &AppState,
) -> Response<Full<Bytes>> {
    // A health check of the HTTPS listener itself (Nomad, load balancers):
    // proves TLS and the listener are up. Not a webhook: neither counted,
    // logged nor charged to the failed-attempt limit.
    if req.uri().path() == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        return resp;
    }
    let started = Instant::now();
    let (resp, report) = route(req, peer, state).await;
    let elapsed = started.elapsed();
    let svc = report.service.map(|i| &state.config.services[i]);
    let service = svc.map_or("", |s| s.name.as_str());
    let source = svc.map_or("", |s| s.source.as_str());
    state
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels {
            service: service.to_string(),
            source: source.to_string(),
            outcome: report.outcome,
        })
        .inc();
    if svc.is_some() {
        state.metrics.ingest_seconds.observe(elapsed.as_secs_f64());
    }
    // SECURITY: the path (which holds the secret) is never logged.
    tracing::info!(
        service,
        source,
        tag = report.tag.as_deref().unwrap_or(""),
        outcome = report.outcome,
        status = resp.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "webhook"
    );
    resp
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: &AppState,
) -> (Response<Full<Bytes>>, Report) {
    let mut report = Report {
        service: None,
        tag: None,
        outcome: "not_found",
    };
    let (parts, body) = req.into_parts();
    let ip = guard::client_ip(
        peer,
        parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        &state.config.trusted_proxies,
    );
    let reject = |report: &mut Report, r: Rejection| {
        report.outcome = r.outcome();
        r.response()
    };
    if let Some(wait) = state.guard.blocked(ip) {
        drain(body).await;
        return (reject(&mut report, Rejection::RateLimited(wait)), report);
    }

    // Hash something for every request, so an unknown path costs the same
    // as a wrong secret.
    let path = parts.uri.path();
    let presented = path.strip_prefix("/hooks/").unwrap_or(path);
    let matched = guard::match_secret(&state.config.services, presented.as_bytes());
    let idx = match matched {
        Some(i) if parts.method == Method::POST && path.starts_with("/hooks/") => i,
        _ => {
            let r = match state.guard.fail(ip) {
                Some(wait) => Rejection::RateLimited(wait),
                None => Rejection::NotFound,
            };
            drain(body).await;
            return (reject(&mut report, r), report);
        }
    };
    report.service = Some(idx);
    let svc = &state.config.services[idx];
    if !svc.allow_cidrs.iter().any(|n| n.contains(&ip)) {
        drain(body).await;
        return (reject(&mut report, Rejection::Forbidden), report);
    }

    let body = match read_body(body, &parts.headers, state.limits.body_read).await {
        Ok(b) => b,
        Err(r) => return (reject(&mut report, r), report),
    };
    let parsed = webhook::parse(
        svc.source,
        &webhook::Request {
            headers: &parts.headers,
            body: &body,
            signing_secret: svc.signing_secret.as_ref().map(|s| s.expose()),
        },
    );
    let pushes = match parsed {
        Ok(Parsed::Push(p)) => p,
        Ok(Parsed::Ping) => {
            report.outcome = "ping";
            return (
                json_response(StatusCode::OK, &json!({"pong": true})),
                report,
            );
        }
        Ok(Parsed::Ignored(reason)) => {
            report.outcome = "ignored";
            let body = json!({
                "service": svc.name, "key": svc.key, "tag": null, "previous": null,
                "changed": false, "reason": reason, "rollout": "none",
            });
            return (json_response(StatusCode::OK, &body), report);
        }
        Err(e @ (WebhookError::SignatureMissing(_) | WebhookError::SignatureMismatch)) => {
            let r = match state.guard.fail(ip) {
                Some(wait) => Rejection::RateLimited(wait),
                None => Rejection::Signature(e),
            };
            return (reject(&mut report, r), report);
        }
        Err(WebhookError::Malformed(m)) => {
            return (reject(&mut report, Rejection::BadRequest(m)), report)
        }
    };
    if let Some(p) = pushes
        .iter()
        .find(|p| !p.repository.eq_ignore_ascii_case(&svc.repository))
    {
        let msg = format!(
            "repository {:?} does not match this service's repository {:?}",
            p.repository, svc.repository
        );
        return (reject(&mut report, Rejection::BadRequest(msg)), report);
    }
    if pushes.is_empty() {
        return (
            reject(
                &mut report,
                Rejection::BadRequest(format!("{}: no tag in payload", svc.source)),
            ),
            report,
        );
    }
    match ingest_best(state, svc, pushes).await {
        Ok(outcome) => {
            report.tag = Some(outcome.tag.clone());
            report.outcome = if outcome.changed {
                "applied"
            } else {
                match outcome.reason.as_deref() {
                    Some("unchanged") => "unchanged",
                    Some("pinned") => "pinned",
                    _ => "ignored",
                }
            };
            (accepted(svc, &outcome), report)
        }
        Err(e) => {
            tracing::warn!(service = %svc.name, error = %e, "ingest failed; nothing written");
            (reject(&mut report, Rejection::Ingest(e)), report)
        }
    }
}

/// Apply the one tag of a push that the service's policy ranks highest.
///
/// SECURITY: a push may list thousands of tags (Quay, Harbor); applying
/// each would cost a Consul transaction apiece while the client waits, and
/// flood the history. One push is one decision and one transaction.
async fn ingest_best(
    state: &AppState,
    svc: &ServiceConfig,
    mut pushes: Vec<webhook::ImagePush>,
) -> Result<Outcome, IngestError> {
    let pick = svc
        .policy
        .policy
        .best_candidate(pushes.iter().map(|p| p.tag.as_str()))
        // None passes the filters: the last one gets the filter's reason.
        .unwrap_or(pushes.len() - 1);
    let push = pushes.swap_remove(pick);
    state
        .ingest
        .apply(
            svc,
            &Change::Push {
                push,
                source: svc.source,
            },
        )
        .await
}

fn accepted(svc: &ServiceConfig, o: &Outcome) -> Response<Full<Bytes>> {
    let mut body = json!({
        "service": svc.name,
        "key": svc.key,
        "tag": o.tag,
        "previous": o.previous,
        "changed": o.changed,
        "rollout": if o.rollout_queued { "queued" } else { "none" },
    });
    if let Some(reason) = &o.reason {
        body["reason"] = json!(reason);
    }
    let status = if o.rollout_queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    json_response(status, &body)
}

/// Read and drop a small body before answering a rejected request.
/// HTTP/2 clients (curl) report a stream error when the answer comes
/// before their body was taken; a large or slow body is not waited for.
async fn drain(body: Incoming) {
    const DRAIN_LIMIT: usize = 64 * 1024;
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        Limited::new(body, DRAIN_LIMIT).collect(),
    )
    .await;
}

/// Read the body, refusing more than [`MAX_BODY`] while it streams.
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: Duration,
) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Rejection::TooLarge);
    }
    match tokio::time::timeout(limit, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(Rejection::BodyTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Rejection::TooLarge),
        Ok(Err(e)) => Err(Rejection::BadRequest(format!(
            "body could not be read: {e}"
        ))),
    }
}

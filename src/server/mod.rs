//! The webhook listener: HTTPS in, one answer out, nothing kept.
//!
//! Every connection lives in its own task, which does the TLS handshake
//! and all I/O under deadlines (see [`conn`]), so a slow or silent client
//! costs one permit of a bounded semaphore, one of its address's few
//! slots, and nothing else. Requests are routed by the secret in their
//! path; each accepted delivery is logged once, here, and rejections are
//! summarised per address ([`reject_log`]).

pub mod admin;
pub mod conn;
pub mod digest;
pub mod guard;
pub mod reject_log;
pub mod waiting;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ServiceConfig};
use crate::ingest::{Change, Ingest, IngestError, Ingested};
use crate::metrics::{Metrics, WebhookLabels};
use crate::tls::CertStore;
use crate::webhook::{self, Parsed, WebhookError};
use guard::{AddrKey, FailGuard};
use reject_log::RejectLog;

/// Largest webhook body accepted (contract: 1 MiB → 413).
pub const MAX_BODY: usize = 1024 * 1024;

/// After a 413, how much more of the body is read (and dropped) before
/// the stream is reset (HTTP/2) or the connection closed (HTTP/1.1), so
/// a client still writing reaches the end of its body and reads the
/// answer instead of a write error.
const DRAIN_AFTER_413_BYTES: usize = 2 * 1024 * 1024;
const DRAIN_AFTER_413_TIME: Duration = Duration::from_secs(2);

/// Timeouts and caps of the listener (the configurable ones come from
/// [`crate::config::ListenerSettings`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// From accept to the first complete request head.
    pub first_request: Duration,
    /// HTTP/1.1: from the end of one request to the next complete head
    /// (hyper's header-read timer, which runs while the connection idles).
    pub header_read: Duration,
    /// No request in flight for this long: the connection is closed.
    pub idle: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub http2_max_concurrent_streams: u32,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(1024, &crate::config::ListenerSettings::DEFAULT)
    }
}

impl Limits {
    pub fn from_config(max_connections: usize, l: &crate::config::ListenerSettings) -> Self {
        Limits {
            first_request: l.first_request_timeout,
            header_read: l.idle_timeout,
            idle: l.idle_timeout,
            body_read: Duration::from_secs(30),
            max_connections,
            max_connections_per_address: l.max_connections_per_address,
            http2_max_concurrent_streams: l.http2_max_concurrent_streams,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
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
    pub rejects: RejectLog,
    pub limits: Limits,
    pub certs: Option<Arc<CertStore>>,
    /// Requests waiting for a rollout's outcome.
    pub waits: waiting::Waits,
    /// `resolve_digest` services' registry clients.
    pub digests: digest::Resolvers,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        ingest: Ingest,
        metrics: Arc<Metrics>,
        certs: Option<Arc<CertStore>>,
    ) -> Self {
        let limits = Limits::from_config(config.max_connections, &config.listener);
        AppState {
            guard: FailGuard::new(
                config.failed_attempts_per_minute,
                config.listener.failed_attempts_max_addresses,
                metrics.failed_attempt_addresses.clone(),
            ),
            rejects: RejectLog::default(),
            digests: digest::Resolvers::new(&config),
            config,
            ingest,
            metrics,
            limits,
            certs,
            waits: waiting::Waits::default(),
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
    /// The status path names a seq no change was given.
    UnknownRollout(u64),
    /// The status path could not read the records.
    ChangeStatus(crate::store::StoreError),
    /// `resolve_digest`: the registry gave no digest for the pushed tag.
    Digest(digest::DigestError),
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
            Rejection::UnknownRollout(_) => "unknown_rollout",
            Rejection::ChangeStatus(_) => "unavailable",
            Rejection::Digest(_) => "registry_error",
        }
    }

    /// The one-line reason an operator needs in the rejection summary.
    fn detail(&self) -> Option<String> {
        match self {
            Rejection::Signature(e) => Some(e.to_string()),
            Rejection::BadRequest(reason) => Some(reason.clone()),
            Rejection::ChangeStatus(e) => Some(e.to_string()),
            Rejection::Digest(e) => Some(e.to_string()),
            _ => None,
        }
    }

    fn response(&self) -> Response<Reply> {
        let (status, body, retry_after) = match self {
            // SECURITY: one body for every unknown path and wrong secret,
            // so an answer never tells a near miss from nonsense. These two
            // answers are what a flood gets: fixed bytes, no JSON built.
            Rejection::NotFound => {
                return static_json(StatusCode::NOT_FOUND, b"{\"error\":\"not found\"}\n", None)
            }
            Rejection::RateLimited(wait) => {
                return static_json(
                    StatusCode::TOO_MANY_REQUESTS,
                    b"{\"error\":\"too many failed attempts\"}\n",
                    Some(wait.as_secs().max(1)),
                )
            }
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
            Rejection::UnknownRollout(seq) => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no change with seq {seq} (yet)")}),
                None,
            ),
            Rejection::ChangeStatus(e @ crate::store::StoreError::Corrupt { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": e.to_string()}),
                None,
            ),
            Rejection::ChangeStatus(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "state store unavailable; retry later"}),
                Some(5),
            ),
            // Nothing was written; the registry may deliver again.
            Rejection::Digest(e) => (
                StatusCode::BAD_GATEWAY,
                json!({"error": e.to_string()}),
                None,
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

fn static_json(
    status: StatusCode,
    body: &'static [u8],
    retry_after: Option<u64>,
) -> Response<Reply> {
    let mut resp = Response::new(Reply::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Reply> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Reply::new(Bytes::from(bytes)));
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
    /// The client address as the limits see it.
    client: Option<std::net::IpAddr>,
    detail: Option<String>,
}

/// A response body: the answer's bytes, then, for an answer given before
/// the request body was read, what happens to that body.
///
/// The request body is held until the answer has been sent. On HTTP/2
/// that makes the stream half-closed by us when the body is dropped, and
/// h2 then resets it with NO_ERROR (RFC 9113 §8.1: "a complete response
/// prior to the client sending an entire request"), which clients read as
/// "stop sending, the answer stands". After a 413 the rest of the body is
/// first read and dropped, bounded (see [`too_large`]).
pub struct Reply {
    data: Option<Bytes>,
    after: After,
}

enum After {
    Nothing,
    Hold(#[allow(dead_code)] Incoming),
    Drain {
        body: Incoming,
        left: usize,
        until: Pin<Box<tokio::time::Sleep>>,
        /// HTTP/1.1: leave the length open (see `size_hint`).
        open_length: bool,
    },
}

impl Reply {
    pub fn new(data: Bytes) -> Self {
        Reply {
            data: Some(data),
            after: After::Nothing,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let After::Drain {
            body, left, until, ..
        } = &mut this.after
        {
            loop {
                if until.as_mut().poll(cx).is_ready() {
                    break;
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(f))) => {
                        let n = f.data_ref().map_or(0, Bytes::len);
                        if n >= *left {
                            break;
                        }
                        *left -= n;
                    }
                    Poll::Ready(_) => break,
                }
            }
            this.after = After::Nothing;
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !matches!(self.after, After::Drain { .. })
    }

    fn size_hint(&self) -> SizeHint {
        // While a drain is to follow, the length is left open: HTTP/1.1
        // then answers chunked, and hyper keeps polling this body (and so
        // the drain) after the data, instead of ending it at its
        // Content-Length and closing on a client still writing.
        if matches!(
            self.after,
            After::Drain {
                open_length: true,
                ..
            }
        ) {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
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
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    let per_address = conn::ConnLimiter::new(state.limits.max_connections_per_address);
    let tracker = TaskTracker::new();
    // `stopping`: shutdown started; connections finish their request and
    // close, and those not yet past their first request give up at once.
    // `hard_stop`: the grace is over; whatever is left is dropped.
    let shared = ConnShared {
        acceptor: TlsAcceptor::from(tls),
        builder: Arc::new(http_builder(&state.limits)),
        state: state.clone(),
        stopping: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
    };
    let summary_stop = CancellationToken::new();
    let summary = tokio::spawn(summarise_rejections(state.clone(), summary_stop.clone()));
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
        let accepted_at = tokio::time::Instant::now();
        let Ok(slot) = address_slot(&state, &per_address, peer) else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tracker.spawn(connection(
            shared.clone(),
            tcp,
            peer,
            accepted_at,
            permit,
            slot,
        ));
    }

    drop(listener);
    close_connections(&shared, &tracker).await;
    summary_stop.cancel();
    let _ = summary.await;
    Ok(())
}

/// What the accept loop hands every connection task.
#[derive(Clone)]
struct ConnShared {
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stopping: CancellationToken,
    hard_stop: CancellationToken,
}

/// The peer's address already holds its `max_connections_per_address`.
struct AddressFull;

/// The per-address slot a connection from `peer` holds while open
/// (`None`: the peer is a trusted proxy, exempt); `Err` when the address
/// is at its cap, which is counted and recorded here.
fn address_slot(
    state: &AppState,
    per_address: &Arc<conn::ConnLimiter>,
    peer: SocketAddr,
) -> Result<Option<conn::AddrSlot>, AddressFull> {
    // SECURITY: the per-address cap counts the TCP peer, the only
    // address a stranger cannot choose. A trusted proxy is exempt: every
    // client behind it shares its address, so capping it would let one
    // of them lock the rest out; the proxy is where per-client
    // connection limits belong (max_connections still bounds it).
    let peer_ip = guard::canonical(peer.ip());
    if state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer_ip))
    {
        return Ok(None);
    }
    match per_address.try_acquire(AddrKey::of(peer_ip)) {
        Some(s) => Ok(Some(s)),
        None => {
            state.metrics.connection_closed("per_address_limit");
            state
                .rejects
                .record(AddrKey::of(peer_ip), "connection_refused", None, None);
            Err(AddressFull)
        }
    }
}

/// One connection's task: it holds its global and per-address slots
/// until the connection ends, and counts it.
async fn connection(
    shared: ConnShared,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    accepted_at: tokio::time::Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    slot: Option<conn::AddrSlot>,
) {
    let _permit = permit;
    let _slot = slot;
    let state = &shared.state;
    state.metrics.connections_open.inc();
    let end = serve_one(
        tcp,
        peer,
        accepted_at,
        shared.acceptor,
        state,
        &shared.builder,
        &shared.stopping,
        &shared.hard_stop,
    )
    .await;
    state.metrics.connections_open.dec();
    if let Some(reason) = end.reason() {
        state.metrics.connection_closed(reason);
    }
}

/// Shutdown: connections finish their request and close; those still
/// open after `shutdown_grace` are dropped.
async fn close_connections(shared: &ConnShared, tracker: &TaskTracker) {
    shared.stopping.cancel();
    shared.state.waits.stop();
    tracker.close();
    let grace = shared.state.limits.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open at the shutdown deadline; closing them"
        );
        shared.hard_stop.cancel();
        tracker.wait().await;
    }
}

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer whenever it waits for a request head,
        // idle keep-alive included: on HTTP/1.1 it is the idle timeout
        // plus the time to send the next head.
        .header_read_timeout(limits.header_read)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// One connection: TLS handshake and first request head under one
/// deadline from accept, then requests until idle, the peer leaves or the
/// server stops.
#[allow(clippy::too_many_arguments)]
async fn serve_one(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    accepted_at: tokio::time::Instant,
    acceptor: TlsAcceptor,
    state: &Arc<AppState>,
    builder: &auto::Builder<TokioExecutor>,
    stopping: &CancellationToken,
    hard_stop: &CancellationToken,
) -> conn::End {
    let mut deadline = accepted_at + state.limits.first_request;
    let handshake = acceptor.accept(tcp);
    tokio::pin!(handshake);
    // When shutdown starts, a handshake in progress gets a short grace
    // (a client accepted just before a reload is served, not cut), while a
    // silent connection, like a TCP health check, cannot hold the drain.
    let mut stop_seen = false;
    let tls = loop {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, handshake.as_mut()) => break match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return conn::End::Done;
                }
                Err(_) if stop_seen => return conn::End::Shutdown,
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done by the first-request deadline");
                    return conn::End::FirstRequestTimeout;
                }
            },
            () = stopping.cancelled(), if !stop_seen => {
                stop_seen = true;
                deadline = deadline.min(
                    tokio::time::Instant::now() + conn::STOP_FIRST_REQUEST_GRACE,
                );
            }
        }
    };
    let activity = conn::Activity::new();
    let svc = {
        let state = state.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let in_flight = activity.request();
            let state = state.clone();
            async move {
                let resp = handle(req, peer, &state).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let served = builder.serve_connection(TokioIo::new(tls), svc);
    conn::drive(
        served,
        &activity,
        deadline,
        state.limits.idle,
        stopping,
        hard_stop,
    )
    .await
}

/// Write the rejection summary every [`reject_log::INTERVAL`], and once
/// more when the server stops.
///
/// A fixed period rather than a line per event is the point: the log's
/// size no longer follows a stranger's request rate.
async fn summarise_rejections(state: Arc<AppState>, stopping: CancellationToken) {
    let name = |i: usize| {
        state
            .config
            .services
            .get(i)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    };
    let mut every = tokio::time::interval(reject_log::INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => state.rejects.flush(name),
            () = stopping.cancelled() => {
                state.rejects.flush(name);
                return;
            }
        }
    }
}

/// Handle one request: count it once; log an accepted one at once and a
/// rejected one in its address's summary.
pub async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &AppState) -> Response<Reply> {
    // A health check of the HTTPS listener itself (Nomad, load balancers):
    // proves TLS and the listener are up. Not a webhook: neither counted,
    // logged nor charged to the failed-attempt limit.
    if req.uri().path() == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = Response::new(Reply::new(Bytes::from_static(b"ok\n")));
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
    // A tag the registry does not know (or a registry that is down)
    // answers 502 as often as the holder of an unsigned URL asks.
    let summarised = resp.status().is_client_error() || report.outcome == "registry_error";
    if summarised {
        // SECURITY: a stranger chooses how many of these there are, so
        // they are summarised (at most one line per address per interval)
        // rather than logged one by one; the metric counts each.
        let client = report.client.unwrap_or_else(|| guard::canonical(peer.ip()));
        state.rejects.record(
            AddrKey::of(client),
            report.outcome,
            report.service,
            report.detail.as_deref(),
        );
        return resp;
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

/// Decide one webhook request. Long because it is the contract's table
/// in order (secret, address, body, signature, payload, ingest), and
/// each step's early answer is clearer in place than behind a helper.
async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: &AppState,
) -> (Response<Reply>, Report) {
    let mut report = Report {
        service: None,
        tag: None,
        outcome: "not_found",
        client: None,
        detail: None,
    };
    let (parts, mut body) = req.into_parts();
    let ip = guard::client_ip(
        peer,
        parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes),
        &state.config.trusted_proxies,
    );
    report.client = Some(ip);

    // SECURITY: the failed-attempt limit is consulted only for requests
    // that fail. A request whose secret matches is processed whatever its
    // address's count (its signature is still checked, and a bad one
    // counts as a failure), so nobody sharing a registry's address pool
    // (Docker Hub, GitHub and Quay deliver from shared pools) can get its
    // deliveries refused by failing on purpose. A limited address used to
    // get 429 for everything, so that a guesser could not tell a hit from
    // a miss. That "no oracle" rule bought nothing: secrets are 256-bit,
    // and for a limited address the only request whose answer differs
    // (processed instead of 429) is one carrying the correct secret,
    // which guessing cannot find; the 404/429 difference itself tells
    // nothing about any secret. The limit slows guessing and the noise it
    // makes; the secret's size is what protects it.

    // Hash something for every request, so an unknown path costs the same
    // as a wrong secret.
    let path = parts.uri.path();
    let rest = path.strip_prefix("/hooks/").unwrap_or(path);
    // The status path lives under the same secret: `<secret>/rollouts/<seq>`.
    let (presented, status_seq) = match rest.split_once("/rollouts/") {
        Some((secret, seq)) => (secret, Some(seq)),
        None => (rest, None),
    };
    let matched = guard::match_secret(&state.config.services, presented.as_bytes());
    let wanted = match status_seq {
        None => Method::POST,
        Some(_) => Method::GET,
    };
    let idx = match matched {
        Some(i) if parts.method == wanted && path.starts_with("/hooks/") => i,
        _ => {
            let r = match state.guard.fail(ip) {
                Some(wait) => Rejection::RateLimited(wait),
                None => Rejection::NotFound,
            };
            drain(&mut body).await;
            return (hold(reject(&mut report, r), body), report);
        }
    };
    report.service = Some(idx);
    let svc = &state.config.services[idx];
    if !svc.allow_cidrs.iter().any(|n| n.contains(&ip)) {
        drain(&mut body).await;
        return (
            hold(reject(&mut report, Rejection::Forbidden), body),
            report,
        );
    }

    if let Some(seq) = status_seq {
        drain(&mut body).await;
        report.outcome = "status";
        let resp = match rollout_status(state, svc, seq, parts.uri.query()).await {
            Ok(resp) => resp,
            Err(r) => reject(&mut report, r),
        };
        return (resp, report);
    }
    // Checked before anything is written: bad input changes nothing.
    let cap = svc
        .rollout
        .as_ref()
        .map_or(Duration::ZERO, |r| r.total_timeout());
    let wait = match waiting::wait_param(parts.uri.query(), cap) {
        Ok(w) => w,
        Err(m) => {
            drain(&mut body).await;
            return (
                hold(reject(&mut report, Rejection::BadRequest(m)), body),
                report,
            );
        }
    };

    let body = match read_body(&mut body, &parts.headers, state.limits.body_read).await {
        Ok(b) => b,
        Err(Rejection::TooLarge) => {
            let resp = reject(&mut report, Rejection::TooLarge);
            return (too_large(resp, body, &parts), report);
        }
        Err(r) => return (hold(reject(&mut report, r), body), report),
    };
    let resp = deliver(state, svc, ip, &parts, &body, wait, &mut report).await;
    (resp, report)
}

/// The authenticated webhook's payload: parse (signature included), hold
/// it to the service's repository, apply the best tag, answer.
async fn deliver(
    state: &AppState,
    svc: &ServiceConfig,
    ip: std::net::IpAddr,
    parts: &http::request::Parts,
    body: &Bytes,
    wait: Duration,
    report: &mut Report,
) -> Response<Reply> {
    let parsed = webhook::parse(
        svc.source,
        &webhook::Request {
            headers: &parts.headers,
            body,
            signing_secret: svc.signing_secret.as_ref().map(|s| s.expose()),
        },
    );
    let pushes = match parsed {
        Ok(Parsed::Push(p)) => p,
        Ok(Parsed::Ping) => {
            report.outcome = "ping";
            return json_response(StatusCode::OK, &json!({"pong": true}));
        }
        Ok(Parsed::Ignored(reason)) => {
            report.outcome = "ignored";
            let body = json!({
                "service": svc.name, "key": svc.key, "tag": null, "previous": null,
                "changed": false, "reason": reason, "rollout": "none",
            });
            return json_response(StatusCode::OK, &body);
        }
        Err(e @ (WebhookError::SignatureMissing(_) | WebhookError::SignatureMismatch)) => {
            let r = match state.guard.fail(ip) {
                Some(wait) => Rejection::RateLimited(wait),
                None => Rejection::Signature(e),
            };
            return reject(report, r);
        }
        Err(WebhookError::Malformed(m)) => {
            return reject(report, Rejection::BadRequest(m));
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
        return reject(report, Rejection::BadRequest(msg));
    }
    if pushes.is_empty() {
        return reject(
            report,
            Rejection::BadRequest(format!("{}: no tag in payload", svc.source)),
        );
    }
    let push = match best_resolved(state, svc, pushes).await {
        Ok(p) => p,
        Err(e) => {
            report.tag = Some(e.tag.clone());
            return reject(report, Rejection::Digest(e));
        }
    };
    let change = Change::Push {
        push,
        source: svc.source,
    };
    match state.ingest.apply(svc, &change).await {
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
            accepted(state, svc, &outcome, parts.uri.path(), wait).await
        }
        Err(e) => {
            tracing::warn!(service = %svc.name, error = %e, "ingest failed; nothing written");
            // Named in the log line even when nothing could be written
            // (here, off the accepted path, so that path copies it once).
            report.tag = Some(change.tag().to_string());
            reject(report, Rejection::Ingest(e))
        }
    }
}

/// Note a rejection in the request's report and build its answer.
fn reject(report: &mut Report, r: Rejection) -> Response<Reply> {
    report.outcome = r.outcome();
    report.detail = r.detail();
    r.response()
}

/// The one tag of a push that the service's policy ranks highest, with
/// its digest asked of the registry when the payload has none and the
/// service sets `resolve_digest`.
///
/// SECURITY: a push may list thousands of tags (Quay, Harbor); applying
/// each would cost a Consul transaction apiece while the client waits, and
/// flood the history. One push is one decision and one transaction, and
/// at most one registry request: only for the tag that is applied, and
/// never for one the filters refuse (that push writes nothing anyway).
async fn best_resolved(
    state: &AppState,
    svc: &ServiceConfig,
    mut pushes: Vec<webhook::ImagePush>,
) -> Result<webhook::ImagePush, digest::DigestError> {
    let best = svc
        .policy
        .policy
        .best_candidate(pushes.iter().map(|p| p.tag.as_str()));
    // None passes the filters: the last one gets the filter's reason.
    let mut push = pushes.swap_remove(best.unwrap_or(pushes.len() - 1));
    if best.is_some() && push.digest.is_none() {
        push.digest = state
            .digests
            .resolve(svc, &push.tag, &state.metrics)
            .await?;
    }
    Ok(push)
}

/// The answer to an accepted webhook. Serialised straight from borrowed
/// fields, in the order `json!` used to give them (sorted), since this is
/// the one answer every delivery gets.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    changed: bool,
    key: &'a str,
    previous: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    rollout: &'static str,
    /// The queued rollout's seq and status path.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    service: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    tag: &'a str,
    /// With `?wait=`: where the rollout stood when the answer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<&'a crate::change_status::SeqStatus>,
}

/// The answer to an accepted webhook. A queued rollout names its seq and
/// status path; with `?wait=`, the answer is held until the rollout's
/// outcome is final or the wait ends, and its status is the outcome's
/// (see [`waiting::status_code`]). The change is durable either way: a
/// failed wait still answers 202.
async fn accepted(
    state: &AppState,
    svc: &ServiceConfig,
    o: &Ingested,
    path: &str,
    wait: Duration,
) -> Response<Reply> {
    // SECURITY: the status path holds the secret, echoed only to the
    // caller that sent it (never logged).
    let status_path = o.rollout_seq.map(|seq| format!("{path}/rollouts/{seq}"));
    let waiting = !wait.is_zero() && svc.rollout.is_some();
    let keys = state.ingest.keys(svc);
    let consul = state.ingest.consul();
    // A re-sent webhook (a CI job run again) finds its tag unchanged: it
    // waits on the change that asked for that tag, so a rolled-back tag
    // still fails the pipeline.
    let seq = match o.rollout_seq {
        None if waiting && o.reason.as_deref() == Some("unchanged") => {
            crate::change_status::desired_seq(consul, &keys, &o.tag)
                .await
                .unwrap_or(None)
        }
        seq => seq,
    };
    let deploy = match seq {
        Some(seq) if waiting => match state.waits.seq_status(consul, &keys, seq, wait).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = %svc.name, error = %e, "waiting for the rollout's outcome failed; answering without it");
                None
            }
        },
        _ => None,
    };
    let body = Accepted {
        changed: o.changed,
        key: &svc.key,
        previous: o.previous.as_deref(),
        reason: o.reason.as_deref(),
        rollout: if o.rollout_queued() { "queued" } else { "none" },
        seq: o.rollout_seq,
        service: &svc.name,
        status: status_path.as_deref(),
        tag: &o.tag,
        deploy: deploy.as_ref(),
    };
    let status = match (&deploy, seq) {
        (Some(d), _) => waiting::status_code(d.state),
        (None, Some(_)) => StatusCode::ACCEPTED,
        // Waiting for a deploy this webhook did not ask for (older,
        // pinned, filtered): a CI step must not read it as success.
        (None, None) if waiting => StatusCode::CONFLICT,
        (None, None) => StatusCode::OK,
    };
    json_response(status, &body)
}

/// `GET /hooks/<secret>/rollouts/<seq>[?wait=…]`: where one change stands.
async fn rollout_status(
    state: &AppState,
    svc: &ServiceConfig,
    seq: &str,
    query: Option<&str>,
) -> Result<Response<Reply>, Rejection> {
    let Some(rc) = &svc.rollout else {
        return Err(Rejection::BadRequest(
            "this service has no rollout block: its webhook answers once the key is written".into(),
        ));
    };
    let seq: u64 = seq
        .parse()
        .map_err(|_| Rejection::BadRequest(format!("seq {seq:?} is not a number")))?;
    let wait = waiting::wait_param(query, rc.total_timeout()).map_err(Rejection::BadRequest)?;
    let keys = state.ingest.keys(svc);
    let status = state
        .waits
        .seq_status(state.ingest.consul(), &keys, seq, wait)
        .await
        .map_err(Rejection::ChangeStatus)?
        .ok_or(Rejection::UnknownRollout(seq))?;
    let body = waiting::StatusBody {
        service: &svc.name,
        status: &status,
    };
    Ok(json_response(waiting::status_code(status.state), &body))
}

/// Read and drop a small body before answering a rejected request, so
/// an HTTP/1.1 connection can be reused; a large or slow body is not
/// waited for.
async fn drain(body: &mut Incoming) {
    const DRAIN_LIMIT: usize = 64 * 1024;
    if body.is_end_stream() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut read = 0;
        while let Some(Ok(f)) = body.frame().await {
            read += f.data_ref().map_or(0, Bytes::len);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// Keep the request body until the answer is sent (see [`Reply`]).
fn hold(mut resp: Response<Reply>, body: Incoming) -> Response<Reply> {
    if !body.is_end_stream() {
        resp.body_mut().after = After::Hold(body);
    }
    resp
}

/// The 413: the answer, then up to [`DRAIN_AFTER_413_BYTES`] /
/// [`DRAIN_AFTER_413_TIME`] of the rest of the body read and dropped, so a
/// client still writing its body reaches the end and reads the answer
/// (curl before 8.x reports an HTTP/2 stream reset as an error even after
/// a complete answer). Then, on HTTP/2, RST_STREAM(NO_ERROR) if the body
/// is still coming (see [`Reply`]); on HTTP/1.1 a close, since the
/// connection is mid-body and cannot be reused.
fn too_large(
    mut resp: Response<Reply>,
    body: Incoming,
    req: &http::request::Parts,
) -> Response<Reply> {
    if req.version == Version::HTTP_2 {
        resp.body_mut().after = After::Drain {
            body,
            left: DRAIN_AFTER_413_BYTES,
            until: Box::pin(tokio::time::sleep(DRAIN_AFTER_413_TIME)),
            open_length: false,
        };
        return resp;
    }
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    // A client that asked `Expect: 100-continue` and was refused on its
    // declared length has not been told to send: nothing to drain.
    let waiting = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && declared_length(&req.headers).is_some_and(|n| n > MAX_BODY as u64);
    resp.body_mut().after = if waiting {
        After::Nothing
    } else {
        After::Drain {
            body,
            left: DRAIN_AFTER_413_BYTES,
            until: Box::pin(tokio::time::sleep(DRAIN_AFTER_413_TIME)),
            open_length: true,
        }
    };
    resp
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Read the body, refusing more than [`MAX_BODY`] while it streams. The
/// body stays with the caller, who may still have to answer before the
/// rest of it.
async fn read_body(
    body: &mut Incoming,
    headers: &http::HeaderMap,
    limit: Duration,
) -> Result<Bytes, Rejection> {
    if declared_length(headers).is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Rejection::TooLarge);
    }
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Rejection::BadRequest(format!("body could not be read: {e}")))?;
            if let Some(d) = frame.data_ref() {
                if buf.len() + d.len() > MAX_BODY {
                    return Err(Rejection::TooLarge);
                }
                buf.extend_from_slice(d);
            }
            // The declared length has all arrived: asking again would only
            // wait for hyper to say so (one more wake of this task).
            if body.is_end_stream() {
                break;
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(limit, read).await {
        Err(_) => Err(Rejection::BodyTimeout),
        Ok(r) => r,
    }
}

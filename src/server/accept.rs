//! The accept loop and the connections: how many are let in (in all and
//! per address), each one's task with its TLS handshake and deadlines,
//! the HTTP settings they are served with, and the drain at shutdown.
//!
//! Nothing here reads a request: each one goes to [`handle`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::{self, AddrKey};
use super::routes::handle;
use super::{conn, reject_log, AppState, Limits};

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
        let accepted_at = Instant::now();
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
    tcp: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    slot: Option<conn::AddrSlot>,
) {
    let _permit = permit;
    let _slot = slot;
    let state = &shared.state;
    state.metrics.connections_open.inc();
    let end = serve_one(&shared, tcp, peer, accepted_at).await;
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
async fn serve_one(
    shared: &ConnShared,
    tcp: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
) -> conn::End {
    let state = &shared.state;
    let deadline = crate::clock::after(accepted_at, state.limits.first_request);
    let (tls, deadline) =
        match tls_handshake(&shared.acceptor, tcp, peer, deadline, &shared.stopping).await {
            Ok(done) => done,
            Err(end) => return end,
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
    let served = shared.builder.serve_connection(TokioIo::new(tls), svc);
    conn::drive(
        served,
        &activity,
        deadline,
        state.limits.idle,
        &shared.stopping,
        &shared.hard_stop,
    )
    .await
}

/// The TLS handshake, done by `deadline` (the first request's, from
/// accept). Gives the stream and what is left of the deadline for the
/// first request head, or how the connection ended.
async fn tls_handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    mut deadline: Instant,
    stopping: &CancellationToken,
) -> Result<(TlsStream<TcpStream>, Instant), conn::End> {
    let handshake = acceptor.accept(tcp);
    tokio::pin!(handshake);
    // When shutdown starts, a handshake in progress gets a short grace
    // (a client accepted just before a reload is served, not cut), while a
    // silent connection, like a TCP health check, cannot hold the drain.
    let mut stop_seen = false;
    loop {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, handshake.as_mut()) => return match r {
                Ok(Ok(s)) => Ok((s, deadline)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    Err(conn::End::Done)
                }
                Err(_) if stop_seen => Err(conn::End::Shutdown),
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not done by the first-request deadline");
                    Err(conn::End::FirstRequestTimeout)
                }
            },
            () = stopping.cancelled(), if !stop_seen => {
                stop_seen = true;
                deadline = deadline.min(
                    Instant::now() + conn::STOP_FIRST_REQUEST_GRACE,
                );
            }
        }
    }
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

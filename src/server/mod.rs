//! The webhook listener: HTTPS in, one answer out, nothing kept.
//!
//! Every connection lives in its own task, which does the TLS handshake
//! and all I/O under deadlines (see [`conn`]), so a slow or silent client
//! costs one permit of a bounded semaphore, one of its address's few
//! slots, and nothing else. Requests are routed by the secret in their
//! path; each accepted delivery is logged once, here, and rejections are
//! summarised per address ([`reject_log`]).
//!
//! Its files, by what they do:
//!
//! * this one — the listener's [`Limits`], the [`AppState`] every request
//!   shares, and [`MAX_BODY`];
//! * `accept` — the accept loop and each connection's task ([`run`]);
//! * `routes` — the hook routes: one request decided and answered
//!   ([`handle`]), the accepted answer, the rollout status path;
//! * `reply` — the answers: rejections and their one status mapping,
//!   JSON bodies, the response body [`Reply`] and what it does with the
//!   request's body after the answer;
//! * `body` — reading a request body, bounded in size and time;
//! * [`conn`] — a connection's deadlines and per-address caps;
//! * [`guard`] — secret matching, the client's address, the
//!   failed-attempt limit;
//! * [`reject_log`] — rejections summarised per address;
//! * [`waiting`] — `?wait=`: answers held until a rollout's outcome;
//! * [`digest`] — `resolve_digest`: a pushed tag's digest asked of its
//!   registry;
//! * [`admin`] — the admin listener (health, readiness, metrics).

mod accept;
pub mod admin;
mod body;
pub mod conn;
pub mod digest;
pub mod guard;
pub mod reject_log;
mod reply;
mod routes;
pub mod waiting;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::tls::CertStore;
use guard::FailGuard;
use reject_log::RejectLog;

pub use accept::run;
pub use reply::Reply;
pub use routes::handle;

/// Largest webhook body accepted (contract: 1 MiB → 413).
pub const MAX_BODY: usize = 1024 * 1024;

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

//! One service's rollout, staged: register → evaluation → deployment →
//! allocations, each step a function with a typed outcome.
//!
//! One rollout reads top to bottom in `sequence` (drive → start →
//! job by job: register → evaluation → deployment → follow → finish or
//! roll back), which calls the other files, like Levant's deploy /
//! auto_revert / failure_inspector: `plan` (the decisions: pure
//! functions of what was observed, such as the tag a rollback restores
//! and the record a rollout starts with), `watch` (evaluation,
//! deployment, canary gate, failure inspection), `rollback` (restoring
//! the key and the jobs), `record` (the fenced writes of the deployed
//! record, key and history) and `requirements` (what `check --connect`
//! asks of a job, with `template_reads` telling which keys a task
//! template reads). This file holds the types and the driver's plumbing
//! (waiting out outages, the deadline, which job is addressed). Nomad
//! and Consul are reached only through the narrow traits in `ports`, so
//! every decision can be driven by a scripted fake in unit tests.
//!
//! Every step's progress is written to `<state_prefix>/deployed/<service>`
//! before the next begins, fenced by the leader's lock, so a new leader
//! resumes exactly where a dead one stopped: it watches the deployment the
//! dead one started and never starts a second. On failure the KV tag is
//! restored *before* the job is reverted (template jobs render the key in
//! every new allocation), and the reason is built from what Nomad says
//! about the failed allocations: their failing checks and task events.

mod plan;
pub mod ports;
mod record;
mod requirements;
mod rollback;
mod sequence;
mod template_reads;
mod watch;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod several_jobs_tests;
#[cfg(test)]
mod tests;

pub use ports::{ConsulPort, NomadPort};
use record::Writes;
pub use requirements::{review, Review};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clients::consul::{Consul, ConsulError};
use crate::clients::http::HttpClient;
use crate::clients::nomad::{Job, Nomad, NomadError};
use crate::config::{Config, RolloutConfig, ServiceConfig};
use crate::notify::Notifier;
use crate::store::{read_state, Deployed, Desired, HistoryEntry, Keys, RolloutState, State};

/// A hook run before each register attempt (tests use it to change the
/// job behind the controller's back, on cue).
pub type Hook = Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long the steps that Nomad does not bound may take.
#[derive(Debug, Clone)]
pub struct Timings {
    /// For the register's evaluation to complete.
    pub evaluation: Duration,
    /// For the deployment of a new job version to appear.
    pub deployment_appears: Duration,
    /// For one verify_url request.
    pub verify_request: Duration,
    /// verify_url attempts before the gate fails.
    pub verify_attempts: u32,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            evaluation: Duration::from_secs(30),
            deployment_appears: Duration::from_secs(60),
            verify_request: Duration::from_secs(5),
            verify_attempts: 3,
        }
    }
}

/// What a rollout needs from the world.
#[derive(Clone)]
pub struct Context {
    pub consul: Consul,
    pub nomad: Nomad,
    pub config: Arc<Config>,
    pub http: HttpClient,
    pub notifier: Notifier,
    /// `(lock key, session)`: every record write checks the lock is ours.
    pub fence: Option<(String, String)>,
    /// Cancelled when leadership is lost or the process stops.
    pub cancel: CancellationToken,
    pub timings: Timings,
    pub before_register: Option<Hook>,
    /// Where the leader's own deliveries (registry polls) are counted:
    /// the metrics the admin listener exports.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Why a rollout could not be driven (as opposed to a rollout that ran
/// and failed, which is a [`Failure`] and ends in a rollback).
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Nomad(#[from] NomadError),
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error("stopped: leadership lost or shutting down (the next leader resumes)")]
    Cancelled,
    #[error("record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("could not write {0}: it kept changing, or this controller is no longer the leader")]
    Fenced(String),
}

/// Why a rollout failed; rendered into history and notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    JobMissing {
        job: String,
        namespace: String,
    },
    Placement {
        groups: Vec<String>,
        description: String,
    },
    NoDeployment {
        version: u64,
    },
    /// Someone registered the job on top of ours, without our tag, before
    /// Nomad started our version's deployment: the tag was never tried.
    Overtaken {
        version: u64,
        now: u64,
        naming: Option<String>,
    },
    Deployment {
        status: String,
        description: String,
        allocs: Vec<AllocFailure>,
    },
    Unhealthy {
        allocs: Vec<AllocFailure>,
    },
    Verify {
        url: String,
        detail: String,
    },
    Timeout {
        after: Duration,
        allocs: Vec<AllocFailure>,
    },
    Registration(String),
}

/// What Nomad says about one failed allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocFailure {
    pub name: String,
    pub id: String,
    pub checks: Vec<String>,
    pub events: Vec<String>,
}

impl fmt::Display for AllocFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "allocation {} ({})", self.name, short(&self.id))?;
        if !self.checks.is_empty() {
            write!(f, ": {}", self.checks.join("; "))?;
        }
        if !self.events.is_empty() {
            write!(f, "; task events: {}", self.events.join("; "))?;
        }
        Ok(())
    }
}

fn allocs_text(allocs: &[AllocFailure]) -> String {
    allocs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::JobMissing { job, namespace } => {
                write!(f, "job {job:?} not found in namespace {namespace:?}")
            }
            Failure::Placement { groups, description } => {
                write!(f, "placement failed for group(s) {}: {description}", groups.join(", "))
            }
            Failure::NoDeployment { version } => write!(
                f,
                "Nomad created no deployment for job version {version} (is the update block missing, or the change not destructive?)"
            ),
            Failure::Overtaken { version, now, naming } => write!(
                f,
                "job version {version} was replaced by version {now} (naming {}) before Nomad started its deployment: the job was run at the same moment, so this tag was not tried",
                naming.as_deref().unwrap_or("no tag")
            ),
            Failure::Deployment { status, description, allocs } => {
                write!(f, "deployment {status}: {description}")?;
                if !allocs.is_empty() {
                    write!(f, "; {}", allocs_text(allocs))?;
                }
                Ok(())
            }
            Failure::Unhealthy { allocs } => {
                write!(f, "new allocation unhealthy: {}", allocs_text(allocs))
            }
            // SECURITY: the reason reaches history and the status path's
            // callers; a URL's userinfo and query may hold credentials.
            Failure::Verify { url, detail } => {
                write!(f, "verify_url {} failed: {detail}", redact_url(url))
            }
            Failure::Timeout { after, allocs } => {
                write!(f, "rollout timed out after {}s", after.as_secs())?;
                if !allocs.is_empty() {
                    write!(f, "; {}", allocs_text(allocs))?;
                }
                Ok(())
            }
            Failure::Registration(e) => write!(f, "job registration refused: {e}"),
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// An error a retry may outlast (unreachable, timeout, 5xx, 429).
pub(crate) trait Transient {
    fn transient(&self) -> bool;
}

impl Transient for NomadError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for ConsulError {
    fn transient(&self) -> bool {
        self.is_transient()
    }
}

impl Transient for RolloutError {
    fn transient(&self) -> bool {
        match self {
            RolloutError::Nomad(e) => e.is_transient(),
            RolloutError::Consul(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl Transient for crate::store::StoreError {
    fn transient(&self) -> bool {
        matches!(self, crate::store::StoreError::Consul(e) if e.is_transient())
    }
}

impl From<crate::store::StoreError> for RolloutError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Consul(e) => RolloutError::Consul(e),
            StoreError::Corrupt { key, reason } => RolloutError::Corrupt { key, reason },
            other @ StoreError::Contention(_) => RolloutError::Corrupt {
                key: "history".into(),
                reason: other.to_string(),
            },
        }
    }
}

/// Retry delays during an outage: short enough that an answer after the
/// outage is seen within about half a second, jittered so replicas and
/// services do not retry in step.
fn outage_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(400))
        .with_jitter()
        .without_max_times()
}

/// Now as Unix milliseconds (the persisted start of a rollout).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One rollout driver for one service.
pub struct Driver<'a, N: NomadPort = Nomad, C: ConsulPort = Consul> {
    ctx: &'a Context,
    nomad: &'a N,
    consul: &'a C,
    svc: &'a ServiceConfig,
    rc: &'a RolloutConfig,
    keys: Keys,
    /// Start of the rollout being driven (Unix ms), written into every
    /// busy record so a resumed rollout keeps its deadline.
    started: Mutex<Option<u64>>,
    /// Until when outages are waited out (the rollout's own deadline, or
    /// the rollback's).
    patience: Mutex<Option<tokio::time::Instant>>,
    /// Which of the rollout's jobs the Nomad calls address now (an index
    /// into `rc.jobs`): the one rolling, or the one a rollback reverts.
    cur: std::sync::atomic::AtomicUsize,
}

impl<'a> Driver<'a> {
    /// `None` when the service has no rollout block.
    pub fn new(ctx: &'a Context, svc: &'a ServiceConfig) -> Option<Self> {
        Driver::with_ports(ctx, svc, &ctx.nomad, &ctx.consul)
    }
}

impl<'a, N: NomadPort, C: ConsulPort> Driver<'a, N, C> {
    /// A driver that reaches Nomad and Consul through `nomad` and `consul`
    /// (tests pass a scripted fake); `None` without a rollout block.
    pub fn with_ports(
        ctx: &'a Context,
        svc: &'a ServiceConfig,
        nomad: &'a N,
        consul: &'a C,
    ) -> Option<Self> {
        Some(Driver {
            ctx,
            nomad,
            consul,
            svc,
            rc: svc.rollout.as_ref()?,
            keys: Keys::new(&ctx.config, svc),
            started: Mutex::new(None),
            patience: Mutex::new(None),
            cur: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn check_cancel(&self) -> Result<(), RolloutError> {
        if self.ctx.cancel.is_cancelled() {
            Err(RolloutError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn set_started(&self, at: u64) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        let elapsed = Duration::from_millis(unix_ms().saturating_sub(at));
        self.set_patience(self.rc.timeout.saturating_sub(elapsed));
    }

    fn started(&self) -> Option<u64> {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_patience(&self, left: Duration) {
        *self.patience.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::clock::deadline_in(left));
    }

    /// The rollout's deadline (persisted start + timeout).
    fn deadline(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        match self.started() {
            Some(at) => {
                let elapsed = Duration::from_millis(unix_ms().saturating_sub(at));
                crate::clock::after(now, self.rc.timeout.saturating_sub(elapsed))
            }
            None => crate::clock::after(now, self.rc.timeout),
        }
    }

    /// Run `op`, waiting out outages (transient errors) with jittered
    /// backoff until the rollout's deadline; cancellation ends it at once.
    async fn patient<T, E, Fut>(&self, mut op: impl FnMut() -> Fut) -> Result<T, RolloutError>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Transient + Into<RolloutError> + fmt::Display,
    {
        use backon::Retryable as _;
        let until = self
            .patience
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(|| crate::clock::deadline_in(self.rc.timeout));
        let name = &self.svc.name;
        let attempt = (|| op())
            .retry(outage_backoff())
            .sleep(tokio::time::sleep)
            .when(|e: &E| e.transient() && tokio::time::Instant::now() < until)
            .notify(|e: &E, after: Duration| {
                tracing::warn!(service = %name, error = %e, retry_in = ?after, "unreachable; waiting it out");
            });
        tokio::select! {
            () = self.ctx.cancel.cancelled() => Err(RolloutError::Cancelled),
            r = attempt => r.map_err(Into::into),
        }
    }

    async fn job(&self) -> Result<Option<Job>, RolloutError> {
        self.patient(|| self.nomad.job(&self.rc.namespace, self.job_id()))
            .await
    }

    /// The job the Nomad calls address now.
    fn job_id(&self) -> &'a str {
        let i = self.cur.load(std::sync::atomic::Ordering::Relaxed);
        self.rc.jobs.get(i).map_or("", String::as_str)
    }

    /// Address the job at `index` in the rollout's list.
    fn set_job(&self, index: usize) {
        self.cur.store(index, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where `job` (a record's `job`; `None`: the first) stands in the
    /// rollout's list; `None` when the configuration no longer names it.
    fn job_index(&self, job: Option<&str>) -> Option<usize> {
        match job {
            None => Some(0),
            Some(j) => self.rc.jobs.iter().position(|x| x == j),
        }
    }

    /// The failure of a job that no longer exists in Nomad.
    fn job_missing(&self) -> Failure {
        Failure::JobMissing {
            job: self.job_id().to_string(),
            namespace: self.rc.namespace.clone(),
        }
    }
}

/// `scheme://host[:port]/path` of a URL: no userinfo, no query, no
/// fragment.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

//! One service's rollout, staged: register → evaluation → deployment →
//! allocations, each step a function with a typed outcome.
//!
//! Every step's progress is written to `<state_prefix>/deployed/<service>`
//! before the next begins, fenced by the leader's lock, so a new leader
//! resumes exactly where a dead one stopped: it watches the deployment the
//! dead one started and never starts a second. On failure the KV tag is
//! restored *before* the job is reverted (template jobs render the key in
//! every new allocation), and the reason is built from what Nomad says
//! about the failed allocations: their failing checks and task events.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use crate::clock::now_rfc3339;
use crate::config::{Config, RolloutConfig, ServiceConfig, Strategy};
use crate::consul::{BlockingIndex, Consul, ConsulError, TxnOp, TxnOutcome};
use crate::history::{Deployed, Desired, Event, HistoryEntry};
use crate::history_store;
use crate::http_client::HttpClient;
use crate::ingest::Keys;
use crate::nomad::{Allocation, Deployment, Job, Nomad, NomadError};
use crate::notify::{Notice, Notifier};

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
            Failure::Verify { url, detail } => write!(f, "verify_url {url} failed: {detail}"),
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

/// What reading a service's records gave.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub desired: Option<Desired>,
    pub deployed: Option<Deployed>,
    /// The pin record's target tag (`Some("")` for a pin without one).
    pub pin: Option<String>,
}

/// The pin record: present = webhooks are recorded but not deployed; the
/// controller deploys only `tag` (a rollback's target) while it exists.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PinRecord {
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Read desired, deployed and pin.
///
/// # Errors
///
/// Consul failures and unreadable records.
pub async fn read_state(consul: &Consul, keys: &Keys) -> Result<State, RolloutError> {
    let (desired, deployed, pin) = tokio::try_join!(
        consul.kv_get(&keys.desired),
        consul.kv_get(&keys.deployed),
        consul.kv_get(&keys.pin),
    )?;
    let parse = |key: &str, v: &[u8]| -> Result<serde_json::Value, RolloutError> {
        serde_json::from_slice(v).map_err(|e| RolloutError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    };
    let desired = match desired.value {
        Some(kv) if !kv.value.is_empty() => Some(
            serde_json::from_value(parse(&keys.desired, &kv.value)?).map_err(|e| {
                RolloutError::Corrupt {
                    key: keys.desired.clone(),
                    reason: e.to_string(),
                }
            })?,
        ),
        _ => None,
    };
    let deployed = match deployed.value {
        Some(kv) if !kv.value.is_empty() => Some(
            serde_json::from_value(parse(&keys.deployed, &kv.value)?).map_err(|e| {
                RolloutError::Corrupt {
                    key: keys.deployed.clone(),
                    reason: e.to_string(),
                }
            })?,
        ),
        _ => None,
    };
    let pin = pin.value.map(|kv| {
        serde_json::from_slice::<PinRecord>(&kv.value)
            .ok()
            .and_then(|p| p.tag)
            .unwrap_or_default()
    });
    Ok(State {
        desired,
        deployed,
        pin,
    })
}

/// History entries looked through for the tag a first rollout replaces.
const PREVIOUS_SCAN: usize = 100;

/// One rollout driver for one service.
pub struct Driver<'a> {
    ctx: &'a Context,
    svc: &'a ServiceConfig,
    rc: &'a RolloutConfig,
    keys: Keys,
}

/// What to write, together, in one fenced transaction.
struct Writes {
    deployed: Deployed,
    key: Option<String>,
    history: Option<HistoryEntry>,
}

impl<'a> Driver<'a> {
    /// `None` when the service has no rollout block.
    pub fn new(ctx: &'a Context, svc: &'a ServiceConfig) -> Option<Self> {
        Some(Driver {
            ctx,
            svc,
            rc: svc.rollout.as_ref()?,
            keys: Keys::new(&ctx.config, svc),
        })
    }

    /// Bring the service to its desired tag: resume an unfinished rollout,
    /// then deploy the newest desired tag (tags that arrived meanwhile are
    /// skipped: they coalesce into the newest).
    ///
    /// # Errors
    ///
    /// Anything that stopped the driver before an outcome was recorded;
    /// the records then say where to resume.
    pub async fn drive(&self) -> Result<(), RolloutError> {
        // Each pass finishes one desired seq; bounded so a flapping
        // registry cannot keep one task busy forever.
        for _ in 0..32 {
            self.check_cancel()?;
            let st = read_state(&self.ctx.consul, &self.keys).await?;
            if let Some(d) = st.deployed.as_ref().filter(|d| d.is_busy()) {
                tracing::info!(service = %self.svc.name, tag = %d.tag, outcome = %d.outcome, "resuming an unfinished rollout");
                self.resume(d.clone()).await?;
                continue;
            }
            let Some(desired) = st.desired else {
                return Ok(());
            };
            if st.deployed.as_ref().is_some_and(|d| d.seq >= desired.seq) {
                return Ok(());
            }
            if let Some(pin) = &st.pin {
                if pin != &desired.tag {
                    tracing::info!(service = %self.svc.name, "pinned: not deploying");
                    return Ok(());
                }
            }
            self.start(&desired, st.deployed.as_ref()).await?;
        }
        Ok(())
    }

    fn check_cancel(&self) -> Result<(), RolloutError> {
        if self.ctx.cancel.is_cancelled() {
            Err(RolloutError::Cancelled)
        } else {
            Ok(())
        }
    }

    async fn job(&self) -> Result<Option<Job>, RolloutError> {
        Ok(self.ctx.nomad.job(&self.rc.namespace, &self.rc.job).await?)
    }

    async fn start(&self, desired: &Desired, prev: Option<&Deployed>) -> Result<(), RolloutError> {
        let Some(job) = self.job().await? else {
            let failure = Failure::JobMissing {
                job: self.rc.job.clone(),
                namespace: self.rc.namespace.clone(),
            };
            let rec = Deployed {
                tag: prev.map(|p| p.tag.clone()).unwrap_or_default(),
                digest: None,
                seq: desired.seq,
                job_version: None,
                deployment: None,
                at: now_rfc3339(),
                outcome: Deployed::FAILED.into(),
                previous: prev.map(|p| p.tag.clone()),
                prior_version: None,
                detail: Some(failure.to_string()),
            };
            return self
                .finish_failed(rec, &desired.tag, failure.to_string())
                .await;
        };
        let meta_now = job
            .meta(&self.rc.meta_key)
            .filter(|m| !m.is_empty())
            .map(str::to_string);
        // The tag a revert goes back to: what the last rollout left running.
        // After a failed one the key may name a tag that never ran, so the
        // job's own meta (the version a revert restores) comes first.
        let mut previous = match prev {
            Some(p) if p.outcome == Deployed::FAILED => meta_now.clone().or(p.previous.clone()),
            Some(p) => Some(p.tag.clone()).or(meta_now.clone()),
            None => meta_now.clone(),
        }
        .filter(|t| !t.is_empty());
        if previous.is_none() {
            // First rollout of a job tagbridge never set: what the key
            // held before this tag arrived, as its history entry says.
            previous = history_store::recent(&self.ctx.consul, &self.keys.history, PREVIOUS_SCAN)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|e| {
                    e.tag == desired.tag && matches!(e.event, Event::Received | Event::Manual)
                })
                .and_then(|e| e.previous);
        }
        tracing::info!(service = %self.svc.name, tag = %desired.tag, previous = ?previous, job_version = job.version, "rollout starting");
        let rec = Deployed {
            tag: desired.tag.clone(),
            digest: desired.digest.clone(),
            seq: desired.seq,
            job_version: None,
            deployment: None,
            at: now_rfc3339(),
            outcome: Deployed::IN_PROGRESS.into(),
            previous,
            prior_version: Some(job.version),
            detail: None,
        };
        // The key carries the tag being deployed (template jobs render it
        // in every allocation placed from now on).
        self.commit(Writes {
            deployed: rec.clone(),
            key: Some(desired.tag.clone()),
            history: None,
        })
        .await?;
        self.proceed(rec).await
    }

    async fn resume(&self, rec: Deployed) -> Result<(), RolloutError> {
        if rec.outcome == Deployed::ROLLING_BACK {
            let reason = rec
                .detail
                .clone()
                .unwrap_or_else(|| "rollback resumed".into());
            self.rollback_steps(rec, reason).await
        } else {
            self.proceed(rec).await
        }
    }

    /// Register (unless already done), then evaluation, deployment, watch.
    async fn proceed(&self, mut rec: Deployed) -> Result<(), RolloutError> {
        let Some(job) = self.job().await? else {
            let f = Failure::JobMissing {
                job: self.rc.job.clone(),
                namespace: self.rc.namespace.clone(),
            };
            return self.rollback(rec, f).await;
        };
        let prior = rec.prior_version.unwrap_or(job.version);
        let mut eval = None;
        let version = match rec.job_version {
            Some(v) => v,
            // A dead leader registered it but did not record the version.
            None if job.meta(&self.rc.meta_key) == Some(rec.tag.as_str())
                && job.version > prior =>
            {
                job.version
            }
            None => match self.register(&rec.tag, rec.seq).await? {
                Ok((v, e)) => {
                    eval = Some(e);
                    v
                }
                Err(f) => return self.rollback(rec, f).await,
            },
        };
        if rec.job_version != Some(version) {
            rec.job_version = Some(version);
            rec.at = now_rfc3339();
            self.commit(Writes {
                deployed: rec.clone(),
                key: None,
                history: None,
            })
            .await?;
        }
        if let Some(eval_id) = eval.filter(|e| !e.is_empty()) {
            if let Err(f) = self.evaluation(&eval_id).await? {
                return self.rollback(rec, f).await;
            }
        }
        let dep = match rec.deployment.clone() {
            Some(d) => d,
            None => match self.deployment_for(version).await? {
                Some(d) => {
                    rec.deployment = Some(d.id.clone());
                    self.commit(Writes {
                        deployed: rec.clone(),
                        key: None,
                        history: None,
                    })
                    .await?;
                    d.id
                }
                None => return self.rollback(rec, Failure::NoDeployment { version }).await,
            },
        };
        match self.watch(&dep, true).await? {
            Ok(()) => self.finish_deployed(rec).await,
            Err(f) => self.rollback(rec, f).await,
        }
    }

    /// Set the meta key and register under EnforceIndex; a lost race is
    /// answered by re-reading (keeping the other writer's change), never
    /// by overwriting it.
    async fn register(
        &self,
        tag: &str,
        seq: u64,
    ) -> Result<Result<(u64, String), Failure>, RolloutError> {
        let mut last = String::new();
        for attempt in 0..5u32 {
            self.check_cancel()?;
            let Some(mut job) = self.job().await? else {
                return Ok(Err(Failure::JobMissing {
                    job: self.rc.job.clone(),
                    namespace: self.rc.namespace.clone(),
                }));
            };
            let index = job.job_modify_index;
            job.set_meta(&self.rc.meta_key, tag);
            // Every rollout is a real change to Nomad, even when the tag is
            // the one the job already names (a re-pushed tag with a new
            // digest, a rollback to the running tag): Nomad ignores a
            // register that changes nothing and would start no deployment.
            job.set_meta(&format!("{}_seq", self.rc.meta_key), &seq.to_string());
            if let Some(hook) = &self.ctx.before_register {
                hook(attempt).await;
            }
            match self.ctx.nomad.register(&job, index).await {
                Ok(resp) => {
                    let after = self.job().await?.map_or(job.version + 1, |j| j.version);
                    tracing::info!(service = %self.svc.name, tag, job_version = after, eval = %resp.eval_id, "job registered");
                    return Ok(Ok((after, resp.eval_id)));
                }
                Err(e) if e.is_enforce_index_conflict() => {
                    tracing::info!(service = %self.svc.name, attempt, "job changed since it was read; re-reading it");
                    last = e.to_string();
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => return Ok(Err(Failure::Registration(e.to_string()))),
            }
        }
        Ok(Err(Failure::Registration(format!(
            "the job kept changing: {last}"
        ))))
    }

    /// Wait for the register's evaluation; placement failures fail fast.
    async fn evaluation(&self, id: &str) -> Result<Result<(), Failure>, RolloutError> {
        let deadline = Instant::now() + self.ctx.timings.evaluation;
        let mut index = BlockingIndex::default();
        while Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            let read = tokio::select! {
                () = self.ctx.cancel.cancelled() => return Err(RolloutError::Cancelled),
                r = self.ctx.nomad.evaluation(&self.rc.namespace, id, Some((index.current(), wait))) => r?,
            };
            index.observe(read.index);
            let ev = read.value;
            if let Some(failed) = ev.failed_tg_allocs.as_ref().filter(|m| !m.is_empty()) {
                let description = failed
                    .iter()
                    .map(|(g, m)| format!("{g}: {}", placement_text(m)))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Ok(Err(Failure::Placement {
                    groups: failed.keys().cloned().collect(),
                    description,
                }));
            }
            if matches!(
                ev.status.as_str(),
                "complete" | "failed" | "canceled" | "cancelled"
            ) {
                return Ok(Ok(()));
            }
        }
        // Not a failure in itself: the deployment watch has its own limits.
        Ok(Ok(()))
    }

    /// The deployment Nomad creates for `version` (bounded wait).
    async fn deployment_for(&self, version: u64) -> Result<Option<Deployment>, RolloutError> {
        let deadline = Instant::now() + self.ctx.timings.deployment_appears;
        let mut index = BlockingIndex::default();
        while Instant::now() < deadline {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(30));
            let read = tokio::select! {
                () = self.ctx.cancel.cancelled() => return Err(RolloutError::Cancelled),
                r = self.ctx.nomad.latest_deployment(&self.rc.namespace, &self.rc.job, Some((index.current(), wait))) => r?,
            };
            index.observe(read.index);
            if let Some(d) = read.value {
                if d.job_version == version {
                    return Ok(Some(d));
                }
                if d.job_version > version {
                    // Someone registered again on top of ours.
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// Watch a deployment until it ends. Fails it as soon as an allocation
    /// turns unhealthy (Nomad itself would wait for progress_deadline),
    /// and gates canary promotion on health and verify_url.
    async fn watch(
        &self,
        deployment: &str,
        gate: bool,
    ) -> Result<Result<(), Failure>, RolloutError> {
        let started = Instant::now();
        let deadline = started + self.rc.timeout;
        let mut index = BlockingIndex::default();
        let mut promoted = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let allocs = self.inspect(deployment).await;
                let _ = self
                    .ctx
                    .nomad
                    .fail_deployment(&self.rc.namespace, deployment)
                    .await;
                return Ok(Err(Failure::Timeout {
                    after: self.rc.timeout,
                    allocs,
                }));
            }
            let read = tokio::select! {
                () = self.ctx.cancel.cancelled() => return Err(RolloutError::Cancelled),
                r = self.ctx.nomad.deployment(&self.rc.namespace, deployment, Some((index.current(), remaining.min(Duration::from_secs(60))))) => match r {
                    Ok(r) => r,
                    // Garbage-collected (a long controller outage): the
                    // outcome is unknowable; treat it as failed, never wait.
                    Err(NomadError::Status { status, .. }) if status == http::StatusCode::NOT_FOUND => {
                        return Ok(Err(Failure::Deployment {
                            status: "gone".into(),
                            description: format!("deployment {deployment} no longer exists in Nomad"),
                            allocs: Vec::new(),
                        }))
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            index.observe(read.index);
            let d = read.value;
            match d.status.as_str() {
                "successful" => return Ok(Ok(())),
                "failed" | "cancelled" => {
                    return Ok(Err(Failure::Deployment {
                        status: d.status.clone(),
                        description: d.status_description.clone(),
                        allocs: self.inspect(deployment).await,
                    }))
                }
                _ => {}
            }
            if d.task_groups.values().any(|g| g.unhealthy_allocs > 0) {
                let allocs = self.inspect(deployment).await;
                if let Err(e) = self
                    .ctx
                    .nomad
                    .fail_deployment(&self.rc.namespace, deployment)
                    .await
                {
                    tracing::warn!(service = %self.svc.name, error = %e, "could not fail the deployment");
                }
                tracing::info!(service = %self.svc.name, deployment, "allocation unhealthy: deployment failed without waiting for progress_deadline");
                return Ok(Err(Failure::Unhealthy { allocs }));
            }
            let waiting: Vec<_> = d
                .task_groups
                .values()
                .filter(|g| g.desired_canaries > 0 && !g.promoted && !g.auto_promote)
                .collect();
            if !promoted
                && !waiting.is_empty()
                && waiting
                    .iter()
                    .all(|g| g.healthy_allocs >= g.desired_canaries)
            {
                if gate {
                    if let Some(url) = &self.rc.verify_url {
                        if let Err(detail) = self.verify(url).await {
                            let _ = self
                                .ctx
                                .nomad
                                .fail_deployment(&self.rc.namespace, deployment)
                                .await;
                            return Ok(Err(Failure::Verify {
                                url: url.clone(),
                                detail,
                            }));
                        }
                    }
                }
                self.ctx
                    .nomad
                    .promote(&self.rc.namespace, deployment)
                    .await?;
                promoted = true;
                tracing::info!(service = %self.svc.name, deployment, "canaries healthy: promoted");
            }
        }
    }

    /// GET verify_url; 2xx passes.
    ///
    /// SECURITY: the URL comes from configuration, never from a payload.
    async fn verify(&self, url: &str) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..self.ctx.timings.verify_attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let req = match http::Request::get(url).body(Full::new(Bytes::new())) {
                Ok(r) => r,
                Err(e) => return Err(e.to_string()),
            };
            match self
                .ctx
                .http
                .send(req, self.ctx.timings.verify_request)
                .await
            {
                Ok(r) if r.status.is_success() => return Ok(()),
                Ok(r) => {
                    let body: String = String::from_utf8_lossy(&r.body)
                        .trim()
                        .chars()
                        .take(200)
                        .collect();
                    last = format!("HTTP {}: {body}", r.status.as_u16());
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// What Nomad says about the deployment's failed allocations.
    async fn inspect(&self, deployment: &str) -> Vec<AllocFailure> {
        let allocs = match self
            .ctx
            .nomad
            .deployment_allocations(&self.rc.namespace, deployment)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(service = %self.svc.name, error = %e, "could not list the deployment's allocations");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for a in allocs.iter().filter(|a| is_failed(a)) {
            let checks = match self
                .ctx
                .nomad
                .allocation_checks(&self.rc.namespace, &a.id)
                .await
            {
                Ok(c) => c
                    .into_iter()
                    .filter(|c| c.status != "success")
                    .map(|c| {
                        let mut s = format!("check {:?} {}", c.check, c.status);
                        if c.status_code != 0 {
                            s.push_str(&format!(" (HTTP {})", c.status_code));
                        }
                        let output: String = c.output.trim().chars().take(200).collect();
                        if !output.is_empty() {
                            s.push_str(&format!(": {output}"));
                        }
                        s
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let mut events = Vec::new();
            for (task, st) in a.task_states.iter().flatten() {
                let evs = st.events.as_deref().unwrap_or_default();
                let mut last: Vec<String> = evs
                    .iter()
                    .rev()
                    .filter(|e| !e.display_message.is_empty())
                    .take(3)
                    .map(|e| format!("{task}: {}: {}", e.kind, e.display_message))
                    .collect();
                last.reverse();
                events.extend(last);
            }
            out.push(AllocFailure {
                name: a.name.clone(),
                id: a.id.clone(),
                checks,
                events,
            });
        }
        out
    }

    async fn rollback(&self, mut rec: Deployed, failure: Failure) -> Result<(), RolloutError> {
        let reason = failure.to_string();
        tracing::warn!(service = %self.svc.name, tag = %rec.tag, reason = %reason, "rollout failed; rolling back");
        rec.outcome = Deployed::ROLLING_BACK.into();
        rec.detail = Some(reason.clone());
        rec.at = now_rfc3339();
        self.commit(Writes {
            deployed: rec.clone(),
            key: None,
            history: None,
        })
        .await?;
        self.rollback_steps(rec, reason).await
    }

    /// Restore the key, revert the job, watch the revert. Idempotent: a
    /// new leader repeats it safely from the `rolling_back` record.
    async fn rollback_steps(&self, rec: Deployed, reason: String) -> Result<(), RolloutError> {
        if let Some(dep) = &rec.deployment {
            // Already terminal is fine: stop placing new allocations.
            let _ = self
                .ctx
                .nomad
                .fail_deployment(&self.rc.namespace, dep)
                .await;
        }
        let Some(job) = self.job().await? else {
            return self
                .finish_failed(
                    rec.clone(),
                    &rec.tag,
                    format!("{reason}; the job is gone, nothing to revert"),
                )
                .await;
        };
        let failed_version = rec.job_version;
        let target_tag = rec.previous.clone();
        let nomad_reverts = self.rc.strategy == Strategy::Jobspec
            && job
                .group_updates()
                .iter()
                .any(|(_, u)| u.as_ref().is_some_and(|u| u.auto_revert));

        // The key first: allocations placed by the revert render it.
        if let Some(prev) = &target_tag {
            self.commit(Writes {
                deployed: rec.clone(),
                key: Some(prev.clone()),
                history: None,
            })
            .await?;
        }

        let reverted_version = if nomad_reverts {
            // Nomad's auto_revert does it; wait for its new version.
            match self
                .wait_for_version_after(failed_version.unwrap_or(job.version))
                .await?
            {
                Some(v) => v,
                None => {
                    return self
                        .finish_failed(
                            rec.clone(),
                            &rec.tag,
                            format!("{reason}; Nomad did not auto-revert the job"),
                        )
                        .await
                }
            }
        } else {
            match (rec.prior_version, failed_version) {
                (Some(prior), Some(failed)) if job.version == failed && failed > prior => {
                    match self.ctx.nomad.revert(&self.rc.namespace, &self.rc.job, prior, failed).await {
                        Ok(_) => {}
                        Err(e) if e.is_enforce_version_conflict() => {
                            return self
                                .finish_failed(rec.clone(), &rec.tag, format!("{reason}; not reverted: the job changed meanwhile ({e})"))
                                .await
                        }
                        Err(e) => return Err(e.into()),
                    }
                    self.job().await?.map_or(failed + 1, |j| j.version)
                }
                (Some(_), Some(failed)) if job.version > failed => {
                    // Reverted already (by us before a crash, or by hand).
                    job.version
                }
                (Some(_), None) => {
                    // Never registered: the job still runs the old version.
                    return self.finish_rolled_back(rec, target_tag, job.version, None, reason).await;
                }
                _ => {
                    return self
                        .finish_failed(rec.clone(), &rec.tag, format!("{reason}; not reverted: job version {} is not the one this rollout made", job.version))
                        .await
                }
            }
        };
        let dep = self.deployment_for(reverted_version).await?;
        let outcome = match &dep {
            Some(d) => self.watch(&d.id, false).await?,
            None => Ok(()),
        };
        match outcome {
            Ok(()) => {
                self.finish_rolled_back(
                    rec,
                    target_tag,
                    reverted_version,
                    dep.map(|d| d.id),
                    reason,
                )
                .await
            }
            Err(f) => {
                self.finish_failed(
                    rec.clone(),
                    &rec.tag,
                    format!("{reason}; the rollback failed too: {f}"),
                )
                .await
            }
        }
    }

    async fn wait_for_version_after(&self, version: u64) -> Result<Option<u64>, RolloutError> {
        for _ in 0..120 {
            self.check_cancel()?;
            if let Some(job) = self.job().await? {
                if job.version > version {
                    return Ok(Some(job.version));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(None)
    }

    async fn finish_deployed(&self, mut rec: Deployed) -> Result<(), RolloutError> {
        rec.outcome = Deployed::DEPLOYED.into();
        rec.at = now_rfc3339();
        rec.detail = None;
        let detail = format!(
            "job {} version {}, deployment {}",
            self.rc.job,
            rec.job_version.unwrap_or_default(),
            rec.deployment.as_deref().map(short).unwrap_or("-")
        );
        let entry = self.entry(
            Event::Deployed,
            &rec.tag,
            rec.previous.clone(),
            Some(detail.clone()),
        );
        self.commit(Writes {
            deployed: rec.clone(),
            key: None,
            history: Some(entry),
        })
        .await?;
        tracing::info!(service = %self.svc.name, tag = %rec.tag, "deployed");
        self.notify("deployed", &rec.tag, rec.previous.clone(), Some(detail));
        Ok(())
    }

    async fn finish_rolled_back(
        &self,
        rec: Deployed,
        target: Option<String>,
        version: u64,
        deployment: Option<String>,
        reason: String,
    ) -> Result<(), RolloutError> {
        let failed_tag = rec.tag.clone();
        let tag = target.clone().unwrap_or_default();
        let out = Deployed {
            tag: tag.clone(),
            digest: None,
            seq: rec.seq,
            job_version: Some(version),
            deployment,
            at: now_rfc3339(),
            outcome: Deployed::ROLLED_BACK.into(),
            previous: Some(failed_tag.clone()),
            prior_version: rec.prior_version,
            detail: Some(reason.clone()),
        };
        let entry = self.entry(
            Event::RolledBack,
            &tag,
            Some(failed_tag.clone()),
            Some(reason.clone()),
        );
        self.commit(Writes {
            deployed: out,
            key: None,
            history: Some(entry),
        })
        .await?;
        tracing::warn!(service = %self.svc.name, failed = %failed_tag, restored = %tag, reason = %reason, "rolled back");
        self.notify("rolled_back", &tag, Some(failed_tag), Some(reason));
        Ok(())
    }

    async fn finish_failed(
        &self,
        rec: Deployed,
        failed_tag: &str,
        reason: String,
    ) -> Result<(), RolloutError> {
        let out = Deployed {
            outcome: Deployed::FAILED.into(),
            at: now_rfc3339(),
            detail: Some(reason.clone()),
            ..rec.clone()
        };
        let entry = self.entry(
            Event::Failed,
            failed_tag,
            rec.previous.clone(),
            Some(reason.clone()),
        );
        self.commit(Writes {
            deployed: out,
            key: None,
            history: Some(entry),
        })
        .await?;
        tracing::error!(service = %self.svc.name, tag = failed_tag, reason = %reason, "rollout failed");
        self.notify("failed", failed_tag, rec.previous, Some(reason));
        Ok(())
    }

    fn entry(
        &self,
        event: Event,
        tag: &str,
        previous: Option<String>,
        detail: Option<String>,
    ) -> HistoryEntry {
        HistoryEntry {
            at: now_rfc3339(),
            event,
            tag: tag.to_string(),
            previous,
            digest: None,
            source: Some("controller".into()),
            delivery: None,
            actor: Some("tagbridge".into()),
            detail,
        }
    }

    fn notify(
        &self,
        event: &'static str,
        tag: &str,
        previous: Option<String>,
        detail: Option<String>,
    ) {
        self.ctx.notifier.send(Notice {
            event,
            service: self.svc.name.clone(),
            tag: tag.to_string(),
            previous,
            detail,
            at: now_rfc3339(),
        });
    }

    /// Write the deployed record (and the key, and a history entry) in one
    /// transaction, fenced by the leader lock; lost CAS → re-read, retry.
    async fn commit(&self, w: Writes) -> Result<(), RolloutError> {
        for _ in 0..16 {
            self.check_cancel()?;
            let history = match &w.history {
                Some(_) => Some(
                    history_store::migrate(
                        &self.ctx.consul,
                        &self.keys.history,
                        self.svc.history_keep,
                    )
                    .await
                    .map_err(|e| RolloutError::Corrupt {
                        key: self.keys.history.head.clone(),
                        reason: e.to_string(),
                    })?,
                ),
                None => None,
            };
            let (key, deployed) = tokio::try_join!(
                self.ctx.consul.kv_get(&self.keys.tag),
                self.ctx.consul.kv_get(&self.keys.deployed),
            )?;
            let mut ops = Vec::with_capacity(4);
            let value = serde_json::to_vec(&w.deployed).map_err(|e| RolloutError::Corrupt {
                key: self.keys.deployed.clone(),
                reason: e.to_string(),
            })?;
            ops.push(TxnOp::Cas {
                key: self.keys.deployed.clone(),
                value,
                index: deployed.value.as_ref().map_or(0, |kv| kv.modify_index),
            });
            if let Some(tag) = &w.key {
                let current = key
                    .value
                    .as_ref()
                    .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string());
                if current.as_deref() != Some(tag.as_str()) {
                    ops.push(TxnOp::Cas {
                        key: self.keys.tag.clone(),
                        value: tag.as_bytes().to_vec(),
                        index: key.value.as_ref().map_or(0, |kv| kv.modify_index),
                    });
                }
            }
            if let (Some(entry), Some(head)) = (&w.history, &history) {
                let (history_ops, _) = history_store::append_ops(
                    &self.keys.history,
                    head,
                    entry,
                    self.svc.history_keep,
                );
                ops.extend(history_ops);
            }
            if let Some((lock, session)) = &self.ctx.fence {
                ops.push(TxnOp::CheckSession {
                    key: lock.clone(),
                    session: session.clone(),
                });
            }
            match self.ctx.consul.txn(&ops).await? {
                TxnOutcome::Committed(_) => return Ok(()),
                TxnOutcome::Conflict(errors) => {
                    tracing::debug!(service = %self.svc.name, ?errors, "record write lost a race; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(RolloutError::Fenced(self.keys.deployed.clone()))
    }
}

fn is_failed(a: &Allocation) -> bool {
    a.deployment_status.as_ref().and_then(|d| d.healthy) == Some(false)
        || a.client_status == "failed"
}

/// Nomad's AllocMetric as one line: which dimension ran out, how many
/// nodes were filtered.
fn placement_text(m: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    if let Some(n) = m.get("NodesEvaluated").and_then(|v| v.as_u64()) {
        parts.push(format!("{n} nodes evaluated"));
    }
    for field in ["DimensionExhausted", "ConstraintFiltered", "ClassExhausted"] {
        if let Some(obj) = m.get(field).and_then(|v| v.as_object()) {
            for (k, v) in obj {
                parts.push(format!("{k}: {v}"));
            }
        }
    }
    if parts.is_empty() {
        "no node could place it".into()
    } else {
        parts.join(", ")
    }
}

/// Every requirement of the contract (§6) that `job` does not meet for
/// this service's rollout block, one readable line each. Pure: the
/// caller fetched the job.
pub fn unmet_requirements(job: &Job, svc: &ServiceConfig, rc: &RolloutConfig) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    let groups = job
        .raw
        .get("TaskGroups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (name, update) in job.group_updates() {
        match update {
            None => out.push(format!(
                "group {name:?} has no update block: Nomad would replace every allocation at once, with no health gate"
            )),
            Some(u) if u.max_parallel <= 0 => out.push(format!(
                "group {name:?} has update.max_parallel = {}: Nomad would not roll it batch by batch",
                u.max_parallel
            )),
            Some(u) => {
                if rc.strategy == Strategy::Template && u.auto_revert {
                    out.push(format!(
                        "group {name:?} has update.auto_revert = true; the template strategy needs false (tagbridge restores the key before it reverts)"
                    ));
                }
            }
        }
    }
    let tasks: Vec<&Value> = groups
        .iter()
        .flat_map(|g| {
            g.get("Tasks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    match rc.strategy {
        Strategy::Template => {
            let reading: Vec<(String, String)> = tasks
                .iter()
                .flat_map(|t| {
                    let task = t
                        .get("Name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    t.get("Templates")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|tpl| {
                            tpl.get("EmbeddedTmpl")
                                .and_then(Value::as_str)
                                .is_some_and(|body| body.contains(&format!("\"{}\"", svc.key)))
                        })
                        .map(move |tpl| {
                            (
                                task.clone(),
                                tpl.get("ChangeMode")
                                    .and_then(Value::as_str)
                                    .unwrap_or("restart")
                                    .to_string(),
                            )
                        })
                })
                .collect();
            if reading.is_empty() {
                out.push(format!(
                    "no task template reads the key {:?}: the template strategy needs one (with change_mode = \"noop\")",
                    svc.key
                ));
            }
            for (task, mode) in reading {
                if mode != "noop" {
                    out.push(format!(
                        "task {task:?}: the template reading {:?} has change_mode = {mode:?}; it must be \"noop\", or every instance restarts at once when the key changes",
                        svc.key
                    ));
                }
            }
        }
        Strategy::Jobspec => {
            let needles = [
                format!("NOMAD_META_{}", rc.meta_key),
                format!("meta.{}", rc.meta_key),
            ];
            let uses = tasks.iter().any(|t| {
                let text = serde_json::to_string(t).unwrap_or_default();
                needles.iter().any(|n| text.contains(n.as_str()))
            });
            if !uses {
                out.push(format!(
                    "no task references ${{NOMAD_META_{}}}: the jobspec strategy sets that meta key and the task must read it",
                    rc.meta_key
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_read_well() {
        let f = Failure::Unhealthy {
            allocs: vec![AllocFailure {
                name: "web.web[2]".into(),
                id: "0123456789abcdef".into(),
                checks: vec!["check \"web-health\" failure (HTTP 500): unhealthy tag bad-1".into()],
                events: vec!["web: Started: Task started by client".into()],
            }],
        };
        assert_eq!(
            f.to_string(),
            "new allocation unhealthy: allocation web.web[2] (01234567): check \"web-health\" failure (HTTP 500): unhealthy tag bad-1; task events: web: Started: Task started by client"
        );
        let p = placement_text(
            &serde_json::json!({"NodesEvaluated": 1, "DimensionExhausted": {"memory": 1}}),
        );
        assert_eq!(p, "1 nodes evaluated, memory: 1");
    }
}

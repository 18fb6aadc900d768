//! Ingest: one normalised push becomes one Consul transaction.
//!
//! The tag key (what consul-template reads), the history and the desired
//! record change together or not at all: a `/v1/txn` with check-and-set on
//! every value this replica read, plus a check that the service is not
//! pinned. Two replicas receiving webhooks at once therefore cannot
//! interleave half-writes; the loser of a CAS re-reads and decides again.
//!
//! The last values read are cached per service, but only as a guess: every
//! write is conditioned on their indexes, so a stale guess costs a re-read,
//! never a lost update. That keeps a webhook at one Consul round trip in
//! the common case. A "no change" answer is never given from the guess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::Retryable;

use crate::clients::consul::{Consul, ConsulError, TxnOutcome};
use crate::clock::now_rfc3339;
use crate::config::{Config, ServiceConfig};
use crate::metrics::Metrics;
use crate::policy::Decision;
use crate::store::history::{self, Head};
use crate::store::read::retry_policy;
use crate::store::{read_for_write, Keys, Snapshot, StoreError, Txn};
use crate::store::{Desired, Event, HistoryEntry};
use crate::webhook::{ImagePush, Source};

/// How many times a lost CAS is retried from a fresh read before giving
/// up with 503 (each retry means another writer got in first).
/// Within one process, changes to one service are applied one at a time,
/// so only other replicas (or operators) can make a CAS lose.
const MAX_CAS_ATTEMPTS: usize = 12;

/// A change to apply to a service.
#[derive(Debug, Clone)]
pub enum Change {
    /// From a registry webhook: subject to the tag policy.
    Push { push: ImagePush, source: Source },
    /// From `tagbridge deploy`: an operator's explicit choice, so the
    /// order policy does not apply (rolling back to an older tag is the
    /// point), but the include/exclude filters still do.
    Manual {
        tag: String,
        reason: Option<String>,
        actor: Option<String>,
    },
    /// From `tagbridge sync`: the best tag a registry listing offers,
    /// subject to the tag policy like a push. Unlike a push, a tag that is
    /// older than current, unchanged or arrives while pinned writes
    /// nothing: a listing repeats itself on every sync and must not fill
    /// the history.
    Poll { push: ImagePush },
}

impl Change {
    /// The tag this change asks for.
    pub fn tag(&self) -> &str {
        match self {
            Change::Push { push, .. } | Change::Poll { push } => &push.tag,
            Change::Manual { tag, .. } => tag,
        }
    }
    fn digest(&self) -> Option<&str> {
        match self {
            Change::Push { push, .. } | Change::Poll { push } => push.digest.as_deref(),
            Change::Manual { .. } => None,
        }
    }
}

/// What happened, for the HTTP answer and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub tag: String,
    pub previous: Option<String>,
    pub changed: bool,
    /// Why nothing changed (`None` when `changed`).
    pub reason: Option<String>,
    /// The desired `seq` a rollout controller will act on, when the
    /// change queued a rollout.
    pub rollout_seq: Option<u64>,
}

impl Ingested {
    /// Whether a rollout controller will act on the change.
    pub fn rollout_queued(&self) -> bool {
        self.rollout_seq.is_some()
    }
}

/// Why an ingest could not complete. Nothing was written in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// Consul unreachable or failing after retries → 503.
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// Other writers kept winning the CAS → 503.
    #[error("gave up after {0} check-and-set conflicts with other writers")]
    Contention(usize),
    /// A state record exists but is not what tagbridge writes → 500.
    #[error("state record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// `tagbridge deploy` on a pinned service.
    #[error("service {0} is pinned (tagbridge unpin {0} first)")]
    Pinned(String),
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Consul(c) => IngestError::Consul(c),
            StoreError::Corrupt { key, reason } => IngestError::Corrupt { key, reason },
            StoreError::Contention(_) => IngestError::Contention(MAX_CAS_ATTEMPTS),
        }
    }
}

/// Applies changes to services; shared by every connection.
pub struct Ingest {
    consul: Consul,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    cache: Mutex<HashMap<String, Snapshot>>,
    lanes: HashMap<String, Lane>,
}

/// One per configured service.
struct Lane {
    /// Concurrent webhooks for the same service in this process queue
    /// here instead of racing each other's CAS.
    turn: tokio::sync::Mutex<()>,
    /// Its keys, composed once: they only change with the configuration.
    keys: Keys,
}

/// The pauses after lost CASes: short, growing and jittered, so two
/// replicas that collided do not collide again in lockstep.
fn conflict_pauses() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(2))
        .with_max_delay(Duration::from_millis(60))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The plan for one attempt: the ops and the outcome if they commit.
struct Plan {
    written: Written,
    ingested: Ingested,
}

impl Plan {
    /// Nothing to write, and why.
    fn nothing(tag: &str, previous: Option<String>, reason: String) -> Plan {
        Plan {
            written: Written {
                txn: Txn::default(),
                head: None,
                desired: None,
            },
            ingested: Ingested {
                tag: tag.to_string(),
                previous,
                changed: false,
                reason: Some(reason),
                rollout_seq: None,
            },
        }
    }
}

/// What the decision leaves to write, before any op is built.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Nothing to write: the tag is current.
    Unchanged,
    /// Nothing to write, for this reason.
    Nothing(String),
    /// A history entry, and the tag itself only when `write_tag`.
    Record {
        write_tag: bool,
        detail: Option<String>,
        reason: Option<String>,
    },
}

/// What the policy's `decision` means for `change`.
fn settle(decision: Decision, change: &Change, pinned: bool) -> Settled {
    let record = |write_tag, detail: Option<&str>, reason: Option<&str>| Settled::Record {
        write_tag,
        detail: detail.map(str::to_string),
        reason: reason.map(str::to_string),
    };
    match decision {
        Decision::Unchanged => Settled::Unchanged,
        Decision::Filtered(reason) => Settled::Nothing(reason),
        // A listing repeats itself: what a push would only record
        // (older, or arriving while pinned), a poll does not write.
        Decision::Older | Decision::Apply
            if matches!(change, Change::Poll { .. }) && (decision == Decision::Older || pinned) =>
        {
            let reason = if decision == Decision::Older {
                "older than current"
            } else {
                "pinned"
            };
            Settled::Nothing(reason.into())
        }
        Decision::Older => record(
            false,
            Some("ignored: older than current"),
            Some("older than current"),
        ),
        Decision::Apply if pinned => record(
            false,
            Some("pinned: recorded, not deployed"),
            Some("pinned"),
        ),
        Decision::Apply => record(true, None, None),
    }
}

/// The history entry `change` adds; `detail` is the decision's note (a
/// manual deploy records the operator's reason instead).
fn history_entry(
    change: &Change,
    previous: Option<String>,
    detail: Option<String>,
) -> HistoryEntry {
    let (event, source, delivery, actor, digest, detail) = match change {
        Change::Push { push, source } => (
            Event::Received,
            Some(source.as_str().to_string()),
            push.delivery.clone(),
            push.actor.clone(),
            push.digest.clone(),
            detail,
        ),
        Change::Poll { push } => (
            Event::Received,
            Some("poll".to_string()),
            None,
            None,
            push.digest.clone(),
            detail,
        ),
        Change::Manual { reason, actor, .. } => (
            Event::Manual,
            Some("cli".to_string()),
            None,
            actor.clone(),
            None,
            reason.clone(),
        ),
    };
    HistoryEntry {
        at: now_rfc3339(),
        event,
        tag: change.tag().to_string(),
        previous,
        digest,
        source,
        delivery,
        actor,
        detail,
    }
}

/// The transaction recording `entry`: every record read is checked or
/// CAS-written at the index `snap` read it with.
fn txn_ops(
    svc: &ServiceConfig,
    keys: &Keys,
    snap: &Snapshot,
    change: &Change,
    entry: &HistoryEntry,
    write_tag: bool,
) -> Result<Written, IngestError> {
    let tag = entry.tag.as_str();
    let mut txn = Txn::with_capacity(7 + history::TRIM_PER_WRITE as usize);
    // I2: for services with a rollout only the leader writes the key,
    // when it starts rolling the tag out, so the key only ever holds a
    // tag being rolled out or one that passed its gate. Template jobs
    // render the key in every allocation Nomad places (reschedules
    // included), so a key written here, with no leader or mid-rollout,
    // would run an unchecked tag. Ingest records desired and history.
    let write_key = write_tag && svc.rollout.is_none();
    let mut written = None;
    if write_key {
        txn.set_tag(keys, tag, snap.key_index);
        // The digest travels with the tag: written when known, deleted
        // when not (it must never name the digest of the tag before).
        txn.move_digest(
            keys,
            entry.digest.as_deref(),
            snap.digest.as_deref(),
            snap.digest_index,
        );
    } else {
        txn.check(&keys.tag, snap.key_index);
    }
    if write_tag {
        let desired = Desired {
            tag: tag.to_string(),
            digest: entry.digest.clone(),
            seq: snap.next_seq(),
            at: entry.at.clone(),
        };
        txn.put_desired(keys, &desired, snap.desired_index)?;
        written = Some(desired);
    }
    if svc.rollout.is_some() && (snap.desired.is_none() || matches!(change, Change::Manual { .. }))
    {
        // The seq (desired record deleted) or the decision (a manual
        // deploy) was taken from the deployed record.
        txn.check(&keys.deployed, snap.deployed_index);
    }
    let head = txn.append_history(keys, &snap.history, entry, svc.history_keep);
    txn.check(&keys.pin, snap.pin_index.unwrap_or(0));
    Ok(Written {
        txn,
        head: Some(head),
        desired: written,
    })
}

/// The outcome of a change the filters reject: they need no state, so
/// this is answered without touching Consul.
fn filtered(svc: &ServiceConfig, change: &Change) -> Option<Ingested> {
    let Decision::Filtered(reason) =
        svc.policy
            .policy
            .decide(change.tag(), change.digest(), None, None)
    else {
        return None;
    };
    Some(Ingested {
        tag: change.tag().to_string(),
        previous: None,
        changed: false,
        reason: Some(reason),
        rollout_seq: None,
    })
}

impl Ingest {
    pub fn new(consul: Consul, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let lanes = config
            .services
            .iter()
            .map(|s| {
                let lane = Lane {
                    turn: tokio::sync::Mutex::new(()),
                    keys: Keys::new(&config, s),
                };
                (s.name.clone(), lane)
            })
            .collect();
        Self {
            consul,
            config,
            metrics,
            cache: Mutex::new(HashMap::new()),
            lanes,
        }
    }

    pub fn consul(&self) -> &Consul {
        &self.consul
    }

    /// Take the cached snapshot out (the caller holds the service's lane,
    /// and puts back what it knows after its write).
    fn take_cached(&self, service: &str) -> Option<Snapshot> {
        self.cache.lock().ok()?.remove(service)
    }

    fn remember(&self, service: &str, snap: Option<Snapshot>) {
        if let Ok(mut cache) = self.cache.lock() {
            match snap {
                Some(s) => cache.insert(service.to_string(), s),
                None => cache.remove(service),
            };
        }
    }

    fn note_err(&self, e: &IngestError) {
        if let IngestError::Consul(c) = e {
            self.metrics.consul_error(c.op());
        }
    }

    /// Apply one change to one service.
    ///
    /// # Errors
    ///
    /// See [`IngestError`]; nothing is written when an error is returned.
    pub async fn apply(
        &self,
        svc: &ServiceConfig,
        change: &Change,
    ) -> Result<Ingested, IngestError> {
        let r = self.apply_inner(svc, change).await;
        if let Err(e) = &r {
            self.note_err(e);
        }
        r
    }

    async fn apply_inner(
        &self,
        svc: &ServiceConfig,
        change: &Change,
    ) -> Result<Ingested, IngestError> {
        // Filters need no state: answer without touching Consul.
        if let Some(ingested) = filtered(svc, change) {
            return Ok(ingested);
        }
        let lane = self.lanes.get(&svc.name);
        let _turn = match lane {
            Some(l) => Some(l.turn.lock().await),
            None => None,
        };
        let keys = self.keys(svc);
        self.apply_in_turn(svc, &keys, change).await
    }

    /// The service's keys: composed once per configured service, composed
    /// now for one this ingest was not built with.
    pub fn keys(&self, svc: &ServiceConfig) -> std::borrow::Cow<'_, Keys> {
        match self.lanes.get(&svc.name) {
            Some(l) => std::borrow::Cow::Borrowed(&l.keys),
            None => std::borrow::Cow::Owned(Keys::new(&self.config, svc)),
        }
    }

    /// Plan and commit until a plan commits (the caller holds the
    /// service's lane): a lost CAS re-reads and decides again.
    async fn apply_in_turn(
        &self,
        svc: &ServiceConfig,
        keys: &Keys,
        change: &Change,
    ) -> Result<Ingested, IngestError> {
        // The reads are boxed: they are the rare path (first webhook, lost
        // CAS), and their futures (six reads in parallel) are most of this
        // one's size, which every webhook would otherwise carry and move.
        let reread = || Box::pin(read_for_write(&self.consul, keys, svc.history_keep));
        let mut pauses = conflict_pauses();
        let mut fresh = false;
        let mut snap = match self.take_cached(&svc.name) {
            Some(s) => s,
            None => {
                fresh = true;
                reread().await?
            }
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let plan = match self.plan(svc, keys, &snap, change)? {
                Some(plan) => plan,
                None if fresh => {
                    let ingested = self.unchanged(svc, change, &snap);
                    self.remember(&svc.name, Some(snap));
                    return Ok(ingested);
                }
                None => {
                    // Never answer "unchanged" from a guess.
                    snap = reread().await?;
                    fresh = true;
                    continue;
                }
            };
            if plan.written.txn.is_empty() {
                self.remember(&svc.name, Some(snap));
                return Ok(plan.ingested);
            }
            let result = (|| self.consul.txn(plan.written.txn.ops()))
                .retry(retry_policy())
                .when(ConsulError::is_transient)
                .await;
            match result {
                Ok(TxnOutcome::Committed(indexes)) => {
                    let w = plan.written;
                    let next = snap.committed(keys, w.txn, w.head, w.desired, &indexes);
                    self.remember(&svc.name, next);
                    return Ok(plan.ingested);
                }
                Ok(TxnOutcome::Conflict(_)) => {
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_millis(60))).await;
                    snap = reread().await?;
                    fresh = true;
                }
                Err(e) => {
                    self.remember(&svc.name, None);
                    return Err(e.into());
                }
            }
        }
        self.remember(&svc.name, None);
        Err(IngestError::Contention(MAX_CAS_ATTEMPTS))
    }

    fn unchanged(&self, svc: &ServiceConfig, change: &Change, snap: &Snapshot) -> Ingested {
        Ingested {
            tag: change.tag().to_string(),
            previous: snap.current_tag(svc).map(str::to_string),
            changed: false,
            reason: Some("unchanged".into()),
            rollout_seq: None,
        }
    }

    /// Decide against `snap`; `None` means "nothing to write: unchanged".
    fn plan(
        &self,
        svc: &ServiceConfig,
        keys: &Keys,
        snap: &Snapshot,
        change: &Change,
    ) -> Result<Option<Plan>, IngestError> {
        let tag = change.tag();
        let current = snap.current_tag(svc).map(str::to_string);
        let decision = decide(svc, snap, change, current.as_deref())?;
        let (write_tag, detail, reason) = match settle(decision, change, snap.pinned()) {
            Settled::Unchanged => return Ok(None),
            Settled::Nothing(reason) => return Ok(Some(Plan::nothing(tag, current, reason))),
            Settled::Record {
                write_tag,
                detail,
                reason,
            } => (write_tag, detail, reason),
        };
        let entry = history_entry(change, current.clone(), detail);
        let written = txn_ops(svc, keys, snap, change, &entry, write_tag)?;
        let rollout_seq = written
            .desired
            .as_ref()
            .filter(|_| svc.rollout.is_some())
            .map(|d| d.seq);
        Ok(Some(Plan {
            written,
            ingested: Ingested {
                tag: tag.to_string(),
                previous: current,
                changed: write_tag,
                reason,
                rollout_seq,
            },
        }))
    }
}

/// The tag policy's verdict on `change` against `current`. A manual
/// deploy bypasses the order policy, but not a pin.
fn decide(
    svc: &ServiceConfig,
    snap: &Snapshot,
    change: &Change,
    current: Option<&str>,
) -> Result<Decision, IngestError> {
    let tag = change.tag();
    match change {
        Change::Push { .. } | Change::Poll { .. } => {
            let current_digest = snap
                .desired
                .as_ref()
                .filter(|d| Some(d.tag.as_str()) == current)
                .and_then(|d| d.digest.as_deref());
            let decision = svc
                .policy
                .policy
                .decide(tag, change.digest(), current, current_digest);
            // With a digest key, the first digest learnt for the current
            // tag (resolve_digest just turned on, a payload that has one
            // at last) is a change: the digest key must come to name it.
            let digest_learnt = svc.digest_key.is_some()
                && current == Some(tag)
                && current_digest.is_none()
                && change.digest().is_some();
            Ok(match decision {
                Decision::Unchanged if digest_learnt => Decision::Apply,
                d => d,
            })
        }
        Change::Manual { .. } => {
            if snap.pinned() {
                return Err(IngestError::Pinned(svc.name.clone()));
            }
            if manual_is_noop(svc, snap, tag) {
                Ok(Decision::Unchanged)
            } else {
                Ok(Decision::Apply)
            }
        }
    }
}

/// Whether `tagbridge deploy <tag>` has nothing to do: for a rollout
/// service only when the tag is desired and the controller deployed it or
/// is deploying it. A tag that was rolled back (the desired record still
/// names it) is retried (I6), with a new seq the controller acts on.
fn manual_is_noop(svc: &ServiceConfig, snap: &Snapshot, tag: &str) -> bool {
    if svc.rollout.is_none() {
        return snap.tag.as_deref() == Some(tag);
    }
    let Some(want) = snap.desired.as_ref().filter(|d| d.tag == tag) else {
        return false;
    };
    match snap.deployed.as_ref() {
        // Still queued for the controller.
        None => true,
        Some(d) if d.seq < want.seq => true,
        Some(d) => {
            d.seq == want.seq
                && d.tag == tag
                && (d.state == crate::store::RolloutState::Deployed || d.is_busy())
        }
    }
}

/// What a plan writes.
struct Written {
    txn: Txn,
    /// The history head it leaves (kept for the next webhook).
    head: Option<Head>,
    /// The desired record it writes, if any (kept for the next webhook).
    desired: Option<Desired>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Purpose;
    use crate::store::{Deployed, RolloutState};

    fn service(rollout: bool) -> ServiceConfig {
        let text = format!(
            r#"service "web" {{
                 secret_sha256 = "{}"
                 source = "dockerhub"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
                 {}
               }}"#,
            "9f2c1e6b8a0d4c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3",
            if rollout {
                r#"rollout { job = "web" }"#
            } else {
                ""
            }
        );
        let cfg = Config::parse(
            std::path::Path::new("t.hcl"),
            &text,
            Purpose::Client,
            &|_| None,
        )
        .expect("config");
        cfg.services[0].clone()
    }

    fn snap(desired: Option<(&str, u64)>, deployed: Option<(&str, u64, RolloutState)>) -> Snapshot {
        Snapshot {
            tag: deployed.map(|d| d.0.to_string()),
            desired: desired.map(|(tag, seq)| Desired {
                tag: tag.into(),
                digest: None,
                seq,
                at: "t".into(),
            }),
            deployed: deployed.map(|(tag, seq, outcome)| Deployed {
                tag: tag.into(),
                digest: None,
                seq,
                job_version: None,
                deployment: None,
                at: "t".into(),
                state: outcome,
                previous: None,
                previous_digest: None,
                prior_version: None,
                detail: None,
                job: None,
                done: Vec::new(),
            }),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_rolled_back_tag_can_be_deployed_again() {
        let svc = service(true);
        // Rolled back: the desired record still names bad-1.
        let s = snap(
            Some(("bad-1", 4)),
            Some(("v3", 4, RolloutState::RolledBack)),
        );
        assert!(!manual_is_noop(&svc, &s, "bad-1"));
        let s = snap(Some(("bad-1", 4)), Some(("v3", 4, RolloutState::Failed)));
        assert!(!manual_is_noop(&svc, &s, "bad-1"));
        // Deployed, being deployed, or still queued: nothing to do.
        let s = snap(
            Some(("bad-1", 4)),
            Some(("bad-1", 4, RolloutState::Deployed)),
        );
        assert!(manual_is_noop(&svc, &s, "bad-1"));
        let s = snap(
            Some(("bad-1", 4)),
            Some(("bad-1", 4, RolloutState::InProgress)),
        );
        assert!(manual_is_noop(&svc, &s, "bad-1"));
        let s = snap(Some(("bad-1", 5)), Some(("v3", 4, RolloutState::Deployed)));
        assert!(manual_is_noop(&svc, &s, "bad-1"));
        assert!(!manual_is_noop(&svc, &s, "v3"));
        // KV-only services compare with the key.
        let kv = service(false);
        assert!(manual_is_noop(
            &kv,
            &snap(None, Some(("v3", 0, RolloutState::Deployed))),
            "v3"
        ));
    }

    #[test]
    fn a_poll_writes_nothing_a_push_would_only_record() {
        let poll = Change::Poll {
            push: ImagePush {
                repository: "acme/web".into(),
                tag: "v1".into(),
                digest: None,
                actor: None,
                delivery: None,
            },
        };
        let manual = Change::Manual {
            tag: "v1".into(),
            reason: None,
            actor: None,
        };
        let nothing = |r: &str| Settled::Nothing(r.into());
        let record = |write_tag, detail: Option<&str>, reason: Option<&str>| Settled::Record {
            write_tag,
            detail: detail.map(Into::into),
            reason: reason.map(Into::into),
        };
        assert_eq!(
            settle(Decision::Older, &poll, false),
            nothing("older than current")
        );
        assert_eq!(settle(Decision::Apply, &poll, true), nothing("pinned"));
        assert_eq!(
            settle(Decision::Older, &manual, false),
            record(
                false,
                Some("ignored: older than current"),
                Some("older than current")
            )
        );
        assert_eq!(
            settle(Decision::Apply, &manual, true),
            record(
                false,
                Some("pinned: recorded, not deployed"),
                Some("pinned")
            )
        );
        assert_eq!(
            settle(Decision::Apply, &poll, false),
            record(true, None, None)
        );
        assert_eq!(settle(Decision::Unchanged, &poll, true), Settled::Unchanged);
    }

    #[test]
    fn seq_continues_above_the_deployed_record() {
        assert_eq!(snap(None, None).next_seq(), 1);
        assert_eq!(snap(Some(("a", 4)), None).next_seq(), 5);
        // desired/<svc> deleted by hand after the controller answered seq 6.
        assert_eq!(
            snap(None, Some(("a", 6, RolloutState::Deployed))).next_seq(),
            7
        );
    }
}

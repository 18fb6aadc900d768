//! Recording: the deployed record, the key and a history entry written in
//! one transaction fenced by the leader's lock, and the notifications
//! that follow an outcome.
//!
//! The start of a rollout is additionally conditioned on the desired and
//! pin records it was decided from: a webhook or a `rollback` pin that
//! lands between the decision and the commit makes the commit fail, and
//! the driver decides again instead of re-applying a stale decision.

use backon::BackoffBuilder as _;

use super::*;
use crate::clients::consul::{KvPair, TxnOutcome};
use crate::clock::now_rfc3339;
use crate::notify::Notice;
use crate::store::read::{read_digest, read_index, read_tag};
use crate::store::{Event, HeadRead, Txn};

/// What to do with the service's key in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyWrite {
    Keep,
    /// The tag, and its digest for the `digest_key` (`None`: unknown, so
    /// the digest key is deleted).
    Set {
        tag: String,
        digest: Option<String>,
    },
    /// Restore "no key": the rollout replaced a key that did not exist
    /// (the digest key goes too).
    Delete,
}

/// What a rollout's start was decided from: the commit holds only if both
/// records are unchanged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guard {
    pub desired_index: u64,
    pub pin_index: u64,
}

/// Whether a guarded commit happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Committed {
    Yes,
    /// The desired or pin record changed since the decision: decide again.
    Stale,
}

/// What a commit's transaction is conditioned on, as read just before it.
struct Observed {
    /// The history head, when the commit appends an entry.
    head: Option<HeadRead>,
    /// The service's key.
    key: Option<KvPair>,
    deployed_index: u64,
    /// The digest key, when the commit moves the key.
    digest: Option<KvPair>,
}

/// What to write, together, in one fenced transaction.
pub(super) struct Writes {
    pub deployed: Deployed,
    pub key: KeyWrite,
    pub history: Option<HistoryEntry>,
}

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    pub(super) async fn finish_deployed(&self, mut rec: Deployed) -> Result<(), RolloutError> {
        rec.state = RolloutState::Deployed;
        rec.at = now_rfc3339();
        rec.detail = None;
        let detail = jobs_detail(&rec, self.job_id());
        let mut entry = self.entry(
            Event::Deployed,
            &rec.tag,
            rec.previous.clone(),
            Some(detail.clone()),
        );
        entry.digest = rec.digest.clone();
        self.commit(Writes {
            deployed: rec.clone(),
            key: KeyWrite::Keep,
            history: Some(entry),
        })
        .await?;
        tracing::info!(service = %self.svc.name, tag = %rec.tag, "deployed");
        self.notify(
            Event::Deployed,
            &rec.tag,
            rec.previous.clone(),
            Some(detail),
        );
        Ok(())
    }

    pub(super) async fn finish_rolled_back(
        &self,
        rec: Deployed,
        target: Option<String>,
        version: Option<u64>,
        deployment: Option<String>,
        reason: String,
    ) -> Result<(), RolloutError> {
        let failed_tag = rec.tag.clone();
        let tag = target.clone().unwrap_or_default();
        let out = Deployed {
            tag: tag.clone(),
            // The digest restored with the tag (the key's, at the start).
            digest: rec.previous_digest.clone().filter(|_| target.is_some()),
            previous_digest: None,
            seq: rec.seq,
            job_version: version,
            deployment,
            at: now_rfc3339(),
            state: RolloutState::RolledBack,
            previous: Some(failed_tag.clone()),
            prior_version: rec.prior_version,
            detail: Some(reason.clone()),
            job: rec.job.clone(),
            done: Vec::new(),
        };
        let mut entry = self.entry(
            Event::RolledBack,
            &tag,
            Some(failed_tag.clone()),
            Some(reason.clone()),
        );
        entry.digest = out.digest.clone();
        self.commit(Writes {
            deployed: out,
            key: KeyWrite::Keep,
            history: Some(entry),
        })
        .await?;
        tracing::warn!(service = %self.svc.name, failed = %failed_tag, restored = %tag, reason = %reason, "rolled back");
        self.notify(Event::RolledBack, &tag, Some(failed_tag), Some(reason));
        Ok(())
    }

    pub(super) async fn finish_failed(
        &self,
        rec: Deployed,
        failed_tag: &str,
        reason: String,
    ) -> Result<(), RolloutError> {
        let out = Deployed {
            state: RolloutState::Failed,
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
            key: KeyWrite::Keep,
            history: Some(entry),
        })
        .await?;
        tracing::error!(service = %self.svc.name, tag = failed_tag, reason = %reason, "rollout failed");
        self.notify(Event::Failed, failed_tag, rec.previous, Some(reason));
        Ok(())
    }

    pub(super) fn entry(
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

    pub(super) fn notify(
        &self,
        event: Event,
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
    pub(super) async fn commit(&self, w: Writes) -> Result<(), RolloutError> {
        self.commit_guarded(w, None).await.map(|_| ())
    }

    /// [`Self::commit`], and only if the desired and pin records are still
    /// the ones `guard` was read with ([`Committed::Stale`] otherwise).
    ///
    /// A lost check-session means someone else holds (or deleted) the
    /// lock: the term is cancelled at once, so this replica stops driving
    /// and campaigns again.
    pub(super) async fn commit_guarded(
        &self,
        w: Writes,
        guard: Option<Guard>,
    ) -> Result<Committed, RolloutError> {
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(20))
            .with_max_delay(std::time::Duration::from_millis(200))
            .with_jitter()
            .with_max_times(16)
            .build();
        loop {
            self.check_cancel()?;
            let seen = self.observe(&w).await?;
            let txn = self.commit_txn(&w, &seen, guard)?;
            // The write itself is not retried blindly on a transport error:
            // the loop re-reads and builds it again.
            let written = self.patient(|| self.consul.txn(txn.ops())).await?;
            let TxnOutcome::Conflict(errors) = written else {
                return Ok(Committed::Yes);
            };
            tracing::debug!(service = %self.svc.name, ?errors, "record write lost a race");
            if self.lock_lost().await? {
                tracing::error!(service = %self.svc.name, "the leader lock is no longer ours: stopping this term");
                self.ctx.cancel.cancel();
                return Err(RolloutError::Cancelled);
            }
            if let Some(g) = guard {
                let st = self.patient(|| read_state(self.consul, &self.keys)).await?;
                if st.desired_index != g.desired_index || st.pin_index != g.pin_index {
                    tracing::info!(service = %self.svc.name, "desired or pin changed since the decision; deciding again");
                    return Ok(Committed::Stale);
                }
            }
            match delays.next() {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(RolloutError::Fenced(self.keys.deployed.clone())),
            }
        }
    }

    /// What a commit's transaction is conditioned on, read just before it.
    async fn observe(&self, w: &Writes) -> Result<Observed, RolloutError> {
        let head = match &w.history {
            Some(_) => Some(
                self.patient(|| {
                    self.consul
                        .history_head(&self.keys.history, self.svc.history_keep)
                })
                .await?,
            ),
            None => None,
        };
        let (key, deployed_index, digest) = self
            .patient(|| async {
                tokio::try_join!(
                    read_tag(self.consul, &self.keys),
                    read_index(self.consul, &self.keys.deployed),
                    // Read only when this write moves the key.
                    async {
                        match w.key {
                            KeyWrite::Keep => Ok(None),
                            _ => self.digest_now().await,
                        }
                    },
                )
            })
            .await?;
        Ok(Observed {
            head,
            key,
            deployed_index,
            digest,
        })
    }

    /// The one transaction of a commit, built from what was just read: the
    /// deployed record, the key (and the digest key with it), the guard's
    /// checks, the history entry and the leader's fence.
    fn commit_txn(
        &self,
        w: &Writes,
        seen: &Observed,
        guard: Option<Guard>,
    ) -> Result<Txn, RolloutError> {
        let keys = &self.keys;
        let mut txn = Txn::with_capacity(8);
        txn.put_deployed(keys, &w.deployed, self.started(), seen.deployed_index)?;
        let current = seen
            .key
            .as_ref()
            .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string());
        let key_index = seen.key.as_ref().map_or(0, |kv| kv.modify_index);
        match &w.key {
            KeyWrite::Set { tag, .. } if current.as_deref() != Some(tag.as_str()) => {
                txn.set_tag(keys, tag, key_index);
            }
            KeyWrite::Delete if current.is_some() => txn.delete_tag(keys, key_index),
            _ => {}
        }
        // The digest key moves with the tag key, CAS on what was read.
        let want_digest = match &w.key {
            KeyWrite::Keep => None,
            KeyWrite::Set { digest, .. } => Some(digest.as_deref()),
            KeyWrite::Delete => Some(None),
        };
        if let Some(want) = want_digest {
            let (now, index) = seen.digest.as_ref().map_or((None, 0), |kv| {
                (Some(String::from_utf8_lossy(&kv.value)), kv.modify_index)
            });
            txn.move_digest(keys, want, now.as_deref(), index);
        }
        if let Some(g) = guard {
            txn.check(&keys.desired, g.desired_index);
            txn.check(&keys.pin, g.pin_index);
        }
        if let (Some(entry), Some(head)) = (&w.history, &seen.head) {
            txn.append_history(keys, head, entry, self.svc.history_keep);
        }
        if let Some((lock, session)) = &self.ctx.fence {
            txn.fence(lock, session);
        }
        Ok(txn)
    }

    /// The digest key as it is now (`None`: absent or not configured).
    pub(super) async fn digest_now(&self) -> Result<Option<KvPair>, ConsulError> {
        read_digest(self.consul, &self.keys).await
    }

    /// Whether the fence's lock key no longer names our session (deleted,
    /// overwritten, or taken by another replica).
    async fn lock_lost(&self) -> Result<bool, RolloutError> {
        let Some((lock, session)) = &self.ctx.fence else {
            return Ok(false);
        };
        let read = self.patient(|| self.consul.kv_get(lock)).await?;
        Ok(read.value.and_then(|kv| kv.session).as_deref() != Some(session.as_str()))
    }
}

/// "job web version 5, deployment 1a2b3c4d", one such part per job the
/// rollout rolled, in order (`current`: the last one's name).
fn jobs_detail(rec: &Deployed, current: &str) -> String {
    let part = |job: &str, version: u64, deployment: Option<&str>| {
        format!(
            "job {job} version {version}, deployment {}",
            deployment.map(short).unwrap_or("-")
        )
    };
    rec.done
        .iter()
        .map(|d| part(&d.job, d.job_version, d.deployment.as_deref()))
        .chain(std::iter::once(part(
            current,
            rec.job_version.unwrap_or_default(),
            rec.deployment.as_deref(),
        )))
        .collect::<Vec<_>>()
        .join("; ")
}

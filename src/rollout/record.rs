//! Recording: the deployed record, the key and a history entry written in
//! one transaction fenced by the leader's lock, and the notifications
//! that follow an outcome.
use std::time::Duration;

use super::*;
use crate::consul::{TxnOp, TxnOutcome};
use crate::history::Event;
use crate::history_store;
use crate::notify::Notice;
use crate::x509::now_rfc3339;

/// What to write, together, in one fenced transaction.
pub(super) struct Writes {
    pub deployed: Deployed,
    pub key: Option<String>,
    pub history: Option<HistoryEntry>,
}

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    pub(super) async fn finish_deployed(&self, mut rec: Deployed) -> Result<(), RolloutError> {
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

    pub(super) async fn finish_rolled_back(
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

    pub(super) async fn finish_failed(
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
    pub(super) async fn commit(&self, w: Writes) -> Result<(), RolloutError> {
        for _ in 0..16 {
            self.check_cancel()?;
            let history = match &w.history {
                Some(_) => Some(
                    self.consul
                        .history_head(&self.keys.history, self.svc.history_keep)
                        .await
                        .map_err(|e| RolloutError::Corrupt {
                            key: self.keys.history.head.clone(),
                            reason: e.to_string(),
                        })?,
                ),
                None => None,
            };
            let (key, deployed) = tokio::try_join!(
                self.consul.kv_get(&self.keys.tag),
                self.consul.kv_get(&self.keys.deployed),
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
            match self.consul.txn(&ops).await? {
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

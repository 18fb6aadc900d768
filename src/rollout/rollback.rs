//! Rollback: restore the key, then bring the job back to the tag that ran
//! before, and watch that deployment.
use std::time::Duration;

use super::*;
use crate::config::Strategy;
use crate::x509::now_rfc3339;

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    pub(super) async fn rollback(
        &self,
        mut rec: Deployed,
        failure: Failure,
    ) -> Result<(), RolloutError> {
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
    pub(super) async fn rollback_steps(
        &self,
        rec: Deployed,
        reason: String,
    ) -> Result<(), RolloutError> {
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
                    match self.nomad.revert(&self.rc.namespace, &self.rc.job, prior, failed).await {
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

    pub(super) async fn wait_for_version_after(
        &self,
        version: u64,
    ) -> Result<Option<u64>, RolloutError> {
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
}

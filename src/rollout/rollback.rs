//! Rollback: restore the key, then bring the jobs back to the tag that
//! ran before, and watch those deployments. `rollback` records the
//! rollback; `rollback_steps` (where a resumed rollback starts) stops the
//! failed deployment, restores the key and records the outcome;
//! `revert_stages` brings the jobs back one by one, each through
//! `revert_job`'s loop of observe → [`plan_rollback`] → act.
//!
//! What to do with the job is decided by [`plan_rollback`] from what
//! Nomad shows now, every time (after each write, after a lost race, on
//! resume), never from what the rollout saw when it started:
//! - the job already names the prior tag: nothing to write (I1 holds);
//! - the job is still the version this rollout made, and the version
//!   under it names the prior tag: revert to that version (it is the one
//!   our EnforceIndex register sat on, so it carries every change anyone
//!   made before ours, including an operator's edit that made our
//!   register re-read);
//! - anything else (an operator re-registered the job, Nomad or a person
//!   reverted to something else): register the *current* job with the
//!   prior tag under EnforceIndex, keeping their change (I4).

use super::record::KeyWrite;
use super::*;
use crate::clock::now_rfc3339;
use crate::config::Strategy;

/// A job version as a rollback sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    pub version: u64,
    pub modify_index: u64,
    /// Its meta `<meta_key>` (`None`: absent or empty).
    pub tag: Option<String>,
}

impl JobView {
    pub fn of(job: &Job, meta_key: &str) -> Self {
        JobView {
            version: job.version,
            modify_index: job.job_modify_index,
            tag: job
                .meta(meta_key)
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        }
    }
}

/// Everything [`plan_rollback`] decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The job now (`None`: deleted).
    pub job: Option<JobView>,
    /// The version just below the one this rollout registered, if any.
    pub base: Option<JobView>,
    /// The tag to restore (`None`: there was none; the key did not exist).
    pub target: Option<String>,
    /// The version this rollout registered (`None`: it never did).
    pub failed_version: Option<u64>,
    /// Nomad's own auto_revert reverts this job (jobspec strategy).
    pub nomad_reverts: bool,
    /// We already waited for Nomad's revert once.
    pub waited_for_nomad: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackPlan {
    /// The job is gone: the key is restored, nothing to revert.
    JobGone,
    /// The job names the prior tag: record the rollback.
    Restored { version: u64 },
    /// Wait for Nomad's auto_revert to make a version above `after`.
    AwaitNomad { after: u64 },
    /// Revert to `to`, only while the job is still at `enforce_prior`.
    Revert { to: u64, enforce_prior: u64 },
    /// Register the current job with the prior tag, only while its
    /// JobModifyIndex is still `enforce_index`.
    Reregister { enforce_index: u64 },
}

/// Decide the next rollback step from what Nomad shows. Pure.
pub fn plan_rollback(o: &Observed) -> RollbackPlan {
    let Some(job) = &o.job else {
        return RollbackPlan::JobGone;
    };
    if job.tag == o.target {
        return RollbackPlan::Restored {
            version: job.version,
        };
    }
    if let Some(failed) = o.failed_version {
        if o.nomad_reverts && !o.waited_for_nomad && job.version <= failed {
            return RollbackPlan::AwaitNomad { after: failed };
        }
        let base_names_target = o
            .base
            .as_ref()
            .is_some_and(|b| b.version + 1 == failed && b.tag == o.target);
        if job.version == failed && base_names_target {
            return RollbackPlan::Revert {
                to: failed - 1,
                enforce_prior: failed,
            };
        }
    }
    RollbackPlan::Reregister {
        enforce_index: job.modify_index,
    }
}

/// Plans tried before giving up (each write or lost race re-plans).
const MAX_STEPS: usize = 6;

/// One job a rollback brings back.
struct Stage {
    /// Where it stands in the rollout's list (`None`: no longer there).
    index: Option<usize>,
    name: String,
    /// The record as far as this job goes: its versions and deployment.
    view: Deployed,
    /// The job whose rollout failed (the others had succeeded).
    in_flight: bool,
}

/// How bringing one job back ended.
enum Reverted {
    /// The job is gone: nothing to revert.
    Gone,
    /// The job names the prior tag again, at `version` (its deployment
    /// watched to success when this rollback made it).
    Restored {
        version: u64,
        deployment: Option<String>,
    },
    /// The job kept changing under the rollback.
    Kept,
    /// The revert's own deployment failed.
    Failed(Failure),
}

/// How bringing back a rollback's jobs ended, for its record.
#[derive(Default)]
struct Tally {
    /// What each job came back to (named only when there are several).
    notes: Vec<String>,
    /// What could not be brought back: any makes the rollback a failure.
    broken: Vec<String>,
    /// The version the job in flight was restored at, and the deployment
    /// that restored it (when this rollback made one).
    kept: (Option<u64>, Option<String>),
}

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    pub(super) async fn rollback(
        &self,
        mut rec: Deployed,
        failure: Failure,
    ) -> Result<(), RolloutError> {
        let reason = failure.to_string();
        tracing::warn!(service = %self.svc.name, tag = %rec.tag, reason = %reason, "rollout failed; rolling back");
        rec.state = RolloutState::RollingBack;
        rec.detail = Some(reason.clone());
        rec.at = now_rfc3339();
        self.commit(Writes {
            deployed: rec.clone(),
            key: KeyWrite::Keep,
            history: None,
        })
        .await?;
        self.rollback_steps(rec, reason).await
    }

    /// Restore the key, then bring back every job the rollout touched
    /// ([`Self::revert_stages`]): the one in flight first, then those
    /// already rolled, newest first, each watched to the end; then record
    /// how it ended. Idempotent: a new leader repeats it
    /// safely from the `rolling_back` record (a job already back on the
    /// prior tag needs nothing).
    pub(super) async fn rollback_steps(
        &self,
        rec: Deployed,
        reason: String,
    ) -> Result<(), RolloutError> {
        // A rollback gets its own time to wait out outages.
        self.set_patience(self.rc.timeout);
        let stages = self.rollback_stages(&rec);
        if let (Some(dep), Some(i)) = (&rec.deployment, stages.first().and_then(|s| s.index)) {
            // Already terminal is fine: stop placing new allocations.
            self.set_job(i);
            self.fail(dep).await?;
        }
        let target = rec.previous.clone().filter(|t| !t.is_empty());
        // The key first: allocations placed by the revert render it.
        self.commit(Writes {
            deployed: rec.clone(),
            key: target
                .clone()
                .map_or(KeyWrite::Delete, |tag| KeyWrite::Set {
                    tag,
                    digest: rec.previous_digest.clone(),
                }),
            history: None,
        })
        .await?;
        let several = self.rc.jobs.len() > 1 || !rec.done.is_empty();
        let tally = self
            .revert_stages(&stages, target.as_deref(), several)
            .await?;
        if !tally.broken.is_empty() {
            let detail = format!("{reason}; {}", tally.broken.join("; "));
            return self.finish_failed(rec.clone(), &rec.tag, detail).await;
        }
        let detail = std::iter::once(reason)
            .chain(tally.notes)
            .collect::<Vec<_>>()
            .join("; ");
        let (version, deployment) = tally.kept;
        self.finish_rolled_back(rec, target, version, deployment, detail)
            .await
    }

    /// Bring back each of `stages` to `target`, in order, each watched to
    /// the end, and tally how each ended (`several`: each note names its
    /// job). A job no longer in the rollout block is not touched.
    async fn revert_stages(
        &self,
        stages: &[Stage],
        target: Option<&str>,
        several: bool,
    ) -> Result<Tally, RolloutError> {
        let name = |stage: &Stage| match several {
            true => format!("job {}: ", stage.name),
            false => String::new(),
        };
        let mut tally = Tally::default();
        for stage in stages {
            let Some(i) = stage.index else {
                tally.broken.push(format!(
                    "job {}: no longer in the rollout block: not reverted",
                    stage.name
                ));
                continue;
            };
            self.set_job(i);
            let reverted = self
                .revert_job(&stage.view, target.map(str::to_string), stage.in_flight)
                .await?;
            match reverted {
                Reverted::Gone => tally.notes.push(format!(
                    "{}the job is gone: key restored, nothing to revert",
                    name(stage)
                )),
                Reverted::Restored {
                    version,
                    deployment,
                } => {
                    if stage.in_flight {
                        tally.kept = (Some(version), deployment);
                    }
                    if several {
                        tally
                            .notes
                            .push(format!("{}at version {version}", name(stage)));
                    }
                }
                Reverted::Kept => tally.broken.push(format!(
                    "{}not reverted: the job kept changing",
                    name(stage)
                )),
                Reverted::Failed(f) => tally
                    .broken
                    .push(format!("{}the rollback failed too: {f}", name(stage))),
            }
        }
        Ok(tally)
    }

    /// The jobs a rollback brings back, in order: the one in flight (as
    /// `rec` records it), then the ones already rolled, newest first.
    fn rollback_stages(&self, rec: &Deployed) -> Vec<Stage> {
        let current = rec
            .job
            .clone()
            .unwrap_or_else(|| self.rc.first_job().to_string());
        let mut stages = vec![Stage {
            index: self.job_index(rec.job.as_deref()),
            name: current,
            view: rec.clone(),
            in_flight: true,
        }];
        stages.extend(rec.done.iter().rev().map(|d| Stage {
            index: self.job_index(Some(&d.job)),
            name: d.job.clone(),
            view: Deployed {
                job_version: Some(d.job_version),
                prior_version: Some(d.prior_version),
                deployment: d.deployment.clone(),
                ..rec.clone()
            },
            in_flight: false,
        }));
        stages
    }

    /// Bring the addressed job back to `target`: one loop of observe →
    /// [`plan_rollback`] → act, kept in one place so every write is
    /// followed by a fresh look (long for that reason). `view` holds the
    /// job's own versions; only the job in flight can be one Nomad's
    /// auto_revert is reverting (the others' deployments succeeded).
    async fn revert_job(
        &self,
        view: &Deployed,
        target: Option<String>,
        in_flight: bool,
    ) -> Result<Reverted, RolloutError> {
        let mut waited_for_nomad = !in_flight;
        // The newest version this rollback wrote (its deployment is watched).
        let mut wrote: Option<u64> = None;
        for _ in 0..MAX_STEPS {
            let o = self
                .observe_for_rollback(view, target.clone(), waited_for_nomad)
                .await?;
            let plan = plan_rollback(&o);
            tracing::info!(service = %self.svc.name, job = self.job_id(), ?plan, "rollback step");
            match plan {
                RollbackPlan::JobGone => return Ok(Reverted::Gone),
                RollbackPlan::Restored { version } => {
                    return self.settle_rollback(view, target, version, wrote).await;
                }
                RollbackPlan::AwaitNomad { after } => {
                    waited_for_nomad = true;
                    if let Some(v) = self.wait_for_version_after(after).await? {
                        wrote = Some(v);
                    }
                }
                RollbackPlan::Revert { to, enforce_prior } => {
                    self.check_cancel()?;
                    match self
                        .nomad
                        .revert(&self.rc.namespace, self.job_id(), to, enforce_prior)
                        .await
                    {
                        Ok(_) => wrote = Some(enforce_prior + 1),
                        Err(e) if e.is_enforce_version_conflict() || e.is_transient() => {
                            tracing::info!(service = %self.svc.name, error = %e, "revert not applied; looking again");
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                RollbackPlan::Reregister { enforce_index } => {
                    if let Some(v) = self
                        .reregister(view, target.as_deref(), enforce_index)
                        .await?
                    {
                        wrote = Some(v);
                    }
                }
            }
        }
        Ok(Reverted::Kept)
    }

    /// What Nomad shows now, for [`plan_rollback`].
    async fn observe_for_rollback(
        &self,
        rec: &Deployed,
        target: Option<String>,
        waited_for_nomad: bool,
    ) -> Result<Observed, RolloutError> {
        let job = self.job().await?;
        let mut base = None;
        if let (Some(j), Some(failed)) = (&job, rec.job_version) {
            if j.version == failed && failed > 0 && JobView::of(j, &self.rc.meta_key).tag != target
            {
                let versions = self
                    .patient(|| self.nomad.job_versions(&self.rc.namespace, self.job_id()))
                    .await?;
                base = versions
                    .iter()
                    .find(|v| v.version + 1 == failed)
                    .map(|v| JobView::of(v, &self.rc.meta_key));
            }
        }
        let nomad_reverts = self.rc.strategy == Strategy::Jobspec
            && job.as_ref().is_some_and(|j| {
                j.group_updates()
                    .iter()
                    .any(|(_, u)| u.as_ref().is_some_and(|u| u.auto_revert))
            });
        Ok(Observed {
            job: job.as_ref().map(|j| JobView::of(j, &self.rc.meta_key)),
            base,
            target,
            failed_version: rec.job_version,
            nomad_reverts,
            waited_for_nomad,
        })
    }

    /// Register the current job with the prior tag (I4: their change
    /// stays). `None` when it lost a race (the caller looks again).
    async fn reregister(
        &self,
        rec: &Deployed,
        target: Option<&str>,
        enforce_index: u64,
    ) -> Result<Option<u64>, RolloutError> {
        let Some(mut job) = self.job().await? else {
            return Ok(None);
        };
        if job.job_modify_index != enforce_index {
            return Ok(None);
        }
        match target {
            Some(t) => job.set_meta(&self.rc.meta_key, t),
            None => {
                if let Some(meta) = job.raw.get_mut("Meta").and_then(|m| m.as_object_mut()) {
                    meta.remove(&self.rc.meta_key);
                }
            }
        }
        job.set_meta(&format!("{}_seq", self.rc.meta_key), &rec.seq.to_string());
        super::plan::set_digest_meta(&mut job, &self.rc.meta_key, rec.previous_digest.as_deref());
        self.check_cancel()?;
        match self.nomad.register(&job, enforce_index).await {
            Ok(_) => {
                tracing::info!(service = %self.svc.name, tag = ?target, job_version = job.version + 1, "the job changed under the rollout: registered the current job with the prior tag");
                Ok(Some(job.version + 1))
            }
            Err(e) if e.is_enforce_index_conflict() || e.is_transient() => {
                tracing::info!(service = %self.svc.name, error = %e, "register not applied; looking again");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The job names the prior tag: watch the deployment of the version
    /// this rollback made (if it made one), then record.
    async fn settle_rollback(
        &self,
        rec: &Deployed,
        target: Option<String>,
        version: u64,
        wrote: Option<u64>,
    ) -> Result<Reverted, RolloutError> {
        // On resume, a version above ours that names the target is the
        // revert a dead leader (or Nomad) made: watch it too.
        let ours = wrote == Some(version)
            || rec
                .job_version
                .or(rec.prior_version)
                .is_some_and(|v| version > v);
        let (mut dep, mut version) = match ours {
            true => (self.deployment_for(version).await?, version),
            false => (None, version),
        };
        let deadline = crate::clock::deadline_in(self.rc.timeout);
        // Someone ran the job again on top of the revert (an edit, a
        // scale): Nomad cancels its deployment, but when their version
        // still names the restored tag, its deployment settles the
        // rollback (bounded, as in the rollout's `follow`).
        let mut outcome = Ok(());
        for _ in 0..3 {
            let Some(d) = &dep else { break };
            outcome = self.watch(&d.id, false, Some(version), deadline).await?;
            let cancelled = matches!(&outcome, Err(Failure::Deployment { status, .. }) if status == "cancelled");
            let next = match (&target, cancelled) {
                (Some(t), true) => self.successor(t, version).await?,
                _ => None,
            };
            let Some(n) = next else { break };
            tracing::info!(service = %self.svc.name, job_version = n.job_version, "the job was run again with the restored tag on top of the revert; following its deployment");
            (version, dep) = (n.job_version, Some(n));
        }
        Ok(match outcome {
            Ok(()) => Reverted::Restored {
                version,
                deployment: dep.map(|d| d.id),
            },
            Err(f) => Reverted::Failed(f),
        })
    }

    /// Nomad's auto_revert makes a new version: wait for it (bounded).
    async fn wait_for_version_after(&self, version: u64) -> Result<Option<u64>, RolloutError> {
        use backon::Retryable as _;
        let poll = || async {
            match self.job().await {
                Ok(Some(j)) if j.version > version => Ok(Some(j.version)),
                Ok(_) => Err(None),
                Err(e) => Err(Some(e)),
            }
        };
        let r = poll
            .retry(
                backon::ConstantBuilder::default()
                    .with_delay(std::time::Duration::from_millis(500))
                    .with_max_times(120),
            )
            .sleep(tokio::time::sleep)
            .when(|e: &Option<RolloutError>| e.is_none() && !self.ctx.cancel.is_cancelled())
            .await;
        match r {
            Ok(v) => Ok(v),
            Err(None) => {
                self.check_cancel()?;
                Ok(None)
            }
            Err(Some(e)) => Err(e),
        }
    }
}

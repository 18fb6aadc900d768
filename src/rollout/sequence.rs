//! The rollout's sequence, top to bottom, in the order a reader follows
//! one rollout. It exists so that following a rollout reads as one
//! story instead of zigzagging between the files named for decisions,
//! watching and records: this file only calls them, in order.
//!
//! The phases, in order:
//! 1. [`drive`](Driver::drive): resume an unfinished rollout, or start
//!    the newest desired tag (`resume`, `start`);
//! 2. `start`: every job of the rollout exists (`first_job_if_all_exist`),
//!    the tag a rollback would restore is planned, and the in-progress
//!    record is committed with the key moved, guarded by the desired and
//!    pin records it was decided from;
//! 3. `proceed`: the jobs one by one, each through `proceed_job`:
//!    register (`registered`, `register`, `adopt`) → evaluation → the
//!    version's deployment (`deployment_of`, `missing_deployment`) →
//!    `follow` it to the end (`successor`: a re-run that still names the
//!    tag carries the rollout), with `record_progress` after each step;
//! 4. the last job's success finishes the rollout; the first failure
//!    hands it to the rollback.
//!
//! What is decided lives in `plan` (pure functions of what was
//! observed), how a step is watched in `watch`, how a failure is undone
//! in `rollback`, and how a record is written in `record`.

use backon::BackoffBuilder as _;

use super::plan::{
    adoptable, failed_before_start, in_progress, plan_previous, previous_digest, set_digest_meta,
};
use super::record::{Committed, Guard, KeyWrite};
use super::*;
use crate::clients::nomad::Deployment;
use crate::clock::now_rfc3339;
use crate::store::read::read_tag;
use crate::store::{Event, JobDone};

/// History entries looked through for the tag a first rollout replaces.
const PREVIOUS_SCAN: usize = 100;

/// What a register attempt left.
enum Registered {
    New { version: u64, eval: String },
    Adopted(u64),
}

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    /// Bring the service to its desired tag: resume an unfinished rollout,
    /// then deploy the newest desired tag (tags that arrived meanwhile are
    /// skipped: they coalesce into the newest).
    ///
    /// # Errors
    ///
    /// Anything that stopped the driver before an outcome was recorded;
    /// the records then say where to resume.
    pub async fn drive(&self) -> Result<(), RolloutError> {
        // Each pass finishes one desired seq (or re-decides after a lost
        // race); bounded so a flapping registry cannot keep one task busy
        // forever.
        for _ in 0..32 {
            self.check_cancel()?;
            let st = self.patient(|| read_state(self.consul, &self.keys)).await?;
            if let Some(d) = st.deployed.as_ref().filter(|d| d.is_busy()) {
                tracing::info!(service = %self.svc.name, tag = %d.tag, state = %d.state, "resuming an unfinished rollout");
                self.set_started(st.started.unwrap_or_else(unix_ms));
                self.resume(d.clone()).await?;
                continue;
            }
            let Some(desired) = st.desired.clone() else {
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
            self.set_started(unix_ms());
            self.start(&desired, &st).await?;
        }
        Ok(())
    }

    /// Start a rollout of `desired`, decided from `st`; returns without
    /// doing anything when `st` went stale meanwhile (the caller re-reads).
    async fn start(&self, desired: &Desired, st: &State) -> Result<(), RolloutError> {
        let prev = st.deployed.as_ref();
        let guard = Some(Guard {
            desired_index: st.desired_index,
            pin_index: st.pin_index,
        });
        let (job, missing) = self.first_job_if_all_exist().await?;
        let Some(job) = job.filter(|_| missing.is_none()) else {
            let failure = missing.unwrap_or_else(|| self.job_missing());
            self.set_job(0);
            let rec = failed_before_start(desired, prev, &failure, now_rfc3339());
            return self
                .finish_failed(rec, &desired.tag, failure.to_string())
                .await;
        };
        let received = self
            .patient(|| {
                self.consul
                    .history_recent(&self.keys.history, PREVIOUS_SCAN)
            })
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.tag == desired.tag && matches!(e.event, Event::Received | Event::Manual))
            .and_then(|e| e.previous);
        let key_now = self
            .patient(|| read_tag(self.consul, &self.keys))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string());
        let digest_now = self
            .patient(|| self.digest_now())
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).trim().to_string());
        let previous = plan_previous(
            &desired.tag,
            prev,
            job.meta(&self.rc.meta_key),
            received.as_deref(),
            key_now.as_deref(),
        );
        tracing::info!(service = %self.svc.name, tag = %desired.tag, previous = ?previous, job_version = job.version, "rollout starting");
        let restores = previous_digest(
            previous.as_deref(),
            (key_now.as_deref(), digest_now),
            &job,
            &self.rc.meta_key,
        );
        let rec = in_progress(desired, previous, restores, job.version, now_rfc3339());
        // The key carries the tag being deployed (template jobs render it
        // in every allocation placed from now on).
        let w = Writes {
            deployed: rec.clone(),
            key: KeyWrite::Set {
                tag: desired.tag.clone(),
                digest: desired.digest.clone(),
            },
            history: None,
        };
        match self.commit_guarded(w, guard).await? {
            Committed::Yes => self.proceed(rec).await,
            Committed::Stale => Ok(()),
        }
    }

    /// Every job of the rollout has to exist before the first is touched:
    /// a missing later job would otherwise be found only after the first
    /// had rolled. The first job as read (its meta and version plan the
    /// rollout), and the failure when one is missing. Leaves the first job
    /// addressed.
    async fn first_job_if_all_exist(&self) -> Result<(Option<Job>, Option<Failure>), RolloutError> {
        let mut first = None;
        for i in (0..self.rc.jobs.len()).rev() {
            self.set_job(i);
            match self.job().await? {
                None => return Ok((None, Some(self.job_missing()))),
                Some(j) if i == 0 => first = Some(j),
                Some(_) => {}
            }
        }
        Ok((first, None))
    }

    /// Carry on the unfinished rollout `rec` records: its rollback where
    /// one was under way, else its jobs from the one it names.
    async fn resume(&self, rec: Deployed) -> Result<(), RolloutError> {
        if rec.state == RolloutState::RollingBack {
            let reason = rec
                .detail
                .clone()
                .unwrap_or_else(|| "rollback resumed".into());
            self.rollback_steps(rec, reason).await
        } else {
            self.proceed(rec).await
        }
    }

    /// Roll each job in the listed order, each gated, from the one `rec`
    /// names; the last one's success is the rollout's. The first failure
    /// rolls back every job this rollout touched (and the key).
    async fn proceed(&self, mut rec: Deployed) -> Result<(), RolloutError> {
        loop {
            let Some(i) = self.job_index(rec.job.as_deref()) else {
                let f = Failure::Registration(format!(
                    "job {:?} is no longer in the rollout block's jobs",
                    rec.job.as_deref().unwrap_or_default()
                ));
                return self.rollback(rec, f).await;
            };
            self.set_job(i);
            if let Err(f) = self.proceed_job(&mut rec).await? {
                return self.rollback(rec, f).await;
            }
            let Some(next) = self.rc.jobs.get(i + 1) else {
                return self.finish_deployed(rec).await;
            };
            rec.done.push(JobDone {
                job: self.job_id().to_string(),
                prior_version: rec.prior_version.unwrap_or_default(),
                job_version: rec.job_version.unwrap_or_default(),
                deployment: rec.deployment.take(),
            });
            tracing::info!(service = %self.svc.name, tag = %rec.tag, job = %next, "job rolled; rolling the next one");
            self.set_job(i + 1);
            rec.job = Some(next.clone());
            rec.job_version = None;
            rec.prior_version = None;
            let Some(job) = self.job().await? else {
                return self.rollback(rec, self.job_missing()).await;
            };
            rec.prior_version = Some(job.version);
            rec.at = now_rfc3339();
            // `timeout` bounds each job's deployment.
            self.set_started(unix_ms());
            self.record_progress(&rec).await?;
        }
    }

    /// One job: register (unless already done), then evaluation,
    /// deployment, watch. `Err(failure)` asks for a rollback.
    async fn proceed_job(&self, rec: &mut Deployed) -> Result<Result<(), Failure>, RolloutError> {
        let Some(job) = self.job().await? else {
            return Ok(Err(self.job_missing()));
        };
        let prior = rec.prior_version.unwrap_or(job.version);
        let (version, eval) = match self.registered(rec, prior).await? {
            Ok(registered) => registered,
            Err(f) => return Ok(Err(f)),
        };
        if rec.job_version != Some(version) {
            rec.job_version = Some(version);
            rec.at = now_rfc3339();
            self.record_progress(rec).await?;
        }
        if let Some(eval_id) = eval.filter(|e| !e.is_empty()) {
            if let Err(f) = self.evaluation(&eval_id).await? {
                return Ok(Err(f));
            }
        }
        let (dep, version) = match self.deployment_of(rec, version).await? {
            Ok(found) => found,
            Err(f) => return Ok(Err(f)),
        };
        self.follow(rec, dep, version).await
    }

    /// The job version this rollout runs as: the one it recorded, else
    /// one it already registered (adopted), else a new register, with the
    /// evaluation that register started.
    async fn registered(
        &self,
        rec: &Deployed,
        prior: u64,
    ) -> Result<Result<(u64, Option<String>), Failure>, RolloutError> {
        if let Some(v) = rec.job_version {
            return Ok(Ok((v, None)));
        }
        Ok(match self.register(rec, prior).await? {
            Ok(Registered::New { version, eval }) => Ok((version, Some(eval))),
            Ok(Registered::Adopted(v)) => {
                tracing::info!(service = %self.svc.name, tag = %rec.tag, job_version = v, "adopting the job version this rollout already registered");
                Ok((v, None))
            }
            Err(f) => Err(f),
        })
    }

    /// Set the meta key and register under EnforceIndex; a lost race is
    /// answered by re-reading (keeping the other writer's change), never
    /// by overwriting it. A transport error leaves it unknown whether the
    /// register happened: the next attempt's re-read adopts it if so.
    async fn register(
        &self,
        rec: &Deployed,
        prior: u64,
    ) -> Result<Result<Registered, Failure>, RolloutError> {
        let tag = rec.tag.as_str();
        let mut last = String::new();
        let mut conflicts = 0u32;
        let mut outage = outage_backoff().build();
        for attempt in 0u32.. {
            self.check_cancel()?;
            let Some(mut job) = self.job().await? else {
                return Ok(Err(self.job_missing()));
            };
            if let Some(v) = self.adopt(&job, tag, prior).await? {
                return Ok(Ok(Registered::Adopted(v)));
            }
            let index = job.job_modify_index;
            job.set_meta(&self.rc.meta_key, tag);
            // Every rollout is a real change to Nomad, even when the tag is
            // the one the job already names (a re-pushed tag with a new
            // digest, a rollback to the running tag): Nomad ignores a
            // register that changes nothing and would start no deployment.
            job.set_meta(&format!("{}_seq", self.rc.meta_key), &rec.seq.to_string());
            set_digest_meta(&mut job, &self.rc.meta_key, rec.digest.as_deref());
            if let Some(hook) = &self.ctx.before_register {
                hook(attempt).await;
            }
            // Right before the write: a leader that lost its term must not
            // touch Nomad any more.
            self.check_cancel()?;
            match self.nomad.register(&job, index).await {
                Ok(resp) => {
                    // EnforceIndex held, so ours is the next version.
                    let version = job.version + 1;
                    tracing::info!(service = %self.svc.name, tag, job_version = version, eval = %resp.eval_id, "job registered");
                    return Ok(Ok(Registered::New {
                        version,
                        eval: resp.eval_id,
                    }));
                }
                Err(e) if e.is_enforce_index_conflict() => {
                    tracing::info!(service = %self.svc.name, attempt, "job changed since it was read; re-reading it");
                    last = e.to_string();
                    conflicts += 1;
                    if conflicts >= 5 {
                        break;
                    }
                }
                Err(e) if e.is_transient() => {
                    let wait = match outage.next() {
                        Some(d) if crate::clock::deadline_in(d) < self.deadline() => d,
                        _ => return Err(e.into()),
                    };
                    tracing::warn!(service = %self.svc.name, error = %e, "register unanswered; re-reading before trying again");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Ok(Err(Failure::Registration(e.to_string()))),
            }
        }
        Ok(Err(Failure::Registration(format!(
            "the job kept changing: {last}"
        ))))
    }

    /// The version this attempt already registered, if the job has moved
    /// past `prior` at all (one more read only then).
    async fn adopt(&self, job: &Job, tag: &str, prior: u64) -> Result<Option<u64>, RolloutError> {
        if job.version <= prior {
            return Ok(None);
        }
        if job.meta(&self.rc.meta_key) == Some(tag) {
            return Ok(Some(job.version));
        }
        let versions = self
            .patient(|| self.nomad.job_versions(&self.rc.namespace, self.job_id()))
            .await?;
        Ok(adoptable(&versions, &self.rc.meta_key, tag, prior))
    }

    /// The deployment that gates `version` (and the version it belongs
    /// to): the one `rec` recorded, else the one Nomad shows, recorded
    /// in `rec` before it is watched.
    async fn deployment_of(
        &self,
        rec: &mut Deployed,
        version: u64,
    ) -> Result<Result<(String, u64), Failure>, RolloutError> {
        if let Some(d) = rec.deployment.clone() {
            return Ok(Ok((d, version)));
        }
        let found = match self.deployment_for(version).await? {
            Some(d) => Some(d),
            // Run again on top of ours before ours had one.
            None => self.successor(&rec.tag, version).await?,
        };
        let Some(d) = found else {
            return Ok(Err(self.missing_deployment(version).await?));
        };
        rec.job_version = Some(d.job_version);
        rec.deployment = Some(d.id.clone());
        self.record_progress(rec).await?;
        Ok(Ok((d.id, d.job_version)))
    }

    /// Why `version` has no deployment: a newer version without our tag
    /// replaced it first (Nomad checks EnforceIndex before its Raft apply,
    /// so an operator's register at the same moment can pass too), or
    /// Nomad made none (no update block, a change it does not roll).
    async fn missing_deployment(&self, version: u64) -> Result<Failure, RolloutError> {
        Ok(match self.job().await? {
            Some(j) if j.version > version => Failure::Overtaken {
                version,
                now: j.version,
                naming: j
                    .meta(&self.rc.meta_key)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            },
            _ => Failure::NoDeployment { version },
        })
    }

    /// Watch `dep` (of job `version`) to the end: gated, or the failure.
    async fn follow(
        &self,
        rec: &mut Deployed,
        mut dep: String,
        mut version: u64,
    ) -> Result<Result<(), Failure>, RolloutError> {
        // Someone ran the job again on top of ours (an edit, a scale):
        // Nomad cancels our deployment, but when their version still names
        // our tag its deployment is this rollout's gate now (bounded: a job
        // re-run in a loop ends in a rollback).
        for _ in 0..3 {
            let failure = match self
                .watch(&dep, true, Some(version), self.deadline())
                .await?
            {
                Ok(()) => return Ok(Ok(())),
                Err(f) => f,
            };
            let cancelled =
                matches!(&failure, Failure::Deployment { status, .. } if status == "cancelled");
            let next = match cancelled {
                true => self.successor(&rec.tag, version).await?,
                false => None,
            };
            let Some(d) = next else {
                return Ok(Err(failure));
            };
            tracing::info!(service = %self.svc.name, tag = %rec.tag, job_version = d.job_version, "the job was run again with this tag on top of ours; following its deployment");
            (dep, version) = (d.id.clone(), d.job_version);
            rec.job_version = Some(version);
            rec.deployment = Some(dep.clone());
            rec.at = now_rfc3339();
            self.record_progress(rec).await?;
        }
        Ok(Err(Failure::Registration(
            "the job kept being run again during the rollout".into(),
        )))
    }

    /// The deployment of a version someone registered on top of `ours`
    /// that still names `tag` (so it carries this rollout), if any.
    pub(super) async fn successor(
        &self,
        tag: &str,
        ours: u64,
    ) -> Result<Option<Deployment>, RolloutError> {
        match self.job().await? {
            Some(j) if j.version > ours && j.meta(&self.rc.meta_key) == Some(tag) => {
                self.deployment_for(j.version).await
            }
            _ => Ok(None),
        }
    }

    /// Record how far `rec` got; the key is left as it is.
    async fn record_progress(&self, rec: &Deployed) -> Result<(), RolloutError> {
        self.commit(Writes {
            deployed: rec.clone(),
            key: KeyWrite::Keep,
            history: None,
        })
        .await
    }
}

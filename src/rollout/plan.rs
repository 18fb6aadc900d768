//! Planning and register: which tag to deploy and what it replaces, the
//! record written before Nomad is touched, and the register itself
//! (EnforceIndex; a lost race is re-read, never overwritten).
use super::*;
use crate::history::Event;
use crate::x509::now_rfc3339;

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    pub(super) async fn start(
        &self,
        desired: &Desired,
        prev: Option<&Deployed>,
    ) -> Result<(), RolloutError> {
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
            previous = self
                .consul
                .history_recent(&self.keys.history, PREVIOUS_SCAN)
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

    pub(super) async fn resume(&self, rec: Deployed) -> Result<(), RolloutError> {
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
    pub(super) async fn proceed(&self, mut rec: Deployed) -> Result<(), RolloutError> {
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
    pub(super) async fn register(
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
            match self.nomad.register(&job, index).await {
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
}

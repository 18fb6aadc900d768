//! Watching: the register's evaluation, the deployment it creates, and
//! the deployment itself until it ends; the canary gate (health and
//! verify_url) and what Nomad says about failed allocations.
use std::time::Duration;

use tokio::time::Instant;

use backon::Retryable;
use bytes::Bytes;
use http_body_util::Full;

use super::*;
use crate::clients::consul::BlockingIndex;
use crate::clients::nomad::{Allocation, Deployment};

impl<N: NomadPort, C: ConsulPort> Driver<'_, N, C> {
    /// Wait for the register's evaluation; placement failures fail fast.
    pub(super) async fn evaluation(&self, id: &str) -> Result<Result<(), Failure>, RolloutError> {
        let deadline = crate::clock::deadline_in(self.ctx.timings.evaluation);
        let mut index = BlockingIndex::default();
        while Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            let read = self
                .patient(|| {
                    self.nomad
                        .evaluation(&self.rc.namespace, id, Some((index.current(), wait)))
                })
                .await?;
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
    pub(super) async fn deployment_for(
        &self,
        version: u64,
    ) -> Result<Option<Deployment>, RolloutError> {
        let deadline = crate::clock::deadline_in(self.ctx.timings.deployment_appears);
        let mut index = BlockingIndex::default();
        while Instant::now() < deadline {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(30));
            let read = self
                .patient(|| {
                    self.nomad.latest_deployment(
                        &self.rc.namespace,
                        self.job_id(),
                        Some((index.current(), wait)),
                    )
                })
                .await?;
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

    /// Watch a deployment until it ends or `deadline` (the rollout's own,
    /// kept across resumes). Fails it as soon as an allocation turns
    /// unhealthy (Nomad itself would wait for progress_deadline), and
    /// gates canary promotion on health and verify_url. An outage is
    /// waited out with short jittered retries of the blocking read, so an
    /// outcome Nomad reached meanwhile is seen within about half a second
    /// of Nomad answering again.
    pub(super) async fn watch(
        &self,
        deployment: &str,
        gate: bool,
        version: Option<u64>,
        deadline: Instant,
    ) -> Result<Result<(), Failure>, RolloutError> {
        let mut index = BlockingIndex::default();
        let mut promoted = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let allocs = self.inspect(deployment).await;
                self.fail(deployment).await?;
                return Ok(Err(Failure::Timeout {
                    after: self.rc.timeout,
                    allocs,
                }));
            }
            let wait = remaining.min(Duration::from_secs(60));
            let read = self
                .patient(|| {
                    self.nomad.deployment(
                        &self.rc.namespace,
                        deployment,
                        Some((index.current(), wait)),
                    )
                })
                .await;
            let read = match read {
                Ok(r) => r,
                Err(RolloutError::Nomad(NomadError::Status { status, .. }))
                    if status == http::StatusCode::NOT_FOUND =>
                {
                    return self.judge_gone(deployment, version, gate).await;
                }
                Err(e) => return Err(e),
            };
            index.observe(read.index);
            let d = read.value;
            match judge(&d) {
                // Without canaries there was no promotion to gate: the
                // whole new version is up, and verify_url judges it now.
                // A failure rolls back like a failing canary gate.
                // Decided from the deployment, not from `promoted`: a
                // leader resuming a canary deployment its predecessor
                // promoted must not verify (and maybe roll back) again.
                Verdict::Succeeded if d.task_groups.values().all(|g| g.desired_canaries == 0) => {
                    return Ok(self.verify_gate(gate).await.map_or(Ok(()), Err));
                }
                Verdict::Succeeded => return Ok(Ok(())),
                Verdict::Ended => {
                    return Ok(Err(Failure::Deployment {
                        status: d.status.clone(),
                        description: d.status_description.clone(),
                        allocs: self.inspect(deployment).await,
                    }))
                }
                Verdict::Unhealthy => {
                    let allocs = self.inspect(deployment).await;
                    self.fail(deployment).await?;
                    tracing::info!(service = %self.svc.name, deployment, "allocation unhealthy: deployment failed without waiting for progress_deadline");
                    return Ok(Err(Failure::Unhealthy { allocs }));
                }
                Verdict::CanariesHealthy if !promoted => {
                    if let Some(refused) = self.verify_gate(gate).await {
                        self.fail(deployment).await?;
                        return Ok(Err(refused));
                    }
                    self.check_cancel()?;
                    self.patient(|| self.nomad.promote(&self.rc.namespace, deployment))
                        .await?;
                    promoted = true;
                    tracing::info!(service = %self.svc.name, deployment, "canaries healthy: promoted");
                }
                Verdict::CanariesHealthy | Verdict::Running => {}
            }
        }
    }

    /// Mark a deployment failed (best effort: it may be terminal already),
    /// unless this leader's term ended.
    pub(super) async fn fail(&self, deployment: &str) -> Result<(), RolloutError> {
        self.check_cancel()?;
        if let Err(e) = self
            .nomad
            .fail_deployment(&self.rc.namespace, deployment)
            .await
        {
            tracing::debug!(service = %self.svc.name, error = %e, "could not fail the deployment");
        }
        Ok(())
    }

    /// A deployment Nomad garbage-collected (a long controller outage):
    /// the job version's `Stable` flag says whether it succeeded.
    async fn judge_gone(
        &self,
        deployment: &str,
        version: Option<u64>,
        gate: bool,
    ) -> Result<Result<(), Failure>, RolloutError> {
        let versions = self
            .patient(|| self.nomad.job_versions(&self.rc.namespace, self.job_id()))
            .await?;
        let stable = version.and_then(|v| versions.iter().find(|j| j.version == v).map(is_stable));
        if stable == Some(true) {
            tracing::info!(service = %self.svc.name, deployment, "deployment garbage-collected; its job version is stable: succeeded");
            // Which groups had canaries is gone with the deployment: the
            // gate runs, as it would have for a canary-less one.
            return Ok(self.verify_gate(gate).await.map_or(Ok(()), Err));
        }
        Ok(Err(Failure::Deployment {
            status: "gone".into(),
            description: format!(
                "deployment {deployment} no longer exists in Nomad and job version {} is not stable",
                version.map_or_else(|| "?".to_string(), |v| v.to_string())
            ),
            allocs: Vec::new(),
        }))
    }

    /// verify_url's verdict where the gate applies: `Some` refuses.
    async fn verify_gate(&self, gate: bool) -> Option<Failure> {
        let url = self.rc.verify_url.as_ref().filter(|_| gate)?;
        let detail = self.verify(url).await.err()?;
        Some(Failure::Verify {
            url: url.clone(),
            detail,
        })
    }

    /// GET verify_url; 2xx passes. Tried `verify_attempts` times, a
    /// second apart (a service behind a load balancer may need a moment
    /// to see its new instances).
    ///
    /// SECURITY: the URL comes from configuration, never from a payload.
    pub(super) async fn verify(&self, url: &str) -> Result<(), String> {
        let once = || async {
            let req = http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            match self
                .ctx
                .http
                .send(req, self.ctx.timings.verify_request)
                .await
            {
                Ok(r) if r.status.is_success() => Ok(()),
                Ok(r) => {
                    let body: String = String::from_utf8_lossy(&r.body)
                        .trim()
                        .chars()
                        .take(200)
                        .collect();
                    Err(format!("HTTP {}: {body}", r.status.as_u16()))
                }
                Err(e) => Err(e.to_string()),
            }
        };
        once.retry(
            backon::ConstantBuilder::default()
                .with_delay(Duration::from_secs(1))
                .with_max_times(self.ctx.timings.verify_attempts.saturating_sub(1) as usize),
        )
        .await
    }

    /// What Nomad says about the deployment's failed allocations.
    pub(super) async fn inspect(&self, deployment: &str) -> Vec<AllocFailure> {
        let allocs = match self
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
}

/// What one read of a deployment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// Failed or cancelled (by Nomad, by hand, or by a newer register).
    Ended,
    /// An allocation turned unhealthy: fail now, not at progress_deadline.
    Unhealthy,
    /// Every group waiting for promotion has its canaries healthy.
    CanariesHealthy,
    Running,
}

/// Judge one read of a deployment. Pure.
pub fn judge(d: &Deployment) -> Verdict {
    match d.status.as_str() {
        "successful" => return Verdict::Succeeded,
        "failed" | "cancelled" => return Verdict::Ended,
        _ => {}
    }
    if d.task_groups.values().any(|g| g.unhealthy_allocs > 0) {
        return Verdict::Unhealthy;
    }
    let waiting: Vec<_> = d
        .task_groups
        .values()
        .filter(|g| g.desired_canaries > 0 && !g.promoted && !g.auto_promote)
        .collect();
    if !waiting.is_empty()
        && waiting
            .iter()
            .all(|g| g.healthy_allocs >= g.desired_canaries)
    {
        Verdict::CanariesHealthy
    } else {
        Verdict::Running
    }
}

/// Nomad marks a job version stable once its deployment succeeded.
pub fn is_stable(job: &Job) -> bool {
    job.raw
        .get("Stable")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
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

//! `tagbridge status <svc> --watch`: follow one rollout until the
//! controller records its outcome, and exit by it. Apart from `status`
//! because it loops on blocking queries and decides the exit code.

use std::io::Write;

use super::status::deployment_lines;
use super::{service, CliError};
use crate::clients::{consul_client, nomad_client};
use crate::config::Config;
use crate::store::{read_snapshot, Deployed, Keys, RolloutState, Snapshot};

/// `tagbridge status <svc> --watch`: follow the rollout until the
/// controller records an outcome.
///
/// # Errors
///
/// Unknown service, no rollout block, Consul or Nomad failures, and an
/// outcome other than `deployed` (so scripts can gate on it).
pub async fn watch(cfg: &Config, name: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let svc = service(cfg, name)?;
    let rc = svc
        .rollout
        .as_ref()
        .ok_or_else(|| CliError::Other(format!("{name} has no rollout block: nothing to watch")))?;
    let consul = consul_client(cfg)?;
    let nomad = nomad_client(cfg)?;
    let keys = Keys::new(cfg, svc);
    let deadline = crate::clock::deadline_in(
        rc.total_timeout()
            .saturating_mul(3)
            .saturating_add(std::time::Duration::from_secs(120)),
    );
    let mut last_lines: Vec<String> = Vec::new();
    let mut index = crate::clients::consul::BlockingIndex::default();
    let mut record_index = crate::clients::consul::BlockingIndex::default();
    let mut current: Option<String> = None;
    while tokio::time::Instant::now() < deadline {
        let snap = read_snapshot(&consul, &keys).await?;
        let deployed = snap.deployed.clone();
        let waiting_for_controller = awaiting_controller(deployed.as_ref(), &snap);
        let dep_id = deployed.as_ref().and_then(|d| d.deployment.clone());
        if dep_id != current {
            current = dep_id.clone();
            index = crate::clients::consul::BlockingIndex::default();
        }
        let dep = match &dep_id {
            Some(id) => {
                let r = nomad
                    .deployment(
                        &rc.namespace,
                        id,
                        Some((index.current(), std::time::Duration::from_secs(2))),
                    )
                    .await
                    .map_err(|e| CliError::Other(e.to_string()))?;
                index.observe(r.index);
                Some(r.value)
            }
            None => {
                // No deployment yet: wait for the deployed record to change
                // (a blocking query), not on a timer.
                let r = consul
                    .kv_get_blocking(
                        &keys.deployed,
                        record_index.current(),
                        std::time::Duration::from_secs(2),
                    )
                    .await?;
                record_index.observe(r.index);
                None
            }
        };
        let mut lines = vec![record_line(name, deployed.as_ref())];
        if let Some(d) = &dep {
            lines.extend(deployment_lines(d));
        }
        if lines != last_lines {
            for l in &lines {
                writeln!(out, "{l}")?;
            }
            out.flush()?;
            last_lines = lines;
        }
        if !waiting_for_controller {
            return watch_outcome(name, deployed, out);
        }
    }
    Err(CliError::Other(format!(
        "{name}: still rolling out; stopped watching"
    )))
}

/// The deployed record's line: its state and tag, and the job in flight
/// while a several-jobs rollout is busy.
fn record_line(name: &str, deployed: Option<&Deployed>) -> String {
    format!(
        "{name}: {} {}{}",
        deployed.map_or("-", |d| d.state.as_str()),
        deployed.map_or("", |d| d.tag.as_str()),
        deployed
            .filter(|d| d.is_busy())
            .and_then(|d| d.job.as_deref())
            .map_or(String::new(), |j| format!(" (job {j})"))
    )
}

/// Whether the controller still has work for the service: a rollout in
/// progress, or a desired record newer than the deployed one (unless
/// pinned, when it will not act on it).
fn awaiting_controller(deployed: Option<&Deployed>, snap: &Snapshot) -> bool {
    match (deployed, &snap.desired) {
        (Some(d), _) if d.is_busy() => true,
        (Some(d), Some(want)) => d.seq < want.seq && !snap.pinned(),
        (None, Some(_)) => !snap.pinned(),
        _ => false,
    }
}

/// How `status --watch` ends once the controller is done: success only
/// when the outcome is `deployed`.
fn watch_outcome(
    name: &str,
    deployed: Option<Deployed>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let d = deployed.ok_or_else(|| CliError::Other(format!("{name}: nothing deployed yet")))?;
    if let Some(detail) = &d.detail {
        writeln!(out, "{name}: {}: {detail}", d.state)?;
    }
    if d.state == RolloutState::Deployed {
        Ok(())
    } else {
        Err(CliError::Other(format!(
            "{name}: rollout ended {} (running {})",
            d.state, d.tag
        )))
    }
}

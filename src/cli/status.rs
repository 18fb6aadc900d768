//! `tagbridge status`: each service's tag, desired and deployed records,
//! and its live Nomad deployments, as a table or JSON. Also how a Nomad
//! deployment is shown (`deployment_lines`), which `watch` reuses.

use std::io::Write;

use super::{service, table, CliError};
use crate::clients::consul::Consul;
use crate::clients::{consul_client, nomad_client};
use crate::config::{Config, ServiceConfig};
use crate::store::{read_snapshot, Keys};

/// `tagbridge status [<svc>]`.
///
/// # Errors
///
/// Unknown service, Consul unreachable, unreadable records.
pub async fn status(
    cfg: &Config,
    name: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let services: Vec<&ServiceConfig> = match name {
        Some(n) => vec![service(cfg, n)?],
        None => cfg.services.iter().collect(),
    };
    let consul = consul_client(cfg)?;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for svc in services {
        let (doc, row) = status_of(cfg, &consul, svc).await?;
        docs.push(doc);
        rows.push(row);
    }
    let live = live_deployments(cfg, name, &mut docs).await;
    if json {
        let value = if name.is_some() {
            docs.pop().unwrap_or_default()
        } else {
            serde_json::Value::Array(docs)
        };
        serde_json::to_writer_pretty(&mut *out, &value)
            .map_err(|e| CliError::Other(e.to_string()))?;
        writeln!(out)?;
        return Ok(());
    }
    table(
        out,
        &[
            "SERVICE",
            "TAG",
            "LAST CHANGE",
            "DESIRED",
            "DEPLOYED",
            "PINNED",
            "ROLLOUT",
        ],
        &rows,
    )?;
    for (svc, lines) in live {
        writeln!(out)?;
        writeln!(out, "{svc}:")?;
        for l in lines {
            writeln!(out, "  {l}")?;
        }
    }
    Ok(())
}

/// One service's records: its `status --json` document and table row.
async fn status_of(
    cfg: &Config,
    consul: &Consul,
    svc: &ServiceConfig,
) -> Result<(serde_json::Value, Vec<String>), CliError> {
    let keys = Keys::new(cfg, svc);
    let snap = read_snapshot(consul, &keys).await?;
    let last_change = crate::store::history::recent(consul, &keys.history, 1)
        .await?
        .first()
        .map(|e| e.at.clone());
    let doc = serde_json::json!({
        "service": svc.name,
        "key": svc.key,
        "tag": snap.tag,
        "last_change": last_change,
        "desired": snap.desired,
        "deployed": snap.deployed,
        "pinned": snap.pinned(),
        "rollout": svc.rollout.as_ref().map(|r| serde_json::json!({"job": r.first_job(), "jobs": r.jobs, "namespace": r.namespace})),
    });
    let row = vec![
        svc.name.clone(),
        snap.tag.clone().unwrap_or_else(|| "-".into()),
        last_change.unwrap_or_else(|| "-".into()),
        snap.desired
            .as_ref()
            .map_or("-".into(), |d| format!("{} (#{})", d.tag, d.seq)),
        snap.deployed
            .as_ref()
            .map_or("-".into(), |d| format!("{} ({})", d.tag, d.state)),
        if snap.pinned() { "yes" } else { "no" }.into(),
        svc.rollout
            .as_ref()
            .map_or("none (KV only)".into(), |r| match r.jobs.len() {
                1 => format!("job {}", r.first_job()),
                _ => format!("jobs {}", r.jobs.join(", ")),
            }),
    ];
    Ok((doc, row))
}

/// The live Nomad deployment of each shown service with a rollout: lines
/// for the table, and a `deployment` field added to its document. Nomad
/// being unreachable is shown, not an error: the records are the answer.
async fn live_deployments(
    cfg: &Config,
    name: Option<&str>,
    docs: &mut [serde_json::Value],
) -> Vec<(String, Vec<String>)> {
    let mut live = Vec::new();
    if !cfg.services.iter().any(|s| s.rollout.is_some()) {
        return live;
    }
    let Ok(nomad) = nomad_client(cfg) else {
        return live;
    };
    for (i, svc) in cfg.services.iter().enumerate() {
        let Some(rc) = &svc.rollout else { continue };
        if name.is_some_and(|n| n != svc.name) {
            continue;
        }
        // Several jobs: one block of lines per job, and the document
        // names each job's deployment ("deployment" stays the first's).
        let several = rc.jobs.len() > 1;
        for (j, job) in rc.jobs.iter().enumerate() {
            let label = match several {
                true => format!("{} (job {job})", svc.name),
                false => svc.name.clone(),
            };
            let doc_i = if name.is_some() { 0 } else { i };
            match nomad.latest_deployment(&rc.namespace, job, None).await {
                Ok(r) => {
                    let Some(d) = r.value else { continue };
                    live.push((label, deployment_lines(&d)));
                    if let Some(doc) = docs.get_mut(doc_i) {
                        if j == 0 {
                            doc["deployment"] = deployment_doc(&d);
                        }
                        if several {
                            doc["deployments"][job.as_str()] = deployment_doc(&d);
                        }
                    }
                }
                Err(e) => live.push((label, vec![format!("nomad unreachable: {e}")])),
            }
        }
    }
    live
}

/// A deployment as `status --json` shows it.
fn deployment_doc(d: &crate::clients::nomad::Deployment) -> serde_json::Value {
    serde_json::json!({
        "id": d.id, "job_version": d.job_version, "status": d.status,
        "description": d.status_description,
        "groups": d.task_groups.iter().map(|(n, g)| (n.clone(), serde_json::json!({
            "desired": g.desired_total, "placed": g.placed_allocs,
            "healthy": g.healthy_allocs, "unhealthy": g.unhealthy_allocs,
            "desired_canaries": g.desired_canaries,
            "placed_canaries": g.placed_canaries.as_ref().map_or(0, Vec::len),
            "promoted": g.promoted,
        }))).collect::<serde_json::Map<_, _>>(),
    })
}

/// One line per task group of a deployment, as `status` shows it.
pub fn deployment_lines(d: &crate::clients::nomad::Deployment) -> Vec<String> {
    let mut out = vec![format!(
        "deployment {} (job version {}): {}{}",
        d.id.get(..8).unwrap_or(&d.id),
        d.job_version,
        d.status,
        if d.status_description.is_empty() {
            String::new()
        } else {
            format!(" - {}", d.status_description)
        }
    )];
    for (name, g) in &d.task_groups {
        let canaries = if g.desired_canaries > 0 {
            format!(
                "  canaries {}/{}  promoted {}",
                g.placed_canaries.as_ref().map_or(0, Vec::len),
                g.desired_canaries,
                if g.promoted { "yes" } else { "no" }
            )
        } else {
            String::new()
        };
        out.push(format!(
            "  group {name}: desired {}  placed {}  healthy {}  unhealthy {}{canaries}",
            g.desired_total, g.placed_allocs, g.healthy_allocs, g.unhealthy_allocs
        ));
    }
    out
}

//! The command line: what an operator types, and what they see.
//!
//! Each command is a function from parsed arguments and a validated
//! configuration to a typed result, so `main` only maps errors to exit
//! codes (1: a failure the user can fix; clap's own 2: bad usage).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clients::consul::{Consul, TxnOutcome};
use crate::clients::http::ClientBuildError;
use crate::clients::{consul_client, nomad_client};
use crate::config::{Config, ConfigError, Purpose, ServiceConfig};
use crate::ingest::{Change, Ingest, IngestError};
use crate::metrics::Metrics;
use crate::store::{
    read_deployed, read_for_write, read_pin_target, read_snapshot, Keys, PinRecord, Snapshot,
    StoreError, Txn,
};
use crate::store::{Deployed, HistoryEntry, RolloutState};

#[derive(Debug, Parser)]
#[command(
    name = "tagbridge",
    version,
    about = "Registry webhooks → Consul KV → rolling Nomad deploys"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "TAGBRIDGE_CONFIG",
        default_value = "./tagbridge.hcl"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve webhooks (HTTPS) and the admin endpoints.
    Serve,
    /// Validate the configuration; one line per problem.
    Check {
        /// Also contact Consul (and Nomad) with the configured credentials.
        #[arg(long)]
        connect: bool,
    },
    /// Generate a webhook URL secret and the config line that matches it.
    Secret,
    /// Show a service's history, newest first.
    History {
        service: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show each service's tag, desired and deployed records, and the
    /// live Nomad deployment.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
        /// Follow the service's rollout until it ends (exit 1 unless it
        /// deployed).
        #[arg(long, requires = "service")]
        watch: bool,
    },
    /// Set a service's tag by hand (recorded as `manual`).
    Deploy {
        service: String,
        tag: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deploy the previous (or a named) tag and pin the service, so
    /// webhooks are recorded but not deployed until `unpin`.
    Rollback {
        service: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let webhooks deploy again after a rollback.
    Unpin { service: String },
    /// List the repository's tags on its registry and send the best one
    /// (under the tag policy) through the webhook path, recorded as
    /// `poll`: makes good a lost delivery. Exit 0 also when nothing is
    /// newer.
    Sync { service: String },
}

/// A failure the user can fix; printed as one line, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("unknown service {0:?} (configured: {1})")]
    UnknownService(String, String),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consul(#[from] crate::clients::consul::ConsulError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

fn service<'a>(cfg: &'a Config, name: &str) -> Result<&'a ServiceConfig, CliError> {
    cfg.service(name).ok_or_else(|| {
        let names: Vec<_> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        CliError::UnknownService(name.to_string(), names.join(", "))
    })
}

/// `tagbridge secret`: 256 random bits, URL-safe, and its sha256.
///
/// # Errors
///
/// The system random source fails (never on Linux).
pub fn secret(out: &mut dyn Write) -> Result<(), CliError> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CliError::Other("the system random source failed".into()))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ));
    writeln!(
        out,
        "# Give the registry this URL path (keep it secret; it is not stored anywhere):"
    )?;
    writeln!(out, "/hooks/{secret}")?;
    writeln!(
        out,
        "# Put this line in the service block of tagbridge.hcl:"
    )?;
    writeln!(out, "secret_sha256 = \"{hash}\"")?;
    Ok(())
}

/// `tagbridge check`: the configuration loads for serving, the TLS pair
/// matches, and with `--connect` Consul answers with a leader.
///
/// # Errors
///
/// Every configuration problem, or the first connection problem.
pub async fn check(
    cfg_path: &std::path::Path,
    connect: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let cfg = Config::load(cfg_path, Purpose::Serve, &crate::config::process_env)?;
    if let Some(tls) = &cfg.tls {
        crate::tls::CertStore::load(tls)?;
    }
    for w in &cfg.warnings {
        writeln!(out, "warning: {w}")?;
    }
    if connect {
        let consul = consul_client(&cfg)?;
        let leader = consul.leader().await?;
        if leader.is_empty() {
            return Err(CliError::Other(format!(
                "consul at {} has no leader",
                cfg.consul.address
            )));
        }
        writeln!(
            out,
            "consul {}: reachable, leader {leader}",
            cfg.consul.address
        )?;
        let problems = check_jobs(&cfg, out).await?;
        if !problems.is_empty() {
            return Err(CliError::Other(problems.join("\n")));
        }
    }
    writeln!(
        out,
        "{}: ok ({} services)",
        cfg_path.display(),
        cfg.services.len()
    )?;
    Ok(())
}

/// Inspect every rollout job in Nomad: one line per unmet requirement
/// (returned) and per warning (printed).
async fn check_jobs(cfg: &Config, out: &mut dyn Write) -> Result<Vec<String>, CliError> {
    let mut problems = Vec::new();
    if !cfg.services.iter().any(|s| s.rollout.is_some()) {
        return Ok(problems);
    }
    let nomad = nomad_client(cfg)?;
    for svc in &cfg.services {
        let Some(rc) = &svc.rollout else { continue };
        for job in &rc.jobs {
            let here = format!(
                "service {:?}: job {:?} (namespace {:?})",
                svc.name, job, rc.namespace
            );
            check_job(&nomad, svc, rc, job, &here, &mut problems, out).await?;
        }
    }
    if problems.is_empty() {
        writeln!(
            out,
            "nomad {}: every rollout job meets its strategy's requirements",
            cfg.nomad.address
        )?;
    }
    Ok(problems)
}

/// One rollout job against its strategy's requirements: unmet ones added
/// to `problems`, warnings printed.
async fn check_job(
    nomad: &crate::clients::nomad::Nomad,
    svc: &crate::config::ServiceConfig,
    rc: &crate::config::RolloutConfig,
    id: &str,
    here: &str,
    problems: &mut Vec<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match nomad.namespace_exists(&rc.namespace).await {
        Ok(true) => {}
        Ok(false) => {
            problems.push(format!("{here}: namespace does not exist"));
            return Ok(());
        }
        Err(e) if e.is_forbidden() => {
            problems.push(format!(
                "{here}: the Nomad token may not read the namespace"
            ));
            return Ok(());
        }
        Err(e) => {
            problems.push(format!("{here}: {e}"));
            return Ok(());
        }
    }
    let job = match nomad.job(&rc.namespace, id).await {
        Ok(Some(j)) => j,
        Ok(None) => {
            problems.push(format!("{here}: job does not exist"));
            return Ok(());
        }
        Err(e) if e.is_forbidden() => {
            problems.push(format!("{here}: the Nomad token may not read the job"));
            return Ok(());
        }
        Err(e) => {
            problems.push(format!("{here}: {e}"));
            return Ok(());
        }
    };
    let review = crate::rollout::review(&job, svc, rc);
    for p in review.unmet {
        problems.push(format!("{here}: {p}"));
    }
    // Warnings do not fail `check`: the job works, with a caveat the
    // operator should read.
    for w in review.warnings {
        writeln!(out, "warning: {here}: {w}")?;
    }
    match nomad.plan(&job).await {
        Ok(()) => {}
        Err(e) if e.is_forbidden() => {
            problems.push(format!("{here}: the Nomad token may not submit the job"))
        }
        Err(e) => problems.push(format!("{here}: plan failed: {e}")),
    }
    Ok(())
}

/// `tagbridge history <svc>`.
///
/// # Errors
///
/// Unknown service, Consul unreachable, unreadable records.
pub async fn history(
    cfg: &Config,
    name: &str,
    limit: usize,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let svc = service(cfg, name)?;
    let consul = consul_client(cfg)?;
    let entries =
        crate::store::history::recent(&consul, &Keys::new(cfg, svc).history, limit).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &entries)
            .map_err(|e| CliError::Other(e.to_string()))?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.event.as_str().to_string(),
                e.tag.clone(),
                e.previous.clone().unwrap_or_else(|| "-".into()),
                e.source.clone().unwrap_or_else(|| "-".into()),
                e.actor.clone().unwrap_or_else(|| "-".into()),
                e.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "AT", "EVENT", "TAG", "PREVIOUS", "SOURCE", "ACTOR", "DETAIL",
        ],
        &rows,
    )?;
    if rows.is_empty() {
        writeln!(out, "(no history for {name} yet)")?;
    }
    Ok(())
}

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
    let deployed = read_deployed(consul, &keys).await?;
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
        "deployed": deployed,
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
        deployed
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

/// `tagbridge deploy <svc> <tag>`: the same transaction as a webhook,
/// recorded as `manual`.
///
/// # Errors
///
/// Unknown service, a tag the service's filters refuse, pinned service,
/// Consul failures.
pub async fn deploy(
    cfg: Arc<Config>,
    name: &str,
    tag: &str,
    reason: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let svc = service(&cfg, name)?.clone();
    // The same grammar as a webhook's tag: the key feeds env files.
    crate::webhook::grammar::check_tag(tag).map_err(CliError::Other)?;
    let consul = consul_client(&cfg)?;
    let ingest = Ingest::new(consul, cfg.clone(), Arc::new(Metrics::new()));
    let actor = crate::config::process_env("USER").or_else(|| Some("cli".into()));
    let outcome = ingest
        .apply(
            &svc,
            &Change::Manual {
                tag: tag.to_string(),
                reason,
                actor,
            },
        )
        .await?;
    if !outcome.changed {
        let reason = outcome.reason.unwrap_or_default();
        if reason == "unchanged" {
            if svc.rollout.is_some() {
                writeln!(
                    out,
                    "{name}: {tag} is already deployed or being deployed; nothing to do"
                )?;
            } else {
                writeln!(out, "{name}: {} is already {tag}; nothing to do", svc.key)?;
            }
            return Ok(());
        }
        return Err(CliError::Other(format!(
            "{name}: tag {tag:?} refused: {reason}"
        )));
    }
    writeln!(
        out,
        "{name}: {} {} -> {tag}{}",
        svc.key,
        outcome.previous.as_deref().unwrap_or("(unset)"),
        if outcome.rollout_queued() {
            " (rollout queued)"
        } else {
            ""
        }
    )?;
    Ok(())
}

/// A plain left-aligned table, as `nomad status` prints them.
fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
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
    let deadline =
        tokio::time::Instant::now() + rc.total_timeout() * 3 + std::time::Duration::from_secs(120);
    let mut last_lines: Vec<String> = Vec::new();
    let mut index = crate::clients::consul::BlockingIndex::default();
    let mut record_index = crate::clients::consul::BlockingIndex::default();
    let mut current: Option<String> = None;
    while tokio::time::Instant::now() < deadline {
        let deployed = read_deployed(&consul, &keys).await?;
        let snap = read_snapshot(&consul, &keys).await?;
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
        let mut lines = vec![format!(
            "{name}: {} {}{}",
            deployed.as_ref().map_or("-", |d| d.state.as_str()),
            deployed.as_ref().map_or("", |d| d.tag.as_str()),
            deployed
                .as_ref()
                .and_then(|d| d.job.as_deref())
                .filter(|_| deployed.as_ref().is_some_and(Deployed::is_busy))
                .map_or(String::new(), |j| format!(" (job {j})"))
        )];
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

/// History entries a rollback looks through for its target.
const ROLLBACK_SCAN: usize = 200;

/// Pick the tag a rollback goes to: the newest deployed tag from history
/// that is not the one running now.
fn rollback_target(history: &[HistoryEntry], running: Option<&str>) -> Option<String> {
    history
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                crate::store::Event::Deployed | crate::store::Event::RolledBack
            )
        })
        .map(|e| e.tag.as_str())
        .find(|t| Some(*t) != running && !t.is_empty())
        .map(str::to_string)
}

/// `tagbridge rollback <svc> [--to <tag>]`: pin the service to the target
/// and make it the desired tag (the controller deploys it; a KV-only
/// service gets its key set here).
///
/// # Errors
///
/// Unknown service, no target found, Consul failures.
pub async fn rollback(
    cfg: &Config,
    name: &str,
    to: Option<String>,
    reason: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let svc = service(cfg, name)?;
    let consul = consul_client(cfg)?;
    let keys = Keys::new(cfg, svc);
    let actor = crate::config::process_env("USER").unwrap_or_else(|| "cli".into());
    for _ in 0..8 {
        let snap = read_for_write(&consul, &keys, svc.history_keep).await?;
        // I6: a second `rollback` (a retry after a timed-out first one)
        // must not take the rollback's own target for "running" and undo
        // it: while pinned to a target, the same request changes nothing.
        if let Some(pinned) = read_pin_target(&consul, &keys).await? {
            if to.as_ref().is_none_or(|t| *t == pinned) {
                writeln!(
                    out,
                    "{name}: already rolling back to {pinned} (pinned); nothing to do"
                )?;
                return Ok(());
            }
        }
        let history = crate::store::history::recent(&consul, &keys.history, ROLLBACK_SCAN).await?;
        // From the snapshot, so the transaction below can check it: a
        // controller write in between is a conflict, not a stale target.
        let running = match (&svc.rollout, &snap.deployed) {
            (Some(_), Some(d)) => Some(d.tag.clone()),
            _ => snap.tag.clone(),
        };
        let target = match &to {
            Some(t) => t.clone(),
            None => {
                default_rollback_target(&history, &snap, running.as_ref()).ok_or_else(|| {
                    CliError::Other(format!("{name}: no earlier tag in history; use --to <tag>"))
                })?
            }
        };
        // The same grammar as every other way into the key (it feeds env
        // files), and the service's own filters.
        crate::webhook::grammar::check_tag(&target).map_err(CliError::Other)?;
        if let crate::policy::Decision::Filtered(why) =
            svc.policy.policy.decide(&target, None, None, None)
        {
            return Err(CliError::Other(format!(
                "{name}: tag {target:?} refused: {why}"
            )));
        }
        let pin = RollbackPin {
            target: &target,
            running: running.as_deref(),
            actor: &actor,
            reason: reason.as_deref(),
        };
        let txn = rollback_ops(svc, &keys, &snap, &pin)?;
        match consul.txn(txn.ops()).await? {
            TxnOutcome::Committed(_) => {
                writeln!(
                    out,
                    "{name}: rolling back {} -> {target}{}; pinned (webhooks are recorded, not deployed, until `tagbridge unpin {name}`)",
                    running.as_deref().unwrap_or("(unset)"),
                    if svc.rollout.is_some() { " through the controller" } else { "" },
                )?;
                return Ok(());
            }
            TxnOutcome::Conflict(_) => continue,
        }
    }
    Err(CliError::Other(format!(
        "{name}: records kept changing; try again"
    )))
}

/// The target of a rollback without `--to`: the newest deployed tag in
/// history that is not running, else the deployed record's previous tag,
/// else the newest tag that was applied.
fn default_rollback_target(
    history: &[HistoryEntry],
    snap: &Snapshot,
    running: Option<&String>,
) -> Option<String> {
    rollback_target(history, running.map(String::as_str))
        .or_else(|| snap.deployed.as_ref().and_then(|d| d.previous.clone()))
        .or_else(|| {
            // A tag that was applied: not one recorded only as
            // older than current, or while pinned.
            history
                .iter()
                .filter(|e| e.detail.is_none() || e.event != crate::store::Event::Received)
                .map(|e| e.tag.clone())
                .find(|t| Some(t) != running)
        })
}

/// What a rollback records: its target, what it replaces, who and why.
struct RollbackPin<'a> {
    target: &'a str,
    running: Option<&'a str>,
    actor: &'a str,
    reason: Option<&'a str>,
}

/// The transaction of a rollback: the pin, the desired record and the
/// history entry, each checked against the snapshot; a KV-only service's
/// key is set here, a rollout's deployed record is checked unchanged.
fn rollback_ops(
    svc: &ServiceConfig,
    keys: &Keys,
    snap: &Snapshot,
    rb: &RollbackPin<'_>,
) -> Result<Txn, StoreError> {
    let at = crate::clock::now_rfc3339();
    let pin = PinRecord {
        tag: Some(rb.target.to_string()),
        at: Some(at.clone()),
        actor: Some(rb.actor.to_string()),
        reason: rb.reason.map(str::to_string),
    };
    let desired = crate::store::Desired {
        tag: rb.target.to_string(),
        digest: None,
        seq: snap.next_seq(),
        at: at.clone(),
    };
    let entry = HistoryEntry {
        at,
        event: crate::store::Event::Pinned,
        tag: rb.target.to_string(),
        previous: rb.running.map(str::to_string),
        digest: None,
        source: Some("cli".into()),
        delivery: None,
        actor: Some(rb.actor.to_string()),
        detail: Some(rb.reason.unwrap_or("rollback").to_string()),
    };
    let mut txn = Txn::with_capacity(8);
    txn.put_pin(keys, &pin, snap.pin_index.unwrap_or(0))?;
    txn.put_desired(keys, &desired, snap.desired_index)?;
    txn.append_history(keys, &snap.history, &entry, svc.history_keep);
    if svc.rollout.is_none() {
        txn.set_tag(keys, rb.target, snap.key_index);
        // The target's digest is not known here: the digest key goes.
        txn.move_digest(keys, None, snap.digest.as_deref(), snap.digest_index);
    } else {
        // `running` and the target came from the deployed record.
        txn.check(&keys.deployed, snap.deployed_index);
    }
    Ok(txn)
}

/// `tagbridge unpin <svc>`.
///
/// # Errors
///
/// Unknown service, Consul failures.
pub async fn unpin(cfg: &Config, name: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let svc = service(cfg, name)?;
    let consul = consul_client(cfg)?;
    let keys = Keys::new(cfg, svc);
    let actor = crate::config::process_env("USER").unwrap_or_else(|| "cli".into());
    for _ in 0..8 {
        let snap = read_for_write(&consul, &keys, svc.history_keep).await?;
        let Some(pin_index) = snap.pin_index else {
            writeln!(out, "{name}: not pinned")?;
            return Ok(());
        };
        let entry = HistoryEntry {
            at: crate::clock::now_rfc3339(),
            event: crate::store::Event::Unpinned,
            tag: snap.current_tag(svc).unwrap_or_default().to_string(),
            previous: None,
            digest: None,
            source: Some("cli".into()),
            delivery: None,
            actor: Some(actor.clone()),
            detail: None,
        };
        let mut txn = Txn::with_capacity(8);
        txn.delete_pin(&keys, pin_index);
        txn.append_history(&keys, &snap.history, &entry, svc.history_keep);
        if let TxnOutcome::Committed(_) = consul.txn(txn.ops()).await? {
            writeln!(out, "{name}: unpinned; the next webhook deploys")?;
            return Ok(());
        }
    }
    Err(CliError::Other(format!(
        "{name}: records kept changing; try again"
    )))
}

/// `tagbridge sync <svc>`: see [`crate::sync`].
///
/// # Errors
///
/// Unknown service, no registry, `pushed` order, registry or Consul
/// failures (a rate limit names its `Retry-After`).
pub async fn sync(cfg: Arc<Config>, name: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let svc = service(&cfg, name)?.clone();
    crate::sync::syncable(&svc).map_err(|e| CliError::Other(format!("{name}: {e}")))?;
    let ingest = Ingest::new(consul_client(&cfg)?, cfg.clone(), Arc::new(Metrics::new()));
    let synced = crate::sync::sync(&ingest, &svc)
        .await
        .map_err(|e| CliError::Other(format!("{name}: {e}")))?;
    let listed = format!(
        "{} tags, {} registry requests, {} ms{}",
        synced.listed,
        synced.requests,
        synced.elapsed.as_millis(),
        if synced.truncated {
            ", listing truncated"
        } else {
            ""
        }
    );
    match synced.applied {
        None => writeln!(
            out,
            "{name}: no listed tag passes the tag policy; nothing to do ({listed})"
        )?,
        Some(o) if o.changed => writeln!(
            out,
            "{name}: {} {} -> {}{} ({listed})",
            svc.key,
            o.previous.as_deref().unwrap_or("(unset)"),
            o.tag,
            if o.rollout_queued() {
                " (rollout queued)"
            } else {
                ""
            }
        )?,
        Some(o) => writeln!(
            out,
            "{name}: best tag {}: {}; nothing to do ({listed})",
            o.tag,
            o.reason.as_deref().unwrap_or("unchanged")
        )?,
    }
    Ok(())
}

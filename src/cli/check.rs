//! `tagbridge check`: the configuration, the TLS pair and, with
//! `--connect`, Consul and every rollout job in Nomad. Apart because the
//! job review (namespace, job, strategy requirements, plan) is the
//! largest piece of it.

use std::io::Write;

use super::CliError;
use crate::clients::nomad::Nomad;
use crate::clients::{consul_client, nomad_client};
use crate::config::{Config, Purpose, RolloutConfig, ServiceConfig};

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
        for id in &rc.jobs {
            check_job(&nomad, &JobRef::new(svc, rc, id), &mut problems, out).await?;
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

/// One rollout job of a service, and how its lines name it.
struct JobRef<'a> {
    svc: &'a ServiceConfig,
    rc: &'a RolloutConfig,
    id: &'a str,
    /// The prefix of its problem and warning lines.
    here: String,
}

impl<'a> JobRef<'a> {
    fn new(svc: &'a ServiceConfig, rc: &'a RolloutConfig, id: &'a str) -> Self {
        let here = format!(
            "service {:?}: job {:?} (namespace {:?})",
            svc.name, id, rc.namespace
        );
        JobRef { svc, rc, id, here }
    }
}

/// One rollout job against its strategy's requirements: unmet ones added
/// to `problems`, warnings printed.
async fn check_job(
    nomad: &Nomad,
    job_ref: &JobRef<'_>,
    problems: &mut Vec<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let JobRef {
        svc,
        rc,
        id,
        ref here,
    } = *job_ref;
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

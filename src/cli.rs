//! The command line: what an operator types, and what they see.
//!
//! Each command is a function from parsed arguments and a validated
//! configuration to a typed result, so `main` only maps errors to exit
//! codes (1: a failure the user can fix; clap's own 2: bad usage).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, Purpose, ServiceConfig};
use crate::consul::{Consul, ConsulSettings};
use crate::history::{Deployed, HistoryEntry};
use crate::http_client::{ClientBuildError, HttpClient};
use crate::ingest::{read_snapshot, Change, Ingest, IngestError, Keys};
use crate::metrics::Metrics;

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
    /// Show each service's tag, desired and deployed records.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set a service's tag by hand (recorded as `manual`).
    Deploy {
        service: String,
        tag: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

/// A failure the user can fix; printed as one line, exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("unknown service {0:?} (configured: {1})")]
    UnknownService(String, String),
    #[error("{0}")]
    Client(#[from] ClientBuildError),
    #[error("{0}")]
    Ingest(#[from] IngestError),
    #[error("{0}")]
    Consul(#[from] crate::consul::ConsulError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Build the Consul client a configuration describes.
///
/// # Errors
///
/// TLS files that do not load.
pub fn consul_client(cfg: &Config) -> Result<Consul, ClientBuildError> {
    let http = HttpClient::new(&cfg.consul.tls)?;
    Ok(Consul::new(
        http,
        ConsulSettings {
            address: cfg.consul.address.clone(),
            token: cfg.consul.token.clone(),
            datacenter: cfg.consul.datacenter.clone(),
            timeout: cfg.consul.timeout,
        },
    ))
}

/// Build the Nomad client a configuration describes.
///
/// # Errors
///
/// TLS files that do not load.
pub fn nomad_client(cfg: &Config) -> Result<crate::nomad::Nomad, ClientBuildError> {
    let http = HttpClient::new(&cfg.nomad.tls)?;
    Ok(crate::nomad::Nomad::new(
        http,
        crate::nomad::NomadSettings {
            address: cfg.nomad.address.clone(),
            token: cfg.nomad.token.clone(),
            region: cfg.nomad.region.clone(),
            timeout: std::time::Duration::from_secs(10),
        },
    ))
}

/// The rollout context (without leadership) a configuration describes.
///
/// # Errors
///
/// TLS files that do not load.
pub fn rollout_context(cfg: &Arc<Config>) -> Result<crate::rollout::Context, ClientBuildError> {
    let plain = HttpClient::new(&crate::http_client::ClientTlsFiles::default())?;
    Ok(crate::rollout::Context {
        consul: consul_client(cfg)?,
        nomad: nomad_client(cfg)?,
        config: cfg.clone(),
        http: plain.clone(),
        notifier: crate::notify::Notifier::new(plain, cfg.notify.clone()),
        fence: None,
        cancel: tokio_util::sync::CancellationToken::new(),
        timings: crate::rollout::Timings::default(),
        before_register: None,
    })
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
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
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
    }
    writeln!(
        out,
        "{}: ok ({} services)",
        cfg_path.display(),
        cfg.services.len()
    )?;
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
    let snap = read_snapshot(&consul, &Keys::new(cfg, svc)).await?;
    let entries: Vec<&HistoryEntry> = snap.history.iter().take(limit).collect();
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
        let keys = Keys::new(cfg, svc);
        let snap = read_snapshot(&consul, &keys).await?;
        let deployed: Option<Deployed> = match consul.kv_get(&keys.deployed).await?.value {
            Some(kv) if !kv.value.is_empty() => serde_json::from_slice(&kv.value).ok(),
            _ => None,
        };
        let last_change = snap.history.first().map(|e| e.at.clone());
        docs.push(serde_json::json!({
            "service": svc.name,
            "key": svc.key,
            "tag": snap.tag,
            "last_change": last_change,
            "desired": snap.desired,
            "deployed": deployed,
            "pinned": snap.pinned(),
            "rollout": svc.rollout.as_ref().map(|r| serde_json::json!({"job": r.job, "namespace": r.namespace})),
        }));
        rows.push(vec![
            svc.name.clone(),
            snap.tag.clone().unwrap_or_else(|| "-".into()),
            last_change.unwrap_or_else(|| "-".into()),
            snap.desired
                .as_ref()
                .map_or("-".into(), |d| format!("{} (#{})", d.tag, d.seq)),
            deployed
                .as_ref()
                .map_or("-".into(), |d| format!("{} ({})", d.tag, d.outcome)),
            if snap.pinned() { "yes" } else { "no" }.into(),
            svc.rollout
                .as_ref()
                .map_or("none (KV only)".into(), |r| format!("job {}", r.job)),
        ]);
    }
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
    )
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
            writeln!(out, "{name}: {} is already {tag}; nothing to do", svc.key)?;
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
        if outcome.rollout_queued {
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

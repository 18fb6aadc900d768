//! The command line: what an operator types, and what they see.
//!
//! Each command is a function from parsed arguments and a validated
//! configuration to a typed result, so `main` only maps errors to exit
//! codes (1: a failure the user can fix; clap's own 2: bad usage).
//!
//! This file holds what every command shares: the clap definitions
//! (`Cli`, `Command`), the error (`CliError`), the service lookup and the
//! table printer. The commands live one group per file and are
//! re-exported here, so callers name them `cli::<command>`:
//!
//! * `secret` — `tagbridge secret`;
//! * `check` — `tagbridge check [--connect]`, and each rollout job
//!   against its strategy's requirements;
//! * `history` — `tagbridge history`;
//! * `status` — `tagbridge status`: the records and the live Nomad
//!   deployments (`deployment_lines`, shared with `watch`);
//! * `watch` — `tagbridge status <svc> --watch`;
//! * `deploy` — `tagbridge deploy`;
//! * `pin` — `tagbridge rollback` (sets the pin) and `tagbridge unpin`;
//! * `sync` — `tagbridge sync`.
//!
//! Consul is read through `crate::store`'s readers and written only
//! through its `Txn` (or `Ingest`): no file here builds Consul operations
//! of its own.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::clients::http::ClientBuildError;
use crate::config::{Config, ConfigError, ServiceConfig};
use crate::ingest::IngestError;
use crate::store::StoreError;

mod check;
mod deploy;
mod history;
mod pin;
mod secret;
mod status;
mod sync;
mod watch;

pub use check::check;
pub use deploy::deploy;
pub use history::history;
pub use pin::{rollback, unpin};
pub use secret::secret;
pub use status::{deployment_lines, status};
pub use sync::sync;
pub use watch::watch;

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

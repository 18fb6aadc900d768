//! `tagbridge deploy`: set a service's tag by hand, through the same
//! `Ingest` transaction as a webhook, recorded as `manual`.

use std::io::Write;
use std::sync::Arc;

use super::{service, CliError};
use crate::clients::consul_client;
use crate::config::Config;
use crate::ingest::{Change, Ingest};
use crate::metrics::Metrics;

/// `tagbridge deploy <svc> <tag>`: the same transaction as a webhook,
/// recorded as `manual`.
///
/// # Errors
///
/// Unknown service, a tag the service's filters refuse (the order does
/// not apply: an operator may deploy an older tag), pinned service,
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
    let ingested = ingest
        .apply(
            &svc,
            &Change::Manual {
                tag: tag.to_string(),
                reason,
                actor,
            },
        )
        .await?;
    if !ingested.changed {
        let reason = ingested.reason.unwrap_or_default();
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
        ingested.previous.as_deref().unwrap_or("(unset)"),
        if ingested.rollout_queued() {
            " (rollout queued)"
        } else {
            ""
        }
    )?;
    Ok(())
}

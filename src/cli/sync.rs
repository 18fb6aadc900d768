//! `tagbridge sync`: the CLI face of [`crate::sync`], which sends a
//! registry listing's best tag through ingest; this file only checks the
//! service can be synced and words the result.

use std::io::Write;
use std::sync::Arc;

use super::{service, CliError};
use crate::clients::consul_client;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::metrics::Metrics;

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
        synced
            .truncated
            .map(|b| format!(", listing stopped at {b}; later tags not seen"))
            .unwrap_or_default()
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

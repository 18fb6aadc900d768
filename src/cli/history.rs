//! `tagbridge history`: a service's history entries, newest first, as a
//! table or JSON. Apart from `status` because it reads the history alone.

use std::io::Write;

use super::{service, table, CliError};
use crate::clients::consul_client;
use crate::config::Config;
use crate::store::Keys;

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

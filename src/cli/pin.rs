//! `tagbridge rollback` and `tagbridge unpin`: the two commands that set
//! and clear a service's pin. A rollback picks its target from history,
//! pins the service to it and makes it the desired tag; `unpin` lets
//! webhooks deploy again. Both write through one `store::Txn`, retried on
//! a conflict.

use std::io::Write;

use super::{service, CliError};
use crate::clients::consul::{Consul, TxnOutcome};
use crate::clients::consul_client;
use crate::config::{Config, ServiceConfig};
use crate::store::{read_for_write, HistoryEntry, Keys, PinRecord, Snapshot, StoreError, Txn};

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

/// What `rollback` and `unpin` write with: the service, a Consul client,
/// its keys, and the actor their history entry names (`$USER`).
fn writer<'a>(
    cfg: &'a Config,
    name: &str,
) -> Result<(&'a ServiceConfig, Consul, Keys, String), CliError> {
    let svc = service(cfg, name)?;
    let actor = crate::config::process_env("USER").unwrap_or_else(|| "cli".into());
    Ok((svc, consul_client(cfg)?, Keys::new(cfg, svc), actor))
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
    let (svc, consul, keys, actor) = writer(cfg, name)?;
    for _ in 0..8 {
        let snap = read_for_write(&consul, &keys, svc.history_keep).await?;
        // I6: a second `rollback` (a retry after a timed-out first one)
        // must not take the rollback's own target for "running" and undo
        // it: while pinned to a target, the same request changes nothing.
        if let Some(pinned) = snap.pin_target() {
            if to.as_deref().is_none_or(|t| t == pinned) {
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
    let (svc, consul, keys, actor) = writer(cfg, name)?;
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

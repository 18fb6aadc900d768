//! The readers of a service's records: one decoder per record, shared by
//! every reader, so ingest, the controller, `?wait` and the CLI agree on
//! what an absent, empty or unreadable record means.
//!
//! Two views are read: the whole snapshot a writer checks its transaction
//! against (ingest, `rollback`, `unpin`), and the controller's smaller
//! view (desired, deployed, pin) that it decides from on every turn.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::de::DeserializeOwned;

use super::history::{self, decode_head, Head, HeadRead};
use super::ops::Txn;
use super::records::{Deployed, Desired, PinRecord, STARTED};
use super::{corrupt, Keys, KvRead, StoreError};
use crate::clients::consul::{Consul, ConsulError, KvPair, TxnOp};
use crate::config::ServiceConfig;

/// What was read for one service, with the indexes to CAS against.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub tag: Option<String>,
    pub key_index: u64,
    /// The digest key's value and ModifyIndex (0: absent or not
    /// configured).
    pub digest: Option<String>,
    pub digest_index: u64,
    /// The history's head (one key per entry; entries are never read
    /// here, so a write costs the same whatever the history's length).
    pub history: HeadRead,
    pub desired: Option<Desired>,
    pub desired_index: u64,
    /// `Some(index)` when the pin key exists.
    pub pin_index: Option<u64>,
    /// The pin's target tag (`Some("")` for a pin without one).
    pub pin: Option<String>,
    /// The controller's `deployed` record, and its ModifyIndex (0: absent).
    pub deployed: Option<Deployed>,
    pub deployed_index: u64,
}

impl Snapshot {
    pub fn pinned(&self) -> bool {
        self.pin_index.is_some()
    }

    /// The tag the service is pinned to, when its pin names one.
    pub fn pin_target(&self) -> Option<&str> {
        self.pin.as_deref().filter(|t| !t.is_empty())
    }

    /// The newest accepted tag: for services with a rollout, the desired
    /// record (the key follows the controller); otherwise the key itself.
    pub fn current_tag(&self, svc: &ServiceConfig) -> Option<&str> {
        match (&svc.rollout, &self.desired) {
            (Some(_), Some(d)) => Some(d.tag.as_str()),
            _ => self.tag.as_deref(),
        }
    }

    /// The desired seq of the next change. It continues from the deployed
    /// record when the desired record was deleted by hand: the controller
    /// ignores a seq it has already answered.
    pub fn next_seq(&self) -> u64 {
        let desired = self.desired.as_ref().map_or(0, |d| d.seq);
        let deployed = self.deployed.as_ref().map_or(0, |d| d.seq);
        desired.max(deployed) + 1
    }

    /// The snapshot as it is after `txn` committed (Consul answered the
    /// new `indexes`), so the next write for the service needs no read.
    /// `head` and `desired` are what the transaction wrote. `None` when
    /// Consul did not say an index: read afresh next time.
    pub fn committed(
        mut self,
        keys: &Keys,
        txn: Txn,
        mut head: Option<Head>,
        mut desired: Option<Desired>,
        indexes: &[(String, u64)],
    ) -> Option<Snapshot> {
        let index_of = |key: &str| indexes.iter().find(|(k, _)| k == key).map(|(_, i)| *i);
        for op in txn.into_ops() {
            if let TxnOp::DeleteCas { key, .. } = &op {
                if keys.digest.as_ref() == Some(key) {
                    (self.digest, self.digest_index) = (None, 0);
                }
            }
            if let TxnOp::Cas { key, value, .. } = op {
                let idx = index_of(&key)?;
                if keys.digest.as_ref() == Some(&key) {
                    self.digest = Some(String::from_utf8(value).ok()?);
                    self.digest_index = idx;
                } else if key == keys.tag {
                    self.tag = Some(String::from_utf8(value).ok()?);
                    self.key_index = idx;
                } else if key == keys.history.head {
                    self.history.head = head.take()?;
                    self.history.index = idx;
                } else if key == keys.desired {
                    self.desired = Some(desired.take()?);
                    self.desired_index = idx;
                }
            }
        }
        Some(self)
    }
}

/// What the controller decides from: desired, deployed and pin.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub desired: Option<Desired>,
    pub deployed: Option<Deployed>,
    /// The pin record's target tag (`Some("")` for a pin without one).
    pub pin: Option<String>,
    /// ModifyIndex of the desired record as read (0: absent): the start
    /// of a rollout is committed only if it is unchanged.
    pub desired_index: u64,
    /// ModifyIndex of the pin record as read (0: absent).
    pub pin_index: u64,
    /// When the rollout in the deployed record started (Unix ms), so a
    /// resumed rollout keeps its deadline.
    pub started: Option<u64>,
}

/// The retries of one Consul call on a transient failure (unreachable,
/// 5xx, 429): three, within about a second.
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_millis(400))
        .with_max_times(3)
        .with_jitter()
}

/// A KV value as text, trimmed; `None` when empty.
pub fn value_text(kv: &KvPair) -> Option<String> {
    Some(String::from_utf8_lossy(&kv.value).trim().to_string()).filter(|t| !t.is_empty())
}

/// A JSON record; absent or empty is `None`.
fn decode<T: DeserializeOwned>(key: &str, kv: Option<&KvPair>) -> Result<Option<T>, StoreError> {
    match kv {
        Some(kv) if !kv.value.is_empty() => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| corrupt(key, e)),
        _ => Ok(None),
    }
}

/// The deployed record, and when its rollout started (the `started`
/// field the typed record does not carry).
fn decode_deployed(
    key: &str,
    kv: Option<&KvPair>,
) -> Result<(Option<Deployed>, Option<u64>), StoreError> {
    let Some(raw) = decode::<serde_json::Value>(key, kv)? else {
        return Ok((None, None));
    };
    let started = raw.get(STARTED).and_then(serde_json::Value::as_u64);
    let d = serde_json::from_value(raw).map_err(|e| corrupt(key, e))?;
    Ok((Some(d), started))
}

/// The pin's target tag (`Some("")`: pinned without one). A pin that is
/// not what tagbridge writes still pins: an operator's hand-made pin
/// must hold webhooks back, not be ignored.
fn decode_pin(kv: Option<&KvPair>) -> Option<String> {
    kv.map(|kv| {
        serde_json::from_slice::<PinRecord>(&kv.value)
            .ok()
            .and_then(|p| p.tag)
            .unwrap_or_default()
    })
}

/// Read every record of a service (six reads in parallel, seven with a
/// digest key), each retried on a transient failure.
///
/// # Errors
///
/// Consul failures (after retries), unreadable records.
pub async fn read_snapshot(consul: &Consul, keys: &Keys) -> Result<Snapshot, StoreError> {
    let get = |key: String| {
        let consul = consul.clone();
        move || {
            let consul = consul.clone();
            let key = key.clone();
            async move { consul.kv_get(&key).await }
        }
    };
    let retried = |key: &str| {
        get(key.to_string())
            .retry(retry_policy())
            .when(ConsulError::is_transient)
    };
    let digest_read = async {
        match &keys.digest {
            Some(k) => retried(k).await.map(|r| r.value),
            None => Ok(None),
        }
    };
    let (tag, head, legacy, desired, pin, deployed, digest) = tokio::try_join!(
        retried(&keys.tag),
        retried(&keys.history.head),
        retried(&keys.history.legacy),
        retried(&keys.desired),
        retried(&keys.pin),
        retried(&keys.deployed),
        digest_read,
    )?;
    // Written only by the controller; one it cannot read is treated as
    // absent here (the controller reports it), not as a reason to refuse
    // webhooks.
    let deployed_rec = decode_deployed(&keys.deployed, deployed.value.as_ref())
        .ok()
        .and_then(|(d, _)| d);
    let history = HeadRead {
        head: decode_head(head.value.as_ref().map(|kv| kv.value.as_slice()))
            .map_err(|e| corrupt(&keys.history.head, e))?,
        index: head.value.as_ref().map_or(0, |kv| kv.modify_index),
        legacy: legacy.value.as_ref().map(|kv| kv.modify_index),
    };
    Ok(Snapshot {
        tag: tag.value.as_ref().and_then(value_text),
        key_index: tag.value.as_ref().map_or(0, |kv| kv.modify_index),
        digest: digest.as_ref().and_then(value_text),
        digest_index: digest.as_ref().map_or(0, |kv| kv.modify_index),
        history,
        desired: decode(&keys.desired, desired.value.as_ref())?,
        desired_index: desired.value.as_ref().map_or(0, |kv| kv.modify_index),
        pin_index: pin.value.as_ref().map(|kv| kv.modify_index),
        pin: decode_pin(pin.value.as_ref()),
        deployed_index: deployed.value.as_ref().map_or(0, |kv| kv.modify_index),
        deployed: deployed_rec,
    })
}

/// Read a service's records for a write: an old single-value history is
/// migrated first (in transactions of its own), then read again.
///
/// # Errors
///
/// As [`read_snapshot`], and a migration that could not complete.
pub async fn read_for_write(
    consul: &Consul,
    keys: &Keys,
    keep: usize,
) -> Result<Snapshot, StoreError> {
    let snap = read_snapshot(consul, keys).await?;
    if snap.history.index != 0 || snap.history.legacy.is_none() {
        return Ok(snap);
    }
    history::migrate(consul, &keys.history, keep).await?;
    read_snapshot(consul, keys).await
}

/// Read desired, deployed and pin: what the controller decides from.
///
/// # Errors
///
/// Consul failures and unreadable records.
pub async fn read_state<C: KvRead>(consul: &C, keys: &Keys) -> Result<State, StoreError> {
    let (desired, deployed, pin) = tokio::try_join!(
        consul.kv_get(&keys.desired),
        consul.kv_get(&keys.deployed),
        consul.kv_get(&keys.pin),
    )?;
    let (deployed_rec, started) = decode_deployed(&keys.deployed, deployed.value.as_ref())?;
    Ok(State {
        desired: decode(&keys.desired, desired.value.as_ref())?,
        deployed: deployed_rec,
        pin: decode_pin(pin.value.as_ref()),
        desired_index: desired.value.as_ref().map_or(0, |kv| kv.modify_index),
        pin_index: pin.value.as_ref().map_or(0, |kv| kv.modify_index),
        started,
    })
}

/// The desired record.
///
/// # Errors
///
/// Consul failures, an unreadable record.
pub async fn read_desired<C: KvRead>(
    consul: &C,
    keys: &Keys,
) -> Result<Option<Desired>, StoreError> {
    let read = consul.kv_get(&keys.desired).await?;
    decode(&keys.desired, read.value.as_ref())
}

/// The deployed record as a blocking read returned it (`index`: the
/// read's index, for the next one). Unlike [`read_deployed`], an
/// unreadable record is an error: a caller waiting on it must not be told
/// "queued" forever.
///
/// # Errors
///
/// Consul failures, an unreadable record.
pub async fn read_deployed_blocking(
    consul: &Consul,
    keys: &Keys,
    index: u64,
    wait: Duration,
) -> Result<(Option<Deployed>, u64), StoreError> {
    let read = if index == 0 || wait < Duration::from_millis(1) {
        // Consul reads `wait=0ms` as its own 5-minute default.
        consul.kv_get(&keys.deployed).await?
    } else {
        consul.kv_get_blocking(&keys.deployed, index, wait).await?
    };
    let (d, _) = decode_deployed(&keys.deployed, read.value.as_ref())?;
    Ok((d, read.index))
}

/// The service's key as it is now (`None`: absent), with its index.
///
/// # Errors
///
/// Consul failures.
pub async fn read_tag<C: KvRead>(consul: &C, keys: &Keys) -> Result<Option<KvPair>, ConsulError> {
    Ok(consul.kv_get(&keys.tag).await?.value)
}

/// The digest key as it is now (`None`: absent or not configured), with
/// its index.
///
/// # Errors
///
/// Consul failures.
pub async fn read_digest<C: KvRead>(
    consul: &C,
    keys: &Keys,
) -> Result<Option<KvPair>, ConsulError> {
    match &keys.digest {
        Some(k) => Ok(consul.kv_get(k).await?.value),
        None => Ok(None),
    }
}

/// A record's ModifyIndex (0: absent): what a write that replaces the
/// record whatever it holds checks-and-sets against.
///
/// # Errors
///
/// Consul failures.
pub async fn read_index<C: KvRead>(consul: &C, key: &str) -> Result<u64, ConsulError> {
    Ok(consul
        .kv_get(key)
        .await?
        .value
        .map_or(0, |kv| kv.modify_index))
}

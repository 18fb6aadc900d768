//! The one owner of tagbridge's Consul records.
//!
//! Ingest, the controller, `?wait` and the CLI all read and write the same
//! few keys per service (the tag key, the digest key, desired, deployed,
//! pin and the history). Their layout, their shapes, how they are read and
//! the transaction ops that change them live here, so a new record (or a
//! new reader) is added in one place and every writer checks the others'
//! writes the same way.
//!
//! * `records` — the shapes: history entry, desired, deployed, pin, and
//!   the closed sets `Event` and `RolloutState`.
//! * `history` — history as one key per entry: head, appends, trims,
//!   paged reads, migration of the old single-value layout.
//! * `read` — the readers: a service's whole snapshot (ingest, CLI), the
//!   controller's view (desired, deployed, pin), single records.
//! * `ops` — the transaction builder: every check-and-set, check and
//!   delete the writers send, including the one "index is N or the key is
//!   absent" check.

pub mod history;
pub mod ops;
pub mod read;
pub mod records;

use std::future::Future;

use crate::clients::consul::{Consul, ConsulError, KvPair, Read};
use crate::config::{Config, ServiceConfig};

pub use history::{HeadRead, HistoryKeys};
pub use ops::Txn;
pub use read::{read_desired, read_for_write, read_snapshot, read_state, Snapshot, State};
pub use records::{Deployed, Desired, Event, HistoryEntry, JobDone, PinRecord, RolloutState};

/// Keys of one service's records.
#[derive(Debug, Clone)]
pub struct Keys {
    pub tag: String,
    /// The service's `digest_key`, when it has one.
    pub digest: Option<String>,
    pub history: HistoryKeys,
    pub desired: String,
    pub deployed: String,
    pub pin: String,
}

impl Keys {
    pub fn new(cfg: &Config, svc: &ServiceConfig) -> Self {
        Keys {
            tag: svc.key.clone(),
            digest: svc.digest_key.clone(),
            history: HistoryKeys::new(&cfg.state_key("history", &svc.name)),
            desired: cfg.state_key("desired", &svc.name),
            deployed: cfg.state_key("deployed", &svc.name),
            pin: cfg.state_key("pin", &svc.name),
        }
    }
}

/// Why a record could not be read, written or migrated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    /// A record exists but is not what tagbridge writes.
    #[error("state record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// Another writer kept migrating or writing at the same time.
    #[error("history of {0} kept changing during migration")]
    Contention(String),
}

pub(crate) fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// Single-key reads, the one Consul call every reader needs. The rollout's
/// `ConsulPort` extends it, so the controller's reads go through the same
/// readers as everyone else's, against the real client or the scripted
/// fake.
pub trait KvRead: Send + Sync {
    fn kv_get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Read<Option<KvPair>>, ConsulError>> + Send;
}

impl KvRead for Consul {
    async fn kv_get(&self, key: &str) -> Result<Read<Option<KvPair>>, ConsulError> {
        Consul::kv_get(self, key).await
    }
}

//! The transactions that change a service's records, built one op at a
//! time by name.
//!
//! Every writer (ingest, the controller, `rollback`, `unpin`) sends one
//! `/v1/txn` in which each record it decided from is either written with
//! check-and-set at the index it read or checked unchanged. Building those
//! ops here, and nowhere else, keeps the rules in one place: how a record
//! is serialised, that the digest key moves with the tag key, and what
//! "unchanged" means for a record that did not exist.

use super::history::{self, Head, HeadRead};
use super::records::{Deployed, Desired, HistoryEntry, PinRecord, STARTED};
use super::{corrupt, Keys, StoreError};
use crate::clients::consul::TxnOp;

/// One transaction under construction.
#[derive(Debug, Default)]
pub struct Txn {
    ops: Vec<TxnOp>,
}

impl Txn {
    pub fn with_capacity(n: usize) -> Self {
        Txn {
            ops: Vec::with_capacity(n),
        }
    }

    pub fn ops(&self) -> &[TxnOp] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<TxnOp> {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Fail the transaction unless `key` is still at `index`, or, when
    /// `index` is 0, still absent.
    pub fn check(&mut self, key: &str, index: u64) {
        self.ops.push(if index == 0 {
            TxnOp::CheckNotExists {
                key: key.to_string(),
            }
        } else {
            TxnOp::CheckIndex {
                key: key.to_string(),
                index,
            }
        });
    }

    /// The tag key to `tag`, if it is still at `index` (0: absent).
    pub fn set_tag(&mut self, keys: &Keys, tag: &str, index: u64) {
        self.ops.push(TxnOp::Cas {
            key: keys.tag.clone(),
            value: tag.as_bytes().to_vec(),
            index,
        });
    }

    /// Delete the tag key, if it is still at `index`.
    pub fn delete_tag(&mut self, keys: &Keys, index: u64) {
        self.ops.push(TxnOp::DeleteCas {
            key: keys.tag.clone(),
            index,
        });
    }

    /// Make the digest key hold `want` (`None`: absent), conditioned on
    /// what was read of it (`now` at `index`, 0: absent); nothing when it
    /// already does or the service has no digest key. Every writer of the
    /// tag key calls this beside it, so the digest key never names the
    /// digest of a tag other than the one beside it.
    pub fn move_digest(&mut self, keys: &Keys, want: Option<&str>, now: Option<&str>, index: u64) {
        let Some(key) = &keys.digest else {
            return;
        };
        match want {
            Some(d) if now == Some(d) => {}
            Some(d) => self.ops.push(TxnOp::Cas {
                key: key.clone(),
                value: d.as_bytes().to_vec(),
                index,
            }),
            None if index > 0 => self.ops.push(TxnOp::DeleteCas {
                key: key.clone(),
                index,
            }),
            None => {}
        }
    }

    /// The desired record, if it is still at `index` (0: absent).
    ///
    /// # Errors
    ///
    /// The record cannot be serialised (never for the shapes we write).
    pub fn put_desired(
        &mut self,
        keys: &Keys,
        desired: &Desired,
        index: u64,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(desired).map_err(|e| corrupt(&keys.desired, e))?;
        self.ops.push(TxnOp::Cas {
            key: keys.desired.clone(),
            value,
            index,
        });
        Ok(())
    }

    /// The deployed record, if it is still at `index` (0: absent). A busy
    /// record also carries `started` (Unix ms), so a leader that resumes
    /// the rollout keeps its deadline.
    ///
    /// # Errors
    ///
    /// The record cannot be serialised (never for the shapes we write).
    pub fn put_deployed(
        &mut self,
        keys: &Keys,
        deployed: &Deployed,
        started: Option<u64>,
        index: u64,
    ) -> Result<(), StoreError> {
        let mut value = serde_json::to_value(deployed).map_err(|e| corrupt(&keys.deployed, e))?;
        if let (true, Some(at), Some(obj)) = (deployed.is_busy(), started, value.as_object_mut()) {
            obj.insert(STARTED.into(), at.into());
        }
        self.ops.push(TxnOp::Cas {
            key: keys.deployed.clone(),
            value: serde_json::to_vec(&value).map_err(|e| corrupt(&keys.deployed, e))?,
            index,
        });
        Ok(())
    }

    /// The pin record, if it is still at `index` (0: absent).
    ///
    /// # Errors
    ///
    /// The record cannot be serialised (never for the shapes we write).
    pub fn put_pin(&mut self, keys: &Keys, pin: &PinRecord, index: u64) -> Result<(), StoreError> {
        let value = serde_json::to_vec(pin).map_err(|e| corrupt(&keys.pin, e))?;
        self.ops.push(TxnOp::Cas {
            key: keys.pin.clone(),
            value,
            index,
        });
        Ok(())
    }

    /// Delete the pin, if it is still at `index`.
    pub fn delete_pin(&mut self, keys: &Keys, index: u64) {
        self.ops.push(TxnOp::DeleteCas {
            key: keys.pin.clone(),
            index,
        });
    }

    /// Append `entry` after `head` (moving the head with check-and-set,
    /// trimming past `keep`); returns the head once committed.
    pub fn append_history(
        &mut self,
        keys: &Keys,
        head: &HeadRead,
        entry: &HistoryEntry,
        keep: usize,
    ) -> Head {
        let (ops, head) = history::append_ops(&keys.history, head, entry, keep);
        self.ops.extend(ops);
        head
    }

    /// Fail the transaction unless `lock` is still held by `session`: the
    /// leader's fence on every controller write.
    pub fn fence(&mut self, lock: &str, session: &str) {
        self.ops.push(TxnOp::CheckSession {
            key: lock.to_string(),
            session: session.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HistoryKeys;

    fn keys(digest: bool) -> Keys {
        Keys {
            tag: "app/tag".into(),
            digest: digest.then(|| "app/digest".into()),
            history: HistoryKeys::new("tb/history/app"),
            desired: "tb/desired/app".into(),
            deployed: "tb/deployed/app".into(),
            pin: "tb/pin/app".into(),
        }
    }

    #[test]
    fn check_is_the_index_or_absence() {
        let mut t = Txn::default();
        t.check("k", 0);
        t.check("k", 7);
        assert!(matches!(&t.ops()[0], TxnOp::CheckNotExists { key } if key == "k"));
        assert!(matches!(&t.ops()[1], TxnOp::CheckIndex { key, index: 7 } if key == "k"));
    }

    #[test]
    fn the_digest_key_moves_only_when_it_differs() {
        let mut t = Txn::default();
        t.move_digest(&keys(true), Some("sha256:a"), Some("sha256:a"), 3);
        assert!(t.is_empty(), "same digest: no op");
        t.move_digest(&keys(true), None, None, 0);
        assert!(t.is_empty(), "absent and wanted absent: no op");
        t.move_digest(&keys(false), Some("sha256:b"), None, 0);
        assert!(t.is_empty(), "no digest key configured: no op");
        t.move_digest(&keys(true), Some("sha256:b"), Some("sha256:a"), 3);
        t.move_digest(&keys(true), None, Some("sha256:a"), 3);
        assert!(matches!(&t.ops()[0], TxnOp::Cas { key, index: 3, .. } if key == "app/digest"));
        assert!(matches!(&t.ops()[1], TxnOp::DeleteCas { key, index: 3 } if key == "app/digest"));
    }
}

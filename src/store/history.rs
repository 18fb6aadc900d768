//! History as one Consul key per entry.
//!
//! A service's history used to be one JSON array rewritten on every
//! webhook. That value grew with `history_keep` and with every field a
//! stranger controls, until it passed Consul's value and transaction
//! limits and jammed the service: every later ingest, commit, rollback
//! and unpin failed. Now each entry is its own key and a small head
//! record says where the history starts and ends:
//!
//! ```text
//! <state_prefix>/history/<svc>/head                   {"seq":N,"oldest":M}
//! <state_prefix>/history/<svc>/00000000000000000042   one entry (JSON)
//! ```
//!
//! A writer adds one entry, moves the head (check-and-set: writers of one
//! service are serialised by it, as they were by the old array) and trims
//! at most [`TRIM_PER_WRITE`] of the oldest entries, all in the caller's
//! transaction. So a write costs the same at `history_keep = 10 000` as at
//! 10, and each entry is bounded in bytes ([`bounded`]).
//!
//! Readers page backwards through blocks of 100 keys (a recurse listing of
//! the block's zero-padded key prefix), so `tagbridge history --limit 20`
//! reads one or two blocks whatever the history's length.
//!
//! The old single-value history (`<state_prefix>/history/<svc>`) is still
//! read when no head exists, and the first write for the service migrates
//! it ([`migrate`]) in transactions of its own before writing.

use serde::{Deserialize, Serialize};

use super::records::{decode_history, HistoryEntry};
use super::{corrupt, StoreError};
use crate::clients::consul::{Consul, TxnOp, TxnOutcome};

/// Entries trimmed by one write at most. One is enough in steady state;
/// the slack lets a history shrink after `history_keep` is lowered
/// without making any single transaction large.
pub const TRIM_PER_WRITE: u64 = 4;

/// Digits of a zero-padded sequence number (`u64::MAX` has 20).
const SEQ_DIGITS: usize = 20;

/// Entries per reader page: the last two digits of the key vary.
const BLOCK: u64 = 100;

/// Upper bound on any one text field of an entry, in bytes. Webhook
/// fields are already refused past their own (smaller) grammar bounds;
/// this catches text tagbridge composes itself (failure reasons built from
/// check output, an operator's `--reason`) and entries migrated from the
/// old layout.
pub const MAX_FIELD_BYTES: usize = 1024;

/// Entries in one migration transaction: Consul's `/v1/txn` takes at most
/// 64 operations, two of which guard the chunk.
const MIGRATE_CHUNK: usize = 60;

/// Bytes of entries (base64, as sent) in one migration transaction, well
/// under Consul's 512 KiB request limit.
const MIGRATE_BYTES: usize = 256 * 1024;

/// Where one service's history lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKeys {
    /// `<state_prefix>/history/<svc>/`: every entry and the head.
    pub dir: String,
    /// `<dir>head`.
    pub head: String,
    /// `<state_prefix>/history/<svc>`: the old single-value layout.
    pub legacy: String,
}

impl HistoryKeys {
    /// `base` is `<state_prefix>/history/<svc>` (no trailing slash).
    pub fn new(base: &str) -> Self {
        let dir = format!("{base}/");
        HistoryKeys {
            head: format!("{dir}head"),
            legacy: base.to_string(),
            dir,
        }
    }

    /// The key of entry `seq`.
    pub fn entry(&self, seq: u64) -> String {
        format!("{}{seq:0width$}", self.dir, width = SEQ_DIGITS)
    }

    /// The key prefix shared by the 100 entries of `seq`'s block.
    fn block_prefix(&self, seq: u64) -> String {
        format!(
            "{}{:0width$}",
            self.dir,
            seq / BLOCK,
            width = SEQ_DIGITS - 2
        )
    }
}

/// The head record: entries `oldest..=seq` may exist (0 = none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub oldest: u64,
}

/// The head as read, with the index to check-and-set against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadRead {
    pub head: Head,
    /// ModifyIndex of the head key; 0 when it does not exist.
    pub index: u64,
    /// The old single-value history still exists: migrate before writing.
    pub legacy: Option<u64>,
}

/// Decode a head value; absent or empty is an empty history.
///
/// # Errors
///
/// The value is not a head record.
pub fn decode_head(value: Option<&[u8]>) -> Result<Head, serde_json::Error> {
    match value {
        None | Some([]) => Ok(Head::default()),
        Some(v) => serde_json::from_slice(v),
    }
}

/// Read the head, and whether the old layout still needs migrating.
///
/// # Errors
///
/// Consul failures, an unreadable head.
pub async fn read_head(consul: &Consul, keys: &HistoryKeys) -> Result<HeadRead, StoreError> {
    let (head, legacy) = tokio::try_join!(consul.kv_get(&keys.head), consul.kv_get(&keys.legacy))?;
    let value = head.value.as_ref();
    Ok(HeadRead {
        head: decode_head(value.map(|kv| kv.value.as_slice()))
            .map_err(|e| corrupt(&keys.head, e))?,
        index: value.map_or(0, |kv| kv.modify_index),
        legacy: legacy.value.as_ref().map(|kv| kv.modify_index),
    })
}

/// Cut every text field of `entry` to [`MAX_FIELD_BYTES`] (at a character
/// boundary), so no entry can grow past a few KiB.
pub fn bounded(mut entry: HistoryEntry) -> HistoryEntry {
    let cut = |s: &mut String| {
        if s.len() > MAX_FIELD_BYTES {
            let mut end = MAX_FIELD_BYTES - '…'.len_utf8();
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
    };
    cut(&mut entry.at);
    cut(&mut entry.tag);
    for s in [
        &mut entry.previous,
        &mut entry.digest,
        &mut entry.source,
        &mut entry.delivery,
        &mut entry.actor,
        &mut entry.detail,
    ]
    .into_iter()
    .flatten()
    {
        cut(s);
    }
    entry
}

/// An entry as stored: JSON, every field cut to [`MAX_FIELD_BYTES`].
fn entry_value(entry: &HistoryEntry) -> Vec<u8> {
    // Plain data: serialising it cannot fail.
    let value = serde_json::to_vec(entry).unwrap_or_default();
    // JSON never shortens a string, so an entry this short has no field
    // over the bound and needs no copy to cut (the common case).
    if value.len() <= MAX_FIELD_BYTES {
        return value;
    }
    serde_json::to_vec(&bounded(entry.clone())).unwrap_or_default()
}

/// The operations that append `entry` after `read` (and trim), for the
/// caller's transaction, and the head they leave.
///
/// The head is checked-and-set, so two writers that read the same head
/// cannot both commit; the entry itself is a plain set (a key left over
/// above the head, e.g. by an interrupted migration, is overwritten).
pub fn append_ops(
    keys: &HistoryKeys,
    read: &HeadRead,
    entry: &HistoryEntry,
    keep: usize,
) -> (Vec<TxnOp>, Head) {
    let seq = read.head.seq + 1;
    let keep = keep.max(1) as u64;
    let oldest = read.head.oldest.max(1);
    // Entries below `floor` are beyond `history_keep`.
    let floor = (seq + 1).saturating_sub(keep).max(1);
    let trim_to = floor.min(oldest + TRIM_PER_WRITE).max(oldest);
    let head = Head {
        seq,
        oldest: trim_to,
    };
    let value = entry_value(entry);
    let mut ops = Vec::with_capacity(2 + TRIM_PER_WRITE as usize);
    ops.push(TxnOp::Cas {
        key: keys.head.clone(),
        value: serde_json::to_vec(&head).unwrap_or_default(),
        index: read.index,
    });
    ops.push(TxnOp::Set {
        key: keys.entry(seq),
        value,
    });
    for old in oldest..trim_to {
        ops.push(TxnOp::Delete {
            key: keys.entry(old),
        });
    }
    if read.index == 0 {
        // Creating the head: an old single-value history that appeared
        // since (an older replica) must be migrated first, not orphaned.
        ops.push(TxnOp::CheckNotExists {
            key: keys.legacy.clone(),
        });
    }
    (ops, head)
}

/// Move the old single-value history, if there is one, to one key per
/// entry. Idempotent and safe against concurrent writers: entries are
/// written first (plain sets above any head, in chunks Consul accepts),
/// then one transaction creates the head and deletes the old value only
/// if neither changed meanwhile. An interrupted migration is simply done
/// again by the next writer; readers use the old value until the head
/// exists.
///
/// # Errors
///
/// Consul failures, an unreadable old value, endless interference.
pub async fn migrate(
    consul: &Consul,
    keys: &HistoryKeys,
    keep: usize,
) -> Result<HeadRead, StoreError> {
    for _ in 0..4 {
        let read = read_head(consul, keys).await?;
        if read.index != 0 || read.legacy.is_none() {
            return Ok(read);
        }
        let old = consul.kv_get(&keys.legacy).await?;
        let Some(kv) = old.value else { continue };
        let mut entries =
            decode_history(Some(kv.value.as_slice())).map_err(|e| corrupt(&keys.legacy, e))?;
        entries.truncate(keep.max(1));
        // Newest first in the old value: the oldest kept gets seq 1.
        entries.reverse();
        let n = entries.len() as u64;
        // Every chunk is guarded by "no head yet, old value unchanged": a
        // migrator that stalled while another finished (and writers went
        // on appending) must not overwrite newer entries with old ones.
        let guard = [
            TxnOp::CheckNotExists {
                key: keys.head.clone(),
            },
            TxnOp::CheckIndex {
                key: keys.legacy.clone(),
                index: kv.modify_index,
            },
        ];
        let mut ops: Vec<TxnOp> = guard.to_vec();
        let mut bytes = 0usize;
        let mut raced = false;
        for (i, e) in entries.iter().enumerate() {
            let value = entry_value(e);
            // Base64 in the request: 4/3 of the value, plus the key.
            let cost = value.len() * 4 / 3 + 96;
            if ops.len() > guard.len()
                && (ops.len() >= MIGRATE_CHUNK + guard.len() || bytes + cost > MIGRATE_BYTES)
            {
                if let TxnOutcome::Conflict(_) = consul.txn(&ops).await? {
                    raced = true;
                    break;
                }
                ops = guard.to_vec();
                bytes = 0;
            }
            ops.push(TxnOp::Set {
                key: keys.entry(i as u64 + 1),
                value,
            });
            bytes += cost;
        }
        if !raced && ops.len() > guard.len() {
            raced = matches!(consul.txn(&ops).await?, TxnOutcome::Conflict(_));
        }
        if raced {
            // Someone else migrated, or the old value changed: read again.
            continue;
        }
        let head = Head { seq: n, oldest: 1 };
        let ops = [
            TxnOp::Cas {
                key: keys.head.clone(),
                value: serde_json::to_vec(&head).unwrap_or_default(),
                index: 0,
            },
            TxnOp::DeleteCas {
                key: keys.legacy.clone(),
                index: kv.modify_index,
            },
        ];
        if let TxnOutcome::Committed(_) = consul.txn(&ops).await? {
            tracing::info!(key = %keys.legacy, entries = n, "history migrated to one key per entry");
        }
    }
    Err(StoreError::Contention(keys.legacy.clone()))
}

/// The newest `limit` entries, newest first, in either layout.
///
/// # Errors
///
/// Consul failures, unreadable records.
pub async fn recent(
    consul: &Consul,
    keys: &HistoryKeys,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut read = read_head(consul, keys).await?;
    if read.index == 0 && read.legacy.is_none() {
        // The two reads are not atomic: a migration that committed between
        // them leaves neither in view. Look at the head once more.
        read = read_head(consul, keys).await?;
    }
    if read.index == 0 {
        if read.legacy.is_none() {
            return Ok(Vec::new());
        }
        let old = consul.kv_get(&keys.legacy).await?;
        let mut entries = decode_history(old.value.as_ref().map(|kv| kv.value.as_slice()))
            .map_err(|e| corrupt(&keys.legacy, e))?;
        entries.truncate(limit);
        return Ok(entries);
    }
    let Head {
        seq: newest,
        oldest,
    } = read.head;
    let oldest = oldest.max(1);
    let mut out = Vec::new();
    let mut block = newest / BLOCK;
    // Bounded by the number of blocks between the head's two ends.
    while out.len() < limit && newest >= oldest && block >= oldest / BLOCK {
        let page = consul
            .kv_list(&keys.block_prefix(block * BLOCK), None)
            .await?;
        let mut found: Vec<(u64, HistoryEntry)> = Vec::with_capacity(page.value.len());
        for kv in page.value {
            let Some(seq) = kv
                .key
                .strip_prefix(&keys.dir)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if seq < oldest || seq > newest {
                continue;
            }
            let entry: HistoryEntry =
                serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
            found.push((seq, entry));
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        out.extend(found.into_iter().map(|(_, e)| e).take(limit - out.len()));
        if block == 0 {
            break;
        }
        block -= 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Event;

    fn entry(tag: &str) -> HistoryEntry {
        HistoryEntry {
            at: "2026-11-30T00:00:00Z".into(),
            event: Event::Received,
            tag: tag.into(),
            previous: None,
            digest: None,
            source: None,
            delivery: None,
            actor: None,
            detail: None,
        }
    }

    #[test]
    fn keys_sort_and_page_by_block() {
        let k = HistoryKeys::new("tagbridge/history/web");
        assert_eq!(k.entry(42), "tagbridge/history/web/00000000000000000042");
        assert_eq!(k.head, "tagbridge/history/web/head");
        assert_eq!(k.legacy, "tagbridge/history/web");
        assert!(k.entry(199).starts_with(&k.block_prefix(150)));
        assert!(!k.entry(200).starts_with(&k.block_prefix(150)));
        assert!(k.entry(9) < k.entry(10));
    }

    #[test]
    fn append_trims_a_bounded_number() {
        let k = HistoryKeys::new("p/history/s");
        // Steady state at keep = 3: one in, one out.
        let read = HeadRead {
            head: Head { seq: 10, oldest: 8 },
            index: 7,
            legacy: None,
        };
        let (ops, head) = append_ops(&k, &read, &entry("t"), 3);
        assert_eq!(head, Head { seq: 11, oldest: 9 });
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[2], TxnOp::Delete { key } if key == &k.entry(8)));
        // keep lowered from 1000 to 10: the excess goes a few at a time.
        let read = HeadRead {
            head: Head {
                seq: 1000,
                oldest: 1,
            },
            index: 7,
            legacy: None,
        };
        let (ops, head) = append_ops(&k, &read, &entry("t"), 10);
        assert_eq!(ops.len(), 2 + TRIM_PER_WRITE as usize);
        assert_eq!(head.oldest, 1 + TRIM_PER_WRITE);
        // The first write creates the head (index 0 = only if absent), and
        // only while no old single-value history exists.
        let (ops, head) = append_ops(&k, &HeadRead::default(), &entry("t"), 10);
        assert_eq!(head, Head { seq: 1, oldest: 1 });
        assert!(matches!(&ops[0], TxnOp::Cas { index: 0, .. }));
        assert!(matches!(&ops[2], TxnOp::CheckNotExists { key } if key == &k.legacy));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn a_write_costs_the_same_at_any_keep() {
        let k = HistoryKeys::new("p/history/s");
        let read = HeadRead {
            head: Head {
                seq: 50_000,
                oldest: 40_001,
            },
            index: 9,
            legacy: None,
        };
        let small = append_ops(&k, &read, &entry("t"), 10).0.len();
        let large = append_ops(&k, &read, &entry("t"), 10_000).0.len();
        assert!(small <= 2 + TRIM_PER_WRITE as usize);
        assert!(large <= 2 + TRIM_PER_WRITE as usize);
    }

    #[test]
    fn worst_case_entry_fits_a_transaction_many_times_over() {
        // Every field at its bound, in characters JSON escapes six-fold.
        let wide = "\u{1}".repeat(MAX_FIELD_BYTES);
        let mut e = entry(&wide);
        e.at = wide.clone();
        for f in [
            &mut e.previous,
            &mut e.digest,
            &mut e.source,
            &mut e.delivery,
            &mut e.actor,
            &mut e.detail,
        ] {
            *f = Some(wide.clone());
        }
        let json = serde_json::to_vec(&bounded(e)).unwrap();
        // Consul takes 512 KiB per transaction (values base64-encoded).
        assert!(json.len() <= 64 * 1024, "{}", json.len());
    }

    #[test]
    fn stored_value_is_the_bounded_entry() {
        let small = entry("t");
        let mut at_bound = entry("t");
        at_bound.detail = Some("y".repeat(MAX_FIELD_BYTES));
        let mut over = entry("t");
        over.detail = Some("y".repeat(MAX_FIELD_BYTES + 1));
        for e in [small, at_bound, over] {
            let want = serde_json::to_vec(&bounded(e.clone())).unwrap();
            assert_eq!(entry_value(&e), want);
        }
    }

    #[test]
    fn entries_are_bounded() {
        let mut e = entry("t");
        e.actor = Some("é".repeat(100_000));
        e.detail = Some("x".repeat(5_000));
        let b = bounded(e);
        assert!(b.actor.as_ref().unwrap().len() <= MAX_FIELD_BYTES);
        assert!(b.detail.as_ref().unwrap().ends_with('…'));
        let json = serde_json::to_vec(&b).unwrap();
        assert!(json.len() < 8 * MAX_FIELD_BYTES, "{}", json.len());
    }
}

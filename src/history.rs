//! The records tagbridge keeps in Consul KV, and the bounded history.
//!
//! Operators asked for "a record of what ran when": every change to a
//! service's tag, and every rollout outcome, is a history entry (one KV key
//! each, laid out by `history_store`). The shapes here are the contract's
//! (section 5); readers tolerate unknown fields so older and newer
//! tagbridge versions can share a cluster.

use serde::{Deserialize, Serialize};

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Received,
    Deployed,
    RolledBack,
    Failed,
    Manual,
    Pinned,
    Unpinned,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Received => "received",
            Event::Deployed => "deployed",
            Event::RolledBack => "rolled_back",
            Event::Failed => "failed",
            Event::Manual => "manual",
            Event::Pinned => "pinned",
            Event::Unpinned => "unpinned",
        }
    }
}

/// One entry of `<state_prefix>/history/<service>/<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    pub event: Event,
    pub tag: String,
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub delivery: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// `<state_prefix>/desired/<service>`: what the controller should deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub tag: String,
    #[serde(default)]
    pub digest: Option<String>,
    /// Grows by one with every change, so the controller can tell a new
    /// desire from a re-read of the same one.
    pub seq: u64,
    pub at: String,
}

/// `<state_prefix>/deployed/<service>`: what the controller last did, and
/// while a rollout runs, everything a new leader needs to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The tag running once `outcome` is final (after a rollback: the
    /// restored one); while in progress, the tag being deployed.
    pub tag: String,
    #[serde(default)]
    pub digest: Option<String>,
    /// The desired `seq` this record answers.
    pub seq: u64,
    #[serde(default)]
    pub job_version: Option<u64>,
    #[serde(default)]
    pub deployment: Option<String>,
    pub at: String,
    /// `in_progress`, `rolling_back`, `deployed`, `rolled_back`, `failed`.
    pub outcome: String,
    /// The tag that ran before this rollout (the rollback target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The job version before this rollout (the revert target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_version: Option<u64>,
    /// Why a rollout failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Deployed {
    pub const IN_PROGRESS: &'static str = "in_progress";
    pub const ROLLING_BACK: &'static str = "rolling_back";
    pub const DEPLOYED: &'static str = "deployed";
    pub const ROLLED_BACK: &'static str = "rolled_back";
    pub const FAILED: &'static str = "failed";

    /// A rollout or rollback is under way: the controller owns the key.
    pub fn is_busy(&self) -> bool {
        self.outcome == Self::IN_PROGRESS || self.outcome == Self::ROLLING_BACK
    }
}

/// Decode the old single-value history (a JSON array, newest first); an
/// absent key is an empty history.
///
/// # Errors
///
/// The value is not a JSON array of entries (someone wrote it by hand).
pub fn decode_history(value: Option<&[u8]>) -> Result<Vec<HistoryEntry>, serde_json::Error> {
    match value {
        None => Ok(Vec::new()),
        Some([]) => Ok(Vec::new()),
        Some(v) => serde_json::from_slice(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str) -> HistoryEntry {
        HistoryEntry {
            at: "2026-11-25T00:00:00Z".into(),
            event: Event::Received,
            tag: tag.into(),
            previous: None,
            digest: None,
            source: Some("dockerhub".into()),
            delivery: None,
            actor: None,
            detail: None,
        }
    }

    #[test]
    fn wire_shape_matches_contract() {
        let json = serde_json::to_value(entry("1.0")).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["actor", "at", "delivery", "detail", "digest", "event", "previous", "source", "tag"]
        );
        assert_eq!(json["event"], "received");
        let back: Vec<HistoryEntry> = decode_history(Some(
            br#"[{"at":"x","event":"rolled_back","tag":"t","extra":1}]"#,
        ))
        .unwrap();
        assert_eq!(back[0].event, Event::RolledBack);
    }
}

//! The records tagbridge keeps in Consul KV, and the bounded history.
//!
//! Operators asked for "a record of what ran when": every change to a
//! service's tag, and every rollout outcome, is a history entry (one KV key
//! each, laid out by `store::history`). The shapes here are the contract's
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
    /// The tag running once `state` is final (after a rollback: the
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
    /// Where the rollout stands.
    #[serde(rename = "outcome")]
    pub state: RolloutState,
    /// The tag that ran before this rollout (the rollback target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The digest key's value when this rollout started, if it named the
    /// digest of `previous`: a rollback restores it with the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    /// The job version before this rollout (the revert target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_version: Option<u64>,
    /// Why a rollout failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The job `job_version`, `deployment` and `prior_version` belong to,
    /// when the rollout names several (absent: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The jobs this rollout already rolled, in order: a rollback reverts
    /// them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<JobDone>,
}

/// The field of a busy deployed record that holds when its rollout
/// started (Unix ms). Readers of [`Deployed`] ignore it.
pub const STARTED: &str = "started";

/// One job a multi-job rollout already rolled (and gated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDone {
    pub job: String,
    /// Its version before the rollout (the revert target).
    pub prior_version: u64,
    /// The version the rollout made.
    pub job_version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

impl Deployed {
    /// A rollout or rollback is under way: the controller owns the key.
    pub fn is_busy(&self) -> bool {
        self.state.is_busy()
    }
}

/// The pin record: present = webhooks are recorded but not deployed; the
/// controller deploys only `tag` (a rollback's target) while it exists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PinRecord {
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The `state` of a deployed record (stored as `outcome`): under way (`in_progress`,
/// `rolling_back`) or final (`deployed`, `rolled_back`, `failed`). Stored
/// as its snake_case name, the spelling records have always had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    InProgress,
    RollingBack,
    Deployed,
    RolledBack,
    Failed,
}

impl RolloutState {
    /// A rollout or rollback is under way: the controller owns the key.
    pub fn is_busy(self) -> bool {
        matches!(self, RolloutState::InProgress | RolloutState::RollingBack)
    }

    /// The stored spelling, for operators' output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::InProgress => "in_progress",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Deployed => "deployed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

    /// Deployed records written while `outcome` was a plain string still
    /// parse, and are written back byte for byte.
    #[test]
    fn old_deployed_records_round_trip() {
        let cases = [
            (
                r#"{"tag":"1.1","digest":null,"seq":3,"job_version":7,"deployment":"d1","at":"2026-11-25T00:00:00Z","outcome":"in_progress","previous":"1.0","prior_version":6}"#,
                RolloutState::InProgress,
            ),
            (
                r#"{"tag":"1.1","digest":null,"seq":3,"job_version":8,"deployment":"d1","at":"x","outcome":"rolling_back","previous":"1.0","prior_version":6,"detail":"unhealthy"}"#,
                RolloutState::RollingBack,
            ),
            (
                r#"{"tag":"1.1","digest":"sha256:ab","seq":3,"job_version":7,"deployment":"d1","at":"x","outcome":"deployed","previous":"1.0"}"#,
                RolloutState::Deployed,
            ),
            (
                r#"{"tag":"1.0","digest":null,"seq":3,"job_version":9,"deployment":null,"at":"x","outcome":"rolled_back","previous":"1.1","prior_version":6,"detail":"unhealthy"}"#,
                RolloutState::RolledBack,
            ),
            (
                r#"{"tag":"1.1","digest":null,"seq":3,"job_version":null,"deployment":null,"at":"x","outcome":"failed","detail":"job not found"}"#,
                RolloutState::Failed,
            ),
        ];
        for (old, state) in cases {
            let rec: Deployed = serde_json::from_str(old).expect(old);
            assert_eq!(rec.state, state);
            assert_eq!(rec.is_busy(), state.is_busy());
            assert_eq!(serde_json::to_string(&rec).unwrap(), old);
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        // A busy record carries `started`, which readers ignore.
        let busy: Deployed = serde_json::from_str(
            r#"{"tag":"1.1","seq":3,"at":"x","outcome":"in_progress","started":1764460800000}"#,
        )
        .unwrap();
        assert!(busy.is_busy());
        // The set is closed: an outcome no tagbridge writes is refused,
        // naming the field's allowed values.
        let err =
            serde_json::from_str::<Deployed>(r#"{"tag":"t","seq":1,"at":"x","outcome":"done"}"#)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("unknown variant `done`") && err.contains("`rolled_back`"),
            "{err}"
        );
    }
}

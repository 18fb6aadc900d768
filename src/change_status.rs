//! What became of one change (a desired `seq`): the answer a CI pipeline
//! waits for after its webhook, at `GET /hooks/<secret>/rollouts/<seq>`.
//!
//! The webhook is acknowledged with 202 as soon as the change is durable;
//! the rollout takes minutes. The caller learns the outcome from the
//! deployed record, which the controller writes when a rollout starts and
//! when it ends. A change that a newer one overtook (tags that arrive
//! mid-rollout coalesce into the newest) never gets an outcome of its own:
//! it is answered as superseded, naming the seq that replaced it.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::clients::consul::{BlockingIndex, Consul};
use crate::store::read::read_deployed_blocking;
use crate::store::{read_desired, Deployed, Desired, Keys, RolloutState, StoreError};

/// Where one seq stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeqState {
    /// Durable, not yet picked up by the controller.
    Queued,
    /// Being rolled out, or rolled back.
    InProgress,
    Deployed,
    RolledBack,
    Failed,
    /// A newer change replaced it before or after it ran; see `by`.
    Superseded,
}

impl SeqState {
    /// Nothing about this seq will change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, SeqState::Queued | SeqState::InProgress)
    }
}

/// The answer for one seq: its state, and what the deployed record says
/// about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeqStatus {
    pub seq: u64,
    #[serde(rename = "outcome")]
    pub state: SeqState,
    /// The tag this seq asked for, while it is the newest change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// After a rollback: the tag running again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// Why it was rolled back or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_version: Option<u64>,
    /// When the change was made durable, and when the deployed record
    /// last changed (its outcome's time once final).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// The seq that replaced it (`superseded` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<u64>,
}

/// Where `seq` stands, from the two records; `None` when no such change
/// was made (a seq above the desired record's).
pub fn status_of(
    seq: u64,
    desired: Option<&Desired>,
    deployed: Option<&Deployed>,
) -> Option<SeqStatus> {
    let newest = desired
        .map_or(0, |d| d.seq)
        .max(deployed.map_or(0, |d| d.seq));
    if seq == 0 || seq > newest {
        return None;
    }
    let mut s = SeqStatus {
        seq,
        state: SeqState::Queued,
        tag: desired.filter(|d| d.seq == seq).map(|d| d.tag.clone()),
        running: None,
        reason: None,
        job_version: None,
        requested_at: desired.filter(|d| d.seq == seq).map(|d| d.at.clone()),
        updated_at: None,
        by: None,
    };
    match deployed {
        Some(d) if d.seq == seq => {
            s.state = match d.state {
                RolloutState::InProgress | RolloutState::RollingBack => SeqState::InProgress,
                RolloutState::Deployed => SeqState::Deployed,
                RolloutState::RolledBack => SeqState::RolledBack,
                RolloutState::Failed => SeqState::Failed,
            };
            if d.state == RolloutState::RolledBack {
                s.running = Some(d.tag.clone());
            } else {
                s.tag.get_or_insert_with(|| d.tag.clone());
            }
            s.reason = d.detail.clone();
            s.job_version = d.job_version;
            s.updated_at = Some(d.at.clone());
        }
        Some(d) if d.seq > seq => {
            s.state = SeqState::Superseded;
            s.by = Some(d.seq);
        }
        _ if desired.is_some_and(|d| d.seq > seq) => {
            s.state = SeqState::Superseded;
            s.by = desired.map(|d| d.seq);
        }
        _ => {}
    }
    Some(s)
}

/// The seq of the desired record when it names `tag`: a re-sent webhook
/// for the tag being (or last) rolled out waits on that change.
///
/// # Errors
///
/// Consul unreachable, or a record that is not what tagbridge writes.
pub async fn desired_seq(
    consul: &Consul,
    keys: &Keys,
    tag: &str,
) -> Result<Option<u64>, StoreError> {
    let desired = read_desired(consul, keys).await?;
    Ok(desired.filter(|d| d.tag == tag).map(|d| d.seq))
}

/// Where `seq` stands now, or, with a `wait`, once it is final or the wait
/// ends, whichever comes first. The wait follows the deployed record with
/// blocking queries (the controller writes it at every step), so a final
/// outcome is answered as soon as Consul has it.
///
/// # Errors
///
/// Consul unreachable, or a record that is not what tagbridge writes.
pub async fn wait_for(
    consul: &Consul,
    keys: &Keys,
    seq: u64,
    wait: Duration,
) -> Result<Option<SeqStatus>, StoreError> {
    let deadline = crate::clock::deadline_in(wait);
    let mut index = BlockingIndex::default();
    loop {
        let desired = read_desired(consul, keys).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let (deployed, read_index) =
            read_deployed_blocking(consul, keys, index.current(), left).await?;
        index.observe(read_index);
        let status = status_of(seq, desired.as_ref(), deployed.as_ref());
        let done = status.as_ref().is_none_or(|s| s.state.is_final());
        if done || Instant::now() >= deadline {
            return Ok(status);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn desired(seq: u64, tag: &str) -> Desired {
        Desired {
            tag: tag.into(),
            digest: None,
            seq,
            at: "2026-11-30T00:00:00Z".into(),
        }
    }

    fn deployed(seq: u64, tag: &str, outcome: RolloutState) -> Deployed {
        Deployed {
            tag: tag.into(),
            digest: None,
            seq,
            job_version: Some(4),
            deployment: None,
            at: "2026-11-30T00:01:00Z".into(),
            state: outcome,
            previous: Some("1.0.0".into()),
            previous_digest: None,
            prior_version: Some(3),
            detail: (outcome == RolloutState::RolledBack).then(|| "healthz failing".into()),
            job: None,
            done: Vec::new(),
        }
    }

    #[test]
    fn the_newest_seq_follows_the_deployed_record() {
        let want = desired(5, "1.1.0");
        let s = status_of(
            5,
            Some(&want),
            Some(&deployed(4, "1.0.0", RolloutState::Deployed)),
        )
        .unwrap();
        assert_eq!(s.state, SeqState::Queued);
        assert_eq!(s.tag.as_deref(), Some("1.1.0"));
        let s = status_of(
            5,
            Some(&want),
            Some(&deployed(5, "1.1.0", RolloutState::InProgress)),
        )
        .unwrap();
        assert_eq!(s.state, SeqState::InProgress);
        let s = status_of(
            5,
            Some(&want),
            Some(&deployed(5, "1.1.0", RolloutState::Deployed)),
        )
        .unwrap();
        assert_eq!((s.state, s.job_version), (SeqState::Deployed, Some(4)));
        // Rolled back: the record names the restored tag; the seq's own
        // tag stays the one asked for.
        let s = status_of(
            5,
            Some(&want),
            Some(&deployed(5, "1.0.0", RolloutState::RolledBack)),
        )
        .unwrap();
        assert_eq!(s.state, SeqState::RolledBack);
        assert_eq!(s.tag.as_deref(), Some("1.1.0"));
        assert_eq!(s.running.as_deref(), Some("1.0.0"));
        assert_eq!(s.reason.as_deref(), Some("healthz failing"));
        assert!(s.state.is_final());
    }

    #[test]
    fn an_overtaken_seq_is_superseded_and_an_unknown_one_is_none() {
        let s = status_of(
            4,
            Some(&desired(6, "1.2.0")),
            Some(&deployed(5, "1.1.0", RolloutState::InProgress)),
        )
        .unwrap();
        assert_eq!((s.state, s.by), (SeqState::Superseded, Some(5)));
        let s = status_of(
            5,
            Some(&desired(6, "1.2.0")),
            Some(&deployed(4, "1.0.0", RolloutState::Deployed)),
        )
        .unwrap();
        assert_eq!((s.state, s.by), (SeqState::Superseded, Some(6)));
        assert!(status_of(7, Some(&desired(6, "1.2.0")), None).is_none());
        assert!(status_of(0, Some(&desired(6, "1.2.0")), None).is_none());
        assert!(status_of(1, None, None).is_none());
    }
}

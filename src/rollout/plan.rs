//! The rollout's decisions: pure functions of what was observed, which
//! the sequence (`sequence`) calls in order. Which tag a rollback of the
//! rollout starting now restores, and with which digest; the record a
//! rollout starts with (or fails with before it starts); which job
//! version this attempt already registered (adopted, never registered
//! twice); the digest meta a register sets.

use super::*;

/// The tag a rollback of a rollout starting now goes back to: what the
/// last rollout left running. After a failed one the key may name a tag
/// that never ran, so the job's own meta (the version a revert restores)
/// comes first. Then what the key held before this tag arrived (its
/// `received` entry), then the key itself unless it already names the tag
/// being deployed. `None` only when none of them names another tag: the
/// key did not exist, and a rollback deletes it again.
pub fn plan_previous(
    deploying: &str,
    prev: Option<&Deployed>,
    meta_now: Option<&str>,
    received_previous: Option<&str>,
    key_now: Option<&str>,
) -> Option<String> {
    let meta_now = meta_now.filter(|m| !m.is_empty()).map(str::to_string);
    match prev {
        Some(p) if p.state == RolloutState::Failed => meta_now.or(p.previous.clone()),
        Some(p) => Some(p.tag.clone()).or(meta_now),
        None => meta_now,
    }
    .filter(|t| !t.is_empty())
    .or_else(|| received_previous.map(str::to_string))
    .filter(|t| !t.is_empty())
    .or_else(|| key_now.filter(|k| *k != deploying).map(str::to_string))
    .filter(|t| !t.is_empty())
}

/// I3: the job version this rollout attempt already registered, if any:
/// the newest version above `prior` (the version the attempt started
/// from) whose meta names `tag`. A dead leader's register, or ours whose
/// answer was lost, is adopted instead of registered again.
pub fn adoptable(versions: &[Job], meta_key: &str, tag: &str, prior: u64) -> Option<u64> {
    versions
        .iter()
        .filter(|j| j.version > prior && j.meta(meta_key) == Some(tag))
        .map(|j| j.version)
        .max()
}

/// Job meta `<meta_key>_digest`: the digest of the tag in `<meta_key>`,
/// so a jobspec can pull `image@${NOMAD_META_<meta_key>_digest}`;
/// removed when unknown (it must never name another tag's digest).
pub(super) fn set_digest_meta(job: &mut Job, meta_key: &str, digest: Option<&str>) {
    let key = format!("{meta_key}_digest");
    match digest {
        Some(d) => job.set_meta(&key, d),
        None => {
            if let Some(meta) = job.raw.get_mut("Meta").and_then(|m| m.as_object_mut()) {
                meta.remove(&key);
            }
        }
    }
}

/// The digest a rollback restores with `previous`: the digest key's, or
/// else the job's `<meta_key>_digest`, each only when it sits beside
/// `previous` itself (never another tag's digest).
pub(super) fn previous_digest(
    previous: Option<&str>,
    (key_now, digest_now): (Option<&str>, Option<String>),
    job: &Job,
    meta_key: &str,
) -> Option<String> {
    let previous = previous?;
    let from_key = digest_now.filter(|_| key_now == Some(previous));
    let from_job = || {
        (job.meta(meta_key) == Some(previous))
            .then(|| job.meta(&format!("{meta_key}_digest")))
            .flatten()
            .filter(|d| !d.is_empty())
            .map(str::to_string)
    };
    from_key.filter(|d| !d.is_empty()).or_else(from_job)
}

/// The record a rollout of `desired` starts with, committed (with the key
/// moved to the tag) before Nomad is touched: in progress on the first
/// job, which stood at `prior_version`; a rollback restores `previous`
/// with `previous_digest`.
pub(super) fn in_progress(
    desired: &Desired,
    previous: Option<String>,
    previous_digest: Option<String>,
    prior_version: u64,
    at: String,
) -> Deployed {
    Deployed {
        tag: desired.tag.clone(),
        digest: desired.digest.clone(),
        seq: desired.seq,
        job_version: None,
        deployment: None,
        at,
        state: RolloutState::InProgress,
        previous,
        previous_digest,
        prior_version: Some(prior_version),
        detail: None,
        job: None,
        done: Vec::new(),
    }
}

/// The record of a rollout of `desired` that could not start (`failure`:
/// a job of the rollout is missing; Nomad was not touched, the key not
/// moved): failed at `desired`'s seq, still naming the tag the last
/// rollout left (`prev`'s).
pub(super) fn failed_before_start(
    desired: &Desired,
    prev: Option<&Deployed>,
    failure: &Failure,
    at: String,
) -> Deployed {
    Deployed {
        tag: prev.map(|p| p.tag.clone()).unwrap_or_default(),
        digest: None,
        seq: desired.seq,
        job_version: None,
        deployment: None,
        at,
        state: RolloutState::Failed,
        previous: prev.map(|p| p.tag.clone()),
        previous_digest: None,
        prior_version: None,
        detail: Some(failure.to_string()),
        job: None,
        done: Vec::new(),
    }
}

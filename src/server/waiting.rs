//! Callers that wait for a rollout's outcome: `?wait=<duration>` on the
//! webhook, and the status path `GET /hooks/<secret>/rollouts/<seq>`.
//!
//! A CI pipeline that pushed an image wants to fail when its deploy is
//! rolled back. The webhook answers 202 as soon as the change is durable;
//! with `?wait=` the answer is held until the outcome is final or the wait
//! ends (capped at the service's rollout timeout). A waiting request is a
//! request in flight, so the idle and first-request deadlines (meant for
//! clients that never speak) do not cut it.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::change_status::{wait_for, SeqState, SeqStatus};
use crate::clients::consul::Consul;
use crate::config::parse_duration;
use crate::store::Keys;
use crate::store::StoreError;

/// Requests that may wait at once, across services. Beyond it, a request
/// is answered at once with where the rollout stands (202 while it runs).
// SECURITY: each waiter holds one blocking Consul request, and the Consul
// agent serves at most 200 connections per client by default
// (`http_max_conns_per_client`). Only holders of a service's secret can
// wait, but a leaked URL or a busy CI farm must not take the connections
// ingest and the leader's session renewals need.
pub const MAX_WAITERS: usize = 32;

/// The waiting requests' shared bounds.
pub struct Waits {
    slots: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            slots: Arc::new(Semaphore::new(MAX_WAITERS)),
            stop: CancellationToken::new(),
        }
    }
}

impl Waits {
    /// Shutdown or reload began: every waiting request answers now with
    /// where its rollout stands, so it does not hold the drain.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Where `seq` stands, after waiting up to `wait` for it to be final.
    ///
    /// # Errors
    ///
    /// Consul unreachable or a record tagbridge did not write.
    pub async fn seq_status(
        &self,
        consul: &Consul,
        keys: &Keys,
        seq: u64,
        wait: Duration,
    ) -> Result<Option<SeqStatus>, StoreError> {
        let slot = if wait.is_zero() || self.stop.is_cancelled() {
            None
        } else {
            self.slots.clone().try_acquire_owned().ok()
        };
        let wait = if slot.is_some() { wait } else { Duration::ZERO };
        tokio::select! {
            r = wait_for(consul, keys, seq, wait) => r,
            () = self.stop.cancelled() => wait_for(consul, keys, seq, Duration::ZERO).await,
        }
    }
}

/// `wait=<duration>` from a query string (other parameters are ignored):
/// zero when absent, at most `cap`.
///
/// # Errors
///
/// A `wait` that is not a duration, as a one-line reason.
pub fn wait_param(query: Option<&str>, cap: Duration) -> Result<Duration, String> {
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
    else {
        return Ok(Duration::ZERO);
    };
    let d = parse_duration(value).map_err(|e| format!("wait: {e}"))?;
    Ok(d.min(cap))
}

/// The HTTP status of a seq's state: 200 deployed; 502 rolled back or
/// failed (the deploy did not happen: a CI step with `curl --fail` fails);
/// 202 still queued or running; 409 superseded by a newer change.
pub fn status_code(state: SeqState) -> StatusCode {
    match state {
        SeqState::Deployed => StatusCode::OK,
        SeqState::RolledBack | SeqState::Failed => StatusCode::BAD_GATEWAY,
        SeqState::Queued | SeqState::InProgress => StatusCode::ACCEPTED,
        SeqState::Superseded => StatusCode::CONFLICT,
    }
}

/// The status path's answer body.
#[derive(Serialize)]
pub struct StatusBody<'a> {
    pub service: &'a str,
    #[serde(flatten)]
    pub status: &'a SeqStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_read_from_the_query_and_capped() {
        let cap = Duration::from_secs(600);
        assert_eq!(wait_param(None, cap), Ok(Duration::ZERO));
        assert_eq!(wait_param(Some("x=1"), cap), Ok(Duration::ZERO));
        assert_eq!(
            wait_param(Some("x=1&wait=90s"), cap),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(wait_param(Some("wait=2h"), cap), Ok(cap));
        // Past what an `Instant` can hold: capped, not overflowed.
        assert_eq!(wait_param(Some("wait=100000000h"), cap), Ok(cap));
        assert_eq!(wait_param(Some("wait=99999999999999999h"), cap), Ok(cap));
        assert!(wait_param(Some("wait=soon"), cap)
            .unwrap_err()
            .starts_with("wait: "));
    }

    #[test]
    fn only_a_deploy_is_a_success() {
        assert_eq!(status_code(SeqState::Deployed), StatusCode::OK);
        assert_eq!(status_code(SeqState::RolledBack), StatusCode::BAD_GATEWAY);
        assert_eq!(status_code(SeqState::Failed), StatusCode::BAD_GATEWAY);
        assert_eq!(status_code(SeqState::InProgress), StatusCode::ACCEPTED);
        assert_eq!(status_code(SeqState::Queued), StatusCode::ACCEPTED);
        assert_eq!(status_code(SeqState::Superseded), StatusCode::CONFLICT);
    }
}

//! The leader's background sync: every `poll_interval`, each service that
//! sets one is synced from its registry (see [`crate::sync`]), so a lost
//! webhook delays a deploy by at most one interval.
//!
//! Only the leader polls, so N replicas cost the registry what one does.
//! The first sync runs as soon as leadership is taken: a new leader may be
//! the first to notice a delivery lost while no one led. Failures are
//! retried with backoff within the round; a registry's rate limit moves
//! the next round out to its `Retry-After` when that is later.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::clients::registry::RegistryError;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::sync::{sync_with, SyncError};

/// Registry and Consul hiccups worth another try within the same round.
fn transient(e: &SyncError) -> bool {
    match e {
        SyncError::Registry(RegistryError::Request { .. }) => true,
        SyncError::Registry(RegistryError::Status { status, .. }) => *status >= 500,
        SyncError::Ingest(_) => true,
        _ => false,
    }
}

/// Poll every service that sets `poll_interval` until `cancel`.
pub async fn run(config: Arc<Config>, ingest: Arc<Ingest>, cancel: CancellationToken) {
    let mut loops = tokio::task::JoinSet::new();
    for svc in &config.services {
        if let Some(every) = svc.poll_interval {
            loops.spawn(poll(
                config.clone(),
                ingest.clone(),
                svc.name.clone(),
                every,
                cancel.clone(),
            ));
        }
    }
    while loops.join_next().await.is_some() {}
}

async fn poll(
    config: Arc<Config>,
    ingest: Arc<Ingest>,
    name: String,
    every: Duration,
    cancel: CancellationToken,
) {
    let Some(registry) = config.service(&name).map(crate::sync::client) else {
        return;
    };
    let registry = match registry {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(service = %name, error = %e, "poll_interval set, but no registry client: not polling");
            return;
        }
    };
    let mut wait = Duration::ZERO;
    loop {
        // A timer, not a watch: the registry has nothing to block on.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(svc) = config.service(&name) else {
            return;
        };
        let round = (|| sync_with(&ingest, svc, &registry))
            .retry(
                ExponentialBuilder::default()
                    .with_jitter()
                    .with_max_times(3),
            )
            .when(transient)
            .await;
        wait = every;
        if let Ok(s) = &round {
            if let Some(bound) = s.truncated {
                tracing::warn!(
                    service = %name, listed = s.listed, bound = %bound,
                    "poll: the tag listing stopped at its bound; later tags not seen"
                );
            }
        }
        match round {
            Ok(s) => match s.applied {
                Some(o) if o.changed => tracing::info!(
                    service = %name, tag = %o.tag, previous = ?o.previous,
                    listed = s.listed, requests = s.requests,
                    "poll: a newer tag than the last webhook's; applied"
                ),
                other => tracing::debug!(
                    service = %name, listed = s.listed, requests = s.requests,
                    reason = ?other.and_then(|o| o.reason), "poll: nothing newer"
                ),
            },
            Err(e) => {
                if let Some(after) = e.retry_after() {
                    wait = wait.max(after);
                }
                tracing::warn!(service = %name, error = %e, next_in = ?wait, "poll failed");
            }
        }
    }
}

//! Missed webhooks, made good: list a repository's tags on its registry,
//! pick the best under the service's tag policy, and send it through the
//! same ingest path as a webhook (recorded with source `poll`).
//!
//! Docker Hub and GHCR deliver a webhook once; one lost delivery would
//! leave a service behind for good. `tagbridge sync` does this once, and
//! `poll_interval` makes the leader do it in the background. A listing
//! repeats itself, so a tag that is older, unchanged or arrives while the
//! service is pinned writes nothing (see [`Change::Poll`]): the key never
//! regresses and the history does not fill with polls.

use std::time::{Duration, Instant};

use crate::clients::registry::{ListingBound, Registry, RegistryError, TagList};
use crate::clients::{registry_client, registry_repository};
use crate::config::ServiceConfig;
use crate::ingest::{Change, Ingest, IngestError, Ingested};
use crate::policy::Order;
use crate::webhook::{grammar, ImagePush};

/// What one sync saw and did.
#[derive(Debug, Clone)]
pub struct Synced {
    /// Tags listed, and the bound the listing stopped at, if it did: the
    /// best tag is then the best of those listed, not of the repository.
    pub listed: usize,
    pub truncated: Option<ListingBound>,
    /// Registry requests made (token fetches and the digest included).
    pub requests: u32,
    pub elapsed: Duration,
    /// The best tag and what ingest made of it; `None` when no listed
    /// tag passes the policy.
    pub applied: Option<Ingested>,
}

/// Why a sync could not run or finish. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("tags.order is \"pushed\", and a tag listing does not say which tag was pushed last; sync needs order semver, numeric or lexical")]
    PushedOrder,
    #[error("source {0} has no one registry; add a registry block with its address")]
    NoRegistry(crate::webhook::Source),
    #[error("registry client: {0}")]
    Client(#[from] crate::clients::http::ClientBuildError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl SyncError {
    /// How long the registry asked us to wait, when it rate-limited us.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Registry(RegistryError::RateLimited { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }
}

/// Whether a service can be synced at all: a registry, and an order that
/// can rank a listing. `check` and the poller ask before they start.
///
/// # Errors
///
/// [`SyncError::PushedOrder`], [`SyncError::NoRegistry`].
pub fn syncable(svc: &ServiceConfig) -> Result<(), SyncError> {
    if svc.policy.order == Order::Pushed {
        return Err(SyncError::PushedOrder);
    }
    if svc.registry.is_none() {
        return Err(SyncError::NoRegistry(svc.source));
    }
    Ok(())
}

/// List, pick, and apply through `ingest`.
///
/// # Errors
///
/// See [`SyncError`].
pub async fn sync(ingest: &Ingest, svc: &ServiceConfig) -> Result<Synced, SyncError> {
    sync_with(ingest, svc, &client(svc)?).await
}

/// The service's registry client; the poller builds it once, so its
/// bearer token (and the CA store) last across rounds.
///
/// # Errors
///
/// [`SyncError::PushedOrder`], [`SyncError::NoRegistry`], a CA file that
/// does not load.
pub fn client(svc: &ServiceConfig) -> Result<Registry, SyncError> {
    syncable(svc)?;
    registry_client(svc)?.ok_or(SyncError::NoRegistry(svc.source))
}

/// [`sync`] with a registry client already built.
///
/// # Errors
///
/// See [`SyncError`].
pub async fn sync_with(
    ingest: &Ingest,
    svc: &ServiceConfig,
    registry: &Registry,
) -> Result<Synced, SyncError> {
    let repository = registry_repository(svc);
    let started = Instant::now();
    let TagList {
        tags,
        requests,
        truncated,
    } = registry.tags(&repository).await?;
    let mut synced = Synced {
        listed: tags.len(),
        truncated,
        requests,
        elapsed: started.elapsed(),
        applied: None,
    };
    let Some(best) = svc
        .policy
        .policy
        .best_candidate(tags.iter().map(String::as_str))
    else {
        return Ok(synced);
    };
    let tag = tags[best].clone();
    let digest = registry.digest(&repository, &tag).await?;
    synced.requests += 1;
    let push = ImagePush {
        repository: grammar::normalise_repository(&svc.repository),
        tag,
        digest,
        actor: None,
        delivery: None,
    };
    synced.applied = Some(ingest.apply(svc, &Change::Poll { push }).await?);
    synced.elapsed = started.elapsed();
    Ok(synced)
}

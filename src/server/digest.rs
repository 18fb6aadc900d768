//! `resolve_digest`: the digest of a pushed tag whose payload carries
//! none (Docker Hub, Quay), asked of the service's registry with a `HEAD`
//! of the manifest before ingest, so a re-pushed mutable tag is a change
//! and the digest key names what was pushed.
//!
//! The webhook waits for the answer: a push whose digest cannot be learnt
//! writes nothing (502), rather than a tag whose digest key would then be
//! missing or stale; the registry may deliver again, and `tagbridge sync`
//! or `poll_interval` make it good.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::clients::registry::{Registry, RegistryError};
use crate::clients::{registry_client, registry_repository};
use crate::config::{Config, ServiceConfig};
use crate::metrics::Metrics;

/// The longest one resolve may take, the wait for another delivery's
/// request included: a registry webhook's own timeout is about this long.
pub const MAX_RESOLVE: Duration = Duration::from_secs(10);

/// Why a pushed tag's digest is not known; nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("digest of {repository}:{tag} unknown: {why}")]
pub struct DigestError {
    pub repository: String,
    pub tag: String,
    pub why: String,
}

/// One service's registry client and its single request slot.
struct Resolver {
    /// `Err`: the client could not be built (a CA file that does not load).
    registry: Result<Registry, String>,
    repository: String,
    /// SECURITY: one HEAD in flight per service. Docker Hub's webhook URL
    /// is unsigned: whoever holds it can make us ask the registry, and this
    /// keeps that to one request at a time (a registry's rate limit is
    /// per client, and shared by every service on it).
    turn: Semaphore,
}

/// The resolvers of every service that sets `resolve_digest`, built once
/// per configuration (bearer tokens are cached across deliveries).
#[derive(Default)]
pub struct Resolvers {
    by_service: HashMap<String, Resolver>,
}

impl Resolvers {
    pub fn new(config: &Config) -> Self {
        let by_service = config
            .services
            .iter()
            .filter(|s| s.resolve_digest)
            .map(|s| {
                let registry = match registry_client(s) {
                    Ok(Some(r)) => Ok(r),
                    // Config refuses resolve_digest without a registry.
                    Ok(None) => Err("no registry configured".to_string()),
                    Err(e) => {
                        tracing::error!(service = %s.name, error = %e, "resolve_digest: no registry client; its pushes will be refused (502)");
                        Err(format!("registry client: {e}"))
                    }
                };
                let r = Resolver {
                    registry,
                    repository: registry_repository(s),
                    turn: Semaphore::new(1),
                };
                (s.name.clone(), r)
            })
            .collect();
        Resolvers { by_service }
    }

    /// The digest `tag` names now on the service's registry; `Ok(None)`
    /// when the service does not resolve digests.
    ///
    /// SECURITY: only the configured registry and repository are asked;
    /// the payload contributes the tag alone, already held to the OCI tag
    /// grammar (so it cannot reshape the request path).
    ///
    /// # Errors
    ///
    /// The registry failed, refused, does not know the tag, or did not
    /// answer within [`MAX_RESOLVE`] (with the wait for the slot).
    pub async fn resolve(
        &self,
        svc: &ServiceConfig,
        tag: &str,
        metrics: &Metrics,
    ) -> Result<Option<String>, DigestError> {
        let Some(r) = self.by_service.get(&svc.name) else {
            return Ok(None);
        };
        let fail = |why: String| DigestError {
            repository: r.repository.clone(),
            tag: tag.to_string(),
            why,
        };
        let registry = r.registry.as_ref().map_err(|e| fail(e.clone()))?;
        let limit = registry.timeout().min(MAX_RESOLVE);
        let asked = async {
            // Never closed: an error here cannot happen.
            let _turn = r.turn.acquire().await.ok();
            registry.digest(&r.repository, tag).await
        };
        let (outcome, result) = match tokio::time::timeout(limit, asked).await {
            Ok(Ok(Some(d))) => ("resolved", Ok(Some(d))),
            Ok(Ok(None)) => (
                "unknown_tag",
                Err(fail("the registry does not know this tag".into())),
            ),
            Ok(Err(e)) => (outcome_of(&e), Err(fail(e.to_string()))),
            Err(_) => (
                "timeout",
                Err(fail(format!("no answer within {}s", limit.as_secs()))),
            ),
        };
        metrics.digest_resolved(&svc.name, outcome);
        result
    }
}

/// The metric's outcome label for a registry error (a fixed list).
fn outcome_of(e: &RegistryError) -> &'static str {
    match e {
        RegistryError::RateLimited { .. } => "rate_limited",
        RegistryError::Unauthorized { .. } => "unauthorized",
        RegistryError::Request { .. } => "unreachable",
        RegistryError::Status { .. } | RegistryError::Protocol { .. } => "error",
    }
}

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const DIGEST: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// A registry on loopback that holds every manifest HEAD for a while,
    /// counting how many it holds at once (the most, and in all).
    async fn slow_registry() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        tokio::spawn(async move {
            // Bounded: the test makes three requests.
            for _ in 0..16 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (n, m) = (n.clone(), m.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    // One request per connection is enough here.
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                        match s.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got += k,
                        }
                    }
                    let held = n.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(held, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nDocker-Content-Digest: {DIGEST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, now, most)
    }

    fn config(registry: &str, resolve: bool) -> Config {
        let text = format!(
            r#"service "web" {{
                 secret_sha256 = "{}"
                 source = "quay"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
                 resolve_digest = {resolve}
                 registry {{ address = "{registry}" }}
               }}"#,
            "ab".repeat(32)
        );
        Config::parse(
            std::path::Path::new("t.hcl"),
            &text,
            crate::config::Purpose::Client,
            &|_| None,
        )
        .expect("config")
    }

    /// SECURITY: concurrent deliveries for one service never have more
    /// than one registry request in flight; each still gets its answer.
    #[tokio::test]
    async fn one_request_in_flight_per_service() {
        let (addr, _, most) = slow_registry().await;
        let cfg = config(&addr, true);
        let resolvers = Resolvers::new(&cfg);
        let metrics = Metrics::new();
        let svc = &cfg.services[0];
        let (a, b, c) = tokio::join!(
            resolvers.resolve(svc, "prod", &metrics),
            resolvers.resolve(svc, "prod", &metrics),
            resolvers.resolve(svc, "v2", &metrics),
        );
        for r in [a, b, c] {
            assert_eq!(r.expect("resolved").as_deref(), Some(DIGEST));
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one HEAD at a time");
        assert!(metrics
            .encode()
            .contains("tagbridge_digest_resolves_total{service=\"web\",outcome=\"resolved\"} 3"));
    }

    #[tokio::test]
    async fn a_service_without_resolve_digest_asks_nothing() {
        let (addr, _, most) = slow_registry().await;
        let cfg = config(&addr, false);
        let resolvers = Resolvers::new(&cfg);
        let got = resolvers
            .resolve(&cfg.services[0], "prod", &Metrics::new())
            .await;
        assert_eq!(got.expect("no error"), None);
        assert_eq!(most.load(Ordering::SeqCst), 0);
    }
}

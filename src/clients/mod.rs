//! The outbound clients, and the factories that build them from a
//! configuration: Consul, Nomad, and the rollout context built on both.
//! `serve` (main), the CLI and the tests build them here, so every caller
//! gets the same TLS, token and timeout settings.
//!
//! * `http` — the transport: one hyper / rustls (ring) stack, deadlines
//!   and the response size cap (notifications use it too).
//! * `api` — what Consul and Nomad share on top of it: URLs, the token
//!   header, blocking-query rules, status-to-error mapping.
//! * `consul`, `nomad` — their API calls and the answers' shapes.
//! * `registry` — the OCI distribution API (a tag's digest, a
//!   repository's tags) with the registry's token authentication.

pub(crate) mod api;
pub mod consul;
pub mod http;
pub mod nomad;
pub mod registry;

use std::sync::Arc;

use self::consul::{Consul, ConsulSettings};
use self::http::{ClientBuildError, ClientTlsFiles, HttpClient};
use self::nomad::{Nomad, NomadSettings};
use crate::config::Config;

/// Build the Consul client a configuration describes.
///
/// # Errors
///
/// TLS files that do not load.
pub fn consul_client(cfg: &Config) -> Result<Consul, ClientBuildError> {
    let http = HttpClient::new(&cfg.consul.tls)?;
    Ok(Consul::new(
        http,
        ConsulSettings {
            address: cfg.consul.address.clone(),
            token: cfg.consul.token.clone(),
            datacenter: cfg.consul.datacenter.clone(),
            timeout: cfg.consul.timeout,
        },
    ))
}

/// Build the Nomad client a configuration describes.
///
/// # Errors
///
/// TLS files that do not load.
pub fn nomad_client(cfg: &Config) -> Result<Nomad, ClientBuildError> {
    let http = HttpClient::new(&cfg.nomad.tls)?;
    Ok(Nomad::new(
        http,
        NomadSettings {
            address: cfg.nomad.address.clone(),
            token: cfg.nomad.token.clone(),
            region: cfg.nomad.region.clone(),
            timeout: std::time::Duration::from_secs(10),
        },
    ))
}

/// The rollout context (without leadership) a configuration describes.
///
/// # Errors
///
/// TLS files that do not load.
pub fn rollout_context(cfg: &Arc<Config>) -> Result<crate::rollout::Context, ClientBuildError> {
    let plain = HttpClient::new(&ClientTlsFiles::default())?;
    Ok(crate::rollout::Context {
        consul: consul_client(cfg)?,
        nomad: nomad_client(cfg)?,
        config: cfg.clone(),
        http: plain.clone(),
        notifier: crate::notify::Notifier::new(plain, cfg.notify.clone()),
        fence: None,
        cancel: tokio_util::sync::CancellationToken::new(),
        timings: crate::rollout::Timings::default(),
        before_register: None,
        metrics: Arc::new(crate::metrics::Metrics::new()),
    })
}

/// Build the registry client of a service, when it has a registry.
///
/// # Errors
///
/// A CA file that does not load.
pub fn registry_client(
    svc: &crate::config::ServiceConfig,
) -> Result<Option<registry::Registry>, ClientBuildError> {
    use crate::config::RegistryCredentials as C;
    use registry::RegistryAuth as A;
    let Some(rc) = &svc.registry else {
        return Ok(None);
    };
    let http = HttpClient::new(&ClientTlsFiles {
        ca_file: rc.ca_file.clone(),
        ..ClientTlsFiles::default()
    })?;
    let text = |s: &crate::config::Secret| String::from_utf8_lossy(s.expose()).into_owned();
    let auth = match &rc.credentials {
        C::Anonymous => A::Anonymous,
        C::Basic { username, password } => A::Basic {
            username: text(username),
            password: text(password),
        },
        C::Token(t) => A::Token(text(t)),
    };
    Ok(Some(registry::Registry::new(
        http,
        registry::RegistrySettings {
            address: rc.address.clone(),
            auth,
            timeout: std::time::Duration::from_secs(10),
        },
    )))
}

/// The repository's name on its registry: Docker Hub keeps official
/// images under `library/`.
pub fn registry_repository(svc: &crate::config::ServiceConfig) -> String {
    let repo = crate::webhook::grammar::normalise_repository(&svc.repository);
    if svc.source == crate::webhook::Source::DockerHub && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    }
}

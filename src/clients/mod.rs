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

pub(crate) mod api;
pub mod consul;
pub mod http;
pub mod nomad;

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
    })
}

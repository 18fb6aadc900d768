//! The clients a configuration describes: Consul, Nomad, and the rollout
//! context built on both. `serve` (main), the CLI and the tests build
//! them here, so every caller gets the same TLS, token and timeout
//! settings.

use std::sync::Arc;

use crate::config::Config;
use crate::consul::{Consul, ConsulSettings};
use crate::http_client::{ClientBuildError, HttpClient};

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
pub fn nomad_client(cfg: &Config) -> Result<crate::nomad::Nomad, ClientBuildError> {
    let http = HttpClient::new(&cfg.nomad.tls)?;
    Ok(crate::nomad::Nomad::new(
        http,
        crate::nomad::NomadSettings {
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
    let plain = HttpClient::new(&crate::http_client::ClientTlsFiles::default())?;
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

//! The `consul` and `nomad` blocks: where the cluster's agents are and how
//! to reach them. Each field falls back to the HashiCorp environment
//! variable the `consul` and `nomad` CLIs read, so an operator's shell
//! already configures tagbridge.

use std::path::PathBuf;
use std::time::Duration;

use super::fields::{duration_within, normalise_address, read_secret_file, Collector};
use super::raw::{RawConsul, RawNomad};
use super::{ConsulConfig, EnvLookup, NomadConfig, Secret};
use crate::clients::http::ClientTlsFiles;

/// The `consul` block (absent: every field from the environment).
pub(super) fn consul(c: &mut Collector, rc: RawConsul, env: EnvLookup<'_>) -> ConsulConfig {
    let addr = rc
        .address
        .or_else(|| env("CONSUL_HTTP_ADDR"))
        .unwrap_or_else(|| "http://127.0.0.1:8500".into());
    let https = env("CONSUL_HTTP_SSL").is_some_and(|v| v == "true" || v == "1");
    let address = normalise_address(&addr, https).unwrap_or_else(|e| {
        c.add(None, "consul.address", e);
        String::new()
    });
    let token = token(c, "consul", rc.token_file, "CONSUL_HTTP_TOKEN", env).or_else(|| {
        env("CONSUL_HTTP_TOKEN_FILE").and_then(|p| match read_secret_file(&p) {
            Ok(s) => Some(s),
            Err(e) => {
                c.add(None, "CONSUL_HTTP_TOKEN_FILE", e);
                None
            }
        })
    });
    let tls = client_tls(
        c,
        "consul",
        [rc.ca_file, rc.cert_file, rc.key_file],
        "CONSUL",
        env,
    );
    let timeout = duration_within(
        c,
        None,
        "consul.timeout",
        rc.timeout.as_deref(),
        Duration::from_millis(100)..=Duration::from_secs(10 * 60),
        Duration::from_secs(5),
    );
    ConsulConfig {
        address,
        token,
        tls,
        datacenter: rc.datacenter.filter(|d| !d.is_empty()),
        timeout,
    }
}

/// The `nomad` block (absent: every field from the environment).
pub(super) fn nomad(c: &mut Collector, rn: RawNomad, env: EnvLookup<'_>) -> NomadConfig {
    let addr = rn
        .address
        .or_else(|| env("NOMAD_ADDR"))
        .unwrap_or_else(|| "http://127.0.0.1:4646".into());
    let address = normalise_address(&addr, false).unwrap_or_else(|e| {
        c.add(None, "nomad.address", e);
        String::new()
    });
    let token = token(c, "nomad", rn.token_file, "NOMAD_TOKEN", env);
    let tls = client_tls(
        c,
        "nomad",
        [rn.ca_file, rn.cert_file, rn.key_file],
        "NOMAD",
        env,
    );
    NomadConfig {
        address,
        token,
        tls,
        region: rn.region.or_else(|| env("NOMAD_REGION")),
        namespace: rn.namespace.or_else(|| env("NOMAD_NAMESPACE")),
    }
}

/// The client TLS files (`[ca, cert, key]`), each from the block or from
/// `<env_prefix>_CACERT`, `_CLIENT_CERT`, `_CLIENT_KEY`.
fn client_tls(
    c: &mut Collector,
    section: &str,
    [ca, cert, key]: [Option<String>; 3],
    env_prefix: &str,
    env: EnvLookup<'_>,
) -> ClientTlsFiles {
    let ca = ca.or_else(|| env(&format!("{env_prefix}_CACERT")));
    let cert = cert.or_else(|| env(&format!("{env_prefix}_CLIENT_CERT")));
    let key = key.or_else(|| env(&format!("{env_prefix}_CLIENT_KEY")));
    if cert.is_some() != key.is_some() {
        c.add(
            None,
            &format!("{section}.cert_file"),
            "cert_file and key_file must be set together",
        );
    }
    for (field, path) in [("ca_file", &ca), ("cert_file", &cert), ("key_file", &key)] {
        if let Some(p) = path {
            if let Err(e) = std::fs::metadata(p) {
                c.add(
                    None,
                    &format!("{section}.{field}"),
                    format!("cannot read {p}: {e}"),
                );
            }
        }
    }
    ClientTlsFiles {
        ca_file: ca.map(PathBuf::from),
        cert_file: cert.map(PathBuf::from),
        key_file: key.map(PathBuf::from),
    }
}

/// The ACL token: from `token_file`, or else the environment variable.
fn token(
    c: &mut Collector,
    section: &str,
    token_file: Option<String>,
    env_var: &str,
    env: EnvLookup<'_>,
) -> Option<Secret> {
    match token_file {
        Some(path) => match read_secret_file(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                c.add(None, &format!("{section}.token_file"), e);
                None
            }
        },
        None => env(env_var).map(|t| Secret::new(t.trim().as_bytes().to_vec())),
    }
}

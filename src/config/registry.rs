//! A service's `registry` block: where its images live and how tagbridge
//! proves itself there, for `tagbridge sync` (which lists the
//! repository's tags). Docker Hub, GHCR and Quay need no block: their
//! address follows from the source, and public repositories need no
//! credentials.

use std::path::PathBuf;

use super::fields::{normalise_address, read_secret_file, Collector};
use super::raw::RawRegistry;
use super::{RegistryConfig, RegistryCredentials};
use crate::webhook::Source;

/// The registry a source's payloads come from, when there is only one.
pub fn default_address(source: Source) -> Option<&'static str> {
    match source {
        Source::DockerHub => Some("https://registry-1.docker.io"),
        Source::Github => Some("https://ghcr.io"),
        Source::Quay => Some("https://quay.io"),
        _ => None,
    }
}

/// The service's registry: its block, or the source's default; `None`
/// when neither names one.
pub(super) fn block(
    c: &mut Collector,
    name: &str,
    source: Source,
    raw: Option<RawRegistry>,
) -> Option<RegistryConfig> {
    let svc = Some(name);
    let raw_present = raw.is_some();
    let raw = raw.unwrap_or_default();
    let address = match raw.address.as_deref().map(str::trim) {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => match default_address(source) {
            Some(a) => a.to_string(),
            None if raw_present => {
                c.add(
                    svc,
                    "registry.address",
                    format!("is required for source {source} (its registry has no one address)"),
                );
                return None;
            }
            None => return None,
        },
    };
    let address = match normalise_address(&address, true) {
        Ok(a) => a,
        Err(e) => {
            c.add(svc, "registry.address", e);
            return None;
        }
    };
    if address.starts_with("http://") {
        c.warn(
            svc,
            "registry.address",
            format!("{address} is plain http: credentials and answers cross the network unprotected (fine for an internal registry on a trusted network)"),
        );
    }
    let credentials = credentials(c, name, &raw);
    let ca_file = raw.ca_file.map(PathBuf::from);
    if let Some(p) = &ca_file {
        if let Err(e) = std::fs::metadata(p) {
            c.add(
                svc,
                "registry.ca_file",
                format!("cannot read {}: {e}", p.display()),
            );
        }
    }
    Some(RegistryConfig {
        address,
        credentials,
        ca_file,
    })
}

/// `username_file` with `password_file`, or `token_file`, or neither.
/// Read for every purpose: `tagbridge sync` runs on an operator's machine.
fn credentials(c: &mut Collector, name: &str, raw: &RawRegistry) -> RegistryCredentials {
    let svc = Some(name);
    let mut read = |field: &str, path: &str| {
        read_secret_file(path)
            .map_err(|e| c.add(svc, &format!("registry.{field}"), e))
            .ok()
    };
    match (&raw.username_file, &raw.password_file, &raw.token_file) {
        (None, None, None) => RegistryCredentials::Anonymous,
        (Some(u), Some(p), None) => match (read("username_file", u), read("password_file", p)) {
            (Some(username), Some(password)) => RegistryCredentials::Basic { username, password },
            _ => RegistryCredentials::Anonymous,
        },
        (None, None, Some(t)) => {
            read("token_file", t).map_or(RegistryCredentials::Anonymous, RegistryCredentials::Token)
        }
        (_, _, Some(_)) => {
            c.add(
                svc,
                "registry.token_file",
                "is exclusive with username_file and password_file",
            );
            RegistryCredentials::Anonymous
        }
        _ => {
            c.add(
                svc,
                "registry.username_file",
                "username_file and password_file must be set together",
            );
            RegistryCredentials::Anonymous
        }
    }
}

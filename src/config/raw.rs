//! The file's shape, as HCL gives it: every field optional, unknown
//! fields refused (`deny_unknown_fields`), so a typo fails closed instead
//! of silently taking a default. The blocks' own modules turn these into
//! the validated shapes of `config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) state_prefix: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (a load balancer).
    pub(super) trusted_proxies: Option<Vec<String>>,
    /// Failed attempts (404/401) one IP may make per minute before 429.
    pub(super) failed_attempts_per_minute: Option<u32>,
    pub(super) max_connections: Option<usize>,
    /// Listener limits (see [`super::ListenerSettings`]).
    pub(super) first_request_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_connections_per_address: Option<usize>,
    pub(super) http2_max_concurrent_streams: Option<u32>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_headers: Option<usize>,
    pub(super) failed_attempts_max_addresses: Option<usize>,
    pub(super) log_format: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) consul: Option<RawConsul>,
    pub(super) nomad: Option<RawNomad>,
    pub(super) notify: Option<BTreeMap<String, RawNotify>>,
    pub(super) service: Option<BTreeMap<String, RawService>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConsul {
    pub(super) address: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
    pub(super) datacenter: Option<String>,
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNomad {
    pub(super) address: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
    pub(super) region: Option<String>,
    pub(super) namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) url_file: Option<String>,
    pub(super) format: Option<String>,
    pub(super) events: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) secret_sha256: Option<String>,
    pub(super) source: Option<String>,
    pub(super) repository: Option<String>,
    pub(super) key: Option<String>,
    pub(super) digest_key: Option<String>,
    pub(super) resolve_digest: Option<bool>,
    pub(super) signing_secret_file: Option<String>,
    pub(super) allow_cidrs: Option<Vec<String>>,
    pub(super) history_keep: Option<i64>,
    pub(super) tags: Option<RawTags>,
    pub(super) rollout: Option<RawRollout>,
    pub(super) registry: Option<RawRegistry>,
    pub(super) poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) address: Option<String>,
    pub(super) username_file: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTags {
    pub(super) include: Option<String>,
    pub(super) exclude: Option<Vec<String>>,
    pub(super) order: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub(super) job: Option<String>,
    pub(super) jobs: Option<Vec<String>>,
    pub(super) namespace: Option<String>,
    pub(super) strategy: Option<String>,
    pub(super) meta_key: Option<String>,
    pub(super) verify_url: Option<String>,
    pub(super) timeout: Option<String>,
}

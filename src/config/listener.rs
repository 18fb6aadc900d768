//! The top of the file: where tagbridge listens, what one stranger's
//! connections may cost, how it logs, and the `tls` block that serves the
//! webhooks.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::fields::{at_least_one, duration_within, nets, valid_key, within, word_or, Collector};
use super::raw::{RawConfig, RawTls};
use super::{ListenerSettings, LogFormat, Purpose, TlsFiles};

/// The top-level settings, validated.
pub(super) struct Front {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub state_prefix: String,
    pub trusted_proxies: Vec<IpNet>,
    pub failed_attempts_per_minute: u32,
    pub max_connections: usize,
    pub listener: ListenerSettings,
    pub log_format: LogFormat,
}

/// The top-level settings (every block is read by its own function).
pub(super) fn front(c: &mut Collector, raw: &RawConfig) -> Front {
    let listen = address(c, "listen", raw.listen.as_deref(), "0.0.0.0:8443");
    let admin_listen = address(
        c,
        "admin_listen",
        raw.admin_listen.as_deref(),
        "127.0.0.1:9102",
    );
    let state_prefix = raw
        .state_prefix
        .clone()
        .unwrap_or_else(|| "tagbridge".into());
    if let Err(e) = valid_key(&state_prefix) {
        c.add(None, "state_prefix", e);
    }
    let trusted_proxies = nets(
        c,
        None,
        "trusted_proxies",
        raw.trusted_proxies.as_deref().unwrap_or_default(),
    );
    let failed_attempts_per_minute = at_least_one(
        c,
        "failed_attempts_per_minute",
        raw.failed_attempts_per_minute,
        20,
    );
    let max_connections = at_least_one(c, "max_connections", raw.max_connections, 1024);
    let listener = limits(c, raw, max_connections);
    let log_format = word_or(
        c,
        None,
        "log_format",
        raw.log_format.as_deref(),
        (&LogFormat::ALL, LogFormat::Json),
        "",
    );
    Front {
        listen,
        admin_listen,
        state_prefix,
        trusted_proxies,
        failed_attempts_per_minute,
        max_connections,
        listener,
        log_format,
    }
}

/// An `ip:port` field, or the default.
fn address(c: &mut Collector, field: &str, value: Option<&str>, default: &str) -> SocketAddr {
    let v = value.unwrap_or(default);
    v.parse().unwrap_or_else(|e| {
        c.add(None, field, format!("{v:?} is not an ip:port address: {e}"));
        default.parse().expect("default address parses")
    })
}

/// The listener limits, each checked on its own so `tagbridge check`
/// reports every bad one.
fn limits(c: &mut Collector, raw: &RawConfig, max_connections: usize) -> ListenerSettings {
    let d = ListenerSettings::DEFAULT;
    let up_to_an_hour = Duration::from_millis(1)..=Duration::from_secs(3600);
    let mut duration = |field: &str, text: &Option<String>, default: Duration| {
        duration_within(
            c,
            None,
            field,
            text.as_deref(),
            up_to_an_hour.clone(),
            default,
        )
    };
    let first_request_timeout = duration(
        "first_request_timeout",
        &raw.first_request_timeout,
        d.first_request_timeout,
    );
    let idle_timeout = duration("idle_timeout", &raw.idle_timeout, d.idle_timeout);
    let max_connections_per_address =
        per_address(c, raw.max_connections_per_address, max_connections);
    let http2_max_concurrent_streams = within(
        c,
        "http2_max_concurrent_streams",
        raw.http2_max_concurrent_streams,
        1..=1000,
        d.http2_max_concurrent_streams,
    );
    // hyper refuses (panics on) an HTTP/1.1 buffer under 8 KiB.
    let max_header_bytes = within(
        c,
        "max_header_bytes",
        raw.max_header_bytes,
        8192..=1_048_576,
        d.max_header_bytes,
    );
    let max_headers = within(c, "max_headers", raw.max_headers, 8..=1000, d.max_headers);
    let failed_attempts_max_addresses = within(
        c,
        "failed_attempts_max_addresses",
        raw.failed_attempts_max_addresses,
        1..=16_777_216,
        d.failed_attempts_max_addresses,
    );
    ListenerSettings {
        first_request_timeout,
        idle_timeout,
        max_connections_per_address,
        http2_max_concurrent_streams,
        max_header_bytes,
        max_headers,
        failed_attempts_max_addresses,
    }
}

/// `max_connections_per_address`. Default: 64, or a quarter of
/// `max_connections` when that is smaller, so one address can never take
/// every slot.
fn per_address(c: &mut Collector, value: Option<usize>, max_connections: usize) -> usize {
    let field = "max_connections_per_address";
    match value {
        None => ListenerSettings::DEFAULT
            .max_connections_per_address
            .min((max_connections / 4).max(1)),
        Some(0) => {
            c.add(None, field, "must be at least 1");
            1
        }
        Some(n) if n >= max_connections && max_connections > 1 => {
            c.add(
                None,
                field,
                format!("{n} must be below max_connections ({max_connections}), or one address can take every slot"),
            );
            n
        }
        Some(n) => n,
    }
}

/// The `tls` block: required to serve, since webhooks carry their secret
/// in the URL.
pub(super) fn tls(c: &mut Collector, raw: Option<RawTls>, purpose: Purpose) -> Option<TlsFiles> {
    let Some(t) = raw else {
        if purpose == Purpose::Serve {
            c.add(None, "tls", "a tls block with cert_file and key_file is required: webhooks carry secrets in their URL and are only served over HTTPS");
        }
        return None;
    };
    let cert = t.cert_file.unwrap_or_default();
    let key = t.key_file.unwrap_or_default();
    if cert.is_empty() {
        c.add(None, "tls.cert_file", "is required");
    }
    if key.is_empty() {
        c.add(None, "tls.key_file", "is required");
    }
    if purpose == Purpose::Serve {
        for (f, p) in [("tls.cert_file", &cert), ("tls.key_file", &key)] {
            if !p.is_empty() {
                if let Err(e) = std::fs::metadata(p) {
                    c.add(None, f, format!("cannot read {p}: {e}"));
                }
            }
        }
    }
    Some(TlsFiles {
        cert_file: cert.into(),
        key_file: key.into(),
    })
}

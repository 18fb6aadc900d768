//! Configuration: one HCL file, validated once, failing closed.
//!
//! Operators already have HashiCorp's environment variables set for the
//! `consul` and `nomad` CLIs, so those are the defaults here too. Secrets
//! (tokens, signing secrets, notification URLs) are only ever read from
//! files or the environment, never written inline, so the config file can
//! live in version control. Every problem is reported at once, one line
//! each, naming the file, the service and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::http_client::ClientTlsFiles;
use crate::policy::{Order, TagPolicy};
use crate::webhook::grammar;
use crate::webhook::Source;

/// A secret read from a file or the environment.
///
/// SECURITY: `Debug` and `Display` never show the bytes; the only way to
/// the value is the explicit [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the environment comes from: the process, or a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads the real process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// What the configuration is loaded for: `serve` and `check` need every
/// file the server reads; client commands (`history`, `status`, `deploy`)
/// run on an operator's machine that may only have a Consul token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Serve,
    Client,
}

// ---------------------------------------------------------------- raw shape

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    state_prefix: Option<String>,
    /// Peers whose `X-Forwarded-For` is believed (a load balancer).
    trusted_proxies: Option<Vec<String>>,
    /// Failed attempts (404/401) one IP may make per minute before 429.
    failed_attempts_per_minute: Option<u32>,
    max_connections: Option<usize>,
    /// Listener limits (see [`ListenerSettings`]).
    first_request_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections_per_address: Option<usize>,
    http2_max_concurrent_streams: Option<u32>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    failed_attempts_max_addresses: Option<usize>,
    log_format: Option<String>,
    tls: Option<RawTls>,
    consul: Option<RawConsul>,
    nomad: Option<RawNomad>,
    notify: Option<BTreeMap<String, RawNotify>>,
    service: Option<BTreeMap<String, RawService>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsul {
    address: Option<String>,
    token_file: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    datacenter: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNomad {
    address: Option<String>,
    token_file: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    region: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url_file: Option<String>,
    format: Option<String>,
    events: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    secret_sha256: Option<String>,
    source: Option<String>,
    repository: Option<String>,
    key: Option<String>,
    signing_secret_file: Option<String>,
    allow_cidrs: Option<Vec<String>>,
    history_keep: Option<i64>,
    tags: Option<RawTags>,
    rollout: Option<RawRollout>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTags {
    include: Option<String>,
    exclude: Option<Vec<String>>,
    order: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    job: Option<String>,
    namespace: Option<String>,
    strategy: Option<String>,
    meta_key: Option<String>,
    verify_url: Option<String>,
    timeout: Option<String>,
}

// ---------------------------------------------------------- validated shape

/// The validated configuration. Built only by [`Config::load`] /
/// [`Config::parse`], so holding one means every check passed.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub state_prefix: String,
    pub trusted_proxies: Vec<IpNet>,
    pub failed_attempts_per_minute: u32,
    pub max_connections: usize,
    pub listener: ListenerSettings,
    pub log_format: LogFormat,
    pub tls: Option<TlsFiles>,
    pub consul: ConsulConfig,
    pub nomad: NomadConfig,
    pub notify: Vec<NotifyConfig>,
    pub services: Vec<ServiceConfig>,
}

/// Limits of the webhook listener beyond `max_connections`: what one
/// stranger's connections may cost. Defaults in [`ListenerSettings::DEFAULT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// From accept to the first complete request head (TLS handshake,
    /// protocol detection, HTTP/2 preface and first HEADERS included).
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per TCP peer address (IPv6 by /64); trusted
    /// proxies are exempt.
    pub max_connections_per_address: usize,
    pub http2_max_concurrent_streams: u32,
    /// HTTP/1.1 read buffer (head) and HTTP/2 header list size.
    pub max_header_bytes: usize,
    /// Header fields in one HTTP/1.1 request head.
    pub max_headers: usize,
    /// Client addresses the failed-attempt limit tracks at once.
    pub failed_attempts_max_addresses: usize,
}

impl ListenerSettings {
    pub const DEFAULT: ListenerSettings = ListenerSettings {
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections_per_address: 64,
        http2_max_concurrent_streams: 32,
        max_header_bytes: 16 * 1024,
        max_headers: 64,
        failed_attempts_max_addresses: 65_536,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ConsulConfig {
    pub address: String,
    pub token: Option<Secret>,
    pub tls: ClientTlsFiles,
    pub datacenter: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct NomadConfig {
    pub address: String,
    pub token: Option<Secret>,
    pub tls: ClientTlsFiles,
    pub region: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub name: String,
    pub url: Option<Secret>,
    pub format: NotifyFormat,
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    Slack,
    Json,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub secret_sha256: [u8; 32],
    pub source: Source,
    pub repository: String,
    pub key: String,
    pub signing_secret: Option<Secret>,
    pub allow_cidrs: Vec<IpNet>,
    pub history_keep: usize,
    pub policy: TagPolicyConfig,
    pub rollout: Option<RolloutConfig>,
}

/// The tag policy plus the text it came from (for `check` and `status`).
#[derive(Debug, Clone)]
pub struct TagPolicyConfig {
    pub include: Option<String>,
    pub exclude: Vec<String>,
    pub order: Order,
    pub policy: std::sync::Arc<TagPolicy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Template,
    Jobspec,
}

#[derive(Debug, Clone)]
pub struct RolloutConfig {
    pub job: String,
    pub namespace: String,
    pub strategy: Strategy,
    pub meta_key: String,
    pub verify_url: Option<String>,
    pub timeout: Duration,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// `<state_prefix>/<kind>/<service>`.
    pub fn state_key(&self, kind: &str, service: &str) -> String {
        format!("{}/{}/{}", self.state_prefix, kind, service)
    }
}

/// A digest of everything a configuration was built from: the file's text
/// and every secret it read. `serve` compares it on SIGHUP to tell a real
/// change from a certificate-only reload, without keeping secrets around
/// in another form.
pub fn fingerprint(text: &str, cfg: &Config) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(text.as_bytes());
    let secrets = [cfg.consul.token.as_ref(), cfg.nomad.token.as_ref()]
        .into_iter()
        .chain(cfg.services.iter().map(|s| s.signing_secret.as_ref()))
        .chain(cfg.notify.iter().map(|n| n.url.as_ref()));
    for s in secrets {
        put(s.map_or(&[][..], Secret::expose));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// One configuration problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub service: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(s) = &self.service {
            write!(f, "service {s:?}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

struct Collector {
    file: String,
    problems: Vec<Problem>,
}

impl Collector {
    fn add(&mut self, service: Option<&str>, field: &str, message: impl Into<String>) {
        // One line per problem, even when a parser (regex, HCL) explains
        // itself over several.
        let message: String = message.into();
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        // SECURITY: a problem is printed as one log line; a control
        // character from the file (a lone `\r`, a label with a newline)
        // must not forge a second one.
        let one_line = |s: &str| -> String {
            s.chars()
                .map(|ch| if ch.is_control() { ' ' } else { ch })
                .collect()
        };
        self.problems.push(Problem {
            file: self.file.clone(),
            service: service.map(one_line),
            field: one_line(field),
            message: one_line(&message),
        });
    }
}

/// Deepest bracket nesting accepted before the HCL parser sees the text.
/// A tagbridge configuration nests three or four levels.
const MAX_NESTING: usize = 20;

/// Refuse text nested deeper than `max` levels of `{`, `[` or `(`
/// (outside double-quoted strings).
///
/// SECURITY: hcl-rs's parser backtracks exponentially on deeply nested,
/// unbalanced brackets: 313 bytes with 43 open braces took 34 s of CPU
/// (found by the `config` fuzz target; about 2.7 times slower per level
/// past 28). `check` and a SIGHUP reload would stall on such a file; this
/// linear pre-check keeps every parse to milliseconds.
fn nesting_within(text: &str, max: usize) -> Result<(), String> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (line_no, line) in text.lines().enumerate() {
        for b in line.bytes() {
            match (in_string, escaped, b) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
                (false, _, b'{' | b'[' | b'(') => {
                    depth += 1;
                    if depth > max {
                        return Err(format!(
                            "line {}: brackets nested deeper than {max} levels",
                            line_no + 1
                        ));
                    }
                }
                (false, _, b'}' | b']' | b')') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parse a Go-style duration: `90s`, `15m`, `1h30m`, `500ms`.
///
/// # Errors
///
/// Anything else, with the reason.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration like \"30s\", \"15m\" or \"1h30m\""
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(format!("{s:?}: a unit is required (ms, s, m, h)")),
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (expected ms, s, m, h)"
                ))
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

fn read_secret_file(path: &str) -> Result<Secret, String> {
    use std::io::Read as _;
    // SECURITY: a secret is a few hundred bytes at most. A path to a
    // device (`/dev/zero`) or a FIFO would otherwise grow memory without
    // bound or hang `check` and `serve`.
    const MAX_SECRET_FILE: u64 = 64 * 1024;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    let mut data = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if data.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("{path} is over {MAX_SECRET_FILE} bytes"));
    }
    // Files written by `echo` end with a newline that is not part of the
    // secret.
    let trimmed = data.trim_ascii_end();
    if trimmed.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(Secret(trimmed.to_vec()))
}

fn normalise_address(addr: &str, https_default: bool) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let with_scheme = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else if addr.contains("://") {
        return Err(format!("{addr:?}: only http:// and https:// are supported"));
    } else if https_default {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| format!("{addr:?} is not an address: {e}"))?;
    if uri.host().is_none() {
        return Err(format!("{addr:?} has no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{addr:?}: an address must not have a path"));
    }
    Ok(with_scheme)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(format!("{key:?} must not start or end with '/'"));
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("{key:?} has an empty, '.' or '..' segment"));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("{key:?} has control characters"));
    }
    Ok(())
}

fn client_tls(
    c: &mut Collector,
    section: &str,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
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
        None => env(env_var).map(|t| Secret(t.trim().as_bytes().to_vec())),
    }
}

impl Config {
    /// Read and validate a configuration file.
    ///
    /// # Errors
    ///
    /// Every problem found, one per line (unreadable file, HCL syntax,
    /// unknown fields, invalid values, unreadable secret files).
    pub fn load(path: &Path, purpose: Purpose, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(vec![Problem {
                file: file.clone(),
                service: None,
                field: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(path, &text, purpose, env)
    }

    /// Validate configuration text (`path` only names it in problems and
    /// anchors nothing: relative file paths are relative to the process).
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn parse(
        path: &Path,
        text: &str,
        purpose: Purpose,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let mut c = Collector {
            file: path.display().to_string(),
            problems: Vec::new(),
        };
        if let Err(msg) = nesting_within(text, MAX_NESTING) {
            c.add(None, "", msg);
            return Err(ConfigError(c.problems));
        }
        let raw: RawConfig = match hcl::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let msg = e
                    .to_string()
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                c.add(None, "", msg);
                return Err(ConfigError(c.problems));
            }
        };

        let addr =
            |c: &mut Collector, field: &str, v: Option<String>, default: &str| -> SocketAddr {
                let v = v.unwrap_or_else(|| default.to_string());
                v.parse().unwrap_or_else(|e| {
                    c.add(None, field, format!("{v:?} is not an ip:port address: {e}"));
                    default.parse().expect("default address parses")
                })
            };
        let listen = addr(&mut c, "listen", raw.listen, "0.0.0.0:8443");
        let admin_listen = addr(&mut c, "admin_listen", raw.admin_listen, "127.0.0.1:9102");

        let state_prefix = raw.state_prefix.unwrap_or_else(|| "tagbridge".into());
        if let Err(e) = valid_key(&state_prefix) {
            c.add(None, "state_prefix", e);
        }

        let mut trusted_proxies = Vec::new();
        for p in raw.trusted_proxies.unwrap_or_default() {
            match parse_net(&p) {
                Ok(n) => trusted_proxies.push(n),
                Err(e) => c.add(None, "trusted_proxies", e),
            }
        }
        let failed_attempts_per_minute = raw.failed_attempts_per_minute.unwrap_or(20);
        if failed_attempts_per_minute == 0 {
            c.add(None, "failed_attempts_per_minute", "must be at least 1");
        }
        let max_connections = raw.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            c.add(None, "max_connections", "must be at least 1");
        }
        let listener = listener_settings(
            &mut c,
            RawListener {
                first_request_timeout: raw.first_request_timeout,
                idle_timeout: raw.idle_timeout,
                max_connections_per_address: raw.max_connections_per_address,
                http2_max_concurrent_streams: raw.http2_max_concurrent_streams,
                max_header_bytes: raw.max_header_bytes,
                max_headers: raw.max_headers,
                failed_attempts_max_addresses: raw.failed_attempts_max_addresses,
            },
            max_connections,
        );
        let log_format = match raw.log_format.as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                c.add(
                    None,
                    "log_format",
                    format!("{other:?} is not json or pretty"),
                );
                LogFormat::Json
            }
        };

        let tls = match raw.tls {
            Some(t) => {
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
            None => {
                if purpose == Purpose::Serve {
                    c.add(None, "tls", "a tls block with cert_file and key_file is required: webhooks carry secrets in their URL and are only served over HTTPS");
                }
                None
            }
        };

        let rc = raw.consul.unwrap_or_default();
        let consul_addr = rc
            .address
            .or_else(|| env("CONSUL_HTTP_ADDR"))
            .unwrap_or_else(|| "http://127.0.0.1:8500".into());
        let consul_https = env("CONSUL_HTTP_SSL").is_some_and(|v| v == "true" || v == "1");
        let consul_address = normalise_address(&consul_addr, consul_https).unwrap_or_else(|e| {
            c.add(None, "consul.address", e);
            String::new()
        });
        let consul_token = token(&mut c, "consul", rc.token_file, "CONSUL_HTTP_TOKEN", env)
            .or_else(|| {
                env("CONSUL_HTTP_TOKEN_FILE").and_then(|p| match read_secret_file(&p) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        c.add(None, "CONSUL_HTTP_TOKEN_FILE", e);
                        None
                    }
                })
            });
        let consul_tls = client_tls(
            &mut c,
            "consul",
            rc.ca_file,
            rc.cert_file,
            rc.key_file,
            "CONSUL",
            env,
        );
        let consul_timeout = match rc.timeout.as_deref().map(parse_duration) {
            None => Duration::from_secs(5),
            Some(Ok(d)) if d >= Duration::from_millis(100) => d,
            Some(Ok(_)) => {
                c.add(None, "consul.timeout", "must be at least 100ms");
                Duration::from_secs(5)
            }
            Some(Err(e)) => {
                c.add(None, "consul.timeout", e);
                Duration::from_secs(5)
            }
        };
        let consul = ConsulConfig {
            address: consul_address,
            token: consul_token,
            tls: consul_tls,
            datacenter: rc.datacenter.filter(|d| !d.is_empty()),
            timeout: consul_timeout,
        };

        let rn = raw.nomad.unwrap_or_default();
        let nomad_addr = rn
            .address
            .or_else(|| env("NOMAD_ADDR"))
            .unwrap_or_else(|| "http://127.0.0.1:4646".into());
        let nomad_address = normalise_address(&nomad_addr, false).unwrap_or_else(|e| {
            c.add(None, "nomad.address", e);
            String::new()
        });
        let nomad_token = token(&mut c, "nomad", rn.token_file, "NOMAD_TOKEN", env);
        let nomad_tls = client_tls(
            &mut c,
            "nomad",
            rn.ca_file,
            rn.cert_file,
            rn.key_file,
            "NOMAD",
            env,
        );
        let nomad = NomadConfig {
            address: nomad_address,
            token: nomad_token,
            tls: nomad_tls,
            region: rn.region.or_else(|| env("NOMAD_REGION")),
            namespace: rn.namespace.or_else(|| env("NOMAD_NAMESPACE")),
        };

        let mut notify = Vec::new();
        for (name, n) in raw.notify.unwrap_or_default() {
            let shown = if valid_name(&name) {
                name.clone()
            } else {
                c.add(
                    None,
                    &format!("notify {name:?}"),
                    "notify names use only a-z, 0-9, '-' and '_'",
                );
                format!("{name:?}")
            };
            let field = |f: &str| format!("notify.{shown}.{f}");
            let format = match n.format.as_deref() {
                None | Some("slack") => NotifyFormat::Slack,
                Some("json") => NotifyFormat::Json,
                Some(other) => {
                    c.add(
                        None,
                        &field("format"),
                        format!("{other:?} is not slack or json"),
                    );
                    NotifyFormat::Slack
                }
            };
            let url = match n.url_file {
                None => {
                    c.add(None, &field("url_file"), "is required");
                    None
                }
                Some(_) if purpose == Purpose::Client => None,
                Some(p) => match read_secret_file(&p) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        c.add(None, &field("url_file"), e);
                        None
                    }
                },
            };
            let events = n
                .events
                .unwrap_or_else(|| vec!["deployed".into(), "rolled_back".into(), "failed".into()]);
            for e in &events {
                if !["deployed", "rolled_back", "failed"].contains(&e.as_str()) {
                    c.add(
                        None,
                        &field("events"),
                        format!("{e:?} is not one of deployed, rolled_back, failed"),
                    );
                }
            }
            notify.push(NotifyConfig {
                name,
                url,
                format,
                events,
            });
        }

        let raw_services = raw.service.unwrap_or_default();
        if raw_services.is_empty() {
            c.add(None, "service", "at least one service block is required");
        }
        let mut services: Vec<ServiceConfig> = Vec::new();
        for (name, s) in raw_services {
            if let Some(svc) = validate_service(&mut c, &name, s, &state_prefix, purpose) {
                services.push(svc);
            }
        }
        // Uniqueness across services: a shared secret would make routing
        // ambiguous, a shared key would let two services fight over it.
        for (i, a) in services.iter().enumerate() {
            for b in &services[i + 1..] {
                if a.secret_sha256 == b.secret_sha256 {
                    c.add(
                        Some(&b.name),
                        "secret_sha256",
                        format!(
                            "is the same as service {:?}'s; each service needs its own secret",
                            a.name
                        ),
                    );
                }
                if a.key == b.key {
                    c.add(
                        Some(&b.name),
                        "key",
                        format!("{:?} is also service {:?}'s key", b.key, a.name),
                    );
                }
            }
        }

        if !c.problems.is_empty() {
            return Err(ConfigError(c.problems));
        }
        Ok(Config {
            path: path.to_path_buf(),
            listen,
            admin_listen,
            state_prefix,
            trusted_proxies,
            failed_attempts_per_minute,
            max_connections,
            listener,
            log_format,
            tls,
            consul,
            nomad,
            notify,
            services,
        })
    }
}

/// The listener limits, each checked on its own so `tagbridge check`
/// reports every bad one.
struct RawListener {
    first_request_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections_per_address: Option<usize>,
    http2_max_concurrent_streams: Option<u32>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    failed_attempts_max_addresses: Option<usize>,
}

fn listener_settings(
    c: &mut Collector,
    raw: RawListener,
    max_connections: usize,
) -> ListenerSettings {
    let d = ListenerSettings::DEFAULT;
    let mut duration = |field: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(text) => match parse_duration(text) {
            Ok(v) if v.is_zero() => {
                c.add(None, field, "must be longer than zero");
                default
            }
            Ok(v) if v > Duration::from_secs(3600) => {
                c.add(None, field, format!("{text:?} is over 1h"));
                default
            }
            Ok(v) => v,
            Err(e) => {
                c.add(None, field, e);
                default
            }
        },
    };
    let first_request_timeout = duration(
        "first_request_timeout",
        &raw.first_request_timeout,
        d.first_request_timeout,
    );
    let idle_timeout = duration("idle_timeout", &raw.idle_timeout, d.idle_timeout);
    // Default: 64, or a quarter of max_connections when that is smaller,
    // so one address can never take every slot.
    let max_connections_per_address = match raw.max_connections_per_address {
        None => d
            .max_connections_per_address
            .min((max_connections / 4).max(1)),
        Some(0) => {
            c.add(None, "max_connections_per_address", "must be at least 1");
            1
        }
        Some(n) if n >= max_connections && max_connections > 1 => {
            c.add(
                None,
                "max_connections_per_address",
                format!("{n} must be below max_connections ({max_connections}), or one address can take every slot"),
            );
            n
        }
        Some(n) => n,
    };
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

/// `value` when it is set and inside `range`; otherwise the default, and
/// a problem when it was set outside the range.
fn within<T: PartialOrd + Copy + fmt::Display>(
    c: &mut Collector,
    field: &str,
    value: Option<T>,
    range: std::ops::RangeInclusive<T>,
    default: T,
) -> T {
    match value {
        None => default,
        Some(n) if range.contains(&n) => n,
        Some(n) => {
            c.add(
                None,
                field,
                format!("{n} is not between {} and {}", range.start(), range.end()),
            );
            default
        }
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR block or IP address"))
}

fn validate_service(
    c: &mut Collector,
    name: &str,
    s: RawService,
    state_prefix: &str,
    purpose: Purpose,
) -> Option<ServiceConfig> {
    let before = c.problems.len();
    let svc = Some(name);
    if !valid_name(name) {
        c.add(
            svc,
            "",
            "service names use only a-z, 0-9, '-' and '_' (they become KV keys and metric labels)",
        );
    }
    let mut secret_sha256 = [0u8; 32];
    match s.secret_sha256.as_deref() {
        None | Some("") => c.add(
            svc,
            "secret_sha256",
            "is required (`tagbridge secret` makes one)",
        ),
        Some(h) => match hex::decode(h) {
            Ok(b) if b.len() == 32 => secret_sha256.copy_from_slice(&b),
            _ => c.add(
                svc,
                "secret_sha256",
                "must be 64 hex characters: the sha256 of the URL secret, never the secret itself",
            ),
        },
    }
    let source = match s.source.as_deref() {
        None => {
            c.add(svc, "source", "is required");
            Source::Generic
        }
        Some(v) => v.parse().unwrap_or_else(|e: String| {
            c.add(svc, "source", e);
            Source::Generic
        }),
    };
    let repository = s.repository.unwrap_or_default();
    if repository.trim().is_empty() {
        c.add(
            svc,
            "repository",
            "is required: payloads must name this repository",
        );
    } else if let Err(e) =
        grammar::check_repository(&grammar::normalise_repository(repository.trim()))
    {
        // Payloads are held to the OCI name grammar; a configured name
        // outside it could never match one.
        c.add(svc, "repository", e);
    }
    let key = s.key.unwrap_or_default();
    if let Err(e) = valid_key(&key) {
        c.add(svc, "key", e);
    } else if key == state_prefix || key.starts_with(&format!("{state_prefix}/")) {
        c.add(
            svc,
            "key",
            format!("{key:?} is inside state_prefix {state_prefix:?}, which tagbridge owns"),
        );
    }
    let signing_secret = match (s.signing_secret_file, source.accepts_signing_secret()) {
        (Some(_), false) => {
            c.add(svc, "signing_secret_file", format!("source {source} has no signature scheme; its URL secret (and allow_cidrs) authenticate it"));
            None
        }
        (Some(p), true) if purpose == Purpose::Serve => match read_secret_file(&p) {
            Ok(s) => Some(s),
            Err(e) => {
                c.add(svc, "signing_secret_file", e);
                None
            }
        },
        (Some(_), true) => None,
        (None, _) => {
            if source.requires_signing_secret() {
                c.add(svc, "signing_secret_file", format!("is required for source {source}: its payloads are only trusted when signed"));
            }
            None
        }
    };
    let allow_cidrs = match s.allow_cidrs {
        None => vec![
            "0.0.0.0/0".parse().expect("cidr"),
            "::/0".parse().expect("cidr"),
        ],
        Some(list) => {
            if list.is_empty() {
                c.add(
                    svc,
                    "allow_cidrs",
                    "is empty, so every request would be refused; omit it to allow all",
                );
            }
            list.iter()
                .filter_map(|n| parse_net(n).map_err(|e| c.add(svc, "allow_cidrs", e)).ok())
                .collect()
        }
    };
    let history_keep = match s.history_keep {
        None => 100,
        Some(n) if (1..=10_000).contains(&n) => n as usize,
        Some(n) => {
            c.add(svc, "history_keep", format!("{n} is outside 1..=10000"));
            100
        }
    };
    let tags = s.tags.unwrap_or_default();
    let order = match tags.order.as_deref() {
        None => Order::Pushed,
        Some(o) => o.parse().unwrap_or_else(|e: crate::policy::PolicyError| {
            c.add(svc, "tags.order", e.to_string());
            Order::Pushed
        }),
    };
    let exclude = tags.exclude.unwrap_or_default();
    let include = tags.include.filter(|i| !i.is_empty());
    let policy = match TagPolicy::new(include.as_deref(), &exclude, order) {
        Ok(p) => Some(p),
        Err(e) => {
            c.add(svc, "tags", e.to_string());
            None
        }
    };
    let rollout = s.rollout.map(|r| {
        let job = r.job.unwrap_or_default();
        if job.is_empty() {
            c.add(svc, "rollout.job", "is required");
        }
        let strategy = match r.strategy.as_deref() {
            None | Some("template") => Strategy::Template,
            Some("jobspec") => Strategy::Jobspec,
            Some(o) => {
                c.add(svc, "rollout.strategy", format!("{o:?} is not template or jobspec (omit the rollout block for KV only)"));
                Strategy::Template
            }
        };
        let meta_key = r.meta_key.unwrap_or_else(|| "image_tag".into());
        if meta_key.is_empty() || !meta_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            c.add(svc, "rollout.meta_key", format!("{meta_key:?} must be letters, digits and '_' (it becomes NOMAD_META_{meta_key})"));
        }
        if let Some(u) = &r.verify_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.parse::<http::Uri>().is_err() {
                c.add(svc, "rollout.verify_url", format!("{u:?} is not an http(s) URL"));
            }
        }
        let timeout = match r.timeout.as_deref().map(parse_duration) {
            None => Duration::from_secs(15 * 60),
            Some(Ok(d)) if d >= Duration::from_secs(10) => d,
            Some(Ok(_)) => {
                c.add(svc, "rollout.timeout", "must be at least 10s");
                Duration::from_secs(15 * 60)
            }
            Some(Err(e)) => {
                c.add(svc, "rollout.timeout", e);
                Duration::from_secs(15 * 60)
            }
        };
        RolloutConfig {
            job,
            namespace: r.namespace.unwrap_or_else(|| "default".into()),
            strategy,
            meta_key,
            verify_url: r.verify_url,
            timeout,
        }
    });
    if c.problems.len() != before {
        return None;
    }
    Some(ServiceConfig {
        name: name.to_string(),
        secret_sha256,
        source,
        repository: repository.trim().to_string(),
        key,
        signing_secret,
        allow_cidrs,
        history_keep,
        policy: TagPolicyConfig {
            include,
            exclude,
            order,
            policy: std::sync::Arc::new(policy?),
        },
        rollout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const SHA: &str = "9f2c1e6b8a0d4c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.hcl"), text, Purpose::Client, &no_env)
    }

    #[test]
    fn deep_nesting_is_refused_before_the_parser() {
        // The `config` fuzz target's slow input (first byte: its control).
        let raw = include_bytes!(
            "../fuzz/known-slow/config/timeout-18e6ee20ff8d84c1c2f80add9544e3ea3b9b3f1a"
        );
        let text = String::from_utf8_lossy(&raw[1..]);
        // Refused by the pre-check, so the parser never saw it.
        let err = parse(&text).unwrap_err();
        assert!(
            err.0[0].message.contains("nested deeper than 20"),
            "{}",
            err.0[0]
        );
        // Brackets inside strings do not count; ordinary nesting passes.
        let regex = format!(
            r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "dockerhub"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
                 tags {{ include = "^{}[0-9]{{14}}$" }}
               }}"#,
            "{[(".repeat(30)
        );
        assert!(nesting_within(&regex, MAX_NESTING).is_ok());
        assert!(nesting_within(&"{".repeat(21), MAX_NESTING).is_err());
        assert!(nesting_within(&"{}".repeat(100), MAX_NESTING).is_ok());
    }

    #[test]
    fn minimal_service_gets_defaults() {
        let cfg = parse(&format!(
            r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "dockerhub"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
               }}"#
        ))
        .expect("valid");
        assert_eq!(cfg.state_prefix, "tagbridge");
        assert_eq!(cfg.consul.address, "http://127.0.0.1:8500");
        let s = &cfg.services[0];
        assert_eq!(s.history_keep, 100);
        assert_eq!(s.allow_cidrs.len(), 2);
        assert!(s.rollout.is_none());
    }

    #[test]
    fn listener_limits_default_and_every_bad_one_is_reported() {
        let svc = format!(
            r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "dockerhub"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
               }}"#
        );
        let cfg = parse(&svc).expect("valid");
        assert_eq!(cfg.listener, ListenerSettings::DEFAULT);
        assert_eq!(cfg.max_connections, 1024);
        // A small max_connections lowers the per-address default with it.
        let cfg = parse(&format!("max_connections = 8\n{svc}")).expect("valid");
        assert_eq!(cfg.listener.max_connections_per_address, 2);
        let cfg = parse(&format!(
            "first_request_timeout = \"3s\"\nidle_timeout = \"90s\"\nmax_headers = 20\n{svc}"
        ))
        .expect("valid");
        assert_eq!(cfg.listener.first_request_timeout, Duration::from_secs(3));
        assert_eq!(cfg.listener.idle_timeout, Duration::from_secs(90));
        assert_eq!(cfg.listener.max_headers, 20);

        let err = parse(&format!(
            r#"max_connections = 100
               first_request_timeout = "0s"
               idle_timeout = "soon"
               max_connections_per_address = 100
               http2_max_concurrent_streams = 0
               max_header_bytes = 1024
               max_headers = 100000
               failed_attempts_max_addresses = 0
               {svc}"#
        ))
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "t.hcl: first_request_timeout: must be longer than zero",
            "t.hcl: idle_timeout: ",
            "t.hcl: max_connections_per_address: 100 must be below max_connections (100)",
            "t.hcl: http2_max_concurrent_streams: 0 is not between 1 and 1000",
            "t.hcl: max_header_bytes: 1024 is not between 8192 and 1048576",
            "t.hcl: max_headers: 100000 is not between 8 and 1000",
            "t.hcl: failed_attempts_max_addresses: 0 is not between 1 and 16777216",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(text.lines().count(), 7, "{text}");
    }

    #[test]
    fn every_problem_is_reported_with_service_and_field() {
        let err = parse(
            r#"listen = "nope"
               service "web" {
                 secret_sha256 = "abc"
                 source = "dockrhub"
                 key = "/configs/"
                 history_keep = 0
                 tags { include = "([" }
               }"#,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "t.hcl: listen: \"nope\" is not an ip:port address",
            "t.hcl: service \"web\": secret_sha256: must be 64 hex characters",
            "t.hcl: service \"web\": source: unknown source \"dockrhub\"",
            "t.hcl: service \"web\": repository: is required",
            "t.hcl: service \"web\": key: ",
            "t.hcl: service \"web\": history_keep: 0 is outside",
            "t.hcl: service \"web\": tags: ",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert_eq!(text.lines().count(), err.0.len());
    }

    #[test]
    fn github_requires_signing_secret_and_dockerhub_refuses_one() {
        let err = parse(&format!(
            r#"service "a" {{
                 secret_sha256 = "{SHA}"
                 source = "github"
                 repository = "acme/a"
                 key = "k/a"
               }}
               service "b" {{
                 secret_sha256 = "{}"
                 source = "dockerhub"
                 repository = "acme/b"
                 key = "k/b"
                 signing_secret_file = "/nonexistent"
               }}"#,
            SHA.replace('9', "8")
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("service \"a\": signing_secret_file: is required for source github"),
            "{text}"
        );
        assert!(
            text.contains(
                "service \"b\": signing_secret_file: source dockerhub has no signature scheme"
            ),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_fail_closed() {
        let err = parse("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn env_defaults_apply() {
        let env = |k: &str| match k {
            "CONSUL_HTTP_ADDR" => Some("127.0.0.1:18500".to_string()),
            "CONSUL_HTTP_TOKEN" => Some("tok\n".to_string()),
            "NOMAD_ADDR" => Some("https://nomad:4646".to_string()),
            _ => None,
        };
        let cfg = Config::parse(
            Path::new("t.hcl"),
            &format!(
                r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "quay"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
               }}"#
            ),
            Purpose::Client,
            &env,
        )
        .expect("valid");
        assert_eq!(cfg.consul.address, "http://127.0.0.1:18500");
        assert_eq!(
            cfg.consul.token.as_ref().map(Secret::expose),
            Some(&b"tok"[..])
        );
        assert_eq!(cfg.nomad.address, "https://nomad:4646");
        assert_eq!(
            format!("{:?}", cfg.consul.token),
            "Some(Secret(<redacted>))"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn serve_requires_tls() {
        let err = Config::parse(
            Path::new("t.hcl"),
            &format!(
                r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "quay"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
               }}"#
            ),
            Purpose::Serve,
            &no_env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("t.hcl: tls: a tls block"), "{err}");
    }
}

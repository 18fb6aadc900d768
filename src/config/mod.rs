//! Configuration: one HCL file, validated once, failing closed.
//!
//! Operators already have HashiCorp's environment variables set for the
//! `consul` and `nomad` CLIs, so those are the defaults here too. Secrets
//! (tokens, signing secrets, notification URLs) are only ever read from
//! files or the environment, never written inline, so the config file can
//! live in version control. Every problem is reported at once, one line
//! each, naming the file, the service and the field.
//!
//! One file per block: `listener` (the top level and `tls`), `cluster`
//! (`consul`, `nomad`), `notify`, `service` (with `tags` and `rollout`),
//! `registry` (a service's registry);
//! `raw` is the file's shape as HCL gives it, `typed` reads it (each value
//! of the wrong type one problem), `fields` the checks they share. The
//! validated shapes are here.

mod cluster;
mod fields;
mod keys;
mod listener;
mod notify;
mod raw;
pub mod registry;
mod service;
mod typed;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::clients::http::ClientTlsFiles;
use crate::policy::{Order, TagPolicy};
use crate::store::records::Event;
use crate::webhook::Source;
pub use fields::parse_duration;
use fields::Collector;
pub use keys::accepted_keys;

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
    /// Choices that load but deserve a word: `check` prints them, `serve`
    /// logs them.
    pub warnings: Vec<Problem>,
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

/// `log_format`; the serde spelling is the config syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl LogFormat {
    /// Every value, in the order problems list them.
    pub const ALL: [LogFormat; 2] = [LogFormat::Json, LogFormat::Pretty];
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
    /// Which outcomes this target hears of (`deployed`, `rolled_back`,
    /// `failed`).
    pub events: Vec<Event>,
}

/// A notice's body: `slack` (`{"text"}`) or `json` (every field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    Slack,
    Json,
}

impl NotifyFormat {
    /// Every value, in the order problems list them.
    pub const ALL: [NotifyFormat; 2] = [NotifyFormat::Slack, NotifyFormat::Json];
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub secret_sha256: [u8; 32],
    pub source: Source,
    pub repository: String,
    pub key: String,
    /// Where the digest of the tag in `key` is written, in the same
    /// transaction (deleted when that tag's digest is unknown).
    pub digest_key: Option<String>,
    /// Ask the registry for the digest of a push whose payload has none
    /// (Docker Hub, Quay), so a re-pushed tag is a change.
    pub resolve_digest: bool,
    pub signing_secret: Option<Secret>,
    pub allow_cidrs: Vec<IpNet>,
    pub history_keep: usize,
    pub policy: TagPolicyConfig,
    pub rollout: Option<RolloutConfig>,
    /// Where the repository's images live (`tagbridge sync` lists its
    /// tags): the `registry` block, or the source's own registry.
    pub registry: Option<RegistryConfig>,
    /// How often the leader syncs the service from its registry.
    pub poll_interval: Option<Duration>,
}

/// A service's registry (see [`registry::default_address`]).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `https://host[:port]`, or `http://` for an internal registry.
    pub address: String,
    pub credentials: RegistryCredentials,
    /// PEM bundle of CAs to trust instead of the system store.
    pub ca_file: Option<PathBuf>,
}

/// How tagbridge proves itself to a registry.
#[derive(Debug, Clone)]
pub enum RegistryCredentials {
    Anonymous,
    Basic {
        username: Secret,
        password: Secret,
    },
    /// A bearer token, sent as it is.
    Token(Secret),
}

/// The tag policy plus the text it came from (for `check` and `status`).
#[derive(Debug, Clone)]
pub struct TagPolicyConfig {
    pub include: Option<String>,
    pub exclude: Vec<String>,
    pub order: Order,
    pub policy: std::sync::Arc<TagPolicy>,
}

/// How a rollout reaches the job: `template` (the task re-renders the
/// key) or `jobspec` (tagbridge sets a job meta key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Template,
    Jobspec,
}

impl Strategy {
    /// Every value, in the order problems list them.
    pub const ALL: [Strategy; 2] = [Strategy::Template, Strategy::Jobspec];
}

#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// The jobs that run the image, rolled in this order, each gated
    /// (`job = "web"` is a list of one).
    pub jobs: Vec<String>,
    pub namespace: String,
    pub strategy: Strategy,
    pub meta_key: String,
    pub verify_url: Option<String>,
    pub timeout: Duration,
}

impl RolloutConfig {
    /// The first job (the one a single-job rollout names).
    pub fn first_job(&self) -> &str {
        self.jobs.first().map_or("", String::as_str)
    }

    /// The whole rollout's bound: `timeout` bounds each job's deployment.
    pub fn total_timeout(&self) -> Duration {
        self.timeout
            .saturating_mul(u32::try_from(self.jobs.len().max(1)).unwrap_or(u32::MAX))
    }
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
    /// One block at a time, in the file's order of concerns, so problems
    /// are reported in the same order every time.
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
        let mut c = Collector::new(path.display().to_string());
        let Some(raw) = typed::read_raw(&mut c, text) else {
            return Err(ConfigError(c.problems));
        };
        let front = listener::front(&mut c, &raw);
        let tls = listener::tls(&mut c, raw.tls, purpose);
        let consul = cluster::consul(&mut c, raw.consul.unwrap_or_default(), env);
        let nomad = cluster::nomad(&mut c, raw.nomad.unwrap_or_default(), env);
        let notify = notify::blocks(&mut c, raw.notify.unwrap_or_default(), purpose);
        let services = service::blocks(
            &mut c,
            raw.service.unwrap_or_default(),
            &front.state_prefix,
            purpose,
        );
        let warnings = std::mem::take(&mut c.warnings);
        c.finish(Config {
            path: path.to_path_buf(),
            listen: front.listen,
            admin_listen: front.admin_listen,
            state_prefix: front.state_prefix,
            trusted_proxies: front.trusted_proxies,
            failed_attempts_per_minute: front.failed_attempts_per_minute,
            max_connections: front.max_connections,
            listener: front.listener,
            log_format: front.log_format,
            tls,
            consul,
            nomad,
            notify,
            services,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fields::{nesting_within, MAX_NESTING};
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const SHA: &str = "9f2c1e6b8a0d4c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3";

    /// A valid `service "web"` block for `source`, `extra` lines inside.
    fn web(source: &str, extra: &str) -> String {
        format!(
            r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "{source}"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
                 {extra}
               }}"#
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.hcl"), text, Purpose::Client, &no_env)
    }

    #[test]
    fn deep_nesting_is_refused_before_the_parser() {
        // The `config` fuzz target's slow input (first byte: its control).
        let raw = include_bytes!(
            "../../fuzz/known-slow/config/timeout-18e6ee20ff8d84c1c2f80add9544e3ea3b9b3f1a"
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
        let regex = web(
            "dockerhub",
            &format!(
                r#"tags {{ include = "^{}[0-9]{{14}}$" }}"#,
                "{[(".repeat(30)
            ),
        );
        assert!(nesting_within(&regex, MAX_NESTING).is_ok());
        assert!(nesting_within(&"{".repeat(21), MAX_NESTING).is_err());
        assert!(nesting_within(&"{}".repeat(100), MAX_NESTING).is_ok());
    }

    #[test]
    fn minimal_service_gets_defaults() {
        let cfg = parse(&web("dockerhub", "")).expect("valid");
        assert_eq!(cfg.state_prefix, "tagbridge");
        assert_eq!(cfg.consul.address, "http://127.0.0.1:8500");
        let s = &cfg.services[0];
        assert_eq!(s.history_keep, 100);
        assert_eq!(s.allow_cidrs.len(), 2);
        assert!(s.rollout.is_none());
    }

    #[test]
    fn listener_limits_default_and_every_bad_one_is_reported() {
        let svc = web("dockerhub", "");
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
        let cfg = Config::parse(Path::new("t.hcl"), &web("quay", ""), Purpose::Client, &env)
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
            &web("quay", ""),
            Purpose::Serve,
            &no_env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("t.hcl: tls: a tls block"), "{err}");
    }

    /// The closed sets are enums whose serde spelling is the syntax; a
    /// word outside one names the field and the allowed words, as the
    /// string checks did.
    #[test]
    fn closed_sets_name_the_field_and_the_allowed_words() {
        let svc = |rollout: &str| web("dockerhub", rollout);
        let cfg = parse(&format!(
            r#"log_format = "pretty"
               notify "ops" {{
                 url_file = "/nonexistent"
                 format = "json"
                 events = ["failed", "deployed"]
               }}
               {}"#,
            svc("rollout {\n job = \"web\"\n strategy = \"jobspec\"\n }")
        ))
        .expect("valid");
        assert_eq!(cfg.log_format, LogFormat::Pretty);
        assert_eq!(cfg.notify[0].format, NotifyFormat::Json);
        assert_eq!(cfg.notify[0].events, [Event::Failed, Event::Deployed]);
        let rc = cfg.services[0].rollout.as_ref().unwrap();
        assert_eq!(rc.strategy, Strategy::Jobspec);
        let cfg = parse(&format!(
            "notify \"ops\" {{\n url_file = \"/x\"\n}}\n{}",
            svc("rollout {\n job = \"web\"\n }")
        ))
        .expect("valid");
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.notify[0].format, NotifyFormat::Slack);
        assert_eq!(
            cfg.notify[0].events,
            [Event::Deployed, Event::RolledBack, Event::Failed]
        );
        assert_eq!(
            cfg.services[0].rollout.as_ref().unwrap().strategy,
            Strategy::Template
        );

        let err = parse(&format!(
            r#"log_format = "Pretty"
               notify "ops" {{
                 url_file = "/x"
                 format = "teams"
                 events = ["deployed", "received"]
               }}
               {}"#,
            svc("rollout {\n job = \"web\"\n strategy = \"canary\"\n }")
        ))
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            [
                r#"t.hcl: log_format: "Pretty" is not json or pretty"#,
                r#"t.hcl: notify.ops.format: "teams" is not slack or json"#,
                r#"t.hcl: notify.ops.events: "received" is not one of deployed, rolled_back, failed"#,
                r#"t.hcl: service "web": rollout.strategy: "canary" is not template or jobspec (omit the rollout block for KV only)"#,
            ]
            .join("\n")
        );
    }

    /// `jobs` lists a rollout's jobs in the order they roll; `job` is a
    /// list of one. A job named twice would be registered twice in one
    /// rollout, so it is refused, as is naming none or both fields.
    #[test]
    fn rollout_jobs_are_one_ordered_list_of_distinct_ids() {
        let svc = |body: &str| {
            web(
                "dockerhub",
                &format!("rollout {{\n {body}\n timeout = \"2m\"\n }}"),
            )
        };
        let cfg = parse(&svc(r#"jobs = ["web", "worker"]"#)).expect("valid");
        let rc = cfg.services[0].rollout.as_ref().unwrap();
        assert_eq!(rc.jobs, ["web", "worker"]);
        assert_eq!(rc.first_job(), "web");
        assert_eq!(rc.total_timeout(), Duration::from_secs(240));
        let cfg = parse(&svc(r#"job = "web""#)).expect("valid");
        assert_eq!(cfg.services[0].rollout.as_ref().unwrap().jobs, ["web"]);
        for (body, want) in [
            (
                r#"job = "web"
 jobs = ["worker"]"#,
                "rollout.jobs: set either job or jobs, not both",
            ),
            ("", "rollout.job: is required (or jobs, for several)"),
            ("jobs = []", "rollout.jobs: names 0 jobs; name 1 to 16"),
            (
                r#"jobs = ["web", "worker", "web"]"#,
                r#"rollout.jobs: "web" is named twice"#,
            ),
            (
                r#"jobs = ["web/../x"]"#,
                r#"rollout.jobs: "web/../x" is not a Nomad job ID"#,
            ),
        ] {
            let err = parse(&svc(body)).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    /// One duration helper: each field keeps its own bounds and default.
    #[test]
    fn durations_are_bounded_per_field() {
        let svc = |timeout: &str| {
            web(
                "dockerhub",
                &format!("rollout {{\n job = \"web\"\n {timeout}\n }}"),
            )
        };
        let cfg = parse(&svc("")).expect("valid");
        assert_eq!(cfg.consul.timeout, Duration::from_secs(5));
        let rc = cfg.services[0].rollout.as_ref().unwrap();
        assert_eq!(rc.timeout, Duration::from_secs(900));
        let cfg = parse(&format!(
            "consul {{\n timeout = \"100ms\"\n}}\nidle_timeout = \"1h\"\n{}",
            svc(r#"timeout = "10s""#)
        ))
        .expect("valid");
        assert_eq!(cfg.consul.timeout, Duration::from_millis(100));
        assert_eq!(cfg.listener.idle_timeout, Duration::from_secs(3600));
        let rc = cfg.services[0].rollout.as_ref().unwrap();
        assert_eq!(rc.timeout, Duration::from_secs(10));

        let err = parse(&format!(
            "consul {{\n timeout = \"99ms\"\n}}\nidle_timeout = \"61m\"\n{}",
            svc(r#"timeout = "9s""#)
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            [
                r#"t.hcl: idle_timeout: "61m" is over the maximum of 1h"#,
                "t.hcl: consul.timeout: must be at least 100ms",
                r#"t.hcl: service "web": rollout.timeout: must be at least 10s"#,
            ]
            .join("\n")
        );
    }

    /// Every duration field has an upper bound: at it the value is taken;
    /// past it (even absurdly, past what an `Instant` can hold) `check`
    /// reports one problem naming the field and the bound.
    #[test]
    fn every_duration_has_an_upper_bound() {
        let file = |field: &str, value: &str| {
            let (top, consul, poll, rollout) = match field {
                "consul.timeout" => ("", format!("timeout = \"{value}\""), "", String::new()),
                "poll_interval" => ("", String::new(), value, String::new()),
                "rollout.timeout" => ("", String::new(), "", format!("timeout = \"{value}\"")),
                _ => (field, String::new(), "", String::new()),
            };
            let top = if top.is_empty() {
                String::new()
            } else {
                format!("{top} = \"{value}\"")
            };
            let poll = if poll.is_empty() {
                String::new()
            } else {
                format!("poll_interval = \"{poll}\"")
            };
            let extra = format!(
                "tags {{\n order = \"semver\"\n }}\n {poll}\n rollout {{\n job = \"web\"\n {rollout}\n }}"
            );
            format!(
                "{top}\nconsul {{\n {consul}\n}}\n{}",
                web("dockerhub", &extra)
            )
        };
        for (field, max, over, prefix) in [
            ("first_request_timeout", "1h", "61m", ""),
            ("idle_timeout", "1h", "3601s", ""),
            ("consul.timeout", "10m", "601s", ""),
            ("poll_interval", "24h", "1441m", r#"service "web": "#),
            ("rollout.timeout", "24h", "100000000h", r#"service "web": "#),
        ] {
            let cfg = parse(&file(field, max)).unwrap_or_else(|e| panic!("{field} = {max}: {e}"));
            let rc = cfg.services[0].rollout.as_ref().unwrap();
            let got = match field {
                "first_request_timeout" => cfg.listener.first_request_timeout,
                "idle_timeout" => cfg.listener.idle_timeout,
                "consul.timeout" => cfg.consul.timeout,
                "poll_interval" => cfg.services[0].poll_interval.unwrap(),
                _ => rc.timeout,
            };
            assert_eq!(Some(got), parse_duration(max).ok(), "{field}");

            for over in [over, "18446744073709551615s", "99999999999999999h"] {
                let err = parse(&file(field, over)).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    format!("t.hcl: {prefix}{field}: {over:?} is over the maximum of {max}"),
                );
            }
        }
    }

    #[test]
    fn the_registry_follows_the_source_or_its_block() {
        let cfg = parse(&web("dockerhub", "")).unwrap();
        let r = cfg.services[0].registry.as_ref().expect("docker hub's own");
        assert_eq!(r.address, "https://registry-1.docker.io");
        assert!(matches!(r.credentials, RegistryCredentials::Anonymous));
        assert!(cfg.warnings.is_empty());

        // Harbor has no one registry: none without a block, and a block
        // must name it.
        let harbor = parse(&web("harbor", "")).unwrap();
        assert!(harbor.services[0].registry.is_none());
        let err = parse(&web("harbor", "registry {}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("registry.address: is required for source harbor"),
            "{err}"
        );

        let internal = parse(&web(
            "harbor",
            r#"registry { address = "http://harbor.internal:8080" }"#,
        ))
        .unwrap();
        assert_eq!(internal.warnings.len(), 1);
        assert!(internal.warnings[0].to_string().contains("plain http"));

        let err = parse(&web(
            "quay",
            r#"registry {
                 username_file = "/nonexistent/u"
                 token_file    = "/nonexistent/t"
               }"#,
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("registry.token_file: is exclusive"),
            "{err}"
        );
        let err = parse(&web(
            "quay",
            r#"registry { username_file = "/nonexistent/u" }"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("must be set together"), "{err}");
    }

    #[test]
    fn digest_key_is_checked_like_key_and_never_shared() {
        let cfg = parse(&web(
            "dockerhub",
            "digest_key = \"configs/web/IMAGE_DIGEST\"\nresolve_digest = true",
        ))
        .expect("valid");
        let s = &cfg.services[0];
        assert_eq!(s.digest_key.as_deref(), Some("configs/web/IMAGE_DIGEST"));
        assert!(s.resolve_digest);
        assert!(!parse(&web("dockerhub", "")).unwrap().services[0].resolve_digest);

        let err = parse(&web("dockerhub", "digest_key = \"configs/web/IMAGE_TAG\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"t.hcl: service "web": digest_key: must differ from key: the tag and its digest are two values"#
        );
        let err = parse(&web("dockerhub", "digest_key = \"tagbridge/web\"")).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"digest_key: "tagbridge/web" is inside state_prefix"#),
            "{err}"
        );
        let err = parse(&web("dockerhub", "digest_key = \"/x/\"")).unwrap_err();
        assert!(
            err.to_string().contains("service \"web\": digest_key: "),
            "{err}"
        );

        // Across services: a digest key may be neither another's key nor
        // another's digest key, in either direction.
        let two = |a_extra: &str, b_key: &str, b_extra: &str| {
            format!(
                r#"{}
                   service "zzz" {{
                     secret_sha256 = "{}"
                     source = "quay"
                     repository = "acme/zzz"
                     key = "{b_key}"
                     {b_extra}
                   }}"#,
                web("dockerhub", a_extra),
                SHA.replace('9', "8")
            )
        };
        let err = parse(&two("", "k/z", "digest_key = \"configs/web/IMAGE_TAG\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"t.hcl: service "zzz": digest_key: "configs/web/IMAGE_TAG" is also service "web"'s key"#
        );
        let err = parse(&two("digest_key = \"d/web\"", "d/web", "")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"t.hcl: service "zzz": key: "d/web" is also service "web"'s digest_key"#
        );
        let err = parse(&two("digest_key = \"d/x\"", "k/z", "digest_key = \"d/x\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"t.hcl: service "zzz": digest_key: "d/x" is also service "web"'s digest_key"#
        );
        assert!(parse(&two(
            "digest_key = \"d/web\"",
            "k/z",
            "digest_key = \"d/z\""
        ))
        .is_ok());
    }

    #[test]
    fn resolve_digest_needs_a_registry() {
        let err = parse(&web("harbor", "resolve_digest = true")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"t.hcl: service "web": resolve_digest: needs a registry: source harbor has no one address; add a registry block with its address"#
        );
        let cfg = parse(&web(
            "harbor",
            "resolve_digest = true\nregistry { address = \"https://harbor.internal\" }",
        ))
        .expect("valid");
        assert!(cfg.services[0].resolve_digest);
        // Docker Hub and Quay have their registry by default.
        assert!(parse(&web("quay", "resolve_digest = true")).is_ok());
    }
}

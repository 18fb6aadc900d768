//! The `service "<name>"` blocks, with their `tags` and `rollout` blocks:
//! which webhook URL feeds which KV key, under what tag policy, and how
//! the Nomad job follows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::fields::{
    duration_within, nets, read_secret_file, valid_key, valid_name, word_or, Collector,
};
use super::raw::{RawRollout, RawService, RawTags};
use super::{Purpose, RolloutConfig, Secret, ServiceConfig, Strategy, TagPolicyConfig};
use crate::policy::{Order, TagPolicy};
use crate::webhook::{grammar, Source};

/// Every `service` block (at least one), in name order.
pub(super) fn blocks(
    c: &mut Collector,
    raw: BTreeMap<String, RawService>,
    state_prefix: &str,
    purpose: Purpose,
) -> Vec<ServiceConfig> {
    if raw.is_empty() {
        c.add(None, "service", "at least one service block is required");
    }
    let services: Vec<ServiceConfig> = raw
        .into_iter()
        .filter_map(|(name, s)| service(c, &name, s, state_prefix, purpose))
        .collect();
    unique(c, &services);
    services
}

/// Uniqueness across services: a shared secret would make routing
/// ambiguous, a shared key would let two services fight over it.
fn unique(c: &mut Collector, services: &[ServiceConfig]) {
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
            // Every KV key one service writes against every key another
            // writes: the tag key and the digest key alike.
            for (field, mine) in written_keys(b) {
                if let Some((theirs, _)) = written_keys(a).find(|(_, k)| *k == mine) {
                    c.add(
                        Some(&b.name),
                        field,
                        format!("{mine:?} is also service {:?}'s {theirs}", a.name),
                    );
                }
            }
        }
    }
}

/// The KV keys a service writes, with the field that names each.
fn written_keys(s: &ServiceConfig) -> impl Iterator<Item = (&'static str, &str)> {
    std::iter::once(("key", s.key.as_str()))
        .chain(s.digest_key.as_deref().map(|d| ("digest_key", d)))
}

/// One service block; `None` when anything in it is wrong.
fn service(
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
    let secret_sha256 = secret_sha256(c, name, s.secret_sha256.as_deref());
    let source = source(c, name, s.source.as_deref());
    let repository = repository(c, name, s.repository.unwrap_or_default());
    let digest_key = s
        .digest_key
        .map(|d| key(c, name, "digest_key", d, state_prefix));
    let key = key(c, name, "key", s.key.unwrap_or_default(), state_prefix);
    if digest_key.as_deref() == Some(key.as_str()) {
        c.add(
            svc,
            "digest_key",
            "must differ from key: the tag and its digest are two values",
        );
    }
    let signing_secret = signing_secret(c, name, s.signing_secret_file, source, purpose);
    let allow_cidrs = allow_cidrs(c, name, s.allow_cidrs);
    let history_keep = history_keep(c, name, s.history_keep);
    let policy = tags(c, name, s.tags.unwrap_or_default());
    let rollout = s.rollout.map(|r| rollout(c, name, r));
    let registry = super::registry::block(c, name, source, s.registry);
    let poll_interval = poll_interval(c, name, s.poll_interval.as_deref(), &registry, &policy);
    let resolve_digest = s.resolve_digest.unwrap_or(false);
    if resolve_digest && registry.is_none() {
        c.add(
            svc,
            "resolve_digest",
            format!("needs a registry: source {source} has no one address; add a registry block with its address"),
        );
    }
    if c.problems.len() != before {
        return None;
    }
    Some(ServiceConfig {
        name: name.to_string(),
        secret_sha256,
        source,
        repository,
        key,
        digest_key,
        resolve_digest,
        signing_secret,
        allow_cidrs,
        history_keep,
        policy: policy?,
        rollout,
        registry,
        poll_interval,
    })
}

/// The registry source (`generic` when missing or unknown, reported).
fn source(c: &mut Collector, name: &str, text: Option<&str>) -> Source {
    match text {
        None => {
            c.add(Some(name), "source", "is required");
            Source::Generic
        }
        Some(v) => v.parse().unwrap_or_else(|e: String| {
            c.add(Some(name), "source", e);
            Source::Generic
        }),
    }
}

/// History entries kept: 1 to 10 000, 100 by default.
fn history_keep(c: &mut Collector, name: &str, n: Option<i64>) -> usize {
    match n {
        None => 100,
        Some(n) if (1..=10_000).contains(&n) => n as usize,
        Some(n) => {
            c.add(
                Some(name),
                "history_keep",
                format!("{n} is outside 1..=10000"),
            );
            100
        }
    }
}

/// The sha256 of the URL secret (never the secret itself).
fn secret_sha256(c: &mut Collector, name: &str, hex_text: Option<&str>) -> [u8; 32] {
    let mut out = [0u8; 32];
    match hex_text {
        None | Some("") => c.add(
            Some(name),
            "secret_sha256",
            "is required (`tagbridge secret` makes one)",
        ),
        Some(h) => match hex::decode(h) {
            Ok(b) if b.len() == 32 => out.copy_from_slice(&b),
            _ => c.add(
                Some(name),
                "secret_sha256",
                "must be 64 hex characters: the sha256 of the URL secret, never the secret itself",
            ),
        },
    }
    out
}

/// The repository payloads must name, trimmed.
fn repository(c: &mut Collector, name: &str, repository: String) -> String {
    let repository = repository.trim();
    if repository.is_empty() {
        c.add(
            Some(name),
            "repository",
            "is required: payloads must name this repository",
        );
    } else if let Err(e) = grammar::check_repository(&grammar::normalise_repository(repository)) {
        // Payloads are held to the OCI name grammar; a configured name
        // outside it could never match one.
        c.add(Some(name), "repository", e);
    }
    repository.to_string()
}

/// A KV key the service writes (`field`: `key`, the tag's, or
/// `digest_key`): never inside tagbridge's own prefix.
fn key(c: &mut Collector, name: &str, field: &str, key: String, state_prefix: &str) -> String {
    if let Err(e) = valid_key(&key) {
        c.add(Some(name), field, e);
    } else if key == state_prefix || key.starts_with(&format!("{state_prefix}/")) {
        c.add(
            Some(name),
            field,
            format!("{key:?} is inside state_prefix {state_prefix:?}, which tagbridge owns"),
        );
    }
    key
}

/// The signing secret: required by sources that sign, refused by sources
/// that cannot, read only when serving.
fn signing_secret(
    c: &mut Collector,
    name: &str,
    file: Option<String>,
    source: Source,
    purpose: Purpose,
) -> Option<Secret> {
    let svc = Some(name);
    match (file, source.accepts_signing_secret()) {
        (Some(_), false) => {
            c.add(svc, "signing_secret_file", format!("source {source} has no signature scheme; its URL secret (and allow_cidrs) authenticate it"));
            None
        }
        (Some(p), true) if purpose == Purpose::Serve => read_secret_file(&p)
            .map_err(|e| c.add(svc, "signing_secret_file", e))
            .ok(),
        (Some(_), true) => None,
        (None, _) => {
            if source.requires_signing_secret() {
                c.add(svc, "signing_secret_file", format!("is required for source {source}: its payloads are only trusted when signed"));
            }
            None
        }
    }
}

/// The client networks a webhook may come from (unset: everywhere).
fn allow_cidrs(c: &mut Collector, name: &str, list: Option<Vec<String>>) -> Vec<IpNet> {
    let Some(list) = list else {
        return vec![
            "0.0.0.0/0".parse().expect("cidr"),
            "::/0".parse().expect("cidr"),
        ];
    };
    if list.is_empty() {
        c.add(
            Some(name),
            "allow_cidrs",
            "is empty, so every request would be refused; omit it to allow all",
        );
    }
    nets(c, Some(name), "allow_cidrs", &list)
}

/// The `tags` block: the tag policy, compiled once (`None`: it does not).
fn tags(c: &mut Collector, name: &str, tags: RawTags) -> Option<TagPolicyConfig> {
    let order = match tags.order.as_deref() {
        None => Order::Pushed,
        Some(o) => o.parse().unwrap_or_else(|e: crate::policy::PolicyError| {
            c.add(Some(name), "tags.order", e.to_string());
            Order::Pushed
        }),
    };
    let exclude = tags.exclude.unwrap_or_default();
    let include = tags.include.filter(|i| !i.is_empty());
    match TagPolicy::new(include.as_deref(), &exclude, order) {
        Ok(p) => Some(TagPolicyConfig {
            include,
            exclude,
            order,
            policy: Arc::new(p),
        }),
        Err(e) => {
            c.add(Some(name), "tags", e.to_string());
            None
        }
    }
}

/// The `rollout` block: which Nomad jobs follow the key, and how.
fn rollout(c: &mut Collector, name: &str, r: RawRollout) -> RolloutConfig {
    let svc = Some(name);
    let jobs = rollout_jobs(c, name, r.job, r.jobs);
    let strategy = word_or(
        c,
        svc,
        "rollout.strategy",
        r.strategy.as_deref(),
        (&Strategy::ALL, Strategy::Template),
        " (omit the rollout block for KV only)",
    );
    let meta_key = r.meta_key.unwrap_or_else(|| "image_tag".into());
    if meta_key.is_empty()
        || !meta_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        c.add(
            svc,
            "rollout.meta_key",
            format!(
                "{meta_key:?} must be letters, digits and '_' (it becomes NOMAD_META_{meta_key})"
            ),
        );
    }
    if let Some(u) = &r.verify_url {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || u.parse::<http::Uri>().is_err()
        {
            c.add(
                svc,
                "rollout.verify_url",
                format!("{u:?} is not an http(s) URL"),
            );
        }
    }
    let timeout = duration_within(
        c,
        svc,
        "rollout.timeout",
        r.timeout.as_deref(),
        Duration::from_secs(10)..=Duration::from_secs(24 * 3600),
        Duration::from_secs(15 * 60),
    );
    RolloutConfig {
        jobs,
        namespace: r.namespace.unwrap_or_else(|| "default".into()),
        strategy,
        meta_key,
        verify_url: r.verify_url,
        timeout,
    }
}

/// Most jobs one rollout may name: each is rolled and gated in turn, so
/// the list is a handful of jobs sharing an image, not a fleet.
const MAX_JOBS: usize = 16;

/// `job = "web"` or `jobs = ["web", "worker"]` (exactly one of them): the
/// jobs in the order they roll. A job named twice would be registered
/// twice in one rollout (I3).
fn rollout_jobs(
    c: &mut Collector,
    name: &str,
    job: Option<String>,
    jobs: Option<Vec<String>>,
) -> Vec<String> {
    let svc = Some(name);
    let list = match (job, jobs) {
        (Some(_), Some(_)) => {
            c.add(svc, "rollout.jobs", "set either job or jobs, not both");
            return Vec::new();
        }
        (Some(j), None) => vec![j],
        (None, Some(list)) => list,
        (None, None) => {
            // A `jobs` of the wrong type was reported as that already.
            if !c.is_quiet(svc, "rollout.jobs") {
                c.add(svc, "rollout.job", "is required (or jobs, for several)");
            }
            return Vec::new();
        }
    };
    if list.is_empty() || list.len() > MAX_JOBS {
        c.add(
            svc,
            "rollout.jobs",
            format!("names {} jobs; name 1 to {MAX_JOBS}", list.len()),
        );
    }
    for (i, j) in list.iter().enumerate() {
        // Nomad job IDs: printable, no spaces, and they become URL path
        // segments in every call tagbridge makes.
        if j.is_empty()
            || j.len() > 128
            || !j
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'))
        {
            c.add(
                svc,
                "rollout.jobs",
                format!("{j:?} is not a Nomad job ID (printable, no spaces, '/', '?', '#' or '%')"),
            );
        }
        if list[..i].contains(j) {
            c.add(svc, "rollout.jobs", format!("{j:?} is named twice"));
        }
    }
    list
}

/// `poll_interval`: how often the leader syncs the service from its
/// registry (`None`: never). A registry's rate limits and a listing's cost
/// (one request per 1000 tags) bound it below; it needs a registry and an
/// order that can rank a listing.
fn poll_interval(
    c: &mut Collector,
    name: &str,
    text: Option<&str>,
    registry: &Option<super::RegistryConfig>,
    policy: &Option<TagPolicyConfig>,
) -> Option<Duration> {
    let text = text?;
    let svc = Some(name);
    let interval = duration_within(
        c,
        svc,
        "poll_interval",
        Some(text),
        Duration::from_secs(60)..=Duration::from_secs(24 * 3600),
        Duration::ZERO,
    );
    if registry.is_none() {
        c.add(
            svc,
            "poll_interval",
            "needs a registry: add a registry block with its address",
        );
    }
    if policy.as_ref().is_some_and(|p| p.order == Order::Pushed) {
        c.add(svc, "poll_interval", "needs tags.order semver, numeric or lexical: a tag listing does not say which tag was pushed last");
    }
    (!interval.is_zero()).then_some(interval)
}

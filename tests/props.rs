//! Properties of every entry point a stranger (or a config file) feeds:
//! the webhook sources, the signature checks, the config loader and the
//! tag policy.
//!
//! The oracles are the fuzz targets' own (`fuzz/src/lib.rs`, included
//! below), so `cargo test` checks the same properties the long cargo-fuzz
//! runs do, on proptest's inputs, on every seed, and on every input a
//! fuzzer ever reported (`fuzz/regressions/<target>/`). No network, no
//! agents: this file runs on any machine in a few seconds.

#[path = "../fuzz/src/lib.rs"]
mod oracles;

use std::path::Path;

use proptest::prelude::*;
use tagbridge::webhook::Source;

/// The fuzz target names, as in fuzz/Cargo.toml, with the case they run.
fn target(name: &str) -> fn(&[u8]) {
    match name {
        "webhook_dockerhub" => |d| oracles::webhook_case(Source::DockerHub, d),
        "webhook_github" => |d| oracles::webhook_case(Source::Github, d),
        "webhook_quay" => |d| oracles::webhook_case(Source::Quay, d),
        "webhook_harbor" => |d| oracles::webhook_case(Source::Harbor, d),
        "webhook_acr" => |d| oracles::webhook_case(Source::Acr, d),
        "webhook_artifactory" => |d| oracles::webhook_case(Source::Artifactory, d),
        "webhook_generic" => |d| oracles::webhook_case(Source::Generic, d),
        "signature" => oracles::signature_case,
        "config" => oracles::config_case,
        "policy" => oracles::policy_case,
        other => panic!("unknown fuzz target directory {other}"),
    }
}

/// Runs every file under `fuzz/<dir>/<target>/` through its target's case;
/// returns how many ran.
fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut ran = 0;
    for entry in std::fs::read_dir(&root).expect("fuzz dir exists") {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_dir() {
            continue;
        }
        let case = target(entry.file_name().to_str().unwrap());
        for file in std::fs::read_dir(entry.path()).unwrap() {
            let path = file.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| case(&data));
            assert!(result.is_ok(), "{} breaks a property", path.display());
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_seed_meets_the_properties() {
    assert!(replay("seeds") >= 30, "the seed corpus went missing");
}

#[test]
fn every_reported_fuzz_input_meets_the_properties() {
    replay("regressions");
}

/// Fixture bodies, so generated cases start from real payloads.
fn fixture(source: Source) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(source.as_str());
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect()
}

#[test]
fn fixtures_meet_the_properties_under_every_control_byte() {
    // Every secret choice, with and without the harness's credential, in
    // both variants: 16 cases per fixture, all sources.
    for source in Source::ALL {
        let bodies = fixture(source);
        assert!(!bodies.is_empty(), "{source}: no fixtures");
        for body in &bodies {
            for control in 0..16u8 {
                for event in ["package", "registry_package", "ping"] {
                    let mut data = vec![control];
                    data.extend_from_slice(format!("X-GitHub-Event: {event}\n\n").as_bytes());
                    data.extend_from_slice(body);
                    oracles::webhook_case(source, &data);
                }
            }
        }
    }
}

/// Header lines a source may read, with awkward values.
fn header_lines() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "X-GitHub-Event",
        "X-GitHub-Delivery",
        "X-Hub-Signature-256",
        "X-JFrog-Event-Auth",
        "Authorization",
        "Content-Type",
        "x-github-event",
    ]);
    let value = prop_oneof![
        Just("package".to_owned()),
        Just("ping".to_owned()),
        Just("sha256=".to_owned()),
        "[ -~]{0,80}",
        "sha256=[0-9a-fA-F]{0,70}",
    ];
    prop::collection::vec((name, value), 0..4).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(n, v)| format!("{n}: {v}\n"))
            .collect()
    })
}

/// Bodies: a fixture with a byte range overwritten, JSON-looking noise,
/// or raw bytes.
fn body(source: Source) -> impl Strategy<Value = Vec<u8>> {
    let fixtures = fixture(source);
    prop_oneof![
        (
            prop::sample::select(fixtures),
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 0..8)
        )
            .prop_map(|(mut f, at, patch)| {
                let i = at.index(f.len());
                let end = (i + patch.len()).min(f.len());
                f.splice(i..end, patch);
                f
            }),
        r#"\{("[a-z_]{1,12}":(null|"[ -~]{0,20}"|\[\]|\{\}|[0-9]{1,3}),?){0,6}\}"#
            .prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn webhook_input(source: Source) -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), header_lines(), body(source)).prop_map(|(control, headers, body)| {
        let mut data = vec![control];
        data.extend_from_slice(headers.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(&body);
        data
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn dockerhub_properties(data in webhook_input(Source::DockerHub)) {
        oracles::webhook_case(Source::DockerHub, &data);
    }

    #[test]
    fn github_properties(data in webhook_input(Source::Github)) {
        oracles::webhook_case(Source::Github, &data);
    }

    #[test]
    fn quay_properties(data in webhook_input(Source::Quay)) {
        oracles::webhook_case(Source::Quay, &data);
    }

    #[test]
    fn harbor_properties(data in webhook_input(Source::Harbor)) {
        oracles::webhook_case(Source::Harbor, &data);
    }

    #[test]
    fn acr_properties(data in webhook_input(Source::Acr)) {
        oracles::webhook_case(Source::Acr, &data);
    }

    #[test]
    fn artifactory_properties(data in webhook_input(Source::Artifactory)) {
        oracles::webhook_case(Source::Artifactory, &data);
    }

    #[test]
    fn generic_properties(data in webhook_input(Source::Generic)) {
        oracles::webhook_case(Source::Generic, &data);
    }

    #[test]
    fn raw_bytes_never_break_a_source(data in prop::collection::vec(any::<u8>(), 0..512)) {
        for source in Source::ALL {
            oracles::webhook_case(source, &data);
        }
    }

    #[test]
    fn signature_checks_follow_the_documented_rules(
        control in any::<u8>(),
        secret in prop_oneof![Just(String::new()), Just(" \t".to_owned()), "[ -~]{0,40}"],
        value in prop_oneof!["[ -~]{0,80}", "sha256=[0-9a-fA-F]{64}", "[0-9a-fA-F]{64}"],
        body in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut data = vec![control];
        data.extend_from_slice(secret.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(value.as_bytes());
        data.push(b'\n');
        data.extend_from_slice(&body);
        oracles::signature_case(&data);
    }

    #[test]
    fn config_text_never_panics(control in any::<u8>(), text in any::<String>()) {
        let mut data = vec![control];
        data.extend_from_slice(text.as_bytes());
        oracles::config_case(&data);
    }

    #[test]
    fn config_like_text_never_panics(
        control in any::<u8>(),
        lines in prop::collection::vec(config_line(), 0..12),
    ) {
        let mut data = vec![control];
        data.extend_from_slice(lines.concat().as_bytes());
        oracles::config_case(&data);
    }

    #[test]
    fn policy_order_properties(
        control in any::<u8>(),
        tags in prop::collection::vec(tag(), 3),
        digests in prop::collection::vec(prop_oneof![Just("sha256:a"), Just("sha256:b"), Just("")], 0..3),
    ) {
        let mut text = tags.join("\n");
        for d in digests {
            text.push('\n');
            text.push_str(d);
        }
        let mut data = vec![control];
        data.extend_from_slice(text.as_bytes());
        oracles::policy_case(&data);
    }
}

/// Tags from small alphabets, so ties, shared prefixes and every order's
/// parse/no-parse boundary come up often.
fn tag() -> impl Strategy<Value = String> {
    prop_oneof![
        "v?(0|[1-9][0-9]{0,2})\\.(0|1|10)\\.(0|2)(-(rc|alpha|0|1|a-b)(\\.(1|beta|0a)){0,2})?(\\+[a-z0-9]{1,3})?",
        "[a-c.-]{0,2}([0-2]{1,2}[a-c.-]{1,2}){0,3}[0-2]{0,2}",
        "[0-9]{1,45}",
        "(latest|stable|v1|1.2|01.2.3|1.2.3-|1.2.3-01|)",
        any::<String>().prop_map(|s| s.replace('\n', "")),
    ]
}

/// Plausible and implausible HCL lines for the config loader.
fn config_line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "listen",
        "admin_listen",
        "state_prefix",
        "trusted_proxies",
        "failed_attempts_per_minute",
        "max_connections",
        "log_format",
        "secret_sha256",
        "source",
        "repository",
        "key",
        "history_keep",
        "allow_cidrs",
        "include",
        "exclude",
        "order",
        "job",
        "strategy",
        "meta_key",
        "verify_url",
        "timeout",
        "address",
        "format",
        "events",
        "bogus",
    ]);
    let value = prop_oneof![
        "\"[ -~&&[^\"\\\\$%]]{0,30}\"",
        "-?[0-9]{1,20}",
        Just("[\"10.0.0.0/8\", \"::1\"]".to_owned()),
        Just("\"9f2c0e1d3b4a5968778695a4b3c2d1e0f9e8d7c6b5a49382716051423e2f1a0b\"".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
    ];
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}\n")),
        prop::sample::select(vec![
            "service \"web\" {\n",
            "service \"Web\" {\n",
            "service \"a\" {\n",
            "tags {\n",
            "rollout {\n",
            "notify \"n\" {\n",
            "tls {\n",
            "consul {\n",
            "nomad {\n",
            "}\n",
            "# comment\n",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Found by the `config` fuzz target: a `notify` label was used unchecked
/// in field names, so `notify "a\nb" {}` printed a problem over two lines
/// (a second, forged "problem" in logs). Labels are now validated like
/// service names, and every problem is kept to one line.
#[test]
fn notify_label_with_a_newline_prints_on_one_line() {
    use tagbridge::config::{Config, Purpose};
    for text in ["notify \"a\\nb\" {}\n", "notify \"a\nb\" {}\n"] {
        let no_env = |_: &str| None;
        let err = Config::parse(Path::new("t.hcl"), text, Purpose::Client, &no_env)
            .expect_err("a notify block without url_file and no service is rejected");
        for p in &err.0 {
            assert!(!p.to_string().contains('\n'), "{p}");
        }
    }
}

/// The harness's own credential must open the door, or the fuzzer never
/// gets past the signature check to the JSON: every signed seed parses
/// into a push (or a ping), never a signature error.
#[test]
fn harness_credentials_reach_the_parser() {
    use tagbridge::webhook::{self, Parsed, Request};
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (source, seed) in [
        (Source::Github, "webhook_github/package"),
        (Source::Github, "webhook_github/registry_package"),
        (Source::Generic, "webhook_generic/push"),
        (Source::Artifactory, "webhook_artifactory/signed"),
        (Source::Harbor, "webhook_harbor/push"),
        (Source::Harbor, "webhook_harbor/trimmed"),
    ] {
        let data = std::fs::read(seeds.join(seed)).unwrap();
        let (headers, body, secret) = oracles::webhook_inputs(source, &data).unwrap();
        assert!(secret.is_some(), "{seed}: signed seeds carry a secret");
        let req = Request {
            headers: &headers,
            body,
            signing_secret: secret,
        };
        let parsed = webhook::parse(source, &req);
        assert!(
            matches!(parsed, Ok(Parsed::Push(ref p)) if !p.is_empty()),
            "{seed}: {parsed:?}"
        );
        // And the same bytes without the credential are refused.
        let mut unsigned = data.clone();
        unsigned[0] &= !0b100;
        let (headers, body, secret) = oracles::webhook_inputs(source, &unsigned).unwrap();
        let req = Request {
            headers: &headers,
            body,
            signing_secret: secret,
        };
        assert!(webhook::parse(source, &req).is_err(), "{seed} unsigned");
    }
}

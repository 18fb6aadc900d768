//! Every webhook source, end to end through `tagbridge::webhook::parse`,
//! against the sample payloads in `tests/fixtures/` (see its README for
//! where each shape comes from). No network.

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{json, Value};
use sha2::Sha256;
use tagbridge::webhook::signature::hub_signature_256;
use tagbridge::webhook::{parse, ImagePush, Parsed, Request, Source, WebhookError};

const SECRET: &[u8] = b"correct horse battery staple";

const GHCR_DIGEST: &str = "sha256:4f4a7e9b1c3d5e7f90a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4";
const HARBOR_DIGEST: &str =
    "sha256:76525f02955aec223342400a080c73024c995c9db1ba2eabf7505cf3bdf3f1f0";
const ACR_DIGEST: &str = "sha256:80f0d5c8786bb9e621a45ece0db56d11cdc624ad20da9fe62e9d25490f331d7d";
const JFROG_SHA: &str = "35c4a2c15539c6c1e4e5fa4e554dac323ad0107d8eb5c582d6ff386b383b7dce";
const DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}

/// The fixture with the value at JSON pointer `at` replaced (or removed
/// when `value` is `None`).
fn edited(path: &str, at: &str, value: Option<Value>) -> Vec<u8> {
    let mut v = fixture_json(path);
    let (parent, key) = at.rsplit_once('/').unwrap();
    let parent = v.pointer_mut(parent).unwrap_or_else(|| panic!("{at}"));
    match (parent, value) {
        (Value::Object(m), Some(new)) => {
            m.insert(key.to_owned(), new);
        }
        (Value::Object(m), None) => {
            m.remove(key).unwrap_or_else(|| panic!("{at}"));
        }
        (Value::Array(a), Some(new)) => a[key.parse::<usize>().unwrap()] = new,
        (Value::Array(a), None) => {
            a.remove(key.parse::<usize>().unwrap());
        }
        _ => panic!("{at}"),
    }
    serde_json::to_vec(&v).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn run(
    source: Source,
    h: &HeaderMap,
    body: &[u8],
    secret: Option<&[u8]>,
) -> Result<Parsed, WebhookError> {
    parse(
        source,
        &Request {
            headers: h,
            body,
            signing_secret: secret,
        },
    )
}

fn push(repository: &str, tag: &str) -> ImagePush {
    ImagePush {
        repository: repository.into(),
        tag: tag.into(),
        digest: None,
        actor: None,
        delivery: None,
    }
}

trait With {
    fn digest(self, d: &str) -> Self;
    fn actor(self, a: &str) -> Self;
    fn delivery(self, d: &str) -> Self;
}

impl With for ImagePush {
    fn digest(mut self, d: &str) -> Self {
        self.digest = Some(d.into());
        self
    }
    fn actor(mut self, a: &str) -> Self {
        self.actor = Some(a.into());
        self
    }
    fn delivery(mut self, d: &str) -> Self {
        self.delivery = Some(d.into());
        self
    }
}

fn malformed(r: Result<Parsed, WebhookError>) -> String {
    match r {
        Err(WebhookError::Malformed(m)) => {
            assert_one_line(&m);
            m
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn assert_one_line(m: &str) {
    assert!(!m.contains(['\n', '\r']), "multi-line message: {m:?}");
    assert!(m.len() <= 300, "message too long ({}): {m}", m.len());
}

fn untagged() -> Result<Parsed, WebhookError> {
    Ok(Parsed::Ignored("untagged manifest (empty tag)".into()))
}

fn ignored(reason: &str) -> Result<Parsed, WebhookError> {
    Ok(Parsed::Ignored(reason.into()))
}

// GitHub / generic: X-Hub-Signature-256 over the raw body.

fn github_headers(event: &str, body: &[u8], secret: &[u8]) -> HeaderMap {
    headers(&[
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", DELIVERY),
        ("X-Hub-Signature-256", &hub_signature_256(secret, body)),
        ("User-Agent", "GitHub-Hookshot/1b2c3d4"),
    ])
}

fn github(event: &str, body: &[u8]) -> Result<Parsed, WebhookError> {
    run(
        Source::Github,
        &github_headers(event, body, SECRET),
        body,
        Some(SECRET),
    )
}

fn generic(body: &[u8]) -> Result<Parsed, WebhookError> {
    let h = headers(&[("X-Hub-Signature-256", &hub_signature_256(SECRET, body))]);
    run(Source::Generic, &h, body, Some(SECRET))
}

// Artifactory: bare hex HMAC-SHA256, computed independently of the crate.

fn jfrog_sig(secret: &[u8], body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

fn artifactory(body: &[u8]) -> Result<Parsed, WebhookError> {
    let h = headers(&[("X-JFrog-Event-Auth", &jfrog_sig(SECRET, body))]);
    run(Source::Artifactory, &h, body, Some(SECRET))
}

fn unsigned(source: Source, body: &[u8]) -> Result<Parsed, WebhookError> {
    run(source, &HeaderMap::new(), body, None)
}

// ---------------------------------------------------------------------------
// Docker Hub
// ---------------------------------------------------------------------------

#[test]
fn dockerhub_push_with_float_pushed_at() {
    assert_eq!(
        unsigned(Source::DockerHub, &fixture("dockerhub/push.json")),
        Ok(Parsed::Push(vec![push(
            "acme/web",
            "release-20261124120000"
        )
        .actor("acme-ci")]))
    );
}

#[test]
fn dockerhub_push_with_integer_pushed_at() {
    assert_eq!(
        unsigned(
            Source::DockerHub,
            &fixture("dockerhub/push_int_timestamp.json")
        ),
        Ok(Parsed::Push(vec![
            push("acme/web", "1.4.2").actor("trustedbuilder")
        ]))
    );
}

#[test]
fn dockerhub_ignores_pushed_at_of_any_type() {
    for v in [json!("2026-11-24T12:00:00Z"), json!(null), json!({})] {
        let body = edited("dockerhub/push.json", "/push_data/pushed_at", Some(v));
        assert!(matches!(
            unsigned(Source::DockerHub, &body),
            Ok(Parsed::Push(_))
        ));
    }
}

#[test]
fn dockerhub_ignores_the_signing_secret() {
    // Docker Hub cannot sign; a configured secret must not break it.
    let body = fixture("dockerhub/push.json");
    assert!(matches!(
        run(Source::DockerHub, &HeaderMap::new(), &body, Some(SECRET)),
        Ok(Parsed::Push(_))
    ));
}

#[test]
fn dockerhub_empty_tag_is_ignored() {
    let body = edited("dockerhub/push.json", "/push_data/tag", Some(json!("")));
    assert_eq!(unsigned(Source::DockerHub, &body), untagged());
}

#[test]
fn dockerhub_pusher_missing_means_no_actor() {
    let body = edited("dockerhub/push.json", "/push_data/pusher", None);
    assert_eq!(
        unsigned(Source::DockerHub, &body),
        Ok(Parsed::Push(vec![push(
            "acme/web",
            "release-20261124120000"
        )]))
    );
}

#[test]
fn dockerhub_malformed_messages() {
    assert_eq!(
        malformed(unsigned(Source::DockerHub, b"")),
        "dockerhub: body is not JSON: EOF while parsing a value at line 1 column 0"
    );
    assert_eq!(
        malformed(unsigned(Source::DockerHub, b"<html>")),
        "dockerhub: body is not JSON: expected value at line 1 column 1"
    );
    assert_eq!(
        malformed(unsigned(
            Source::DockerHub,
            &edited("dockerhub/push.json", "/push_data/tag", None)
        )),
        "dockerhub: missing field push_data.tag"
    );
    assert_eq!(
        malformed(unsigned(
            Source::DockerHub,
            &edited("dockerhub/push.json", "/repository/repo_name", None)
        )),
        "dockerhub: missing field repository.repo_name"
    );
    assert_eq!(
        malformed(unsigned(
            Source::DockerHub,
            &edited("dockerhub/push.json", "/push_data", None)
        )),
        "dockerhub: missing field push_data"
    );
    assert_eq!(
        malformed(unsigned(
            Source::DockerHub,
            &edited(
                "dockerhub/push.json",
                "/repository/repo_name",
                Some(json!(""))
            )
        )),
        "dockerhub: field repository.repo_name is empty"
    );
    assert_eq!(
        malformed(unsigned(Source::DockerHub, br#"{"push_data":{"tag":5}}"#)),
        "dockerhub: unexpected body shape: invalid type: integer `5`, expected a string at line 1 column 21"
    );
    assert_eq!(
        malformed(unsigned(Source::DockerHub, b"[]")),
        "dockerhub: unexpected body shape: invalid length 0, expected a Docker Hub push object at line 1 column 2"
    );
}

#[test]
fn dockerhub_wrong_type_does_not_echo_payload() {
    let big = format!("SENSITIVE-{}", "x".repeat(10_000));
    let body = edited("dockerhub/push.json", "/push_data", Some(json!(big)));
    let m = malformed(unsigned(Source::DockerHub, &body));
    assert!(
        m.starts_with(
            "dockerhub: unexpected body shape: invalid type: string, expected push_data to be an object"
        ),
        "{m}"
    );
    assert!(!m.contains("SENSITIVE"), "{m}");
}

// ---------------------------------------------------------------------------
// GitHub (GHCR)
// ---------------------------------------------------------------------------

#[test]
fn github_package_published() {
    assert_eq!(
        github("package", &fixture("github/package_published.json")),
        Ok(Parsed::Push(vec![push("acme/web", "1.4.2")
            .digest(GHCR_DIGEST)
            .actor("octo-dev")
            .delivery(DELIVERY)]))
    );
}

#[test]
fn github_registry_package_published_lowercases_the_owner() {
    // GHCR serves `AcmeCorp/web` as `acmecorp/web`; the repository is
    // recorded the way the registry names it.
    assert_eq!(
        github(
            "registry_package",
            &fixture("github/registry_package_published.json")
        ),
        Ok(Parsed::Push(vec![push(
            "acmecorp/web",
            "release-20261124120000"
        )
        .digest(GHCR_DIGEST)
        .actor("release-bot[bot]")
        .delivery(DELIVERY)]))
    );
}

#[test]
fn github_untagged_manifest_is_ignored() {
    assert_eq!(
        github("package", &fixture("github/untagged.json")),
        untagged()
    );
}

#[test]
fn github_ping_after_signature_check() {
    let body = fixture("github/ping.json");
    assert_eq!(github("ping", &body), Ok(Parsed::Ping));
    let h = headers(&[("X-GitHub-Event", "ping")]);
    assert_eq!(
        run(Source::Github, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );
    let h = github_headers("ping", &body, b"some other secret");
    assert_eq!(
        run(Source::Github, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );
}

#[test]
fn github_signature_failures() {
    let body = fixture("github/package_published.json");

    let mut h = github_headers("package", &body, SECRET);
    h.remove("X-Hub-Signature-256");
    assert_eq!(
        run(Source::Github, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );

    let h = github_headers("package", &body, b"wrong secret");
    assert_eq!(
        run(Source::Github, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );

    // Tampered body, signature of the original.
    let h = github_headers("package", &body, SECRET);
    let tampered = edited(
        "github/package_published.json",
        "/package/package_version/container_metadata/tag/name",
        Some(json!("evil")),
    );
    assert_eq!(
        run(Source::Github, &h, &tampered, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );

    // Signature header present but not `sha256=<hex>`.
    let mut h = github_headers("package", &body, SECRET);
    h.insert(
        "X-Hub-Signature-256",
        HeaderValue::from_static("sha256=nothex"),
    );
    assert_eq!(
        run(Source::Github, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );
}

#[test]
fn github_without_configured_secret_fails_closed() {
    let body = fixture("github/package_published.json");
    let h = github_headers("package", &body, SECRET);
    assert_eq!(
        run(Source::Github, &h, &body, None),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );
}

#[test]
fn github_signature_is_checked_before_anything_else() {
    // No event header and a garbage body: still a signature error, so an
    // unauthenticated caller learns nothing about parsing.
    assert_eq!(
        run(Source::Github, &HeaderMap::new(), b"\xff\x00", Some(SECRET)),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );
}

#[test]
fn github_missing_event_header_is_malformed() {
    let body = fixture("github/package_published.json");
    let mut h = github_headers("package", &body, SECRET);
    h.remove("X-GitHub-Event");
    assert_eq!(
        malformed(run(Source::Github, &h, &body, Some(SECRET))),
        "github: missing field header X-GitHub-Event"
    );
}

#[test]
fn github_other_events_are_ignored() {
    let body = br#"{"ref":"refs/heads/main"}"#;
    assert_eq!(
        github("push", body),
        ignored("github event push is not a package event")
    );
    assert_eq!(
        github("workflow_run", body),
        ignored("github event workflow_run is not a package event")
    );
    let long = "e".repeat(100);
    let Ok(Parsed::Ignored(reason)) = github(&long, body) else {
        panic!()
    };
    assert!(!reason.contains(&long), "{reason}");
    assert!(reason.starts_with("github event eeee"), "{reason}");
}

#[test]
fn github_actions() {
    let updated = edited(
        "github/package_published.json",
        "/action",
        Some(json!("updated")),
    );
    assert!(matches!(github("package", &updated), Ok(Parsed::Push(_))));

    let updated = edited(
        "github/registry_package_published.json",
        "/action",
        Some(json!("updated")),
    );
    assert_eq!(
        github("registry_package", &updated),
        ignored("github registry_package action updated is not a publish")
    );

    let deleted = edited(
        "github/package_published.json",
        "/action",
        Some(json!("deleted")),
    );
    assert_eq!(
        github("package", &deleted),
        ignored("github package action deleted is not a publish")
    );

    let none = edited("github/package_published.json", "/action", None);
    assert_eq!(
        malformed(github("package", &none)),
        "github: missing field action"
    );
}

#[test]
fn github_non_container_packages_are_ignored() {
    let npm = edited(
        "github/package_published.json",
        "/package/package_type",
        Some(json!("npm")),
    );
    assert_eq!(
        github("package", &npm),
        ignored("github package type npm is not container")
    );
    let lower = edited(
        "github/package_published.json",
        "/package/package_type",
        Some(json!("container")),
    );
    assert!(matches!(github("package", &lower), Ok(Parsed::Push(_))));
}

#[test]
fn github_namespace_is_never_read() {
    for ns in [
        None,
        Some(json!(null)),
        Some(json!("")),
        Some(json!("user")),
        Some(json!("acme/web")),
        Some(json!("evil/other\n{{")),
        Some(json!(5)),
    ] {
        let body = edited("github/package_published.json", "/package/namespace", ns);
        let Ok(Parsed::Push(p)) = github("package", &body) else {
            panic!()
        };
        assert_eq!(p[0].repository, "acme/web");
    }
}

#[test]
fn github_owner_login_is_required() {
    for (at, value) in [
        ("/package/owner/login", None),
        ("/package/owner/login", Some(json!(""))),
        ("/package/owner", None),
    ] {
        let body = edited("github/package_published.json", at, value);
        assert_eq!(
            malformed(github("package", &body)),
            "github: missing field package.owner.login",
            "{at}"
        );
    }
}

/// The same object sent as the other GitHub event kind.
fn as_other_event(path: &str) -> (&'static str, Vec<u8>) {
    let mut v = fixture_json(path);
    let m = v.as_object_mut().unwrap();
    if let Some(pkg) = m.remove("package") {
        m.insert("registry_package".into(), pkg);
        ("registry_package", serde_json::to_vec(&v).unwrap())
    } else {
        let pkg = m.remove("registry_package").unwrap();
        m.insert("package".into(), pkg);
        ("package", serde_json::to_vec(&v).unwrap())
    }
}

#[test]
fn github_package_shapes_as_both_events() {
    for (path, event, repository, tag) in [
        (
            "github/package_published.json",
            "package",
            "acme/web",
            "1.4.2",
        ),
        (
            "github/registry_package_published.json",
            "registry_package",
            "acmecorp/web",
            "release-20261124120000",
        ),
        (
            "github/package_user_namespace.json",
            "package",
            "octo-dev/web",
            "1.4.2",
        ),
        (
            "github/registry_package_owner_repo_namespace.json",
            "registry_package",
            "acme/web",
            "2.0.1",
        ),
        (
            "github/package_multi_segment_name.json",
            "package",
            "acme/web-platform/frontend",
            "3.1.0",
        ),
    ] {
        let (other, other_body) = as_other_event(path);
        for (ev, body) in [(event, fixture(path)), (other, other_body)] {
            let Ok(Parsed::Push(p)) = github(ev, &body) else {
                panic!("{path} as {ev}: {:?}", github(ev, &body))
            };
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].repository, repository, "{path} as {ev}");
            assert_eq!(p[0].tag, tag, "{path} as {ev}");
            assert_eq!(p[0].digest.as_deref(), Some(GHCR_DIGEST));
            assert_eq!(p[0].delivery.as_deref(), Some(DELIVERY));
        }
    }
}

#[test]
fn github_package_url_must_name_the_same_repository() {
    let at = "/package/package_version/package_url";
    let ok = |url: Option<Value>| {
        let body = edited("github/package_published.json", at, url.clone());
        let Ok(Parsed::Push(p)) = github("package", &body) else {
            panic!("{url:?}: {:?}", github("package", &body))
        };
        assert_eq!(p[0].repository, "acme/web");
    };
    ok(None);
    ok(Some(json!(null)));
    ok(Some(json!("")));
    ok(Some(json!("ghcr.io/acme/web:1.4.2")));
    ok(Some(json!("ghcr.io/ACME/Web:1.4.2")));
    ok(Some(json!("ghcr.io/acme/web:")));
    ok(Some(json!(format!("ghcr.io/acme/web@{GHCR_DIGEST}"))));
    ok(Some(json!("containers.ghe.example.com/acme/web:1.4.2")));
    ok(Some(json!("localhost:5000/acme/web:1.4.2")));
    ok(Some(json!("acme/web:1.4.2")));
    for bad in [
        "ghcr.io/other/web:1.4.2",
        "ghcr.io/acme/web/extra:1.4.2",
        "ghcr.io/acme/webx:1.4.2",
        "ghcr.io/web:1.4.2",
        "ghcr.io/acme/web\n:1.4.2",
        "docker.io/acme:web",
    ] {
        let body = edited("github/package_published.json", at, Some(json!(bad)));
        let m = malformed(github("package", &body));
        assert!(
            m.starts_with(
                "github: repository \"acme/web\": does not match package.package_version.package_url \""
            ),
            "{bad}: {m}"
        );
    }
    // The multi-segment fixture with its url pointing at the first
    // segment only: a mismatch.
    let body = edited(
        "github/package_multi_segment_name.json",
        at,
        Some(json!("ghcr.io/acme/web-platform:3.1.0")),
    );
    assert!(malformed(github("package", &body)).contains("does not match"));
    // A wrong type is a shape error like any other.
    let body = edited("github/package_published.json", at, Some(json!(7)));
    assert!(malformed(github("package", &body)).contains("unexpected body shape"));
}

#[test]
fn github_event_and_body_must_agree() {
    // A `package` event whose body only has `registry_package`.
    let body = fixture("github/registry_package_published.json");
    assert_eq!(
        malformed(github("package", &body)),
        "github: missing field package"
    );
}

#[test]
fn github_malformed_messages() {
    assert_eq!(
        malformed(github("package", b"{")),
        "github: body is not JSON: EOF while parsing an object at line 1 column 1"
    );
    let no_name = edited(
        "github/package_published.json",
        "/package/package_version/container_metadata/tag/name",
        None,
    );
    assert_eq!(
        malformed(github("package", &no_name)),
        "github: missing field package.package_version.container_metadata.tag.name"
    );
    let no_meta = edited(
        "github/registry_package_published.json",
        "/registry_package/package_version/container_metadata",
        None,
    );
    assert_eq!(
        malformed(github("registry_package", &no_meta)),
        "github: missing field registry_package.package_version.container_metadata"
    );
    let bad_tag = edited(
        "github/package_published.json",
        "/package/package_version/container_metadata/tag",
        Some(json!(["1.4.2"])),
    );
    let m = malformed(github("package", &bad_tag));
    assert!(
        m.contains("expected container_metadata.tag to be an object"),
        "{m}"
    );
    let no_type = edited(
        "github/package_published.json",
        "/package/package_type",
        None,
    );
    assert_eq!(
        malformed(github("package", &no_type)),
        "github: missing field package.package_type"
    );
}

// ---------------------------------------------------------------------------
// Quay
// ---------------------------------------------------------------------------

#[test]
fn quay_push_list() {
    assert_eq!(
        unsigned(Source::Quay, &fixture("quay/push.json")),
        Ok(Parsed::Push(vec![
            push("acme/web", "1.4.2"),
            push("acme/web", "latest")
        ]))
    );
}

#[test]
fn quay_push_legacy_object_keeps_document_order() {
    assert_eq!(
        unsigned(Source::Quay, &fixture("quay/push_legacy.json")),
        Ok(Parsed::Push(vec![
            push("acme/web", "release-20261124120000"),
            push("acme/web", "latest")
        ]))
    );
}

#[test]
fn quay_empty_tag_lists_are_ignored() {
    for tags in [json!([]), json!({}), json!([""]), json!({"": "abc"})] {
        let body = edited("quay/push.json", "/updated_tags", Some(tags.clone()));
        assert_eq!(
            unsigned(Source::Quay, &body),
            ignored("quay push lists no tags"),
            "{tags}"
        );
    }
    // Empty entries are dropped, real ones kept.
    let body = edited(
        "quay/push.json",
        "/updated_tags",
        Some(json!(["", "2.0.0"])),
    );
    assert_eq!(
        unsigned(Source::Quay, &body),
        Ok(Parsed::Push(vec![push("acme/web", "2.0.0")]))
    );
}

#[test]
fn quay_malformed_messages() {
    assert_eq!(
        malformed(unsigned(
            Source::Quay,
            &edited("quay/push.json", "/updated_tags", None)
        )),
        "quay: missing field updated_tags"
    );
    assert_eq!(
        malformed(unsigned(
            Source::Quay,
            &edited("quay/push.json", "/repository", None)
        )),
        "quay: missing field repository"
    );
    let m = malformed(unsigned(
        Source::Quay,
        &edited(
            "quay/push.json",
            "/updated_tags",
            Some(json!("1.4.2-do-not-echo")),
        ),
    ));
    assert!(
        m.starts_with("quay: unexpected body shape: invalid type: string, expected updated_tags to be a list of tag names or an object keyed by tag"),
        "{m}"
    );
    assert!(!m.contains("do-not-echo"), "{m}");
    let m = malformed(unsigned(
        Source::Quay,
        &edited("quay/push.json", "/updated_tags", Some(json!([1, 2]))),
    ));
    assert!(
        m.starts_with("quay: unexpected body shape: invalid type: integer `1`, expected a string"),
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// Harbor
// ---------------------------------------------------------------------------

fn harbor_push() -> ImagePush {
    push("acme/web", "release-20261124120000")
        .digest(HARBOR_DIGEST)
        .actor("robot$acme+ci")
}

#[test]
fn harbor_push_artifact_with_authorization() {
    let body = fixture("harbor/push_artifact.json");
    let h = headers(&[("Authorization", "correct horse battery staple")]);
    assert_eq!(
        run(Source::Harbor, &h, &body, Some(SECRET)),
        Ok(Parsed::Push(vec![harbor_push()]))
    );
    // Secret file with a trailing newline.
    assert_eq!(
        run(
            Source::Harbor,
            &h,
            &body,
            Some(b"correct horse battery staple\n")
        ),
        Ok(Parsed::Push(vec![harbor_push()]))
    );
}

#[test]
fn harbor_without_secret_needs_no_header() {
    assert_eq!(
        unsigned(Source::Harbor, &fixture("harbor/push_artifact.json")),
        Ok(Parsed::Push(vec![harbor_push()]))
    );
}

#[test]
fn harbor_authorization_failures() {
    let body = fixture("harbor/push_artifact.json");
    assert_eq!(
        run(Source::Harbor, &HeaderMap::new(), &body, Some(SECRET)),
        Err(WebhookError::SignatureMissing("Authorization"))
    );
    for wrong in [
        "correct horse battery stapl",
        "Bearer correct horse battery staple",
        "",
    ] {
        let h = headers(&[("Authorization", wrong)]);
        assert_eq!(
            run(Source::Harbor, &h, &body, Some(SECRET)),
            Err(WebhookError::SignatureMismatch),
            "{wrong:?}"
        );
    }
    // Checked before parsing.
    assert_eq!(
        run(Source::Harbor, &HeaderMap::new(), b"not json", Some(SECRET)),
        Err(WebhookError::SignatureMissing("Authorization"))
    );
}

#[test]
fn harbor_other_event_types_are_ignored() {
    assert_eq!(
        unsigned(Source::Harbor, &fixture("harbor/delete.json")),
        ignored("harbor event type DELETE_ARTIFACT is not PUSH_ARTIFACT")
    );
}

#[test]
fn harbor_several_resources_and_untagged_ones() {
    let body = edited(
        "harbor/push_artifact.json",
        "/event_data/resources",
        Some(json!([
            {"digest": format!("sha256:{}", "a".repeat(64)), "tag": "1.4.2"},
            {"digest": format!("sha256:{}", "b".repeat(64)), "tag": ""},
            {"digest": format!("sha256:{}", "c".repeat(64))},
            {"tag": "latest"}
        ])),
    );
    assert_eq!(
        unsigned(Source::Harbor, &body),
        Ok(Parsed::Push(vec![
            push("acme/web", "1.4.2")
                .digest(&format!("sha256:{}", "a".repeat(64)))
                .actor("robot$acme+ci"),
            push("acme/web", "latest").actor("robot$acme+ci"),
        ]))
    );
    let body = edited(
        "harbor/push_artifact.json",
        "/event_data/resources/0/tag",
        Some(json!("")),
    );
    assert_eq!(unsigned(Source::Harbor, &body), untagged());
}

#[test]
fn harbor_cloudevents_format_is_rejected_explicitly() {
    let body = json!({
        "specversion": "1.0",
        "id": "4b2f89a4-3fa1-4a8a-8c3b-1e2d3c4b5a69",
        "source": "/projects/1/webhook/policies/3",
        "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json",
        "data": {"resources": [{"tag": "1.4.2"}], "repository": {"repo_full_name": "acme/web"}}
    });
    assert_eq!(
        malformed(unsigned(Source::Harbor, body.to_string().as_bytes())),
        "harbor: CloudEvents payload format is not supported; set the webhook's payload format to Default"
    );
}

#[test]
fn harbor_malformed_messages() {
    assert_eq!(
        malformed(unsigned(
            Source::Harbor,
            &edited(
                "harbor/push_artifact.json",
                "/event_data/repository/repo_full_name",
                None
            )
        )),
        "harbor: missing field event_data.repository.repo_full_name"
    );
    assert_eq!(
        malformed(unsigned(
            Source::Harbor,
            &edited("harbor/push_artifact.json", "/event_data/resources", None)
        )),
        "harbor: missing field event_data.resources"
    );
    assert_eq!(
        malformed(unsigned(
            Source::Harbor,
            &edited("harbor/push_artifact.json", "/type", None)
        )),
        "harbor: missing field type"
    );
    let m = malformed(unsigned(
        Source::Harbor,
        &edited(
            "harbor/push_artifact.json",
            "/event_data/resources",
            Some(json!({"tag": "1.4.2"})),
        ),
    ));
    assert!(
        m.starts_with("harbor: unexpected body shape: invalid type: map, expected a sequence"),
        "{m}"
    );
}

// ---------------------------------------------------------------------------
// ACR
// ---------------------------------------------------------------------------

#[test]
fn acr_push() {
    assert_eq!(
        unsigned(Source::Acr, &fixture("acr/push.json")),
        Ok(Parsed::Push(vec![push("acme/web", "1.4.2")
            .digest(ACR_DIGEST)
            .delivery("cb8c3971-9adc-488b-bdd8-43cbb4974ff5")]))
    );
}

#[test]
fn acr_ping() {
    assert_eq!(
        unsigned(Source::Acr, &fixture("acr/ping.json")),
        Ok(Parsed::Ping)
    );
    // A ping needs no target at all.
    assert_eq!(
        unsigned(Source::Acr, br#"{"action":"ping"}"#),
        Ok(Parsed::Ping)
    );
}

#[test]
fn acr_other_actions_are_ignored() {
    assert_eq!(
        unsigned(Source::Acr, &fixture("acr/delete.json")),
        ignored("acr action delete is not a push")
    );
    for action in ["chart_push", "chart_delete", "quarantine"] {
        let body = edited("acr/push.json", "/action", Some(json!(action)));
        assert_eq!(
            unsigned(Source::Acr, &body),
            ignored(&format!("acr action {action} is not a push"))
        );
    }
}

#[test]
fn acr_push_by_digest_is_ignored() {
    let body = edited("acr/push.json", "/target/tag", None);
    assert_eq!(unsigned(Source::Acr, &body), untagged());
    let body = edited("acr/push.json", "/target/tag", Some(json!("")));
    assert_eq!(unsigned(Source::Acr, &body), untagged());
}

#[test]
fn acr_malformed_messages() {
    assert_eq!(
        malformed(unsigned(
            Source::Acr,
            &edited("acr/push.json", "/action", None)
        )),
        "acr: missing field action"
    );
    assert_eq!(
        malformed(unsigned(
            Source::Acr,
            &edited("acr/push.json", "/target", None)
        )),
        "acr: missing field target"
    );
    assert_eq!(
        malformed(unsigned(
            Source::Acr,
            &edited("acr/push.json", "/target/repository", None)
        )),
        "acr: missing field target.repository"
    );
    let m = malformed(unsigned(
        Source::Acr,
        &edited("acr/push.json", "/target", Some(json!("acme/web:1.4.2"))),
    ));
    assert!(
        m.starts_with(
            "acr: unexpected body shape: invalid type: string, expected target to be an object"
        ),
        "{m}"
    );
    assert!(!m.contains("acme/web"), "{m}");
}

// ---------------------------------------------------------------------------
// Artifactory
// ---------------------------------------------------------------------------

fn jfrog_push() -> ImagePush {
    push("acme/web", "1.4.2").digest(&format!("sha256:{JFROG_SHA}"))
}

#[test]
fn artifactory_pushed_signed() {
    let body = fixture("artifactory/pushed.json");
    assert_eq!(artifactory(&body), Ok(Parsed::Push(vec![jfrog_push()])));
    let h = headers(&[(
        "X-JFrog-Event-Auth",
        &jfrog_sig(SECRET, &body).to_ascii_uppercase(),
    )]);
    assert_eq!(
        run(Source::Artifactory, &h, &body, Some(SECRET)),
        Ok(Parsed::Push(vec![jfrog_push()]))
    );
}

#[test]
fn artifactory_without_secret_needs_no_header() {
    assert_eq!(
        unsigned(Source::Artifactory, &fixture("artifactory/pushed.json")),
        Ok(Parsed::Push(vec![jfrog_push()]))
    );
}

#[test]
fn artifactory_signature_failures() {
    let body = fixture("artifactory/pushed.json");
    assert_eq!(
        run(Source::Artifactory, &HeaderMap::new(), &body, Some(SECRET)),
        Err(WebhookError::SignatureMissing("X-JFrog-Event-Auth"))
    );
    let h = headers(&[("X-JFrog-Event-Auth", &jfrog_sig(b"nope", &body))]);
    assert_eq!(
        run(Source::Artifactory, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );
    // GitHub-style prefix is not what Artifactory sends.
    let h = headers(&[(
        "X-JFrog-Event-Auth",
        &format!("sha256={}", jfrog_sig(SECRET, &body)),
    )]);
    assert_eq!(
        run(Source::Artifactory, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );
}

#[test]
fn artifactory_other_events_are_ignored() {
    let body = edited(
        "artifactory/pushed.json",
        "/event_type",
        Some(json!("deleted")),
    );
    assert_eq!(
        artifactory(&body),
        ignored("artifactory docker event deleted is not pushed")
    );
    let body = edited(
        "artifactory/pushed.json",
        "/domain",
        Some(json!("artifact")),
    );
    assert_eq!(
        artifactory(&body),
        ignored("artifactory domain artifact is not docker")
    );
}

#[test]
fn artifactory_digest_forms() {
    let prefixed = format!("sha256:{JFROG_SHA}");
    let body = edited(
        "artifactory/pushed.json",
        "/data/sha256",
        Some(json!(prefixed)),
    );
    assert_eq!(artifactory(&body), Ok(Parsed::Push(vec![jfrog_push()])));
    let body = edited(
        "artifactory/pushed.json",
        "/data/sha256",
        Some(json!(JFROG_SHA.to_ascii_uppercase())),
    );
    assert_eq!(artifactory(&body), Ok(Parsed::Push(vec![jfrog_push()])));
    let body = edited("artifactory/pushed.json", "/data/sha256", None);
    assert_eq!(
        artifactory(&body),
        Ok(Parsed::Push(vec![push("acme/web", "1.4.2")]))
    );
}

#[test]
fn artifactory_empty_tag_is_ignored() {
    let body = edited("artifactory/pushed.json", "/data/tag", Some(json!("")));
    assert_eq!(artifactory(&body), untagged());
}

#[test]
fn artifactory_malformed_messages() {
    assert_eq!(
        malformed(artifactory(&edited(
            "artifactory/pushed.json",
            "/data/image_name",
            None
        ))),
        "artifactory: missing field data.image_name"
    );
    assert_eq!(
        malformed(artifactory(&edited(
            "artifactory/pushed.json",
            "/data/tag",
            None
        ))),
        "artifactory: missing field data.tag"
    );
    assert_eq!(
        malformed(artifactory(b"null")),
        "artifactory: unexpected body shape: invalid type: null, expected an Artifactory event object at line 1 column 4"
    );
}

// ---------------------------------------------------------------------------
// Generic (CI)
// ---------------------------------------------------------------------------

#[test]
fn generic_push() {
    assert_eq!(
        generic(&fixture("generic/push.json")),
        Ok(Parsed::Push(vec![push(
            "acme/web",
            "release-20261124120000"
        )
        .digest("sha256:9b2a7c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9")
        .actor("gitlab-ci/acme/web#4711")]))
    );
}

#[test]
fn generic_minimal_push() {
    assert_eq!(
        generic(br#"{"repository":"acme/web","tag":"1.4.2"}"#),
        Ok(Parsed::Push(vec![push("acme/web", "1.4.2")]))
    );
}

#[test]
fn generic_signature_required() {
    let body = fixture("generic/push.json");
    assert_eq!(
        run(Source::Generic, &HeaderMap::new(), &body, Some(SECRET)),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );
    let h = headers(&[("X-Hub-Signature-256", &hub_signature_256(SECRET, &body))]);
    assert_eq!(
        run(Source::Generic, &h, &body, None),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );
    let h = headers(&[("X-Hub-Signature-256", &hub_signature_256(b"x", &body))]);
    assert_eq!(
        run(Source::Generic, &h, &body, Some(SECRET)),
        Err(WebhookError::SignatureMismatch)
    );
    // A body that is not even JSON is still a signature failure first.
    assert_eq!(
        run(Source::Generic, &HeaderMap::new(), b"{", Some(SECRET)),
        Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
    );
}

#[test]
fn generic_empty_tag_is_ignored() {
    assert_eq!(
        generic(br#"{"repository":"acme/web","tag":""}"#),
        untagged()
    );
}

#[test]
fn generic_malformed_messages() {
    assert_eq!(
        malformed(generic(b"tag=1.4.2")),
        "generic: body is not JSON: expected ident at line 1 column 2"
    );
    assert_eq!(
        malformed(generic(br#"{"tag":"1.4.2"}"#)),
        "generic: missing field repository"
    );
    assert_eq!(
        malformed(generic(br#"{"repository":"acme/web"}"#)),
        "generic: missing field tag"
    );
    assert_eq!(
        malformed(generic(br#"{"repository":"","tag":"1.4.2"}"#)),
        "generic: field repository is empty"
    );
    assert_eq!(
        malformed(generic(br#"{"repository":"acme/web","tag":1.42}"#)),
        "generic: unexpected body shape: invalid type: floating point `1.42`, expected a string at line 1 column 35"
    );
}

// ---------------------------------------------------------------------------
// Input grammar: every malformed field class, for every source that has
// the field
// ---------------------------------------------------------------------------

fn hex64() -> String {
    "0123456789abcdef".repeat(4)
}

/// Tags a registry could never have stored, each a way into an env file
/// or a path.
fn bad_tags() -> Vec<String> {
    vec![
        "1.0\nLD_PRELOAD=/local/x.so".into(),
        "{{ key \"x\" }}".into(),
        "tag with space".into(),
        "../../x".into(),
        "a".repeat(129),
        ".hidden".into(),
        "-rf".into(),
        "1.0\r".into(),
        "ta\u{202E}g".into(),
    ]
}

fn bad_digests() -> Vec<String> {
    let h = hex64();
    vec![
        format!("md5:{}", &h[..32]),
        format!("sha384:{h}"),
        format!("sha512:{h}"),
        format!("sha256:{}", &h[1..]),
        format!("sha256:{}", h.to_ascii_uppercase()),
        format!("sha256:{}g", &h[1..]),
        format!("sha256:{h}\n"),
    ]
}

fn bad_repositories() -> Vec<String> {
    vec![
        "acme/../web".into(),
        "acme//web".into(),
        "/acme/web".into(),
        "acme/web/".into(),
        format!("acme/{}", "w".repeat(251)),
        "acme/web\n".into(),
        "acme/{{web}}".into(),
        "acme/web:1.0".into(),
        "acme/we b".into(),
    ]
}

fn bad_actors() -> Vec<String> {
    vec![
        "a".repeat(257),
        "ci\nroot logged in".into(),
        "ci\u{1b}[31m".into(),
        "ci\u{202E}toor".into(),
    ]
}

fn bad_deliveries() -> Vec<String> {
    vec!["d".repeat(129), "id\twith-tab".into(), "id\u{7f}".into()]
}

/// Assert `r` is Malformed, naming `field` right after the source.
fn refused(source: Source, field: &str, value: &str, r: Result<Parsed, WebhookError>) {
    let m = match r {
        Err(WebhookError::Malformed(m)) => m,
        other => panic!("{source} {field} {value:?}: expected Malformed, got {other:?}"),
    };
    assert_one_line(&m);
    let want = format!("{source}: {field} ");
    assert!(m.starts_with(&want), "{source} {field} {value:?}: {m}");
    // Never the whole hostile value back.
    if value.len() > 60 {
        assert!(!m.contains(value), "{m}");
    }
}

/// Send `value` as `field` through `source`'s fixture.
fn with_field(source: Source, field: &str, value: &str) -> Result<Parsed, WebhookError> {
    let v = json!(value);
    let edit = |path: &str, at: &str| edited(path, at, Some(v.clone()));
    match (source, field) {
        (Source::DockerHub, "tag") => {
            unsigned(source, &edit("dockerhub/push.json", "/push_data/tag"))
        }
        (Source::DockerHub, "repository") => unsigned(
            source,
            &edit("dockerhub/push.json", "/repository/repo_name"),
        ),
        (Source::DockerHub, "actor") => {
            unsigned(source, &edit("dockerhub/push.json", "/push_data/pusher"))
        }
        (Source::Github, "delivery") => {
            let body = fixture("github/package_published.json");
            let mut h = github_headers("package", &body, SECRET);
            h.insert(
                "X-GitHub-Delivery",
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
            run(source, &h, &body, Some(SECRET))
        }
        (Source::Github, "repository") => {
            // The package name carries the value; without a package_url
            // there is nothing to cross-check, so the grammar decides.
            let mut j = fixture_json("github/package_published.json");
            j["package"]["name"] = v.clone();
            j["package"]["package_version"]
                .as_object_mut()
                .unwrap()
                .remove("package_url");
            github("package", &serde_json::to_vec(&j).unwrap())
        }
        (Source::Github, f) => {
            let at = match f {
                "tag" => "/package/package_version/container_metadata/tag/name",
                "digest" => "/package/package_version/container_metadata/tag/digest",
                "actor" => "/sender/login",
                _ => unreachable!("{f}"),
            };
            github("package", &edit("github/package_published.json", at))
        }
        (Source::Quay, "tag") => unsigned(
            source,
            &edited(
                "quay/push.json",
                "/updated_tags",
                Some(json!(["1.4.2", value])),
            ),
        ),
        (Source::Quay, "repository") => unsigned(source, &edit("quay/push.json", "/repository")),
        (Source::Harbor, f) => {
            let at = match f {
                "tag" => "/event_data/resources/0/tag",
                "digest" => "/event_data/resources/0/digest",
                "repository" => "/event_data/repository/repo_full_name",
                "actor" => "/operator",
                _ => unreachable!("{f}"),
            };
            unsigned(source, &edit("harbor/push_artifact.json", at))
        }
        (Source::Acr, f) => {
            let at = match f {
                "tag" => "/target/tag",
                "digest" => "/target/digest",
                "repository" => "/target/repository",
                "delivery" => "/id",
                _ => unreachable!("{f}"),
            };
            unsigned(source, &edit("acr/push.json", at))
        }
        (Source::Artifactory, f) => {
            let at = match f {
                "tag" => "/data/tag",
                "digest" => "/data/sha256",
                "repository" => "/data/image_name",
                _ => unreachable!("{f}"),
            };
            artifactory(&edit("artifactory/pushed.json", at))
        }
        (Source::Generic, f) => generic(&edit("generic/push.json", &format!("/{f}"))),
        (s, f) => unreachable!("{s} has no {f}"),
    }
}

/// Which fields each source carries.
fn fields(source: Source) -> &'static [&'static str] {
    match source {
        Source::DockerHub => &["tag", "repository", "actor"],
        Source::Github => &["tag", "digest", "repository", "actor", "delivery"],
        Source::Quay => &["tag", "repository"],
        Source::Harbor => &["tag", "digest", "repository", "actor"],
        Source::Acr => &["tag", "digest", "repository", "delivery"],
        Source::Artifactory => &["tag", "digest", "repository"],
        Source::Generic => &["tag", "digest", "repository", "actor"],
    }
}

#[test]
fn every_malformed_field_class_is_refused_by_every_source() {
    let mut checked = 0;
    for source in Source::ALL {
        for &field in fields(source) {
            let values = match field {
                "tag" => bad_tags(),
                "digest" => bad_digests(),
                "repository" => bad_repositories(),
                "actor" => bad_actors(),
                "delivery" => bad_deliveries(),
                _ => unreachable!(),
            };
            for value in values {
                // Artifactory sends bare hex and tagbridge adds `sha256:`,
                // so its prefix-free forms are covered separately below.
                if source == Source::Artifactory && field == "digest" && !value.contains(':') {
                    continue;
                }
                // A header cannot carry a newline or DEL at all; HTTP
                // refuses those before tagbridge sees them.
                if field == "delivery"
                    && source == Source::Github
                    && http::HeaderValue::from_bytes(value.as_bytes()).is_err()
                {
                    continue;
                }
                refused(source, field, &value, with_field(source, field, &value));
                checked += 1;
            }
        }
    }
    // Guard against the table silently shrinking.
    assert!(checked >= 150, "only {checked} cases");
}

#[test]
fn acr_delivery_with_newline_is_refused() {
    refused(
        Source::Acr,
        "delivery",
        "x",
        with_field(Source::Acr, "delivery", "id\nInjected: 1"),
    );
}

#[test]
fn artifactory_bare_digest_forms() {
    // Bare hex of the wrong length or not hex at all: still refused after
    // `sha256:` is added (or not, for non-hex).
    for bad in [&hex64()[1..], "zz", &format!("{}{}", hex64(), hex64())] {
        refused(
            Source::Artifactory,
            "digest",
            bad,
            with_field(Source::Artifactory, "digest", bad),
        );
    }
}

#[test]
fn uppercase_repositories_are_lowercased_not_refused() {
    // Registries store lowercase names; mixed case only ever comes from a
    // display name, and service matching ignores case, so it names the
    // same repository.
    for source in Source::ALL {
        let r = with_field(source, "repository", "Acme/Web");
        let Ok(Parsed::Push(p)) = r else {
            panic!("{source}: {r:?}")
        };
        // GitHub's value is the package name, under owner `acme`.
        let want = if source == Source::Github {
            "acme/acme/web"
        } else {
            "acme/web"
        };
        assert!(p.iter().all(|p| p.repository == want), "{source}: {p:?}");
    }
}

#[test]
fn valid_edge_values_pass() {
    let longest_tag = format!("_{}", "a".repeat(127));
    let longest_repo = format!("acme/{}", "w".repeat(250));
    let sha512 = format!("sha512:{}{}", hex64(), hex64());
    for (field, value) in [
        ("tag", longest_tag.as_str()),
        ("tag", "v1.2.3-rc.1_build.7"),
        ("repository", longest_repo.as_str()),
        ("repository", "acme/a__b/c-d/e.f"),
        ("digest", sha512.as_str()),
        ("actor", "Zoë (release manager)"),
    ] {
        let r = with_field(Source::Generic, field, value);
        assert!(matches!(r, Ok(Parsed::Push(_))), "{field} {value}: {r:?}");
    }
    let actor = "a".repeat(256);
    assert!(matches!(
        with_field(Source::Generic, "actor", &actor),
        Ok(Parsed::Push(_))
    ));
    let delivery = "d".repeat(128);
    assert!(matches!(
        with_field(Source::Github, "delivery", &delivery),
        Ok(Parsed::Push(_))
    ));
}

#[test]
fn one_bad_tag_refuses_the_whole_list() {
    let body = edited(
        "quay/push.json",
        "/updated_tags",
        Some(json!(["1.4.2", "2.0.0", "{{x}}", "3.0.0"])),
    );
    refused(Source::Quay, "tag", "", unsigned(Source::Quay, &body));
    let body = edited(
        "harbor/push_artifact.json",
        "/event_data/resources",
        Some(json!([{"tag": "1.4.2"}, {"tag": "../x"}])),
    );
    refused(Source::Harbor, "tag", "", unsigned(Source::Harbor, &body));
}

// ---------------------------------------------------------------------------
// Bounded lists
// ---------------------------------------------------------------------------

fn quay_tags(n: usize) -> Vec<u8> {
    let tags: Vec<String> = (0..n).map(|i| format!("1.0.{i}")).collect();
    edited("quay/push.json", "/updated_tags", Some(json!(tags)))
}

#[test]
fn quay_lists_up_to_the_bound_parse() {
    let body = quay_tags(tagbridge::webhook::MAX_TAGS_PER_PUSH);
    assert!(body.len() < 1024 * 1024, "{}", body.len());
    let Ok(Parsed::Push(p)) = unsigned(Source::Quay, &body) else {
        panic!()
    };
    assert_eq!(p.len(), 20_000);
    assert_eq!(p[19_999].tag, "1.0.19999");
}

#[test]
fn quay_lists_over_the_bound_are_refused() {
    let m = malformed(unsigned(
        Source::Quay,
        &quay_tags(tagbridge::webhook::MAX_TAGS_PER_PUSH + 1),
    ));
    assert!(
        m.starts_with("quay: unexpected body shape: updated_tags lists more than 20000 tags"),
        "{m}"
    );
    // The legacy object form is bounded the same way.
    let map: serde_json::Map<String, Value> = (0..20_001)
        .map(|i| (format!("t{i}"), json!("img")))
        .collect();
    let body = edited("quay/push.json", "/updated_tags", Some(Value::Object(map)));
    assert!(malformed(unsigned(Source::Quay, &body)).contains("more than 20000 tags"));
}

#[test]
fn harbor_resource_lists_over_the_bound_are_refused() {
    let resources: Vec<Value> = (0..20_001)
        .map(|i| json!({"tag": format!("t{i}")}))
        .collect();
    let body = edited(
        "harbor/push_artifact.json",
        "/event_data/resources",
        Some(json!(resources)),
    );
    let m = malformed(unsigned(Source::Harbor, &body));
    assert!(
        m.contains("event_data.resources lists more than 20000 entries"),
        "{m}"
    );
}

#[test]
fn a_huge_repository_is_refused_before_it_is_copied_per_tag() {
    // 20 000 tags × a 500 KB repository would be 10 GB of copies; the
    // repository is refused first.
    let tags: Vec<String> = (0..20_000).map(|i| format!("t{i}")).collect();
    let mut v = fixture_json("quay/push.json");
    v["repository"] = json!(format!("acme/{}", "w".repeat(500_000)));
    v["updated_tags"] = json!(tags);
    let body = serde_json::to_vec(&v).unwrap();
    refused(
        Source::Quay,
        "repository",
        "",
        unsigned(Source::Quay, &body),
    );
    let resources: Vec<Value> = (0..20_000)
        .map(|i| json!({"tag": format!("t{i}")}))
        .collect();
    let mut v = fixture_json("harbor/push_artifact.json");
    v["operator"] = json!("o".repeat(500_000));
    v["event_data"]["resources"] = json!(resources);
    let body = serde_json::to_vec(&v).unwrap();
    refused(Source::Harbor, "actor", "", unsigned(Source::Harbor, &body));
}

// ---------------------------------------------------------------------------
// Cross-source properties
// ---------------------------------------------------------------------------

/// Headers that authenticate `body` for every source at once, so fuzzed
/// bodies get past the signature checks and reach the JSON code.
fn all_auth_headers(body: &[u8], event: &str) -> HeaderMap {
    let mut h = github_headers(event, body, SECRET);
    h.insert(
        "X-JFrog-Event-Auth",
        HeaderValue::from_str(&jfrog_sig(SECRET, body)).unwrap(),
    );
    h.insert("Authorization", HeaderValue::from_bytes(SECRET).unwrap());
    h
}

fn check_never_panics(body: &[u8], event: &str) {
    let authed = all_auth_headers(body, event);
    let empty = HeaderMap::new();
    for source in Source::ALL {
        for (h, secret) in [
            (&empty, None),
            (&empty, Some(SECRET)),
            (&authed, None),
            (&authed, Some(SECRET)),
        ] {
            match run(source, h, body, secret) {
                Err(WebhookError::Malformed(m)) => {
                    assert_one_line(&m);
                    assert!(m.starts_with(source.as_str()), "{m}");
                }
                Ok(Parsed::Ignored(reason)) => assert_one_line(&reason),
                Ok(Parsed::Push(pushes)) => {
                    assert!(!pushes.is_empty());
                    for p in pushes {
                        assert!(!p.tag.is_empty() && !p.repository.is_empty());
                    }
                }
                _ => {}
            }
        }
    }
}

fn all_fixtures() -> Vec<(&'static str, &'static str)> {
    vec![
        ("dockerhub/push.json", "package"),
        ("dockerhub/push_int_timestamp.json", "package"),
        ("github/package_published.json", "package"),
        ("github/registry_package_published.json", "registry_package"),
        ("github/untagged.json", "package"),
        ("github/ping.json", "ping"),
        ("quay/push.json", "package"),
        ("quay/push_legacy.json", "package"),
        ("harbor/push_artifact.json", "package"),
        ("harbor/delete.json", "package"),
        ("acr/push.json", "package"),
        ("acr/ping.json", "package"),
        ("acr/delete.json", "package"),
        ("artifactory/pushed.json", "package"),
        ("generic/push.json", "package"),
    ]
}

#[test]
fn every_fixture_is_handled_by_every_source_without_panicking() {
    for (path, event) in all_fixtures() {
        check_never_panics(&fixture(path), event);
    }
}

/// Every JSON pointer inside `v`, so a fuzzer can replace any node.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        Just(json!("")),
        Just(json!("PUSH_ARTIFACT")),
        Just(json!("push")),
        Just(json!("published")),
        Just(json!("container")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,12}",
                    Just("tag".to_owned()),
                    Just("repository".to_owned()),
                    Just("updated_tags".to_owned()),
                    Just("action".to_owned()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        event in prop_oneof![Just("package"), Just("registry_package"), Just("ping"), Just("push")],
    ) {
        check_never_panics(&body, event);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_json(v in arb_json()) {
        let body = serde_json::to_vec(&v).unwrap();
        check_never_panics(&body, "package");
        check_never_panics(&body, "registry_package");
    }

    #[test]
    fn parse_never_panics_on_mutated_fixtures(
        which in any::<prop::sample::Index>(),
        pick in any::<prop::sample::Index>(),
        replacement in prop::option::of(arb_json()),
    ) {
        let fixtures = all_fixtures();
        let (path, event) = fixtures[which.index(fixtures.len())];
        let mut v = fixture_json(path);
        let mut ptrs = Vec::new();
        pointers(&v, String::new(), &mut ptrs);
        let target = ptrs[pick.index(ptrs.len())].clone();
        let (parent, key) = target.rsplit_once('/').unwrap();
        match v.pointer_mut(parent) {
            Some(Value::Object(m)) => {
                let key = key.replace("~1", "/").replace("~0", "~");
                match replacement {
                    Some(r) => { m.insert(key, r); }
                    None => { m.remove(&key); }
                }
            }
            Some(Value::Array(a)) => {
                let i: usize = key.parse().unwrap();
                match replacement {
                    Some(r) => a[i] = r,
                    None => { a.remove(i); }
                }
            }
            _ => {}
        }
        check_never_panics(&serde_json::to_vec(&v).unwrap(), event);
    }
}

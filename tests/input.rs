//! The input grammar at the edge: hostile tags, digests, repositories,
//! actors and delivery ids sent through the real `tagbridge serve` binary's
//! HTTPS listener, for every source, against a real Consul agent. Each one
//! must be answered 400 with a reason naming the field, must change
//! nothing in Consul, and must not stop the next valid delivery.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

const SIGNING: &str = "input-test-signing-key-0123456789";

/// Every source, each a service on `acme/web` (GitHub: the fixture's
/// owner `acme`), plus `quaybig` for the one-push rule.
const SOURCES: [&str; 7] = [
    "dockerhub",
    "github",
    "quay",
    "harbor",
    "acr",
    "artifactory",
    "generic",
];

fn write_config(dir: &TempDir, tls: &TestTls, consul: &ConsulAgent) -> PathBuf {
    let signing = dir.write("signing.hmac", SIGNING);
    let mut config = TbConfig::new()
        .admin_listen("127.0.0.1:0")
        .log_format("json")
        .tls(tls)
        .consul(consul.addr())
        .consul_attr("timeout", "5s");
    for source in SOURCES {
        let service = Service::new(source, source).repository("acme/web");
        let signed = matches!(source, "github" | "generic");
        config = config.service(match signed {
            true => service.signing_file(&signing),
            false => service,
        });
    }
    let quaybig = Service::new("quaybig", "quay")
        .repository("acme/web")
        .line("history_keep = 100")
        .line("tags {\n    order   = \"semver\"\n    exclude = [\"-rc\"]\n  }");
    config.service(quaybig).write(dir, "tagbridge.hcl")
}

struct Edge {
    consul: ConsulAgent,
    tb: Serving,
    client: reqwest::Client,
    _dir: TempDir,
}

impl Edge {
    fn start(name: &str) -> Self {
        let Cluster {
            consul,
            tls,
            dir,
            client,
            ..
        } = Cluster::options(name).start();
        let cfg = write_config(&dir, &tls, &consul);
        let tb = Serving::start(&cfg, &[], dir.path().join("serve.log"));
        Edge {
            consul,
            tb,
            client,
            _dir: dir,
        }
    }

    /// POST `body` to `service`'s secret URL; `(status, parsed body)`.
    async fn post(&self, service: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
        post_hook(
            &self.client,
            self.tb.url(&hook_path(service)),
            body,
            headers,
        )
        .await
    }
}

/// `path`'s fixture with each JSON pointer set (or removed for `None`).
fn edited(path: &str, edits: &[(&str, Option<Value>)]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(path)).unwrap();
    for (at, value) in edits {
        let (parent, key) = at.rsplit_once('/').unwrap();
        let obj = v
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{path}{at}"));
        match value {
            Some(new) => {
                obj.insert(key.to_owned(), new.clone());
            }
            None => {
                obj.remove(key);
            }
        }
    }
    serde_json::to_vec(&v).unwrap()
}

/// Request headers, name and value.
type Headers = Vec<(&'static str, String)>;

/// What one source needs to authenticate `body`, plus extra headers.
fn auth(
    source: &str,
    body: &[u8],
    extra: Vec<(&'static str, String)>,
) -> Vec<(&'static str, String)> {
    let mut h = extra;
    if matches!(source, "github" | "generic") {
        h.push(("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), body)));
    }
    if source == "github" && !h.iter().any(|(k, _)| *k == "X-GitHub-Event") {
        h.push(("X-GitHub-Event", "package".into()));
    }
    h
}

/// A valid delivery of `tag` for `source`.
fn valid(source: &str, tag: &str) -> (Vec<u8>, Headers) {
    let t = Some(json!(tag));
    let body = match source {
        "dockerhub" => edited("dockerhub/push.json", &[("/push_data/tag", t)]),
        "github" => edited(
            "github/package_published.json",
            &[
                ("/package/package_version/container_metadata/tag/name", t),
                ("/package/package_version/package_url", None),
            ],
        ),
        "quay" => edited("quay/push.json", &[("/updated_tags", Some(json!([tag])))]),
        "harbor" => edited(
            "harbor/push_artifact.json",
            &[("/event_data/resources", Some(json!([{"tag": tag}])))],
        ),
        "acr" => edited("acr/push.json", &[("/target/tag", t)]),
        "artifactory" => edited("artifactory/pushed.json", &[("/data/tag", t)]),
        "generic" => edited("generic/push.json", &[("/tag", t)]),
        other => unreachable!("{other}"),
    };
    let headers = auth(
        source,
        &body,
        if source == "github" {
            vec![(
                "X-GitHub-Delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
            )]
        } else {
            vec![]
        },
    );
    (body, headers)
}

/// `value` as `field` in an otherwise valid delivery, or `None` when the
/// source has no such field.
fn hostile(source: &str, field: &str, value: &str) -> Option<(Vec<u8>, Headers)> {
    let v = Some(json!(value));
    let mut extra = Vec::new();
    let body = match (source, field) {
        ("dockerhub", "tag") => edited("dockerhub/push.json", &[("/push_data/tag", v)]),
        ("dockerhub", "repository") => {
            edited("dockerhub/push.json", &[("/repository/repo_name", v)])
        }
        ("dockerhub", "actor") => edited("dockerhub/push.json", &[("/push_data/pusher", v)]),
        ("github", "delivery") => {
            // Header values cannot hold CR, LF or NUL at all.
            http::HeaderValue::from_bytes(value.as_bytes()).ok()?;
            extra.push(("X-GitHub-Delivery", value.to_owned()));
            fixture("github/package_published.json")
        }
        ("github", f) => {
            let at = match f {
                "tag" => "/package/package_version/container_metadata/tag/name",
                "digest" => "/package/package_version/container_metadata/tag/digest",
                "repository" => "/package/name",
                "actor" => "/sender/login",
                _ => return None,
            };
            edited(
                "github/package_published.json",
                &[(at, v), ("/package/package_version/package_url", None)],
            )
        }
        ("quay", "tag") => edited(
            "quay/push.json",
            &[("/updated_tags", Some(json!(["1.4.2", value])))],
        ),
        ("quay", "repository") => edited("quay/push.json", &[("/repository", v)]),
        ("harbor", f) => {
            let at = match f {
                "tag" => "/event_data/resources/0/tag",
                "digest" => "/event_data/resources/0/digest",
                "repository" => "/event_data/repository/repo_full_name",
                "actor" => "/operator",
                _ => return None,
            };
            let mut v0: Value =
                serde_json::from_slice(&fixture("harbor/push_artifact.json")).unwrap();
            *v0.pointer_mut(at).unwrap() = json!(value);
            serde_json::to_vec(&v0).unwrap()
        }
        ("acr", f) => {
            let at = match f {
                "tag" => "/target/tag",
                "digest" => "/target/digest",
                "repository" => "/target/repository",
                "delivery" => "/id",
                _ => return None,
            };
            edited("acr/push.json", &[(at, v)])
        }
        ("artifactory", f) => {
            let at = match f {
                "tag" => "/data/tag",
                // Artifactory sends bare hex; a prefixed value is kept as
                // sent and must then be a valid digest.
                "digest" if value.contains(':') => "/data/sha256",
                "repository" => "/data/image_name",
                _ => return None,
            };
            edited("artifactory/pushed.json", &[(at, v)])
        }
        ("generic", "tag" | "digest" | "repository" | "actor") => {
            edited("generic/push.json", &[(format!("/{field}").as_str(), v)])
        }
        _ => return None,
    };
    Some((body.clone(), auth(source, &body, extra)))
}

fn classes() -> Vec<(&'static str, Vec<String>)> {
    let h = "0123456789abcdef".repeat(4);
    vec![
        (
            "tag",
            vec![
                "1.0\nLD_PRELOAD=/local/x.so".into(),
                "{{ key \"x\" }}".into(),
                "tag with space".into(),
                "../../x".into(),
                "a".repeat(129),
                ".hidden".into(),
                "-rf".into(),
            ],
        ),
        (
            "digest",
            vec![
                format!("md5:{}", &h[..32]),
                format!("sha256:{}", &h[1..]),
                format!("sha256:{}", h.to_ascii_uppercase()),
                format!("sha256:{}x", &h[1..]),
            ],
        ),
        (
            "repository",
            vec![
                "acme/../web".into(),
                "acme//web".into(),
                format!("acme/{}", "w".repeat(251)),
                "acme/web\n".into(),
            ],
        ),
        (
            "actor",
            vec!["a".repeat(257), "ci\nroot".into(), "ci\u{1b}[2J".into()],
        ),
        (
            "delivery",
            vec!["d".repeat(129), "id\twith-tab".into(), "id\nx".into()],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_fields_are_400_name_the_field_and_change_nothing() {
    let edge = Edge::start("input");

    // A first valid delivery for every source, so there is state to keep.
    for source in SOURCES {
        let (body, headers) = valid(source, "1.0.0");
        let (status, resp) = edge.post(source, body, &headers).await;
        assert_eq!(status, 200, "{source}: {resp}");
        assert_eq!(
            edge.consul
                .kv(&format!("configs/{source}/IMAGE_TAG"))
                .as_deref(),
            Some("1.0.0"),
            "{source}"
        );
    }
    let before = edge.consul.fingerprint();
    assert!(!before.is_empty());

    let mut sent = 0;
    for source in SOURCES {
        for (field, values) in classes() {
            for value in values {
                let Some((body, headers)) = hostile(source, field, &value) else {
                    continue;
                };
                let (status, resp) = edge.post(source, body, &headers).await;
                assert_eq!(status, 400, "{source} {field} {value:?}: {resp}");
                let error = resp["error"].as_str().unwrap_or_else(|| panic!("{resp}"));
                assert!(
                    error.starts_with(&format!("{source}: {field} ")),
                    "{source} {field} {value:?}: {error}"
                );
                assert!(!error.contains(['\n', '\r', '\u{1b}']), "{error:?}");
                assert!(error.len() <= 300, "{error}");
                sent += 1;
            }
        }
    }
    assert!(sent >= 80, "only {sent} hostile deliveries were sent");
    assert_eq!(
        edge.consul.fingerprint(),
        before,
        "a refused delivery changed Consul"
    );

    // Still serving, and the next valid delivery is written.
    for source in SOURCES {
        let (body, headers) = valid(source, "2.0.0");
        let (status, resp) = edge.post(source, body, &headers).await;
        assert_eq!(status, 200, "{source}: {resp}");
        assert_eq!(resp["tag"], "2.0.0", "{source}: {resp}");
        assert_eq!(
            edge.consul
                .kv(&format!("configs/{source}/IMAGE_TAG"))
                .as_deref(),
            Some("2.0.0"),
            "{source}"
        );
    }
    // No hostile value forged a log line or came back whole in one.
    let log = edge.tb.log_text();
    for line in log.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    assert!(!log.contains(&"a".repeat(129)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghcr_shapes_reach_kv_and_a_package_url_mismatch_does_not() {
    let edge = Edge::start("input-ghcr");
    // Owner `Acme` and `namespace: "Acme/web-platform"`: the repository is
    // `acme/web`, the configured one.
    let body = fixture("github/registry_package_owner_repo_namespace.json");
    let headers = auth(
        "github",
        &body,
        vec![("X-GitHub-Event", "registry_package".into())],
    );
    let (status, resp) = edge.post("github", body, &headers).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        edge.consul.kv("configs/github/IMAGE_TAG").as_deref(),
        Some("2.0.1")
    );

    let before = edge.consul.fingerprint();
    let body = edited(
        "github/package_published.json",
        &[(
            "/package/package_version/package_url",
            Some(json!("ghcr.io/someone-else/web:1.4.2")),
        )],
    );
    let headers = auth("github", &body, vec![]);
    let (status, resp) = edge.post("github", body, &headers).await;
    assert_eq!(status, 400, "{resp}");
    let error = resp["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "github: repository \"acme/web\": does not match package.package_version.package_url"
        ),
        "{error}"
    );
    // A user-owned package (`namespace: "user"`) names `octo-dev/web`,
    // which is not this service's repository: refused, not mis-deployed.
    let body = fixture("github/package_user_namespace.json");
    let headers = auth("github", &body, vec![]);
    let (status, resp) = edge.post("github", body, &headers).await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("octo-dev/web"),
        "{resp}"
    );
    assert_eq!(edge.consul.fingerprint(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quay_push_of_20_000_tags_writes_only_the_best_one() {
    let edge = Edge::start("input-big");
    // Semver tags in a scrambled order; the best, 9.99.99, sits in the
    // middle. Release candidates (excluded) and `latest` (not semver) are
    // noise the policy must skip, including a `-rc` that would sort
    // highest.
    let n = 20_000u32;
    let mut tags: Vec<String> = (0..n)
        .map(|i| {
            let k = (i * 7919) % n;
            match i % 5 {
                0 => "latest".to_owned(),
                1 => format!("99.0.{k}-rc.1"),
                _ => format!("{}.{}.{}", k % 9, k % 97, k % 89),
            }
        })
        .collect();
    tags[10_001] = "9.99.99".to_owned();
    let body = edited("quay/push.json", &[("/updated_tags", Some(json!(tags)))]);
    assert!(body.len() < 1024 * 1024, "body is {} bytes", body.len());

    let (status, resp) = edge.post("quaybig", body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["tag"], "9.99.99", "{resp}");
    assert_eq!(resp["changed"], true, "{resp}");
    assert_eq!(
        edge.consul.kv("configs/quaybig/IMAGE_TAG").as_deref(),
        Some("9.99.99")
    );
    // One push, one write: a single history record, not one per listed
    // tag (which would also push every earlier record out of history).
    let h = edge.consul.history("quaybig");
    assert_eq!(
        h.len(),
        1,
        "history records for one push; first: {:?}",
        h.first()
    );
    assert_eq!(h[0]["tag"], "9.99.99");

    // And one tag over the bound is refused whole.
    let over: Vec<String> = (0..=n).map(|i| format!("1.0.{i}")).collect();
    let before = edge.consul.fingerprint();
    let body = edited("quay/push.json", &[("/updated_tags", Some(json!(over)))]);
    let (status, resp) = edge.post("quaybig", body, &[]).await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("updated_tags lists more than 20000 tags"),
        "{resp}"
    );
    assert_eq!(edge.consul.fingerprint(), before);
}

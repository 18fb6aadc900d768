//! The OCI distribution client (`tagbridge::registry`) against a real
//! registry: `crane registry serve`, with images pushed by crane. Token
//! authentication is staged by a small front on loopback that speaks the
//! distribution spec's Bearer flow and forwards to the real registry.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tagbridge::clients::http::{ClientTlsFiles, HttpClient};
use tagbridge::clients::registry::{
    Registry, RegistryAuth, RegistryError, RegistrySettings, PAGE_SIZE,
};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

fn client(address: &str, auth: RegistryAuth) -> Registry {
    let http = HttpClient::new(&ClientTlsFiles::default()).expect("client");
    Registry::new(
        http,
        RegistrySettings {
            address: address.to_string(),
            auth,
            timeout: Duration::from_secs(10),
        },
    )
}

/// Give `repository` the extra tags `names`, all naming the image of
/// `from`, by PUTting its manifest under each (crane would spawn once per
/// tag).
async fn add_tags(reg: &CraneRegistry, repository: &str, from: &str, names: &[String]) {
    let http = reqwest::Client::new();
    let url = |t: &str| format!("{}/v2/{repository}/manifests/{t}", reg.addr());
    let got = http
        .get(url(from))
        .header("Accept", MANIFEST_TYPES)
        .send()
        .await
        .expect("get manifest");
    let media = got.headers()["content-type"].to_str().unwrap().to_string();
    let body = got.bytes().await.expect("manifest body");
    for t in names {
        let put = http
            .put(url(t))
            .header("Content-Type", &media)
            .body(body.clone())
            .send()
            .await
            .expect("put manifest");
        assert!(put.status().is_success(), "PUT {t}: {}", put.status());
    }
}

#[tokio::test]
async fn the_digest_of_a_tag_follows_a_repush_and_an_unknown_tag_is_none() {
    let reg = CraneRegistry::start();
    let first = reg.push_empty("acme/web", "prod");
    let r = client(&reg.addr(), RegistryAuth::Anonymous);
    assert_eq!(
        r.digest("acme/web", "prod").await.unwrap(),
        Some(first.clone())
    );
    let second = reg.repush("acme/web", "prod", "2");
    assert_ne!(first, second, "a mutated image has a new digest");
    assert_eq!(r.digest("acme/web", "prod").await.unwrap(), Some(second));
    assert_eq!(r.digest("acme/web", "nope").await.unwrap(), None);
    assert_eq!(r.digest("acme/other", "prod").await.unwrap(), None);
}

#[tokio::test]
async fn every_tag_is_listed_across_pages_and_the_listing_ends() {
    let reg = CraneRegistry::start();
    reg.push_empty("acme/web", "1.0.0");
    // 2 * PAGE_SIZE tags in all: the last page is full, and this registry
    // answers `last=<its final tag>` with the first page again. The
    // listing must notice and stop, not loop.
    let names: Vec<String> = (1..2 * PAGE_SIZE).map(|i| format!("2.0.{i}")).collect();
    add_tags(&reg, "acme/web", "1.0.0", &names).await;
    let r = client(&reg.addr(), RegistryAuth::Anonymous);
    let list = r.tags("acme/web").await.unwrap();
    assert_eq!(list.tags.len(), 2 * PAGE_SIZE);
    assert_eq!(list.truncated, None);
    let mut sorted = list.tags.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), list.tags.len(), "no tag twice");
    assert!(list.tags.contains(&"1.0.0".to_string()));
    assert_eq!(list.requests, 3, "two full pages and the one that ends it");

    // One more tag: the third page is partial and ends the listing itself.
    add_tags(&reg, "acme/web", "1.0.0", &["9.9.9".to_string()]).await;
    let list = r.tags("acme/web").await.unwrap();
    assert_eq!(list.tags.len(), 2 * PAGE_SIZE + 1);
    assert_eq!(list.requests, 3);

    match r.tags("acme/none").await {
        Err(RegistryError::Status {
            status: 404, code, ..
        }) => assert_eq!(code, " (NAME_UNKNOWN)"),
        other => panic!("an unknown repository: {other:?}"),
    }
}

/// A token front for the real registry: `/token` hands out a token for
/// the right Basic credentials; `/v2/…` without it gets the Bearer
/// challenge, with it is forwarded to crane.
struct Front {
    addr: String,
    tokens_issued: Arc<AtomicU32>,
}

impl Front {
    async fn start(backend: String, username: &'static str, password: &'static str) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let tokens_issued = Arc::new(AtomicU32::new(0));
        let (issued, realm) = (tokens_issued.clone(), format!("{addr}/token"));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            // Bounded: a test makes far fewer connections than this.
            for _ in 0..10_000 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (http, backend, issued, realm) =
                    (http.clone(), backend.clone(), issued.clone(), realm.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (http, backend, issued, realm) =
                                (http.clone(), backend.clone(), issued.clone(), realm.clone());
                            async move {
                                Ok::<_, Infallible>(
                                    front(
                                        req, &http, &backend, &issued, &realm, username, password,
                                    )
                                    .await,
                                )
                            }
                        });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Front {
            addr,
            tokens_issued,
        }
    }
}

async fn front(
    req: Request<hyper::body::Incoming>,
    http: &reqwest::Client,
    backend: &str,
    issued: &AtomicU32,
    realm: &str,
    username: &str,
    password: &str,
) -> Response<Full<Bytes>> {
    use base64::Engine as _;
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    if path.starts_with("/token?") {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        if auth != want || !path.contains("scope=repository%3Aacme%2Fweb%3Apull") {
            return reply(401, "{}".into());
        }
        let n = issued.fetch_add(1, Ordering::SeqCst);
        return reply(200, format!(r#"{{"token":"tok-{n}","expires_in":300}}"#));
    }
    if !auth.starts_with("Bearer tok-") {
        let mut r = reply(401, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.into());
        r.headers_mut().insert(
            "www-authenticate",
            format!(r#"Bearer realm="{realm}",service="front",scope="repository:acme/web:pull""#)
                .parse()
                .unwrap(),
        );
        return r;
    }
    forward(req, http, backend, &path).await
}

/// Pass `req` on to crane at `backend` (its method, path and `Accept`),
/// and crane's answer back (status, headers, body).
async fn forward(
    req: Request<hyper::body::Incoming>,
    http: &reqwest::Client,
    backend: &str,
    path: &str,
) -> Response<Full<Bytes>> {
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let accept = req.headers().get("accept").cloned();
    let _ = req.into_body().collect().await;
    let mut fwd = http.request(method, format!("{backend}{path}"));
    if let Some(a) = accept {
        fwd = fwd.header("accept", a.to_str().unwrap());
    }
    let got = fwd.send().await.expect("forward to crane");
    let mut r = Response::builder().status(got.status().as_u16());
    for (k, v) in got.headers() {
        r = r.header(k.as_str(), v.as_bytes());
    }
    r.body(Full::new(got.bytes().await.unwrap_or_default()))
        .unwrap()
}

#[tokio::test]
async fn the_bearer_flow_fetches_one_token_and_reuses_it() {
    let reg = CraneRegistry::start();
    let digest = reg.push_empty("acme/web", "1.0.0");
    let front = Front::start(reg.addr(), "ci", "s3cret-pass").await;
    let r = client(
        &front.addr,
        RegistryAuth::Basic {
            username: "ci".into(),
            password: "s3cret-pass".into(),
        },
    );
    assert_eq!(r.digest("acme/web", "1.0.0").await.unwrap(), Some(digest));
    let list = r.tags("acme/web").await.unwrap();
    assert_eq!(list.tags, vec!["1.0.0".to_string()]);
    assert_eq!(list.requests, 1, "the cached token is sent at once");
    assert_eq!(front.tokens_issued.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_credentials_are_a_clear_error_that_names_no_secret() {
    let reg = CraneRegistry::start();
    reg.push_empty("acme/web", "1.0.0");
    let front = Front::start(reg.addr(), "ci", "s3cret-pass").await;
    let wrong = client(
        &front.addr,
        RegistryAuth::Basic {
            username: "ci".into(),
            password: "wrong-pass".into(),
        },
    );
    let e = wrong.digest("acme/web", "1.0.0").await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains("wrong-pass") && !text.contains("ci:"),
        "{text}"
    );
    // Anonymous gets the challenge and no token either.
    let anon = client(&front.addr, RegistryAuth::Anonymous);
    assert!(matches!(
        anon.tags("acme/web").await,
        Err(RegistryError::Unauthorized { .. })
    ));
    assert_eq!(front.tokens_issued.load(Ordering::SeqCst), 0);
}

/// Run the tagbridge binary against `consul`; (exit code, stdout, stderr).
fn tagbridge(
    config: &std::path::Path,
    consul: &ConsulAgent,
    args: &[&str],
) -> (i32, String, String) {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tagbridge"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CONSUL_HTTP_ADDR", consul.addr())
        .output()
        .expect("run tagbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The configuration of the Docker Hub service "web" on the cluster's
/// registry (tag order `order`, `-rc` and `-beta` excluded, `extra` lines
/// in the service block), serving the cluster's certificate; Consul comes
/// from `CONSUL_HTTP_ADDR`.
fn served_config(c: &Cluster, order: &str, extra: &str) -> std::path::PathBuf {
    served_config_at(c, &c.registry().addr(), order, extra)
}

/// [`served_config`] with the registry at `address` (a front).
fn served_config_at(c: &Cluster, address: &str, order: &str, extra: &str) -> std::path::PathBuf {
    let web = Service::new("web", "dockerhub")
        .line(format!(
            "tags {{\n    order   = \"{order}\"\n    exclude = [\"-rc\", \"-beta\"]\n  }}"
        ))
        .line(format!("registry {{\n    address = \"{address}\"\n  }}"))
        .line(extra);
    TbConfig::new()
        .admin_listen("127.0.0.1:0")
        .tls(&c.tls)
        .service(web)
        .write(&c.dir, "tagbridge.hcl")
}

fn history(config: &std::path::Path, consul: &ConsulAgent) -> Vec<serde_json::Value> {
    let (code, out, err) = tagbridge(config, consul, &["history", "web", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("history JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_the_best_listed_tag_through_ingest_and_never_regresses() {
    let c = Cluster::options("sync").registry().start();
    let (reg, consul) = (c.registry(), &c.consul);
    reg.push_empty("acme/web", "1.0.0");
    let extra: Vec<String> = ["1.2.0", "1.10.0-rc1", "1.1.0", "latest", "2.0.0-beta"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    add_tags(reg, "acme/web", "1.0.0", &extra).await;
    let want_digest = reg.digest("acme/web", "1.2.0");
    let cfg = served_config(&c, "semver", "");
    tokio::task::block_in_place(|| {
        // An http registry loads, with a warning `check` prints.
        let (code, out, err) = tagbridge(&cfg, consul, &["check"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("warning:") && out.contains("plain http"),
            "{out}"
        );

        let (code, out, err) = tagbridge(&cfg, consul, &["sync", "web"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("(unset) -> 1.2.0"), "{out}");
        assert!(out.contains("6 tags, 2 registry requests"), "{out}");
        assert_eq!(consul.kv("configs/web/IMAGE_TAG").as_deref(), Some("1.2.0"));
        let h = history(&cfg, consul);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0]["source"], "poll");
        assert_eq!(h[0]["digest"], want_digest.as_str());

        // Again: nothing newer, nothing written.
        let (code, out, _) = tagbridge(&cfg, consul, &["sync", "web"]);
        assert_eq!(code, 0);
        assert!(out.contains("nothing to do"), "{out}");
        assert_eq!(history(&cfg, consul).len(), 1);

        // An operator deployed a newer tag by hand: sync never regresses
        // it, and records nothing.
        let (code, _, err) = tagbridge(&cfg, consul, &["deploy", "web", "3.0.0"]);
        assert_eq!(code, 0, "{err}");
        let (code, out, _) = tagbridge(&cfg, consul, &["sync", "web"]);
        assert_eq!(code, 0);
        assert!(out.contains("older than current"), "{out}");
        assert_eq!(consul.kv("configs/web/IMAGE_TAG").as_deref(), Some("3.0.0"));
        assert_eq!(history(&cfg, consul).len(), 2, "the manual deploy only");

        // A listing has no push order.
        let pushed = served_config(&c, "pushed", "");
        let (code, _, err) = tagbridge(&pushed, consul, &["sync", "web"]);
        assert_eq!(code, 1);
        assert!(err.contains("\"pushed\""), "{err}");
    });
}

/// Figures for the closing note, not an assertion on time: `tagbridge
/// sync` against a registry holding 10 000 tags. Run with
/// `cargo test --release --test registry -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints figures"]
async fn measure_sync_against_ten_thousand_tags() {
    let c = Cluster::options("sync-10k").registry().start();
    let (reg, consul) = (c.registry(), &c.consul);
    reg.push_empty("acme/web", "1.0.0");
    let names: Vec<String> = (1..10_000)
        .map(|i| format!("1.{}.{}", i / 100, i % 100))
        .collect();
    add_tags(reg, "acme/web", "1.0.0", &names).await;
    let cfg = served_config(&c, "semver", "");
    tokio::task::block_in_place(|| {
        for run in ["first", "again"] {
            let t = std::time::Instant::now();
            let (code, out, err) = tagbridge(&cfg, consul, &["sync", "web"]);
            assert_eq!(code, 0, "{err}");
            println!(
                "sync {run}: {:?} wall (process included): {}",
                t.elapsed(),
                out.trim()
            );
        }
    });
}

/// `poll_interval`: the leader syncs at once when it takes the lock, so a
/// delivery lost while no one led is made good without waiting a round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_polls_the_registry_and_applies_a_missed_tag() {
    let c = Cluster::options("poll").registry().start();
    let (reg, consul, dir) = (c.registry(), &c.consul, &c.dir);
    reg.push_empty("acme/web", "1.0.0");
    add_tags(reg, "acme/web", "1.0.0", &["1.4.2".to_string()]).await;
    let cfg = served_config(&c, "semver", r#"poll_interval = "1m""#);
    let log = dir.path().join("serve.log");
    let serving = tokio::task::block_in_place(|| {
        Serving::start(
            &cfg,
            &[
                ("CONSUL_HTTP_ADDR", consul.addr()),
                ("TAGBRIDGE_LOG", "info".to_string()),
            ],
            log,
        )
    });
    wait("the poll to apply 1.4.2", Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .attempt_async(|| consul.kv("configs/web/IMAGE_TAG").as_deref() == Some("1.4.2"))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the poll did not apply 1.4.2 within 30 s; log:\n{}",
                serving.log_text()
            )
        });
    let h = tokio::task::block_in_place(|| history(&cfg, consul));
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["source"], "poll");
    assert!(
        serving.log_text().contains("poll: a newer tag"),
        "{}",
        serving.log_text()
    );

    // Without a registry or with the pushed order, the config is refused.
    let pushed = served_config(&c, "pushed", r#"poll_interval = "1m""#);
    let (code, _, err) = tokio::task::block_in_place(|| tagbridge(&pushed, consul, &["check"]));
    assert_eq!(code, 1);
    assert!(err.contains("poll_interval: needs tags.order"), "{err}");
}

/// A Docker Hub push of `acme/web:<tag>` (no digest, as Docker Hub sends
/// it), with a `callback_url` tagbridge must never call.
async fn hub_push(
    client: &reqwest::Client,
    serving: &Serving,
    tag: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "callback_url": "http://127.0.0.1:9/never",
        "push_data": {"tag": tag, "pusher": "ci"},
        "repository": {"repo_name": "acme/web"},
    });
    let resp = client
        .post(serving.url(&format!("/hooks/{}", secret_pair("web").0)))
        .json(&body)
        .send()
        .await
        .expect("webhook");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// The value and ModifyIndex of each key under `configs/web/`.
fn web_keys(consul: &ConsulAgent) -> std::collections::BTreeMap<String, (String, u64)> {
    use base64::Engine as _;
    let body = blocking_get(&format!("{}/v1/kv/configs/web/?recurse", consul.addr()))
        .expect("consul list");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("kv JSON");
    list.iter()
        .map(|e| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(e["Value"].as_str().unwrap_or_default())
                .expect("base64");
            (
                e["Key"].as_str().unwrap().to_string(),
                (
                    String::from_utf8(value).unwrap(),
                    e["ModifyIndex"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// `resolve_digest` with a `digest_key`, end to end through the real
/// binary: Docker Hub's payload has no digest, so the registry is asked;
/// the tag and its digest land in one transaction, a re-push of the same
/// tag with new content is a change, and a registry that cannot answer
/// gets the webhook a 502 with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repushed_docker_hub_tag_is_a_change_once_its_digest_is_resolved() {
    let mut c = Cluster::options("resolve").registry().start();
    let crane = c.registry();
    let first = crane.push_empty("acme/web", "prod");
    let resolving = "digest_key     = \"configs/web/IMAGE_DIGEST\"\n  resolve_digest = true";
    let cfg = served_config(&c, "pushed", resolving);
    let (consul, dir, tls) = (&c.consul, &c.dir, &c.tls);
    let serving = tokio::task::block_in_place(|| {
        Serving::start(
            &cfg,
            &[("CONSUL_HTTP_ADDR", consul.addr())],
            dir.path().join("serve.log"),
        )
    });
    let client = tls.client();
    const TAG: &str = "configs/web/IMAGE_TAG";
    const DIGEST: &str = "configs/web/IMAGE_DIGEST";

    let (status, body) = hub_push(&client, &serving, "prod").await;
    assert_eq!(
        (status, &body["changed"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    let keys = tokio::task::block_in_place(|| web_keys(consul));
    assert_eq!(keys[TAG].0, "prod");
    assert_eq!(keys[DIGEST].0, first);
    assert_eq!(keys[TAG].1, keys[DIGEST].1, "one transaction: {keys:?}");

    // The same content again: unchanged, nothing written.
    let (status, body) = hub_push(&client, &serving, "prod").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (200, Some("unchanged")),
        "{body}"
    );
    assert_eq!(tokio::task::block_in_place(|| web_keys(consul)), keys);

    // Re-pushed with new content: a change, and the digest key moves.
    let second = tokio::task::block_in_place(|| crane.repush("acme/web", "prod", "2"));
    assert_ne!(first, second);
    let (status, body) = hub_push(&client, &serving, "prod").await;
    assert_eq!(
        (status, &body["changed"]),
        (200, &serde_json::json!(true)),
        "{body}"
    );
    let moved = tokio::task::block_in_place(|| web_keys(consul));
    assert_eq!(moved[TAG].0, "prod");
    assert_eq!(moved[DIGEST].0, second);
    // Consul leaves a key written with the value it holds at its index,
    // so the transaction shows in the desired record written with it.
    assert_eq!(moved[TAG].1, keys[TAG].1);
    let desired_index = tokio::task::block_in_place(|| consul.fingerprint())
        .into_iter()
        .find(|(k, _)| k == "tagbridge/desired/web")
        .map(|(_, i)| i);
    assert_eq!(Some(moved[DIGEST].1), desired_index, "one transaction");
    assert!(moved[DIGEST].1 > keys[DIGEST].1);
    let h = consul.history("web");
    let digests: Vec<&str> = h
        .iter()
        .map(|e| e["digest"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(digests, [second.as_str(), first.as_str()], "{h:?}");

    // The registry is gone: 502 with a one-line reason, nothing written.
    drop(c.registry.take());
    let before = tokio::task::block_in_place(|| consul.fingerprint());
    let (status, body) = hub_push(&client, &serving, "prod").await;
    assert_eq!(status, 502, "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("digest of acme/web:prod unknown: ") && !reason.contains('\n'),
        "{reason}"
    );
    // A tag the filters refuse never reaches the registry: 200, ignored.
    let (status, body) = hub_push(&client, &serving, "2.0-rc").await;
    assert_eq!(
        (status, &body["changed"]),
        (200, &serde_json::json!(false)),
        "{body}"
    );
    assert_eq!(tokio::task::block_in_place(|| consul.fingerprint()), before);
    // The holder of the unsigned URL chooses how many 502s there are:
    // summarised with the rejections (at most one line per address per
    // interval, flushed at shutdown), never a line each.
    let (_, log) = tokio::task::block_in_place(|| serving.terminate());
    assert!(
        !log.contains("\"status\":502") && !log.contains("status=502"),
        "no line per 502: {log}"
    );
    let summary = log
        .lines()
        .find(|l| l.contains("rejected requests"))
        .unwrap_or_else(|| panic!("a summary line: {log}"));
    assert!(
        summary.contains("registry_error=1") && summary.contains("digest of acme/web:prod unknown"),
        "{summary}"
    );

    // A tag written without a known digest (an operator's deploy) takes
    // the digest key away: it never names the digest of another tag.
    let (code, _, err) =
        tokio::task::block_in_place(|| tagbridge(&cfg, consul, &["deploy", "web", "hotfix-1"]));
    assert_eq!(code, 0, "{err}");
    let keys = tokio::task::block_in_place(|| web_keys(consul));
    assert_eq!(keys[TAG].0, "hotfix-1");
    assert!(!keys.contains_key(DIGEST), "{keys:?}");
}

/// A front that scripts `acme/web`'s tag listing and forwards the rest
/// (the digest's `HEAD`) to the real registry. Not `endless`: page one is
/// `1.0.0, latest`, page two (linked) `1.2.0, 1.1.0`, all sorting before
/// `latest`, and page three repeats page one with a link back to page
/// two. `endless`: every page holds one new (`-rc`, excluded) tag and
/// links to the next.
async fn paging_front(backend: String, endless: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for _ in 0..10_000 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (http, backend) = (http.clone(), backend.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (http, backend) = (http.clone(), backend.clone());
                    async move { Ok::<_, Infallible>(paging(req, &http, &backend, endless).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
}

async fn paging(
    req: Request<hyper::body::Incoming>,
    http: &reqwest::Client,
    backend: &str,
    endless: bool,
) -> Response<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if path.starts_with("/v2/acme/web/tags/list?") {
        let n: u32 = path
            .rsplit_once("&page=")
            .map_or(1, |(_, n)| n.parse().unwrap());
        let (tags, next) = match (endless, n) {
            (true, n) => (format!(r#"["0.0.{n}-rc"]"#), n + 1),
            (false, 2) => (r#"["1.2.0","1.1.0"]"#.to_string(), 3),
            (false, _) => (r#"["1.0.0","latest"]"#.to_string(), 2),
        };
        return Response::builder()
            .header("content-type", "application/json")
            .header(
                "link",
                format!(r#"</v2/acme/web/tags/list?n={PAGE_SIZE}&page={next}>; rel="next""#),
            )
            .body(Full::new(Bytes::from(format!(
                r#"{{"name":"acme/web","tags":{tags}}}"#
            ))))
            .unwrap();
    }
    forward(req, http, backend, &path).await
}

/// Item 8 of "the edge, round two": a registry listing out of lexical
/// order loses no tag, a repeated page ends the listing, and a bound
/// reached is named in `tagbridge sync`'s output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_picks_the_best_tag_of_a_page_listed_out_of_lexical_order() {
    let c = Cluster::options("sync-order").registry().start();
    let (reg, consul) = (c.registry(), &c.consul);
    reg.push_empty("acme/web", "1.0.0");
    let extra: Vec<String> = ["latest", "1.2.0", "1.1.0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    add_tags(reg, "acme/web", "1.0.0", &extra).await;
    let want_digest = reg.digest("acme/web", "1.2.0");
    let front = paging_front(reg.addr(), false).await;
    let cfg = served_config_at(&c, &front, "semver", "");
    let endless = paging_front(reg.addr(), true).await;
    tokio::task::block_in_place(|| {
        let (code, out, err) = tagbridge(&cfg, consul, &["sync", "web"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("(unset) -> 1.2.0"), "{out}");
        // Three pages (the third repeats the first and ends it) and the
        // digest; complete, so no bound named.
        assert!(out.contains("4 tags, 4 registry requests"), "{out}");
        assert!(!out.contains("listing stopped"), "{out}");
        assert_eq!(consul.kv("configs/web/IMAGE_TAG").as_deref(), Some("1.2.0"));
        let h = history(&cfg, consul);
        assert_eq!(h[0]["digest"], want_digest.as_str());

        // The same file, now naming the endless front.
        let endless_cfg = served_config_at(&c, &endless, "semver", "");
        let (code, out, err) = tagbridge(&endless_cfg, consul, &["sync", "web"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("100 tags, 100 registry requests"), "{out}");
        assert!(
            out.contains("listing stopped at MAX_PAGES (100 pages)"),
            "{out}"
        );
    });
}

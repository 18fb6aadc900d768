//! The contract's HTTP table, row by row, against a real Consul agent.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WEB: &str = r#"
service "web" {
  secret_sha256 = "{SECRET:web}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "configs/web/IMAGE_TAG"
  history_keep  = 5
  tags {
    include = "^(release-)?[0-9.]+$"
    exclude = ["-rc"]
    order   = "numeric"
  }
}
"#;

fn dockerhub(repo: &str, tag: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "callback_url": "https://registry.hub.docker.com/u/acme/web/hook/x/",
        "push_data": {"pushed_at": 1764590400.5, "pusher": "ci", "tag": tag},
        "repository": {"repo_name": repo, "name": "web", "namespace": "acme"}
    }))
    .unwrap()
}

#[tokio::test]
async fn accepted_push_writes_tag_history_and_desired_together() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;

    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "1.4.2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"service": "web", "key": "configs/web/IMAGE_TAG", "tag": "1.4.2",
               "previous": null, "changed": true, "rollout": "none"})
    );
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.4.2")
    );
    let desired: Value =
        serde_json::from_str(&env.consul.kv("tagbridge/desired/web").unwrap()).unwrap();
    assert_eq!(desired["tag"], "1.4.2");
    assert_eq!(desired["seq"], 1);
    let h = env.consul.history("web");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["event"], "received");
    assert_eq!(h[0]["tag"], "1.4.2");
    assert_eq!(h[0]["source"], "dockerhub");
    assert_eq!(h[0]["actor"], "ci");

    let (status, body) = env.post(&tb, "web", dockerhub("ACME/Web", "1.5.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous"], "1.4.2");
    assert_eq!(body["changed"], true);
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.5.0")
    );
    let desired: Value =
        serde_json::from_str(&env.consul.kv("tagbridge/desired/web").unwrap()).unwrap();
    assert_eq!(desired["seq"], 2);
    let h = env.consul.history("web");
    assert_eq!(
        (h[0]["tag"].as_str(), h[0]["previous"].as_str()),
        (Some("1.5.0"), Some("1.4.2"))
    );
    tb.stop().await;
}

#[tokio::test]
async fn unchanged_older_and_filtered_tags_change_nothing_they_should_not() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    assert_eq!(
        env.post(&tb, "web", dockerhub("acme/web", "2.0.0")).await.0,
        200
    );
    let before = env.consul.fingerprint();

    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "2.0.0")).await;
    assert_eq!(
        (status, &body["changed"], &body["reason"]),
        (200, &json!(false), &json!("unchanged"))
    );
    assert_eq!(
        env.consul.fingerprint(),
        before,
        "unchanged must write nothing"
    );

    for (tag, reason) in [
        ("latest", "tag does not match include"),
        ("2.1.0-rc", "tag does not match include"),
    ] {
        let (status, body) = env.post(&tb, "web", dockerhub("acme/web", tag)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["changed"], false);
        assert_eq!(body["reason"], reason, "{tag}");
    }
    assert_eq!(
        env.consul.fingerprint(),
        before,
        "filtered tags must write nothing"
    );

    // An older tag (late delivery) is recorded in history but never
    // replaces the newer one.
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "1.9.9")).await;
    assert_eq!(
        (status, &body["reason"]),
        (200, &json!("older than current")),
        "{body}"
    );
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("2.0.0")
    );
    let h = env.consul.history("web");
    assert_eq!(h[0]["tag"], "1.9.9");
    assert_eq!(h[0]["detail"], "ignored: older than current");
    let desired: Value =
        serde_json::from_str(&env.consul.kv("tagbridge/desired/web").unwrap()).unwrap();
    assert_eq!(desired["tag"], "2.0.0");
    tb.stop().await;
}

#[tokio::test]
async fn exclude_list_filters_tags() {
    let env = Cluster::options("http").start();
    let svc = r#"
service "api" {
  secret_sha256 = "{SECRET:api}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "configs/api/IMAGE_TAG"
  tags {
    exclude = ["-rc", "\\.sig$"]
  }
}"#;
    let tb = env.serve("", svc).await;
    for tag in ["1.0-rc1", "sha256-abc.sig"] {
        let (status, body) = env.post(&tb, "api", dockerhub("acme/web", tag)).await;
        assert_eq!(status, 200);
        assert_eq!(body["changed"], false);
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .starts_with("tag matches exclude"),
            "{body}"
        );
    }
    assert_eq!(env.consul.kv("configs/api/IMAGE_TAG"), None);
    let (status, _) = env.post(&tb, "api", dockerhub("acme/web", "1.0")).await;
    assert_eq!(status, 200);
    assert_eq!(
        env.consul.kv("configs/api/IMAGE_TAG").as_deref(),
        Some("1.0")
    );
    tb.stop().await;
}

#[tokio::test]
async fn rollout_configured_answers_202_queued() {
    let env = Cluster::options("http").start();
    let svc = r#"
service "web" {
  secret_sha256 = "{SECRET:web}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "configs/web/IMAGE_TAG"
  rollout {
    job      = "web"
    strategy = "template"
  }
}"#;
    let tb = env.serve("", svc).await;
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "3.0")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["rollout"], "queued");
    assert_eq!(body["changed"], true);
    // I2: only the leader writes a rollout service's key.
    assert_eq!(env.consul.kv("configs/web/IMAGE_TAG"), None);
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "3.0")).await;
    assert_eq!((status, &body["rollout"]), (200, &json!("none")));
    tb.stop().await;
}

#[tokio::test]
async fn unknown_secret_and_any_other_path_get_the_same_404() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    let (good, _) = secret_pair("web");
    let mut bodies = Vec::new();
    for (method, path) in [
        ("POST", "/hooks/wrong-secret".to_string()),
        ("POST", "/hooks/".to_string()),
        ("POST", "/".to_string()),
        ("GET", "/metrics".to_string()),
        ("GET", format!("/hooks/{good}")),
        ("POST", format!("/hooks/{good}/extra")),
        ("POST", format!("/x/hooks/{good}")),
    ] {
        let resp = env
            .client
            .request(method.parse().unwrap(), tb.url(&path))
            .body(dockerhub("acme/web", "1.0"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{method} {path}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        bodies.push((ct, resp.bytes().await.unwrap()));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "404 bodies differ: {bodies:?}"
    );
    assert_eq!(env.consul.fingerprint(), vec![]);
    tb.stop().await;
}

const GH: &str = r#"
service "gh" {
  secret_sha256       = "{SECRET:gh}"
  source              = "github"
  repository          = "acme/web"
  key                 = "configs/gh/IMAGE_TAG"
  signing_secret_file = "SIGNING"
}"#;

fn gh_service(dir: &TempDir) -> String {
    let p = dir.write("gh.hmac", "s3cr3t-signing-key\n");
    GH.replace("SIGNING", &p.display().to_string())
}

#[tokio::test]
async fn missing_or_wrong_signature_is_401_and_changes_nothing() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", &gh_service(&env.dir)).await;
    let body = fixture("github/package_published.json");
    let event = ("X-GitHub-Event", "package".to_string());

    let (status, resp) = env
        .post_h(&tb, "gh", body.clone(), std::slice::from_ref(&event))
        .await;
    assert_eq!(status, 401, "{resp}");
    let wrong = hub_sig(b"not-the-key", &body);
    let (status, _) = env
        .post_h(
            &tb,
            "gh",
            body.clone(),
            &[event.clone(), ("X-Hub-Signature-256", wrong)],
        )
        .await;
    assert_eq!(status, 401);
    // A valid signature over other bytes is still wrong.
    let mut tampered = body.clone();
    tampered.push(b' ');
    let sig = hub_sig(b"s3cr3t-signing-key", &body);
    let (status, _) = env
        .post_h(
            &tb,
            "gh",
            tampered,
            &[event.clone(), ("X-Hub-Signature-256", sig.clone())],
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(env.consul.fingerprint(), vec![], "nothing may be written");

    let (status, resp) = env
        .post_h(&tb, "gh", body, &[event, ("X-Hub-Signature-256", sig)])
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        env.consul.kv("configs/gh/IMAGE_TAG").as_deref(),
        Some("1.4.2")
    );
    let h = env.consul.history("gh");
    assert_eq!(h[0]["source"], "github");
    assert!(h[0]["digest"].as_str().unwrap().starts_with("sha256:"));
    tb.stop().await;
}

#[tokio::test]
async fn github_and_acr_pings_answer_pong() {
    let env = Cluster::options("http").start();
    let acr = r#"
service "acr" {
  secret_sha256 = "{SECRET:acr}"
  source        = "acr"
  repository    = "acme/web"
  key           = "configs/acr/IMAGE_TAG"
}"#;
    let tb = env
        .serve("", &format!("{}\n{acr}", gh_service(&env.dir)))
        .await;
    let body = fixture("github/ping.json");
    let sig = hub_sig(b"s3cr3t-signing-key", &body);
    let (status, resp) = env
        .post_h(
            &tb,
            "gh",
            body,
            &[
                ("X-GitHub-Event", "ping".into()),
                ("X-Hub-Signature-256", sig),
            ],
        )
        .await;
    assert_eq!((status, resp), (200, json!({"pong": true})));
    let (status, resp) = env.post(&tb, "acr", fixture("acr/ping.json")).await;
    assert_eq!((status, resp), (200, json!({"pong": true})));
    assert_eq!(env.consul.fingerprint(), vec![]);
    tb.stop().await;
}

#[tokio::test]
async fn source_outside_allow_cidrs_is_403() {
    let env = Cluster::options("http").start();
    let svc = WEB.replace(
        "history_keep  = 5",
        "allow_cidrs = [\"192.0.2.0/24\", \"2001:db8::/32\"]",
    );
    let tb = env.serve("", &svc).await;
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "1.0")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(env.consul.fingerprint(), vec![]);

    // X-Forwarded-For is ignored unless the peer is a trusted proxy…
    let xff = [("X-Forwarded-For", "192.0.2.7".to_string())];
    let (status, _) = env
        .post_h(&tb, "web", dockerhub("acme/web", "1.0"), &xff)
        .await;
    assert_eq!(status, 403);
    tb.stop().await;

    // …and believed when it is.
    let tb = env
        .serve("trusted_proxies = [\"127.0.0.1/32\"]", &svc)
        .await;
    let (status, body) = env
        .post_h(&tb, "web", dockerhub("acme/web", "1.0"), &xff)
        .await;
    assert_eq!(status, 200, "{body}");
    tb.stop().await;
}

#[tokio::test]
async fn malformed_body_and_wrong_repository_are_400_and_change_nothing() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    for (body, needle) in [
        (b"{not json".to_vec(), "dockerhub"),
        (b"[]".to_vec(), "dockerhub"),
        (
            br#"{"push_data":{"tag":1},"repository":{"repo_name":"acme/web"}}"#.to_vec(),
            "dockerhub",
        ),
        (
            dockerhub("acme/other", "1.0"),
            "repository \"acme/other\" does not match",
        ),
    ] {
        let (status, resp) = env.post(&tb, "web", body).await;
        assert_eq!(status, 400, "{resp}");
        let msg = resp["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    assert_eq!(env.consul.fingerprint(), vec![]);
    tb.stop().await;
}

#[tokio::test]
async fn body_over_one_mib_is_413_declared_or_streamed() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    let (secret, _) = secret_pair("web");
    let big = vec![b' '; 1024 * 1024 + 1];
    let (status, _) = env.post(&tb, "web", big.clone()).await;
    assert_eq!(status, 413);

    // Chunked, no Content-Length: counted while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let stream = futures_stream(chunks);
    let resp = env
        .client
        .post(tb.url(&format!("/hooks/{secret}")))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    // Exactly 1 MiB is fine size-wise (and then malformed).
    let (status, _) = env.post(&tb, "web", vec![b' '; 1024 * 1024]).await;
    assert_eq!(status, 400);
    assert_eq!(env.consul.fingerprint(), vec![]);
    tb.stop().await;
}

#[tokio::test]
async fn repeated_failures_from_one_ip_get_429_with_retry_after() {
    let env = Cluster::options("http").start();
    let tb = env.serve("failed_attempts_per_minute = 3", WEB).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..6 {
        let resp = env
            .client
            .post(tb.url(&format!("/hooks/guess-{i}")))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
    }
    assert_eq!(statuses, [404, 404, 404, 429, 429, 429]);
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // While limited, a delivery with the right secret is still processed
    // (the limit must not lock a registry out of its shared address)…
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "1.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.0")
    );
    // …and failing requests from that address are still 429.
    let resp = env
        .client
        .post(tb.url("/hooks/guess-again"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    tb.stop().await;
}

#[tokio::test]
async fn consul_down_is_503_with_nothing_written_then_recovers() {
    let mut env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    assert_eq!(
        env.post(&tb, "web", dockerhub("acme/web", "1.0")).await.0,
        200
    );
    env.consul.stop();
    let resp = env
        .client
        .post(tb.url(&format!("/hooks/{}", secret_pair("web").0)))
        .body(dockerhub("acme/web", "1.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let readyz = reqwest::get(format!("http://{}/readyz", tb.admin))
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 503);

    env.consul.restart();
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "1.2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.2")
    );
    let readyz = reqwest::get(format!("http://{}/readyz", tb.admin))
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 200);
    tb.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Cluster::options("http").start();
    let cfg = env.hooks_config("", WEB);
    let tb = InProcess::start_with(&cfg, &env.dir, |l| {
        l.header_read = Duration::from_millis(800);
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(tb.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(env.tls.rustls_client());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"POST /hooks/x HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await;
    let elapsed = started.elapsed();
    let closed = match r {
        Ok(Ok(n)) => n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        Ok(Err(_)) => true,
        Err(_) => false,
    };
    assert!(
        closed,
        "server kept a connection with unfinished headers open"
    );
    assert!(elapsed < Duration::from_secs(9));
    assert_eq!(env.consul.fingerprint(), vec![]);
    tb.stop().await;
}

#[tokio::test]
async fn history_is_bounded_at_history_keep() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    for i in 1..=8 {
        let (status, _) = env
            .post(&tb, "web", dockerhub("acme/web", &format!("1.{i}")))
            .await;
        assert_eq!(status, 200);
    }
    let h = env.consul.history("web");
    let tags: Vec<_> = h.iter().map(|e| e["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["1.8", "1.7", "1.6", "1.5", "1.4"]);
    tb.stop().await;
}

#[tokio::test]
async fn concurrent_webhooks_on_two_replicas_lose_no_update() {
    let env = Cluster::options("http").start();
    let svc = WEB.replace("history_keep  = 5", "history_keep  = 100");
    let a = env.serve("", &svc).await;
    let b = env.serve("", &svc).await;
    let mut tasks = Vec::new();
    for i in 1..=12u32 {
        let client = env.client.clone();
        let url = if i % 2 == 0 { a.url("") } else { b.url("") };
        let (secret, _) = secret_pair("web");
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(format!("{url}/hooks/{secret}"))
                .body(dockerhub("acme/web", &format!("{i}.0")))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("12.0")
    );
    let h = env.consul.history("web");
    let mut tags: Vec<u32> = h
        .iter()
        .map(|e| {
            e["tag"]
                .as_str()
                .unwrap()
                .trim_end_matches(".0")
                .parse()
                .unwrap()
        })
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        (1..=12).collect::<Vec<_>>(),
        "every webhook is in history exactly once"
    );
    let desired: Value =
        serde_json::from_str(&env.consul.kv("tagbridge/desired/web").unwrap()).unwrap();
    assert_eq!(desired["tag"], "12.0");
    let applied = h.iter().filter(|e| e["detail"].is_null()).count() as u64;
    assert_eq!(
        desired["seq"], applied,
        "desired.seq counts exactly the applied changes"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn pinned_service_records_but_does_not_deploy() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    assert_eq!(
        env.post(&tb, "web", dockerhub("acme/web", "1.0")).await.0,
        200
    );
    env.consul.put("tagbridge/pin/web", "{\"by\":\"test\"}");
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "2.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["changed"], &body["reason"]),
        (&json!(false), &json!("pinned"))
    );
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.0")
    );
    let h = env.consul.history("web");
    assert_eq!(h[0]["tag"], "2.0");
    assert_eq!(h[0]["detail"], "pinned: recorded, not deployed");
    env.consul.delete("tagbridge/pin/web");
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "2.0")).await;
    assert_eq!((status, &body["changed"]), (200, &json!(true)), "{body}");
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("2.0")
    );
    tb.stop().await;
}

#[tokio::test]
async fn a_change_by_someone_else_is_seen_not_overwritten() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    assert_eq!(
        env.post(&tb, "web", dockerhub("acme/web", "1.0")).await.0,
        200
    );
    // An operator sets the key by hand behind tagbridge's back.
    env.consul.put("configs/web/IMAGE_TAG", "5.0");
    let (status, body) = env.post(&tb, "web", dockerhub("acme/web", "3.0")).await;
    assert_eq!(status, 200);
    assert_eq!(body["reason"], "older than current", "{body}");
    assert_eq!(
        env.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("5.0")
    );
    // The same tag as the hand-set one is "unchanged", never answered from
    // a stale cache.
    let (_, body) = env.post(&tb, "web", dockerhub("acme/web", "5.0")).await;
    assert_eq!(body["reason"], "unchanged");
    tb.stop().await;
}

#[tokio::test]
async fn every_source_fixture_reaches_kv() {
    let env = Cluster::options("http").start();
    let signing = env.dir.write("signing", "fixture-signing-secret");
    let s = signing.display();
    let mut services = String::new();
    for (name, source, signed) in [
        ("dockerhub", "dockerhub", false),
        ("github", "github", true),
        ("quay", "quay", false),
        ("quaylegacy", "quay", false),
        ("harbor", "harbor", true),
        ("acr", "acr", false),
        ("artifactory", "artifactory", true),
        ("generic", "generic", true),
    ] {
        services.push_str(&format!(
            "service \"{name}\" {{\n secret_sha256 = \"{{SECRET:{name}}}\"\n source = \"{source}\"\n repository = \"{}\"\n key = \"configs/{name}/IMAGE_TAG\"\n {}\n tags {{ exclude = [\"^latest$\"] }}\n}}\n",
            // GHCR namespaces keep the org's mixed case; matching ignores it.
            if name == "github" { "acmecorp/web" } else { "acme/web" },
            if signed { format!("signing_secret_file = \"{s}\"") } else { String::new() }
        ));
    }
    let tb = env.serve("", &services).await;
    let secret = b"fixture-signing-secret";
    let jfrog = |body: &[u8]| {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    };
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "dockerhub",
            "dockerhub/push.json",
            vec![],
            "release-20261124120000",
        ),
        (
            "github",
            "github/registry_package_published.json",
            vec![("X-GitHub-Event", "registry_package".into())],
            "release-20261124120000",
        ),
        ("quay", "quay/push.json", vec![], "1.4.2"),
        (
            "quaylegacy",
            "quay/push_legacy.json",
            vec![],
            "release-20261124120000",
        ),
        (
            "harbor",
            "harbor/push_artifact.json",
            vec![("Authorization", "fixture-signing-secret".into())],
            "release-20261124120000",
        ),
        ("acr", "acr/push.json", vec![], "1.4.2"),
        ("artifactory", "artifactory/pushed.json", vec![], "1.4.2"),
        (
            "generic",
            "generic/push.json",
            vec![],
            "release-20261124120000",
        ),
    ];
    for (name, file, mut headers, tag) in cases {
        let body = fixture(file);
        if matches!(name, "github" | "generic") {
            headers.push(("X-Hub-Signature-256", hub_sig(secret, &body)));
        }
        if name == "artifactory" {
            headers.push(("X-JFrog-Event-Auth", jfrog(&body)));
        }
        let (status, resp) = env.post_h(&tb, name, body, &headers).await;
        assert_eq!(status, 200, "{name}: {resp}");
        assert_eq!(resp["changed"], true, "{name}: {resp}");
        assert_eq!(
            env.consul
                .kv(&format!("configs/{name}/IMAGE_TAG"))
                .as_deref(),
            Some(tag),
            "{name}"
        );
        let h = env.consul.history(name);
        assert_eq!(h[0]["event"], "received");
    }
    // Untagged GHCR manifest: ignored with a reason, nothing written.
    let before = env.consul.fingerprint();
    let body = fixture("github/untagged.json");
    let sig = hub_sig(secret, &body);
    let (status, resp) = env
        .post_h(
            &tb,
            "github",
            body,
            &[
                ("X-GitHub-Event", "package".into()),
                ("X-Hub-Signature-256", sig),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(resp["changed"], false);
    assert!(
        resp["reason"].as_str().unwrap().contains("untagged"),
        "{resp}"
    );
    assert_eq!(env.consul.fingerprint(), before);
    tb.stop().await;
}

#[tokio::test]
async fn http2_metrics_and_readiness() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    let (secret, _) = secret_pair("web");
    let resp = env
        .client
        .post(tb.url(&format!("/hooks/{secret}")))
        .body(dockerhub("acme/web", "1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick h2"
    );
    assert_eq!(resp.status().as_u16(), 200);
    let _ = env.client.post(tb.url("/hooks/nope")).send().await.unwrap();

    // The HTTPS listener's own health check: 200, not a webhook.
    let health = env.client.get(tb.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let admin = |p: &str| format!("http://{}{p}", tb.admin);
    assert_eq!(
        reqwest::get(admin("/healthz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        reqwest::get(admin("/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let metrics = reqwest::get(admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"tagbridge_webhooks_total{service="web",source="dockerhub",outcome="applied"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"outcome="not_found"} 1"#), "{metrics}");
    assert!(metrics.contains("tagbridge_ingest_duration_seconds_bucket"));
    assert!(metrics.contains("tagbridge_tls_cert_not_after_seconds "));
    assert!(!metrics.contains(&secret), "metrics must not hold secrets");
    assert!(!metrics.contains("nope"));
    tb.stop().await;
}

#[tokio::test]
async fn certificate_reload_swaps_pair_and_keeps_old_on_bad_pair() {
    let env = Cluster::options("http").start();
    let tb = env.serve("", WEB).await;
    let certs = tb.state.certs.clone().unwrap();
    let first = certs.not_after();
    assert!(first > 0);

    // A broken pair: the old certificate keeps serving.
    std::fs::write(
        &env.tls.key_file,
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(certs.changed_on_disk());
    assert!(certs.reload().is_err());
    let (status, _) = env.post(&tb, "web", dockerhub("acme/web", "1.0")).await;
    assert_eq!(status, 200, "old certificate still serves");

    // A good new pair from the same CA with another validity is picked up.
    let new_dir = TempDir::new("tls2");
    let fresh = TestTls::new(&new_dir);
    let _ = fresh; // a new CA: clients of the old CA must now fail
    std::fs::copy(&fresh.cert_file, &env.tls.cert_file).unwrap();
    std::fs::copy(&fresh.key_file, &env.tls.key_file).unwrap();
    certs.reload().expect("good pair loads");
    // A new connection (pooled ones keep their old session) with the old CA.
    let err = env
        .tls
        .client()
        .post(tb.url("/hooks/x"))
        .send()
        .await
        .expect_err("old CA no longer matches the served certificate");
    assert!(err.is_connect() || err.is_request(), "{err}");
    let (status, _) = {
        let resp = fresh
            .client()
            .post(tb.url("/hooks/x"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), ())
    };
    assert_eq!(status, 404);
    tb.stop().await;
}

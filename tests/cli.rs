//! The `tagbridge` binary: serve (logs, signals, two replicas) and the
//! operator commands, against a real Consul agent.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("tagbridge")
}

const SIGNING: &str = "cli-test-signing-key-do-not-log";
const TOKEN: &str = "consul-token-do-not-log-7f3a";

fn write_config(dir: &TempDir, tls: &TestTls, extra: &str) -> std::path::PathBuf {
    let signing = dir.write("gen.hmac", SIGNING);
    TbConfig::new()
        .admin_listen("127.0.0.1:0")
        .top(extra)
        .tls(tls)
        .service(
            Service::new("gen", "generic")
                .signing_file(&signing)
                .line("tags { order = \"numeric\" }"),
        )
        .service(Service::new("web", "dockerhub").rollout(&["job = \"web\""]))
        .write(dir, "tagbridge.hcl")
}

fn serve(config: &Path, consul: &ConsulAgent, log: std::path::PathBuf) -> Serving {
    Serving::start(
        config,
        &[
            ("CONSUL_HTTP_ADDR", consul.addr()),
            ("CONSUL_HTTP_TOKEN", TOKEN.to_string()),
            ("TAGBRIDGE_LOG", "debug".to_string()),
        ],
        log,
    )
}

/// Wait (≤ 10 s) until `tb`'s log has a line containing `needle`.
async fn wait_log_line(tb: &Serving, needle: &str) {
    wait(
        format!("{needle:?} in the log"),
        std::time::Duration::from_secs(10),
    )
    .every(std::time::Duration::from_millis(50))
    .until_async(|| {
        let log = tb.log_text();
        match log.contains(needle) {
            true => Ok(()),
            false => Err(log),
        }
    })
    .await;
}

fn generic_body(tag: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"repository": "acme/gen", "tag": tag})).unwrap()
}

async fn post_generic(
    client: &reqwest::Client,
    base: &str,
    secret: &str,
    body: Vec<u8>,
    key: &[u8],
) -> u16 {
    client
        .post(format!("{base}/hooks/{secret}"))
        .header("X-Hub-Signature-256", hub_sig(key, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_one_line_per_webhook_and_never_a_secret() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-log");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");
    let tb = serve(&cfg, &consul, dir.path().join("serve.log"));
    let client = tls.client();
    let base = tb.url("");
    let (secret, _) = secret_pair("gen");

    assert_eq!(
        post_generic(
            &client,
            &base,
            &secret,
            generic_body("7"),
            SIGNING.as_bytes()
        )
        .await,
        200
    );
    assert_eq!(
        post_generic(&client, &base, &secret, generic_body("8"), b"wrong key").await,
        401
    );
    assert_eq!(
        post_generic(
            &client,
            &base,
            "not-a-secret-guess",
            generic_body("9"),
            SIGNING.as_bytes()
        )
        .await,
        404
    );
    assert_eq!(consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("7"));

    // Close our keep-alive connection first, or the drain waits for it.
    drop(client);
    let (status, log) = tokio::task::block_in_place(|| tb.terminate());
    assert!(
        status.success(),
        "SIGTERM must end serve cleanly: {status:?}\n{log}"
    );
    for needle in [
        secret.as_str(),
        SIGNING,
        TOKEN,
        "not-a-secret-guess",
        "/hooks/",
    ] {
        assert!(!log.contains(needle), "log leaks {needle:?}:\n{log}");
    }
    let all: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // One line per accepted delivery; rejections only in summaries.
    let lines: Vec<&Value> = all.iter().filter(|v| v["message"] == "webhook").collect();
    assert_eq!(lines.len(), 1, "one line per accepted webhook:\n{log}");
    assert_eq!(lines[0]["outcome"], "applied");
    let summaries: Vec<&Value> = all
        .iter()
        .filter(|v| v["message"] == "rejected requests")
        .collect();
    assert!(
        (1..=2).contains(&summaries.len()),
        "rejections summarised:\n{log}"
    );
    let mut rejected = 0;
    let mut outcomes = String::new();
    for s in &summaries {
        assert_eq!(s["client"], "127.0.0.1", "{log}");
        rejected += s["rejected"].as_u64().unwrap();
        outcomes.push_str(s["outcomes"].as_str().unwrap());
        outcomes.push(' ');
    }
    assert_eq!(rejected, 2, "{log}");
    assert!(
        outcomes.contains("unauthorized=1") && outcomes.contains("not_found=1"),
        "{outcomes}"
    );
    assert_eq!(lines[0]["service"], "gen");
    assert_eq!(lines[0]["source"], "generic");
    assert_eq!(lines[0]["tag"], "7");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(log.contains("SIGTERM"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_ingesting_for_one_service_lose_no_update() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-two");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");
    let a = serve(&cfg, &consul, dir.path().join("a.log"));
    let b = serve(&cfg, &consul, dir.path().join("b.log"));
    let (secret, _) = secret_pair("gen");
    let mut tasks = Vec::new();
    for i in 1..=16u32 {
        let client = tls.client();
        let base = if i % 2 == 0 { a.url("") } else { b.url("") };
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            post_generic(
                &client,
                &base,
                &secret,
                generic_body(&i.to_string()),
                SIGNING.as_bytes(),
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("16"));
    let mut tags: Vec<u32> = consul
        .history("gen")
        .iter()
        .map(|e| e["tag"].as_str().unwrap().parse().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, (1..=16).collect::<Vec<_>>());
    let (sa, _) = tokio::task::block_in_place(|| a.terminate());
    let (sb, _) = tokio::task::block_in_place(|| b.terminate());
    assert!(sa.success() && sb.success());
}

fn run(config: &Path, consul: &ConsulAgent, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("CONSUL_HTTP_ADDR", consul.addr())
        .env("USER", "alice")
        .output()
        .expect("run tagbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn operator_commands_on_a_populated_consul() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-ops");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");

    let (code, out, err) = run(
        &cfg,
        &consul,
        &["deploy", "gen", "41", "--reason", "hotfix"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gen: configs/gen/IMAGE_TAG (unset) -> 41"),
        "{out}"
    );
    let (code, out, _) = run(&cfg, &consul, &["deploy", "gen", "40"]);
    assert_eq!(code, 0, "a manual deploy may go back to an older tag");
    assert!(out.contains("41 -> 40"), "{out}");
    let (code, out, _) = run(&cfg, &consul, &["deploy", "gen", "40"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
    let (code, out, _) = run(&cfg, &consul, &["deploy", "web", "2.0"]);
    assert_eq!(code, 0);
    assert!(out.contains("(rollout queued)"), "{out}");
    assert_eq!(consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("40"));

    let (code, out, _) = run(&cfg, &consul, &["history", "gen"]);
    assert_eq!(code, 0);
    let lines: Vec<_> = out.lines().collect();
    assert!(
        lines[0].starts_with("AT") && lines[0].contains("EVENT") && lines[0].contains("DETAIL")
    );
    assert!(
        lines[1].contains("manual") && lines[1].contains(" 40 ") && lines[1].contains("alice"),
        "{out}"
    );
    assert!(lines[2].contains("hotfix"), "{out}");
    let (code, out, _) = run(&cfg, &consul, &["history", "gen", "--json", "--limit", "1"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["event"], "manual");
    assert_eq!(v[0]["tag"], "40");
    assert_eq!(v[0]["previous"], "41");

    let (code, out, _) = run(&cfg, &consul, &["status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["service"], "gen");
    assert_eq!(v[0]["tag"], "40");
    assert_eq!(v[0]["desired"]["seq"], 2);
    assert_eq!(v[1]["rollout"]["job"], "web");
    let (code, out, _) = run(&cfg, &consul, &["status", "web"]);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("web "), "{out}");

    // Failures the user can fix: exit 1 with one clear line.
    consul.put("tagbridge/pin/gen", "{}");
    let (code, _, err) = run(&cfg, &consul, &["deploy", "gen", "50"]);
    assert_eq!(code, 1);
    assert!(err.contains("pinned"), "{err}");
    let (code, _, err) = run(&cfg, &consul, &["history", "nosuch"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "tagbridge: unknown service \"nosuch\" (configured: gen, web)"
    );
    // Bad usage: exit 2.
    let (code, _, _) = run(&cfg, &consul, &["history"]);
    assert_eq!(code, 2);
    let (code, _, _) = run(&cfg, &consul, &["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn check_reports_every_problem_and_secret_makes_a_matching_pair() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-check");
    let tls = TestTls::new(&dir);
    let good = write_config(&dir, &tls, "");
    let (code, out, err) = run(&good, &consul, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (2 services)"), "{out}");
    // --connect reaches Consul, then finds no Nomad for the rollout job.
    let (code, out, err) = run(&good, &consul, &["check", "--connect"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("reachable"), "{out}");
    assert!(
        err.contains("service \"web\": job \"web\" (namespace \"default\"): nomad")
            && err.contains("unreachable"),
        "{err}"
    );

    let bad = dir.write(
        "bad.hcl",
        r#"
listen = "nowhere"
tls {
  cert_file = "/nonexistent/tls.crt"
  key_file  = "/nonexistent/tls.key"
}
service "Web" {
  secret_sha256 = "1234"
  source        = "gitlab"
  key           = ""
}
"#,
    );
    let (code, _, err) = run(&bad, &consul, &["check"]);
    assert_eq!(code, 1);
    let lines: Vec<_> = err.lines().collect();
    assert!(lines.len() >= 6, "{err}");
    for needle in [
        "listen: \"nowhere\" is not an ip:port address",
        "tls.cert_file: cannot read /nonexistent/tls.crt",
        "service \"Web\": service names use only",
        "service \"Web\": secret_sha256: must be 64 hex characters",
        "service \"Web\": source: unknown source \"gitlab\"",
        "service \"Web\": key: must not be empty",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(needle) && l.contains("bad.hcl")),
            "missing {needle:?}:\n{err}"
        );
    }

    let (code, out, _) = run(&good, &consul, &["secret"]);
    assert_eq!(code, 0);
    let path = out
        .lines()
        .find(|l| l.starts_with("/hooks/"))
        .expect("URL path");
    let secret = path.trim_start_matches("/hooks/");
    assert!(secret.len() >= 43, "256 bits, base64url: {secret}");
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let line = out
        .lines()
        .find(|l| l.starts_with("secret_sha256"))
        .expect("config line");
    use sha2::Digest as _;
    let want = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    assert_eq!(line, format!("secret_sha256 = \"{want}\""));
    let (_, out2, _) = run(&good, &consul, &["secret"]);
    assert_ne!(out, out2, "every secret is new");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_pair_keeps_the_old_one() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-hup");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");
    let tb = serve(&cfg, &consul, dir.path().join("serve.log"));
    let probe = |client: reqwest::Client, url: String| async move {
        client.post(url).send().await.map(|r| r.status().as_u16())
    };
    assert_eq!(
        probe(tls.client(), tb.url("/hooks/x")).await.ok(),
        Some(404)
    );

    // A broken key: SIGHUP keeps the old pair serving.
    std::fs::write(&tls.key_file, "not a key").unwrap();
    let hup = |pid: u32| {
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
    };
    hup(tb.pid());
    wait_log_line(&tb, "new TLS pair refused").await;
    assert_eq!(
        probe(tls.client(), tb.url("/hooks/x")).await.ok(),
        Some(404)
    );

    // A new pair from another CA: after SIGHUP only its CA is trusted.
    let other_dir = TempDir::new("cli-hup2");
    let other = TestTls::new(&other_dir);
    std::fs::copy(&other.cert_file, &tls.cert_file).unwrap();
    std::fs::copy(&other.key_file, &tls.key_file).unwrap();
    hup(tb.pid());
    wait_log_line(&tb, "SIGHUP: TLS certificate reloaded").await;
    assert_eq!(
        probe(other.client(), tb.url("/hooks/x")).await.ok(),
        Some(404)
    );
    assert!(
        probe(tls.client(), tb.url("/hooks/x")).await.is_err(),
        "the old CA no longer matches"
    );
    let (status, _) = tb.terminate();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_changed_config_restarts_in_place_and_a_bad_one_is_refused() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-reload");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");
    let tb = serve(&cfg, &consul, dir.path().join("serve.log"));
    let pid = tb.pid();
    let hup = || {
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
    };
    // Blocking waits run beside the runtime, so the client's connections
    // can still answer the server's graceful-shutdown GOAWAY.
    let wait_log = |needle: &str, count: usize| {
        blocking(|| {
            wait(
                format!("{needle:?} x{count} in the log"),
                std::time::Duration::from_secs(20),
            )
            .every(std::time::Duration::from_millis(50))
            .until(|| {
                let log = tb.log_text();
                match log.matches(needle).count() >= count {
                    true => Ok(log),
                    false => Err(log),
                }
            })
        })
    };

    // An invalid edit is refused; the old configuration keeps serving.
    let good = std::fs::read_to_string(&cfg).unwrap();
    let bad = good.replace("source = \"dockerhub\"", "source = \"nope\"");
    assert_ne!(bad, good);
    std::fs::write(&cfg, bad).unwrap();
    hup();
    let log = wait_log("new configuration refused", 1);
    assert!(log.contains("unknown source"), "{log}");
    let client = tls.client();
    let (secret, _) = secret_pair("gen");
    let base = tb.url("");
    assert_eq!(
        post_generic(
            &client,
            &base,
            &secret,
            generic_body("1"),
            SIGNING.as_bytes()
        )
        .await,
        200
    );

    // A valid change: drain, re-exec with the same PID, serve the new one.
    let added = format!("{good}\n{}", Service::new("api", "quay").render());
    std::fs::write(&cfg, added).unwrap();
    hup();
    let log = wait_log("tagbridge serving", 2);
    assert!(log.contains("configuration changed"), "{log}");
    let line = log
        .lines()
        .rfind(|l| l.contains("tagbridge serving"))
        .unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["services"], 3);
    let port: u16 = v["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (api_secret, _) = secret_pair("api");
    let body =
        serde_json::to_vec(&json!({"repository": "acme/api", "updated_tags": ["2.0"]})).unwrap();
    let resp = client
        .post(format!("https://localhost:{port}/hooks/{api_secret}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(consul.kv("configs/api/IMAGE_TAG").as_deref(), Some("2.0"));
    assert_eq!(tb.pid(), pid, "same process");
    let (status, _) = tb.terminate();
    assert!(status.success());
}

/// I2, I6 and the desired seq, on the records the controller leaves
/// (written here by hand, as a leader would): a rolled-back tag can be
/// retried with `deploy`, a second `rollback` changes nothing, ingest never
/// writes a rollout service's key, and a deleted desired record does not
/// restart the seq below what the controller already answered.
#[test]
fn operator_retries_and_repeated_rollbacks_on_a_rollout_service() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-i6");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");
    let deployed = |tag: &str, seq: u64, outcome: &str| {
        json!({"tag": tag, "seq": seq, "at": "2026-11-30T00:00:00Z", "outcome": outcome,
               "job_version": 3, "previous": "v3"})
        .to_string()
    };

    // `bad-1` was desired (seq 4) and rolled back to v3 by the controller.
    consul.put(
        "tagbridge/desired/web",
        &json!({"tag": "bad-1", "seq": 4, "at": "2026-11-30T00:00:00Z"}).to_string(),
    );
    consul.put("tagbridge/deployed/web", &deployed("v3", 4, "rolled_back"));
    consul.put("configs/web/IMAGE_TAG", "v3");

    // I6: the operator retries it; the controller gets a new seq to act on.
    let (code, out, err) = run(&cfg, &consul, &["deploy", "web", "bad-1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(rollout queued)"), "{out}");
    let desired: Value =
        serde_json::from_str(&consul.kv("tagbridge/desired/web").unwrap()).unwrap();
    assert_eq!(
        (desired["tag"].as_str(), desired["seq"].as_u64()),
        (Some("bad-1"), Some(5))
    );
    // I2: the key stays with what the controller last wrote.
    assert_eq!(consul.kv("configs/web/IMAGE_TAG").as_deref(), Some("v3"));
    // While that is queued (or once deployed), the same deploy is a no-op.
    let (code, out, _) = run(&cfg, &consul, &["deploy", "web", "bad-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("already deployed or being deployed"), "{out}");
    consul.put("tagbridge/deployed/web", &deployed("bad-1", 5, "deployed"));
    let (code, out, _) = run(&cfg, &consul, &["deploy", "web", "bad-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");

    // I6: rollback pins a target; the same command again changes nothing,
    // even once the controller has started rolling back (deployed = target).
    let (code, out, err) = run(&cfg, &consul, &["rollback", "web", "--to", "v3"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("bad-1 -> v3"), "{out}");
    consul.put("tagbridge/deployed/web", &deployed("v3", 6, "in_progress"));
    let before = consul.fingerprint();
    let (code, out, err) = run(&cfg, &consul, &["rollback", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("already rolling back to v3"), "{out}");
    assert_eq!(
        consul.fingerprint(),
        before,
        "a repeated rollback wrote something"
    );
    let (code, _, _) = run(&cfg, &consul, &["unpin", "web"]);
    assert_eq!(code, 0);

    // A desired record deleted by hand: the next seq continues above the
    // deployed record's, so the controller does not ignore it.
    consul.delete("tagbridge/desired/web");
    consul.put("tagbridge/deployed/web", &deployed("v3", 6, "deployed"));
    let (code, out, err) = run(&cfg, &consul, &["deploy", "web", "v4"]);
    assert_eq!(code, 0, "{out}{err}");
    let desired: Value =
        serde_json::from_str(&consul.kv("tagbridge/desired/web").unwrap()).unwrap();
    assert_eq!(desired["seq"], 7);
    assert_eq!(consul.kv("configs/web/IMAGE_TAG").as_deref(), Some("v3"));

    // `rollback --to` holds its tag to the same grammar as a webhook: the
    // key of a KV-only service feeds env files.
    let before = consul.fingerprint();
    let (code, _, err) = run(
        &cfg,
        &consul,
        &["rollback", "gen", "--to", "1.0\nLD_PRELOAD=/x.so"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tag"), "{err}");
    assert_eq!(
        consul.fingerprint(),
        before,
        "a refused rollback wrote something"
    );
}

/// A reload with a changed configuration hands the listening socket to
/// the re-executed image: signed deliveries sent continuously, each on a
/// new connection, all get an answer (no refused or reset connection), and
/// every acknowledged change is in Consul.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_refuses_no_delivery_and_loses_none() {
    let consul = ConsulAgent::start();
    let dir = TempDir::new("cli-reload-load");
    let tls = TestTls::new(&dir);
    let cfg = write_config(&dir, &tls, "");
    let tb = serve(&cfg, &consul, dir.path().join("serve.log"));
    let pid = tb.pid();
    let base = tb.url("");
    // A new connection for every request, so each one goes through the
    // listener, as registries' deliveries do.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let (secret, _) = secret_pair("gen");
    let sender = {
        let (client, base, secret) = (client.clone(), base.clone(), secret.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut answers = Vec::new();
            // Bounded in count and time.
            for i in 1..=300u32 {
                if started.elapsed() > std::time::Duration::from_secs(60) {
                    break;
                }
                let body = generic_body(&i.to_string());
                let r = client
                    .post(format!("{base}/hooks/{secret}"))
                    .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
                    .body(body)
                    .send()
                    .await;
                answers.push(match r {
                    Ok(resp) => Ok(resp.status().as_u16()),
                    Err(e) => Err(format!("{e:?}")),
                });
            }
            answers
        })
    };
    // Reload with a changed configuration while deliveries flow.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let good = std::fs::read_to_string(&cfg).unwrap();
    let changed = good.replace(
        "key = \"configs/gen/IMAGE_TAG\"",
        "key = \"configs/gen/IMAGE_TAG\"\n  history_keep = 50",
    );
    assert_ne!(changed, good);
    std::fs::write(&cfg, changed).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    let answers = sender.await.unwrap();

    let log = tb.log_text();
    assert!(
        log.matches("tagbridge serving").count() >= 2,
        "the reload did not happen during the run:\n{log}"
    );
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "deliveries failed across the reload: {failed:?}"
    );
    let acknowledged = answers.iter().filter(|a| matches!(a, Ok(200))).count();
    assert_eq!(acknowledged, answers.len(), "{answers:?}");
    // Every acknowledged change is durable: one desired seq per change.
    let desired: Value =
        serde_json::from_str(&consul.kv("tagbridge/desired/gen").unwrap()).unwrap();
    assert_eq!(desired["seq"].as_u64(), Some(acknowledged as u64));
    assert_eq!(
        consul.kv("configs/gen/IMAGE_TAG"),
        Some(answers.len().to_string())
    );
    assert_eq!(tb.pid(), pid);
    let (status, _) = tokio::task::block_in_place(|| tb.terminate());
    assert!(status.success());
}

//! Rollouts against a real Nomad dev agent and a real Consul agent: the
//! example jobs in nomad/ run tagbridge-testsvc with raw_exec.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Rollout tests' configuration: service "web" rolling job "web" (3 min
/// timeout) with `rollout` further lines in its rollout block, `extra`
/// top-level text.
fn config(c: &Cluster, rollout: &str, extra: &str) -> String {
    c.web_config(
        extra,
        Some(&["job     = \"web\"", "timeout = \"3m\"", rollout]),
    )
}

/// Consul and a Nomad dev agent.
fn cluster() -> Cluster {
    Cluster::options("rollout").nomad().start()
}

fn events(h: &[Value]) -> Vec<(String, String)> {
    h.iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["tag"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Two `tagbridge serve` processes on one config (template strategy),
/// the first one leading.
async fn two_replicas(c: &Cluster) -> (Serving, Serving) {
    let cfg = c
        .dir
        .write("tagbridge.hcl", config(c, "strategy = \"template\"", ""));
    let envs = [("TAGBRIDGE_LOG", "info".to_string())];
    let a = tokio::task::block_in_place(|| Serving::start(&cfg, &envs, c.dir.path().join("a.log")));
    wait("the first process to lead", Duration::from_secs(30))
        .until_async(|| a.log_text().contains("leadership acquired").then_some(()))
        .await;
    let b = tokio::task::block_in_place(|| Serving::start(&cfg, &envs, c.dir.path().join("b.log")));
    (a, b)
}

/// A signed webhook for `tag` to a tagbridge process.
async fn push_to(c: &Cluster, to: &Serving, tag: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"repository": "acme/web", "tag": tag})).unwrap();
    let resp = c
        .tls
        .client()
        .post(to.url(&format!("/hooks/{}", secret_pair("web").0)))
        .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .expect("webhook");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Sample how many instances answer /healthz, every 200 ms, until
/// stopped (bounded at 5 minutes).
fn sampler(
    nomad: &NomadAgent,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    impl FnOnce() -> Vec<usize> + '_,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let collect = move || {
        let mut counts = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            counts.push(nomad.answering("web"));
            std::thread::sleep(Duration::from_millis(200));
        }
        counts
    };
    (stop, collect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn good_tag_rolls_out_one_instance_at_a_time_and_notifies() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let hook = Receiver::start(200);
    let url = c.dir.write("notify.url", hook.url("/notify"));
    let notify = format!(
        "notify \"ops\" {{\n url_file = \"{}\"\n format = \"json\"\n events = [\"deployed\", \"rolled_back\"]\n}}",
        url.display()
    );
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", &notify), None).await;

    let (status, body) = tb.push("1.1.0").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["rollout"], "queued");

    let (stop, collect) = sampler(c.nomad());
    let counts = std::thread::scope(|s| {
        let h = s.spawn(collect);
        let rt = tokio::runtime::Handle::current();
        let d = tokio::task::block_in_place(|| {
            rt.block_on(c.outcome_for("1.1.0", Duration::from_secs(150)))
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(d["outcome"], "deployed", "{d}");
        h.join().unwrap()
    });
    let min = counts.iter().copied().min().unwrap_or(0);
    assert!(counts.len() > 10, "sampled {} times", counts.len());
    assert!(
        min >= 2,
        "never fewer than 2 instances answering; samples: {counts:?}"
    );

    let d = c.deployed().unwrap();
    assert_eq!(
        (d["tag"].as_str(), d["seq"].as_u64()),
        (Some("1.1.0"), Some(1))
    );
    let job = c.nomad().job("web");
    assert_eq!(job["Meta"]["image_tag"], "1.1.0");
    assert_eq!(job["Version"], 1, "exactly one new job version");
    assert_eq!(d["job_version"], 1);
    let latest = c.nomad().latest_deployment("web").unwrap();
    assert_eq!(d["deployment"], latest["ID"]);
    assert_eq!(latest["Status"], "successful");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.1.0"; 3]);
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.1.0")
    );
    let h = c.consul.history("web");
    assert_eq!(
        events(&h),
        [
            ("deployed".into(), "1.1.0".into()),
            ("received".into(), "1.1.0".into())
        ]
    );
    assert_eq!(h[0]["previous"], "1.0.0");

    let notices = wait("the deployed notification", Duration::from_secs(20))
        .until_async(|| {
            let b = hook.bodies();
            (!b.is_empty()).then_some(b)
        })
        .await;
    let n: Value = serde_json::from_str(&notices[0]).unwrap();
    assert_eq!(
        (
            n["event"].as_str(),
            n["service"].as_str(),
            n["tag"].as_str()
        ),
        (Some("deployed"), Some("web"), Some("1.1.0"))
    );
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tag_is_rolled_back_key_job_and_instances() {
    let c = cluster();
    // As operators run it: Nomad may reschedule a failed allocation, so on
    // its own it would keep the deployment running until the 5-minute
    // progress_deadline.
    c.run_job_with(
        "web-template",
        "1.0.0",
        &[("progress_deadline", "5m")],
        |job| {
            job["TaskGroups"][0]["ReschedulePolicy"] = json!({
                "Attempts": 3, "Interval": 3_600_000_000_000u64, "Delay": 5_000_000_000u64,
                "DelayFunction": "constant", "Unlimited": false
            });
        },
    );
    let slack = Receiver::start(200);
    let url = c.dir.write("slack.url", slack.url("/services/T0/B0/x"));
    let notify = format!("notify \"chat\" {{\n url_file = \"{}\"\n}}", url.display());
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", &notify), None).await;
    let started = Instant::now();
    let (status, _) = tb.push("bad-2.0").await;
    assert_eq!(status, 202);
    let d = c.outcome_for("bad-2.0", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(d["tag"], "1.0.0");
    let reason = d["detail"].as_str().unwrap().to_string();
    assert!(reason.contains("unhealthy"), "{reason}");
    assert!(
        reason.contains("check") && reason.contains("unhealthy tag bad-2.0"),
        "the reason names the failed check: {reason}"
    );

    // Failed fast: Nomad alone fails only at progress_deadline.
    let versions = c.nomad().api_ok("GET", "/v1/job/web/deployments", None);
    let failed: Vec<&Value> = versions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["JobVersion"] == 1)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["Status"], "failed");
    assert_eq!(
        failed[0]["StatusDescription"], "Deployment marked as failed",
        "tagbridge failed the deployment itself, long before progress_deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );

    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.0.0")
    );
    let job = c.nomad().job("web");
    assert_eq!(job["Version"], 2, "v1 = bad, v2 = revert to v0");
    assert_eq!(job["Meta"]["image_tag"], "1.0.0");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.0.0"; 3]);
    let h = c.consul.history("web");
    assert_eq!(
        events(&h),
        [
            ("rolled_back".into(), "1.0.0".into()),
            ("received".into(), "bad-2.0".into())
        ]
    );
    assert_eq!(h[0]["previous"], "bad-2.0");
    assert_eq!(h[0]["detail"].as_str(), Some(reason.as_str()));
    // Slack-compatible notice, sent once the outcome is known.
    let notices = wait("the rolled_back notification", Duration::from_secs(20))
        .until_async(|| {
            let b = slack.bodies();
            (!b.is_empty()).then_some(b)
        })
        .await;
    let n: Value = serde_json::from_str(&notices[0]).unwrap();
    let text = n["text"].as_str().unwrap();
    assert!(
        text.contains("web rolled back to 1.0.0") && text.contains("previous: bad-2.0"),
        "{text}"
    );
    assert!(text.contains("unhealthy tag bad-2.0"), "{text}");
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_is_promoted_only_when_verify_url_passes() {
    let c = cluster();
    c.run_job("web-canary", "1.0.0", &[]);
    let verify = Receiver::start(500);
    let rollout = format!(
        "strategy = \"template\"\n    verify_url = \"{}\"",
        verify.url("/verify")
    );
    let tb = Tagbridge::start(&c, &config(&c, &rollout, ""), None).await;

    assert_eq!(tb.push("1.1.0").await.0, 202);
    let d = c.outcome_for("1.1.0", Duration::from_secs(150)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert!(d["detail"].as_str().unwrap().contains("verify_url"), "{d}");
    assert!(d["detail"].as_str().unwrap().contains("HTTP 500"), "{d}");
    assert!(!verify.bodies().is_empty(), "verify_url was called");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.0.0"; 3]);
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.0.0")
    );

    verify.set_status(200);
    assert_eq!(tb.push("1.2.0").await.0, 202);
    let d = c.outcome_for("1.2.0", Duration::from_secs(150)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    let dep = c.nomad().latest_deployment("web").unwrap();
    assert_eq!(dep["TaskGroups"]["web"]["Promoted"], true, "{dep}");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.2.0"; 3]);
    tb.stop().await;
}

/// Without canaries there is no promotion to gate: verify_url is asked
/// once the deployment succeeded, and a failure rolls back (key first,
/// then the job), the same as a failing canary gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_url_without_canaries_rolls_back_a_deployment_it_refuses() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let verify = Receiver::start(503);
    let rollout = format!(
        "strategy = \"template\"\n    verify_url = \"{}\"",
        verify.url("/verify")
    );
    let tb = Tagbridge::start(&c, &config(&c, &rollout, ""), None).await;

    assert_eq!(tb.push("1.1.0").await.0, 202);
    let d = c.outcome_for("1.1.0", Duration::from_secs(150)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let detail = d["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("verify_url") && detail.contains("HTTP 503"),
        "{d}"
    );
    assert_eq!(verify.bodies().len(), 3, "three attempts, a second apart");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.0.0"; 3]);
    assert_eq!(c.consul.kv(KEY).as_deref(), Some("1.0.0"));

    verify.set_status(200);
    assert_eq!(tb.push("1.2.0").await.0, 202);
    let d = c.outcome_for("1.2.0", Duration::from_secs(150)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.2.0"; 3]);
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_during_a_rollout_coalesce_to_the_newest() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("1.1.0").await.0, 202);
    wait(
        "the rollout of 1.1.0 to be in flight",
        Duration::from_secs(60),
    )
    .until_async(|| {
        c.deployed()
            .filter(|d| d["outcome"] == "in_progress" && d["deployment"].is_string())
    })
    .await;
    let (s2, b2) = tb.push("1.2.0").await;
    let (s3, b3) = tb.push("1.3.0").await;
    assert_eq!((s2, s3), (202, 202), "{b2} {b3}");
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.1.0"),
        "the key stays with the rollout in flight"
    );
    let d = c.outcome_for("1.3.0", Duration::from_secs(240)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.3.0"; 3]);
    let versions = c.nomad().api_ok("GET", "/v1/job/web/versions", None);
    let metas: Vec<String> = versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v["Meta"]["image_tag"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        !metas.contains(&"1.2.0".to_string()),
        "1.2.0 was never deployed: {metas:?}"
    );
    assert!(
        metas.contains(&"1.1.0".to_string()) && metas.contains(&"1.3.0".to_string()),
        "{metas:?}"
    );
    let deployed: Vec<String> = c
        .consul
        .history("web")
        .iter()
        .filter(|e| e["event"] == "deployed")
        .map(|e| e["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deployed, ["1.3.0", "1.1.0"]);
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_changed_between_read_and_register_is_reread_not_overwritten() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let nomad_addr = c.nomad().addr();
    let hook: tagbridge::rollout::Hook = Arc::new(move |attempt| {
        let addr = nomad_addr.clone();
        Box::pin(async move {
            if attempt != 0 {
                return;
            }
            // Someone else edits the job after tagbridge read it.
            tokio::task::spawn_blocking(move || {
                let (_, mut job) = get_json(&addr, "/v1/job/web");
                job["Meta"]["owner"] = json!("someone-else");
                let (status, body) = post_json(&addr, "/v1/jobs", &json!({ "Job": job }));
                assert_eq!(status, 200, "{body}");
            })
            .await
            .unwrap();
        })
    });
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), Some(hook)).await;
    assert_eq!(tb.push("1.1.0").await.0, 202);
    let d = c.outcome_for("1.1.0", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    let job = c.nomad().job("web");
    assert_eq!(
        job["Meta"]["owner"], "someone-else",
        "their change survives"
    );
    assert_eq!(job["Meta"]["image_tag"], "1.1.0", "ours is applied on top");
    assert_eq!(job["Version"], 2, "v1 = their edit, v2 = ours on top of it");
    tb.stop().await;
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = http1_request("GET", &format!("{addr}{path}"), b"").expect("GET");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn post_json(addr: &str, path: &str, v: &Value) -> (u16, Value) {
    let (status, body) = http1_request(
        "POST",
        &format!("{addr}{path}"),
        &serde_json::to_vec(v).unwrap(),
    )
    .expect("POST");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("tagbridge"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run tagbridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_pins_until_unpin() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let config = config(&c, "strategy = \"template\"", "");
    let tb = Tagbridge::start(&c, &config, None).await;
    let cfg_path = c.dir.path().join("tagbridge.hcl");
    assert_eq!(tb.push("1.1.0").await.0, 202);
    assert_eq!(
        c.outcome_for("1.1.0", Duration::from_secs(150)).await["outcome"],
        "deployed"
    );

    let (code, out, err) = tokio::task::block_in_place(|| cli(&cfg_path, &["rollback", "web"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1.1.0 -> 1.0.0"), "{out}");
    // `status --watch` follows the rollback until it is recorded.
    let (code, out, err) =
        tokio::task::block_in_place(|| cli(&cfg_path, &["status", "web", "--watch"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("group web: desired 3"), "{out}");
    assert!(out.contains("web: deployed 1.0.0"), "{out}");
    let d = wait("the rollback to 1.0.0", Duration::from_secs(150))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["tag"] == "1.0.0" && d["outcome"] == "deployed")
        })
        .await;
    assert_eq!(d["seq"], 2);
    assert_eq!(c.nomad().running_tags("web"), vec!["1.0.0"; 3]);
    let version = c.nomad().job("web")["Version"].clone();

    let (status, body) = tb.push("1.2.0").await;
    assert_eq!((status, &body["reason"]), (200, &json!("pinned")), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.nomad().job("web")["Version"],
        version,
        "pinned: no deploy"
    );
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.0.0")
    );

    let (code, out, _) = tokio::task::block_in_place(|| cli(&cfg_path, &["unpin", "web"]));
    assert_eq!(code, 0);
    assert!(out.contains("unpinned"), "{out}");
    assert_eq!(tb.push("1.3.0").await.0, 202);
    assert_eq!(
        c.outcome_for("1.3.0", Duration::from_secs(150)).await["outcome"],
        "deployed"
    );
    let ev: Vec<String> = c
        .consul
        .history("web")
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    for want in ["pinned", "unpinned", "deployed"] {
        assert!(ev.contains(&want.to_string()), "{ev:?}");
    }
    let (code, out, _) = tokio::task::block_in_place(|| cli(&cfg_path, &["status", "web"]));
    assert_eq!(code, 0);
    assert!(out.contains("group web: desired 3"), "{out}");
    tb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_connect_reports_what_the_live_job_lacks() {
    let c = cluster();
    c.run_job("web-classic", "1.0.0", &[]);
    let cfg = c
        .dir
        .write("tagbridge.hcl", config(&c, "strategy = \"template\"", ""));
    let (code, out, err) = tokio::task::block_in_place(|| cli(&cfg, &["check", "--connect"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("change_mode = \"restart\""), "{err}");
    let js = c
        .dir
        .write("js.hcl", config(&c, "strategy = \"jobspec\"", ""));
    let (code, _, err) = tokio::task::block_in_place(|| cli(&js, &["check", "--connect"]));
    assert_eq!(code, 1);
    assert!(err.contains("NOMAD_META_image_tag"), "{err}");
    let missing = c.dir.write(
        "missing.hcl",
        config(&c, "strategy = \"template\"", "").replace("job     = \"web\"", "job = \"nope\""),
    );
    let (code, _, err) = tokio::task::block_in_place(|| cli(&missing, &["check", "--connect"]));
    assert_eq!(code, 1);
    assert!(err.contains("job does not exist"), "{err}");

    // The template example meets every requirement.
    c.nomad().stop_job("web");
    c.run_job("web-template", "1.0.0", &[]);
    let (code, out, err) = tokio::task::block_in_place(|| cli(&cfg, &["check", "--connect"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("meets"), "{out}");

    // The classic setup's template, as it is: the whole prefix through
    // `range ls`, restarting. It reads the key, and is refused with how
    // to split it.
    c.consul.put("configs/web/LOG_LEVEL", "info");
    let classic = |mode: &'static str| {
        move |job: &mut Value| {
            let task = &mut job["TaskGroups"][0]["Tasks"][0];
            // The test service needs a TAG; the classic template renders
            // IMAGE_TAG=… among the prefix's keys instead.
            task["Env"]["TAG"] = json!("classic");
            let templates = task["Templates"].as_array_mut().expect("templates");
            templates.truncate(1);
            templates[0]["EmbeddedTmpl"] =
                json!("{{ range ls \"configs/web\" }}{{ .Key }}={{ .Value }}\n{{ end }}");
            templates[0]["ChangeMode"] = json!(mode);
        }
    };
    c.nomad().stop_job("web");
    c.run_job_with("web-prefix", "1.0.0", &[], classic("restart"));
    let (code, out, err) = tokio::task::block_in_place(|| cli(&cfg, &["check", "--connect"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("through ls \"configs/web\""), "{err}");
    assert!(err.contains("{{ if ne .Key \"IMAGE_TAG\" }}"), "{err}");
    // Made noop, it works, with a warning about the other keys.
    c.run_job_with("web-prefix", "1.0.0", &[], classic("noop"));
    let (code, out, err) = tokio::task::block_in_place(|| cli(&cfg, &["check", "--connect"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning:") && out.contains("will not restart the task"),
        "{out}"
    );
    // The split layout of nomad/web-prefix.nomad.hcl: no problem, no warning.
    c.run_job("web-prefix", "1.0.0", &[]);
    let (code, out, err) = tokio::task::block_in_place(|| cli(&cfg, &["check", "--connect"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("warning:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_and_the_same_deployment_finishes() {
    let c = cluster();
    // A slower start per instance leaves time to kill the leader mid-way.
    c.run_job("web-template", "1.0.0", &[("warmup", "3")]);
    let (mut a, b) = two_replicas(&c).await;

    assert_eq!(push_to(&c, &a, "1.1.0").await.0, 202);
    let inflight = wait("the rollout to be in flight", Duration::from_secs(60))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["outcome"] == "in_progress" && d["deployment"].is_string())
        })
        .await;
    let deployment = inflight["deployment"].as_str().unwrap().to_string();
    tokio::task::block_in_place(|| a.kill9());
    assert_eq!(
        c.deployed().unwrap()["outcome"],
        "in_progress",
        "killed mid-rollout"
    );

    let d = c.outcome_for("1.1.0", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(
        d["deployment"].as_str(),
        Some(deployment.as_str()),
        "the same deployment was finished"
    );
    let job = c.nomad().job("web");
    assert_eq!(job["Version"], 1, "no second registration");
    let deployments = c.nomad().api_ok("GET", "/v1/job/web/deployments", None);
    assert_eq!(
        deployments.as_array().unwrap().len(),
        2,
        "initial + this rollout, never a second one"
    );
    assert_eq!(c.nomad().running_tags("web"), vec!["1.1.0"; 3]);
    let log = b.log_text();
    assert!(log.contains("leadership acquired"), "{log}");
    assert!(log.contains("resuming an unfinished rollout"), "{log}");
    let h = c.consul.history("web");
    assert_eq!(
        events(&h),
        [
            ("deployed".into(), "1.1.0".into()),
            ("received".into(), "1.1.0".into())
        ]
    );
    let (status, _) = tokio::task::block_in_place(|| b.terminate());
    assert!(status.success());
}

/// Issue 9 (d), I2 under a fault: the leader of two replicas is SIGKILLed
/// and a tag is pushed to the survivor at once, while no replica leads
/// (the dead leader's session and Consul's lock-delay hold the lock for
/// 10–30 s). The acknowledged webhook is recorded before the answer (I5),
/// but the key does not change until the survivor, now leader, starts the
/// rollout: the key's change is the controller's transaction (written with
/// the in-progress record, never with the desired record), and the tag
/// then passes the health gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_while_no_replica_leads_leaves_the_key_to_the_next_leader() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let (mut a, b) = two_replicas(&c).await;
    let index_of =
        |kv: &[(String, u64)], key: &str| kv.iter().find(|(k, _)| k == key).map_or(0, |(_, i)| *i);
    let key = "configs/web/IMAGE_TAG";
    let before = index_of(&c.consul.fingerprint(), key);
    tokio::task::block_in_place(|| a.kill9());
    let (status, body) = push_to(&c, &b, "1.1.0").await;
    let acked = Instant::now();
    assert_eq!(
        (status, &body["rollout"]),
        (202, &json!("queued")),
        "{body}"
    );
    let desired = c
        .consul
        .kv("tagbridge/desired/web")
        .expect("desired record");
    assert!(
        desired.contains("\"1.1.0\""),
        "recorded before the answer: {desired}"
    );
    assert!(
        !b.log_text().contains("leadership acquired"),
        "the survivor must not lead yet (the dead leader's lock is held)"
    );

    // Sample every 100 ms until the key changes (bounded).
    let (changed, kv) = wait(
        "the key to change",
        Duration::from_secs(90).saturating_sub(acked.elapsed()),
    )
    .every(Duration::from_millis(100))
    .attempt_async(|| {
        let kv = c.consul.fingerprint();
        (index_of(&kv, key) != before).then(|| (Instant::now(), kv))
    })
    .await
    .unwrap_or_else(|_| panic!("the key never changed; b log:\n{}", b.log_text()));
    let key_index = index_of(&kv, key);
    let deployed_index = index_of(&kv, "tagbridge/deployed/web");
    assert!(
        key_index <= deployed_index && key_index != index_of(&kv, "tagbridge/desired/web"),
        "I2: the key ({key_index}) was written with the deployed record ({deployed_index}), not by ingest"
    );
    assert!(
        b.log_text().contains("leadership acquired"),
        "I2: only the new leader wrote the key"
    );
    eprintln!(
        "MEASURED webhook acknowledged -> key written by the new leader: {:?}",
        changed - acked
    );
    let d = c.outcome_for("1.1.0", Duration::from_secs(150)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert!(
        d["deployment"].is_string(),
        "rolled out under Nomad's health gate: {d}"
    );
    assert_eq!(versions_naming(&c, "1.1.0"), vec![1], "I3: registered once");
    assert_eq!(c.consul.kv(key).as_deref(), Some("1.1.0"));
    assert_eq!(c.nomad().running_tags("web"), vec!["1.1.0"; 3]);
    assert_eq!(
        events(&c.consul.history("web")),
        [
            ("deployed".into(), "1.1.0".into()),
            ("received".into(), "1.1.0".into())
        ],
        "I5: the acknowledged webhook is kept"
    );
    let (status, _) = tokio::task::block_in_place(|| b.terminate());
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobspec_with_nomads_auto_revert_is_mirrored_into_kv_and_history() {
    let c = cluster();
    c.run_job(
        "web-jobspec",
        "1.0.0",
        &[("auto_revert", "true"), ("initial_tag", "1.0.0")],
    );
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"jobspec\"", ""), None).await;
    assert_eq!(tb.push("bad-3").await.0, 202);
    let d = c.outcome_for("bad-3", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.0.0")
    );
    let job = c.nomad().job("web");
    assert_eq!(job["Meta"]["image_tag"], "1.0.0", "Nomad reverted the job");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.0.0"; 3]);
    assert_eq!(c.consul.history("web")[0]["event"], "rolled_back");

    assert_eq!(tb.push("1.1.0").await.0, 202);
    let d = c.outcome_for("1.1.0", Duration::from_secs(150)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(c.nomad().running_tags("web"), vec!["1.1.0"; 3]);
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.1.0")
    );
    tb.stop().await;
}

/// Versions of the job whose meta names `tag` (I3 counts registrations).
fn versions_naming(c: &Cluster, tag: &str) -> Vec<u64> {
    let versions = c.nomad().api_ok("GET", "/v1/job/web/versions", None);
    versions["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["Meta"]["image_tag"] == tag)
        .map(|v| v["Version"].as_u64().unwrap())
        .collect()
}

/// Race (a) of issue 9: an operator re-runs the job (one extra meta key)
/// while a bad tag is failing; Nomad cancels tagbridge's deployment. Once
/// settled, the key, the job's meta and the deployed record name the
/// prior tag (I1) and the operator's key survives (I4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_edit_during_a_failing_rollout_is_kept_and_the_tag_restored() {
    let c = cluster();
    c.run_job_with(
        "web-template",
        "1.0.0",
        &[("progress_deadline", "5m")],
        |job| {
            job["TaskGroups"][0]["ReschedulePolicy"] = json!({
                "Attempts": 3, "Interval": 3_600_000_000_000u64, "Delay": 5_000_000_000u64,
                "DelayFunction": "constant", "Unlimited": false
            });
        },
    );
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("bad-8").await.0, 202);
    wait("bad-8 to be registered", Duration::from_secs(60))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["outcome"] == "in_progress" && d["job_version"].is_u64())
        })
        .await;
    // The operator's `nomad job run` of an edited file, 0.1 s later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = c.nomad().addr();
    tokio::task::block_in_place(|| {
        let (_, mut job) = get_json(&addr, "/v1/job/web");
        job["Meta"]["owner"] = json!("someone-else");
        let (status, body) = post_json(&addr, "/v1/jobs", &json!({ "Job": job }));
        assert_eq!(status, 200, "{body}");
    });

    let d = c.outcome_for("bad-8", Duration::from_secs(240)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let job = c.nomad().job("web");
    assert_eq!(
        (
            c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
            job["Meta"]["image_tag"].as_str(),
            d["tag"].as_str()
        ),
        (Some("1.0.0"), Some("1.0.0"), Some("1.0.0")),
        "I1: key, job meta and deployed record agree; job {job}"
    );
    assert_eq!(
        job["Meta"]["owner"], "someone-else",
        "I4: the operator's change survives"
    );
    assert_eq!(d["job_version"], job["Version"], "{d}");
    assert_eq!(
        versions_naming(&c, "bad-8").len(),
        2,
        "ours and the operator's run, nothing else"
    );
    let tags = wait("every instance back on 1.0.0", Duration::from_secs(120))
        .until_async(|| {
            let t = c.nomad().running_tags("web");
            (t == vec!["1.0.0"; 3]).then_some(t)
        })
        .await;
    assert_eq!(tags.len(), 3);
    tb.stop().await;
}

/// Found by the soak: an operator runs the job again (one extra meta
/// key) while the rollback's revert is deploying. Nomad cancels the
/// revert's deployment; their version names the restored tag, so the
/// rollback follows its deployment and records `rolled_back` (I1) with
/// their version, and their key survives (I4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_edit_during_the_rollbacks_revert_is_followed() {
    let c = cluster();
    // A slower start per instance keeps the revert's deployment running
    // long enough to run the job again on top of it.
    c.run_job("web-template", "1.0.0", &[("warmup", "4")]);
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("bad-5").await.0, 202);
    wait("the revert to be registered", Duration::from_secs(120))
        .until_async(|| {
            let job = c.nomad().job("web");
            let reverted = job["Version"] == 2 && job["Meta"]["image_tag"] == "1.0.0";
            // Nomad creates the revert's deployment a moment after the
            // version: the edit below must land on top of that deployment.
            let deploying = reverted
                && c.nomad()
                    .latest_deployment("web")
                    .is_some_and(|d| d["JobVersion"] == 2);
            c.deployed()
                .filter(|d| deploying && d["outcome"] == "rolling_back")
                .map(|_| ())
        })
        .await;
    let addr = c.nomad().addr();
    let revert_deployment = tokio::task::block_in_place(|| {
        let dep = c
            .nomad()
            .latest_deployment("web")
            .expect("the revert's deployment");
        let (_, mut job) = get_json(&addr, "/v1/job/web");
        job["Meta"]["owner"] = json!("someone-else");
        let (status, body) = post_json(&addr, "/v1/jobs", &json!({ "Job": job }));
        assert_eq!(status, 200, "{body}");
        dep
    });
    assert_eq!(revert_deployment["JobVersion"], 2, "{revert_deployment}");

    let d = c.outcome_for("bad-5", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let job = c.nomad().job("web");
    assert_eq!(
        job["Version"], 3,
        "the operator's version on top of the revert"
    );
    assert_eq!(
        d["job_version"], 3,
        "their deployment settled the rollback: {d}"
    );
    let cancelled = c.nomad().api_ok(
        "GET",
        &format!(
            "/v1/deployment/{}",
            revert_deployment["ID"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(
        cancelled["Status"], "cancelled",
        "the operator's run cancelled the revert's deployment: {cancelled}"
    );
    assert_eq!(
        (
            c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
            job["Meta"]["image_tag"].as_str(),
            d["tag"].as_str()
        ),
        (Some("1.0.0"), Some("1.0.0"), Some("1.0.0")),
        "I1"
    );
    assert_eq!(job["Meta"]["owner"], "someone-else", "I4");
    let tags = wait("every instance on 1.0.0", Duration::from_secs(120))
        .until_async(|| {
            let t = c.nomad().running_tags("web");
            (t == vec!["1.0.0"; 3]).then_some(t)
        })
        .await;
    assert_eq!(tags.len(), 3);
    tb.stop().await;
}

/// The leader key deleted by hand mid-rollout: the leader notices, ends
/// its term, campaigns again, and the rollout completes exactly once (I3).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_lock_key_mid_rollout_is_noticed_and_the_rollout_completes_once() {
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[("warmup", "3")]);
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("1.1.0").await.0, 202);
    let inflight = wait("the rollout to be in flight", Duration::from_secs(60))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["outcome"] == "in_progress" && d["deployment"].is_string())
        })
        .await;
    wait("the lock to be held", Duration::from_secs(10))
        .until_async(|| c.consul.kv("tagbridge/leader").map(|_| ()))
        .await;
    tokio::task::block_in_place(|| c.consul.delete("tagbridge/leader"));
    // The controller campaigns again and takes the lock back.
    wait("the lock to be taken again", Duration::from_secs(30))
        .until_async(|| c.consul.kv("tagbridge/leader").map(|_| ()))
        .await;

    let d = c.outcome_for("1.1.0", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(
        d["deployment"], inflight["deployment"],
        "the same deployment was finished"
    );
    assert_eq!(versions_naming(&c, "1.1.0"), vec![1], "I3: registered once");
    let deployments = c.nomad().api_ok("GET", "/v1/job/web/deployments", None);
    assert_eq!(
        deployments.as_array().unwrap().len(),
        2,
        "initial + this rollout"
    );
    assert_eq!(c.nomad().running_tags("web"), vec!["1.1.0"; 3]);
    let h = c.consul.history("web");
    assert_eq!(
        events(&h),
        [
            ("deployed".into(), "1.1.0".into()),
            ("received".into(), "1.1.0".into())
        ],
        "one outcome, recorded once"
    );
    tb.stop().await;
}

/// Issue 9 (i): the Nomad server (a separate agent with a data dir) is
/// restarted mid-rollout. The driver waits the outage out, never records
/// a failure, and records the outcome soon after Nomad reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nomad_server_restart_mid_rollout_is_waited_out() {
    let mut c = Cluster::options("rollout").split_nomad().start();
    c.run_job("web-template", "1.0.0", &[("warmup", "3")]);
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("1.1.0").await.0, 202);
    let inflight = wait("the rollout to be in flight", Duration::from_secs(60))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["outcome"] == "in_progress" && d["deployment"].is_string())
        })
        .await;
    let server = c.server.as_mut().expect("split cluster");
    tokio::task::block_in_place(|| {
        server.stop();
        std::thread::sleep(Duration::from_secs(2));
        server.start();
    });
    assert_eq!(
        c.deployed().unwrap()["outcome"],
        "in_progress",
        "an outage is not a failure"
    );
    // Sample both sides every 50 ms: when Nomad says the deployment is
    // over, and when tagbridge has recorded it.
    let dep_path = format!(
        "/v1/deployment/{}",
        inflight["deployment"].as_str().unwrap()
    );
    let mut nomad_done: Option<Instant> = None;
    let recorded = wait(
        "an outcome after the server restart",
        Duration::from_secs(180),
    )
    .every(Duration::from_millis(50))
    .until_async(|| {
        let terminal = matches!(c.nomad().api("GET", &dep_path, None),
                Ok((200, d)) if TERMINAL_DEPLOYMENT.contains(&d["Status"].as_str().unwrap_or("")));
        let rec = c.deployed();
        if terminal && nomad_done.is_none() {
            nomad_done = Some(Instant::now());
        }
        rec.filter(|d| d["outcome"] != "in_progress")
            .map(|d| (Instant::now(), d))
    })
    .await;
    let (at, d) = recorded;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(d["deployment"], inflight["deployment"]);
    let lag = at.saturating_duration_since(nomad_done.unwrap_or(at));
    eprintln!("MEASURED nomad terminal -> recorded after a server restart: {lag:?}");
    assert!(
        lag < Duration::from_secs(5),
        "recorded {lag:?} after Nomad reported it (a 30 s re-check would show here)"
    );
    assert_eq!(versions_naming(&c, "1.1.0"), vec![1], "I3: registered once");
    assert_eq!(
        c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
        Some("1.1.0")
    );
    assert_eq!(c.nomad().job("web")["Meta"]["image_tag"], "1.1.0", "I1");
    tb.stop().await;
}

/// The leader SIGKILLed while rolling back: the next leader repeats the
/// rollback from the `rolling_back` record without reverting twice, and
/// the settled state satisfies I1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_during_a_rollback_is_replaced_and_the_rollback_finishes() {
    let c = cluster();
    c.run_job_with(
        "web-template",
        "1.0.0",
        &[("progress_deadline", "5m"), ("warmup", "3")],
        |job| {
            job["TaskGroups"][0]["ReschedulePolicy"] = json!({
                "Attempts": 3, "Interval": 3_600_000_000_000u64, "Delay": 5_000_000_000u64,
                "DelayFunction": "constant", "Unlimited": false
            });
        },
    );
    let (mut a, b) = two_replicas(&c).await;
    assert_eq!(push_to(&c, &a, "bad-4").await.0, 202);
    wait("the rollback to begin", Duration::from_secs(120))
        .until_async(|| c.deployed().filter(|d| d["outcome"] == "rolling_back"))
        .await;
    tokio::task::block_in_place(|| a.kill9());

    let d = c.outcome_for("bad-4", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let job = c.nomad().job("web");
    assert_eq!(
        (
            c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
            job["Meta"]["image_tag"].as_str(),
            d["tag"].as_str()
        ),
        (Some("1.0.0"), Some("1.0.0"), Some("1.0.0")),
        "I1; job {job}"
    );
    assert_eq!(versions_naming(&c, "bad-4"), vec![1], "I3: registered once");
    assert_eq!(
        job["Version"], 2,
        "v1 = bad-4, v2 = the one revert, never a second"
    );
    let log = b.log_text();
    assert!(log.contains("resuming an unfinished rollout"), "{log}");
    let (status, _) = tokio::task::block_in_place(|| b.terminate());
    assert!(status.success());
}

/// Consul (a server with a data dir) restarted mid-rollout: the leader
/// keeps its lock or takes it again, the rollout completes once (I3), the
/// acknowledged webhook is kept (I5), and the settled state satisfies I1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consul_restart_mid_rollout_is_waited_out() {
    let mut c = Cluster::options("rollout").nomad().durable_consul().start();
    c.run_job("web-template", "1.0.0", &[("warmup", "3")]);
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("1.1.0").await.0, 202);
    wait("the rollout to be in flight", Duration::from_secs(60))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["outcome"] == "in_progress" && d["deployment"].is_string())
        })
        .await;
    tokio::task::block_in_place(|| c.consul.restart_durable(Duration::from_secs(2)));

    let d = c.outcome_for("1.1.0", Duration::from_secs(180)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(versions_naming(&c, "1.1.0"), vec![1], "I3: registered once");
    let job = c.nomad().job("web");
    assert_eq!(
        (
            c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
            job["Meta"]["image_tag"].as_str(),
        ),
        (Some("1.1.0"), Some("1.1.0")),
        "I1"
    );
    assert_eq!(c.nomad().running_tags("web"), vec!["1.1.0"; 3]);
    let h = c.consul.history("web");
    assert_eq!(
        events(&h),
        [
            ("deployed".into(), "1.1.0".into()),
            ("received".into(), "1.1.0".into())
        ],
        "I5: the acknowledged webhook is kept; one outcome"
    );
    tb.stop().await;
}

/// An operator scales the job mid-rollout of a good tag (by running the
/// edited job: Nomad refuses the scale API during a deployment). Their
/// version still names our tag, so the rollout follows its deployment and
/// completes (I1), and the new count survives (I4).
///
/// The operator scales once the server has seen every allocation of our
/// version running. Scaling while one is starting hits a Nomad client
/// race that is not tagbridge's (it failed about half the runs): an
/// allocation updated in place (our version to theirs changes only the
/// count) restarts its health tracker from the *server's* copy of the
/// allocation (`allocHealthWatcherHook.Update` sets `h.alloc =
/// req.Alloc`). When the client had not yet reported the task started,
/// that copy says `pending`; the task is already running, so no later
/// task-state change reaches the new tracker, and at healthy_deadline
/// Nomad marks the running allocation unhealthy with "Task not running by
/// healthy_deadline" (which `allochealth` reports for a task it last saw
/// pending). Their deployment then fails and tagbridge rightly rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_scale_mid_rollout_is_kept_and_the_rollout_completes() {
    let c = cluster();
    // Generous health deadlines: a healthy tag must not fail on a loaded
    // 2-core machine (four instances start one after another).
    c.run_job(
        "web-template",
        "1.0.0",
        &[
            ("warmup", "3"),
            ("healthy_deadline", "90s"),
            ("progress_deadline", "5m"),
        ],
    );
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    assert_eq!(tb.push("1.1.0").await.0, 202);
    wait("the rollout to be in flight", Duration::from_secs(60))
        .until_async(|| {
            c.deployed()
                .filter(|d| d["outcome"] == "in_progress" && d["deployment"].is_string())
        })
        .await;
    wait(
        "the server to see every allocation of our version running",
        Duration::from_secs(90),
    )
    .until_async(|| {
        let allocs = c.nomad().allocations("web");
        let ours: Vec<&Value> = allocs
            .iter()
            .filter(|a| a["JobVersion"] == 1 && a["DesiredStatus"] == "run")
            .collect();
        let running = |a: &&Value| {
            a["ClientStatus"] == "running" && a["TaskStates"]["web"]["State"] == "running"
        };
        (!ours.is_empty() && ours.iter().all(running)).then_some(())
    })
    .await;
    let addr = c.nomad().addr();
    tokio::task::block_in_place(|| {
        let (status, body) = post_json(
            &addr,
            "/v1/job/web/scale",
            &json!({"Count": 4, "Target": {"Group": "web"}, "Message": "operator scale"}),
        );
        // Nomad 1.11 refuses the scale API during a deployment…
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains("active deployment"), "{body}");
        // …so an operator scales by running the edited job instead.
        let (_, mut job) = get_json(&addr, "/v1/job/web");
        job["TaskGroups"][0]["Count"] = json!(4);
        let (status, body) = post_json(&addr, "/v1/jobs", &json!({ "Job": job }));
        assert_eq!(status, 200, "{body}");
    });
    let d = c.outcome_for("1.1.0", Duration::from_secs(240)).await;
    if d["outcome"] != "deployed" {
        // Which allocation failed, and whether it was updated in place.
        let versions = c.nomad().api_ok("GET", "/v1/job/web/versions", None);
        for v in versions["Versions"].as_array().into_iter().flatten() {
            eprintln!(
                "version {} JobModifyIndex {}",
                v["Version"], v["JobModifyIndex"]
            );
        }
        for a in c.nomad().allocations("web") {
            eprintln!(
                "alloc {} {} v{} create {} client {} healthy {} events {}",
                a["ID"],
                a["Name"],
                a["JobVersion"],
                a["CreateIndex"],
                a["ClientStatus"],
                a["DeploymentStatus"]["Healthy"],
                a["TaskStates"]["web"]["Events"]
            );
        }
    }
    assert_eq!(d["outcome"], "deployed", "followed their deployment: {d}");
    let job = c.nomad().job("web");
    assert_eq!(
        job["TaskGroups"][0]["Count"], 4,
        "I4: the operator's count survives"
    );
    assert_eq!(d["job_version"], job["Version"], "{d}");
    assert_eq!(
        versions_naming(&c, "1.1.0").len(),
        2,
        "ours and the operator's run"
    );
    assert_eq!(
        (
            c.consul.kv("configs/web/IMAGE_TAG").as_deref(),
            job["Meta"]["image_tag"].as_str(),
            d["tag"].as_str()
        ),
        (Some("1.1.0"), Some("1.1.0"), Some("1.1.0")),
        "I1"
    );
    let tags = wait("four instances on 1.1.0", Duration::from_secs(120))
        .until_async(|| {
            let t = c.nomad().running_tags("web");
            (t == vec!["1.1.0"; 4]).then_some(t)
        })
        .await;
    assert_eq!(tags.len(), 4);
    tb.stop().await;
}

/// The README's CI step, run as it is (extracted from between its
/// markers) with bash and curl: it exits 0 when the tag deployed, and
/// fails (curl's 22, the 502 body on stdout) when it was rolled back. It
/// prints, for the closing note, how long the caller waited beside how
/// long Nomad's deployment took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_ci_step_fails_the_pipeline_on_a_rollback() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    let block = readme
        .split("<!-- ci-step -->")
        .nth(1)
        .and_then(|r| r.split("<!-- /ci-step -->").next())
        .expect("the ci-step markers");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|b| b.strip_suffix("```"))
        .expect("a sh block")
        .to_string();
    let c = cluster();
    c.run_job("web-template", "1.0.0", &[]);
    let tb = Tagbridge::start(&c, &config(&c, "strategy = \"template\"", ""), None).await;
    let ca = c.dir.write("ca.pem", &c.tls.ca_pem);
    let url = tb
        .server
        .as_ref()
        .expect("running")
        .url(&format!("/hooks/{}", secret_pair("web").0));
    let step = |tag: &str| {
        let started = std::time::Instant::now();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(c.dir.path())
            .env("REPOSITORY", "acme/web")
            .env("IMAGE_TAG", tag)
            .env("TAGBRIDGE_SIGNING_SECRET", SIGNING)
            .env("TAGBRIDGE_URL", &url)
            .env("CURL_CA_BUNDLE", &ca)
            .output()
            .expect("run the CI step");
        let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "not JSON: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), body, started.elapsed())
    };
    // Nomad leaves a deployment's ModifyTime at zero: its end is taken as
    // the last change to an allocation of its job version.
    let deployment_took = |c: &Cluster| {
        let d = c.nomad().latest_deployment("web").expect("a deployment");
        let created = d["CreateTime"].as_u64().unwrap_or(0);
        let ended = c
            .nomad()
            .allocations("web")
            .iter()
            .filter(|a| a["JobVersion"] == d["JobVersion"])
            .filter_map(|a| a["ModifyTime"].as_u64())
            .max()
            .unwrap_or(created);
        Duration::from_nanos(ended.saturating_sub(created))
    };

    let (code, body, waited) = tokio::task::block_in_place(|| step("1.1.0"));
    assert_eq!(code, Some(0), "{body}");
    assert_eq!(body["deploy"]["outcome"], "deployed", "{body}");
    assert_eq!(c.consul.kv(KEY).as_deref(), Some("1.1.0"));
    let seq = body["seq"].as_u64().expect("seq");
    println!(
        "good tag: the caller knew the outcome {waited:?} after sending; Nomad's deployment took {:?}",
        deployment_took(&c)
    );
    // The status path answers the same, at once.
    let status = body["status"].as_str().expect("status path").to_string();
    let server = tb.server.as_ref().expect("running");
    let resp = tb
        .client
        .get(server.url(&status))
        .send()
        .await
        .expect("status");
    assert_eq!(resp.status().as_u16(), 200);
    let s: Value = resp.json().await.expect("JSON");
    assert_eq!(
        (s["seq"].as_u64(), s["outcome"].as_str()),
        (Some(seq), Some("deployed"))
    );

    let (code, body, waited) = tokio::task::block_in_place(|| step("bad-2.0.0"));
    assert_eq!(code, Some(1), "the step fails on the 502: {body}");
    assert_eq!(body["deploy"]["outcome"], "rolled_back", "{body}");
    assert!(
        body["deploy"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    assert_eq!(body["deploy"]["running"], "1.1.0", "{body}");
    assert_eq!(c.consul.kv(KEY).as_deref(), Some("1.1.0"));
    // The CI job run again for the same bad tag: unchanged, and still a
    // failure (it waits on the change that asked for that tag).
    let (code, again, _) = tokio::task::block_in_place(|| step("bad-2.0.0"));
    assert_eq!(code, Some(1), "{again}");
    assert_eq!(again["reason"], "unchanged", "{again}");
    assert_eq!(again["deploy"]["outcome"], "rolled_back", "{again}");
    println!(
        "bad tag: the caller knew of the rollback {waited:?} after sending; the failed deployment took {:?}",
        deployment_took(&c)
    );
    // The first change is now superseded; an unknown seq is 404; a bad
    // `wait` is refused before anything is written.
    let first = tb
        .client
        .get(server.url(&status))
        .send()
        .await
        .expect("status");
    assert_eq!(first.status().as_u16(), 409);
    let unknown = status.replace(&format!("/rollouts/{seq}"), "/rollouts/999");
    let resp = tb
        .client
        .get(server.url(&unknown))
        .send()
        .await
        .expect("status");
    assert_eq!(resp.status().as_u16(), 404);
    let body = serde_json::to_vec(&json!({"repository": "acme/web", "tag": "1.2.0"})).unwrap();
    let resp = tb
        .client
        .post(format!("{url}?wait=soon"))
        .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .expect("webhook");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(c.consul.kv(KEY).as_deref(), Some("1.1.0"));
    tb.stop().await;
}

/// The deployment of `job`'s `version`, from Nomad's list of them.
fn deployment_of(c: &Cluster, job: &str, version: u64) -> Value {
    let all = c
        .nomad()
        .api_ok("GET", &format!("/v1/job/{job}/deployments"), None);
    all.as_array()
        .and_then(|a| a.iter().find(|d| d["JobVersion"] == version).cloned())
        .unwrap_or_else(|| panic!("no deployment of {job} v{version}: {all}"))
}

/// One image, two jobs (a web job and a worker reading the same key):
/// they roll in the listed order, the worker only once web's deployment
/// succeeded; a tag only the worker cannot run rolls both back, key
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_jobs_roll_in_order_and_a_failure_rolls_back_all_of_them() {
    let c = cluster();
    // Web fails only tags starting with "bad-web"; the worker every "bad".
    let set_bad_prefix = |prefix: &'static str| {
        move |job: &mut Value| {
            job["TaskGroups"][0]["Tasks"][0]["Env"]["BAD_PREFIX"] = json!(prefix);
        }
    };
    c.run_job_with("web-template", "1.0.0", &[], set_bad_prefix("bad-web"));
    tokio::task::block_in_place(|| {
        let testsvc = testsvc_bin();
        let vars = [
            ("testsvc", testsvc.to_str().expect("utf-8 path")),
            ("count", "2"),
            ("job_name", "worker"),
        ];
        let mut job = c.nomad().parse_job(&job_file("web-template"), &vars);
        job["Meta"]["image_tag"] = json!("1.0.0");
        set_bad_prefix("bad")(&mut job);
        c.nomad().register(&job);
        let d = c
            .nomad()
            .wait_deployment_terminal("worker", Duration::from_secs(90));
        assert_eq!(d["Status"], "successful", "worker's first deployment: {d}");
    });
    let rollout = [
        "jobs     = [\"web\", \"worker\"]",
        "timeout  = \"3m\"",
        "strategy = \"template\"",
    ];
    let tb = Tagbridge::start(&c, &c.web_config("", Some(&rollout)), None).await;

    let (status, body) = tb.push("2.0.0").await;
    assert_eq!(status, 202, "{body}");
    let d = c.outcome_for("2.0.0", Duration::from_secs(240)).await;
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(c.nomad().job("web")["Meta"]["image_tag"], "2.0.0");
    assert_eq!(c.nomad().job("worker")["Meta"]["image_tag"], "2.0.0");
    assert_eq!(c.nomad().running_tags("web"), vec!["2.0.0"; 3]);
    assert_eq!(c.nomad().running_tags("worker"), vec!["2.0.0"; 2]);
    // In order, each gated: web's deployment had finished (its last
    // change) before the worker's was created.
    let (web, worker) = (deployment_of(&c, "web", 1), deployment_of(&c, "worker", 1));
    assert_eq!(web["Status"], "successful", "{web}");
    assert!(
        web["ModifyIndex"].as_u64() < worker["CreateIndex"].as_u64(),
        "web finished at index {} before the worker's deployment began at {}",
        web["ModifyIndex"],
        worker["CreateIndex"]
    );

    let (status, _) = tb.push("bad-worker-3").await;
    assert_eq!(status, 202);
    let d = c
        .outcome_for("bad-worker-3", Duration::from_secs(300))
        .await;
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(d["tag"], "2.0.0");
    let reason = d["detail"].as_str().unwrap_or_default();
    assert!(
        reason.contains("unhealthy tag bad-worker-3"),
        "the worker's failed check: {reason}"
    );
    assert!(
        reason.contains("job worker: at version") && reason.contains("job web: at version"),
        "both jobs were brought back: {reason}"
    );
    assert_eq!(c.consul.kv(KEY).as_deref(), Some("2.0.0"), "the key too");
    for (job, count) in [("web", 3), ("worker", 2)] {
        let j = c.nomad().job(job);
        assert_eq!(j["Meta"]["image_tag"], "2.0.0", "{job}: {j}");
        assert_eq!(j["Version"], 3, "{job}: v2 = bad-worker-3, v3 = its revert");
        assert_eq!(c.nomad().running_tags(job), vec!["2.0.0"; count], "{job}");
    }
    // Web had run the tag healthily before the worker failed it.
    assert_eq!(deployment_of(&c, "web", 2)["Status"], "successful");
    tb.stop().await;
}

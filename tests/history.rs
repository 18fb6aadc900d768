//! History as one key per entry, against a real Consul agent: bounded
//! whatever the fields and `history_keep`, migrated from the old
//! single-value layout, readable by the CLI in both layouts.

mod common;

use common::*;
use serde_json::{json, Value};

/// The one service these tests write to, keeping `keep` entries.
fn web(keep: usize) -> String {
    format!(
        r#"
service "web" {{
  secret_sha256 = "{{SECRET:web}}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "configs/web/IMAGE_TAG"
  history_keep  = {keep}
  tags {{
    order = "numeric"
  }}
}}
"#
    )
}

/// A Docker Hub push with the largest fields the input grammar accepts.
fn worst_case_push(tag: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "callback_url": "https://registry.hub.docker.com/u/acme/web/hook/x/",
        "push_data": {"pushed_at": 1764590400.5, "pusher": "p".repeat(256), "tag": tag},
        "repository": {"repo_name": "acme/web", "name": "web", "namespace": "acme"}
    }))
    .unwrap()
}

/// The CLI's `history --json` for the service.
fn cli_history(cfg: &std::path::Path, limit: usize) -> Vec<Value> {
    let out = assert_cmd::Command::cargo_bin("tagbridge")
        .unwrap()
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "history",
            "web",
            "--json",
        ])
        .args(["--limit", &limit.to_string()])
        .output()
        .expect("run tagbridge history");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("history --json")
}

#[tokio::test]
async fn full_history_with_worst_case_fields_never_jams() {
    let env = Cluster::options("history").start();
    let consul = &env.consul;
    let text = env.hooks_config("", &web(5));
    let cfg = env.dir.write("tagbridge.hcl", &text);
    let tb = InProcess::start(&text, &env.dir).await;

    // Fill the history past history_keep with the largest accepted fields,
    // including older tags that are recorded in history only.
    for i in 1..=12u32 {
        let tag = format!("{:0>128}", i * 10);
        let (status, body) = env.post(&tb, "web", worst_case_push(&tag)).await;
        assert_eq!(status, 200, "{body}");
        let older = format!("{:0>128}", i * 10 - 5);
        let (status, body) = env.post(&tb, "web", worst_case_push(&older)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reason"], "older than current");
    }
    // Bounded by history_keep, one key per entry, newest first.
    let keys = consul.history_keys("web");
    assert_eq!(keys.len(), 5, "{keys:?}");
    let newest = format!("{:0>128}", 115);
    let h = consul.history("web");
    assert_eq!(h[0]["tag"], newest);
    assert_eq!(h[0]["actor"], "p".repeat(256));
    // Every entry stays small, whatever a payload carried.
    for k in &keys {
        assert!(consul.kv(k).unwrap().len() < 4096, "{k}");
    }
    // A legitimate newer tag still goes through.
    let (status, body) = env
        .post(&tb, "web", worst_case_push(&format!("{:0>128}", 999)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        consul.kv("configs/web/IMAGE_TAG").unwrap(),
        format!("{:0>128}", 999)
    );
    assert_eq!(consul.history_keys("web").len(), 5);

    // The CLI pages the same entries, newest first, and honours --limit.
    let all = cli_history(&cfg, 100);
    assert_eq!(all.len(), 5);
    assert_eq!(all[0]["tag"], format!("{:0>128}", 999));
    assert_eq!(cli_history(&cfg, 2).len(), 2);
    tb.stop().await;
}

#[tokio::test]
async fn history_pages_across_blocks() {
    let env = Cluster::options("history").start();
    let consul = &env.consul;
    let text = env.hooks_config("", &web(10_000));
    let cfg = env.dir.write("tagbridge.hcl", &text);
    let tb = InProcess::start(&text, &env.dir).await;
    // 230 entries span three blocks of 100 keys.
    for i in 1..=230u32 {
        let (status, body) = env.post(&tb, "web", worst_case_push(&i.to_string())).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(consul.history_keys("web").len(), 230);
    let page = cli_history(&cfg, 150);
    let tags: Vec<String> = page
        .iter()
        .map(|e| e["tag"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (81..=230).rev().map(|i: u32| i.to_string()).collect();
    assert_eq!(tags, want);
    tb.stop().await;
}

#[tokio::test]
async fn old_single_value_history_is_read_then_migrated_on_first_write() {
    let env = Cluster::options("history").start();
    let consul = &env.consul;
    let text = env.hooks_config("", &web(100));
    let cfg = env.dir.write("tagbridge.hcl", &text);

    // The old layout: one JSON array, newest first, 150 entries (more than
    // history_keep, and more than one Consul transaction can hold).
    let old: Vec<Value> = (1..=150u32)
        .rev()
        .map(|i| {
            json!({"at": "2026-11-01T00:00:00Z", "event": "received", "tag": i.to_string(),
                   "previous": (i - 1).to_string(), "source": "dockerhub", "actor": "old"})
        })
        .collect();
    consul.put(
        "tagbridge/history/web",
        &serde_json::to_string(&old).unwrap(),
    );
    consul.put("configs/web/IMAGE_TAG", "150");

    // Readers accept the old layout before any write.
    let before = cli_history(&cfg, 3);
    let tags: Vec<&str> = before.iter().map(|e| e["tag"].as_str().unwrap()).collect();
    assert_eq!(tags, ["150", "149", "148"]);

    // The first write migrates (newest history_keep entries), then appends.
    let tb = InProcess::start(&text, &env.dir).await;
    let (status, body) = env.post(&tb, "web", worst_case_push("151")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous"], "150");
    assert_eq!(
        consul.kv("tagbridge/history/web"),
        None,
        "old value removed"
    );
    let h = consul.history("web");
    assert_eq!(h.len(), 100);
    assert_eq!(h[0]["tag"], "151");
    assert_eq!(h[1]["tag"], "150");
    assert_eq!(h[1]["actor"], "old");
    assert_eq!(h[99]["tag"], "52");
    let head: Value =
        serde_json::from_str(&consul.kv("tagbridge/history/web/head").unwrap()).unwrap();
    assert_eq!(head["seq"], 101);
    assert_eq!(cli_history(&cfg, 2)[1]["tag"], "150");
    tb.stop().await;
}

/// The jammed histories the migration exists for: an old value near
/// Consul's 512 KiB limit, every entry near its field bounds, migrated in
/// transactions Consul accepts (a 60-entry chunk of these would not be).
#[tokio::test]
async fn a_jammed_old_history_is_migrated_in_chunks_consul_accepts() {
    let env = Cluster::options("history").start();
    let consul = &env.consul;
    let text = env.hooks_config("", &web(100));
    let wide = |c: char| c.to_string().repeat(1000);
    let old: Vec<Value> = (1..=60u32)
        .rev()
        .map(|i| {
            json!({"at": wide('a'), "event": "received", "tag": i.to_string(),
                   "previous": wide('p'), "digest": wide('d'), "source": wide('s'),
                   "delivery": wide('x'), "actor": wide('y'), "detail": wide('z')})
        })
        .collect();
    let old = serde_json::to_string(&old).unwrap();
    assert!(
        old.len() > 400 * 1024 && old.len() < 512 * 1024,
        "{}",
        old.len()
    );
    consul.put("tagbridge/history/web", &old);
    consul.put("configs/web/IMAGE_TAG", "60");

    let tb = InProcess::start(&text, &env.dir).await;
    let (status, body) = env.post(&tb, "web", worst_case_push("61")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        consul.kv("tagbridge/history/web"),
        None,
        "old value removed"
    );
    let h = consul.history("web");
    assert_eq!(h.len(), 61);
    assert_eq!(h[0]["tag"], "61");
    assert_eq!(h[1]["tag"], "60");
    assert_eq!(h[60]["tag"], "1");
    tb.stop().await;
}

//! `digest_key` on a rollout service, against real Consul and Nomad
//! agents: the controller writes the digest key with the tag key when a
//! rollout starts, sets the job's `<meta_key>_digest`, and a rollback
//! restores the digest key together with the tag; the running tag
//! re-pushed with a new digest (a mutable tag) rolls out again.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DIGEST_KEY: &str = "configs/web/IMAGE_DIGEST";
const D0: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// The tag key and the digest key, read together (one consistent read).
fn tag_and_digest(consul: &ConsulAgent) -> (Option<String>, Option<String>) {
    use base64::Engine as _;
    let url = format!("{}/v1/kv/configs/web/?recurse", consul.addr());
    let list: Vec<Value> = match blocking_get_status(&url) {
        Ok((200, body)) => serde_json::from_str(&body).expect("kv JSON"),
        Ok((404, _)) => Vec::new(),
        other => panic!("consul list: {other:?}"),
    };
    let value = |key: &str| {
        list.iter().find(|e| e["Key"] == key).map(|e| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(e["Value"].as_str().unwrap_or_default())
                .expect("base64");
            String::from_utf8(raw).expect("utf-8")
        })
    };
    (value(KEY), value(DIGEST_KEY))
}

/// A signed generic push of `tag` carrying `digest`: its status.
async fn push(tb: &Tagbridge, tag: &str, digest: &str) -> u16 {
    let body = serde_json::to_vec(&json!({"repository": "acme/web", "tag": tag, "digest": digest}))
        .unwrap();
    let server = tb.server.as_ref().expect("running");
    let resp = tb
        .client
        .post(server.url(&format!("/hooks/{}", secret_pair("web").0)))
        .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .expect("webhook");
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_digest_key_moves_with_rollouts_rollbacks_and_a_repushed_tag() {
    let c = Cluster::options("digest").nomad().start();
    c.run_job("web-template", "1.0.0", &[]);
    tokio::task::block_in_place(|| c.consul.put(DIGEST_KEY, D0));
    let rollout = [
        "job      = \"web\"",
        "timeout  = \"3m\"",
        "strategy = \"template\"",
    ];
    let config = c
        .config()
        .admin_listen("127.0.0.1:0")
        .service(
            c.web()
                .line(format!("digest_key          = \"{DIGEST_KEY}\""))
                .rollout(&rollout),
        )
        .render();
    assert!(config.contains("digest_key"), "{config}");
    let tb = Tagbridge::start(&c, &config, None).await;

    // A generic push carrying its digest.
    assert_eq!(push(&tb, "bad-2.0", D1).await, 202);

    // While the rollout runs, the key and the digest key name the new tag
    // and its digest together, and the registered job carries the digest.
    let mut seen_pair = false;
    let mut seen_meta = false;
    let last = wait("the bad tag's outcome", Duration::from_secs(180))
        .every(Duration::from_millis(200))
        .attempt_async(|| {
            let pair = tag_and_digest(&c.consul);
            let meta = c.nomad().job("web")["Meta"]["image_tag_digest"].clone();
            let d = c.deployed();
            // Together or not at all: never the new tag beside the old digest.
            match pair {
                (Some(t), Some(dg)) if t == "bad-2.0" => {
                    assert_eq!(dg, D1);
                    seen_pair = true;
                }
                (Some(t), dg) => assert_eq!((t.as_str(), dg.as_deref()), ("1.0.0", Some(D0))),
                other => panic!("a key went missing: {other:?}"),
            }
            seen_meta |= meta == D1;
            let settled = d.as_ref().is_some_and(|d| {
                d["tag"] == "1.0.0"
                    && !matches!(d["outcome"].as_str(), Some("in_progress" | "rolling_back"))
                    && d["seq"] == 1
            });
            match d {
                Some(d) if settled => Ok(d),
                d => Err(format!("{d:?}")),
            }
        })
        .await
        .unwrap_or_else(|last| {
            panic!(
                "no outcome within 180 s: {}; nomad log:\n{}",
                last.unwrap_or_default(),
                c.nomad().log_tail(40)
            )
        });
    assert!(seen_pair, "the rollout's start wrote tag and digest");
    assert!(seen_meta, "the register set image_tag_digest");

    // Rolled back: the digest restored with the tag, and recorded.
    assert_eq!(last["outcome"], "rolled_back", "{last}");
    assert_eq!(last["digest"], D0, "{last}");
    let pair = tokio::task::block_in_place(|| tag_and_digest(&c.consul));
    assert_eq!(pair, (Some("1.0.0".into()), Some(D0.into())));

    // The running tag re-pushed with new content (a mutable tag): a change
    // that rolls out, the new digest with it.
    let version_before = tokio::task::block_in_place(|| c.nomad().job("web")["Version"].clone());
    assert_eq!(
        push(&tb, "1.0.0", D2).await,
        202,
        "a re-push with a new digest is a change"
    );
    let d = wait("a deploy of the re-push", Duration::from_secs(180))
        .every(Duration::from_millis(200))
        .until_async(|| {
            let d = c.deployed();
            match d
                .clone()
                .filter(|d| d["seq"] == 2 && d["outcome"] == "deployed")
            {
                Some(d) => Ok(d),
                None => Err(format!("{d:?}")),
            }
        })
        .await;
    assert_eq!(
        (&d["tag"], &d["digest"]),
        (&json!("1.0.0"), &json!(D2)),
        "{d}"
    );
    let job = tokio::task::block_in_place(|| c.nomad().job("web"));
    assert_eq!(job["Meta"]["image_tag_digest"], D2);
    assert!(
        job["Version"].as_u64() > version_before.as_u64(),
        "a new job version rolled the allocations: {} after {version_before}",
        job["Version"]
    );
    let pair = tokio::task::block_in_place(|| tag_and_digest(&c.consul));
    assert_eq!(pair, (Some("1.0.0".into()), Some(D2.into())));
    tb.stop().await;
}

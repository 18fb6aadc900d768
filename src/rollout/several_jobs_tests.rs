//! Rollouts that name several jobs (one image, say a web job and a
//! worker), against the scripted fake: the listed order, each job gated
//! before the next is touched, and a failure anywhere rolling back every
//! job the rollout touched, key included, also when a new leader resumes
//! half-way.

use std::sync::Arc;

use serde_json::{json, Value};

use super::fake::{FakeConsul, FakeJobs, Health};
use super::*;
use crate::config::Config;

use super::tests::{config_for, deployed, desire, settled_consul, DEPLOYED, KEY};

fn config() -> Arc<Config> {
    config_for(r#"jobs = ["web", "worker"]"#, "")
}

/// The web job fails tags starting with "bad".
fn web_health(tag: &str) -> Health {
    match tag.starts_with("bad") {
        true => Health::Unhealthy,
        false => Health::Healthy,
    }
}

/// The worker fails those and the ones starting with "wbad" (a release
/// only the worker cannot run).
fn worker_health(tag: &str) -> Health {
    match tag.starts_with("bad") || tag.starts_with("wbad") {
        true => Health::Unhealthy,
        false => Health::Healthy,
    }
}

struct World {
    ctx: Context,
    nomad: FakeJobs,
    consul: Arc<FakeConsul>,
}

impl World {
    /// Both jobs run `tag` (version 0); the key and the record say so.
    fn new(tag: &str) -> Self {
        let cfg = config();
        World {
            ctx: crate::clients::rollout_context(&cfg).expect("context"),
            nomad: FakeJobs::new(tag, &[("web", web_health), ("worker", worker_health)]),
            consul: settled_consul(tag),
        }
    }

    fn desire(&self, tag: &str, seq: u64) {
        desire(&self.consul, tag, seq);
    }

    async fn drive(&self) -> Result<(), RolloutError> {
        let svc = self.ctx.config.service("web").expect("web");
        let d = Driver::with_ports(&self.ctx, svc, &self.nomad, &*self.consul).expect("rollout");
        d.drive().await
    }

    fn deployed(&self) -> Value {
        deployed(&self.consul)
    }

    fn key(&self) -> Option<String> {
        self.consul.with(|kv| kv.get(KEY))
    }

    fn meta(&self, job: &str) -> Option<String> {
        self.nomad.job(job).with(|w| w.meta("image_tag"))
    }

    /// The newest history entry (keys are zero-padded seqs).
    fn last_history(&self) -> Value {
        const PREFIX: &str = "tagbridge/history/web/";
        self.consul.with(|kv| {
            kv.kv
                .iter()
                .rev()
                .find(|(k, _)| {
                    k.strip_prefix(PREFIX)
                        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|(_, v)| serde_json::from_slice(&v.0).expect("entry is JSON"))
                .expect("a history entry")
        })
    }

    fn registers(&self, job: &str) -> Vec<(u64, String)> {
        self.nomad.job(job).with(|w| w.registers.clone())
    }

    fn reverts(&self, job: &str) -> Vec<(u64, u64)> {
        self.nomad.job(job).with(|w| w.reverts.clone())
    }

    /// I1 for every job: key, each job's meta and the record name `tag`.
    fn assert_i1(&self, tag: &str) {
        let d = self.deployed();
        assert!(
            !d["outcome"]
                .as_str()
                .is_some_and(|o| o.ends_with("ing") || o == "in_progress"),
            "settled: {d}"
        );
        assert_eq!(self.key().as_deref(), Some(tag), "KV key");
        assert_eq!(self.meta("web").as_deref(), Some(tag), "web's meta");
        assert_eq!(self.meta("worker").as_deref(), Some(tag), "worker's meta");
        assert_eq!(d["tag"], tag, "deployed record: {d}");
    }
}

#[tokio::test(start_paused = true)]
async fn jobs_roll_in_the_listed_order_each_gated_before_the_next() {
    let w = World::new("1.0");
    // When the worker is registered, the web job's deployment of the new
    // tag must already have succeeded.
    let web = w.nomad.job("web").clone();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    w.nomad.job("worker").with(|n| {
        n.after_write = Some(Box::new(move |_, what| {
            let web_state = web.with(|wn| {
                let d = wn.deployments.last().expect("a deployment");
                (wn.meta("image_tag"), d.status.clone())
            });
            log.lock().unwrap().push((what.to_string(), web_state));
        }));
    });
    w.desire("1.1", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.1");
    let d = w.deployed();
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(w.registers("web"), [(1, "1.1".to_string())]);
    assert_eq!(w.registers("worker"), [(1, "1.1".to_string())]);
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            "register".to_string(),
            (Some("1.1".to_string()), "successful".to_string())
        )],
        "the worker was registered only once web's deployment succeeded"
    );
    let last = w.last_history();
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("job web version 1") && detail.contains("job worker version 1"),
        "the deployed entry names every job: {detail}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_later_job_rolls_back_every_job_and_the_key() {
    let w = World::new("1.0");
    w.desire("wbad-2", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    let d = w.deployed();
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(d["previous"], "wbad-2");
    let detail = d["detail"].as_str().unwrap();
    assert!(detail.contains("unhealthy"), "{detail}");
    assert!(
        detail.contains("job worker: at version 2") && detail.contains("job web: at version 2"),
        "{detail}"
    );
    // I3: each job registered the tag once; both were reverted to v0.
    assert_eq!(w.registers("web"), [(1, "wbad-2".to_string())]);
    assert_eq!(w.registers("worker"), [(1, "wbad-2".to_string())]);
    assert_eq!(w.reverts("web"), [(0, 1)]);
    assert_eq!(w.reverts("worker"), [(0, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_first_job_never_touches_the_next() {
    let w = World::new("1.0");
    w.desire("bad-3", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    assert_eq!(w.deployed()["outcome"], "rolled_back");
    assert_eq!(w.registers("worker"), [], "the worker was never registered");
    assert_eq!(w.reverts("worker"), [], "nor reverted");
    assert_eq!(w.reverts("web"), [(0, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_missing_later_job_fails_the_rollout_before_any_job_is_touched() {
    let w = World::new("1.0");
    w.nomad.job("worker").with(|n| n.versions.push(Value::Null));
    w.desire("1.1", 1);
    w.drive().await.expect("drive");
    let d = w.deployed();
    assert_eq!(d["outcome"], "failed", "{d}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .contains("job \"worker\" not found"),
        "{d}"
    );
    assert_eq!(w.registers("web"), [], "web was not touched");
    assert_eq!(w.key().as_deref(), Some("1.0"), "nor the key");
}

/// A leader died after the web job rolled and while the worker's
/// deployment ran: the next leader resumes at the worker, and its failure
/// reverts the web job too (it is in the record's `done`).
#[tokio::test(start_paused = true)]
async fn a_resumed_rollout_continues_at_its_job_and_rolls_back_the_ones_done() {
    let w = World::new("1.0");
    let put = |job: &str| {
        w.nomad.job(job).with(|n| {
            let mut doc = n.current().clone();
            doc["Meta"]["image_tag"] = json!("wbad-4");
            n.put_version(doc, "image_tag")
        })
    };
    let (web_v, worker_v) = (put("web"), put("worker"));
    let web_dep = w
        .nomad
        .job("web")
        .with(|n| format!("web:{}", n.deployments.last().unwrap().id));
    w.desire("wbad-4", 1);
    w.consul.with(|kv| {
        kv.put(KEY, b"wbad-4");
        kv.put(
            DEPLOYED,
            &serde_json::to_vec(&json!({
                "tag": "wbad-4", "seq": 1, "at": "x", "outcome": "in_progress",
                "job": "worker", "job_version": worker_v, "prior_version": 0,
                "previous": "1.0", "started": unix_ms(),
                "done": [{"job": "web", "prior_version": 0, "job_version": web_v, "deployment": web_dep}]
            }))
            .unwrap(),
        );
    });
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    assert_eq!(w.deployed()["outcome"], "rolled_back");
    assert_eq!(w.registers("web"), [], "web was not registered again");
    assert_eq!(w.registers("worker"), [], "nor the worker (adopted)");
    assert_eq!(w.reverts("web"), [(0, 1)]);
    assert_eq!(w.reverts("worker"), [(0, 1)]);
}

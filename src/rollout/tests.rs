//! The rollout's races, each a deterministic test against the scripted
//! fake (`fake.rs`): operator edits, lost races, a stolen lock, deleted
//! jobs, garbage-collected deployments, outages. Time is paused, so
//! retries and deadlines run in virtual time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::fake::{job_doc, FakeConsul, FakeNomad, Health};
use super::plan::{adoptable, plan_previous};
use super::rollback::{plan_rollback, JobView, Observed, RollbackPlan};
use super::*;
use crate::config::{Config, Purpose};

const SHA: &str = "9f2c1e6b8a0d4c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3";
pub(super) const KEY: &str = "configs/web/IMAGE_TAG";
pub(super) const DESIRED: &str = "tagbridge/desired/web";
pub(super) const DEPLOYED: &str = "tagbridge/deployed/web";
const PIN: &str = "tagbridge/pin/web";

fn config() -> Arc<Config> {
    config_with("")
}

/// The test service, with `extra` lines in its rollout block.
fn config_with(extra: &str) -> Arc<Config> {
    config_for(r#"job = "web""#, extra)
}

/// The test service "web" (dockerhub, key [`KEY`]) whose rollout block
/// names its job(s) with `jobs` (a `job` or `jobs` line), template
/// strategy, a 3-minute timeout, and `extra` lines.
pub(super) fn config_for(jobs: &str, extra: &str) -> Arc<Config> {
    let text = format!(
        r#"
consul {{ address = "http://127.0.0.1:9" }}
nomad {{ address = "http://127.0.0.1:9" }}
service "web" {{
  secret_sha256 = "{SHA}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "{KEY}"
  rollout {{
    {jobs}
    strategy = "template"
    timeout  = "3m"
    {extra}
  }}
}}
"#
    );
    let no_env = |_: &str| None;
    Arc::new(
        Config::parse(
            std::path::Path::new("t.hcl"),
            &text,
            Purpose::Client,
            &no_env,
        )
        .expect("test config"),
    )
}

/// Consul for a settled service: the key holds `tag` and the deployed
/// record says it is deployed (seq 0, job version 0).
pub(super) fn settled_consul(tag: &str) -> Arc<FakeConsul> {
    let consul = FakeConsul::new();
    consul.with(|kv| {
        kv.put(KEY, tag.as_bytes());
        kv.put(
            DEPLOYED,
            &serde_json::to_vec(
                &json!({"tag": tag, "seq": 0, "at": "x", "outcome": "deployed", "job_version": 0}),
            )
            .unwrap(),
        );
    });
    consul
}

/// A webhook's desire: the desired record at `tag`, `seq`.
pub(super) fn desire(consul: &FakeConsul, tag: &str, seq: u64) {
    consul.with(|kv| {
        kv.put(
            DESIRED,
            &serde_json::to_vec(&json!({"tag": tag, "seq": seq, "at": "x"})).unwrap(),
        );
    });
}

/// The deployed record as JSON.
pub(super) fn deployed(consul: &FakeConsul) -> Value {
    consul
        .with(|kv| kv.json(DEPLOYED))
        .expect("deployed record")
}

/// Tags starting with "bad" turn unhealthy; "slow" ones stay pending.
fn by_name(tag: &str) -> Health {
    if tag.starts_with("bad") {
        Health::Unhealthy
    } else if tag.starts_with("slow") {
        Health::Pending
    } else {
        Health::Healthy
    }
}

struct World {
    ctx: Context,
    nomad: Arc<FakeNomad>,
    consul: Arc<FakeConsul>,
}

impl World {
    /// The job runs `tag` (version 0), the key holds it, the deployed
    /// record says so.
    fn new(tag: &str) -> Self {
        Self::with_config(tag, config())
    }

    fn with_config(tag: &str, cfg: Arc<Config>) -> Self {
        let ctx = crate::clients::rollout_context(&cfg).expect("context");
        World {
            ctx,
            nomad: FakeNomad::new(tag, by_name),
            consul: settled_consul(tag),
        }
    }

    fn desire(&self, tag: &str, seq: u64) {
        desire(&self.consul, tag, seq);
    }

    async fn drive(&self) -> Result<(), RolloutError> {
        let svc = self.ctx.config.service("web").expect("web");
        let d = Driver::with_ports(&self.ctx, svc, &*self.nomad, &*self.consul).expect("rollout");
        d.drive().await
    }

    fn key(&self) -> Option<String> {
        self.consul.with(|kv| kv.get(KEY))
    }

    fn deployed(&self) -> Value {
        deployed(&self.consul)
    }

    fn meta(&self, key: &str) -> Option<String> {
        self.nomad.with(|w| w.meta(key))
    }

    /// I1 once settled: key, job meta and deployed record name one tag.
    fn assert_i1(&self, tag: &str) {
        let d = self.deployed();
        assert!(
            !matches!(d["outcome"].as_str(), Some("in_progress" | "rolling_back")),
            "settled: {d}"
        );
        assert_eq!(self.key().as_deref(), Some(tag), "KV key");
        assert_eq!(self.meta("image_tag").as_deref(), Some(tag), "job meta");
        assert_eq!(d["tag"], tag, "deployed record: {d}");
    }

    /// The driver's registers whose meta named `tag` (I3 counts these).
    fn registers_of(&self, tag: &str) -> usize {
        self.nomad
            .with(|w| w.registers.iter().filter(|(_, t)| t == tag).count())
    }
}

/// The current job plus one meta key: what an operator's `nomad job run`
/// of an edited file does.
fn operator_edit(w: &mut fake::NomadWorld) -> u64 {
    let mut doc = w.current().clone();
    doc["Meta"]["owner"] = json!("ops");
    w.put_version(doc, "image_tag")
}

fn view(version: u64, tag: Option<&str>) -> JobView {
    JobView {
        version,
        modify_index: 100 + version,
        tag: tag.map(str::to_string),
    }
}

#[test]
fn plan_rollback_decides_from_what_nomad_shows() {
    let base = Observed {
        job: Some(view(1, Some("bad"))),
        base: Some(view(0, Some("1.0"))),
        target: Some("1.0".into()),
        failed_version: Some(1),
        nomad_reverts: false,
        waited_for_nomad: false,
    };
    // Untouched since our register: revert to the version under ours.
    assert_eq!(
        plan_rollback(&base),
        RollbackPlan::Revert {
            to: 0,
            enforce_prior: 1
        }
    );
    // (a) an operator re-registered on top of ours: keep their change.
    let edited = Observed {
        job: Some(view(2, Some("bad"))),
        ..base.clone()
    };
    assert_eq!(
        plan_rollback(&edited),
        RollbackPlan::Reregister { enforce_index: 102 }
    );
    // (b) ours sat on an operator's version: revert to theirs, not prior.
    let on_theirs = Observed {
        job: Some(view(2, Some("bad"))),
        base: Some(view(1, Some("1.0"))),
        failed_version: Some(2),
        ..base.clone()
    };
    assert_eq!(
        plan_rollback(&on_theirs),
        RollbackPlan::Revert {
            to: 1,
            enforce_prior: 2
        }
    );
    // The version under ours names another tag: re-register instead.
    let odd_base = Observed {
        base: Some(view(0, Some("0.9"))),
        ..base.clone()
    };
    assert_eq!(
        plan_rollback(&odd_base),
        RollbackPlan::Reregister { enforce_index: 101 }
    );
    // Already naming the target (reverted before a crash, by hand, never
    // registered): nothing to write.
    let done = Observed {
        job: Some(view(3, Some("1.0"))),
        ..base.clone()
    };
    assert_eq!(plan_rollback(&done), RollbackPlan::Restored { version: 3 });
    assert_eq!(
        plan_rollback(&Observed {
            job: None,
            ..base.clone()
        }),
        RollbackPlan::JobGone
    );
    // Nomad's auto_revert gets one chance first.
    let nomad = Observed {
        nomad_reverts: true,
        ..base.clone()
    };
    assert_eq!(plan_rollback(&nomad), RollbackPlan::AwaitNomad { after: 1 });
    // No previous tag at all: the version without a meta is the target.
    let none = Observed {
        job: Some(view(1, Some("bad"))),
        base: Some(view(0, None)),
        target: None,
        ..base
    };
    assert_eq!(
        plan_rollback(&none),
        RollbackPlan::Revert {
            to: 0,
            enforce_prior: 1
        }
    );
}

#[test]
fn previous_tag_falls_back_to_the_key() {
    let p = |meta, received, key| plan_previous("2.0", None, meta, received, key);
    assert_eq!(p(None, None, Some("0.9")).as_deref(), Some("0.9"));
    assert_eq!(p(Some("1.0"), None, Some("0.9")).as_deref(), Some("1.0"));
    assert_eq!(p(None, Some("0.8"), Some("0.9")).as_deref(), Some("0.8"));
    assert_eq!(p(Some(""), None, None), None);
    // Ingest may have written the new tag already: never its own previous.
    assert_eq!(p(None, None, Some("2.0")), None);
}

#[test]
fn adoption_counts_only_versions_of_this_attempt() {
    let j = |v: u64, tag: &str| {
        let mut doc = job_doc(tag);
        doc["Version"] = json!(v);
        doc["JobModifyIndex"] = json!(v + 10);
        crate::clients::nomad::Job::from_value(doc).unwrap()
    };
    let versions = [j(3, "1.0"), j(2, "1.1"), j(1, "1.1"), j(0, "1.0")];
    assert_eq!(adoptable(&versions, "image_tag", "1.1", 1), Some(2));
    assert_eq!(adoptable(&versions, "image_tag", "1.1", 2), None);
}

#[tokio::test(start_paused = true)]
async fn a_good_tag_is_deployed() {
    let w = World::new("1.0");
    w.desire("1.1", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.1");
    assert_eq!(w.deployed()["outcome"], "deployed");
    assert_eq!(w.registers_of("1.1"), 1);
}

/// Race (a): an operator re-registers the job (one extra meta key) while
/// the bad tag is failing; Nomad cancels our deployment.
#[tokio::test(start_paused = true)]
async fn race_a_operator_rerun_during_a_failing_tag_keeps_their_change_and_restores_the_tag() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        n.after_write = Some(Box::new(|n, what| {
            if what == "register" && n.registers.len() == 1 {
                operator_edit(n);
            }
        }));
    });
    w.desire("bad-8", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    assert_eq!(w.deployed()["outcome"], "rolled_back");
    assert_eq!(
        w.meta("owner").as_deref(),
        Some("ops"),
        "I4: their change survives"
    );
    assert_eq!(
        w.nomad.with(|n| n.reverts.clone()),
        [],
        "never reverted over it"
    );
    assert_eq!(w.registers_of("bad-8"), 1, "I3");
}

/// Race (a'): an operator's register lands on the same version as ours
/// (Nomad accepted both: EnforceIndex is checked before the Raft apply),
/// copying the job from before our tag, before Nomad started our
/// deployment. The tag was never tried: the reason says so, and their
/// change stays.
#[tokio::test(start_paused = true)]
async fn a_register_overtaken_before_its_deployment_says_so_and_keeps_their_change() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        n.after_write = Some(Box::new(|n, what| {
            if what == "register" && n.registers.len() == 1 {
                let below = n.versions.len() - 2;
                let mut doc = n.versions[below].clone();
                doc["Meta"]["owner"] = json!("ops");
                n.put_version(doc, "image_tag");
            }
        }));
    });
    w.desire("1.1", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    let d = w.deployed();
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    let reason = d["detail"].as_str().unwrap();
    assert!(
        reason.starts_with("job version 1 was replaced by version 2 (naming 1.0) before Nomad started its deployment"),
        "{reason}"
    );
    assert_eq!(w.meta("owner").as_deref(), Some("ops"), "I4");
    assert_eq!(w.registers_of("1.1"), 1, "I3");
    assert_eq!(w.nomad.with(|n| n.reverts.clone()), [], "nothing to revert");
}

/// Race (b): an operator edits the job between the rollout's start and its
/// register; ours lands on top of theirs. The rollback must go back to
/// their version, not to the one the rollout started from.
#[tokio::test(start_paused = true)]
async fn race_b_revert_target_is_the_version_under_ours_not_the_stale_prior() {
    let mut w = World::new("1.0");
    let nomad = w.nomad.clone();
    w.ctx.before_register = Some(Arc::new(move |attempt| {
        let nomad = nomad.clone();
        Box::pin(async move {
            if attempt == 0 {
                nomad.with(operator_edit);
            }
        })
    }));
    w.desire("bad-2", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    assert_eq!(w.meta("owner").as_deref(), Some("ops"), "I4");
    assert_eq!(
        w.nomad.with(|n| n.reverts.clone()),
        [(1, 2)],
        "reverted to the operator's v1, not the prior v0"
    );
    assert_eq!(w.deployed()["prior_version"], 0);
}

/// Race (c): the controller decides to deploy v6; a webhook writes v7
/// (desired and, with no rollout in flight, the key); the start's commit
/// must not put v6 back.
#[tokio::test(start_paused = true)]
async fn race_c_a_webhook_between_decision_and_commit_is_not_overwritten() {
    let w = World::new("1.0");
    w.desire("v6", 1);
    w.consul.with(|kv| {
        kv.before_txn = Some(Box::new(|kv, _| {
            if kv.get(DESIRED).is_some_and(|d| d.contains("\"v6\"")) {
                kv.put(DESIRED, br#"{"tag":"v7","seq":2,"at":"x"}"#);
                kv.put(KEY, b"v7");
            }
        }));
    });
    w.drive().await.expect("drive");
    w.assert_i1("v7");
    assert_eq!(w.registers_of("v6"), 0, "v6 was never rolled out");
    assert_eq!(w.deployed()["seq"], 2);
}

/// Race (c), pin: `tagbridge rollback` pins 0.9 (pin + desired) between
/// the decision to deploy v6 and its commit.
#[tokio::test(start_paused = true)]
async fn race_c_a_rollback_pin_between_decision_and_commit_wins() {
    let w = World::new("1.0");
    w.desire("v6", 1);
    w.consul.with(|kv| {
        kv.before_txn = Some(Box::new(|kv, _| {
            if kv.get(PIN).is_none() {
                kv.put(PIN, br#"{"tag":"0.9"}"#);
                kv.put(DESIRED, br#"{"tag":"0.9","seq":2,"at":"x"}"#);
            }
        }));
    });
    w.drive().await.expect("drive");
    w.assert_i1("0.9");
    assert_eq!(w.registers_of("v6"), 0);
}

/// (g) The leader key deleted by hand: the first fenced write notices,
/// cancels the term, and nothing reaches Nomad.
#[tokio::test(start_paused = true)]
async fn a_deleted_lock_key_ends_the_term_before_nomad_is_touched() {
    let mut w = World::new("1.0");
    w.ctx.fence = Some(("tagbridge/leader".into(), "s1".into()));
    w.consul.with(|kv| {
        kv.put("tagbridge/leader", b"{}");
        kv.kv.get_mut("tagbridge/leader").unwrap().2 = Some("s1".into());
        kv.before_txn = Some(Box::new(|kv, _| {
            kv.kv.remove("tagbridge/leader");
        }));
    });
    w.desire("1.1", 1);
    let err = w.drive().await.expect_err("the term ends");
    assert!(matches!(err, RolloutError::Cancelled), "{err}");
    assert!(w.ctx.cancel.is_cancelled(), "the term is cancelled");
    assert_eq!(w.registers_of("1.1"), 0);
    assert_eq!(w.key().as_deref(), Some("1.0"));
}

/// (g) No previous tag anywhere (no meta, no key, no history): the job is
/// reverted and the key restored to what it was (absent).
#[tokio::test(start_paused = true)]
async fn no_previous_tag_reverts_the_job_and_deletes_the_key_again() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        let mut doc = n.current().clone();
        doc["Meta"] = json!({});
        n.put_version(doc, "image_tag");
    });
    w.consul.with(|kv| {
        kv.kv.remove(KEY);
        kv.kv.remove(DEPLOYED);
    });
    w.desire("bad-1", 1);
    w.drive().await.expect("drive");
    let d = w.deployed();
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(w.key(), None, "the key is absent again");
    assert_eq!(w.meta("image_tag"), None, "the job is back to no tag");
    assert_eq!(d["tag"], "");
}

/// (g) The key's own value is the last-resort previous tag.
#[tokio::test(start_paused = true)]
async fn a_job_without_meta_is_rolled_back_to_the_keys_tag() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        let mut doc = n.current().clone();
        doc["Meta"] = json!({});
        n.put_version(doc, "image_tag");
    });
    w.consul.with(|kv| {
        kv.put(KEY, b"0.9");
        kv.kv.remove(DEPLOYED);
    });
    w.desire("bad-1", 1);
    w.drive().await.expect("drive");
    w.assert_i1("0.9");
}

/// (g) The job deleted mid-rollout: the key is restored, not left on the
/// failed tag.
#[tokio::test(start_paused = true)]
async fn a_deleted_job_leaves_the_key_restored() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        n.after_write = Some(Box::new(|n, what| {
            if what == "register" {
                n.versions.push(Value::Null);
            }
        }));
    });
    w.desire("bad-5", 1);
    w.drive().await.expect("drive");
    assert_eq!(w.key().as_deref(), Some("1.0"));
    let d = w.deployed();
    assert_eq!(
        (d["outcome"].as_str(), d["tag"].as_str()),
        (Some("rolled_back"), Some("1.0")),
        "{d}"
    );
    assert!(d["detail"].as_str().unwrap().contains("job is gone"), "{d}");
}

/// (g) A revert that loses EnforcePriorVersion (an operator ran the job
/// just then) is planned again, never left half done.
#[tokio::test(start_paused = true)]
async fn a_lost_revert_is_planned_again() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        n.before_revert = Some(Box::new(|n| {
            operator_edit(n);
        }));
    });
    w.desire("bad-3", 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    assert_eq!(w.meta("owner").as_deref(), Some("ops"), "I4");
    assert_eq!(w.deployed()["outcome"], "rolled_back");
    assert_eq!(w.nomad.with(|n| n.reverts.len()), 0, "the revert lost");
}

/// (g) A deployment Nomad garbage-collected is judged by its job
/// version's Stable flag.
#[tokio::test(start_paused = true)]
async fn a_collected_deployment_of_a_stable_version_counts_as_deployed() {
    for (stable, outcome, tag) in [(true, "deployed", "slow-1"), (false, "rolled_back", "1.0")] {
        let w = World::new("1.0");
        w.nomad.with(|n| {
            n.after_write = Some(Box::new(move |n, what| {
                if what == "register" && n.registers.len() == 1 {
                    let (v, _) = n.registers[0];
                    if stable {
                        n.stable(v);
                    }
                    let id = n.deployments.last().unwrap().id.clone();
                    n.collected.push(id);
                }
            }));
        });
        w.desire("slow-1", 1);
        w.drive().await.expect("drive");
        assert_eq!(w.deployed()["outcome"], outcome, "stable = {stable}");
        w.assert_i1(tag);
    }
}

/// A leader resuming a canary deployment runs the verify_url gate only
/// if its predecessor had not promoted yet: promotion was the gate's
/// decision, and a second request (refused here) must not roll back a
/// release that passed it. The unpromoted case shows the gate would
/// refuse.
#[tokio::test(start_paused = true)]
async fn a_resumed_canary_deployment_is_verified_only_if_not_yet_promoted() {
    let refusing = config_with(r#"verify_url = "http://127.0.0.1:9/healthz""#);
    for (promoted, outcome, tag) in [(true, "deployed", "slow-2"), (false, "rolled_back", "1.0")] {
        let w = World::with_config("1.0", refusing.clone());
        let (v, dep) = w.nomad.with(|n| {
            let mut doc = n.current().clone();
            doc["Meta"]["image_tag"] = json!("slow-2");
            let v = n.put_version(doc, "image_tag");
            // As the dead leader left it: the canary healthy, promoted or not.
            let d = n.deployments.last_mut().unwrap();
            let g = d.task_groups.get_mut("web").unwrap();
            g.desired_canaries = 1;
            g.healthy_allocs = 1;
            g.promoted = promoted;
            (v, d.id.clone())
        });
        w.desire("slow-2", 1);
        w.consul.with(|kv| {
            kv.put(KEY, b"slow-2");
            kv.put(
                DEPLOYED,
                &serde_json::to_vec(&json!({
                    "tag": "slow-2", "seq": 1, "at": "x", "outcome": "in_progress",
                    "job_version": v, "deployment": dep, "previous": "1.0",
                    "prior_version": 0, "started": unix_ms()
                }))
                .unwrap(),
            );
        });
        // Nomad finishes a promoted deployment a little later.
        let nomad = w.nomad.clone();
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            nomad.act(|n| {
                let promoted = n.deployments.last().unwrap().task_groups["web"].promoted;
                if promoted {
                    n.finish_latest("successful");
                }
            });
        });
        w.drive().await.expect("drive");
        finisher.abort();
        let d = w.deployed();
        assert_eq!(d["outcome"], outcome, "promoted = {promoted}: {d}");
        w.assert_i1(tag);
    }
}

/// (g) A resumed rollout keeps its deadline: the start time is in the
/// record, so a resume near the end times out soon, not after a fresh
/// `timeout`.
#[tokio::test(start_paused = true)]
async fn a_resumed_rollout_keeps_its_deadline() {
    let w = World::new("1.0");
    let v = w.nomad.with(|n| {
        let mut doc = n.current().clone();
        doc["Meta"]["image_tag"] = json!("slow-9");
        n.put_version(doc, "image_tag")
    });
    let dep = w.nomad.with(|n| n.deployments.last().unwrap().id.clone());
    let started = unix_ms() - (180_000 - 2_000);
    w.desire("slow-9", 1);
    w.consul.with(|kv| {
        kv.put(KEY, b"slow-9");
        kv.put(
            DEPLOYED,
            &serde_json::to_vec(&json!({
                "tag": "slow-9", "seq": 1, "at": "x", "outcome": "in_progress",
                "job_version": v, "deployment": dep, "previous": "1.0",
                "prior_version": 0, "started": started
            }))
            .unwrap(),
        );
    });
    let t0 = tokio::time::Instant::now();
    w.drive().await.expect("drive");
    let d = w.deployed();
    assert!(d["detail"].as_str().unwrap().contains("timed out"), "{d}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "timed out at the persisted deadline, not a fresh 3 minutes: {:?}",
        t0.elapsed()
    );
    w.assert_i1("1.0");
}

/// I3: a dead leader registered the tag but never recorded the version,
/// and someone reverted the job since. The next leader adopts that
/// version instead of registering the tag again.
#[tokio::test(start_paused = true)]
async fn a_resumed_rollout_adopts_the_version_a_dead_leader_registered() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        let mut doc = n.current().clone();
        doc["Meta"]["image_tag"] = json!("1.1");
        n.put_version(doc, "image_tag");
        let back = n.versions[0].clone();
        n.put_version(back, "image_tag");
    });
    w.desire("1.1", 1);
    w.consul.with(|kv| {
        kv.put(KEY, b"1.1");
        kv.put(
            DEPLOYED,
            &serde_json::to_vec(&json!({
                "tag": "1.1", "seq": 1, "at": "x", "outcome": "in_progress",
                "previous": "1.0", "prior_version": 0
            }))
            .unwrap(),
        );
    });
    w.drive().await.expect("drive");
    assert_eq!(w.registers_of("1.1"), 0, "never registered a second time");
    w.assert_i1("1.0");
}

/// (i) Nomad unreachable mid-rollout: waited out, never a failure; the
/// outcome Nomad reached meanwhile is recorded within 1 s of it
/// answering again.
#[tokio::test(start_paused = true)]
async fn a_nomad_outage_is_waited_out_and_the_outcome_recorded_within_a_second() {
    let w = Arc::new(World::new("1.0"));
    w.desire("slow-2", 1);
    let driver = {
        let w = w.clone();
        tokio::spawn(async move { w.drive().await })
    };
    for _ in 0..100 {
        if w.consul
            .with(|kv| kv.json(DEPLOYED))
            .is_some_and(|d| d["deployment"].is_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.nomad.set_down(true);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(w.deployed()["outcome"], "in_progress", "still waiting");
    w.nomad.with(|n| n.finish_latest("successful"));
    w.nomad.set_down(false);
    let back = tokio::time::Instant::now();
    driver.await.unwrap().expect("drive");
    assert!(
        back.elapsed() <= Duration::from_secs(1),
        "recorded {:?} after Nomad answered",
        back.elapsed()
    );
    w.assert_i1("slow-2");
    assert_eq!(w.deployed()["outcome"], "deployed");
}

/// (i) Consul unreachable when the outcome is to be recorded: waited out.
#[tokio::test(start_paused = true)]
async fn a_consul_outage_is_waited_out() {
    let w = Arc::new(World::new("1.0"));
    w.desire("slow-3", 1);
    let driver = {
        let w = w.clone();
        tokio::spawn(async move { w.drive().await })
    };
    for _ in 0..100 {
        if w.consul
            .with(|kv| kv.json(DEPLOYED))
            .is_some_and(|d| d["deployment"].is_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.consul
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    w.nomad.with(|n| n.finish_latest("successful"));
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(!driver.is_finished(), "waiting, not failed");
    w.consul
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    driver.await.unwrap().expect("drive");
    w.assert_i1("slow-3");
}

/// (g) A term that ends while the register is being prepared sends
/// nothing to Nomad: cancellation is checked right before the write.
#[tokio::test(start_paused = true)]
async fn a_register_is_not_sent_once_the_term_ended() {
    let mut w = World::new("1.0");
    let cancel = w.ctx.cancel.clone();
    w.ctx.before_register = Some(Arc::new(move |_| {
        let cancel = cancel.clone();
        Box::pin(async move { cancel.cancel() })
    }));
    w.desire("1.1", 1);
    let err = w.drive().await.expect_err("stopped");
    assert!(matches!(err, RolloutError::Cancelled), "{err}");
    assert_eq!(w.registers_of("1.1"), 0, "nothing reached Nomad");
    assert_eq!(
        w.deployed()["outcome"],
        "in_progress",
        "the next leader resumes"
    );
}

/// An operator runs the job again (or scales it) during a healthy
/// rollout: their version still names our tag, so the rollout follows its
/// deployment instead of rolling back a good tag.
#[tokio::test(start_paused = true)]
async fn an_operator_rerun_during_a_healthy_rollout_is_followed_not_rolled_back() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        n.health = |t| {
            if t == "1.1" {
                Health::Pending
            } else {
                Health::Healthy
            }
        };
        n.after_write = Some(Box::new(|n, what| {
            if what == "register" && n.registers.len() == 1 {
                n.health = |_| Health::Healthy;
                operator_edit(n);
            }
        }));
    });
    w.desire("1.1", 1);
    w.drive().await.expect("drive");
    let d = w.deployed();
    assert_eq!(d["outcome"], "deployed", "{d}");
    assert_eq!(
        d["job_version"], 2,
        "the operator's version carries the tag"
    );
    w.assert_i1("1.1");
    assert_eq!(w.meta("owner").as_deref(), Some("ops"));
    assert_eq!(w.registers_of("1.1"), 1, "I3");
}

/// Found by the soak: an operator runs the job again while the rollback's
/// revert is deploying. Nomad cancels the revert's deployment, but their
/// version names the restored tag, so the rollback follows their
/// deployment and records `rolled_back` (I1), instead of recording the
/// rollback as failed with the failed tag in the record while the key and
/// the job name the restored one.
#[tokio::test(start_paused = true)]
async fn an_operator_rerun_during_the_rollbacks_revert_is_followed() {
    let w = World::new("1.0");
    w.nomad.with(|n| {
        n.health = |t| match t {
            "1.0" => Health::Pending,
            _ => Health::Unhealthy,
        };
    });
    let nomad = w.nomad.clone();
    let operator = tokio::spawn(async move {
        // Once the revert is out and being watched: bounded, virtual time.
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if nomad.with(|n| !n.reverts.is_empty()) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                nomad.act(|n| {
                    n.health = |_| Health::Healthy;
                    operator_edit(n);
                });
                return true;
            }
        }
        false
    });
    w.desire("bad-3", 1);
    w.drive().await.expect("drive");
    assert!(operator.await.expect("operator"), "the revert happened");
    let d = w.deployed();
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(
        d["job_version"], 3,
        "the operator's version, on top of the revert: {d}"
    );
    w.assert_i1("1.0");
    assert_eq!(w.meta("owner").as_deref(), Some("ops"), "I4");
    assert_eq!(
        w.nomad.with(|n| n.reverts.clone()),
        [(0, 1)],
        "reverted once"
    );
}

#[test]
fn a_verify_url_in_a_reason_loses_its_userinfo_and_query() {
    assert_eq!(
        super::redact_url("https://user:pw@web.internal:8443/healthz?token=s3cret#x"),
        "https://web.internal:8443/healthz"
    );
    assert_eq!(
        super::redact_url("http://web.service.consul:8080"),
        "http://web.service.consul:8080"
    );
    assert_eq!(super::redact_url("nonsense"), "<url>");
}

// ------------------------------------------------- digest_key (issue 11)

const DIGEST_KEY: &str = "configs/web/IMAGE_DIGEST";
const D0: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// [`World::new`] for a service with a `digest_key`: the key holds `tag`,
/// the digest key `digest`, and the job's meta names both.
fn digest_world(tag: &str, digest: &str) -> World {
    let mut cfg = (*config()).clone();
    cfg.services[0].digest_key = Some(DIGEST_KEY.into());
    let cfg = Arc::new(cfg);
    let mut w = World::new(tag);
    w.ctx = crate::clients::rollout_context(&cfg).expect("context");
    w.consul.with(|kv| kv.put(DIGEST_KEY, digest.as_bytes()));
    w.nomad.with(|n| {
        let mut doc = n.current().clone();
        doc["Meta"]["image_tag_digest"] = json!(digest);
        n.put_version(doc, "image_tag");
    });
    w
}

impl World {
    fn desire_digest(&self, tag: &str, digest: Option<&str>, seq: u64) {
        self.consul.with(|kv| {
            let rec = json!({"tag": tag, "digest": digest, "seq": seq, "at": "x"});
            kv.put(DESIRED, &serde_json::to_vec(&rec).unwrap());
        });
    }

    fn digest_key(&self) -> Option<String> {
        self.consul.with(|kv| kv.get(DIGEST_KEY))
    }
}

/// The digest travels with the tag: the key, the digest key and the job's
/// `<meta_key>_digest` name the new tag's digest once it is deployed.
#[tokio::test(start_paused = true)]
async fn a_deployed_tag_moves_the_digest_key_and_the_digest_meta_with_it() {
    let w = digest_world("1.0", D0);
    w.desire_digest("1.1", Some(D1), 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.1");
    assert_eq!(w.digest_key().as_deref(), Some(D1));
    assert_eq!(w.meta("image_tag_digest").as_deref(), Some(D1));
    assert_eq!(w.deployed()["digest"], D1);

    // A tag without a known digest takes the digest key and meta away.
    w.desire_digest("1.2", None, 2);
    w.drive().await.expect("drive");
    w.assert_i1("1.2");
    assert_eq!(w.digest_key(), None);
    assert_eq!(w.meta("image_tag_digest"), None);
}

/// A rollback restores the digest key together with the tag (captured at
/// the rollout's start), and the final record names the restored digest.
#[tokio::test(start_paused = true)]
async fn a_rollback_restores_the_digest_key_with_the_tag() {
    let w = digest_world("1.0", D0);
    // Written with the key at the rollout's start, in one transaction.
    w.consul.with(|kv| {
        kv.before_txn = Some(Box::new(|_, ops| {
            let sets = |k: &str| {
                ops.iter().any(
                    |op| matches!(op, crate::clients::consul::TxnOp::Cas { key, .. } if key == k),
                )
            };
            if sets(KEY) {
                assert!(
                    sets(DIGEST_KEY),
                    "the digest key moves with the key: {ops:?}"
                );
            }
        }));
    });
    w.desire_digest("bad-1", Some(D1), 1);
    w.drive().await.expect("drive");
    w.assert_i1("1.0");
    let d = w.deployed();
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(w.digest_key().as_deref(), Some(D0), "restored");
    assert_eq!(d["digest"], D0, "{d}");
    assert_eq!(w.meta("image_tag_digest").as_deref(), Some(D0));
}

/// A digest key that does not sit beside the rollback target's tag (the
/// key named another tag when the rollout started) is never restored:
/// the rollback deletes it instead.
#[tokio::test(start_paused = true)]
async fn a_digest_of_another_tag_is_not_restored() {
    let w = digest_world("1.0", D0);
    // The key was changed by hand after the job's meta last moved.
    w.consul.with(|kv| kv.put(KEY, b"0.9"));
    w.nomad.with(|n| {
        let mut doc = n.current().clone();
        doc["Meta"]
            .as_object_mut()
            .unwrap()
            .remove("image_tag_digest");
        n.put_version(doc, "image_tag");
    });
    w.desire_digest("bad-1", Some(D1), 1);
    w.drive().await.expect("drive");
    let d = w.deployed();
    assert_eq!(d["outcome"], "rolled_back", "{d}");
    assert_eq!(w.key().as_deref(), Some("1.0"));
    assert_eq!(w.digest_key(), None, "no digest known for 1.0");
    assert_eq!(d["digest"], Value::Null);
}

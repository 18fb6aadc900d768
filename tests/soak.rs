//! A randomized soak of rollouts under races and faults (issue 9), run by
//! `scripts/soak.sh`, never by a plain `cargo test` (the test is ignored).
//!
//! Why it exists: the rollout tests stage one race each; this one lets
//! them overlap for minutes and then checks the invariants I1–I5
//! (docs/rollouts.md, "Invariants") from what Consul and Nomad show, not
//! from what tagbridge says about itself. Two `tagbridge serve` replicas (the binary
//! `TAGBRIDGE_SOAK_BIN` names, the release build under soak.sh), a
//! durable Consul server, a Nomad server and a separate client with data
//! dirs, and several template-strategy services running the example job.
//! Meanwhile: signed webhooks at random intervals to random replicas (some
//! tags fail their health check), leader kills (SIGKILL, restarted after a
//! while), Consul and Nomad server restarts, and operator edits (the job
//! run again with an edited meta key or count, as `nomad job run
//! -check-index` does). At the end it waits for quiet and checks:
//!
//! * I1: per service, the key, each job's meta and the deployed record
//!   name the same tag, and every running allocation of each job runs the
//!   job's version and answers with that tag.
//! * I2: no change of the key seen by a watcher was written in ingest's
//!   transaction (its ModifyIndex is never a desired record's or a history
//!   entry's), and each names what the deployed record says: the tag being
//!   rolled out or the one a rollback restores.
//! * I3: per job and tag, the job versions that switched the meta to it
//!   are at most its attempts (one rollout, plus one per rollback to it).
//! * I4: the last operator edit of each job (meta key, count) survives.
//! * I5: every acknowledged webhook is in the history, the newest
//!   acknowledged tag is the desired one, and the key moved backwards
//!   under the (numeric) order only when a rollback restored it.
//!
//! Knobs (environment): `TAGBRIDGE_SOAK_SECS` (default 600),
//! `TAGBRIDGE_SOAK_SEED`, `TAGBRIDGE_SOAK_SERVICES` (default 3),
//! `TAGBRIDGE_SOAK_WORKERS=1` (every service also runs `<svc>-worker`, one
//! allocation, same key, and rolls `jobs = ["<svc>", "<svc>-worker"]`;
//! failing tags are `bad-all-N`, failing on both jobs, or `bad-w-N`,
//! failing only on the worker, so rollbacks come both before and after
//! the first job rolled),
//! `TAGBRIDGE_SOAK_LOGS` (a directory kept for the replicas' logs and, at
//! the end, every job version seen, `versions.txt`, and each service's
//! history, `history-<svc>.json`),
//! `TAGBRIDGE_SOAK_BIN` (default: the debug build).
//! Every loop is bounded by the soak's duration or a limit of its own.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const SIGNING: &str = "soak-signing-key";
/// Allocations of a service's main job.
const COUNT: u64 = 2;
/// Allocations of a worker job (one: the machine has two shared cores).
const WORKER_COUNT: u64 = 1;
/// Suffix of a service's second job under `TAGBRIDGE_SOAK_WORKERS=1`.
const WORKER: &str = "-worker";

/// The jobs a service rolls, in its rollout block's order.
fn jobs_of(svc: &str, workers: bool) -> Vec<String> {
    let mut jobs = vec![svc.to_string()];
    if workers {
        jobs.push(format!("{svc}{WORKER}"));
    }
    jobs
}

/// The count a job starts with (an operator scale toggles from it).
fn base_count(job: &str) -> u64 {
    match job.ends_with(WORKER) {
        true => WORKER_COUNT,
        false => COUNT,
    }
}

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A duration uniformly in `[lo, hi)` seconds (millisecond steps).
    fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo * 1000 + self.below((hi - lo) * 1000))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The number in a soak tag (`ok-17`, `bad-18`, `bad-w-19`): its place in
/// the order.
fn num(tag: &str) -> u64 {
    tag.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One KV entry: decoded value and ModifyIndex; `Ok(None)` when absent.
fn kv_entry(consul: &str, key: &str) -> Result<Option<(String, u64)>, String> {
    match blocking_get_status(&format!("{consul}/v1/kv/{key}")) {
        Ok((404, _)) => Ok(None),
        Ok((200, body)) => {
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            Ok(entry_of(&v[0]))
        }
        Ok((status, body)) => Err(format!("{status} {body}")),
        Err(e) => Err(e.to_string()),
    }
}

fn entry_of(e: &Value) -> Option<(String, u64)> {
    let raw = e["Value"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap_or_default();
    Some((
        String::from_utf8_lossy(&bytes).trim().to_string(),
        e["ModifyIndex"].as_u64()?,
    ))
}

fn json_entry(consul: &str, key: &str) -> Option<(Value, u64)> {
    let (text, index) = kv_entry(consul, key).ok()??;
    Some((serde_json::from_str(&text).ok()?, index))
}

/// A change of a service's key, as the watcher saw it, with the deployed
/// and desired records read right after (their indexes only grow, so a
/// key index above the deployed one proves a write without it).
#[derive(Debug, Clone)]
struct KeyChange {
    svc: String,
    value: String,
    key_index: u64,
    deployed: Option<(Value, u64)>,
    desired_index: u64,
    baseline: bool,
}

/// Watch `configs/` with blocking queries until `stop` (or `until`, a
/// backstop); record every change of a service key.
fn watch_keys(
    consul: String,
    services: Vec<String>,
    stop: Arc<AtomicBool>,
    until: Instant,
) -> Vec<KeyChange> {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::new();
    let mut index = 0u64;
    // Bounded by `stop`, which the soak sets before it returns, and `until`.
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        let url = format!("{consul}/v1/kv/configs/?recurse&index={index}&wait=5s");
        let entries: Vec<Value> = match blocking_get_status(&url) {
            Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
            _ => {
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        };
        for e in &entries {
            let key = e["Key"].as_str().unwrap_or_default();
            let Some(svc) = services
                .iter()
                .find(|s| key == format!("configs/{s}/IMAGE_TAG"))
            else {
                continue;
            };
            let Some((value, key_index)) = entry_of(e) else {
                continue;
            };
            index = index.max(key_index);
            if seen.get(svc) == Some(&key_index) {
                continue;
            }
            let baseline = !seen.contains_key(svc);
            seen.insert(svc.clone(), key_index);
            out.push(KeyChange {
                svc: svc.clone(),
                value,
                key_index,
                deployed: json_entry(&consul, &format!("tagbridge/deployed/{svc}")),
                desired_index: kv_entry(&consul, &format!("tagbridge/desired/{svc}"))
                    .ok()
                    .flatten()
                    .map_or(0, |(_, i)| i),
                baseline,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

/// One job version as the versions watcher saw it (the fields after the
/// tag are kept for the dump that explains a finding, see [`dump`]).
#[derive(Debug, Clone)]
struct Version {
    tag: String,
    /// The operator's mark (`soak_edit` meta), if any.
    edit: String,
    count: u64,
    job_modify_index: u64,
}

/// Poll every job's versions (Nomad keeps only the last few, so poll
/// often) until `stop` (or `until`, a backstop); every version ever seen,
/// per job.
fn watch_versions(
    nomad: String,
    jobs: Vec<String>,
    stop: Arc<AtomicBool>,
    until: Instant,
) -> HashMap<String, BTreeMap<u64, Version>> {
    let mut out: HashMap<String, BTreeMap<u64, Version>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        for job_id in &jobs {
            let url = format!("{nomad}/v1/job/{job_id}/versions");
            let Ok((200, body)) = blocking_get_status(&url) else {
                continue;
            };
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            for job in v["Versions"].as_array().into_iter().flatten() {
                let Some(n) = job["Version"].as_u64() else {
                    continue;
                };
                out.entry(job_id.clone()).or_default().insert(
                    n,
                    Version {
                        tag: job["Meta"]["image_tag"].as_str().unwrap_or_default().into(),
                        edit: job["Meta"]["soak_edit"].as_str().unwrap_or_default().into(),
                        count: job["TaskGroups"][0]["Count"].as_u64().unwrap_or(0),
                        job_modify_index: job["JobModifyIndex"].as_u64().unwrap_or(0),
                    },
                );
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    out
}

/// One webhook and what the replica answered.
#[derive(Debug, Clone)]
struct Sent {
    svc: String,
    tag: String,
    /// HTTP status; `None` when no answer came (refused, reset, timeout).
    status: Option<u16>,
    reason: String,
}

impl Sent {
    fn acked(&self) -> bool {
        matches!(self.status, Some(200 | 202))
    }
}

/// What the operator did last to a job (I4 expects it to survive).
#[derive(Debug, Clone, Default)]
struct Edits {
    meta: Option<String>,
    count: Option<u64>,
}

/// A tagbridge replica slot: running, or dead until `restart_at`.
struct Replica {
    name: &'static str,
    proc: Option<Serving>,
    restart_at: Option<Instant>,
    starts: u32,
}

struct Soak {
    consul: ConsulAgent,
    nomad: NomadAgent,
    server: NomadServer,
    _tls: TestTls,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    cfg: PathBuf,
    logs: PathBuf,
    services: Vec<String>,
    /// Whether every service also rolls `<svc>-worker`.
    workers: bool,
    replicas: Vec<Replica>,
    rng: Rng,
    next_tag: u64,
    sent: Vec<Sent>,
    /// Per job.
    edits: HashMap<String, Edits>,
    faults: BTreeMap<&'static str, u32>,
    /// Leader kills while a rollout or rollback had already rolled or
    /// reverted one job of several (the record's `done` not empty).
    kills_between_jobs: u32,
    started: Instant,
    _dir: TempDir,
}

/// The soak's configuration: every service signed `generic`, numeric tag
/// order, a long history, rolling its job(s) with the template strategy.
fn config(
    s: &[String],
    workers: bool,
    consul: &str,
    nomad: &str,
    tls: &TestTls,
    signing: &Path,
) -> String {
    let mut cfg = TbConfig::new()
        .admin_listen("127.0.0.1:0")
        .log_format("json")
        .tls(tls)
        .consul(consul)
        .nomad(nomad);
    for svc in s {
        let jobs = match workers {
            true => format!("jobs     = {:?}", jobs_of(svc, true)),
            false => format!("job      = \"{svc}\""),
        };
        cfg = cfg.service(
            Service::new(svc, "generic")
                .signing_file(signing)
                .line("history_keep        = 10000")
                .line("tags {\n    order = \"numeric\"\n  }")
                .rollout(&[
                    jobs.as_str(),
                    "strategy = \"template\"",
                    "timeout  = \"4m\"",
                ]),
        );
    }
    cfg.render()
}

impl Soak {
    /// The cluster, the jobs running `ok-0`, the config and both replicas
    /// (one straight sequence, hence its length).
    fn start(seed: u64, n: usize, workers: bool) -> Self {
        let Cluster {
            consul,
            nomad,
            server,
            dir,
            tls,
            ..
        } = Cluster::options("soak")
            .durable_consul()
            .split_nomad()
            .start();
        let (nomad, server) = (nomad.expect("nomad"), server.expect("nomad server"));
        let services: Vec<String> = (0..n).map(|i| format!("svc{i}")).collect();
        let testsvc = testsvc_bin();
        for svc in &services {
            let key = format!("configs/{svc}/IMAGE_TAG");
            consul.put(&key, "ok-0");
            for job_id in jobs_of(svc, workers) {
                let mut job = nomad.parse_job(
                    &job_file("web-template"),
                    &[
                        ("testsvc", testsvc.to_str().unwrap()),
                        ("count", &base_count(&job_id).to_string()),
                        ("job_name", &job_id),
                        ("tag_key", &key),
                        // A loaded 2-core machine starts instances slowly;
                        // bad tags still fail at this deadline.
                        ("healthy_deadline", "30s"),
                        ("progress_deadline", "3m"),
                    ],
                );
                job["Meta"]["image_tag"] = json!("ok-0");
                if workers && job_id == *svc {
                    // The worker keeps testsvc's default (`bad` fails);
                    // the main job runs `bad-w-N` healthily.
                    job["TaskGroups"][0]["Tasks"][0]["Env"]["BAD_PREFIX"] = json!("bad-all");
                }
                nomad.register(&job);
            }
        }
        for job_id in services.iter().flat_map(|s| jobs_of(s, workers)) {
            let d = nomad.wait_deployment_terminal(&job_id, Duration::from_secs(180));
            assert_eq!(
                d["Status"], "successful",
                "initial deployment of {job_id}: {d}"
            );
        }
        let signing = dir.write("signing.key", SIGNING);
        let text = config(
            &services,
            workers,
            &consul.addr(),
            &nomad.addr(),
            &tls,
            &signing,
        );
        let cfg = dir.write("tagbridge.hcl", text);
        let logs = std::env::var_os("TAGBRIDGE_SOAK_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.path().to_path_buf());
        std::fs::create_dir_all(&logs).expect("logs dir");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let client = {
            let _g = rt.enter();
            tls.client()
        };
        let mut soak = Soak {
            consul,
            nomad,
            server,
            _tls: tls,
            rt,
            client,
            cfg,
            logs,
            services,
            workers,
            replicas: ["a", "b"]
                .into_iter()
                .map(|name| Replica {
                    name,
                    proc: None,
                    restart_at: None,
                    starts: 0,
                })
                .collect(),
            rng: Rng(seed | 1),
            next_tag: 1,
            sent: Vec::new(),
            edits: HashMap::new(),
            faults: BTreeMap::new(),
            kills_between_jobs: 0,
            started: Instant::now(),
            _dir: dir,
        };
        for i in 0..soak.replicas.len() {
            soak.launch(i);
        }
        soak
    }

    fn jobs(&self, svc: &str) -> Vec<String> {
        jobs_of(svc, self.workers)
    }

    fn all_jobs(&self) -> Vec<String> {
        self.services.iter().flat_map(|s| self.jobs(s)).collect()
    }

    /// Services whose rollout (or its rollback) is under way with a job
    /// already rolled: a leader killed now dies between jobs.
    fn between_jobs(&self) -> Vec<String> {
        let consul = self.consul.addr();
        self.services
            .iter()
            .filter_map(|svc| {
                let (d, _) = json_entry(&consul, &format!("tagbridge/deployed/{svc}"))?;
                let outcome = d["outcome"].as_str()?;
                let busy = matches!(outcome, "in_progress" | "rolling_back");
                let done = d["done"].as_array().is_some_and(|a| !a.is_empty());
                (busy && done).then(|| format!("{svc} {outcome} {}", d["tag"]))
            })
            .collect()
    }

    fn say(&self, what: &str) {
        eprintln!(
            "[soak {:>6.1}s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn launch(&mut self, i: usize) {
        let r = &mut self.replicas[i];
        let log = self.logs.join(format!("{}-{}.log", r.name, r.starts));
        r.starts += 1;
        let envs = [("TAGBRIDGE_LOG", "info".to_string())];
        r.proc = Some(Serving::start(&self.cfg, &envs, log));
        r.restart_at = None;
    }

    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// The replica holding the leader lock (by the pid in its value).
    fn leader(&self) -> Option<usize> {
        let (holder, _) = kv_entry(&self.consul.addr(), "tagbridge/leader").ok()??;
        let pid = serde_json::from_str::<Value>(&holder).ok()?["pid"].as_u64()?;
        self.replicas
            .iter()
            .position(|r| r.proc.as_ref().is_some_and(|p| u64::from(p.pid()) == pid))
    }

    /// SIGKILL the leader (or, now and then, the other replica); it comes
    /// back after 0–8 s.
    fn kill_replica(&mut self) {
        let leader = self.leader();
        let (victim, kind) = match leader {
            Some(l) if !self.rng.chance(25) => (l, "leader_kill"),
            Some(l) => (1 - l, "follower_kill"),
            None => (self.rng.below(2) as usize, "replica_kill_no_leader"),
        };
        let back_in = self.rng.secs(0, 8);
        let between = match kind == "leader_kill" && self.workers {
            true => self.between_jobs(),
            false => Vec::new(),
        };
        let r = &mut self.replicas[victim];
        let Some(p) = r.proc.as_mut() else { return };
        p.kill9();
        r.proc = None;
        r.restart_at = Some(Instant::now() + back_in);
        let name = r.name;
        self.fault(kind);
        let mut note = String::new();
        if !between.is_empty() {
            self.kills_between_jobs += 1;
            note = format!(" (between jobs: {})", between.join(", "));
        }
        self.say(&format!(
            "{kind}: replica {name} SIGKILLed, back in {back_in:?}{note}"
        ));
    }

    fn restart_due_replicas(&mut self) {
        for i in 0..self.replicas.len() {
            if self.replicas[i]
                .restart_at
                .is_some_and(|at| Instant::now() >= at)
            {
                self.launch(i);
                let name = self.replicas[i].name;
                self.say(&format!("replica {name} restarted"));
            }
        }
    }

    /// Consul down for 1–4 s; a webhook sent meanwhile must be refused,
    /// or, if it lands before the stop, kept (I5).
    fn restart_consul(&mut self) {
        let down = self.rng.secs(1, 4);
        self.say(&format!("consul_restart: down for {down:?}"));
        let during = self.send_webhooks(Duration::from_millis(500));
        self.consul.restart_durable(down);
        self.collect(during);
        self.fault("consul_restart");
    }

    fn restart_nomad(&mut self) {
        let down = self.rng.secs(1, 4);
        self.say(&format!("nomad_server_restart: down for {down:?}"));
        self.server.stop();
        std::thread::sleep(down);
        self.server.start();
        self.fault("nomad_server_restart");
    }

    /// An operator runs the job again with one change, under
    /// `-check-index` (EnforceIndex): a lost race is re-read, never
    /// overwritten, as an operator following the docs would.
    fn operator_edit(&mut self) {
        let jobs = self.all_jobs();
        let job_id = jobs[self.rng.below(jobs.len() as u64) as usize].clone();
        let scale = self.rng.chance(40);
        let mark = format!("edit-{}", self.rng.below(1_000_000));
        let base = base_count(&job_id);
        for _ in 0..5 {
            let Ok((200, mut job)) = self.nomad.api("GET", &format!("/v1/job/{job_id}"), None)
            else {
                return;
            };
            let index = job["JobModifyIndex"].as_u64().unwrap_or(0);
            let count = job["TaskGroups"][0]["Count"].as_u64().unwrap_or(base);
            let new_count = if count == base { base + 1 } else { base };
            if scale {
                job["TaskGroups"][0]["Count"] = json!(new_count);
            } else {
                job["Meta"]["soak_edit"] = json!(mark);
            }
            let body = json!({"Job": job, "EnforceIndex": true, "JobModifyIndex": index});
            match self.nomad.api("POST", "/v1/jobs", Some(&body)) {
                Ok((200, _)) => {
                    let e = self.edits.entry(job_id.clone()).or_default();
                    let kind = if scale {
                        e.count = Some(new_count);
                        "operator_scale"
                    } else {
                        e.meta = Some(mark.clone());
                        "operator_meta_edit"
                    };
                    self.fault(kind);
                    let what = match scale {
                        true => format!("count {count} -> {new_count}"),
                        false => format!("meta soak_edit = {mark}"),
                    };
                    self.say(&format!("{kind}: {job_id} ({what})"));
                    return;
                }
                Ok((_, b)) if b.to_string().contains("modify index") => continue,
                other => {
                    self.say(&format!("operator edit of {job_id} refused: {other:?}"));
                    return;
                }
            }
        }
    }

    /// Webhooks for one service: one, or now and then two newer tags at
    /// once to both replicas (they may land in either order).
    fn webhooks(&mut self) {
        let pending = self.send_webhooks(Duration::ZERO);
        self.collect(pending);
    }

    /// Spawn the webhooks of [`Self::webhooks`], sent after `delay`; each
    /// is bounded by the client's 30 s timeout.
    fn send_webhooks(&mut self, delay: Duration) -> Vec<Pending> {
        let svc = self.services[self.rng.below(self.services.len() as u64) as usize].clone();
        let live: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|r| Some(r.proc.as_ref()?.url("")))
            .collect();
        if live.is_empty() {
            return Vec::new();
        }
        let (secret, _) = secret_pair(&svc);
        let n = if self.rng.chance(20) { 2 } else { 1 };
        let first = self.rng.below(live.len() as u64) as usize;
        let mut out = Vec::new();
        for k in 0..n {
            let kind = match (self.rng.chance(30), self.workers) {
                (false, _) => "ok",
                (true, false) => "bad",
                (true, true) if self.rng.chance(50) => "bad-all",
                (true, true) => "bad-w",
            };
            let tag = format!("{kind}-{}", self.next_tag);
            self.next_tag += 1;
            let base = &live[(first + k) % live.len()];
            let body = json!({"repository": format!("acme/{svc}"), "tag": tag}).to_string();
            let req = self
                .client
                .post(format!("{base}/hooks/{secret}"))
                .header(
                    "X-Hub-Signature-256",
                    hub_sig(SIGNING.as_bytes(), body.as_bytes()),
                )
                .body(body);
            let handle = self.rt.spawn(async move {
                tokio::time::sleep(delay).await;
                match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        (Some(status), v["reason"].as_str().unwrap_or("").to_string())
                    }
                    Err(e) => (None, e.to_string()),
                }
            });
            out.push((svc.clone(), tag, handle));
        }
        out
    }

    /// Wait for spawned webhooks and record their answers.
    fn collect(&mut self, pending: Vec<Pending>) {
        for (svc, tag, h) in pending {
            let (status, reason) = self.rt.block_on(h).unwrap_or((None, "task failed".into()));
            self.sent.push(Sent {
                svc,
                tag,
                status,
                reason,
            });
        }
    }
}

/// A webhook on its way: service, tag, and the task sending it.
type Pending = (
    String,
    String,
    tokio::task::JoinHandle<(Option<u16>, String)>,
);

/// The kinds of action, each on its own random timer: (name, min s, max s).
const ACTIONS: [(&str, u64, u64); 5] = [
    ("webhook", 1, 6),
    ("replica_kill", 40, 90),
    ("operator_edit", 25, 60),
    ("consul_restart", 90, 180),
    ("nomad_server_restart", 120, 240),
];

impl Soak {
    /// Actions until `until`, one at a time (a restart blocks the others,
    /// as it would an operator).
    fn run(&mut self, until: Instant) {
        let mut due: Vec<Instant> = ACTIONS
            .iter()
            .map(|(name, lo, hi)| match *name {
                "webhook" => Instant::now(),
                _ => Instant::now() + self.rng.secs(*lo, *hi),
            })
            .collect();
        let mut progress = Instant::now();
        while Instant::now() < until {
            self.restart_due_replicas();
            let (i, at) = due
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(_, at)| *at)
                .expect("actions");
            let now = Instant::now();
            if at > now {
                std::thread::sleep((at - now).min(Duration::from_millis(500)));
                continue;
            }
            match ACTIONS[i].0 {
                "webhook" => self.webhooks(),
                "replica_kill" => self.kill_replica(),
                "operator_edit" => self.operator_edit(),
                "consul_restart" => self.restart_consul(),
                _ => self.restart_nomad(),
            }
            let (_, lo, hi) = ACTIONS[i];
            due[i] = Instant::now() + self.rng.secs(lo, hi);
            if progress.elapsed() >= Duration::from_secs(60) {
                progress = Instant::now();
                let acked = self.sent.iter().filter(|s| s.acked()).count();
                let between = match self.workers {
                    true => format!(", leader kills between jobs {}", self.kills_between_jobs),
                    false => String::new(),
                };
                self.say(&format!(
                    "progress: {} webhooks ({acked} acknowledged), faults {:?}{between}",
                    self.sent.len(),
                    self.faults
                ));
            }
        }
    }

    /// Whether one service is quiet: no rollout in flight or due, and for
    /// each of its jobs Nomad's latest deployment over, every allocation of
    /// the count running.
    fn quiet(&self, svc: &str) -> Result<(), String> {
        let consul = self.consul.addr();
        let desired = json_entry(&consul, &format!("tagbridge/desired/{svc}"));
        let deployed = json_entry(&consul, &format!("tagbridge/deployed/{svc}"));
        if let Some((want, _)) = &desired {
            let Some((d, _)) = &deployed else {
                return Err("no deployed record yet".into());
            };
            let busy = matches!(d["outcome"].as_str(), Some("in_progress" | "rolling_back"));
            if busy || d["seq"].as_u64() < want["seq"].as_u64() {
                return Err(format!("deployed {d} for desired {want}"));
            }
        }
        self.jobs(svc).iter().try_for_each(|j| self.job_quiet(j))
    }

    fn job_quiet(&self, job_id: &str) -> Result<(), String> {
        let Ok((200, job)) = self.nomad.api("GET", &format!("/v1/job/{job_id}"), None) else {
            return Err(format!("{job_id}: nomad unreachable"));
        };
        if let Ok((200, d)) = self
            .nomad
            .api("GET", &format!("/v1/job/{job_id}/deployment"), None)
        {
            let status = d["Status"].as_str().unwrap_or_default();
            if !d.is_null() && !TERMINAL_DEPLOYMENT.contains(&status) {
                return Err(format!("{job_id}: deployment {status}"));
            }
        }
        let allocs = self.nomad.allocations(job_id);
        let running = live_allocs(&allocs);
        let count = job["TaskGroups"][0]["Count"].as_u64().unwrap_or(0);
        if running.len() as u64 != count {
            return Err(format!(
                "{job_id}: {} of {count} allocations running",
                running.len()
            ));
        }
        Ok(())
    }

    /// Restart every dead replica, then wait (bounded) until every service
    /// is quiet twice in a row, 3 s apart.
    fn settle(&mut self, limit: Duration) -> Result<(), String> {
        for i in 0..self.replicas.len() {
            if self.replicas[i].proc.is_none() {
                self.launch(i);
            }
        }
        let start = Instant::now();
        let mut streak = 0;
        let mut last = String::new();
        while start.elapsed() < limit {
            let not_quiet: Vec<String> = self
                .services
                .iter()
                .filter_map(|s| self.quiet(s).err().map(|e| format!("{s}: {e}")))
                .collect();
            if not_quiet.is_empty() {
                streak += 1;
                if streak == 2 {
                    self.say(&format!("quiet after {:?}", start.elapsed()));
                    return Ok(());
                }
            } else {
                streak = 0;
                last = not_quiet.join("; ");
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        Err(format!("not quiet within {limit:?}: {last}"))
    }
}

/// Allocations that run now and are meant to (client running, desired run).
fn live_allocs(allocs: &[Value]) -> Vec<&Value> {
    allocs
        .iter()
        .filter(|a| a["ClientStatus"] == "running" && a["DesiredStatus"] == "run")
        .collect()
}

/// What the soak found: its counts and every invariant violation.
#[derive(Default)]
struct Report {
    violations: Vec<String>,
    deployed: usize,
    rolled_back: usize,
    healthy_rolled_back: usize,
    /// Why each healthy tag was rolled back: `svc tag: reason`.
    healthy_reasons: Vec<String>,
    failed: usize,
    /// Rollbacks that reverted only the first job (it failed) and those
    /// that also reverted a job already rolled (a later one failed).
    rolled_back_first_only: usize,
    rolled_back_after_rolled: usize,
    older: usize,
    registrations: usize,
    key_changes: usize,
    key_changes_unverified: usize,
}

impl Soak {
    fn check(
        &self,
        settled: Result<(), String>,
        keys: &[KeyChange],
        versions: &HashMap<String, BTreeMap<u64, Version>>,
    ) -> Report {
        let mut r = Report::default();
        if let Err(e) = settled {
            r.violations.push(format!("I1: {e}"));
        }
        for svc in &self.services {
            let history = self.consul.history(svc);
            for e in &history {
                match e["event"].as_str() {
                    Some("deployed") => r.deployed += 1,
                    Some("rolled_back") => {
                        r.rolled_back += 1;
                        if let Some(p) = e["previous"].as_str().filter(|p| p.starts_with("ok-")) {
                            r.healthy_rolled_back += 1;
                            r.healthy_reasons
                                .push(format!("{svc} {p}: {}", e["detail"].as_str().unwrap_or("")));
                        }
                        // The reason names each job it brought back.
                        let detail = e["detail"].as_str().unwrap_or_default();
                        let back: Vec<String> = self
                            .jobs(svc)
                            .into_iter()
                            .filter(|j| detail.contains(&format!("job {j}: at version")))
                            .collect();
                        match back.len() {
                            0 => {}
                            1 => r.rolled_back_first_only += 1,
                            _ => r.rolled_back_after_rolled += 1,
                        }
                    }
                    Some("failed") => r.failed += 1,
                    _ => {}
                }
            }
            for job in self.jobs(svc) {
                self.check_i1(svc, &job, &mut r);
                check_i3(&job, versions.get(&job), &history, &mut r);
                self.check_i4(&job, &mut r);
            }
            let mine: Vec<&KeyChange> = keys.iter().filter(|k| &k.svc == svc).collect();
            let prefix = format!("tagbridge/history/{svc}/");
            let history_indexes: HashSet<u64> = self
                .consul
                .fingerprint()
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, i)| i)
                .collect();
            check_i2(&mine, &history_indexes, &mut r);
            self.check_i5(svc, &mine, &history, &mut r);
        }
        r
    }

    /// I1 for one job of `svc` (the key and record are the service's).
    fn check_i1(&self, svc: &str, job_id: &str, r: &mut Report) {
        let key = self.consul.kv(&format!("configs/{svc}/IMAGE_TAG"));
        let job = self.nomad.job(job_id);
        let meta = job["Meta"]["image_tag"].as_str().map(str::to_string);
        let deployed = json_entry(&self.consul.addr(), &format!("tagbridge/deployed/{svc}"));
        let recorded = deployed
            .as_ref()
            .map(|(d, _)| d["tag"].as_str().unwrap_or_default().to_string());
        if key != meta || (deployed.is_some() && recorded != key) {
            r.violations.push(format!(
                "I1 {svc}: key {key:?}, job {job_id} meta {meta:?}, deployed record {recorded:?}"
            ));
        }
        let version = job["Version"].as_u64();
        let allocs = self.nomad.allocations(job_id);
        let stale: Vec<String> = live_allocs(&allocs)
            .iter()
            .filter(|a| a["JobVersion"].as_u64() != version)
            .map(|a| format!("{} v{}", a["Name"], a["JobVersion"]))
            .collect();
        if !stale.is_empty() {
            r.violations.push(format!(
                "I1 {svc}: allocations of {job_id} not on its version {version:?}: {stale:?}"
            ));
        }
        let tags = self.nomad.running_tags(job_id);
        let count = job["TaskGroups"][0]["Count"].as_u64().unwrap_or(0) as usize;
        let want = key.clone().unwrap_or_default();
        if tags.len() != count || tags.iter().any(|t| *t != want) {
            r.violations.push(format!(
                "I1 {svc}: instances of {job_id} answer {tags:?}, expected {count} × {want}"
            ));
        }
    }

    fn check_i4(&self, job_id: &str, r: &mut Report) {
        let Some(e) = self.edits.get(job_id) else {
            return;
        };
        let job = self.nomad.job(job_id);
        if let Some(m) = &e.meta {
            if job["Meta"]["soak_edit"].as_str() != Some(m.as_str()) {
                r.violations.push(format!(
                    "I4 {job_id}: the operator's last meta edit {m} is gone: {}",
                    job["Meta"]
                ));
            }
        }
        if let Some(c) = e.count {
            if job["TaskGroups"][0]["Count"].as_u64() != Some(c) {
                r.violations.push(format!(
                    "I4 {job_id}: the operator's count {c} is gone: {}",
                    job["TaskGroups"][0]["Count"]
                ));
            }
        }
    }

    fn check_i5(&self, svc: &str, keys: &[&KeyChange], history: &[Value], r: &mut Report) {
        let received: Vec<&str> = history
            .iter()
            .filter(|e| e["event"] == "received")
            .filter_map(|e| e["tag"].as_str())
            .collect();
        let acked: Vec<&Sent> = self
            .sent
            .iter()
            .filter(|s| s.svc == svc && s.acked())
            .collect();
        r.older += acked.iter().filter(|s| s.reason.contains("older")).count();
        for s in &acked {
            if !received.contains(&s.tag.as_str()) {
                r.violations.push(format!(
                    "I5 {svc}: acknowledged webhook {} ({:?} {}) is not in the history",
                    s.tag, s.status, s.reason
                ));
            }
        }
        let newest = acked
            .iter()
            .filter(|s| s.status == Some(202))
            .map(|s| s.tag.as_str())
            .max_by_key(|t| num(t));
        let desired = json_entry(&self.consul.addr(), &format!("tagbridge/desired/{svc}"))
            .and_then(|(d, _)| d["tag"].as_str().map(str::to_string));
        if let Some(newest) = newest {
            // A webhook whose answer was lost may still have been applied,
            // so the desired tag may be newer than the newest acknowledged.
            let sent = self.sent.iter().any(|s| Some(&s.tag) == desired.as_ref());
            if !sent || desired.as_deref().map_or(0, num) < num(newest) {
                r.violations.push(format!(
                    "I5 {svc}: desired {desired:?} but {newest} was acknowledged"
                ));
            }
        }
        for pair in keys.windows(2) {
            let (before, after) = (&pair[0].value, pair[1]);
            if num(&after.value) >= num(before) {
                continue;
            }
            let restore = after.deployed.as_ref().is_some_and(|(d, _)| {
                d["outcome"] == "rolling_back" && d["previous"] == after.value.as_str()
            }) || history.iter().any(|e| {
                e["event"] == "rolled_back"
                    && e["tag"] == after.value.as_str()
                    && e["previous"] == before.as_str()
            });
            if !restore {
                r.violations.push(format!(
                    "I5 {svc}: the key moved backwards {before} -> {} (index {}) without a rollback",
                    after.value, after.key_index
                ));
            }
        }
    }
}

/// I2 from the key watcher. A change is ingest's if its index is that of
/// a desired record or a history entry (ingest writes both in the txn it
/// would write the key in; the controller's key writes append no
/// history). Otherwise it must name what the deployed record is doing:
/// the tag in progress, or the tag a rollback restores. Consul skips a
/// write that changes nothing, so a restore that rewrites an identical
/// `rolling_back` record leaves the key one index above it.
fn check_i2(keys: &[&KeyChange], history_indexes: &HashSet<u64>, r: &mut Report) {
    for k in keys.iter().filter(|k| !k.baseline) {
        r.key_changes += 1;
        let svc = &k.svc;
        if k.key_index == k.desired_index || history_indexes.contains(&k.key_index) {
            r.violations.push(format!(
                "I2 {svc}: key set to {} at index {} in ingest's transaction (desired at {})",
                k.value, k.key_index, k.desired_index
            ));
            continue;
        }
        let Some((d, d_index)) = &k.deployed else {
            r.violations.push(format!(
                "I2 {svc}: key set to {} (index {}) with no deployed record",
                k.value, k.key_index
            ));
            continue;
        };
        if k.key_index < *d_index {
            // The deployed record was written again before the watcher
            // read it: what it said with the key is gone.
            r.key_changes_unverified += 1;
            continue;
        }
        let names_it = match d["outcome"].as_str() {
            Some("in_progress") => d["tag"] == k.value.as_str(),
            Some("rolling_back") => d["previous"] == k.value.as_str(),
            _ => false,
        };
        if !names_it {
            r.violations.push(format!(
                "I2 {svc}: key set to {} at index {} while the deployed record (index {d_index}) says {d}",
                k.value, k.key_index
            ));
        }
    }
}

/// I3 for one job: per tag, the versions that switched its meta to it
/// are at most its attempts: one rollout (or the initial run), plus one
/// per rollback to it (`rolled_back` to it, or `failed` with it as
/// previous), from its service's history.
fn check_i3(
    job_id: &str,
    versions: Option<&BTreeMap<u64, Version>>,
    history: &[Value],
    r: &mut Report,
) {
    let Some(versions) = versions else {
        r.violations
            .push(format!("I3 {job_id}: no job version was ever seen"));
        return;
    };
    let mut switched: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (v, ver) in versions {
        let prev = v.checked_sub(1).and_then(|p| versions.get(&p));
        if prev.is_none_or(|p| p.tag != ver.tag) {
            switched.entry(ver.tag.as_str()).or_default().push(*v);
        }
    }
    for (tag, vs) in switched {
        if tag != "ok-0" {
            r.registrations += vs.len();
        }
        // A rollback to the tag, recorded as done or as failed (its
        // revert may have registered the tag before it failed).
        let rollbacks_to = history
            .iter()
            .filter(|e| {
                (e["event"] == "rolled_back" && e["tag"] == tag)
                    || (e["event"] == "failed" && e["previous"] == tag)
            })
            .count();
        if vs.len() > 1 + rollbacks_to {
            r.violations.push(format!(
                "I3 {job_id}: {tag} registered by versions {vs:?} but attempted {} time(s)",
                1 + rollbacks_to
            ));
        }
    }
}

/// Keep what explains a finding next to the replicas' logs: every job
/// version the watcher saw (Nomad keeps only the last few) and each
/// service's history, both gone with the cluster otherwise.
fn dump(soak: &Soak, versions: &HashMap<String, BTreeMap<u64, Version>>) {
    let mut text = String::new();
    for job in soak.all_jobs() {
        for (n, v) in versions.get(&job).into_iter().flatten() {
            text.push_str(&format!(
                "{job} v{n} tag={} count={} soak_edit={} job_modify_index={}\n",
                v.tag, v.count, v.edit, v.job_modify_index
            ));
        }
    }
    let _ = std::fs::write(soak.logs.join("versions.txt"), text);
    for svc in &soak.services {
        let history = Value::Array(soak.consul.history(svc));
        let _ = std::fs::write(
            soak.logs.join(format!("history-{svc}.json")),
            serde_json::to_string_pretty(&history).unwrap_or_default(),
        );
    }
}

#[test]
#[ignore = "a randomized soak of several minutes: run it with scripts/soak.sh"]
fn soak() {
    let secs = env_u64("TAGBRIDGE_SOAK_SECS", 600);
    let n = env_u64("TAGBRIDGE_SOAK_SERVICES", 3).clamp(1, 8) as usize;
    let workers = env_u64("TAGBRIDGE_SOAK_WORKERS", 0) == 1;
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let seed = env_u64("TAGBRIDGE_SOAK_SEED", clock);
    // Cargo sets CARGO_BIN_EXE_tagbridge (the debug build) for the test
    // process; soak.sh names the release build here instead.
    if let Some(bin) = std::env::var_os("TAGBRIDGE_SOAK_BIN") {
        std::env::set_var("CARGO_BIN_EXE_tagbridge", bin);
    }
    let bin = assert_cmd::cargo::cargo_bin("tagbridge");
    let shape = match workers {
        true => format!("{n} services × 2 jobs"),
        false => format!("{n} services"),
    };
    println!(
        "SOAK seed {seed}, {secs} s, {shape}, tagbridge {}",
        bin.display()
    );
    let mut soak = Soak::start(seed, n, workers);
    soak.say(&format!(
        "cluster up; replica logs in {}",
        soak.logs.display()
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let settle = Duration::from_secs(600);
    // The watchers' backstop: the faults, the settling and half an hour.
    let until = Instant::now() + Duration::from_secs(secs) + settle + Duration::from_secs(1800);
    let keys = {
        let (c, s, st) = (soak.consul.addr(), soak.services.clone(), stop.clone());
        std::thread::spawn(move || watch_keys(c, s, st, until))
    };
    let versions = {
        let (a, s, st) = (soak.nomad.addr(), soak.all_jobs(), stop.clone());
        std::thread::spawn(move || watch_versions(a, s, st, until))
    };
    soak.run(Instant::now() + Duration::from_secs(secs));
    soak.say("faults over; waiting for quiet");
    let settled = soak.settle(settle);
    // The invariants are judged on the watchers' records: records cut
    // short by the backstop would hide violations, so that is a failure.
    assert!(
        Instant::now() < until,
        "the watchers reached their backstop before the soak ended: their records are incomplete"
    );
    stop.store(true, Ordering::Relaxed);
    let keys = keys.join().expect("key watcher");
    let versions = versions.join().expect("version watcher");
    let r = soak.check(settled, &keys, &versions);

    let acked: Vec<&Sent> = soak.sent.iter().filter(|s| s.acked()).collect();
    let queued = acked.iter().filter(|s| s.status == Some(202)).count();
    let bad = soak
        .sent
        .iter()
        .filter(|s| s.tag.starts_with("bad"))
        .count();
    let worker_only = soak
        .sent
        .iter()
        .filter(|s| s.tag.starts_with("bad-w-"))
        .count();
    let unanswered = soak.sent.iter().filter(|s| s.status.is_none()).count();
    let refused = soak.sent.len() - acked.len() - unanswered;
    let faults: Vec<String> = soak
        .faults
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let mut by_inv: BTreeMap<&str, usize> = ["I1", "I2", "I3", "I4", "I5"].map(|i| (i, 0)).into();
    for v in &r.violations {
        *by_inv.entry(&v[..2]).or_default() += 1;
    }
    println!("SOAK RESULT (seed {seed}, {secs} s of faults, {shape}, 2 replicas)");
    println!(
        "  webhooks: sent {} ({bad} with a failing tag), acknowledged {} (202 queued {queued}, 200 recorded only {}, of which older {}), refused {refused}, unanswered {unanswered}",
        soak.sent.len(),
        acked.len(),
        acked.len() - queued,
        r.older
    );
    if workers {
        println!("  failing tags: {worker_only} fail only on the worker, the others on both jobs");
    }
    println!(
        "  rollouts: {} tag registrations, {} deployed, {} rolled back ({} of them healthy tags, on a loaded machine), {} failed",
        r.registrations, r.deployed, r.rolled_back, r.healthy_rolled_back, r.failed
    );
    if workers {
        println!(
            "  multi-job: {} rollouts over 2 jobs ended; rollbacks reverting the first job only {}, reverting a job that had already rolled {}; leader kills between jobs {}",
            r.deployed + r.rolled_back + r.failed,
            r.rolled_back_first_only,
            r.rolled_back_after_rolled,
            soak.kills_between_jobs
        );
    }
    println!(
        "  key changes watched: {} ({} not attributable: deployed record rewritten before the read)",
        r.key_changes, r.key_changes_unverified
    );
    println!("  faults injected: {}", faults.join(", "));
    println!(
        "  invariant violations: {} ({})",
        r.violations.len(),
        by_inv
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for why in &r.healthy_reasons {
        let short: String = why.chars().take(300).collect();
        println!("  healthy tag rolled back: {short}");
    }
    for v in &r.violations {
        println!("  VIOLATION {v}");
    }
    dump(&soak, &versions);
    if !r.violations.is_empty() {
        let _ = std::fs::write(soak.logs.join("nomad-client.log"), soak.nomad.log());
        println!("  logs: {}", soak.logs.display());
    }
    assert!(
        r.violations.is_empty(),
        "{} invariant violations",
        r.violations.len()
    );
}

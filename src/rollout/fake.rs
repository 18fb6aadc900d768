//! A scripted Nomad and Consul for the driver's unit tests.
//!
//! Both keep just enough of the real semantics for the races to be real:
//! Nomad versions jobs, enforces `EnforceIndex` and `EnforcePriorVersion`,
//! creates one deployment per new version and cancels the running one
//! when a newer version is registered; Consul applies transactions
//! atomically with check-and-set, check-index and check-session. Tests
//! script the world through hooks (an operator's edit right after our
//! register, a webhook between a decision and its commit) and outages
//! (every call answers 503 while `down`). Blocking reads wait for a
//! change, like the real ones, so paused-time tests are deterministic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::ports::{ConsulPort, NomadPort};
use crate::clients::consul::{ConsulError, KvPair, Read as KvRead, TxnOp, TxnOutcome};
use crate::clients::nomad::{
    Allocation, CheckResult, Deployment, Evaluation, Job, NomadError, Read, WriteResponse,
};
use crate::store::history::{decode_head, HeadRead, HistoryKeys};
use crate::store::HistoryEntry;
use crate::store::StoreError;

/// How a freshly placed version behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The deployment succeeds at once.
    Healthy,
    /// An allocation turns unhealthy at once.
    Unhealthy,
    /// The deployment stays running until the test finishes it.
    Pending,
}

type RevertHook = Box<dyn FnMut(&mut NomadWorld) + Send>;
type NomadHook = Box<dyn FnMut(&mut NomadWorld, &str) + Send>;

/// Nomad's state.
pub struct NomadWorld {
    /// Every version, oldest first (raw job documents).
    pub versions: Vec<Value>,
    pub deployments: Vec<Deployment>,
    /// Deployments Nomad garbage-collected (reads answer 404).
    pub collected: Vec<String>,
    pub index: u64,
    /// Decides each new version's deployment from its meta tag.
    pub health: fn(&str) -> Health,
    /// Called after each of the driver's writes ("register", "revert"):
    /// lets a test act on cue, as an operator would.
    pub after_write: Option<NomadHook>,
    /// Every register the driver sent: (version made, meta tag).
    pub registers: Vec<(u64, String)>,
    pub reverts: Vec<(u64, u64)>,
    /// Called when a revert arrives, before Nomad checks it.
    pub before_revert: Option<RevertHook>,
}

impl NomadWorld {
    pub fn current(&self) -> &Value {
        self.versions.last().expect("a job exists")
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.versions.last()?["Meta"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Register `doc` as the next version (an operator, or the driver).
    pub fn put_version(&mut self, mut doc: Value, tag_key: &str) -> u64 {
        let version = self
            .versions
            .last()
            .map_or(0, |j| j["Version"].as_u64().unwrap_or(0) + 1);
        self.index += 1;
        doc["Version"] = json!(version);
        doc["JobModifyIndex"] = json!(self.index);
        doc["Stable"] = json!(false);
        self.versions.push(doc);
        // A newer version cancels a deployment still running.
        for d in &mut self.deployments {
            if !d.is_terminal() {
                d.status = "cancelled".into();
                d.status_description = "Cancelled due to newer version of job".into();
            }
        }
        let tag = self.meta(tag_key).unwrap_or_default();
        let health = (self.health)(&tag);
        let id = format!("dep-{version:04}-0000000000");
        let (status, unhealthy, healthy) = match health {
            Health::Healthy => ("successful", 0, 3),
            Health::Unhealthy => ("running", 1, 0),
            Health::Pending => ("running", 0, 1),
        };
        self.deployments
            .push(deployment(&id, version, status, healthy, unhealthy));
        if health == Health::Healthy {
            self.stable(version);
        }
        version
    }

    pub fn stable(&mut self, version: u64) {
        if let Some(j) = self.versions.iter_mut().find(|j| j["Version"] == version) {
            j["Stable"] = json!(true);
        }
    }

    /// Finish the newest deployment (a test playing the cluster).
    pub fn finish_latest(&mut self, status: &str) {
        self.index += 1;
        let d = self.deployments.last_mut().expect("a deployment");
        d.status = status.into();
        d.modify_index = self.index;
        let v = d.job_version;
        if status == "successful" {
            self.stable(v);
        }
    }
}

fn deployment(id: &str, version: u64, status: &str, healthy: u64, unhealthy: u64) -> Deployment {
    serde_json::from_value(json!({
        "ID": id, "JobID": "web", "JobVersion": version, "Status": status,
        "TaskGroups": {"web": {"DesiredTotal": 3, "HealthyAllocs": healthy, "UnhealthyAllocs": unhealthy}}
    }))
    .expect("deployment shape")
}

/// The scripted Nomad.
pub struct FakeNomad {
    pub world: Mutex<NomadWorld>,
    pub down: AtomicBool,
    changed: Notify,
    meta_key: String,
}

/// The job document a test starts from: one group with an update block,
/// meta `image_tag = tag`.
pub fn job_doc(tag: &str) -> Value {
    json!({
        "ID": "web", "Namespace": "default", "Meta": {"image_tag": tag},
        "TaskGroups": [{"Name": "web", "Update": {"MaxParallel": 1, "AutoRevert": false}}]
    })
}

impl FakeNomad {
    pub fn new(tag: &str, health: fn(&str) -> Health) -> Arc<Self> {
        let mut w = NomadWorld {
            versions: Vec::new(),
            deployments: Vec::new(),
            collected: Vec::new(),
            index: 10,
            health: |_| Health::Healthy,
            after_write: None,
            registers: Vec::new(),
            reverts: Vec::new(),
            before_revert: None,
        };
        w.put_version(job_doc(tag), "image_tag");
        w.health = health;
        Arc::new(FakeNomad {
            world: Mutex::new(w),
            down: AtomicBool::new(false),
            changed: Notify::new(),
            meta_key: "image_tag".into(),
        })
    }

    /// Change the world (and wake blocking reads).
    pub fn with<T>(&self, f: impl FnOnce(&mut NomadWorld) -> T) -> T {
        let r = f(&mut self.world.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
        r
    }

    /// Change the world as someone other than the driver would, waking
    /// blocking reads (the driver's own writes do that in `after_write`).
    pub fn act<T>(&self, f: impl FnOnce(&mut NomadWorld) -> T) -> T {
        let out = self.with(f);
        self.changed.notify_waiters();
        out
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn check_up(&self, op: &'static str) -> Result<(), NomadError> {
        if self.down.load(Ordering::SeqCst) {
            Err(NomadError::Status {
                op,
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: "No cluster leader".into(),
            })
        } else {
            Ok(())
        }
    }

    /// Wait (up to `block`'s wait) until the index passes the caller's.
    async fn block(&self, block: Option<(u64, Duration)>) {
        let Some((index, wait)) = block else { return };
        let notified = self.changed.notified();
        let current = self.world.lock().unwrap_or_else(|e| e.into_inner()).index;
        if index == 0 || current > index || self.down.load(Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(wait, notified).await;
    }

    fn after_write(&self, what: &str) {
        let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut hook) = w.after_write.take() {
            hook(&mut w, what);
            if w.after_write.is_none() {
                w.after_write = Some(hook);
            }
        }
        drop(w);
        self.changed.notify_waiters();
    }
}

fn job_of(v: &Value) -> Job {
    Job::from_value(v.clone()).expect("job shape")
}

impl NomadPort for FakeNomad {
    async fn job(&self, _ns: &str, _id: &str) -> Result<Option<Job>, NomadError> {
        self.check_up("job_read")?;
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Ok(w.versions.last().filter(|j| !j.is_null()).map(job_of))
    }

    async fn job_versions(&self, _ns: &str, _id: &str) -> Result<Vec<Job>, NomadError> {
        self.check_up("job_versions")?;
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Ok(w.versions
            .iter()
            .rev()
            .filter(|j| !j.is_null())
            .map(job_of)
            .collect())
    }

    async fn register(&self, job: &Job, enforce_index: u64) -> Result<WriteResponse, NomadError> {
        self.check_up("job_register")?;
        {
            let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
            let current = w.current()["JobModifyIndex"].as_u64().unwrap_or(0);
            if current != enforce_index {
                return Err(NomadError::Status {
                    op: "job_register",
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: format!("Enforcing job modify index {enforce_index}: job exists with conflicting job modify index: {current}"),
                });
            }
            let v = w.put_version(job.raw.clone(), &self.meta_key);
            let tag = w.meta(&self.meta_key).unwrap_or_default();
            w.registers.push((v, tag));
        }
        self.after_write("register");
        Ok(WriteResponse {
            eval_id: String::new(),
            job_modify_index: 0,
            warnings: String::new(),
        })
    }

    async fn revert(
        &self,
        _ns: &str,
        _id: &str,
        version: u64,
        enforce_prior_version: u64,
    ) -> Result<WriteResponse, NomadError> {
        self.check_up("job_revert")?;
        {
            let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut hook) = w.before_revert.take() {
                hook(&mut w);
            }
            let current = w.current()["Version"].as_u64().unwrap_or(0);
            if current != enforce_prior_version {
                return Err(NomadError::Status {
                    op: "job_revert",
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    body: format!("Current job has version {current}; enforcing version {enforce_prior_version}"),
                });
            }
            let doc = w
                .versions
                .iter()
                .find(|j| j["Version"] == version)
                .cloned()
                .expect("revert target exists");
            w.put_version(doc, &self.meta_key);
            w.reverts.push((version, enforce_prior_version));
        }
        self.after_write("revert");
        Ok(WriteResponse {
            eval_id: String::new(),
            job_modify_index: 0,
            warnings: String::new(),
        })
    }

    async fn latest_deployment(
        &self,
        _ns: &str,
        _id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Option<Deployment>>, NomadError> {
        self.block(block).await;
        self.check_up("job_deployment")?;
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Read {
            value: w.deployments.last().cloned(),
            index: w.index,
        })
    }

    async fn deployment(
        &self,
        _ns: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Deployment>, NomadError> {
        self.block(block).await;
        self.check_up("deployment_read")?;
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        match w.deployments.iter().find(|d| d.id == id) {
            Some(d) if !w.collected.contains(&d.id) => Ok(Read {
                value: d.clone(),
                index: w.index,
            }),
            _ => Err(NomadError::Status {
                op: "deployment_read",
                status: StatusCode::NOT_FOUND,
                body: "deployment not found".into(),
            }),
        }
    }

    async fn deployment_allocations(
        &self,
        _ns: &str,
        _id: &str,
    ) -> Result<Vec<Allocation>, NomadError> {
        self.check_up("deployment_allocations")?;
        Ok(Vec::new())
    }

    async fn allocation_checks(
        &self,
        _ns: &str,
        _alloc: &str,
    ) -> Result<Vec<CheckResult>, NomadError> {
        Ok(Vec::new())
    }

    async fn promote(&self, _ns: &str, _dep: &str) -> Result<(), NomadError> {
        self.check_up("deployment_promote")
    }

    async fn fail_deployment(&self, _ns: &str, dep: &str) -> Result<(), NomadError> {
        self.check_up("deployment_fail")?;
        self.with(|w| {
            w.index += 1;
            if let Some(d) = w.deployments.iter_mut().find(|d| d.id == dep) {
                if !d.is_terminal() {
                    d.status = "failed".into();
                    d.status_description = "Deployment marked as failed".into();
                }
            }
        });
        Ok(())
    }

    async fn evaluation(
        &self,
        _ns: &str,
        id: &str,
        _block: Option<(u64, Duration)>,
    ) -> Result<Read<Evaluation>, NomadError> {
        self.check_up("evaluation_read")?;
        Ok(Read {
            value: serde_json::from_value(json!({"ID": id, "Status": "complete"}))
                .expect("evaluation shape"),
            index: 1,
        })
    }
}

type ConsulHook = Box<dyn FnMut(&mut KvWorld, &[TxnOp]) + Send>;

/// Consul's KV.
pub struct KvWorld {
    pub kv: BTreeMap<String, (Vec<u8>, u64, Option<String>)>,
    pub index: u64,
    /// Called before each transaction is applied: a concurrent writer.
    pub before_txn: Option<ConsulHook>,
}

impl KvWorld {
    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.index += 1;
        let session = self.kv.get(key).and_then(|e| e.2.clone());
        self.kv
            .insert(key.to_string(), (value.to_vec(), self.index, session));
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.kv
            .get(key)
            .map(|e| String::from_utf8_lossy(&e.0).into_owned())
    }

    pub fn json(&self, key: &str) -> Option<Value> {
        self.kv
            .get(key)
            .and_then(|e| serde_json::from_slice(&e.0).ok())
    }

    fn apply(&mut self, ops: &[TxnOp]) -> TxnOutcome {
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let at = |k: &str| self.kv.get(k).map_or(0, |e| e.1);
            let ok = match op {
                TxnOp::Cas { key, index, .. } | TxnOp::DeleteCas { key, index } => {
                    at(key) == *index
                }
                TxnOp::CheckIndex { key, index } => at(key) == *index && *index != 0,
                TxnOp::CheckNotExists { key } => !self.kv.contains_key(key),
                TxnOp::CheckSession { key, session } => {
                    self.kv.get(key).and_then(|e| e.2.as_deref()) == Some(session.as_str())
                }
                TxnOp::Set { .. } | TxnOp::Delete { .. } => true,
            };
            if !ok {
                errors.push((i, format!("op {i} failed")));
            }
        }
        if !errors.is_empty() {
            return TxnOutcome::Conflict(errors);
        }
        for op in ops {
            match op {
                TxnOp::Cas { key, value, .. } | TxnOp::Set { key, value } => self.put(key, value),
                TxnOp::Delete { key } | TxnOp::DeleteCas { key, .. } => {
                    self.index += 1;
                    self.kv.remove(key);
                }
                _ => {}
            }
        }
        TxnOutcome::Committed(Vec::new())
    }
}

/// The scripted Consul.
pub struct FakeConsul {
    pub world: Mutex<KvWorld>,
    pub down: AtomicBool,
}

impl FakeConsul {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeConsul {
            world: Mutex::new(KvWorld {
                kv: BTreeMap::new(),
                index: 100,
                before_txn: None,
            }),
            down: AtomicBool::new(false),
        })
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut KvWorld) -> T) -> T {
        f(&mut self.world.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn check_up(&self, op: &'static str) -> Result<(), ConsulError> {
        if self.down.load(Ordering::SeqCst) {
            Err(ConsulError::Status {
                op,
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: "No cluster leader".into(),
            })
        } else {
            Ok(())
        }
    }

    fn read(&self, key: &str) -> KvRead<Option<KvPair>> {
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        KvRead {
            value: w.kv.get(key).map(|(v, i, s)| KvPair {
                key: key.to_string(),
                value: v.clone(),
                modify_index: *i,
                session: s.clone(),
            }),
            index: w.index,
        }
    }
}

impl crate::store::KvRead for FakeConsul {
    async fn kv_get(&self, key: &str) -> Result<KvRead<Option<KvPair>>, ConsulError> {
        self.check_up("kv_get")?;
        Ok(self.read(key))
    }
}

impl ConsulPort for FakeConsul {
    async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        self.check_up("txn")?;
        let mut w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut hook) = w.before_txn.take() {
            hook(&mut w, ops);
            if w.before_txn.is_none() {
                w.before_txn = Some(hook);
            }
        }
        Ok(w.apply(ops))
    }

    async fn history_head(&self, keys: &HistoryKeys, _keep: usize) -> Result<HeadRead, StoreError> {
        self.check_up("kv_get")?;
        let r = self.read(&keys.head);
        let head = decode_head(r.value.as_ref().map(|kv| kv.value.as_slice())).map_err(|e| {
            StoreError::Corrupt {
                key: keys.head.clone(),
                reason: e.to_string(),
            }
        })?;
        Ok(HeadRead {
            head,
            index: r.value.map_or(0, |kv| kv.modify_index),
            legacy: None,
        })
    }

    async fn history_recent(
        &self,
        keys: &HistoryKeys,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let head = self.history_head(keys, 0).await?.head;
        let w = self.world.lock().unwrap_or_else(|e| e.into_inner());
        Ok((head.oldest.max(1)..=head.seq)
            .rev()
            .filter_map(|s| w.kv.get(&keys.entry(s)))
            .filter_map(|e| serde_json::from_slice(&e.0).ok())
            .take(limit)
            .collect())
    }
}

/// How a job's new versions behave, by tag.
pub type HealthOf = fn(&str) -> Health;

/// Several scripted jobs behind one Nomad: each call goes to the job it
/// names. Deployment IDs are unique only within one fake, so they travel
/// as `<job>:<id>` and calls by deployment ID find their job again.
pub struct FakeJobs {
    pub jobs: BTreeMap<String, Arc<FakeNomad>>,
}

impl FakeJobs {
    /// Jobs `names`, each running `tag` at version 0; `health` decides
    /// each new version's deployment per job.
    pub fn new(tag: &str, jobs: &[(&str, HealthOf)]) -> Self {
        let jobs = jobs
            .iter()
            .map(|(name, health)| {
                let fake = FakeNomad::new(tag, *health);
                fake.with(|w| w.versions[0]["ID"] = json!(name));
                (name.to_string(), fake)
            })
            .collect();
        FakeJobs { jobs }
    }

    pub fn job(&self, name: &str) -> &Arc<FakeNomad> {
        self.jobs.get(name).expect("a job of this fake")
    }

    /// The job a `<job>:<id>` deployment ID belongs to, and its own ID.
    fn by_deployment<'a>(&self, id: &'a str) -> (&Arc<FakeNomad>, &'a str) {
        let (job, inner) = id.split_once(':').expect("a deployment ID of FakeJobs");
        (self.job(job), inner)
    }
}

fn tagged(job: &str, mut d: Deployment) -> Deployment {
    d.id = format!("{job}:{}", d.id);
    d
}

impl NomadPort for FakeJobs {
    async fn job(&self, ns: &str, id: &str) -> Result<Option<Job>, NomadError> {
        self.job(id).job(ns, id).await
    }
    async fn job_versions(&self, ns: &str, id: &str) -> Result<Vec<Job>, NomadError> {
        self.job(id).job_versions(ns, id).await
    }
    async fn register(&self, job: &Job, enforce_index: u64) -> Result<WriteResponse, NomadError> {
        let id = job.raw["ID"].as_str().unwrap_or_default();
        self.job(id).register(job, enforce_index).await
    }
    async fn revert(
        &self,
        ns: &str,
        id: &str,
        version: u64,
        enforce_prior_version: u64,
    ) -> Result<WriteResponse, NomadError> {
        self.job(id)
            .revert(ns, id, version, enforce_prior_version)
            .await
    }
    async fn latest_deployment(
        &self,
        ns: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Option<Deployment>>, NomadError> {
        let r = self.job(id).latest_deployment(ns, id, block).await?;
        Ok(Read {
            value: r.value.map(|d| tagged(id, d)),
            index: r.index,
        })
    }
    async fn deployment(
        &self,
        ns: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Deployment>, NomadError> {
        let (fake, inner) = self.by_deployment(id);
        let job = id.split_once(':').map_or("", |(j, _)| j);
        let r = fake.deployment(ns, inner, block).await?;
        Ok(Read {
            value: tagged(job, r.value),
            index: r.index,
        })
    }
    async fn deployment_allocations(
        &self,
        ns: &str,
        id: &str,
    ) -> Result<Vec<Allocation>, NomadError> {
        let (fake, inner) = self.by_deployment(id);
        fake.deployment_allocations(ns, inner).await
    }
    async fn allocation_checks(
        &self,
        _ns: &str,
        _alloc: &str,
    ) -> Result<Vec<CheckResult>, NomadError> {
        Ok(Vec::new())
    }
    async fn promote(&self, ns: &str, dep: &str) -> Result<(), NomadError> {
        let (fake, inner) = self.by_deployment(dep);
        fake.promote(ns, inner).await
    }
    async fn fail_deployment(&self, ns: &str, dep: &str) -> Result<(), NomadError> {
        let (fake, inner) = self.by_deployment(dep);
        fake.fail_deployment(ns, inner).await
    }
    async fn evaluation(
        &self,
        ns: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Evaluation>, NomadError> {
        // The fakes answer no evaluation ID, so none is ever asked for by
        // job; any one of them answers "complete".
        let first = self.jobs.values().next().expect("a job");
        first.evaluation(ns, id, block).await
    }
}

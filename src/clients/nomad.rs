//! A thin, typed Nomad HTTP API client: the calls a rollout makes.
//!
//! The job specification stays JSON passthrough (`serde_json::Value`):
//! tagbridge changes one meta key and must send back everything else
//! exactly as Nomad gave it, including fields newer than this code. Only
//! what the controller reads is typed.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::{json, Value};

pub use super::api::Read;
use super::api::{decode_json, ApiClient, ApiError, Dialect};
use super::http::{HttpClient, RequestError, Response};
use crate::config::Secret;

/// Everything but unreserved characters is escaped in ids and query values.
const ID_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Nomad clamps blocking waits to 5 minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

static DIALECT: Dialect = Dialect {
    token_header: "x-nomad-token",
    index_header: "x-nomad-index",
    query_set: ID_SET,
    max_wait: MAX_WAIT,
    excerpt_chars: 500,
};

/// Why a Nomad call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NomadError {
    #[error("nomad {op}: {cause}")]
    Request {
        op: &'static str,
        /// In the message, so not also the error's source: a chain printer
        /// (anyhow's `{:#}`) would show it twice.
        cause: RequestError,
    },
    #[error("nomad {op}: HTTP {status}: {body}")]
    Status {
        op: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("nomad {op}: unexpected answer: {reason}")]
    Decode { op: &'static str, reason: String },
}

impl ApiError for NomadError {
    fn request(op: &'static str, source: RequestError) -> Self {
        NomadError::Request { op, cause: source }
    }
    fn status(op: &'static str, status: StatusCode, body: String) -> Self {
        NomadError::Status { op, status, body }
    }
    fn decode(op: &'static str, reason: String) -> Self {
        NomadError::Decode { op, reason }
    }
}

impl NomadError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        match self {
            NomadError::Request { .. } => true,
            NomadError::Status { status, body, .. } => {
                (status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS)
                    && lost_race_in_text(body).is_none()
            }
            NomadError::Decode { .. } => false,
        }
    }

    /// A register lost an `EnforceIndex` race: someone else changed the
    /// job between our read and our write.
    pub fn is_enforce_index_conflict(&self) -> bool {
        matches!(self, NomadError::Status { body, .. }
            if lost_race_in_text(body) == Some(LostRace::EnforceIndex))
    }

    /// A revert lost its `EnforcePriorVersion` check.
    pub fn is_enforce_version_conflict(&self) -> bool {
        matches!(self, NomadError::Status { body, .. }
            if lost_race_in_text(body) == Some(LostRace::EnforcePriorVersion))
    }

    /// 403: the token lacks a capability.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, NomadError::Status { status, .. } if *status == StatusCode::FORBIDDEN)
    }
}

/// Which check-and-set a write lost, as Nomad's error text tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LostRace {
    EnforceIndex,
    EnforcePriorVersion,
}

/// The one place that classifies an error by its text (the rule is:
/// never, except where the server gives nothing else). Nomad 1.11 gives
/// no code for a lost `EnforceIndex` race, only a 500 whose body starts
/// "Enforcing job modify index" (contract §8), and for a lost
/// `EnforcePriorVersion` a 500 "Current job has version N; enforcing
/// version M". Consul needs no such helper: its lost CAS is a 409 or a
/// `false` body.
fn lost_race_in_text(body: &str) -> Option<LostRace> {
    if body.trim_start().starts_with("Enforcing job modify index") {
        Some(LostRace::EnforceIndex)
    } else if body.contains("enforcing version") {
        Some(LostRace::EnforcePriorVersion)
    } else {
        None
    }
}

/// Connection settings.
#[derive(Clone)]
pub struct NomadSettings {
    pub address: String,
    pub token: Option<Secret>,
    pub region: Option<String>,
    pub timeout: Duration,
}

/// A job as Nomad returns it: the typed fields the controller reads, and
/// the whole document to send back.
#[derive(Debug, Clone)]
pub struct Job {
    pub raw: Value,
    pub id: String,
    pub namespace: String,
    pub version: u64,
    pub job_modify_index: u64,
    pub stop: bool,
}

impl Job {
    /// A job from its JSON document (as `GET /v1/job/<id>` returns it).
    ///
    /// # Errors
    ///
    /// The document lacks `ID`, `Version` or `JobModifyIndex`.
    pub fn from_value(raw: Value) -> Result<Self, NomadError> {
        Self::from_raw(raw, "job")
    }

    fn from_raw(raw: Value, op: &'static str) -> Result<Self, NomadError> {
        let field = |name: &str| {
            raw.get(name).ok_or_else(|| NomadError::Decode {
                op,
                reason: format!("job has no {name}"),
            })
        };
        Ok(Job {
            id: field("ID")?.as_str().unwrap_or_default().to_string(),
            namespace: raw
                .get("Namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            version: field("Version")?.as_u64().unwrap_or_default(),
            job_modify_index: field("JobModifyIndex")?.as_u64().unwrap_or_default(),
            stop: raw.get("Stop").and_then(Value::as_bool).unwrap_or(false),
            raw,
        })
    }

    /// The job-level meta value of `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.raw.get("Meta")?.get(key)?.as_str()
    }

    /// Set a job-level meta value in the passthrough document.
    pub fn set_meta(&mut self, key: &str, value: &str) {
        let meta = &mut self.raw["Meta"];
        if !meta.is_object() {
            *meta = json!({});
        }
        meta[key] = Value::String(value.to_string());
    }

    /// The task groups' update blocks (`None` where a group has none).
    pub fn group_updates(&self) -> Vec<(String, Option<UpdateStrategy>)> {
        self.raw
            .get("TaskGroups")
            .and_then(Value::as_array)
            .map(|groups| {
                groups
                    .iter()
                    .map(|g| {
                        let name = g
                            .get("Name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let update = g
                            .get("Update")
                            .filter(|u| !u.is_null())
                            .and_then(|u| serde_json::from_value(u.clone()).ok());
                        (name, update)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The fields of a group's `update` block the controller reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStrategy {
    #[serde(default)]
    pub max_parallel: i64,
    #[serde(default)]
    pub canary: i64,
    #[serde(default)]
    pub auto_revert: bool,
    #[serde(default)]
    pub auto_promote: bool,
    #[serde(default)]
    pub health_check: String,
}

/// A deployment.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Deployment {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub status: String,
    #[serde(default)]
    pub status_description: String,
    #[serde(default)]
    pub task_groups: BTreeMap<String, DeploymentGroup>,
    #[serde(default)]
    pub modify_index: u64,
}

impl Deployment {
    /// Running, paused, pending…: Nomad may still change it.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "successful" | "failed" | "cancelled")
    }
}

/// Per-group progress of a deployment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DeploymentGroup {
    #[serde(default)]
    pub auto_revert: bool,
    #[serde(default)]
    pub auto_promote: bool,
    #[serde(default)]
    pub promoted: bool,
    #[serde(default)]
    pub placed_canaries: Option<Vec<String>>,
    #[serde(default)]
    pub desired_canaries: u64,
    #[serde(default)]
    pub desired_total: u64,
    #[serde(default)]
    pub placed_allocs: u64,
    #[serde(default)]
    pub healthy_allocs: u64,
    #[serde(default)]
    pub unhealthy_allocs: u64,
}

/// An allocation as listed for a job or deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Allocation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub task_group: String,
    #[serde(default)]
    pub job_version: u64,
    #[serde(default)]
    pub client_status: String,
    #[serde(default)]
    pub desired_status: String,
    #[serde(default)]
    pub deployment_status: Option<AllocDeploymentStatus>,
    #[serde(default)]
    pub task_states: Option<BTreeMap<String, TaskState>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocDeploymentStatus {
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub canary: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub events: Option<Vec<TaskEvent>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEvent {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub display_message: String,
    #[serde(default)]
    pub time: i64,
}

/// One service check result of an allocation (Nomad-native services).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckResult {
    #[serde(default)]
    pub check: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_code: i64,
    #[serde(default)]
    pub output: String,
}

/// An evaluation, for placement failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub status_description: String,
    #[serde(default)]
    pub failed_tg_allocs: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub blocked_eval: String,
    #[serde(rename = "DeploymentID", default)]
    pub deployment_id: String,
}

/// What a register or revert answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WriteResponse {
    #[serde(rename = "EvalID", default)]
    pub eval_id: String,
    #[serde(default)]
    pub job_modify_index: u64,
    #[serde(default)]
    pub warnings: String,
}

/// The Nomad client.
#[derive(Clone)]
pub struct Nomad {
    api: ApiClient,
    region: Option<String>,
}

impl Nomad {
    pub fn new(http: HttpClient, settings: NomadSettings) -> Self {
        Nomad {
            api: ApiClient::new(
                http,
                settings.address,
                settings.token,
                settings.timeout,
                &DIALECT,
            ),
            region: settings.region,
        }
    }

    pub fn address(&self) -> &str {
        self.api.address()
    }

    /// `namespace` and `region` first, then the query.
    fn url(&self, path: &str, namespace: Option<&str>, query: &[(&str, String)]) -> String {
        let ns = namespace.map(|ns| ("namespace", ns));
        let region = self.region.as_deref().map(|r| ("region", r));
        let query = query.iter().map(|(k, v)| (*k, v.as_str()));
        self.api
            .url(path, ns.into_iter().chain(region).chain(query))
    }

    fn id(s: &str) -> String {
        utf8_percent_encode(s, ID_SET).to_string()
    }

    /// Send a request (a JSON body, if any) within the default deadline;
    /// any status but 2xx is an error.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> Result<Response, NomadError> {
        let body = body
            .map(|b| serde_json::to_vec(&b))
            .transpose()
            .map_err(|e| NomadError::decode(op, e.to_string()))?;
        let resp = self.api.send(op, method, url, body).await?;
        self.success(op, resp)
    }

    fn success(&self, op: &'static str, resp: Response) -> Result<Response, NomadError> {
        if !resp.status.is_success() {
            return Err(self.api.status_error(op, &resp));
        }
        Ok(resp)
    }

    /// GET a JSON document, optionally as a blocking query: the shape of
    /// every read the controller makes.
    async fn get_read<T: for<'de> Deserialize<'de>>(
        &self,
        op: &'static str,
        path: &str,
        namespace: Option<&str>,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<T>, NomadError> {
        let (q, timeout) = self.api.blocking(block);
        let url = self.url(path, namespace, &q);
        let resp = self
            .api
            .send_within(op, Method::GET, url, None, timeout)
            .await?;
        let resp = self.success(op, resp)?;
        Ok(Read {
            index: self.api.index_of(&resp),
            value: decode_json(op, &resp.body)?,
        })
    }

    /// Read a job; `None` when it does not exist.
    ///
    /// # Errors
    ///
    /// Transport failures, statuses other than 200/404, undecodable jobs.
    pub async fn job(&self, namespace: &str, id: &str) -> Result<Option<Job>, NomadError> {
        const OP: &str = "job_read";
        let url = self.url(&format!("/v1/job/{}", Self::id(id)), Some(namespace), &[]);
        match self.call(OP, Method::GET, url, None).await {
            Ok(resp) => Ok(Some(Job::from_raw(decode_json(OP, &resp.body)?, OP)?)),
            Err(NomadError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every stored version of a job, newest first.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn job_versions(&self, namespace: &str, id: &str) -> Result<Vec<Job>, NomadError> {
        const OP: &str = "job_versions";
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Versions {
            versions: Vec<Value>,
        }
        let url = self.url(
            &format!("/v1/job/{}/versions", Self::id(id)),
            Some(namespace),
            &[],
        );
        let resp = self.call(OP, Method::GET, url, None).await?;
        let v: Versions = decode_json(OP, &resp.body)?;
        v.versions
            .into_iter()
            .map(|j| Job::from_raw(j, OP))
            .collect()
    }

    /// Register `job` only if its JobModifyIndex is still `enforce_index`.
    ///
    /// # Errors
    ///
    /// [`NomadError::is_enforce_index_conflict`] when someone else changed
    /// the job since it was read; other transport and status errors.
    pub async fn register(
        &self,
        job: &Job,
        enforce_index: u64,
    ) -> Result<WriteResponse, NomadError> {
        const OP: &str = "job_register";
        let url = self.url(
            &format!("/v1/job/{}", Self::id(&job.id)),
            Some(&job.namespace),
            &[],
        );
        let body = json!({
            "Job": job.raw,
            "EnforceIndex": true,
            "JobModifyIndex": enforce_index,
        });
        let resp = self.call(OP, Method::POST, url, Some(body)).await?;
        decode_json(OP, &resp.body)
    }

    /// Register a job document as is (tests and examples).
    ///
    /// # Errors
    ///
    /// Transport failures and refusals.
    pub async fn register_raw(
        &self,
        namespace: &str,
        job: &Value,
    ) -> Result<WriteResponse, NomadError> {
        const OP: &str = "job_register";
        let url = self.url("/v1/jobs", Some(namespace), &[]);
        let resp = self
            .call(OP, Method::POST, url, Some(json!({ "Job": job })))
            .await?;
        decode_json(OP, &resp.body)
    }

    /// Revert a job to `version`, only if its current version is
    /// `enforce_prior_version`. Nomad records the revert as a new version.
    ///
    /// # Errors
    ///
    /// [`NomadError::is_enforce_version_conflict`] when the job moved on.
    pub async fn revert(
        &self,
        namespace: &str,
        id: &str,
        version: u64,
        enforce_prior_version: u64,
    ) -> Result<WriteResponse, NomadError> {
        const OP: &str = "job_revert";
        let url = self.url(
            &format!("/v1/job/{}/revert", Self::id(id)),
            Some(namespace),
            &[],
        );
        let body = json!({
            "JobID": id,
            "JobVersion": version,
            "EnforcePriorVersion": enforce_prior_version,
        });
        let resp = self.call(OP, Method::POST, url, Some(body)).await?;
        decode_json(OP, &resp.body)
    }

    /// The job's most recent deployment (`None`: Nomad answers `null`).
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn latest_deployment(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Option<Deployment>>, NomadError> {
        let path = format!("/v1/job/{}/deployment", Self::id(id));
        self.get_read("job_deployment", &path, Some(namespace), block)
            .await
    }

    /// A deployment by id, optionally as a blocking query.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn deployment(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Deployment>, NomadError> {
        let path = format!("/v1/deployment/{}", Self::id(id));
        self.get_read("deployment_read", &path, Some(namespace), block)
            .await
    }

    /// The allocations a deployment placed.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn deployment_allocations(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Vec<Allocation>, NomadError> {
        let path = format!("/v1/deployment/allocations/{}", Self::id(id));
        let list: Option<Vec<Allocation>> = self
            .get_read("deployment_allocations", &path, Some(namespace), None)
            .await?
            .value;
        Ok(list.unwrap_or_default())
    }

    /// The allocations of a job.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn job_allocations(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Vec<Allocation>, NomadError> {
        let path = format!("/v1/job/{}/allocations", Self::id(id));
        let list: Option<Vec<Allocation>> = self
            .get_read("job_allocations", &path, Some(namespace), None)
            .await?
            .value;
        Ok(list.unwrap_or_default())
    }

    /// Service check results of an allocation (Nomad-native services).
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn allocation_checks(
        &self,
        namespace: &str,
        alloc_id: &str,
    ) -> Result<Vec<CheckResult>, NomadError> {
        let path = format!("/v1/client/allocation/{}/checks", Self::id(alloc_id));
        let map: Option<BTreeMap<String, CheckResult>> = self
            .get_read("allocation_checks", &path, Some(namespace), None)
            .await?
            .value;
        Ok(map.unwrap_or_default().into_values().collect())
    }

    /// Promote every group's canaries.
    ///
    /// # Errors
    ///
    /// Transport failures and refusals.
    pub async fn promote(&self, namespace: &str, deployment_id: &str) -> Result<(), NomadError> {
        const OP: &str = "deployment_promote";
        let url = self.url(
            &format!("/v1/deployment/promote/{}", Self::id(deployment_id)),
            Some(namespace),
            &[],
        );
        let body = json!({"DeploymentID": deployment_id, "All": true});
        self.call(OP, Method::POST, url, Some(body)).await?;
        Ok(())
    }

    /// Mark a deployment failed (Nomad then stops placing; with
    /// `auto_revert` it also reverts).
    ///
    /// # Errors
    ///
    /// Transport failures and refusals (e.g. already terminal).
    pub async fn fail_deployment(
        &self,
        namespace: &str,
        deployment_id: &str,
    ) -> Result<(), NomadError> {
        const OP: &str = "deployment_fail";
        let url = self.url(
            &format!("/v1/deployment/fail/{}", Self::id(deployment_id)),
            Some(namespace),
            &[],
        );
        let body = json!({"DeploymentID": deployment_id});
        self.call(OP, Method::POST, url, Some(body)).await?;
        Ok(())
    }

    /// Read an evaluation, optionally blocking until it changes.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected answers.
    pub async fn evaluation(
        &self,
        namespace: &str,
        id: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Evaluation>, NomadError> {
        let path = format!("/v1/evaluation/{}", Self::id(id));
        self.get_read("evaluation_read", &path, Some(namespace), block)
            .await
    }

    /// Whether a namespace exists (`/v1/namespace/<name>`).
    ///
    /// # Errors
    ///
    /// Transport failures and statuses other than 200/404.
    pub async fn namespace_exists(&self, name: &str) -> Result<bool, NomadError> {
        const OP: &str = "namespace_read";
        let url = self.url(&format!("/v1/namespace/{}", Self::id(name)), None, &[]);
        match self.call(OP, Method::GET, url, None).await {
            Ok(_) => Ok(true),
            Err(NomadError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ask Nomad to plan a job without registering it: proves the token
    /// may submit it (`submit-job` is needed for plan too).
    ///
    /// # Errors
    ///
    /// Transport failures and refusals (403 when the token may not).
    pub async fn plan(&self, job: &Job) -> Result<(), NomadError> {
        const OP: &str = "job_plan";
        let url = self.url(
            &format!("/v1/job/{}/plan", Self::id(&job.id)),
            Some(&job.namespace),
            &[],
        );
        let body = json!({"Job": job.raw, "Diff": false});
        self.call(OP, Method::POST, url, Some(body)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_namespace_and_region_first() {
        let http = HttpClient::new(&Default::default()).expect("client");
        let n = Nomad::new(
            http,
            NomadSettings {
                address: "http://127.0.0.1:1".into(),
                token: None,
                region: Some("eu".into()),
                timeout: Duration::from_secs(1),
            },
        );
        assert_eq!(
            n.url("/v1/job/web", Some("team a"), &[("index", "3".into())]),
            "http://127.0.0.1:1/v1/job/web?namespace=team%20a&region=eu&index=3"
        );
    }

    #[test]
    fn conflicts_are_recognised_from_nomads_text() {
        let e = NomadError::Status {
            op: "job_register",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: "Enforcing job modify index 10: job exists with conflicting job modify index: 22"
                .into(),
        };
        assert!(e.is_enforce_index_conflict());
        assert!(!e.is_transient(), "a lost race is not retried blindly");
        let e = NomadError::Status {
            op: "job_revert",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: "Current job has version 1; enforcing version 0".into(),
        };
        assert!(e.is_enforce_version_conflict());
        let e = NomadError::Status {
            op: "job_read",
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: "rpc error: No cluster leader".into(),
        };
        assert!(e.is_transient());
    }

    #[test]
    fn meta_is_set_in_the_passthrough_document() {
        let mut job = Job::from_raw(
            json!({"ID": "web", "Version": 3, "JobModifyIndex": 40, "Meta": null, "Future": {"x": 1}}),
            "t",
        )
        .unwrap();
        job.set_meta("image_tag", "1.2");
        assert_eq!(job.meta("image_tag"), Some("1.2"));
        assert_eq!(job.raw["Future"]["x"], 1, "unknown fields survive");
    }
}

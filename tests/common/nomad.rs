//! Real `nomad agent -dev` on loopback, next to a [`ConsulAgent`], plus
//! blocking helpers over Nomad's HTTP API for assertions that must not
//! depend on tagbridge's own Nomad client.
//!
//! The agent runs under the same watchdog as Consul, so it never outlives
//! the test binary. In dev mode Nomad kills every allocation when it gets
//! SIGTERM (about 1.5 s for nine tasks here); as a backstop (an agent that
//! was SIGKILLed leaves its tasks, executors and logmon plugins behind),
//! dropping a [`NomadAgent`] also kills, by pid, any process still running
//! from or holding files in its data directory, and unmounts the task
//! directories' tmpfs mounts left there.
//!
//! Known agent facts (see ../shared/design/tagbridge.md section 8): the
//! cloud fingerprinters must be denied or the agent dies at start-up on
//! this machine; readiness (node `ready`, raw_exec healthy) takes a few
//! seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};

use super::agents::{ConsulAgent, Watched};
use super::http1::{blocking_get, http1_request_h, probe};
use super::paths::{free_ports, provide, repo_root, TempDir};
use super::wait::wait;

/// Path of the pinned Nomad binary (built once, then cached).
pub fn nomad_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| provide("install-agents.sh", &["nomad"]))
        .clone()
}

/// Path of the built `tagbridge-testsvc` (Cargo builds every bin target of
/// the package before the integration tests).
pub fn testsvc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tagbridge-testsvc"))
}

/// Path of a job file under `nomad/`, e.g. `job_file("web-template")`.
pub fn job_file(name: &str) -> PathBuf {
    repo_root().join("nomad").join(format!("{name}.nomad.hcl"))
}

/// Deployment statuses after which Nomad changes nothing by itself.
pub const TERMINAL_DEPLOYMENT: [&str; 3] = ["successful", "failed", "cancelled"];

/// How long the agent may take to get a ready node with raw_exec.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A real `nomad agent -dev` (server and client) on free loopback ports,
/// using the given Consul for templates. Stopped on drop.
pub struct NomadAgent {
    pub http_port: u16,
    /// RPC and Serf ports (also bound by the agent).
    pub ports: Vec<u16>,
    proc: Option<Watched>,
    log: PathBuf,
    data_dir: PathBuf,
    /// Allocation id → (host ip, "http" port); ports never change.
    port_cache: Mutex<HashMap<String, (String, u16)>>,
    /// Management token when the agent runs with ACLs (sent by `api`).
    pub token: Option<String>,
    pub dir: TempDir,
}

impl NomadAgent {
    /// Start an agent wired to `consul` and wait (≤ 60 s) until its node
    /// is ready with a healthy raw_exec driver; panics with the log
    /// otherwise.
    pub fn start(consul: &ConsulAgent) -> Self {
        Self::start_with(consul, false)
    }

    /// With `acl`, the agent runs with ACLs enabled (default deny) and is
    /// bootstrapped through the API with a management token the harness
    /// keeps in `token`.
    pub fn start_with(consul: &ConsulAgent, acl: bool) -> Self {
        let dir = TempDir::new("nomad");
        let ports = free_ports(3);
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("mkdir nomad data");
        // Each agent gets its own slice of the dynamic port range, so two
        // agents on this machine (parallel tests) rarely hand out the same
        // host port: Nomad only accounts for its own allocations.
        static N: AtomicU64 = AtomicU64::new(0);
        let slot = (u64::from(std::process::id()) + N.fetch_add(1, Ordering::Relaxed)) % 24;
        let min_port = 20_000 + slot * 500;
        let config = format!(
            r#"# Written by tests/common/nomad.rs
data_dir  = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true

ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}

plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}

consul {{
  address          = "127.0.0.1:{consul}"
  # Keep the test Consul to KV: no nomad/nomad-client services, no joins.
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}}

client {{
  min_dynamic_port = {min_port}
  max_dynamic_port = {max_port}
  options = {{
    # env_aws dies fatally here (AWS_CA_BUNDLE is set); the others probe
    # cloud metadata addresses, which tests must never do.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
    # Only raw_exec is used; skips the Docker "no engine" errors and the
    # java/qemu probes.
    "driver.allowlist" = "raw_exec"
  }}
}}
"#,
            data = data_dir.display(),
            http = ports[0],
            rpc = ports[1],
            serf = ports[2],
            consul = consul.http_port,
            max_port = min_port + 499,
        );
        let config = if acl {
            format!("{config}\nacl {{\n  enabled = true\n}}\n")
        } else {
            config
        };
        let config_path = dir.write("agent.hcl", config);
        let log = dir.path().join("nomad.log");
        let args = vec![
            "agent".to_string(),
            "-dev".to_string(),
            format!("-config={}", config_path.display()),
        ];
        let proc = Watched::spawn(&nomad_bin(), &args, &log, &[]);
        let agent = NomadAgent {
            http_port: ports[0],
            ports,
            proc: Some(proc),
            log,
            data_dir,
            port_cache: Mutex::new(HashMap::new()),
            token: None,
            dir,
        };
        let mut agent = agent;
        if acl {
            agent.token = Some(agent.bootstrap_acl());
        }
        agent.wait_ready();
        agent
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `POST /v1/acl/bootstrap` (retried until the server has a leader).
    fn bootstrap_acl(&self) -> String {
        wait("the nomad ACL bootstrap", READY_WITHIN)
            .attempt(|| match self.api("POST", "/v1/acl/bootstrap", None) {
                Ok((200, v)) => Ok(v["SecretID"].as_str().expect("SecretID").to_string()),
                Ok((status, body)) => Err(format!("{status} {body}")),
                Err(e) => Err(e.to_string()),
            })
            .unwrap_or_else(|last| {
                panic!(
                    "nomad ACL bootstrap failed: {}\nlog:\n{}",
                    last.unwrap_or_default(),
                    self.log()
                )
            })
    }

    fn wait_ready(&self) {
        let ready = wait("a ready nomad node", READY_WITHIN).attempt(|| {
            let last = match self.api("GET", "/v1/nodes", None) {
                Ok((200, Value::Array(nodes))) => {
                    let ready = nodes.iter().any(|n| {
                        n["Status"] == "ready" && n["Drivers"]["raw_exec"]["Healthy"] == true
                    });
                    if ready {
                        return Ok(());
                    }
                    format!("nodes: {}", Value::Array(nodes))
                }
                Ok((status, body)) => format!("GET /v1/nodes: {status} {body}"),
                Err(e) => format!("GET /v1/nodes: {e}"),
            };
            let log = self.log();
            if log.contains("agent: shutdown complete") || log.contains("==> Error") {
                panic!("nomad agent exited during start-up; log:\n{log}");
            }
            Err(last)
        });
        if let Err(last) = ready {
            panic!(
                "nomad agent not ready (node ready + raw_exec healthy) within {} s; last: {}\nlog:\n{}",
                READY_WITHIN.as_secs(),
                last.unwrap_or_default(),
                self.log()
            );
        }
    }

    /// One request to the Nomad HTTP API: status and body parsed as JSON
    /// (a body that is not JSON comes back as a JSON string).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let url = format!("{}{path}", self.addr());
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let headers: Vec<(&str, &str)> = self
            .token
            .as_deref()
            .map(|t| vec![("X-Nomad-Token", t)])
            .unwrap_or_default();
        let (status, text) = http1_request_h(method, &url, &headers, payload.as_bytes())?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Like [`api`](Self::api) but panics unless the answer is 200.
    pub fn api_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        match self.api(method, path, body) {
            Ok((200, v)) => v,
            other => panic!("nomad {method} {path}: {other:?}"),
        }
    }

    /// Parse a job file with `POST /v1/jobs/parse` (canonicalized), passing
    /// `vars` as HCL variable assignments. Values are quoted as HCL strings
    /// (Nomad converts them to the declared number/bool type), except that a
    /// value starting with `[` or `{` is passed as a raw HCL expression
    /// (e.g. `("datacenters", r#"["dc1"]"#)`).
    pub fn parse_job(&self, hcl_path: &Path, vars: &[(&str, &str)]) -> Value {
        let hcl = std::fs::read_to_string(hcl_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", hcl_path.display()));
        let variables: String = vars
            .iter()
            .map(|(k, v)| {
                if v.starts_with('[') || v.starts_with('{') {
                    format!("{k} = {v}\n")
                } else {
                    format!("{k} = {}\n", hcl_string(v))
                }
            })
            .collect();
        let body = json!({"JobHCL": hcl, "Variables": variables, "Canonicalize": true});
        match self.api("POST", "/v1/jobs/parse", Some(&body)) {
            Ok((200, job)) => job,
            other => panic!("nomad parse {}: {other:?}", hcl_path.display()),
        }
    }

    /// Register (create or update) a job: `POST /v1/jobs {"Job": job}`.
    /// Returns the evaluation id and the new `JobModifyIndex`.
    pub fn register(&self, job: &Value) -> (String, u64) {
        let r = self.api_ok("POST", "/v1/jobs", Some(&json!({ "Job": job })));
        (
            r["EvalID"].as_str().unwrap_or_default().to_string(),
            r["JobModifyIndex"].as_u64().expect("JobModifyIndex"),
        )
    }

    /// `GET /v1/job/<id>`; `Value::Null` when the job does not exist.
    pub fn job(&self, id: &str) -> Value {
        match self.api("GET", &format!("/v1/job/{id}"), None) {
            Ok((200, v)) => v,
            Ok((404, _)) => Value::Null,
            other => panic!("nomad GET job {id}: {other:?}"),
        }
    }

    /// `GET /v1/job/<id>/allocations` (stubs: no resources, with
    /// `ClientStatus`, `DesiredStatus`, `JobVersion`, `DeploymentStatus`,
    /// `TaskStates`).
    pub fn allocations(&self, job_id: &str) -> Vec<Value> {
        match self.api_ok("GET", &format!("/v1/job/{job_id}/allocations"), None) {
            Value::Array(a) => a,
            other => panic!("allocations of {job_id}: {other}"),
        }
    }

    /// `GET /v1/allocation/<id>` (the full allocation).
    pub fn allocation(&self, alloc_id: &str) -> Value {
        self.api_ok("GET", &format!("/v1/allocation/{alloc_id}"), None)
    }

    /// The job's latest deployment (`GET /v1/job/<id>/deployment`, which
    /// answers `null` when there is none).
    pub fn latest_deployment(&self, job_id: &str) -> Option<Value> {
        match self.api_ok("GET", &format!("/v1/job/{job_id}/deployment"), None) {
            Value::Null => None,
            d => Some(d),
        }
    }

    /// Poll (every 250 ms, at most `timeout`) until the latest deployment
    /// is for the job's current version and `done(deployment)` holds;
    /// returns it. Panics with the allocations and the log tail on timeout.
    pub fn wait_deployment(
        &self,
        job_id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let found = wait(format!("the deployment of {job_id}"), timeout).attempt(|| {
            let version = self.job(job_id)["Version"].as_u64();
            let d = self.latest_deployment(job_id)?;
            if version.is_some() && d["JobVersion"].as_u64() == version && done(&d) {
                return Some(d);
            }
            last = d;
            None
        });
        found.unwrap_or_else(|_| {
            panic!(
                "deployment of {job_id} not done within {timeout:?}; last deployment: {last}\nallocations: {}\nnomad log tail:\n{}",
                summarize_allocs(&self.allocations(job_id)),
                self.log_tail(40)
            )
        })
    }

    /// Wait until the deployment of the job's current version is terminal
    /// (`successful`, `failed` or `cancelled`); returns it. A canary
    /// deployment waiting for promotion stays `running` (StatusDescription
    /// "Deployment is running but requires manual promotion").
    pub fn wait_deployment_terminal(&self, job_id: &str, timeout: Duration) -> Value {
        self.wait_deployment(job_id, timeout, |d| {
            TERMINAL_DEPLOYMENT.contains(&d["Status"].as_str().unwrap_or_default())
        })
    }

    /// `(host ip, port)` of the allocation's dynamic port labelled `http`,
    /// from `AllocatedResources.Shared.Ports[]` (`Label`, `Value`,
    /// `HostIP`), else `AllocatedResources.Shared.Networks[].DynamicPorts`,
    /// else the legacy `Resources.Networks[].DynamicPorts` (`IP` beside).
    pub fn alloc_http_port(&self, alloc_id: &str) -> Option<(String, u16)> {
        if let Some(hit) = self.port_cache.lock().expect("cache").get(alloc_id) {
            return Some(hit.clone());
        }
        let alloc = self.allocation(alloc_id);
        let found = http_port_of(&alloc)?;
        self.port_cache
            .lock()
            .expect("cache")
            .insert(alloc_id.to_string(), found.clone());
        Some(found)
    }

    /// Allocations of the job that may have a live process (client status
    /// `pending` or `running`, whatever their desired status).
    fn live_allocs(&self, job_id: &str) -> Vec<(String, u16)> {
        self.allocations(job_id)
            .iter()
            .filter(|a| matches!(a["ClientStatus"].as_str(), Some("running" | "pending")))
            .filter_map(|a| self.alloc_http_port(a["ID"].as_str()?))
            .collect()
    }

    /// The tags reported (`GET /tag`, 200) by the job's live instances,
    /// sorted. Instances that do not answer within 1 s are left out.
    pub fn running_tags(&self, job_id: &str) -> Vec<String> {
        let mut tags: Vec<String> =
            probe_all(&self.live_allocs(job_id), "/tag", Duration::from_secs(1))
                .into_iter()
                .filter_map(|r| match r {
                    Some((200, body)) => Some(body.trim().to_string()),
                    _ => None,
                })
                .collect();
        tags.sort();
        tags
    }

    /// How many of the job's instances answer `GET /healthz` with 200
    /// within 300 ms right now (the downtime sampler's measure).
    pub fn answering(&self, job_id: &str) -> usize {
        probe_all(
            &self.live_allocs(job_id),
            "/healthz",
            Duration::from_millis(300),
        )
        .into_iter()
        .filter(|r| matches!(r, Some((200, _))))
        .count()
    }

    /// Stop the job (`DELETE /v1/job/<id>`, no purge); returns the eval id.
    pub fn stop_job(&self, id: &str) -> String {
        let r = self.api_ok("DELETE", &format!("/v1/job/{id}"), None);
        r["EvalID"].as_str().unwrap_or_default().to_string()
    }

    /// Stop the agent; then kill, by pid, anything still running from its
    /// data directory (task processes, executors, logmon plugins) and
    /// unmount what the client mounted there, so the directory can go.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
            kill_leftovers(&self.data_dir);
            unmount_leftovers(&self.data_dir);
        }
    }
}

impl Drop for NomadAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- nomad log tail ({}):\n{}\n----",
                self.log.display(),
                self.log_tail(60)
            );
        }
        self.stop();
    }
}

/// An HCL string literal for `s` (quotes, backslashes and template
/// sequences escaped).
fn hcl_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .replace("${", "$${")
        .replace("%{", "%%{");
    format!("\"{escaped}\"")
}

fn http_port_of(alloc: &Value) -> Option<(String, u16)> {
    let shared = &alloc["AllocatedResources"]["Shared"];
    if let Some(ports) = shared["Ports"].as_array() {
        for p in ports {
            if p["Label"] == "http" {
                let ip = p["HostIP"].as_str().unwrap_or("127.0.0.1").to_string();
                return Some((ip, u16::try_from(p["Value"].as_u64()?).ok()?));
            }
        }
    }
    for networks in [&shared["Networks"], &alloc["Resources"]["Networks"]] {
        for n in networks.as_array().into_iter().flatten() {
            for p in n["DynamicPorts"].as_array().into_iter().flatten() {
                if p["Label"] == "http" {
                    let ip = n["IP"].as_str().unwrap_or("127.0.0.1").to_string();
                    return Some((ip, u16::try_from(p["Value"].as_u64()?).ok()?));
                }
            }
        }
    }
    None
}

/// `GET path` on every instance at once; `None` for no answer in time.
fn probe_all(
    targets: &[(String, u16)],
    path: &str,
    timeout: Duration,
) -> Vec<Option<(u16, String)>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(ip, port)| s.spawn(move || probe(ip, *port, path, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    })
}

/// One line per allocation, for failure messages.
pub fn summarize_allocs(allocs: &[Value]) -> String {
    allocs
        .iter()
        .map(|a| {
            format!(
                "\n  {} v{} client={} desired={} deployment_healthy={} canary={}",
                a["ID"].as_str().unwrap_or("?").get(..8).unwrap_or("?"),
                a["JobVersion"],
                a["ClientStatus"],
                a["DesiredStatus"],
                a["DeploymentStatus"]["Healthy"],
                a["DeploymentStatus"]["Canary"],
            )
        })
        .collect()
}

/// Kill (by pid) every process whose working directory, command line or an
/// open file is inside `dir`: raw_exec tasks run in
/// `<data>/alloc/<id>/<task>`, their executors name a log file there and
/// the logmon plugins hold the log FIFOs there. Only processes of this
/// agent match.
fn kill_leftovers(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let needle = dir.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    let mut pids = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cwd_inside = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.starts_with(&dir))
            .unwrap_or(false);
        let cmd_inside = std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
            .unwrap_or(false);
        let fd_inside = || {
            std::fs::read_dir(e.path().join("fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .map(|p| p.starts_with(&dir))
                            .unwrap_or(false)
                    })
                })
                .unwrap_or(false)
        };
        if cwd_inside || cmd_inside || fd_inside() {
            pids.push(pid.to_string());
        }
    }
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Unmount every mount point inside `dir`, deepest first. Nomad (as root)
/// mounts a tmpfs on each task's `secrets` and `private` directory and
/// removes it when the allocation is destroyed; an agent that died without
/// that leaves them behind and the directory could not be removed.
fn unmount_leftovers(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A durable Nomad server (its own agent and data dir, restartable on the
/// same ports) for [`NomadAgent::start_split`]. A combined dev agent cannot
/// be restarted: it restores allocations before its keyring loads and they
/// fail with `pre-run hook "group_services" failed: rpc error: Permission
/// denied`, so the client runs as a separate agent that stays up.
pub struct NomadServer {
    proc: Option<Watched>,
    args: Vec<String>,
    log: PathBuf,
    pub http_port: u16,
    _dir: TempDir,
}

impl NomadServer {
    /// Stop the server agent (SIGTERM; its raft data stays).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Start it again from the same data dir and ports, and wait (≤ 60 s)
    /// until it has a leader again.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "already running");
        self.proc = Some(Watched::spawn(&nomad_bin(), &self.args, &self.log, &[]));
        let url = format!("http://127.0.0.1:{}/v1/status/leader", self.http_port);
        let leader = wait("a nomad server leader", READY_WITHIN)
            .every(Duration::from_millis(100))
            .attempt(|| blocking_get(&url).is_ok_and(|b| b.len() > 4));
        if leader.is_err() {
            panic!(
                "nomad server had no leader within 60 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for NomadServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NomadAgent {
    /// A server agent with a data dir and a separate client agent, both
    /// non-dev. The returned [`NomadAgent`] is the client process and talks
    /// to the server's HTTP API (so `addr()` is the server); drop it before
    /// the [`NomadServer`].
    pub fn start_split(consul: &ConsulAgent) -> (Self, NomadServer) {
        let dir = TempDir::new("nomad-client");
        let sdir = TempDir::new("nomad-server");
        let sp = free_ports(3);
        let cp = free_ports(3);
        let sdata = sdir.path().join("data");
        let cdata = dir.path().join("client");
        std::fs::create_dir_all(&sdata).expect("mkdir server data");
        std::fs::create_dir_all(&cdata).expect("mkdir client data");
        static N: AtomicU64 = AtomicU64::new(7);
        let slot = (u64::from(std::process::id()) + N.fetch_add(1, Ordering::Relaxed)) % 24;
        let min_port = 20_000 + slot * 500;
        let consul_block = format!(
            r#"consul {{
  address          = "127.0.0.1:{}"
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}}"#,
            consul.http_port
        );
        let server = format!(
            r#"data_dir  = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true
ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}
server {{
  enabled          = true
  bootstrap_expect = 1
}}
# Non-dev agents refuse to guess an advertise address on loopback.
advertise {{
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}}
{consul_block}
"#,
            data = sdata.display(),
            http = sp[0],
            rpc = sp[1],
            serf = sp[2],
        );
        let client = format!(
            r#"data_dir  = "{data}"
bind_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true
ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}
advertise {{
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}}
plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}
client {{
  enabled          = true
  servers          = ["127.0.0.1:{server_rpc}"]
  min_dynamic_port = {min_port}
  max_dynamic_port = {max_port}
  options = {{
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
    "driver.allowlist"     = "raw_exec"
  }}
}}
{consul_block}
"#,
            data = cdata.display(),
            http = cp[0],
            rpc = cp[1],
            serf = cp[2],
            server_rpc = sp[1],
            max_port = min_port + 499,
        );
        let scfg = sdir.write("server.hcl", server);
        let ccfg = dir.write("client.hcl", client);
        let slog = sdir.path().join("server.log");
        let clog = dir.path().join("client.log");
        let mut srv = NomadServer {
            proc: None,
            args: vec!["agent".into(), format!("-config={}", scfg.display())],
            log: slog,
            http_port: sp[0],
            _dir: sdir,
        };
        srv.start();
        let cargs = vec!["agent".to_string(), format!("-config={}", ccfg.display())];
        let proc = Watched::spawn(&nomad_bin(), &cargs, &clog, &[]);
        let agent = NomadAgent {
            http_port: sp[0],
            ports: sp,
            proc: Some(proc),
            log: clog,
            data_dir: cdata,
            port_cache: Mutex::new(HashMap::new()),
            token: None,
            dir,
        };
        agent.wait_ready();
        (agent, srv)
    }
}

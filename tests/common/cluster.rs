//! The one cluster harness: a Consul agent, optionally a Nomad agent (dev,
//! or a restartable server plus a client), optionally an OCI registry,
//! the test certificate and a scratch directory, started with
//! [`Cluster::options`]. On top of it, what the rollout tests and the
//! rollout benchmark share: the example job run to a healthy start, the
//! configuration of the signed `generic` service "web", and the webhook
//! tests' configuration and posting.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::agents::ConsulAgent;
use super::bridge::{hook_path, post_hook, InProcess};
use super::config::{Service, TbConfig};
use super::nomad::{job_file, testsvc_bin, NomadAgent, NomadServer};
use super::paths::TempDir;
use super::registry::CraneRegistry;
use super::tls::TestTls;
use super::wait::{blocking, wait};

/// The webhook signing key of service "web".
pub const SIGNING: &str = "rollout-signing-key";

/// The Consul key service "web" writes (the example jobs' `tag_key`).
pub const KEY: &str = "configs/web/IMAGE_TAG";

/// How Nomad runs in a [`Cluster`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NomadMode {
    None,
    /// One `nomad agent -dev` (server and client).
    Dev,
    /// A durable server agent plus a separate client agent, so the server
    /// can be restarted ([`NomadAgent::start_split`]).
    Split,
}

/// What a [`Cluster`] runs; [`Options::start`] starts it.
#[must_use = "call .start()"]
pub struct Options {
    tag: String,
    nomad: NomadMode,
    durable_consul: bool,
    registry: bool,
}

impl Options {
    /// With a Nomad dev agent beside Consul.
    pub fn nomad(mut self) -> Self {
        self.nomad = NomadMode::Dev;
        self
    }

    /// With Nomad as a durable server agent and a separate client agent,
    /// so the server can be restarted (`cluster.server`).
    pub fn split_nomad(mut self) -> Self {
        self.nomad = NomadMode::Split;
        self
    }

    /// Consul as a server with a data dir (not `-dev`), so a restart keeps
    /// KV, sessions and locks.
    pub fn durable_consul(mut self) -> Self {
        self.durable_consul = true;
        self
    }

    /// With `crane registry serve` on loopback (`cluster.registry`).
    pub fn registry(mut self) -> Self {
        self.registry = true;
        self
    }

    /// Start the agents (blocking; from an async test it runs through
    /// [`blocking`]) and wait until each is ready.
    pub fn start(self) -> Cluster {
        blocking(|| {
            let slot = (self.nomad != NomadMode::None).then(Slot::take);
            let consul = if self.durable_consul {
                ConsulAgent::start_durable()
            } else {
                ConsulAgent::start()
            };
            let (nomad, server) = match self.nomad {
                NomadMode::None => (None, None),
                NomadMode::Dev => (Some(NomadAgent::start(&consul)), None),
                NomadMode::Split => {
                    let (n, s) = NomadAgent::start_split(&consul);
                    (Some(n), Some(s))
                }
            };
            let registry = self.registry.then(CraneRegistry::start);
            let dir = TempDir::new(&self.tag);
            let tls = TestTls::new(&dir);
            let client = tls.client();
            Cluster {
                nomad,
                server,
                registry,
                consul,
                dir,
                tls,
                client,
                _slot: slot,
            }
        })
    }
}

/// Real agents on loopback, the test certificate and a scratch directory.
pub struct Cluster {
    // Field order is drop order: Nomad (and its tasks) before Consul; the
    // slot goes last, once the agents are gone.
    /// The Nomad agent, if started ([`Cluster::nomad`] is shorter).
    pub nomad: Option<NomadAgent>,
    /// The restartable Nomad server (`split_nomad` only).
    pub server: Option<NomadServer>,
    pub registry: Option<CraneRegistry>,
    pub consul: ConsulAgent,
    pub dir: TempDir,
    pub tls: TestTls,
    /// A client trusting the test certificate.
    pub client: reqwest::Client,
    _slot: Option<Slot>,
}

impl Cluster {
    /// What to start: Consul, the certificate and a directory named for
    /// `tag` (it shows in a failing test's paths); add Nomad, a registry…
    pub fn options(tag: &str) -> Options {
        Options {
            tag: tag.to_string(),
            nomad: NomadMode::None,
            durable_consul: false,
            registry: false,
        }
    }

    /// The Nomad agent; panics on a cluster started without one.
    pub fn nomad(&self) -> &NomadAgent {
        self.nomad
            .as_ref()
            .expect("a cluster started with .nomad() or .split_nomad()")
    }

    /// The registry; panics on a cluster started without one.
    pub fn registry(&self) -> &CraneRegistry {
        self.registry
            .as_ref()
            .expect("a cluster started with .registry()")
    }

    /// The base configuration on these agents: the listener, pretty logs,
    /// the test certificate, Consul, and Nomad when it runs.
    pub fn config(&self) -> TbConfig {
        let config = TbConfig::new()
            .log_format("pretty")
            .tls(&self.tls)
            .consul(self.consul.addr());
        match &self.nomad {
            Some(n) => config.nomad(n.addr()),
            None => config,
        }
    }

    // ---- the rollout world: service "web" on the example jobs ----

    /// Service "web": signed `generic`, repository `acme/web`, key [`KEY`]
    /// (its signing key written to the directory).
    pub fn web(&self) -> Service {
        let signing = self.dir.write("web.hmac", SIGNING);
        Service::new("web", "generic")
            .key(KEY)
            .signing_file(&signing)
    }

    /// The configuration of service "web" with an admin listener: `extra`
    /// adds top-level text; `rollout` the lines of its rollout block
    /// (`None`: the service only writes its key).
    pub fn web_config(&self, extra: &str, rollout: Option<&[&str]>) -> String {
        let web = match rollout {
            Some(lines) => self.web().rollout(lines),
            None => self.web(),
        };
        self.config()
            .admin_listen("127.0.0.1:0")
            .top(extra)
            .service(web)
            .render()
    }

    /// Write [`KEY`], register the example job `file` as "web" at `tag`
    /// with three instances (`vars` add job variables), wait (≤ 90 s) until
    /// its deployment is successful.
    pub fn run_job(&self, file: &str, tag: &str, vars: &[(&str, &str)]) {
        self.run_job_within(file, tag, vars, |_| {}, Duration::from_secs(90));
    }

    /// [`Cluster::run_job`], letting `edit` change the job document.
    pub fn run_job_with(
        &self,
        file: &str,
        tag: &str,
        vars: &[(&str, &str)],
        edit: impl FnOnce(&mut Value),
    ) {
        self.run_job_within(file, tag, vars, edit, Duration::from_secs(90));
    }

    /// [`Cluster::run_job_with`], waiting up to `limit`.
    pub fn run_job_within(
        &self,
        file: &str,
        tag: &str,
        vars: &[(&str, &str)],
        edit: impl FnOnce(&mut Value),
        limit: Duration,
    ) {
        blocking(|| {
            let nomad = self.nomad();
            self.consul.put(KEY, tag);
            let testsvc = testsvc_bin();
            let mut all = vec![
                ("testsvc", testsvc.to_str().expect("utf-8 path")),
                ("count", "3"),
                ("job_name", "web"),
            ];
            all.extend_from_slice(vars);
            let mut job = nomad.parse_job(&job_file(file), &all);
            job["Meta"]["image_tag"] = json!(tag);
            edit(&mut job);
            nomad.register(&job);
            let d = nomad.wait_deployment_terminal("web", limit);
            assert_eq!(d["Status"], "successful", "initial deployment: {d}");
        });
    }

    /// Service "web"'s deployed record (`tagbridge/deployed/web`).
    pub fn deployed(&self) -> Option<Value> {
        self.consul
            .kv("tagbridge/deployed/web")
            .map(|v| serde_json::from_str(&v).expect("deployed record is JSON"))
    }

    /// Wait until the controller records a final outcome for `tag`.
    pub async fn outcome_for(&self, tag: &str, limit: Duration) -> Value {
        wait(format!("an outcome for {tag}"), limit)
            .until_async(|| {
                self.deployed().filter(|d| {
                    let busy =
                        matches!(d["outcome"].as_str(), Some("in_progress" | "rolling_back"));
                    !busy && (d["tag"] == tag || d["previous"] == tag)
                })
            })
            .await
    }

    // ---- the webhook world: services written by hand, on Consul ----

    /// The webhook tests' configuration: pretty logs, a 2 s Consul
    /// timeout, `extra` top-level settings and `services` as written (with
    /// `{SECRET:name}` for the secret hash of `name`).
    pub fn hooks_config(&self, extra: &str, services: &str) -> String {
        self.config()
            .consul_attr("timeout", "2s")
            .top(extra)
            .services_text(services)
            .render()
    }

    /// Serve [`Cluster::hooks_config`] in this process.
    pub async fn serve(&self, extra: &str, services: &str) -> InProcess {
        InProcess::start(&self.hooks_config(extra, services), &self.dir).await
    }

    /// POST `body` to `name`'s webhook URL on `tb`.
    pub async fn post(&self, tb: &InProcess, name: &str, body: Vec<u8>) -> (u16, Value) {
        self.post_h(tb, name, body, &[]).await
    }

    /// [`Cluster::post`] with headers.
    pub async fn post_h(
        &self,
        tb: &InProcess,
        name: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        post_hook(&self.client, tb.url(&hook_path(name)), body, headers).await
    }
}

/// Nomad clusters are heavy (an agent, three services each): at most two
/// at once per test binary on a 2-core machine, or health checks start
/// timing out.
struct Slot;
static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl Slot {
    /// Blocks until a slot is free, an hour at most.
    fn take() -> Slot {
        let (lock, cv) = &SLOTS;
        let n = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut n, timeout) = cv
            .wait_timeout_while(n, Duration::from_secs(3600), |n| *n >= 2)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !timeout.timed_out(),
            "timed out after 1 h waiting for a free Nomad slot"
        );
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &SLOTS;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        cv.notify_one();
    }
}

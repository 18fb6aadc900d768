//! What the rollout tests and the rollout benchmark share on top of the
//! agents: an example job run to a healthy start, the configuration of the
//! signed `generic` service "web", and tagbridge in this process with its
//! controller, as `tagbridge serve` runs them.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::nomad::{job_file, testsvc_bin, NomadAgent};
use super::{hub_sig, secret_pair, ConsulAgent, InProcess, TempDir, TestTls};

/// The webhook signing key of service "web".
pub const SIGNING: &str = "rollout-signing-key";

/// The Consul key service "web" writes (the example jobs' `tag_key`).
pub const KEY: &str = "configs/web/IMAGE_TAG";

/// Write [`KEY`], register the example job `file` as "web" at `tag` with
/// three instances (`vars` add job variables), let `edit` change the job
/// document, and wait up to `limit` until its deployment is successful.
/// Blocks: call it through `block_in_place` from a runtime.
pub fn run_example_job(
    consul: &ConsulAgent,
    nomad: &NomadAgent,
    file: &str,
    tag: &str,
    vars: &[(&str, &str)],
    edit: impl FnOnce(&mut Value),
    limit: Duration,
) {
    consul.put(KEY, tag);
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
}

/// The configuration of service "web" (signed `generic`, key [`KEY`]) on
/// the agents: `extra` adds top-level blocks; `rollout` is the body of its
/// rollout block (`None`: the service only writes its key).
pub fn rollout_config(
    site: &impl Site,
    consul: &ConsulAgent,
    nomad: &NomadAgent,
    extra: &str,
    rollout: Option<&str>,
) -> String {
    let signing = site.dir().write("web.hmac", SIGNING);
    let (_, hash) = secret_pair("web");
    let rollout = rollout.map_or(String::new(), |r| format!("rollout {{\n    {r}\n  }}"));
    format!(
        r#"
listen       = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
log_format   = "pretty"
tls {{
  cert_file = "{cert}"
  key_file  = "{key}"
}}
consul {{
  address = "{consul}"
}}
nomad {{
  address = "{nomad}"
}}
{extra}
service "web" {{
  secret_sha256       = "{hash}"
  source              = "generic"
  repository          = "acme/web"
  key                 = "{KEY}"
  signing_secret_file = "{signing}"
  {rollout}
}}
"#,
        cert = site.tls().cert_file.display(),
        key = site.tls().key_file.display(),
        consul = consul.addr(),
        nomad = nomad.addr(),
        signing = signing.display(),
    )
}

/// Where an in-process tagbridge keeps its files and which certificate it
/// serves: a test's or the benchmark's cluster.
pub trait Site {
    fn dir(&self) -> &TempDir;
    fn tls(&self) -> &TestTls;
}

/// tagbridge in this process: the webhook listener, and the controller
/// when a service has a rollout block.
pub struct Tagbridge {
    pub server: Option<InProcess>,
    pub cancel: CancellationToken,
    pub controller: Option<tokio::task::JoinHandle<()>>,
    pub client: reqwest::Client,
}

impl Tagbridge {
    /// Serve `config`; `hook` runs before each register (a race to inject).
    pub async fn start(
        site: &impl Site,
        config: &str,
        hook: Option<tagbridge::rollout::Hook>,
    ) -> Self {
        let server = InProcess::start(config, site.dir()).await;
        let cancel = CancellationToken::new();
        let cfg = &server.state.config;
        let controller = cfg.services.iter().any(|s| s.rollout.is_some()).then(|| {
            let mut ctx = tagbridge::clients::rollout_context(cfg).expect("context");
            ctx.before_register = hook;
            tokio::spawn(tagbridge::controller::run(ctx, cancel.clone()))
        });
        Tagbridge {
            server: Some(server),
            cancel,
            controller,
            client: site.tls().client(),
        }
    }

    /// The signed webhook that pushes `tag`, ready to send.
    pub fn push_request(&self, tag: &str) -> reqwest::RequestBuilder {
        let body = serde_json::to_vec(&json!({"repository": "acme/web", "tag": tag})).unwrap();
        let server = self.server.as_ref().expect("running");
        self.client
            .post(server.url(&format!("/hooks/{}", secret_pair("web").0)))
            .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
            .body(body)
    }

    /// Send [`Tagbridge::push_request`]: the status and the JSON answer.
    pub async fn push(&self, tag: &str) -> (u16, Value) {
        let resp = self.push_request(tag).send().await.expect("webhook");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON answer"))
    }

    /// Stop the controller (bounded), then the listener.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(c) = self.controller.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), c).await;
        }
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

//! What the Consul-backed webhook tests share: one environment (a Consul
//! agent, a directory with the test certificate, a client that trusts it),
//! the configuration text they serve, and posting a webhook.

use std::time::Duration;

use serde_json::Value;

use super::{secret_pair, ConsulAgent, InProcess, TempDir, TestTls};

/// A configuration for webhook tests: the listener on a free loopback port,
/// `top` (further top-level settings: `log_format`, `admin_listen`…), the
/// test certificate, Consul with request `timeout`, then `services`, in
/// which `{SECRET:name}` stands for the secret hash of `name`.
pub fn webhook_config(
    tls: &TestTls,
    consul: &ConsulAgent,
    timeout: &str,
    top: &str,
    services: &str,
) -> String {
    let mut services = services.to_string();
    while let Some(start) = services.find("{SECRET:") {
        let end = start + services[start..].find('}').expect("closing brace");
        let name = &services[start + 8..end];
        let (_, hash) = secret_pair(name);
        services.replace_range(start..=end, &hash);
    }
    format!(
        r#"
listen = "127.0.0.1:0"
{top}
tls {{
  cert_file = "{cert}"
  key_file  = "{key}"
}}
consul {{
  address = "{consul}"
  timeout = "{timeout}"
}}
{services}
"#,
        cert = tls.cert_file.display(),
        key = tls.key_file.display(),
        consul = consul.addr(),
    )
}

/// The path of `service`'s webhook URL (its secret).
pub fn hook_path(service: &str) -> String {
    format!("/hooks/{}", secret_pair(service).0)
}

/// POST `body` (with `headers`) to `url`: `(status, the answer as JSON, or
/// as a JSON string when it is not JSON)`.
pub async fn post_hook(
    client: &reqwest::Client,
    url: String,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let mut req = client
        .post(url)
        // A bound so a hung server fails the test instead of hanging it;
        // not a performance assertion.
        .timeout(Duration::from_secs(120))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v.as_bytes());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A Consul agent, a directory with the test certificate, and a client
/// that trusts it.
pub struct Env {
    pub consul: ConsulAgent,
    pub tls: TestTls,
    pub dir: TempDir,
    pub client: reqwest::Client,
}

impl Env {
    /// `tag` names the directory (it shows in a failing test's paths).
    pub fn new(tag: &str) -> Self {
        let consul = ConsulAgent::start();
        let dir = TempDir::new(tag);
        let tls = TestTls::new(&dir);
        let client = tls.client();
        Env {
            consul,
            tls,
            dir,
            client,
        }
    }

    /// [`webhook_config`] on this agent and certificate, pretty logs, a 2 s
    /// Consul timeout, `extra` top-level settings.
    pub fn config(&self, extra: &str, services: &str) -> String {
        let top = format!("log_format = \"pretty\"\n{extra}");
        webhook_config(&self.tls, &self.consul, "2s", &top, services)
    }

    /// Serve [`Env::config`] in this process.
    pub async fn serve(&self, extra: &str, services: &str) -> InProcess {
        InProcess::start(&self.config(extra, services), &self.dir).await
    }

    /// POST `body` to `name`'s webhook URL on `tb`.
    pub async fn post(&self, tb: &InProcess, name: &str, body: Vec<u8>) -> (u16, Value) {
        self.post_h(tb, name, body, &[]).await
    }

    /// [`Env::post`] with headers.
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

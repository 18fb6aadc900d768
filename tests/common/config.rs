//! The one builder of tagbridge configuration text the tests serve:
//! [`TbConfig`] (the listener, TLS, Consul, Nomad, the state prefix and
//! further top-level lines) and [`Service`] (a `service` block with its
//! secret, source, key and rollout block). Tests that need a variant build
//! it here instead of formatting HCL by hand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::bridge::secret_pair;
use super::paths::TempDir;
use super::tls::TestTls;

/// An agent block (`consul { … }` or `nomad { … }`): its address and
/// further string attributes (`timeout`, `token_file`…).
#[derive(Clone, Debug)]
struct Agent {
    address: String,
    attrs: Vec<(String, String)>,
}

/// tagbridge's configuration, rendered by [`TbConfig::render`]. Starts as
/// `listen = "127.0.0.1:0"` and nothing else.
#[derive(Clone, Debug)]
pub struct TbConfig {
    listen: String,
    admin_listen: Option<String>,
    log_format: Option<String>,
    top: Vec<String>,
    tls: Option<(PathBuf, PathBuf)>,
    consul: Option<Agent>,
    nomad: Option<Agent>,
    services: Vec<String>,
}

impl TbConfig {
    /// Only the listener, on a free loopback port.
    pub fn new() -> Self {
        TbConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: None,
            log_format: None,
            top: Vec::new(),
            tls: None,
            consul: None,
            nomad: None,
            services: Vec::new(),
        }
    }

    pub fn admin_listen(mut self, addr: impl Into<String>) -> Self {
        self.admin_listen = Some(addr.into());
        self
    }

    /// `pretty` or `json`.
    pub fn log_format(mut self, format: impl Into<String>) -> Self {
        self.log_format = Some(format.into());
        self
    }

    /// Further top-level text, as it is (settings, `notify` blocks…);
    /// nothing when empty.
    pub fn top(mut self, text: impl Into<String>) -> Self {
        push_text(&mut self.top, text.into());
        self
    }

    /// The test certificate and key.
    pub fn tls(mut self, tls: &TestTls) -> Self {
        self.tls = Some((tls.cert_file.clone(), tls.key_file.clone()));
        self
    }

    /// A `consul` block with this address.
    pub fn consul(mut self, address: impl Into<String>) -> Self {
        self.consul = Some(Agent {
            address: address.into(),
            attrs: Vec::new(),
        });
        self
    }

    /// A string attribute in the `consul` block (`timeout`, `token_file`).
    pub fn consul_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        let consul = self.consul.as_mut().expect("consul(address) first");
        consul.attrs.push((name.into(), value.into()));
        self
    }

    /// A `nomad` block with this address.
    pub fn nomad(mut self, address: impl Into<String>) -> Self {
        self.nomad = Some(Agent {
            address: address.into(),
            attrs: Vec::new(),
        });
        self
    }

    /// A string attribute in the `nomad` block (`token_file`).
    pub fn nomad_attr(mut self, name: &str, value: impl Into<String>) -> Self {
        let nomad = self.nomad.as_mut().expect("nomad(address) first");
        nomad.attrs.push((name.into(), value.into()));
        self
    }

    /// One more service.
    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service.render());
        self
    }

    /// Service blocks written by hand, in which `{SECRET:name}` stands for
    /// the secret hash of `name` (see [`secret_pair`]).
    pub fn services_text(mut self, text: &str) -> Self {
        let mut text = text.to_string();
        while let Some(start) = text.find("{SECRET:") {
            let end = start + text[start..].find('}').expect("closing brace");
            let name = &text[start + 8..end];
            let (_, hash) = secret_pair(name);
            text.replace_range(start..=end, &hash);
        }
        if !text.trim().is_empty() {
            self.services.push(text);
        }
        self
    }

    /// The configuration text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "listen = {}", quoted(&self.listen));
        if let Some(a) = &self.admin_listen {
            let _ = writeln!(out, "admin_listen = {}", quoted(a));
        }
        if let Some(f) = &self.log_format {
            let _ = writeln!(out, "log_format = {}", quoted(f));
        }
        for t in &self.top {
            let _ = writeln!(out, "{t}");
        }
        if let Some((cert, key)) = &self.tls {
            let _ = writeln!(
                out,
                "tls {{\n  cert_file = {}\n  key_file  = {}\n}}",
                quoted_path(cert),
                quoted_path(key)
            );
        }
        for (name, agent) in [("consul", &self.consul), ("nomad", &self.nomad)] {
            let Some(agent) = agent else { continue };
            let _ = writeln!(out, "{name} {{\n  address = {}", quoted(&agent.address));
            for (k, v) in &agent.attrs {
                let _ = writeln!(out, "  {k} = {}", quoted(v));
            }
            out.push_str("}\n");
        }
        for s in &self.services {
            let _ = writeln!(out, "{s}");
        }
        out
    }

    /// Write [`TbConfig::render`] to `dir/name`.
    pub fn write(&self, dir: &TempDir, name: &str) -> PathBuf {
        dir.write(name, self.render())
    }
}

/// One `service` block. By default its secret is [`secret_pair`]'s for
/// its name, its repository `acme/<name>` and its key
/// `configs/<name>/IMAGE_TAG`.
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    source: String,
    secret_sha256: String,
    repository: String,
    key: String,
    signing_secret_file: Option<PathBuf>,
    lines: Vec<String>,
    rollout: Option<Vec<String>>,
}

impl Service {
    pub fn new(name: &str, source: &str) -> Self {
        Service {
            name: name.into(),
            source: source.into(),
            secret_sha256: secret_pair(name).1,
            repository: format!("acme/{name}"),
            key: format!("configs/{name}/IMAGE_TAG"),
            signing_secret_file: None,
            lines: Vec::new(),
            rollout: None,
        }
    }

    pub fn repository(mut self, repository: &str) -> Self {
        self.repository = repository.into();
        self
    }

    pub fn key(mut self, key: &str) -> Self {
        self.key = key.into();
        self
    }

    /// `signing_secret_file`: webhooks must carry a signature by it.
    pub fn signing_file(mut self, path: &Path) -> Self {
        self.signing_secret_file = Some(path.to_path_buf());
        self
    }

    /// Further text inside the block, as it is (`history_keep = 10`,
    /// `tags { … }`, `digest_key = "…"`…); nothing when empty.
    pub fn line(mut self, text: impl Into<String>) -> Self {
        push_text(&mut self.lines, text.into());
        self
    }

    /// A `rollout` block with these lines (`job = "web"`, `strategy = …`).
    pub fn rollout<S: AsRef<str>>(mut self, lines: &[S]) -> Self {
        let block = self.rollout.get_or_insert_with(Vec::new);
        for l in lines {
            push_text(block, l.as_ref().to_string());
        }
        self
    }

    /// The block's text (a test appending a service to a file uses it).
    pub fn render(&self) -> String {
        let mut out = format!("service {} {{\n", quoted(&self.name));
        let _ = writeln!(out, "  secret_sha256 = {}", quoted(&self.secret_sha256));
        let _ = writeln!(out, "  source = {}", quoted(&self.source));
        let _ = writeln!(out, "  repository = {}", quoted(&self.repository));
        let _ = writeln!(out, "  key = {}", quoted(&self.key));
        if let Some(f) = &self.signing_secret_file {
            let _ = writeln!(out, "  signing_secret_file = {}", quoted_path(f));
        }
        for l in &self.lines {
            let _ = writeln!(out, "  {l}");
        }
        if let Some(rollout) = &self.rollout {
            out.push_str("  rollout {\n");
            for l in rollout {
                let _ = writeln!(out, "    {l}");
            }
            out.push_str("  }\n");
        }
        out.push_str("}\n");
        out
    }
}

/// An HCL string literal (the test values hold no quotes, backslashes or
/// template sequences; a value that did would fail loudly here).
fn quoted(s: &str) -> String {
    assert!(
        !s.contains(['"', '\\']) && !s.contains("${") && !s.contains("%{"),
        "not a plain HCL string: {s:?}"
    );
    format!("\"{s}\"")
}

fn quoted_path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

/// Keep `text` unless it is blank: callers pass optional snippets as "".
fn push_text(to: &mut Vec<String>, text: String) {
    if !text.trim().is_empty() {
        to.push(text);
    }
}

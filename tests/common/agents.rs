//! The agents the tests run for real, and how they are kept from
//! outliving a test: every agent starts under a small shell watchdog
//! ([`Watched`]) that kills it when the test process's end of a pipe
//! closes (the test ended, panicked or the binary was killed). Also the
//! Consul agent itself ([`ConsulAgent`]: dev or durable, with raw KV
//! helpers independent of tagbridge's client). Nomad is in `nomad.rs`,
//! the registry in `registry.rs`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::http1::{blocking_get, blocking_get_status, http1_request};
use super::paths::{free_ports, provide, TempDir};
use super::wait::wait;

/// Path of the pinned Consul binary (built once, then cached).
pub fn consul_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| provide("install-agents.sh", &["consul"]))
        .clone()
}

/// A process started under the watchdog; killed on drop.
pub struct Watched {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watched {
    /// Start `program args…` with output appended to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path, envs: &[(&str, String)]) -> Self {
        let script = r#"prog=$1; log=$2; shift 2
"$prog" "$@" </dev/null >>"$log" 2>&1 &
child=$!
# Kill the child as soon as our stdin closes (test ended, panicked or died).
read -r _ || true
kill "$child" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$child" 2>/dev/null || exit 0; sleep 0.2; done
kill -9 "$child" 2>/dev/null
wait "$child" 2>/dev/null
exit 0"#;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .arg("watchdog")
            .arg(program)
            .arg(log)
            .args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watchdog");
        let stdin = child.stdin.take();
        Watched { child, stdin }
    }

    /// Stop the process and wait until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real `consul agent -dev` on free loopback ports.
pub struct ConsulAgent {
    pub http_port: u16,
    ports: Vec<u16>,
    extra: Vec<String>,
    proc: Option<Watched>,
    pub dir: TempDir,
}

impl ConsulAgent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra agent arguments (e.g. `-hcl=acl { … }`).
    pub fn start_with(extra: &[String]) -> Self {
        let mut agent = Self::unlaunched("consul", extra);
        agent.launch();
        agent
    }

    /// A Consul *server* with a data dir (not `-dev`), so a restart keeps
    /// KV, sessions and locks: [`ConsulAgent::restart_durable`].
    pub fn start_durable() -> Self {
        let mut agent = Self::unlaunched("consul-durable", &[]);
        agent.launch_durable();
        agent
    }

    fn unlaunched(tag: &str, extra: &[String]) -> Self {
        let ports = free_ports(4);
        ConsulAgent {
            http_port: ports[0],
            ports,
            proc: None,
            dir: TempDir::new(tag),
            extra: extra.to_vec(),
        }
    }

    /// A dev agent: everything in memory.
    fn launch(&mut self) {
        self.spawn(&["-dev".to_string()], "test");
    }

    fn launch_durable(&mut self) {
        let data = self.dir.path().join("data");
        let mode = [
            "-server".to_string(),
            "-bootstrap-expect=1".to_string(),
            format!("-data-dir={}", data.display()),
        ];
        self.spawn(&mode, "durable");
    }

    /// Start the agent in `mode` on loopback and its own ports only, then
    /// wait for a leader.
    fn spawn(&mut self, mode: &[String], node: &str) {
        let p = &self.ports;
        let args: Vec<String> = std::iter::once("agent".to_string())
            .chain(mode.iter().cloned())
            .chain(
                [
                    "-bind=127.0.0.1",
                    "-client=127.0.0.1",
                    "-log-level=warn",
                    "-dns-port=-1",
                    "-grpc-port=-1",
                    "-grpc-tls-port=-1",
                ]
                .iter()
                .map(|s| s.to_string()),
            )
            .chain([
                format!("-http-port={}", p[0]),
                format!("-server-port={}", p[1]),
                format!("-serf-lan-port={}", p[2]),
                format!("-serf-wan-port={}", p[3]),
                format!("-node={node}-{}", p[0]),
            ])
            .chain(self.extra.iter().cloned())
            .collect();
        let log = self.dir.path().join("consul.log");
        self.proc = Some(Watched::spawn(&consul_bin(), &args, &log, &[]));
        self.wait_ready();
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn wait_ready(&self) {
        let url = format!("{}/v1/status/leader", self.addr());
        let leader = wait("consul to elect a leader", Duration::from_secs(30))
            .every(Duration::from_millis(100))
            // A leader is elected (`"127.0.0.1:port"`); KV writes now commit.
            .attempt(|| blocking_get(&url).is_ok_and(|body| body.len() > 4));
        if leader.is_err() {
            let log =
                std::fs::read_to_string(self.dir.path().join("consul.log")).unwrap_or_default();
            panic!("consul did not get a leader within 30 s; log:\n{log}");
        }
    }

    /// Stop the agent (its data is lost: it is a dev agent).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// Start it again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Stop the server, stay down for `down`, start it again from its data.
    pub fn restart_durable(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.launch_durable();
    }

    /// Raw KV read (value as UTF-8), for assertions independent of
    /// tagbridge's own client.
    pub fn kv(&self, key: &str) -> Option<String> {
        let url = format!("{}/v1/kv/{key}?raw", self.addr());
        match blocking_get_status(&url) {
            Ok((200, body)) => Some(body),
            Ok((404, _)) => None,
            other => panic!("consul GET {key}: {other:?}"),
        }
    }

    /// Raw KV write, for setting up state.
    pub fn put(&self, key: &str, value: &str) {
        let url = format!("{}/v1/kv/{key}", self.addr());
        let (status, body) = http1_request("PUT", &url, value.as_bytes()).expect("consul PUT");
        assert_eq!((status, body.trim()), (200, "true"), "PUT {key}");
    }

    pub fn delete(&self, key: &str) {
        let url = format!("{}/v1/kv/{key}", self.addr());
        let (status, _) = http1_request("DELETE", &url, b"").expect("consul DELETE");
        assert_eq!(status, 200);
    }

    /// The history entries of a service (one key each under
    /// `tagbridge/history/<svc>/`), newest first, parsed.
    pub fn history(&self, service: &str) -> Vec<serde_json::Value> {
        let mut keys = self.history_keys(service);
        keys.reverse();
        keys.iter()
            .filter_map(|k| self.kv(k))
            .map(|v| serde_json::from_str(&v).expect("history entry is JSON"))
            .collect()
    }

    /// The entry keys (not the head) of a service's history, oldest first.
    pub fn history_keys(&self, service: &str) -> Vec<String> {
        let url = format!("{}/v1/kv/tagbridge/history/{service}/?keys", self.addr());
        let mut keys: Vec<String> = match blocking_get_status(&url) {
            Ok((404, _)) => Vec::new(),
            Ok((200, body)) => serde_json::from_str(&body).expect("key list"),
            other => panic!("consul keys: {other:?}"),
        };
        keys.retain(|k| !k.ends_with("/head"));
        keys.sort();
        keys
    }

    /// Every key and its ModifyIndex: a fingerprint to prove "nothing
    /// changed".
    pub fn fingerprint(&self) -> Vec<(String, u64)> {
        let url = format!("{}/v1/kv/?recurse", self.addr());
        match blocking_get_status(&url) {
            Ok((404, _)) => Vec::new(),
            Ok((200, body)) => {
                let v: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
                v.iter()
                    .map(|e| {
                        (
                            e["Key"].as_str().unwrap_or_default().to_string(),
                            e["ModifyIndex"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect()
            }
            other => panic!("consul list: {other:?}"),
        }
    }
}

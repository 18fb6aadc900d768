//! Test harness: real Consul agents on loopback, TLS material, and
//! tagbridge itself (in process or as the built binary).
//!
//! Every agent is started through a small shell watchdog that kills it
//! when the test process's end of a pipe closes, so an agent never
//! outlives its test binary, even when a test panics or the binary is
//! killed.
#![allow(dead_code)]

pub mod cluster;
pub mod env;
pub mod nomad;
pub mod registry;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tagbridge::config::{Config, Purpose};
use tagbridge::ingest::Ingest;
use tagbridge::metrics::Metrics;
use tagbridge::server::{self, AppState};
use tagbridge::tls::CertStore;

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn provide(which: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/install-agents.sh"))
        .arg(which)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/install-agents.sh");
    assert!(
        out.status.success(),
        "scripts/install-agents.sh {which} failed"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().expect("a BIN= line");
    PathBuf::from(line.split_once('=').expect("NAME=path").1.trim())
}

/// Path of the pinned Consul binary (built once, then cached).
pub fn consul_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| provide("consul")).clone()
}

/// A scratch directory removed on drop (tempfile's, named for the test).
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tagbridge-test-{tag}-"))
            .tempdir()
            .expect("mkdir temp");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    pub fn write(&self, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, data).expect("write temp file");
        p
    }
}

/// Reserve `n` distinct free loopback ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<StdListener> = (0..n)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("bind :0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/v1/status/leader", self.addr());
        while Instant::now() < deadline {
            if let Ok(body) = blocking_get(&url) {
                if body.len() > 4 {
                    // A leader is elected; KV writes now commit.
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.path().join("consul.log")).unwrap_or_default();
        panic!("consul did not get a leader within 30 s; log:\n{log}");
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

/// Minimal blocking HTTP/1.1 client over std (test assertions only, so
/// they do not depend on the code under test).
pub fn http1_request(method: &str, url: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    http1_request_h(method, url, &[], body)
}

/// [`http1_request`] with extra headers (ACL tokens).
pub fn http1_request_h(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::Read as _;
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn blocking_get(url: &str) -> std::io::Result<String> {
    http1_request("GET", url, b"").map(|(_, b)| b)
}

pub fn blocking_get_status(url: &str) -> std::io::Result<(u16, String)> {
    http1_request("GET", url, b"")
}

/// A CA and a server certificate for localhost / 127.0.0.1.
pub struct TestTls {
    pub ca_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestTls {
    pub fn new(dir: &TempDir) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tagbridge test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca cert");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        let cert = params.signed_by(&key, &ca).expect("server cert");
        TestTls {
            ca_pem: ca.pem(),
            cert_file: dir.write("tls.crt", cert.pem()),
            key_file: dir.write("tls.key", key.serialize_pem()),
        }
    }

    /// A reqwest client trusting the test CA (HTTP/1.1 and HTTP/2).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca"),
            )
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// A rustls client config trusting the test CA, for raw-socket tests.
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

/// The URL secret used by tests, and its sha256 for the config.
pub fn secret_pair(name: &str) -> (String, String) {
    use sha2::Digest as _;
    let secret = format!("test-secret-{name}-0123456789abcdefghijklmnopqrstuvwxyz");
    let hash = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    (secret, hash)
}

/// tagbridge running in this process on an ephemeral port.
pub struct InProcess {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    /// Parse `config_text` (with TLS files and Consul address filled in
    /// by the caller) and serve it.
    pub async fn start(config_text: &str, dir: &TempDir) -> Self {
        Self::start_with(config_text, dir, |_| {}).await
    }

    pub async fn start_with(
        config_text: &str,
        dir: &TempDir,
        tweak: impl FnOnce(&mut server::Limits),
    ) -> Self {
        let path = dir.write("tagbridge.hcl", config_text);
        let no_env = |_: &str| None;
        let cfg = Arc::new(
            Config::load(&path, Purpose::Serve, &no_env).unwrap_or_else(|e| panic!("config: {e}")),
        );
        let certs = CertStore::load(cfg.tls.as_ref().expect("tls")).expect("certs");
        let tls = certs.server_config().expect("server config");
        let consul = tagbridge::clients::consul_client(&cfg).expect("consul client");
        let metrics = Arc::new(Metrics::new());
        let ingest = Ingest::new(consul, cfg.clone(), metrics.clone());
        let mut state = AppState::new(cfg, ingest, metrics, Some(certs));
        tweak(&mut state.limits);
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin");
        let addr = listener.local_addr().expect("addr");
        let admin_addr = admin.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (atx, arx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(server::admin::run(admin, st, async move {
            let _ = arx.await;
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let r = server::run(listener, tls, st, async move {
                let _ = rx.await;
            })
            .await;
            let _ = atx.send(());
            r
        });
        InProcess {
            addr,
            admin: admin_addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}

/// Read a fixture from tests/fixtures.
pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures").join(path))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// `X-Hub-Signature-256` value for `body`.
pub fn hub_sig(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A local HTTP receiver (notifications, verify_url): records every
/// request body and answers with a status the test can change.
pub struct Receiver {
    pub addr: SocketAddr,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    pub bodies: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub fn start(status: u16) -> Self {
        use std::io::{BufRead as _, BufReader, Read as _};
        use std::sync::atomic::{AtomicBool, AtomicU16};
        let listener = StdListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let st = Arc::new(AtomicU16::new(status));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st2, bodies2, stop2) = (st.clone(), bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (mut s, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(s.try_clone().expect("clone"));
                let mut len = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                bodies2
                    .lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&body).into_owned());
                let code = st2.load(Ordering::Relaxed);
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Length: 7\r\nConnection: close\r\n\r\nstatus\n"
                );
            }
        });
        Receiver {
            addr,
            status: st,
            bodies,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::Relaxed);
    }

    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().expect("lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Poll `f` every `every` until it returns `Some`, at most `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// `tagbridge serve` as a real process (stderr to `log`); killed on drop.
pub struct Serving {
    child: std::process::Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Serving {
    /// Start the built binary and wait (≤ 20 s) for its "serving" line,
    /// which names the bound port.
    pub fn start(config: &Path, envs: &[(&str, String)], log: PathBuf) -> Self {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("tagbridge"));
        cmd.arg("--config").arg(config).arg("serve");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn tagbridge serve");
        // Owned by the guard at once, so a failed start still reaps it.
        let mut serving = Serving {
            child,
            log,
            port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = serving.log_text();
            if let Some(line) = text.lines().find(|l| l.contains("tagbridge serving")) {
                // JSON logs carry a "listen" field; pretty ones `listen=ip:port`.
                let listen = match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) => v["listen"].as_str().expect("listen field").to_string(),
                    Err(_) => line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("listen="))
                        .expect("listen= in the pretty log line")
                        .to_string(),
                };
                serving.port = listen.rsplit(':').next().unwrap().parse().expect("port");
                return serving;
            }
            assert!(
                Instant::now() < deadline,
                "tagbridge did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no clean-up code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status with the whole log.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "tagbridge ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.log_text())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request body that arrives as these chunks (an error ends it early).
pub fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct S(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for S {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    S(items.into_iter())
}

//! tagbridge under test and what talks to it: the server in this process
//! ([`InProcess`], and [`Tagbridge`] with the rollout controller), the
//! built binary as a process ([`Serving`]), the webhook's secrets and
//! signatures, posting a webhook, and a local HTTP [`Receiver`] for the
//! notifications and verify URLs tagbridge calls.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tagbridge::config::{Config, Purpose};
use tagbridge::ingest::Ingest;
use tagbridge::metrics::Metrics;
use tagbridge::server::{self, AppState};
use tagbridge::tls::CertStore;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, SIGNING};
use super::paths::TempDir;
use super::wait::wait;

/// The URL secret used by tests, and its sha256 for the config.
pub fn secret_pair(name: &str) -> (String, String) {
    use sha2::Digest as _;
    let secret = format!("test-secret-{name}-0123456789abcdefghijklmnopqrstuvwxyz");
    let hash = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    (secret, hash)
}

/// `X-Hub-Signature-256` value for `body`.
pub fn hub_sig(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
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
        cluster: &Cluster,
        config: &str,
        hook: Option<tagbridge::rollout::Hook>,
    ) -> Self {
        let server = InProcess::start(config, &cluster.dir).await;
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
            client: cluster.tls.client(),
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
        let line = wait("tagbridge's \"serving\" line", Duration::from_secs(20))
            .every(Duration::from_millis(50))
            .attempt(|| {
                let text = serving.log_text();
                let line = text.lines().find(|l| l.contains("tagbridge serving"));
                line.map(str::to_string).ok_or(text)
            })
            .unwrap_or_else(|text| {
                panic!("tagbridge did not start:\n{}", text.unwrap_or_default())
            });
        // JSON logs carry a "listen" field; pretty ones `listen=ip:port`.
        let listen = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) => v["listen"].as_str().expect("listen field").to_string(),
            Err(_) => line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .expect("listen= in the pretty log line")
                .to_string(),
        };
        serving.port = listen.rsplit(':').next().unwrap().parse().expect("port");
        serving
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
        let status = wait("tagbridge to exit after SIGTERM", Duration::from_secs(30))
            .every(Duration::from_millis(50))
            .until(|| self.child.try_wait().expect("wait"));
        (status, self.log_text())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The longest a [`Receiver`]'s thread serves (a backstop: it ends when
/// the receiver is dropped).
const RECEIVER_LIFETIME: Duration = Duration::from_secs(3600);

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
            // Ends when the Receiver is dropped, and after an hour at most.
            let until = Instant::now() + RECEIVER_LIFETIME;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
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

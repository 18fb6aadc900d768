//! Packaging: the Nomad job files against a real Nomad agent, the
//! tagbridge job itself running under raw_exec end to end, and checks of
//! the Dockerfile and the systemd unit by parsing (there is no container
//! engine on the machines the suite runs on; `systemd-analyze` is used
//! when it exists).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The path of the Nomad Variable the tagbridge job reads (the job's own).
const VAR_PATH: &str = "nomad/jobs/tagbridge";

/// `GET /v1/validate/job`-style check of a parsed job: no errors; warnings
/// are printed.
fn validate(nomad: &NomadAgent, job: &Value, what: &str) {
    let (status, v) = nomad
        .api("PUT", "/v1/validate/job", Some(&json!({ "Job": job })))
        .unwrap_or_else(|e| panic!("validate {what}: {e}"));
    assert_eq!(status, 200, "validate {what}: {v}");
    let errors = v["ValidationErrors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        errors.is_empty() && v["Error"].as_str().unwrap_or("").is_empty(),
        "{what} does not validate: {}",
        v["Error"]
    );
    if let Some(w) = v["Warnings"].as_str().filter(|w| !w.trim().is_empty()) {
        eprintln!("{what}: validation warnings: {}", w.trim());
    }
}

/// The job's only group and its only task.
fn group_and_task(job: &Value) -> (&Value, &Value) {
    let group = &job["TaskGroups"][0];
    assert_eq!(job["TaskGroups"].as_array().map(Vec::len), Some(1));
    assert_eq!(group["Tasks"].as_array().map(Vec::len), Some(1));
    (group, &group["Tasks"][0])
}

/// DestPath → template, for the templates of a task.
fn templates(task: &Value) -> BTreeMap<String, Value> {
    task["Templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| (t["DestPath"].as_str().unwrap_or("").to_string(), t.clone()))
        .collect()
}

/// Secret files and the Nomad Variable item each one renders.
const SECRET_FILES: [(&str, &str); 4] = [
    ("tls.crt", "tls_crt"),
    ("tls.key", "tls_key"),
    ("consul.token", "consul_token"),
    ("nomad.token", "nomad_token"),
];

/// (a) Every job file in nomad/ parses (`/v1/jobs/parse`) and validates
/// (`/v1/validate/job`) against the real agent; tagbridge.nomad.hcl in each
/// driver variant, with the shape its contract promises.
#[test]
fn every_nomad_file_parses_and_validates() {
    let started = Instant::now();
    let consul = ConsulAgent::start();
    let nomad = NomadAgent::start(&consul);

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("nomad"))
        .expect("read nomad/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".nomad.hcl"))
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("tagbridge.nomad.hcl")),
        "nomad/tagbridge.nomad.hcl is missing: {files:?}"
    );
    for path in &files {
        let job = nomad.parse_job(path, &[]);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        validate(&nomad, &job, &name);
        eprintln!("{name}: parses and validates");
    }

    // tagbridge.nomad.hcl, defaults: docker, 2 replicas on distinct hosts.
    let file = job_file("tagbridge");
    let job = nomad.parse_job(&file, &[]);
    assert_eq!(job["ID"], "tagbridge");
    assert_eq!(job["Type"], "service");
    let (group, task) = group_and_task(&job);
    assert_eq!(group["Count"], 2);
    let constraints = group["Constraints"].as_array().expect("constraints");
    assert!(
        constraints
            .iter()
            .any(|c| c["Operand"] == "distinct_hosts" && c["RTarget"] == "true"),
        "no distinct_hosts constraint: {constraints:?}"
    );
    let update = &group["Update"];
    assert_eq!(update["MaxParallel"], 1, "update: {update}");
    assert_eq!(update["AutoRevert"], true, "update: {update}");
    assert_eq!(update["HealthCheck"], "checks", "update: {update}");
    let ports: Vec<&str> = group["Networks"][0]["DynamicPorts"]
        .as_array()
        .expect("dynamic ports")
        .iter()
        .filter_map(|p| p["Label"].as_str())
        .collect();
    assert_eq!(ports, ["https", "admin"]);
    let services = group["Services"].as_array().expect("services");
    let check_of = |port: &str| -> &Value {
        let s = services
            .iter()
            .find(|s| s["PortLabel"] == port)
            .unwrap_or_else(|| panic!("no service on port {port}: {services:?}"));
        assert_eq!(s["Provider"], "nomad");
        &s["Checks"][0]
    };
    assert_eq!(check_of("https")["Type"], "http");
    assert_eq!(check_of("https")["Protocol"], "https");
    assert_eq!(check_of("https")["Path"], "/healthz");
    let readyz = check_of("admin");
    assert_eq!(
        (&readyz["Type"], &readyz["Path"]),
        (&json!("http"), &json!("/readyz"))
    );
    assert_eq!(task["Driver"], "docker");
    assert_eq!(task["Config"]["image"], "tagbridge:0.1.0");
    assert_eq!(task["Config"]["ports"], json!(["https", "admin"]));
    assert_eq!(
        task["Config"]["args"],
        json!(["--config", "${NOMAD_SECRETS_DIR}/tagbridge.hcl", "serve"])
    );
    let tmpl = templates(task);
    let mut expected: Vec<String> = SECRET_FILES
        .iter()
        .map(|(f, _)| format!("secrets/{f}"))
        .collect();
    expected.push("secrets/tagbridge.hcl".into());
    expected.sort();
    assert_eq!(tmpl.keys().cloned().collect::<Vec<_>>(), expected);
    for (dest, t) in &tmpl {
        assert_eq!(t["ChangeMode"], "signal", "{dest}");
        assert_eq!(t["ChangeSignal"], "SIGHUP", "{dest}");
        // The image runs as 65532 (Dockerfile): the files must be its own.
        assert_eq!(
            (&t["Uid"], &t["Gid"]),
            (&json!(65532), &json!(65532)),
            "{dest}"
        );
        let body = t["EmbeddedTmpl"].as_str().unwrap_or("");
        assert!(
            body.contains(&format!("nomadVar \"{VAR_PATH}\"")),
            "{dest}: {body}"
        );
    }
    for (file, item) in SECRET_FILES {
        let t = &tmpl[&format!("secrets/{file}")];
        assert_eq!(t["Perms"], "0600", "{file}");
        let body = t["EmbeddedTmpl"].as_str().unwrap_or("");
        assert!(body.contains(&format!("\"{item}\"")), "{file}: {body}");
    }
    let config = &tmpl["secrets/tagbridge.hcl"];
    assert_eq!(config["Perms"], "0640");
    let body = config["EmbeddedTmpl"].as_str().unwrap_or("");
    assert!(
        body.contains(".config.Value") && body.contains("NOMAD_PORT_https"),
        "{body}"
    );

    // raw_exec with a binary on the host.
    let job = nomad.parse_job(&file, &[("driver", "raw_exec"), ("count", "1")]);
    validate(&nomad, &job, "tagbridge.nomad.hcl (raw_exec)");
    let (group, task) = group_and_task(&job);
    assert_eq!(group["Count"], 1);
    assert_eq!(task["Driver"], "raw_exec");
    assert_eq!(
        task["Config"],
        json!({"command": "/usr/local/bin/tagbridge",
               "args": ["--config", "${NOMAD_SECRETS_DIR}/tagbridge.hcl", "serve"]})
    );
    for (dest, t) in templates(task) {
        assert_eq!(t["Uid"], -1, "{dest}: owned by the client's user");
    }

    // raw_exec with an artifact, signing secrets, more datacenters.
    let checksum = format!("sha256:{}", "ab".repeat(32));
    let job = nomad.parse_job(
        &file,
        &[
            ("driver", "raw_exec"),
            (
                "artifact_url",
                "https://releases.example.com/tagbridge/0.1.0/tagbridge_linux_amd64.tar.gz",
            ),
            ("artifact_checksum", &checksum),
            ("signing_secrets", r#"["web", "web-canary"]"#),
            ("datacenters", r#"["dc1", "dc2"]"#),
            ("count", "3"),
            ("job_id", "tagbridge-prod"),
        ],
    );
    validate(&nomad, &job, "tagbridge.nomad.hcl (raw_exec, artifact)");
    assert_eq!(job["ID"], "tagbridge-prod");
    let (group, task) = group_and_task(&job);
    let names: Vec<&str> = group["Services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|s| s["Name"].as_str())
        .collect();
    assert_eq!(names, ["tagbridge-prod", "tagbridge-prod-admin"]);
    for t in task["Templates"].as_array().expect("templates") {
        let body = t["EmbeddedTmpl"].as_str().unwrap_or("");
        assert!(
            body.contains("nomadVar \"nomad/jobs/tagbridge-prod\""),
            "{body}"
        );
    }
    assert_eq!(task["Config"]["command"], "${NOMAD_TASK_DIR}/tagbridge");
    assert_eq!(task["Artifacts"][0]["GetterOptions"]["checksum"], checksum);
    let tmpl = templates(task);
    for svc in ["web", "web-canary"] {
        let t = &tmpl[&format!("secrets/signing_{svc}")];
        assert_eq!(t["Perms"], "0600");
        let body = t["EmbeddedTmpl"].as_str().unwrap_or("");
        assert!(body.contains(&format!("\"signing_{svc}\"")), "{body}");
    }

    // The driver variable refuses anything else, at parse time.
    let hcl = std::fs::read_to_string(&file).expect("read job");
    let (status, answer) = nomad
        .api(
            "POST",
            "/v1/jobs/parse",
            Some(&json!({"JobHCL": hcl, "Variables": "driver = \"exec\"\n"})),
        )
        .expect("parse");
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("must be"), "{answer}");

    eprintln!(
        "{} job files parsed and validated in {:.1} s (agent start included)",
        files.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Prints the task's own log (stderr) if the test fails while the
/// allocation directory still exists.
struct TaskLogsOnPanic(PathBuf);

impl Drop for TaskLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(allocs) = std::fs::read_dir(&self.0) else {
            return;
        };
        for a in allocs.flatten() {
            let log = a.path().join("alloc/logs/tagbridge.stderr.0");
            if let Ok(text) = std::fs::read_to_string(&log) {
                eprintln!("---- {}:\n{text}----", log.display());
            }
        }
    }
}

/// (host ip, port) of the allocation's port `label`.
fn alloc_port(alloc: &Value, label: &str) -> (String, u16) {
    let ports = alloc["AllocatedResources"]["Shared"]["Ports"]
        .as_array()
        .expect("allocated ports");
    let p = ports
        .iter()
        .find(|p| p["Label"] == label)
        .unwrap_or_else(|| panic!("no port {label}: {ports:?}"));
    (
        p["HostIP"].as_str().expect("host ip").to_string(),
        u16::try_from(p["Value"].as_u64().expect("port")).expect("u16"),
    )
}

/// The Nomad Variable the job reads: every item of the contract.
fn variable_items(
    consul: &ConsulAgent,
    nomad: &NomadAgent,
    tls: &TestTls,
    secret_hash: &str,
    more_services: &str,
) -> Value {
    // What the Terraform module writes. Its listen/admin_listen lines are
    // replaced by the job's (from the allocated ports); files are named
    // under ${NOMAD_SECRETS_DIR} or relative to the task directory.
    let config = format!(
        r#"listen       = "0.0.0.0:8443"
admin_listen = "127.0.0.1:9102"
state_prefix = "tagbridge"
log_format   = "json"

tls {{
  cert_file = "${{NOMAD_SECRETS_DIR}}/tls.crt"
  key_file  = "${{NOMAD_SECRETS_DIR}}/tls.key"
}}

consul {{
  address    = "{consul}"
  token_file = "secrets/consul.token"
}}

nomad {{
  address    = "{nomad}"
  token_file = "${{NOMAD_SECRETS_DIR}}/nomad.token"
}}

service "app-1" {{
  secret_sha256       = "{secret_hash}"
  source              = "generic"
  repository          = "acme/app"
  key                 = "configs/app/IMAGE_TAG"
  signing_secret_file = "${{NOMAD_SECRETS_DIR}}/signing_app-1"
}}
{more_services}"#,
        consul = consul.addr(),
        nomad = nomad.addr(),
    );
    let read = |p: &Path| std::fs::read_to_string(p).expect("read tls file");
    json!({
        "config": config,
        "tls_crt": read(&tls.cert_file),
        "tls_key": read(&tls.key_file),
        // The dev agents have no ACLs: any token is accepted.
        "consul_token": "consul-token-for-the-test",
        "nomad_token": "nomad-token-for-the-test",
        "signing_app-1": SIGNING,
    })
}

const SIGNING: &str = "packaging-signing-key";

fn put_variable(nomad: &NomadAgent, items: &Value) {
    let body = json!({"Namespace": "default", "Path": VAR_PATH, "Items": items});
    let v = nomad.api_ok("PUT", &format!("/v1/var/{VAR_PATH}"), Some(&body));
    assert_eq!(v["Path"], VAR_PATH, "{v}");
}

/// POST a webhook; (status, JSON answer).
fn post_hook(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    port: u16,
    secret: &str,
    body: Vec<u8>,
    signature: Option<String>,
) -> (u16, Value) {
    rt.block_on(async {
        let mut req = client
            .post(format!("https://localhost:{port}/hooks/{secret}"))
            .header("content-type", "application/json");
        if let Some(sig) = signature {
            req = req.header("x-hub-signature-256", sig);
        }
        let resp = req.body(body).send().await.expect("webhook request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    })
}

/// POST a signed generic webhook for app-1.
fn send_webhook(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    port: u16,
    secret: &str,
    tag: &str,
) -> (u16, Value) {
    let body = json!({"repository": "acme/app", "tag": tag}).to_string();
    let sig = hub_sig(SIGNING.as_bytes(), body.as_bytes());
    post_hook(rt, client, port, secret, body.into_bytes(), Some(sig))
}

/// A TLS handshake (no HTTP request, so no failed attempt is counted)
/// with a client that trusts only `tls`'s CA.
fn handshake_ok(rt: &tokio::runtime::Runtime, tls: &TestTls, port: u16) -> bool {
    let connector = tokio_rustls::TlsConnector::from(tls.rustls_client());
    rt.block_on(async {
        let fut = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .expect("name")
                .to_owned();
            connector.connect(name, tcp).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), fut).await,
            Ok(Ok(_))
        )
    })
}

/// (b) The tagbridge job, driver raw_exec with the binary cargo built,
/// reads everything from its Nomad Variable, becomes healthy (both checks
/// pass, the deployment succeeds), ingests a signed webhook into Consul
/// KV, and reloads a new certificate on the SIGHUP its templates send.
#[test]
fn tagbridge_job_runs_under_raw_exec_and_ingests_a_webhook() {
    let started = Instant::now();
    let consul = ConsulAgent::start();
    let nomad = NomadAgent::start(&consul);
    let _logs = TaskLogsOnPanic(nomad.dir.path().join("data/alloc"));
    let dir = TempDir::new("packaging");
    let tls = TestTls::new(&dir);
    let (secret, hash) = secret_pair("packaging");
    // A worker thread keeps the clients' pooled connections serviced
    // between requests (they answer the server's GOAWAY when it drains).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");

    // The variable first: the job's templates wait for it.
    put_variable(&nomad, &variable_items(&consul, &nomad, &tls, &hash, ""));

    let binary = assert_cmd::cargo::cargo_bin("tagbridge");
    let binary = binary.to_str().expect("utf-8 path");
    let job = nomad.parse_job(
        &job_file("tagbridge"),
        &[
            ("driver", "raw_exec"),
            ("binary", binary),
            // One client: distinct_hosts would leave a second one unplaced.
            ("count", "1"),
            ("signing_secrets", r#"["app-1"]"#),
            ("min_healthy_time", "1s"),
            ("healthy_deadline", "60s"),
            ("progress_deadline", "90s"),
            ("cpu", "100"),
            ("memory", "256"),
        ],
    );
    nomad.register(&job);
    let d = nomad.wait_deployment("tagbridge", Duration::from_secs(120), |d| {
        d["Status"] == "successful" || d["Status"] == "failed"
    });
    assert_eq!(d["Status"], "successful", "deployment: {d}");
    let healthy_after = started.elapsed();

    let running: Vec<Value> = nomad
        .allocations("tagbridge")
        .into_iter()
        .filter(|a| a["ClientStatus"] == "running")
        .collect();
    assert_eq!(running.len(), 1, "{}", summarize_allocs(&running));
    let alloc_id = running[0]["ID"].as_str().expect("alloc id").to_string();
    let alloc = nomad.allocation(&alloc_id);
    let (https_ip, https_port) = alloc_port(&alloc, "https");
    let (admin_ip, admin_port) = alloc_port(&alloc, "admin");
    assert_eq!(
        (https_ip.as_str(), admin_ip.as_str()),
        ("127.0.0.1", "127.0.0.1")
    );

    // Both checks pass, as Nomad sees them.
    let checks = nomad.api_ok(
        "GET",
        &format!("/v1/client/allocation/{alloc_id}/checks"),
        None,
    );
    let mut seen: Vec<(String, String)> = checks
        .as_object()
        .expect("checks")
        .values()
        .map(|c| {
            (
                c["Check"].as_str().unwrap_or("").to_string(),
                c["Status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("readyz".to_string(), "success".to_string()),
            ("webhook-listener".to_string(), "success".to_string())
        ],
        "{checks}"
    );
    // The service is registered with the webhook port.
    let regs = nomad.api_ok("GET", "/v1/service/tagbridge", None);
    assert!(
        regs.as_array()
            .expect("registrations")
            .iter()
            .any(|r| r["AllocID"] == alloc_id.as_str() && r["Port"] == https_port),
        "{regs}"
    );

    // The files: rendered from the variable, owner-only.
    let secrets = nomad
        .dir
        .path()
        .join(format!("data/alloc/{alloc_id}/tagbridge/secrets"));
    for (file, want) in [
        ("tagbridge.hcl", 0o640),
        ("tls.crt", 0o600),
        ("tls.key", 0o600),
        ("consul.token", 0o600),
        ("nomad.token", 0o600),
        ("signing_app-1", 0o600),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(secrets.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, want, "{file}");
    }
    let rendered = std::fs::read_to_string(secrets.join("tagbridge.hcl")).expect("config");
    assert!(
        rendered.contains(&format!("listen       = \"127.0.0.1:{https_port}\""))
            && rendered.contains(&format!("admin_listen = \"127.0.0.1:{admin_port}\""))
            && rendered.contains("# listen: set by the Nomad job")
            && rendered.contains("# admin_listen: set by the Nomad job")
            && !rendered.contains("8443")
            && rendered.contains(&format!("cert_file = \"{}/tls.crt\"", secrets.display())),
        "rendered config:\n{rendered}"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("signing_app-1")).expect("signing"),
        SIGNING
    );

    // Admin listener: ready, metrics.
    let ready = probe(&admin_ip, admin_port, "/readyz", Duration::from_secs(5));
    assert_eq!(ready.as_ref().map(|r| r.0), Some(200), "{ready:?}");

    // End to end: a signed webhook to the allocation's https port.
    let client = tls.client();
    let (status, answer) = send_webhook(&rt, &client, https_port, &secret, "2.0.1");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], true, "{answer}");
    assert_eq!(answer["service"], "app-1", "{answer}");
    assert_eq!(consul.kv("configs/app/IMAGE_TAG").as_deref(), Some("2.0.1"));
    let history = consul.history("app-1");
    assert_eq!(history[0]["event"], "received", "{history:?}");
    assert_eq!(history[0]["tag"], "2.0.1", "{history:?}");
    let metrics =
        probe(&admin_ip, admin_port, "/metrics", Duration::from_secs(5)).expect("metrics");
    assert!(
        metrics.1.contains("tagbridge_webhooks_total"),
        "{}",
        metrics.1
    );

    // Certificate rotation through the variable: the templates re-render
    // and send SIGHUP; tagbridge serves the new pair without a restart.
    let dir2 = TempDir::new("packaging-rotated");
    let tls2 = TestTls::new(&dir2);
    assert!(
        !handshake_ok(&rt, &tls2, https_port),
        "new CA trusted too early"
    );
    put_variable(&nomad, &variable_items(&consul, &nomad, &tls2, &hash, ""));
    let signalled = || {
        let a = nomad.allocation(&alloc_id);
        a["TaskStates"]["tagbridge"]["Events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["Type"] == "Signaling" && e["DisplayMessage"] == "Template re-rendered")
    };
    wait(
        "the template's SIGHUP and the new certificate",
        Duration::from_secs(60),
    )
    .every(Duration::from_millis(500))
    .until(|| signalled() && handshake_ok(&rt, &tls2, https_port));
    let alloc = nomad.allocation(&alloc_id);
    assert_eq!(alloc["ClientStatus"], "running");
    assert_eq!(
        alloc["TaskStates"]["tagbridge"]["Restarts"], 0,
        "SIGHUP restarted the task"
    );
    let (status, answer) = send_webhook(&rt, &tls2.client(), https_port, &secret, "2.0.2");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(consul.kv("configs/app/IMAGE_TAG").as_deref(), Some("2.0.2"));
    let rotated_after = started.elapsed();

    // A configuration change through the variable: the config template
    // re-renders and sends SIGHUP; tagbridge drains and re-executes itself
    // in place (same task, no restart) and serves the new service. A
    // dockerhub service needs no signing file, so no job change either.
    let changing = Instant::now();
    let (secret2, hash2) = secret_pair("packaging-2");
    let app2 = format!(
        r#"
service "app-2" {{
  secret_sha256 = "{hash2}"
  source        = "dockerhub"
  repository    = "acme/app2"
  key           = "configs/app2/IMAGE_TAG"
}}
"#
    );
    put_variable(
        &nomad,
        &variable_items(&consul, &nomad, &tls2, &hash, &app2),
    );
    let log = nomad.dir.path().join(format!(
        "data/alloc/{alloc_id}/alloc/logs/tagbridge.stderr.0"
    ));
    wait(
        "tagbridge serving two services after the SIGHUP",
        Duration::from_secs(60),
    )
    .until(|| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("tagbridge serving"))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["services"] == 2)
    });
    let body = json!({
        "push_data": {"pushed_at": 1764590400.5, "pusher": "ci", "tag": "7.0.0"},
        "repository": {"repo_name": "acme/app2", "name": "app2", "namespace": "acme"}
    });
    let (status, answer) = post_hook(
        &rt,
        &tls2.client(),
        https_port,
        &secret2,
        body.to_string().into_bytes(),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        consul.kv("configs/app2/IMAGE_TAG").as_deref(),
        Some("7.0.0")
    );
    let reexec_took = changing.elapsed();
    let (status, answer) = send_webhook(&rt, &tls2.client(), https_port, &secret, "2.0.3");
    assert_eq!(status, 200, "app-1 after the re-exec: {answer}");
    let alloc = nomad.allocation(&alloc_id);
    assert_eq!(alloc["ClientStatus"], "running");
    assert_eq!(
        alloc["TaskStates"]["tagbridge"]["Restarts"], 0,
        "the re-exec looked like a restart to Nomad"
    );

    eprintln!(
        "tagbridge job: healthy after {:.1} s, certificate rotated by {:.1} s, config change \
         served {:.1} s after the variable write, done after {:.1} s (agent start included)",
        healthy_after.as_secs_f64(),
        rotated_after.as_secs_f64(),
        reexec_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------- Dockerfile

const DOCKERFILE_INSTRUCTIONS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    /// (INSTRUCTION, arguments), continuation lines joined.
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all(&self, kw: &'static str) -> impl Iterator<Item = &str> + '_ {
        self.instructions
            .iter()
            .filter(move |(k, _)| k == kw)
            .map(|(_, a)| a.as_str())
    }
    fn last(&self, kw: &'static str) -> Option<&str> {
        self.all(kw).last()
    }
    /// `ARG NAME=default` values of this stage.
    fn arg_defaults(&self) -> BTreeMap<String, String> {
        self.all("ARG")
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect()
    }
}

/// Logical instructions of a Dockerfile: comments dropped, `\`
/// continuations joined. Panics on anything this small parser (and the
/// Dockerfile syntax) does not know.
fn dockerfile_instructions(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (kw, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                let kw = kw.to_ascii_uppercase();
                assert!(
                    DOCKERFILE_INSTRUCTIONS.contains(&kw.as_str()),
                    "Dockerfile:{start}: unknown instruction {kw:?}"
                );
                assert!(
                    !args.contains("<<"),
                    "Dockerfile:{start}: heredocs are not checked by this parser"
                );
                out.push((start, kw, args.trim().to_string()));
                current.clear();
            }
        }
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    out
}

/// Stages of a Dockerfile (global ARGs substituted into FROM).
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut global_args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (line, kw, args) in dockerfile_instructions(text) {
        if kw == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let mut base = words.first().copied().unwrap_or("").to_string();
            for (k, v) in &global_args {
                base = base
                    .replace(&format!("${{{k}}}"), v)
                    .replace(&format!("${k}"), v);
            }
            let name = match words.as_slice() {
                [_] => None,
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                _ => panic!("Dockerfile:{line}: FROM {args:?} is not `FROM image [AS name]`"),
            };
            stages.push(Stage {
                base,
                name,
                instructions: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(stage) => stage.instructions.push((kw, args)),
            None if kw == "ARG" => {
                let (k, v) = args.split_once('=').unwrap_or((&args, ""));
                global_args.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
            }
            None => panic!("Dockerfile:{line}: only ARG may come before the first FROM, not {kw}"),
        }
    }
    stages
}

/// The arguments of an exec-form instruction (a JSON array of strings).
fn exec_form(kw: &str, args: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{kw} {args} is not exec form (a JSON array): {e}"));
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("{kw} {args}: not an array"));
    let words: Vec<String> = list
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{kw}: {s} is not a string"))
                .to_string()
        })
        .collect();
    assert!(!words.is_empty(), "{kw} is empty");
    words
}

/// (c) The Dockerfile: known instructions, a build stage and a final
/// stage, a static musl build with --locked from sources that exist, and
/// a final image without a shell that runs as a non-root user through an
/// exec-form ENTRYPOINT. (Parsed only: no container engine here.)
#[test]
fn dockerfile_is_multi_stage_static_and_non_root() {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("read Dockerfile");
    let stages = dockerfile_stages(&text);
    assert!(
        stages.len() >= 2,
        "a multi-stage build needs ≥ 2 FROM: {stages:?}"
    );

    let mut names = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        for copy in stage.all("COPY").chain(stage.all("ADD")) {
            if let Some(from) = copy
                .split_whitespace()
                .find_map(|w| w.strip_prefix("--from="))
            {
                assert!(
                    names.contains(&from.to_string()) || from.parse::<usize>().is_ok_and(|n| n < i),
                    "COPY --from={from}: no earlier stage of that name ({names:?})"
                );
            }
        }
        if let Some(n) = &stage.name {
            assert!(!names.contains(n), "two stages named {n}");
            names.push(n.clone());
        }
    }

    // The final stage: no shell, not root, exec-form entrypoint.
    let last = stages.last().expect("a stage");
    let base = last.base.as_str();
    let shell_free =
        base == "scratch" || (base.contains("distroless/static") && !base.contains(":debug"));
    assert!(
        shell_free,
        "final base {base:?} is neither scratch nor distroless/static (no shell)"
    );
    for kw in ["RUN", "SHELL"] {
        assert!(
            last.last(kw).is_none(),
            "the final stage has {kw}: it has no shell"
        );
    }
    let user = last.last("USER").expect("the final stage sets USER");
    for part in user.split(':') {
        assert!(
            !part.is_empty() && part != "root" && part != "0",
            "USER {user} is root"
        );
    }
    let entrypoint = exec_form(
        "ENTRYPOINT",
        last.last("ENTRYPOINT")
            .expect("the final stage has ENTRYPOINT"),
    );
    assert!(
        entrypoint[0].starts_with('/'),
        "ENTRYPOINT {entrypoint:?}: absolute path"
    );
    if let Some(cmd) = last.last("CMD") {
        exec_form("CMD", cmd);
    }
    let copies: Vec<&str> = last.all("COPY").collect();
    assert!(
        copies
            .iter()
            .any(|c| c.split_whitespace().last() == Some(entrypoint[0].as_str())),
        "the ENTRYPOINT {} is not what the final stage copies: {copies:?}",
        entrypoint[0]
    );
    for port in last.all("EXPOSE").flat_map(str::split_whitespace) {
        let n = port.split('/').next().unwrap_or("");
        assert!(n.parse::<u16>().is_ok(), "EXPOSE {port}");
    }

    // The stage the binary comes from: a static, locked, release build.
    let from = copies
        .iter()
        .find_map(|c| c.split_whitespace().find_map(|w| w.strip_prefix("--from=")))
        .expect("the final stage copies from a build stage");
    let build = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(from))
        .expect("the build stage");
    let args = build.arg_defaults();
    let expand = |s: &str| {
        args.iter().fold(s.to_string(), |acc, (k, v)| {
            acc.replace(&format!("${{{k}}}"), v)
                .replace(&format!("${k}"), v)
        })
    };
    let cargo = build
        .all("RUN")
        .map(expand)
        .find(|r| r.contains("cargo build"))
        .expect("a RUN with cargo build");
    for flag in ["--release", "--locked", "--bin tagbridge"] {
        assert!(cargo.contains(flag), "cargo build without {flag}: {cargo}");
    }
    assert!(
        cargo.contains("--target \"x86_64-unknown-linux-musl\"")
            || cargo.contains("--target x86_64-unknown-linux-musl")
            || cargo.contains("crt-static"),
        "not a static build (musl target or crt-static): {cargo}"
    );
    assert!(build.base.starts_with("rust:"), "build base {}", build.base);

    // Every source the build stage copies exists, and together they hold
    // every target Cargo.toml names (a forgotten one fails `cargo build`).
    let mut sources = Vec::new();
    for copy in build.all("COPY") {
        let words: Vec<&str> = copy
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        assert!(words.len() >= 2, "COPY {copy}");
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                repo_root().join(src).exists(),
                "COPY source {src} does not exist"
            );
            sources.push(src.to_string());
        }
    }
    for needed in cargo_target_paths() {
        assert!(
            sources
                .iter()
                .any(|s| needed == *s || needed.starts_with(&format!("{s}/"))),
            "{needed} (named by Cargo.toml) is not copied into the build stage: {sources:?}"
        );
    }
    eprintln!(
        "Dockerfile: {} stages, final {base} as {user}, entrypoint {entrypoint:?}",
        stages.len()
    );
}

/// Files Cargo.toml's targets need: explicit `path`s and `[[bench]]`s
/// (benches/<name>.rs).
fn cargo_target_paths() -> Vec<String> {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let mut out = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    let mut section = String::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match (section.as_str(), k.trim()) {
            ("[lib]" | "[[bin]]" | "[[bench]]" | "[[test]]" | "[[example]]", "path") => {
                out.push(v.to_string())
            }
            ("[[bench]]", "name") => out.push(format!("benches/{v}.rs")),
            _ => {}
        }
    }
    out
}

// ----------------------------------------------------------- systemd unit

/// A unit file as (section, key, value) entries, in order.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut pending = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        if let Some(name) = entry.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = Some(name.to_string());
            continue;
        }
        let s = section
            .clone()
            .unwrap_or_else(|| panic!("tagbridge.service:{}: entry before any section", i + 1));
        let (k, v) = entry
            .split_once('=')
            .unwrap_or_else(|| panic!("tagbridge.service:{}: not key=value: {entry}", i + 1));
        out.push((s, k.trim().to_string(), v.trim().to_string()));
    }
    assert!(
        pending.is_empty(),
        "tagbridge.service ends inside a continuation"
    );
    out
}

/// (c) The systemd unit: an INI file with [Unit]/[Service]/[Install],
/// `serve` as ExecStart, SIGHUP as ExecReload, and the sandboxing systemd
/// offers. Where `systemd-analyze` exists, `verify` must be clean and
/// `security --offline` must rate it 2.0 or better.
#[test]
fn systemd_unit_is_hardened() {
    let path = repo_root().join("packaging/tagbridge.service");
    let text = std::fs::read_to_string(&path).expect("read packaging/tagbridge.service");
    let entries = parse_unit(&text);
    let sections: Vec<&str> = {
        let mut s: Vec<&str> = entries.iter().map(|(s, _, _)| s.as_str()).collect();
        s.dedup();
        s
    };
    assert_eq!(sections, ["Unit", "Service", "Install"]);
    let get = |section: &str, key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = get("Service", key);
        assert_eq!(v.len(), 1, "[Service] {key}= must be set once: {v:?}");
        v[0]
    };

    let exec = one("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert!(
        argv[0].starts_with('/') && argv[0].ends_with("/tagbridge"),
        "{exec}"
    );
    assert_eq!(argv.last(), Some(&"serve"), "{exec}");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("Install", "WantedBy"), ["multi-user.target"]);

    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
    ] {
        assert_eq!(one(key), want, "[Service] {key}");
    }
    let families: Vec<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    assert!(
        families.contains(&"AF_INET") && families.contains(&"AF_INET6"),
        "{families:?}"
    );
    assert!(
        families
            .iter()
            .all(|f| ["AF_INET", "AF_INET6", "AF_UNIX"].contains(f)),
        "{families:?}"
    );
    let filters = get("Service", "SystemCallFilter");
    assert!(filters.contains(&"@system-service"), "{filters:?}");
    assert!(
        filters
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@privileged")),
        "{filters:?}"
    );
    let user = get("Service", "User");
    let dynamic = get("Service", "DynamicUser");
    assert!(
        dynamic == ["yes"] || (user.len() == 1 && user[0] != "root" && user[0] != "0"),
        "runs as root: User={user:?} DynamicUser={dynamic:?}"
    );
    assert!(
        !get("Service", "ReadOnlyPaths").is_empty() || !get("Service", "LoadCredential").is_empty(),
        "secrets are neither ReadOnlyPaths nor LoadCredential"
    );

    systemd_analyze(&text);
}

/// `systemd-analyze verify` and `security --offline` on a copy of the unit
/// whose binary path is the one cargo built (verify insists it exists).
fn systemd_analyze(text: &str) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here: skipping verify and security");
        return;
    }
    let dir = TempDir::new("unit");
    let binary = assert_cmd::cargo::cargo_bin("tagbridge");
    let unit = dir.write(
        "tagbridge.service",
        text.replace("/usr/local/bin/tagbridge", &binary.to_string_lossy()),
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let said: String = [&out.stdout[..], &out.stderr[..]]
        .iter()
        .map(|b| String::from_utf8_lossy(b).to_string())
        .collect::<Vec<_>>()
        .join("");
    let about_us: Vec<&str> = said.lines().filter(|l| l.contains("tagbridge")).collect();
    assert!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
    eprintln!("systemd-analyze verify: clean");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let Some(level) = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for tagbridge.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
    else {
        eprintln!("systemd-analyze security --offline gave no exposure level (older systemd?): skipping\n{said}");
        return;
    };
    eprintln!("systemd-analyze security: exposure {level} (0 = locked down, 10 = unprotected)");
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{said}");
}

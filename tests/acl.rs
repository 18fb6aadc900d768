//! Least privilege, proven: with ACLs on both agents (default deny), the
//! policies the Terraform module creates — read out of terraform/ and
//! evaluated with hcl-rs — let tagbridge ingest and roll out, and refuse
//! what it must not do.

mod common;

use std::time::Duration;

use common::*;
use hcl::eval::{Context, Evaluate};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SIGNING: &str = "acl-signing-key";

/// The module's policy texts for one service, as Terraform would render
/// them.
fn policies(service: &Value) -> (String, String) {
    let path = repo_root().join("terraform/modules/tagbridge/policies.tf");
    let text = std::fs::read_to_string(&path).expect("policies.tf");
    let body = hcl::parse(&text).expect("policies.tf parses");
    let mut ctx = Context::new();
    ctx.declare_var(
        "var",
        hcl::to_value(json!({"state_prefix": "tagbridge", "services": [service]})).unwrap(),
    );
    let mut out = (String::new(), String::new());
    for block in body.blocks().filter(|b| b.identifier() == "locals") {
        for attr in block.body().attributes() {
            let rendered = attr.expr().evaluate(&ctx).expect("policy evaluates");
            let s = rendered.as_str().expect("policy is a string").to_string();
            match attr.key() {
                "consul_policy" => out.0 = s,
                "nomad_policy" => out.1 = s,
                _ => {}
            }
        }
    }
    assert!(
        !out.0.is_empty() && !out.1.is_empty(),
        "both policies found in {}",
        path.display()
    );
    out
}

fn call(method: &str, url: &str, token: &str, body: Option<&Value>, header: &str) -> (u16, Value) {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, text) =
        http1_request_h(method, url, &[(header, token)], payload.as_bytes()).expect("request");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn consul(
    c: &ConsulAgent,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    call(
        method,
        &format!("{}{path}", c.addr()),
        token,
        body,
        "X-Consul-Token",
    )
}

fn nomad_call(
    n: &NomadAgent,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    call(
        method,
        &format!("{}{path}", n.addr()),
        token,
        body,
        "X-Nomad-Token",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terraform_policies_allow_exactly_what_tagbridge_needs() {
    let acl = "acl { enabled = true default_policy = \"deny\" down_policy = \"deny\" }".to_string();
    let c = tokio::task::block_in_place(|| ConsulAgent::start_with(&[format!("-hcl={acl}")]));
    let (status, boot) =
        tokio::task::block_in_place(|| consul(&c, "PUT", "/v1/acl/bootstrap", "", None));
    assert_eq!(status, 200, "{boot}");
    let consul_root = boot["SecretID"].as_str().unwrap().to_string();
    let n = tokio::task::block_in_place(|| NomadAgent::start_with(&c, true));
    let nomad_root = n.token.clone().unwrap();

    let service = json!({
        "name": "web", "key": "configs/web/IMAGE_TAG", "namespace": "default", "job": "web",
        "source": "generic", "repository": "acme/web", "secret_sha256": secret_pair("web").1,
    });
    let (consul_rules, nomad_rules) = policies(&service);

    // The module's policies and tokens, created through the ACL APIs.
    let consul_token = tokio::task::block_in_place(|| {
        let (s, b) = consul(
            &c,
            "PUT",
            "/v1/acl/policy",
            &consul_root,
            Some(&json!({"Name": "tagbridge", "Rules": consul_rules})),
        );
        assert_eq!(s, 200, "consul policy: {b}\n{consul_rules}");
        let (s, b) = consul(
            &c,
            "PUT",
            "/v1/acl/token",
            &consul_root,
            Some(&json!({"Policies": [{"Name": "tagbridge"}]})),
        );
        assert_eq!(s, 200, "{b}");
        b["SecretID"].as_str().unwrap().to_string()
    });
    let nomad_token = tokio::task::block_in_place(|| {
        let (s, b) = nomad_call(
            &n,
            "POST",
            "/v1/acl/policy/tagbridge",
            &nomad_root,
            Some(&json!({"Name": "tagbridge", "Rules": nomad_rules})),
        );
        assert_eq!(s, 200, "nomad policy: {b}\n{nomad_rules}");
        let (s, b) = nomad_call(
            &n,
            "POST",
            "/v1/acl/token",
            &nomad_root,
            Some(&json!({"Type": "client", "Policies": ["tagbridge"]})),
        );
        assert_eq!(s, 200, "{b}");
        b["SecretID"].as_str().unwrap().to_string()
    });

    // The service's job (jobspec: no Consul template, so Nomad itself needs
    // no Consul token) and another namespace's job.
    tokio::task::block_in_place(|| {
        let testsvc = testsvc_bin();
        let vars = [
            ("testsvc", testsvc.to_str().unwrap()),
            ("count", "2"),
            ("job_name", "web"),
            ("initial_tag", "1.0.0"),
        ];
        let job = n.parse_job(&job_file("web-jobspec"), &vars);
        n.register(&job);
        let d = n.wait_deployment_terminal("web", Duration::from_secs(90));
        assert_eq!(d["Status"], "successful");
        let (s, b) = n
            .api(
                "POST",
                "/v1/namespace/other",
                Some(&json!({"Name": "other"})),
            )
            .unwrap();
        assert_eq!(s, 200, "{b}");
        let mut other = n.parse_job(
            &job_file("web-jobspec"),
            &[
                ("testsvc", testsvc.to_str().unwrap()),
                ("count", "1"),
                ("job_name", "secret-job"),
            ],
        );
        other["Namespace"] = json!("other");
        let (s, b) = n
            .api(
                "POST",
                "/v1/jobs?namespace=other",
                Some(&json!({"Job": other})),
            )
            .unwrap();
        assert_eq!(s, 200, "{b}");
    });

    // tagbridge with nothing but those two tokens.
    let dir = TempDir::new("acl");
    let tls = TestTls::new(&dir);
    let ct = dir.write("consul.token", &consul_token);
    let nt = dir.write("nomad.token", &nomad_token);
    let signing = dir.write("web.hmac", SIGNING);
    let config = TbConfig::new()
        .log_format("pretty")
        .tls(&tls)
        .consul(c.addr())
        .consul_attr("token_file", ct.display().to_string())
        .nomad(n.addr())
        .nomad_attr("token_file", nt.display().to_string())
        .service(
            Service::new("web", "generic")
                .signing_file(&signing)
                .rollout(&[
                    "job      = \"web\"",
                    "strategy = \"jobspec\"",
                    "timeout  = \"3m\"",
                ]),
        )
        .render();
    let server = InProcess::start(&config, &dir).await;
    let ctx = tagbridge::clients::rollout_context(&server.state.config).unwrap();
    let cancel = CancellationToken::new();
    let controller = tokio::spawn(tagbridge::controller::run(ctx, cancel.clone()));

    let body = serde_json::to_vec(&json!({"repository": "acme/web", "tag": "1.1.0"})).unwrap();
    let resp = tls
        .client()
        .post(server.url(&format!("/hooks/{}", secret_pair("web").0)))
        .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        202,
        "ingest with the module's Consul token"
    );

    let record = wait(
        "the rollout with the module's tokens to finish",
        Duration::from_secs(150),
    )
    .until_async(|| {
        let (s, v) = consul(
            &c,
            "GET",
            "/v1/kv/tagbridge/deployed/web?raw",
            &consul_root,
            None,
        );
        match s == 200 && v["outcome"] == "deployed" && v["tag"] == "1.1.0" {
            true => Ok(v),
            false => Err(v),
        }
    })
    .await;
    assert_eq!(record["job_version"], 1);
    let running = tokio::task::block_in_place(|| n.running_tags("web"));
    assert_eq!(running, vec!["1.1.0"; 2]);
    let (s, leader) = tokio::task::block_in_place(|| {
        consul(&c, "GET", "/v1/kv/tagbridge/leader", &consul_root, None)
    });
    assert_eq!(s, 200);
    assert!(
        leader[0]["Session"].is_string(),
        "the controller holds its lock: {leader}"
    );

    // And what it must not do is refused.
    tokio::task::block_in_place(|| {
        let (s, _) = consul(
            &c,
            "PUT",
            "/v1/kv/configs/other/IMAGE_TAG",
            &consul_token,
            None,
        );
        assert_eq!(s, 403, "write outside its keys");
        let (s, b) = consul(
            &c,
            "PUT",
            "/v1/session/create",
            &consul_token,
            Some(&json!({"TTL": "10s"})),
        );
        assert_eq!(s, 200, "{b}");
        let session = b["ID"].as_str().unwrap().to_string();
        let (s, _) = consul(
            &c,
            "PUT",
            &format!("/v1/kv/other/leader?acquire={session}"),
            &consul_token,
            None,
        );
        assert_eq!(s, 403, "a lock (session) on another prefix");
        let (s, _) = nomad_call(
            &n,
            "GET",
            "/v1/job/secret-job?namespace=other",
            &nomad_token,
            None,
        );
        assert_eq!(s, 403, "another namespace's job");
        let (s, _) = nomad_call(&n, "GET", "/v1/nodes", &nomad_token, None);
        assert_eq!(s, 403, "no node rights");
    });

    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
    server.stop().await;
}

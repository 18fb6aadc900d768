//! The Nomad harness and the example jobs under `nomad/`, against real
//! Consul and Nomad dev agents: the template job rolls a new tag one
//! allocation at a time, and a jobspec job given a broken tag gets an
//! unhealthy new allocation while the old ones keep serving. No tagbridge
//! code is involved: these prove the jobs and the harness that the
//! controller tests build on.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const KEY: &str = "configs/web/IMAGE_TAG";

/// Run `f` while sampling `answering(job)` every 100 ms in another thread;
/// returns f's result and the smallest count seen.
fn sampling<T>(nomad: &NomadAgent, job: &str, f: impl FnOnce() -> T) -> (T, usize, usize) {
    let done = AtomicBool::new(false);
    let min = AtomicUsize::new(usize::MAX);
    let samples = AtomicUsize::new(0);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            // Bounded: f itself is bounded, and so is this loop.
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(300) {
                let n = nomad.answering(job);
                min.fetch_min(n, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    });
    (
        out,
        min.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed),
    )
}

fn alloc_ids(nomad: &NomadAgent, job: &str) -> Vec<String> {
    let mut ids: Vec<String> = nomad
        .allocations(job)
        .iter()
        .filter(|a| a["ClientStatus"] == "running")
        .filter_map(|a| a["ID"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Every example job parses with its defaults alone and has the settings
/// the rollout strategies rely on (nomad/README.md).
fn check_example_jobs(nomad: &NomadAgent) {
    for (file, id, change_mode, canary, meta) in [
        ("web-template", "web", &["noop"][..], 0, Some("")),
        ("web-canary", "web-canary", &["noop"], 1, Some("")),
        ("web-jobspec", "web-jobspec", &[], 0, Some("1.0.0")),
        ("web-classic", "web-classic", &["restart"], 0, None),
        (
            "web-prefix",
            "web-prefix",
            &["restart", "noop"],
            0,
            Some(""),
        ),
    ] {
        let job = nomad.parse_job(&job_file(file), &[]);
        assert_eq!(job["ID"], id, "{file}");
        assert_eq!(job["Meta"]["image_tag"].as_str(), meta, "{file} meta");
        let group = &job["TaskGroups"][0];
        assert_eq!(group["Count"], 3, "{file}");
        let update = &group["Update"];
        assert_eq!(update["MaxParallel"], 1, "{file}");
        assert_eq!(update["Canary"], canary, "{file}");
        assert_eq!(update["AutoRevert"], false, "{file}");
        assert_eq!(update["AutoPromote"], false, "{file}");
        assert_eq!(update["HealthCheck"], "checks", "{file}");
        assert_eq!(update["MinHealthyTime"], 2_000_000_000u64, "{file}");
        assert_eq!(update["HealthyDeadline"], 20_000_000_000u64, "{file}");
        assert_eq!(update["ProgressDeadline"], 40_000_000_000u64, "{file}");
        assert_eq!(group["RestartPolicy"]["Attempts"], 0, "{file}");
        assert_eq!(group["ReschedulePolicy"]["Attempts"], 0, "{file}");
        assert_eq!(group["ReschedulePolicy"]["Unlimited"], false, "{file}");
        let service = &group["Services"][0];
        assert_eq!(service["Name"], id, "{file}");
        assert_eq!(service["Provider"], "nomad", "{file}");
        assert_eq!(service["Checks"][0]["Path"], "/healthz", "{file}");
        let task = &group["Tasks"][0];
        assert_eq!(task["Driver"], "raw_exec", "{file}");
        assert_eq!(
            task["Config"]["command"], "/usr/local/bin/tagbridge-testsvc",
            "{file}"
        );
        let modes: Vec<&str> = task["Templates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["ChangeMode"].as_str())
            .collect();
        assert_eq!(modes, change_mode, "{file}");
    }
    // The jobspec job's auto_revert is a variable.
    let job = nomad.parse_job(&job_file("web-jobspec"), &[("auto_revert", "true")]);
    assert_eq!(job["TaskGroups"][0]["Update"]["AutoRevert"], true);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Env"]["TAG"],
        "${NOMAD_META_image_tag}"
    );
}

#[test]
fn template_job_rolls_a_new_tag_one_allocation_at_a_time() {
    let t0 = Instant::now();
    let consul = ConsulAgent::start();
    let nomad = NomadAgent::start(&consul);
    eprintln!("agents ready after {:?}", t0.elapsed());

    // The template's `key` blocks until the key exists: write it first.
    consul.put(KEY, "1.0.0");
    let svc = testsvc_bin();
    let mut job = nomad.parse_job(
        &job_file("web-template"),
        &[
            ("testsvc", svc.to_str().expect("utf-8 path")),
            ("count", "3"),
            ("warmup", "0.5"),
            ("tag_key", KEY),
            ("datacenters", r#"["dc1"]"#),
        ],
    );
    assert_eq!(job["ID"], "web");
    job["Meta"]["image_tag"] = json!("1.0.0");
    let (eval, index) = nomad.register(&job);
    assert!(!eval.is_empty() && index > 0, "register: {eval} {index}");

    let first = nomad.wait_deployment_terminal("web", Duration::from_secs(90));
    assert_eq!(first["Status"], "successful", "first deployment: {first}");
    assert_eq!(nomad.running_tags("web"), vec!["1.0.0"; 3]);
    eprintln!("first deployment successful after {:?}", t0.elapsed());

    // change_mode = "noop": the key change alone restarts nothing.
    let before = alloc_ids(&nomad, "web");
    consul.put(KEY, "1.1.0");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        alloc_ids(&nomad, "web"),
        before,
        "a key change replaced allocations"
    );
    assert_eq!(nomad.running_tags("web"), vec!["1.0.0"; 3]);

    // What tagbridge does: bump the job meta and re-register.
    job["Meta"]["image_tag"] = json!("1.1.0");
    let roll = Instant::now();
    nomad.register(&job);
    let (second, min_answering, samples) = sampling(&nomad, "web", || {
        nomad.wait_deployment_terminal("web", Duration::from_secs(120))
    });
    eprintln!(
        "rollout took {:?}; fewest instances answering: {min_answering} over {samples} samples",
        roll.elapsed()
    );
    assert_eq!(
        second["Status"], "successful",
        "second deployment: {second}"
    );
    assert_eq!(second["JobVersion"], 1);
    assert_eq!(nomad.running_tags("web"), vec!["1.1.0"; 3]);
    // max_parallel = 1: at most one of three instances is down at a time.
    assert!(
        min_answering >= 2,
        "the rolling update left fewer than 2 instances answering"
    );
    let versions: Vec<Value> = nomad
        .allocations("web")
        .iter()
        .filter(|a| a["ClientStatus"] == "running")
        .map(|a| a["JobVersion"].clone())
        .collect();
    assert_eq!(versions, vec![json!(1); 3]);
    eprintln!("test done after {:?}", t0.elapsed());
}

#[test]
fn jobspec_job_with_a_bad_tag_gets_an_unhealthy_allocation_and_old_ones_keep_serving() {
    let t0 = Instant::now();
    let consul = ConsulAgent::start();
    let nomad = NomadAgent::start(&consul);
    let svc = testsvc_bin();
    let healthy_deadline = Duration::from_secs(10);
    let vars = [
        ("testsvc", svc.to_str().expect("utf-8 path")),
        ("count", "3"),
        ("warmup", "0.5"),
        ("initial_tag", "1.0.0"),
        ("healthy_deadline", "10s"),
        ("progress_deadline", "30s"),
    ];
    check_example_jobs(&nomad);

    let mut job = nomad.parse_job(&job_file("web-jobspec"), &vars);
    assert_eq!(job["ID"], "web-jobspec");
    assert_eq!(job["Meta"]["image_tag"], "1.0.0");
    nomad.register(&job);
    let first = nomad.wait_deployment_terminal("web-jobspec", Duration::from_secs(90));
    assert_eq!(first["Status"], "successful", "first deployment: {first}");
    assert_eq!(nomad.running_tags("web-jobspec"), vec!["1.0.0"; 3]);

    job["Meta"]["image_tag"] = json!("bad-2");
    let start = Instant::now();
    nomad.register(&job);
    let limit = healthy_deadline + Duration::from_secs(20);
    let (bad, min_answering, samples) = sampling(&nomad, "web-jobspec", || {
        let left = limit.saturating_sub(start.elapsed());
        wait("an unhealthy version-1 allocation", left)
            .attempt(|| {
                nomad
                    .allocations("web-jobspec")
                    .into_iter()
                    .find(|a| a["JobVersion"] == 1 && a["DeploymentStatus"]["Healthy"] == false)
            })
            .ok()
    });
    let bad = bad.unwrap_or_else(|| {
        panic!(
            "no unhealthy version-1 allocation within {limit:?}: {}",
            summarize_allocs(&nomad.allocations("web-jobspec"))
        )
    });
    eprintln!(
        "new allocation unhealthy after {:?}; fewest answering meanwhile: {min_answering} over {samples} samples",
        start.elapsed()
    );
    assert!(
        min_answering >= 2,
        "old instances stopped answering during the bad rollout"
    );
    assert_eq!(nomad.answering("web-jobspec"), 2);
    assert_eq!(
        nomad.running_tags("web-jobspec"),
        vec!["1.0.0", "1.0.0", "bad-2"]
    );

    // Nomad-native check results of the bad allocation, as Nomad reports
    // them (GET /v1/allocation/<id>/checks).
    let bad_id = bad["ID"].as_str().expect("alloc id");
    let checks = nomad.api_ok("GET", &format!("/v1/allocation/{bad_id}/checks"), None);
    eprintln!("checks of the unhealthy allocation: {checks}");
    let results: Vec<&Value> = checks
        .as_object()
        .expect("checks object")
        .values()
        .collect();
    assert!(
        results.iter().any(|c| c["Status"] == "failure"),
        "no failing check: {checks}"
    );

    // No reschedule is possible (reschedule attempts = 0), so the
    // deployment fails as soon as the allocation is unhealthy.
    let failed = nomad.wait_deployment_terminal("web-jobspec", Duration::from_secs(60));
    eprintln!(
        "deployment {} after {:?}: {}",
        failed["Status"],
        start.elapsed(),
        failed["StatusDescription"]
    );
    assert_eq!(failed["Status"], "failed", "deployment: {failed}");
    assert_eq!(failed["TaskGroups"]["web"]["UnhealthyAllocs"], 1);

    nomad.stop_job("web-jobspec");
    eprintln!("test done after {:?}", t0.elapsed());
}

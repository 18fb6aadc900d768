//! Downtime during a deploy: the classic consul-template restart against
//! tagbridge's rolling `template` strategy, on real Consul and Nomad agents.
//!
//! Why this exists: the reason to run tagbridge instead of "webhook →
//! `consul kv put`" is the outage a `change_mode = "restart"` template causes
//! when every instance restarts at once (design contract section 8: 5.3 s
//! with no instance answering for a service that warms up 8 s). This program
//! measures that outage and the rolling replacement side by side, with the
//! same 3-instance job, the same test service (`warmup = "8"`) and the same
//! webhook, and PRINTS the figures; it never asserts on a time. It fails only
//! when a measurement could not be taken (an agent that does not start, a
//! webhook that is refused).
//!
//! * (a) classic: `nomad/web-classic.nomad.hcl`, tagbridge with no `rollout`
//!   block (it only writes the key), one webhook with a new tag;
//! * (b) template: `nomad/web-template.nomad.hcl` (`max_parallel = 1`),
//!   tagbridge with `rollout { strategy = "template" }` and the controller
//!   running in this process.
//!
//! Each runs on its own fresh Consul + Nomad dev agents, one after the other.
//! A sampler probes every instance's `/healthz` (then `/tag`) every 100 ms,
//! in parallel, on the ports of the job's allocations (discovered with Nomad
//! blocking queries and cached), from just before the webhook until every
//! instance runs the new tag and the deploy has settled. For (b) two more
//! observers use blocking queries: one on the Nomad deployment, one on the
//! `tagbridge/deployed/web` record, so the delay between Nomad marking the
//! deployment terminal and tagbridge recording it is measured from outside.
//!
//! ```text
//! cargo bench --bench rollout [-- --runs N] [--only classic|template]
//! ```
//!
//! (`TB_ROLLOUT_RUNS` / `TB_ROLLOUT_ONLY` work too; `TAGBRIDGE_LOG=info`
//! shows the in-process tagbridge's log on stderr.) `scripts/measure-rollout.sh`
//! installs the agents and runs it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    blocking_get_status, get_indexed, probe, wait, Cluster, NomadAgent, Tagbridge, KEY,
    TERMINAL_DEPLOYMENT,
};
use serde_json::Value;
use tagbridge::clients::consul::BlockingIndex;

const JOB: &str = "web";
const OLD_TAG: &str = "1.0.0";
const NEW_TAG: &str = "1.1.0";
const INSTANCES: usize = 3;
const WARMUP: &str = "8";
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// From the webhook until the deploy must have settled.
const SETTLE_LIMIT: Duration = Duration::from_secs(180);
/// Wait parameter of every blocking query (so observers notice "stop" soon).
const BLOCK_WAIT: &str = "2s";
/// Sampling kept up after the deploy settled, to see nothing else happens.
const TAIL: Duration = Duration::from_secs(1);
/// Targets, printed in the table.
const REF_CLASSIC_NONE_S: f64 = 5.3;
const TARGET_MIN_ANSWERING: usize = 2;
const TARGET_REGISTERED_MS: f64 = 200.0;
const TARGET_RECORDED_MS: f64 = 1000.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Classic,
    Template,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::Classic => "(a) classic restart",
            Scenario::Template => "(b) template, max_parallel 1",
        }
    }
    fn job_file(self) -> &'static str {
        match self {
            Scenario::Classic => "web-classic",
            Scenario::Template => "web-template",
        }
    }
}

/// What one run of one scenario measured.
#[derive(Default)]
struct Figures {
    samples: usize,
    mean_interval_ms: f64,
    slowest_sample_ms: f64,
    min_answering: Option<usize>,
    none_s: f64,
    all_new_s: Option<f64>,
    webhook_answer_ms: f64,
    registered_ms: Option<f64>,
    deployment_terminal_s: Option<f64>,
    recorded_s: Option<f64>,
    recorded_ms: Option<f64>,
    problems: Vec<String>,
}

/// One sample: when it started, how long it took, and what answered.
struct Sample {
    at: Instant,
    took: Duration,
    answering: usize,
    on_new: usize,
    on_other: usize,
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAGBRIDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .try_init();
    let (runs, only) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rollout bench: {e}\nusage: rollout [--runs N] [--only classic|template]");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let scenarios: Vec<Scenario> = [Scenario::Classic, Scenario::Template]
        .into_iter()
        .filter(|s| only.is_none_or(|o| o == *s))
        .collect();
    let mut results: Vec<(Scenario, Vec<Figures>)> =
        scenarios.iter().map(|s| (*s, Vec::new())).collect();
    for run in 1..=runs {
        for (scenario, figs) in &mut results {
            println!("\n=== run {run}/{runs}: {}", scenario.label());
            let f = measure(&rt, *scenario);
            print_figures(&f);
            figs.push(f);
        }
    }
    println!(
        "\n## Rollout downtime ({} instances, warm-up {WARMUP} s, {runs} run(s), {:.0} s in all)\n",
        INSTANCES,
        started.elapsed().as_secs_f64()
    );
    print_table(&results);
    let problems: usize = results
        .iter()
        .flat_map(|(_, f)| f.iter())
        .map(|f| f.problems.len())
        .sum();
    if problems > 0 {
        println!("\n{problems} measurement problem(s); see above.");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_args() -> Result<(usize, Option<Scenario>), String> {
    let mut runs = std::env::var("TB_ROLLOUT_RUNS").unwrap_or_else(|_| "1".into());
    let mut only = std::env::var("TB_ROLLOUT_ONLY").unwrap_or_default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--runs" => runs = it.next().ok_or("--runs needs a value")?,
            "--only" => only = it.next().ok_or("--only needs a value")?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let runs: usize = runs
        .parse()
        .ok()
        .filter(|n| (1..=20).contains(n))
        .ok_or(format!("--runs {runs:?}: a number from 1 to 20"))?;
    let only = match only.as_str() {
        "" => None,
        "classic" | "a" => Some(Scenario::Classic),
        "template" | "b" => Some(Scenario::Template),
        o => return Err(format!("--only {o:?}: classic or template")),
    };
    Ok((runs, only))
}

/// Fresh Consul + Nomad dev agents and the TLS material for tagbridge.
fn start_cluster() -> Cluster {
    Cluster::options("rollout-bench").nomad().start()
}

/// Write the key, register the example job at `tag` (3 instances,
/// warm-up 8 s), wait until its deployment is successful.
fn run_job(cluster: &Cluster, file: &str, tag: &str) {
    let vars = [("warmup", WARMUP), ("tag_key", KEY)];
    let limit = Duration::from_secs(120);
    cluster.run_job_within(file, tag, &vars, |_| {}, limit);
}

/// Service "web", rolling job "web" with the template strategy when
/// `rollout` (else it only writes the key).
fn config(cluster: &Cluster, rollout: bool) -> String {
    let block = [
        "job      = \"web\"",
        "strategy = \"template\"",
        "timeout  = \"5m\"",
    ];
    cluster.web_config("", rollout.then_some(&block[..]))
}

/// Whether a session holds `tagbridge/leader` (the controller leads).
fn leader_held(cluster: &Cluster) -> bool {
    let url = format!("{}/v1/kv/tagbridge/leader", cluster.consul.addr());
    match blocking_get_status(&url) {
        Ok((200, body)) => serde_json::from_str::<Value>(&body)
            .map(|v| v[0]["Session"].is_string())
            .unwrap_or(false),
        _ => false,
    }
}

/// Send the signed webhook; the wall-clock time just before it was sent,
/// its answer, and how long the answer took.
async fn push(bridge: &Tagbridge, tag: &str) -> (SystemTime, Instant, u16, Value, Duration) {
    let request = bridge.push_request(tag);
    let wall = SystemTime::now();
    let sent = Instant::now();
    let resp = request.send().await.expect("webhook request");
    let took = sent.elapsed();
    let status = resp.status().as_u16();
    let answer = resp.json().await.unwrap_or(Value::Null);
    (wall, sent, status, answer, took)
}

/// One scenario on fresh agents.
fn measure(rt: &tokio::runtime::Runtime, scenario: Scenario) -> Figures {
    let t = Instant::now();
    let cluster = start_cluster();
    println!("agents ready after {:.1} s", t.elapsed().as_secs_f64());
    run_job(&cluster, scenario.job_file(), OLD_TAG);
    println!(
        "job {JOB} ({}) running {OLD_TAG} after {:.1} s",
        scenario.job_file(),
        t.elapsed().as_secs_f64()
    );
    let rollout = scenario == Scenario::Template;
    let bridge = rt.block_on(Tagbridge::start(&cluster, &config(&cluster, rollout), None));
    if rollout {
        wait("the controller to lead", Duration::from_secs(30))
            .every(Duration::from_millis(50))
            .until(|| leader_held(&cluster));
    }
    let figures = observe(rt, &cluster, &bridge, scenario);
    rt.block_on(bridge.stop());
    let t = Instant::now();
    drop(cluster);
    println!("agents stopped in {:.1} s", t.elapsed().as_secs_f64());
    figures
}

/// Sample, send the webhook, watch until settled; compute the figures.
fn observe(
    rt: &tokio::runtime::Runtime,
    cluster: &Cluster,
    bridge: &Tagbridge,
    scenario: Scenario,
) -> Figures {
    let mut fig = Figures::default();
    // None until the first allocation list is in: no sample before that.
    let targets: Mutex<Option<Vec<(String, u16)>>> = Mutex::new(None);
    let samples: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let deployment_seen: OnceLock<(Instant, Value)> = OnceLock::new();
    let record_seen: OnceLock<(Instant, Value)> = OnceLock::new();
    // Every thread below stops at this instant at the latest.
    let hard_stop = Instant::now() + SETTLE_LIMIT + Duration::from_secs(60);
    let nomad = cluster.nomad();
    let consul_addr = cluster.consul.addr();
    let nomad_addr = nomad.addr();

    let (wall, sent, window_start) = std::thread::scope(|s| {
        // Stops every thread below however this closure ends (a panic too).
        let _stop_all = StopOnDrop(&stop);
        s.spawn(|| discover(nomad, &targets, &stop, hard_stop));
        s.spawn(|| sampler(&targets, &samples, &stop, hard_stop));
        if scenario == Scenario::Template {
            s.spawn(|| watch_deployment(&nomad_addr, &deployment_seen, &stop, hard_stop));
            s.spawn(|| watch_record(&consul_addr, &record_seen, &stop, hard_stop));
        }

        // Baseline: every instance answers with the old tag.
        wait(
            format!("the {INSTANCES} instances of {JOB} to answer before the webhook"),
            Duration::from_secs(30),
        )
        .every(Duration::from_millis(50))
        .until(|| {
            let s = samples.lock().expect("samples");
            s.last()
                .is_some_and(|l| l.answering == INSTANCES && l.on_other == INSTANCES)
        });
        let window_start = Instant::now();
        std::thread::sleep(Duration::from_millis(500));

        let (wall, sent, status, answer, took) = rt.block_on(push(bridge, NEW_TAG));
        fig.webhook_answer_ms = ms(took);
        let want = if scenario == Scenario::Template {
            202
        } else {
            200
        };
        println!(
            "webhook {NEW_TAG}: {status} in {:.1} ms {answer}",
            fig.webhook_answer_ms
        );
        if status != want {
            fig.problems.push(format!(
                "webhook answered {status}, expected {want}: {answer}"
            ));
        }

        let settled = fig.problems.is_empty()
            && wait("the deploy to settle", SETTLE_LIMIT)
                .every(Duration::from_millis(50))
                .attempt(|| {
                    let on_new = first_all_new(&samples.lock().expect("samples"), sent).is_some();
                    on_new
                        && (scenario == Scenario::Classic
                            || (deployment_seen.get().is_some() && record_seen.get().is_some()))
                })
                .is_ok();
        if !settled && fig.problems.is_empty() {
            fig.problems.push(format!(
                "not settled within {} s (all on {NEW_TAG}: {}, deployment terminal seen: {}, record seen: {})",
                SETTLE_LIMIT.as_secs(),
                first_all_new(&samples.lock().expect("samples"), sent).is_some(),
                deployment_seen.get().is_some(),
                record_seen.get().is_some(),
            ));
        }
        std::thread::sleep(TAIL);
        (wall, sent, window_start)
    });

    // From the last baseline sample (all answering) before the window on.
    let mut samples = samples.into_inner().expect("samples");
    let first = samples
        .iter()
        .rposition(|s| s.at < window_start)
        .unwrap_or(0);
    samples.drain(..first);
    summarize_samples(&samples, sent, &mut fig);
    print_timeline(&samples, sent);

    if scenario == Scenario::Template {
        fig.registered_ms = registered_after(nomad, wall, &mut fig.problems);
        if let Some((at, d)) = deployment_seen.get() {
            let s = secs(at.saturating_duration_since(sent));
            fig.deployment_terminal_s = Some(s);
            let status = d["Status"].as_str().unwrap_or("?");
            println!("observer: deployment {status} at +{s:.3} s");
            if status != "successful" {
                fig.problems.push(format!("deployment ended {status}: {d}"));
            }
        }
        if let Some((at, r)) = record_seen.get() {
            let s = secs(at.saturating_duration_since(sent));
            fig.recorded_s = Some(s);
            println!(
                "observer: tagbridge/deployed/web {} at +{s:.3} s",
                r["outcome"]
            );
            if r["outcome"] != "deployed" {
                fig.problems.push(format!("tagbridge recorded {r}"));
            }
        }
        if let (Some((nomad_at, _)), Some((record_at, _))) =
            (deployment_seen.get(), record_seen.get())
        {
            // Signed: a record seen first (never expected) shows as negative.
            fig.recorded_ms = Some(if record_at >= nomad_at {
                ms(record_at.duration_since(*nomad_at))
            } else {
                -ms(nomad_at.duration_since(*record_at))
            });
        }
    }
    fig
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Keep `targets` = (ip, port) of the job's allocations that may have a
/// live process (client status pending or running), following the
/// allocation list with Nomad blocking queries. Ports come from
/// `GET /v1/allocation/<id>` once per allocation (the agent caches them).
fn discover(
    nomad: &NomadAgent,
    targets: &Mutex<Option<Vec<(String, u16)>>>,
    stop: &AtomicBool,
    hard_stop: Instant,
) {
    let mut index = BlockingIndex::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let url = format!(
            "{}/v1/job/{JOB}/allocations?index={}&wait={BLOCK_WAIT}",
            nomad.addr(),
            index.current()
        );
        let Ok((200, new_index, body)) = get_indexed(&url) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        index.observe(new_index);
        let Ok(Value::Array(allocs)) = serde_json::from_str::<Value>(&body) else {
            continue;
        };
        let live: Vec<(String, u16)> = allocs
            .iter()
            .filter(|a| matches!(a["ClientStatus"].as_str(), Some("running" | "pending")))
            .filter_map(|a| nomad.alloc_http_port(a["ID"].as_str()?))
            .collect();
        *targets.lock().expect("targets") = Some(live);
    }
}

/// Probe every target every 100 ms until `stop`.
fn sampler(
    targets: &Mutex<Option<Vec<(String, u16)>>>,
    samples: &Mutex<Vec<Sample>>,
    stop: &AtomicBool,
    hard_stop: Instant,
) {
    while targets.lock().expect("targets").is_none() {
        if stop.load(Ordering::Relaxed) || Instant::now() >= hard_stop {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let start = Instant::now();
    let mut tick: u32 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let due = start + SAMPLE_EVERY * tick;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let list = targets.lock().expect("targets").clone().unwrap_or_default();
        let at = Instant::now();
        let tags = probe_all(&list);
        let took = at.elapsed();
        let answering = tags.iter().filter(|t| t.is_some()).count();
        let on_new = tags
            .iter()
            .filter(|t| t.as_deref() == Some(NEW_TAG))
            .count();
        samples.lock().expect("samples").push(Sample {
            at,
            took,
            answering,
            on_new,
            on_other: answering - on_new,
        });
        // A sample that overran its slot does not cause a burst of catch-up
        // samples: the next one is the next slot in the future.
        let elapsed = u32::try_from(start.elapsed().as_millis() / SAMPLE_EVERY.as_millis())
            .unwrap_or(u32::MAX);
        tick = (tick + 1).max(elapsed + 1);
    }
}

/// Every target at once: `Some(tag)` (from `GET /tag`) when it answers
/// `GET /healthz` with 200, else `None`.
fn probe_all(targets: &[(String, u16)]) -> Vec<Option<String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|(ip, port)| {
                s.spawn(move || {
                    let (200, _) = probe(ip, *port, "/healthz", PROBE_TIMEOUT)? else {
                        return None;
                    };
                    // Answering; the tag it runs (an empty tag if /tag fails).
                    let tag = match probe(ip, *port, "/tag", PROBE_TIMEOUT) {
                        Some((200, body)) => body.trim().to_string(),
                        _ => String::new(),
                    };
                    Some(tag)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    })
}

/// Follow the job's deployments (Nomad blocking queries): find the one for
/// the new job version, then `GET /v1/deployment/<id>?index=…` until its
/// status is terminal; `seen` gets the instant that was first observed.
fn watch_deployment(
    nomad: &str,
    seen: &OnceLock<(Instant, Value)>,
    stop: &AtomicBool,
    hard_stop: Instant,
) {
    let mut index = BlockingIndex::default();
    let mut id: Option<String> = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let i = index.current();
        let url = match &id {
            None => format!("{nomad}/v1/job/{JOB}/deployment?index={i}&wait={BLOCK_WAIT}"),
            Some(id) => format!("{nomad}/v1/deployment/{id}?index={i}&wait={BLOCK_WAIT}"),
        };
        let Ok((200, new_index, body)) = get_indexed(&url) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let at = Instant::now();
        index.observe(new_index);
        let d: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if id.is_none() {
            // The initial deployment is version 0; ours is a later one.
            if d["JobVersion"].as_u64().is_some_and(|v| v >= 1) {
                id = d["ID"].as_str().map(str::to_string);
            } else {
                continue;
            }
        }
        let status = d["Status"].as_str().unwrap_or_default();
        if TERMINAL_DEPLOYMENT.contains(&status) {
            let _ = seen.set((at, d));
            return;
        }
    }
}

/// Follow `tagbridge/deployed/web` (Consul blocking queries) until it
/// records a final outcome for the new tag; `seen` gets that instant.
fn watch_record(
    consul: &str,
    seen: &OnceLock<(Instant, Value)>,
    stop: &AtomicBool,
    hard_stop: Instant,
) {
    use base64::Engine as _;
    let mut index = BlockingIndex::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        let url = format!(
            "{consul}/v1/kv/tagbridge/deployed/{JOB}?index={}&wait={BLOCK_WAIT}",
            index.current()
        );
        let Ok((status, new_index, body)) = get_indexed(&url) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let at = Instant::now();
        index.observe(new_index);
        if status != 200 {
            if status != 404 {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        let entries: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let Some(raw) = entries[0]["Value"].as_str() else {
            continue;
        };
        let record: Value = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let outcome = record["outcome"].as_str().unwrap_or_default();
        let final_outcome =
            !outcome.is_empty() && !matches!(outcome, "in_progress" | "rolling_back");
        if final_outcome && (record["tag"] == NEW_TAG || record["previous"] == NEW_TAG) {
            let _ = seen.set((at, record));
            return;
        }
    }
}

/// The first sample at or after `sent` in which every instance answers
/// with the new tag and none with another.
fn first_all_new(samples: &[Sample], sent: Instant) -> Option<&Sample> {
    samples
        .iter()
        .filter(|s| s.at >= sent)
        .find(|s| s.on_new >= INSTANCES && s.on_other == 0)
}

fn summarize_samples(samples: &[Sample], sent: Instant, fig: &mut Figures) {
    fig.samples = samples.len();
    fig.min_answering = samples.iter().map(|s| s.answering).min();
    fig.slowest_sample_ms = samples.iter().map(|s| ms(s.took)).fold(0.0, f64::max);
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        if samples.len() > 1 {
            fig.mean_interval_ms =
                ms(last.at.duration_since(first.at)) / (samples.len() - 1) as f64;
        }
    }
    // Time-weighted: a sample with none answering stands for the time
    // until the next sample.
    fig.none_s = samples
        .windows(2)
        .filter(|w| w[0].answering == 0)
        .map(|w| secs(w[1].at.duration_since(w[0].at)))
        // fold from +0.0: an empty f64 sum() is -0.0, printed "-0.0 s".
        .fold(0.0, |a, b| a + b);
    fig.all_new_s = first_all_new(samples, sent).map(|s| secs(s.at.duration_since(sent)));
}

/// Every change of what answers, relative to the webhook.
fn print_timeline(samples: &[Sample], sent: Instant) {
    println!("timeline (seconds after the webhook: answering, on {NEW_TAG}):");
    let mut last: Option<(usize, usize)> = None;
    for s in samples {
        let now = (s.answering, s.on_new);
        if last != Some(now) {
            let t = if s.at >= sent {
                secs(s.at.duration_since(sent))
            } else {
                -secs(sent.duration_since(s.at))
            };
            println!("  {t:+8.2} s  {} answering, {} on {NEW_TAG}", now.0, now.1);
            last = Some(now);
        }
    }
}

/// Milliseconds from `wall` (just before the webhook) to the `SubmitTime`
/// of the job version carrying the new tag.
fn registered_after(
    nomad: &NomadAgent,
    wall: SystemTime,
    problems: &mut Vec<String>,
) -> Option<f64> {
    let versions = match nomad.api("GET", &format!("/v1/job/{JOB}/versions"), None) {
        Ok((200, v)) => v,
        other => {
            problems.push(format!("GET /v1/job/{JOB}/versions: {other:?}"));
            return None;
        }
    };
    let submit = versions["Versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["Meta"]["image_tag"] == NEW_TAG)
        .filter_map(|v| v["SubmitTime"].as_i64())
        .min();
    let Some(submit) = submit else {
        problems.push(format!("no job version carries image_tag {NEW_TAG}"));
        return None;
    };
    let wall_ns = i128::try_from(wall.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()?;
    Some((i128::from(submit) - wall_ns) as f64 / 1e6)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn print_figures(f: &Figures) {
    let opt = |v: Option<f64>, unit: &str, prec: usize| {
        v.map_or("—".to_string(), |v| format!("{v:.prec$} {unit}"))
    };
    println!(
        "samples: {} (every {:.1} ms on average, slowest {:.1} ms)",
        f.samples, f.mean_interval_ms, f.slowest_sample_ms
    );
    println!(
        "minimum answering: {}",
        f.min_answering.map_or("—".to_string(), |v| v.to_string())
    );
    println!("seconds with none answering: {:.2} s", f.none_s);
    println!(
        "all instances on {NEW_TAG} after: {}",
        opt(f.all_new_s, "s", 2)
    );
    println!("webhook answered after: {:.1} ms", f.webhook_answer_ms);
    if f.registered_ms.is_some() || f.recorded_ms.is_some() {
        println!(
            "job registered after the webhook: {}",
            opt(f.registered_ms, "ms", 1)
        );
        println!(
            "deployment terminal (Nomad) at: {}; recorded (tagbridge) at: {}",
            opt(f.deployment_terminal_s, "s", 3),
            opt(f.recorded_s, "s", 3)
        );
        println!("recorded after Nomad: {}", opt(f.recorded_ms, "ms", 1));
    }
    for p in &f.problems {
        println!("PROBLEM: {p}");
    }
}

/// The final Markdown table: one row per figure, one column per scenario
/// (several runs' values separated by " / "), and the target.
fn print_table(results: &[(Scenario, Vec<Figures>)]) {
    let get = |s: Scenario| results.iter().find(|(x, _)| *x == s).map(|(_, f)| f);
    let cell = |s: Scenario, f: &dyn Fn(&Figures) -> Option<String>| -> String {
        match get(s) {
            None => "not run".to_string(),
            Some(figs) => {
                let vals: Vec<String> = figs
                    .iter()
                    .map(|x| f(x).unwrap_or_else(|| "—".to_string()))
                    .collect();
                vals.join(" / ")
            }
        }
    };
    let met = |ok: &dyn Fn(&Figures) -> Option<bool>| -> String {
        match get(Scenario::Template) {
            None => String::new(),
            Some(figs) => {
                let all: Option<Vec<bool>> = figs.iter().map(ok).collect();
                match all {
                    Some(v) if v.iter().all(|b| *b) => " — met".to_string(),
                    Some(_) => " — NOT met".to_string(),
                    None => " — not measured".to_string(),
                }
            }
        }
    };
    let rows: Vec<[String; 4]> = vec![
        [
            "minimum instances answering /healthz".to_string(),
            cell(Scenario::Classic, &|f| {
                f.min_answering.map(|v| v.to_string())
            }),
            cell(Scenario::Template, &|f| {
                f.min_answering.map(|v| v.to_string())
            }),
            format!(
                "(b) never below {TARGET_MIN_ANSWERING}{}",
                met(&|f| f.min_answering.map(|v| v >= TARGET_MIN_ANSWERING))
            ),
        ],
        [
            "seconds with none answering".to_string(),
            cell(Scenario::Classic, &|f| Some(format!("{:.1} s", f.none_s))),
            cell(Scenario::Template, &|f| Some(format!("{:.1} s", f.none_s))),
            format!(
                "(b) 0 s{}; (a) reference without tagbridge: {REF_CLASSIC_NONE_S} s",
                met(&|f| Some(f.none_s == 0.0))
            ),
        ],
        [
            format!("webhook → all {INSTANCES} instances on the new tag"),
            cell(Scenario::Classic, &|f| {
                f.all_new_s.map(|v| format!("{v:.1} s"))
            }),
            cell(Scenario::Template, &|f| {
                f.all_new_s.map(|v| format!("{v:.1} s"))
            }),
            "— (contract §8: about 39 s rolling)".to_string(),
        ],
        [
            "webhook → job registered (SubmitTime)".to_string(),
            cell(Scenario::Classic, &|_| None),
            cell(Scenario::Template, &|f| {
                f.registered_ms.map(|v| format!("{v:.0} ms"))
            }),
            format!(
                "≤ {TARGET_REGISTERED_MS:.0} ms{}",
                met(&|f| f.registered_ms.map(|v| v <= TARGET_REGISTERED_MS))
            ),
        ],
        [
            "Nomad deployment terminal → tagbridge recorded".to_string(),
            cell(Scenario::Classic, &|_| None),
            cell(Scenario::Template, &|f| {
                f.recorded_ms.map(|v| format!("{v:.0} ms"))
            }),
            format!(
                "≤ {:.0} s{}",
                TARGET_RECORDED_MS / 1e3,
                met(&|f| f.recorded_ms.map(|v| v <= TARGET_RECORDED_MS))
            ),
        ],
        [
            "webhook answered (HTTP)".to_string(),
            cell(Scenario::Classic, &|f| {
                Some(format!("{:.0} ms", f.webhook_answer_ms))
            }),
            cell(Scenario::Template, &|f| {
                Some(format!("{:.0} ms", f.webhook_answer_ms))
            }),
            "—".to_string(),
        ],
        [
            "samples (mean interval / slowest sample)".to_string(),
            cell(Scenario::Classic, &|f| {
                Some(format!(
                    "{} ({:.0} / {:.0} ms)",
                    f.samples, f.mean_interval_ms, f.slowest_sample_ms
                ))
            }),
            cell(Scenario::Template, &|f| {
                Some(format!(
                    "{} ({:.0} / {:.0} ms)",
                    f.samples, f.mean_interval_ms, f.slowest_sample_ms
                ))
            }),
            "every 100 ms, each well under 100 ms".to_string(),
        ],
    ];
    println!(
        "| figure | {} | {} | target |",
        Scenario::Classic.label(),
        Scenario::Template.label()
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
}

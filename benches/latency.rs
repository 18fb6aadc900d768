//! Webhook latency compared with a bare Consul transaction, in one process.
//!
//! Why this exists: tagbridge's promise is "one webhook = one Consul txn",
//! so the honest yardstick for its overhead (TLS, HTTP, signature check,
//! policy, JSON) is the latency of that same txn sent straight to Consul by
//! the same client machine in the same run. This binary measures both,
//! interleaved one for one so drift (Consul's raft log, page cache, CPU
//! frequency) hits both series alike, and PRINTS the figures; it never
//! asserts on a time. It only fails when the measurement itself is invalid
//! (a webhook that did not commit, a txn that conflicted).
//!
//! It needs a running tagbridge and Consul; `scripts/bench.sh` starts both
//! and passes the settings below as `--flag value` arguments (or the
//! `TB_BENCH_*` environment variables of the same names).
//!
//! ```text
//! cargo bench --bench latency -- --url https://127.0.0.1:PORT --secret S \
//!     --signing-key-file F --ca tls.crt --consul http://127.0.0.1:PORT [--n 2000]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tagbridge::clients::consul::{Consul, ConsulSettings, TxnOp, TxnOutcome};
use tagbridge::clients::http::{ClientTlsFiles, HttpClient};
use tagbridge::store::history::HistoryKeys;
use tagbridge::store::Desired;
use tagbridge::webhook::signature::hub_signature_256;

/// Settings, from `TB_BENCH_<NAME>` then `--<name>` arguments.
struct Args {
    url: String,
    secret: String,
    signing_key_file: String,
    ca: String,
    consul: String,
    repository: String,
    service: String,
    key: String,
    state_prefix: String,
    n: usize,
    warmup: usize,
    /// The service's `history_keep`: the warm-up writes at least this
    /// many entries, so every measured webhook trims one, as the bare txn
    /// deletes one.
    history_keep: usize,
    http2: bool,
}

const USAGE: &str = "usage: latency --url https://127.0.0.1:PORT --secret SECRET \
--signing-key-file FILE --ca CERT.pem --consul http://127.0.0.1:PORT \
[--repository acme/web] [--service web] [--key configs/web/IMAGE_TAG] \
[--state-prefix tagbridge] [--n 2000] [--warmup 200] [--history-keep 100] [--http2]";

impl Args {
    fn parse() -> Result<Self, String> {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for name in [
            "url",
            "secret",
            "signing-key-file",
            "ca",
            "consul",
            "repository",
            "service",
            "key",
            "state-prefix",
            "n",
            "warmup",
            "history-keep",
            "http2",
        ] {
            let env = format!("TB_BENCH_{}", name.replace('-', "_").to_uppercase());
            if let Ok(v) = std::env::var(&env) {
                if !v.is_empty() {
                    map.insert(name.to_string(), v);
                }
            }
        }
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                "--http2" => {
                    map.insert("http2".into(), "1".into());
                }
                "-h" | "--help" => return Err(USAGE.into()),
                flag if flag.starts_with("--") => {
                    let value = it
                        .next()
                        .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                    map.insert(flag[2..].to_string(), value);
                }
                other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
            }
        }
        let mut take = |name: &str, default: Option<&str>| -> Result<String, String> {
            map.remove(name)
                .or_else(|| default.map(str::to_string))
                .ok_or_else(|| format!("missing --{name}\n{USAGE}"))
        };
        let number = |name: &str, v: String| -> Result<usize, String> {
            v.parse()
                .map_err(|_| format!("--{name}: {v:?} is not a number"))
        };
        let args = Args {
            url: take("url", None)?.trim_end_matches('/').to_string(),
            secret: take("secret", None)?,
            signing_key_file: take("signing-key-file", None)?,
            ca: take("ca", None)?,
            consul: take("consul", None)?.trim_end_matches('/').to_string(),
            repository: take("repository", Some("acme/web"))?,
            service: take("service", Some("web"))?,
            key: take("key", Some("configs/web/IMAGE_TAG"))?,
            state_prefix: take("state-prefix", Some("tagbridge"))?,
            n: number("n", take("n", Some("2000"))?)?,
            warmup: number("warmup", take("warmup", Some("200"))?)?,
            history_keep: number("history-keep", take("history-keep", Some("100"))?)?,
            http2: take("http2", Some("0"))? != "0",
        };
        if let Some(unknown) = map.keys().next() {
            return Err(format!("unknown option --{unknown}\n{USAGE}"));
        }
        if args.n == 0 {
            return Err("--n must be at least 1".into());
        }
        Ok(args)
    }
}

/// Percentiles of one series, in milliseconds.
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Summary {
    fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least p% at or below it.
        let rank = |p: f64| {
            let i = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms[i.clamp(1, ms.len()) - 1]
        };
        Summary {
            n: ms.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: ms.last().copied().unwrap_or(0.0),
            mean: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        }
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what:<34} n={:<5} p50 {:7.3} ms  p90 {:7.3} ms  p99 {:7.3} ms  max {:8.3} ms  mean {:7.3} ms",
            self.n, self.p50, self.p90, self.p99, self.max, self.mean
        )
    }
}

/// Sends signed `generic` webhooks, each with the next numeric tag.
struct Webhooks {
    client: reqwest::Client,
    endpoint: String,
    repository: String,
    signing_key: Vec<u8>,
    next_tag: u64,
    statuses: BTreeMap<String, usize>,
}

impl Webhooks {
    /// Send one webhook; the time covers the request and the whole answer.
    /// Returns the time and whether it was a committed change.
    async fn send(&mut self) -> Result<(Duration, u64, bool), String> {
        let tag = self.next_tag;
        self.next_tag += 1;
        let digest = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            tag.to_string().as_bytes(),
        ));
        let body = format!(
            r#"{{"repository":"{}","tag":"{tag}","digest":"sha256:{digest}"}}"#,
            self.repository
        );
        let signature = hub_signature_256(&self.signing_key, body.as_bytes());
        let started = Instant::now();
        let resp = self
            .client
            .post(&self.endpoint)
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("webhook: {e:?}"))?;
        let status = resp.status();
        let answer = resp
            .bytes()
            .await
            .map_err(|e| format!("webhook answer: {e}"))?;
        let elapsed = started.elapsed();
        let changed = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("changed").and_then(serde_json::Value::as_bool));
        let label = match changed {
            Some(c) => format!("{} changed:{c}", status.as_u16()),
            None => format!(
                "{} {}",
                status.as_u16(),
                String::from_utf8_lossy(&answer).trim()
            ),
        };
        *self.statuses.entry(label).or_default() += 1;
        Ok((
            elapsed,
            tag,
            status.as_u16() == 200 && changed == Some(true),
        ))
    }
}

impl Webhooks {
    /// `GET /healthz` on the same kept-alive TLS connection: the round
    /// trip to tagbridge with no Consul behind it, i.e. the floor that TLS,
    /// HTTP and one more loopback hop put under every webhook.
    async fn healthz(&mut self) -> Result<Duration, String> {
        let url = self.endpoint.split("/hooks/").next().unwrap_or_default();
        let started = Instant::now();
        let resp = self
            .client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .map_err(|e| format!("healthz: {e:?}"))?;
        let status = resp.status();
        resp.bytes()
            .await
            .map_err(|e| format!("healthz answer: {e}"))?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            return Err(format!("healthz answered {status}"));
        }
        Ok(elapsed)
    }
}

/// The txn tagbridge sends for a webhook that changes the tag, sent
/// straight to Consul on keys of its own: CAS on the tag, the desired
/// record and the history head, one history entry set and one deleted
/// (same value sizes), plus check-not-exists on a pin key, through the
/// same Consul client code tagbridge uses.
struct BareTxn {
    consul: Consul,
    keys: [String; 4],
    indexes: [u64; 3],
    history: Vec<u8>,
    digest: String,
    seq: u64,
    conflicts: usize,
}

impl BareTxn {
    async fn send(&mut self, tag: u64) -> Result<Duration, String> {
        self.seq += 1;
        let desired = Desired {
            tag: tag.to_string(),
            digest: Some(self.digest.clone()),
            seq: self.seq,
            at: tagbridge::clock::now_rfc3339(),
        };
        let desired = serde_json::to_vec(&desired).map_err(|e| e.to_string())?;
        let [tag_key, desired_key, head_key, pin_key] = &self.keys;
        // The same shape as tagbridge's history write: the head moves,
        // one entry is set and the oldest one deleted.
        let entry_key = |seq: u64| format!("{head_key}-entries/{seq:020}");
        let head = format!(
            r#"{{"seq":{},"oldest":{}}}"#,
            self.seq,
            self.seq.saturating_sub(99)
        );
        let ops = [
            TxnOp::Cas {
                key: tag_key.clone(),
                value: tag.to_string().into_bytes(),
                index: self.indexes[0],
            },
            TxnOp::Cas {
                key: desired_key.clone(),
                value: desired,
                index: self.indexes[1],
            },
            TxnOp::Cas {
                key: head_key.clone(),
                value: head.into_bytes(),
                index: self.indexes[2],
            },
            TxnOp::Set {
                key: entry_key(self.seq),
                value: self.history.clone(),
            },
            TxnOp::Delete {
                key: entry_key(self.seq.saturating_sub(100)),
            },
            TxnOp::CheckNotExists {
                key: pin_key.clone(),
            },
        ];
        let started = Instant::now();
        let outcome = self.consul.txn(&ops).await.map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        match outcome {
            TxnOutcome::Committed(indexes) => {
                for (slot, key) in self.keys[..3].iter().enumerate() {
                    if let Some((_, i)) = indexes.iter().find(|(k, _)| k == key) {
                        self.indexes[slot] = *i;
                    }
                }
            }
            TxnOutcome::Conflict(why) => {
                self.conflicts += 1;
                return Err(format!("bare txn conflicted: {why:?}"));
            }
        }
        Ok(elapsed)
    }
}

async fn value_of(consul: &Consul, key: &str) -> Result<Option<(Vec<u8>, u64)>, String> {
    let read = consul.kv_get(key).await.map_err(|e| e.to_string())?;
    Ok(read.value.map(|kv| (kv.value, kv.modify_index)))
}

async fn run(args: Args) -> Result<bool, String> {
    let ca = std::fs::read(&args.ca).map_err(|e| format!("{}: {e}", args.ca))?;
    let ca = reqwest::Certificate::from_pem(&ca).map_err(|e| format!("{}: {e}", args.ca))?;
    let signing_key = std::fs::read(&args.signing_key_file)
        .map_err(|e| format!("{}: {e}", args.signing_key_file))?;
    let mut builder = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(Duration::from_secs(90))
        .timeout(Duration::from_secs(10));
    builder = if args.http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
    let http = HttpClient::new(&ClientTlsFiles::default()).map_err(|e| e.to_string())?;
    let consul = Consul::new(
        http,
        ConsulSettings {
            address: args.consul.clone(),
            token: None,
            datacenter: None,
            timeout: Duration::from_secs(10),
        },
    );

    // Start above whatever tag is there, so every webhook is a change.
    let current = value_of(&consul, &args.key)
        .await?
        .and_then(|(v, _)| String::from_utf8_lossy(&v).trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut hooks = Webhooks {
        client,
        endpoint: format!("{}/hooks/{}", args.url, args.secret),
        repository: args.repository.clone(),
        signing_key,
        next_tag: current.max(1_000_000) + 1,
        statuses: BTreeMap::new(),
    };

    // Warm up tagbridge: connection, TLS session, its snapshot cache, and
    // enough changes to fill the bounded history to its steady size (with
    // fewer, a webhook's txn would have no entry to trim and be one
    // operation shorter than the bare txn it is compared with).
    let warmup = args.warmup.max(1);
    let fill = warmup.max(args.history_keep + 1);
    for _ in 0..fill {
        let (_, tag, ok) = hooks.send().await?;
        if !ok {
            return Err(format!(
                "warm-up webhook for tag {tag} did not commit: {:?}",
                hooks.statuses
            ));
        }
    }
    hooks.statuses.clear();

    // The bare txn writes values the size of tagbridge's own records.
    let history_keys = HistoryKeys::new(&format!("{}/history/{}", args.state_prefix, args.service));
    let desired_key = format!("{}/desired/{}", args.state_prefix, args.service);
    let newest = tagbridge::store::history::recent(&consul, &history_keys, 1)
        .await
        .map_err(|e| e.to_string())?;
    let history = serde_json::to_vec(
        newest
            .first()
            .ok_or_else(|| format!("{} has no entry after the warm-up", history_keys.dir))?,
    )
    .map_err(|e| e.to_string())?;
    let desired_len = value_of(&consul, &desired_key)
        .await?
        .map_or(0, |(v, _)| v.len());
    let base = format!("tagbridge-bench/baseline/{}", args.service);
    let keys = [
        format!("{base}/IMAGE_TAG"),
        format!("{base}/desired"),
        format!("{base}/history-head"),
        format!("{base}/pin"),
    ];
    let mut indexes = [0u64; 3];
    for (slot, key) in keys[..3].iter().enumerate() {
        indexes[slot] = value_of(&consul, key).await?.map_or(0, |(_, i)| i);
    }
    let mut bare = BareTxn {
        consul: consul.clone(),
        keys,
        indexes,
        history,
        digest: format!("sha256:{}", "0".repeat(64)),
        seq: 0,
        conflicts: 0,
    };
    for _ in 0..warmup {
        bare.send(hooks.next_tag).await?;
    }

    println!(
        "values written per change: tag {} B, desired ~{} B, one history entry {} B, its head (tagbridge's own records)",
        hooks.next_tag.to_string().len(),
        desired_len,
        bare.history.len()
    );
    println!(
        "client: reqwest/rustls, keep-alive, {}; {fill} warm-up webhooks (history_keep {}), {warmup} warm-up txns; measuring {} of each, alternating",
        if args.http2 { "HTTP/2" } else { "HTTP/1.1" },
        args.history_keep,
        args.n
    );

    let mut webhook_times = Vec::with_capacity(args.n);
    let mut txn_times = Vec::with_capacity(args.n);
    let mut hop_times = Vec::with_capacity(args.n);
    let mut committed = 0usize;
    for i in 0..args.n {
        // Alternate which goes first, so neither always follows the other.
        let tag = hooks.next_tag;
        if i % 2 == 0 {
            let (t, _, ok) = hooks.send().await?;
            webhook_times.push(t);
            committed += usize::from(ok);
            txn_times.push(bare.send(tag).await?);
        } else {
            txn_times.push(bare.send(tag).await?);
            let (t, _, ok) = hooks.send().await?;
            webhook_times.push(t);
            committed += usize::from(ok);
        }
        hop_times.push(hooks.healthz().await?);
    }

    let hook = Summary::of(&webhook_times);
    let txn = Summary::of(&txn_times);
    let hop = Summary::of(&hop_times);
    let ratio = hook.p50 / txn.p50;
    println!();
    println!("{}", hook.line("webhook -> 2xx (HTTPS, tagbridge)"));
    println!("{}", txn.line("bare Consul txn (same shape)"));
    println!("{}", hop.line("GET /healthz (HTTPS, no Consul)"));
    println!(
        "p50 overhead of tagbridge: {:.3} ms; p50 ratio webhook/txn {ratio:.2}",
        hook.p50 - txn.p50
    );
    // The webhook leg is HTTPS to tagbridge and then the txn; the bare
    // leg is plain HTTP straight to Consul. /healthz shows how much of
    // the overhead is that extra TLS hop rather than webhook handling.
    println!(
        "of which the HTTPS hop to tagbridge (healthz p50): {:.3} ms; webhook handling beyond hop + txn: {:.3} ms",
        hop.p50,
        hook.p50 - txn.p50 - hop.p50
    );
    println!("webhook answers:");
    for (label, count) in &hooks.statuses {
        println!("  {count:>6} x {label}");
    }
    println!(
        "committed changes: {committed}/{} webhooks; bare txn conflicts: {}",
        args.n, bare.conflicts
    );
    // Machine-readable lines for scripts/bench.sh.
    for (name, s) in [("webhook", &hook), ("txn", &txn), ("healthz", &hop)] {
        println!(
            "RESULT {name}_p50_ms={:.3} {name}_p90_ms={:.3} {name}_p99_ms={:.3} {name}_max_ms={:.3}",
            s.p50, s.p90, s.p99, s.max
        );
    }
    println!(
        "RESULT ratio_p50={ratio:.3} committed={committed} n={}",
        args.n
    );
    Ok(committed == args.n)
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("latency: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "latency: not every measured webhook committed a change; figures are not valid"
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("latency: {e}");
            ExitCode::from(1)
        }
    }
}

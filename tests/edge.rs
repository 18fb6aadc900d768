//! The webhook listener at the edge: what strangers' connections and
//! requests may cost, against the real binary and a real Consul agent.
//!
//! Distinct client addresses are real: each client socket is bound to its
//! own address in 127.0.0.0/8 before connecting.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const SIGNING: &str = "edge-test-signing-key";

struct Edge {
    consul: ConsulAgent,
    tls: TestTls,
    serving: Serving,
    admin: u16,
    _dir: TempDir,
}

/// Start Consul and `tagbridge serve` with `extra` top-level settings and
/// `services` appended to the one signed generic service "gen".
fn start(extra: &str, services: &str) -> Edge {
    tokio::task::block_in_place(|| {
        let Cluster {
            consul, tls, dir, ..
        } = Cluster::options("edge").start();
        let signing = dir.write("gen.hmac", SIGNING);
        let admin = free_ports(1)[0];
        let config = TbConfig::new()
            .admin_listen(format!("127.0.0.1:{admin}"))
            .log_format("json")
            .top(extra)
            .tls(&tls)
            .consul(consul.addr())
            .consul_attr("timeout", "2s")
            .service(
                Service::new("gen", "generic")
                    .signing_file(&signing)
                    .line("tags { order = \"numeric\" }"),
            )
            .services_text(services)
            .write(&dir, "tagbridge.hcl");
        let serving = Serving::start(&config, &[], dir.path().join("tagbridge.log"));
        Edge {
            consul,
            tls,
            serving,
            admin,
            _dir: dir,
        }
    })
}

fn gen_body(tag: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"repository": "acme/gen", "tag": tag})).unwrap()
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

impl Edge {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.serving.port))
    }

    /// A reqwest client whose connections come from `src`.
    fn client(&self, src: IpAddr, h2: bool) -> reqwest::Client {
        let b = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.tls.ca_pem.as_bytes()).expect("ca"),
            )
            .local_address(src)
            .timeout(Duration::from_secs(30));
        let b = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        b.build().expect("client")
    }

    /// A correctly signed delivery of `tag`.
    async fn deliver(&self, client: &reqwest::Client, tag: &str) -> (u16, String) {
        let body = gen_body(tag);
        let resp = client
            .post(
                self.serving
                    .url(&format!("/hooks/{}", secret_pair("gen").0)),
            )
            .header("X-Hub-Signature-256", hub_sig(SIGNING.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .expect("delivery");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A TCP connection from `src`.
    async fn tcp_from(&self, src: IpAddr) -> std::io::Result<TcpStream> {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::new(src, 0))?;
        s.connect(self.addr()).await
    }

    /// A TLS connection from `src`, offering `alpn`.
    async fn tls_from(&self, src: IpAddr, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp_from(src).await?;
        let mut cfg = (*self.tls.rustls_client()).clone();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("handshake timed out"))?
    }
}

/// The value of the first metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Read until the peer closes (EOF or error); the time that took, or
/// `None` when it was still open after `limit`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let r = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|()| started.elapsed())
}

/// Read one HTTP/1.1 response (head and Content-Length body) from `s`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (u16, String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while got.len() < head_end + len {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("body in time")
            .expect("read body");
        assert!(n > 0, "closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&got[head_end..head_end + len]).to_string();
    (status, head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_cannot_take_every_slot() {
    let e = start(
        r#"max_connections = 8
max_connections_per_address = 2
first_request_timeout = "60s"
idle_timeout = "60s""#,
        "",
    );
    // Twenty idle TLS connections from one address: more than
    // max_connections. Two are kept, the rest closed at accept.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match e.tls_from(loopback(2), &[b"http/1.1"]).await {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 2, "per-address cap");
    assert_eq!(refused, 18);
    // And silent TCP from another address.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(e.tcp_from(loopback(4)).await.expect("tcp connect"));
    }

    // The idle ones would hold their slots for 60 s; a signed delivery
    // from another address is served at once (a starved one would wait
    // for them: far longer than the bound).
    let started = Instant::now();
    let (status, body) = e.deliver(&e.client(loopback(3), false), "7").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("7"));
    // The held connections are still open (not cut to make room).
    for s in &mut held {
        assert!(closed_within(s, Duration::from_millis(200)).await.is_none());
    }
    let m = e.metrics().await;
    let refused_total = metric(
        &m,
        r#"tagbridge_connections_closed_total{reason="per_address_limit"}"#,
    )
    .expect("refusals counted");
    assert!(refused_total >= 18.0 + 8.0, "{m}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_closed_but_not_a_request_in_flight() {
    let e = start(
        r#"idle_timeout = "1s"
first_request_timeout = "5s""#,
        "",
    );
    // HTTP/1.1: one request, then silence.
    let mut s = e.tls_from(loopback(10), &[b"http/1.1"]).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut s).await;
    assert_eq!(status, 200);
    let took = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("HTTP/1.1 idle connection closed");
    assert!(took >= Duration::from_millis(700), "closed early: {took:?}");

    // HTTP/2: the connection future ends when the server closes it.
    let tls = e.tls_from(loopback(11), &[b"h2"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get("https://localhost/healthz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status().as_u16(), 200);
    let started = Instant::now();
    let _ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("HTTP/2 idle connection closed")
        .expect("join");
    assert!(started.elapsed() >= Duration::from_millis(700));

    // A request whose body takes longer than the idle timeout is not cut.
    let body = gen_body("3");
    let sig = hub_sig(SIGNING.as_bytes(), &body);
    let mut s = e.tls_from(loopback(12), &[b"http/1.1"]).await.unwrap();
    let head = format!(
        "POST /hooks/{} HTTP/1.1\r\nHost: localhost\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\n\r\n",
        secret_pair("gen").0,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(&body[5..]).await.unwrap();
    let (status, _, text) = read_response(&mut s).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("3"));
    let m = e.metrics().await;
    assert!(
        metric(
            &m,
            r#"tagbridge_connections_closed_total{reason="idle_timeout"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_without_a_request_are_closed_at_the_first_request_deadline() {
    let e = start(
        r#"first_request_timeout = "1s"
idle_timeout = "30s""#,
        "",
    );
    let limit = Duration::from_secs(10);
    // Silent TCP: no ClientHello.
    let mut tcp = e.tcp_from(loopback(20)).await.unwrap();
    let took = closed_within(&mut tcp, limit)
        .await
        .expect("silent TCP closed");
    assert!(took >= Duration::from_millis(700), "{took:?}");
    // TLS done, no request.
    let mut tls = e.tls_from(loopback(21), &[b"http/1.1"]).await.unwrap();
    let took = closed_within(&mut tls, limit)
        .await
        .expect("silent TLS closed");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // HTTP/2 preface and SETTINGS, but never a HEADERS frame.
    let mut h2 = e.tls_from(loopback(22), &[b"h2"]).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let took = closed_within(&mut h2, limit)
        .await
        .expect("HTTP/2 without HEADERS closed");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Half a request head: the same deadline.
    let mut half = e.tls_from(loopback(23), &[b"http/1.1"]).await.unwrap();
    half.write_all(b"POST /hooks/x HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert!(closed_within(&mut half, limit).await.is_some());

    let (status, body) = e.deliver(&e.client(loopback(24), true), "5").await;
    assert_eq!(status, 200, "{body}");
    let m = e.metrics().await;
    let n = metric(
        &m,
        r#"tagbridge_connections_closed_total{reason="first_request_timeout"}"#,
    )
    .unwrap_or(0.0);
    assert!(n >= 4.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_never_lock_out_a_valid_delivery() {
    // The default failed-attempt limit (20 a minute).
    let e = start("", "");
    let client = e.client(loopback(30), false);
    let mut statuses = Vec::new();
    for i in 0..40 {
        let resp = client
            .post(e.serving.url(&format!("/hooks/guess-{i}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 404), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(e.consul.fingerprint(), vec![]);

    // The same address, the right secret and signature: processed.
    let (status, body) = e.deliver(&client, "9").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("9"));
    let written = e.consul.fingerprint();

    // Still 429 for failures: a wrong secret, and the right secret with a
    // bad signature (which counts as a failure).
    let resp = client
        .post(e.serving.url("/hooks/guess-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body = gen_body("10");
    let resp = client
        .post(e.serving.url(&format!("/hooks/{}", secret_pair("gen").0)))
        .header("X-Hub-Signature-256", hub_sig(b"wrong key", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(e.consul.fingerprint(), written, "nothing more written");
    // Another address is not affected.
    let resp = e
        .client(loopback(31), false)
        .post(e.serving.url("/hooks/guess-y"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);

    // The log: the accepted delivery has its line; the 43 rejections are
    // summarised (flushed at shutdown), never a line each.
    let (_, log) = tokio::task::block_in_place(|| e.serving.terminate());
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let msg = |v: &serde_json::Value| v["message"].as_str().unwrap_or("").to_string();
    let webhook_lines = lines.iter().filter(|v| msg(v) == "webhook").count();
    assert_eq!(webhook_lines, 1, "{log}");
    // One line per address per 10 s window: the test's rejections span one
    // or two windows.
    let mine: Vec<_> = lines
        .iter()
        .filter(|v| msg(v) == "rejected requests" && v["client"] == "127.0.0.30")
        .collect();
    assert!((1..=2).contains(&mine.len()), "{log}");
    let total: u64 = mine.iter().map(|v| v["rejected"].as_u64().unwrap()).sum();
    assert_eq!(total, 42, "{log}");
    assert!(
        !log.contains(&secret_pair("gen").0),
        "the secret must not be logged"
    );
}

/// Pipeline `n` rejected requests, each with its own X-Forwarded-For
/// address, over one keep-alive connection; returns the answers counted.
async fn pipeline_xff(e: &Edge, first: u32, n: u32) -> u32 {
    let tls = e.tls_from(loopback(1), &[b"http/1.1"]).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(256 * 1024);
        for i in first..first + n {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            batch.extend_from_slice(
                format!(
                    "POST /hooks/wrong HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: {ip}\r\nContent-Length: 0\r\n\r\n"
                )
                .as_bytes(),
            );
            if batch.len() > 200 * 1024 {
                wr.write_all(&batch).await.unwrap();
                batch.clear();
            }
        }
        wr.write_all(&batch).await.unwrap();
        wr.flush().await.unwrap();
        wr
    });
    let needle = b"HTTP/1.1 4";
    let mut seen = 0u32;
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < n && Instant::now() < deadline {
        let r = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await;
        let Ok(Ok(k)) = r else { break };
        if k == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..k]);
        seen += carry.windows(needle.len()).filter(|w| w == needle).count() as u32;
        let keep = carry.len().min(needle.len() - 1);
        carry.drain(..carry.len() - keep);
    }
    let _wr = writer.await.unwrap();
    seen
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_addresses_cost_bounded_memory() {
    // Behind a trusted proxy (this test's 127.0.0.1) each request names
    // its own client address: the cheapest real way to rotate addresses.
    let e = start(r#"trusted_proxies = ["127.0.0.1/32"]"#, "");
    // Warm up: allocator arenas, TLS, the first tables.
    assert_eq!(pipeline_xff(&e, 0, 2_000).await, 2_000);
    let before = rss_kib(e.serving.pid());
    let per = 25_000;
    let mut tasks = Vec::new();
    let e = Arc::new(e);
    for c in 0..4u32 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            pipeline_xff(&e, 10_000 + c * per, per).await
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert_eq!(answered, 100_000);
    let after = rss_kib(e.serving.pid());
    let m = e.metrics().await;
    let tracked = metric(&m, "tagbridge_failed_attempt_addresses ").expect("gauge");
    // The table's capacity (default 65 536 addresses) is below the
    // addresses sent: it was reached and held.
    assert!(tracked > 0.0 && tracked <= 65_536.0, "{tracked}");
    // 65 536 entries of ~50 bytes in a table of 131 072 slots is ~7 MiB,
    // twice that while it grows (old and new table), plus the rejection
    // summary (1 024 addresses). 32 MiB is that with room for allocator
    // slack; one unbounded entry per address with a per-address log line
    // or limiter state would be well past it at 100 000.
    let grew = after.saturating_sub(before);
    assert!(
        grew < 32 * 1024,
        "RSS grew by {grew} KiB ({before} -> {after})"
    );
    let not_found = metric(
        &m,
        r#"tagbridge_webhooks_total{service="",source="",outcome="not_found"}"#,
    )
    .unwrap_or(0.0);
    let limited = metric(
        &m,
        r#"tagbridge_webhooks_total{service="",source="",outcome="rate_limited"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(not_found + limited, 102_000.0, "{m}");
    // Deliveries still work, through the proxy too.
    let (status, body) = e.deliver(&e.client(loopback(1), false), "11").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("11"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_one_mib_is_413_on_http2_and_http11() {
    let e = start("", "");
    let url = e.serving.url(&format!("/hooks/{}", secret_pair("gen").0));
    let big = vec![b' '; 2 * 1024 * 1024];
    let streamed = || {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..40).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
        reqwest::Body::wrap_stream(futures_stream(chunks))
    };
    for h2 in [true, false] {
        let client = e.client(loopback(40 + u8::from(h2)), h2);
        let resp = client
            .post(&url)
            .body(big.clone())
            .send()
            .await
            .expect("declared");
        assert_eq!(resp.status().as_u16(), 413, "h2={h2}");
        let want = if h2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(resp.version(), want);
        assert!(resp.text().await.unwrap().contains("body over"));
        let resp = client
            .post(&url)
            .body(streamed())
            .send()
            .await
            .expect("streamed");
        assert_eq!(resp.status().as_u16(), 413, "h2={h2} streamed");
        // The client (and, on HTTP/2, its connection) still works.
        let (status, body) = e.deliver(&client, if h2 { "21" } else { "22" }).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("22"));

    // HTTP/1.1 by hand: the answer arrives while the body is still being
    // written, says close, and the connection is closed after a bounded
    // drain.
    let mut s = e.tls_from(loopback(42), &[b"http/1.1"]).await.unwrap();
    let head = format!(
        "POST /hooks/{} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        secret_pair("gen").0,
        8 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 413);
    assert!(head.contains("connection: close"), "{head}");
    let _ = s.write_all(&vec![b' '; 256 * 1024]).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "closed after the drain"
    );
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("22"));
}

/// One raw HTTP/1.1 request from 127.0.0.1 (the trusted proxy) with the
/// given X-Forwarded-For lines, in order.
async fn via_proxy(e: &Edge, xff: &[&str], path: &str, body: &[u8], sig: Option<&str>) -> u16 {
    let mut s = e.tls_from(loopback(1), &[b"http/1.1"]).await.unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for line in xff {
        head.push_str(&format!("X-Forwarded-For: {line}\r\n"));
    }
    if let Some(sig) = sig {
        head.push_str(&format!("X-Hub-Signature-256: {sig}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_response(&mut s).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_line_x_forwarded_for_is_read_whole_behind_a_trusted_proxy() {
    let (_, ip_hash) = secret_pair("ip");
    let e = start(
        r#"trusted_proxies = ["127.0.0.1/32"]"#,
        &format!(
            r#"
service "ip" {{
  secret_sha256 = "{ip_hash}"
  source        = "dockerhub"
  repository    = "acme/ip"
  key           = "configs/ip/IMAGE_TAG"
  allow_cidrs   = ["198.51.100.0/24"]
}}"#
        ),
    );
    let path = format!("/hooks/{}", secret_pair("ip").0);
    let push = |tag: &str| {
        serde_json::to_vec(&json!({
            "callback_url": "https://registry.hub.docker.com/u/acme/ip/hook/x/",
            "push_data": {"pushed_at": 1764590400.5, "pusher": "ci", "tag": tag},
            "repository": {"repo_name": "acme/ip", "name": "ip", "namespace": "acme"}
        }))
        .unwrap()
    };
    // The client wrote an allowed address on the first line; the proxy
    // appended the one it saw on its own line. The proxy's line decides.
    let status = via_proxy(
        &e,
        &["198.51.100.7", "203.0.113.9"],
        &path,
        &push("1"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(e.consul.kv("configs/ip/IMAGE_TAG"), None);
    let status = via_proxy(
        &e,
        &["203.0.113.9", "198.51.100.7"],
        &path,
        &push("1"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(e.consul.kv("configs/ip/IMAGE_TAG").as_deref(), Some("1"));

    // The failure limit counts the proxy-seen address, whatever the
    // client writes first: 20 404s, then 429.
    let mut statuses = Vec::new();
    for i in 0..25 {
        let first = format!("192.0.2.{i}");
        statuses.push(via_proxy(&e, &[&first, "203.0.113.50"], "/hooks/nope", b"", None).await);
    }
    assert!(statuses[..20].iter().all(|s| *s == 404), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // A different proxy-seen address is its own count.
    assert_eq!(
        via_proxy(
            &e,
            &["203.0.113.50", "203.0.113.51"],
            "/hooks/nope",
            b"",
            None
        )
        .await,
        404
    );
    // And a valid signed delivery from the limited address goes through.
    let body = gen_body("4");
    let sig = hub_sig(SIGNING.as_bytes(), &body);
    let status = via_proxy(
        &e,
        &["192.0.2.1", "203.0.113.50"],
        &format!("/hooks/{}", secret_pair("gen").0),
        &body,
        Some(&sig),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(e.consul.kv("configs/gen/IMAGE_TAG").as_deref(), Some("4"));
}

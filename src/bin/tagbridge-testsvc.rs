//! `tagbridge-testsvc`: a tiny HTTP service that stands in for "the
//! application" in the Nomad tests, the measurements and the example jobs
//! under `nomad/`.
//!
//! Why it exists: a rollout can only be proven against instances that say
//! which tag they run and whether they are healthy. This service reports
//! the tag it was started with (`GET /tag`) and fails its health check
//! (`GET /healthz` → 500) for any tag starting with `bad` (`BAD_PREFIX`), so a test can
//! push a broken release on purpose. It also waits `WARMUP` seconds
//! *before* it binds its port, like real services that load caches or run
//! migrations first: without that, the classic consul-template
//! `change_mode = "restart"` outage is hidden by the template splay and
//! the downtime tagbridge removes cannot be measured.
//!
//! Configuration (environment only):
//!
//! * `TAG` — the tag this instance runs (required unless `TAG_FILE`).
//! * `TAG_FILE` — when `TAG` is unset or empty, read the tag from this
//!   file instead (first line, trimmed). The example jobs use `TAG`,
//!   rendered by a Nomad `template` with `env = true`, which needs no
//!   extra path plumbing; `TAG_FILE` is for templates rendered as plain
//!   files. Either way the tag is read once at start-up, as an image tag
//!   would be: a later key change does not alter a running instance.
//! * `PORT`, else `NOMAD_PORT_http` — the port to listen on.
//! * `BIND` — address to listen on: an IP (combined with the port) or a
//!   full `ip:port`; default `0.0.0.0`.
//! * `WARMUP` — seconds (float) to sleep before binding; default `0`.
//! * `BAD_PREFIX` — tags starting with it fail the health check; default
//!   `bad`. Two jobs sharing one tag can then disagree (a release only the
//!   worker cannot run), as the multi-job rollout test needs.
//!
//! Routes: `GET /healthz` → `200 ok <tag>` or `500 unhealthy tag <tag>`;
//! `GET /` and `GET /tag` → `200 <tag>`; anything else → `404`. One thread
//! per connection, `Connection: close`, std only. SIGTERM keeps its default
//! action (the process exits at once).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Largest request head we read before giving up on a connection.
const MAX_HEAD: usize = 8 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tagbridge-testsvc: {msg}");
            ExitCode::from(2)
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_tag() -> Result<String, String> {
    let tag = if let Some(tag) = env("TAG") {
        tag.trim().to_string()
    } else if let Some(path) = env("TAG_FILE") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("TAG_FILE {path}: {e}"))?;
        text.lines().next().unwrap_or_default().trim().to_string()
    } else {
        return Err("TAG (or TAG_FILE) is required".into());
    };
    if tag.is_empty() {
        return Err("the tag is empty".into());
    }
    Ok(tag)
}

fn listen_addr() -> Result<SocketAddr, String> {
    let bind = env("BIND");
    if let Some(b) = &bind {
        if let Ok(addr) = b.parse::<SocketAddr>() {
            return Ok(addr);
        }
    }
    let ip: IpAddr = match &bind {
        Some(b) => b
            .parse()
            .map_err(|_| format!("BIND {b:?} is neither an IP nor ip:port"))?,
        None => IpAddr::from([0, 0, 0, 0]),
    };
    let port = env("PORT")
        .or_else(|| env("NOMAD_PORT_http"))
        .ok_or("PORT (or NOMAD_PORT_http) is required")?;
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("port {port:?} is not a number"))?;
    Ok(SocketAddr::new(ip, port))
}

fn warmup() -> Result<Duration, String> {
    match env("WARMUP") {
        None => Ok(Duration::ZERO),
        Some(w) => w
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| format!("WARMUP {w:?} is not a non-negative number of seconds")),
    }
}

fn run() -> Result<(), String> {
    let tag: Arc<str> = read_tag()?.into();
    let bad_prefix = env("BAD_PREFIX").unwrap_or_else(|| "bad".into());
    let healthy = !tag.starts_with(bad_prefix.as_str());
    let addr = listen_addr()?;
    let warm = warmup()?;
    if !warm.is_zero() {
        println!("tag {tag}: warming up for {:.1} s", warm.as_secs_f64());
        std::thread::sleep(warm);
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("tag {tag}: listening on {addr}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let tag = tag.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &tag, healthy);
                });
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
    Ok(())
}

/// Answer one request on `stream`, then close it.
fn serve(stream: TcpStream, tag: &str, healthy: bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the rest of the head (bounded); bodies are never needed.
    let mut seen = request_line.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        seen += n;
        if n == 0 || line == "\r\n" || line == "\n" || seen > MAX_HEAD {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let (status, body) = route(method, path, tag, healthy);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

fn route(method: &str, path: &str, tag: &str, healthy: bool) -> (u16, String) {
    match (method, path) {
        ("GET", "/healthz") if !healthy => (500, format!("unhealthy tag {tag}")),
        ("GET", "/healthz") => (200, format!("ok {tag}")),
        ("GET", "/" | "/tag") => (200, tag.to_string()),
        _ => (404, "not found".to_string()),
    }
}

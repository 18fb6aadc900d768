//! HTTP without the code under test: a minimal blocking HTTP/1 client over
//! std for assertions against Consul, Nomad, registries and test services
//! (so a check never depends on tagbridge's own clients), and a streamed
//! request body for reqwest.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host)?;
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

/// GET over HTTP/1.0 (so no chunked body): status, the `X-Nomad-Index` or
/// `X-Consul-Index` header (0 when absent) and the body. For blocking
/// queries: the read may take up to 15 s.
pub fn get_indexed(url: &str) -> std::io::Result<(u16, u64, String)> {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host)?;
    // Blocking queries wait up to their `wait` (plus Nomad's/Consul's jitter).
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let index = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| {
            k.eq_ignore_ascii_case("x-nomad-index") || k.eq_ignore_ascii_case("x-consul-index")
        })
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((status, index, body.to_string()))
}

/// One plain HTTP GET with an overall `timeout`.
pub fn probe(ip: &str, port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let start = Instant::now();
    let addr: SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    let left = timeout.checked_sub(start.elapsed())?;
    s.set_read_timeout(Some(left)).ok()?;
    s.set_write_timeout(Some(left)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    if start.elapsed() > timeout {
        return None;
    }
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, body.to_string()))
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

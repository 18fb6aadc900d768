//! The request code Consul and Nomad share: one copy of URL building,
//! the token header, the blocking-query rules, status-to-error mapping and
//! JSON decoding.
//!
//! Both speak the same HashiCorp HTTP API dialect (an `X-…-Token` header,
//! an `X-…-Index` header, `?index=&wait=` blocking reads), differing only in
//! the names a [`Dialect`] holds. The transport under it (TLS, pooling,
//! deadlines, the response size cap) is [`super::http`]; the calls
//! themselves and their answers' shapes are `consul` and `nomad`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, AsciiSet};
use serde::Deserialize;

use super::http::{HttpClient, RequestError, Response};
use crate::config::Secret;

/// What differs between the Consul and Nomad APIs at the HTTP level.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// The ACL token header (lower case, as `HeaderName::from_static` wants).
    pub token_header: &'static str,
    /// The header carrying the index for the next blocking query.
    pub index_header: &'static str,
    /// Characters escaped in query-string values.
    pub query_set: &'static AsciiSet,
    /// The longest blocking wait asked for (the server clamps it anyway).
    pub max_wait: Duration,
    /// How much of an error answer's body an error keeps.
    pub excerpt_chars: usize,
}

/// How a client's own error type is built from the shared failures, so
/// each client keeps its typed error (and its "consul …" / "nomad …"
/// messages) while the mapping itself is written once.
pub(crate) trait ApiError: Sized {
    /// No usable answer (unreachable, timeout, oversized body).
    fn request(op: &'static str, source: RequestError) -> Self;
    /// An answer with a status the call does not expect.
    fn status(op: &'static str, status: StatusCode, body: String) -> Self;
    /// A request that could not be built, or an answer that does not decode.
    fn decode(op: &'static str, reason: String) -> Self;
}

/// Result of a read: the value and the index to pass to the next
/// blocking query (`X-Consul-Index` / `X-Nomad-Index`; 0 when absent).
#[derive(Debug, Clone)]
pub struct Read<T> {
    pub value: T,
    pub index: u64,
}

/// One API endpoint: address, token and default deadline, on the shared
/// transport.
#[derive(Clone)]
pub(crate) struct ApiClient {
    http: HttpClient,
    address: String,
    token: Option<Secret>,
    timeout: Duration,
    dialect: &'static Dialect,
}

impl ApiClient {
    pub fn new(
        http: HttpClient,
        address: String,
        token: Option<Secret>,
        timeout: Duration,
        dialect: &'static Dialect,
    ) -> Self {
        Self {
            http,
            address,
            token,
            timeout,
            dialect,
        }
    }

    /// `http://host:port` or `https://host:port`, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `address` + `path` + the query, in the order given. A parameter with
    /// an empty value is sent bare (`?recurse`).
    pub fn url<'a>(
        &self,
        path: &str,
        query: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> String {
        let mut url = format!("{}{}", self.address, path);
        let mut sep = '?';
        for (k, v) in query {
            url.push(sep);
            sep = '&';
            url.push_str(k);
            if !v.is_empty() {
                url.push('=');
                url.extend(utf8_percent_encode(v, self.dialect.query_set));
            }
        }
        url
    }

    /// Query parameters and client deadline of a (possibly blocking) read.
    /// The deadline adds the server's own jitter (wait/16) and the normal
    /// request deadline as a margin; index 0 ("answer now") is not sent.
    pub fn blocking(
        &self,
        block: Option<(u64, Duration)>,
    ) -> (Vec<(&'static str, String)>, Duration) {
        blocking_query(block, self.timeout, self.dialect.max_wait)
    }

    /// Send a request within the default deadline; any status is returned.
    ///
    /// # Errors
    ///
    /// See [`ApiClient::send_within`].
    pub async fn send<E: ApiError>(
        &self,
        op: &'static str,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Result<Response, E> {
        self.send_within(op, method, url, body, self.timeout).await
    }

    /// Send a request within `timeout` (a blocking read's is longer); any
    /// status is returned, the caller decides which it expects.
    ///
    /// # Errors
    ///
    /// A token that cannot be a header value, and transport failures.
    pub async fn send_within<E: ApiError>(
        &self,
        op: &'static str,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, E> {
        let mut req = http::Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            // SECURITY: marked sensitive so hyper never logs or indexes it;
            // the error names the problem, never the token's bytes.
            let mut value = HeaderValue::from_bytes(token.expose()).map_err(|_| {
                E::decode(op, "token contains bytes not allowed in a header".into())
            })?;
            value.set_sensitive(true);
            req = req.header(HeaderName::from_static(self.dialect.token_header), value);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| E::decode(op, format!("request: {e}")))?;
        self.http
            .send(req, timeout)
            .await
            .map_err(|source| E::request(op, source))
    }

    /// The error for an answer whose status the call does not expect: the
    /// status and the start of the body (the server's own message).
    pub fn status_error<E: ApiError>(&self, op: &'static str, resp: &Response) -> E {
        let body: String = String::from_utf8_lossy(&resp.body)
            .trim()
            .chars()
            .take(self.dialect.excerpt_chars)
            .collect();
        E::status(op, resp.status, body)
    }

    /// The answer's index header, 0 when absent or malformed.
    pub fn index_of(&self, resp: &Response) -> u64 {
        resp.headers
            .get(self.dialect.index_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Decode a JSON answer.
///
/// # Errors
///
/// A body that is not the JSON `T` expects.
pub(crate) fn decode_json<T: for<'de> Deserialize<'de>, E: ApiError>(
    op: &'static str,
    body: &[u8],
) -> Result<T, E> {
    serde_json::from_slice(body).map_err(|e| E::decode(op, e.to_string()))
}

/// See [`ApiClient::blocking`].
fn blocking_query(
    block: Option<(u64, Duration)>,
    timeout: Duration,
    max_wait: Duration,
) -> (Vec<(&'static str, String)>, Duration) {
    match block {
        None => (Vec::new(), timeout),
        Some((index, wait)) => {
            let wait = wait.min(max_wait);
            let mut q = Vec::new();
            if index > 0 {
                q.push(("index", index.to_string()));
            }
            q.push(("wait", format!("{}ms", wait.as_millis())));
            (q, wait + wait / 16 + timeout)
        }
    }
}

/// The index rules of blocking queries, in one place.
///
/// Consul documents that the index may go backwards (a snapshot restore, a
/// new leader) and that index 0 means "answer now": a watcher that sent 0
/// after a reset would spin. So: keep the last index; if a reply carries a
/// smaller one, start over from 1 (never 0 after the first call), and
/// never go below 1. Nomad's indexes follow the same rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockingIndex {
    last: u64,
}

impl BlockingIndex {
    /// The index to send next (0 only on the very first call).
    pub fn current(&self) -> u64 {
        self.last
    }

    /// Record the index of a reply. Returns whether the data may have
    /// changed (the index moved).
    pub fn observe(&mut self, index: u64) -> bool {
        let prev = self.last;
        self.last = if index < prev { 1 } else { index.max(1) };
        index != prev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_index_never_zero_after_first_and_resets_backwards() {
        let mut i = BlockingIndex::default();
        assert_eq!(i.current(), 0);
        i.observe(0);
        assert_eq!(i.current(), 1, "never 0 after the first call");
        assert!(i.observe(42));
        assert_eq!(i.current(), 42);
        assert!(!i.observe(42));
        assert!(i.observe(7));
        assert_eq!(i.current(), 1, "index went backwards: start over from 1");
        assert!(i.observe(9));
        assert_eq!(i.current(), 9);
    }

    #[test]
    fn blocking_query_params() {
        let max = Duration::from_secs(300);
        let (q, t) = blocking_query(
            Some((0, Duration::from_secs(10))),
            Duration::from_secs(5),
            max,
        );
        assert_eq!(q, vec![("wait", "10000ms".to_string())]);
        assert!(t > Duration::from_secs(15));
        let (q, _) = blocking_query(
            Some((5, Duration::from_secs(900))),
            Duration::from_secs(5),
            max,
        );
        assert_eq!(q[0], ("index", "5".to_string()));
        assert_eq!(q[1], ("wait", "300000ms".to_string()));
    }
}

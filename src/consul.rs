//! A thin, typed Consul HTTP API client: exactly the calls tagbridge makes.
//!
//! Consul KV is tagbridge's only state, so every write goes through
//! check-and-set (`/v1/txn` or `?cas=`) and every watch is a blocking
//! query. The client keeps Consul's own vocabulary (indexes, sessions) and
//! leaves retry policy to callers, who know whether a retry is safe.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

use crate::http_client::{HttpClient, RequestError, Response};

/// Characters escaped in a KV key path. `/` is kept: it is Consul's own
/// separator and the key is sent as a path.
const KEY_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']')
    .add(b'+')
    .add(b'&')
    .add(b'=')
    .add(b';');

/// Query-string values (session ids, datacenter names).
const QUERY_SET: &AsciiSet = &KEY_SET.add(b'/');

/// Consul clamps blocking waits to 10 minutes; we stay well below.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Why a Consul call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsulError {
    #[error("consul {op}: {source}")]
    Request {
        op: &'static str,
        #[source]
        source: RequestError,
    },
    /// Consul answered with a status the call does not expect.
    #[error("consul {op}: HTTP {status}: {body}")]
    Status {
        op: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("consul {op}: unexpected answer: {reason}")]
    Decode { op: &'static str, reason: String },
    /// The session does not exist any more (renew → 404): a lock held
    /// with it is lost.
    #[error("consul session {0} not found")]
    SessionNotFound(String),
}

impl ConsulError {
    /// The operation name, for the `consul_request_errors_total` metric.
    pub fn op(&self) -> &'static str {
        match self {
            ConsulError::Request { op, .. }
            | ConsulError::Status { op, .. }
            | ConsulError::Decode { op, .. } => op,
            ConsulError::SessionNotFound(_) => "session_renew",
        }
    }

    /// Whether the failure says nothing about the request itself, so the
    /// same request may succeed later (unreachable, timeout, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            ConsulError::Request { .. } => true,
            ConsulError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Connection settings, resolved from config and the environment.
#[derive(Clone)]
pub struct ConsulSettings {
    /// `http://host:port` or `https://host:port`, no trailing slash.
    pub address: String,
    pub token: Option<crate::config::Secret>,
    pub datacenter: Option<String>,
    /// Deadline of a non-blocking request.
    pub timeout: Duration,
}

/// One KV entry as Consul returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
    pub modify_index: u64,
    pub session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawKv {
    key: String,
    value: Option<String>,
    modify_index: u64,
    session: Option<String>,
}

impl RawKv {
    fn decode(self, op: &'static str) -> Result<KvPair, ConsulError> {
        let value = match self.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| ConsulError::Decode {
                    op,
                    reason: format!("value of {} is not base64: {e}", self.key),
                })?,
            None => Vec::new(),
        };
        Ok(KvPair {
            key: self.key,
            value,
            modify_index: self.modify_index,
            session: self.session,
        })
    }
}

/// One operation of a `/v1/txn`.
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Write `value` only if the key's ModifyIndex is `index` (0: only if
    /// the key does not exist).
    Cas {
        key: String,
        value: Vec<u8>,
        index: u64,
    },
    /// Write `value` whatever the key holds (only under a check elsewhere
    /// in the same transaction).
    Set { key: String, value: Vec<u8> },
    /// Delete only if the key's ModifyIndex is `index`.
    DeleteCas { key: String, index: u64 },
    /// Delete the key if it exists (only under a check elsewhere in the
    /// same transaction).
    Delete { key: String },
    /// Fail the transaction unless the key's ModifyIndex is `index`.
    CheckIndex { key: String, index: u64 },
    /// Fail the transaction unless the key does not exist.
    CheckNotExists { key: String },
    /// Fail the transaction unless `session` holds the lock on the key:
    /// fences every write of a controller that lost leadership.
    CheckSession { key: String, session: String },
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RawTxnKv<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
}

#[derive(Serialize)]
struct RawTxnOp<'a> {
    #[serde(rename = "KV")]
    kv: RawTxnKv<'a>,
}

impl TxnOp {
    fn raw(&self) -> RawTxnOp<'_> {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let kv = match self {
            TxnOp::Cas { key, value, index } => RawTxnKv {
                verb: "cas",
                key,
                value: Some(b64(value)),
                index: Some(*index),
                session: None,
            },
            TxnOp::Set { key, value } => RawTxnKv {
                verb: "set",
                key,
                value: Some(b64(value)),
                index: None,
                session: None,
            },
            TxnOp::Delete { key } => RawTxnKv {
                verb: "delete",
                key,
                value: None,
                index: None,
                session: None,
            },
            TxnOp::DeleteCas { key, index } => RawTxnKv {
                verb: "delete-cas",
                key,
                value: None,
                index: Some(*index),
                session: None,
            },
            TxnOp::CheckIndex { key, index } => RawTxnKv {
                verb: "check-index",
                key,
                value: None,
                index: Some(*index),
                session: None,
            },
            TxnOp::CheckNotExists { key } => RawTxnKv {
                verb: "check-not-exists",
                key,
                value: None,
                index: None,
                session: None,
            },
            TxnOp::CheckSession { key, session } => RawTxnKv {
                verb: "check-session",
                key,
                value: None,
                index: None,
                session: Some(session),
            },
        };
        RawTxnOp { kv }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation applied; `(key, ModifyIndex)` of each entry Consul
    /// returned (written keys carry their new index).
    Committed(Vec<(String, u64)>),
    /// Consul rolled the whole transaction back (a CAS or check lost).
    /// `(op index, what)` as Consul reports them.
    Conflict(Vec<(usize, String)>),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTxnResponse {
    results: Option<Vec<RawTxnResult>>,
    errors: Option<Vec<RawTxnError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTxnResult {
    #[serde(rename = "KV")]
    kv: Option<RawTxnResultKv>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTxnResultKv {
    key: String,
    modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTxnError {
    op_index: usize,
    what: String,
}

/// Result of a read: the entry (if any) and the `X-Consul-Index` to pass
/// to the next blocking query.
#[derive(Debug, Clone)]
pub struct Read<T> {
    pub value: T,
    pub index: u64,
}

/// The Consul client.
#[derive(Clone)]
pub struct Consul {
    http: HttpClient,
    settings: ConsulSettings,
}

fn token_header() -> HeaderName {
    HeaderName::from_static("x-consul-token")
}

impl Consul {
    pub fn new(http: HttpClient, settings: ConsulSettings) -> Self {
        Self { http, settings }
    }

    pub fn address(&self) -> &str {
        &self.settings.address
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{}", self.settings.address, path);
        let mut sep = '?';
        let dc = self
            .settings
            .datacenter
            .as_ref()
            .map(|dc| ("dc", dc.clone()));
        for (k, v) in query.iter().cloned().chain(dc) {
            url.push(sep);
            sep = '&';
            url.push_str(k);
            if !v.is_empty() {
                url.push('=');
                url.extend(utf8_percent_encode(&v, QUERY_SET));
            }
        }
        url
    }

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", utf8_percent_encode(key, KEY_SET))
    }

    async fn call(
        &self,
        op: &'static str,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, ConsulError> {
        let mut req = http::Request::builder().method(method).uri(url);
        if let Some(token) = &self.settings.token {
            // SECURITY: marked sensitive so hyper never logs or indexes it.
            let mut value =
                HeaderValue::from_bytes(token.expose()).map_err(|_| ConsulError::Decode {
                    op,
                    reason: "token contains bytes not allowed in a header".into(),
                })?;
            value.set_sensitive(true);
            req = req.header(token_header(), value);
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ConsulError::Decode {
                op,
                reason: format!("request: {e}"),
            })?;
        self.http
            .send(req, timeout)
            .await
            .map_err(|source| ConsulError::Request { op, source })
    }

    fn status_err(op: &'static str, resp: &Response) -> ConsulError {
        let body = String::from_utf8_lossy(&resp.body);
        let body: String = body.trim().chars().take(300).collect();
        ConsulError::Status {
            op,
            status: resp.status,
            body,
        }
    }

    fn index_of(resp: &Response) -> u64 {
        resp.headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Read one key.
    ///
    /// # Errors
    ///
    /// Unreachable Consul, unexpected status, undecodable answer.
    pub async fn kv_get(&self, key: &str) -> Result<Read<Option<KvPair>>, ConsulError> {
        self.kv_get_inner(key, None).await
    }

    /// Blocking read of one key: returns when the key's index passes
    /// `index` or after `wait`. See [`BlockingIndex`] for the index rules.
    ///
    /// # Errors
    ///
    /// As [`Consul::kv_get`].
    pub async fn kv_get_blocking(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> Result<Read<Option<KvPair>>, ConsulError> {
        self.kv_get_inner(key, Some((index, wait))).await
    }

    async fn kv_get_inner(
        &self,
        key: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Option<KvPair>>, ConsulError> {
        const OP: &str = "kv_get";
        let (query, timeout) = blocking_query(block, self.settings.timeout);
        let url = self.url(&Self::kv_path(key), &query);
        let resp = self.call(OP, Method::GET, url, None, timeout).await?;
        let index = Self::index_of(&resp);
        match resp.status {
            StatusCode::NOT_FOUND => Ok(Read { value: None, index }),
            StatusCode::OK => {
                let mut raw: Vec<RawKv> =
                    serde_json::from_slice(&resp.body).map_err(|e| ConsulError::Decode {
                        op: OP,
                        reason: e.to_string(),
                    })?;
                let value = match raw.pop() {
                    Some(kv) => Some(kv.decode(OP)?),
                    None => None,
                };
                Ok(Read { value, index })
            }
            _ => Err(Self::status_err(OP, &resp)),
        }
    }

    /// Read every key under a prefix, optionally blocking.
    ///
    /// # Errors
    ///
    /// As [`Consul::kv_get`].
    pub async fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Read<Vec<KvPair>>, ConsulError> {
        const OP: &str = "kv_list";
        let (mut query, timeout) = blocking_query(block, self.settings.timeout);
        query.push(("recurse", String::new()));
        let url = self.url(&Self::kv_path(prefix), &query);
        let resp = self.call(OP, Method::GET, url, None, timeout).await?;
        let index = Self::index_of(&resp);
        match resp.status {
            StatusCode::NOT_FOUND => Ok(Read {
                value: Vec::new(),
                index,
            }),
            StatusCode::OK => {
                let raw: Vec<RawKv> =
                    serde_json::from_slice(&resp.body).map_err(|e| ConsulError::Decode {
                        op: OP,
                        reason: e.to_string(),
                    })?;
                let value = raw
                    .into_iter()
                    .map(|kv| kv.decode(OP))
                    .collect::<Result<_, _>>()?;
                Ok(Read { value, index })
            }
            _ => Err(Self::status_err(OP, &resp)),
        }
    }

    /// Apply operations atomically.
    ///
    /// # Errors
    ///
    /// Transport failures and statuses other than 200/409. A lost CAS is
    /// not an error: it is [`TxnOutcome::Conflict`].
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        const OP: &str = "txn";
        let raw: Vec<RawTxnOp<'_>> = ops.iter().map(TxnOp::raw).collect();
        let body = serde_json::to_vec(&raw).map_err(|e| ConsulError::Decode {
            op: OP,
            reason: e.to_string(),
        })?;
        let url = self.url("/v1/txn", &[]);
        let resp = self
            .call(OP, Method::PUT, url, Some(body), self.settings.timeout)
            .await?;
        match resp.status {
            StatusCode::OK | StatusCode::CONFLICT => {
                let parsed: RawTxnResponse =
                    serde_json::from_slice(&resp.body).map_err(|e| ConsulError::Decode {
                        op: OP,
                        reason: e.to_string(),
                    })?;
                if resp.status == StatusCode::CONFLICT {
                    let errors = parsed
                        .errors
                        .unwrap_or_default()
                        .into_iter()
                        .map(|e| (e.op_index, e.what))
                        .collect();
                    return Ok(TxnOutcome::Conflict(errors));
                }
                let indexes = parsed
                    .results
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|r| r.kv.map(|kv| (kv.key, kv.modify_index)))
                    .collect();
                Ok(TxnOutcome::Committed(indexes))
            }
            _ => Err(Self::status_err(OP, &resp)),
        }
    }

    /// Write one key with check-and-set; `Ok(false)` when the CAS lost.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn kv_put_cas(
        &self,
        key: &str,
        value: &[u8],
        index: u64,
    ) -> Result<bool, ConsulError> {
        self.kv_put(key, value, &[("cas", index.to_string())], "kv_put")
            .await
    }

    async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        query: &[(&str, String)],
        op: &'static str,
    ) -> Result<bool, ConsulError> {
        let url = self.url(&Self::kv_path(key), query);
        let resp = self
            .call(
                op,
                Method::PUT,
                url,
                Some(value.to_vec()),
                self.settings.timeout,
            )
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Self::status_err(op, &resp));
        }
        match resp.body.trim_ascii() {
            b"true" => Ok(true),
            b"false" => Ok(false),
            other => Err(ConsulError::Decode {
                op,
                reason: format!(
                    "expected true or false, got {}",
                    String::from_utf8_lossy(other)
                ),
            }),
        }
    }

    /// Delete a key only if its ModifyIndex is `index`.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool, ConsulError> {
        const OP: &str = "kv_delete";
        let url = self.url(&Self::kv_path(key), &[("cas", index.to_string())]);
        let resp = self
            .call(OP, Method::DELETE, url, None, self.settings.timeout)
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Self::status_err(OP, &resp));
        }
        Ok(resp.body.trim_ascii() == b"true")
    }

    /// Create a session whose lock is released (not deleted) when it
    /// expires, so a dead leader's lock frees itself after `ttl`.
    ///
    /// # Errors
    ///
    /// Transport failures, unexpected statuses (Consul refuses a TTL under
    /// 10 s with 500 "Invalid Session TTL").
    pub async fn session_create(&self, name: &str, ttl: Duration) -> Result<String, ConsulError> {
        const OP: &str = "session_create";
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Req<'a> {
            name: &'a str,
            #[serde(rename = "TTL")]
            ttl: String,
            behavior: &'static str,
            lock_delay: &'static str,
        }
        #[derive(Deserialize)]
        struct Resp {
            #[serde(rename = "ID")]
            id: String,
        }
        let body = serde_json::to_vec(&Req {
            name,
            ttl: format!("{}s", ttl.as_secs()),
            behavior: "release",
            // A new leader may take over at once after a clean release; a
            // crashed one is already covered by the TTL.
            lock_delay: "1s",
        })
        .map_err(|e| ConsulError::Decode {
            op: OP,
            reason: e.to_string(),
        })?;
        let url = self.url("/v1/session/create", &[]);
        let resp = self
            .call(OP, Method::PUT, url, Some(body), self.settings.timeout)
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Self::status_err(OP, &resp));
        }
        let r: Resp = serde_json::from_slice(&resp.body).map_err(|e| ConsulError::Decode {
            op: OP,
            reason: e.to_string(),
        })?;
        Ok(r.id)
    }

    /// Renew a session.
    ///
    /// # Errors
    ///
    /// [`ConsulError::SessionNotFound`] when Consul no longer knows it (the
    /// lock is lost), other errors for transport failures.
    pub async fn session_renew(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "session_renew";
        let url = self.url(
            &format!("/v1/session/renew/{}", utf8_percent_encode(id, QUERY_SET)),
            &[],
        );
        let resp = self
            .call(OP, Method::PUT, url, None, self.settings.timeout)
            .await?;
        match resp.status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ConsulError::SessionNotFound(id.to_string())),
            _ => Err(Self::status_err(OP, &resp)),
        }
    }

    /// Destroy a session, releasing every lock it holds.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "session_destroy";
        let url = self.url(
            &format!("/v1/session/destroy/{}", utf8_percent_encode(id, QUERY_SET)),
            &[],
        );
        let resp = self
            .call(OP, Method::PUT, url, None, self.settings.timeout)
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Self::status_err(OP, &resp));
        }
        Ok(())
    }

    /// Try to take the lock `key` with `session`; `Ok(true)` when held.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn lock_acquire(
        &self,
        key: &str,
        session: &str,
        value: &[u8],
    ) -> Result<bool, ConsulError> {
        self.kv_put(
            key,
            value,
            &[("acquire", session.to_string())],
            "lock_acquire",
        )
        .await
    }

    /// Release the lock `key` held by `session`.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn lock_release(&self, key: &str, session: &str) -> Result<bool, ConsulError> {
        self.kv_put(
            key,
            b"",
            &[("release", session.to_string())],
            "lock_release",
        )
        .await
    }

    /// The raft leader's address; empty while there is none. `/readyz`
    /// uses it: a Consul without a leader cannot commit our writes.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn leader(&self) -> Result<String, ConsulError> {
        const OP: &str = "status_leader";
        let url = self.url("/v1/status/leader", &[]);
        let resp = self
            .call(OP, Method::GET, url, None, self.settings.timeout)
            .await?;
        if resp.status != StatusCode::OK {
            return Err(Self::status_err(OP, &resp));
        }
        serde_json::from_slice(&resp.body).map_err(|e| ConsulError::Decode {
            op: OP,
            reason: e.to_string(),
        })
    }
}

/// Query parameters and client deadline of a (possibly blocking) read.
/// The client deadline adds Consul's own jitter (wait/16) and a margin.
fn blocking_query(
    block: Option<(u64, Duration)>,
    timeout: Duration,
) -> (Vec<(&'static str, String)>, Duration) {
    match block {
        None => (Vec::new(), timeout),
        Some((index, wait)) => {
            let wait = wait.min(MAX_WAIT);
            let mut q = Vec::new();
            if index > 0 {
                q.push(("index", index.to_string()));
            }
            q.push(("wait", format!("{}ms", wait.as_millis())));
            (q, wait + wait / 16 + timeout)
        }
    }
}

/// The index rules of Consul's blocking queries, in one place.
///
/// Consul documents that the index may go backwards (a snapshot restore, a
/// new leader) and that index 0 means "answer now": a watcher that sent 0
/// after a reset would spin. So: keep the last index; if a reply carries a
/// smaller one, start over from 1 (never 0 after the first call), and
/// never go below 1.
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
    fn keys_are_percent_encoded_but_keep_slashes() {
        assert_eq!(
            Consul::kv_path("configs/web app/TAG?x#y"),
            "/v1/kv/configs/web%20app/TAG%3Fx%23y"
        );
    }

    #[test]
    fn blocking_query_params() {
        let (q, t) = blocking_query(Some((0, Duration::from_secs(10))), Duration::from_secs(5));
        assert_eq!(q, vec![("wait", "10000ms".to_string())]);
        assert!(t > Duration::from_secs(15));
        let (q, _) = blocking_query(Some((5, Duration::from_secs(900))), Duration::from_secs(5));
        assert_eq!(q[0], ("index", "5".to_string()));
        assert_eq!(q[1], ("wait", "300000ms".to_string()));
    }
}

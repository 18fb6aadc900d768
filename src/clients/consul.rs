//! A thin, typed Consul HTTP API client: exactly the calls tagbridge makes.
//!
//! Consul KV is tagbridge's only state, so every write goes through
//! check-and-set (`/v1/txn` or `?cas=`) and every watch is a blocking
//! query. The client keeps Consul's own vocabulary (indexes, sessions) and
//! leaves retry policy to callers, who know whether a retry is safe.

use std::time::Duration;

use base64::Engine as _;
use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

use super::api::{decode_json, ApiClient, ApiError, Dialect};
pub use super::api::{BlockingIndex, Read};
use super::http::{HttpClient, RequestError, Response};

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

static DIALECT: Dialect = Dialect {
    token_header: "x-consul-token",
    index_header: "x-consul-index",
    query_set: QUERY_SET,
    max_wait: MAX_WAIT,
    excerpt_chars: 300,
};

/// Why a Consul call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsulError {
    #[error("consul {op}: {cause}")]
    Request {
        op: &'static str,
        /// In the message, so not also the error's source: a chain printer
        /// (anyhow's `{:#}`) would show it twice.
        cause: RequestError,
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

impl ApiError for ConsulError {
    fn request(op: &'static str, source: RequestError) -> Self {
        ConsulError::Request { op, cause: source }
    }
    fn status(op: &'static str, status: StatusCode, body: String) -> Self {
        ConsulError::Status { op, status, body }
    }
    fn decode(op: &'static str, reason: String) -> Self {
        ConsulError::Decode { op, reason }
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

/// The Consul client.
#[derive(Clone)]
pub struct Consul {
    api: ApiClient,
    datacenter: Option<String>,
}

impl Consul {
    pub fn new(http: HttpClient, settings: ConsulSettings) -> Self {
        Self {
            api: ApiClient::new(
                http,
                settings.address,
                settings.token,
                settings.timeout,
                &DIALECT,
            ),
            datacenter: settings.datacenter,
        }
    }

    pub fn address(&self) -> &str {
        self.api.address()
    }

    /// The query, then `dc` when one is configured.
    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let dc = self.datacenter.as_deref().map(|dc| ("dc", dc));
        self.api
            .url(path, query.iter().map(|(k, v)| (*k, v.as_str())).chain(dc))
    }

    fn kv_path(key: &str) -> String {
        format!("/v1/kv/{}", utf8_percent_encode(key, KEY_SET))
    }

    /// Send within the default deadline and expect 200.
    async fn call_ok(
        &self,
        op: &'static str,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ConsulError> {
        let resp = self.api.send(op, method, url, body).await?;
        if resp.status != StatusCode::OK {
            return Err(self.api.status_error(op, &resp));
        }
        Ok(resp)
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
        let (mut raw, index) = self.kv_read(OP, key, block, Vec::new()).await?;
        let value = match raw.pop() {
            Some(kv) => Some(kv.decode(OP)?),
            None => None,
        };
        Ok(Read { value, index })
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
        let recurse = vec![("recurse", String::new())];
        let (raw, index) = self.kv_read(OP, prefix, block, recurse).await?;
        let value = raw
            .into_iter()
            .map(|kv| kv.decode(OP))
            .collect::<Result<_, _>>()?;
        Ok(Read { value, index })
    }

    /// The shape of every KV read: optionally blocking, 404 is "no
    /// entries", and the index comes back either way.
    async fn kv_read(
        &self,
        op: &'static str,
        key: &str,
        block: Option<(u64, Duration)>,
        extra: Vec<(&'static str, String)>,
    ) -> Result<(Vec<RawKv>, u64), ConsulError> {
        let (mut query, timeout) = self.api.blocking(block);
        query.extend(extra);
        let url = self.url(&Self::kv_path(key), &query);
        let resp = self
            .api
            .send_within(op, Method::GET, url, None, timeout)
            .await?;
        let index = self.api.index_of(&resp);
        match resp.status {
            StatusCode::NOT_FOUND => Ok((Vec::new(), index)),
            StatusCode::OK => Ok((decode_json(op, &resp.body)?, index)),
            _ => Err(self.api.status_error(op, &resp)),
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
        let resp = self.api.send(OP, Method::PUT, url, Some(body)).await?;
        if !matches!(resp.status, StatusCode::OK | StatusCode::CONFLICT) {
            return Err(self.api.status_error(OP, &resp));
        }
        let parsed: RawTxnResponse = decode_json(OP, &resp.body)?;
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
            .call_ok(op, Method::PUT, url, Some(value.to_vec()))
            .await?;
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
        let url = self.url(&Self::kv_path(key), &[("cas", index.to_string())]);
        let resp = self.call_ok("kv_delete", Method::DELETE, url, None).await?;
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
        let resp = self.call_ok(OP, Method::PUT, url, Some(body)).await?;
        let r: Resp = decode_json(OP, &resp.body)?;
        Ok(r.id)
    }

    fn session_path(verb: &str, id: &str) -> String {
        format!("/v1/session/{verb}/{}", utf8_percent_encode(id, QUERY_SET))
    }

    /// Renew a session.
    ///
    /// # Errors
    ///
    /// [`ConsulError::SessionNotFound`] when Consul no longer knows it (the
    /// lock is lost), other errors for transport failures.
    pub async fn session_renew(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "session_renew";
        let url = self.url(&Self::session_path("renew", id), &[]);
        let resp = self.api.send(OP, Method::PUT, url, None).await?;
        match resp.status {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND => Err(ConsulError::SessionNotFound(id.to_string())),
            _ => Err(self.api.status_error(OP, &resp)),
        }
    }

    /// Destroy a session, releasing every lock it holds.
    ///
    /// # Errors
    ///
    /// Transport failures and unexpected statuses.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        let url = self.url(&Self::session_path("destroy", id), &[]);
        self.call_ok("session_destroy", Method::PUT, url, None)
            .await?;
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
        let resp = self.call_ok(OP, Method::GET, url, None).await?;
        decode_json(OP, &resp.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn client(token: Option<&[u8]>) -> Consul {
        let http = HttpClient::new(&Default::default()).expect("client");
        Consul::new(
            http,
            ConsulSettings {
                address: "http://127.0.0.1:1".into(),
                token: token.map(|t| Secret::new(t.to_vec())),
                datacenter: Some("dc 1".into()),
                timeout: Duration::from_secs(1),
            },
        )
    }

    #[test]
    fn urls_carry_the_query_then_the_datacenter() {
        let c = client(None);
        let q = [("recurse", String::new()), ("index", "5".into())];
        assert_eq!(
            c.url("/v1/kv/a", &q),
            "http://127.0.0.1:1/v1/kv/a?recurse&index=5&dc=dc%201"
        );
    }

    #[tokio::test]
    async fn a_token_that_cannot_be_a_header_is_refused_without_its_bytes() {
        let c = client(Some(b"s3cr3t\ntoken"));
        let e = c.leader().await.unwrap_err();
        assert!(matches!(e, ConsulError::Decode { .. }), "{e}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn keys_are_percent_encoded_but_keep_slashes() {
        assert_eq!(
            Consul::kv_path("configs/web app/TAG?x#y"),
            "/v1/kv/configs/web%20app/TAG%3Fx%23y"
        );
    }
}

//! The answers: why a request was refused and the one place that maps
//! that to an HTTP status, the JSON bodies, and the response body
//! [`Reply`], which also decides what becomes of a request body the
//! answer came before (held, or drained after a 413).
//!
//! Kept apart from the routes: they decide what a request gets, this
//! file how a refusal is answered (status, body, `Retry-After`,
//! `Connection: close`), in one place.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use serde_json::json;

use super::{digest, MAX_BODY};
use crate::ingest::IngestError;
use crate::webhook::WebhookError;

/// After a 413, how much more of the body is read (and dropped) before
/// the stream is reset (HTTP/2) or the connection closed (HTTP/1.1), so
/// a client still writing reaches the end of its body and reads the
/// answer instead of a write error.
const DRAIN_AFTER_413_BYTES: usize = 2 * 1024 * 1024;
const DRAIN_AFTER_413_TIME: Duration = Duration::from_secs(2);

/// Why a request was not accepted. [`Rejection::response`] is the one
/// place that maps a failure to an HTTP status.
#[derive(Debug)]
pub(super) enum Rejection {
    NotFound,
    RateLimited(Duration),
    Forbidden,
    TooLarge,
    BodyTimeout,
    Signature(WebhookError),
    BadRequest(String),
    Ingest(IngestError),
    /// The status path names a seq no change was given.
    UnknownRollout(u64),
    /// The status path could not read the records.
    ChangeStatus(crate::store::StoreError),
    /// `resolve_digest`: the registry gave no digest for the pushed tag.
    Digest(digest::DigestError),
}

impl Rejection {
    fn outcome(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::RateLimited(_) => "rate_limited",
            Rejection::Forbidden => "forbidden",
            Rejection::TooLarge => "too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::Signature(_) => "unauthorized",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::Ingest(IngestError::Corrupt { .. }) => "error",
            Rejection::Ingest(_) => "unavailable",
            Rejection::UnknownRollout(_) => "unknown_rollout",
            Rejection::ChangeStatus(_) => "unavailable",
            Rejection::Digest(_) => "registry_error",
        }
    }

    /// The one-line reason an operator needs in the rejection summary.
    fn detail(&self) -> Option<String> {
        match self {
            Rejection::Signature(e) => Some(e.to_string()),
            Rejection::BadRequest(reason) => Some(reason.clone()),
            Rejection::ChangeStatus(e) => Some(e.to_string()),
            Rejection::Digest(e) => Some(e.to_string()),
            _ => None,
        }
    }

    fn response(&self) -> Response<Reply> {
        let (status, body, retry_after) = match self {
            // SECURITY: one body for every unknown path and wrong secret,
            // so an answer never tells a near miss from nonsense. These two
            // answers are what a flood gets: fixed bytes, no JSON built.
            Rejection::NotFound => {
                return static_json(StatusCode::NOT_FOUND, b"{\"error\":\"not found\"}\n", None)
            }
            Rejection::RateLimited(wait) => {
                return static_json(
                    StatusCode::TOO_MANY_REQUESTS,
                    b"{\"error\":\"too many failed attempts\"}\n",
                    Some(wait.as_secs().max(1)),
                )
            }
            Rejection::Forbidden => (
                StatusCode::FORBIDDEN,
                json!({"error": "source address not allowed"}),
                None,
            ),
            Rejection::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("body over {MAX_BODY} bytes")}),
                None,
            ),
            Rejection::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "body not received in time"}),
                None,
            ),
            Rejection::Signature(e) => (
                StatusCode::UNAUTHORIZED,
                json!({"error": e.to_string()}),
                None,
            ),
            Rejection::BadRequest(reason) => {
                (StatusCode::BAD_REQUEST, json!({"error": reason}), None)
            }
            Rejection::Ingest(e @ IngestError::Corrupt { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": e.to_string()}),
                None,
            ),
            Rejection::Ingest(IngestError::Pinned(_)) | Rejection::Ingest(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "state store unavailable, nothing was written; retry later"}),
                Some(5),
            ),
            Rejection::UnknownRollout(seq) => (
                StatusCode::NOT_FOUND,
                json!({"error": format!("no change with seq {seq} (yet)")}),
                None,
            ),
            Rejection::ChangeStatus(e @ crate::store::StoreError::Corrupt { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": e.to_string()}),
                None,
            ),
            Rejection::ChangeStatus(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "state store unavailable; retry later"}),
                Some(5),
            ),
            // Nothing was written; the registry may deliver again.
            Rejection::Digest(e) => (
                StatusCode::BAD_GATEWAY,
                json!({"error": e.to_string()}),
                None,
            ),
        };
        let mut resp = json_response(status, &body);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn static_json(
    status: StatusCode,
    body: &'static [u8],
    retry_after: Option<u64>,
) -> Response<Reply> {
    let mut resp = Response::new(Reply::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

pub(super) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Reply> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Reply::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What one request did, for the log line and the metrics.
pub(super) struct Report {
    pub(super) service: Option<usize>,
    pub(super) tag: Option<String>,
    pub(super) outcome: &'static str,
    /// The client address as the limits see it.
    pub(super) client: Option<std::net::IpAddr>,
    pub(super) detail: Option<String>,
}

/// A response body: the answer's bytes, then, for an answer given before
/// the request body was read, what happens to that body.
///
/// The request body is held until the answer has been sent. On HTTP/2
/// that makes the stream half-closed by us when the body is dropped, and
/// h2 then resets it with NO_ERROR (RFC 9113 §8.1: "a complete response
/// prior to the client sending an entire request"), which clients read as
/// "stop sending, the answer stands". After a 413 the rest of the body is
/// first read and dropped, bounded (see [`too_large`]).
pub struct Reply {
    data: Option<Bytes>,
    after: After,
}

enum After {
    Nothing,
    Hold(#[allow(dead_code)] Incoming),
    Drain {
        body: Incoming,
        left: usize,
        until: Pin<Box<tokio::time::Sleep>>,
        /// HTTP/1.1: leave the length open (see `size_hint`).
        open_length: bool,
    },
}

impl Reply {
    pub fn new(data: Bytes) -> Self {
        Reply {
            data: Some(data),
            after: After::Nothing,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let After::Drain {
            body, left, until, ..
        } = &mut this.after
        {
            loop {
                if until.as_mut().poll(cx).is_ready() {
                    break;
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(f))) => {
                        let n = f.data_ref().map_or(0, Bytes::len);
                        if n >= *left {
                            break;
                        }
                        *left -= n;
                    }
                    Poll::Ready(_) => break,
                }
            }
            this.after = After::Nothing;
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !matches!(self.after, After::Drain { .. })
    }

    fn size_hint(&self) -> SizeHint {
        // While a drain is to follow, the length is left open: HTTP/1.1
        // then answers chunked, and hyper keeps polling this body (and so
        // the drain) after the data, instead of ending it at its
        // Content-Length and closing on a client still writing.
        if matches!(
            self.after,
            After::Drain {
                open_length: true,
                ..
            }
        ) {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Note a rejection in the request's report and build its answer.
pub(super) fn reject(report: &mut Report, r: Rejection) -> Response<Reply> {
    report.outcome = r.outcome();
    report.detail = r.detail();
    r.response()
}

/// Keep the request body until the answer is sent (see [`Reply`]).
pub(super) fn hold(mut resp: Response<Reply>, body: Incoming) -> Response<Reply> {
    if !body.is_end_stream() {
        resp.body_mut().after = After::Hold(body);
    }
    resp
}

/// The 413: the answer, then up to [`DRAIN_AFTER_413_BYTES`] /
/// [`DRAIN_AFTER_413_TIME`] of the rest of the body read and dropped, so a
/// client still writing its body reaches the end and reads the answer
/// (curl before 8.x reports an HTTP/2 stream reset as an error even after
/// a complete answer). Then, on HTTP/2, RST_STREAM(NO_ERROR) if the body
/// is still coming (see [`Reply`]); on HTTP/1.1 a close, since the
/// connection is mid-body and cannot be reused.
pub(super) fn too_large(
    mut resp: Response<Reply>,
    body: Incoming,
    req: &http::request::Parts,
) -> Response<Reply> {
    if req.version == Version::HTTP_2 {
        resp.body_mut().after = After::Drain {
            body,
            left: DRAIN_AFTER_413_BYTES,
            until: Box::pin(tokio::time::sleep(DRAIN_AFTER_413_TIME)),
            open_length: false,
        };
        return resp;
    }
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    // A client that asked `Expect: 100-continue` and was refused on its
    // declared length has not been told to send: nothing to drain.
    let waiting = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        && declared_length(&req.headers).is_some_and(|n| n > MAX_BODY as u64);
    resp.body_mut().after = if waiting {
        After::Nothing
    } else {
        After::Drain {
            body,
            left: DRAIN_AFTER_413_BYTES,
            until: Box::pin(tokio::time::sleep(DRAIN_AFTER_413_TIME)),
            open_length: true,
        }
    };
    resp
}

/// The body length a request declares (`Content-Length`), if it is a
/// number.
pub(super) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

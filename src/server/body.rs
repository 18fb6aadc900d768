//! Reading a request body: whole and bounded ([`MAX_BODY`], the body
//! deadline) for a webhook, or a little of it read and dropped before a
//! refusal, so an HTTP/1.1 connection can be reused.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::reply::{declared_length, Rejection};
use super::MAX_BODY;

/// Read and drop a small body before answering a rejected request, so
/// an HTTP/1.1 connection can be reused; a large or slow body is not
/// waited for.
pub(super) async fn drain(body: &mut Incoming) {
    const DRAIN_LIMIT: usize = 64 * 1024;
    if body.is_end_stream() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut read = 0;
        while let Some(Ok(f)) = body.frame().await {
            read += f.data_ref().map_or(0, Bytes::len);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// Read the body, refusing more than [`MAX_BODY`] while it streams. The
/// body stays with the caller, who may still have to answer before the
/// rest of it.
pub(super) async fn read_body(
    body: &mut Incoming,
    headers: &http::HeaderMap,
    limit: Duration,
) -> Result<Bytes, Rejection> {
    if declared_length(headers).is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Rejection::TooLarge);
    }
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| Rejection::BadRequest(format!("body could not be read: {e}")))?;
            if let Some(d) = frame.data_ref() {
                if buf.len() + d.len() > MAX_BODY {
                    return Err(Rejection::TooLarge);
                }
                buf.extend_from_slice(d);
            }
            // The declared length has all arrived: asking again would only
            // wait for hyper to say so (one more wake of this task).
            if body.is_end_stream() {
                break;
            }
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(limit, read).await {
        Err(_) => Err(Rejection::BodyTimeout),
        Ok(r) => r,
    }
}

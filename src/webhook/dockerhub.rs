//! Docker Hub repository webhooks.
//!
//! Docker Hub fires one webhook per pushed tag and offers no way to sign
//! it, so this source trusts whoever knows the (secret) webhook URL; the
//! server is responsible for that. All this module does is pull the tag,
//! repository and pusher out of Docker Hub's JSON.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::decode::{decode_json, empty, missing, non_empty};
use super::{ImagePush, Parsed, Request, WebhookError};

const SOURCE: &str = "dockerhub";

#[derive(Deserialize)]
#[serde(expecting = "a Docker Hub push object")]
struct Payload {
    push_data: Option<PushData>,
    repository: Option<Repository>,
    // SECURITY: `callback_url` is deliberately not declared. Docker Hub
    // expects a POST to it to mark the delivery successful; tagbridge
    // never makes outbound requests on a payload's say-so.
}

#[derive(Deserialize)]
#[serde(expecting = "push_data to be an object")]
struct PushData {
    tag: Option<String>,
    pusher: Option<String>,
    /// Unix time of the push. Docker Hub has sent it as an integer and,
    /// more recently, as a float with a fractional part; it is unused,
    /// so accept any JSON value rather than fail a push over it.
    #[serde(default, rename = "pushed_at")]
    _pushed_at: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(expecting = "repository to be an object")]
struct Repository {
    repo_name: Option<String>,
}

/// Parse a Docker Hub push webhook. Docker Hub has no signature scheme.
///
/// # Errors
///
/// [`WebhookError::Malformed`] when the body is not a Docker Hub push.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    let p: Payload = decode_json(SOURCE, req.body)?;
    let push = p.push_data.ok_or_else(|| missing(SOURCE, "push_data"))?;
    let repository = p
        .repository
        .ok_or_else(|| missing(SOURCE, "repository"))?
        .repo_name
        .ok_or_else(|| missing(SOURCE, "repository.repo_name"))?;
    if repository.is_empty() {
        return Err(empty(SOURCE, "repository.repo_name"));
    }
    let tag = push.tag.ok_or_else(|| missing(SOURCE, "push_data.tag"))?;
    if tag.is_empty() {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    }
    Ok(Parsed::Push(vec![ImagePush {
        repository,
        tag,
        digest: None,
        actor: non_empty(push.pusher),
        delivery: None,
    }]))
}

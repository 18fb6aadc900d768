//! Azure Container Registry webhooks.
//!
//! ACR sends one flat event per push, delete, Helm chart or quarantine
//! action, plus a `ping` when the webhook is tested from the portal. Only
//! image pushes (and pings) mean anything to tagbridge. ACR does not sign
//! webhooks; custom headers, if set, are the server's business.

use serde::Deserialize;

use super::decode::{decode_json, delivery_id, empty, missing, non_empty, quote};
use super::{ImagePush, Parsed, Request, WebhookError};

const SOURCE: &str = "acr";

#[derive(Deserialize)]
#[serde(expecting = "an ACR event object")]
struct Payload {
    /// The event id; used as the delivery id.
    id: Option<String>,
    action: Option<String>,
    target: Option<Target>,
    // `request.host` is deliberately not declared: tagbridge never keeps
    // or contacts a host named by a payload.
}

#[derive(Deserialize)]
#[serde(expecting = "target to be an object")]
struct Target {
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
}

/// Parse an ACR webhook. ACR has no signature scheme.
///
/// # Errors
///
/// [`WebhookError::Malformed`] when the body is not an ACR event.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    let p: Payload = decode_json(SOURCE, req.body)?;
    let action = p.action.ok_or_else(|| missing(SOURCE, "action"))?;
    match action.as_str() {
        "ping" => return Ok(Parsed::Ping),
        "push" => {}
        other => {
            return Ok(Parsed::Ignored(format!(
                "acr action {} is not a push",
                quote(other)
            )))
        }
    }
    let target = p.target.ok_or_else(|| missing(SOURCE, "target"))?;
    let repository = target
        .repository
        .ok_or_else(|| missing(SOURCE, "target.repository"))?;
    if repository.is_empty() {
        return Err(empty(SOURCE, "target.repository"));
    }
    // ACR omits `tag` entirely for a push by digest.
    let Some(tag) = non_empty(target.tag) else {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    };
    Ok(Parsed::Push(vec![ImagePush {
        repository,
        tag,
        digest: non_empty(target.digest),
        actor: None,
        delivery: p.id.as_deref().and_then(delivery_id),
    }]))
}

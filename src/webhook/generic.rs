//! The generic source: a minimal signed JSON message for CI pipelines and
//! registries tagbridge has no dialect for.
//!
//! A CI job that just pushed `acme/web:1.4.2` posts
//! `{"repository":"acme/web","tag":"1.4.2"}` (optionally `digest` and
//! `actor`), signed like a GitHub webhook. Because anyone can produce this
//! shape, the signature is mandatory.

use serde::Deserialize;

use super::decode::{decode_json, empty, missing, non_empty};
use super::signature::{verify_hub_signature_256, HUB_SIGNATURE_256};
use super::{ImagePush, Parsed, Request, WebhookError};

const SOURCE: &str = "generic";

#[derive(Deserialize)]
#[serde(expecting = "an object with repository and tag")]
struct Payload {
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    actor: Option<String>,
}

/// Authenticate and parse a generic push message.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] when there is no
/// `X-Hub-Signature-256` (or no signing secret configured);
/// [`WebhookError::SignatureMismatch`] when it is wrong;
/// [`WebhookError::Malformed`] when the body is not the generic shape.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    // SECURITY: this shape is trivial to forge, so an unsigned message is
    // never accepted. Without a configured secret (which config validation
    // should have prevented) we fail closed with the same error a missing
    // header gives, so callers cannot probe the configuration.
    let secret = req
        .signing_secret
        .ok_or(WebhookError::SignatureMissing(HUB_SIGNATURE_256))?;
    verify_hub_signature_256(req.headers, req.body, secret)?;

    let p: Payload = decode_json(SOURCE, req.body)?;
    let repository = p.repository.ok_or_else(|| missing(SOURCE, "repository"))?;
    if repository.is_empty() {
        return Err(empty(SOURCE, "repository"));
    }
    let tag = p.tag.ok_or_else(|| missing(SOURCE, "tag"))?;
    if tag.is_empty() {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    }
    Ok(Parsed::Push(vec![ImagePush {
        repository,
        tag,
        digest: non_empty(p.digest),
        actor: non_empty(p.actor),
        delivery: None,
    }]))
}

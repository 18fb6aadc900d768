//! JFrog Artifactory webhooks, `docker` domain.
//!
//! Artifactory wraps each event in an envelope (`domain`, `event_type`,
//! `data`) and reports the manifest checksum as bare hex, unlike every
//! other registry. This module keeps only Docker tag pushes and turns the
//! checksum into a normal `sha256:` digest so history and tag policy can
//! compare digests across sources.

use serde::Deserialize;

use super::decode::{decode_json, empty, missing, non_empty, quote};
use super::signature::verify_hex_hmac;
use super::{ImagePush, Parsed, Request, WebhookError};

const SOURCE: &str = "artifactory";

/// Where Artifactory puts HMAC-SHA256 (hex) of the body when the webhook
/// has a secret.
const AUTH_HEADER: &str = "X-JFrog-Event-Auth";

#[derive(Deserialize)]
#[serde(expecting = "an Artifactory event object")]
struct Payload {
    domain: Option<String>,
    event_type: Option<String>,
    data: Option<Data>,
    // `jpd_origin` (the platform URL) is deliberately not declared:
    // nothing from a payload URL is kept.
}

#[derive(Deserialize)]
#[serde(expecting = "data to be an object")]
struct Data {
    /// The image path inside the Artifactory repository, e.g. `acme/web`.
    image_name: Option<String>,
    tag: Option<String>,
    /// Manifest checksum, bare hex.
    sha256: Option<String>,
}

/// Authenticate (when a secret is configured) and parse an Artifactory
/// webhook.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] / [`WebhookError::SignatureMismatch`]
/// when a signing secret is configured and `X-JFrog-Event-Auth` is absent
/// or wrong; [`WebhookError::Malformed`] when the body is not an
/// Artifactory event.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    // SECURITY: the HMAC is optional on Artifactory's side, so it is
    // enforced only when tagbridge has a secret; when it does, it is
    // checked over the raw bytes before anything is parsed.
    if let Some(secret) = req.signing_secret {
        verify_hex_hmac(AUTH_HEADER, req.headers, req.body, secret)?;
    }

    let p: Payload = decode_json(SOURCE, req.body)?;
    let domain = p.domain.ok_or_else(|| missing(SOURCE, "domain"))?;
    if domain != "docker" {
        return Ok(Parsed::Ignored(format!(
            "artifactory domain {} is not docker",
            quote(&domain)
        )));
    }
    let event_type = p.event_type.ok_or_else(|| missing(SOURCE, "event_type"))?;
    if event_type != "pushed" {
        return Ok(Parsed::Ignored(format!(
            "artifactory docker event {} is not pushed",
            quote(&event_type)
        )));
    }
    let data = p.data.ok_or_else(|| missing(SOURCE, "data"))?;
    let repository = data
        .image_name
        .ok_or_else(|| missing(SOURCE, "data.image_name"))?;
    if repository.is_empty() {
        return Err(empty(SOURCE, "data.image_name"));
    }
    let tag = data.tag.ok_or_else(|| missing(SOURCE, "data.tag"))?;
    if tag.is_empty() {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    }
    Ok(Parsed::Push(vec![ImagePush {
        repository,
        tag,
        digest: non_empty(data.sha256).map(normalise_digest),
        actor: None,
        delivery: None,
    }]))
}

/// `sha256:<hex>` for Artifactory's bare hex checksum; anything already
/// prefixed (or not hex at all) is kept as sent.
fn normalise_digest(sum: String) -> String {
    if sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("sha256:{}", sum.to_ascii_lowercase())
    } else {
        sum
    }
}

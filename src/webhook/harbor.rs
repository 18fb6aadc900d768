//! Harbor project webhooks (the "Default" payload format).
//!
//! Harbor reports every artifact event of a project to one endpoint, and a
//! single push can carry several tags, so this module keeps only
//! `PUSH_ARTIFACT` and turns each tagged resource into an [`ImagePush`].
//! Harbor has no body signature; it can send a fixed `Authorization`
//! value, which is checked when a signing secret is configured.

use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::decode::{decode_json, empty, missing, non_empty, quote};
use super::grammar::{check_actor, check_repository, normalise_repository};
use super::signature::verify_equal_header;
use super::{ImagePush, Parsed, Request, WebhookError, MAX_TAGS_PER_PUSH};

const SOURCE: &str = "harbor";

#[derive(Deserialize)]
#[serde(expecting = "a Harbor event object")]
struct Payload {
    #[serde(rename = "type")]
    kind: Option<String>,
    operator: Option<String>,
    event_data: Option<EventData>,
    /// Only present in Harbor's CloudEvents payload format.
    specversion: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "event_data to be an object")]
struct EventData {
    resources: Option<Resources>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
#[serde(expecting = "each of event_data.resources to be an object")]
struct Resource {
    tag: Option<String>,
    digest: Option<String>,
    // `resource_url` is deliberately not declared: nothing from a payload
    // URL is kept.
}

/// `event_data.resources`, at most [`MAX_TAGS_PER_PUSH`] of them.
struct Resources(Vec<Resource>);

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ResourcesVisitor;

        impl<'de> Visitor<'de> for ResourcesVisitor {
            type Value = Resources;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // SECURITY: each resource becomes a push; stop at the bound
                // while reading rather than hold whatever a 1 MiB body can
                // list and count afterwards.
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX_TAGS_PER_PUSH {
                        return Err(serde::de::Error::custom(format_args!(
                            "event_data.resources lists more than {MAX_TAGS_PER_PUSH} entries"
                        )));
                    }
                    items.push(item);
                }
                Ok(Resources(items))
            }
        }

        d.deserialize_seq(ResourcesVisitor)
    }
}

#[derive(Deserialize)]
#[serde(expecting = "event_data.repository to be an object")]
struct Repository {
    /// `project/name`, e.g. `acme/web`.
    repo_full_name: Option<String>,
}

/// Authenticate (when a secret is configured) and parse a Harbor webhook.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] / [`WebhookError::SignatureMismatch`]
/// when a signing secret is configured and `Authorization` is absent or
/// differs; [`WebhookError::Malformed`] when the body is not a Harbor
/// event.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    // SECURITY: Harbor can only prove itself with a static shared value in
    // `Authorization`. It is optional because Harbor's is; when configured
    // it is checked before the body is parsed.
    if let Some(secret) = req.signing_secret {
        verify_equal_header("Authorization", req.headers, secret)?;
    }

    let p: Payload = decode_json(SOURCE, req.body)?;
    if p.specversion.is_some() {
        // Without this, a CloudEvents delivery would be silently ignored
        // as an unknown event type and pushes would go missing unnoticed.
        return Err(WebhookError::Malformed(format!(
            "{SOURCE}: CloudEvents payload format is not supported; set the webhook's payload format to Default"
        )));
    }
    let kind = p.kind.ok_or_else(|| missing(SOURCE, "type"))?;
    if kind != "PUSH_ARTIFACT" {
        return Ok(Parsed::Ignored(format!(
            "harbor event type {} is not PUSH_ARTIFACT",
            quote(&kind)
        )));
    }
    let data = p.event_data.ok_or_else(|| missing(SOURCE, "event_data"))?;
    let repository = data
        .repository
        .ok_or_else(|| missing(SOURCE, "event_data.repository"))?
        .repo_full_name
        .ok_or_else(|| missing(SOURCE, "event_data.repository.repo_full_name"))?;
    if repository.is_empty() {
        return Err(empty(SOURCE, "event_data.repository.repo_full_name"));
    }
    let Resources(resources) = data
        .resources
        .ok_or_else(|| missing(SOURCE, "event_data.resources"))?;
    let actor = non_empty(p.operator);
    // SECURITY: repository and actor are copied into every push; checking
    // them before the copies bounds each to a few hundred bytes (and the
    // list length is bounded). `webhook::parse` checks them again with
    // everything else.
    let repository = normalise_repository(&repository);
    check_repository(&repository)
        .and_then(|()| actor.as_deref().map_or(Ok(()), check_actor))
        .map_err(|reason| WebhookError::Malformed(format!("{SOURCE}: {reason}")))?;

    // A push by digest arrives with an empty (or absent) tag; it names
    // nothing a service could be pinned to.
    let pushes: Vec<ImagePush> = resources
        .into_iter()
        .filter_map(|r| {
            let tag = non_empty(r.tag)?;
            Some(ImagePush {
                repository: repository.clone(),
                tag,
                digest: non_empty(r.digest),
                actor: actor.clone(),
                delivery: None,
            })
        })
        .collect();
    if pushes.is_empty() {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    }
    Ok(Parsed::Push(pushes))
}

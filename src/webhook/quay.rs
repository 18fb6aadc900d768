//! Quay.io / Red Hat Quay "Repository Push" notifications.
//!
//! Quay batches a push into one notification listing every tag it
//! touched, and has used two shapes for that list over the years: today a
//! JSON array of tag names, originally an object whose keys are the tag
//! names (values were image ids, not manifest digests). Both still turn
//! up from self-hosted installs, so both are accepted. Quay does not sign
//! notifications.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::decode::{decode_json, empty, missing};
use super::grammar::{check_repository, normalise_repository};
use super::{ImagePush, Parsed, Request, WebhookError, MAX_TAGS_PER_PUSH};

const SOURCE: &str = "quay";

#[derive(Deserialize)]
#[serde(expecting = "a Quay push notification object")]
struct Payload {
    /// `namespace/name`, e.g. `acme/web`.
    repository: Option<String>,
    updated_tags: Option<UpdatedTags>,
    // `docker_url` and `homepage` are deliberately not declared: nothing
    // from a payload URL is kept.
}

/// Tag names in the order Quay listed them, from either shape; empty
/// names are dropped, and more than [`MAX_TAGS_PER_PUSH`] is an error.
struct UpdatedTags(Vec<String>);

/// Keep one listed tag, refusing the list once it is longer than any real
/// push.
fn keep<E: serde::de::Error>(tags: &mut Vec<String>, tag: String) -> Result<(), E> {
    // SECURITY: a 1 MiB body can list ~250 000 short tags, each of which
    // becomes an `ImagePush`; stop collecting (and allocating) at the
    // bound instead of after the whole list is in memory.
    if tags.len() == MAX_TAGS_PER_PUSH {
        return Err(E::custom(format_args!(
            "updated_tags lists more than {MAX_TAGS_PER_PUSH} tags"
        )));
    }
    if !tag.is_empty() {
        tags.push(tag);
    }
    Ok(())
}

impl<'de> Deserialize<'de> for UpdatedTags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TagsVisitor;

        impl<'de> Visitor<'de> for TagsVisitor {
            type Value = UpdatedTags;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("updated_tags to be a list of tag names or an object keyed by tag")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut tags = Vec::new();
                while let Some(tag) = seq.next_element::<String>()? {
                    keep::<A::Error>(&mut tags, tag)?;
                }
                Ok(UpdatedTags(tags))
            }

            // The legacy form. A hand-written visitor (rather than a map
            // type) keeps Quay's order, which breaks ties between equal
            // tags and is the whole order under `order = "pushed"`.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut tags = Vec::new();
                while let Some((tag, _image_id)) = map.next_entry::<String, IgnoredAny>()? {
                    keep::<A::Error>(&mut tags, tag)?;
                }
                Ok(UpdatedTags(tags))
            }
        }

        d.deserialize_any(TagsVisitor)
    }
}

/// Parse a Quay repository-push notification. Quay has no signature
/// scheme.
///
/// # Errors
///
/// [`WebhookError::Malformed`] when the body is not a Quay push.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    let p: Payload = decode_json(SOURCE, req.body)?;
    let repository = p.repository.ok_or_else(|| missing(SOURCE, "repository"))?;
    if repository.is_empty() {
        return Err(empty(SOURCE, "repository"));
    }
    let UpdatedTags(tags) = p
        .updated_tags
        .ok_or_else(|| missing(SOURCE, "updated_tags"))?;
    // SECURITY: the repository is copied into every push; checking it
    // before the copies bounds them to 255 bytes each. `webhook::parse`
    // checks it again with everything else.
    let repository = normalise_repository(&repository);
    check_repository(&repository)
        .map_err(|reason| WebhookError::Malformed(format!("{SOURCE}: {reason}")))?;
    let pushes: Vec<ImagePush> = tags
        .into_iter()
        .map(|tag| ImagePush {
            repository: repository.clone(),
            tag,
            // Quay's push notification carries no manifest digest (the
            // legacy form's values are image ids, which are not).
            digest: None,
            actor: None,
            delivery: None,
        })
        .collect();
    if pushes.is_empty() {
        return Ok(Parsed::Ignored("quay push lists no tags".into()));
    }
    Ok(Parsed::Push(pushes))
}

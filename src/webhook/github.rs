//! GitHub Container Registry (GHCR) pushes, via GitHub's `package` and
//! older `registry_package` webhook events.
//!
//! GitHub reports a container push as a package *version* being
//! published, wrapped in a large payload that also describes npm, Maven
//! and other package types. This module finds the container tag in it and
//! ignores everything else, including the untagged manifests (per-platform
//! images, attestations) that GitHub publishes alongside every tagged
//! multi-arch push.

use serde::Deserialize;

use super::signature::{
    decode_json, empty, header_text, missing, non_empty, quote, verify_hub_signature_256,
    HUB_SIGNATURE_256,
};
use super::{ImagePush, Parsed, Request, WebhookError};

const SOURCE: &str = "github";

#[derive(Deserialize)]
#[serde(expecting = "a GitHub package event object")]
struct Payload {
    action: Option<String>,
    /// Present for `X-GitHub-Event: package`.
    package: Option<Package>,
    /// Present for `X-GitHub-Event: registry_package` (same shape).
    registry_package: Option<Package>,
    sender: Option<Account>,
}

#[derive(Deserialize)]
#[serde(expecting = "the package to be an object")]
struct Package {
    name: Option<String>,
    /// The owner, as GitHub spells it (may be mixed case, e.g. `Acme`).
    namespace: Option<String>,
    /// `CONTAINER` in `package` events, `container` in some
    /// `registry_package` ones.
    package_type: Option<String>,
    owner: Option<Account>,
    package_version: Option<PackageVersion>,
    // `package_version.package_url` (`ghcr.io/owner/name:` — note the
    // trailing colon on untagged versions) and every `*_url` field are
    // deliberately not declared: nothing from a payload URL is kept.
}

#[derive(Deserialize)]
#[serde(expecting = "package_version to be an object")]
struct PackageVersion {
    container_metadata: Option<ContainerMetadata>,
}

#[derive(Deserialize)]
#[serde(expecting = "container_metadata to be an object")]
struct ContainerMetadata {
    tag: Option<Tag>,
}

#[derive(Deserialize)]
#[serde(expecting = "container_metadata.tag to be an object")]
struct Tag {
    name: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "an account object")]
struct Account {
    login: Option<String>,
}

/// Authenticate and parse a GitHub `package` / `registry_package` event.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] when there is no
/// `X-Hub-Signature-256` (or no signing secret configured);
/// [`WebhookError::SignatureMismatch`] when it is wrong;
/// [`WebhookError::Malformed`] when the event header is missing or the
/// body is not a package event.
pub fn parse(req: &Request<'_>) -> Result<Parsed, WebhookError> {
    // SECURITY: GitHub deliveries are only trusted when signed. Config
    // validation guarantees a secret for this source, but if one is absent
    // anyway we fail closed, reporting the same error as a missing header
    // so callers cannot probe how tagbridge is configured.
    let secret = req
        .signing_secret
        .ok_or(WebhookError::SignatureMissing(HUB_SIGNATURE_256))?;
    // SECURITY: verify over the raw bytes before looking at headers or
    // JSON, so unauthenticated callers learn nothing about what parses.
    verify_hub_signature_256(req.headers, req.body, secret)?;

    let event = req
        .headers
        .get("X-GitHub-Event")
        .ok_or_else(|| missing(SOURCE, "header X-GitHub-Event"))?
        .to_str()
        .map_err(|_| {
            WebhookError::Malformed(format!("{SOURCE}: header X-GitHub-Event is not text"))
        })?;
    let key = match event {
        "ping" => return Ok(Parsed::Ping),
        "package" => "package",
        "registry_package" => "registry_package",
        other => {
            return Ok(Parsed::Ignored(format!(
                "github event {} is not a package event",
                quote(other)
            )))
        }
    };

    let p: Payload = decode_json(SOURCE, req.body)?;
    let action = p.action.ok_or_else(|| missing(SOURCE, "action"))?;
    let is_push = action == "published" || (key == "package" && action == "updated");
    if !is_push {
        return Ok(Parsed::Ignored(format!(
            "github {key} action {} is not a publish",
            quote(&action)
        )));
    }

    let pkg = if key == "package" {
        p.package
    } else {
        p.registry_package
    }
    .ok_or_else(|| missing(SOURCE, key))?;

    let package_type = pkg
        .package_type
        .ok_or_else(|| missing(SOURCE, &format!("{key}.package_type")))?;
    if !package_type.eq_ignore_ascii_case("container") {
        return Ok(Parsed::Ignored(format!(
            "github package type {} is not container",
            quote(&package_type)
        )));
    }

    let tag = pkg
        .package_version
        .ok_or_else(|| missing(SOURCE, &format!("{key}.package_version")))?
        .container_metadata
        .ok_or_else(|| missing(SOURCE, &format!("{key}.package_version.container_metadata")))?
        .tag
        .ok_or_else(|| {
            missing(
                SOURCE,
                &format!("{key}.package_version.container_metadata.tag"),
            )
        })?;
    let tag_name = tag.name.ok_or_else(|| {
        missing(
            SOURCE,
            &format!("{key}.package_version.container_metadata.tag.name"),
        )
    })?;
    if tag_name.is_empty() {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    }

    let name = pkg
        .name
        .ok_or_else(|| missing(SOURCE, &format!("{key}.name")))?;
    if name.is_empty() {
        return Err(empty(SOURCE, &format!("{key}.name")));
    }
    // Case is kept as GitHub sends it; repository matching elsewhere is
    // case-insensitive because GHCR itself is.
    let owner = non_empty(pkg.namespace)
        .or_else(|| non_empty(pkg.owner.and_then(|o| o.login)))
        .ok_or_else(|| missing(SOURCE, &format!("{key}.namespace (or {key}.owner.login)")))?;

    Ok(Parsed::Push(vec![ImagePush {
        repository: format!("{owner}/{name}"),
        tag: tag_name,
        digest: non_empty(tag.digest),
        actor: non_empty(p.sender.and_then(|s| s.login)),
        delivery: header_text(req.headers, "X-GitHub-Delivery"),
    }]))
}

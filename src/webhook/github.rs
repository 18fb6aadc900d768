//! GitHub Container Registry (GHCR) pushes, via GitHub's `package` and
//! older `registry_package` webhook events.
//!
//! GitHub reports a container push as a package *version* being
//! published, wrapped in a large payload that also describes npm, Maven
//! and other package types. This module finds the container tag in it and
//! ignores everything else, including the untagged manifests (per-platform
//! images, attestations) that GitHub publishes alongside every tagged
//! multi-arch push.
//!
//! The repository is `package.owner.login + "/" + package.name`,
//! lowercased as GHCR itself does (`ghcr.io/AcmeCorp/Web` is served as
//! `ghcr.io/acmecorp/web`). `package.namespace` is not used: GitHub has
//! sent the owner, the word `user` for user-owned packages, and
//! `owner/repo` (its own published example) in that field. A package name
//! may itself hold slashes (`repo/image`). When the payload also carries
//! `package_version.package_url` (`ghcr.io/<owner>/<name>:<tag>`), the two
//! must name the same repository, or the delivery is refused.

use std::ops::ControlFlow;

use http::HeaderMap;
use serde::Deserialize;

use super::decode::{decode_json, delivery_header, empty, missing, non_empty, quote};
use super::grammar::{echo, normalise_repository};
use super::signature::{verify_hub_signature_256, HUB_SIGNATURE_256};
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
    /// The package (image) name; may contain `/` (`repo/image`).
    name: Option<String>,
    // `namespace` is deliberately not declared: its meaning has varied
    // (owner, `user`, `owner/repo`), see the module documentation.
    /// `CONTAINER` in `package` events, `container` in some
    /// `registry_package` ones.
    package_type: Option<String>,
    /// The owning user or organisation; `login` in its display case.
    owner: Option<Account>,
    package_version: Option<PackageVersion>,
}

#[derive(Deserialize)]
#[serde(expecting = "package_version to be an object")]
struct PackageVersion {
    container_metadata: Option<ContainerMetadata>,
    /// `ghcr.io/<owner>/<name>:<tag>` (a trailing `:` on untagged
    /// versions). Read only to cross-check the repository; nothing from it
    /// is kept, and no other `*_url` field is declared.
    package_url: Option<String>,
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
    authenticate(req)?;
    let key = match package_event(req.headers)? {
        ControlFlow::Continue(key) => key,
        ControlFlow::Break(answer) => return Ok(answer),
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

    let version = pkg
        .package_version
        .ok_or_else(|| missing(SOURCE, &format!("{key}.package_version")))?;
    let tag = container_tag(key, version.container_metadata)?;
    let tag_name = tag.name.ok_or_else(|| {
        missing(
            SOURCE,
            &format!("{key}.package_version.container_metadata.tag.name"),
        )
    })?;
    if tag_name.is_empty() {
        return Ok(Parsed::Ignored("untagged manifest (empty tag)".into()));
    }

    let repository = repository(key, pkg.name, pkg.owner)?;
    if let Some(url) = non_empty(version.package_url) {
        check_package_url(key, &url, &repository)?;
    }

    Ok(Parsed::Push(vec![ImagePush {
        repository,
        tag: tag_name,
        digest: non_empty(tag.digest),
        actor: non_empty(p.sender.and_then(|s| s.login)),
        delivery: delivery_header(SOURCE, req.headers, "X-GitHub-Delivery")?,
    }]))
}

/// Check the delivery's signature.
fn authenticate(req: &Request<'_>) -> Result<(), WebhookError> {
    // SECURITY: GitHub deliveries are only trusted when signed. Config
    // validation guarantees a secret for this source, but if one is absent
    // anyway we fail closed, reporting the same error as a missing header
    // so callers cannot probe how tagbridge is configured.
    let secret = req
        .signing_secret
        .ok_or(WebhookError::SignatureMissing(HUB_SIGNATURE_256))?;
    // SECURITY: verify over the raw bytes before looking at headers or
    // JSON, so unauthenticated callers learn nothing about what parses.
    verify_hub_signature_256(req.headers, req.body, secret)
}

/// The payload key of a package event (`package`, `registry_package`),
/// or the answer for any other event (`ping`, ignored).
fn package_event(headers: &HeaderMap) -> Result<ControlFlow<Parsed, &'static str>, WebhookError> {
    let event = headers
        .get("X-GitHub-Event")
        .ok_or_else(|| missing(SOURCE, "header X-GitHub-Event"))?
        .to_str()
        .map_err(|_| {
            WebhookError::Malformed(format!("{SOURCE}: header X-GitHub-Event is not text"))
        })?;
    Ok(match event {
        "ping" => ControlFlow::Break(Parsed::Ping),
        "package" => ControlFlow::Continue("package"),
        "registry_package" => ControlFlow::Continue("registry_package"),
        other => ControlFlow::Break(Parsed::Ignored(format!(
            "github event {} is not a package event",
            quote(other)
        ))),
    })
}

/// `package_version.container_metadata.tag`, required.
fn container_tag(key: &str, metadata: Option<ContainerMetadata>) -> Result<Tag, WebhookError> {
    metadata
        .ok_or_else(|| missing(SOURCE, &format!("{key}.package_version.container_metadata")))?
        .tag
        .ok_or_else(|| {
            missing(
                SOURCE,
                &format!("{key}.package_version.container_metadata.tag"),
            )
        })
}

/// `owner.login/name`, lowercased.
fn repository(
    key: &str,
    name: Option<String>,
    owner: Option<Account>,
) -> Result<String, WebhookError> {
    let name = name.ok_or_else(|| missing(SOURCE, &format!("{key}.name")))?;
    if name.is_empty() {
        return Err(empty(SOURCE, &format!("{key}.name")));
    }
    let owner = non_empty(owner.and_then(|o| o.login))
        .ok_or_else(|| missing(SOURCE, &format!("{key}.owner.login")))?;
    // GHCR paths are lowercase whatever case the owner displays in; the
    // grammar check in `webhook::parse` would lowercase too, but the
    // cross-check of `package_url` must compare like with like.
    Ok(normalise_repository(&format!("{owner}/{name}")))
}

/// Refuse a delivery whose `package_url` names another repository than
/// `owner.login/name`.
///
/// The URL is a Docker reference, `[host/]path[:tag][@digest]`; the host
/// (`ghcr.io`, or a GitHub Enterprise `containers.<host>`) is recognised
/// the way Docker does, as a first component holding `.` or `:` or being
/// `localhost`, and dropped. Only the path is compared (ASCII case
/// ignored): the tag part is the same value as `container_metadata.tag`.
fn check_package_url(key: &str, url: &str, repository: &str) -> Result<(), WebhookError> {
    // SECURITY: the two fields are independent claims in one signed body;
    // if they disagree the payload is not one GitHub would send, and
    // guessing which one is right could deploy the wrong image.
    let reference = url.split('@').next().unwrap_or_default();
    let (dir, last) = reference.rsplit_once('/').unwrap_or(("", reference));
    let last = last.split(':').next().unwrap_or_default();
    let path = if dir.is_empty() {
        last.to_owned()
    } else {
        format!("{dir}/{last}")
    };
    let path = match path.split_once('/') {
        Some((host, rest))
            if host.contains(['.', ':']) || host.eq_ignore_ascii_case("localhost") =>
        {
            rest
        }
        _ => path.as_str(),
    };
    if path.eq_ignore_ascii_case(repository) {
        Ok(())
    } else {
        Err(WebhookError::Malformed(format!(
            "{SOURCE}: repository {}: does not match {key}.package_version.package_url {}",
            echo(repository),
            echo(url)
        )))
    }
}

//! Registry webhooks, normalised early.
//!
//! Every registry speaks its own JSON dialect and authenticates in its own
//! way. Each source lives in one file holding only its serde structs and a
//! conversion into [`ImagePush`], so the rest of tagbridge (tag policy,
//! ingest, history) never learns which registry called. Signatures are
//! checked here, over the raw bytes, before any JSON is parsed.
//!
//! Every push a source returns is then held to one input grammar
//! ([`grammar`]) in [`parse`], so no source can forget it: a value that is
//! not an OCI tag, digest or repository name, or an actor or delivery id
//! that is not short printable text, is refused before anything is
//! written.
//!
//! SECURITY: nothing in this module ever makes an outbound request, and no
//! URL taken from a payload is kept in [`ImagePush`].

pub mod acr;
pub mod artifactory;
pub mod decode;
pub mod dockerhub;
pub mod generic;
pub mod github;
pub mod grammar;
pub mod harbor;
pub mod quay;
pub mod signature;

use std::fmt;
use std::str::FromStr;

use http::HeaderMap;

/// The registries (and CI) tagbridge understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    DockerHub,
    Github,
    Quay,
    Harbor,
    Acr,
    Artifactory,
    Generic,
}

impl Source {
    pub const ALL: [Source; 7] = [
        Source::DockerHub,
        Source::Github,
        Source::Quay,
        Source::Harbor,
        Source::Acr,
        Source::Artifactory,
        Source::Generic,
    ];

    /// The name used in configuration, history and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::DockerHub => "dockerhub",
            Source::Github => "github",
            Source::Quay => "quay",
            Source::Harbor => "harbor",
            Source::Acr => "acr",
            Source::Artifactory => "artifactory",
            Source::Generic => "generic",
        }
    }

    /// Whether this source cannot be trusted without a signing secret.
    pub fn requires_signing_secret(self) -> bool {
        matches!(self, Source::Github | Source::Generic)
    }

    /// Whether a signing secret means anything for this source.
    pub fn accepts_signing_secret(self) -> bool {
        matches!(
            self,
            Source::Github | Source::Generic | Source::Harbor | Source::Artifactory
        )
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .iter()
            .copied()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown source {s:?} (expected one of: dockerhub, github, quay, harbor, acr, artifactory, generic)"
                )
            })
    }
}

/// Most tags one push may list. Real registries list a handful; the
/// bound keeps what a 1 MiB body can make tagbridge hold (one
/// [`ImagePush`] per tag) to a few MiB.
pub const MAX_TAGS_PER_PUSH: usize = 20_000;

/// One image push, whatever registry reported it. Every field returned by
/// [`parse`] has passed [`grammar::check_push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePush {
    /// The registry-local repository path, ASCII-lowercased, e.g.
    /// `acme/web` (never `ghcr.io/acme/web`).
    pub repository: String,
    /// The bare tag, an OCI tag. Never empty (empty tags become
    /// [`Parsed::Ignored`]).
    pub tag: String,
    /// Manifest digest (`sha256:<64 hex>` or `sha512:<128 hex>`) when the
    /// source carries one.
    pub digest: Option<String>,
    /// Who pushed, when the source says (user login, robot name): at most
    /// [`grammar::MAX_ACTOR`] bytes, printable.
    pub actor: Option<String>,
    /// The registry's delivery id, when it sends one (for history): at
    /// most [`grammar::MAX_DELIVERY`] bytes, printable.
    pub delivery: Option<String>,
}

/// What a valid, authentic request turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A push to act on. May hold several tags (Quay, Harbor send lists;
    /// at most [`MAX_TAGS_PER_PUSH`]), in the order the registry listed
    /// them.
    Push(Vec<ImagePush>),
    /// A liveness probe from the registry (GitHub `ping`, ACR `ping`).
    Ping,
    /// A well-formed event that carries nothing to deploy (untagged
    /// manifest, delete event, …). The reason is returned to the caller.
    Ignored(String),
}

/// Why a request was rejected. Mapped to HTTP status in `server` only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Signature header missing where one is required → 401.
    #[error("signature missing: {0}")]
    SignatureMissing(&'static str),
    /// Signature present but wrong → 401.
    #[error("signature does not match")]
    SignatureMismatch,
    /// Body is not this source's format → 400. One line, no payload echo
    /// beyond a field name.
    #[error("{0}")]
    Malformed(String),
}

/// The per-request inputs a source needs.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The service's signing secret, if configured (raw bytes from file).
    pub signing_secret: Option<&'a [u8]>,
}

/// Authenticate (where the source has a signature scheme) and parse.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] / [`WebhookError::SignatureMismatch`]
/// when the source's authenticity check fails (checked before parsing);
/// [`WebhookError::Malformed`] when the body is not the source's format,
/// or when any field of any push breaks the [`grammar`] (the message names
/// the field).
pub fn parse(source: Source, req: &Request<'_>) -> Result<Parsed, WebhookError> {
    let mut parsed = match source {
        Source::DockerHub => dockerhub::parse(req),
        Source::Github => github::parse(req),
        Source::Quay => quay::parse(req),
        Source::Harbor => harbor::parse(req),
        Source::Acr => acr::parse(req),
        Source::Artifactory => artifactory::parse(req),
        Source::Generic => generic::parse(req),
    }?;
    // SECURITY: checked here, once for every source, so a new source
    // cannot skip it; one bad tag refuses the whole push, so nothing of a
    // hostile payload is ever written.
    if let Parsed::Push(pushes) = &mut parsed {
        for push in pushes.iter_mut() {
            grammar::check_push(push)
                .map_err(|reason| WebhookError::Malformed(format!("{source}: {reason}")))?;
        }
    }
    Ok(parsed)
}

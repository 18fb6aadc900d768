//! The OCI distribution API, as far as tagbridge needs it: the digest a tag
//! names (`HEAD /v2/<name>/manifests/<tag>`) and a repository's tags
//! (`GET /v2/<name>/tags/list`, paginated).
//!
//! Docker Hub and Quay payloads carry no digest, so a re-pushed mutable tag
//! looks unchanged unless the registry is asked; and a lost delivery is
//! only made good by listing the tags. Both talk to a registry the operator
//! named, through the same rustls stack (ring) as every other client, with
//! a bounded timeout per request and caps on what is read.
//!
//! Authentication follows the distribution spec: a request answered 401
//! with `WWW-Authenticate: Bearer realm=…,service=…,scope=…` is retried
//! with a token fetched from the realm (anonymously, or with the
//! configured username and password); `Basic` challenges get the
//! username and password directly; a configured token is sent as a bearer
//! token from the start.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, LINK, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use super::http::{HttpClient, RequestError, Response};
use crate::webhook::grammar;

/// Manifest media types asked for, so the registry answers with the digest
/// of what it stores (an index or a manifest) instead of converting it.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Tags asked for per page.
pub const PAGE_SIZE: usize = 1000;
/// The most tags one listing keeps; the tag policy refuses more anyway.
pub const MAX_TAGS: usize = 20_000;
/// The most pages one listing fetches, whatever the registry's links say.
const MAX_PAGES: usize = 100;
/// A token answer is small; anything larger is refused unread.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// A listing page of `PAGE_SIZE` tags of at most 128 bytes each, with room.
const MAX_PAGE_BYTES: usize = 512 * 1024;
/// The longest we wait on a `Retry-After` before giving up for now.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How tagbridge proves itself to the registry.
#[derive(Clone, Default)]
pub enum RegistryAuth {
    /// No credentials: public repositories, anonymous bearer tokens.
    #[default]
    Anonymous,
    /// A username and password (or access token used as one).
    Basic { username: String, password: String },
    /// A ready bearer token, sent as it is.
    Token(String),
}

// SECURITY: credentials never reach a log line or an error, even through
// `{:?}` of a settings value.
impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RegistryAuth::Anonymous => "Anonymous",
            RegistryAuth::Basic { .. } => "Basic(<redacted>)",
            RegistryAuth::Token(_) => "Token(<redacted>)",
        })
    }
}

/// Where the registry is and how to reach it.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// `https://host[:port]` (or `http://` for an internal registry), no
    /// path.
    pub address: String,
    pub auth: RegistryAuth,
    /// Bound on each request, token fetches included.
    pub timeout: Duration,
}

/// Why the registry gave no usable answer. Never holds a credential or a
/// token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {op}: {source}")]
    Request {
        op: &'static str,
        #[source]
        source: RequestError,
    },
    #[error("registry {op}: status {status}{code}")]
    Status {
        op: &'static str,
        status: u16,
        /// The registry's error code (` (NAME_UNKNOWN)`), when it gave one.
        code: String,
    },
    #[error("registry {op}: credentials refused (status {status})")]
    Unauthorized { op: &'static str, status: u16 },
    #[error("registry {op}: rate limited{}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        op: &'static str,
        retry_after: Option<Duration>,
    },
    #[error("registry {op}: {reason}")]
    Protocol { op: &'static str, reason: String },
}

/// One repository's tags, and what it took to list them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagList {
    pub tags: Vec<String>,
    /// HTTP requests made, token fetches included.
    pub requests: u32,
    /// The listing stopped at [`MAX_TAGS`] or [`MAX_PAGES`], and which;
    /// tags past it were not seen.
    pub truncated: Option<ListingBound>,
}

/// The bound a listing stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingBound {
    /// [`MAX_TAGS`] tags were kept and a page held another.
    Tags,
    /// [`MAX_PAGES`] pages were fetched and the registry named another.
    Pages,
}

impl std::fmt::Display for ListingBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListingBound::Tags => write!(f, "MAX_TAGS ({MAX_TAGS} tags)"),
            ListingBound::Pages => write!(f, "MAX_PAGES ({MAX_PAGES} pages)"),
        }
    }
}

/// A listing in progress: the tags so far, in the registry's order, each
/// once, whatever order the registry lists them in.
#[derive(Debug, Default)]
struct Listing {
    tags: Vec<String>,
    seen: HashSet<String>,
    /// The paths fetched, so a `next` link back to one ends the listing.
    fetched: HashSet<String>,
    truncated: Option<ListingBound>,
}

impl Listing {
    /// Take the page fetched from `path` (with its `Link` next, if any);
    /// the path of the page to fetch next, or `None` when the listing is
    /// over: no next page, a page with no new tag (a registry repeating
    /// itself), a next page already fetched (a loop), or a bound reached
    /// (then `truncated` says which).
    fn page(
        &mut self,
        repository: &str,
        path: &str,
        page: Vec<String>,
        link: Option<String>,
    ) -> Option<String> {
        self.fetched.insert(path.to_string());
        // The fallback cursor is the registry's own last entry, not ours:
        // a `last` is where *its* order continues.
        let full = page.len() >= PAGE_SIZE;
        let cursor = page.last().cloned();
        let before = self.tags.len();
        for t in page {
            if grammar::check_tag(&t).is_err() || self.seen.contains(&t) {
                continue;
            }
            if self.tags.len() == MAX_TAGS {
                self.truncated = Some(ListingBound::Tags);
                return None;
            }
            self.seen.insert(t.clone());
            self.tags.push(t);
        }
        if self.tags.len() == before {
            return None;
        }
        let next = link.or_else(|| {
            cursor.filter(|_| full).map(|c| {
                format!(
                    "/v2/{repository}/tags/list?n={PAGE_SIZE}&last={}",
                    percent_encoding::utf8_percent_encode(&c, QUERY)
                )
            })
        })?;
        if self.fetched.contains(&next) {
            return None;
        }
        // Every page fetched is a different path, so this counts pages.
        if self.fetched.len() >= MAX_PAGES {
            self.truncated = Some(ListingBound::Pages);
            return None;
        }
        Some(next)
    }
}

/// A bearer token for one scope, until it expires.
struct CachedToken {
    scope: String,
    token: String,
    until: Instant,
}

/// A client for one registry.
pub struct Registry {
    http: HttpClient,
    settings: RegistrySettings,
    token: Mutex<Option<CachedToken>>,
}

impl Registry {
    pub fn new(http: HttpClient, settings: RegistrySettings) -> Self {
        Registry {
            http,
            settings: RegistrySettings {
                address: settings.address.trim_end_matches('/').to_string(),
                ..settings
            },
            token: Mutex::new(None),
        }
    }

    /// The bound on each request (token fetches included).
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// The digest `repository:tag` names now, or `None` when the registry
    /// does not know the tag.
    ///
    /// # Errors
    ///
    /// Unreachable registry, refused credentials, rate limiting, or a
    /// digest header that is missing or not a digest.
    pub async fn digest(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, RegistryError> {
        const OP: &str = "manifest";
        let path = format!("/v2/{repository}/manifests/{tag}");
        let mut requests = 0;
        let resp = self
            .call(
                OP,
                Method::HEAD,
                &path,
                repository,
                MAX_PAGE_BYTES,
                &mut requests,
            )
            .await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(status_error(OP, &resp));
        }
        let digest = resp
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or(RegistryError::Protocol {
                op: OP,
                reason: "no Docker-Content-Digest header in the answer".into(),
            })?;
        // SECURITY: the digest becomes a KV value and a rollout input; it
        // is held to the same grammar as a payload's digest.
        grammar::check_digest(digest)
            .map_err(|reason| RegistryError::Protocol { op: OP, reason })?;
        Ok(Some(digest.to_string()))
    }

    /// Every tag of `repository`, page by page, up to [`MAX_TAGS`].
    ///
    /// Pages follow the registry's `Link: <…>; rel="next"` header when it
    /// sends one (its path and query only: the origin stays the configured
    /// registry), or else continue after the last tag of a full page. The
    /// registry's order is not assumed: every new tag of every page is
    /// kept, once. A page that adds no new tag, or a next page already
    /// fetched, ends the listing: some registries answer a `last` past
    /// their final tag with the first page again. See [`Listing`].
    ///
    /// # Errors
    ///
    /// As for [`Registry::digest`], and an unknown repository (404).
    pub async fn tags(&self, repository: &str) -> Result<TagList, RegistryError> {
        const OP: &str = "tags";
        let mut requests = 0;
        let mut listing = Listing::default();
        let mut next = Some(format!("/v2/{repository}/tags/list?n={PAGE_SIZE}"));
        while let Some(path) = next.take() {
            let resp = self
                .call(
                    OP,
                    Method::GET,
                    &path,
                    repository,
                    MAX_PAGE_BYTES,
                    &mut requests,
                )
                .await?;
            if !resp.status.is_success() {
                return Err(status_error(OP, &resp));
            }
            let page = parse_page(&resp.body)
                .map_err(|reason| RegistryError::Protocol { op: OP, reason })?;
            next = listing.page(repository, &path, page, link_next(&resp, repository));
        }
        Ok(TagList {
            tags: listing.tags,
            requests,
            truncated: listing.truncated,
        })
    }

    /// One request with the registry's authentication dance: send, and on
    /// a 401 challenge fetch what it asks for and send once more.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        repository: &str,
        cap: usize,
        requests: &mut u32,
    ) -> Result<Response, RegistryError> {
        let url = format!("{}{path}", self.settings.address);
        let first = self.authorization(repository);
        *requests += 1;
        let resp = self.send(op, &method, &url, first.as_deref(), cap).await?;
        if resp.status != StatusCode::UNAUTHORIZED {
            return check_common(op, resp);
        }
        let challenge = resp
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(Challenge::parse)
            .ok_or(RegistryError::Unauthorized { op, status: 401 })?;
        let auth = match challenge {
            Challenge::Basic => match &self.settings.auth {
                RegistryAuth::Basic { username, password } => basic(username, password),
                _ => return Err(RegistryError::Unauthorized { op, status: 401 }),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
                let token = self
                    .fetch_token(op, &realm, service.as_deref(), &scope, requests)
                    .await?;
                format!("Bearer {token}")
            }
            Challenge::Other => return Err(RegistryError::Unauthorized { op, status: 401 }),
        };
        *requests += 1;
        let resp = self.send(op, &method, &url, Some(&auth), cap).await?;
        if resp.status == StatusCode::UNAUTHORIZED || resp.status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                op,
                status: resp.status.as_u16(),
            });
        }
        check_common(op, resp)
    }

    /// The Authorization header to send first: a configured token, or a
    /// cached bearer token for this repository's pull scope.
    fn authorization(&self, repository: &str) -> Option<String> {
        if let RegistryAuth::Token(t) = &self.settings.auth {
            return Some(format!("Bearer {t}"));
        }
        let scope = format!("repository:{repository}:pull");
        let cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|c| c.scope == scope && c.until > Instant::now())
            .map(|c| format!("Bearer {}", c.token))
    }

    /// Ask the challenge's realm for a pull token.
    async fn fetch_token(
        &self,
        op: &'static str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        requests: &mut u32,
    ) -> Result<String, RegistryError> {
        // SECURITY: the realm comes from the registry's answer, and our
        // credentials go to it. Only the registry's own origin, or https on
        // the registry's own site (auth.docker.io for registry-1.docker.io),
        // may receive them: a hostile registry must not be able to send our
        // password to another host, or make us fetch an internal URL.
        if !same_origin(realm, &self.settings.address) && !same_site(realm, &self.settings.address)
        {
            return Err(RegistryError::Protocol {
                op,
                reason: "the token realm is not on the registry's own site".into(),
            });
        }
        let mut url = format!("{realm}{}", if realm.contains('?') { '&' } else { '?' });
        if let Some(s) = service {
            url.push_str(&format!(
                "service={}&",
                percent_encoding::utf8_percent_encode(s, QUERY)
            ));
        }
        url.push_str(&format!(
            "scope={}",
            percent_encoding::utf8_percent_encode(scope, QUERY)
        ));
        let auth = match &self.settings.auth {
            RegistryAuth::Basic { username, password } => Some(basic(username, password)),
            _ => None,
        };
        *requests += 1;
        let resp = self
            .send(op, &Method::GET, &url, auth.as_deref(), MAX_TOKEN_BYTES)
            .await?;
        if resp.status == StatusCode::UNAUTHORIZED || resp.status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                op,
                status: resp.status.as_u16(),
            });
        }
        let resp = check_common(op, resp)?;
        if !resp.status.is_success() {
            return Err(status_error(op, &resp));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&resp.body).map_err(|e| RegistryError::Protocol {
                op,
                reason: format!("token answer is not JSON: {e}"),
            })?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or(RegistryError::Protocol {
                op,
                reason: "token answer holds no usable token".into(),
            })?;
        // Reuse it a little less long than granted (60 s when unsaid, as
        // the spec says), so it never expires in flight.
        let life = Duration::from_secs(answer.expires_in.unwrap_or(60).clamp(10, 3600) - 5);
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
            scope: scope.to_string(),
            token: token.clone(),
            until: Instant::now() + life,
        });
        Ok(token)
    }

    async fn send(
        &self,
        op: &'static str,
        method: &Method,
        url: &str,
        auth: Option<&str>,
        cap: usize,
    ) -> Result<Response, RegistryError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url)
            .header(ACCEPT, MANIFEST_TYPES);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| RegistryError::Protocol {
                op,
                reason: format!("bad request URL: {e}"),
            })?;
        self.http
            .send_capped(req, self.settings.timeout, cap)
            .await
            .map_err(|source| RegistryError::Request { op, source })
    }
}

/// Characters escaped in a query value.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// The tags of one listing page (`"tags": null` is an empty repository).
fn parse_page(body: &[u8]) -> Result<Vec<String>, String> {
    let page: Page =
        serde_json::from_slice(body).map_err(|e| format!("tag list is not JSON: {e}"))?;
    Ok(page.tags.unwrap_or_default())
}

/// Rate limits answer the same way on every call.
fn check_common(op: &'static str, resp: Response) -> Result<Response, RegistryError> {
    if resp.status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = resp
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        return Err(RegistryError::RateLimited { op, retry_after });
    }
    Ok(resp)
}

fn status_error(op: &'static str, resp: &Response) -> RegistryError {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: String,
    }
    // Only the registry's error code is kept: it names the problem
    // (NAME_UNKNOWN, DENIED) without echoing anything else it sent.
    let code = serde_json::from_slice::<Errors>(&resp.body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| e.code)
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    RegistryError::Status {
        op,
        status: resp.status.as_u16(),
        code,
    }
}

fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// The next page's path and query from a `Link: <…>; rel="next"` header,
/// when it points into the same repository's listing.
fn link_next(resp: &Response, repository: &str) -> Option<String> {
    let value = resp.headers.get(LINK)?.to_str().ok()?;
    value.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        if !params
            .split(';')
            .map(str::trim)
            .any(|p| p == "rel=\"next\"" || p == "rel=next")
        {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        // SECURITY: an absolute link keeps only its path and query: the
        // registry may not send our credentials to another origin.
        let path = match target.find("://") {
            Some(i) => &target[i + 3..][target[i + 3..].find('/')?..],
            None => target,
        };
        path.starts_with(&format!("/v2/{repository}/tags/list?"))
            .then(|| path.to_string())
    })
}

/// `url` is on the same scheme, host and port as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    let origin = |u: &str| -> Option<String> {
        let (scheme, rest) = u.split_once("://")?;
        let host = rest.split(['/', '?']).next()?;
        Some(format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        ))
    };
    origin(url).is_some() && origin(url) == origin(base)
}

/// `url` is https, on the host of `base` or a host sharing its last two
/// labels (`auth.docker.io` beside `registry-1.docker.io`). An address
/// given as an IP must match exactly.
fn same_site(url: &str, base: &str) -> bool {
    let host = |u: &str| -> Option<String> {
        let rest = u.split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        let authority = authority.rsplit('@').next()?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => authority.split(':').next()?,
        };
        Some(host.to_ascii_lowercase())
    };
    let (Some(a), Some(b)) = (host(url), host(base)) else {
        return false;
    };
    if !url.starts_with("https://") || a.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let site = |h: &str| -> Option<String> {
        if h.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        let labels: Vec<&str> = h.rsplitn(3, '.').collect();
        (labels.len() >= 2).then(|| format!("{}.{}", labels[1], labels[0]))
    };
    site(&a).is_some() && site(&a) == site(&b)
}

/// A `WWW-Authenticate` challenge, as far as tagbridge answers one.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Other,
}

impl Challenge {
    /// `Bearer realm="…",service="…",scope="…"` (quoted values with
    /// backslash escapes), `Basic realm="…"`, anything else.
    fn parse(header: &str) -> Challenge {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Other;
        }
        let mut realm = None;
        let mut service = None;
        let mut scope = None;
        for (k, v) in auth_params(params) {
            match k.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(v),
                "service" => service = Some(v),
                "scope" => scope = Some(v),
                _ => {}
            }
        }
        match realm {
            Some(realm) if !realm.is_empty() => Challenge::Bearer {
                realm,
                service,
                scope,
            },
            _ => Challenge::Other,
        }
    }
}

/// `key=value` or `key="value"` pairs separated by commas.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_hub_challenge_is_read_whole() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            }
        );
        assert_eq!(Challenge::parse("Basic realm=\"x\""), Challenge::Basic);
        assert_eq!(Challenge::parse("Bearer service=\"x\""), Challenge::Other);
        assert_eq!(Challenge::parse("Negotiate"), Challenge::Other);
    }

    #[test]
    fn challenge_values_may_be_unquoted_or_escaped() {
        let c = Challenge::parse(r#"bearer realm=https://r/t, scope="a\"b""#);
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://r/t".into(),
                service: None,
                scope: Some("a\"b".into()),
            }
        );
        for s in ["", "Bearer", "Bearer ,,,", "Bearer realm=\"", "Bearer =x"] {
            let _ = Challenge::parse(s);
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert!(same_origin(
            "http://127.0.0.1:5000/token?x",
            "http://127.0.0.1:5000"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:5001/token",
            "http://127.0.0.1:5000"
        ));
        assert!(!same_origin("http://evil/token", "https://evil"));
        assert!(!same_origin("nonsense", "nonsense"));
    }

    #[test]
    fn a_token_realm_must_be_on_the_registry_s_own_site() {
        let hub = "https://registry-1.docker.io";
        assert!(same_site("https://auth.docker.io/token", hub));
        assert!(same_site("https://ghcr.io/token", "https://ghcr.io"));
        assert!(!same_site("https://evil.example/token", hub));
        assert!(!same_site("https://docker.io.evil.example/token", hub));
        assert!(!same_site("http://auth.docker.io/token", hub), "https only");
        assert!(!same_site("https://10.0.0.2/token", "https://10.0.0.1"));
        assert!(!same_site("https://auth.docker.io@evil.example/t", hub));
    }

    /// Run a [`Listing`] against a scripted registry: `serve` answers a
    /// path with its page and `Link` next. (tags, paths fetched, bound.)
    fn list(
        serve: impl Fn(&str) -> (Vec<String>, Option<String>),
    ) -> (Vec<String>, Vec<String>, Option<ListingBound>) {
        let mut listing = Listing::default();
        let mut fetched = Vec::new();
        let mut next = Some(format!("/v2/r/tags/list?n={PAGE_SIZE}"));
        while let Some(path) = next.take() {
            assert!(fetched.len() <= MAX_PAGES, "the listing must end");
            let (page, link) = serve(&path);
            next = listing.page("r", &path, page, link);
            fetched.push(path);
        }
        (listing.tags, fetched, listing.truncated)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    fn link(page: u32) -> Option<String> {
        Some(format!("/v2/r/tags/list?n={PAGE_SIZE}&page={page}"))
    }

    #[test]
    fn pages_out_of_lexical_order_are_listed_whole() {
        let (tags, fetched, bound) = list(|path| {
            if path.ends_with("page=2") {
                // All sort before page one's last tag.
                (strings(&["1.2.0", "1.1.0", "1.0.0"]), link(3))
            } else if path.ends_with("page=3") {
                (strings(&["0.9.0", "2.0.0"]), None)
            } else {
                (strings(&["1.0.0", "latest"]), link(2))
            }
        });
        assert_eq!(
            tags,
            strings(&["1.0.0", "latest", "1.2.0", "1.1.0", "0.9.0", "2.0.0"]),
            "each tag once, none dropped"
        );
        assert_eq!(fetched.len(), 3);
        assert_eq!(bound, None);
    }

    #[test]
    fn the_last_fallback_continues_from_the_registry_s_own_last_entry() {
        let first: Vec<String> = (0..PAGE_SIZE).rev().map(|i| format!("t{i:04}")).collect();
        let (tags, fetched, bound) = list(|path| {
            if path.contains("&last=") {
                (strings(&["a", "t0000"]), None)
            } else {
                (first.clone(), None)
            }
        });
        assert_eq!(
            fetched[1],
            format!("/v2/r/tags/list?n={PAGE_SIZE}&last=t0000")
        );
        assert_eq!(tags.len(), PAGE_SIZE + 1);
        assert_eq!(tags.last().map(String::as_str), Some("a"));
        assert_eq!(bound, None);
    }

    #[test]
    fn a_repeating_or_looping_registry_ends_the_listing() {
        // A full first page, and `last=` answered with it again.
        let full: Vec<String> = (0..PAGE_SIZE).map(|i| format!("t{i:04}")).collect();
        let (tags, fetched, bound) = list(|_| (full.clone(), None));
        assert_eq!((tags.len(), fetched.len(), bound), (PAGE_SIZE, 2, None));

        // Fresh tags on every page, but the links run in a circle.
        let (tags, fetched, bound) = list(|path| {
            let n: u32 = path.rsplit("page=").next().unwrap().parse().unwrap_or(1);
            (vec![format!("t{n}")], link(if n == 3 { 2 } else { n + 1 }))
        });
        assert_eq!(fetched.len(), 3, "{fetched:?}");
        assert_eq!(tags.len(), 3);
        assert_eq!(bound, None);

        // A page of only tags already seen, though it links on.
        let (tags, fetched, bound) = list(|path| {
            if path.ends_with("page=2") {
                (strings(&["b", "a"]), link(3))
            } else {
                (strings(&["a", "b"]), link(2))
            }
        });
        assert_eq!(
            (tags, fetched.len(), bound),
            (strings(&["a", "b"]), 2, None)
        );
    }

    #[test]
    fn a_bound_reached_is_reported_and_named() {
        // Endless pages of one new tag: MAX_PAGES fetched, no more.
        let (tags, fetched, bound) = list(|path| {
            let n: u32 = path.rsplit("page=").next().unwrap().parse().unwrap_or(1);
            (vec![format!("t{n}")], link(n + 1))
        });
        assert_eq!((tags.len(), fetched.len()), (MAX_PAGES, MAX_PAGES));
        assert_eq!(bound, Some(ListingBound::Pages));
        assert_eq!(
            ListingBound::Pages.to_string(),
            format!("MAX_PAGES ({MAX_PAGES} pages)")
        );

        // Full pages of new tags: exactly MAX_TAGS kept, never more.
        let (tags, fetched, bound) = list(|path| {
            let n: usize = path.rsplit("page=").next().unwrap().parse().unwrap_or(1);
            let page = (0..PAGE_SIZE).map(|i| format!("t{n}-{i}")).collect();
            (page, link(u32::try_from(n).unwrap() + 1))
        });
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(fetched.len(), MAX_TAGS / PAGE_SIZE + 1);
        assert_eq!(bound, Some(ListingBound::Tags));
        assert_eq!(
            ListingBound::Tags.to_string(),
            format!("MAX_TAGS ({MAX_TAGS} tags)")
        );

        // Exactly MAX_TAGS tags and no further page is complete.
        let (tags, _, bound) = list(|path| {
            let n: usize = path.rsplit("page=").next().unwrap().parse().unwrap_or(1);
            let page = (0..PAGE_SIZE).map(|i| format!("t{n}-{i}")).collect();
            (
                page,
                (n < MAX_TAGS / PAGE_SIZE)
                    .then(|| link(u32::try_from(n).unwrap() + 1))
                    .flatten(),
            )
        });
        assert_eq!((tags.len(), bound), (MAX_TAGS, None));
    }

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let a = RegistryAuth::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!format!("{:?}", RegistryAuth::Token("tok-123".into())).contains("tok-123"));
    }
}

//! The properties every fuzz target checks, kept free of libFuzzer.
//!
//! Each `*_case` function takes raw bytes in a small, text-friendly framing
//! (so seeds and crash files are readable), drives one public tagbridge
//! entry point with them, and panics when a property is broken. The fuzz
//! targets in `fuzz_targets/` are one-line wrappers; `tests/props.rs` in
//! the main crate includes this file too, so `cargo test` runs the same
//! oracles with proptest and replays every input a fuzzer ever found.
//!
//! Only APIs that are part of tagbridge's public surface are used
//! (`webhook::parse`, `webhook::Request`, `webhook::signature::*`,
//! `config::Config::parse`, `policy::TagPolicy`), so the targets keep
//! compiling when a source's internals change.

use std::cmp::Ordering;
use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use tagbridge::config::{self, Config, Purpose};
use tagbridge::policy::{Decision, Order, TagPolicy};
use tagbridge::webhook::signature::{
    hub_signature_256, verify_equal_header, verify_hex_hmac, verify_hub_signature_256,
    HUB_SIGNATURE_256,
};
use tagbridge::webhook::{self, Parsed, Request, Source, WebhookError};

/// Artifactory's signature header (bare hex HMAC-SHA256).
pub const JFROG_AUTH: &str = "X-JFrog-Event-Auth";
/// Harbor's shared-secret header.
pub const AUTHORIZATION: &str = "Authorization";

/// Longest client-facing reason accepted, in characters. The sources cap
/// what they quote (64 characters per value, 200 per serde message); this
/// is a generous ceiling that still catches an echoed payload.
const MAX_REASON_CHARS: usize = 512;

/// The signing secrets a case can run with, chosen by two bits of the
/// control byte: none, an ordinary one, an empty one (must never
/// authenticate anything) and one with trailing blanks (Harbor forgives
/// them; the HMAC sources must not).
fn secret_choice(control: u8) -> Option<&'static [u8]> {
    match control & 0b11 {
        0 => None,
        1 => Some(b"It's a Secret to Everybody"),
        2 => Some(b""),
        _ => Some(b"s3cret \r\n"),
    }
}

/// Splits `rest` into a header block and a body at the first blank line
/// (`\n\n`), like HTTP; without one, everything is body.
fn split_headers(rest: &[u8]) -> (&[u8], &[u8]) {
    match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&[], rest),
    }
}

/// `Name: value` lines into a header map, skipping any line `http` would
/// refuse (the server never sees such a header either). Values are
/// appended, so a repeated header stays repeated.
pub fn header_map(block: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    headers
}

/// The lowercase hex HMAC-SHA256 of `body`, via the public helper.
fn expected_hex(secret: &[u8], body: &[u8]) -> String {
    hub_signature_256(secret, body)["sha256=".len()..].to_owned()
}

/// Whether an honest implementation of `source`'s authenticity check
/// accepts these headers: written from the documented rules, not from the
/// code under test, so the two can disagree.
pub fn authentic(source: Source, headers: &HeaderMap, body: &[u8], secret: Option<&[u8]>) -> bool {
    let header = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
    match (source, secret) {
        // Unsigned GitHub / generic deliveries are never trusted.
        (Source::Github | Source::Generic, None) => false,
        (Source::Github | Source::Generic, Some(s)) => {
            !s.is_empty()
                && header(HUB_SIGNATURE_256)
                    .and_then(|v| v.strip_prefix(b"sha256="))
                    .is_some_and(|hex| hex.eq_ignore_ascii_case(expected_hex(s, body).as_bytes()))
        }
        (Source::Artifactory, Some(s)) => {
            !s.is_empty()
                && header(JFROG_AUTH)
                    .is_some_and(|v| v.eq_ignore_ascii_case(expected_hex(s, body).as_bytes()))
        }
        (Source::Harbor, Some(s)) => {
            let trimmed = s.trim_ascii_end();
            !trimmed.is_empty() && header(AUTHORIZATION).is_some_and(|v| v == s || v == trimmed)
        }
        // No signature scheme (or none configured): the URL secret and
        // allow_cidrs authenticate, in the server.
        _ => true,
    }
}

/// One line, printable, bounded: what every reason sent back must be.
fn assert_reason(what: &str, text: &str) {
    assert!(
        !text.chars().any(char::is_control),
        "{what} has a control character: {text:?}"
    );
    assert!(
        text.chars().count() <= MAX_REASON_CHARS,
        "{what} is {} characters long: {text:?}",
        text.chars().count()
    );
}

/// Webhook case: `control` byte, then `Name: value` header lines, a blank
/// line, and the body.
///
/// Control bits 0-1 pick the signing secret ([`secret_choice`]); bit 2
/// makes the harness add the correct credential for `source` (so the
/// fuzzer reaches the JSON past the signature check); bit 3 picks the
/// variant of that credential (uppercase hex, or Harbor's secret with its
/// trailing blanks trimmed).
///
/// Properties: no panic; a signature error exactly when [`authentic`]
/// says the credentials are wrong (never accepted without them, never
/// refused with them); pushes carry a non-empty tag and a clean delivery
/// id; every reason is one bounded, printable line.
pub fn webhook_case(source: Source, data: &[u8]) {
    let Some((headers, body, secret)) = webhook_inputs(source, data) else {
        return;
    };
    let req = Request {
        headers: &headers,
        body,
        signing_secret: secret,
    };
    let result = webhook::parse(source, &req);
    let authentic = authentic(source, &headers, body, secret);
    let signature_error = matches!(
        result,
        Err(WebhookError::SignatureMissing(_) | WebhookError::SignatureMismatch)
    );
    assert_eq!(
        signature_error, !authentic,
        "{source}: authenticity check disagrees with the documented rule: {result:?}"
    );
    match &result {
        Ok(Parsed::Push(pushes)) => {
            for p in pushes {
                assert!(!p.tag.is_empty(), "{source}: push with an empty tag: {p:?}");
                if let Some(d) = &p.delivery {
                    assert!(
                        !d.is_empty() && d.len() <= 128 && d.trim() == d,
                        "{source}: unusable delivery id {d:?}"
                    );
                    assert_reason("delivery id", d);
                }
            }
        }
        Ok(Parsed::Ping) => {}
        Ok(Parsed::Ignored(reason)) => assert_reason("ignore reason", reason),
        Err(e) => assert_reason("error", &e.to_string()),
    }
}

/// What one webhook case hands `webhook::parse`: headers, body, secret.
pub type WebhookInputs<'a> = (HeaderMap, &'a [u8], Option<&'static [u8]>);

/// Decodes a webhook case's framing (see [`webhook_case`]) into the
/// headers, body and signing secret `webhook::parse` gets.
pub fn webhook_inputs(source: Source, data: &[u8]) -> Option<WebhookInputs<'_>> {
    let (&control, rest) = data.split_first()?;
    let secret = secret_choice(control);
    let (block, body) = split_headers(rest);
    let mut headers = header_map(block);
    if control & 0b100 != 0 {
        if let Some(s) = secret {
            add_credential(source, &mut headers, body, s, control & 0b1000 != 0);
        }
    }
    Some((headers, body, secret))
}

/// Adds the credential `source` expects, computed from the public helper.
fn add_credential(
    source: Source,
    headers: &mut HeaderMap,
    body: &[u8],
    secret: &[u8],
    variant: bool,
) {
    let value = match source {
        Source::Github | Source::Generic => {
            let hex = expected_hex(secret, body);
            let hex = if variant {
                hex.to_ascii_uppercase()
            } else {
                hex
            };
            (HUB_SIGNATURE_256, format!("sha256={hex}").into_bytes())
        }
        Source::Artifactory => {
            let hex = expected_hex(secret, body);
            let hex = if variant {
                hex.to_ascii_uppercase()
            } else {
                hex
            };
            (JFROG_AUTH, hex.into_bytes())
        }
        Source::Harbor => {
            let v = if variant {
                secret.trim_ascii_end()
            } else {
                secret
            };
            (AUTHORIZATION, v.to_vec())
        }
        Source::DockerHub | Source::Quay | Source::Acr => return,
    };
    // Secrets with `\r\n` are not valid header values: the server could
    // not receive them either, so no credential is added.
    if let Ok(v) = HeaderValue::from_bytes(&value.1) {
        headers.insert(value.0, v);
    }
}

/// Signature case: `control` byte, then `secret \n header-value \n body`
/// (the body keeps any further newlines).
///
/// Control bits 0-1 select which check runs; bit 2 replaces the header
/// value with the correct one (bit 3: uppercase hex / trimmed secret).
/// Each check must agree exactly with [`authentic`]'s rule, a missing
/// header must be `SignatureMissing` naming it, and a correct value must
/// always verify when the secret is usable.
pub fn signature_case(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let secret = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let source = match control & 0b11 {
        0 => Source::Github,
        1 => Source::Artifactory,
        _ => Source::Harbor,
    };
    let name = match source {
        Source::Github => HUB_SIGNATURE_256,
        Source::Artifactory => JFROG_AUTH,
        _ => AUTHORIZATION,
    };
    let mut headers = HeaderMap::new();
    if control & 0b100 != 0 {
        add_credential(source, &mut headers, body, secret, control & 0b1000 != 0);
    } else if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
    let verify = |h: &HeaderMap| match source {
        Source::Github => verify_hub_signature_256(h, body, secret),
        Source::Artifactory => verify_hex_hmac(JFROG_AUTH, h, body, secret),
        _ => verify_equal_header(AUTHORIZATION, h, secret),
    };
    let got = verify(&headers);
    let expected = authentic(source, &headers, body, Some(secret));
    assert_eq!(
        got.is_ok(),
        expected,
        "{source}: {got:?} for secret {secret:?}"
    );
    if let Err(e) = &got {
        assert!(
            matches!(
                e,
                WebhookError::SignatureMismatch | WebhookError::SignatureMissing(_)
            ),
            "{e:?}"
        );
        assert_reason("signature error", &e.to_string());
    }
    assert_eq!(
        verify(&HeaderMap::new()),
        Err(WebhookError::SignatureMissing(name)),
        "{source}: a missing header must be SignatureMissing naming it"
    );
    // A usable secret always verifies its own credential; this is the
    // direction the exact-agreement check above only meets by chance.
    let usable = match source {
        Source::Harbor => !secret.trim_ascii_end().is_empty(),
        _ => !secret.is_empty(),
    };
    if usable {
        let mut good = HeaderMap::new();
        add_credential(source, &mut good, body, secret, control & 0b1000 != 0);
        if !good.is_empty() {
            assert_eq!(verify(&good), Ok(()), "{source}: own credential refused");
        }
    }
}

/// Paths the config loader would open that could block or never end
/// (devices, FIFOs, procfs). `Config::parse` reads token files, so the
/// harness skips text that could name one; see the report on unbounded
/// secret-file reads.
const SPECIAL_PATH_HINTS: [&str; 7] = ["dev", "proc", "sys", "run", "\\u", "\\U", "${"];

/// Was a known bug in src/config.rs (notify labels unvalidated, so a label
/// holding a newline split its problem over two lines); fixed, so the
/// check is strict again. Set to `true` only to explore past a regression.
pub const NOTIFY_NAMES_UNCHECKED: bool = false;

/// Config case: `control` byte (bit 0: serve or client purpose), then the
/// HCL text (lossily decoded: `Config::load` reads UTF-8 text).
///
/// Properties: no panic, no hang; a rejection lists at least one problem
/// and each problem prints on one line (the documented `Display`); an
/// accepted config has a service and can be fingerprinted.
pub fn config_case(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if SPECIAL_PATH_HINTS.iter().any(|h| text.contains(h)) {
        return;
    }
    let purpose = if control & 1 == 0 {
        Purpose::Client
    } else {
        Purpose::Serve
    };
    let no_env = |_: &str| None;
    match Config::parse(Path::new("fuzz.hcl"), &text, purpose, &no_env) {
        Ok(cfg) => {
            assert!(
                !cfg.services.is_empty(),
                "accepted a config without services"
            );
            let _ = config::fingerprint(&text, &cfg);
        }
        Err(e) => {
            assert!(!e.0.is_empty(), "rejected with no problem listed");
            for p in &e.0 {
                if NOTIFY_NAMES_UNCHECKED && p.field.starts_with("notify.") {
                    continue;
                }
                let shown = p.to_string();
                // One printable line per problem: no `\n`, and no lone
                // `\r` from the text either (Collector::add replaces every
                // control character).
                assert!(
                    !shown.chars().any(char::is_control),
                    "a problem must print on one line: {shown:?}"
                );
            }
        }
    }
}

/// The include/exclude filters a policy case runs under.
fn policy_filters(control: u8) -> (Option<&'static str>, Vec<String>) {
    match (control >> 2) & 0b11 {
        0 => (None, Vec::new()),
        1 => (Some("^v?[0-9]"), vec!["-rc".to_owned()]),
        2 => (Some("."), vec!["\\.sig$".to_owned(), "^latest$".to_owned()]),
        _ => (None, vec!["[^\\x00-\\x7f]".to_owned()]),
    }
}

/// Every (filters, order) policy, compiled once: regex compilation per
/// input would spend the fuzzer's time in the regex crate.
fn policies() -> &'static [TagPolicy] {
    static POLICIES: OnceLock<Vec<TagPolicy>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        (0..16u8)
            .map(|control| {
                let (include, exclude) = policy_filters(control);
                let order = Order::ALL[usize::from(control & 0b11)];
                TagPolicy::new(include, &exclude, order).expect("fixed filters compile")
            })
            .collect()
    })
}

/// `decide(a, current = b)` as an ordering of `a` against `b`, when the
/// policy ranks them at all.
fn rank(p: &TagPolicy, a: &str, b: &str) -> Option<Ordering> {
    match p.decide(a, None, Some(b), None) {
        Decision::Apply => Some(Ordering::Greater),
        Decision::Unchanged => Some(Ordering::Equal),
        Decision::Older => Some(Ordering::Less),
        Decision::Filtered(_) => None,
    }
}

/// Policy case: `control` byte (bits 0-1: order, bits 2-3: filters), then
/// lines `a \n b \n c \n digest1 \n digest2`.
///
/// Properties, for tags the policy accepts on their own (passes the
/// filters and parses under the order): `decide` never panics and gives a
/// reason exactly when it does not apply; the same tag is unchanged unless
/// both digests are known and differ; under `pushed` every different tag
/// applies; under the other orders the ranking is antisymmetric and
/// transitive (a total preorder), so a replayed webhook cannot win both
/// ways round.
pub fn policy_case(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\n');
    let mut next = || parts.next().unwrap_or_default();
    let (a, b, c) = (next(), next(), next());
    // A missing line is an unknown digest; an empty one is still a value.
    let (d1, d2) = (parts.next(), parts.next());
    let order = Order::ALL[usize::from(control & 0b11)];
    let p = &policies()[usize::from(control & 0b1111)];

    for tag in [a, b, c] {
        let alone = p.decide(tag, d1, None, None);
        assert_eq!(
            alone.reason().is_none(),
            alone == Decision::Apply,
            "{alone:?}"
        );
        if let Some(r) = alone.reason() {
            assert_reason("policy reason", &r);
        }
        if alone != Decision::Apply {
            continue;
        }
        let again = p.decide(tag, d1, Some(tag), d2);
        let content_changed = matches!((&d1, &d2), (Some(x), Some(y)) if x != y);
        let want = if content_changed {
            Decision::Apply
        } else {
            Decision::Unchanged
        };
        assert_eq!(
            again, want,
            "{order}: same tag {tag:?}, digests {d1:?} {d2:?}"
        );
    }

    // Only tags the policy accepts on their own take part in the order.
    let accepted: Vec<&str> = [a, b, c]
        .into_iter()
        .filter(|t| p.decide(t, None, None, None) == Decision::Apply)
        .collect();
    for &x in &accepted {
        for &y in &accepted {
            if x == y {
                continue;
            }
            let xy = rank(p, x, y).expect("accepted tags are ranked");
            if order == Order::Pushed {
                assert_eq!(xy, Ordering::Greater, "pushed: {x:?} over {y:?}");
                continue;
            }
            let yx = rank(p, y, x).expect("accepted tags are ranked");
            assert_eq!(xy, yx.reverse(), "{order}: antisymmetry {x:?} {y:?}");
        }
    }
    if order != Order::Pushed && accepted.len() == 3 {
        // Transitivity over every arrangement of the three tags.
        let cmp = |x: &str, y: &str| {
            if x == y {
                Ordering::Equal
            } else {
                rank(p, x, y).expect("accepted tags are ranked")
            }
        };
        for (x, y, z) in permutations(&accepted) {
            let (xy, yz, xz) = (cmp(x, y), cmp(y, z), cmp(x, z));
            if xy != Ordering::Less && yz != Ordering::Less {
                assert_ne!(
                    xz,
                    Ordering::Less,
                    "{order}: transitivity {x:?} {y:?} {z:?}"
                );
            }
            if xy == Ordering::Equal && yz == Ordering::Equal {
                assert_eq!(xz, Ordering::Equal, "{order}: equality {x:?} {y:?} {z:?}");
            }
        }
    }
}

/// The six orderings of three items.
fn permutations<'a>(t: &[&'a str]) -> [(&'a str, &'a str, &'a str); 6] {
    let (a, b, c) = (t[0], t[1], t[2]);
    [
        (a, b, c),
        (a, c, b),
        (b, a, c),
        (b, c, a),
        (c, a, b),
        (c, b, a),
    ]
}

//! Shared helpers for the sources: authenticity checks, and the one JSON
//! decoder every source goes through.
//!
//! Three registries authenticate in three different ways (GitHub-style
//! `X-Hub-Signature-256`, Artifactory's bare hex HMAC, Harbor's static
//! `Authorization` value). Keeping them here means there is exactly one
//! place where secrets are compared, and it is the place reviewed for
//! constant-time behaviour.
//!
//! The decoder lives here for the same reason: turning a `serde_json`
//! error into a client-facing message is a disclosure decision (serde
//! quotes offending string values verbatim), so it is made once, next to
//! the other security-sensitive code, rather than in seven copies.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use super::WebhookError;

type HmacSha256 = Hmac<Sha256>;

/// The header GitHub (and tagbridge's generic CI source) sign with.
pub const HUB_SIGNATURE_256: &str = "X-Hub-Signature-256";

const HUB_PREFIX: &str = "sha256=";

/// Upper bound for any client-facing message built from payload content.
const MAX_MESSAGE: usize = 200;

/// Upper bound for a single payload value (event name, action, …) quoted
/// back in a message or an ignore reason.
const MAX_QUOTED: usize = 64;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of every length (long keys are hashed,
    // short ones padded), so this cannot fail.
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> [u8; 32] {
    let mut m = mac(secret);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// `sha256=<lowercase hex>` of HMAC-SHA256(secret, body): the value GitHub
/// puts in `X-Hub-Signature-256`. Used by tests, the demo, and CI scripts
/// that post to the generic source.
pub fn hub_signature_256(secret: &[u8], body: &[u8]) -> String {
    format!("{HUB_PREFIX}{}", hex::encode(hmac_sha256(secret, body)))
}

/// Check `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256 of the
/// raw body.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] when the header is absent;
/// [`WebhookError::SignatureMismatch`] for a wrong prefix, bad hex, wrong
/// length, wrong value, or an empty secret.
pub fn verify_hub_signature_256(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    let value = headers
        .get(HUB_SIGNATURE_256)
        .ok_or(WebhookError::SignatureMissing(HUB_SIGNATURE_256))?;
    let hex_part = value
        .as_bytes()
        .strip_prefix(HUB_PREFIX.as_bytes())
        .ok_or(WebhookError::SignatureMismatch)?;
    verify_hmac_hex(hex_part, body, secret)
}

/// Check a header holding the bare hex HMAC-SHA256 of the raw body
/// (Artifactory's `X-JFrog-Event-Auth`). Upper- and lowercase hex are both
/// accepted.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] (naming `header_name`) when the
/// header is absent; [`WebhookError::SignatureMismatch`] otherwise.
pub fn verify_hex_hmac(
    header_name: &'static str,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), WebhookError> {
    let value = headers
        .get(header_name)
        .ok_or(WebhookError::SignatureMissing(header_name))?;
    verify_hmac_hex(value.as_bytes(), body, secret)
}

fn verify_hmac_hex(hex_sig: &[u8], body: &[u8], secret: &[u8]) -> Result<(), WebhookError> {
    // SECURITY: an empty key is a valid HMAC key that every attacker also
    // knows; treat it as "nothing can authenticate" rather than trusting
    // config validation alone.
    if secret.is_empty() {
        return Err(WebhookError::SignatureMismatch);
    }
    let claimed = hex::decode(hex_sig).map_err(|_| WebhookError::SignatureMismatch)?;
    let expected = hmac_sha256(secret, body);
    // SECURITY: compare in constant time so response timing does not leak
    // how many leading bytes of a forged signature were right. A length
    // mismatch may return early: the length is public (always 32).
    if bool::from(expected.as_slice().ct_eq(claimed.as_slice())) {
        Ok(())
    } else {
        Err(WebhookError::SignatureMismatch)
    }
}

/// Check that a header equals the shared secret (Harbor sends the
/// configured "Auth Header" verbatim as `Authorization`).
///
/// The header must equal either the secret exactly, or the secret with
/// trailing ASCII whitespace removed: secret files usually end in a
/// newline that the registry-side setting does not have.
///
/// # Errors
///
/// [`WebhookError::SignatureMissing`] (naming `header_name`) when the
/// header is absent; [`WebhookError::SignatureMismatch`] when it differs
/// or the secret is empty.
pub fn verify_equal_header(
    header_name: &'static str,
    headers: &HeaderMap,
    secret: &[u8],
) -> Result<(), WebhookError> {
    let value = headers
        .get(header_name)
        .ok_or(WebhookError::SignatureMissing(header_name))?;
    let trimmed = secret.trim_ascii_end();
    // SECURITY: a blank secret would let an empty header through; fail
    // closed instead.
    if trimmed.is_empty() {
        return Err(WebhookError::SignatureMismatch);
    }
    let got = value.as_bytes();
    // SECURITY: both comparisons always run and are combined without
    // branching, so timing reveals neither which form matched nor how
    // much of the value was right. Only trailing whitespace is forgiven:
    // trimming the front or the header would widen what is accepted.
    let ok: Choice = got.ct_eq(secret) | got.ct_eq(trimmed);
    if bool::from(ok) {
        Ok(())
    } else {
        Err(WebhookError::SignatureMismatch)
    }
}

// ---------------------------------------------------------------------------
// Decoding and message helpers shared by the sources (crate-private).
// ---------------------------------------------------------------------------

/// Deserialize `body` into a source's serde structs.
///
/// Syntax errors become `<source>: body is not JSON: <serde message>`;
/// shape errors become `<source>: unexpected body shape: <message>` with
/// any quoted payload string removed.
pub(crate) fn decode_json<T: DeserializeOwned>(
    source: &str,
    body: &[u8],
) -> Result<T, WebhookError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Data => "unexpected body shape",
            Category::Syntax | Category::Eof | Category::Io => "body is not JSON",
        };
        WebhookError::Malformed(format!("{source}: {what}: {}", scrub(&e.to_string())))
    })
}

/// `<source>: missing field <path>`.
pub(crate) fn missing(source: &str, path: &str) -> WebhookError {
    WebhookError::Malformed(format!("{source}: missing field {path}"))
}

/// `<source>: field <path> is empty`.
pub(crate) fn empty(source: &str, path: &str) -> WebhookError {
    WebhookError::Malformed(format!("{source}: field {path} is empty"))
}

/// A payload- or header-supplied value made safe to quote back: one line,
/// printable, at most [`MAX_QUOTED`] characters.
pub(crate) fn quote(value: &str) -> String {
    // SECURITY: values quoted in ignore reasons come from the sender; keep
    // them short and single-line so they cannot flood logs, forge log
    // lines, or smuggle a large payload back out.
    let mut out: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_QUOTED)
        .collect();
    if value.chars().count() > MAX_QUOTED {
        out.push('…');
    }
    out
}

/// A delivery id taken from a header: `None` when absent or blank,
/// otherwise the trimmed text, which [`super::parse`] then holds to
/// [`super::grammar::check_delivery`].
///
/// # Errors
///
/// [`WebhookError::Malformed`] naming `delivery` when the header is not
/// visible ASCII text.
pub(crate) fn delivery_header(
    source: &str,
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<String>, WebhookError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    // SECURITY: an id that is present but unusable is refused rather than
    // dropped, so what history records is always what the sender claimed.
    let text = value.to_str().map_err(|_| {
        WebhookError::Malformed(format!(
            "{source}: delivery: header {name} is not printable ASCII"
        ))
    })?;
    Ok(delivery_id(text))
}

/// A delivery/event id from a payload: trimmed, `None` when blank. Its
/// length and characters are checked by [`super::grammar::check_delivery`]
/// with every other field.
pub(crate) fn delivery_id(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// `Some(s)` unless `s` is missing or empty.
pub(crate) fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Make a serde error message safe to return to the caller.
fn scrub(msg: &str) -> String {
    // SECURITY: serde renders offending strings as `string "<value>"`
    // (Debug-quoted, so inner quotes are escaped). Drop every quoted
    // section so a payload value, however large or sensitive, never comes
    // back in a 400 response or a log line.
    let mut out = String::with_capacity(msg.len().min(MAX_MESSAGE));
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut escaped = false;
            for q in chars.by_ref() {
                match (escaped, q) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => escaped = false,
                }
            }
            if out.ends_with(' ') {
                out.pop();
            }
        } else if c.is_control() {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    if out.chars().count() > MAX_MESSAGE {
        out = out.chars().take(MAX_MESSAGE).collect();
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn hub_signature_matches_githubs_documented_example() {
        // Test vector from GitHub's "Validating webhook deliveries" docs.
        assert_eq!(
            hub_signature_256(SECRET, BODY),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn hub_signature_accepts_valid_and_uppercase_hex() {
        let sig = hub_signature_256(SECRET, BODY);
        let h = headers(HUB_SIGNATURE_256, &sig);
        assert_eq!(verify_hub_signature_256(&h, BODY, SECRET), Ok(()));
        let upper = format!("sha256={}", sig[7..].to_ascii_uppercase());
        let h = headers(HUB_SIGNATURE_256, &upper);
        assert_eq!(verify_hub_signature_256(&h, BODY, SECRET), Ok(()));
    }

    #[test]
    fn hub_signature_missing_header() {
        assert_eq!(
            verify_hub_signature_256(&HeaderMap::new(), BODY, SECRET),
            Err(WebhookError::SignatureMissing("X-Hub-Signature-256"))
        );
    }

    #[test]
    fn hub_signature_rejects_bad_forms() {
        let good = hub_signature_256(SECRET, BODY);
        let hex_only = &good[7..];
        for bad in [
            hex_only.to_owned(),                  // no prefix
            format!("sha1={hex_only}"),           // wrong algorithm
            format!("SHA256={hex_only}"),         // prefix is case-sensitive
            "sha256=zz".to_owned(),               // not hex
            "sha256=".to_owned(),                 // empty
            format!("sha256={}", &hex_only[2..]), // too short
            format!("sha256={hex_only}00"),       // too long
            hub_signature_256(b"other secret", BODY),
            hub_signature_256(SECRET, b"Hello, World?"),
        ] {
            let h = headers(HUB_SIGNATURE_256, &bad);
            assert_eq!(
                verify_hub_signature_256(&h, BODY, SECRET),
                Err(WebhookError::SignatureMismatch),
                "{bad}"
            );
        }
    }

    #[test]
    fn empty_secret_never_verifies() {
        let h = headers(HUB_SIGNATURE_256, &hub_signature_256(b"", BODY));
        assert_eq!(
            verify_hub_signature_256(&h, BODY, b""),
            Err(WebhookError::SignatureMismatch)
        );
        let h = headers("X-JFrog-Event-Auth", &hex::encode(hmac_sha256(b"", BODY)));
        assert_eq!(
            verify_hex_hmac("X-JFrog-Event-Auth", &h, BODY, b""),
            Err(WebhookError::SignatureMismatch)
        );
    }

    #[test]
    fn hex_hmac_accepts_both_cases_and_rejects_prefix() {
        let lower = hex::encode(hmac_sha256(SECRET, BODY));
        for ok in [lower.clone(), lower.to_ascii_uppercase()] {
            let h = headers("X-JFrog-Event-Auth", &ok);
            assert_eq!(
                verify_hex_hmac("X-JFrog-Event-Auth", &h, BODY, SECRET),
                Ok(())
            );
        }
        for bad in [
            format!("sha256={lower}"),
            "nothex".to_owned(),
            String::new(),
        ] {
            let h = headers("X-JFrog-Event-Auth", &bad);
            assert_eq!(
                verify_hex_hmac("X-JFrog-Event-Auth", &h, BODY, SECRET),
                Err(WebhookError::SignatureMismatch),
                "{bad}"
            );
        }
        assert_eq!(
            verify_hex_hmac("X-JFrog-Event-Auth", &HeaderMap::new(), BODY, SECRET),
            Err(WebhookError::SignatureMissing("X-JFrog-Event-Auth"))
        );
    }

    #[test]
    fn equal_header_exact_and_trailing_newline_in_secret() {
        let h = headers("Authorization", "Bearer s3cret");
        assert_eq!(
            verify_equal_header("Authorization", &h, b"Bearer s3cret"),
            Ok(())
        );
        assert_eq!(
            verify_equal_header("Authorization", &h, b"Bearer s3cret\n"),
            Ok(())
        );
        assert_eq!(
            verify_equal_header("Authorization", &h, b"Bearer s3cret \r\n"),
            Ok(())
        );
    }

    #[test]
    fn equal_header_rejects_near_misses() {
        for (header, secret) in [
            ("Bearer s3cret", &b"Bearer s3cre"[..]),
            ("Bearer s3cre", b"Bearer s3cret"),
            ("bearer s3cret", b"Bearer s3cret"),
            ("s3cret", b" s3cret"), // leading whitespace in the secret is kept
            ("x", b"\n"),
        ] {
            let h = headers("Authorization", header);
            assert_eq!(
                verify_equal_header("Authorization", &h, secret),
                Err(WebhookError::SignatureMismatch),
                "{header:?} vs {secret:?}"
            );
        }
        assert_eq!(
            verify_equal_header("Authorization", &HeaderMap::new(), b"s3cret"),
            Err(WebhookError::SignatureMissing("Authorization"))
        );
    }

    #[test]
    fn equal_header_rejects_empty_header_even_with_blank_secret() {
        let h = headers("Authorization", "");
        assert_eq!(
            verify_equal_header("Authorization", &h, b""),
            Err(WebhookError::SignatureMismatch)
        );
        assert_eq!(
            verify_equal_header("Authorization", &h, b" \n"),
            Err(WebhookError::SignatureMismatch)
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    #[serde(expecting = "inner to be an object")]
    struct Inner {
        name: Option<String>,
    }

    #[test]
    fn decode_reports_syntax_errors() {
        let err = decode_json::<Shape>("src", b"").unwrap_err();
        assert_eq!(
            err,
            WebhookError::Malformed(
                "src: body is not JSON: EOF while parsing a value at line 1 column 0".into()
            )
        );
        let err = decode_json::<Shape>("src", b"not json").unwrap_err();
        assert_eq!(
            err,
            WebhookError::Malformed(
                "src: body is not JSON: expected ident at line 1 column 2".into()
            )
        );
    }

    #[test]
    fn decode_never_echoes_payload_strings() {
        let secretish = "ghp_".to_owned() + &"A\\\"B".repeat(500);
        let body = serde_json::json!({ "inner": secretish }).to_string();
        let WebhookError::Malformed(msg) =
            decode_json::<Shape>("src", body.as_bytes()).unwrap_err()
        else {
            panic!("expected Malformed")
        };
        assert!(!msg.contains("ghp_"), "{msg}");
        assert!(!msg.contains('\n'));
        assert!(msg.len() < 300, "{msg}");
        assert!(
            msg.starts_with(
                "src: unexpected body shape: invalid type: string, expected inner to be an object"
            ),
            "{msg}"
        );
    }

    #[test]
    fn decode_type_errors_name_the_expectation() {
        let err = decode_json::<Shape>("src", br#"{"inner":{"name":5}}"#).unwrap_err();
        assert_eq!(
            err,
            WebhookError::Malformed(
                "src: unexpected body shape: invalid type: integer `5`, expected a string at line 1 column 18"
                    .into()
            )
        );
    }

    #[test]
    fn scrub_handles_escapes_and_unterminated_quotes() {
        assert_eq!(scrub(r#"a string "x\"y" b"#), "a string b");
        assert_eq!(scrub(r#"a "x\\" b"#), "a b");
        assert_eq!(scrub(r#"open "never closed"#), "open");
        assert_eq!(scrub("line\nbreak"), "line break");
        assert_eq!(scrub(&"x".repeat(500)).chars().count(), MAX_MESSAGE + 1);
    }

    #[test]
    fn quote_is_short_and_single_line() {
        assert_eq!(quote("delete"), "delete");
        assert_eq!(quote("a\nb\u{7}"), "a?b?");
        let long = "y".repeat(1000);
        assert_eq!(quote(&long).chars().count(), MAX_QUOTED + 1);
    }

    #[test]
    fn delivery_header_trims_and_refuses_non_text() {
        let h = headers(
            "X-GitHub-Delivery",
            " 72d3162e-cc78-11e3-81ab-4c9367dc0958 ",
        );
        assert_eq!(
            delivery_header("github", &h, "X-GitHub-Delivery"),
            Ok(Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()))
        );
        // Length is the grammar's business, not this function's.
        let h = headers("X-GitHub-Delivery", &"d".repeat(200));
        assert_eq!(
            delivery_header("github", &h, "X-GitHub-Delivery"),
            Ok(Some("d".repeat(200)))
        );
        let h = headers("X-GitHub-Delivery", "  ");
        assert_eq!(delivery_header("github", &h, "X-GitHub-Delivery"), Ok(None));
        assert_eq!(
            delivery_header("github", &HeaderMap::new(), "X-GitHub-Delivery"),
            Ok(None)
        );
        let mut h = HeaderMap::new();
        h.insert(
            "X-GitHub-Delivery",
            HeaderValue::from_bytes(b"id-\xff").unwrap(),
        );
        assert_eq!(
            delivery_header("github", &h, "X-GitHub-Delivery"),
            Err(WebhookError::Malformed(
                "github: delivery: header X-GitHub-Delivery is not printable ASCII".into()
            ))
        );
    }
}

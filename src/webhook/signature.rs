//! Authenticity checks shared by the sources.
//!
//! Three registries authenticate in three different ways (GitHub-style
//! `X-Hub-Signature-256`, Artifactory's bare hex HMAC, Harbor's static
//! `Authorization` value). Keeping them here means there is exactly one
//! place where secrets are compared, and it is the place reviewed for
//! constant-time behaviour. HMAC comes from ring, the one crypto
//! implementation tagbridge uses (TLS included).

use http::HeaderMap;
use ring::hmac;
use subtle::{Choice, ConstantTimeEq};

use super::WebhookError;

/// The header GitHub (and tagbridge's generic CI source) sign with.
pub const HUB_SIGNATURE_256: &str = "X-Hub-Signature-256";

const HUB_PREFIX: &str = "sha256=";

fn hmac_sha256(secret: &[u8], body: &[u8]) -> hmac::Tag {
    // HMAC is defined for keys of every length (long keys are hashed,
    // short ones padded).
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body)
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
    if bool::from(expected.as_ref().ct_eq(claimed.as_slice())) {
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
}

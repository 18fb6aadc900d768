//! Decoding and message helpers shared by the sources.
//!
//! Turning a `serde_json` error into a client-facing message is a
//! disclosure decision (serde quotes offending string values verbatim), and
//! so is quoting any payload value back in an answer: both are made once,
//! here, rather than in seven copies.

use http::HeaderMap;
use serde::de::DeserializeOwned;

use super::WebhookError;

/// Upper bound for any client-facing message built from payload content.
const MAX_MESSAGE: usize = 200;

/// Upper bound for a single payload value (event name, action, …) quoted
/// back in a message or an ignore reason.
const MAX_QUOTED: usize = 64;

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

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
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

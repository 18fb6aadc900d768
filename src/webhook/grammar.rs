//! The input grammar: what a tag, digest, repository, actor and delivery id
//! may look like before tagbridge writes any of them anywhere.
//!
//! Whatever a payload calls a "tag" ends up as a Consul KV value that
//! consul-template renders into env files and job specs. Without a grammar,
//! `1.0\nLD_PRELOAD=/x.so`, `{{ key "x" }}` or `../../x` would be written
//! verbatim. So every value a source extracts is held to the grammar the
//! OCI distribution spec gives for the same thing, and anything else is
//! refused before a single byte is written.
//!
//! The checks are hand-written byte loops: they run on every tag of every
//! push (a Quay push may list thousands), and no regex is compiled per
//! request. They are public so the CLI (`tagbridge deploy`) and config
//! validation (`repository`) can hold their input to the same rules.
//!
//! Every error is one line naming the field, with at most a short, escaped
//! prefix of the offending value: hostile input never comes back whole.

use super::ImagePush;

/// Longest tag the OCI distribution spec allows, in bytes.
pub const MAX_TAG: usize = 128;
/// Longest repository name accepted, in bytes (the spec's practical limit
/// for `<name>`, which several registries enforce).
pub const MAX_REPOSITORY: usize = 255;
/// Longest actor (pusher) name accepted, in bytes. Logins and robot names
/// are far shorter; the bound only keeps history records small.
pub const MAX_ACTOR: usize = 256;
/// Longest delivery id accepted, in bytes. Registries send UUIDs (36).
pub const MAX_DELIVERY: usize = 128;

/// How much of an offending value is quoted back, in escaped characters.
const MAX_ECHO: usize = 40;

/// The tag grammar, as quoted in error messages.
pub const TAG_GRAMMAR: &str = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}";
/// The digest forms accepted, as quoted in error messages.
pub const DIGEST_GRAMMAR: &str = "sha256:<64 lowercase hex> or sha512:<128 lowercase hex>";
/// The repository grammar, as quoted in error messages.
pub const REPOSITORY_GRAMMAR: &str =
    "components [a-z0-9]+((.|_|__|-+)[a-z0-9]+)* joined by /, at most 255 bytes";

/// Check a tag against the OCI distribution spec's
/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
///
/// # Errors
///
/// A one-line reason naming the field `tag` when it does not match
/// (including the empty tag: sources turn empty tags into "ignored"
/// before this is reached).
pub fn check_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    // SECURITY: ASCII-only, no `/`, no whitespace, no `{`: a tag that
    // passes is safe as a KV value, an env-file value, a template string
    // and a path segment, and cannot start an option (`-x`) or a relative
    // path (`.`/`..`).
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("tag {}: not an OCI tag ({TAG_GRAMMAR})", echo(tag)))
    }
}

/// Check a manifest digest: `sha256:` with exactly 64 lowercase hex
/// digits, or `sha512:` with exactly 128.
///
/// # Errors
///
/// A one-line reason naming the field `digest` for any other algorithm,
/// length, case or character.
pub fn check_digest(digest: &str) -> Result<(), String> {
    let ok = match digest.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && is_lower_hex(hex),
        Some(("sha512", hex)) => hex.len() == 128 && is_lower_hex(hex),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "digest {}: not a digest ({DIGEST_GRAMMAR})",
            echo(digest)
        ))
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Check a repository name against the OCI distribution spec's `<name>`
/// grammar: path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by
/// `/`, at most [`MAX_REPOSITORY`] bytes. Case matters here: call
/// [`normalise_repository`] first where mixed case is to be forgiven.
///
/// # Errors
///
/// A one-line reason naming the field `repository`.
pub fn check_repository(repository: &str) -> Result<(), String> {
    // SECURITY: no empty component, no `.`/`..` component, no leading or
    // trailing separator, no `:` or `@`: the name is a plain registry
    // path, never a host:port, a reference or a relative path.
    let ok = !repository.is_empty()
        && repository.len() <= MAX_REPOSITORY
        && repository.split('/').all(is_path_component);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository {}: not an OCI repository name ({REPOSITORY_GRAMMAR})",
            echo(repository)
        ))
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, i.e. runs of
/// lowercase alphanumerics separated by exactly one `.`, one `_`, exactly
/// `__`, or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of alphanumerics (at least one).
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // A separator, which must be followed by another run.
        let sep = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > sep);
    }
}

/// The form repository names are compared and recorded in: ASCII
/// lowercase. GHCR reports owners in their display case (`AcmeCorp`)
/// although the registry path is lowercase, and service matching has
/// always been case-insensitive, so lowercasing names the same repository.
/// Non-ASCII letters are left alone (and then fail [`check_repository`]).
#[must_use]
pub fn normalise_repository(repository: &str) -> String {
    repository.to_ascii_lowercase()
}

/// Check who pushed: at most [`MAX_ACTOR`] bytes, no control or
/// text-direction characters.
///
/// # Errors
///
/// A one-line reason naming the field `actor`.
pub fn check_actor(actor: &str) -> Result<(), String> {
    check_text("actor", actor, MAX_ACTOR)
}

/// Check a delivery id: at most [`MAX_DELIVERY`] bytes, non-empty, no
/// control or text-direction characters.
///
/// # Errors
///
/// A one-line reason naming the field `delivery`.
pub fn check_delivery(delivery: &str) -> Result<(), String> {
    check_text("delivery", delivery, MAX_DELIVERY)
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field}: empty"));
    }
    if value.len() > max {
        return Err(format!("{field} {}: longer than {max} bytes", echo(value)));
    }
    // SECURITY: these values go into history records, log lines and
    // notifications. Control characters could forge log lines or
    // terminal output; bidi overrides and zero-width characters could make
    // a name display as something it is not.
    if value.chars().any(is_unprintable) {
        return Err(format!(
            "{field} {}: contains a control or invisible character",
            echo(value)
        ));
    }
    Ok(())
}

/// Control characters (C0, DEL, C1) and the invisible format characters
/// that reorder or hide text (zero-width, bidi embeddings, overrides and
/// isolates, BOM).
fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}')
}

/// Normalise (lowercase the repository) and check every field of one
/// push.
///
/// # Errors
///
/// The first failing field's one-line reason.
pub fn check_push(push: &mut ImagePush) -> Result<(), String> {
    if push.repository.bytes().any(|b| b.is_ascii_uppercase()) {
        push.repository = normalise_repository(&push.repository);
    }
    check_repository(&push.repository)?;
    check_tag(&push.tag)?;
    if let Some(d) = &push.digest {
        check_digest(d)?;
    }
    if let Some(a) = &push.actor {
        check_actor(a)?;
    }
    if let Some(d) = &push.delivery {
        check_delivery(d)?;
    }
    Ok(())
}

/// A short, escaped, quoted prefix of `value`, safe to put in a one-line
/// message: never a raw newline, quote or control character, never more
/// than about [`MAX_ECHO`] characters of whatever the sender chose.
pub(crate) fn echo(value: &str) -> String {
    let mut out = String::with_capacity(MAX_ECHO + 8);
    out.push('"');
    let mut used = 0;
    let mut cut = false;
    for c in value.chars() {
        let esc = c.escape_debug();
        let n = esc.len();
        if used + n > MAX_ECHO {
            cut = true;
            break;
        }
        used += n;
        out.extend(esc);
    }
    out.push('"');
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        for good in [
            "1",
            "_",
            "1.4.2",
            "v1.4.2-rc.1",
            "release-20261124120000",
            "Latest_Build",
            "a..b",
            "x--",
            "a".repeat(MAX_TAG).as_str(),
        ] {
            assert_eq!(check_tag(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "-rf",
            "1.0\nLD_PRELOAD=/local/x.so",
            "{{ key \"x\" }}",
            "tag with space",
            "../../x",
            "a/b",
            "a:b",
            "a+b",
            "é",
            "a".repeat(MAX_TAG + 1).as_str(),
        ] {
            let e = check_tag(bad).unwrap_err();
            assert!(e.starts_with("tag \""), "{e}");
            assert!(
                e.ends_with(&format!("not an OCI tag ({TAG_GRAMMAR})")),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn digests() {
        let h64 = "0123456789abcdef".repeat(4);
        let h128 = h64.repeat(2);
        assert_eq!(check_digest(&format!("sha256:{h64}")), Ok(()));
        assert_eq!(check_digest(&format!("sha512:{h128}")), Ok(()));
        for bad in [
            format!("sha256:{}", &h64[1..]),
            format!("sha256:{h64}0"),
            format!("sha256:{}", h64.to_ascii_uppercase()),
            format!("sha256:{}g", &h64[1..]),
            format!("sha512:{h64}"),
            format!("sha384:{h64}"),
            format!("md5:{}", &h64[..32]),
            format!("SHA256:{h64}"),
            h64.clone(),
            format!("sha256:{h64}\n"),
            String::new(),
        ] {
            let e = check_digest(&bad).unwrap_err();
            assert!(e.starts_with("digest \""), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn repositories() {
        let long = format!("{}/b", "a".repeat(MAX_REPOSITORY - 2));
        for good in [
            "web",
            "acme/web",
            "acme/repo/image",
            "a0/b-c/d.e/f_g/h__i/j---k",
            "ghcr.io/acme/web",
            long.as_str(),
        ] {
            assert_eq!(check_repository(good), Ok(()), "{good}");
        }
        let too_long = format!("{}/bc", "a".repeat(MAX_REPOSITORY - 2));
        for bad in [
            "",
            "Acme/web",
            "acme//web",
            "/acme/web",
            "acme/web/",
            "acme/../web",
            "..",
            "acme/.web",
            "acme/web.",
            "acme/we..b",
            "acme/we___b",
            "acme/-web",
            "acme/web_",
            "localhost:5000/acme/web",
            "acme/web:1.0",
            "acme/web@sha256:00",
            "acme/w eb",
            "acme/wéb",
            too_long.as_str(),
        ] {
            let e = check_repository(bad).unwrap_err();
            assert!(e.starts_with("repository \""), "{e}");
        }
    }

    #[test]
    fn actors_and_deliveries() {
        assert_eq!(check_actor("robot$acme+ci"), Ok(()));
        assert_eq!(check_actor("gitlab-ci/acme/web#4711"), Ok(()));
        assert_eq!(check_actor("Zoë Müller"), Ok(()));
        assert_eq!(check_actor(&"a".repeat(MAX_ACTOR)), Ok(()));
        assert_eq!(
            check_delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            Ok(())
        );
        assert_eq!(check_delivery(&"d".repeat(MAX_DELIVERY)), Ok(()));
        for (bad, why) in [
            ("a".repeat(MAX_ACTOR + 1), "longer than 256 bytes"),
            ("ci\nroot".into(), "control"),
            ("ci\u{7}".into(), "control"),
            ("ci\u{85}".into(), "control"),
            ("evil\u{202E}gnp.exe".into(), "invisible"),
            ("a\u{200B}b".into(), "invisible"),
        ] {
            let e = check_actor(&bad).unwrap_err();
            assert!(e.starts_with("actor "), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(!e.contains(['\n', '\u{202E}', '\u{200B}']), "{e}");
        }
        let e = check_delivery(&"d".repeat(MAX_DELIVERY + 1)).unwrap_err();
        assert!(e.starts_with("delivery ") && e.contains("128"), "{e}");
        let e = check_delivery("id\twith tab").unwrap_err();
        assert!(e.starts_with("delivery "), "{e}");
        assert_eq!(check_delivery("").unwrap_err(), "delivery: empty");
    }

    #[test]
    fn echo_is_short_escaped_and_one_line() {
        assert_eq!(echo("1.0"), "\"1.0\"");
        assert_eq!(echo("a\nb\"c"), r#""a\nb\"c""#);
        let long = echo(&"x".repeat(10_000));
        assert_eq!(long, format!("\"{}\"…", "x".repeat(MAX_ECHO)));
        // Escapes count towards the bound, so a value of escapes cannot
        // blow it up either.
        let nasty = echo(&"\u{202E}".repeat(1000));
        assert!(nasty.len() < MAX_ECHO + 8, "{nasty}");
        assert!(!nasty.contains('\u{202E}'));
    }

    #[test]
    fn check_push_lowercases_the_repository_only() {
        let mut p = ImagePush {
            repository: "AcmeCorp/Web".into(),
            tag: "Release-1".into(),
            digest: None,
            actor: Some("AcmeBot".into()),
            delivery: None,
        };
        assert_eq!(check_push(&mut p), Ok(()));
        assert_eq!(p.repository, "acmecorp/web");
        assert_eq!(p.tag, "Release-1");
        assert_eq!(p.actor.as_deref(), Some("AcmeBot"));
    }
}

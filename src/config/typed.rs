//! Values of the wrong type, each reported once: named by its field and
//! shown as the file wrote it.
//!
//! hcl-rs reads any expression into a string field by rendering it as an
//! interpolation (`listen = 5` arrives as the string `"${5}"`, which no
//! operator wrote), and stops the whole file at the first other value of
//! the wrong type (`history_keep = "a"`) with a message that names no
//! field. This pass reads each attribute on its own against the file's
//! shape ([`RawConfig`]), reports each value of the wrong type and drops
//! it, so the rest of the file is still read and checked, and the checks
//! after it find that field unset (and say nothing more about it: see
//! [`Collector::quiet`]).

use hcl::{Attribute, Block, BlockLabel, Body, Expression, Identifier, Structure};

use super::fields::{nesting_within, Collector, MAX_NESTING};
use super::raw::RawConfig;

/// Longest value shown in a problem; a longer one is cut with `…`.
const SHOWN_MAX: usize = 60;

/// The blocks around an attribute, outermost first: identifier and labels.
type Chain = Vec<(Identifier, Vec<BlockLabel>)>;

/// The file's raw shape, less the values of the wrong type (each reported
/// to `c`).
///
/// # Errors
///
/// What still stops the file as a whole (an unknown field, a block where a
/// value belongs), as hcl-rs says it.
pub(super) fn read(c: &mut Collector, mut body: Body) -> Result<RawConfig, hcl::Error> {
    check_body(c, &mut Vec::new(), &mut body);
    hcl::from_body(body)
}

fn check_body(c: &mut Collector, chain: &mut Chain, body: &mut Body) {
    body.0.retain_mut(|s| match s {
        Structure::Block(b) => {
            chain.push((b.identifier.clone(), b.labels.clone()));
            check_body(c, chain, &mut b.body);
            chain.pop();
            true
        }
        Structure::Attribute(a) => keep(c, chain, a),
    });
}

/// The type a field can take, by a value of it that reads.
fn stand_ins() -> [(Expression, &'static str); 5] {
    [
        (Expression::String(String::new()), "a string"),
        (Expression::Number(0.into()), "a number"),
        (Expression::Bool(false), "true or false"),
        (Expression::Array(Vec::new()), "a list"),
        (Expression::Object(hcl::Object::new()), "a block"),
    ]
}

/// Which of [`stand_ins`]' types a value is (`None`: an expression, such
/// as a variable, that tagbridge does not evaluate).
fn kind(e: &Expression) -> Option<&'static str> {
    match e {
        Expression::String(_) | Expression::TemplateExpr(_) => Some("a string"),
        Expression::Number(_) => Some("a number"),
        Expression::Bool(_) => Some("true or false"),
        Expression::Array(_) => Some("a list"),
        Expression::Object(_) => Some("a block"),
        _ => None,
    }
}

/// Whether the attribute stays: `false` when its value has the wrong type
/// (reported). A list of strings keeps only its strings.
fn keep(c: &mut Collector, chain: &Chain, a: &mut Attribute) -> bool {
    let reads = |expr: Expression| reads_alone(chain, &a.key, expr);
    let (service, field) = name(chain, a.key.as_str());
    let service = service.as_deref();
    if !reads(a.expr.clone()) {
        let Some((_, wanted)) = stand_ins().into_iter().find(|(e, _)| reads(e.clone())) else {
            // No value of any type reads here (an unknown field, say): not
            // a type problem, and the whole file's read reports it.
            return true;
        };
        let shown = shown(&a.expr);
        let problem = match (&a.expr, kind(&a.expr) == Some(wanted)) {
            (Expression::Number(n), true) if n.is_f64() => format!("{shown} is not a whole number"),
            (Expression::Number(_), true) => format!("{shown} is out of range"),
            // The right type with something wrong inside (an object with an
            // unknown field): the whole file's read reports it.
            (_, true) => return true,
            (_, false) => format!("{shown} is not {wanted}"),
        };
        c.add(service, &field, problem);
        c.quiet(service, &field);
        return false;
    }
    // It reads; but a string field reads anything, rendered as `${…}`.
    if matches!(kind(&a.expr), Some("a string")) || matches!(a.expr, Expression::Null) {
        return true;
    }
    if reads(Expression::String(String::new())) {
        c.add(
            service,
            &field,
            format!("{} is not a string", shown(&a.expr)),
        );
        c.quiet(service, &field);
        return false;
    }
    if let Expression::Array(items) = &mut a.expr {
        if reads(Expression::Array(vec![Expression::String(String::new())])) {
            let before = items.len();
            items.retain(|item| {
                let text = matches!(kind(item), Some("a string"));
                if !text {
                    c.add(service, &field, format!("{} is not a string", shown(item)));
                }
                text
            });
            // Emptied here: "is empty" or "names 0 jobs" would only repeat it.
            if items.is_empty() && before > 0 {
                c.quiet(service, &field);
            }
        }
    }
    true
}

/// Whether a file holding only this attribute, in its blocks, reads.
fn reads_alone(chain: &Chain, key: &Identifier, expr: Expression) -> bool {
    let mut body = Body(vec![Structure::Attribute(Attribute::new(
        key.clone(),
        expr,
    ))]);
    for (identifier, labels) in chain.iter().rev() {
        body = Body(vec![Structure::Block(Block {
            identifier: identifier.clone(),
            labels: labels.clone(),
            body,
        })]);
    }
    hcl::from_body::<RawConfig>(body).is_ok()
}

/// The service and field a problem names, as the blocks' own checks name
/// them: `listen`, `tls.cert_file`, `notify.ops.format`, and service
/// `"web"`'s `rollout.job`.
fn name(chain: &Chain, key: &str) -> (Option<String>, String) {
    let mut service = None;
    let mut parts = Vec::new();
    for (i, (identifier, labels)) in chain.iter().enumerate() {
        match labels.as_slice() {
            [label] if i == 0 && identifier.as_str() == "service" => {
                service = Some(label.as_str().to_string());
            }
            _ => {
                parts.push(identifier.as_str());
                parts.extend(labels.iter().map(BlockLabel::as_str));
            }
        }
    }
    parts.push(key);
    (service, parts.join("."))
}

/// A value as the file wrote it (`5`, `"a"`, `var.x`), on one line, cut
/// when long.
fn shown(e: &Expression) -> String {
    use hcl::format::Format as _;
    let mut f = hcl::format::Formatter::builder().compact(true).build_vec();
    let text = e
        .format_string(&mut f)
        .unwrap_or_else(|_| "the value".into());
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(SHOWN_MAX) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// The file's text as its raw shape (each value of the wrong type reported
/// and dropped, see [`read`]), or the one problem that stops
/// everything (too deeply nested, not HCL, an unknown field).
pub(super) fn read_raw(c: &mut Collector, text: &str) -> Option<RawConfig> {
    if let Err(msg) = nesting_within(text, MAX_NESTING) {
        c.add(None, "", msg);
        return None;
    }
    match hcl::parse(text).and_then(|body| read(c, body)) {
        Ok(r) => Some(r),
        Err(e) => {
            let msg = e
                .to_string()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            c.add(None, "", msg);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, Purpose};

    const SHA: &str = "9999999999999999999999999999999999999999999999999999999999999999";

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(Path::new("t.hcl"), text, Purpose::Client, &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn web(extra: &str) -> String {
        format!(
            r#"service "web" {{
                 secret_sha256 = "{SHA}"
                 source = "quay"
                 repository = "acme/web"
                 key = "configs/web/IMAGE_TAG"
                 {extra}
               }}"#
        )
    }

    /// A number in a string field is named as written, once, and the
    /// rest of the file is still checked.
    #[test]
    fn a_number_in_a_string_field_is_shown_as_written() {
        assert_eq!(
            problems("listen = 5"),
            [
                "t.hcl: listen: 5 is not a string",
                "t.hcl: service: at least one service block is required",
            ]
        );
        assert_eq!(
            problems(&web("").replace("\"acme/web\"", "true")),
            [r#"t.hcl: service "web": repository: true is not a string"#]
        );
    }

    /// A wrong type elsewhere names its field and keeps the rest of the
    /// file read (it used to stop everything, naming no field).
    #[test]
    fn a_wrong_type_in_a_block_names_its_field() {
        assert_eq!(
            problems(&format!(
                "listen = \"nope\"\n{}",
                web(r#"history_keep = "a"
                       resolve_digest = "yes"
                       rollout {
                         jobs = ["web"]
                         timeout = 5
                       }"#)
            )),
            [
                r#"t.hcl: service "web": history_keep: "a" is not a number"#,
                r#"t.hcl: service "web": resolve_digest: "yes" is not true or false"#,
                r#"t.hcl: service "web": rollout.timeout: 5 is not a string"#,
                r#"t.hcl: listen: "nope" is not an ip:port address: invalid socket address syntax"#,
            ]
        );
        assert_eq!(
            problems(&format!("max_connections = -1\n{}", web(""))),
            ["t.hcl: max_connections: -1 is out of range"]
        );
        assert_eq!(
            problems(&format!("tls = 5\n{}", web("rollout { jobs = \"web\" }"))),
            [
                "t.hcl: tls: 5 is not a block",
                // Not also "rollout.job: is required (or jobs, ...)".
                r#"t.hcl: service "web": rollout.jobs: "web" is not a list"#,
            ]
        );
    }

    /// A required field of the wrong type is one problem, not also
    /// "is required"; a list keeps its strings.
    #[test]
    fn the_checks_after_say_nothing_more_of_the_field() {
        assert_eq!(
            problems(&web("").replace("\"configs/web/IMAGE_TAG\"", "var.key")),
            [r#"t.hcl: service "web": key: var.key is not a string"#]
        );
        assert_eq!(
            problems(&web(r#"allow_cidrs = [10, "10.0.0.0/8", ["x"]]
                   rollout { jobs = [1] }"#)),
            [
                r#"t.hcl: service "web": allow_cidrs: 10 is not a string"#,
                r#"t.hcl: service "web": allow_cidrs: ["x"] is not a string"#,
                r#"t.hcl: service "web": rollout.jobs: 1 is not a string"#,
            ]
        );
        assert_eq!(
            problems(&format!(
                "notify \"ops\" {{\n url_file = \"/x\"\n format = 1.5\n}}\n{}",
                web("")
            )),
            ["t.hcl: notify.ops.format: 1.5 is not a string"]
        );
    }

    /// What is not a type problem reads as before: one problem, the
    /// whole file's.
    #[test]
    fn unknown_fields_and_null_read_as_before() {
        let p = problems(&format!("lisen = 5\n{}", web("")));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("t.hcl: unknown field `lisen`"), "{p:?}");
        let p = problems(&format!("tls = {{ bogus = 1 }}\n{}", web("")));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("unknown field `bogus`"), "{p:?}");
        assert!(problems(&format!("log_format = null\n{}", web(""))).is_empty());
    }
}

//! The checks every block shares: where problems are collected, and how
//! one field is read (a duration, a number in a range, a word from a
//! closed set, a secret file, an address, a name, a KV key, a network).
//!
//! Each helper reports a bad value as a problem and answers a stand-in
//! (usually the default), so the caller goes on and `check` reports every
//! problem of a file at once.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{DeserializeOwned, IntoDeserializer as _};
use serde::Serialize;

use super::{ConfigError, Problem, Secret};

/// Every problem found so far, each naming the file.
pub(super) struct Collector {
    file: String,
    pub(super) problems: Vec<Problem>,
    /// Choices that load but deserve a word (`check` prints them, `serve`
    /// logs them).
    pub(super) warnings: Vec<Problem>,
    /// Fields already reported for their value's type (service, field).
    quiet: Vec<(Option<String>, String)>,
}

impl Collector {
    pub(super) fn new(file: String) -> Self {
        Collector {
            file,
            problems: Vec::new(),
            warnings: Vec::new(),
            quiet: Vec::new(),
        }
    }

    /// The problems as the error, or the value when there are none.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError(self.problems))
        }
    }

    pub(super) fn add(&mut self, service: Option<&str>, field: &str, message: impl Into<String>) {
        if self.is_quiet(service, field) {
            return;
        }
        let p = self.problem(service, field, message.into());
        self.problems.push(p);
    }

    /// No more problems for this field: its value had the wrong type
    /// (reported) and was dropped, so what the checks would say of it
    /// unset ("is required", "is empty") would only repeat that.
    pub(super) fn quiet(&mut self, service: Option<&str>, field: &str) {
        self.quiet
            .push((service.map(str::to_string), field.to_string()));
    }

    /// Whether this field's value was reported for its type (see
    /// [`Collector::quiet`]).
    pub(super) fn is_quiet(&self, service: Option<&str>, field: &str) -> bool {
        self.quiet
            .iter()
            .any(|(s, f)| s.as_deref() == service && f == field)
    }

    pub(super) fn warn(&mut self, service: Option<&str>, field: &str, message: impl Into<String>) {
        let p = self.problem(service, field, message.into());
        self.warnings.push(p);
    }

    fn problem(&self, service: Option<&str>, field: &str, message: String) -> Problem {
        // One line per problem, even when a parser (regex, HCL) explains
        // itself over several.
        let message = message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        // SECURITY: a problem is printed as one log line; a control
        // character from the file (a lone `\r`, a label with a newline)
        // must not forge a second one.
        let one_line = |s: &str| -> String {
            s.chars()
                .map(|ch| if ch.is_control() { ' ' } else { ch })
                .collect()
        };
        Problem {
            file: self.file.clone(),
            service: service.map(one_line),
            field: one_line(field),
            message: one_line(&message),
        }
    }
}

/// Deepest bracket nesting accepted before the HCL parser sees the text.
/// A tagbridge configuration nests three or four levels.
pub(super) const MAX_NESTING: usize = 20;

/// Refuse text nested deeper than `max` levels of `{`, `[` or `(`
/// (outside double-quoted strings).
///
/// SECURITY: hcl-rs's parser backtracks exponentially on deeply nested,
/// unbalanced brackets: 313 bytes with 43 open braces took 34 s of CPU
/// (found by the `config` fuzz target; about 2.7 times slower per level
/// past 28). `check` and a SIGHUP reload would stall on such a file; this
/// linear pre-check keeps every parse to milliseconds.
pub(super) fn nesting_within(text: &str, max: usize) -> Result<(), String> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (line_no, line) in text.lines().enumerate() {
        for b in line.bytes() {
            match (in_string, escaped, b) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
                (false, _, b'{' | b'[' | b'(') => {
                    depth += 1;
                    if depth > max {
                        return Err(format!(
                            "line {}: brackets nested deeper than {max} levels",
                            line_no + 1
                        ));
                    }
                }
                (false, _, b'}' | b']' | b')') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parse a Go-style duration: `90s`, `15m`, `1h30m`, `500ms`.
///
/// # Errors
///
/// Anything else, with the reason.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration like \"30s\", \"15m\" or \"1h30m\""
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(format!("{s:?}: a unit is required (ms, s, m, h)")),
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (expected ms, s, m, h)"
                ))
            }
        };
        total = total.saturating_add(d);
    }
    Ok(total)
}

pub(super) fn read_secret_file(path: &str) -> Result<Secret, String> {
    use std::io::Read as _;
    // SECURITY: a secret is a few hundred bytes at most. A path to a
    // device (`/dev/zero`) or a FIFO would otherwise grow memory without
    // bound or hang `check` and `serve`.
    const MAX_SECRET_FILE: u64 = 64 * 1024;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{path} is not a regular file"));
    }
    let mut data = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if data.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("{path} is over {MAX_SECRET_FILE} bytes"));
    }
    // Files written by `echo` end with a newline that is not part of the
    // secret.
    let trimmed = data.trim_ascii_end();
    if trimmed.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(Secret::new(trimmed.to_vec()))
}

pub(super) fn normalise_address(addr: &str, https_default: bool) -> Result<String, String> {
    let addr = addr.trim().trim_end_matches('/');
    let with_scheme = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else if addr.contains("://") {
        return Err(format!("{addr:?}: only http:// and https:// are supported"));
    } else if https_default {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let uri: http::Uri = with_scheme
        .parse()
        .map_err(|e| format!("{addr:?} is not an address: {e}"))?;
    if uri.host().is_none() {
        return Err(format!("{addr:?} has no host"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{addr:?}: an address must not have a path"));
    }
    Ok(with_scheme)
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(super) fn valid_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(format!("{key:?} must not start or end with '/'"));
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("{key:?} has an empty, '.' or '..' segment"));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("{key:?} has control characters"));
    }
    Ok(())
}

/// `value` when it is set and inside `range`; otherwise the default, and
/// a problem when it was set outside the range.
pub(super) fn within<T: PartialOrd + Copy + fmt::Display>(
    c: &mut Collector,
    field: &str,
    value: Option<T>,
    range: RangeInclusive<T>,
    default: T,
) -> T {
    match value {
        None => default,
        Some(n) if range.contains(&n) => n,
        Some(n) => {
            c.add(
                None,
                field,
                format!("{n} is not between {} and {}", range.start(), range.end()),
            );
            default
        }
    }
}

/// A count that must be at least 1: `value` or the default. A zero is
/// reported and kept, so the checks that compare against it see what the
/// file said.
pub(super) fn at_least_one<T: PartialEq + Default + Copy>(
    c: &mut Collector,
    field: &str,
    value: Option<T>,
    default: T,
) -> T {
    let n = value.unwrap_or(default);
    if n == T::default() {
        c.add(None, field, "must be at least 1");
    }
    n
}

/// A duration field: its value when it parses and lies inside `range`,
/// otherwise the default (and a problem when it was set). Every duration
/// field has a finite upper bound: a deadline is built from each.
pub(super) fn duration_within(
    c: &mut Collector,
    service: Option<&str>,
    field: &str,
    text: Option<&str>,
    range: RangeInclusive<Duration>,
    default: Duration,
) -> Duration {
    let Some(text) = text else {
        return default;
    };
    let problem = match parse_duration(text) {
        Ok(d) if range.contains(&d) => return d,
        // The smallest unit is 1ms, so a lower bound of 1ms is "not zero".
        Ok(d) if d < *range.start() && *range.start() <= Duration::from_millis(1) => {
            "must be longer than zero".to_string()
        }
        Ok(d) if d < *range.start() => format!("must be at least {}", spell(*range.start())),
        Ok(_) => format!("{text:?} is over the maximum of {}", spell(*range.end())),
        Err(e) => e,
    };
    c.add(service, field, problem);
    default
}

/// A bound in the file's own syntax: `100ms`, `10s`, `15m`, `1h`.
fn spell(d: Duration) -> String {
    let (ms, s) = (d.as_millis(), d.as_secs());
    if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if s % 60 != 0 {
        format!("{s}s")
    } else if s % 3600 != 0 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// One word from a closed set (`log_format`, `format`, `strategy`, an
/// event): the enum's serde spelling (`rename_all`) is the syntax, so the
/// file and anything stored spell a value the same way. Exact spelling
/// only, as before the enums.
///
/// # Errors
///
/// Anything outside `allowed`, with the allowed words
/// (`"x" is not json or pretty`).
pub(super) fn word<T>(allowed: &[T], text: &str) -> Result<T, String>
where
    T: DeserializeOwned + Serialize + PartialEq + Copy,
{
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        text.into_deserializer();
    match T::deserialize(de) {
        Ok(v) if allowed.contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not {}", spelled(allowed))),
    }
}

/// `a or b`, or `one of a, b, c`.
pub(super) fn spelled<T: Serialize>(allowed: &[T]) -> String {
    let names: Vec<String> = allowed
        .iter()
        .map(|v| match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => s,
            _ => String::new(),
        })
        .collect();
    match names.as_slice() {
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", names.join(", ")),
    }
}

/// [`word`] for an optional field: the default when unset, and the default
/// plus a problem (`hint` appended) when it is not one of `allowed`.
pub(super) fn word_or<T>(
    c: &mut Collector,
    service: Option<&str>,
    field: &str,
    text: Option<&str>,
    (allowed, default): (&[T], T),
    hint: &str,
) -> T
where
    T: DeserializeOwned + Serialize + PartialEq + Copy,
{
    match text.map(|t| word(allowed, t)) {
        None => default,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            c.add(service, field, format!("{e}{hint}"));
            default
        }
    }
}

/// A list of CIDR blocks (or single addresses), each bad one reported.
pub(super) fn nets(
    c: &mut Collector,
    service: Option<&str>,
    field: &str,
    list: &[String],
) -> Vec<IpNet> {
    list.iter()
        .filter_map(|n| parse_net(n).map_err(|e| c.add(service, field, e)).ok())
        .collect()
}

pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR block or IP address"))
}

//! Tag policy: which pushed tags a service accepts, and in what order.
//!
//! Registries push far more tags than a service should run (release
//! candidates, signatures, `latest`), and deliver webhooks late or twice.
//! This module decides, from the tag alone and the tag currently in KV,
//! whether a push is a change, a repeat, or something to ignore.
//!
//! The rules, in the order [`TagPolicy::decide`] applies them:
//!
//! 1. An empty tag is filtered: it can only come from a malformed payload.
//! 2. `include` (one regex, unanchored as written — anchor it with `^…$`
//!    if you mean the whole tag) must match, otherwise the tag is filtered.
//! 3. No `exclude` regex may match (e.g. `-rc`, `\.sig$`).
//! 4. With nothing recorded yet, the tag is applied: there is nothing to
//!    be older than.
//! 5. The same tag again is a repeat ([`Decision::Unchanged`]) unless both
//!    digests are known and differ: a re-pushed tag with new content is a
//!    real change and must be rolled out.
//! 6. Otherwise the two tags are compared under the configured [`Order`]:
//!    newer is applied, equal precedence (`v1.2.3` vs `1.2.3`) is
//!    unchanged, and older is reported as [`Decision::Older`] so a late
//!    webhook cannot roll a service back.
//!
//! A push that lists several tags (Quay, Harbor) is not applied tag by
//! tag: [`TagPolicy::best_candidate`] picks the one tag the policy ranks
//! highest, and only that one goes through `decide`. A hostile list of
//! thousands of tags therefore costs one pass over the list and one
//! Consul transaction, and the outcome is the same as applying the list
//! in order would have been for every order but `pushed` (where "the last
//! listed" is the answer in both cases).
//!
//! When the two tags cannot be compared under `semver` or `numeric`, the
//! rule is deliberately simple: if the *new* tag does not parse it is
//! filtered (we would be unable to order anything against it later); if
//! only the *current* one does not parse it is applied, which is how a
//! service recovers from a stray `latest` recorded before the policy was
//! switched on.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use regex::Regex;

/// How two different tags are ordered to tell newer from older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// `v?MAJOR.MINOR.PATCH(-pre)?(+build)?` with semver.org precedence.
    Semver,
    /// The runs of decimal digits in the tag, compared left to right
    /// (`build-9` < `build-10`, `2024.1.15` < `2024.2.1`).
    Numeric,
    /// Plain byte-wise string comparison; right for zero-padded dates or
    /// anything else that sorts as text.
    #[default]
    Lexical,
    /// Delivery order: the last webhook wins. Right for mutable tags or
    /// commit-hash tags that carry no order of their own.
    Pushed,
}

impl Order {
    /// Every order, in the spelling [`FromStr`] accepts.
    pub const ALL: [Order; 4] = [Order::Semver, Order::Numeric, Order::Lexical, Order::Pushed];

    /// The configuration spelling of this order.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Semver => "semver",
            Order::Numeric => "numeric",
            Order::Lexical => "lexical",
            Order::Pushed => "pushed",
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Order {
    type Err = PolicyError;

    /// Parses `semver`, `numeric`, `lexical` or `pushed`.
    ///
    /// # Errors
    ///
    /// [`PolicyError::UnknownOrder`] for anything else; its message lists
    /// the accepted names so a config typo is fixable from the log line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Case and surrounding blanks carry no meaning in a config value, so
        // forgive them rather than fail a deploy over `Semver`.
        let wanted = s.trim();
        Order::ALL
            .into_iter()
            .find(|o| o.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| PolicyError::UnknownOrder(s.to_owned()))
    }
}

/// Why a [`TagPolicy`] (or an [`Order`]) could not be built.
///
/// The regex error is part of the message rather than a `source()`, so a
/// single `{}` shows the whole story and error-chain printers don't repeat it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The `include` regex does not compile.
    #[error("include: invalid regex: {0}")]
    Include(regex::Error),
    /// One of the `exclude` regexes does not compile.
    #[error("exclude {pattern:?}: invalid regex: {error}")]
    Exclude {
        /// The pattern as configured.
        pattern: String,
        /// What the regex compiler said about it.
        error: regex::Error,
    },
    /// The order name is not one of the known ones.
    #[error("unknown tag order {0:?}: expected one of semver, numeric, lexical, pushed")]
    UnknownOrder(String),
}

/// What a pushed tag means for the service, given what is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write the tag: it is new, newer, or the same tag with new content.
    Apply,
    /// The recorded tag already says this (same tag, or equal precedence).
    Unchanged,
    /// The policy does not accept this tag; the text says which rule.
    Filtered(String),
    /// The tag sorts before the recorded one: a late or replayed webhook.
    Older,
}

impl Decision {
    /// A short reason for logs and responses, `None` when the tag is applied.
    #[must_use]
    pub fn reason(&self) -> Option<String> {
        match self {
            Decision::Apply => None,
            Decision::Unchanged => Some("unchanged".to_owned()),
            Decision::Filtered(why) => Some(why.clone()),
            Decision::Older => Some("older than current".to_owned()),
        }
    }
}

/// A compiled tag policy: include/exclude filters plus an [`Order`].
#[derive(Debug, Clone)]
pub struct TagPolicy {
    include: Option<Regex>,
    exclude: Vec<Regex>,
    order: Order,
}

impl TagPolicy {
    /// Compiles the filters once, so deciding a tag never fails.
    ///
    /// `include` is a single regex matched anywhere in the tag (anchor it
    /// yourself); `exclude` regexes are likewise unanchored.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Include`] or [`PolicyError::Exclude`] when a regex
    /// does not compile; the message names the field (and, for `exclude`,
    /// the offending pattern) along with the regex error.
    pub fn new(
        include: Option<&str>,
        exclude: &[String],
        order: Order,
    ) -> Result<Self, PolicyError> {
        let include = include
            .map(Regex::new)
            .transpose()
            .map_err(PolicyError::Include)?;
        let exclude = exclude
            .iter()
            .map(|pattern| {
                Regex::new(pattern).map_err(|error| PolicyError::Exclude {
                    pattern: pattern.clone(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            include,
            exclude,
            order,
        })
    }

    /// The order this policy compares tags by.
    #[must_use]
    pub fn order(&self) -> Order {
        self.order
    }

    /// Decide what a pushed tag means given the tag (and digest) currently recorded.
    ///
    /// See the [module documentation](self) for the rules and their order.
    #[must_use]
    pub fn decide(
        &self,
        tag: &str,
        digest: Option<&str>,
        current_tag: Option<&str>,
        current_digest: Option<&str>,
    ) -> Decision {
        if tag.is_empty() {
            return Decision::Filtered("empty tag".to_owned());
        }
        if let Some(include) = &self.include {
            if !include.is_match(tag) {
                return Decision::Filtered("tag does not match include".to_owned());
            }
        }
        if let Some(excluded) = self.exclude.iter().find(|re| re.is_match(tag)) {
            let pattern = excluded.as_str();
            return Decision::Filtered(format!("tag matches exclude {pattern:?}"));
        }
        let Some(current) = current_tag else {
            // Nothing recorded yet: still refuse a tag the order cannot
            // place (`latest` under semver), or it would become the
            // baseline every later tag is compared with.
            return self.incomparable(tag);
        };
        if tag == current {
            return match (digest, current_digest) {
                (Some(new), Some(old)) if new != old => Decision::Apply,
                _ => Decision::Unchanged,
            };
        }
        match compare(self.order, tag, current) {
            Some(Ordering::Greater) => Decision::Apply,
            Some(Ordering::Equal) => Decision::Unchanged,
            Some(Ordering::Less) => Decision::Older,
            None => self.incomparable(tag),
        }
    }

    /// The index of the tag this policy ranks highest among `tags`, or
    /// `None` when every one is filtered.
    ///
    /// Candidates are the tags `decide` would not filter on their own
    /// (non-empty, matching `include`, matching no `exclude`, and placeable
    /// by the order: semver for `semver`, a digit for `numeric`). Among
    /// them the greatest under the order wins; on a tie (equal precedence,
    /// or the same tag twice) the one listed last wins, so for `pushed`
    /// the answer is the last candidate listed.
    ///
    /// One pass, each tag parsed at most once and compared with the best so
    /// far; nothing is allocated per tag except a semver pre-release list.
    #[must_use]
    pub fn best_candidate<'a, I>(&self, tags: I) -> Option<usize>
    where
        I: IntoIterator<Item = &'a str>,
    {
        // The best so far: its index, the tag, and (under semver) its
        // parsed form, so it is not parsed again for every comparison.
        let mut best: Option<(usize, &'a str, Option<semver::Version>)> = None;
        for (i, tag) in tags.into_iter().enumerate() {
            if !self.admits(tag) {
                continue;
            }
            let parsed = match self.order {
                Order::Semver => match semver(tag) {
                    Some(v) => Some(v),
                    None => continue,
                },
                _ => None,
            };
            let at_least_as_good = match &best {
                None => true,
                Some((_, best_tag, best_parsed)) => match self.order {
                    Order::Pushed => true,
                    Order::Lexical => tag.as_bytes() >= best_tag.as_bytes(),
                    Order::Numeric => {
                        compare_numeric(tag, best_tag).is_some_and(|o| o != Ordering::Less)
                    }
                    Order::Semver => match (&parsed, best_parsed) {
                        (Some(a), Some(b)) => a.cmp_precedence(b) != Ordering::Less,
                        _ => false,
                    },
                },
            };
            if at_least_as_good {
                best = Some((i, tag, parsed));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Whether `decide` would accept `tag` on its own: the filters pass and
    /// the order can place it.
    fn admits(&self, tag: &str) -> bool {
        !tag.is_empty()
            && self.include.as_ref().is_none_or(|re| re.is_match(tag))
            && !self.exclude.iter().any(|re| re.is_match(tag))
            && match self.order {
                Order::Numeric => digit_runs(tag).next().is_some(),
                // Semver is parsed (once) by the caller.
                Order::Semver | Order::Lexical | Order::Pushed => true,
            }
    }

    /// The simple rule for tags the order cannot rank (see module docs):
    /// blame the new tag if it is the one that does not parse.
    fn incomparable(&self, tag: &str) -> Decision {
        match self.order {
            Order::Semver if semver(tag).is_none() => {
                Decision::Filtered("tag is not semver".to_owned())
            }
            Order::Numeric if digit_runs(tag).next().is_none() => {
                Decision::Filtered("tag has no number to order by".to_owned())
            }
            _ => Decision::Apply,
        }
    }
}

/// Compares `a` to `b` under `order`; `None` when either does not parse.
///
/// Lexical and pushed orders always compare (pushed calls everything
/// newer, which makes "last delivery wins" fall out of `decide`).
fn compare(order: Order, a: &str, b: &str) -> Option<Ordering> {
    match order {
        Order::Pushed => Some(Ordering::Greater),
        Order::Lexical => Some(a.as_bytes().cmp(b.as_bytes())),
        Order::Numeric => compare_numeric(a, b),
        Order::Semver => Some(semver(a)?.cmp_precedence(&semver(b)?)),
    }
}

/// The maximal runs of ASCII digits in `s`, left to right.
fn digit_runs(s: &str) -> impl Iterator<Item = &str> {
    // Only ASCII digits: other Unicode digits have no value a registry user
    // would expect, and the byte-wise comparison below relies on ASCII.
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|run| !run.is_empty())
}

/// Numeric order: digit runs compared as numbers, left to right; after an
/// equal prefix, the tag with more runs is newer.
fn compare_numeric(a: &str, b: &str) -> Option<Ordering> {
    let mut left = digit_runs(a).peekable();
    let mut right = digit_runs(b).peekable();
    if left.peek().is_none() || right.peek().is_none() {
        return None;
    }
    loop {
        match (left.next(), right.next()) {
            (Some(x), Some(y)) => match compare_decimal(x, y) {
                Ordering::Equal => {}
                unequal => return Some(unequal),
            },
            (Some(_), None) => return Some(Ordering::Greater),
            (None, Some(_)) => return Some(Ordering::Less),
            (None, None) => return Some(Ordering::Equal),
        }
    }
}

/// Compares two non-empty ASCII digit strings by value, at any length.
///
/// Parsing into an integer would overflow on the 40-digit build numbers some
/// CI systems produce; without leading zeros, a longer number is larger and
/// equal-length numbers order like their text.
fn compare_decimal(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A tag as a semantic version: `v?MAJOR.MINOR.PATCH(-pre)?(+build)?`,
/// strictly per semver.org (the `semver` crate: no leading zeros, no empty
/// identifiers), so a tag accepted here is one every semver tool orders the
/// same way. Precedence ignores build metadata (semver.org §10).
fn semver(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(order: Order) -> TagPolicy {
        TagPolicy::new(None, &[], order).unwrap()
    }

    fn decide(order: Order, tag: &str, current: &str) -> Decision {
        policy(order).decide(tag, None, Some(current), None)
    }

    fn filtered(why: &str) -> Decision {
        Decision::Filtered(why.to_owned())
    }

    // --- Order ---------------------------------------------------------

    #[test]
    fn order_round_trips_through_its_name() {
        for order in Order::ALL {
            assert_eq!(order.as_str().parse::<Order>().unwrap(), order);
            assert_eq!(order.to_string(), order.as_str());
        }
    }

    #[test]
    fn order_parse_forgives_case_and_blanks() {
        assert_eq!(" Semver ".parse::<Order>().unwrap(), Order::Semver);
        assert_eq!("NUMERIC".parse::<Order>().unwrap(), Order::Numeric);
    }

    #[test]
    fn order_parse_error_lists_names() {
        let err = "newest".parse::<Order>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"newest\""), "{msg}");
        for order in Order::ALL {
            assert!(msg.contains(order.as_str()), "{msg}");
        }
    }

    #[test]
    fn order_defaults_to_lexical() {
        assert_eq!(Order::default(), Order::Lexical);
        assert_eq!(policy(Order::Semver).order(), Order::Semver);
    }

    // --- construction --------------------------------------------------

    #[test]
    fn bad_include_names_field() {
        let err = TagPolicy::new(Some("(unclosed"), &[], Order::Lexical).unwrap_err();
        assert!(matches!(err, PolicyError::Include(_)));
        let msg = err.to_string();
        assert!(msg.starts_with("include: invalid regex: "), "{msg}");
        assert!(msg.contains("unclosed"), "{msg}");
    }

    #[test]
    fn bad_exclude_names_field_and_pattern() {
        let exclude = vec!["-rc".to_owned(), "[z-a]".to_owned()];
        let err = TagPolicy::new(None, &exclude, Order::Lexical).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("exclude \"[z-a]\": invalid regex: "),
            "{msg}"
        );
        match err {
            PolicyError::Exclude { pattern, .. } => assert_eq!(pattern, "[z-a]"),
            other => panic!("unexpected {other:?}"),
        }
    }

    // --- Decision ------------------------------------------------------

    #[test]
    fn decision_reasons() {
        assert_eq!(Decision::Apply.reason(), None);
        assert_eq!(Decision::Unchanged.reason().as_deref(), Some("unchanged"));
        assert_eq!(filtered("empty tag").reason().as_deref(), Some("empty tag"));
        assert_eq!(
            Decision::Older.reason().as_deref(),
            Some("older than current")
        );
    }

    // --- filters -------------------------------------------------------

    #[test]
    fn empty_tag_is_filtered_before_anything_else() {
        let p = TagPolicy::new(Some(""), &[], Order::Pushed).unwrap();
        assert_eq!(p.decide("", None, None, None), filtered("empty tag"));
    }

    #[test]
    fn include_is_unanchored_as_written() {
        let p = TagPolicy::new(Some(r"\d+\.\d+"), &[], Order::Lexical).unwrap();
        assert_eq!(
            p.decide("release-1.2-final", None, None, None),
            Decision::Apply
        );
        assert_eq!(
            p.decide("latest", None, None, None),
            filtered("tag does not match include")
        );
    }

    #[test]
    fn include_anchored_by_user() {
        let p = TagPolicy::new(Some(r"^v\d+$"), &[], Order::Lexical).unwrap();
        assert_eq!(p.decide("v12", None, None, None), Decision::Apply);
        assert_eq!(
            p.decide("xv12", None, None, None),
            filtered("tag does not match include")
        );
    }

    #[test]
    fn exclude_any_match_filters_and_names_pattern() {
        let exclude = vec!["-rc".to_owned(), r"\.sig$".to_owned()];
        let p = TagPolicy::new(None, &exclude, Order::Semver).unwrap();
        assert_eq!(
            p.decide("1.2.3-rc.1", None, None, None),
            filtered(r#"tag matches exclude "-rc""#)
        );
        assert_eq!(
            p.decide("sha256-abc.sig", None, None, None),
            filtered(r#"tag matches exclude "\\.sig$""#)
        );
        assert_eq!(p.decide("1.2.3", None, None, None), Decision::Apply);
    }

    #[test]
    fn include_checked_before_exclude() {
        let p = TagPolicy::new(Some("^v"), &["rc".to_owned()], Order::Lexical).unwrap();
        assert_eq!(
            p.decide("rc1", None, None, None),
            filtered("tag does not match include")
        );
    }

    // --- current tag / digest ------------------------------------------

    #[test]
    fn nothing_recorded_applies_what_the_order_can_place() {
        for order in Order::ALL {
            assert_eq!(
                policy(order).decide("v1.2.3", None, None, None),
                Decision::Apply
            );
        }
        assert_eq!(
            policy(Order::Semver).decide("latest", None, None, None),
            Decision::Filtered("tag is not semver".to_owned())
        );
        assert_eq!(
            policy(Order::Numeric).decide("latest", None, None, None),
            Decision::Filtered("tag has no number to order by".to_owned())
        );
        assert_eq!(
            policy(Order::Lexical).decide("latest", None, None, None),
            Decision::Apply
        );
    }

    #[test]
    fn same_tag_is_unchanged_unless_digest_differs() {
        for order in Order::ALL {
            let p = policy(order);
            let d = |new, old| p.decide("1.0.0", new, Some("1.0.0"), old);
            assert_eq!(d(None, None), Decision::Unchanged);
            assert_eq!(d(Some("sha256:a"), None), Decision::Unchanged);
            assert_eq!(d(None, Some("sha256:a")), Decision::Unchanged);
            assert_eq!(d(Some("sha256:a"), Some("sha256:a")), Decision::Unchanged);
            assert_eq!(d(Some("sha256:b"), Some("sha256:a")), Decision::Apply);
        }
    }

    #[test]
    fn repushed_unparsable_tag_with_new_digest_applies() {
        // The tag is already what KV holds; new content must still roll out.
        let p = policy(Order::Semver);
        assert_eq!(
            p.decide("latest", Some("sha256:b"), Some("latest"), Some("sha256:a")),
            Decision::Apply
        );
    }

    // --- pushed / lexical ----------------------------------------------

    #[test]
    fn pushed_applies_any_different_tag() {
        assert_eq!(decide(Order::Pushed, "aaa", "zzz"), Decision::Apply);
        assert_eq!(decide(Order::Pushed, "zzz", "aaa"), Decision::Apply);
        assert_eq!(decide(Order::Pushed, "", "aaa"), filtered("empty tag"));
    }

    #[test]
    fn lexical_is_bytewise() {
        assert_eq!(
            decide(Order::Lexical, "20240102", "20240101"),
            Decision::Apply
        );
        assert_eq!(
            decide(Order::Lexical, "20240101", "20240102"),
            Decision::Older
        );
        // Byte-wise, not numeric: "9" > "10".
        assert_eq!(decide(Order::Lexical, "10", "9"), Decision::Older);
        // Byte-wise, not case-folded: 'B' (0x42) < 'a' (0x61).
        assert_eq!(decide(Order::Lexical, "B", "a"), Decision::Older);
    }

    // --- numeric -------------------------------------------------------

    #[test]
    fn numeric_compares_runs_as_numbers() {
        assert_eq!(
            decide(Order::Numeric, "build-10", "build-9"),
            Decision::Apply
        );
        assert_eq!(
            decide(Order::Numeric, "build-9", "build-10"),
            Decision::Older
        );
        assert_eq!(
            decide(Order::Numeric, "2024.2.1", "2024.1.15"),
            Decision::Apply
        );
        assert_eq!(
            decide(Order::Numeric, "2024.1.15", "2024.2.1"),
            Decision::Older
        );
    }

    #[test]
    fn numeric_ignores_leading_zeros_and_text() {
        assert_eq!(decide(Order::Numeric, "r007", "7"), Decision::Unchanged);
        assert_eq!(decide(Order::Numeric, "a1b2", "x1y2z"), Decision::Unchanged);
        assert_eq!(decide(Order::Numeric, "0010", "9"), Decision::Apply);
        assert_eq!(decide(Order::Numeric, "0", "000"), Decision::Unchanged);
    }

    #[test]
    fn numeric_more_runs_after_equal_prefix_is_newer() {
        assert_eq!(decide(Order::Numeric, "1.2.1", "1.2"), Decision::Apply);
        assert_eq!(decide(Order::Numeric, "1.2", "1.2.0"), Decision::Older);
    }

    #[test]
    fn numeric_handles_40_digit_numbers() {
        let big = "9".repeat(40);
        let bigger = format!("1{}", "0".repeat(40));
        assert_eq!(decide(Order::Numeric, &bigger, &big), Decision::Apply);
        assert_eq!(decide(Order::Numeric, &big, &bigger), Decision::Older);
        let a = format!("build-{}1", "1".repeat(39));
        let b = format!("build-{}2", "1".repeat(39));
        assert_eq!(decide(Order::Numeric, &b, &a), Decision::Apply);
        assert_eq!(
            compare_numeric(&format!("000{big}"), &big),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn numeric_without_digits() {
        assert_eq!(
            decide(Order::Numeric, "latest", "build-3"),
            filtered("tag has no number to order by")
        );
        assert_eq!(
            decide(Order::Numeric, "latest", "stable"),
            filtered("tag has no number to order by")
        );
        assert_eq!(decide(Order::Numeric, "build-3", "latest"), Decision::Apply);
        assert_eq!(compare_numeric("a", "b"), None);
    }

    #[test]
    fn numeric_only_counts_ascii_digits() {
        // Arabic-Indic digits are not numbers to order by.
        assert_eq!(
            decide(Order::Numeric, "\u{0661}\u{0662}", "1"),
            filtered("tag has no number to order by")
        );
    }

    // --- semver --------------------------------------------------------

    #[test]
    fn semver_core_precedence() {
        assert_eq!(decide(Order::Semver, "1.10.0", "1.9.0"), Decision::Apply);
        assert_eq!(decide(Order::Semver, "1.9.0", "1.10.0"), Decision::Older);
        assert_eq!(decide(Order::Semver, "2.0.0", "1.99.99"), Decision::Apply);
        assert_eq!(decide(Order::Semver, "1.2.4", "1.2.3"), Decision::Apply);
    }

    #[test]
    fn semver_v_prefix_and_build_metadata_are_equal() {
        assert_eq!(
            decide(Order::Semver, "v1.2.3", "1.2.3"),
            Decision::Unchanged
        );
        assert_eq!(
            decide(Order::Semver, "1.2.3+build.2", "1.2.3+build.1"),
            Decision::Unchanged
        );
        assert_eq!(decide(Order::Semver, "v1.2.4+x", "1.2.3"), Decision::Apply);
    }

    #[test]
    fn semver_org_prerelease_example_chain() {
        // The precedence chain given verbatim in semver.org §11.4.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
        ];
        for (i, a) in chain.iter().enumerate() {
            for (j, b) in chain.iter().enumerate() {
                assert_eq!(compare(Order::Semver, a, b), Some(i.cmp(&j)), "{a} vs {b}");
            }
        }
        assert_eq!(
            decide(Order::Semver, "1.0.0", "1.0.0-rc.1"),
            Decision::Apply
        );
        assert_eq!(
            decide(Order::Semver, "1.0.0-rc.1", "1.0.0"),
            Decision::Older
        );
    }

    #[test]
    fn semver_prerelease_identifier_rules() {
        let cmp = |a, b| compare(Order::Semver, a, b);
        // Numeric identifiers compare as numbers, not text.
        assert_eq!(cmp("1.0.0-2", "1.0.0-10"), Some(Ordering::Less));
        // Numeric sorts before alphanumeric.
        assert_eq!(cmp("1.0.0-99", "1.0.0-a"), Some(Ordering::Less));
        // Alphanumeric identifiers compare in ASCII order.
        assert_eq!(cmp("1.0.0-Z", "1.0.0-a"), Some(Ordering::Less));
        // Hyphens belong to the identifier, not a separator.
        assert_eq!(cmp("1.0.0-rc-1", "1.0.0-rc"), Some(Ordering::Greater));
    }

    #[test]
    fn semver_huge_numbers_do_not_overflow() {
        let huge = "1".repeat(40);
        // MAJOR.MINOR.PATCH must fit in 64 bits (the `semver` crate's
        // limit); a 40-digit major is no version anyone releases, and is
        // refused rather than misordered.
        let a = format!("{huge}.0.0");
        assert_eq!(
            decide(Order::Semver, &a, "1.0.0"),
            filtered("tag is not semver")
        );
        let max = u64::MAX;
        assert_eq!(
            decide(Order::Semver, &format!("{max}.0.0"), "1.0.0"),
            Decision::Apply
        );
        // Numeric pre-release identifiers have no such limit.
        let c = format!("1.0.0-{huge}");
        let d = format!("1.0.0-{huge}2");
        assert_eq!(decide(Order::Semver, &d, &c), Decision::Apply);
    }

    #[test]
    fn semver_rejects_invalid_grammar() {
        for bad in [
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3-a..b",
            "1.2.3+",
            "1.2.3+a_b",
            "V1.2.3",
            "vv1.2.3",
            "1.2.x",
            "latest",
            " 1.2.3",
        ] {
            assert_eq!(semver(bad), None, "{bad}");
        }
        for good in [
            "0.0.0",
            "1.2.3-0",
            "1.2.3-0a",
            "1.2.3-x.7.z.92",
            "1.2.3+001",
            "1.2.3-a+b-c.d",
        ] {
            assert!(semver(good).is_some(), "{good}");
        }
    }

    #[test]
    fn semver_incomparable_rules() {
        assert_eq!(
            decide(Order::Semver, "latest", "1.2.3"),
            filtered("tag is not semver")
        );
        // Neither parses: the new tag is still the one to blame.
        assert_eq!(
            decide(Order::Semver, "latest", "stable"),
            filtered("tag is not semver")
        );
        // A stray non-semver current tag must not block real releases.
        assert_eq!(decide(Order::Semver, "1.2.3", "latest"), Decision::Apply);
    }

    // --- best_candidate ------------------------------------------------

    fn best<'a>(p: &TagPolicy, tags: &[&'a str]) -> Option<&'a str> {
        p.best_candidate(tags.iter().copied()).map(|i| tags[i])
    }

    #[test]
    fn best_candidate_per_order() {
        let tags = [
            "1.2.0",
            "1.10.0",
            "latest",
            "1.9.9",
            "v1.10.0",
            "1.3.0-rc.1",
        ];
        // semver: `1.10.0` and `v1.10.0` tie; the later one wins.
        assert_eq!(best(&policy(Order::Semver), &tags), Some("v1.10.0"));
        // numeric: runs (1,10,0) tie between both spellings, again the last.
        assert_eq!(best(&policy(Order::Numeric), &tags), Some("v1.10.0"));
        // lexical: byte-wise, lowercase letters sort after digits.
        assert_eq!(best(&policy(Order::Lexical), &tags), Some("v1.10.0"));
        // pushed: simply the last one listed.
        assert_eq!(best(&policy(Order::Pushed), &tags), Some("1.3.0-rc.1"));
    }

    #[test]
    fn best_candidate_skips_what_decide_would_filter() {
        let p = TagPolicy::new(Some(r"^\d"), &["-rc".to_owned()], Order::Semver).unwrap();
        // `9.0.0-rc.1` is excluded, `v9.0.0` fails include, `latest` is
        // not semver, `` is empty: the best left is 2.0.0.
        let tags = ["1.0.0", "9.0.0-rc.1", "v9.0.0", "2.0.0", "latest", ""];
        assert_eq!(best(&p, &tags), Some("2.0.0"));
        assert_eq!(p.decide("2.0.0", None, None, None), Decision::Apply);
        let p = TagPolicy::new(None, &["^latest$".to_owned()], Order::Pushed).unwrap();
        assert_eq!(best(&p, &["1", "2", "latest", ""]), Some("2"));
        let p = policy(Order::Numeric);
        assert_eq!(best(&p, &["build-3", "latest", "stable"]), Some("build-3"));
    }

    #[test]
    fn best_candidate_none_when_all_filtered_or_empty() {
        assert_eq!(policy(Order::Semver).best_candidate([]), None);
        assert_eq!(
            policy(Order::Semver).best_candidate(["latest", "stable", ""]),
            None
        );
        assert_eq!(policy(Order::Numeric).best_candidate(["latest"]), None);
        assert_eq!(policy(Order::Pushed).best_candidate([""]), None);
    }

    #[test]
    fn best_candidate_ties_go_to_the_last_listed() {
        for order in Order::ALL {
            assert_eq!(
                policy(order).best_candidate(["1.0.0", "0.1.0", "1.0.0"]),
                Some(2),
                "{order}"
            );
        }
        assert_eq!(
            policy(Order::Semver).best_candidate(["1.0.0+a", "1.0.0+b", "0.9.0"]),
            Some(1)
        );
    }

    #[test]
    fn best_candidate_over_20_000_tags() {
        // Numbers in a scrambled order, so the best is neither first nor
        // last, plus noise every order refuses or ranks low.
        let tags: Vec<String> = (0..20_000u64)
            .map(|i| match i % 4 {
                0 => format!("{}.{}.{}", (i * 7919) % 20_000 / 1000, i % 10, i % 7),
                1 => format!("build-{}", (i * 7919) % 20_000),
                2 => "latest".to_owned(),
                _ => format!("{}.0.0-rc.{i}", (i * 7919) % 20_000 / 1000),
            })
            .collect();
        let refs: Vec<&str> = tags.iter().map(String::as_str).collect();

        // Reference answers by brute force over the same candidates.
        let numeric_max = refs
            .iter()
            .filter(|t| t.starts_with("build-"))
            .max_by(|a, b| compare_numeric(a, b).unwrap())
            .unwrap();
        let p = TagPolicy::new(Some("^build-"), &[], Order::Numeric).unwrap();
        assert_eq!(best(&p, &refs), Some(*numeric_max));
        assert_eq!(*numeric_max, "build-19999");

        let p = TagPolicy::new(None, &["-rc".to_owned()], Order::Semver).unwrap();
        let semver_max = refs
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.contains("-rc"))
            .filter_map(|(i, t)| semver(t).map(|v| (v, i)))
            .max_by(|a, b| a.0.cmp_precedence(&b.0).then(a.1.cmp(&b.1)))
            .unwrap()
            .1;
        assert_eq!(p.best_candidate(refs.iter().copied()), Some(semver_max));

        assert_eq!(
            policy(Order::Pushed).best_candidate(refs.iter().copied()),
            Some(19_999)
        );
        let lexical_max = refs.iter().max().unwrap();
        assert_eq!(best(&policy(Order::Lexical), &refs), Some(*lexical_max));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The pick is never beaten by another candidate, and nothing after
        /// it ties with it.
        #[test]
        fn best_candidate_is_a_maximum(
            order in any_order(),
            tags in prop::collection::vec("[v0-9.a-c-]{0,8}", 0..12),
        ) {
            let p = policy(order);
            let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
            match p.best_candidate(refs.iter().copied()) {
                None => {
                    for t in &refs {
                        prop_assert!(matches!(p.decide(t, None, None, None), Decision::Filtered(_)), "{}", t);
                    }
                }
                Some(i) => {
                    prop_assert_eq!(p.decide(refs[i], None, None, None), Decision::Apply);
                    for (j, t) in refs.iter().enumerate() {
                        if j == i || matches!(p.decide(t, None, None, None), Decision::Filtered(_)) {
                            continue;
                        }
                        let d = p.decide(t, None, Some(refs[i]), None);
                        if order == Order::Pushed {
                            prop_assert!(j < i, "{} listed after the pick {}", t, refs[i]);
                        } else if j > i {
                            prop_assert!(d == Decision::Older, "{} after {} is {:?}", t, refs[i], d);
                        } else {
                            prop_assert!(d != Decision::Apply, "{} beats {}", t, refs[i]);
                        }
                    }
                }
            }
        }
    }

    // --- properties ----------------------------------------------------

    /// Tags built from a small alphabet so pairs and triples often tie or
    /// share prefixes, where ordering bugs live.
    fn numeric_tag() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c.-]{0,2}([0-2]{1,2}[a-c.-]{1,2}){0,3}[0-2]{0,2}",
            "[a-c]{0,1}[0-9]{1,45}(\\.[0-9]{1,42})?",
        ]
    }

    fn semver_tag() -> impl Strategy<Value = String> {
        let number = prop::sample::select(vec!["0", "1", "2", "10", "18446744073709551615"]);
        let ident = prop::sample::select(vec![
            "0", "1", "2", "10", "alpha", "beta", "rc", "a-b", "0a",
        ]);
        (
            any::<bool>(),
            number.clone(),
            number.clone(),
            number,
            prop::collection::vec(ident, 0..3),
            prop::option::of(prop::sample::select(vec!["b1", "001", "x.y"])),
        )
            .prop_map(|(v, major, minor, patch, pre, build)| {
                let mut tag = format!("{}{major}.{minor}.{patch}", if v { "v" } else { "" });
                if !pre.is_empty() {
                    tag.push('-');
                    tag.push_str(&pre.join("."));
                }
                if let Some(build) = build {
                    tag.push('+');
                    tag.push_str(build);
                }
                tag
            })
    }

    fn any_order() -> impl Strategy<Value = Order> {
        prop::sample::select(Order::ALL.to_vec())
    }

    fn check_total_order(order: Order, a: &str, b: &str, c: &str) -> Result<(), TestCaseError> {
        let ab = compare(order, a, b).expect("generated tags parse");
        let ba = compare(order, b, a).expect("generated tags parse");
        prop_assert_eq!(ab, ba.reverse(), "antisymmetry {} {}", a, b);
        prop_assert_eq!(compare(order, a, a), Some(Ordering::Equal));
        let bc = compare(order, b, c).unwrap();
        let ac = compare(order, a, c).unwrap();
        if ab != Ordering::Greater && bc != Ordering::Greater {
            prop_assert_ne!(ac, Ordering::Greater, "transitivity {} {} {}", a, b, c);
        }
        if ab == Ordering::Equal && bc == Ordering::Equal {
            prop_assert_eq!(ac, Ordering::Equal, "equality {} {} {}", a, b, c);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn numeric_is_a_total_order(
            a in numeric_tag().prop_filter("has digits", |t| t.bytes().any(|b| b.is_ascii_digit())),
            b in numeric_tag().prop_filter("has digits", |t| t.bytes().any(|b| b.is_ascii_digit())),
            c in numeric_tag().prop_filter("has digits", |t| t.bytes().any(|b| b.is_ascii_digit())),
        ) {
            check_total_order(Order::Numeric, &a, &b, &c)?;
        }

        #[test]
        fn semver_is_a_total_order(a in semver_tag(), b in semver_tag(), c in semver_tag()) {
            check_total_order(Order::Semver, &a, &b, &c)?;
        }

        #[test]
        fn numeric_agrees_with_integers(x in any::<u128>(), y in any::<u128>(), zeros in 0usize..5) {
            let a = format!("{}{x}", "0".repeat(zeros));
            prop_assert_eq!(compare_numeric(&a, &y.to_string()), Some(x.cmp(&y)));
        }

        #[test]
        fn decide_never_panics(
            order in any_order(),
            tag in any::<String>(),
            digest in any::<Option<String>>(),
            current in any::<Option<String>>(),
            current_digest in any::<Option<String>>(),
        ) {
            let p = TagPolicy::new(Some("."), &["\\.sig$".to_owned()], order).unwrap();
            let decision = p.decide(&tag, digest.as_deref(), current.as_deref(), current_digest.as_deref());
            prop_assert_eq!(decision.reason().is_none(), decision == Decision::Apply);
        }

        #[test]
        fn decide_never_panics_on_tag_like_strings(
            order in any_order(),
            tag in "[v0-9.+a-z-]{0,20}",
            current in "[v0-9.+a-z-]{0,20}",
        ) {
            let _ = policy(order).decide(&tag, None, Some(&current), None);
        }
    }
}

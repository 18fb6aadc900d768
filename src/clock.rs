//! The project's one clock: timestamps as history, records and notices
//! show them.
//!
//! Every record tagbridge writes carries an RFC 3339 UTC time to the
//! second (`2026-11-25T09:34:32Z`), so operators can sort and diff them as
//! text. Calendar arithmetic comes from the `time` crate.
//!
//! Deadlines are made here too ([`after`], [`deadline_in`]): an instant
//! plus a duration that cannot panic.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Where a deadline lands when `at + d` does not fit an `Instant`: about
/// 30 years on, as tokio's own `sleep` does for an over-long duration.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + d`, or a far deadline when the sum overflows.
// `Instant + Duration` panics on overflow. Configured durations are
// bounded by `check`, but a deadline is also built from a client's
// `?wait`, sums and products of durations, and `Duration::MAX` in
// tests; every deadline goes through here so none of them can panic.
#[must_use]
pub fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// `d` from now, as [`after`] (never panics).
#[must_use]
pub fn deadline_in(d: Duration) -> Instant {
    after(Instant::now(), d)
}

/// The current time as an RFC 3339 UTC timestamp, to the second.
#[must_use]
pub fn now_rfc3339() -> String {
    format(OffsetDateTime::now_utc())
}

/// `at` as an RFC 3339 UTC timestamp, to the second.
#[must_use]
pub fn format(at: OffsetDateTime) -> String {
    let at = at.replace_nanosecond(0).unwrap_or(at);
    // Rfc3339 formats every date in years 0000–9999 (all `time` holds by
    // default), so this cannot fail in practice; an empty string is a
    // safer answer than a panic in a record write.
    at.format(&Rfc3339).unwrap_or_default()
}

/// Unix seconds as an RFC 3339 UTC timestamp; `None` outside the years
/// 0000–9999.
#[must_use]
pub fn format_unix(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs).ok().map(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(format_unix(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_795_599_272).unwrap(), "2026-11-25T09:34:32Z");
        assert_eq!(format_unix(-1).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(
            format_unix(253_402_300_799).unwrap(),
            "9999-12-31T23:59:59Z"
        );
        assert_eq!(format_unix(i64::MAX), None);
    }

    #[test]
    fn deadlines_do_not_panic_on_huge_durations() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = after(now, Duration::MAX);
        assert!(far >= now + FAR, "{far:?}");
        assert!(deadline_in(Duration::MAX) > now);
        assert!(after(far, Duration::MAX) >= far);
    }

    #[test]
    fn now_is_plausible() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.as_str() > "2024-01-01T00:00:00Z", "{now}");
    }
}

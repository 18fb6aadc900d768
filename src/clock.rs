//! The project's one clock: timestamps as history, records and notices
//! show them.
//!
//! Every record tagbridge writes carries an RFC 3339 UTC time to the
//! second (`2026-11-25T09:34:32Z`), so operators can sort and diff them as
//! text. Calendar arithmetic comes from the `time` crate.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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
    fn now_is_plausible() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.as_str() > "2024-01-01T00:00:00Z", "{now}");
    }
}

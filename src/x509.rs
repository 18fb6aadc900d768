//! Just enough X.509 to read a certificate's expiry.
//!
//! tagbridge exports the serving certificate's `notAfter` as a Prometheus
//! gauge so an alert fires before TLS breaks. That is one field at a fixed
//! place in the DER, so instead of pulling in an X.509/ASN.1 parser (and its
//! dependency tree and advisories) we walk the few TLVs in front of it.
//! The walker treats its input as hostile: every length is checked against
//! what is actually there, and anything unexpected yields `None` rather
//! than a panic or a guess.
//!
//! Calendar arithmetic comes from the `time` crate.

use time::{Date, Month, PrimitiveDateTime, Time};

const TAG_INTEGER: u8 = 0x02;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT`, constructed, context-specific: the optional version.
const TAG_VERSION: u8 = 0xA0;

/// The `notAfter` of a DER-encoded X.509 certificate, as unix seconds.
///
/// Returns `None` for anything that is not a well-formed certificate up to
/// and including the validity field (truncated, garbage, indefinite
/// lengths, impossible dates, trailing bytes after the certificate). Fields
/// after `validity` and the signature are not examined: this reads an
/// expiry for monitoring, it does not validate anything.
#[must_use]
pub fn not_after_unix(cert_der: &[u8]) -> Option<i64> {
    let mut outer = Der::new(cert_der);
    let certificate = outer.expect(TAG_SEQUENCE)?;
    // A DER certificate is exactly one SEQUENCE; bytes after it mean we were
    // handed something else (say, a chain or a mangled buffer).
    if !outer.is_empty() {
        return None;
    }
    let mut tbs = Der::new(Der::new(certificate).expect(TAG_SEQUENCE)?);
    if tbs.peek_tag() == Some(TAG_VERSION) {
        tbs.expect(TAG_VERSION)?;
    }
    tbs.expect(TAG_INTEGER)?; // serialNumber
    tbs.expect(TAG_SEQUENCE)?; // signature AlgorithmIdentifier
    tbs.expect(TAG_SEQUENCE)?; // issuer Name
    let mut validity = Der::new(tbs.expect(TAG_SEQUENCE)?);
    let (tag, _) = validity.next()?; // notBefore
    if tag != TAG_UTC_TIME && tag != TAG_GENERALIZED_TIME {
        return None;
    }
    let (tag, not_after) = validity.next()?;
    parse_time(tag, not_after)
}

/// A cursor over a run of DER TLVs.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element's contents if its tag is `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (found, contents) = self.next()?;
        (found == tag).then_some(contents)
    }

    /// Reads one tag-length-value, returning the tag and the contents.
    ///
    /// Only consumes input on success, and only what the length says is
    /// really there, so a lying length can never reach past the buffer.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        // Multi-byte (high-number) tags never occur on the path to validity;
        // meeting one means this is not a certificate.
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // 0x80 is BER's indefinite length, which DER forbids; more than
            // four length octets would describe a certificate over 4 GiB.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (octets, after) = rest.split_at_checked(count)?;
            rest = after;
            let len = octets
                .iter()
                .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            usize::try_from(len).ok()?
        };
        let (contents, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some((tag, contents))
    }
}

/// Parses an X.509 `Time` as RFC 5280 §4.1.2.5 requires it to be encoded:
/// UTC (`Z`), with seconds, without fractions.
fn parse_time(tag: u8, contents: &[u8]) -> Option<i64> {
    let (year, rest) = match tag {
        TAG_UTC_TIME if contents.len() == 13 => {
            let yy = digits(&contents[..2])?;
            // RFC 5280: UTCTime years 50–99 are 19xx, 00–49 are 20xx.
            let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            (year, &contents[2..])
        }
        TAG_GENERALIZED_TIME if contents.len() == 15 => (digits(&contents[..4])?, &contents[4..]),
        _ => return None,
    };
    // `rest` is exactly MMDDHHMMSSZ here, whichever form we came from.
    if rest[10] != b'Z' {
        return None;
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    // Second 60 is a legal leap second; unix time has no slot for it, so it
    // lands on the next minute's :00, which is what a POSIX clock shows.
    let leap = i64::from(second == 60);
    let date = Date::from_calendar_date(
        i32::try_from(year).ok()?,
        Month::try_from(u8::try_from(month).ok()?).ok()?,
        u8::try_from(day).ok()?,
    )
    .ok()?;
    let time = Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second - leap).ok()?,
    )
    .ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp()
            + leap,
    )
}

/// The value of a short run of ASCII digits (at most four, so no overflow).
fn digits(bytes: &[u8]) -> Option<i64> {
    bytes.iter().try_fold(0i64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    // --- rcgen certificates ----------------------------------------------

    /// A self-signed certificate expiring `extra` after midnight UTC of the
    /// given date (rcgen takes a `time::OffsetDateTime`, which we can only
    /// reach through its own helper, hence the std `Duration` offset).
    fn rcgen_cert(year: i32, month: u8, day: u8, extra: Duration) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["tagbridge.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(year, month, day) + extra;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn rcgen_utc_time() {
        let der = rcgen_cert(2031, 5, 17, Duration::ZERO);
        assert_eq!(not_after_unix(&der), Some(1_936_742_400));
        assert_eq!(
            crate::clock::format_unix(1_936_742_400).unwrap(),
            "2031-05-17T00:00:00Z"
        );
    }

    #[test]
    fn rcgen_time_of_day() {
        let der = rcgen_cert(2026, 11, 25, Duration::from_secs(9 * 3600 + 34 * 60 + 32));
        assert_eq!(not_after_unix(&der), Some(1_795_599_272));
    }

    #[test]
    fn rcgen_generalized_time_from_2050() {
        let der = rcgen_cert(2051, 1, 2, Duration::from_secs(3 * 3600 + 4 * 60 + 5));
        // RFC 5280 makes rcgen switch encodings at 2050; prove we saw it.
        let validity_has_generalized = der.windows(2).any(|w| w == [TAG_GENERALIZED_TIME, 15]);
        assert!(validity_has_generalized);
        assert_eq!(not_after_unix(&der), Some(2_556_241_445));
    }

    #[test]
    fn rcgen_every_truncation_is_none() {
        let der = rcgen_cert(2031, 5, 17, Duration::ZERO);
        // The outer length is long-form for any real certificate.
        assert_eq!(der[1] & 0x80, 0x80);
        for len in 0..der.len() {
            assert_eq!(not_after_unix(&der[..len]), None, "truncated to {len}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(not_after_unix(&trailing), None);
    }

    // --- hand-built certificates -----------------------------------------

    /// DER tag-length-value with the shortest length encoding.
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else {
            let bytes = u32::try_from(len).unwrap().to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            out.push(0x80 | u8::try_from(4 - skip).unwrap());
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(contents);
        out
    }

    /// A certificate skeleton: only what precedes `notAfter` is realistic.
    fn cert(version: bool, issuer_padding: usize, not_before: &[u8], not_after: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(tlv(TAG_VERSION, &tlv(TAG_INTEGER, &[2])));
        }
        tbs.extend(tlv(TAG_INTEGER, &[0x01, 0x23]));
        tbs.extend(tlv(
            TAG_SEQUENCE,
            &tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
        ));
        tbs.extend(tlv(TAG_SEQUENCE, &tlv(0x0c, &vec![b'x'; issuer_padding])));
        tbs.extend(tlv(TAG_SEQUENCE, &[not_before, not_after].concat()));
        tbs.extend(tlv(TAG_SEQUENCE, &[])); // subject
        let mut body = tlv(TAG_SEQUENCE, &tbs);
        body.extend(tlv(TAG_SEQUENCE, &tlv(0x06, &[0x2a, 0x03])));
        body.extend(tlv(0x03, &[0, 1, 2, 3]));
        tlv(TAG_SEQUENCE, &body)
    }

    fn utc(s: &str) -> Vec<u8> {
        tlv(TAG_UTC_TIME, s.as_bytes())
    }

    fn generalized(s: &str) -> Vec<u8> {
        tlv(TAG_GENERALIZED_TIME, s.as_bytes())
    }

    fn not_after_of(not_after: &[u8]) -> Option<i64> {
        not_after_unix(&cert(true, 4, &utc("240101000000Z"), not_after))
    }

    #[test]
    fn utc_time_century_pivot() {
        assert_eq!(not_after_of(&utc("500101000000Z")), Some(-631_152_000));
        assert_eq!(not_after_of(&utc("491231235959Z")), Some(2_524_607_999));
        assert_eq!(not_after_of(&utc("000229000000Z")), Some(951_782_400));
    }

    #[test]
    fn generalized_time_any_year() {
        assert_eq!(
            not_after_of(&generalized("99991231235959Z")),
            Some(253_402_300_799)
        );
        assert_eq!(not_after_of(&generalized("19700101000000Z")), Some(0));
        assert_eq!(
            not_after_of(&generalized("20000229000000Z")),
            Some(951_782_400)
        );
    }

    #[test]
    fn version_is_optional() {
        let v1 = cert(false, 4, &utc("240101000000Z"), &utc("310517000000Z"));
        assert_eq!(not_after_unix(&v1), Some(1_936_742_400));
    }

    #[test]
    fn long_form_lengths() {
        for padding in [127, 128, 255, 256, 70_000] {
            let der = cert(
                true,
                padding,
                &generalized("20240101000000Z"),
                &utc("310517000000Z"),
            );
            assert_eq!(
                not_after_unix(&der),
                Some(1_936_742_400),
                "padding {padding}"
            );
        }
        // Non-minimal length octets are not DER, but reading an expiry
        // gains nothing from rejecting them.
        let short = cert(true, 4, &utc("240101000000Z"), &utc("310517000000Z"));
        assert!(short[1] < 0x80);
        let padded = [&[TAG_SEQUENCE, 0x82, 0x00][..], &short[1..]].concat();
        assert_eq!(not_after_unix(&padded), Some(1_936_742_400));
    }

    #[test]
    fn rejects_malformed_times() {
        for bad in [
            utc("3105170000Z"),               // no seconds
            utc("310517000000"),              // no Z
            utc("310517000000+0100"),         // offset instead of Z
            utc("311317000000Z"),             // month 13
            utc("310017000000Z"),             // month 0
            utc("310230000000Z"),             // 30 February
            utc("310229000000Z"),             // 29 February, not a leap year
            utc("310517240000Z"),             // hour 24
            utc("310517006000Z"),             // minute 60
            utc("310517000061Z"),             // second 61
            utc("31O517000000Z"),             // letter O
            generalized("20310517000000.5Z"), // fractions
            generalized("310517000000Z"),     // UTCTime body under GeneralizedTime tag
            utc("20310517000000Z"),           // the reverse
            tlv(0x13, b"310517000000Z"),      // PrintableString
        ] {
            assert_eq!(not_after_of(&bad), None, "{bad:?}");
        }
        assert_eq!(not_after_of(&utc("320229000000Z")), Some(1_961_625_600));
        assert_eq!(not_after_of(&utc("310517235960Z")), Some(1_936_828_800));
    }

    #[test]
    fn rejects_bad_not_before() {
        let der = cert(true, 4, &tlv(TAG_INTEGER, &[1]), &utc("310517000000Z"));
        assert_eq!(not_after_unix(&der), None);
    }

    #[test]
    fn rejects_garbage() {
        for garbage in [
            &b""[..],
            &[0x30],
            &[0x30, 0x00],
            &[0x30, 0x80, 0x00, 0x00],             // indefinite length
            &[0x30, 0x85, 1, 0, 0, 0, 0],          // five length octets
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], // 4 GiB claimed, none present
            &[0x3f, 0x01, 0x00, 0x00],             // high-number tag
            b"-----BEGIN CERTIFICATE-----",
        ] {
            assert_eq!(not_after_unix(garbage), None, "{garbage:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = not_after_unix(&bytes);
        }

        #[test]
        fn mutated_certificates_never_panic(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut der = cert(true, 200, &utc("240101000000Z"), &generalized("20510102030405Z"));
            let i = at.index(der.len());
            der[i] = byte;
            let _ = not_after_unix(&der);
            let _ = not_after_unix(&der[..cut.index(der.len())]);
        }

        #[test]
        fn format_then_parse_round_trip(secs in -62_167_219_200i64..=253_402_300_799) {
            // Years 0000–9999: exactly what GeneralizedTime can carry.
            let text = crate::clock::format_unix(secs).unwrap();
            let compact: String = text.chars().filter(char::is_ascii_digit).collect();
            let der = generalized(&format!("{compact}Z"));
            prop_assert_eq!(not_after_of(&der), Some(secs), "{}", text);
        }
    }
}

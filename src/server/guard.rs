//! Who may knock: secret-path matching, client addresses and the limit on
//! failed attempts.
//!
//! The secret in the URL is the only thing that authenticates most
//! registries, so it is matched without leaking anything through timing,
//! and an address that keeps guessing is slowed down. The slowing must
//! never lock a registry out: Docker Hub, GitHub and Quay deliver from
//! shared address pools, so anyone else in that pool could otherwise get
//! a victim's deliveries refused by failing on purpose.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus_client::metrics::gauge::Gauge;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ServiceConfig;

/// Find the service whose `secret_sha256` is the hash of `presented`.
///
/// SECURITY: the presented secret is hashed (so its length and content do
/// not shape the comparison) and compared against every service in
/// constant time, without an early exit, so the answer time does not tell
/// how many services exist or how close a guess was.
pub fn match_secret(services: &[ServiceConfig], presented: &[u8]) -> Option<usize> {
    let digest = ring::digest::digest(&ring::digest::SHA256, presented);
    let hash: &[u8] = digest.as_ref();
    let mut found: u64 = u64::MAX;
    for (i, svc) in services.iter().enumerate() {
        let eq = hash.ct_eq(&svc.secret_sha256);
        found = u64::conditional_select(&found, &(i as u64), eq);
    }
    (found != u64::MAX).then_some(found as usize)
}

/// The address a request comes from.
///
/// `xff` is every `X-Forwarded-For` header line in the order received,
/// read as one comma list (RFC 7239 §7.1 / RFC 9110 §5.3: repeated fields
/// are one list). HAProxy's `option forwardfor` and many others *add* a
/// line rather than extend the client's, so reading only the first line
/// would let the client choose its address.
///
/// SECURITY: `X-Forwarded-For` is believed only when the TCP peer is a
/// configured trusted proxy, and then only its right-most entry that is
/// not itself a trusted proxy: entries to the left are whatever the client
/// wrote. A garbled entry (not an IP address, not UTF-8, empty) stops the
/// walk: nothing left of it is believed.
pub fn client_ip<'a>(
    peer: SocketAddr,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut last = peer_ip;
    for line in xff.rev() {
        for part in line.rsplit(|b| *b == b',') {
            let parsed = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            let Some(ip) = parsed else { return last };
            let ip = canonical(ip);
            last = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    last
}

/// `::ffff:1.2.3.4` (a dual-stack listener) is `1.2.3.4` for CIDR checks.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address as the per-address limits see it: an IPv4 address, or an
/// IPv6 /64.
///
/// SECURITY: one IPv6 host usually holds a whole /64 and can pick a new
/// address from it for every request, so per-address state keyed by the
/// full address would be no limit at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey(IpAddr);

impl AddrKey {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let masked = u128::from(v6) & !((1u128 << 64) - 1);
                AddrKey(IpAddr::V6(Ipv6Addr::from(masked)))
            }
            v4 => AddrKey(v4),
        }
    }
}

impl fmt::Display for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// One token bucket: `burst` failures at once, refilled at `burst` per
/// minute.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant, burst: f64) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, burst: f64) {
        let per_sec = burst / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        self.at = now;
    }

    /// Take a token, or say how long until one is back.
    fn take(&mut self, now: Instant, burst: f64) -> Option<Duration> {
        self.refill(now, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            let per_sec = burst / 60.0;
            Some(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }
}

struct Table {
    entries: HashMap<AddrKey, Bucket>,
    /// Shared by every address that finds the table full.
    overflow: Bucket,
    last_sweep: Instant,
}

/// Per-address limit on failed attempts (unknown secret, bad signature).
///
/// A failing request from an address over its quota is answered 429
/// instead of 404/401; a request whose secret (and signature, where the
/// source requires one) is valid is never refused for its address: see
/// the SECURITY note in `server::route`.
///
/// Memory is bounded: at most `capacity` addresses (IPv6 by /64) are
/// tracked, in a hash table of 49-byte slots that grows to twice the
/// entries at most: ~6.5 MiB at the default 65 536 (briefly twice that
/// while the table grows). An entry whose bucket is full again carries no
/// information and is swept when room is needed (at most once a second,
/// so a full table does not cost a scan per request). When the table is
/// still full, every address not in it shares one overflow bucket with
/// the same quota: under a flood from that many addresses, new failing
/// addresses get 429 sooner, which costs a guesser and no registry
/// (valid deliveries are not limited).
pub struct FailGuard {
    burst: f64,
    capacity: usize,
    table: Mutex<Table>,
    tracked: Gauge,
}

impl FailGuard {
    /// `tracked` is set to the number of addresses held after each change.
    pub fn new(per_minute: u32, capacity: usize, tracked: Gauge) -> Self {
        let now = Instant::now();
        let burst = f64::from(per_minute.max(1));
        FailGuard {
            burst,
            capacity: capacity.max(1),
            table: Mutex::new(Table {
                entries: HashMap::new(),
                overflow: Bucket::full(now, burst),
                last_sweep: now,
            }),
            tracked,
        }
    }

    /// Count a failed attempt; `Some(wait)` when the address is over its
    /// quota (answer 429 with `Retry-After: wait`).
    pub fn fail(&self, ip: IpAddr) -> Option<Duration> {
        let key = AddrKey::of(ip);
        let now = Instant::now();
        let burst = self.burst;
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let wait = if let Some(b) = t.entries.get_mut(&key) {
            b.take(now, burst)
        } else {
            if t.entries.len() >= self.capacity
                && now.saturating_duration_since(t.last_sweep) >= Duration::from_secs(1)
            {
                t.last_sweep = now;
                t.entries.retain(|_, b| {
                    b.refill(now, burst);
                    b.tokens < burst
                });
            }
            if t.entries.len() < self.capacity {
                let mut b = Bucket::full(now, burst);
                let wait = b.take(now, burst);
                t.entries.insert(key, b);
                wait
            } else {
                t.overflow.take(now, burst)
            }
        };
        self.tracked.set(t.entries.len() as i64);
        wait.map(|w| w.max(Duration::from_secs(1)))
    }

    /// Addresses currently tracked.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff<'a>(lines: &'a [&'a str]) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        lines.iter().map(|l| l.as_bytes())
    }

    #[test]
    fn xff_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(
            client_ip(stranger, xff(&["1.1.1.1"]), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer, xff(&["6.6.6.6, 198.51.100.7, 10.9.9.9"]), &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(peer, xff(&[]), &trusted), ip("10.1.2.3"));
        assert_eq!(
            client_ip(peer, xff(&["garbage, 10.9.9.9"]), &trusted),
            ip("10.9.9.9")
        );
        let mapped: SocketAddr = "[::ffff:203.0.113.9]:1".parse().unwrap();
        assert_eq!(client_ip(mapped, xff(&[]), &[]), ip("203.0.113.9"));
    }

    #[test]
    fn xff_reads_every_line_in_order() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        // The client wrote the first line; HAProxy appended the second
        // with the address it saw. The second decides.
        assert_eq!(
            client_ip(peer, xff(&["192.0.2.66", "198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // A proxy chain across lines: skip trusted hops right to left.
        assert_eq!(
            client_ip(
                peer,
                xff(&["192.0.2.66, 198.51.100.7", "10.2.2.2", "10.3.3.3"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // A garbled entry in a later line stops the walk there.
        assert_eq!(
            client_ip(peer, xff(&["192.0.2.66", "nonsense, 10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // Not UTF-8 is garbled too.
        let lines: [&[u8]; 2] = [b"192.0.2.66", b"\xff\xfe"];
        assert_eq!(
            client_ip(peer, lines.iter().copied(), &trusted),
            ip("10.1.2.3")
        );
        // An empty entry is garbled.
        assert_eq!(
            client_ip(peer, xff(&["192.0.2.66,", "10.3.3.3"]), &trusted),
            ip("10.3.3.3")
        );
        // IPv6 entries, mapped ones made IPv4.
        assert_eq!(
            client_ip(peer, xff(&["2001:db8::1", "::ffff:10.4.4.4"]), &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn ipv6_grouped_by_64() {
        assert_eq!(
            AddrKey::of(ip("2001:db8:1:2:aaaa::1")),
            AddrKey::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            AddrKey::of(ip("2001:db8:1:2::1")),
            AddrKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddrKey::of(ip("::ffff:192.0.2.1")),
            AddrKey::of(ip("192.0.2.1"))
        );
        assert_eq!(
            AddrKey::of(ip("2001:db8:1:2::9")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(AddrKey::of(ip("192.0.2.1")).to_string(), "192.0.2.1");
    }

    #[test]
    fn guard_limits_after_quota() {
        let g = FailGuard::new(3, 100, Gauge::default());
        let a = ip("192.0.2.1");
        assert!(g.fail(a).is_none());
        assert!(g.fail(a).is_none());
        assert!(g.fail(a).is_none());
        let wait = g.fail(a).expect("fourth failure crosses the limit");
        assert!(wait >= Duration::from_secs(1) && wait <= Duration::from_secs(21));
        assert!(g.fail(ip("192.0.2.2")).is_none());
        // Another address in the same /64 shares the bucket.
        let g = FailGuard::new(1, 100, Gauge::default());
        assert!(g.fail(ip("2001:db8::1")).is_none());
        assert!(g.fail(ip("2001:db8::2")).is_some());
    }

    #[test]
    fn guard_table_is_bounded_and_overflow_shares_a_bucket() {
        let gauge = Gauge::default();
        let g = FailGuard::new(2, 50, gauge.clone());
        for i in 0..10_000u32 {
            let _ = g.fail(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(g.len(), 50);
        assert_eq!(gauge.get(), 50);
        // The overflow bucket (quota 2) is long spent: a new address fails
        // into 429 at once.
        assert!(g.fail(ip("198.51.100.1")).is_some());
    }
}

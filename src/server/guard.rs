//! Who may knock: secret-path matching, client addresses and the limit on
//! failed attempts.
//!
//! The secret in the URL is the only thing that authenticates most
//! registries, so it is matched without leaking anything through timing or
//! answers, and an address that keeps guessing is slowed to a stop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ServiceConfig;

/// Find the service whose `secret_sha256` is the hash of `presented`.
///
/// SECURITY: the presented secret is hashed (so its length and content do
/// not shape the comparison) and compared against every service in
/// constant time, without an early exit, so the answer time does not tell
/// how many services exist or how close a guess was.
pub fn match_secret(services: &[ServiceConfig], presented: &[u8]) -> Option<usize> {
    let hash: [u8; 32] = Sha256::digest(presented).into();
    let mut found: u64 = u64::MAX;
    for (i, svc) in services.iter().enumerate() {
        let eq = hash.ct_eq(&svc.secret_sha256);
        found = u64::conditional_select(&found, &(i as u64), eq);
    }
    (found != u64::MAX).then_some(found as usize)
}

/// The address a request comes from.
///
/// SECURITY: `X-Forwarded-For` is believed only when the TCP peer is a
/// configured trusted proxy, and then only its right-most entry that is
/// not itself a trusted proxy: entries to the left are whatever the client
/// wrote.
pub fn client_ip(peer: SocketAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let Some(xff) = xff else { return peer_ip };
    let mut last = peer_ip;
    for part in xff.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) => {
                let ip = canonical(ip);
                last = ip;
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            // A garbled entry: stop believing anything further left.
            Err(_) => return last,
        }
    }
    last
}

/// `::ffff:1.2.3.4` (a dual-stack listener) is `1.2.3.4` for CIDR checks.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Per-IP limit on failed attempts (unknown secret, bad signature).
///
/// Once an address exceeds its quota it is answered 429 for everything,
/// including a correct secret, until the quota refills: otherwise a
/// guesser could tell a hit from a miss.
pub struct FailGuard {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 4096;

impl FailGuard {
    pub fn new(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).expect("non-zero");
        FailGuard {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
            clock: DefaultClock::default(),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` while `ip` is blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.blocked.lock().ok()?;
        map.get(&ip)
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Count a failed attempt; `Some(wait)` when this one crossed the limit.
    pub fn fail(&self, ip: IpAddr) -> Option<Duration> {
        match self.limiter.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_secs(1));
                if let Ok(mut map) = self.blocked.lock() {
                    if map.len() >= SWEEP_AT {
                        let now = Instant::now();
                        map.retain(|_, until| *until > now);
                        self.limiter.retain_recent();
                    }
                    map.insert(ip, Instant::now() + wait);
                }
                Some(wait)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xff_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(
            client_ip(stranger, Some("1.1.1.1"), &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("6.6.6.6, 198.51.100.7, 10.9.9.9"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, None, &trusted),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("garbage, 10.9.9.9"), &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        let mapped: SocketAddr = "[::ffff:203.0.113.9]:1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, None, &[]),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn guard_blocks_after_quota() {
        let g = FailGuard::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(g.blocked(ip).is_none());
        assert!(g.fail(ip).is_none());
        assert!(g.fail(ip).is_none());
        assert!(g.fail(ip).is_none());
        let wait = g.fail(ip).expect("fourth failure crosses the limit");
        assert!(wait >= Duration::from_secs(1));
        assert!(g.blocked(ip).is_some());
        assert!(g.blocked("192.0.2.2".parse().unwrap()).is_none());
    }
}

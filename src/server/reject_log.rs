//! Rejected requests, summarised in the log.
//!
//! A stranger can send tens of thousands of failing requests a second;
//! one log line each would make the log the bottleneck (and the disk the
//! victim). Rejections are counted per client address and written as at
//! most one line per address per interval, with the count; the metrics
//! count every one. Accepted deliveries keep their own line each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::guard::AddrKey;

/// How often the summary is written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Addresses summarised per interval; rejections from further addresses
/// are added to one "other addresses" line. Bounds the table to about
/// 1 024 × ~200 bytes.
pub const CAPACITY: usize = 1024;

/// Longest `last_reason` kept (it may quote a request's fields).
const REASON_MAX: usize = 200;

#[derive(Default)]
struct Counts {
    total: u64,
    /// Per outcome; outcomes come from a fixed list, so this stays short.
    outcomes: Vec<(&'static str, u64)>,
    service: Option<usize>,
    last_reason: Option<String>,
}

impl Counts {
    fn add(&mut self, outcome: &'static str, service: Option<usize>, reason: Option<&str>) {
        self.total += 1;
        match self.outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => self.outcomes.push((outcome, 1)),
        }
        if service.is_some() {
            self.service = service;
        }
        if let Some(r) = reason {
            let mut end = r.len().min(REASON_MAX);
            while !r.is_char_boundary(end) {
                end -= 1;
            }
            self.last_reason = Some(r[..end].to_string());
        }
    }

    fn outcomes_text(&self) -> String {
        self.outcomes
            .iter()
            .map(|(o, n)| format!("{o}={n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[derive(Default)]
struct Window {
    by_addr: HashMap<AddrKey, Counts>,
    others: Counts,
}

/// The summary table; [`RejectLog::flush`] writes and empties it.
#[derive(Default)]
pub struct RejectLog {
    window: Mutex<Window>,
}

impl RejectLog {
    /// Count one rejected request.
    pub fn record(
        &self,
        client: AddrKey,
        outcome: &'static str,
        service: Option<usize>,
        reason: Option<&str>,
    ) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let full = w.by_addr.len() >= CAPACITY;
        match w.by_addr.get_mut(&client) {
            Some(c) => c.add(outcome, service, reason),
            None if !full => w
                .by_addr
                .entry(client)
                .or_default()
                .add(outcome, service, reason),
            None => w.others.add(outcome, service, reason),
        }
    }

    /// Write one line per address seen since the last flush, and empty
    /// the table. `services` names the service indexes.
    pub fn flush(&self, service_name: impl Fn(usize) -> String) {
        let w = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *w)
        };
        let secs = INTERVAL.as_secs();
        for (addr, c) in &w.by_addr {
            tracing::info!(
                client = %addr,
                rejected = c.total,
                outcomes = %c.outcomes_text(),
                service = c.service.map(&service_name).unwrap_or_default(),
                last_reason = c.last_reason.as_deref().unwrap_or(""),
                window_s = secs,
                "rejected requests"
            );
        }
        if w.others.total > 0 {
            tracing::info!(
                client = "other addresses",
                rejected = w.others.total,
                outcomes = %w.others.outcomes_text(),
                window_s = secs,
                "rejected requests from addresses beyond the summary table"
            );
        }
    }

    /// Addresses in the current window.
    pub fn len(&self) -> usize {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_addr
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_emptied_by_flush() {
        let log = RejectLog::default();
        for i in 0..(CAPACITY as u32 + 500) {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            log.record(AddrKey::of(ip), "not_found", None, None);
            log.record(AddrKey::of(ip), "rate_limited", None, Some("x"));
        }
        assert_eq!(log.len(), CAPACITY);
        {
            let w = log.window.lock().unwrap();
            assert_eq!(w.others.total, 1000);
            let c = w.by_addr.values().next().unwrap();
            assert_eq!(c.outcomes_text(), "not_found=1,rate_limited=1");
        }
        log.flush(|_| String::new());
        assert!(log.is_empty());
    }
}

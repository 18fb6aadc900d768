//! One connection's life on the webhook listener, and what one address
//! may hold open.
//!
//! A registry opens a connection, sends one request and leaves. A
//! stranger may instead open many and send nothing, or one request and
//! then sit on the connection; every such connection holds a slot of
//! `max_connections`. So each connection is bounded in time (a deadline
//! from accept to its first complete request head, then an idle timeout
//! between requests) and each peer address in count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::guard::AddrKey;
use crate::clock::{after, deadline_in};

/// How long a connection asked to close (idle, or the server stopping)
/// may take to finish before it is dropped. An HTTP/2 peer that never
/// answers the GOAWAY's PING would otherwise keep it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a connection that has not yet sent its first request may
/// still send it once the server stops. A client whose connection was
/// accepted just before a reload or shutdown began is mid-handshake or
/// about to send; cutting it would fail a delivery the next image (or the
/// peer replica) would have served. Bounded, and never past the
/// connection's own first-request deadline, so silent connections still
/// cannot hold the drain.
pub const STOP_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Open connections per peer address.
///
/// SECURITY: the map only holds addresses with a connection open, so it
/// never has more than `max_connections` entries whatever addresses a
/// stranger rotates through.
pub struct ConnLimiter {
    per_address: u32,
    open: Mutex<HashMap<AddrKey, u32>>,
}

/// One connection's share of its address's quota; released on drop.
pub struct AddrSlot {
    limiter: Arc<ConnLimiter>,
    key: AddrKey,
}

impl ConnLimiter {
    pub fn new(per_address: usize) -> Arc<Self> {
        Arc::new(ConnLimiter {
            per_address: u32::try_from(per_address).unwrap_or(u32::MAX).max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `key`, or `None` when that address already holds its
    /// quota.
    pub fn try_acquire(self: &Arc<Self>, key: AddrKey) -> Option<AddrSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(AddrSlot {
            limiter: self.clone(),
            key,
        })
    }
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What the request handlers of one connection tell its driver: whether
/// a request head has arrived, how many requests are in flight and when
/// the last one ended.
pub struct Activity {
    born: Instant,
    seen: AtomicBool,
    first: Notify,
    in_flight: AtomicU32,
    /// Milliseconds after `born` when the last request ended.
    last_done_ms: AtomicU64,
}

/// A request in flight; ends (and stamps the connection active) on drop.
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            born: Instant::now(),
            seen: AtomicBool::new(false),
            first: Notify::new(),
            in_flight: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(0),
        })
    }

    /// Called when a complete request head has been read.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if !self.seen.swap(true, Ordering::AcqRel) {
            self.first.notify_one();
        }
        InFlight(self.clone())
    }

    /// When the driver should look again, or `None` when the connection
    /// has been idle for `idle`.
    fn idle_check(&self, now: Instant, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(after(now, idle));
        }
        let last = after(
            self.born,
            Duration::from_millis(self.last_done_ms.load(Ordering::Acquire)),
        );
        let due = after(last, idle);
        (due > now).then_some(due)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = self.0.born.elapsed().as_millis();
        self.0
            .last_done_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a connection ended, for the metrics (a fixed list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed, or the protocol ended it.
    Done,
    /// No complete request head before the first-request deadline.
    FirstRequestTimeout,
    /// No request in flight for the idle timeout.
    Idle,
    /// The server was stopping.
    Shutdown,
}

impl End {
    pub fn reason(self) -> Option<&'static str> {
        match self {
            End::Done => None,
            End::FirstRequestTimeout => Some("first_request_timeout"),
            End::Idle => Some("idle_timeout"),
            End::Shutdown => Some("shutdown"),
        }
    }
}

/// Drive one served connection under the first-request deadline and the
/// idle timeout; ask it to close when `stopping` fires and drop it when
/// `hard_stop` fires.
///
/// One timer serves every deadline: it is re-armed to the next moment
/// something could be due, never polled.
pub async fn drive<C>(
    conn: C,
    activity: &Activity,
    first_deadline: Instant,
    idle: Duration,
    stopping: &CancellationToken,
    hard_stop: &CancellationToken,
) -> End
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let timer = tokio::time::sleep_until(first_deadline);
    tokio::pin!(timer);
    let mut waiting_first = !activity.seen.load(Ordering::Acquire);
    let mut closing: Option<End> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return closing.unwrap_or(End::Done);
            }
            () = activity.first.notified(), if waiting_first => {
                waiting_first = false;
                if closing.is_some() {
                    // Stopping: this first request is answered, then the
                    // connection closes.
                    conn.as_mut().graceful_shutdown();
                } else {
                    timer.as_mut().reset(deadline_in(idle));
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if let Some(end) = closing {
                    // Asked to close and did not within the grace: drop it.
                    return end;
                }
                if !activity.seen.load(Ordering::Acquire) {
                    // SECURITY: dropped outright: the peer has sent no
                    // complete request, so there is nothing to answer.
                    return End::FirstRequestTimeout;
                }
                waiting_first = false;
                match activity.idle_check(now, idle) {
                    Some(next) => timer.as_mut().reset(next),
                    None => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(End::Idle);
                        timer.as_mut().reset(now + CLOSE_GRACE);
                    }
                }
            }
            () = stopping.cancelled(), if closing.is_none() => {
                closing = Some(End::Shutdown);
                if waiting_first && !activity.seen.load(Ordering::Acquire) {
                    // Let the first request in (briefly), then close after
                    // answering it; see STOP_FIRST_REQUEST_GRACE.
                    let until = first_deadline.min(Instant::now() + STOP_FIRST_REQUEST_GRACE);
                    timer.as_mut().reset(until);
                } else {
                    conn.as_mut().graceful_shutdown();
                    // The server's own grace bounds this one (hard_stop).
                    timer.as_mut().reset(Instant::now() + Duration::from_secs(86_400));
                }
            }
            () = hard_stop.cancelled() => return End::Shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_released() {
        let l = ConnLimiter::new(2);
        let a = AddrKey::of("192.0.2.1".parse().unwrap());
        let b = AddrKey::of("192.0.2.2".parse().unwrap());
        let s1 = l.try_acquire(a).unwrap();
        let _s2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none());
        assert!(l.try_acquire(b).is_some());
        drop(s1);
        assert!(l.try_acquire(a).is_some());
        drop(_s2);
        assert!(l.open.lock().unwrap().len() <= 1);
    }

    #[test]
    fn idle_is_measured_from_the_last_request_end() {
        let act = Activity::new();
        let idle = Duration::from_secs(5);
        let r = act.request();
        let now = Instant::now();
        // In flight: never idle, look again later.
        assert_eq!(act.idle_check(now + idle * 10, idle), Some(now + idle * 11));
        drop(r);
        let now = Instant::now();
        let due = act.idle_check(now, idle).expect("not idle yet");
        assert!(due > now && due <= now + idle);
        assert_eq!(act.idle_check(now + idle, idle), None);
    }
}

//! Per-session inbound limits (live-realtime fork): a budget of Socket.IO packets per Engine.IO
//! session, and a cap on the namespace CONNECT packets of a session that do not succeed.
//!
//! Upstream lets one session send any number of packets (events, acks, CONNECTs) at any rate,
//! and keeps a session whose CONNECTs all fail alive until the connect timeout: each CONNECT is
//! a spawned task and a run of the connect middlewares (a JWT signature check in live-realtime).
//! Both limits here close the session instead; both are off (zero) by default, which is the
//! upstream behaviour.
//!
//! The decisions are pure functions of the state and the time, which the caller passes in.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// The limits, from [`crate::SocketIoConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundLimits {
    /// CONNECT packets of one session that may fail (or still be pending) at once; the session
    /// is closed when one more would exceed it. Zero: unlimited.
    pub max_connect_failures: u32,
    /// Packets per second one session may send, sustained. Zero: unlimited.
    pub packets_per_second: u32,
    /// Packets one session may send at once above the sustained rate.
    pub packet_burst: u32,
}

/// One session's inbound state; lives in the session's `SocketData`.
#[derive(Debug, Default)]
pub struct InboundState {
    /// CONNECTs received and not (yet) successful.
    unresolved_connects: AtomicU32,
    /// The packet budget: tokens left and when they were counted. Locked once per received
    /// packet by the session's own reader, so it is uncontended.
    bucket: Mutex<Option<Bucket>>,
}

/// A token bucket: `tokens` left at `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at: Instant,
}

impl Bucket {
    /// Takes one token at `now`, refilling `rate` per second up to `burst` first. `None` (a
    /// session's first packet) starts full. Returns the new bucket, or `None` when empty.
    pub fn take(bucket: Option<Bucket>, now: Instant, rate: u32, burst: u32) -> Option<Bucket> {
        let capacity = f64::from(burst.max(1));
        let tokens = match bucket {
            None => capacity,
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.at);
                (b.tokens + elapsed.as_secs_f64() * f64::from(rate)).min(capacity)
            }
        };
        (tokens >= 1.0).then(|| Bucket {
            tokens: tokens - 1.0,
            at: now,
        })
    }
}

impl InboundState {
    /// Counts one received packet; false when the session is over its budget and must close.
    pub fn packet(&self, limits: &InboundLimits, now: Instant) -> bool {
        if limits.packets_per_second == 0 {
            return true;
        }
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        match Bucket::take(*bucket, now, limits.packets_per_second, limits.packet_burst) {
            Some(next) => {
                *bucket = Some(next);
                true
            }
            None => false,
        }
    }

    /// Counts a CONNECT as it arrives; false when the session already has
    /// `max_connect_failures` unsuccessful CONNECTs and must close.
    pub fn connect_received(&self, limits: &InboundLimits) -> bool {
        let before = self.unresolved_connects.fetch_add(1, Ordering::AcqRel);
        limits.max_connect_failures == 0 || before < limits.max_connect_failures
    }

    /// A CONNECT succeeded: it no longer counts.
    pub fn connect_succeeded(&self) {
        let _ = self
            .unresolved_connects
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// A CONNECT failed; true when the session has now used up its failures and must close.
    pub fn connect_failed(&self, limits: &InboundLimits) -> bool {
        limits.max_connect_failures != 0
            && self.unresolved_connects.load(Ordering::Acquire) >= limits.max_connect_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long an empty bucket takes to hold one token again.
    fn refill_time(rate: u32) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(rate))
    }

    const L: InboundLimits = InboundLimits {
        max_connect_failures: 3,
        packets_per_second: 10,
        packet_burst: 5,
    };

    #[test]
    fn a_session_gets_its_burst_then_the_sustained_rate() {
        let s = InboundState::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(s.packet(&L, t0));
        }
        assert!(!s.packet(&L, t0), "the burst is spent");
        assert!(s.packet(&L, t0 + refill_time(10)), "one token back");
        assert!(!s.packet(&L, t0 + refill_time(10)));
        assert!(s.packet(&L, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn no_packet_budget_means_unlimited() {
        let s = InboundState::default();
        let off = InboundLimits::default();
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| s.packet(&off, t0)));
    }

    #[test]
    fn the_third_failed_connect_uses_up_the_session() {
        let s = InboundState::default();
        assert!(s.connect_received(&L));
        assert!(!s.connect_failed(&L));
        assert!(s.connect_received(&L));
        assert!(!s.connect_failed(&L));
        assert!(s.connect_received(&L));
        assert!(s.connect_failed(&L), "three failures close the session");
        assert!(!s.connect_received(&L), "a fourth CONNECT is refused at once");
    }

    #[test]
    fn successful_connects_do_not_count() {
        let s = InboundState::default();
        for _ in 0..10 {
            assert!(s.connect_received(&L));
            s.connect_succeeded();
        }
        assert!(s.connect_received(&L));
        assert!(!s.connect_failed(&L));
    }

    #[test]
    fn pipelined_connects_count_before_they_resolve() {
        let s = InboundState::default();
        assert!(s.connect_received(&L));
        assert!(s.connect_received(&L));
        assert!(s.connect_received(&L));
        assert!(
            !s.connect_received(&L),
            "a fourth in flight is refused before any has failed"
        );
    }
}

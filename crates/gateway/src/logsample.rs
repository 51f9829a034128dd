//! Sampled logging for failures a client can repeat at will (refused handshakes, refused
//! connections, broadcasts to a full member, over-budget sockets): the first few of each kind per
//! window are logged, the rest only counted, and the next logged line says how many were
//! suppressed. Every occurrence is still counted in its metric; `live_log_lines_suppressed_total`
//! counts the lines not written. Without this, a client sending failing packets in a loop turned
//! each packet into a log line.
//!
//! The decision is pure ([`Window::admit`], time passed in); [`LogSampler`] holds one window per
//! kind (a fixed set of `&'static str`, so it cannot grow).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::state::lock;

/// Lines logged per kind per window.
pub const LINES_PER_WINDOW: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One kind's window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl Window {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether one more occurrence at `now` is logged: `Some(n)` with the number of occurrences
    /// suppressed since the last logged one, or `None` to suppress it.
    pub fn admit(&mut self, now: Instant, window: Duration, per_window: u32) -> Option<u64> {
        if now.saturating_duration_since(self.started) >= window {
            self.started = now;
            self.logged = 0;
        }
        if self.logged >= per_window {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The windows of every kind of repeatable failure.
#[derive(Debug)]
pub struct LogSampler {
    windows: Mutex<HashMap<&'static str, Window>>,
    metrics: Metrics,
}

impl LogSampler {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Whether to log one occurrence of `kind` now; `Some(suppressed)` to log it with the count
    /// of lines suppressed before it.
    pub fn admit(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let admitted = lock(&self.windows)
            .entry(kind)
            .or_insert_with(|| Window::new(now))
            .admit(now, WINDOW, LINES_PER_WINDOW);
        if admitted.is_none() {
            self.metrics
                .log_lines_suppressed
                .with_label_values(&[kind])
                .inc();
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lines_of_a_window_are_logged_and_the_rest_counted() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        for _ in 0..5 {
            assert_eq!(w.admit(t0, WINDOW, 5), Some(0));
        }
        for _ in 0..10_000 {
            assert_eq!(w.admit(t0 + Duration::from_secs(1), WINDOW, 5), None);
        }
        assert_eq!(
            w.admit(t0 + WINDOW, WINDOW, 5),
            Some(10_000),
            "the next window's first line reports what was suppressed"
        );
        assert_eq!(w.admit(t0 + WINDOW, WINDOW, 5), Some(0));
    }

    #[test]
    fn a_sampler_counts_suppressed_lines_by_kind() {
        let m = Metrics::new();
        let s = LogSampler::new(m.clone());
        let logged = (0..100)
            .filter(|_| s.admit("handshake_refused").is_some())
            .count();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
        assert_eq!(
            m.log_lines_suppressed
                .with_label_values(&["handshake_refused"])
                .get(),
            95
        );
        assert!(
            s.admit("room_broadcast_failed").is_some(),
            "kinds are separate"
        );
    }
}

//! When each sender sends: evenly spaced sends at a fixed rate, with the senders' phases spread
//! over one interval so the total stream is smooth rather than 100 simultaneous bursts.
//!
//! Pure: the caller passes the time elapsed since the round started. A sender that wakes up late
//! sends every message that has fallen due, so the offered rate holds as long as the load
//! generator keeps up on average.

use std::time::Duration;

/// The send schedule of one sender.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacer {
    interval: Duration,
    phase: Duration,
}

impl Pacer {
    /// A sender sending `per_sender_rate` messages/s, the `index`-th of `senders`. `None` when the
    /// rate is not a positive, finite number.
    pub fn new(per_sender_rate: f64, index: usize, senders: usize) -> Option<Self> {
        if !(per_sender_rate.is_finite() && per_sender_rate > 0.0) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / per_sender_rate);
        let phase = interval.mul_f64(index as f64 / senders.max(1) as f64);
        Some(Self { interval, phase })
    }

    /// How many sends are due in total by `elapsed`.
    pub fn due(&self, elapsed: Duration) -> u64 {
        match elapsed.checked_sub(self.phase) {
            None => 0,
            Some(after) => (after.as_nanos() / self.interval.as_nanos().max(1)) as u64 + 1,
        }
    }

    /// When the `k`-th send (from 0) is due, after the round start.
    pub fn due_at(&self, k: u64) -> Duration {
        self.phase
            + self
                .interval
                .saturating_mul(u32::try_from(k).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_send_waits_for_the_senders_phase() {
        let p = Pacer::new(10.0, 1, 4).expect("valid rate");
        assert_eq!(p.due_at(0), ms(25));
        assert_eq!(p.due(ms(24)), 0);
        assert_eq!(p.due(ms(25)), 1);
    }

    #[test]
    fn sends_fall_due_once_per_interval() {
        let p = Pacer::new(10.0, 0, 1).expect("valid rate");
        assert_eq!(p.due(ms(0)), 1);
        assert_eq!(p.due(ms(99)), 1);
        assert_eq!(p.due(ms(100)), 2);
        assert_eq!(p.due(ms(1000)), 11);
        assert_eq!(p.due_at(3), ms(300));
    }

    #[test]
    fn a_late_wake_up_finds_every_missed_send_due() {
        let p = Pacer::new(100.0, 0, 1).expect("valid rate");
        assert_eq!(p.due(ms(55)), 6);
    }

    #[test]
    fn senders_together_offer_the_total_rate_evenly() {
        let senders = 100;
        let pacers: Vec<_> = (0..senders)
            .map(|i| Pacer::new(5.0, i, senders).expect("valid rate"))
            .collect();
        let due: u64 = pacers
            .iter()
            .map(|p| p.due(Duration::from_secs(10) - ms(1)))
            .sum();
        assert_eq!(due, 5000);
        // Phases are distinct: no two senders share a send instant.
        let mut starts: Vec<_> = pacers.iter().map(|p| p.due_at(0)).collect();
        starts.dedup();
        assert_eq!(starts.len(), senders);
    }

    #[test]
    fn a_zero_or_invalid_rate_has_no_schedule() {
        assert!(Pacer::new(0.0, 0, 1).is_none());
        assert!(Pacer::new(-1.0, 0, 1).is_none());
        assert!(Pacer::new(f64::NAN, 0, 1).is_none());
        assert!(Pacer::new(f64::INFINITY, 0, 1).is_none());
    }
}

//! The per-connection event budget: every event a socket sends, whatever its name, takes a
//! token from a bucket that refills at `rateLimits.eventsPerSecond` up to
//! `rateLimits.eventBurst`. Pure: time is an argument.
//!
//! The per-user limits (`ratelimit`) bound what a user may *publish*; this bounds what one
//! connection may make the gateway *do* (parse, look up, answer), including events that publish
//! nothing: heartbeats, joins and leaves, refused events and unknown names.
//!
//! An event over the budget is refused (`too_many_events`) and not handled. A connection that
//! goes on sending a whole burst's worth of events while out of tokens, without one of them
//! getting through, ignores the refusals: it is disconnected, so its cost stays bounded too.

use std::time::Instant;

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allowed,
    /// Refuse it with `too_many_events`.
    Refused,
    /// Refuse it and disconnect the socket.
    Disconnect,
}

/// One connection's bucket.
#[derive(Debug, Clone, Copy)]
pub struct EventBudget {
    tokens: f64,
    at: Instant,
    /// Events refused in a row since the last allowed one.
    strikes: u32,
}

impl EventBudget {
    /// A full bucket at `now`.
    pub fn new(now: Instant, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst.max(1)),
            at: now,
            strikes: 0,
        }
    }

    /// Counts one event at `now` against `rate` per second with bursts of `burst`. The limits
    /// are passed per call so a config reload applies to open connections at once.
    pub fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Verdict {
        let capacity = f64::from(burst.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            return Verdict::Allowed;
        }
        self.strikes = self.strikes.saturating_add(1);
        if self.strikes >= burst.max(1) {
            Verdict::Disconnect
        } else {
            Verdict::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_connection_gets_its_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0, 5);
        for _ in 0..5 {
            assert_eq!(b.take(t0, 10, 5), Verdict::Allowed);
        }
        assert_eq!(b.take(t0, 10, 5), Verdict::Refused);
        assert_eq!(
            b.take(t0 + Duration::from_millis(100), 10, 5),
            Verdict::Allowed,
            "a tenth of a second refills one token at 10/s"
        );
        assert_eq!(
            b.take(t0 + Duration::from_millis(100), 10, 5),
            Verdict::Refused
        );
    }

    #[test]
    fn the_bucket_never_holds_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0, 3);
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(later, 10, 3), Verdict::Allowed);
        }
        assert_eq!(b.take(later, 10, 3), Verdict::Refused);
    }

    #[test]
    fn a_whole_burst_of_refusals_in_a_row_disconnects() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0, 4);
        for _ in 0..4 {
            b.take(t0, 1, 4);
        }
        for _ in 0..3 {
            assert_eq!(b.take(t0, 1, 4), Verdict::Refused);
        }
        assert_eq!(b.take(t0, 1, 4), Verdict::Disconnect);
    }

    #[test]
    fn a_client_slightly_over_the_rate_is_refused_some_events_but_stays() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0, 10);
        let mut refused = 0;
        // 15 events per second against a budget of 10 per second, for a minute.
        for i in 1..=900u64 {
            match b.take(t0 + Duration::from_millis(i * 1000 / 15), 10, 10) {
                Verdict::Allowed => {}
                Verdict::Refused => refused += 1,
                Verdict::Disconnect => panic!("disconnected at event {i}"),
            }
        }
        assert!((250..=320).contains(&refused), "{refused} refused");
    }

    #[test]
    fn a_lowered_rate_applies_to_an_open_bucket() {
        let t0 = Instant::now();
        let mut b = EventBudget::new(t0, 100);
        for _ in 0..10 {
            assert_eq!(b.take(t0, 100, 100), Verdict::Allowed);
        }
        assert_eq!(b.take(t0, 100, 5), Verdict::Allowed, "capped to 5, 4 left");
        for _ in 0..4 {
            assert_eq!(b.take(t0, 100, 5), Verdict::Allowed);
        }
        assert_eq!(b.take(t0, 100, 5), Verdict::Refused);
    }
}

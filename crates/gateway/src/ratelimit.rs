//! Per-user rate limiting: a fixed one-minute window per user and kind that opens with the user's
//! first event, as the Node layer did ("limits reset every minute"). Pure: time is an argument.
//!
//! The same semantics are what a Redis `INCR` + `PEXPIRE` gives, so a shared limiter can replace
//! this one without changing what users observe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The window every limit is counted over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What is being limited; each kind has its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Messages,
    Gifts,
    Moderation,
}

impl Kind {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Gifts => "gifts",
            Self::Moderation => "moderation",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    count: u32,
}

/// Counts events per (kind, user) in fixed windows.
#[derive(Debug, Default)]
pub struct RateLimiter {
    messages: HashMap<String, Window>,
    gifts: HashMap<String, Window>,
    moderation: HashMap<String, Window>,
}

impl RateLimiter {
    /// Counts one event of `kind` by `user` at `now` against `limit` per window. A refused event is
    /// not counted, so a client that keeps retrying does not extend its own penalty.
    pub fn check(&mut self, kind: Kind, user: &str, limit: u32, now: Instant) -> Decision {
        let windows = match kind {
            Kind::Messages => &mut self.messages,
            Kind::Gifts => &mut self.gifts,
            Kind::Moderation => &mut self.moderation,
        };
        // Look up by borrowed key first: only a user's first event in a window allocates.
        if !windows.contains_key(user) {
            windows.insert(
                user.to_owned(),
                Window {
                    opened: now,
                    count: 0,
                },
            );
        }
        let Some(window) = windows.get_mut(user) else {
            return Decision::Allowed { remaining: limit };
        };
        if now.saturating_duration_since(window.opened) >= WINDOW {
            *window = Window {
                opened: now,
                count: 0,
            };
        }
        if window.count >= limit {
            let retry_after = WINDOW.saturating_sub(now.saturating_duration_since(window.opened));
            return Decision::Limited { retry_after };
        }
        window.count += 1;
        Decision::Allowed {
            remaining: limit - window.count,
        }
    }

    /// Forgets windows that have closed, so memory follows active users, not every user ever seen.
    pub fn sweep(&mut self, now: Instant) {
        for windows in [&mut self.messages, &mut self.gifts, &mut self.moderation] {
            windows.retain(|_, w| now.saturating_duration_since(w.opened) < WINDOW);
        }
    }

    /// Number of open windows (for tests and sizing).
    pub fn len(&self) -> usize {
        self.messages.len() + self.gifts.len() + self.moderation.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_exactly_the_limit_per_window() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..30 {
            assert_eq!(
                rl.check(Kind::Messages, "u", 30, t0 + Duration::from_millis(i)),
                Decision::Allowed {
                    remaining: 29 - i as u32
                }
            );
        }
        assert_eq!(
            rl.check(Kind::Messages, "u", 30, t0 + Duration::from_secs(10)),
            Decision::Limited {
                retry_after: Duration::from_secs(50)
            }
        );
    }

    #[test]
    fn the_window_resets_a_minute_after_the_first_event() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(matches!(
            rl.check(Kind::Gifts, "u", 1, t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            rl.check(Kind::Gifts, "u", 1, t0 + Duration::from_secs(59)),
            Decision::Limited { .. }
        ));
        assert!(matches!(
            rl.check(Kind::Gifts, "u", 1, t0 + WINDOW),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn kinds_and_users_have_separate_budgets() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        assert!(matches!(
            rl.check(Kind::Messages, "a", 1, t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            rl.check(Kind::Gifts, "a", 1, t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            rl.check(Kind::Messages, "b", 1, t0),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            rl.check(Kind::Messages, "a", 1, t0),
            Decision::Limited { .. }
        ));
        assert!(matches!(
            rl.check(Kind::Moderation, "a", 1, t0),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn a_lowered_limit_applies_to_an_open_window() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            rl.check(Kind::Messages, "u", 30, t0);
        }
        assert!(matches!(
            rl.check(Kind::Messages, "u", 5, t0),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn sweeping_forgets_closed_windows_only() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        rl.check(Kind::Messages, "old", 30, t0);
        rl.check(Kind::Messages, "new", 30, t0 + Duration::from_secs(30));
        rl.sweep(t0 + Duration::from_secs(61));
        assert_eq!(rl.len(), 1);
    }
}

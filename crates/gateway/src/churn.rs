//! Presence churn damping: a socket that joins and leaves the same channel over and over makes
//! every member receive two events per change (`presence:update` and `system:event`), so 200
//! join+leave toggles by one socket meant 800 events to each bystander. Pure: time is an
//! argument; the flush timer and the emitting live in `server` and `realtime`.
//!
//! The rule: a socket's join or leave of a channel is announced at once, unless the same socket
//! changed its membership of that channel less than `presence.batchIntervalMs` ago. Then it is
//! held until the next presence flush, and a held join and a later leave (or a held leave and a
//! later join) cancel out. So a toggling socket costs its channel at most one announcement per
//! flush interval, and what members see always ends in the socket's real state.
//!
//! Rooms at or above `presence.batchThreshold` are batched anyway (`presence`); this applies to
//! the per-socket announcements of smaller rooms.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::protocol::Role;

/// What to do with one join or leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Announce it now.
    Announce,
    /// Held for the next flush.
    Hold,
    /// It undid a held change of the opposite kind: announce nothing.
    Cancelled,
}

/// A change held for the next flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub channel: String,
    /// `Some(role)` for a join, `None` for a leave.
    pub joined: Option<Role>,
    /// The outgoing (escaped) user id and name.
    pub user_id: Box<str>,
    pub username: Option<Box<str>>,
}

#[derive(Debug)]
struct Entry {
    last_change: Instant,
    held: Option<Held>,
}

/// Recent changes per (socket, channel); `K` identifies a socket.
#[derive(Debug)]
pub struct Churn<K> {
    entries: HashMap<(K, String), Entry>,
}

impl<K> Default for Churn<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Churn<K> {
    /// Records a change of `socket`'s membership of `change.channel` at `now`.
    pub fn changed(
        &mut self,
        socket: &K,
        change: Held,
        now: Instant,
        window: Duration,
    ) -> Decision {
        let key = (socket.clone(), change.channel.clone());
        let Some(entry) = self.entries.get_mut(&key) else {
            self.entries.insert(
                key,
                Entry {
                    last_change: now,
                    held: None,
                },
            );
            return Decision::Announce;
        };
        let recent = now.saturating_duration_since(entry.last_change) < window;
        entry.last_change = now;
        match &entry.held {
            Some(held) if held.joined.is_some() != change.joined.is_some() => {
                entry.held = None;
                Decision::Cancelled
            }
            Some(_) => {
                entry.held = Some(change);
                Decision::Hold
            }
            None if recent => {
                entry.held = Some(change);
                Decision::Hold
            }
            None => Decision::Announce,
        }
    }

    /// Takes every held change, for announcing, and forgets sockets that have been quiet for a
    /// whole `window`.
    pub fn flush(&mut self, now: Instant, window: Duration) -> Vec<Held> {
        let mut out = Vec::new();
        self.entries.retain(|_, e| {
            if let Some(h) = e.held.take() {
                out.push(h);
                return true;
            }
            now.saturating_duration_since(e.last_change) < window
        });
        out
    }

    /// The channel ended: nothing held for it is worth announcing.
    pub fn ended(&mut self, channel: &str) {
        self.entries.retain(|(_, c), _| c != channel);
    }

    /// Number of (socket, channel) pairs remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(1000);

    fn join(channel: &str) -> Held {
        Held {
            channel: channel.into(),
            joined: Some(Role::Viewer),
            user_id: "u".into(),
            username: None,
        }
    }

    fn leave(channel: &str) -> Held {
        Held {
            joined: None,
            ..join(channel)
        }
    }

    #[test]
    fn a_first_change_and_a_change_after_a_quiet_window_are_announced_at_once() {
        let mut c = Churn::default();
        let t0 = Instant::now();
        assert_eq!(c.changed(&1, join("a"), t0, W), Decision::Announce);
        assert_eq!(c.changed(&1, leave("a"), t0 + W, W), Decision::Announce);
        assert_eq!(
            c.changed(&2, join("a"), t0 + W, W),
            Decision::Announce,
            "another socket"
        );
        assert_eq!(
            c.changed(&1, join("b"), t0 + W, W),
            Decision::Announce,
            "another channel"
        );
    }

    #[test]
    fn a_quick_leave_is_held_and_a_rejoin_cancels_it() {
        let mut c = Churn::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(c.changed(&1, join("a"), t0, W), Decision::Announce);
        assert_eq!(c.changed(&1, leave("a"), t0 + ms(10), W), Decision::Hold);
        assert_eq!(
            c.changed(&1, join("a"), t0 + ms(20), W),
            Decision::Cancelled
        );
        assert!(
            c.flush(t0 + ms(30), W).is_empty(),
            "still joined, as announced"
        );
    }

    #[test]
    fn two_hundred_toggles_cost_one_join_and_one_leave_per_window() {
        let mut c = Churn::default();
        let t0 = Instant::now();
        let mut announced = 0;
        for i in 0..200u64 {
            let at = t0 + Duration::from_millis(i * 2);
            for change in [join("a"), leave("a")] {
                if c.changed(&1, change, at, W) == Decision::Announce {
                    announced += 1;
                }
            }
        }
        assert_eq!(announced, 1, "only the first join");
        let held = c.flush(t0 + W, W);
        assert_eq!(held, vec![leave("a")], "the final state: left");
        assert!(c.flush(t0 + W * 3, W).is_empty());
        assert!(c.is_empty(), "quiet sockets are forgotten");
    }

    #[test]
    fn ending_a_channel_drops_what_is_held_for_it() {
        let mut c = Churn::default();
        let t0 = Instant::now();
        c.changed(&1, join("a"), t0, W);
        c.changed(&1, leave("a"), t0, W);
        c.changed(&1, join("b"), t0, W);
        c.changed(&1, leave("b"), t0, W);
        c.ended("a");
        assert_eq!(c.flush(t0, W), vec![leave("b")]);
    }
}

//! Mutes: which user may not chat or send gifts in which channel, until when. Pure: time is an
//! argument.
//!
//! Each channel holds at most `moderation.maxMutesPerChannel` active mutes: a new mute beyond
//! that evicts the channel's oldest one, so a moderator (or a stolen moderator token) cannot
//! grow the table without bound. Channels without active mutes take no memory.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// The active mutes of one channel.
#[derive(Debug, Default)]
struct ChannelMutes {
    /// user → (until, sequence number of the mute).
    by_user: HashMap<String, (Instant, u64)>,
    /// sequence number → user, oldest first, for eviction.
    order: BTreeMap<u64, String>,
}

impl ChannelMutes {
    fn remove(&mut self, user: &str) {
        if let Some((_, seq)) = self.by_user.remove(user) {
            self.order.remove(&seq);
        }
    }
}

/// Active mutes keyed by channel, then user.
#[derive(Debug, Default)]
pub struct Mutes {
    channels: HashMap<String, ChannelMutes>,
    next_seq: u64,
}

/// What a new mute did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Muted {
    /// Recorded within the channel's cap.
    Recorded,
    /// Recorded, and the channel's oldest mute was evicted to make room.
    EvictedOldest,
}

impl Mutes {
    /// Mutes `user` in `channel` until `until`; a later mute replaces an earlier one. When the
    /// channel already holds `max_per_channel` mutes, its oldest is evicted.
    pub fn mute(
        &mut self,
        channel: &str,
        user: &str,
        until: Instant,
        max_per_channel: u32,
    ) -> Muted {
        let seq = self.next_seq;
        self.next_seq += 1;
        // Look up by borrowed key first: only a channel's first mute allocates its name.
        if !self.channels.contains_key(channel) {
            self.channels
                .insert(channel.to_owned(), ChannelMutes::default());
        }
        let Some(c) = self.channels.get_mut(channel) else {
            return Muted::Recorded;
        };
        c.remove(user);
        let mut outcome = Muted::Recorded;
        while c.by_user.len() >= max_per_channel.max(1) as usize {
            let Some((_, oldest)) = c.order.pop_first() else {
                break;
            };
            c.by_user.remove(&oldest);
            outcome = Muted::EvictedOldest;
        }
        c.by_user.insert(user.to_owned(), (until, seq));
        c.order.insert(seq, user.to_owned());
        outcome
    }

    /// Whether `user` is muted in `channel` at `now`. Allocates nothing.
    pub fn is_muted(&self, channel: &str, user: &str, now: Instant) -> bool {
        self.channels
            .get(channel)
            .and_then(|c| c.by_user.get(user))
            .is_some_and(|&(t, _)| now < t)
    }

    /// Drops expired mutes, and channels left without any.
    pub fn sweep(&mut self, now: Instant) {
        self.channels.retain(|_, c| {
            c.by_user.retain(|_, (t, _)| now < *t);
            c.order.retain(|_, user| c.by_user.contains_key(user));
            !c.by_user.is_empty()
        });
    }

    /// Active mutes over every channel.
    pub fn len(&self) -> usize {
        self.channels.values().map(|c| c.by_user.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CAP: u32 = 1000;

    #[test]
    fn a_mute_holds_in_its_channel_until_it_expires() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        m.mute("c1", "u", t0 + Duration::from_secs(2), CAP);
        assert!(m.is_muted("c1", "u", t0));
        assert!(m.is_muted("c1", "u", t0 + Duration::from_millis(1999)));
        assert!(!m.is_muted("c1", "u", t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_mute_does_not_reach_other_channels_or_users() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        m.mute("c1", "u", t0 + Duration::from_secs(60), CAP);
        assert!(!m.is_muted("c2", "u", t0));
        assert!(!m.is_muted("c1", "v", t0));
    }

    #[test]
    fn sweeping_drops_expired_mutes_and_empty_channels() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        m.mute("c", "a", t0 + Duration::from_secs(1), CAP);
        m.mute("c", "b", t0 + Duration::from_secs(10), CAP);
        m.mute("d", "a", t0 + Duration::from_secs(1), CAP);
        m.sweep(t0 + Duration::from_secs(5));
        assert_eq!(m.len(), 1);
        m.sweep(t0 + Duration::from_secs(11));
        assert!(m.is_empty());
    }

    #[test]
    fn a_full_channel_evicts_its_oldest_mute() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        let month = t0 + Duration::from_secs(30 * 24 * 3600);
        for i in 0..3 {
            assert_eq!(m.mute("c", &format!("u{i}"), month, 3), Muted::Recorded);
        }
        // Re-muting u0 makes it the newest, so u1 is now the oldest.
        assert_eq!(m.mute("c", "u0", month, 3), Muted::Recorded);
        assert_eq!(m.mute("c", "u3", month, 3), Muted::EvictedOldest);
        assert!(!m.is_muted("c", "u1", t0));
        for u in ["u0", "u2", "u3"] {
            assert!(m.is_muted("c", u, t0), "{u}");
        }
        assert_eq!(
            m.mute("other", "x", month, 3),
            Muted::Recorded,
            "per channel"
        );
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn twenty_thousand_mutes_in_one_channel_keep_the_cap() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        for i in 0..20_000 {
            m.mute("c", &format!("u{i}"), t0 + Duration::from_secs(3600), CAP);
        }
        assert_eq!(m.len(), CAP as usize);
        assert!(m.is_muted("c", "u19999", t0));
        assert!(!m.is_muted("c", "u0", t0));
    }
}

//! Mutes: which user may not chat or send gifts in which channel, until when. Pure: time is an
//! argument.

use std::collections::HashMap;
use std::time::Instant;

/// Active mutes keyed by (channel, user).
#[derive(Debug, Default)]
pub struct Mutes {
    until: HashMap<(String, String), Instant>,
}

impl Mutes {
    /// Mutes `user` in `channel` until `until`; a later mute replaces an earlier one.
    pub fn mute(&mut self, channel: &str, user: &str, until: Instant) {
        self.until
            .insert((channel.to_owned(), user.to_owned()), until);
    }

    /// Whether `user` is muted in `channel` at `now`.
    pub fn is_muted(&self, channel: &str, user: &str, now: Instant) -> bool {
        // The tuple key needs owned strings; mutes are rare, so the lookup allocates only when
        // there is at least one.
        if self.until.is_empty() {
            return false;
        }
        self.until
            .get(&(channel.to_owned(), user.to_owned()))
            .is_some_and(|&t| now < t)
    }

    /// Drops expired mutes.
    pub fn sweep(&mut self, now: Instant) {
        self.until.retain(|_, t| now < *t);
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_mute_holds_in_its_channel_until_it_expires() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        m.mute("c1", "u", t0 + Duration::from_secs(2));
        assert!(m.is_muted("c1", "u", t0));
        assert!(m.is_muted("c1", "u", t0 + Duration::from_millis(1999)));
        assert!(!m.is_muted("c1", "u", t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_mute_does_not_reach_other_channels_or_users() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        m.mute("c1", "u", t0 + Duration::from_secs(60));
        assert!(!m.is_muted("c2", "u", t0));
        assert!(!m.is_muted("c1", "v", t0));
    }

    #[test]
    fn sweeping_drops_expired_mutes() {
        let mut m = Mutes::default();
        let t0 = Instant::now();
        m.mute("c", "a", t0 + Duration::from_secs(1));
        m.mute("c", "b", t0 + Duration::from_secs(10));
        m.sweep(t0 + Duration::from_secs(5));
        assert_eq!(m.len(), 1);
    }
}

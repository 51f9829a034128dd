//! Presence coalescing for large rooms: the decision whether a join or leave is announced at once
//! or collected into the room's next batch, and the batches themselves. Pure; the flush timer and
//! the emitting live in `server` and `realtime`.
//!
//! Announcing every join to every member costs O(members) per join, so a join storm of N viewers
//! costs O(N²) deliveries (10,000 joins: 50 million events). From `presence.batchThreshold` local
//! members on, joins and leaves are counted instead and announced once per
//! `presence.batchIntervalMs` as a single `presence:update` with `batched: true`.
//!
//! Room sizes here are this process's own members, kept by counting joins and leaves and
//! re-synchronised from the adapter periodically (a remote `end` removes members without passing
//! through this process's handlers; until the next resync the count is high, which only makes
//! batching start earlier). The decision adds the members the other replicas reported in their
//! last snapshots (`others`), so a room spread over replicas is batched on its whole size.

use std::collections::HashMap;

use serde::Serialize;

/// At most this many user ids are listed per batch; the counts are always exact.
pub const MAX_IDS_PER_BATCH: usize = 20;

/// How one join or leave is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Announce it now, per socket.
    Now,
    /// Counted into the room's next batch.
    Batched,
}

/// Joins and leaves collected for one room since its last announcement.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub joins: u32,
    pub leaves: u32,
    pub joined: Vec<String>,
    pub left: Vec<String>,
}

/// The batched `presence:update` payload.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchedPresence<'a> {
    pub channel_name: &'a str,
    /// Net change: joins − leaves.
    pub delta: i64,
    pub joins: u32,
    pub leaves: u32,
    /// Up to [`MAX_IDS_PER_BATCH`] of the users who joined / left.
    pub joined_user_ids: &'a [String],
    pub left_user_ids: &'a [String],
    pub batched: bool,
    pub timestamp: u64,
}

impl Batch {
    pub fn payload<'a>(&'a self, channel: &'a str, timestamp: u64) -> BatchedPresence<'a> {
        BatchedPresence {
            channel_name: channel,
            delta: i64::from(self.joins) - i64::from(self.leaves),
            joins: self.joins,
            leaves: self.leaves,
            joined_user_ids: &self.joined,
            left_user_ids: &self.left,
            batched: true,
            timestamp,
        }
    }
}

/// Local room sizes and pending batches.
#[derive(Debug, Default)]
pub struct PresenceBook {
    sizes: HashMap<String, u32>,
    pending: HashMap<String, Batch>,
}

impl PresenceBook {
    /// Records a join; batched when the room already had `threshold` or more members: the
    /// local ones counted here plus `others` on other replicas.
    pub fn joined(&mut self, channel: &str, user: &str, threshold: u32, others: u32) -> Announce {
        let size = self.sizes.entry(channel.to_owned()).or_default();
        let before = *size;
        *size += 1;
        if before.saturating_add(others) < threshold {
            return Announce::Now;
        }
        let batch = self.pending.entry(channel.to_owned()).or_default();
        batch.joins += 1;
        if batch.joined.len() < MAX_IDS_PER_BATCH {
            batch.joined.push(user.to_owned());
        }
        Announce::Batched
    }

    /// Records a leave; batched when the room keeps `threshold` or more members (local, plus
    /// `others` on other replicas).
    pub fn left(&mut self, channel: &str, user: &str, threshold: u32, others: u32) -> Announce {
        let after = match self.sizes.get_mut(channel) {
            Some(size) => {
                *size = size.saturating_sub(1);
                *size
            }
            None => 0,
        };
        if after == 0 {
            self.sizes.remove(channel);
        }
        if after.saturating_add(others) < threshold {
            return Announce::Now;
        }
        let batch = self.pending.entry(channel.to_owned()).or_default();
        batch.leaves += 1;
        if batch.left.len() < MAX_IDS_PER_BATCH {
            batch.left.push(user.to_owned());
        }
        Announce::Batched
    }

    /// The channel ended: every local member left and nothing pending is worth announcing.
    pub fn ended(&mut self, channel: &str) {
        self.sizes.remove(channel);
        self.pending.remove(channel);
    }

    /// Takes every pending batch, for announcing.
    pub fn take_batches(&mut self) -> Vec<(String, Batch)> {
        self.pending.drain().collect()
    }

    /// Replaces the counted sizes with the adapter's truth.
    pub fn resync(&mut self, sizes: impl IntoIterator<Item = (String, u64)>) {
        self.sizes = sizes
            .into_iter()
            .map(|(c, n)| (c, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
    }

    /// The counted local size of a room.
    pub fn size(&self, channel: &str) -> u32 {
        self.sizes.get(channel).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_rooms_announce_every_join_and_leave_at_once() {
        let mut b = PresenceBook::default();
        for i in 0..3 {
            assert_eq!(b.joined("c", &format!("u{i}"), 3, 0), Announce::Now);
        }
        assert_eq!(b.left("c", "u0", 3, 0), Announce::Now);
        assert!(b.take_batches().is_empty());
    }

    #[test]
    fn from_the_threshold_on_joins_and_leaves_are_batched() {
        let mut b = PresenceBook::default();
        for i in 0..3 {
            b.joined("c", &format!("u{i}"), 3, 0);
        }
        assert_eq!(b.joined("c", "u3", 3, 0), Announce::Batched);
        assert_eq!(b.joined("c", "u4", 3, 0), Announce::Batched);
        assert_eq!(b.left("c", "u4", 3, 0), Announce::Batched, "4 members stay");
        assert_eq!(b.size("c"), 4);
        let batches = b.take_batches();
        assert_eq!(
            batches,
            vec![(
                "c".to_owned(),
                Batch {
                    joins: 2,
                    leaves: 1,
                    joined: vec!["u3".into(), "u4".into()],
                    left: vec!["u4".into()],
                }
            )]
        );
        assert!(
            b.take_batches().is_empty(),
            "taking empties the pending batches"
        );
        let p = batches[0].1.payload("c", 7);
        assert_eq!(p.delta, 1);
        assert!(p.batched);
    }

    #[test]
    fn a_join_storm_lists_a_bounded_number_of_ids_but_counts_all() {
        let mut b = PresenceBook::default();
        for i in 0..10_000 {
            b.joined("big", &format!("u{i}"), 1, 0);
        }
        let batches = b.take_batches();
        assert_eq!(batches[0].1.joins, 9_999);
        assert_eq!(batches[0].1.joined.len(), MAX_IDS_PER_BATCH);
    }

    #[test]
    fn ending_a_channel_forgets_its_size_and_pending_batch() {
        let mut b = PresenceBook::default();
        b.joined("c", "a", 1, 0);
        b.joined("c", "b", 1, 0);
        b.ended("c");
        assert_eq!(b.size("c"), 0);
        assert!(b.take_batches().is_empty());
        assert_eq!(b.joined("c", "x", 1, 0), Announce::Now);
    }

    #[test]
    fn members_on_other_replicas_count_toward_the_threshold() {
        let mut b = PresenceBook::default();
        // Three members elsewhere, the threshold is four.
        assert_eq!(b.joined("c", "a", 4, 3), Announce::Now, "0 + 3 before");
        assert_eq!(b.joined("c", "b", 4, 3), Announce::Batched, "1 + 3 before");
        assert_eq!(b.left("c", "b", 4, 3), Announce::Batched, "4 stay");
        assert_eq!(b.left("c", "a", 4, 3), Announce::Now, "3 stay");
        assert_eq!(b.joined("c", "x", 4, 0), Announce::Now, "alone it is small");
    }

    #[test]
    fn resync_replaces_counted_sizes() {
        let mut b = PresenceBook::default();
        b.joined("c", "a", 100, 0);
        b.resync([("c".to_owned(), 500), ("d".to_owned(), 2)]);
        assert_eq!(b.size("c"), 500);
        assert_eq!(b.size("d"), 2);
        assert_eq!(b.joined("c", "z", 100, 0), Announce::Batched);
    }
}

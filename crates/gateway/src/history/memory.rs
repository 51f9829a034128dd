//! History kept in this process, for a gateway without `REDIS_URL`: per channel a ring of the
//! newest items, bounded by count and age, and the whole store bounded in channels.
//!
//! One mutex guards everything: a record is a hash lookup, a push and a pop, far shorter than the
//! fan-out that follows it, so two worker threads rarely meet here. Offsets are assigned under
//! the lock, so they are strictly increasing per channel and the ring is always in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::decide::{Window, fresh};
use super::{Item, Limits, Position, Stamped, TAIL_BUFFER, Unavailable, new_epoch, stamp};
use crate::state::lock;

/// How long a channel's stream (its epoch and newest offset) is remembered after its last item,
/// so that a client who missed nothing in a quiet channel is told so exactly. Redis keeps its
/// stream metadata as long (`redis::META_TTL`).
pub const META_TTL_MS: u64 = 24 * 3600 * 1000;

/// Every channel's history.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Per channel, held from recording an item until its local broadcast is queued, and while a
    /// recovery reads the channel: so a read never sees an item whose broadcast is still to
    /// come (it would reach a recovering socket twice). An async mutex, since the broadcast is
    /// awaited.
    order: Mutex<HashMap<Box<str>, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct Inner {
    channels: HashMap<Box<str>, Channel>,
    /// Watchers of channels' live feeds; usually empty, so recording checks one length.
    tails: HashMap<Box<str>, broadcast::Sender<Arc<Item>>>,
    /// When a channel's stream was last forgotten (evicted or idle). A channel missing now may
    /// have had items since any earlier moment, so no recovery may assume it had none.
    forgot_at_ms: u64,
}

#[derive(Debug)]
struct Channel {
    epoch: Arc<str>,
    top: u64,
    items: VecDeque<Arc<Item>>,
    last_write_ms: u64,
}

impl MemoryStore {
    pub fn record(
        &self,
        channel: &str,
        event: &'static str,
        payload: &str,
        limits: &Limits,
        now_ms: u64,
    ) -> Option<Stamped> {
        let mut inner = lock(&self.inner);
        if !limits.enabled() {
            // Delivered unrecorded: this stream must not be resumed across the hole, and no
            // recovery may assume the channel had nothing since before now.
            inner.channels.remove(channel);
            inner.forgot_at_ms = now_ms;
            return None;
        }
        if !inner.channels.contains_key(channel) {
            inner.make_room(limits.max_channels, now_ms);
            inner.channels.insert(
                channel.into(),
                Channel {
                    epoch: new_epoch(),
                    top: 0,
                    items: VecDeque::new(),
                    last_write_ms: now_ms,
                },
            );
        }
        let ch = inner.channels.get_mut(channel)?;
        let offset = ch.top + 1;
        let text = stamp(payload, offset, &ch.epoch);
        let payload: Arc<RawValue> = match RawValue::from_string(text) {
            Ok(raw) => Arc::from(raw),
            Err(e) => {
                tracing::error!(event, error = %e, "payload is not a JSON object; delivered unrecorded");
                return None;
            }
        };
        ch.top = offset;
        ch.last_write_ms = now_ms;
        let item = Arc::new(Item {
            offset,
            time_ms: now_ms,
            event: event.into(),
            payload: payload.clone(),
        });
        ch.items.push_back(item.clone());
        while ch.items.len() > limits.max_items
            || ch
                .items
                .front()
                .is_some_and(|i| !fresh(i, now_ms, limits.max_age_ms))
        {
            ch.items.pop_front();
        }
        let position = Position::new(ch.epoch.clone(), offset);
        if !inner.tails.is_empty()
            && let Some(tx) = inner.tails.get(channel)
            && tx.send(item).is_err()
        {
            inner.tails.remove(channel);
        }
        Some(Stamped { position, payload })
    }

    pub fn head(
        &self,
        channel: &str,
        known_since_ms: u64,
    ) -> Result<Option<Position>, Unavailable> {
        let inner = lock(&self.inner);
        match inner.channels.get(channel) {
            Some(ch) => Ok(Some(Position::new(ch.epoch.clone(), ch.top))),
            None if inner.forgot_at_ms > 0 && inner.forgot_at_ms >= known_since_ms => {
                Err(Unavailable)
            }
            None => Ok(None),
        }
    }

    /// Items after `offset`, at most one more than `max_items` (enough to see the gap is too long).
    pub fn since(&self, channel: &str, offset: u64, limits: &Limits) -> Window {
        let inner = lock(&self.inner);
        let Some(ch) = inner.channels.get(channel) else {
            return Window::default();
        };
        // Offsets in the ring are consecutive, so the first wanted one is found by arithmetic.
        let first = ch.items.front().map_or(0, |i| i.offset);
        let skip = usize::try_from((offset + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        Window {
            head: Some(Position::new(ch.epoch.clone(), ch.top)),
            items: ch
                .items
                .iter()
                .skip(skip)
                .take(limits.max_items + 1)
                .cloned()
                .collect(),
        }
    }

    pub fn latest(&self, channel: &str, n: usize) -> Window {
        let inner = lock(&self.inner);
        let Some(ch) = inner.channels.get(channel) else {
            return Window::default();
        };
        Window {
            head: Some(Position::new(ch.epoch.clone(), ch.top)),
            items: ch
                .items
                .iter()
                .skip(ch.items.len().saturating_sub(n))
                .cloned()
                .collect(),
        }
    }

    pub fn tail(&self, channel: &str) -> broadcast::Receiver<Arc<Item>> {
        let mut inner = lock(&self.inner);
        inner
            .tails
            .entry(channel.into())
            .or_insert_with(|| broadcast::channel(TAIL_BUFFER).0)
            .subscribe()
    }

    /// Drops expired items, forgets channels idle for [`META_TTL_MS`] and feeds nobody watches.
    pub fn sweep(&self, limits: &Limits, now_ms: u64) {
        let mut inner = lock(&self.inner);
        let before = inner.channels.len();
        if limits.enabled() {
            for ch in inner.channels.values_mut() {
                while ch
                    .items
                    .front()
                    .is_some_and(|i| !fresh(i, now_ms, limits.max_age_ms))
                {
                    ch.items.pop_front();
                }
            }
            inner
                .channels
                .retain(|_, ch| ch.last_write_ms.saturating_add(META_TTL_MS) > now_ms);
        } else {
            inner.channels.clear();
        }
        if inner.channels.len() < before {
            inner.forgot_at_ms = now_ms;
        }
        let len = inner.channels.len();
        inner.channels.shrink_to(len * 2);
        inner.tails.retain(|_, tx| tx.receiver_count() > 0);
        drop(inner);
        // A lock nobody holds or waits for is one strong reference: the map's.
        lock(&self.order).retain(|_, m| Arc::strong_count(m) > 1);
    }

    /// Orders recording-and-broadcasting against reads of `channel` (see [`MemoryStore::order`]).
    pub async fn order(&self, channel: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = lock(&self.order).entry(channel.into()).or_default().clone();
        m.lock_owned().await
    }

    /// Channels with a stream.
    pub fn channels(&self) -> usize {
        lock(&self.inner).channels.len()
    }
}

impl Inner {
    /// Forgets the channel written to least recently while the store is full. A scan, but only
    /// when a new channel arrives at the cap.
    fn make_room(&mut self, max_channels: usize, now_ms: u64) {
        while self.channels.len() >= max_channels.max(1) {
            let Some(oldest) = self
                .channels
                .iter()
                .min_by_key(|(_, ch)| ch.last_write_ms)
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            self.channels.remove(&oldest);
            self.forgot_at_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::TailEvent;

    fn limits(max_items: usize) -> Limits {
        Limits {
            max_items,
            max_age_ms: 10_000,
            max_channels: 3,
        }
    }

    fn offsets(w: &Window) -> Vec<u64> {
        w.items.iter().map(|i| i.offset).collect()
    }

    #[test]
    fn offsets_start_at_one_and_increase_per_channel() {
        let s = MemoryStore::default();
        let l = limits(10);
        let a1 = s.record("a", "chat:new", r#"{"m":1}"#, &l, 100).unwrap();
        let a2 = s.record("a", "chat:new", r#"{"m":2}"#, &l, 101).unwrap();
        let b1 = s.record("b", "chat:new", r#"{"m":3}"#, &l, 102).unwrap();
        assert_eq!((a1.position.offset, a2.position.offset), (1, 2));
        assert_eq!(b1.position.offset, 1);
        assert_eq!(a1.position.epoch, a2.position.epoch);
        assert_ne!(a1.position.epoch, b1.position.epoch);
        let v: serde_json::Value = serde_json::from_str(a2.payload.get()).unwrap();
        assert_eq!(v["m"], 2);
        assert_eq!(v["offset"], 2);
        assert_eq!(v["epoch"], &*a2.position.epoch);
    }

    #[test]
    fn the_ring_keeps_the_newest_items_by_count_and_age() {
        let s = MemoryStore::default();
        let l = limits(3);
        for t in 0..5 {
            s.record("a", "chat:new", "{}", &l, 1_000 + t);
        }
        assert_eq!(offsets(&s.since("a", 0, &l)), [3, 4, 5]);
        assert_eq!(offsets(&s.since("a", 3, &l)), [4, 5]);
        assert_eq!(offsets(&s.latest("a", 2)), [4, 5]);
        assert_eq!(s.since("a", 0, &l).head.unwrap().offset, 5);
        // Recording at +10 s drops what is older than the age limit.
        s.record("a", "chat:new", "{}", &l, 11_004);
        assert_eq!(offsets(&s.since("a", 0, &l)), [5, 6]);
        s.sweep(&l, 21_005);
        assert!(s.since("a", 0, &l).items.is_empty());
        assert_eq!(s.head("a", 0), Ok(Some(s.since("a", 0, &l).head.unwrap())));
    }

    #[test]
    fn a_delivery_while_history_is_off_replaces_the_stream() {
        let s = MemoryStore::default();
        let on = limits(10);
        let first = s.record("a", "chat:new", "{}", &on, 1).unwrap();
        assert!(s.record("a", "chat:new", "{}", &limits(0), 2).is_none());
        let after = s.record("a", "chat:new", "{}", &on, 3).unwrap();
        assert_ne!(first.position.epoch, after.position.epoch);
        assert_eq!(after.position.offset, 1);
    }

    #[test]
    fn past_the_channel_cap_the_least_recently_written_channel_is_forgotten() {
        let s = MemoryStore::default();
        let l = limits(10);
        for (t, ch) in ["a", "b", "c"].into_iter().enumerate() {
            s.record(ch, "chat:new", "{}", &l, 10 + t as u64);
        }
        s.record("a", "chat:new", "{}", &l, 20);
        s.record("d", "chat:new", "{}", &l, 30);
        assert_eq!(s.channels(), 3);
        // b was forgotten at 30: a recovery that knew it before then cannot be answered.
        assert_eq!(s.head("b", 25), Err(Unavailable));
        assert_eq!(s.head("never", 25), Err(Unavailable));
        assert_eq!(s.head("never", 31), Ok(None));
        assert!(s.head("a", 25).unwrap().is_some());
    }

    #[test]
    fn idle_channels_are_forgotten_after_the_metadata_ttl() {
        let s = MemoryStore::default();
        let l = limits(10);
        s.record("a", "chat:new", "{}", &l, 1);
        s.sweep(&l, META_TTL_MS);
        assert_eq!(s.channels(), 1);
        s.sweep(&l, META_TTL_MS + 2);
        assert_eq!(s.channels(), 0);
        assert_eq!(s.head("a", 0), Err(Unavailable));
    }

    #[tokio::test]
    async fn a_read_waits_for_a_recorded_item_to_be_broadcast() {
        let s = Arc::new(MemoryStore::default());
        let l = limits(10);
        let publishing = s.order("a").await;
        s.record("a", "chat:new", "{}", &l, 1);
        let reader = {
            let s = s.clone();
            tokio::spawn(async move {
                let _order = s.order("a").await;
                s.since("a", 0, &limits(10)).items.len()
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "the read waits for the broadcast");
        // Another channel is not ordered with it.
        drop(s.order("b").await);
        drop(publishing);
        assert_eq!(reader.await.unwrap(), 1);
        s.sweep(&l, 2);
        assert!(lock(&s.order).is_empty());
    }

    #[tokio::test]
    async fn a_tail_sees_each_new_item_of_its_channel_only() {
        let s = MemoryStore::default();
        let l = limits(10);
        s.record("a", "chat:new", r#"{"n":0}"#, &l, 1);
        let mut tail = crate::history::Tail { rx: s.tail("a") };
        s.record("b", "chat:new", r#"{"n":1}"#, &l, 2);
        s.record("a", "gift:new", r#"{"n":2}"#, &l, 3);
        match tail.next().await {
            Some(TailEvent::Item(item)) => {
                assert_eq!(item.offset, 2);
                assert_eq!(item.event, "gift:new");
            }
            other => panic!("{other:?}"),
        }
        drop(tail);
        s.sweep(&l, 4);
        assert!(lock(&s.inner).tails.is_empty());
    }

    #[tokio::test]
    async fn a_slow_tail_is_told_how_much_it_missed() {
        let s = MemoryStore::default();
        let l = limits(10);
        let mut tail = crate::history::Tail { rx: s.tail("a") };
        for t in 0..(TAIL_BUFFER as u64 + 5) {
            s.record("a", "chat:new", "{}", &l, t);
        }
        assert_eq!(tail.next().await, Some(TailEvent::Lagged(5)));
    }
}

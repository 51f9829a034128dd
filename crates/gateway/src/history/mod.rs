//! Channel history: every chat, gift, moderation notice and backend `system:event` delivered to a
//! channel gets a strictly increasing offset in that channel's stream and is kept, bounded by
//! count and age, so a client that reconnects recovers what it missed and a late joiner sees the
//! recent items.
//!
//! Layout: this module is the API the handlers call ([`History`]: record, read, tail, sweep);
//! [`decide`] holds the pure decisions (recovery, latest items, session plans) with time passed
//! in; [`memory`] keeps history in the process (no `REDIS_URL`); [`redis`] keeps it in Redis so
//! every replica agrees on the order; [`session`] keeps Socket.IO Connection State Recovery
//! sessions; [`socket`] runs the socket-side flows (join with `since`/`history`, the recovery
//! handshake and replay); [`deliver`] records and stamps each history item delivered to a room.
//!
//! A stream is named by its `epoch`, a random string: a stream that is lost (Redis flushed, an
//! idle channel forgotten, a stretch delivered without recording) is replaced by one with a new
//! epoch, so a position from the old one is refused (`recovered: false`) instead of replayed
//! against the wrong items.

pub mod coalesce;
pub mod decide;
pub mod deliver;
pub mod memory;
pub mod redis;
pub mod session;
pub mod socket;

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use decide::{Bounds, Window};

/// Whether a delivery to a channel is kept in its history. Decided by the caller, per kind of
/// event (docs/protocol.md lists them): chat, gifts, moderation notices and backend system events
/// are; presence counters, join/leave notices and stream metrics are live-only, since replaying
/// a stale count or metric would be wrong and join/leave would crowd the chat out of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    History,
    LiveOnly,
}

/// Where an item sits: its stream (`epoch`) and its offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl Position {
    pub fn new(epoch: Arc<str>, offset: u64) -> Self {
        Self { epoch, offset }
    }

    /// The position as the Socket.IO Connection State Recovery offset: the last argument of every
    /// history item when recovery is on, and what the client sends back as `auth.offset`.
    pub fn to_recovery_offset(&self) -> String {
        format!("{}:{}", self.epoch, self.offset)
    }

    /// Parses a client's `auth.offset`; anything malformed is no position at all.
    pub fn from_recovery_offset(s: &str) -> Option<Self> {
        let (epoch, offset) = s.split_once(':')?;
        if !valid_epoch(epoch) {
            return None;
        }
        Some(Self::new(epoch.into(), offset.parse().ok()?))
    }
}

/// Epochs are what the gateway generates (hex); a client-supplied one is checked before use.
pub fn valid_epoch(epoch: &str) -> bool {
    !epoch.is_empty() && epoch.len() <= 64 && epoch.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A new random epoch: 48 bits, 12 hex characters.
pub fn new_epoch() -> Arc<str> {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff).into()
}

/// One kept item.
#[derive(Debug, Clone)]
pub struct Item {
    pub offset: u64,
    /// When it was recorded (ms since the Unix epoch, the recording gateway's clock).
    pub time_ms: u64,
    pub event: Cow<'static, str>,
    /// The payload exactly as delivered: a JSON object with `offset` and `epoch`.
    pub payload: Arc<RawValue>,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.time_ms == other.time_ms
            && self.event == other.event
            && self.payload.get() == other.payload.get()
    }
}

/// A recorded delivery: its position and the payload to send.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub position: Position,
    pub payload: Arc<RawValue>,
}

/// Adds `offset` and `epoch` to a payload's JSON object text. The Redis record script does the
/// same in Lua (`redis::RECORD_SCRIPT`); the end-to-end tests compare the two outputs.
pub fn stamp(payload: &str, offset: u64, epoch: &str) -> String {
    let body = payload.strip_suffix('}').unwrap_or(payload);
    let sep = if body == "{" { "" } else { "," };
    format!("{body}{sep}\"offset\":{offset},\"epoch\":\"{epoch}\"}}")
}

/// The limits in force, read from the hot-reloaded config on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_items: usize,
    pub max_age_ms: u64,
    pub max_channels: usize,
}

impl Limits {
    pub fn from_config(h: &live_api::History) -> Self {
        Self {
            max_items: h.max_items as usize,
            max_age_ms: h.max_age_seconds.saturating_mul(1000),
            max_channels: h.max_channels as usize,
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_items > 0
    }

    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_items: self.max_items,
            max_age_ms: self.max_age_ms,
            max_bytes: decide::MAX_REPLY_BYTES,
        }
    }
}

/// The store could not answer (Redis down or slow): callers deliver without recording and refuse
/// recovery rather than guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A live feed of one channel's new items, from every replica when the store is Redis.
#[derive(Debug)]
pub struct Tail {
    rx: broadcast::Receiver<Arc<Item>>,
}

/// What a tail yields.
#[derive(Debug, Clone, PartialEq)]
pub enum TailEvent {
    Item(Arc<Item>),
    /// The reader fell behind and this many items were skipped.
    Lagged(u64),
}

impl Tail {
    /// The next item; `None` once the store stops.
    pub async fn next(&mut self) -> Option<TailEvent> {
        match self.rx.recv().await {
            Ok(item) => Some(TailEvent::Item(item)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(TailEvent::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// How many items a tail buffers for a slow reader before it reports a lag.
const TAIL_BUFFER: usize = 256;

/// The history store: in this process, or in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    store: Store,
    sessions: session::SessionStore,
    metrics: Metrics,
}

#[derive(Debug, Clone)]
enum Store {
    Memory(Arc<memory::MemoryStore>),
    Redis(Box<redis::RedisStore>),
}

impl History {
    /// History kept in this process.
    pub fn in_memory(metrics: Metrics) -> Self {
        Self {
            store: Store::Memory(Arc::default()),
            sessions: session::SessionStore::in_memory(),
            metrics,
        }
    }

    /// History and recovery sessions kept in Redis, shared by every replica, through the
    /// gateway's pooled client; `prefix` is the Redis key prefix.
    pub fn in_redis(pool: fred::clients::Pool, prefix: &str, metrics: Metrics) -> Self {
        Self {
            store: Store::Redis(Box::new(redis::RedisStore::new(
                pool.clone(),
                prefix,
                metrics.clone(),
            ))),
            sessions: session::SessionStore::in_redis(pool, prefix, metrics.clone()),
            metrics,
        }
    }

    /// Connection State Recovery sessions.
    pub fn sessions(&self) -> &session::SessionStore {
        &self.sessions
    }

    /// Records one delivery and returns its position and stamped payload, or `None` when it is
    /// delivered unrecorded (history off, or the store unavailable: the channel's stream is then
    /// replaced on its next recorded item, so no recovery ever skips what was not recorded).
    pub async fn record(
        &self,
        channel: &str,
        event: &'static str,
        payload: &str,
        limits: &Limits,
        now_ms: u64,
    ) -> Option<Stamped> {
        let stamped = match &self.store {
            Store::Memory(m) => m.record(channel, event, payload, limits, now_ms),
            Store::Redis(r) => r.record(channel, event, payload, limits, now_ms).await,
        };
        let result = if stamped.is_some() {
            "recorded"
        } else if limits.enabled() {
            "unrecorded"
        } else {
            "disabled"
        };
        self.metrics
            .history_records
            .with_label_values(&[result])
            .inc();
        stamped
    }

    /// The channel's head, or `Unavailable` when the store cannot vouch for it (Redis down, or an
    /// in-memory channel may have been forgotten since `known_since_ms`).
    pub async fn head(
        &self,
        channel: &str,
        limits: &Limits,
        known_since_ms: u64,
    ) -> Result<Option<Position>, Unavailable> {
        if !limits.enabled() {
            return Err(Unavailable);
        }
        match &self.store {
            Store::Memory(m) => m.head(channel, known_since_ms),
            Store::Redis(r) => r.head(channel).await,
        }
    }

    /// The items after `since` (at most `limits.max_items + 1` are read) and the head.
    pub async fn since(
        &self,
        channel: &str,
        since: &Position,
        limits: &Limits,
    ) -> Result<Window, Unavailable> {
        if !limits.enabled() {
            return Err(Unavailable);
        }
        match &self.store {
            Store::Memory(m) => Ok(m.since(channel, since.offset, limits)),
            Store::Redis(r) => r.since(channel, since, limits).await,
        }
    }

    /// The newest `n` items (at most `limits.max_items`) and the head.
    pub async fn latest(
        &self,
        channel: &str,
        n: usize,
        limits: &Limits,
    ) -> Result<Window, Unavailable> {
        if !limits.enabled() {
            return Err(Unavailable);
        }
        let n = n.min(limits.max_items);
        match &self.store {
            Store::Memory(m) => Ok(m.latest(channel, n)),
            Store::Redis(r) => r.latest(channel, n).await,
        }
    }

    /// Orders this process's recording and broadcast of a channel's items against recovery
    /// reads of it: hold the guard from `record` until the broadcast is queued, and while
    /// reading for a recovery. In memory only: with Redis, items of other replicas arrive by
    /// pub/sub anyway (docs/protocol.md, order across replicas), so it would not make reads exact
    /// and would serialize each channel's broadcasts behind a Redis round trip.
    pub async fn order(&self, channel: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.store {
            Store::Memory(m) => Some(m.order(channel).await),
            Store::Redis(_) => None,
        }
    }

    /// A live feed of the channel's new items (every replica's, with Redis), for watchers such
    /// as the admin console: every item recorded after this returns. Ends when the store stops.
    pub async fn tail(&self, channel: &str) -> Tail {
        let rx = match &self.store {
            Store::Memory(m) => m.tail(channel),
            Store::Redis(r) => r.tail(channel).await,
        };
        Tail { rx }
    }

    /// Drops expired items, sessions and idle channels (in memory; Redis expires by itself).
    pub fn sweep(&self, limits: &Limits, now_ms: u64) {
        self.sessions.sweep(now_ms);
        if let Store::Memory(m) = &self.store {
            m.sweep(limits, now_ms);
            self.metrics
                .history_channels
                .set(i64::try_from(m.channels()).unwrap_or(i64::MAX));
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_adds_offset_and_epoch_as_the_last_fields() {
        assert_eq!(
            stamp(r#"{"a":1}"#, 7, "ab12"),
            r#"{"a":1,"offset":7,"epoch":"ab12"}"#
        );
        assert_eq!(stamp("{}", 1, "e"), r#"{"offset":1,"epoch":"e"}"#);
        let v: serde_json::Value = serde_json::from_str(&stamp(r#"{"m":"}"}"#, 3, "e")).unwrap();
        assert_eq!(v["m"], "}");
        assert_eq!(v["offset"], 3);
    }

    #[test]
    fn recovery_offsets_round_trip_and_garbage_is_no_position() {
        let p = Position::new("0a1b2c3d4e5f".into(), 42);
        assert_eq!(p.to_recovery_offset(), "0a1b2c3d4e5f:42");
        assert_eq!(Position::from_recovery_offset("0a1b2c3d4e5f:42"), Some(p));
        for bad in [
            "",
            "x",
            ":1",
            "ab:",
            "ab:-1",
            "a b:1",
            "ab:1.5",
            &"a".repeat(65),
        ] {
            assert_eq!(Position::from_recovery_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn epochs_are_twelve_hex_characters_and_differ() {
        let a = new_epoch();
        assert_eq!(a.len(), 12);
        assert!(valid_epoch(&a));
        assert_ne!(a, new_epoch());
    }
}

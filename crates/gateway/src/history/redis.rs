//! History kept in Redis, so every replica agrees on each channel's order: offsets are assigned
//! by a Lua script (`HINCRBY` on the channel's metadata, then `XADD` with the offset as the
//! stream ID), so two replicas publishing into one channel at once get distinct, increasing
//! offsets and the stream holds the items in offset order.
//!
//! Keys, all hash-tagged per channel so every script touches one Redis Cluster slot:
//! - `<prefix>:{ch:<channel>}:meta`, a hash: `epoch`, `top` (newest offset), `created` (ms).
//!   Expires [`META_TTL`] after the channel's last item, so a client that missed nothing in a
//!   quiet channel is told so exactly; a flushed Redis loses it, and the next item starts a new
//!   epoch.
//! - `<prefix>:{ch:<channel>}:log`, a stream with IDs `0-<offset>` and fields `e` (event),
//!   `p` (the payload as delivered), `t` (ms), `x` (epoch). `XADD ... MAXLEN ~ maxItems`, expires
//!   `maxAgeSeconds` after the last item; reads also drop older items.
//!
//! Degraded mode: when Redis does not answer within the gateway's Redis command timeout
//! ([`COMMAND_TIMEOUT`](crate::cluster::COMMAND_TIMEOUT); a delivery waits for its offset, so
//! this bounds the latency an unhealthy Redis adds to a chat message), the item is delivered
//! without `offset`/`epoch` (delivery never waits on history) and the channel is marked: its
//! next recorded item starts a new epoch, so no recovery can skip what was not recorded.
//! Reads that fail answer `recovered: false`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Value};
use serde_json::value::RawValue;
use tokio::sync::{broadcast, watch};

use super::coalesce::Coalescer;
use super::decide::Window;
use super::{Item, Limits, Position, Stamped, TAIL_BUFFER, Unavailable, new_epoch, stamp};
use crate::metrics::Metrics;
use crate::state::lock;

/// How long a channel's stream metadata outlives its last item (see the module doc).
pub const META_TTL: Duration = Duration::from_secs(24 * 3600);
/// A tail's `XREAD BLOCK`, below the client's command timeout.
const TAIL_BLOCK_MS: u64 = 400;
/// How long a new watcher waits for its tail to find the stream's head.
const TAIL_START_WAIT: Duration = Duration::from_secs(2);
/// Channels marked as having a recording gap, at most; past it every channel this replica
/// records into starts a new epoch once (see [`Gaps`]).
const MAX_GAP_CHANNELS: usize = 100_000;

/// Assigns the next offset, starting a new epoch when the stream is missing or must be renewed
/// (created before ARGV[8]), stamps the payload exactly like `history::stamp`, appends it.
pub const RECORD_SCRIPT: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'epoch', 'created')
local epoch = m[1]
if (not epoch) or tonumber(m[2] or '0') < tonumber(ARGV[8]) then
  epoch = ARGV[7]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', 0, 'created', ARGV[3])
end
local off = redis.call('HINCRBY', KEYS[1], 'top', 1)
local p = ARGV[2]
if p == '{}' then p = '{' else p = string.sub(p, 1, -2) .. ',' end
p = p .. '"offset":' .. off .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '0-' .. off, 'e', ARGV[1], 'p', p, 't', ARGV[3], 'x', epoch)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {epoch, off}
"#;

/// Replaces a stream that missed items (delivered unrecorded) by an empty one with a new epoch.
const RENEW_SCRIPT: &str = r"
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'top', 0, 'created', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// How often a replica retries renewing the streams it could not record into.
const REPAIR_EVERY: Duration = Duration::from_millis(500);

/// The head and, by mode, the items after an offset (`since`, at most ARGV[3], none when the
/// gap is longer: the caller then sees it cannot be filled) or the newest ARGV[2] (`latest`).
const READ_SCRIPT: &str = r"
local m = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'created')
if not m[1] then return {} end
local items
if ARGV[1] == 'since' then
  if tonumber(m[2]) - tonumber(ARGV[2]) > tonumber(ARGV[3]) then
    items = {}
  else
    items = redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[2], '+', 'COUNT', ARGV[3])
  end
elseif ARGV[1] == 'latest' then
  items = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
else
  items = {}
end
return {m[1], m[2], items, m[3] or '0'}
";

/// Each watched channel's feed, shared by its local watchers.
type Tails = Arc<Mutex<HashMap<Box<str>, (broadcast::Sender<Arc<Item>>, watch::Receiver<bool>)>>>;

/// The history store in Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    prefix: Arc<str>,
    record: Arc<Script>,
    read: Arc<Script>,
    renew: Arc<Script>,
    gaps: Arc<Mutex<Gaps>>,
    tails: Tails,
    metrics: Metrics,
    reads: Coalescer<ReadKey, ReadResult>,
}

/// A read: channel and script arguments.
type ReadKey = (Box<str>, Vec<String>);
/// A parsed read: the window and the stream's `created` time.
type ReadResult = Result<(Window, u64), Unavailable>;

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Channels whose items were delivered unrecorded. Their streams are renewed (new epoch) as soon
/// as Redis answers again, by a repair task, or by their next recorded item, whichever is first;
/// until then this replica answers no recovery for them. Bounded: past [`MAX_GAP_CHANNELS`],
/// `renew_all_before` stands for every stream created before the latest unrecorded delivery.
#[derive(Debug, Default)]
struct Gaps {
    channels: HashSet<Box<str>>,
    renew_all_before: u64,
    /// A repair task is running.
    repairing: bool,
}

impl Gaps {
    /// Marks a channel; true when a repair task must be started.
    fn mark(&mut self, channel: &str, now_ms: u64) -> bool {
        if self.channels.len() < MAX_GAP_CHANNELS {
            self.channels.insert(channel.into());
        } else if !self.channels.contains(channel) {
            self.renew_all_before = now_ms;
        }
        !std::mem::replace(&mut self.repairing, true)
    }

    /// Whether a stream of `channel` created at `created_ms` may miss unrecorded items.
    fn suspect(&self, channel: &str, created_ms: u64) -> bool {
        self.channels.contains(channel) || created_ms < self.renew_all_before
    }

    /// The `created` time below which the channel's stream must be renewed.
    fn renew_before(&self, channel: &str) -> u64 {
        if self.channels.contains(channel) {
            u64::MAX
        } else {
            self.renew_all_before
        }
    }
}

impl RedisStore {
    /// Uses the gateway's pooled Redis client (already connecting) and key prefix.
    pub fn new(pool: Pool, prefix: &str, metrics: Metrics) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
            record: Arc::new(Script::from_lua(RECORD_SCRIPT)),
            read: Arc::new(Script::from_lua(READ_SCRIPT)),
            renew: Arc::new(Script::from_lua(RENEW_SCRIPT)),
            gaps: Arc::default(),
            tails: Arc::default(),
            metrics,
            reads: Coalescer::default(),
        }
    }

    fn keys(&self, channel: &str) -> Vec<String> {
        vec![
            format!("{}:{{ch:{channel}}}:meta", self.prefix),
            format!("{}:{{ch:{channel}}}:log", self.prefix),
        ]
    }

    async fn call(
        &self,
        op: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, Unavailable> {
        eval(&self.pool, &self.metrics, op, script, keys, args).await
    }

    pub async fn record(
        &self,
        channel: &str,
        event: &'static str,
        payload: &str,
        limits: &Limits,
        now_ms: u64,
    ) -> Option<Stamped> {
        if !limits.enabled() {
            self.mark_gap(channel, now_ms);
            return None;
        }
        let renew_before = lock(&self.gaps).renew_before(channel);
        let args = vec![
            event.to_owned(),
            payload.to_owned(),
            now_ms.to_string(),
            limits.max_items.to_string(),
            limits.max_age_ms.max(1).to_string(),
            (META_TTL.as_millis() as u64)
                .max(limits.max_age_ms)
                .to_string(),
            new_epoch().to_string(),
            renew_before.to_string(),
        ];
        let reply = self
            .call("history_record", &self.record, self.keys(channel), args)
            .await;
        let position = reply.ok().and_then(|v| {
            let mut parts = v.into_array().into_iter();
            let epoch = parts.next()?.as_string()?;
            let offset = parts.next()?.as_u64()?;
            Some(Position::new(epoch.into(), offset))
        });
        let Some(position) = position else {
            self.mark_gap(channel, now_ms);
            return None;
        };
        {
            let mut gaps = lock(&self.gaps);
            gaps.channels.remove(channel);
        }
        // The script stamped its copy the same way; the delivered copy is stamped here.
        let text = stamp(payload, position.offset, &position.epoch);
        match RawValue::from_string(text) {
            Ok(raw) => Some(Stamped {
                position,
                payload: Arc::from(raw),
            }),
            Err(e) => {
                tracing::error!(event, error = %e, "payload is not a JSON object; delivered unrecorded");
                self.mark_gap(channel, now_ms);
                None
            }
        }
    }

    /// Marks a channel that got an unrecorded item and makes sure a repair task runs.
    fn mark_gap(&self, channel: &str, now_ms: u64) {
        if lock(&self.gaps).mark(channel, now_ms) {
            let store = self.clone();
            tokio::spawn(async move { store.repair().await });
        }
    }

    /// Renews the marked channels' streams as soon as Redis answers, so that no replica
    /// recovers across the items this one delivered unrecorded.
    async fn repair(&self) {
        loop {
            tokio::time::sleep(REPAIR_EVERY).await;
            let batch: Vec<Box<str>> = {
                let mut gaps = lock(&self.gaps);
                if gaps.channels.is_empty() {
                    gaps.repairing = false;
                    return;
                }
                gaps.channels.iter().take(1000).cloned().collect()
            };
            for channel in batch {
                let args = vec![
                    new_epoch().to_string(),
                    crate::state::unix_millis().to_string(),
                    (META_TTL.as_millis() as u64).to_string(),
                ];
                if self
                    .call("history_renew", &self.renew, self.keys(&channel), args)
                    .await
                    .is_err()
                {
                    break;
                }
                lock(&self.gaps).channels.remove(&channel);
            }
        }
    }

    /// A window read from Redis, refused while this replica knows the stream misses items.
    /// Identical reads arriving together share one call (see [`super::coalesce`]).
    async fn read(&self, channel: &str, args: Vec<String>) -> Result<Window, Unavailable> {
        let key = (Box::<str>::from(channel), args.clone());
        let (store, keys) = (self.clone(), self.keys(channel));
        // Called again for every later batch of the same read, so it clones what it sends.
        let read = move || {
            let (store, keys, args) = (store.clone(), keys.clone(), args.clone());
            async move { parse_window(store.call("history_read", &store.read, keys, args).await?) }
        };
        let (window, created) = self.reads.get(key, read).await.ok_or(Unavailable)??;
        if lock(&self.gaps).suspect(channel, created) {
            return Err(Unavailable);
        }
        Ok(window)
    }

    pub async fn head(&self, channel: &str) -> Result<Option<Position>, Unavailable> {
        let args = vec!["head".to_owned(), "0".to_owned(), "0".to_owned()];
        Ok(self.read(channel, args).await?.head)
    }

    pub async fn since(
        &self,
        channel: &str,
        since: &Position,
        limits: &Limits,
    ) -> Result<Window, Unavailable> {
        let args = vec![
            "since".to_owned(),
            since.offset.to_string(),
            (limits.max_items + 1).to_string(),
        ];
        self.read(channel, args).await
    }

    pub async fn latest(&self, channel: &str, n: usize) -> Result<Window, Unavailable> {
        if n == 0 {
            return self.head(channel).await.map(|head| Window {
                head,
                items: Vec::new(),
            });
        }
        let args = vec!["latest".to_owned(), n.to_string(), "0".to_owned()];
        let mut w = self.read(channel, args).await?;
        w.items.reverse();
        Ok(w)
    }

    /// One tail task per watched channel, on its own connection (a blocking `XREAD` holds the
    /// connection it runs on), shared by every local watcher of that channel. Returns once the
    /// task knows where the stream's head was (at most [`TAIL_START_WAIT`]), so every item
    /// recorded after this returns is seen.
    pub async fn tail(&self, channel: &str) -> broadcast::Receiver<Arc<Item>> {
        let (rx, mut started) = {
            let mut tails = lock(&self.tails);
            if let Some((tx, started)) = tails.get(channel) {
                (tx.subscribe(), started.clone())
            } else {
                let (tx, rx) = broadcast::channel(TAIL_BUFFER);
                let (started_tx, started) = watch::channel(false);
                tails.insert(channel.into(), (tx.clone(), started.clone()));
                let store = self.clone();
                let channel: Box<str> = channel.into();
                tokio::spawn(async move { store.run_tail(channel, tx, started_tx).await });
                (rx, started)
            }
        };
        let _ = tokio::time::timeout(TAIL_START_WAIT, started.wait_for(|s| *s)).await;
        rx
    }

    async fn run_tail(
        &self,
        channel: Box<str>,
        tx: broadcast::Sender<Arc<Item>>,
        started_tx: watch::Sender<bool>,
    ) {
        let client: Client = self.pool.next().clone_new();
        let _connection = client.init().await;
        let keys = self.keys(&channel);
        // Start after the current head: a tail is a live feed, not a replay.
        let mut epoch: Option<String> = None;
        let mut last = 0u64;
        let mut started = false;
        loop {
            {
                // Checked under the map's lock, so a new watcher either finds this task alive
                // or starts a new one.
                let mut tails = lock(&self.tails);
                if tx.receiver_count() == 0 {
                    tails.remove(&channel);
                    break;
                }
            }
            if !started || epoch.is_none() {
                match self.head(&channel).await {
                    Ok(head) => {
                        let head_epoch = head.as_ref().map(|h| h.epoch.to_string());
                        if !started {
                            last = head.as_ref().map_or(0, |h| h.offset);
                            started = true;
                            let _ = started_tx.send(true);
                        } else if head_epoch != epoch {
                            last = 0;
                        }
                        epoch = head_epoch;
                    }
                    Err(Unavailable) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let cmd = CustomCommand::new_static("XREAD", ClusterHash::Offset(5), true);
            let args: Vec<Value> = vec![
                "COUNT".into(),
                "100".into(),
                "BLOCK".into(),
                TAIL_BLOCK_MS.to_string().into(),
                "STREAMS".into(),
                keys[1].clone().into(),
                format!("0-{last}").into(),
            ];
            match client.custom::<Value, Value>(cmd, args).await {
                Ok(Value::Null) => {
                    // Nothing new: make sure the stream was not replaced meanwhile.
                    if let Ok(head) = self.head(&channel).await {
                        let head_epoch = head.as_ref().map(|h| h.epoch.to_string());
                        if head_epoch != epoch {
                            epoch = head_epoch;
                            last = 0;
                        }
                    }
                }
                Ok(v) => {
                    let entries = xread_entries(v);
                    for item in entries {
                        let (entry_epoch, item) = item;
                        if epoch.as_deref() != Some(entry_epoch.as_str()) {
                            // A new stream: read it from its start.
                            epoch = Some(entry_epoch);
                            last = 0;
                            break;
                        }
                        last = item.offset;
                        let _ = tx.send(Arc::new(item));
                    }
                }
                Err(e) => {
                    self.metrics.redis_error("history_tail");
                    tracing::debug!(error = %e, "history tail read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let _ = client.quit().await;
    }
}

/// Runs `script` on a connected client of `pool` (see [`crate::cluster::store::eval`]); a pool
/// with no connected client, an error or a timeout is counted under `op` and answered
/// `Unavailable`, so callers fall back at once. Shared by the history streams and the recovery
/// sessions.
pub(super) async fn eval(
    pool: &Pool,
    metrics: &Metrics,
    op: &'static str,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, Unavailable> {
    if !pool.clients().iter().any(|c| c.is_connected()) {
        metrics.redis_error(op);
        return Err(Unavailable);
    }
    crate::cluster::store::eval(pool, metrics, op, script, keys, args)
        .await
        .map_err(|()| Unavailable)
}

/// Parses the read script's reply: `{}` (no stream) or `{epoch, top, entries, created}`; the
/// stream's creation time comes second.
fn parse_window(v: Value) -> Result<(Window, u64), Unavailable> {
    let mut parts = v.into_array().into_iter();
    let Some(epoch) = parts.next() else {
        return Ok((Window::default(), 0));
    };
    let epoch: Arc<str> = epoch.as_string().ok_or(Unavailable)?.into();
    let top = parts.next().and_then(|t| t.as_u64()).ok_or(Unavailable)?;
    let items = parts
        .next()
        .map(Value::into_array)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| entry(e).map(|(_, item)| Arc::new(item)))
        .collect();
    let created = parts.next().and_then(|c| c.as_u64()).unwrap_or(0);
    Ok((
        Window {
            head: Some(Position::new(epoch, top)),
            items,
        },
        created,
    ))
}

/// One stream entry `[id, [field, value, ...]]` as an item, with its epoch.
fn entry(v: Value) -> Option<(String, Item)> {
    let mut parts = v.into_array().into_iter();
    let id = parts.next()?.as_string()?;
    let offset = id.strip_prefix("0-")?.parse().ok()?;
    let mut fields = parts.next()?.into_array().into_iter();
    let (mut event, mut payload, mut time_ms, mut epoch) = (None, None, None, None);
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        match k.as_str().as_deref() {
            Some("e") => event = v.as_string(),
            Some("p") => payload = v.as_string(),
            Some("t") => time_ms = v.as_u64(),
            Some("x") => epoch = v.as_string(),
            _ => {}
        }
    }
    let payload = RawValue::from_string(payload?).ok()?;
    Some((
        epoch?,
        Item {
            offset,
            time_ms: time_ms?,
            event: Cow::Owned(event?),
            payload: Arc::from(payload),
        },
    ))
}

/// `XREAD`'s reply for one stream: `[[key, [entry, ...]]]` (RESP2) or `{key: [entry, ...]}`
/// (RESP3).
fn xread_entries(v: Value) -> Vec<(String, Item)> {
    let entries = match v {
        Value::Map(map) => map.inner().into_values().next().unwrap_or(Value::Null),
        v => v
            .into_array()
            .into_iter()
            .next()
            .map(|s| s.into_array().into_iter().nth(1).unwrap_or(Value::Null))
            .unwrap_or(Value::Null),
    };
    entries.into_array().into_iter().filter_map(entry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_channel_hashes_to_one_slot() {
        let metrics = Metrics::new();
        let pool = fred::types::Builder::default_centralized()
            .build_pool(1)
            .unwrap();
        let store = RedisStore::new(pool, "live", metrics);
        let keys = store.keys("stream.42");
        assert_eq!(
            keys,
            ["live:{ch:stream.42}:meta", "live:{ch:stream.42}:log"]
        );
        let slots: HashSet<u16> = keys
            .iter()
            .map(|k| fred::util::redis_keyslot(k.as_bytes()))
            .collect();
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn gaps_renew_a_marked_channel_and_past_the_bound_every_older_stream() {
        let mut g = Gaps::default();
        assert_eq!(g.renew_before("a"), 0);
        assert!(g.mark("a", 5), "the first mark starts a repair");
        assert!(!g.mark("a2", 5), "one repair at a time");
        assert_eq!(g.renew_before("a"), u64::MAX);
        assert!(g.suspect("a", 100));
        assert_eq!(g.renew_before("b"), 0);
        assert!(!g.suspect("b", 1));
        for i in 0..MAX_GAP_CHANNELS {
            g.mark(&format!("c{i}"), 6);
        }
        g.mark("late", 7);
        assert_eq!(g.renew_before("late"), 7);
        assert_eq!(g.renew_before("b"), 7);
        assert!(g.suspect("b", 6));
        assert!(!g.suspect("b", 7));
    }

    #[test]
    fn a_read_reply_becomes_a_window_in_offset_order() {
        let e = |off: u64| -> Value {
            Value::Array(vec![
                format!("0-{off}").into(),
                Value::Array(vec![
                    "e".into(),
                    "chat:new".into(),
                    "p".into(),
                    format!("{{\"offset\":{off},\"epoch\":\"ab\"}}").into(),
                    "t".into(),
                    "1000".into(),
                    "x".into(),
                    "ab".into(),
                ]),
            ])
        };
        let v = Value::Array(vec![
            "ab".into(),
            "9".into(),
            Value::Array(vec![e(8), e(9)]),
            "77".into(),
        ]);
        let (w, created) = parse_window(v).unwrap();
        assert_eq!(created, 77);
        assert_eq!(w.head, Some(Position::new("ab".into(), 9)));
        assert_eq!(w.items.iter().map(|i| i.offset).collect::<Vec<_>>(), [8, 9]);
        assert_eq!(w.items[0].event, "chat:new");
        assert_eq!(w.items[0].time_ms, 1000);
        assert!(parse_window(Value::Array(vec![])).unwrap().0.head.is_none());
    }
}

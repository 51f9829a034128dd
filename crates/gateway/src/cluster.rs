//! Many replicas as one, through Redis: the socketioxide-redis adapter for cross-replica fan-out
//! (over our [`ResilientDriver`] for fred) and a [`SharedStore`] for per-user rate limits, mutes,
//! and cluster-wide viewer counts and presence.
//!
//! Failure semantics, in one place: Redis being down must never take local traffic with it.
//! - The driver never blocks or fails a broadcast: while Redis is unreachable a publish is
//!   skipped (counted in `live_redis_publish_skipped_total`) and the adapter goes on to deliver
//!   locally. Pub/sub is at-most-once: what was published during the outage is not replayed.
//! - fred reconnects with exponential backoff; on every (re)connection the driver subscribes to
//!   its channels again, so cross-replica delivery resumes by itself.
//! - Rate limits and mutes fall back to the process-local limiter and mute table whenever a Redis
//!   call fails or times out (`live_redis_errors_total{op}`); mutes are always recorded locally
//!   too, so the replica that received a mute enforces it even during an outage.
//! - Viewer counts and presence are per-pod snapshots with a TTL, refreshed every
//!   [`SNAPSHOT_EVERY`]; a pod that dies without cleaning up drops out of every count within
//!   [`POD_TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::{Builder, Message, RespVersion};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::ratelimit::{Kind, WINDOW};

/// How long a command may take before we treat Redis as unavailable for it. Chat waits on the
/// rate-limit script, so this bounds the extra latency an unhealthy Redis can add.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// How often each pod republishes its viewer and presence snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// A pod whose snapshot is older than this is no longer counted.
pub const POD_TTL: Duration = Duration::from_secs(10);

/// Builds the two fred clients from a `redis://` URL: a subscriber client for the adapter and a
/// small pool for shared state. Neither is connected yet.
pub fn clients(url: &str) -> Result<(SubscriberClient, Pool)> {
    let mut config =
        Config::from_url(url).map_err(|e| Error::Startup(format!("REDIS_URL: {e}")))?;
    // fred ignores `?protocol=resp3` in URLs; the sharded pub/sub the adapter uses needs RESP3.
    config.version = RespVersion::RESP3;
    // Start even when Redis is down: keep retrying in the background instead of failing.
    config.fail_fast = false;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            // A command that failed is not retried on the next connection: callers fall back
            // to local state instead of waiting.
            c.max_command_attempts = 1;
        })
        // Retry forever, 100 ms doubling to 5 s.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    let subscriber = builder
        .build_subscriber_client()
        .map_err(|e| Error::Startup(format!("redis subscriber client: {e}")))?;
    let pool = builder
        .build_pool(2)
        .map_err(|e| Error::Startup(format!("redis pool: {e}")))?;
    Ok((subscriber, pool))
}

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// The adapter's transport: fred sharded pub/sub that never fails a broadcast because Redis is
/// away, and resubscribes after every reconnection.
#[derive(Clone)]
pub struct ResilientDriver {
    conn: SubscriberClient,
    handlers: Handlers,
    /// Channels we want, kept by us rather than by fred, because fred only remembers a
    /// subscription that succeeded and we must also subscribe to those asked for while down.
    wanted: Arc<RwLock<HashSet<String>>>,
    /// Channels subscribed on the current connection; cleared on every reconnection.
    confirmed: Arc<RwLock<HashSet<String>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for ResilientDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientDriver").finish_non_exhaustive()
    }
}

/// Why a driver call failed; the adapter only logs it.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct DriverError(String);

impl ResilientDriver {
    /// Starts connecting in the background and returns at once.
    pub fn start(conn: SubscriberClient, metrics: Metrics, stop: CancellationToken) -> Self {
        let driver = Self {
            conn,
            handlers: Arc::default(),
            wanted: Arc::default(),
            confirmed: Arc::default(),
            metrics,
        };
        tokio::spawn(pipe_messages(
            driver.conn.message_rx(),
            driver.handlers.clone(),
            driver.metrics.clone(),
        ));
        let resubscriber = driver.clone();
        let mut reconnects = driver.conn.reconnect_rx();
        tokio::spawn(async move {
            // A subscription asked for while the connection was still being set up can be missed
            // by the reconnect notification; the periodic check closes that gap.
            let mut check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = reconnects.recv() => match r {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            write(&resubscriber.confirmed).clear();
                            resubscriber.subscribe_wanted().await;
                            tracing::info!("redis connected; cross-replica delivery active");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = check.tick() => resubscriber.subscribe_wanted().await,
                }
            }
        });
        // Drives the connection and its reconnections for the life of the process.
        let _connection = driver.conn.connect();
        driver
    }

    /// Subscribes to every wanted channel not yet subscribed on the current connection.
    async fn subscribe_wanted(&self) {
        if !self.conn.is_connected() {
            return;
        }
        let missing: Vec<String> = {
            let confirmed = read(&self.confirmed);
            read(&self.wanted)
                .iter()
                .filter(|c| !confirmed.contains(*c))
                .cloned()
                .collect()
        };
        for chan in missing {
            self.try_subscribe(chan).await;
        }
    }

    async fn try_subscribe(&self, chan: String) {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.conn.ssubscribe(chan.as_str())).await {
            Ok(Ok(())) => {
                write(&self.confirmed).insert(chan);
            }
            Ok(Err(e)) => {
                self.metrics.redis_error("subscribe");
                tracing::warn!(chan, error = %e, "subscribe failed; will retry");
            }
            Err(_) => {
                self.metrics.redis_error("subscribe");
                tracing::warn!(chan, "subscribe timed out; will retry");
            }
        }
    }

    /// Whether every wanted channel is subscribed on a live connection.
    pub fn is_subscribed(&self) -> bool {
        self.conn.is_connected() && read(&self.wanted).is_subset(&read(&self.confirmed))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forwards each pub/sub message to the adapter stream of its channel. A full stream drops the
/// message (counted) instead of blocking every other channel behind it.
async fn pipe_messages(mut rx: broadcast::Receiver<Message>, handlers: Handlers, metrics: Metrics) {
    loop {
        match rx.recv().await {
            Ok(msg) => {
                let chan = msg.channel.to_string();
                let Some(data) = msg.value.into_owned_bytes() else {
                    continue;
                };
                let tx = read(&handlers).get(&chan).cloned();
                if let Some(tx) = tx
                    && tx.try_send((chan, data)).is_err()
                {
                    metrics.redis_adapter_dropped.inc();
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.redis_adapter_dropped.inc_by(n);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Driver for ResilientDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> std::result::Result<(), DriverError> {
        if !self.conn.is_connected() {
            self.metrics.redis_publish_skipped.inc();
            return Ok(());
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, self.conn.spublish::<u64, _, _>(chan, val))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.metrics.redis_error("publish");
                tracing::debug!(error = %e, "publish failed; delivering locally only");
            }
            Err(_) => {
                self.metrics.redis_error("publish");
                tracing::debug!("publish timed out; delivering locally only");
            }
        }
        // Never fail: the adapter would otherwise skip the local delivery too.
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> std::result::Result<MessageStream<ChanItem>, DriverError> {
        let (tx, rx) = mpsc::channel(size);
        write(&self.handlers).insert(chan.clone(), tx);
        write(&self.wanted).insert(chan.clone());
        if self.conn.is_connected() {
            self.try_subscribe(chan).await;
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> std::result::Result<(), DriverError> {
        write(&self.handlers).remove(&chan);
        write(&self.wanted).remove(&chan);
        write(&self.confirmed).remove(&chan);
        if self.conn.is_connected() {
            self.conn
                .sunsubscribe(chan)
                .await
                .map_err(|e| DriverError(e.to_string()))?;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> std::result::Result<u16, DriverError> {
        let (_, n): (String, u16) = self
            .conn
            .pubsub_shardnumsub(chan)
            .await
            .map_err(|e| DriverError(e.to_string()))?;
        Ok(n)
    }
}

/// What the shared check of a chat or gift decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendDecision {
    Allowed,
    Muted,
    Limited,
}

/// Mute check then rate-limit count, atomically, with the local limiter's semantics: a refused
/// event is not counted; the window opens with the first counted event.
const SEND_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local c = tonumber(redis.call('GET', KEYS[2]) or '0')
if c >= tonumber(ARGV[1]) then return 2 end
c = redis.call('INCR', KEYS[2])
if c == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
";

/// Replaces this pod's snapshot: viewers per channel and (channel, user) presence counts.
const SNAPSHOT_SCRIPT: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
local nv = tonumber(ARGV[4])
local i = 5
for _ = 1, nv do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - 3600000)
return 1
";

/// Sums a hash field over the pods alive since ARGV[2].
const SUM_SCRIPT: &str = r"
local pods = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local n = 0
for _, p in ipairs(pods) do
  local v = redis.call('HGET', ARGV[3] .. p, ARGV[2])
  if v then n = n + tonumber(v) end
end
return n
";

/// Per-user limits, mutes, and cluster-wide counts kept in Redis.
#[derive(Clone)]
pub struct SharedStore {
    pool: Pool,
    prefix: Arc<str>,
    pod: Arc<str>,
    send: Arc<Script>,
    snapshot: Arc<Script>,
    sum: Arc<Script>,
    metrics: Metrics,
    /// Woken when local membership changes, so a snapshot goes out soon rather than at the next
    /// tick.
    changed: Arc<Notify>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("prefix", &self.prefix)
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

/// This pod's local membership: viewers per channel, and sockets per (channel, user).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub viewers: HashMap<String, u64>,
    pub presence: HashMap<(String, String), u64>,
}

impl SharedStore {
    /// Connects the pool in the background and returns at once.
    pub fn start(pool: Pool, prefix: &str, pod: &str, metrics: Metrics) -> Self {
        let _connections = pool.connect_pool();
        Self {
            pool,
            prefix: prefix.into(),
            pod: pod.into(),
            send: Arc::new(Script::from_lua(SEND_SCRIPT)),
            snapshot: Arc::new(Script::from_lua(SNAPSHOT_SCRIPT)),
            sum: Arc::new(Script::from_lua(SUM_SCRIPT)),
            metrics,
            changed: Arc::default(),
        }
    }

    /// Whether every pooled connection is up.
    pub fn is_connected(&self) -> bool {
        self.pool.clients().iter().all(|c| c.is_connected())
    }

    /// `<prefix>:<parts...>`; also for features that keep keys of their own (the console).
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = String::from(&*self.prefix);
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    async fn call<R: fred::types::FromValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, ()> {
        if !self.is_connected() {
            return Err(());
        }
        let client = self.pool.next_connected();
        match tokio::time::timeout(
            COMMAND_TIMEOUT,
            script.evalsha_with_reload::<R, _, _>(client, keys, args),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.metrics.redis_error(op);
                tracing::debug!(op, error = %e, "redis call failed");
                Err(())
            }
            Err(_) => {
                self.metrics.redis_error(op);
                tracing::debug!(op, "redis call timed out");
                Err(())
            }
        }
    }

    /// The shared mute check and rate-limit count for one chat or gift. `Err` means Redis could
    /// not answer and the caller must decide locally.
    pub async fn check_send(
        &self,
        kind: Kind,
        channel: &str,
        user: &str,
        limit: u32,
    ) -> Result<SendDecision, ()> {
        let keys = vec![
            self.key(&["mute", channel, user]),
            self.key(&["rl", kind.label(), user]),
        ];
        let args = vec![limit.to_string(), WINDOW.as_millis().to_string()];
        match self
            .call::<i64>("rate_limit", &self.send, keys, args)
            .await?
        {
            0 => Ok(SendDecision::Muted),
            2 => Ok(SendDecision::Limited),
            _ => Ok(SendDecision::Allowed),
        }
    }

    /// Records a mute for every replica. Best effort: the caller also mutes locally.
    pub async fn mute(&self, channel: &str, user: &str, seconds: u64) {
        if !self.is_connected() {
            self.metrics.redis_error("mute");
            return;
        }
        let key = self.key(&["mute", channel, user]);
        let client = self.pool.next_connected();
        let set = fred::interfaces::KeysInterface::set::<(), _, _>(
            client,
            key,
            "1",
            Some(fred::types::Expiration::EX(
                i64::try_from(seconds).unwrap_or(i64::MAX),
            )),
            None,
            false,
        );
        match tokio::time::timeout(COMMAND_TIMEOUT, set).await {
            Ok(Ok(())) => {}
            _ => {
                self.metrics.redis_error("mute");
                tracing::warn!("mute could not be stored in redis; enforced on this replica only");
            }
        }
    }

    /// Viewers of `channel` over every live pod.
    pub async fn viewers(&self, channel: &str, now_ms: u64) -> Result<u64, ()> {
        let alive_since = now_ms.saturating_sub(POD_TTL.as_millis() as u64);
        let keys = vec![self.key(&["pods"])];
        let args = vec![
            alive_since.to_string(),
            channel.to_owned(),
            self.key(&["viewers", ""]),
        ];
        self.call::<u64>("viewers", &self.sum, keys, args).await
    }

    /// Whether `user` has a socket in `channel` on any live pod.
    pub async fn present(&self, channel: &str, user: &str, now_ms: u64) -> Result<bool, ()> {
        let alive_since = now_ms.saturating_sub(POD_TTL.as_millis() as u64);
        let keys = vec![self.key(&["pods"])];
        let args = vec![
            alive_since.to_string(),
            presence_field(channel, user),
            self.key(&["presence", ""]),
        ];
        self.call::<u64>("presence", &self.sum, keys, args)
            .await
            .map(|n| n > 0)
    }

    /// One plain command with the same timeout and error accounting as the scripts.
    pub(crate) async fn command<R: fred::types::FromValue>(
        &self,
        op: &'static str,
        name: &'static str,
        args: Vec<String>,
    ) -> Result<R, ()> {
        if !self.is_connected() {
            return Err(());
        }
        let cmd =
            fred::types::CustomCommand::new_static(name, fred::types::ClusterHash::FirstKey, false);
        let client = self.pool.next_connected();
        match tokio::time::timeout(COMMAND_TIMEOUT, client.custom::<R, _>(cmd, args)).await {
            Ok(Ok(v)) => Ok(v),
            _ => {
                self.metrics.redis_error(op);
                Err(())
            }
        }
    }

    /// The pods alive since `now_ms - POD_TTL`.
    async fn live_pods(&self, op: &'static str, now_ms: u64) -> Result<Vec<String>, ()> {
        let alive_since = now_ms.saturating_sub(POD_TTL.as_millis() as u64);
        let args = vec![self.key(&["pods"]), alive_since.to_string(), "+inf".into()];
        self.command(op, "ZRANGEBYSCORE", args).await
    }

    /// Viewers per channel summed over every live pod (the console's ranking). Read pod by pod
    /// from the client side, so a large deployment never blocks Redis in one long script.
    pub async fn channel_viewers(&self, now_ms: u64) -> Result<HashMap<String, u64>, ()> {
        let mut total = HashMap::new();
        for pod in self.live_pods("channels", now_ms).await? {
            let counts: HashMap<String, u64> = self
                .command("channels", "HGETALL", vec![self.key(&["viewers", &pod])])
                .await?;
            for (channel, n) in counts {
                *total.entry(channel).or_default() += n;
            }
        }
        Ok(total)
    }

    /// Users with a socket in `channel` on any live pod: at most `limit`, sorted, and whether
    /// some were left out. Each pod's presence is scanned in bounded pages.
    pub async fn channel_users(
        &self,
        channel: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ()> {
        /// Pages per pod: a scan never walks an unbounded hash on the console's behalf.
        const MAX_PAGES: usize = 64;
        // Channel names are `[A-Za-z0-9_.-]`, so they hold no glob character to escape.
        let pattern = format!("{}*", presence_field(channel, ""));
        let mut users = std::collections::BTreeSet::new();
        let mut truncated = false;
        'pods: for pod in self.live_pods("users", now_ms).await? {
            let key = self.key(&["presence", &pod]);
            let mut cursor = "0".to_owned();
            for _ in 0..MAX_PAGES {
                let (next, fields): (String, Vec<String>) = self
                    .command(
                        "users",
                        "HSCAN",
                        vec![
                            key.clone(),
                            cursor,
                            "MATCH".into(),
                            pattern.clone(),
                            "COUNT".into(),
                            "1000".into(),
                        ],
                    )
                    .await?;
                // HSCAN pages alternate field, value.
                for field in fields.iter().step_by(2) {
                    if let Some((_, user)) = field.split_once('\n') {
                        if users.len() >= limit && !users.contains(user) {
                            truncated = true;
                            break 'pods;
                        }
                        users.insert(user.to_owned());
                    }
                }
                cursor = next;
                if cursor == "0" {
                    continue 'pods;
                }
            }
            truncated = true;
        }
        Ok((users.into_iter().collect(), truncated))
    }

    /// Signals that local membership changed.
    pub fn membership_changed(&self) {
        self.changed.notify_one();
    }

    /// Publishes this pod's snapshot every [`SNAPSHOT_EVERY`], and soon after each change, until
    /// `stop`; on stop, removes it so a drained pod stops counting at once.
    pub fn spawn_snapshots(
        &self,
        local: impl Fn() -> Snapshot + Send + 'static,
        now_ms: impl Fn() -> u64 + Send + 'static,
        stop: CancellationToken,
    ) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                    () = store.changed.notified() => {
                        // Coalesce a burst of joins into one write.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                store.write_snapshot(&local(), now_ms()).await;
            }
            store.write_snapshot(&Snapshot::default(), 0).await;
        });
    }

    async fn write_snapshot(&self, s: &Snapshot, now_ms: u64) {
        let keys = vec![
            self.key(&["viewers", &self.pod]),
            self.key(&["presence", &self.pod]),
            self.key(&["pods"]),
        ];
        let mut args = vec![
            POD_TTL.as_millis().to_string(),
            self.pod.to_string(),
            now_ms.to_string(),
            s.viewers.len().to_string(),
        ];
        for (channel, n) in &s.viewers {
            args.push(channel.clone());
            args.push(n.to_string());
        }
        for ((channel, user), n) in &s.presence {
            args.push(presence_field(channel, user));
            args.push(n.to_string());
        }
        let _ = self
            .call::<i64>("snapshot", &self.snapshot, keys, args)
            .await;
    }
}

/// Channel names cannot contain a newline, so this field is unambiguous.
fn presence_field(channel: &str, user: &str) -> String {
    format!("{channel}\n{user}")
}

/// Logs Redis state changes and keeps `live_redis_up` current.
pub fn spawn_health(
    subscriber: SubscriberClient,
    store: SharedStore,
    metrics: Metrics,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut was_up = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let up = subscriber.is_connected() && store.is_connected();
            metrics.redis_up.set(i64::from(up));
            if was_up != Some(up) {
                if up {
                    tracing::info!("redis is up");
                } else {
                    tracing::warn!(
                        "redis is unreachable: serving local clients only, limits and mutes are per replica until it returns"
                    );
                }
                was_up = Some(up);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_field_splits_back_into_its_valid_channel_and_user() {
        // Channel names cannot hold a newline, so the first one always ends the channel.
        assert!(!crate::protocol::valid_channel_name("a\nb"));
        let field = presence_field("live.1", "user\nwith:odd chars");
        assert_eq!(
            field.split_once('\n'),
            Some(("live.1", "user\nwith:odd chars"))
        );
    }

    #[test]
    fn a_bad_redis_url_is_a_startup_error() {
        assert!(matches!(clients("not a url"), Err(Error::Startup(_))));
    }
}

//! Shared state in Redis: per-user rate limits and mutes, and the per-pod snapshots that
//! cluster-wide viewer counts and presence are summed from.
//!
//! Keys (every one starts with `LIVE_REDIS_PREFIX`, written `{prefix}` below) carry a Redis
//! Cluster hash tag wherever one script touches several, so they share a slot:
//! - `{prefix}:{u:<user>}:rl:<messages|gifts>` and `{prefix}:{u:<user>}:mute:<channel>`: a user's
//!   rate-limit windows and mutes (the send check reads both), spread over the cluster by user;
//! - `{prefix}:{pods}:index`, `{prefix}:{pods}:viewers:<pod>`, `{prefix}:{pods}:presence:<pod>`:
//!   the snapshots, which the count scripts read across pods, all in one slot;
//! - `{prefix}:{ch:<channel>}:…`: per-channel keys of other features ([`SharedStore::channel_key`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::scripts::Script;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::COMMAND_TIMEOUT;
use crate::metrics::Metrics;
use crate::ratelimit::{Kind, WINDOW};

/// How often each pod republishes its viewer and presence snapshot.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);
/// A pod whose snapshot is older than this is no longer counted.
pub const POD_TTL: Duration = Duration::from_secs(10);

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

/// Replaces this pod's snapshot (viewers per channel, and (channel, user) presence counts),
/// registers the pod as alive, and returns the other live pods' viewers of this pod's channels
/// as a flat `[channel, count, ...]` list (for presence batching on the cluster-wide size).
///
/// KEYS: viewers:<pod>, presence:<pod>, index. ARGV: ttl ms, pod, now ms, number of viewer
/// pairs, viewers key prefix, then the viewer pairs and the presence pairs.
const SNAPSHOT_SCRIPT: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
local nv = tonumber(ARGV[4])
local i = 6
local channels = {}
for k = 1, nv do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  channels[k] = ARGV[i]
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local now = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600000)
local out = {}
if nv == 0 or now == 0 then return out end
local sums = {}
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now - tonumber(ARGV[1]), '+inf')) do
  if p ~= ARGV[2] then
    -- HMGET in chunks: Lua's unpack takes a few thousand arguments at most.
    for first = 1, nv, 1000 do
      local last = math.min(first + 999, nv)
      local vals = redis.call('HMGET', ARGV[5] .. p, unpack(channels, first, last))
      for k, v in ipairs(vals) do
        if v then
          local c = first + k - 1
          sums[c] = (sums[c] or 0) + tonumber(v)
        end
      end
    end
  end
end
for c, n in pairs(sums) do
  out[#out + 1] = channels[c]
  out[#out + 1] = tostring(n)
end
return out
";

/// Sums a hash field over the pods alive since ARGV[1], except pod ARGV[4] (the caller counts
/// its own members live).
const SUM_SCRIPT: &str = r"
local pods = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
local n = 0
for _, p in ipairs(pods) do
  if p ~= ARGV[4] then
    local v = redis.call('HGET', ARGV[3] .. p, ARGV[2])
    if v then n = n + tonumber(v) end
  end
end
return n
";

/// The shortest time between two rewrites of this pod's snapshot, whatever the join/leave churn:
/// a full rewrite costs Redis O(local channels + presence pairs), and a client toggling join and
/// leave must not turn that into a write per toggle. Other replicas see a change within this
/// (this replica counts its own members live).
pub const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// After a membership change, how long to wait for more before writing: a burst of joins is one
/// write.
const SNAPSHOT_COALESCE: Duration = Duration::from_millis(100);

/// When to write the next snapshot: at once for the periodic refresh, [`SNAPSHOT_COALESCE`]
/// after a change, and never sooner than [`SNAPSHOT_MIN_INTERVAL`] after the previous write.
pub fn next_snapshot_at(last: Option<Instant>, now: Instant, changed: bool) -> Instant {
    let wanted = if changed {
        now + SNAPSHOT_COALESCE
    } else {
        now
    };
    match last {
        Some(last) => wanted.max(last + SNAPSHOT_MIN_INTERVAL),
        None => wanted,
    }
}

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
    /// Members on the other live pods of each channel this pod has members in, as of this pod's
    /// last snapshot write.
    others: Arc<RwLock<HashMap<String, u64>>>,
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
            others: Arc::default(),
        }
    }

    /// The pooled clients, for other features that keep state in Redis. They work the same in
    /// every mode (standalone, Cluster, Sentinel): route multi-key commands and scripts by a
    /// shared hash tag (see [`Self::channel_key`]), and give every call a timeout and a local
    /// fallback, as this module does.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// `LIVE_REDIS_PREFIX`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key of `channel`'s own, `{prefix}:{ch:<channel>}:<suffix>`: every key built for one
    /// channel shares its hash slot, so one script may touch them together on a Cluster.
    pub fn channel_key(&self, channel: &str, suffix: &str) -> String {
        channel_key(&self.prefix, channel, suffix)
    }

    /// Whether every pooled connection is up.
    pub fn is_connected(&self) -> bool {
        self.pool.clients().iter().all(|c| c.is_connected())
    }

    /// Whether every pooled connection answers a PING.
    pub async fn answers(&self) -> bool {
        for client in self.pool.clients() {
            if !super::answers(client).await {
                return false;
            }
        }
        true
    }

    /// `<prefix>:<parts...>`: for features that keep single keys of their own (the console).
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut k = String::from(&*self.prefix);
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn user_key(&self, user: &str, what: &str) -> String {
        user_key(&self.prefix, user, what)
    }

    fn pods_key(&self, what: &str) -> String {
        pods_key(&self.prefix, what)
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
        eval(&self.pool, &self.metrics, op, script, keys, args).await
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
            self.user_key(user, &format!("mute:{channel}")),
            self.user_key(user, &format!("rl:{}", kind.label())),
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
        let key = self.user_key(user, &format!("mute:{channel}"));
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

    /// Viewers of `channel` on every other live pod (this pod counts its own members live).
    pub async fn viewers_elsewhere(&self, channel: &str, now_ms: u64) -> Result<u64, ()> {
        let alive_since = now_ms.saturating_sub(POD_TTL.as_millis() as u64);
        let keys = vec![self.pods_key("index")];
        let args = vec![
            alive_since.to_string(),
            channel.to_owned(),
            self.pods_key("viewers:"),
            self.pod.to_string(),
        ];
        self.call::<u64>("viewers", &self.sum, keys, args).await
    }

    /// Whether `user` has a socket in `channel` on another live pod.
    pub async fn present_elsewhere(
        &self,
        channel: &str,
        user: &str,
        now_ms: u64,
    ) -> Result<bool, ()> {
        let alive_since = now_ms.saturating_sub(POD_TTL.as_millis() as u64);
        let keys = vec![self.pods_key("index")];
        let args = vec![
            alive_since.to_string(),
            presence_field(channel, user),
            self.pods_key("presence:"),
            self.pod.to_string(),
        ];
        self.call::<u64>("presence", &self.sum, keys, args)
            .await
            .map(|n| n > 0)
    }

    /// Members of `channel` on the other live pods, as of this pod's last snapshot write (0 for
    /// a channel this pod had no member of then).
    pub fn others_in(&self, channel: &str) -> u64 {
        self.others
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .copied()
            .unwrap_or(0)
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
        let args = vec![
            self.pods_key("index"),
            alive_since.to_string(),
            "+inf".into(),
        ];
        self.command(op, "ZRANGEBYSCORE", args).await
    }

    /// Viewers per channel summed over every live pod (the console's ranking). Read pod by pod
    /// from the client side, so a large deployment never blocks Redis in one long script.
    pub async fn channel_viewers(&self, now_ms: u64) -> Result<HashMap<String, u64>, ()> {
        let mut total = HashMap::new();
        for pod in self.live_pods("channels", now_ms).await? {
            let counts: HashMap<String, u64> = self
                .command(
                    "channels",
                    "HGETALL",
                    vec![self.pods_key(&format!("viewers:{pod}"))],
                )
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
            let key = self.pods_key(&format!("presence:{pod}"));
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

    /// Publishes this pod's snapshot every [`SNAPSHOT_EVERY`], and soon after each change (but
    /// at most once per [`SNAPSHOT_MIN_INTERVAL`]), until `stop`; on stop, removes it so a
    /// drained pod stops counting at once.
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
            let mut last = None;
            loop {
                let changed = tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => false,
                    () = store.changed.notified() => true,
                };
                let at = next_snapshot_at(last, Instant::now(), changed);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(at.into()) => {}
                }
                store.write_snapshot(&local(), now_ms()).await;
                last = Some(Instant::now());
            }
            store.write_snapshot(&Snapshot::default(), 0).await;
        });
    }

    async fn write_snapshot(&self, s: &Snapshot, now_ms: u64) {
        let keys = vec![
            self.pods_key(&format!("viewers:{}", self.pod)),
            self.pods_key(&format!("presence:{}", self.pod)),
            self.pods_key("index"),
        ];
        let mut args = vec![
            POD_TTL.as_millis().to_string(),
            self.pod.to_string(),
            now_ms.to_string(),
            s.viewers.len().to_string(),
            self.pods_key("viewers:"),
        ];
        for (channel, n) in &s.viewers {
            args.push(channel.clone());
            args.push(n.to_string());
        }
        for ((channel, user), n) in &s.presence {
            args.push(presence_field(channel, user));
            args.push(n.to_string());
        }
        self.metrics.redis_snapshot_writes.inc();
        if let Ok(flat) = self
            .call::<Vec<String>>("snapshot", &self.snapshot, keys, args)
            .await
        {
            *self.others.write().unwrap_or_else(PoisonError::into_inner) = pairs(flat);
        }
    }
}

fn user_key(prefix: &str, user: &str, what: &str) -> String {
    format!("{prefix}:{{u:{user}}}:{what}")
}

fn pods_key(prefix: &str, what: &str) -> String {
    format!("{prefix}:{{pods}}:{what}")
}

fn channel_key(prefix: &str, channel: &str, suffix: &str) -> String {
    format!("{prefix}:{{ch:{channel}}}:{suffix}")
}

/// The part of a key Redis Cluster hashes: the first `{...}` with something inside, else the
/// whole key.
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// `[channel, count, ...]` into a map; malformed entries are skipped.
fn pairs(flat: Vec<String>) -> HashMap<String, u64> {
    let mut out = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(channel), Some(n)) = (it.next(), it.next()) {
        if let Ok(n) = n.parse() {
            out.insert(channel, n);
        }
    }
    out
}

/// Channel names cannot contain a newline, so this field is unambiguous.
fn presence_field(channel: &str, user: &str) -> String {
    format!("{channel}\n{user}")
}

/// Runs `script` on the next connected client of `pool` within [`COMMAND_TIMEOUT`]; an error or
/// a timeout is counted under `op` (`live_redis_errors_total`) and answered `Err`. The one script
/// runner of the shared store and of the history; each checks the pool's connection its own way
/// first.
pub(crate) async fn eval<R: fred::types::FromValue>(
    pool: &Pool,
    metrics: &Metrics,
    op: &'static str,
    script: &Script,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<R, ()> {
    let client = pool.next_connected();
    match tokio::time::timeout(
        COMMAND_TIMEOUT,
        script.evalsha_with_reload::<R, _, _>(client, keys, args),
    )
    .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            metrics.redis_error(op);
            tracing::debug!(op, error = %e, "redis call failed");
            Err(())
        }
        Err(_) => {
            metrics.redis_error(op);
            tracing::debug!(op, "redis call timed out");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_rewritten_at_most_once_per_min_interval_whatever_the_churn() {
        let t0 = Instant::now();
        assert_eq!(next_snapshot_at(None, t0, false), t0);
        assert_eq!(next_snapshot_at(None, t0, true), t0 + SNAPSHOT_COALESCE);
        // Right after a write, a change waits for the interval to pass...
        let after = t0 + Duration::from_millis(10);
        assert_eq!(
            next_snapshot_at(Some(t0), after, true),
            t0 + SNAPSHOT_MIN_INTERVAL
        );
        // ...and so does the periodic refresh; long after, a change only coalesces.
        assert_eq!(
            next_snapshot_at(Some(t0), after, false),
            t0 + SNAPSHOT_MIN_INTERVAL
        );
        let late = t0 + Duration::from_secs(5);
        assert_eq!(
            next_snapshot_at(Some(t0), late, true),
            late + SNAPSHOT_COALESCE
        );
    }

    #[test]
    fn keys_one_script_touches_together_share_a_hash_slot() {
        // The send check reads a mute and a rate-limit window of the same user, whatever the
        // user id holds (braces included).
        for user in ["u1", "we{ird}", "}{", ""] {
            assert_eq!(
                hash_tag(&user_key("live", user, "mute:ch")),
                hash_tag(&user_key("live", user, "rl:messages")),
                "{user}"
            );
        }
        assert_ne!(
            hash_tag(&user_key("live", "a", "rl:messages")),
            hash_tag(&user_key("live", "b", "rl:messages")),
            "users spread over the cluster"
        );
        // The snapshot and count scripts read every pod's keys and the index.
        assert_eq!(hash_tag(&pods_key("live", "viewers:p1")), "pods");
        assert_eq!(hash_tag(&pods_key("live", "index")), "pods");
        assert_eq!(hash_tag(&channel_key("live", "c.1", "history")), "ch:c.1");
    }

    #[test]
    fn the_other_pods_counts_parse_from_the_scripts_flat_list() {
        let m = pairs(vec![
            "a".into(),
            "3".into(),
            "b".into(),
            "x".into(),
            "c".into(),
        ]);
        assert_eq!(m, HashMap::from([("a".to_owned(), 3)]));
    }

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
}

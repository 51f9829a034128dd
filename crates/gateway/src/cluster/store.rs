//! Shared state in Redis: per-user rate limits and mutes, and the per-pod snapshots that
//! cluster-wide viewer counts and presence are summed from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
}

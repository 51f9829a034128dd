//! Socket.IO Connection State Recovery sessions: which channels a socket was in and where each
//! stream stood when it joined, under the private session id (`pid`) its CONNECT reply carried.
//!
//! A session is written when its socket joins or leaves a channel (so a client that reconnects
//! to another replica before this one even noticed the drop still finds it), and again on
//! disconnect with the short recovery TTL (`history.maxDisconnectionSeconds`). Each record names
//! its owner (the socket id that last held the pid): a socket that lingered on the old replica
//! until its heartbeat timed out must not overwrite the session its client already resumed
//! elsewhere. A session is only handed to a socket of the same user.
//!
//! With Redis the record is a hash at `<prefix>:{sess:<pid>}` (hash-tagged per pid: one slot per
//! script); without it, a bounded map in this process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use fred::clients::Pool;
use fred::types::Value;
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};

use super::Position;
use super::decide::Joined;
use crate::metrics::Metrics;
use crate::state::lock;

/// How long a session is kept while its socket is connected (rewritten on every join and leave,
/// and shortened to the recovery window on disconnect). Only a replica that dies without running
/// its disconnect handlers leaves a session this long.
pub const CONNECTED_TTL: Duration = Duration::from_secs(24 * 3600);
/// Sessions one gateway keeps without Redis; past it new sessions are not recoverable.
pub const MAX_MEMORY_SESSIONS: usize = 200_000;

/// One channel of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionChannel {
    #[serde(rename = "n")]
    pub channel: String,
    #[serde(rename = "h", default, skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
    /// The stream's head before the socket joined: epoch and offset.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(rename = "o", default)]
    pub offset: u64,
    /// When it joined (ms), so an in-memory channel forgotten since then is noticed.
    #[serde(rename = "t", default)]
    pub joined_ms: u64,
    /// The head could not be read at join (Redis unavailable): the session cannot be restored
    /// exactly.
    #[serde(rename = "u", default, skip_serializing_if = "std::ops::Not::not")]
    pub unknown: bool,
}

impl SessionChannel {
    pub fn new(channel: &str, host: bool, at_join: Option<&Position>, now_ms: u64) -> Self {
        Self {
            channel: channel.to_owned(),
            host,
            epoch: at_join.map(|p| p.epoch.to_string()),
            offset: at_join.map_or(0, |p| p.offset),
            joined_ms: now_ms,
            unknown: false,
        }
    }

    /// A channel joined while its head could not be read.
    pub fn unknown(channel: &str, host: bool, now_ms: u64) -> Self {
        Self {
            unknown: true,
            ..Self::new(channel, host, None, now_ms)
        }
    }

    /// Where the channel stood at join, for [`super::decide::plan_session`]; `None` when unknown.
    pub fn joined(&self) -> Option<Joined> {
        (!self.unknown).then(|| Joined {
            channel: self.channel.clone(),
            at_join: self
                .epoch
                .as_deref()
                .map(|e| Position::new(e.into(), self.offset)),
        })
    }
}

/// A session's stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The user it belongs to.
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "c")]
    pub channels: Vec<SessionChannel>,
}

/// A socket's recoverable session, kept in its extensions.
#[derive(Debug)]
pub struct SocketSession {
    pub pid: Box<str>,
    user: Box<str>,
    channels: Mutex<Vec<SessionChannel>>,
    /// Another socket resumed this session (its client came back before this socket's drop was
    /// noticed): this socket must not store it again when it finally disconnects.
    taken: AtomicBool,
}

impl SocketSession {
    pub fn new(pid: Box<str>, user: &str, channels: Vec<SessionChannel>) -> Self {
        Self {
            pid,
            user: user.into(),
            channels: Mutex::new(channels),
            taken: AtomicBool::new(false),
        }
    }

    /// Adds or replaces a channel; returns the record to store.
    pub fn joined(&self, channel: SessionChannel) -> Record {
        let mut channels = lock(&self.channels);
        channels.retain(|c| c.channel != channel.channel);
        channels.push(channel);
        self.record(channels.clone())
    }

    /// Removes a channel; returns the record to store.
    pub fn left(&self, channel: &str) -> Record {
        let mut channels = lock(&self.channels);
        channels.retain(|c| c.channel != channel);
        self.record(channels.clone())
    }

    /// The record as of a disconnection: only the channels the socket was still in (a channel
    /// `end` removes members without telling their sessions).
    pub fn at_disconnect(&self, still_in: &[&str]) -> Record {
        let channels = lock(&self.channels);
        self.record(
            channels
                .iter()
                .filter(|c| still_in.contains(&c.channel.as_str()))
                .cloned()
                .collect(),
        )
    }

    /// The record as it stands.
    pub fn current(&self) -> Record {
        let channels = lock(&self.channels).clone();
        self.record(channels)
    }

    /// Whether the session has no channel (and so was never stored).
    pub fn is_empty(&self) -> bool {
        lock(&self.channels).is_empty()
    }

    fn record(&self, channels: Vec<SessionChannel>) -> Record {
        Record {
            user: self.user.to_string(),
            channels,
        }
    }
}

/// A new private session id: 128 random bits, hex. Never shown to anyone but its client.
pub fn new_pid() -> Box<str> {
    format!("{:032x}", rand::random::<u128>()).into()
}

/// What a client may send as `auth.pid`: what [`new_pid`] makes.
pub fn valid_pid(pid: &str) -> bool {
    pid.len() == 32 && pid.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes `{u, o, c}` and the TTL; on release (ARGV[5] = 1) only when the owner is still ARGV[1].
const SAVE_SCRIPT: &str = r"
if ARGV[5] == '1' then
  local o = redis.call('HGET', KEYS[1], 'o')
  if o and o ~= ARGV[1] then return 0 end
end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'u', ARGV[2], 'c', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Hands the session to a new owner when the user matches; returns its channels.
const TAKE_SCRIPT: &str = r"
local r = redis.call('HMGET', KEYS[1], 'u', 'c')
if (not r[1]) or r[1] ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'o', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return r[2]
";

/// Where sessions are kept. Cheap to clone.
#[derive(Debug, Clone)]
pub enum SessionStore {
    Memory(Arc<Mutex<MemorySessions>>),
    Redis(Box<RedisSessions>),
}

/// Sessions in this process. A connected socket's session is only referenced (its socket keeps
/// it), so an idle joined connection costs a map entry here, not a copy of its record.
#[derive(Debug, Default)]
pub struct MemorySessions {
    live: HashMap<Box<str>, Weak<SocketSession>>,
    /// Sessions of dropped sockets: record and expiry.
    dropped: HashMap<Box<str>, (Record, u64)>,
}

/// Sessions in Redis.
#[derive(Clone)]
pub struct RedisSessions {
    pool: Pool,
    prefix: Arc<str>,
    save: Arc<Script>,
    take: Arc<Script>,
    metrics: Metrics,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    pub fn in_memory() -> Self {
        Self::Memory(Arc::default())
    }

    pub fn in_redis(pool: Pool, prefix: &str, metrics: Metrics) -> Self {
        Self::Redis(Box::new(RedisSessions {
            pool,
            prefix: prefix.into(),
            save: Arc::new(Script::from_lua(SAVE_SCRIPT)),
            take: Arc::new(Script::from_lua(TAKE_SCRIPT)),
            metrics,
        }))
    }

    /// Stores the session of a connected socket owned by `owner` (after a join or leave).
    pub async fn save(&self, sess: &Arc<SocketSession>, owner: &str, record: &Record) {
        match self {
            Self::Memory(m) => {
                lock(m).live.insert(sess.pid.clone(), Arc::downgrade(sess));
            }
            Self::Redis(r) => {
                r.write(&sess.pid, owner, record, CONNECTED_TTL, false)
                    .await
            }
        }
    }

    /// Stores the session of a socket that just dropped, recoverable for `window`, unless
    /// another socket resumed it meanwhile.
    pub async fn release(
        &self,
        sess: &Arc<SocketSession>,
        owner: &str,
        record: &Record,
        window: Duration,
        now_ms: u64,
    ) {
        if sess.taken.load(Ordering::Acquire) {
            return;
        }
        match self {
            Self::Memory(m) => {
                let mut m = lock(m);
                m.forget_live(sess);
                if m.dropped.len() >= MAX_MEMORY_SESSIONS {
                    m.dropped.retain(|_, (_, exp)| *exp > now_ms);
                    if m.dropped.len() >= MAX_MEMORY_SESSIONS {
                        return;
                    }
                }
                let expires = now_ms.saturating_add(window.as_millis() as u64);
                m.dropped
                    .insert(sess.pid.clone(), (record.clone(), expires));
            }
            Self::Redis(r) => r.write(&sess.pid, owner, record, window, true).await,
        }
    }

    /// Forgets the session of a socket that left on purpose.
    pub async fn end(&self, sess: &Arc<SocketSession>, owner: &str) {
        if sess.taken.load(Ordering::Acquire) {
            return;
        }
        match self {
            Self::Memory(m) => lock(m).forget_live(sess),
            Self::Redis(_) => self.discard(&sess.pid, owner).await,
        }
    }

    /// Forgets a session `owner` took but will not resume.
    pub async fn discard(&self, pid: &str, owner: &str) {
        if let Self::Redis(r) = self {
            // An owner-checked overwrite with the shortest TTL: never another owner's.
            let empty = Record {
                user: String::new(),
                channels: Vec::new(),
            };
            r.write(pid, owner, &empty, Duration::from_millis(1), true)
                .await;
        }
        // In memory, taking already removed it.
    }

    /// The session `pid` of `user`, handed to `new_owner`; `None` when there is none (expired,
    /// another user's, or the store unavailable).
    pub async fn take(
        &self,
        pid: &str,
        user: &str,
        new_owner: &str,
        window: Duration,
        now_ms: u64,
    ) -> Option<Record> {
        match self {
            Self::Memory(m) => {
                let mut m = lock(m);
                if let Some((record, expires)) = m.dropped.get(pid) {
                    if *expires <= now_ms || record.user != user {
                        return None;
                    }
                    return m.dropped.remove(pid).map(|(record, _)| record);
                }
                // Its socket is still connected here (the drop not noticed yet).
                let live = m.live.get(pid)?.upgrade()?;
                if *live.user != *user {
                    return None;
                }
                live.taken.store(true, Ordering::Release);
                m.live.remove(pid);
                let channels = lock(&live.channels).clone();
                Some(live.record(channels))
            }
            Self::Redis(r) => {
                let args = vec![
                    user.to_owned(),
                    new_owner.to_owned(),
                    (CONNECTED_TTL.max(window).as_millis() as u64).to_string(),
                ];
                let v = r.call("session_take", &r.take, r.key(pid), args).await?;
                let channels = serde_json::from_str(&v.as_string()?).ok()?;
                Some(Record {
                    user: user.to_owned(),
                    channels,
                })
            }
        }
    }

    /// Drops expired sessions (in memory; Redis expires by itself).
    pub fn sweep(&self, now_ms: u64) {
        if let Self::Memory(m) = self {
            let mut m = lock(m);
            m.dropped.retain(|_, (_, exp)| *exp > now_ms);
            m.live.retain(|_, w| w.strong_count() > 0);
            let (dropped, live) = (m.dropped.len(), m.live.len());
            m.dropped.shrink_to(dropped * 2);
            m.live.shrink_to(live * 2);
        }
    }
}

impl MemorySessions {
    fn forget_live(&mut self, sess: &Arc<SocketSession>) {
        if self
            .live
            .get(&sess.pid)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(sess)))
        {
            self.live.remove(&sess.pid);
        }
    }
}

impl RedisSessions {
    fn key(&self, pid: &str) -> Vec<String> {
        vec![format!("{}:{{sess:{pid}}}", self.prefix)]
    }

    async fn write(
        &self,
        pid: &str,
        owner: &str,
        record: &Record,
        ttl: Duration,
        only_owner: bool,
    ) {
        let Ok(channels) = serde_json::to_string(&record.channels) else {
            return;
        };
        let args = vec![
            owner.to_owned(),
            record.user.clone(),
            channels,
            (ttl.as_millis() as u64).max(1).to_string(),
            if only_owner { "1" } else { "0" }.to_owned(),
        ];
        let _ = self
            .call("session_save", &self.save, self.key(pid), args)
            .await;
    }

    async fn call(
        &self,
        op: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Option<Value> {
        super::redis::eval(&self.pool, &self.metrics, op, script, keys, args)
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: &str, user: &str, channels: &[&str]) -> Arc<SocketSession> {
        Arc::new(SocketSession::new(
            pid.into(),
            user,
            channels
                .iter()
                .map(|c| SessionChannel::new(c, false, None, 1))
                .collect(),
        ))
    }

    const W: Duration = Duration::from_secs(120);

    #[tokio::test]
    async fn a_dropped_session_is_handed_only_to_its_user_within_its_window() {
        let s = SessionStore::in_memory();
        let a = session("p1", "alice", &["c1"]);
        s.save(&a, "sid-a", &a.at_disconnect(&["c1"])).await;
        s.release(&a, "sid-a", &a.at_disconnect(&["c1"]), W, 1_000)
            .await;
        assert_eq!(s.take("p1", "mallory", "sid-m", W, 2_000).await, None);
        assert_eq!(s.take("p1", "alice", "sid-b", W, 200_000).await, None);
        let got = s.take("p1", "alice", "sid-b", W, 2_000).await.unwrap();
        assert_eq!(got.channels[0].channel, "c1");
        assert_eq!(got.user, "alice");
        // Taken once: gone.
        assert_eq!(s.take("p1", "alice", "sid-c", W, 2_000).await, None);
        assert_eq!(s.take("nope", "alice", "sid-b", W, 2_000).await, None);
    }

    #[tokio::test]
    async fn a_session_whose_drop_was_not_noticed_yet_is_resumed_and_the_old_socket_stays_quiet() {
        let s = SessionStore::in_memory();
        let old = session("p1", "alice", &["c1"]);
        s.save(&old, "sid-a", &old.at_disconnect(&["c1"])).await;
        assert_eq!(s.take("p1", "mallory", "sid-m", W, 10).await, None);
        let got = s.take("p1", "alice", "sid-b", W, 10).await.unwrap();
        assert_eq!(got.channels.len(), 1);
        // The client resumed on sid-b and joined c2.
        let new = session("p1", "alice", &["c1", "c2"]);
        s.save(&new, "sid-b", &new.at_disconnect(&["c1", "c2"]))
            .await;
        // sid-a's heartbeat finally times out: it neither overwrites nor ends the session.
        s.release(&old, "sid-a", &old.at_disconnect(&["c1"]), W, 30)
            .await;
        s.end(&old, "sid-a").await;
        new.taken.load(Ordering::Acquire);
        s.release(&new, "sid-b", &new.at_disconnect(&["c1", "c2"]), W, 40)
            .await;
        let got = s.take("p1", "alice", "sid-c", W, 50).await.unwrap();
        assert_eq!(got.channels.len(), 2);
    }

    #[tokio::test]
    async fn a_session_ended_on_purpose_is_gone() {
        let s = SessionStore::in_memory();
        let a = session("p1", "alice", &["c1"]);
        s.save(&a, "sid-a", &a.at_disconnect(&["c1"])).await;
        s.end(&a, "sid-a").await;
        assert_eq!(s.take("p1", "alice", "sid-b", W, 2).await, None);
    }

    #[tokio::test]
    async fn a_live_session_costs_a_reference_and_is_swept_with_its_socket() {
        let s = SessionStore::in_memory();
        let a = session("p1", "alice", &["c1"]);
        s.save(&a, "sid-a", &a.at_disconnect(&["c1"])).await;
        drop(a);
        s.sweep(0);
        let SessionStore::Memory(m) = &s else {
            unreachable!()
        };
        assert!(lock(m).live.is_empty());
    }

    #[test]
    fn pids_are_32_hex_characters_and_unguessable_by_construction() {
        let p = new_pid();
        assert!(valid_pid(&p));
        assert_ne!(p, new_pid());
        assert!(!valid_pid("short"));
        assert!(!valid_pid(&"g".repeat(32)));
    }

    #[test]
    fn the_record_after_a_disconnect_keeps_only_the_channels_still_joined() {
        let s = SocketSession::new(new_pid(), "u", Vec::new());
        assert!(s.is_empty());
        s.joined(SessionChannel::new("a", true, None, 1));
        s.joined(SessionChannel::new("b", false, None, 2));
        let r = s.at_disconnect(&["b"]);
        assert_eq!(r.channels.len(), 1);
        assert_eq!(r.channels[0].channel, "b");
        let r = s.left("a");
        assert_eq!(r.channels.len(), 1);
    }

    #[test]
    fn a_channel_joined_while_the_head_was_unknown_cannot_be_planned() {
        assert!(SessionChannel::unknown("c", false, 1).joined().is_none());
        assert!(SessionChannel::new("c", false, None, 1).joined().is_some());
    }

    #[test]
    fn the_stored_form_is_compact() {
        let c = SessionChannel::new("c", false, Some(&Position::new("ab".into(), 4)), 9);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"n":"c","e":"ab","o":4,"t":9}"#
        );
    }
}

//! The gateway's shared state: one `Clone` struct of `Arc`s handed to every handler, the bridge and
//! the admin endpoints. No statics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use socketioxide::socket::Sid;

use crate::auth::{AuthError, Claims, Purpose, Verifier};
use crate::churn::{self, Churn};
use crate::client_ip::PerSource;
use crate::cluster::{self, Rooms, SendDecision, SharedStore};
use crate::config::RuntimeConfig;
use crate::error::Error;
use crate::history::{History, Limits};
use crate::lifecycle::Sessions;
use crate::logsample::LogSampler;
use crate::metrics::Metrics;
use crate::moderation::{Muted, Mutes};
use crate::presence::{Announce, Batch, PresenceBook};
use crate::ratelimit::{Decision, Kind, RateLimiter};
use crate::sanitize::Sanitizer;
use crate::trust::HostRegistry;

/// Shared state; cloning is a handful of reference-count increments.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The current configuration. Handlers take a snapshot per event with [`AppState::config`], so
    /// a reload applies to existing connections from their next event on.
    config: watch::Receiver<Arc<RuntimeConfig>>,
    pub verifier: Arc<Verifier>,
    /// When each connection's token ends: one queue for the process, swept by one task.
    pub sessions: Sessions,
    /// One lock for all users: a check is a hash lookup and an add, far shorter than the JSON
    /// work around it, so contention stays low at the rates one gateway sees.
    limiter: Arc<Mutex<RateLimiter>>,
    mutes: Arc<Mutex<Mutes>>,
    /// Local room sizes and pending presence batches for large rooms.
    presence: Arc<Mutex<PresenceBook>>,
    /// Recent joins and leaves per socket and channel, for churn damping.
    churn: Arc<Mutex<Churn<Sid>>>,
    /// Hosts the backend asserted through the bridge.
    pub hosts: HostRegistry,
    /// Engine.IO sessions per client source, for the per-IP cap.
    pub sessions_per_source: PerSource,
    /// Sampling of repeatable failure logs.
    pub logs: Arc<LogSampler>,
    pub sanitizer: Arc<Sanitizer>,
    pub metrics: Metrics,
    /// Set once, on SIGTERM/SIGINT: readiness fails and new handshakes are refused from then on.
    draining: Arc<AtomicBool>,
    /// Limits, mutes and counts shared by every replica, when Redis is configured. The local
    /// limiter and mute table above are the fallback whenever it cannot answer.
    pub shared: Option<SharedStore>,
    /// Channel history and recovery sessions: in this process, or in Redis with `shared`.
    pub history: History,
    /// This replica's subscriptions to channels' Redis pub/sub channels, when Redis is
    /// configured: told about every local join and leave.
    pub rooms: Option<Rooms>,
}

impl AppState {
    pub fn new(
        config: watch::Receiver<Arc<RuntimeConfig>>,
        verifier: Verifier,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            verifier: Arc::new(verifier),
            sessions: Sessions::default(),
            limiter: Arc::default(),
            mutes: Arc::default(),
            presence: Arc::default(),
            churn: Arc::default(),
            hosts: HostRegistry::default(),
            sessions_per_source: PerSource::default(),
            logs: Arc::new(LogSampler::new(metrics.clone())),
            sanitizer: Arc::new(Sanitizer::default()),
            history: History::in_memory(metrics.clone()),
            metrics,
            draining: Arc::default(),
            shared: None,
            rooms: None,
        }
    }

    /// Keeps history somewhere else than in this process (Redis).
    pub fn with_history(mut self, history: History) -> Self {
        self.history = history;
        self
    }

    /// Shares limits, mutes and counts through Redis, and routes channel traffic through the
    /// channels' own pub/sub channels.
    pub fn with_shared(mut self, shared: SharedStore, rooms: Rooms) -> Self {
        self.shared = Some(shared);
        self.rooms = Some(rooms);
        self
    }

    /// Shares host assertions through Redis.
    pub fn with_shared_hosts(mut self, pool: fred::clients::Pool, prefix: &str) -> Self {
        self.hosts = self.hosts.with_redis(pool, prefix);
        self
    }

    /// Whether `user` may send one more `kind` event in `channel`: not muted, within the limit.
    /// Counts the event when allowed. Decided in Redis when it answers, locally otherwise.
    pub async fn check_send(
        &self,
        kind: Kind,
        channel: &str,
        user: &str,
        limit: u32,
    ) -> Result<(), Error> {
        let limited = || {
            self.metrics
                .rate_limit_hits
                .with_label_values(&[kind.label()])
                .inc();
            match kind {
                Kind::Messages => Error::MessageRateLimited,
                Kind::Gifts => Error::GiftRateLimited,
                Kind::Moderation => Error::ModerationRateLimited,
            }
        };
        if self.is_muted(channel, user) {
            return Err(Error::Muted);
        }
        if let Some(shared) = &self.shared {
            match shared.check_send(kind, channel, user, limit).await {
                Ok(SendDecision::Allowed) => return Ok(()),
                Ok(SendDecision::Muted) => return Err(Error::Muted),
                Ok(SendDecision::Limited) => return Err(limited()),
                Err(()) => {}
            }
        }
        match self.rate_limit(kind, user, limit) {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { .. } => Err(limited()),
        }
    }

    /// Records a local join and says whether to announce it now or in the room's next batch.
    pub fn presence_joined(&self, channel: &str, user: &str) -> Announce {
        let threshold = self.config().gateway.presence.batch_threshold;
        let others = self.members_elsewhere(channel);
        lock(&self.presence).joined(channel, user, threshold, others)
    }

    /// Records a local leave and says whether to announce it now or in the room's next batch.
    pub fn presence_left(&self, channel: &str, user: &str) -> Announce {
        let threshold = self.config().gateway.presence.batch_threshold;
        let others = self.members_elsewhere(channel);
        lock(&self.presence).left(channel, user, threshold, others)
    }

    /// Members of `channel` on the other replicas, as of their last snapshots (0 alone).
    fn members_elsewhere(&self, channel: &str) -> u32 {
        self.shared.as_ref().map_or(0, |s| {
            u32::try_from(s.others_in(channel)).unwrap_or(u32::MAX)
        })
    }

    pub fn presence_ended(&self, channel: &str) {
        lock(&self.presence).ended(channel);
        lock(&self.churn).ended(channel);
    }

    /// Records a socket's join or leave for churn damping: announce it now, hold it for the
    /// next flush, or drop it because it undid a held one.
    pub fn presence_churn(&self, socket: Sid, change: churn::Held) -> churn::Decision {
        let window =
            std::time::Duration::from_millis(self.config().gateway.presence.batch_interval_ms);
        lock(&self.churn).changed(&socket, change, Instant::now(), window)
    }

    /// The joins and leaves held by churn damping, for announcing.
    pub fn take_held_presence(&self) -> Vec<churn::Held> {
        let window =
            std::time::Duration::from_millis(self.config().gateway.presence.batch_interval_ms);
        lock(&self.churn).flush(Instant::now(), window)
    }

    pub fn take_presence_batches(&self) -> Vec<(String, Batch)> {
        lock(&self.presence).take_batches()
    }

    pub fn resync_presence(&self, sizes: impl IntoIterator<Item = (String, u64)>) {
        lock(&self.presence).resync(sizes);
    }

    /// Notes that local channel membership changed, so shared counts are refreshed soon.
    pub fn membership_changed(&self) {
        if let Some(shared) = &self.shared {
            shared.membership_changed();
        }
    }

    /// A local socket joined `room`: refreshes shared counts soon and, with Redis, returns once
    /// this replica receives the room's cross-replica traffic (at most
    /// [`cluster::JOIN_SUBSCRIBE_WAIT`]: a slow Redis delays a join, never refuses it).
    pub async fn room_joined(&self, room: &str) {
        self.membership_changed();
        if let Some(rooms) = &self.rooms {
            // Cancellation-safe: a join that stops waiting leaves the subscription to finish.
            let subscribed = tokio::time::timeout(
                cluster::JOIN_SUBSCRIBE_WAIT,
                rooms.joined(crate::realtime::NAMESPACE, room),
            )
            .await;
            if !matches!(subscribed, Ok(Ok(()))) {
                self.metrics.redis_error("subscribe");
            }
        }
    }

    /// A local socket left `room`: refreshes shared counts soon and lets the room's
    /// subscription linger out if it was the last local member.
    pub fn room_left(&self, room: &str) {
        self.membership_changed();
        if let Some(rooms) = &self.rooms {
            rooms.left(crate::realtime::NAMESPACE, room);
        }
    }

    /// A snapshot of the configuration in force now.
    pub fn config(&self) -> Arc<RuntimeConfig> {
        self.config.borrow().clone()
    }

    /// A receiver that sees every future config change.
    pub fn config_updates(&self) -> watch::Receiver<Arc<RuntimeConfig>> {
        self.config.clone()
    }

    /// Verifies a token for `purpose` now (waiting briefly for a JWKS refetch when its `kid` is
    /// unknown).
    pub async fn verify(&self, token: &str, purpose: Purpose) -> Result<Claims, AuthError> {
        self.verifier
            .verify_fresh(token, purpose, unix_seconds)
            .await
    }

    /// Counts one event against the user's local budget for `kind`.
    fn rate_limit(&self, kind: Kind, user: &str, limit: u32) -> Decision {
        lock(&self.limiter).check(kind, user, limit, Instant::now())
    }

    /// Mutes `user` in `channel` for `seconds`, here and (with Redis) on every replica. The
    /// local table keeps at most `moderation.maxMutesPerChannel` per channel.
    pub async fn mute(&self, channel: &str, user: &str, seconds: u64) {
        let until = Instant::now() + std::time::Duration::from_secs(seconds);
        let cap = self.config().gateway.moderation.max_mutes_per_channel;
        if lock(&self.mutes).mute(channel, user, until, cap) == Muted::EvictedOldest {
            self.metrics.mutes_evicted.inc();
        }
        if let Some(shared) = &self.shared {
            shared.mute(channel, user, seconds).await;
        }
    }

    fn is_muted(&self, channel: &str, user: &str) -> bool {
        lock(&self.mutes).is_muted(channel, user, Instant::now())
    }

    /// Drops expired rate-limit windows, mutes and history; run periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        lock(&self.limiter).sweep(now);
        lock(&self.mutes).sweep(now);
        self.hosts.sweep(now);
        let limits = Limits::from_config(&self.config().gateway.history);
        self.history.sweep(&limits, unix_millis());
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.draining.set(1);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Locks a mutex, recovering it if a panic poisoned it: every guarded value here (counters,
/// expiry maps) stays consistent between statements, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch: the protocol's `timestamp`, like JavaScript's `Date.now()`.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for JWT time claims.
pub fn unix_seconds() -> u64 {
    unix_millis() / 1000
}

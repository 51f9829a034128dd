//! Many replicas as one, through Redis: the socketioxide-redis adapter (our fork, with per-room
//! channels) for cross-replica fan-out over our [`ResilientDriver`] for fred, and a
//! [`SharedStore`] for per-user rate limits, mutes, and cluster-wide viewer counts and presence.
//!
//! Routing: a broadcast to `channel:X` is published on X's own pub/sub channel (sharded
//! `SPUBLISH` on Redis Cluster, plain `PUBLISH` otherwise), and a replica is subscribed to it
//! exactly while it has local members of X (plus [`ROOM_LINGER`] after the last one left), so a
//! replica without viewers of a stream never receives its traffic. A join is acknowledged only
//! once the replica receives the channel. Everything else (requests to the whole namespace,
//! fetches, `disconnect` of a `user:` room) goes on the namespace channel every replica hears.
//!
//! Redis deployments ([`Mode`], chosen by the `REDIS_URL` scheme): a standalone server, Redis
//! Cluster, or a primary behind Sentinel; each optionally over TLS. Keys that one script touches
//! together share a hash tag, so every script runs on a Cluster (see [`store`]).
//!
//! Failure semantics, in one place: Redis being down must never take local traffic with it.
//! - The driver never blocks or fails a broadcast: while Redis is unreachable a publish is
//!   skipped (counted in `live_redis_publish_skipped_total`) and the adapter goes on to deliver
//!   locally. Pub/sub is at-most-once: what was published during the outage is not replayed.
//! - fred reconnects with exponential backoff (on Sentinel, to whichever primary the sentinels
//!   name; on a Cluster, following the new slot map); on every reconnection the driver subscribes
//!   to every channel it wants again, so cross-replica delivery resumes by itself.
//! - Rate limits and mutes fall back to the process-local limiter and mute table whenever a Redis
//!   call fails or times out (`live_redis_errors_total{op}`); mutes are always recorded locally
//!   too, so the replica that received a mute enforces it even during an outage.
//! - Viewer counts and presence are this replica's live membership plus the other replicas'
//!   snapshots, which have a TTL and are refreshed every [`SNAPSHOT_EVERY`]; a pod that dies
//!   without cleaning up drops out of every count within [`POD_TTL`].
//! - `live_redis_up` is 1 only while a PING round trip on both connections succeeded in the last
//!   health check, so a client that never connected (or cannot authenticate, or fails TLS) is
//!   never reported up.

mod driver;
pub mod store;

pub use driver::{DriverError, ResilientDriver};
pub use store::{POD_TTL, SNAPSHOT_EVERY, SendDecision, SharedStore, Snapshot};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy, TlsConnector, UnresponsiveConfig};
use fred::types::{Builder, RespVersion};
use socketioxide_redis::{RoomChannels, RoomSubscriptions};
use tokio_util::sync::CancellationToken;

use crate::args::RedisSettings;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// How long a command may take before we treat Redis as unavailable for it. Chat waits on the
/// rate-limit script, so this bounds the extra latency an unhealthy Redis can add.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a replica stays subscribed to a channel after its last local member left: long
/// enough that a viewer reloading the page (leave, then join a second later) costs no
/// subscription round trip, short enough that an abandoned channel stops costing Redis egress
/// within seconds.
pub const ROOM_LINGER: Duration = Duration::from_secs(3);

/// The longest a `join` waits for its channel's subscription before it is acknowledged anyway
/// (Redis slow or away: the member gets local traffic now and cross-replica traffic once the
/// driver's retry succeeds).
pub const JOIN_SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// The per-room subscriptions of this replica (see [`socketioxide_redis::RoomSubscriptions`]).
pub type Rooms = RoomSubscriptions<ResilientDriver>;

/// Rooms that get a pub/sub channel of their own: the channel rooms. Per-user rooms
/// (`user:<id>`, used to disconnect a user everywhere) stay on the namespace channel: one
/// subscription per connected user would cost more than it saves.
pub fn room_channels() -> RoomChannels {
    RoomChannels {
        filter: |room| crate::protocol::channel_of(room).is_some(),
        linger: ROOM_LINGER,
    }
}

/// How Redis is deployed, from the `REDIS_URL` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `redis://`, `rediss://`: one server (or a primary whose replicas the gateway ignores).
    Standalone,
    /// `redis-cluster://`, `rediss-cluster://`: Redis Cluster, sharded pub/sub.
    Cluster,
    /// `redis-sentinel://`, `rediss-sentinel://`: the primary Sentinel names, followed on
    /// failover.
    Sentinel,
}

impl Mode {
    /// Whether room traffic uses sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`): on a Cluster it
    /// spreads channels over the shards; elsewhere plain pub/sub works with every Redis-protocol
    /// server and proxy.
    pub fn sharded_pubsub(self) -> bool {
        self == Self::Cluster
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// The mode and whether TLS is on, from a URL's scheme; anything but the six supported
/// schemes is refused.
pub fn scheme(url: &str) -> Result<(Mode, bool)> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
    match scheme {
        "redis" => Ok((Mode::Standalone, false)),
        "rediss" => Ok((Mode::Standalone, true)),
        "redis-cluster" => Ok((Mode::Cluster, false)),
        "rediss-cluster" => Ok((Mode::Cluster, true)),
        "redis-sentinel" => Ok((Mode::Sentinel, false)),
        "rediss-sentinel" => Ok((Mode::Sentinel, true)),
        _ => Err(Error::Startup(
            "REDIS_URL must start with redis://, rediss://, redis-cluster://, rediss-cluster://, redis-sentinel:// or rediss-sentinel://".into(),
        )),
    }
}

/// The fred configuration for `settings`: the URL's mode, credentials (`REDIS_PASSWORD` wins
/// over the URL's) and TLS (the CA from `REDIS_TLS_CA_FILE` when given, else the system's).
pub fn config(settings: &RedisSettings) -> Result<(Config, Mode)> {
    let (mode, tls) = scheme(&settings.url)?;
    // fred's own message can quote the URL; never let a password reach a log line.
    let mut config = Config::from_url(&settings.url).map_err(|e| {
        Error::Startup(format!(
            "REDIS_URL is not a valid {} URL ({:?})",
            mode.label(),
            e.kind()
        ))
    })?;
    if let Some(password) = &settings.password {
        config.password = Some(password.clone());
    }
    match (&settings.tls_ca_file, tls) {
        (Some(path), true) => {
            config.tls = Some(tls_connector(path)?.into());
        }
        (Some(_), false) => {
            return Err(Error::Startup(
                "REDIS_TLS_CA_FILE is set but REDIS_URL is not a rediss* URL: refusing to connect in plaintext".into(),
            ));
        }
        (None, _) => {}
    }
    if tls && config.tls.is_none() {
        return Err(Error::Startup(
            "REDIS_URL asks for TLS, which could not be set up".into(),
        ));
    }
    // fred ignores `?protocol=resp3` in URLs; RESP3 lets the subscriber connection carry
    // commands (publishes, PING) beside its subscriptions.
    config.version = RespVersion::RESP3;
    // Start even when Redis is down: keep retrying in the background instead of failing.
    config.fail_fast = false;
    Ok((config, mode))
}

/// A TLS connector trusting exactly the PEM certificates in `path`.
fn tls_connector(path: &Path) -> Result<TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::Startup(format!(
            "REDIS_TLS_CA_FILE {}: cannot read it as PEM certificates: {e}",
            path.display()
        ))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Startup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}

/// The two fred clients: a subscriber client for the adapter and a small pool for shared state.
/// Neither is connected yet.
#[derive(Debug, Clone)]
pub struct Clients {
    pub subscriber: SubscriberClient,
    pub pool: Pool,
    pub mode: Mode,
}

/// Builds the clients for `settings`.
pub fn clients(settings: &RedisSettings) -> Result<Clients> {
    let (config, mode) = config(settings)?;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            // A command that failed is not retried on the next connection: callers fall back
            // to local state instead of waiting.
            c.max_command_attempts = 1;
            // A connection that stops answering (a primary whose host died, a network
            // partition: no RST ever arrives) is closed and replaced within 2 s, so calls stop
            // waiting out their timeouts against it. The health PINGs keep a request in flight.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(2)),
                interval: Duration::from_millis(500),
            };
        })
        // Retry forever, 100 ms doubling to 2 s: after a failover the new primary is found
        // within about two seconds of being promoted.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
    let subscriber = builder
        .build_subscriber_client()
        .map_err(|e| Error::Startup(format!("redis subscriber client: {e}")))?;
    let pool = builder
        .build_pool(2)
        .map_err(|e| Error::Startup(format!("redis pool: {e}")))?;
    Ok(Clients {
        subscriber,
        pool,
        mode,
    })
}

/// How often the health check sends its PINGs, and how long each may take.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Redis counts as up while both connections answered a PING this recently: one slow answer on
/// a busy machine does not flap the gauge, and a client that never connected (or cannot
/// authenticate, or fails TLS) is never up.
const HEALTH_GRACE: Duration = Duration::from_secs(3);

/// Whether `client` answers a PING within [`HEALTH_EVERY`].
async fn answers<C: ClientLike>(client: &C) -> bool {
    client.is_connected()
        && matches!(
            tokio::time::timeout(HEALTH_EVERY, client.ping::<String>(None)).await,
            Ok(Ok(_))
        )
}

/// Whether Redis is up now, given when both connections last answered.
fn is_up(last_answer: Option<tokio::time::Instant>, now: tokio::time::Instant) -> bool {
    last_answer.is_some_and(|t| now.duration_since(t) <= HEALTH_GRACE)
}

/// Checks both connections with a PING round trip every second, keeps `live_redis_up` and the
/// room subscription gauge current, and logs state changes.
pub fn spawn_health(
    subscriber: SubscriberClient,
    store: SharedStore,
    rooms: Rooms,
    metrics: Metrics,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut was_up = None;
        let mut last_answer = None;
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if answers(&subscriber).await && store.answers().await {
                last_answer = Some(tokio::time::Instant::now());
            }
            let up = is_up(last_answer, tokio::time::Instant::now());
            metrics.redis_up.set(i64::from(up));
            metrics
                .redis_room_subscriptions
                .set(i64::try_from(rooms.len()).unwrap_or(i64::MAX));
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

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            password: None,
            tls_ca_file: None,
            prefix: "live".into(),
            pod: "p".into(),
        }
    }

    #[test]
    fn redis_is_up_only_while_it_answered_recently() {
        let now = tokio::time::Instant::now();
        assert!(!is_up(None, now), "never answered");
        assert!(is_up(Some(now), now));
        assert!(
            is_up(Some(now - HEALTH_GRACE), now),
            "one slow check is not an outage"
        );
        assert!(!is_up(
            Some(now - HEALTH_GRACE - Duration::from_millis(1)),
            now
        ));
    }

    #[test]
    fn a_bad_redis_url_is_a_startup_error() {
        assert!(matches!(
            clients(&settings("not a url")),
            Err(Error::Startup(_))
        ));
        assert!(matches!(
            clients(&settings("http://h:6379")),
            Err(Error::Startup(_))
        ));
    }

    #[test]
    fn the_scheme_selects_the_mode_and_tls() {
        for (url, mode, tls) in [
            ("redis://h:6379", Mode::Standalone, false),
            ("rediss://h:6380", Mode::Standalone, true),
            ("redis-cluster://h:7000?node=h:7001", Mode::Cluster, false),
            ("rediss-cluster://h:7000", Mode::Cluster, true),
            (
                "redis-sentinel://h:26379?sentinelServiceName=m",
                Mode::Sentinel,
                false,
            ),
            (
                "rediss-sentinel://h:26379?sentinelServiceName=m",
                Mode::Sentinel,
                true,
            ),
        ] {
            assert_eq!(scheme(url).unwrap(), (mode, tls), "{url}");
            let (config, m) = config(&settings(url)).unwrap();
            assert_eq!(m, mode);
            assert_eq!(config.tls.is_some(), tls, "{url}");
        }
        assert!(Mode::Cluster.sharded_pubsub());
        assert!(!Mode::Sentinel.sharded_pubsub() && !Mode::Standalone.sharded_pubsub());
    }

    #[test]
    fn redis_password_overrides_the_urls_password() {
        let (c, _) = config(&settings("redis://user:inurl@h:6379")).unwrap();
        assert_eq!(c.password.as_deref(), Some("inurl"));
        let mut s = settings("redis://user:inurl@h:6379");
        s.password = Some("fromenv".into());
        let (c, _) = config(&s).unwrap();
        assert_eq!(c.password.as_deref(), Some("fromenv"));
        assert_eq!(c.username.as_deref(), Some("user"));
    }

    #[test]
    fn a_sentinel_url_needs_its_service_name() {
        let err = config(&settings("redis-sentinel://h:26379")).unwrap_err();
        assert!(err.to_string().contains("sentinel"), "{err}");
    }

    #[test]
    fn a_ca_file_is_only_accepted_with_tls_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let mut s = settings("redis://h:6379");
        s.tls_ca_file = Some(empty.clone());
        assert!(config(&s).unwrap_err().to_string().contains("plaintext"));
        s.url = "rediss://h:6380".into();
        assert!(
            config(&s)
                .unwrap_err()
                .to_string()
                .contains("REDIS_TLS_CA_FILE")
        );
        s.tls_ca_file = Some(dir.path().join("missing.pem"));
        assert!(config(&s).is_err());
    }

    #[test]
    fn an_error_about_a_url_never_quotes_its_password() {
        let err = config(&settings("redis://u:s3cret@h:notaport")).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

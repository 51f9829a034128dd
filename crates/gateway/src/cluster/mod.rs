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

mod driver;
mod store;

pub use driver::{DriverError, ResilientDriver};
pub use store::{POD_TTL, SNAPSHOT_EVERY, SendDecision, SharedStore, Snapshot};

use std::time::Duration;

use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::{Builder, RespVersion};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// How long a command may take before we treat Redis as unavailable for it. Chat waits on the
/// rate-limit script, so this bounds the extra latency an unhealthy Redis can add.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);

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
    fn a_bad_redis_url_is_a_startup_error() {
        assert!(matches!(clients("not a url"), Err(Error::Startup(_))));
    }
}

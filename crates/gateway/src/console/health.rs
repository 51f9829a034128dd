//! Per-replica health for the console: what this replica is (fixed at startup), how it is doing
//! now, and, with Redis, the same record from every other replica.
//!
//! Each replica publishes its record every [`PUBLISH_EVERY`] into one Redis hash
//! (`<prefix>:console:replicas`, field = pod name), so a console opened on any replica lists them
//! all without knowing their addresses. A replica removes its field when it stops; one that dies
//! without doing so is shown as stale after [`STALE_AFTER`], dropped from the list after
//! [`FORGET_AFTER`], and deleted from the hash after [`DELETE_AFTER`].

use std::sync::Arc;
use std::time::Duration;

use live_api::GatewayConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::args::Settings;
use crate::cluster::SharedStore;
use crate::state::{AppState, unix_millis};

pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// A record older than this is shown as stale: its replica missed several publications.
pub const STALE_AFTER: Duration = crate::cluster::POD_TTL;
pub const FORGET_AFTER: Duration = Duration::from_secs(60);
pub const DELETE_AFTER: Duration = Duration::from_secs(600);

/// This replica, as fixed at startup.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub pod: String,
    pub version: &'static str,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    /// The startup settings the console shows. Never a key, secret or URL with credentials.
    pub settings: ProcessSettings,
}

/// Settings fixed at startup (flags and environment), as shown in the console.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSettings {
    pub listen: String,
    pub admin_listen: String,
    pub config_file: Option<String>,
    pub jwt_algorithm: &'static str,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub redis: Option<RedisInfo>,
    pub max_payload_bytes: usize,
    pub socket_buffer_packets: usize,
    pub ws_write_coalesce_ms: u128,
    pub drain_seconds: u64,
    pub shutdown_timeout_seconds: u64,
}

/// Where this replica shares state. The URL is left out: it may carry a password.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisInfo {
    pub prefix: String,
}

impl Identity {
    pub fn new(settings: &Settings, now_ms: u64) -> Self {
        use crate::auth::KeyMaterial;
        Self {
            pod: settings
                .redis
                .as_ref()
                .map_or_else(|| "local".to_owned(), |r| r.pod.clone()),
            version: env!("CARGO_PKG_VERSION"),
            started_at: now_ms,
            settings: ProcessSettings {
                listen: settings.listen.to_string(),
                admin_listen: settings.admin_listen.to_string(),
                config_file: settings.config.as_ref().map(|p| p.display().to_string()),
                // Keys from a directory or a JWKS carry their own algorithm each.
                jwt_algorithm: match &settings.auth.key {
                    Some(KeyMaterial::Hs256Secret(_)) => "HS256",
                    Some(KeyMaterial::Rs256Pem(_)) => "RS256",
                    Some(KeyMaterial::Es256Pem(_)) => "ES256",
                    None => "per key",
                },
                jwt_issuer: settings.auth.policy.issuer.clone(),
                jwt_audience: settings.auth.policy.audience.clone(),
                redis: settings.redis.as_ref().map(|r| RedisInfo {
                    prefix: r.prefix.clone(),
                }),
                max_payload_bytes: settings.max_payload_bytes,
                socket_buffer_packets: settings.socket_buffer_packets,
                ws_write_coalesce_ms: settings.ws_write_coalesce.as_millis(),
                drain_seconds: settings.drain.as_secs(),
                shutdown_timeout_seconds: settings.shutdown_timeout.as_secs(),
            },
        }
    }
}

/// Whether a replica reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisState {
    Up,
    Down,
    /// Running alone, without `REDIS_URL`.
    Off,
}

/// One replica's health, as published and as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaHealth {
    pub pod: String,
    pub version: String,
    pub started_at: u64,
    pub uptime_seconds: u64,
    /// Sockets connected to `/live`.
    pub connections: i64,
    pub redis: RedisState,
    /// sha256 of the running hot-reloadable config (see [`config_hash`]).
    pub config_hash: String,
    pub config_reload_failures: u64,
    pub draining: bool,
    /// When the record was made (ms since the epoch).
    pub updated_at: u64,
    /// Set when listing: the record is older than [`STALE_AFTER`].
    #[serde(default)]
    pub stale: bool,
}

/// sha256 (hex) of the config's canonical YAML: the same value the operator records as the
/// `LiveRealtime`'s `status.configHash` and on its ConfigMap, so a console shows at a glance
/// which replicas run the latest config.
pub fn config_hash(config: &GatewayConfig) -> String {
    hex::encode(Sha256::digest(config.to_yaml().as_bytes()))
}

/// This replica's health now.
pub fn current(identity: &Identity, st: &AppState, now_ms: u64) -> ReplicaHealth {
    let redis = match &st.shared {
        None => RedisState::Off,
        Some(_) if st.metrics.redis_up.get() == 1 => RedisState::Up,
        Some(_) => RedisState::Down,
    };
    ReplicaHealth {
        pod: identity.pod.clone(),
        version: identity.version.to_owned(),
        started_at: identity.started_at,
        uptime_seconds: now_ms.saturating_sub(identity.started_at) / 1000,
        connections: st.metrics.active_connections.get(),
        redis,
        config_hash: config_hash(&st.config().gateway),
        config_reload_failures: st
            .metrics
            .config_reloads
            .with_label_values(&["failure"])
            .get(),
        draining: st.is_draining(),
        updated_at: now_ms,
        stale: false,
    }
}

/// Every replica to list: this one (fresh) and the published others, stale ones flagged, the
/// forgotten ones dropped, sorted by pod name. Pure.
pub fn merge(own: ReplicaHealth, published: Vec<ReplicaHealth>, now_ms: u64) -> Vec<ReplicaHealth> {
    let age = |h: &ReplicaHealth| Duration::from_millis(now_ms.saturating_sub(h.updated_at));
    let mut all: Vec<ReplicaHealth> = published
        .into_iter()
        .filter(|h| h.pod != own.pod && age(h) <= FORGET_AFTER)
        .map(|mut h| {
            h.stale = age(&h) > STALE_AFTER;
            h
        })
        .collect();
    all.push(own);
    all.sort_by(|a, b| a.pod.cmp(&b.pod));
    all
}

fn hash_key(shared: &SharedStore) -> String {
    shared.key(&["console", "replicas"])
}

/// The records every replica published. `Err` when Redis cannot answer. Records older than
/// [`DELETE_AFTER`] are deleted on the way.
pub async fn published(shared: &SharedStore, now_ms: u64) -> Result<Vec<ReplicaHealth>, ()> {
    let key = hash_key(shared);
    let raw: std::collections::HashMap<String, String> = shared
        .command("health", "HGETALL", vec![key.clone()])
        .await?;
    let mut out = Vec::with_capacity(raw.len());
    let mut dead = Vec::new();
    for (pod, json) in raw {
        match serde_json::from_str::<ReplicaHealth>(&json) {
            Ok(h) if now_ms.saturating_sub(h.updated_at) <= DELETE_AFTER.as_millis() as u64 => {
                out.push(h);
            }
            // Unreadable (another version's format) or long gone.
            _ => dead.push(pod),
        }
    }
    if !dead.is_empty() {
        let mut args = vec![key];
        args.extend(dead);
        let _ = shared.command::<i64>("health", "HDEL", args).await;
    }
    Ok(out)
}

/// Publishes this replica's record every [`PUBLISH_EVERY`] while Redis is configured, and
/// removes it when `stop` is cancelled.
pub fn spawn_publisher(st: AppState, identity: Arc<Identity>, stop: CancellationToken) {
    let Some(shared) = st.shared.clone() else {
        return;
    };
    tokio::spawn(async move {
        let key = hash_key(&shared);
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let record = current(&identity, &st, unix_millis());
            let Ok(json) = serde_json::to_string(&record) else {
                continue;
            };
            let set = vec![key.clone(), identity.pod.clone(), json];
            if shared.command::<i64>("health", "HSET", set).await.is_ok() {
                // The hash outlives no deployment by more than an hour.
                let expire = vec![key.clone(), "3600000".to_owned()];
                let _ = shared.command::<i64>("health", "PEXPIRE", expire).await;
            }
        }
        let _ = shared
            .command::<i64>("health", "HDEL", vec![key, identity.pod.clone()])
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pod: &str, updated_at: u64) -> ReplicaHealth {
        ReplicaHealth {
            pod: pod.into(),
            version: "0.1.0".into(),
            started_at: 0,
            uptime_seconds: 0,
            connections: 0,
            redis: RedisState::Up,
            config_hash: String::new(),
            config_reload_failures: 0,
            draining: false,
            updated_at,
            stale: false,
        }
    }

    #[test]
    fn the_list_has_this_replica_fresh_others_flagged_stale_and_the_long_gone_dropped() {
        let now = 1_000_000;
        let own = record("b", now);
        let published = vec![
            record("b", now - 50_000), // our own old record: replaced by the fresh one
            record("a", now - 1_000),
            record("c", now - 20_000),
            record("d", now - 61_000),
        ];
        let list = merge(own, published, now);
        let view: Vec<(&str, bool, u64)> = list
            .iter()
            .map(|h| (h.pod.as_str(), h.stale, h.updated_at))
            .collect();
        assert_eq!(
            view,
            [
                ("a", false, now - 1_000),
                ("b", false, now),
                ("c", true, now - 20_000)
            ]
        );
    }

    #[test]
    fn the_config_hash_is_the_sha256_of_the_canonical_yaml_and_follows_every_change() {
        let a = GatewayConfig::default();
        assert_eq!(
            config_hash(&a),
            hex::encode(Sha256::digest(a.to_yaml().as_bytes()))
        );
        let mut b = a.clone();
        b.rate_limits.messages_per_minute += 1;
        assert_ne!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a).len(), 64);
    }
}

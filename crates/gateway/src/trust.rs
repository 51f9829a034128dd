//! What a client may claim about itself, and what it may do to others.
//!
//! - **Host.** `join {role: "host"}` is believed only from a token whose `role` claim is
//!   `host`, or from a user the backend named host of that channel through the bridge
//!   (`PUT /v1/channels/{channel}/hosts/{userId}`, [`HostRegistry`]). Anyone else asking to join
//!   as host is refused (`host_not_allowed`): the room is never told a viewer is the host.
//! - **Moderation.** A moderator by `role` (`moderation.adminRoles`) may act in any channel; a
//!   moderator by `ogLevel` only in channels its connection is in.
//!
//! With Redis, host assertions are stored there (a key per host with the assertion's TTL), so
//! every replica honours an assertion made through any of them; a replica that cannot reach
//! Redis falls back to the assertions it received itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Expiration;
use serde_json::{Value, json};
use socketioxide::adapter::Adapter;

use crate::auth::Claims;
use crate::bridge::{AdminState, body_object, caller, checked_channel, respond};
use crate::error::{Error, Result};
use crate::protocol::MAX_USER_ID_LEN;
use crate::state::lock;

/// The token `role` that may join any channel as host.
pub const HOST_ROLE: &str = "host";
/// How long a host assertion lasts when the backend gives no `ttlSeconds`.
pub const DEFAULT_HOST_TTL: Duration = Duration::from_secs(12 * 3600);
/// The longest host assertion.
pub const MAX_HOST_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Hosts one channel may have at once (a show with co-hosts, never a crowd).
pub const MAX_HOSTS_PER_CHANNEL: usize = 16;
/// How long a Redis call for a host check may take before the local answer is used.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// The right a moderator's token gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModerationRight {
    /// A role in `moderation.adminRoles`: any channel.
    Role,
    /// An `ogLevel` of at least `moderation.minOgLevel`: channels the connection is in.
    OgLevel,
}

/// The moderation right of `claims` under `config`, if any.
pub fn moderation_right(claims: &Claims, config: &live_api::Moderation) -> Option<ModerationRight> {
    let by_role = claims
        .role
        .as_deref()
        .is_some_and(|r| config.admin_roles.iter().any(|a| a == r));
    if by_role {
        return Some(ModerationRight::Role);
    }
    claims
        .og_level
        .is_some_and(|l| l >= f64::from(config.min_og_level))
        .then_some(ModerationRight::OgLevel)
}

/// Hosts asserted by the backend, per channel.
#[derive(Debug, Clone, Default)]
pub struct HostRegistry {
    /// channel → user → until. The assertions this replica received; the fallback when Redis
    /// cannot answer, and the whole truth without Redis.
    local: Arc<Mutex<HashMap<String, HashMap<String, Instant>>>>,
    shared: Option<SharedHosts>,
}

#[derive(Clone)]
struct SharedHosts {
    pool: Pool,
    prefix: Arc<str>,
}

impl std::fmt::Debug for SharedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHosts")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why an assertion was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyHosts;

impl HostRegistry {
    /// Stores assertions in Redis too (keys `<prefix>:host:<channel>:<userId>`).
    pub fn with_redis(mut self, pool: Pool, prefix: &str) -> Self {
        self.shared = Some(SharedHosts {
            pool,
            prefix: prefix.into(),
        });
        self
    }

    /// Names `user` a host of `channel` for `ttl` from `now`.
    pub async fn assert(
        &self,
        channel: &str,
        user: &str,
        ttl: Duration,
        now: Instant,
    ) -> std::result::Result<(), TooManyHosts> {
        {
            let mut local = lock(&self.local);
            let hosts = local.entry(channel.to_owned()).or_default();
            hosts.retain(|_, until| now < *until);
            if !hosts.contains_key(user) && hosts.len() >= MAX_HOSTS_PER_CHANNEL {
                return Err(TooManyHosts);
            }
            hosts.insert(user.to_owned(), now + ttl);
        }
        if let Some(shared) = &self.shared
            && shared.pool.is_connected()
        {
            let set = shared.pool.next_connected().set::<(), _, _>(
                shared.key(channel, user),
                "1",
                Some(Expiration::EX(
                    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                )),
                None,
                false,
            );
            if !matches!(tokio::time::timeout(REDIS_TIMEOUT, set).await, Ok(Ok(()))) {
                tracing::warn!("host assertion not stored in redis; honoured on this replica only");
            }
        }
        Ok(())
    }

    /// Withdraws `user` as a host of `channel`.
    pub async fn revoke(&self, channel: &str, user: &str) {
        {
            let mut local = lock(&self.local);
            if let Some(hosts) = local.get_mut(channel) {
                hosts.remove(user);
                if hosts.is_empty() {
                    local.remove(channel);
                }
            }
        }
        if let Some(shared) = &self.shared
            && shared.pool.is_connected()
        {
            let del = shared
                .pool
                .next_connected()
                .del::<i64, _>(shared.key(channel, user));
            if !matches!(tokio::time::timeout(REDIS_TIMEOUT, del).await, Ok(Ok(_))) {
                tracing::warn!(
                    "host revocation not stored in redis; other replicas keep it until its TTL"
                );
            }
        }
    }

    /// Whether the backend named `user` a host of `channel`, at `now`.
    pub async fn is_host(&self, channel: &str, user: &str, now: Instant) -> bool {
        if let Some(shared) = &self.shared
            && shared.pool.is_connected()
        {
            let exists = shared
                .pool
                .next_connected()
                .exists::<i64, _>(shared.key(channel, user));
            if let Ok(Ok(n)) = tokio::time::timeout(REDIS_TIMEOUT, exists).await {
                return n > 0;
            }
        }
        lock(&self.local)
            .get(channel)
            .and_then(|hosts| hosts.get(user))
            .is_some_and(|until| now < *until)
    }

    /// Drops expired assertions; run periodically.
    pub fn sweep(&self, now: Instant) {
        lock(&self.local).retain(|_, hosts| {
            hosts.retain(|_, until| now < *until);
            !hosts.is_empty()
        });
    }
}

impl SharedHosts {
    fn key(&self, channel: &str, user: &str) -> String {
        // Channel names cannot hold ':', so the key splits back unambiguously.
        format!("{}:host:{channel}:{user}", self.prefix)
    }
}

/// Whether the connection with `claims` may join `channel` as host.
pub async fn may_host(hosts: &HostRegistry, claims: &Claims, channel: &str) -> bool {
    claims.role.as_deref() == Some(HOST_ROLE)
        || hosts
            .is_host(channel, &claims.user_id, Instant::now())
            .await
}

// ---- the bridge endpoints ----

fn checked_user(user: &str) -> Result<&str> {
    if user.is_empty() || user.len() > MAX_USER_ID_LEN {
        return Err(Error::InvalidField {
            field: "userId",
            reason: "must be a non-empty string of at most 128 bytes".into(),
        });
    }
    Ok(user)
}

/// `ttlSeconds` from an optional JSON body.
fn ttl(body: &[u8]) -> Result<Duration> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_HOST_TTL);
    }
    let o = body_object(body)?;
    match o.get("ttlSeconds") {
        None | Some(Value::Null) => Ok(DEFAULT_HOST_TTL),
        Some(v) => v
            .as_u64()
            .filter(|s| (1..=MAX_HOST_TTL.as_secs()).contains(s))
            .map(Duration::from_secs)
            .ok_or(Error::InvalidField {
                field: "ttlSeconds",
                reason: format!("must be an integer in 1..={}", MAX_HOST_TTL.as_secs()),
            }),
    }
}

/// `PUT /v1/channels/{channel}/hosts/{userId}`: the backend names a host of the channel.
pub async fn put_host<A: Adapter>(
    State(s): State<AdminState<A>>,
    Path((channel, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        caller(&s.app, &headers).await?;
        let channel = checked_channel(&channel)?;
        let user = checked_user(&user)?;
        let ttl = ttl(&body)?;
        s.app
            .hosts
            .assert(channel, user, ttl, Instant::now())
            .await
            .map_err(|TooManyHosts| Error::InvalidField {
                field: "userId",
                reason: format!("the channel has {MAX_HOSTS_PER_CHANNEL} hosts already"),
            })?;
        Ok(json!({ "ok": true, "channelName": channel, "userId": user, "ttlSeconds": ttl.as_secs() }))
    }
    .await;
    respond(&s.app, "host_put", StatusCode::OK, result)
}

/// `DELETE /v1/channels/{channel}/hosts/{userId}`: the backend withdraws a host.
pub async fn delete_host<A: Adapter>(
    State(s): State<AdminState<A>>,
    Path((channel, user)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        caller(&s.app, &headers).await?;
        let channel = checked_channel(&channel)?;
        let user = checked_user(&user)?;
        s.app.hosts.revoke(channel, user).await;
        Ok(json!({ "ok": true }))
    }
    .await;
    respond(&s.app, "host_delete", StatusCode::OK, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moderators_by_role_act_anywhere_and_by_og_level_in_their_channels() {
        let m = live_api::Moderation::default();
        let mut c = Claims::new("u");
        assert_eq!(moderation_right(&c, &m), None);
        c.og_level = Some(5.0);
        assert_eq!(moderation_right(&c, &m), Some(ModerationRight::OgLevel));
        c.og_level = Some(4.9);
        assert_eq!(moderation_right(&c, &m), None);
        c.role = Some("admin".into());
        assert_eq!(moderation_right(&c, &m), Some(ModerationRight::Role));
        c.role = Some("host".into());
        assert_eq!(moderation_right(&c, &m), None, "hosting is not moderating");
    }

    #[tokio::test]
    async fn only_a_host_token_or_an_asserted_host_may_host() {
        let hosts = HostRegistry::default();
        let viewer = Claims::new("v");
        assert!(!may_host(&hosts, &viewer, "c").await);
        let mut host = Claims::new("h");
        host.role = Some(HOST_ROLE.into());
        assert!(may_host(&hosts, &host, "c").await);
        hosts
            .assert("c", "v", Duration::from_secs(60), Instant::now())
            .await
            .unwrap();
        assert!(may_host(&hosts, &viewer, "c").await);
        assert!(!may_host(&hosts, &viewer, "other").await, "per channel");
        hosts.revoke("c", "v").await;
        assert!(!may_host(&hosts, &viewer, "c").await);
    }

    #[tokio::test]
    async fn assertions_expire_and_a_channel_has_a_bounded_number_of_hosts() {
        let hosts = HostRegistry::default();
        let t0 = Instant::now();
        for i in 0..MAX_HOSTS_PER_CHANNEL {
            hosts
                .assert("c", &format!("h{i}"), Duration::from_secs(1), t0)
                .await
                .unwrap();
        }
        assert_eq!(
            hosts
                .assert("c", "one-more", Duration::from_secs(1), t0)
                .await,
            Err(TooManyHosts)
        );
        assert!(hosts.is_host("c", "h0", t0).await);
        let later = t0 + Duration::from_secs(2);
        assert!(!hosts.is_host("c", "h0", later).await);
        hosts
            .assert("c", "one-more", Duration::from_secs(1), later)
            .await
            .unwrap();
        hosts.sweep(later + Duration::from_secs(5));
        assert!(lock(&hosts.local).is_empty());
    }

    #[test]
    fn a_host_ttl_is_optional_and_bounded() {
        assert_eq!(ttl(b"").unwrap(), DEFAULT_HOST_TTL);
        assert_eq!(ttl(b"{}").unwrap(), DEFAULT_HOST_TTL);
        assert_eq!(
            ttl(br#"{"ttlSeconds": 60}"#).unwrap(),
            Duration::from_secs(60)
        );
        assert!(ttl(br#"{"ttlSeconds": 0}"#).is_err());
        assert!(ttl(br#"{"ttlSeconds": 99999999}"#).is_err());
        assert!(ttl(b"[1]").is_err());
    }
}

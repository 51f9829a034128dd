//! One channel's live feed for the console: every item delivered to the channel (chat, gifts,
//! system and moderation notices, bridge publications) from every replica, with the channel's
//! viewer count and the users present, refreshed every [`super::REFRESH`].

use serde::Serialize;
use socketioxide::adapter::Adapter;
use tokio::sync::mpsc;

use super::auth::Operator;
use super::overview::Scope;
use super::{Console, MAX_USERS, REFRESH, REVERIFY, json_event, signed_out};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::protocol;
use crate::realtime::NAMESPACE;
use crate::state::unix_millis;

/// Events buffered between a feed's producer and the browser. A console that reads slower than
/// the channel produces loses the oldest undelivered items and is told how many (`skipped`).
pub const BUFFER: usize = 256;

/// A channel's viewers and users present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub channel_name: String,
    pub scope: Scope,
    pub viewers: u64,
    /// User ids with at least one socket in the channel, sorted; at most [`MAX_USERS`].
    pub users: Vec<String>,
    /// More users are present than listed.
    pub users_truncated: bool,
}

/// Users of this replica's sockets in `channel`: sockets, and the sorted distinct user ids.
fn local_presence<A: Adapter>(c: &Console<A>, channel: &str) -> Result<(u64, Vec<String>)> {
    let ns = c
        .admin
        .io
        .of(NAMESPACE)
        .ok_or_else(|| Error::Startup("the /live namespace is not registered".into()))?;
    let sockets = ns.to(protocol::room(channel)).sockets();
    let mut users: Vec<String> = sockets
        .iter()
        .filter_map(|s| {
            s.extensions
                .get::<std::sync::Arc<Claims>>()
                .map(|c| c.user_id.clone())
        })
        .collect();
    users.sort_unstable();
    users.dedup();
    Ok((sockets.len() as u64, users))
}

/// `channel`'s presence now: cluster-wide with Redis, this replica's otherwise.
pub async fn presence<A: Adapter>(c: &Console<A>, channel: &str, now_ms: u64) -> Result<Presence> {
    if let Some(shared) = &c.app().shared
        && let Ok(viewers) = shared.viewers(channel, now_ms).await
        && let Ok((users, users_truncated)) = shared.channel_users(channel, now_ms, MAX_USERS).await
    {
        return Ok(Presence {
            channel_name: channel.to_owned(),
            scope: Scope::Cluster,
            viewers,
            users,
            users_truncated,
        });
    }
    let (viewers, mut users) = local_presence(c, channel)?;
    let users_truncated = users.len() > MAX_USERS;
    users.truncate(MAX_USERS);
    Ok(Presence {
        channel_name: channel.to_owned(),
        scope: Scope::Replica,
        viewers,
        users,
        users_truncated,
    })
}

/// Runs one feed stream until the browser goes away or the token stops verifying: a
/// `presence` event now and every [`REFRESH`] when it changed, and an `item` event per item
/// delivered to the channel.
pub async fn run<A: Adapter>(
    c: Console<A>,
    op: Operator,
    channel: String,
    tx: mpsc::Sender<axum::response::sse::Event>,
) {
    let mut reverify = tokio::time::interval(REVERIFY);
    reverify.tick().await;
    let mut refresh = tokio::time::interval(REFRESH);
    let mut last: Option<Presence> = None;
    loop {
        tokio::select! {
            () = tx.closed() => break,
            _ = refresh.tick() => {
                match presence(&c, &channel, unix_millis()).await {
                    Ok(p) if last.as_ref() != Some(&p) => {
                        if tx.send(json_event("presence", &p)).await.is_err() {
                            break;
                        }
                        last = Some(p);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "console feed: presence unavailable");
                    }
                }
            }
            _ = reverify.tick() => {
                if let Err(e) = op.reverify(c.app()) {
                    let _ = tx.send(signed_out(&e)).await;
                    break;
                }
            }
        }
    }
}

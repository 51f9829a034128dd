//! One channel's live feed for the console: every item delivered to the channel (chat, gifts,
//! system and moderation notices, bridge publications) from every replica, with the channel's
//! viewer count and the users present, refreshed every [`super::REFRESH`].

use axum::response::sse::Event;
use serde::Serialize;
use socketioxide::adapter::Adapter;
use tokio::sync::mpsc;

use super::auth::Operator;
use super::overview::Scope;
use super::{Console, MAX_USERS, REFRESH, REVERIFY, json_event, signed_out};
use crate::error::{Error, Result};
use crate::history::TailEvent;
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
        .filter_map(|s| crate::session::claims_of(&s.extensions).map(|c| c.user_id.clone()))
        .collect();
    users.sort_unstable();
    users.dedup();
    Ok((sockets.len() as u64, users))
}

/// `channel`'s presence now: cluster-wide with Redis, this replica's otherwise.
pub async fn presence<A: Adapter>(c: &Console<A>, channel: &str, now_ms: u64) -> Result<Presence> {
    if let Some(shared) = &c.app().shared
        && let Ok(elsewhere) = shared.viewers_elsewhere(channel, now_ms).await
        && let Ok((users, users_truncated)) = shared.channel_users(channel, now_ms, MAX_USERS).await
    {
        // This replica's members live, the others' from their snapshots (as the bridge counts).
        let (local, _) = local_presence(c, channel)?;
        return Ok(Presence {
            channel_name: channel.to_owned(),
            scope: Scope::Cluster,
            viewers: local + elsewhere,
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

/// Join and leave lines one refresh may add; beyond, one line says how many more there were.
pub const MAX_PRESENCE_LINES: usize = 20;

/// Users who appeared and who went away between two sorted lists of users present. Pure.
pub fn presence_changes<'a>(
    before: &'a [String],
    after: &'a [String],
) -> (Vec<&'a str>, Vec<&'a str>) {
    let absent = |list: &[String], u: &String| list.binary_search(u).is_err();
    let joined = after
        .iter()
        .filter(|u| absent(before, u))
        .map(String::as_str)
        .collect();
    let left = before
        .iter()
        .filter(|u| absent(after, u))
        .map(String::as_str)
        .collect();
    (joined, left)
}

/// A join or leave the console observed in the users present.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObservedPresence<'a> {
    kind: &'static str,
    event: &'static str,
    at: u64,
    payload: PresencePayload<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PresencePayload<'a> {
    user_id: &'a str,
    delta: i8,
    timestamp: u64,
}

/// The `item` events for the joins and leaves between two presence reads, at most
/// [`MAX_PRESENCE_LINES`] and a `notice` for the rest. None when either list was truncated:
/// users beyond the listed ones come and go unseen, so a diff would invent movements.
pub fn presence_events(before: &Presence, after: &Presence, now_ms: u64) -> Vec<Event> {
    if before.users_truncated || after.users_truncated {
        return Vec::new();
    }
    let (joined, left) = presence_changes(&before.users, &after.users);
    let moves = joined
        .iter()
        .map(|u| (*u, 1))
        .chain(left.iter().map(|u| (*u, -1)));
    let total = joined.len() + left.len();
    let mut events: Vec<Event> = moves
        .take(MAX_PRESENCE_LINES)
        .map(|(user_id, delta)| {
            json_event(
                "item",
                &ObservedPresence {
                    kind: "presence",
                    event: "presence",
                    at: now_ms,
                    payload: PresencePayload {
                        user_id,
                        delta,
                        timestamp: now_ms,
                    },
                },
            )
        })
        .collect();
    if total > MAX_PRESENCE_LINES {
        let message = format!(
            "{} more users joined or left in the last {} s",
            total - MAX_PRESENCE_LINES,
            REFRESH.as_secs()
        );
        events.push(json_event(
            "notice",
            &serde_json::json!({ "message": message }),
        ));
    }
    events
}

/// A history item as the console shows it: `kind` names the line (`chat`, `gift`, `system`,
/// `moderation`), `payload` is exactly what the channel's members received.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FeedItem<'a> {
    kind: &'static str,
    event: &'a str,
    at: u64,
    offset: u64,
    payload: &'a serde_json::value::RawValue,
}

/// The console's line kind of a delivered event.
pub fn kind_of(event: &str) -> &'static str {
    match event {
        protocol::outbound::CHAT => "chat",
        protocol::outbound::GIFT => "gift",
        protocol::outbound::SYSTEM => "system",
        protocol::outbound::MODERATION => "moderation",
        protocol::outbound::METRICS_UPDATE => "metrics",
        _ => "event",
    }
}

fn item_event(item: &crate::history::Item) -> Event {
    json_event(
        "item",
        &FeedItem {
            kind: kind_of(&item.event),
            event: &item.event,
            at: item.time_ms,
            offset: item.offset,
            payload: &item.payload,
        },
    )
}

/// Runs one feed stream until the browser goes away or the token stops verifying: a
/// `presence` event now and every [`REFRESH`] when it changed (with an `item` per user who
/// joined or left), and an `item` event per item delivered to the channel from any replica
/// (the channel's history tail: chat, gifts, moderation and backend events; nothing when
/// `history.maxItems` is 0), a `skipped` event when the console fell behind.
pub async fn run<A: Adapter>(
    c: Console<A>,
    op: Operator,
    channel: String,
    tx: mpsc::Sender<Event>,
) {
    let mut reverify = tokio::time::interval(REVERIFY);
    reverify.tick().await;
    let mut refresh = tokio::time::interval(REFRESH);
    let mut last: Option<Presence> = None;
    let mut tail = Some(c.app().history.tail(&channel).await);
    loop {
        tokio::select! {
            () = tx.closed() => break,
            next = async { tail.as_mut()?.next().await }, if tail.is_some() => {
                let event = match next {
                    Some(TailEvent::Item(item)) => item_event(&item),
                    Some(TailEvent::Lagged(count)) => {
                        json_event("skipped", &serde_json::json!({ "count": count }))
                    }
                    None => {
                        // The store stopped (the gateway is shutting down): presence goes on.
                        tail = None;
                        continue;
                    }
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            _ = refresh.tick() => {
                let now = unix_millis();
                match presence(&c, &channel, now).await {
                    Ok(p) if last.as_ref() != Some(&p) => {
                        let mut events = vec![json_event("presence", &p)];
                        if let Some(before) = &last {
                            events.extend(presence_events(before, &p, now));
                        }
                        for e in events {
                            if tx.send(e).await.is_err() {
                                return;
                            }
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
                if let Err(e) = op.reverify(c.app()).await {
                    let _ = tx.send(signed_out(&e)).await;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    fn presence(list: &[&str], truncated: bool) -> Presence {
        Presence {
            channel_name: "c".into(),
            scope: Scope::Cluster,
            viewers: list.len() as u64,
            users: users(list),
            users_truncated: truncated,
        }
    }

    #[test]
    fn each_delivered_event_has_the_line_kind_the_app_draws() {
        assert_eq!(kind_of(protocol::outbound::CHAT), "chat");
        assert_eq!(kind_of(protocol::outbound::GIFT), "gift");
        assert_eq!(kind_of(protocol::outbound::SYSTEM), "system");
        assert_eq!(kind_of(protocol::outbound::MODERATION), "moderation");
        assert_eq!(kind_of("something:else"), "event");
    }

    #[test]
    fn joins_and_leaves_are_the_differences_between_two_reads() {
        let before = users(&["a", "b", "d"]);
        let after = users(&["b", "c", "d", "e"]);
        assert_eq!(
            presence_changes(&before, &after),
            (vec!["c", "e"], vec!["a"])
        );
        assert_eq!(presence_changes(&after, &after), (vec![], vec![]));
    }

    #[test]
    fn a_crowd_is_summed_up_and_a_truncated_list_invents_nothing() {
        let many: Vec<String> = (0..30).map(|i| format!("u{i:02}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let events = presence_events(&presence(&[], false), &presence(&refs, false), 1);
        assert_eq!(
            events.len(),
            MAX_PRESENCE_LINES + 1,
            "20 lines and one summary"
        );
        assert!(presence_events(&presence(&["a"], true), &presence(&["b"], true), 1).is_empty());
        assert_eq!(
            presence_events(&presence(&["a"], false), &presence(&["b"], false), 1).len(),
            2
        );
    }
}

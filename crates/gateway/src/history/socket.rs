//! The socket side of history: a `join` that asks for `since` or `history`, and Socket.IO
//! Connection State Recovery (the handshake that restores a session, the replay after CONNECT,
//! and the session's upkeep on join, leave and disconnect).
//!
//! Exactness comes from holding the socket's broadcasts while history is read: the socket enters
//! its rooms first, so every later item reaches it, held; the read then returns everything up to
//! the head; the replayed (or acknowledged) items go out; finally the held broadcasts that the
//! replay already covered are dropped and the rest released in order. No item falls between the
//! read and the live feed, and none arrives twice.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;
use socketioxide::socket::DisconnectReason;

use super::decide::{self, Recovery};
use super::session::{self, Record, SessionChannel, SocketSession};
use super::{Item, Limits, Position, Unavailable};
use crate::auth::Claims;
use crate::state::{AppState, unix_millis};

/// What a `join` asks of history: the position it last saw, and/or the newest `history` items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    pub since: Option<Position>,
    pub history: Option<u32>,
}

impl HistoryRequest {
    pub fn wants(&self) -> bool {
        self.since.is_some() || self.history.is_some()
    }
}

/// A join's answer from history, sent as its acknowledgement.
#[derive(Debug, Default)]
pub struct JoinReply {
    /// Set when the join gave `since`.
    recovered: Option<bool>,
    /// The stream's head when it was read: the items up to it are in `items` or were delivered
    /// before; live items continue after it. `None` when history could not be read.
    head: Option<Position>,
    items: Vec<Arc<Item>>,
    /// Broadcasts to the socket are held until [`JoinReply::release`].
    held: bool,
}

#[derive(Serialize)]
struct AckBody<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    items: Vec<AckItem<'a>>,
}

#[derive(Serialize)]
struct AckItem<'a> {
    event: &'a str,
    data: &'a RawValue,
}

impl JoinReply {
    /// The acknowledgement: `{ok, recovered?, epoch?, offset?, items: [{event, data}]}`.
    pub fn ack(&self) -> impl Serialize + '_ {
        AckBody {
            ok: true,
            recovered: self.recovered,
            epoch: self.head.as_ref().map(|h| &*h.epoch),
            offset: self.head.as_ref().map(|h| h.offset),
            items: self
                .items
                .iter()
                .map(|i| AckItem {
                    event: &i.event,
                    data: &i.payload,
                })
                .collect(),
        }
    }

    /// Releases the broadcasts held during the join, minus those the reply covered. Call after
    /// the acknowledgement was sent, so live items follow it.
    pub fn release<A: Adapter>(&self, s: &SocketRef<A>) {
        if !self.held {
            return;
        }
        let covered: Vec<Position> = self.head.iter().cloned().collect();
        release(s, &covered);
    }
}

fn release<A: Adapter>(s: &SocketRef<A>, covered: &[Position]) {
    if let Err(overflow) = s.release_broadcasts(|p| decide::keep_held(p, covered)) {
        // The client lost live packets: make it reconnect (and recover) rather than go on with
        // a hole.
        tracing::warn!(
            dropped = overflow.dropped,
            "broadcasts held during a replay overflowed; closing the connection"
        );
        s.close_transport();
    }
}

/// The limits in force.
fn limits(st: &AppState) -> Limits {
    Limits::from_config(&st.config().gateway.history)
}

/// The socket's recovery session, when Connection State Recovery gave it one.
fn session<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<SocketSession>> {
    s.extensions.get::<Arc<SocketSession>>()
}

/// What the socket knew before it entered a channel's room.
#[derive(Debug)]
pub struct Entering {
    /// The head before the room join, for the session (`Err`: unknown).
    at_join: Result<Option<Position>, Unavailable>,
    held: bool,
}

/// Call before the socket joins a channel's room: holds its broadcasts when the join asks for
/// history, and reads the head its recovery session will count from.
pub async fn entering<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    channel: &str,
    request: &HistoryRequest,
) -> Entering {
    let limits = limits(st);
    let held = request.wants() && limits.enabled();
    let at_join = if session(s).is_some() {
        let _order = st.history.order(channel).await;
        // "No stream" is a fine answer now: the socket joins now.
        st.history.head(channel, &limits, u64::MAX).await
    } else {
        Ok(None)
    };
    if held {
        s.hold_broadcasts();
    }
    Entering { at_join, held }
}

/// Call once the socket is in the channel's room: records the channel in its recovery session
/// and, when the join asked for it, reads the reply.
pub async fn entered<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    channel: &str,
    host: bool,
    entering: Entering,
    request: &HistoryRequest,
) -> Option<JoinReply> {
    let now = unix_millis();
    if let Some(sess) = session(s) {
        let joined = match &entering.at_join {
            Ok(at) => SessionChannel::new(channel, host, at.as_ref(), now),
            Err(Unavailable) => SessionChannel::unknown(channel, host, now),
        };
        let record = sess.joined(joined);
        st.history
            .sessions()
            .save(&sess, &s.id.to_string(), &record)
            .await;
    }
    if !request.wants() {
        return None;
    }
    let mut reply = read_reply(st, channel, request).await;
    reply.held = entering.held;
    Some(reply)
}

/// Answers a join's `since` / `history` from the store.
pub async fn read_reply(st: &AppState, channel: &str, request: &HistoryRequest) -> JoinReply {
    let limits = limits(st);
    let bounds = limits.bounds();
    let now = unix_millis();
    let metrics = st.history.metrics();
    let mut reply = JoinReply::default();
    let _order = st.history.order(channel).await;
    if let Some(since) = &request.since {
        let outcome = match st.history.since(channel, since, &limits).await {
            Ok(w) => {
                reply.head = w.head.clone();
                decide::recover(since, &w, now, bounds)
            }
            Err(Unavailable) => Recovery::NotRecovered(unavailable(&limits)),
        };
        match outcome {
            Recovery::Recovered(items) => {
                metrics.history_recovery("join", "recovered");
                metrics.history_replayed.inc_by(items.len() as u64);
                reply.recovered = Some(true);
                reply.items = items;
                return reply;
            }
            Recovery::NotRecovered(why) => {
                metrics.history_recovery("join", why.label());
                reply.recovered = Some(false);
            }
        }
    }
    if let Some(n) = request.history
        && let Ok(w) = st.history.latest(channel, n as usize, &limits).await
    {
        reply.items = decide::latest(&w, n as usize, now, bounds);
        reply.head = w.head;
    }
    reply
}

/// Call when the socket left a channel (by `leave`).
pub async fn left<A: Adapter>(s: &SocketRef<A>, st: &AppState, channel: &str) {
    if let Some(sess) = session(s) {
        let record = sess.left(channel);
        st.history
            .sessions()
            .save(&sess, &s.id.to_string(), &record)
            .await;
    }
}

/// Call from the disconnect handler with the channels the socket was in: keeps the session for
/// the recovery window when the client may come back, forgets it when it left on purpose.
pub async fn disconnected<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    reason: DisconnectReason,
    still_in: &[&str],
) {
    let Some(sess) = session(s) else {
        return;
    };
    if sess.is_empty() {
        // Nothing to restore, and never stored.
        return;
    }
    let sessions = st.history.sessions();
    let now = unix_millis();
    let owner = s.id.to_string();
    let recoverable = s.extensions.get::<ReplayFailed>().is_none()
        && matches!(
            reason,
            DisconnectReason::TransportClose
                | DisconnectReason::TransportError
                | DisconnectReason::HeartbeatTimeout
                | DisconnectReason::MultipleHttpPollingError
                | DisconnectReason::ClosingServer
        );
    if !recoverable {
        sessions.end(&sess, &owner).await;
        return;
    }
    let record = sess.at_disconnect(still_in);
    let window = Duration::from_secs(st.config().gateway.history.max_disconnection_seconds);
    sessions.release(&sess, &owner, &record, window, now).await;
}

/// A channel a recovered socket is put back into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub channel: String,
    pub host: bool,
}

/// What the replay after CONNECT must send: where each restored channel resumes.
#[derive(Debug, Clone)]
struct PendingReplay {
    plan: Vec<(String, Option<Position>)>,
}

fn fail_replay<A: Adapter>(s: &SocketRef<A>) {
    s.extensions.insert(ReplayFailed);
    s.close_transport();
}

/// The `pid` and `offset` a reconnecting socket.io client sends in its auth payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub pid: String,
    pub last: Option<Position>,
}

/// Reads `auth.pid` / `auth.offset`; a malformed pid is no resume at all, a malformed offset no
/// position (the client then gets a fresh session or a conservative plan, never a wrong replay).
pub fn resume_request(auth: Option<&Value>) -> Option<Resume> {
    let auth = auth?.as_object()?;
    let pid = auth
        .get("pid")?
        .as_str()
        .filter(|p| session::valid_pid(p))?;
    let last = auth
        .get("offset")
        .and_then(Value::as_str)
        .and_then(Position::from_recovery_offset);
    let garbled = auth.get("offset").is_some_and(|o| !o.is_null()) && last.is_none();
    if garbled {
        return None;
    }
    Some(Resume {
        pid: pid.to_owned(),
        last,
    })
}

/// Connect middleware step, after the token was verified: gives the socket a recovery session
/// (a new one, or the one it resumes when every channel of it can be restored exactly) and, on
/// a resume, holds its broadcasts and returns the channels to put it back into. The CONNECT
/// reply then carries the session's pid; the client sets `recovered` when it is the one it sent.
pub async fn handshake<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    claims: &Claims,
    auth: Option<&Value>,
) -> Vec<Restored> {
    let config = st.config();
    let h = &config.gateway.history;
    let limits = Limits::from_config(h);
    if !h.connection_state_recovery || !limits.enabled() {
        return Vec::new();
    }
    let now = unix_millis();
    let window = Duration::from_secs(h.max_disconnection_seconds);
    let owner = s.id.to_string();
    let sessions = st.history.sessions();
    let metrics = st.history.metrics();
    if let Some(resume) = resume_request(auth) {
        let record = sessions
            .take(&resume.pid, &claims.user_id, &owner, window, now)
            .await;
        let plan = match &record {
            Some(record) => plan(st, record, resume.last.as_ref(), &limits).await,
            None => None,
        };
        // The gap must be in the history now; the replay reads it again once the socket
        // receives live items, so nothing falls in between.
        let plan = match plan {
            Some(plan) if recoverable(st, &plan, &limits).await => Some(plan),
            _ => None,
        };
        if let (Some(record), Some(plan)) = (record, plan) {
            s.set_connect_pid(resume.pid.clone());
            s.hold_broadcasts();
            let restored = record
                .channels
                .iter()
                .map(|c| Restored {
                    channel: c.channel.clone(),
                    host: c.host,
                })
                .collect();
            let sess = Arc::new(SocketSession::new(
                resume.pid.into(),
                &claims.user_id,
                record.channels,
            ));
            sessions.save(&sess, &owner, &sess.current()).await;
            s.extensions.insert(sess);
            s.extensions.insert(Arc::new(PendingReplay { plan }));
            return restored;
        }
        metrics.history_recovery("connection_state", "no_session_or_gap");
        // The old session will not be resumed: do not keep it for its TTL.
        sessions.discard(&resume.pid, &owner).await;
    }
    let pid = session::new_pid();
    s.set_connect_pid(pid.to_string());
    s.extensions.insert(Arc::new(SocketSession::new(
        pid,
        &claims.user_id,
        Vec::new(),
    )));
    Vec::new()
}

/// Where each channel of `record` resumes, when all of them can be restored exactly.
async fn plan(
    st: &AppState,
    record: &Record,
    last: Option<&Position>,
    limits: &Limits,
) -> Option<Vec<(String, Option<Position>)>> {
    let mut joined = Vec::with_capacity(record.channels.len());
    let mut heads = Vec::with_capacity(record.channels.len());
    for c in &record.channels {
        joined.push(c.joined()?);
        heads.push(
            st.history
                .head(&c.channel, limits, c.joined_ms)
                .await
                .ok()?,
        );
    }
    decide::plan_session(&joined, &heads, last)
}

/// Whether every channel of `plan` can be replayed from the history as it is now.
async fn recoverable(st: &AppState, plan: &[(String, Option<Position>)], limits: &Limits) -> bool {
    let now = unix_millis();
    for (channel, since) in plan {
        let Some(since) = since else {
            continue;
        };
        let Ok(window) = st.history.since(channel, since, limits).await else {
            return false;
        };
        if let Recovery::NotRecovered(_) = decide::recover(since, &window, now, limits.bounds()) {
            return false;
        }
    }
    true
}

/// Marks a socket whose replay failed after its CONNECT promised recovery: its session is
/// dropped on disconnect, so the client's automatic reconnection gets a fresh one instead of
/// failing the same way again.
#[derive(Debug, Clone, Copy)]
struct ReplayFailed;

/// Connect handler step: sends a recovered socket the items it missed, in order, then its held
/// live broadcasts minus those already replayed. When the history moved on since the handshake
/// (trimmed, or unreadable) the connection is closed, so the client reconnects and is told it
/// was not recovered.
pub async fn replay<A: Adapter>(s: &SocketRef<A>, st: &AppState) {
    let Some(pending) = s.extensions.remove::<Arc<PendingReplay>>() else {
        return;
    };
    let limits = limits(st);
    let now = unix_millis();
    let metrics = st.history.metrics();
    let mut covered = Vec::new();
    let mut items: Vec<Arc<Item>> = Vec::new();
    let mut epochs: Vec<Arc<str>> = Vec::new();
    for (channel, since) in &pending.plan {
        let Some(since) = since else {
            continue;
        };
        let read = {
            let _order = st.history.order(channel).await;
            st.history.since(channel, since, &limits).await
        };
        let window = match read {
            Ok(w) => w,
            Err(Unavailable) => {
                metrics.history_recovery("connection_state", unavailable(&limits).label());
                fail_replay(s);
                return;
            }
        };
        match decide::recover(since, &window, now, limits.bounds()) {
            Recovery::Recovered(missed) => {
                epochs.extend(missed.iter().map(|_| since.epoch.clone()));
                items.extend(missed);
                covered.extend(window.head);
            }
            Recovery::NotRecovered(why) => {
                metrics.history_recovery("connection_state", why.label());
                fail_replay(s);
                return;
            }
        }
    }
    for (item, epoch) in items.iter().zip(&epochs) {
        let offset = Position::new(epoch.clone(), item.offset).to_recovery_offset();
        let event: &str = &item.event;
        if s.emit(event, &(&*item.payload, offset)).is_err() {
            metrics.history_recovery("connection_state", "buffer_full");
            fail_replay(s);
            return;
        }
    }
    metrics.history_recovery("connection_state", "recovered");
    metrics.history_replayed.inc_by(items.len() as u64);
    release(s, &covered);
}

/// Why a read that answered `Unavailable` failed: history switched off, or the store itself.
fn unavailable(limits: &Limits) -> decide::Why {
    if limits.enabled() {
        decide::Why::Unavailable
    } else {
        decide::Why::NoHistory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resume_needs_a_well_formed_pid_and_takes_an_optional_offset() {
        let pid = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            resume_request(Some(&json!({"pid": pid, "offset": "ab12:7", "token": "t"}))),
            Some(Resume {
                pid: pid.into(),
                last: Some(Position::new("ab12".into(), 7)),
            })
        );
        assert_eq!(
            resume_request(Some(&json!({"pid": pid}))),
            Some(Resume {
                pid: pid.into(),
                last: None
            })
        );
        assert_eq!(
            resume_request(Some(&json!({"pid": pid, "offset": "nope"}))),
            None
        );
        assert_eq!(
            resume_request(Some(&json!({"pid": "short", "offset": "ab:1"}))),
            None
        );
        assert_eq!(resume_request(Some(&json!({"pid": 5}))), None);
        assert_eq!(resume_request(Some(&json!("x"))), None);
        assert_eq!(resume_request(None), None);
    }

    #[test]
    fn a_join_ack_lists_its_items_with_their_events() {
        let payload: Arc<RawValue> = Arc::from(
            RawValue::from_string(r#"{"m":"hi","offset":3,"epoch":"ab"}"#.to_owned()).unwrap(),
        );
        let reply = JoinReply {
            recovered: Some(true),
            head: Some(Position::new("ab".into(), 3)),
            items: vec![Arc::new(Item {
                offset: 3,
                time_ms: 1,
                event: "chat:new".into(),
                payload,
            })],
            held: false,
        };
        assert_eq!(
            serde_json::to_value(reply.ack()).unwrap(),
            json!({"ok": true, "recovered": true, "epoch": "ab", "offset": 3,
                   "items": [{"event": "chat:new", "data": {"m": "hi", "offset": 3, "epoch": "ab"}}]})
        );
        let empty = JoinReply::default();
        assert_eq!(
            serde_json::to_value(empty.ack()).unwrap(),
            json!({"ok": true, "items": []})
        );
    }
}

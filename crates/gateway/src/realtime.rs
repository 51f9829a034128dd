//! The Socket.IO side: handshake authentication and the `/live` event handlers.
//!
//! Each handler is a thin shell: parse with `protocol`, decide with the pure parts (rate limiter,
//! mutes, sanitizer), then emit. Every outcome goes through [`finish`], the one place that turns
//! an [`Error`] into the client's `error` event, its ack and the `ws_errors_total` metric.
//! Handlers are generic over the adapter, so the same code serves one process or many replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Extension, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use crate::admit::Admitted;
use crate::auth::Claims;
use crate::churn::Decision;
use crate::error::{Error, Result};
use crate::handshake;
use crate::history::Retention::{History, LiveOnly};
use crate::history::socket::JoinReply;
use crate::history::{self, Retention};
use crate::presence::Announce;
use crate::protocol::{self, Action, Role, inbound, outbound};
use crate::ratelimit::Kind;
use crate::sanitize::escape;
use crate::session::{self, Membership, Session};
use crate::state::{AppState, unix_millis};
use crate::trust::{self, ModerationRight};

/// The namespace live apps connect to.
pub const NAMESPACE: &str = "/live";

/// The handshake refusal. Its text is the whole of what a refused client learns.
#[derive(Debug)]
pub struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unauthorized")
    }
}

/// Connect middleware: verifies the JWT from `auth.token` or `Authorization: Bearer` (see
/// [`handshake`]), and stores the claims and the socket's [`Session`] on the socket. The reason
/// for a refusal is counted and logged (sampled), never sent.
pub async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<Value>,
    State(state): State<AppState>,
) -> std::result::Result<(), Unauthorized> {
    let request = s.req_parts();
    let header = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let config = state.config();
    let outcome = handshake::verify(
        &state,
        auth.as_ref().ok(),
        header,
        config.gateway.limits.max_token_bytes,
    )
    .await;
    match outcome {
        Ok(claims) => {
            crate::lifecycle::on_authenticated(&s, &state, &claims);
            // A Socket.IO Connection State Recovery resume: the channels to put the socket back
            // into before its CONNECT reply (its broadcasts are held until the replay).
            let restored =
                history::socket::handshake(&s, &state, &claims, auth.as_ref().ok()).await;
            let session = Session::new(
                claims,
                Instant::now(),
                config.gateway.rate_limits.event_burst,
            );
            let session = Arc::new(session);
            s.extensions.insert(Arc::clone(&session));
            state
                .metrics
                .connections
                .with_label_values(&["accepted"])
                .inc();
            // Handlers are registered here, not in the connect handler: socketioxide sends the
            // CONNECT packet before it spawns the (async) connect handler, so a client that emits
            // right after connecting could otherwise beat the registration and lose its event.
            // The middleware is awaited before CONNECT is sent.
            register_handlers(&s, &state);
            let max = config.gateway.limits.max_channels_per_socket;
            for r in restored {
                // The recovered session was bounded by the same limit when it was saved; a
                // lowered limit keeps the first channels.
                if session.add(&r.channel, max).is_err() {
                    continue;
                }
                let role = if r.host { Role::Host } else { Role::Viewer };
                enter_channel(&s, &state, &session, &r.channel, role, false).await;
            }
            Ok(())
        }
        Err(refusal) => {
            handshake::refused(&state, refusal);
            Err(Unauthorized)
        }
    }
}

/// Connect handler. Everything a connection needs is set up by [`authenticate`], before the
/// client learns it is connected; a recovered socket gets the items it missed here, right after
/// its CONNECT reply.
pub async fn on_connect<A: Adapter>(s: SocketRef<A>, State(st): State<AppState>) {
    history::socket::replay(&s, &st).await;
}

/// Registers `$handler`, an `async fn(&SocketRef<A>, &AppState, &Session, &Value) -> Result<()>`,
/// for `$event`: the event is counted against the connection's budget in arrival order (see
/// [`Admitted`]) and data that is not JSON is refused after it, and every outcome goes through
/// [`finish`] under the metric label `$kind`.
macro_rules! on_event {
    ($s:expr, $A:ty, $event:expr, $kind:literal, $handler:ident) => {
        $s.on(
            $event,
            async |s: SocketRef<$A>,
                   mut a: Admitted,
                   ack: AckSender<$A>,
                   TryData(d): TryData<Value>| {
                let _turn = a.begin().await;
                let r = async { $handler(&s, &a.state, &a.session, &a.payload(d)?).await }.await;
                finish(&s, ack, &a.state, $kind, r, a.at);
                a.settle(s);
            },
        )
    };
}

/// Registers the event handlers of an authenticated socket and counts it as active; the
/// disconnect handler registered here is what counts it out again.
fn register_handlers<A: Adapter>(s: &SocketRef<A>, state: &AppState) {
    state.metrics.active_connections.inc();

    // `join` answers with a history reply when asked for one, so it is registered by hand.
    s.on(
        inbound::JOIN,
        async |s: SocketRef<A>, mut a: Admitted, ack: AckSender<A>, TryData(d): TryData<Value>| {
            let _turn = a.begin().await;
            let (t, st) = (a.at, &a.state);
            let r = async { join(&s, st, &a.session, &a.payload(d)?).await }.await;
            match r {
                Ok(reply) => {
                    finish_replying(&s, ack, st, "join", Ok(()), reply.as_ref(), t);
                    // Live items held during the join follow its acknowledgement.
                    if let Some(reply) = reply {
                        reply.release(&s);
                    }
                }
                Err(e) => finish(&s, ack, st, "join", Err(e), t),
            }
            a.settle(s);
        },
    );
    on_event!(s, A, inbound::LEAVE, "leave", leave);
    on_event!(s, A, inbound::CHAT, "chat", chat);
    on_event!(s, A, inbound::GIFT, "gift", gift);
    on_event!(s, A, inbound::MODERATION, "moderation", moderate);
    on_event!(s, A, inbound::HEARTBEAT, "heartbeat", heartbeat);
    // Unknown events are counted and otherwise ignored, as socket.io does; they still spend
    // the connection's budget.
    s.on_fallback(async |s: SocketRef<A>, mut a: Admitted| {
        let _turn = a.begin().await;
        a.state
            .metrics
            .messages
            .with_label_values(&["unknown", "in"])
            .inc();
        a.state.metrics.error("unknown_event");
        a.settle(s);
    });
    s.on_disconnect(
        async |s: SocketRef<A>,
               reason: DisconnectReason,
               State(st): State<AppState>,
               Extension(c): Extension<Arc<Session>>| {
            st.metrics.active_connections.dec();
            let label = if c.was_over_budget() {
                "event_budget"
            } else {
                crate::lifecycle::end_reason(&s).unwrap_or_else(|| disconnect_label(reason))
            };
            st.metrics.disconnects.with_label_values(&[label]).inc();
            // After the socket's events already admitted: a join still running is announced
            // before its leave, not after it.
            let _turn = c.turns.take().begin().await;
            crate::lifecycle::on_disconnect(s.id, &st, &c.claims());
            // The session's own channel list, not the socket's rooms: when a namespace
            // DISCONNECT and the transport's close arrive together, socketioxide may have
            // emptied the rooms before this (spawned) handler runs, and the leaves would go
            // unannounced.
            let channels = c.channels();
            let channels: Vec<&str> = channels.iter().map(|ch| &**ch).collect();
            history::socket::disconnected(&s, &st, reason, &channels).await;
            for channel in channels {
                announce_leave(&s, &st, &c, channel).await;
            }
        },
    );
}

/// Sends the outcome of one client event: nothing more on success, an `error` event on refusal,
/// and the ack either way when the client asked for one.
fn finish<A: Adapter>(
    s: &SocketRef<A>,
    ack: AckSender<A>,
    st: &AppState,
    kind: &'static str,
    result: Result<()>,
    started: Instant,
) {
    finish_replying(s, ack, st, kind, result, None, started);
}

/// [`finish`], with a join's history reply as the acknowledgement on success.
fn finish_replying<A: Adapter>(
    s: &SocketRef<A>,
    ack: AckSender<A>,
    st: &AppState,
    kind: &'static str,
    result: Result<()>,
    reply: Option<&JoinReply>,
    started: Instant,
) {
    st.metrics.messages.with_label_values(&[kind, "in"]).inc();
    if let Err(e) = &result {
        st.metrics.error(e.code());
        tracing::debug!(event = kind, code = e.code(), "event refused: {e}");
        emit_to_socket(s, st, outbound::ERROR, "error", &e.to_client());
    }
    // A client without a callback gets no ack packet; `send` is a no-op then.
    let _ = match reply.filter(|_| result.is_ok()) {
        Some(reply) => ack.send(&reply.ack()),
        None => ack.send(&protocol::ack(&result)),
    };
    st.metrics
        .message_duration
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
}

fn emit_to_socket<A: Adapter, T: Serialize + ?Sized>(
    s: &SocketRef<A>,
    st: &AppState,
    event: &str,
    kind: &'static str,
    payload: &T,
) {
    st.metrics.messages.with_label_values(&[kind, "out"]).inc();
    if let Err(e) = s.emit(event, payload) {
        st.metrics.emit_failures.inc();
        tracing::debug!(event, error = %e, "emit to socket failed");
    }
}

/// Emits to a channel's room through the adapter: every delivery to a channel goes through here.
/// A history item is recorded first and delivered with its `offset` and `epoch` (and, with
/// Connection State Recovery, its position as the last argument). A failure is logged and
/// counted, not returned, because the sender's own request did succeed.
pub async fn emit_to_room<A: Adapter, T: Serialize + ?Sized>(
    ops: socketioxide::operators::BroadcastOperators<A>,
    st: &AppState,
    channel: &str,
    retention: Retention,
    event: &'static str,
    kind: &'static str,
    payload: &T,
) {
    st.metrics.messages.with_label_values(&[kind, "out"]).inc();
    let sent = match history::deliver::prepare(st, channel, retention, event, payload).await {
        Some(d) => match &d.recovery_arg {
            Some(arg) => ops.emit(event, &(&*d.payload, arg)).await,
            None => ops.emit(event, &*d.payload).await,
        },
        None => ops.emit(event, payload).await,
    };
    if let Err(e) = sent {
        st.metrics.emit_failures.inc();
        // A member whose outgoing queue is full fails every broadcast to its room: sampled, or
        // one slow member would write a line per message.
        if let Some(suppressed) = st.logs.admit("room_broadcast_failed") {
            tracing::warn!(event, error = %e, suppressed, "room broadcast failed (sampled)");
        }
    }
}

async fn join<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    c: &Session,
    v: &Value,
) -> Result<Option<JoinReply>> {
    let j = protocol::parse_join(v)?;
    let now = Instant::now();
    if c.membership(j.channel, now) != Membership::No {
        // Already listed: the adapter decides (an `end` on another replica may have removed it).
        session::confirm_membership(s, c, now);
        if c.membership(j.channel, now) != Membership::No {
            // Already in (a repeated join, or a socket Connection State Recovery restored): live
            // items flow already, so a history request is answered as the store has it and the
            // client drops the offsets it has seen.
            return Ok(match j.history.wants() {
                true => Some(history::socket::read_reply(st, j.channel, &j.history).await),
                false => None,
            });
        }
    }
    if j.role == Role::Host && !trust::may_host(&st.hosts, &c.claims(), j.channel).await {
        return Err(Error::HostNotAllowed);
    }
    let max = st.config().gateway.limits.max_channels_per_socket;
    if c.add(j.channel, max).is_err() {
        // The list may hold channels ended elsewhere; ask the adapter once before refusing.
        session::confirm_membership(s, c, now);
        c.add(j.channel, max).map_err(|_| Error::TooManyChannels)?;
    }
    let entering = history::socket::entering(s, st, j.channel, &j.history).await;
    enter_channel(s, st, c, j.channel, j.role, true).await;
    let host = j.role == Role::Host;
    Ok(history::socket::entered(s, st, j.channel, host, entering, &j.history).await)
}

/// Puts the socket (already listed in its session) in a channel's room and announces it;
/// `ping` sends the joiner its `metrics:ping` (not to a socket restored before its CONNECT
/// reply, which cannot get it yet).
async fn enter_channel<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    c: &Session,
    channel: &str,
    role: Role,
    ping: bool,
) {
    let room = protocol::room(channel);
    s.join(room.clone());
    st.room_joined(&room).await;
    st.metrics.presence_delta.with_label_values(&["join"]).inc();
    let now = unix_millis();
    let metrics_ping = protocol::MetricsPing {
        channel_name: channel,
        timestamp: now,
    };
    let batched = st.presence_joined(channel, &c.user_id_out) == Announce::Batched;
    if !batched && st.presence_churn(s.id, c.change(channel, Some(role))) == Decision::Announce {
        announce(
            s.within(room),
            st,
            channel,
            &c.user_id_out,
            c.username_out.as_deref(),
            Some(role),
            now,
        )
        .await;
    }
    if ping {
        emit_to_socket(s, st, outbound::METRICS_PING, "metrics_ping", &metrics_ping);
    }
}

/// Announces one socket's join (`joined` is its role) or leave to `room_ops`:
/// `presence:update` and `system:event`.
async fn announce<A: Adapter>(
    room_ops: socketioxide::operators::BroadcastOperators<A>,
    st: &AppState,
    channel: &str,
    user_id: &str,
    username: Option<&str>,
    joined: Option<Role>,
    timestamp: u64,
) {
    let presence = protocol::PresenceUpdate {
        channel_name: channel,
        delta: if joined.is_some() { 1 } else { -1 },
        user_id,
        username: None,
        timestamp,
    };
    emit_to_room(
        room_ops.clone(),
        st,
        channel,
        LiveOnly,
        outbound::PRESENCE,
        "presence",
        &presence,
    )
    .await;
    let system = protocol::SystemJoinLeave {
        kind: if joined.is_some() { "join" } else { "leave" },
        user_id,
        username,
        role: joined,
        timestamp,
    };
    emit_to_room(
        room_ops,
        st,
        channel,
        LiveOnly,
        outbound::SYSTEM,
        "system",
        &system,
    )
    .await;
}

async fn heartbeat<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    c: &Session,
    v: &Value,
) -> Result<()> {
    protocol::parse_heartbeat(v)?;
    let ack = protocol::HeartbeatAck {
        timestamp: unix_millis(),
        user_id: &c.user_id_out,
    };
    emit_to_socket(s, st, outbound::HEARTBEAT_ACK, "heartbeat_ack", &ack);
    Ok(())
}

async fn leave<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Session, v: &Value) -> Result<()> {
    let channel = protocol::channel(v)?;
    if !session::is_member(s, c, channel) {
        return Err(Error::NotMember);
    }
    c.remove(channel);
    s.leave(protocol::room(channel));
    history::socket::left(s, st, channel).await;
    announce_leave(s, st, c, channel).await;
    Ok(())
}

/// Tells the rest of a room that this socket left (by `leave` or by disconnecting).
async fn announce_leave<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Session, channel: &str) {
    st.room_left(&protocol::room(channel));
    st.metrics
        .presence_delta
        .with_label_values(&["leave"])
        .inc();
    if st.presence_left(channel, &c.user_id_out) == Announce::Batched {
        return;
    }
    if st.presence_churn(s.id, c.change(channel, None)) != Decision::Announce {
        return;
    }
    let room = protocol::room(channel);
    announce(
        s.to(room),
        st,
        channel,
        &c.user_id_out,
        c.username_out.as_deref(),
        None,
        unix_millis(),
    )
    .await;
}

/// The channel of a member-only event, after the payload and membership checks.
fn member_channel<'v, A: Adapter>(s: &SocketRef<A>, c: &Session, v: &'v Value) -> Result<&'v str> {
    let channel = protocol::channel(v)?;
    if !session::is_member(s, c, channel) {
        return Err(Error::NotMember);
    }
    Ok(channel)
}

async fn chat<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Session, v: &Value) -> Result<()> {
    let channel = member_channel(s, c, v)?;
    let config = st.config();
    let raw = protocol::chat_message(v, config.gateway.limits.max_message_length)?;
    let limit = config.gateway.rate_limits.messages_per_minute;
    st.check_send(Kind::Messages, channel, &c.claims().user_id, limit)
        .await?;
    let message = st.sanitizer.clean(raw);
    if message.is_empty() {
        return Err(Error::EmptyMessage);
    }
    let out = protocol::ChatNew {
        user_id: &c.user_id_out,
        username: c.username_out.as_deref(),
        message: &message,
        timestamp: unix_millis(),
    };
    emit_to_room(
        s.within(protocol::room(channel)),
        st,
        channel,
        History,
        outbound::CHAT,
        "chat",
        &out,
    )
    .await;
    Ok(())
}

async fn gift<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Session, v: &Value) -> Result<()> {
    let channel = member_channel(s, c, v)?;
    let config = st.config();
    let g = protocol::parse_gift(v, config.gateway.limits.max_gift_qty)?;
    let limit = config.gateway.rate_limits.gifts_per_minute;
    st.check_send(Kind::Gifts, channel, &c.claims().user_id, limit)
        .await?;
    let out = protocol::GiftNew {
        from: &c.user_id_out,
        from_username: c.username_out.as_deref(),
        gift_id: g.gift_id,
        qty: g.qty,
        timestamp: unix_millis(),
    };
    emit_to_room(
        s.within(protocol::room(channel)),
        st,
        channel,
        History,
        outbound::GIFT,
        "gift",
        &out,
    )
    .await;
    Ok(())
}

async fn moderate<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    c: &Session,
    v: &Value,
) -> Result<()> {
    let channel = protocol::channel(v)?;
    let config = st.config();
    let moderation = &config.gateway.moderation;
    match trust::moderation_right(&c.claims(), moderation) {
        None => return Err(Error::Forbidden),
        Some(ModerationRight::OgLevel) if !session::is_member(s, c, channel) => {
            return Err(Error::NotMember);
        }
        Some(_) => {}
    }
    let m = protocol::parse_moderation(v, config.gateway.limits.max_reason_length)?;
    let limit = config.gateway.rate_limits.moderation_per_minute;
    st.check_send(Kind::Moderation, channel, &c.claims().user_id, limit)
        .await?;
    apply_moderation(
        s.within(protocol::room(channel)),
        st,
        channel,
        &m,
        &c.claims().user_id,
        c.claims().username.as_deref(),
        moderation.mute_seconds,
    )
    .await;
    Ok(())
}

/// Announces a moderation decision to the room and carries it out; shared by the socket handler
/// and the bridge. `room_ops` addresses every member of the channel's room. The reason is
/// sanitized like chat (an empty result is no reason); the names are escaped.
pub async fn apply_moderation<A: Adapter>(
    room_ops: socketioxide::operators::BroadcastOperators<A>,
    st: &AppState,
    channel: &str,
    m: &protocol::Moderation<'_>,
    by: &str,
    by_username: Option<&str>,
    default_mute_seconds: u64,
) {
    let room = protocol::room(channel);
    let duration =
        (m.action == Action::Mute).then(|| m.duration_seconds.unwrap_or(default_mute_seconds));
    if let (Some(target), Some(seconds)) = (m.target_user_id, duration) {
        st.mute(channel, target, seconds).await;
    }
    let reason = m
        .reason
        .map(|r| st.sanitizer.clean(r))
        .filter(|r| !r.is_empty());
    let by_username = by_username.map(escape);
    let target = m.target_user_id.map(escape);
    let event = protocol::ModEvent {
        action: m.action,
        by: &escape(by),
        by_username: by_username.as_deref(),
        reason: reason.as_deref(),
        target_user_id: target.as_deref(),
        duration_seconds: duration,
        timestamp: unix_millis(),
    };
    emit_to_room(
        room_ops.clone(),
        st,
        channel,
        History,
        outbound::MODERATION,
        "moderation",
        &event,
    )
    .await;
    if m.action == Action::End {
        // This replica's members forget the channel at once; other replicas' sessions learn it
        // from their adapter on their next check (see `session`).
        for member in room_ops.clone().sockets() {
            if let Some(session) = member.extensions.get::<Arc<Session>>() {
                session.remove(channel);
            }
        }
        // Every member leaves the room, on every replica the adapter reaches.
        if let Err(e) = room_ops.leave(room).await {
            tracing::warn!(error = %e, "ending the channel could not remove every member");
        }
        st.presence_ended(channel);
        st.membership_changed();
    }
}

/// Announces the joins and leaves held by churn damping and every pending presence batch to
/// their rooms and, when `resync` is set, replaces the counted local room sizes with the
/// adapter's. Run on the `presence.batchIntervalMs` timer.
pub async fn flush_presence<A: Adapter>(io: &SocketIo<A>, st: &AppState, resync: bool) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    let now = unix_millis();
    for h in st.take_held_presence() {
        let room = ns.clone().to(protocol::room(&h.channel));
        announce(
            room,
            st,
            &h.channel,
            &h.user_id,
            h.username.as_deref(),
            h.joined,
            now,
        )
        .await;
    }
    for (channel, batch) in st.take_presence_batches() {
        let payload = batch.payload(&channel, now);
        emit_to_room(
            ns.clone().to(protocol::room(&channel)),
            st,
            &channel,
            LiveOnly,
            outbound::PRESENCE,
            "presence",
            &payload,
        )
        .await;
    }
    if resync {
        st.resync_presence(local_channel_sizes(io));
    }
}

/// Bounded label for `ws_disconnects_total`.
pub fn disconnect_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "packet_parsing_error",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}

/// Calls `f(channel, claims)` once for every channel room of every socket of this process: the
/// one walk over local membership that the metrics, the presence resync and the shared
/// snapshots all read from.
fn for_each_local_member<A: Adapter>(io: &SocketIo<A>, mut f: impl FnMut(&str, Option<&Claims>)) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    for s in ns.sockets() {
        let user = session::claims_of(&s.extensions);
        for room in s.rooms() {
            if let Some(channel) = protocol::channel_of(&room) {
                f(channel, user.as_deref());
            }
        }
    }
}

/// Sockets per channel among this process's sockets.
pub fn local_channel_sizes<A: Adapter>(io: &SocketIo<A>) -> HashMap<String, u64> {
    let mut sizes = HashMap::new();
    for_each_local_member(io, |channel, _| {
        *sizes.entry(channel.to_owned()).or_default() += 1;
    });
    sizes
}

/// This process's channel membership: sockets per channel and per (channel, user).
pub fn local_snapshot<A: Adapter>(io: &SocketIo<A>) -> crate::cluster::Snapshot {
    let mut snap = crate::cluster::Snapshot::default();
    for_each_local_member(io, |channel, user| {
        *snap.viewers.entry(channel.to_owned()).or_default() += 1;
        if let Some(c) = user {
            *snap
                .presence
                .entry((channel.to_owned(), c.user_id.clone()))
                .or_default() += 1;
        }
    });
    snap
}

/// Members per channel room among this process's sockets, for the room metrics.
pub fn local_room_sizes<A: Adapter>(io: &SocketIo<A>) -> Vec<usize> {
    local_channel_sizes(io)
        .into_values()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .collect()
}

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

use crate::auth::{AuthError, Claims, token_from};
use crate::error::{Error, Result};
use crate::presence::Announce;
use crate::protocol::{self, Action, inbound, outbound};
use crate::ratelimit::Kind;
use crate::state::{AppState, unix_millis};

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

/// Connect middleware: verifies the JWT from `auth.token` or `Authorization: Bearer`, and stores
/// the claims on the socket. The reason for a refusal is logged and counted, never sent.
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
    let outcome = token_from(auth.as_ref().ok(), header)
        .ok_or(AuthError::MissingToken)
        .and_then(|t| state.verify(t));
    match outcome {
        Ok(claims) => {
            s.extensions.insert(Arc::new(claims));
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
            Ok(())
        }
        Err(reason) => {
            tracing::info!(reason = reason.reason(), "handshake refused: {reason}");
            state
                .metrics
                .connections
                .with_label_values(&["rejected"])
                .inc();
            state
                .metrics
                .auth_failures
                .with_label_values(&[reason.reason()])
                .inc();
            state.metrics.error("unauthorized");
            Err(Unauthorized)
        }
    }
}

/// Connect handler. Everything a connection needs is set up by [`authenticate`], before the
/// client learns it is connected; nothing is left to do here.
pub async fn on_connect<A: Adapter>(_s: SocketRef<A>) {}

/// Registers `$handler`, an `async fn(&SocketRef<A>, &AppState, &Claims, &Value) -> Result<()>`,
/// for `$event`: data that is not JSON is refused before it, and every outcome goes through
/// [`finish`] under the metric label `$kind`.
macro_rules! on_event {
    ($s:expr, $A:ty, $event:expr, $kind:literal, $handler:ident) => {
        $s.on(
            $event,
            async |s: SocketRef<$A>,
                   TryData(d): TryData<Value>,
                   ack: AckSender<$A>,
                   State(st): State<AppState>,
                   Extension(c): Extension<Arc<Claims>>| {
                let t = Instant::now();
                let r = match d {
                    Ok(v) => $handler(&s, &st, &c, &v).await,
                    Err(_) => Err(Error::InvalidPayload),
                };
                finish(&s, ack, &st, $kind, r, t);
            },
        )
    };
}

/// Registers the event handlers of an authenticated socket and counts it as active; the
/// disconnect handler registered here is what counts it out again.
fn register_handlers<A: Adapter>(s: &SocketRef<A>, state: &AppState) {
    state.metrics.active_connections.inc();

    on_event!(s, A, inbound::JOIN, "join", join);
    on_event!(s, A, inbound::LEAVE, "leave", leave);
    on_event!(s, A, inbound::CHAT, "chat", chat);
    on_event!(s, A, inbound::GIFT, "gift", gift);
    on_event!(s, A, inbound::MODERATION, "moderation", moderate);
    on_event!(s, A, inbound::HEARTBEAT, "heartbeat", heartbeat);
    // Unknown events are counted and otherwise ignored, as socket.io does.
    s.on_fallback(async |State(st): State<AppState>| {
        st.metrics
            .messages
            .with_label_values(&["unknown", "in"])
            .inc();
        st.metrics.error("unknown_event");
    });
    s.on_disconnect(
        async |s: SocketRef<A>,
               reason: DisconnectReason,
               State(st): State<AppState>,
               Extension(c): Extension<Arc<Claims>>| {
            st.metrics.active_connections.dec();
            st.metrics
                .disconnects
                .with_label_values(&[disconnect_label(reason)])
                .inc();
            // Rooms are still readable here; socketioxide removes them after this handler.
            for room in s.rooms() {
                if let Some(channel) = protocol::channel_of(&room) {
                    announce_leave(&s, &st, &c, channel).await;
                }
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
    st.metrics.messages.with_label_values(&[kind, "in"]).inc();
    if let Err(e) = &result {
        st.metrics.error(e.code());
        tracing::debug!(event = kind, code = e.code(), "event refused: {e}");
        emit_to_socket(s, st, outbound::ERROR, "error", &e.to_client());
    }
    // A client without a callback gets no ack packet; `send` is a no-op then.
    let _ = ack.send(&protocol::ack(&result));
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

/// Emits to a room through the adapter; a failure is logged and counted, not returned, because
/// the sender's own request did succeed.
pub async fn emit_to_room<A: Adapter, T: Serialize + ?Sized>(
    ops: socketioxide::operators::BroadcastOperators<A>,
    st: &AppState,
    event: &str,
    kind: &'static str,
    payload: &T,
) {
    st.metrics.messages.with_label_values(&[kind, "out"]).inc();
    if let Err(e) = ops.emit(event, payload).await {
        st.metrics.emit_failures.inc();
        tracing::warn!(event, error = %e, "room broadcast failed");
    }
}

fn is_member<A: Adapter>(s: &SocketRef<A>, room: &str) -> bool {
    s.rooms().iter().any(|r| r == room)
}

async fn join<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Claims, v: &Value) -> Result<()> {
    let j = protocol::parse_join(v)?;
    let room = protocol::room(j.channel);
    if is_member(s, &room) {
        return Ok(());
    }
    s.join(room.clone());
    st.membership_changed();
    st.metrics.presence_delta.with_label_values(&["join"]).inc();
    let now = unix_millis();
    let ping = protocol::MetricsPing {
        channel_name: j.channel,
        timestamp: now,
    };
    if st.presence_joined(j.channel, &c.user_id) == Announce::Batched {
        emit_to_socket(s, st, outbound::METRICS_PING, "metrics_ping", &ping);
        return Ok(());
    }
    let presence = protocol::PresenceUpdate {
        channel_name: j.channel,
        delta: 1,
        user_id: &c.user_id,
        username: None,
        timestamp: now,
    };
    emit_to_room(
        s.within(room.clone()),
        st,
        outbound::PRESENCE,
        "presence",
        &presence,
    )
    .await;
    let system = protocol::SystemJoinLeave {
        kind: "join",
        user_id: &c.user_id,
        username: c.username.as_deref(),
        role: Some(j.role),
        timestamp: now,
    };
    emit_to_room(s.within(room), st, outbound::SYSTEM, "system", &system).await;
    emit_to_socket(s, st, outbound::METRICS_PING, "metrics_ping", &ping);
    Ok(())
}

async fn heartbeat<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    c: &Claims,
    v: &Value,
) -> Result<()> {
    protocol::parse_heartbeat(v)?;
    let ack = protocol::HeartbeatAck {
        timestamp: unix_millis(),
        user_id: &c.user_id,
    };
    emit_to_socket(s, st, outbound::HEARTBEAT_ACK, "heartbeat_ack", &ack);
    Ok(())
}

async fn leave<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Claims, v: &Value) -> Result<()> {
    let channel = protocol::channel(v)?;
    let room = protocol::room(channel);
    if !is_member(s, &room) {
        return Err(Error::NotMember);
    }
    s.leave(room);
    announce_leave(s, st, c, channel).await;
    Ok(())
}

/// Tells the rest of a room that this socket left (by `leave` or by disconnecting).
async fn announce_leave<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Claims, channel: &str) {
    st.membership_changed();
    st.metrics
        .presence_delta
        .with_label_values(&["leave"])
        .inc();
    if st.presence_left(channel, &c.user_id) == Announce::Batched {
        return;
    }
    let room = protocol::room(channel);
    let now = unix_millis();
    let presence = protocol::PresenceUpdate {
        channel_name: channel,
        delta: -1,
        user_id: &c.user_id,
        username: None,
        timestamp: now,
    };
    emit_to_room(
        s.to(room.clone()),
        st,
        outbound::PRESENCE,
        "presence",
        &presence,
    )
    .await;
    let system = protocol::SystemJoinLeave {
        kind: "leave",
        user_id: &c.user_id,
        username: c.username.as_deref(),
        role: None,
        timestamp: now,
    };
    emit_to_room(s.to(room), st, outbound::SYSTEM, "system", &system).await;
}

/// The channel of a member-only event, after the payload and membership checks.
fn member_channel<'v, A: Adapter>(s: &SocketRef<A>, v: &'v Value) -> Result<&'v str> {
    let channel = protocol::channel(v)?;
    if !is_member(s, &protocol::room(channel)) {
        return Err(Error::NotMember);
    }
    Ok(channel)
}

async fn chat<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Claims, v: &Value) -> Result<()> {
    let channel = member_channel(s, v)?;
    let config = st.config();
    let raw = protocol::chat_message(v, config.gateway.limits.max_message_length)?;
    let limit = config.gateway.rate_limits.messages_per_minute;
    st.check_send(Kind::Messages, channel, &c.user_id, limit)
        .await?;
    let message = st.sanitizer.clean(raw);
    if message.is_empty() {
        return Err(Error::EmptyMessage);
    }
    let out = protocol::ChatNew {
        user_id: &c.user_id,
        username: c.username.as_deref(),
        message: &message,
        timestamp: unix_millis(),
    };
    emit_to_room(
        s.within(protocol::room(channel)),
        st,
        outbound::CHAT,
        "chat",
        &out,
    )
    .await;
    Ok(())
}

async fn gift<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Claims, v: &Value) -> Result<()> {
    let channel = member_channel(s, v)?;
    let config = st.config();
    let g = protocol::parse_gift(v, config.gateway.limits.max_gift_qty)?;
    let limit = config.gateway.rate_limits.gifts_per_minute;
    st.check_send(Kind::Gifts, channel, &c.user_id, limit)
        .await?;
    let out = protocol::GiftNew {
        from: &c.user_id,
        from_username: c.username.as_deref(),
        gift_id: g.gift_id,
        qty: g.qty,
        timestamp: unix_millis(),
    };
    emit_to_room(
        s.within(protocol::room(channel)),
        st,
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
    c: &Claims,
    v: &Value,
) -> Result<()> {
    let channel = protocol::channel(v)?;
    let config = st.config();
    if !c.can_moderate(&config.gateway.moderation) {
        return Err(Error::Forbidden);
    }
    let m = protocol::parse_moderation(v)?;
    apply_moderation(
        s.within(protocol::room(channel)),
        st,
        channel,
        &m,
        &c.user_id,
        c.username.as_deref(),
        config.gateway.moderation.mute_seconds,
    )
    .await;
    Ok(())
}

/// Announces a moderation decision to the room and carries it out; shared by the socket handler
/// and the bridge. `room_ops` addresses every member of the channel's room.
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
    let event = protocol::ModEvent {
        action: m.action,
        by,
        by_username,
        reason: m.reason,
        target_user_id: m.target_user_id,
        duration_seconds: duration,
        timestamp: unix_millis(),
    };
    emit_to_room(
        room_ops.clone(),
        st,
        outbound::MODERATION,
        "moderation",
        &event,
    )
    .await;
    if m.action == Action::End {
        // Every member leaves the room, on every replica the adapter reaches.
        if let Err(e) = room_ops.leave(room).await {
            tracing::warn!(error = %e, "ending the channel could not remove every member");
        }
        st.presence_ended(channel);
        st.membership_changed();
    }
}

/// Announces every pending presence batch to its room and, when `resync` is set, replaces the
/// counted local room sizes with the adapter's. Run on the `presence.batchIntervalMs` timer.
pub async fn flush_presence<A: Adapter>(io: &SocketIo<A>, st: &AppState, resync: bool) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    let now = unix_millis();
    for (channel, batch) in st.take_presence_batches() {
        let payload = batch.payload(&channel, now);
        emit_to_room(
            ns.clone().to(protocol::room(&channel)),
            st,
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
        let user = s.extensions.get::<Arc<Claims>>();
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

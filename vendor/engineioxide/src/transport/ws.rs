//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use futures_util::{
    SinkExt, StreamExt, TryStreamExt,
    stream::{SplitSink, SplitStream},
};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, queue, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // The upgrade and the handshakes run once and are boxed, so the task that then lives as
    // long as the connection holds only the reader loop (live-realtime fork: the unboxed
    // future was 4.3 KB per connection).
    let start = Box::pin({
        let engine = engine.clone();
        async move {
            let conn = match hyper::upgrade::on(req).await {
                Ok(conn) => hyper_util::rt::TokioIo::new(conn),
                Err(_e) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("ws upgrade error: {}", _e);
                    return None;
                }
            };
            Some(start_session(engine, conn, protocol, sid, parts).await)
        }
    });
    tokio::spawn(async move {
        let res = match start.await {
            None => return,
            Some(Ok((socket, rx))) => {
                read_until_closed(&engine, rx, &socket).await;
                Ok(())
            }
            Some(Err(e)) => Err(e),
        };
        match res {
            Ok(()) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, rx) =
        Box::pin(start_session(engine.clone(), conn, protocol, sid, req_data)).await?;
    read_until_closed(&engine, rx, &socket).await;
    Ok(())
}

/// Runs the upgrade or open handshake, starts the writer task and returns the reading half.
async fn start_session<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(Arc<Socket<H::Data>>, SplitStream<WebSocketStream<S>>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        socket
            .clone()
            .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
        (socket, ws)
    };
    let (tx, rx) = ws.split();

    // Pipe between internal socket channel and websocket.
    tokio::spawn(forward_to_socket::<H, S>(
        socket.clone(),
        tx,
        Coalescer::new(engine.config.ws_write_coalesce, engine.write_epoch),
    ));
    Ok((socket, rx))
}

/// Pipes the websocket to the handler until the connection or the session ends.
async fn read_until_closed<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    rx: SplitStream<WebSocketStream<S>>,
    socket: &Arc<Socket<H::Data>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match forward_to_handler(engine, rx, socket)
        .with_cancellation_token(&socket.cancellation_token)
        .await
    {
        Some(Err(ref e)) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        Some(Ok(())) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }
}

/// Forwards all packets received from a websocket to a EngineIo [`Socket`]
async fn forward_to_handler<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    mut rx: SplitStream<WebSocketStream<S>>,
    socket: &Arc<Socket<H::Data>>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(msg) = rx.try_next().await? {
        match msg {
            Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    break;
                }
                Packet::Pong | Packet::Ping => {
                    // A full channel means that the client is already known to be alive.
                    socket.heartbeat_tx.try_send(()).ok();
                    Ok::<(), Error>(())
                }
                Packet::Message(msg) => {
                    engine.handler.on_message(msg, socket.clone());
                    Ok(())
                }
                p => return Err(Error::BadPacket(p)),
            },
            Message::Binary(mut data) => {
                if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                    // The first byte is the message type, which we don't need.
                    data = data.split_off(1);
                }
                engine.handler.on_binary(data, socket.clone());
                Ok(())
            }
            Message::Close(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("websocket closed, closing session");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                break;
            }
            _ => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "unexpected ws message");
                Ok(())
            }
        }?
    }
    Ok(())
}

/// Maps a packet to its websocket message; `None` for packets that are not sent.
///
/// Message packets, one per member of every broadcast, are framed in `scratch`, whose storage
/// comes back once tungstenite has copied the frame out (live-realtime fork: upstream built a
/// new `String` per packet per socket).
fn to_message(
    packet: Packet,
    protocol: ProtocolVersion,
    scratch: &mut BytesMut,
) -> Option<Message> {
    match packet {
        Packet::Message(msg) => {
            scratch.reserve(1 + msg.len());
            scratch.put_u8(b'4');
            scratch.extend_from_slice(msg.as_bytes());
            // SAFETY: an ASCII digit followed by a `str` is valid UTF-8.
            Some(Message::Text(unsafe {
                tungstenite::Utf8Bytes::from_bytes_unchecked(scratch.split().freeze())
            }))
        }
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Some(Message::Binary(buff.into()))
            } else {
                Some(Message::Binary(bin))
            }
        }
        // A Noop Packet maybe sent by the server to upgrade from a polling connection
        // In the case that the packet was not poll in time it will remain in the buffer and therefore
        // it should be discarded here
        Packet::Noop => None,
        packet => {
            let packet: String = packet.into();
            Some(Message::Text(packet.into()))
        }
    }
}

/// Decides whether a socket's next write waits for more packets (live-realtime fork).
///
/// Pure: time is passed in. Time is cut into windows of `interval` from a common `epoch`, and a
/// socket is written at most once per window: a packet that finds the socket already written
/// in the current window is held until the next window starts, but only when the packet rate
/// seen by recent writes (an exponentially weighted average between consecutive writes)
/// predicts at least one more packet in the time held. Aligned windows make every member of a
/// busy channel write the same packets at the same tick: full batches, and one timer wheel
/// slot for all of them.
#[derive(Debug, Clone)]
struct Coalescer {
    interval: std::time::Duration,
    epoch: tokio::time::Instant,
    last_write: Option<tokio::time::Instant>,
    /// Packets per second, smoothed over recent writes.
    rate: f64,
}

impl Coalescer {
    fn new(interval: std::time::Duration, epoch: tokio::time::Instant) -> Self {
        Self {
            interval,
            epoch,
            last_write: None,
            rate: 0.0,
        }
    }

    /// When a packet arriving at `now` should be written: `None` for at once.
    fn hold_until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if self.interval.is_zero() {
            return None;
        }
        let since_epoch = self.last_write?.checked_duration_since(self.epoch)?;
        let window = since_epoch.as_nanos() / self.interval.as_nanos();
        let due = self.epoch + self.interval.checked_mul(u32::try_from(window + 1).ok()?)?;
        let held = due.checked_duration_since(now).filter(|h| !h.is_zero())?;
        (self.rate * held.as_secs_f64() >= 1.0).then_some(due)
    }

    /// True while the socket gets about one packet per interval or more: its queue is kept
    /// allocated between writes rather than freed and allocated again each time.
    fn busy(&self) -> bool {
        self.rate * self.interval.as_secs_f64() >= 1.0
    }

    /// Records a write of `packets` packets that finished at `now`.
    fn wrote(&mut self, now: tokio::time::Instant, packets: usize) {
        if self.interval.is_zero() {
            return;
        }
        if let Some(last) = self.last_write {
            // At least a millisecond, so a burst written back to back does not read as an
            // unbounded rate.
            let elapsed = now.duration_since(last).as_secs_f64().max(0.001);
            self.rate = 0.5 * self.rate + 0.5 * (packets as f64 / elapsed);
        }
        self.last_write = Some(now);
    }
}

/// Forwards all packets waiting to be sent to the websocket
///
/// The websocket stream is flushed only when the internal channel is drained.
///
/// With a non-zero coalescing window (live-realtime fork), a busy socket is written (one
/// `send` syscall) at most once per window: a packet that finds the socket already written in
/// the current window waits for the next one only when the socket's recent traffic says at
/// least one more packet will arrive meanwhile ([`Coalescer`]); otherwise (a quiet socket, or
/// one whose packets come about one per window) it leaves at once, so coalescing adds latency
/// only where it saves writes.
///
/// Live-realtime fork: the writer waits on its queue alone (volatile packets share it, and the
/// engine closes it with the session), so a wake-up costs one lock instead of polling three
/// futures, and it sends what was queued before the close (a close packet) before it stops.
/// The loop has a single `feed` await, which keeps this connection-long future small.
async fn forward_to_socket<H: EngineIoHandler, S>(
    socket: Arc<Socket<H::Data>>,
    mut tx: SplitSink<WebSocketStream<S>, Message>,
    mut coalescer: Coalescer,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A polling request that was in progress during the upgrade may still hold the lock.
    // Boxed so the wait's state is not part of the writer's long-lived future.
    let lock = Box::pin(
        socket
            .internal_rx
            .lock()
            .with_cancellation_token(&socket.cancellation_token),
    );
    let Some(mut internal_rx) = lock.await else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before starting the ws writer");
        return;
    };
    let rx = &mut internal_rx.buffered_rx;

    let mut scratch = BytesMut::new();

    // Forward packets until the queue is closed (with the session) and drained.
    while let Some(item) = rx.next_item().await {
        if matches!(item, queue::Item::Queued(_))
            && let Some(due) = coalescer.hold_until(tokio::time::Instant::now())
        {
            // The timer first: when it fires, the queue's lock is not taken again.
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(due) => {}
                () = rx.closed() => {}
            }
        }
        // Everything queued by now goes out in this write.
        let mut written = 0;
        let mut batch = Some(item.into_inner());
        while let Some(packets) = batch.take() {
            for packet in packets {
                let Some(message) = to_message(packet, socket.protocol, &mut scratch) else {
                    continue;
                };
                written += 1;
                if let Err(_e) = tx.feed(message).await {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] error sending packet: {}", socket.id, _e);
                }
            }
            batch = rx.try_recv().ok();
        }

        #[cfg(feature = "tracing")]
        tracing::trace!(sid = %socket.id, "ws flush");
        tx.flush().await.ok();
        coalescer.wrote(tokio::time::Instant::now(), written);
        if !coalescer.busy() {
            rx.shrink_if_empty();
            scratch = BytesMut::new();
        }
    }

    #[cfg(feature = "tracing")]
    tracing::trace!(sid = %socket.id, "ws closing flush");

    tx.flush().await.ok();
    tx.close().await.ok();
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let (tx, _rx) = server.split();

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            tx,
            Coalescer::new(Duration::ZERO, tokio::time::Instant::now()),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;
        let (tx, _rx) = server.split();

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            tx,
            Coalescer::new(Duration::ZERO, tokio::time::Instant::now()),
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    async fn next_text(client: &mut WebSocketStream<DuplexStream>) -> Message {
        tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_socket_is_written_at_most_once_per_coalescing_interval() {
        let interval = Duration::from_millis(50);
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let (tx, _rx) = server.split();
        tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            tx,
            Coalescer::new(interval, tokio::time::Instant::now()),
        ));
        let reader = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            while let Some(Ok(msg)) = client.next().await {
                arrivals.push((tokio::time::Instant::now(), msg));
                if arrivals.len() == 41 {
                    break;
                }
            }
            arrivals
        });

        // 40 packets, one every 5 ms (200 per second), then one after a quiet spell.
        let start = tokio::time::Instant::now();
        let mut sent = Vec::new();
        for i in 0..40 {
            sent.push(tokio::time::Instant::now());
            socket.emit(Str::from(i.to_string())).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(interval * 3).await;
        let quiet = tokio::time::Instant::now();
        socket.emit(Str::from("quiet")).unwrap();

        let arrivals = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        let texts: Vec<_> = arrivals.iter().map(|(_, m)| m.clone()).collect();
        let expected: Vec<_> = (0..40)
            .map(|i| Message::text(format!("4{i}")))
            .chain([Message::text("4quiet")])
            .collect();
        assert_eq!(texts, expected, "every packet, in order");
        // Packets leave in a few writes rather than 40 ...
        let mut writes: Vec<_> = arrivals[..40].iter().map(|(at, _)| *at).collect();
        writes.dedup();
        assert!(writes.len() <= 12, "{} writes for 40 packets", writes.len());
        assert!(
            writes.len() >= (200 / 50) as usize - 1,
            "{} writes",
            writes.len()
        );
        // ... none held longer than the interval ...
        for ((at, _), sent) in arrivals[..40].iter().zip(&sent) {
            assert!(*at - *sent <= interval, "held {:?}", *at - *sent);
        }
        // ... and a packet to a quiet socket is not held at all.
        assert_eq!(arrivals[40].0, quiet);
        assert!(arrivals[0].0 == start, "the first packet leaves at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_waiting_out_its_interval_sends_what_is_queued_and_stops_when_the_session_ends()
     {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let (tx, _rx) = server.split();
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            tx,
            Coalescer::new(Duration::from_secs(3600), tokio::time::Instant::now()),
        ));
        socket.emit(Str::from("a")).unwrap();
        assert_eq!(next_text(&mut client).await, Message::text("4a"));
        socket.emit(Str::from("b")).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;

        // What the engine does when the session ends.
        socket.cancellation_token.cancel();
        socket.internal_tx.close();
        // What was queued still goes out, at once, and the writer stops.
        assert_eq!(next_text(&mut client).await, Message::text("4b"));
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop without waiting out the interval")
            .unwrap();
    }

    #[test]
    fn the_coalescer_holds_writes_only_when_more_packets_are_expected() {
        let start = tokio::time::Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let interval = Duration::from_millis(20);

        // Disabled: never holds.
        let mut off = Coalescer::new(Duration::ZERO, start);
        off.wrote(ms(0), 1);
        off.wrote(ms(1), 50);
        assert_eq!(off.hold_until(ms(2)), None);

        // A socket fed every 5 ms (200 packets/s): after a few writes it is held to one
        // write per interval.
        let mut busy = Coalescer::new(interval, start);
        assert_eq!(busy.hold_until(ms(0)), None, "first packet leaves at once");
        for t in (0..=40).step_by(5) {
            busy.wrote(ms(t), 1);
        }
        // Last written at 40 ms, in the window [40, 60): held until the next one starts.
        assert_eq!(busy.hold_until(ms(45)), Some(ms(60)));
        // Windows are aligned to the epoch, not to the last write.
        busy.wrote(ms(47), 1);
        assert_eq!(busy.hold_until(ms(48)), Some(ms(60)));
        // A packet after a quiet window is not held.
        assert_eq!(busy.hold_until(ms(61)), None);

        // A socket fed every 20 ms (50 packets/s): the next packet is due about when the
        // interval ends, so holding would add latency and save nothing.
        let mut steady = Coalescer::new(interval, start);
        for t in (0..=200).step_by(20) {
            steady.wrote(ms(t), 1);
        }
        assert_eq!(steady.hold_until(ms(219)), None);
        assert_eq!(
            steady.hold_until(ms(201)),
            None,
            "0.05 packets/ms * 19 ms < 1"
        );
    }
}

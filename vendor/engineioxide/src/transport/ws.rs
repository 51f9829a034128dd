//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Live-realtime fork: after the handshakes, a connection is one task running a [`Session`]
//! (reading, writing and the heartbeat in one loop) over the fork's own framing
//! ([`super::ws_frame`], [`super::ws_conn`]) instead of three tasks around a split tungstenite
//! stream; tungstenite's frame header parser and errors are still used.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{self, handshake::derive_accept_key};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, TransportType};

use super::{
    ws_conn::WsConn,
    ws_frame::{self, Incoming},
    ws_heartbeat::Heartbeat,
    ws_session::{Coalescer, Session, checked_text, encode_packet},
};
use crate::{
    DisconnectReason, Socket, body::ResponseBody, engine::EngineIo, errors::Error,
    handler::EngineIoHandler, socket::Outbound, transport::make_open_packet,
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
    let (mut parts, _body) = req.into_parts();

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();
    // The upgrade is taken out of the request rather than the request cloned to await it
    // (live-realtime fork): the session keeps the parts, and with them every header, until
    // they are released.
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();

    // The upgrade and the handshakes run once and are boxed, so the task that then lives as
    // long as the connection holds only the session (live-realtime fork: the unboxed
    // future was 4.3 KB per connection).
    let start = Box::pin({
        let engine = engine.clone();
        async move {
            let Some(on_upgrade) = on_upgrade else {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: the request cannot be upgraded");
                return None;
            };
            let conn = match on_upgrade.await {
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
        match start.await {
            None => {}
            Some(Ok(session)) => session.run().await,
            Some(Err(Error::MultipleWebsocketRequests)) => {}
            Some(Err(_e)) => {
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
    let session = Box::pin(start_session(engine, conn, protocol, sid, req_data)).await?;
    session.run().await;
    Ok(())
}

/// Runs the upgrade or open handshake and returns the session, ready to run.
pub(crate) async fn start_session<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<Session<H, S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &engine.config;
    let mut conn = WsConn::new(
        conn,
        config.ws_read_buffer_size,
        config.ws_max_frame_size,
        config.ws_max_message_size,
    );
    let (socket, first, heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut conn);
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
                // The session keeps the heartbeat task it was opened with.
                (socket, None, None)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        // The open packet is the first frame the session writes.
        let open = Packet::Open(make_open_packet(
            TransportType::Websocket,
            socket.id,
            config,
        ));
        let heartbeat = Heartbeat::new(
            protocol,
            config.ping_interval,
            config.ping_timeout,
            tokio::time::Instant::now(),
        );
        (socket, encode_packet(open, protocol), Some(heartbeat))
    };
    let coalescer = Coalescer::new(config.ws_write_coalesce, engine.write_epoch);
    Ok(Session {
        engine,
        socket,
        conn,
        first,
        heartbeat,
        coalescer,
    })
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
    tracing::instrument(level = "trace", skip(socket, conn))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    conn: &mut WsConn<S>,
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
        .send(Outbound::packets(smallvec![Packet::Noop]))
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match next_text(conn).await? {
        Some(msg) => msg,
        None => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, checked_text(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            let pong = String::from(Packet::PongUpgrade);
            conn.send(ws_frame::text_frame(b"", pong.as_bytes()))
                .await
                .map_err(tungstenite::Error::Io)?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match next_text(conn).await? {
        Some(msg) => msg,
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed or unexpected message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, checked_text(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

/// The next text message of a handshake, answering pings on the way; `None` when the stream
/// ends or something else comes.
async fn next_text<S>(conn: &mut WsConn<S>) -> Result<Option<Bytes>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match conn.next().await? {
            Some(Incoming::Text(text)) => return Ok(Some(text)),
            Some(Incoming::Ping(payload)) => conn
                .send(ws_frame::pong_frame(&payload))
                .await
                .map_err(tungstenite::Error::Io)?,
            Some(Incoming::Pong) => {}
            Some(Incoming::Binary(_) | Incoming::Close(_)) | None => return Ok(None),
        }
    }
}

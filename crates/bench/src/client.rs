//! One simulated client: a task per connection that connects from its own loopback source
//! address, completes the Engine.IO and `/live` namespace handshakes, joins its channel, answers
//! pings, sends paced chat when it is a sender, and counts and times what it receives.
//!
//! Per-connection memory is what limits how many clients one process can hold, so a connection
//! is one task owning one small-buffered WebSocket and a few integers; everything shared (the
//! counters, the histograms, the orchestrator's commands) lives once in [`Shared`] behind an
//! `Arc`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::engineio::{self, Packet};
use crate::pacing::Pacer;
use crate::stamp;
use crate::stats;

/// Read buffer per connection. tungstenite allocates it eagerly (128 KiB by default, which would
/// be 2 GB for 15,000 clients); live frames are a few hundred bytes.
const READ_BUFFER: usize = 4 * 1024;
/// Ack id of the join request; the only event a client sends with an ack.
const JOIN_ACK_ID: u64 = 0;
/// A join unanswered this long is sent again. The gateway registers its event handlers in an
/// async connect handler that socketioxide spawns *after* sending the namespace CONNECT, so an
/// event sent right after CONNECT can reach the socket before any handler exists and be
/// dropped. Joins are idempotent, so resending is safe; `join_retries` counts how often it was
/// needed, which is how the race shows in a report.
const JOIN_RETRY_AFTER: Duration = Duration::from_secs(3);

/// What the orchestrator tells every connection, through one `watch` channel. Later phases are
/// "greater": a connection catches up on whatever it missed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Command {
    /// Connect and stay (joining only when told to join on connect).
    Hold,
    /// Join now, if not joined yet.
    Join,
    /// Senders send at `per_sender_rate` messages/s from `start`; `round` tells rounds apart.
    Send {
        round: u32,
        per_sender_rate: f64,
        start: Instant,
    },
    /// Stop sending and keep receiving.
    Quiet,
    /// Close the connection and end the task.
    Close,
}

/// Counters shared by every connection and read by the orchestrator.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub joined: AtomicU64,
    pub join_failed: AtomicU64,
    pub join_retries: AtomicU64,
    /// Connections lost before their join was answered.
    pub lost_before_join: AtomicU64,
    pub disconnected: AtomicU64,
    pub sent: AtomicU64,
    /// Deliveries the sent messages should cause: the sender's channel size at send time.
    pub expected: AtomicU64,
    pub deliveries: AtomicU64,
    pub presence_events: AtomicU64,
    /// Microseconds after [`Shared::origin`] of the latest presence or system event.
    pub last_presence_micros: AtomicU64,
}

/// State shared by all connections of a run.
#[derive(Debug)]
pub struct Shared {
    pub counters: Counters,
    /// End-to-end chat latency. A plain mutex: it is held for one `record` and never across an
    /// await, and the bench runs on one or two cores, so it is rarely contended.
    pub latency: Mutex<Histogram<u64>>,
    /// TCP connect to namespace accepted.
    pub connect_time: Mutex<Histogram<u64>>,
    /// Joined members per channel; senders read their channel's size to count expected
    /// deliveries.
    pub members: Vec<AtomicU64>,
    pub origin: Instant,
}

impl Shared {
    pub fn new(channels: usize) -> Result<Self, hdrhistogram::CreationError> {
        Ok(Self {
            counters: Counters::default(),
            latency: Mutex::new(stats::micros_histogram()?),
            connect_time: Mutex::new(stats::micros_histogram()?),
            members: (0..channels).map(|_| AtomicU64::new(0)).collect(),
            origin: Instant::now(),
        })
    }

    /// Counts a connection that never got through its handshake; the first reason is printed,
    /// since it usually explains the rest (wrong secret, port exhaustion, open-files limit).
    fn failed(&self, why: &dyn std::fmt::Display) {
        if self.counters.failed.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("first failed connection: {why}");
        }
    }

    fn since_origin_micros(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Where and how to connect.
#[derive(Debug)]
pub struct Target {
    pub server: SocketAddr,
    /// `ws://host:port/ws/?EIO=4&transport=websocket`
    pub url: String,
    pub namespace: String,
    pub connect_timeout: Duration,
}

/// One connection's part in the plan.
#[derive(Debug)]
pub struct Spec {
    pub token: String,
    pub source: Ipv4Addr,
    pub channel: String,
    pub channel_index: usize,
    /// `(index, of)` when this connection sends.
    pub sender: Option<(usize, usize)>,
    pub join_on_connect: bool,
}

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Runs one client until told to close or the server goes away. Failures are counted, never
/// returned: a load run reports how many connections failed rather than stopping.
pub async fn run(
    spec: Spec,
    target: Arc<Target>,
    shared: Arc<Shared>,
    mut commands: watch::Receiver<Command>,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let ws = tokio::time::timeout(target.connect_timeout, connect(&spec, &target)).await;
    // The permit bounds handshakes in flight, not connections held.
    drop(permit);
    let mut ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            shared.failed(&e);
            return;
        }
        Err(_) => {
            shared.failed(&"handshake timed out");
            return;
        }
    };
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Ok(mut h) = shared.connect_time.lock() {
        stats::record(&mut h, micros);
    }
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);

    let mut client = Client {
        spec,
        target,
        shared,
        join_sent: false,
        join_deadline: None,
        joined: false,
        join_answered: false,
        round: None,
        pacer: None,
        round_start: Instant::now(),
        sent_in_round: 0,
        seq: 0,
    };
    if client.spec.join_on_connect
        && let Err(e) = client.send_join(&mut ws, true).await
    {
        client.lost(&e);
        return;
    }
    loop {
        let next_send = client.next_send();
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Err(e) = client.on_frame(&mut ws, text.as_str()).await {
                        client.lost(&e);
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    client.lost(&format!("close frame {frame:?}"));
                    return;
                }
                Some(Err(e)) => {
                    client.lost(&e);
                    return;
                }
                None => {
                    client.lost(&"end of stream");
                    return;
                }
                Some(Ok(_)) => {}
            },
            changed = commands.changed() => {
                let cmd = *commands.borrow_and_update();
                if changed.is_err() || cmd == Command::Close {
                    let _ = ws.close(None).await;
                    return;
                }
                if let Err(e) = client.on_command(&mut ws, cmd).await {
                    client.lost(&e);
                    return;
                }
            },
            () = tokio::time::sleep_until(client.join_deadline.unwrap_or(next_send).into()),
                if client.join_deadline.is_some() => {
                client.shared.counters.join_retries.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = client.send_join(&mut ws, true).await {
                    client.lost(&e);
                    return;
                }
            }
            () = tokio::time::sleep_until(next_send.into()), if client.pacer.is_some() => {
                if let Err(e) = client.send_due(&mut ws).await {
                    client.lost(&e);
                    return;
                }
            }
        }
    }
}

/// TCP from the spec's source address, the WebSocket upgrade, then the Engine.IO open packet and
/// the namespace handshake.
pub(crate) async fn connect(spec: &Spec, target: &Target) -> anyhow::Result<Ws> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddr::from((spec.source, 0))))?;
    let stream = TcpSocket::from_std_stream(std::net::TcpStream::from(socket))
        .connect(target.server)
        .await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(config))
            .await?;
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("closed during the handshake");
        };
        let Message::Text(text) = msg? else {
            continue;
        };
        match engineio::decode(text.as_str()) {
            Packet::Open { .. } => {
                ws.send(Message::text(engineio::encode_connect(
                    &target.namespace,
                    &spec.token,
                )))
                .await?;
            }
            Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
            Packet::Connected { namespace } if namespace == target.namespace => return Ok(ws),
            Packet::ConnectError { payload, .. } => anyhow::bail!("refused: {payload}"),
            Packet::Close => anyhow::bail!("closed during the handshake"),
            _ => {}
        }
    }
}

/// The state of one connected client.
struct Client {
    spec: Spec,
    target: Arc<Target>,
    shared: Arc<Shared>,
    join_sent: bool,
    /// Set while a join is unanswered: when to send it again.
    join_deadline: Option<Instant>,
    joined: bool,
    /// The first ack counts; the ack of a resent join is ignored.
    join_answered: bool,
    round: Option<u32>,
    pacer: Option<Pacer>,
    round_start: Instant,
    sent_in_round: u64,
    seq: u64,
}

type Sent = Result<(), Lost>;

/// Why a connected client ended.
#[derive(Debug)]
enum Lost {
    Ws(tokio_tungstenite::tungstenite::Error),
    Server(&'static str),
}

impl From<tokio_tungstenite::tungstenite::Error> for Lost {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Self::Ws(e)
    }
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ws(e) => write!(f, "websocket: {e}"),
            Self::Server(what) => f.write_str(what),
        }
    }
}

impl Client {
    /// Counts a connection the server (or the network) ended. A joined member leaves its
    /// channel's count, so later sends expect one delivery fewer. The first loss of a run is
    /// printed, since its reason usually explains the rest.
    fn lost(&self, why: &dyn std::fmt::Display) {
        let c = &self.shared.counters;
        if c.disconnected.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!("first lost connection: {why}");
        }
        if self.joined {
            self.shared.members[self.spec.channel_index].fetch_sub(1, Ordering::Relaxed);
        }
        if !self.join_answered {
            c.lost_before_join.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn next_send(&self) -> Instant {
        match self.pacer {
            Some(p) => self.round_start + p.due_at(self.sent_in_round),
            // Unused: the select branch is disabled without a pacer.
            None => self.round_start,
        }
    }

    /// Sends the join. Only a join sent right after CONNECT (`retry`) is resent when unanswered:
    /// that is the race; a later join that goes unanswered is the server being slow, and
    /// resending would add load to what is being measured.
    async fn send_join(&mut self, ws: &mut Ws, retry: bool) -> Sent {
        self.join_sent = true;
        self.join_deadline = retry.then(|| Instant::now() + JOIN_RETRY_AFTER);
        let payload = format!(r#"{{"channelName":"{}"}}"#, self.spec.channel);
        let frame =
            engineio::encode_event(&self.target.namespace, Some(JOIN_ACK_ID), "join", &payload);
        Ok(ws.send(Message::text(frame)).await?)
    }

    async fn on_command(&mut self, ws: &mut Ws, cmd: Command) -> Sent {
        match cmd {
            Command::Hold | Command::Close => Ok(()),
            Command::Join => {
                if !self.join_sent {
                    self.send_join(ws, false).await?;
                }
                Ok(())
            }
            Command::Send {
                round,
                per_sender_rate,
                start,
            } => {
                if !self.join_sent {
                    self.send_join(ws, false).await?;
                }
                if self.round != Some(round) {
                    self.round = Some(round);
                    self.round_start = start;
                    self.sent_in_round = 0;
                    self.pacer = self
                        .spec
                        .sender
                        .and_then(|(i, of)| Pacer::new(per_sender_rate, i, of));
                }
                Ok(())
            }
            Command::Quiet => {
                self.pacer = None;
                Ok(())
            }
        }
    }

    /// Sends every message that has fallen due.
    async fn send_due(&mut self, ws: &mut Ws) -> Sent {
        let Some(pacer) = self.pacer else {
            return Ok(());
        };
        let due = pacer.due(self.round_start.elapsed());
        let fanout = &self.shared.members[self.spec.channel_index];
        while self.sent_in_round < due {
            let payload = stamp::chat_send_payload(&self.spec.channel, unix_micros(), self.seq);
            let frame = engineio::encode_event(&self.target.namespace, None, "chat:send", &payload);
            ws.send(Message::text(frame)).await?;
            self.seq += 1;
            self.sent_in_round += 1;
            let c = &self.shared.counters;
            c.sent.fetch_add(1, Ordering::Relaxed);
            c.expected
                .fetch_add(fanout.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        Ok(())
    }

    async fn on_frame(&mut self, ws: &mut Ws, text: &str) -> Sent {
        let c = &self.shared.counters;
        match engineio::decode(text) {
            Packet::Event { name, payload, .. } => match name {
                "chat:new" => {
                    let now = unix_micros();
                    c.deliveries.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = stamp::sent_micros(payload)
                        && let Ok(mut h) = self.shared.latency.lock()
                    {
                        stats::record(&mut h, stamp::latency_micros(sent, now));
                    }
                }
                "presence:update" | "system:event" => {
                    c.presence_events.fetch_add(1, Ordering::Relaxed);
                    c.last_presence_micros
                        .fetch_max(self.shared.since_origin_micros(), Ordering::Relaxed);
                }
                _ => {}
            },
            Packet::Ack { id, payload, .. } if id == JOIN_ACK_ID && !self.join_answered => {
                self.join_answered = true;
                self.join_deadline = None;
                if payload.contains(r#""ok":true"#) {
                    self.joined = true;
                    c.joined.fetch_add(1, Ordering::Relaxed);
                    self.shared.members[self.spec.channel_index].fetch_add(1, Ordering::Relaxed);
                } else {
                    c.join_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
            Packet::Close => return Err(Lost::Server("engine.io close packet")),
            Packet::Disconnected { .. } => return Err(Lost::Server("namespace disconnect packet")),
            _ => {}
        }
        Ok(())
    }
}

/// Wall-clock microseconds since the Unix epoch: the one clock sender and receiver share.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

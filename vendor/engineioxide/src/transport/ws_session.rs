//! A WebSocket session in one task: reading, writing, the heartbeat and write coalescing in one
//! loop (live-realtime fork).
//!
//! Upstream ran three tasks per connection (a reader, a writer and a heartbeat) joined by a
//! split `WebSocketStream` (a lock around the stream) and a channel of pongs. One task holds one
//! future and one timer instead of three futures, three task headers, a lock and a channel, and
//! a packet queued for the socket wakes one task that writes it directly.
//!
//! The loop, on every wake-up: decode what the socket has read and hand the messages to the
//! handler; see to its one timer (the heartbeat's deadline, the end of a coalescing hold, the
//! end of the closing grace); take everything queued for the socket in one lock and frame it,
//! unless coalescing holds it back; write the frames in one vectored write. It ends once the
//! session's queue is closed (by the engine, whatever ended the session) and what was queued
//! before has been written, followed by a close frame.

use std::{
    collections::VecDeque,
    future::poll_fn,
    ops::ControlFlow,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use engineioxide_core::{Packet, ProtocolVersion, Str};
use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};
use tokio_util::future::FutureExt as _;

use super::{
    ws_conn::{ReadEnd, WsConn},
    ws_frame::{self, Incoming},
    ws_heartbeat::{Heartbeat, TimedOut},
};
use crate::{
    DisconnectReason, Socket,
    engine::EngineIo,
    errors::Error,
    handler::EngineIoHandler,
    queue::{self, Take},
    socket::Outbound,
};

/// How long a session that has ended keeps trying to write what was queued before the end (a
/// close packet, say) to a peer that does not read.
const CLOSING_GRACE: Duration = Duration::from_secs(2);

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
pub(crate) struct Coalescer {
    interval: Duration,
    epoch: Instant,
    last_write: Option<Instant>,
    /// Packets per second, smoothed over recent writes.
    rate: f64,
}

impl Coalescer {
    pub(crate) fn new(interval: Duration, epoch: Instant) -> Self {
        Self {
            interval,
            epoch,
            last_write: None,
            rate: 0.0,
        }
    }

    /// When a packet arriving at `now` should be written: `None` for at once.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        // A socket that gets less than a packet per window is never held (`held` below is at
        // most one window): settled without reading the clock, for most sockets.
        if !self.busy() {
            return None;
        }
        // In u64 nanoseconds (584 years): a u128 division is a library call, on every write.
        let interval = u64::try_from(self.interval.as_nanos()).ok()?;
        let since_epoch = self.last_write?.checked_duration_since(self.epoch)?;
        let window = u64::try_from(since_epoch.as_nanos()).ok()? / interval;
        let due = self.epoch + Duration::from_nanos((window + 1).checked_mul(interval)?);
        let held = due.checked_duration_since(now).filter(|h| !h.is_zero())?;
        (self.rate * held.as_secs_f64() >= 1.0).then_some(due)
    }

    /// True while the socket gets about one packet per interval or more: its buffers are kept
    /// between writes rather than freed and allocated again each time.
    fn busy(&self) -> bool {
        !self.interval.is_zero() && self.rate * self.interval.as_secs_f64() >= 1.0
    }

    /// Records a write of `packets` packets that finished at `now`.
    fn wrote(&mut self, now: Instant, packets: usize) {
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

/// Appends the websocket frame of a packet to `out`; false for packets that are not sent.
pub(crate) fn put_packet(out: &mut BytesMut, packet: Packet, protocol: ProtocolVersion) -> bool {
    match packet {
        Packet::Message(msg) => ws_frame::put_text_frame(out, b"4", msg.as_bytes()),
        // v3 puts the packet type in front of binary data.
        Packet::Binary(bin) | Packet::BinaryV3(bin) if protocol == ProtocolVersion::V3 => {
            ws_frame::put_binary_frame(out, &[0x04], &bin)
        }
        Packet::Binary(bin) | Packet::BinaryV3(bin) => ws_frame::put_binary_frame(out, &[], &bin),
        // A Noop packet may be sent by the server to end a polling request during an upgrade;
        // if no polling request took it, it is left over and discarded here.
        Packet::Noop => return false,
        packet => {
            let packet: String = packet.into();
            ws_frame::put_text_frame(out, b"", packet.as_bytes());
        }
    }
    true
}

/// The websocket frame of a packet; `None` for packets that are not sent.
pub(crate) fn encode_packet(packet: Packet, protocol: ProtocolVersion) -> Option<Bytes> {
    let mut out = BytesMut::new();
    put_packet(&mut out, packet, protocol).then(|| out.freeze())
}

/// Text that the decoder checked to be UTF-8, as a [`Str`].
pub(crate) fn checked_text(bytes: Bytes) -> Str {
    // SAFETY: `ws_frame` hands out text only after checking that it is UTF-8.
    unsafe { Str::from_bytes_unchecked(bytes) }
}

/// Wakes the session's task when its socket is readable, and records that it was that: the
/// session reads only then, rather than polling the socket on every packet queued for it
/// (a write-only wake-up is the common one: a member of a busy channel).
#[derive(Debug, Default)]
struct ReadSignal {
    readable: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.readable.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The time, read once per pass of the loop and only when something needs it.
#[derive(Default)]
struct Clock(Option<Instant>);

impl Clock {
    fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// Frame entries kept allocated by an idle socket: one write's worth of the usual traffic (a
/// message, or a message and a ping), so a socket fed a message at a time does not allocate
/// and free its buffers for every one.
const KEEP_SLOTS: usize = 2;

/// One session's connection task.
pub(crate) struct Session<H: EngineIoHandler, S> {
    pub(crate) engine: Arc<EngineIo<H>>,
    pub(crate) socket: Arc<Socket<H::Data>>,
    pub(crate) conn: WsConn<S>,
    /// Frames the session writes before anything queued: the open packet.
    pub(crate) first: Option<Bytes>,
    /// The heartbeat of a session opened on the websocket; a session upgraded from polling
    /// keeps the heartbeat task it started with, and this forwards its pongs there.
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) coalescer: Coalescer,
}

impl<H: EngineIoHandler, S> Session<H, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Runs the session until it ends.
    pub(crate) async fn run(self) {
        let Session {
            engine,
            socket,
            conn,
            first,
            heartbeat,
            coalescer,
        } = self;
        // A polling request that was in progress during the upgrade may still hold the lock.
        // Boxed so the wait's state is not part of this long-lived future.
        let lock = Box::pin(
            socket
                .internal_rx
                .lock()
                .with_cancellation_token(&socket.cancellation_token),
        );
        let Some(mut internal_rx) = lock.await else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before its websocket started");
            return;
        };
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let signal = Arc::new(ReadSignal {
            readable: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let mut driver = Driver {
            engine: &engine,
            socket: &socket,
            conn,
            read_waker: Waker::from(signal.clone()),
            signal,
            heartbeat,
            coalescer,
            pending: first.into_iter().map(Outbound::Wire).collect(),
            backlog: false,
            batch: 0,
            hold: None,
            released: false,
            armed: None,
            reading: true,
            read_buffered: true,
            ending: None,
            close_sent: false,
        };
        let rx = &mut internal_rx.buffered_rx;
        poll_fn(|cx| driver.poll(cx, rx, timer.as_mut())).await;
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "ws closed");
    }
}

/// The state of the loop; see the module documentation.
struct Driver<'a, H: EngineIoHandler, S> {
    engine: &'a Arc<EngineIo<H>>,
    socket: &'a Arc<Socket<H::Data>>,
    conn: WsConn<S>,
    signal: Arc<ReadSignal>,
    /// Wakes through `signal`: given to the socket's reads.
    read_waker: Waker,
    heartbeat: Option<Heartbeat>,
    coalescer: Coalescer,
    /// What goes out next, in order: values taken from the queue (framed in place just before
    /// they are written) and the session's own frames. The front one may be partly written.
    pending: VecDeque<Outbound>,
    /// The queue was left to fill while a batch was being written (back-pressure).
    backlog: bool,
    /// Frames handed to the socket since the last completed write.
    batch: usize,
    /// Coalescing holds what is pending until then.
    hold: Option<Instant>,
    /// A hold just ended: write what is taken without holding again.
    released: bool,
    /// The deadline the timer was set to and registered for; `None` once it passed.
    armed: Option<Instant>,
    reading: bool,
    /// Bytes read during the handshakes may hold messages: decode them before reading.
    read_buffered: bool,
    /// The queue is closed and drained: write what is left until this deadline, then stop.
    ending: Option<Instant>,
    /// A close frame is written or queued: nothing may follow it.
    close_sent: bool,
}

impl<H: EngineIoHandler, S> Driver<'_, H, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        rx: &mut queue::Receiver<Outbound>,
        mut timer: Pin<&mut Sleep>,
    ) -> Poll<()> {
        self.signal.task.register(cx.waker());
        loop {
            let mut again = false;
            let mut clock = Clock::default();
            // Set when the queue was left alone because a batch was still being written.
            let mut deferred_take = false;

            if self.reading && self.signal.readable.swap(false, Ordering::Acquire) {
                again |= self.poll_read();
            }

            // The timer's deadlines: the end of a hold, the heartbeat, the closing grace.
            if self.hold.is_some_and(|due| clock.now() >= due) {
                self.hold = None;
                self.released = true;
            }
            if let Some(heartbeat) = &mut self.heartbeat
                && heartbeat.deadline() <= clock.now()
            {
                match heartbeat.expired(clock.now()) {
                    Ok(None) => {}
                    Ok(Some(packet)) => {
                        if let Some(frame) = encode_packet(packet, self.socket.protocol) {
                            self.pending.push_back(Outbound::Wire(frame));
                        }
                    }
                    Err(TimedOut) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(sid = %self.socket.id, "heartbeat timeout");
                        self.heartbeat = None;
                        self.socket.close(DisconnectReason::HeartbeatTimeout);
                        again = true;
                    }
                }
            }
            if self.ending.is_some_and(|deadline| clock.now() >= deadline) {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %self.socket.id, "peer not reading, dropping the rest");
                return Poll::Ready(());
            }

            // The queue. Taking registers for what comes next, unless a hold starts.
            if self.ending.is_none() {
                if self.hold.is_some() && rx.poll_closed(cx).is_ready() {
                    // The session ended: what is held goes out now.
                    self.hold = None;
                    self.released = true;
                }
                if self.hold.is_none() && !self.pending.is_empty() {
                    deferred_take = true;
                    self.backlog = true;
                    // Back-pressure (live-realtime fork): while a batch is still being written,
                    // what comes next waits in the bounded queue, so a peer that stops reading
                    // fills the queue and further emits to it are refused, instead of `pending`
                    // growing without bound. Only the end of the session is watched meanwhile;
                    // then what the (bounded) queue holds is taken once, to go out before the
                    // close frame.
                    if rx.poll_closed(cx).is_ready() {
                        let _ = rx.poll_take_all(cx, &mut self.pending);
                        self.ending = Some(clock.now() + CLOSING_GRACE);
                        self.reading = false;
                    }
                } else if self.hold.is_none() {
                    // Values that waited behind a batch are a busy socket's, not a quiet one's:
                    // they go out now, not after a coalescing hold.
                    let idle = self.pending.is_empty() && !std::mem::take(&mut self.backlog);
                    match rx.poll_take_all(cx, &mut self.pending) {
                        Take::Ended | Take::Values { last: true } => {
                            // What was queued before the end still goes out, then the close.
                            self.ending = Some(clock.now() + CLOSING_GRACE);
                            self.reading = false;
                        }
                        Take::Values { last: false } if idle && !self.released => {
                            if let Some(due) = self.coalescer.hold_until(clock.now()) {
                                self.hold = Some(due);
                                // Values queued while holding wait for the hold's end.
                                let _ = rx.poll_closed(cx);
                            }
                        }
                        Take::Values { last: false } | Take::Nothing => {}
                    }
                }
            }
            if self.ending.is_some() && !self.close_sent && self.hold.is_none() {
                self.pending
                    .push_back(Outbound::Wire(Bytes::from_static(ws_frame::CLOSE_FRAME)));
                self.close_sent = true;
            }

            if self.hold.is_none() && !self.pending.is_empty() {
                self.frame_pending();
                match self
                    .conn
                    .poll_write(cx, &mut self.pending, Outbound::wire_mut)
                {
                    Poll::Ready(Ok(())) => self.wrote(rx, &mut clock),
                    Poll::Ready(Err(_e)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(sid = %self.socket.id, "ws write error: {_e}");
                        self.engine
                            .close_session(self.socket.id, DisconnectReason::TransportError);
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            if self.ending.is_some() && self.close_sent && self.pending.is_empty() {
                return Poll::Ready(());
            }
            // The batch went out: take what waited in the queue (the wait cleared the queue's
            // waker, so nothing else would).
            if deferred_take && self.pending.is_empty() {
                again = true;
            }

            // Arm the timer for the earliest deadline, registering only when it changes.
            if self.armed.is_some_and(|at| clock.now() >= at) {
                self.armed = None;
            }
            let deadline = [
                self.hold,
                self.heartbeat.as_ref().map(Heartbeat::deadline),
                self.ending,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(deadline) = deadline
                && self.armed != Some(deadline)
            {
                timer.as_mut().reset(deadline);
                self.armed = Some(deadline);
                again |= timer.as_mut().poll(cx).is_ready();
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Reads and handles what the client sent; true when reading is over.
    fn poll_read(&mut self) -> bool {
        let Driver {
            engine,
            socket,
            conn,
            heartbeat,
            read_waker,
            ..
        } = self;
        let mut cx = Context::from_waker(read_waker);
        let mut replies: Vec<Bytes> = Vec::new();
        let mut ended: Option<Result<(), Error>> = None;
        let mut on = |incoming| {
            match handle(engine, socket, heartbeat.as_mut(), incoming, &mut replies) {
                Ok(true) => return ControlFlow::Continue(()),
                Ok(false) => ended = Some(Ok(())),
                Err(e) => ended = Some(Err(e)),
            }
            ControlFlow::Break(())
        };
        let mut result: Poll<Result<ReadEnd, Error>> = Poll::Pending;
        if self.read_buffered {
            self.read_buffered = false;
            match conn.decode_buffered(&mut on) {
                Ok(ControlFlow::Break(())) => result = Poll::Ready(Ok(ReadEnd::Stopped)),
                Ok(ControlFlow::Continue(())) => {}
                Err(e) => result = Poll::Ready(Err(e.into())),
            }
        }
        if result.is_pending() {
            result = conn.poll_read(&mut cx, &mut on).map_err(Error::from);
        }
        for reply in replies {
            if !self.close_sent {
                self.close_sent = ws_frame::is_close(&reply);
                self.pending.push_back(Outbound::Wire(reply));
            }
        }
        let reason = match (result, ended) {
            (_, Some(Ok(()))) => None,
            (_, Some(Err(e))) | (Poll::Ready(Err(e)), None) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %self.socket.id, "error when handling packet: {e:?}");
                Some(
                    Option::<DisconnectReason>::from(&e)
                        .unwrap_or(DisconnectReason::TransportError),
                )
            }
            // The peer went without a close frame (tungstenite's "reset without closing
            // handshake").
            (Poll::Ready(Ok(ReadEnd::Eof)), None) => Some(DisconnectReason::TransportError),
            (Poll::Ready(Ok(ReadEnd::Stopped)), None) | (Poll::Pending, None) => return false,
        };
        if let Some(reason) = reason {
            self.engine.close_session(self.socket.id, reason);
        }
        self.reading = false;
        true
    }

    /// Frames, in place, what is pending and not framed yet.
    fn frame_pending(&mut self) {
        self.released = false;
        let protocol = self.socket.protocol;
        for item in self.pending.iter_mut() {
            let frame = match std::mem::replace(item, Outbound::Wire(Bytes::new())) {
                Outbound::Wire(frame) => frame,
                Outbound::Frame(frame) => {
                    self.batch += 1;
                    frame.into_frame()
                }
                Outbound::Message(msg) => {
                    self.batch += 1;
                    ws_frame::text_frame(b"4", msg.as_bytes())
                }
                Outbound::Packets(packets) => {
                    let mut out = BytesMut::new();
                    for packet in *packets {
                        self.batch += usize::from(put_packet(&mut out, packet, protocol));
                    }
                    out.freeze()
                }
            };
            *item = Outbound::Wire(frame);
        }
    }

    /// Everything framed so far is written.
    fn wrote(&mut self, rx: &mut queue::Receiver<Outbound>, clock: &mut Clock) {
        if self.batch == 0 {
            return;
        }
        self.coalescer.wrote(clock.now(), self.batch);
        self.batch = 0;
        if !self.coalescer.busy() && self.pending.capacity() > KEEP_SLOTS {
            // An idle socket keeps small buffers only; a busy one keeps what it grew to. The
            // queue and `pending` swap storage on every take, so a large buffer shows here in
            // turn, and the queue's lock is not taken for nothing on every write.
            rx.shrink_to(KEEP_SLOTS);
            self.pending.shrink_to(KEEP_SLOTS);
        }
    }
}

/// Handles one message from the client: whether to go on reading.
fn handle<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    heartbeat: Option<&mut Heartbeat>,
    incoming: Incoming,
    replies: &mut Vec<Bytes>,
) -> Result<bool, Error> {
    match incoming {
        Incoming::Text(text) => match Packet::parse(socket.protocol, checked_text(text))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "closing session");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                Ok(false)
            }
            Packet::Pong | Packet::Ping => {
                match heartbeat {
                    Some(heartbeat) => {
                        if let Some(reply) = heartbeat
                            .on_client_beat(Instant::now())
                            .and_then(|p| encode_packet(p, socket.protocol))
                        {
                            replies.push(reply);
                        }
                    }
                    // A full channel means that the client is already known to be alive.
                    None => {
                        if let Some(tx) = &socket.heartbeat_tx {
                            tx.try_send(()).ok();
                        }
                    }
                }
                Ok(true)
            }
            Packet::Message(msg) => {
                engine.handler.on_message(msg, socket.clone());
                Ok(true)
            }
            p => Err(Error::BadPacket(p)),
        },
        Incoming::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Ok(true)
        }
        Incoming::Ping(payload) => {
            replies.push(ws_frame::pong_frame(&payload));
            Ok(true)
        }
        Incoming::Pong => Ok(true),
        Incoming::Close(code) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "websocket closed, closing session");
            replies.push(ws_frame::close_reply(code));
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures_util::{SinkExt, StreamExt};
    use http::Request;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::{
        WebSocketStream,
        tungstenite::{Message, protocol::Role},
    };

    use super::*;
    use crate::{TransportType, config::EngineIoConfig, transport::ws};

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// Records what the engine tells its handler.
    #[derive(Debug, Default)]
    struct Recorder {
        messages: Mutex<Vec<String>>,
        disconnects: Mutex<Vec<DisconnectReason>>,
    }
    impl EngineIoHandler for Recorder {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, reason: DisconnectReason) {
            self.disconnects.lock().unwrap().push(reason);
        }
        fn on_message(self: &Arc<Self>, msg: Str, _: Arc<Socket<()>>) {
            self.messages.lock().unwrap().push(msg.to_string());
        }
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    type Client = WebSocketStream<DuplexStream>;

    fn engine(coalesce: Duration) -> Arc<EngineIo<Recorder>> {
        let config = EngineIoConfig::builder()
            .ws_write_coalesce(coalesce)
            .build();
        Arc::new(EngineIo::new(Arc::new(Recorder::default()), config))
    }

    /// A websocket session opened on `engine`, not yet running, and the client's end.
    async fn open(engine: &Arc<EngineIo<Recorder>>) -> (Session<Recorder, DuplexStream>, Client) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let session = ws::start_session(
            engine.clone(),
            server,
            ProtocolVersion::V4,
            None,
            Request::<()>::default().into_parts().0,
        )
        .await
        .unwrap();
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (session, client)
    }

    async fn next(client: &mut Client) -> Message {
        tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the session should send a frame")
            .expect("the stream should not end")
            .expect("the frame should be valid")
    }

    /// The open packet and the first ping, which every session starts with.
    async fn skip_open(client: &mut Client) {
        assert!(matches!(next(client).await, Message::Text(t) if t.starts_with("0{")));
        assert_eq!(next(client).await, Message::text("2"));
    }

    #[tokio::test(start_paused = true)]
    async fn one_task_reads_writes_and_keeps_the_heartbeat() {
        let engine = engine(Duration::ZERO);
        let (session, mut client) = open(&engine).await;
        let socket = session.socket.clone();
        let task = tokio::spawn(session.run());
        skip_open(&mut client).await;
        client.send(Message::text("3")).await.unwrap();
        client.send(Message::text("4hello")).await.unwrap();
        socket.emit("back").unwrap();
        assert_eq!(next(&mut client).await, Message::text("4back"));
        assert_eq!(*engine.handler.messages.lock().unwrap(), ["hello"]);

        // The next ping keeps the interval; unanswered, it ends the session.
        let interval = engine.config.ping_interval;
        tokio::time::sleep(interval).await;
        assert_eq!(next(&mut client).await, Message::text("2"));
        tokio::time::sleep(engine.config.ping_timeout).await;
        assert_eq!(
            next(&mut client).await,
            Message::text("1"),
            "the close packet"
        );
        assert!(matches!(next(&mut client).await, Message::Close(None)));
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            *engine.handler.disconnects.lock().unwrap(),
            [DisconnectReason::HeartbeatTimeout]
        );
    }

    #[tokio::test]
    async fn a_close_frame_from_the_client_is_answered_and_ends_the_session() {
        let engine = engine(Duration::ZERO);
        let (session, mut client) = open(&engine).await;
        let task = tokio::spawn(session.run());
        skip_open(&mut client).await;
        client.close(None).await.unwrap();
        // tungstenite's client reads the server's answer and then the end of the stream.
        while let Some(Ok(_)) = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap() {}
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            *engine.handler.disconnects.lock().unwrap(),
            [DisconnectReason::TransportClose]
        );
    }

    #[tokio::test]
    async fn a_connection_dropped_without_a_close_frame_is_a_transport_error() {
        let engine = engine(Duration::ZERO);
        let (session, mut client) = open(&engine).await;
        let task = tokio::spawn(session.run());
        skip_open(&mut client).await;
        drop(client);
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            *engine.handler.disconnects.lock().unwrap(),
            [DisconnectReason::TransportError]
        );
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_session() {
        let engine = engine(Duration::ZERO);
        let (session, client) = open(&engine).await;
        let task = tokio::spawn(session.run());
        let mut raw = client.into_inner();
        // An unmasked frame: a client must mask.
        tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x81, 0x01, b'4'])
            .await
            .unwrap();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        tokio::task::yield_now().await;
        assert_eq!(
            *engine.handler.disconnects.lock().unwrap(),
            [DisconnectReason::TransportError]
        );
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn the_session_waits_for_the_lock_of_a_polling_request() {
        let engine = engine(Duration::ZERO);
        let (session, mut client) = open(&engine).await;
        let socket = session.socket.clone();
        let polling = socket.internal_rx.lock().await;
        let task = tokio::spawn(session.run());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "the session should wait for the lock");

        drop(polling);
        socket.emit("hello").unwrap();
        skip_open(&mut client).await;
        assert_eq!(next(&mut client).await, Message::text("4hello"));
    }

    #[tokio::test]
    async fn a_session_waiting_for_the_lock_stops_when_the_session_ends() {
        let engine = engine(Duration::ZERO);
        let (session, _client) = open(&engine).await;
        let socket = session.socket.clone();
        let _polling = socket.internal_rx.lock().await;
        let task = tokio::spawn(session.run());
        tokio::time::sleep(Duration::from_millis(20)).await;
        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("the session should stop")
            .unwrap();
    }

    #[tokio::test]
    async fn a_broadcast_frame_and_direct_packets_go_out_in_queue_order() {
        let engine = engine(Duration::ZERO);
        let (session, mut client) = open(&engine).await;
        let socket = session.socket.clone();
        tokio::spawn(session.run());
        skip_open(&mut client).await;
        let shared = crate::MessageFrame::new("[\"chat:new\",1]");
        socket.emit("a").unwrap();
        socket.emit_frame(&shared).unwrap();
        socket.emit_binary(vec![1u8, 2]).unwrap();
        socket.emit_frame(&shared).unwrap();
        assert_eq!(next(&mut client).await, Message::text("4a"));
        assert_eq!(next(&mut client).await, Message::text("4[\"chat:new\",1]"));
        assert_eq!(next(&mut client).await, Message::binary(vec![1u8, 2]));
        assert_eq!(next(&mut client).await, Message::text("4[\"chat:new\",1]"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_socket_is_written_at_most_once_per_coalescing_interval() {
        let interval = Duration::from_millis(50);
        let engine = engine(interval);
        let (session, mut client) = open(&engine).await;
        let socket = session.socket.clone();
        tokio::spawn(session.run());
        skip_open(&mut client).await;
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
            socket.emit(i.to_string()).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(interval * 3).await;
        let quiet = tokio::time::Instant::now();
        socket.emit("quiet").unwrap();

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
    async fn a_session_holding_its_writes_sends_what_is_queued_and_stops_when_the_session_ends() {
        let engine = engine(Duration::from_secs(3600));
        let (session, mut client) = open(&engine).await;
        let socket = session.socket.clone();
        let task = tokio::spawn(session.run());
        skip_open(&mut client).await;
        socket.emit("a").unwrap();
        assert_eq!(next(&mut client).await, Message::text("4a"));
        socket.emit("b").unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;

        socket.close(DisconnectReason::ClosingServer);
        // What was queued still goes out, at once, then the close packet and frame.
        assert_eq!(next(&mut client).await, Message::text("4b"));
        assert_eq!(next(&mut client).await, Message::text("1"));
        assert!(matches!(next(&mut client).await, Message::Close(None)));
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("the session should stop without waiting out the interval")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_cannot_keep_an_ended_session_alive() {
        let engine = engine(Duration::ZERO);
        let (server, client) = tokio::io::duplex(256);
        let session = ws::start_session(
            engine.clone(),
            server,
            ProtocolVersion::V4,
            None,
            Request::<()>::default().into_parts().0,
        )
        .await
        .unwrap();
        let socket = session.socket.clone();
        let task = tokio::spawn(session.run());
        // More than the pipe holds, never read.
        for _ in 0..20 {
            socket.emit("x".repeat(100)).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        socket.close(DisconnectReason::ClosingServer);
        tokio::time::timeout(CLOSING_GRACE * 2, task)
            .await
            .expect("the session should give up after the closing grace")
            .unwrap();
        drop(client);
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_fills_the_bounded_queue_and_nothing_more_is_buffered() {
        let engine = engine(Duration::ZERO);
        let (server, client) = tokio::io::duplex(256);
        let session = ws::start_session(
            engine.clone(),
            server,
            ProtocolVersion::V4,
            None,
            Request::<()>::default().into_parts().0,
        )
        .await
        .unwrap();
        let socket = session.socket.clone();
        let task = tokio::spawn(session.run());
        // The pipe holds 256 bytes and is never read: after the first batch, every emit waits
        // in the queue, and once the queue is full emits are refused.
        let mut refused = 0;
        for _ in 0..(engine.config.max_buffer_size * 4) {
            if socket.emit("x".repeat(100)).is_err() {
                refused += 1;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            refused >= engine.config.max_buffer_size * 2,
            "only {refused} emits refused: the session kept taking from the queue"
        );
        socket.close(DisconnectReason::ClosingServer);
        tokio::time::timeout(CLOSING_GRACE * 2, task)
            .await
            .expect("the session should give up after the closing grace")
            .unwrap();
        drop(client);
    }

    #[tokio::test]
    async fn a_session_upgraded_from_polling_forwards_pongs_to_its_heartbeat_task() {
        let engine = engine(Duration::ZERO);
        let socket = engine.create_session(
            ProtocolVersion::V4,
            TransportType::Polling,
            Request::<()>::default().into_parts().0,
            true,
        );
        let (server, client) = tokio::io::duplex(64 * 1024);
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let upgrade = tokio::spawn(ws::start_session(
            engine.clone(),
            server,
            ProtocolVersion::V4,
            Some(socket.id),
            Request::<()>::default().into_parts().0,
        ));
        client.send(Message::text("2probe")).await.unwrap();
        assert_eq!(next(&mut client).await, Message::text("3probe"));
        // The upgrade packet and a message in one write: the message is not lost.
        client.feed(Message::text("5")).await.unwrap();
        client.feed(Message::text("4after upgrade")).await.unwrap();
        client.flush().await.unwrap();
        let session = upgrade.await.unwrap().unwrap();
        assert!(
            session.heartbeat.is_none(),
            "the polling heartbeat task goes on"
        );
        tokio::spawn(session.run());
        client.send(Message::text("3")).await.unwrap();
        socket.emit("over ws").unwrap();
        // The Noop sent to end a pending polling request is not written to the websocket.
        assert_eq!(next(&mut client).await, Message::text("4over ws"));
        assert_eq!(*engine.handler.messages.lock().unwrap(), ["after upgrade"]);
        let pongs = socket
            .heartbeat_rx
            .as_ref()
            .unwrap()
            .lock()
            .await
            .try_recv();
        assert_eq!(
            pongs,
            Ok(()),
            "the pong reached the heartbeat task's channel"
        );
    }

    /// A socket that counts the reads made on it.
    struct CountingIo {
        inner: DuplexStream,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn packets_queued_for_the_socket_do_not_make_the_session_read_it() {
        let engine = engine(Duration::ZERO);
        let (server, client) = tokio::io::duplex(64 * 1024);
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let io = CountingIo {
            inner: server,
            reads: reads.clone(),
        };
        let session = ws::start_session(
            engine.clone(),
            io,
            ProtocolVersion::V4,
            None,
            Request::<()>::default().into_parts().0,
        )
        .await
        .unwrap();
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let socket = session.socket.clone();
        tokio::spawn(session.run());
        skip_open(&mut client).await;
        let before = reads.load(Ordering::Relaxed);
        for i in 0..100 {
            socket.emit(i.to_string()).unwrap();
            assert_eq!(next(&mut client).await, Message::text(format!("4{i}")));
        }
        let reads_for_writes = reads.load(Ordering::Relaxed) - before;
        assert!(
            reads_for_writes <= 2,
            "{reads_for_writes} reads for 100 writes"
        );
        // Reading still works.
        client.send(Message::text("4up")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*engine.handler.messages.lock().unwrap(), ["up"]);
    }

    #[tokio::test]
    async fn a_session_future_is_small() {
        let engine = engine(Duration::ZERO);
        let (session, _client) = open(&engine).await;
        let size = std::mem::size_of_val(&session.run());
        // One future for the connection's life (upstream: 312 + 1,160 + 448 bytes in three).
        assert!(size <= 1024, "{size} bytes");
    }

    #[test]
    fn the_coalescer_holds_writes_only_when_more_packets_are_expected() {
        let start = Instant::now();
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

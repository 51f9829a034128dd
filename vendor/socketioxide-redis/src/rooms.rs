//! live-realtime fork: per-room pub/sub channels.
//!
//! Upstream publishes every request of a namespace on one channel, so every server receives and
//! decodes every broadcast, whether or not it has a member of the room. With [`RoomChannels`]
//! configured, a broadcast (and a room's `leave`/`join`/`disconnect`) addressed to exactly one
//! routed room is published on a channel of that room's own, `{prefix}-room#{ns}#{room}#`, and a
//! server is subscribed to that channel exactly while it has local members (socket.io's sharded
//! adapter calls this the "dynamic" subscription mode).
//!
//! Socket-level `join`/`leave` in socketioxide are local operations the adapter never sees, so
//! the application tells [`RoomSubscriptions`] about them: [`RoomSubscriptions::joined`] after a
//! local socket joined (it resolves once this server receives the room's channel), and
//! [`RoomSubscriptions::left`] after one left. Leaves are lazy: the server stays subscribed for
//! [`RoomChannels::linger`] and then unsubscribes only if the room has no local member left, so
//! join/leave churn does not thrash subscriptions, and a missed `left` call costs a subscription,
//! never a message.
//!
//! Guarantees:
//! - Once `joined(room)` resolved without error, this server receives every later request
//!   published on the room's channel for as long as the room has a local member (modulo the
//!   driver losing its connection: pub/sub is at-most-once).
//! - Calls for one channel are serialized: a `joined` that arrives while the subscription is
//!   being made, or while a linger check is unsubscribing, waits for it and then subscribes again
//!   if needed. A member already joined never sees the channel unsubscribed under it: the linger
//!   check marks the channel closing before it looks for local members, under the same lock the
//!   `joined` fast path reads.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;

use crate::drivers::Driver;

/// Which rooms get a pub/sub channel of their own.
#[derive(Clone, Copy)]
pub struct RoomChannels {
    /// A room for which this returns `true` is routed on its own channel. Keep it to rooms that
    /// carry traffic (a per-socket room would cost one subscription per socket).
    pub filter: fn(&str) -> bool,
    /// How long a server stays subscribed after what may have been the last local member left.
    pub linger: Duration,
}

impl fmt::Debug for RoomChannels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomChannels")
            .field("linger", &self.linger)
            .finish_non_exhaustive()
    }
}

/// What the subscriptions need from the adapter of a namespace.
pub(crate) trait RoomHost: Send + Sync + 'static {
    /// Whether a local socket is in `room`.
    fn has_local_members(&self, room: &str) -> bool;
    /// Handles one message received on a room channel.
    fn recv_room_item(self: Arc<Self>, item: Vec<u8>);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not subscribed (new, or a subscription failed).
    Idle,
    Subscribed,
    /// A linger check is deciding whether to unsubscribe; `joined` must wait for it.
    Closing,
    /// Unsubscribed and removed from the table; whoever still holds it looks again.
    Retired,
}

/// One room channel.
struct Slot {
    ns: String,
    room: String,
    chan: String,
    /// Read by the `joined` fast path; a `std` mutex (not an atomic) so the linger check's
    /// "closing" mark and its look at local members are ordered against a concurrent join.
    phase: Mutex<Phase>,
    /// Serializes the driver calls (subscribe, unsubscribe) for this channel. In an `Arc` so a
    /// subscription can own it in a task of its own (see [`RoomSubscriptions::joined`]).
    ops: Arc<tokio::sync::Mutex<()>>,
    /// A linger check is scheduled; later leaves need not schedule another.
    check_pending: AtomicBool,
}

struct Inner<R> {
    driver: R,
    prefix: String,
    stream_buffer: usize,
    channels: Option<RoomChannels>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    hosts: RwLock<HashMap<String, Weak<dyn RoomHost>>>,
}

/// The per-room subscriptions of every namespace of a server. Cloning shares them.
pub struct RoomSubscriptions<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for RoomSubscriptions<R> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R> fmt::Debug for RoomSubscriptions<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomSubscriptions")
            .field("channels", &self.inner.channels)
            .field("subscribed", &lock(&self.inner.slots).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: Driver> RoomSubscriptions<R> {
    pub(crate) fn new(
        driver: R,
        prefix: &str,
        stream_buffer: usize,
        channels: Option<RoomChannels>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                driver,
                prefix: prefix.to_owned(),
                stream_buffer,
                channels,
                slots: Mutex::default(),
                hosts: RwLock::default(),
            }),
        }
    }

    /// The channel of `room` in namespace `ns`, when the room is routed on its own.
    pub fn channel(&self, ns: &str, room: &str) -> Option<String> {
        let channels = self.inner.channels.as_ref()?;
        (channels.filter)(room).then(|| format!("{}-room#{ns}#{room}#", self.inner.prefix))
    }

    pub(crate) fn register(&self, ns: &str, host: Weak<dyn RoomHost>) {
        self.inner
            .hosts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ns.to_owned(), host);
    }

    fn host(&self, ns: &str) -> Option<Arc<dyn RoomHost>> {
        self.inner
            .hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
            .and_then(Weak::upgrade)
    }

    /// Call after a local socket joined `room`: subscribes to the room's channel unless this
    /// server already is, and resolves once it is. Nothing to do for a room that is not routed.
    ///
    /// An error means the driver refused the subscription; the caller decides whether the join
    /// stands (its local members still get local broadcasts).
    ///
    /// Cancellation-safe: the subscription runs in a task of its own, so a caller that stops
    /// waiting (a timeout) does not leave the channel half subscribed.
    pub async fn joined(&self, ns: &str, room: &str) -> Result<(), R::Error> {
        let Some(chan) = self.channel(ns, room) else {
            return Ok(());
        };
        loop {
            let slot = Arc::clone(lock(&self.inner.slots).entry(chan.clone()).or_insert_with(
                || {
                    Arc::new(Slot {
                        ns: ns.to_owned(),
                        room: room.to_owned(),
                        chan: chan.clone(),
                        phase: Mutex::new(Phase::Idle),
                        ops: Arc::default(),
                        check_pending: AtomicBool::new(false),
                    })
                },
            ));
            if *lock(&slot.phase) == Phase::Subscribed {
                return Ok(());
            }
            let ops = Arc::clone(&slot.ops).lock_owned().await;
            match *lock(&slot.phase) {
                Phase::Subscribed => return Ok(()),
                Phase::Retired => continue,
                Phase::Idle | Phase::Closing => {}
            }
            let subs = self.clone();
            let subscribing = tokio::spawn(async move {
                let _ops = ops;
                subs.subscribe(&slot).await
            });
            return match subscribing.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The runtime is shutting down.
                Err(_) => Ok(()),
            };
        }
    }

    /// Subscribes `slot`'s channel; called with its `ops` lock held.
    async fn subscribe(&self, slot: &Arc<Slot>) -> Result<(), R::Error> {
        let mut stream = match self
            .inner
            .driver
            .subscribe(slot.chan.clone(), self.inner.stream_buffer)
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                *lock(&slot.phase) = Phase::Idle;
                return Err(e);
            }
        };
        let host = self.host(&slot.ns).map(|h| Arc::downgrade(&h));
        let subs = self.clone();
        let ns = slot.ns.clone();
        tokio::spawn(async move {
            let mut host = host;
            // Ends when the driver drops the channel's sender, on unsubscribe.
            while let Some((_, item)) = stream.next().await {
                let strong = match host.as_ref().and_then(Weak::upgrade) {
                    Some(h) => Some(h),
                    // Subscribed before the namespace registered (possible only at startup).
                    None => subs.host(&ns).inspect(|h| host = Some(Arc::downgrade(h))),
                };
                if let Some(h) = strong {
                    h.recv_room_item(item);
                }
            }
        });
        *lock(&slot.phase) = Phase::Subscribed;
        Ok(())
    }

    /// Call after a local socket left `room` (or was removed from it): after the linger, the
    /// server unsubscribes from the room's channel if the room has no local member left.
    pub fn left(&self, ns: &str, room: &str) {
        let Some(linger) = self.inner.channels.map(|c| c.linger) else {
            return;
        };
        let Some(chan) = self.channel(ns, room) else {
            return;
        };
        let Some(slot) = lock(&self.inner.slots).get(&chan).cloned() else {
            return;
        };
        self.schedule_check(slot, linger);
    }

    fn schedule_check(&self, slot: Arc<Slot>, linger: Duration) {
        if slot.check_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let subs = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            slot.check_pending.store(false, Ordering::Release);
            subs.check(&slot).await;
        });
    }

    /// Unsubscribes `slot`'s channel when its room has no local member.
    async fn check(&self, slot: &Arc<Slot>) {
        let _ops = slot.ops.lock().await;
        let was = {
            let mut phase = lock(&slot.phase);
            let was = *phase;
            if !matches!(was, Phase::Subscribed | Phase::Idle) {
                return;
            }
            // From here on a joining socket waits for this check (see the module docs).
            *phase = Phase::Closing;
            was
        };
        let occupied = self
            .host(&slot.ns)
            .is_some_and(|h| h.has_local_members(&slot.room));
        if occupied {
            *lock(&slot.phase) = was;
            if was == Phase::Idle
                && let Err(e) = self.subscribe(slot).await
            {
                tracing::debug!(chan = slot.chan, "room subscribe failed again: {e}");
            }
            return;
        }
        if was == Phase::Subscribed
            && let Err(e) = self.inner.driver.unsubscribe(slot.chan.clone()).await
        {
            // The driver forgets the channel either way; a late message finds no handler.
            tracing::debug!(chan = slot.chan, "room unsubscribe failed: {e}");
        }
        let mut slots = lock(&self.inner.slots);
        *lock(&slot.phase) = Phase::Retired;
        slots.remove(&slot.chan);
    }

    /// Schedules a linger check of every subscribed room channel: a safety net for leaves the
    /// application did not report. Run it now and then (each check looks at the room's local
    /// members once).
    pub fn sweep(&self) {
        let Some(linger) = self.inner.channels.map(|c| c.linger) else {
            return;
        };
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).values().cloned().collect();
        for slot in slots {
            self.schedule_check(slot, linger);
        }
    }

    /// Whether this server is subscribed to the channel of `room`.
    pub fn is_subscribed(&self, ns: &str, room: &str) -> bool {
        let Some(chan) = self.channel(ns, room) else {
            return false;
        };
        lock(&self.inner.slots)
            .get(&chan)
            .is_some_and(|s| *lock(&s.phase) == Phase::Subscribed)
    }

    /// How many room channels this server is subscribed to (or deciding about).
    pub fn len(&self) -> usize {
        lock(&self.inner.slots).len()
    }

    /// Whether no room channel is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    //! The routing and the subscription lifecycle, against a scripted driver and a real adapter
    //! with local sockets.

    use std::{
        collections::HashMap,
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
        time::Duration,
    };

    use futures_core::{FusedStream, Stream};
    use serde::{Deserialize, Serialize};
    use socketioxide_core::{
        Sid, Str, Uid, Value,
        adapter::{
            BroadcastFlags, BroadcastIter, BroadcastOptions, CoreAdapter, CoreLocalAdapter,
            RemoteSocketData, Room, SocketEmitter,
            errors::SocketError,
            remote_packet::{RequestOut, RequestTypeOut},
        },
        packet::Packet,
        parser::Parse,
    };
    use socketioxide_parser_common::CommonParser;
    use tokio::sync::{Semaphore, mpsc};

    use super::*;
    use crate::{
        CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr,
        drivers::{ChanItem, MessageStream},
        read_origin,
    };

    const NS: &str = "/live";
    const LINGER: Duration = Duration::from_secs(3);

    /// Records every driver call; subscriptions wait for a permit when gated.
    #[derive(Clone, Default)]
    struct Script {
        calls: Arc<Mutex<Vec<String>>>,
        published: Arc<Mutex<Vec<ChanItem>>>,
        senders: Arc<Mutex<HashMap<String, mpsc::Sender<ChanItem>>>>,
        gate: Option<Arc<Semaphore>>,
        /// Publishes never complete (a Redis that stopped answering).
        hang_publish: bool,
    }

    impl Script {
        fn gated() -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            let s = Self {
                gate: Some(Arc::clone(&gate)),
                ..Self::default()
            };
            (s, gate)
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn published_on(&self) -> Vec<String> {
            self.published
                .lock()
                .unwrap()
                .iter()
                .map(|(c, _)| c.clone())
                .collect()
        }
        /// Delivers `data` as if Redis pushed it on `chan`.
        async fn push(&self, chan: &str, data: Vec<u8>) {
            let tx = self.senders.lock().unwrap().get(chan).cloned();
            tx.expect("subscribed")
                .send((chan.to_owned(), data))
                .await
                .unwrap();
        }
    }

    impl Driver for Script {
        type Error = std::io::Error;

        async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
            self.published.lock().unwrap().push((chan, val));
            if self.hang_publish {
                std::future::pending::<()>().await;
            }
            Ok(())
        }
        async fn subscribe(
            &self,
            chan: String,
            size: usize,
        ) -> Result<MessageStream<ChanItem>, Self::Error> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.calls.lock().unwrap().push(format!("sub {chan}"));
            let (tx, rx) = mpsc::channel(size);
            self.senders.lock().unwrap().insert(chan, tx);
            Ok(MessageStream::new(rx))
        }
        async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
            self.calls.lock().unwrap().push(format!("unsub {chan}"));
            self.senders.lock().unwrap().remove(&chan);
            Ok(())
        }
        async fn num_serv(&self, _: &str) -> Result<u16, Self::Error> {
            Ok(2)
        }
    }

    /// Counts what reaches the local sockets.
    #[derive(Clone)]
    struct Emitter {
        path: Str,
        uid: Uid,
        delivered: Arc<Mutex<Vec<Sid>>>,
    }
    struct NoAcks;
    impl Stream for NoAcks {
        type Item = (Sid, Result<Value, AckError>);
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(None)
        }
    }
    impl FusedStream for NoAcks {
        fn is_terminated(&self) -> bool {
            true
        }
    }
    #[derive(Debug, Serialize, Deserialize)]
    struct AckError;
    impl fmt::Display for AckError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("ack error")
        }
    }
    impl std::error::Error for AckError {}
    impl SocketEmitter for Emitter {
        type AckError = AckError;
        type AckStream = NoAcks;
        fn get_all_sids(&self, _: impl Fn(&Sid) -> bool) -> Vec<Sid> {
            vec![]
        }
        fn get_remote_sockets(&self, _: BroadcastIter<'_>) -> Vec<RemoteSocketData> {
            vec![]
        }
        fn send_many(&self, sids: BroadcastIter<'_>, _: Value) -> Result<(), Vec<SocketError>> {
            self.delivered.lock().unwrap().extend(sids);
            Ok(())
        }
        fn send_many_volatile(&self, _: BroadcastIter<'_>, _: Value) {}
        fn send_many_with_ack(
            &self,
            _: BroadcastIter<'_>,
            _: Packet,
            _: Option<Duration>,
        ) -> (Self::AckStream, u32) {
            (NoAcks, 0)
        }
        fn disconnect_many(&self, _: Vec<Sid>) -> Result<(), Vec<SocketError>> {
            Ok(())
        }
        fn path(&self) -> &Str {
            &self.path
        }
        fn parser(&self) -> impl Parse {
            CommonParser
        }
        fn server_id(&self) -> Uid {
            self.uid
        }
        fn ack_timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
    }

    type Adapter = CustomRedisAdapter<Emitter, Script>;

    struct Server {
        adapter: Arc<Adapter>,
        rooms: RoomSubscriptions<Script>,
        driver: Script,
        delivered: Arc<Mutex<Vec<Sid>>>,
    }

    fn channel_rooms(room: &str) -> bool {
        room.starts_with("channel:")
    }

    async fn server(driver: Script) -> Server {
        let config = RedisAdapterConfig::new()
            .with_prefix("p")
            .with_request_timeout(Duration::from_millis(100))
            .with_room_channels(RoomChannels {
                filter: channel_rooms,
                linger: LINGER,
            });
        let ctr = RedisAdapterCtr::new_with_driver(driver.clone(), config);
        let delivered = Arc::default();
        let emitter = Emitter {
            path: Str::from(NS),
            uid: Uid::new(),
            delivered: Arc::clone(&delivered),
        };
        let adapter = Arc::new(Adapter::new(&ctr, CoreLocalAdapter::new(emitter)));
        Arc::clone(&adapter)
            .init(|| {})
            .await
            .map_err(|_| "init")
            .unwrap();
        Server {
            adapter,
            rooms: ctr.room_subscriptions(),
            driver,
            delivered,
        }
    }

    fn room_opts(room: &'static str) -> BroadcastOptions {
        let mut opts = BroadcastOptions::default();
        opts.rooms.push(Room::Borrowed(room));
        opts
    }

    fn packet() -> Packet {
        Packet::event(Str::from(NS), Value::Str(Str::from("[\"chat:new\"]"), None))
    }

    const CHAN_A: &str = "p-room#/live#channel:a#";

    #[tokio::test]
    async fn a_broadcast_to_one_routed_room_goes_on_the_rooms_own_channel() {
        let s = server(Script::default()).await;
        s.adapter
            .broadcast(packet(), room_opts("channel:a"))
            .await
            .unwrap();
        // Not routed: another kind of room, several rooms, the whole namespace, a known server.
        s.adapter
            .broadcast(packet(), room_opts("user:1"))
            .await
            .unwrap();
        let mut two = room_opts("channel:a");
        two.rooms.push(Room::Borrowed("channel:b"));
        s.adapter.broadcast(packet(), two).await.unwrap();
        let mut all = BroadcastOptions::default();
        all.add_flag(BroadcastFlags::Broadcast);
        s.adapter.broadcast(packet(), all).await.unwrap();
        let mut targeted = room_opts("channel:a");
        targeted.server_id = Some(Uid::new());
        s.adapter.broadcast(packet(), targeted).await.unwrap();
        let on = s.driver.published_on();
        assert_eq!(on[0], CHAN_A);
        assert_eq!(&on[1..4], ["p-request#/live#"; 3]);
        assert!(on[4].starts_with("p-request#/live#") && on[4].len() > 16);
    }

    #[tokio::test]
    async fn local_members_get_a_broadcast_before_it_is_published() {
        let s = server(Script {
            hang_publish: true,
            ..Script::default()
        })
        .await;
        let a = Sid::new();
        s.adapter.get_local().add_all(a, "channel:a");
        let sent = tokio::time::timeout(
            Duration::from_millis(50),
            s.adapter.broadcast(packet(), room_opts("channel:a")),
        )
        .await;
        assert!(sent.is_err(), "the publish hangs");
        assert_eq!(*s.delivered.lock().unwrap(), [a]);
        assert_eq!(s.driver.published_on(), [CHAN_A]);
    }

    #[tokio::test]
    async fn a_rooms_leave_and_disconnect_follow_its_broadcasts_on_its_channel() {
        let s = server(Script::default()).await;
        s.adapter
            .broadcast(packet(), room_opts("channel:a"))
            .await
            .unwrap();
        s.adapter
            .del_sockets(room_opts("channel:a"), "channel:a")
            .await
            .unwrap();
        s.adapter
            .disconnect_socket(room_opts("channel:a"))
            .await
            .unwrap();
        // Requests that count their responders stay on the namespace channel.
        let _ = s.adapter.rooms(room_opts("channel:a")).await;
        let on = s.driver.published_on();
        assert_eq!(on[..3], [CHAN_A; 3]);
        assert_eq!(on[3], "p-request#/live#");
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_subscribes_once_and_unsubscribes_a_linger_after_its_last_member_left() {
        let s = server(Script::default()).await;
        let (a, b) = (Sid::new(), Sid::new());
        s.adapter.get_local().add_all(a, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        s.adapter.get_local().add_all(b, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        assert!(s.rooms.is_subscribed(NS, "channel:a"));

        s.adapter.get_local().del(a, "channel:a");
        s.rooms.left(NS, "channel:a");
        tokio::time::sleep(LINGER * 2).await;
        assert!(s.rooms.is_subscribed(NS, "channel:a"), "b is still there");

        s.adapter.get_local().del(b, "channel:a");
        s.rooms.left(NS, "channel:a");
        tokio::time::sleep(LINGER / 2).await;
        assert!(s.rooms.is_subscribed(NS, "channel:a"), "lingering");
        tokio::time::sleep(LINGER).await;
        assert!(!s.rooms.is_subscribed(NS, "channel:a"));
        assert!(s.rooms.is_empty());
        let room_calls: Vec<_> = s
            .driver
            .calls()
            .into_iter()
            .filter(|c| c.contains("room#"))
            .collect();
        assert_eq!(
            room_calls,
            [format!("sub {CHAN_A}"), format!("unsub {CHAN_A}")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_joining_within_the_linger_keeps_the_subscription() {
        let s = server(Script::default()).await;
        let (a, b) = (Sid::new(), Sid::new());
        s.adapter.get_local().add_all(a, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        s.adapter.get_local().del(a, "channel:a");
        s.rooms.left(NS, "channel:a");
        tokio::time::sleep(LINGER / 2).await;
        s.adapter.get_local().add_all(b, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        tokio::time::sleep(LINGER * 2).await;
        assert!(s.rooms.is_subscribed(NS, "channel:a"));
        assert_eq!(
            s.driver
                .calls()
                .iter()
                .filter(|c| c.contains("room#"))
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn a_join_while_the_subscription_is_in_flight_waits_for_it() {
        let (driver, gate) = Script::gated();
        gate.add_permits(3); // the namespace's own three channels
        let s = server(driver).await;
        let first = tokio::spawn({
            let rooms = s.rooms.clone();
            async move { rooms.joined(NS, "channel:a").await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let rooms = s.rooms.clone();
            async move { rooms.joined(NS, "channel:a").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first.is_finished() && !second.is_finished());
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert!(s.rooms.is_subscribed(NS, "channel:a"));
        let subs = s
            .driver
            .calls()
            .iter()
            .filter(|c| c.contains("room#"))
            .count();
        assert_eq!(subs, 1, "one subscription for both joins");
    }

    #[tokio::test]
    async fn a_join_that_stops_waiting_still_leaves_the_room_subscribed() {
        let (driver, gate) = Script::gated();
        gate.add_permits(3);
        let s = server(driver).await;
        let a = Sid::new();
        s.adapter.get_local().add_all(a, "channel:a");
        let waited =
            tokio::time::timeout(Duration::from_millis(20), s.rooms.joined(NS, "channel:a")).await;
        assert!(waited.is_err(), "the subscription is held at the gate");
        gate.add_permits(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(s.rooms.is_subscribed(NS, "channel:a"));
        s.driver.push(CHAN_A, remote_broadcast("channel:a")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*s.delivered.lock().unwrap(), [a]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_racing_the_linger_check_ends_subscribed_after_the_unsubscribe() {
        let s = server(Script::default()).await;
        let a = Sid::new();
        s.adapter.get_local().add_all(a, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        s.adapter.get_local().del(a, "channel:a");
        s.rooms.left(NS, "channel:a");
        // Both wake at the same instant; whichever runs first, the room ends subscribed and
        // the driver saw the calls in a valid order.
        let rooms = s.rooms.clone();
        let adapter = Arc::clone(&s.adapter);
        let join = tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            adapter.get_local().add_all(Sid::new(), "channel:a");
            rooms.joined(NS, "channel:a").await
        });
        join.await.unwrap().unwrap();
        tokio::time::sleep(LINGER * 2).await;
        assert!(s.rooms.is_subscribed(NS, "channel:a"));
        let calls: Vec<_> = s
            .driver
            .calls()
            .into_iter()
            .filter(|c| c.contains("room#"))
            .collect();
        assert!(
            calls == [format!("sub {CHAN_A}")]
                || calls
                    == [
                        format!("sub {CHAN_A}"),
                        format!("unsub {CHAN_A}"),
                        format!("sub {CHAN_A}")
                    ],
            "{calls:?}"
        );
    }

    fn remote_broadcast(room: &'static str) -> Vec<u8> {
        let opts = room_opts(room);
        let p = packet();
        rmp_serde::to_vec(&RequestOut::new(
            Uid::new(),
            RequestTypeOut::Broadcast(&p),
            &opts,
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn requests_on_a_room_channel_reach_its_local_members_and_own_ones_are_skipped() {
        let s = server(Script::default()).await;
        let a = Sid::new();
        s.adapter.get_local().add_all(a, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        s.driver.push(CHAN_A, remote_broadcast("channel:a")).await;
        let own = {
            let opts = room_opts("channel:a");
            let p = packet();
            rmp_serde::to_vec(&RequestOut::new(
                s.adapter.uid,
                RequestTypeOut::Broadcast(&p),
                &opts,
            ))
            .unwrap()
        };
        assert_eq!(read_origin(&own), Some(s.adapter.uid));
        s.driver.push(CHAN_A, own).await;
        s.driver.push(CHAN_A, remote_broadcast("channel:a")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*s.delivered.lock().unwrap(), [a, a]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_leave_of_the_whole_room_lets_the_subscription_linger_out() {
        let s = server(Script::default()).await;
        s.adapter.get_local().add_all(Sid::new(), "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        let end = {
            let opts = room_opts("channel:a");
            let rooms = vec![Room::Borrowed("channel:a")];
            rmp_serde::to_vec(&RequestOut::new(
                Uid::new(),
                RequestTypeOut::DelSockets(&rooms),
                &opts,
            ))
            .unwrap()
        };
        s.driver.push(CHAN_A, end).await;
        tokio::time::sleep(LINGER * 2).await;
        assert!(!s.rooms.is_subscribed(NS, "channel:a"));
        assert!(s.driver.calls().contains(&format!("unsub {CHAN_A}")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_unsubscribes_rooms_whose_leaves_were_never_reported() {
        let s = server(Script::default()).await;
        let a = Sid::new();
        s.adapter.get_local().add_all(a, "channel:a");
        s.rooms.joined(NS, "channel:a").await.unwrap();
        s.adapter.get_local().del_all(a);
        s.rooms.sweep();
        tokio::time::sleep(LINGER * 2).await;
        assert!(s.rooms.is_empty());
    }

    #[test]
    fn only_filtered_rooms_have_a_channel() {
        let subs = RoomSubscriptions::new(
            Script::default(),
            "p",
            8,
            Some(RoomChannels {
                filter: channel_rooms,
                linger: LINGER,
            }),
        );
        assert_eq!(subs.channel(NS, "channel:a").as_deref(), Some(CHAN_A));
        assert_eq!(subs.channel(NS, "user:a"), None);
        let upstream = RoomSubscriptions::new(Script::default(), "p", 8, None);
        assert_eq!(upstream.channel(NS, "channel:a"), None);
    }
}

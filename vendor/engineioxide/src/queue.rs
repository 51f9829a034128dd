//! A bounded per-socket packet queue that holds no memory while it is empty (live-realtime fork).
//!
//! Upstream used a `tokio::sync::mpsc` channel per socket. Its storage is a linked list of
//! blocks of 32 slots that are allocated up front and kept for the channel's life, which cost an
//! idle socket about 10 KB (two blocks of 32 `PacketBuf`s). This queue is a `VecDeque` behind a
//! mutex: it grows with the backlog, and the writer frees the storage once an idle socket has
//! drained. It keeps the parts of the mpsc API the engine uses, with the same semantics: a
//! capacity shared by queued packets and outstanding permits, `Full`/`Closed` errors that hand
//! the value back, a receiver that sees `None` once it is closed and drained or the sender is
//! gone, and a sender that can wait for the receiver to close. It also holds the socket's one
//! volatile slot (latest wins), which had a `watch` channel of its own upstream.
//!
//! Each side is touched by one task at a time (the emitting handler, the socket's writer), so
//! the lock is uncontended and cheaper than the channel's atomics in practice.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use tokio::sync::{
    Notify,
    mpsc::error::{TryRecvError, TrySendError},
};

// `repr(C)` keeps the fields every send touches together at the front: a broadcast touches one
// queue per member, and a cold cache line per field would cost more than the lock.
#[repr(C)]
struct State<T> {
    items: VecDeque<T>,
    /// Slots promised to outstanding [`Permit`]s.
    reserved: usize,
    /// The receiver was closed or dropped: no more sends.
    rx_closed: bool,
    /// The sender was dropped: the receiver ends once it has drained.
    tx_dropped: bool,
    rx_waker: Option<Waker>,
    /// Senders waiting in [`Sender::send`] for room.
    space_waiters: usize,
    /// A value that bypasses the capacity and replaces any previous one not yet taken
    /// (engine.io "volatile" packets: latest wins, may be dropped).
    /// Boxed: it is rare, and inline it would push the hot fields apart.
    volatile: Option<Box<T>>,
    /// Woken when the queue closes, for a receiver that waits without taking values.
    closed_waker: Option<Waker>,
}

#[repr(C)]
struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Signalled when room is made while a sender waits.
    space: Notify,
    /// Signalled when the receiver closes.
    closed: Notify,
}

impl<T> State<T> {
    /// No more values will come: closed, or the sender is gone.
    fn ended(&self) -> bool {
        self.rx_closed || self.tx_dropped
    }
}

/// Stores `cx`'s waker in `slot` unless the one there already wakes the same task.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

/// Releases the lock, then wakes the receiver if it waits (outside the lock, so the woken task
/// never finds it held).
fn unlock_and_wake_receiver<T>(mut state: MutexGuard<'_, State<T>>) {
    let waker = state.rx_waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the queue inconsistent (every update is
        // a single push, pop or counter change), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close_rx(&self) {
        let mut state = self.lock();
        if state.rx_closed {
            return;
        }
        state.rx_closed = true;
        state.volatile = None;
        let wakers = [state.rx_waker.take(), state.closed_waker.take()];
        drop(state);
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
        self.closed.notify_waiters();
        self.space.notify_waiters();
    }
}

/// Creates a queue that holds at most `capacity` packets (at least one).
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            reserved: 0,
            rx_closed: false,
            tx_dropped: false,
            rx_waker: None,
            space_waiters: 0,
            volatile: None,
            closed_waker: None,
        }),
        capacity: capacity.max(1),
        space: Notify::new(),
        closed: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// What [`Receiver::poll_take_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Nothing was queued; the caller is registered for the next value.
    Nothing,
    /// Values were moved; `last` when the queue has ended and nothing more will come.
    Values { last: bool },
    /// The queue has ended and is drained.
    Ended,
}

/// What the receiver took: a queued value, or the volatile one.
pub(crate) enum Item<T> {
    Queued(T),
    Volatile(T),
}

impl<T> Item<T> {
    pub(crate) fn into_inner(self) -> T {
        match self {
            Item::Queued(value) | Item::Volatile(value) => value,
        }
    }
}

/// The sending half, owned by the socket.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// A reserved slot: [`Permit::send`] queues one value without failing.
pub(crate) struct Permit<'a, T> {
    shared: &'a Shared<T>,
}

impl<T> Sender<T> {
    /// Queues `value` at once, or hands it back when the queue is full or closed.
    pub(crate) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let mut state = self.0.lock();
        if state.rx_closed {
            return Err(TrySendError::Closed(value));
        }
        if state.items.len() + state.reserved >= self.0.capacity {
            return Err(TrySendError::Full(value));
        }
        state.items.push_back(value);
        unlock_and_wake_receiver(state);
        Ok(())
    }

    /// Queues `value`, waiting for room; hands it back when the queue closes.
    pub(crate) async fn send(&self, value: T) -> Result<(), T> {
        let mut value = value;
        loop {
            let notified = self.0.space.notified();
            tokio::pin!(notified);
            // Registered before trying, so room made in between is not missed.
            notified.as_mut().enable();
            self.0.lock().space_waiters += 1;
            let attempt = self.try_send(value);
            match attempt {
                Ok(()) => {
                    self.0.lock().space_waiters -= 1;
                    return Ok(());
                }
                Err(TrySendError::Closed(v)) => {
                    self.0.lock().space_waiters -= 1;
                    return Err(v);
                }
                Err(TrySendError::Full(v)) => {
                    value = v;
                    notified.await;
                    self.0.lock().space_waiters -= 1;
                }
            }
        }
    }

    /// Reserves one slot, or fails as [`Sender::try_send`] would.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut state = self.0.lock();
        if state.rx_closed {
            return Err(TrySendError::Closed(()));
        }
        if state.items.len() + state.reserved >= self.0.capacity {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit { shared: &self.0 })
    }

    /// Sets the volatile value, replacing one not yet taken; false when the queue is closed.
    pub(crate) fn send_volatile(&self, value: T) -> bool {
        let mut state = self.0.lock();
        if state.rx_closed {
            return false;
        }
        state.volatile = Some(Box::new(value));
        unlock_and_wake_receiver(state);
        true
    }

    /// Closes the queue from the sending side: sends are refused from now on, and the
    /// receiver sees the end once it has drained what is queued.
    pub(crate) fn close(&self) {
        self.0.close_rx();
    }

    /// True once the receiver has been closed or dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.lock().rx_closed
    }

    /// Completes once the receiver has been closed or dropped.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.0.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.tx_dropped = true;
        unlock_and_wake_receiver(state);
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.0.lock();
        f.debug_struct("Sender")
            .field("queued", &state.items.len())
            .field("reserved", &state.reserved)
            .field("capacity", &self.0.capacity)
            .field("closed", &state.rx_closed)
            .finish()
    }
}

impl<T> Permit<'_, T> {
    /// Queues `value` in the reserved slot.
    pub(crate) fn send(self, value: T) {
        let mut state = self.shared.lock();
        state.reserved -= 1;
        // A permit taken before the receiver closed may still deliver into the queue, as
        // with tokio's channel; the receiver drops it when it is dropped.
        state.items.push_back(value);
        unlock_and_wake_receiver(state);
        // `send` consumed the reservation; do not release it twice.
        std::mem::forget(self);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.reserved -= 1;
        let waiting = state.space_waiters > 0;
        drop(state);
        if waiting {
            self.shared.space.notify_waiters();
        }
    }
}

/// The receiving half, owned by the socket's writer (or the polling request in progress).
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// Takes the next value, or hands back the locked state when the queue is empty, so the
    /// caller can tell closed from empty and register a waker without a gap.
    fn pop(&self) -> Result<T, MutexGuard<'_, State<T>>> {
        let mut state = self.0.lock();
        let Some(value) = state.items.pop_front() else {
            return Err(state);
        };
        let waiting = state.space_waiters > 0;
        drop(state);
        if waiting {
            self.0.space.notify_waiters();
        }
        Ok(value)
    }

    /// With nothing to take: the end if the queue has ended, else `cx` registered to be woken.
    fn end_or_wait<R>(mut state: MutexGuard<'_, State<T>>, cx: &Context<'_>) -> Poll<Option<R>> {
        if state.ended() {
            return Poll::Ready(None);
        }
        register(&mut state.rx_waker, cx);
        Poll::Pending
    }

    /// Takes the next value, if one is queued, registering `cx` to be woken otherwise.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.pop() {
            Ok(value) => Poll::Ready(Some(value)),
            Err(state) => Self::end_or_wait(state, cx),
        }
    }

    /// Takes the next queued value, else the volatile one, registering `cx` to be woken
    /// otherwise; `None` once the queue is closed and drained.
    pub(crate) fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        let mut state = match self.pop() {
            Ok(value) => return Poll::Ready(Some(Item::Queued(value))),
            Err(state) => state,
        };
        if let Some(value) = state.volatile.take() {
            return Poll::Ready(Some(Item::Volatile(*value)));
        }
        Self::end_or_wait(state, cx)
    }

    /// Waits for the next queued or volatile value; `None` once closed and drained.
    #[cfg(test)]
    pub(crate) async fn next_item(&mut self) -> Option<Item<T>> {
        poll_fn(|cx| self.poll_next_item(cx)).await
    }

    /// Moves everything queued, then the volatile value, to the end of `into` with one lock.
    /// When `into` is empty its storage is swapped with the queue's, so the queue keeps it for
    /// the next values and a busy socket reuses two buffers without allocating. Unless the
    /// queue has ended, `cx` is registered to be woken by the next value, so the caller need not
    /// come back just to register.
    pub(crate) fn poll_take_all(&mut self, cx: &mut Context<'_>, into: &mut VecDeque<T>) -> Take {
        let mut state = self.0.lock();
        let ended = state.ended();
        if !ended {
            register(&mut state.rx_waker, cx);
        }
        if state.items.is_empty() && state.volatile.is_none() {
            return if ended { Take::Ended } else { Take::Nothing };
        }
        if into.is_empty() {
            std::mem::swap(&mut state.items, into);
        } else {
            into.extend(state.items.drain(..));
        }
        if let Some(value) = state.volatile.take() {
            into.push_back(*value);
        }
        let waiting = state.space_waiters > 0;
        drop(state);
        if waiting {
            self.0.space.notify_waiters();
        }
        Take::Values { last: ended }
    }

    /// Ready once the queue is closed (or the sender gone), without taking anything from it;
    /// otherwise `cx` is registered to be woken then, and not by new values.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock();
        if state.ended() {
            return Poll::Ready(());
        }
        // A writer holding its writes back must not be woken by every value queued meanwhile.
        state.rx_waker = None;
        register(&mut state.closed_waker, cx);
        Poll::Pending
    }

    /// Completes once the queue is closed, without taking anything from it.
    #[cfg(test)]
    pub(crate) async fn closed(&self) {
        poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Waits for the next value; `None` once the queue is closed and drained.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Takes the next value if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.pop() {
            Ok(value) => Ok(value),
            Err(state) if state.ended() => Err(TryRecvError::Disconnected),
            Err(_) => Err(TryRecvError::Empty),
        }
    }

    /// Reduces the queue's storage to `keep` slots if it is empty and holds more. The writer
    /// calls this after a write unless the socket is busy, so an idle socket holds little
    /// memory while a busy one does not pay an allocation per write.
    pub(crate) fn shrink_to(&mut self, keep: usize) {
        let mut state = self.0.lock();
        if state.items.is_empty() && state.items.capacity() > keep {
            state.items.shrink_to(keep);
        }
    }

    /// Refuses further sends; values already queued can still be received.
    pub(crate) fn close(&mut self) {
        self.0.close_rx();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.close_rx();
        // Release queued packets now rather than when the sender goes.
        let items = std::mem::take(&mut self.0.lock().items);
        drop(items);
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.0.lock();
        f.debug_struct("Receiver")
            .field("queued", &state.items.len())
            .field("closed", &state.rx_closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_empty_queue_holds_no_allocation_and_a_drained_one_gives_its_storage_back_on_request() {
        let (tx, mut rx) = channel::<u64>(1024);
        assert_eq!(tx.0.lock().items.capacity(), 0);
        for i in 0..500 {
            tx.try_send(i).unwrap();
        }
        assert!(tx.0.lock().items.capacity() >= 500);
        for i in 0..500 {
            assert_eq!(rx.try_recv().unwrap(), i);
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert!(tx.0.lock().items.capacity() >= 500, "kept until asked");
        rx.shrink_to(2);
        assert!(tx.0.lock().items.capacity() <= 2);
        rx.shrink_to(0);
        assert_eq!(tx.0.lock().items.capacity(), 0);
    }

    #[test]
    fn queued_values_and_permits_share_the_capacity() {
        let (tx, mut rx) = channel::<u8>(2);
        let permit = tx.try_reserve().unwrap();
        tx.try_send(1).unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        permit.send(3);
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(rx.try_recv().unwrap(), 3);
        // A dropped permit gives its slot back.
        drop(tx.try_reserve().unwrap());
        tx.try_send(4).unwrap();
        tx.try_send(5).unwrap();
        assert!(matches!(tx.try_send(6), Err(TrySendError::Full(6))));
    }

    #[test]
    fn a_closed_receiver_refuses_sends_but_still_drains() {
        let (tx, mut rx) = channel::<u8>(8);
        tx.try_send(1).unwrap();
        assert!(!tx.is_closed());
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_when_the_sender_is_dropped() {
        let (tx, mut rx) = channel::<u8>(8);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.try_send(7).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.try_send(8).unwrap();
        drop(tx);
        assert_eq!(reader.await.unwrap(), vec![7, 8]);
    }

    #[tokio::test]
    async fn send_waits_for_room_and_closed_waits_for_the_receiver() {
        let (tx, mut rx) = channel::<u8>(1);
        tx.try_send(1).unwrap();
        let tx = Arc::new(tx);
        let sender = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(2).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!sender.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        sender.await.unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(2));

        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.closed().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drop(rx);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tx.send(3).await, Err(3));
    }

    #[test]
    fn a_volatile_value_yields_to_queued_ones_and_only_the_latest_is_kept() {
        let (tx, mut rx) = channel::<u8>(1);
        tx.try_send(1).unwrap();
        assert!(tx.send_volatile(10));
        // Volatile values bypass the capacity.
        assert!(tx.send_volatile(11));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut next = || match rx.poll_next_item(&mut cx) {
            Poll::Ready(Some(Item::Queued(v))) => Some((false, v)),
            Poll::Ready(Some(Item::Volatile(v))) => Some((true, v)),
            Poll::Ready(None) => None,
            Poll::Pending => Some((false, 0)),
        };
        assert_eq!(next(), Some((false, 1)));
        assert_eq!(next(), Some((true, 11)));
        assert_eq!(next(), Some((false, 0)), "nothing left: pending");
        tx.close();
        assert!(!tx.send_volatile(12));
        assert_eq!(next(), None);
    }

    #[tokio::test]
    async fn closing_from_the_sender_wakes_a_waiting_receiver_after_it_drains() {
        let (tx, mut rx) = channel::<u8>(4);
        tx.try_send(1).unwrap();
        let tx = Arc::new(tx);
        let closer = {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                tx.close();
            })
        };
        assert_eq!(rx.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(1), rx.closed())
            .await
            .unwrap();
        assert!(rx.next_item().await.is_none());
        closer.await.unwrap();
    }
}

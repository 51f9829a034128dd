//! Connection draining: accepted connections that can be cut from outside, and the schedule that
//! cuts them in jittered batches over the drain window. The listener (`listener`) wraps every
//! public connection with [`Connections::wrap`].
//!
//! Why cut TCP connections rather than send Socket.IO disconnect packets: a client told "io server
//! disconnect" does not reconnect on its own, while one whose transport closes does, with its own
//! randomized backoff. Spreading the cuts over the window turns a pod's shutdown into a trickle of
//! reconnects onto the other pods instead of a thundering herd.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::state::lock;

/// Live connections, each with the token that cuts it.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, CancellationToken>>,
}

impl Connections {
    fn register(&self) -> (u64, CancellationToken) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        lock(&self.inner.live).insert(id, token.clone());
        (id, token)
    }

    fn remove(&self, id: u64) {
        lock(&self.inner.live).remove(&id);
    }

    /// Number of open TCP connections.
    pub fn len(&self) -> usize {
        lock(&self.inner.live).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tokens(&self) -> Vec<CancellationToken> {
        lock(&self.inner.live).values().cloned().collect()
    }

    /// Cuts every open connection in `batches` shuffled groups spread evenly over `window`, each
    /// batch at a random moment within its slot, then cuts whatever opened meanwhile.
    pub async fn drain(&self, window: Duration, batches: usize) {
        let mut tokens = self.tokens();
        tokens.shuffle(&mut rand::rng());
        let plan = schedule(tokens.len(), batches, window, &mut rand::rng());
        let started = tokio::time::Instant::now();
        let mut taken = 0;
        for (at, size) in plan {
            tokio::time::sleep_until(started + at).await;
            for t in &tokens[taken..taken + size] {
                t.cancel();
            }
            taken += size;
        }
        for t in self.tokens() {
            t.cancel();
        }
    }

    /// Resolves once every connection has closed.
    pub async fn closed(&self) {
        while !self.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// When each batch is cut and how many connections it holds: `batches` slots of equal length
/// over `window`, each batch at a uniformly random offset inside its slot. Pure, for testing.
pub fn schedule(
    connections: usize,
    batches: usize,
    window: Duration,
    rng: &mut impl rand::Rng,
) -> Vec<(Duration, usize)> {
    if connections == 0 {
        return Vec::new();
    }
    let batches = batches.clamp(1, connections);
    let slot = window / batches as u32;
    let base = connections / batches;
    let extra = connections % batches;
    (0..batches)
        .map(|i| {
            let jitter = if slot.is_zero() {
                Duration::ZERO
            } else {
                slot.mul_f64(rng.random::<f64>())
            };
            (slot * i as u32 + jitter, base + usize::from(i < extra))
        })
        .collect()
}

impl Connections {
    /// Registers an accepted connection, so the drain can cut it.
    pub fn wrap(&self, stream: TcpStream) -> DrainableStream {
        let (id, token) = self.register();
        DrainableStream {
            inner: stream,
            cut: Box::pin(token.cancelled_owned()),
            id,
            connections: self.clone(),
        }
    }
}

/// An accepted connection that reads as closed (EOF) once its token is cancelled.
pub struct DrainableStream {
    inner: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
    id: u64,
    connections: Connections,
}

impl std::fmt::Debug for DrainableStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainableStream")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for DrainableStream {
    fn drop(&mut self) {
        self.connections.remove(self.id);
    }
}

impl AsyncRead for DrainableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut.as_mut().poll(cx).is_ready() {
            // EOF: HTTP and WebSocket both treat it as the peer having gone.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for DrainableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_schedule_covers_every_connection_once_within_the_window() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let window = Duration::from_secs(20);
        let plan = schedule(1001, 10, window, &mut rng);
        assert_eq!(plan.len(), 10);
        assert_eq!(plan.iter().map(|(_, n)| n).sum::<usize>(), 1001);
        for (i, (at, _)) in plan.iter().enumerate() {
            assert!(*at >= window / 10 * i as u32 && *at < window / 10 * (i as u32 + 1));
        }
    }

    #[test]
    fn fewer_connections_than_batches_make_one_batch_each() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let plan = schedule(3, 10, Duration::from_secs(1), &mut rng);
        assert_eq!(plan.len(), 3);
        assert!(plan.iter().all(|(_, n)| *n == 1));
        assert!(schedule(0, 10, Duration::from_secs(1), &mut rng).is_empty());
    }

    #[tokio::test]
    async fn a_drained_connection_reads_eof_and_is_forgotten() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let conns = Connections::default();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = tcp.accept().await.unwrap();
        let mut server = conns.wrap(accepted);
        assert_eq!(conns.len(), 1);

        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        assert_eq!(server.read(&mut b).await.unwrap(), 1);

        conns.drain(Duration::from_millis(10), 1).await;
        assert_eq!(server.read(&mut b).await.unwrap(), 0, "EOF after the cut");
        drop(server);
        assert!(conns.is_empty());
    }
}

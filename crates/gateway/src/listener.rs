//! The gateway's two HTTP listeners: accept with connection caps, serve HTTP/1.1 with a
//! header-read timeout, shut down gracefully.
//!
//! `axum::serve` has no cap on connections and no timeout at all (hyper's header-read timeout
//! needs a timer it does not set), so one client could hold any number of connections that never
//! finish a request (slowloris). Here:
//! - At most `max_connections` TCP connections are open on a listener (WebSockets included, for
//!   their whole life); beyond that a new connection gets `503` and is closed.
//! - At most `max_per_source` of them come from one source (an IPv4 address or IPv6 /64,
//!   `client_ip`); beyond that `429` and closed. Trusted proxies are exempt: the gateway cannot
//!   see their clients until it reads a request, so behind them the per-source cap applies to
//!   Engine.IO sessions instead (`server`), with the client address from `X-Forwarded-For`.
//! - A request head must arrive completely within `header_read_timeout`, measured from the
//!   connection's start or from the end of its previous response: this also closes idle
//!   keep-alive connections.
//!
//! The caps are held by the connection's stream, so a connection upgraded to a WebSocket keeps
//! its place until the WebSocket closes.

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::client_ip::{PerSource, Slot, SourceKey, TrustedProxies};
use crate::drain::{Connections, DrainableStream};
use crate::logsample::LogSampler;
use crate::metrics::Metrics;

/// Largest request head (request line and headers); hyper answers `431` beyond it. Tokens in
/// the `Authorization` header are at most `limits.maxTokenBytes` (4 KiB by default).
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;

/// One listener's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `public` or `admin`: the listener's metric label.
    pub name: &'static str,
    pub max_connections: usize,
    /// Connections per source; 0: no per-source cap.
    pub max_per_source: u32,
    pub header_read_timeout: Duration,
    pub trusted: Arc<TrustedProxies>,
}

/// What a listener shares with the rest of the gateway.
#[derive(Debug, Clone)]
pub struct Shared {
    pub metrics: Metrics,
    pub logs: Arc<LogSampler>,
    /// Open connections per source (this listener's own count).
    pub per_source: PerSource,
    /// Registers connections for the drain on shutdown (public listener only).
    pub drain: Option<Connections>,
}

/// Serves `app` on `tcp` until `stop` is cancelled, then stops accepting, lets open requests
/// finish and returns once every connection task has ended (upgraded WebSockets are not tasks
/// of this loop: the drain cuts them).
pub async fn serve(
    tcp: TcpListener,
    app: Router,
    limits: Limits,
    shared: Shared,
    stop: CancellationToken,
) -> io::Result<()> {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let gauge = shared
        .metrics
        .open_connections
        .with_label_values(&[limits.name]);
    // Dropped on stop: every connection task watches it to start its graceful shutdown.
    let (signal_tx, signal_rx) = watch::channel(());
    // Each task holds a clone; `closed()` resolves when the last task is done.
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or a transient error: back off instead of spinning.
                if let Some(suppressed) = shared.logs.admit("accept_failed") {
                    tracing::warn!(listener = limits.name, error = %e, suppressed, "accept failed (sampled)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Chat is many small writes: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            refuse(stream, &limits, &shared, Refusal::Global);
            continue;
        };
        let slot = if limits.max_per_source == 0 || limits.trusted.contains(peer.ip()) {
            None
        } else {
            match shared
                .per_source
                .acquire(SourceKey::of(peer.ip()), limits.max_per_source)
            {
                Some(slot) => Some(slot),
                None => {
                    refuse(stream, &limits, &shared, Refusal::PerSource);
                    continue;
                }
            }
        };
        gauge.inc();
        let guards = Guards {
            _permit: permit,
            _slot: slot,
            gauge: gauge.clone(),
        };
        let io = match &shared.drain {
            Some(connections) => Stream::Drainable(connections.wrap(stream)),
            None => Stream::Plain(stream),
        };
        let io = Guarded {
            io,
            _guards: guards,
        };
        tokio::spawn(serve_connection(
            io,
            peer,
            app.clone(),
            limits.header_read_timeout,
            signal_rx.clone(),
            close_rx.clone(),
        ));
    }
    drop(signal_tx);
    drop(close_rx);
    drop(tcp);
    close_tx.closed().await;
    Ok(())
}

/// Serves one connection's requests (and its upgrade) until it closes or the server stops.
async fn serve_connection(
    io: Guarded,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    mut signal: watch::Receiver<()>,
    _close: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        // A `Router` is always ready, so it may be called without `poll_ready`.
        async move { tower::Service::call(&mut app, req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Timeouts, resets and malformed requests: the client's problem, per
                    // connection; counted nowhere finer than debug.
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = signal.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    Global,
    PerSource,
}

/// Answers a connection over a cap with a minimal HTTP response, best effort, and closes it.
fn refuse(stream: TcpStream, limits: &Limits, shared: &Shared, why: Refusal) {
    let (reason, response): (&'static str, &'static [u8]) = match why {
        Refusal::Global => (
            "global_limit",
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        Refusal::PerSource => (
            "per_ip_limit",
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    };
    shared
        .metrics
        .connections_refused
        .with_label_values(&[limits.name, reason])
        .inc();
    if let Some(suppressed) = shared.logs.admit("connection_refused") {
        tracing::info!(
            listener = limits.name,
            reason,
            suppressed,
            "connection refused by a cap (sampled)"
        );
    }
    // Never blocks: a full socket buffer means the client does not read, and it gets the close.
    let _ = stream.try_write(response);
}

/// The caps a connection holds for as long as its stream lives.
#[derive(Debug)]
struct Guards {
    _permit: OwnedSemaphorePermit,
    _slot: Option<Slot>,
    gauge: prometheus::IntGauge,
}

impl Drop for Guards {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Drainable(DrainableStream),
}

/// A connection's stream and the caps it holds.
#[derive(Debug)]
pub struct Guarded {
    io: Stream,
    _guards: Guards,
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            Stream::Plain($s) => $e,
            Stream::Drainable($s) => $e,
        }
    };
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Drainable(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, Shared, CancellationToken) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let metrics = Metrics::new();
        let shared = Shared {
            logs: Arc::new(LogSampler::new(metrics.clone())),
            metrics,
            per_source: PerSource::default(),
            drain: None,
        };
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = CancellationToken::new();
        tokio::spawn(serve(tcp, app, limits, shared.clone(), stop.clone()));
        (addr, shared, stop)
    }

    fn limits(max: usize, per_source: u32, timeout_ms: u64) -> Limits {
        Limits {
            name: "public",
            max_connections: max,
            max_per_source: per_source,
            header_read_timeout: Duration::from_millis(timeout_ms),
            trusted: Arc::default(),
        }
    }

    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_head_is_closed() {
        let (addr, _, stop) = start(limits(10, 0, 200)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = std::time::Instant::now();
        read_all(&mut s).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed by the timeout"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let (addr, _, stop) = start(limits(10, 0, 200)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let text = read_all(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed while idle"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_over_the_caps_are_answered_and_closed() {
        let (addr, shared, stop) = start(limits(3, 2, 5_000)).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(read_all(&mut c).await.starts_with("HTTP/1.1 429"));
        let refused = || {
            shared
                .metrics
                .connections_refused
                .with_label_values(&["public", "per_ip_limit"])
                .get()
        };
        assert_eq!(refused(), 1);
        drop(_a);
        // The slot comes back once the server sees the close.
        let mut ok = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if shared
                .per_source
                .count(SourceKey::of("127.0.0.1".parse().unwrap()))
                == 1
            {
                ok = true;
                break;
            }
        }
        assert!(ok, "the closed connection gave its slot back");
        stop.cancel();
    }

    #[tokio::test]
    async fn the_global_cap_counts_every_source() {
        let (addr, shared, stop) = start(limits(1, 0, 5_000)).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert!(read_all(&mut b).await.starts_with("HTTP/1.1 503"));
        assert_eq!(
            shared
                .metrics
                .connections_refused
                .with_label_values(&["public", "global_limit"])
                .get(),
            1
        );
        stop.cancel();
    }
}

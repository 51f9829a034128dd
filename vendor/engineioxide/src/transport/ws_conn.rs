//! The IO half of a server-side WebSocket connection (live-realtime fork): reads decoded with
//! [`Decoder`], writes of whole frames, nothing buffered while the connection is idle.
//!
//! Reads go through a buffer on the stack of the polling call, so an idle connection holds no
//! read buffer (tungstenite kept one of `read_buffer_size`, allocated up front, for the
//! connection's life). Writes take the frames where they are queued, as `Bytes` (a broadcast's
//! frame is shared by all its members), and hand up to [`MAX_IOV`] of them to one vectored
//! write, so coalesced messages leave in one syscall without being copied into a write buffer
//! (tungstenite copied each into one it kept at its high-water mark).

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    mem::MaybeUninit,
    ops::ControlFlow,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Error as WsError;

use super::ws_frame::{Decoder, Incoming};

/// Frames handed to one vectored write: more than a coalescing window usually holds.
const MAX_IOV: usize = 16;
/// The most bytes taken from the socket per read: the size of the stack buffer.
pub(crate) const MAX_READ_CHUNK: usize = 8 * 1024;
/// Reads per poll before yielding to other tasks, so a client that floods cannot starve them.
const READS_PER_POLL: usize = 16;

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The peer closed the TCP stream.
    Eof,
    /// The handler asked to stop (a close frame, or a packet that ends the session).
    Stopped,
}

/// A WebSocket connection after its HTTP upgrade.
#[derive(Debug)]
pub(crate) struct WsConn<S> {
    io: S,
    decoder: Decoder,
    /// Bytes taken per read (at most [`MAX_READ_CHUNK`]).
    read_chunk: usize,
}

impl<S> WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(io: S, read_chunk: usize, max_frame: usize, max_message: usize) -> Self {
        Self {
            io,
            decoder: Decoder::new(max_frame, max_message),
            read_chunk: read_chunk.clamp(64, MAX_READ_CHUNK),
        }
    }

    /// Writes the frames at the front of `frames`, in order, removing each once written; ready
    /// once `frames` is empty. `bytes` gives an entry's frame (whole frames, possibly several
    /// back to back, of which the front entry's may have been partly written already).
    pub(crate) fn poll_write<F>(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut VecDeque<F>,
        bytes: impl Fn(&mut F) -> &mut Bytes,
    ) -> Poll<io::Result<()>> {
        while let Some(front) = frames.front_mut() {
            // An empty frame (a packet with nothing to send on a websocket, such as the Noop that
            // ends a polling request at an upgrade) is written already: handing it to the socket
            // would return 0, which reads as a closed pipe (live-realtime fork).
            if bytes(front).is_empty() {
                frames.pop_front();
                continue;
            }
            let written = if frames.len() == 1 {
                // One frame (the usual case): a plain write, cheaper than a vectored one.
                let front = bytes(&mut frames[0]);
                ready!(Pin::new(&mut self.io).poll_write(cx, front))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(frames.iter_mut()) {
                    *slot = IoSlice::new(bytes(frame));
                    count += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let mut left = written;
            while left > 0 {
                let Some(front) = frames.front_mut() else {
                    break;
                };
                let front = bytes(front);
                if left >= front.len() {
                    left -= front.len();
                    frames.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Decodes what was read before but not yet delivered (after a handler stopped early).
    pub(crate) fn decode_buffered(
        &mut self,
        on: impl FnMut(Incoming) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, WsError> {
        self.decoder.decode(&[], on)
    }

    /// Reads what the socket has and hands every complete message to `on`, until the socket
    /// has nothing more (pending), the peer closes it, or `on` stops.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        mut on: impl FnMut(Incoming) -> ControlFlow<()>,
    ) -> Poll<Result<ReadEnd, WsError>> {
        let mut storage = [MaybeUninit::<u8>::uninit(); MAX_READ_CHUNK];
        for _ in 0..READS_PER_POLL {
            let mut buf = ReadBuf::uninit(&mut storage[..self.read_chunk]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(ReadEnd::Eof));
            }
            if self.decoder.decode(buf.filled(), &mut on)?.is_break() {
                return Poll::Ready(Ok(ReadEnd::Stopped));
            }
        }
        // More may be waiting: come back after the other tasks had a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Waits for the next message or control frame (for the handshakes).
    pub(crate) async fn next(&mut self) -> Result<Option<Incoming>, WsError> {
        let mut got = None;
        let mut take = |incoming| {
            got = Some(incoming);
            ControlFlow::Break(())
        };
        if self.decode_buffered(&mut take)?.is_break() {
            return Ok(got);
        }
        match std::future::poll_fn(|cx| self.poll_read(cx, &mut take)).await? {
            ReadEnd::Eof => Ok(None),
            ReadEnd::Stopped => Ok(got),
        }
    }

    /// Writes `frame` at once (for the handshakes).
    pub(crate) async fn send(&mut self, frame: Bytes) -> io::Result<()> {
        let mut frames = VecDeque::from([frame]);
        std::future::poll_fn(|cx| self.poll_write(cx, &mut frames, |b| b)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ws_frame::text_frame;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::{
        WebSocketStream,
        tungstenite::{Message, protocol::Role},
    };

    async fn pair(
        buffer: usize,
    ) -> (
        WsConn<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (server, client) = tokio::io::duplex(buffer);
        (
            WsConn::new(server, 1024, 1 << 16, 1 << 16),
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    #[tokio::test]
    async fn a_tungstenite_client_and_this_connection_understand_each_other() {
        let (mut server, mut client) = pair(64 * 1024).await;
        client.send(Message::text("hello")).await.unwrap();
        client.send(Message::binary(vec![1, 2])).await.unwrap();
        let big = "b".repeat(40_000);
        client.send(Message::text(big.clone())).await.unwrap();
        assert_eq!(
            server.next().await.unwrap(),
            Some(Incoming::Text(Bytes::from("hello")))
        );
        assert_eq!(
            server.next().await.unwrap(),
            Some(Incoming::Binary(Bytes::from_static(&[1, 2])))
        );
        assert_eq!(
            server.next().await.unwrap(),
            Some(Incoming::Text(Bytes::from(big)))
        );

        let mut frames = VecDeque::from([text_frame(b"4", b"one"), text_frame(b"4", b"two")]);
        std::future::poll_fn(|cx| server.poll_write(cx, &mut frames, |b| b))
            .await
            .unwrap();
        server.send(text_frame(b"", b"3")).await.unwrap();
        for expected in ["4one", "4two", "3"] {
            assert_eq!(
                client.next().await.unwrap().unwrap(),
                Message::text(expected)
            );
        }

        // A ping from the client comes up to the caller, which answers it.
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        assert_eq!(
            server.next().await.unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"p")))
        );
        drop(client);
        assert_eq!(server.next().await.unwrap(), None, "end of stream");
    }

    #[tokio::test]
    async fn frames_too_large_for_the_pipe_are_written_in_parts_in_order() {
        // A pipe much smaller than the frames: every write is partial.
        let (mut server, mut client) = pair(100).await;
        let texts: Vec<String> = (0..20).map(|i| (i % 10).to_string().repeat(300)).collect();
        let mut frames: VecDeque<Bytes> = texts
            .iter()
            .map(|t| text_frame(b"4", t.as_bytes()))
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..20 {
                got.push(client.next().await.unwrap().unwrap());
            }
            got
        });
        std::future::poll_fn(|cx| server.poll_write(cx, &mut frames, |b| b))
            .await
            .unwrap();
        assert!(frames.is_empty());
        let got = reader.await.unwrap();
        let expected: Vec<_> = texts
            .iter()
            .map(|t| Message::text(format!("4{t}")))
            .collect();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn an_empty_frame_is_skipped_not_written_alone_or_among_others() {
        let (mut server, mut client) = pair(64 * 1024).await;
        // Alone: nothing to write, and no error.
        let mut frames: VecDeque<Bytes> = [Bytes::new()].into_iter().collect();
        std::future::poll_fn(|cx| server.poll_write(cx, &mut frames, |b| b))
            .await
            .expect("an empty frame is not a write error");
        assert!(frames.is_empty());
        // First, between and last in a batch: the others arrive.
        let mut frames: VecDeque<Bytes> = [
            Bytes::new(),
            text_frame(b"4", b"a"),
            Bytes::new(),
            text_frame(b"4", b"b"),
            Bytes::new(),
        ]
        .into_iter()
        .collect();
        std::future::poll_fn(|cx| server.poll_write(cx, &mut frames, |b| b))
            .await
            .unwrap();
        assert!(frames.is_empty());
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("4a"));
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("4b"));
    }

    #[tokio::test]
    async fn messages_after_the_one_a_handshake_waited_for_are_kept_for_the_next_read() {
        let (mut server, mut client) = pair(64 * 1024).await;
        // Two frames in one write: `next` takes the first and keeps the second.
        client.feed(Message::text("5")).await.unwrap();
        client.feed(Message::text("40")).await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(
            server.next().await.unwrap(),
            Some(Incoming::Text(Bytes::from("5")))
        );
        let mut rest = Vec::new();
        let flow = server
            .decode_buffered(|m| {
                rest.push(m);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(flow.is_continue());
        // Either already buffered, or still in the pipe: read it then.
        if rest.is_empty() {
            rest.push(server.next().await.unwrap().unwrap());
        }
        assert_eq!(rest, [Incoming::Text(Bytes::from("40"))]);
    }
}

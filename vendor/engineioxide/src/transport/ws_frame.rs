//! Server-side WebSocket framing (RFC 6455) without long-lived buffers (live-realtime fork).
//!
//! tungstenite keeps a read buffer (allocated up front, at least `read_buffer_size`) and a write
//! buffer (kept at its high-water mark) for every connection's life, and copies every outgoing
//! message into that write buffer. Here the decoder holds bytes only while a frame is incomplete,
//! and outgoing frames are whole `Bytes` that a connection writes as they are, so one broadcast
//! can be framed once and written to every member without a copy ([`message_frame`]).
//!
//! Pure: no IO and no clock. Header parsing is tungstenite's ([`FrameHeader::parse`]); the checks
//! of a server receiving client frames (masking, reserved bits, control frames, fragmentation,
//! size limits, UTF-8) follow tungstenite's `WebSocketContext` and report its error types, so a
//! malformed stream ends the session exactly as it did before.

use std::io::Cursor;
use std::ops::ControlFlow;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::{
    error::{CapacityError, Error as WsError, ProtocolError},
    protocol::frame::{
        FrameHeader,
        coding::{CloseCode, Control, Data, OpCode},
    },
};

/// The longest header a server writes: 2 bytes, 8 of extended length, no mask.
const MAX_SERVER_HEADER: usize = 10;
/// Control frames carry at most this many payload bytes (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A complete message or control frame received from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A text message, already checked to be UTF-8.
    Text(Bytes),
    Binary(Bytes),
    /// A ping; the connection answers it with [`pong_frame`].
    Ping(Bytes),
    Pong,
    /// A close frame; the connection answers it with [`close_reply`] and ends.
    Close(Option<CloseCode>),
}

/// Decodes the frames a client sends.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    max_frame: usize,
    max_message: usize,
    /// The start of a frame that has not fully arrived. Empty (no allocation) otherwise, which
    /// is almost always: a client's frames are small and arrive whole.
    partial: Vec<u8>,
    /// A fragmented message being assembled: is it text, and its payload so far.
    fragments: Option<(bool, Vec<u8>)>,
}

impl Decoder {
    pub(crate) fn new(max_frame: usize, max_message: usize) -> Self {
        Self {
            max_frame,
            max_message,
            partial: Vec::new(),
            fragments: None,
        }
    }

    /// Heap bytes held between reads (for tests and memory accounting).
    #[cfg(test)]
    pub(crate) fn held_capacity(&self) -> usize {
        self.partial.capacity() + self.fragments.as_ref().map_or(0, |(_, f)| f.capacity())
    }

    /// Decodes `input`, the next bytes read from the socket, calling `on` with every complete
    /// message or control frame in order. When `on` breaks, decoding stops there and the bytes
    /// after that frame are kept for the next call (an empty `input` decodes just those).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        mut on: impl FnMut(Incoming) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, WsError> {
        if self.partial.is_empty() {
            let (used, flow) = self.decode_frames(input, &mut on)?;
            self.partial.extend_from_slice(&input[used..]);
            Ok(flow)
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let (used, flow) = self.decode_frames(&buf, &mut on)?;
            if used < buf.len() {
                buf.drain(..used);
                self.partial = buf;
            }
            // Fully consumed: `buf` is dropped, and with it the storage.
            Ok(flow)
        }
    }

    /// Decodes the complete frames at the start of `buf`: how many bytes they took, and
    /// whether `on` broke.
    fn decode_frames(
        &mut self,
        buf: &[u8],
        on: &mut impl FnMut(Incoming) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>), WsError> {
        let mut pos = 0;
        while pos < buf.len() {
            let mut cursor = Cursor::new(&buf[pos..]);
            let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
                break;
            };
            self.check(&header, len)?;
            let start = pos + cursor.position() as usize;
            // `check` bounded `len` by the frame limit, a `usize`.
            let len = len as usize;
            if buf.len() - start < len {
                break;
            }
            pos = start + len;
            let mask = header.mask.unwrap_or_default();
            if let Some(incoming) = self.frame(&header, &buf[start..pos], mask)?
                && on(incoming).is_break()
            {
                return Ok((pos, ControlFlow::Break(())));
            }
        }
        Ok((pos, ControlFlow::Continue(())))
    }

    /// The checks that can be made from a header alone, before its payload is buffered.
    fn check(&self, header: &FrameHeader, len: u64) -> Result<(), WsError> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol(ProtocolError::NonZeroReservedBits));
        }
        if header.mask.is_none() {
            // The server MUST close the connection upon receiving a frame that is not masked.
            return Err(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final {
                    return Err(WsError::Protocol(ProtocolError::FragmentedControlFrame));
                }
                if len > MAX_CONTROL_PAYLOAD {
                    return Err(WsError::Protocol(ProtocolError::ControlFrameTooBig));
                }
            }
            OpCode::Data(data) => {
                let too_long = |size: u64, max_size: usize| {
                    WsError::Capacity(CapacityError::MessageTooLong {
                        size: usize::try_from(size).unwrap_or(usize::MAX),
                        max_size,
                    })
                };
                if len > self.max_frame as u64 {
                    return Err(too_long(len, self.max_frame));
                }
                let so_far = self.fragments.as_ref().map_or(0, |(_, f)| f.len()) as u64;
                if so_far + len > self.max_message as u64 {
                    return Err(too_long(so_far + len, self.max_message));
                }
                match (data, self.fragments.is_some()) {
                    (Data::Continue, false) => {
                        return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame));
                    }
                    (Data::Text | Data::Binary, true) => {
                        return Err(WsError::Protocol(ProtocolError::ExpectedFragment(data)));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Handles one complete, checked frame; `None` for a fragment that does not end a message.
    fn frame(
        &mut self,
        header: &FrameHeader,
        masked: &[u8],
        mask: [u8; 4],
    ) -> Result<Option<Incoming>, WsError> {
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Some(Incoming::Ping(unmask(masked, mask)))),
            OpCode::Control(Control::Pong) => Ok(Some(Incoming::Pong)),
            OpCode::Control(Control::Close) => close_code(&unmask(masked, mask))
                .map(Incoming::Close)
                .map(Some),
            OpCode::Control(Control::Reserved(op)) | OpCode::Data(Data::Reserved(op)) => {
                Err(WsError::Protocol(ProtocolError::InvalidOpcode(op)))
            }
            OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                let is_text = header.opcode == OpCode::Data(Data::Text);
                message(is_text, unmask(masked, mask)).map(Some)
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                let is_text = header.opcode == OpCode::Data(Data::Text);
                let mut payload = Vec::with_capacity(masked.len());
                unmask_into(masked, mask, &mut payload);
                self.fragments = Some((is_text, payload));
                Ok(None)
            }
            OpCode::Data(Data::Continue) => {
                let Some((_, payload)) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame));
                };
                unmask_into(masked, mask, payload);
                if !header.is_final {
                    return Ok(None);
                }
                let (is_text, payload) = self.fragments.take().unwrap_or_default();
                message(is_text, Bytes::from(payload)).map(Some)
            }
        }
    }
}

/// A complete data message, text checked to be UTF-8.
fn message(is_text: bool, payload: Bytes) -> Result<Incoming, WsError> {
    if !is_text {
        return Ok(Incoming::Binary(payload));
    }
    std::str::from_utf8(&payload).map_err(|e| WsError::Utf8(e.to_string()))?;
    Ok(Incoming::Text(payload))
}

/// The status code of a close frame's payload (RFC 6455, 5.5.1): none, or two bytes of code
/// followed by a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<CloseCode>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
        [hi, lo, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|e| WsError::Utf8(e.to_string()))?;
            Ok(Some(CloseCode::from(u16::from_be_bytes([*hi, *lo]))))
        }
    }
}

fn unmask_into(masked: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(masked.len());
    out.extend(
        masked
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Bytes {
    let mut out = Vec::with_capacity(masked.len());
    unmask_into(masked, mask, &mut out);
    Bytes::from(out)
}

/// Writes the header of an unmasked, final frame with `opcode` and a payload of `len` bytes.
fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;

/// Appends a text frame whose payload is `prefix` followed by `text`.
pub(crate) fn put_text_frame(out: &mut BytesMut, prefix: &[u8], text: &[u8]) {
    put_data_frame(out, OP_TEXT, prefix, text);
}

/// Appends a binary frame whose payload is `prefix` followed by `data`.
pub(crate) fn put_binary_frame(out: &mut BytesMut, prefix: &[u8], data: &[u8]) {
    put_data_frame(out, OP_BINARY, prefix, data);
}

fn put_data_frame(out: &mut BytesMut, opcode: u8, prefix: &[u8], data: &[u8]) {
    let len = prefix.len() + data.len();
    out.reserve(MAX_SERVER_HEADER + len);
    put_header(out, opcode, len);
    out.extend_from_slice(prefix);
    out.extend_from_slice(data);
}

/// A text frame whose payload is `prefix` followed by `text`.
pub(crate) fn text_frame(prefix: &[u8], text: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_text_frame(&mut out, prefix, text);
    out.freeze()
}

/// A binary frame whose payload is `prefix` followed by `data`.
#[cfg(test)]
pub(crate) fn binary_frame(prefix: &[u8], data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    put_binary_frame(&mut out, prefix, data);
    out.freeze()
}

/// The pong answering a ping with `payload`.
pub(crate) fn pong_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + payload.len());
    put_header(&mut out, OP_PONG, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// The close frame a server sends when it ends the connection itself: no status code.
pub(crate) const CLOSE_FRAME: &[u8] = &[0x80 | OP_CLOSE, 0];

/// Whether `frame` (one this module wrote) is a close frame.
pub(crate) fn is_close(frame: &[u8]) -> bool {
    frame.first() == Some(&(0x80 | OP_CLOSE))
}

/// The close frame answering the client's: its code echoed when it may be sent, a protocol
/// error otherwise (as tungstenite answers).
pub(crate) fn close_reply(code: Option<CloseCode>) -> Bytes {
    let Some(code) = code else {
        return Bytes::from_static(CLOSE_FRAME);
    };
    let code = if code.is_allowed() {
        code
    } else {
        CloseCode::Protocol
    };
    let mut out = BytesMut::with_capacity(4);
    put_header(&mut out, OP_CLOSE, 2);
    out.put_u16(code.into());
    out.freeze()
}

/// An engine.io message packet (`4` + `text`) framed once as a WebSocket text frame, to be
/// written as it is to any number of sockets (live-realtime fork).
///
/// A broadcast builds one and queues a clone (a reference count) for every member, instead of
/// each member's writer framing the same bytes again. A socket on the polling transport reads the
/// packet back out of it without a copy ([`MessageFrame::message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFrame {
    frame: Bytes,
    /// Where the packet's text starts in `frame`: after the header and the `4`.
    text_start: u8,
}

impl MessageFrame {
    /// Frames the message packet carrying `text`.
    pub fn new(text: &str) -> Self {
        let frame = text_frame(b"4", text.as_bytes());
        let text_start = (frame.len() - text.len()) as u8;
        Self { frame, text_start }
    }

    /// The whole WebSocket frame.
    #[cfg(test)]
    pub(crate) fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The whole WebSocket frame.
    pub(crate) fn into_frame(self) -> Bytes {
        self.frame
    }

    /// The message's text, sharing the frame's storage.
    pub fn message(&self) -> engineioxide_core::Str {
        let text = self.frame.slice(usize::from(self.text_start)..);
        // SAFETY: the bytes were copied from a `&str` in `new`.
        unsafe { engineioxide_core::Str::from_bytes_unchecked(text) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a client must send it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
        out
    }

    fn decode_all(d: &mut Decoder, input: &[u8]) -> Result<Vec<Incoming>, WsError> {
        let mut got = Vec::new();
        let flow = d.decode(input, |m| {
            got.push(m);
            ControlFlow::Continue(())
        })?;
        assert!(flow.is_continue());
        Ok(got)
    }

    fn decoder() -> Decoder {
        Decoder::new(1 << 16, 1 << 17)
    }

    #[test]
    fn whole_frames_are_decoded_in_order_and_nothing_is_kept_between_reads() {
        let mut d = decoder();
        let mut input = client_frame(0x81, b"40/live,");
        input.extend(client_frame(0x82, &[1, 2, 3]));
        input.extend(client_frame(0x89, b"hi"));
        input.extend(client_frame(0x8A, b""));
        let got = decode_all(&mut d, &input).unwrap();
        assert_eq!(
            got,
            [
                Incoming::Text(Bytes::from_static(b"40/live,")),
                Incoming::Binary(Bytes::from_static(&[1, 2, 3])),
                Incoming::Ping(Bytes::from_static(b"hi")),
                Incoming::Pong,
            ]
        );
        assert_eq!(d.held_capacity(), 0);
    }

    #[test]
    fn a_frame_split_across_reads_at_every_byte_is_decoded_once_it_is_whole() {
        let text = "x".repeat(300); // a 16-bit length
        let frame = client_frame(0x81, text.as_bytes());
        for split in 1..frame.len() {
            let mut d = decoder();
            assert!(decode_all(&mut d, &frame[..split]).unwrap().is_empty());
            assert!(d.held_capacity() > 0, "the partial frame is kept");
            let got = decode_all(&mut d, &frame[split..]).unwrap();
            assert_eq!(
                got,
                [Incoming::Text(Bytes::from(text.clone()))],
                "split at {split}"
            );
            assert_eq!(d.held_capacity(), 0, "and released once decoded");
        }
    }

    #[test]
    fn a_fragmented_message_is_reassembled_around_a_control_frame() {
        let mut d = decoder();
        let mut input = client_frame(0x01, "héllo ".as_bytes()); // text, not final
        input.extend(client_frame(0x89, b"p")); // a ping in between is allowed
        input.extend(client_frame(0x00, b"wor")); // continuation
        input.extend(client_frame(0x80, b"ld")); // final continuation
        let got = decode_all(&mut d, &input).unwrap();
        assert_eq!(
            got,
            [
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text(Bytes::from("héllo world")),
            ]
        );
        assert_eq!(d.held_capacity(), 0);
    }

    #[test]
    fn a_64_bit_length_is_decoded() {
        let mut d = Decoder::new(1 << 20, 1 << 20);
        let data = vec![7u8; 70_000];
        let got = decode_all(&mut d, &client_frame(0x82, &data)).unwrap();
        assert_eq!(got, [Incoming::Binary(Bytes::from(data))]);
    }

    #[test]
    fn decoding_stops_where_the_caller_breaks_and_resumes_from_there() {
        let mut d = decoder();
        let mut input = client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']);
        input.extend(client_frame(0x81, b"after close"));
        let mut got = Vec::new();
        let flow = d
            .decode(&input, |m| {
                got.push(m);
                ControlFlow::Break(())
            })
            .unwrap();
        assert!(flow.is_break());
        assert_eq!(got, [Incoming::Close(Some(CloseCode::Normal))]);
        let rest = decode_all(&mut d, &[]).unwrap();
        assert_eq!(rest, [Incoming::Text(Bytes::from_static(b"after close"))]);
        assert_eq!(d.held_capacity(), 0);
    }

    #[test]
    fn close_frames_are_answered_with_the_code_they_carry() {
        assert_eq!(
            &close_reply(Some(CloseCode::Normal))[..],
            &[0x88, 2, 0x03, 0xE8]
        );
        assert_eq!(&close_reply(None)[..], CLOSE_FRAME);
        // A code that may not be sent back is answered with a protocol error (1002).
        assert_eq!(
            &close_reply(Some(CloseCode::from(1005)))[..],
            &[0x88, 2, 0x03, 0xEA]
        );
    }

    #[test]
    fn every_violation_a_server_must_refuse_is_an_error() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", vec![0x81, 0x01, b'a']),
            ("reserved bit", client_frame(0xC1, b"a")),
            ("reserved opcode", client_frame(0x83, b"a")),
            ("reserved control opcode", client_frame(0x8B, b"")),
            ("fragmented control frame", client_frame(0x09, b"")),
            (
                "control frame over 125 bytes",
                client_frame(0x89, &[0; 126]),
            ),
            ("continuation without a start", client_frame(0x80, b"a")),
            ("invalid UTF-8 text", client_frame(0x81, &[0xff, 0xfe])),
            ("one-byte close payload", client_frame(0x88, &[3])),
            (
                "close reason not UTF-8",
                client_frame(0x88, &[3, 0xE8, 0xff]),
            ),
            ("frame over the frame limit", client_frame(0x82, &[0; 65])),
            ("new message inside a fragmented one", {
                let mut v = client_frame(0x01, b"a");
                v.extend(client_frame(0x81, b"b"));
                v
            }),
            ("fragments over the message limit", {
                let mut v = client_frame(0x02, &[0; 60]);
                v.extend(client_frame(0x00, &[0; 60]));
                v.extend(client_frame(0x80, &[0; 60]));
                v
            }),
        ];
        for (what, input) in cases {
            let mut d = Decoder::new(64, 128);
            assert!(decode_all(&mut d, &input).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header_before_its_payload_arrives() {
        let mut d = Decoder::new(64, 128);
        let frame = client_frame(0x82, &[0; 1000]);
        assert!(decode_all(&mut d, &frame[..8]).is_err());
    }

    #[test]
    fn server_frames_use_the_shortest_length_and_no_mask() {
        assert_eq!(&text_frame(b"4", b"hi")[..], b"\x81\x034hi");
        let mid = text_frame(b"", &[b'a'; 126]);
        assert_eq!(&mid[..4], &[0x81, 126, 0, 126]);
        assert_eq!(mid.len(), 4 + 126);
        let big = binary_frame(&[4], &vec![0; 70_000]);
        assert_eq!(&big[..2], &[0x82, 127]);
        assert_eq!(&big[2..10], &70_001u64.to_be_bytes());
        assert_eq!(big[10], 4);
        assert_eq!(&pong_frame(b"x")[..], &[0x8A, 1, b'x']);
    }

    #[test]
    fn a_message_frame_is_a_text_frame_of_the_packet_and_gives_the_message_back() {
        let frame = MessageFrame::new("[\"chat:new\",{}]");
        assert_eq!(&frame.frame()[..], b"\x81\x104[\"chat:new\",{}]");
        assert_eq!(frame.message(), "[\"chat:new\",{}]");
        let long = "y".repeat(1000);
        assert_eq!(MessageFrame::new(&long).message(), long.as_str());
    }

    #[test]
    fn frames_written_here_are_read_back_by_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        for len in [0usize, 1, 125, 126, 65_535, 65_536] {
            let payload = vec![b'z'; len];
            let frame = text_frame(b"", &payload);
            let mut cursor = Cursor::new(&frame[..]);
            let (header, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(parsed_len, len as u64);
            assert_eq!(cursor.position() as usize + len, frame.len());
        }
    }
}

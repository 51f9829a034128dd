//! Engine.IO v4 / Socket.IO v5 text framing over WebSocket: just what a chat client needs, pure
//! encode and decode with no IO.
//!
//! An Engine.IO packet is one WebSocket text frame: a type digit, then data. Type `4` (message)
//! carries a Socket.IO packet: `<type>[<namespace>,][<ack id>][<json>]`, where the namespace is
//! present unless it is `/`. Binary attachments are never used by the live protocol, so they are
//! not parsed. Decoding borrows from the frame and never allocates, because every delivery of a
//! load run passes through it.

use serde::Deserialize;

/// The Engine.IO pong a client answers each server ping with.
pub const PONG: &str = "3";

/// One decoded frame. Anything the bench does not act on is [`Packet::Other`]: an unexpected
/// frame is an expected condition, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{...}`: the Engine.IO handshake; the server pings every `ping_interval_ms`.
    Open { ping_interval_ms: u64 },
    /// `1`: the server closes the session.
    Close,
    /// `2`: a heartbeat ping, to be answered with [`PONG`].
    Ping,
    /// `40/ns,{"sid":...}`: the namespace accepted the connection.
    Connected { namespace: &'a str },
    /// `41/ns,`: the server disconnected the namespace.
    Disconnected { namespace: &'a str },
    /// `42/ns,[id]["name",payload]`: an event; `payload` is the raw JSON after the name.
    Event {
        namespace: &'a str,
        name: &'a str,
        payload: &'a str,
        ack: Option<u64>,
    },
    /// `43/ns,id[...]`: the answer to an event sent with an ack id.
    Ack {
        namespace: &'a str,
        id: u64,
        payload: &'a str,
    },
    /// `44/ns,{"message":...}`: the namespace refused the connection (bad token).
    ConnectError {
        namespace: &'a str,
        payload: &'a str,
    },
    /// Anything else (noop, upgrade probes, binary events, malformed text).
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPayload {
    ping_interval: u64,
}

/// Decodes one WebSocket text frame.
pub fn decode(frame: &str) -> Packet<'_> {
    let Some(kind) = frame.as_bytes().first() else {
        return Packet::Other;
    };
    let rest = &frame[1..];
    match kind {
        b'0' => serde_json::from_str::<OpenPayload>(rest)
            .map(|o| Packet::Open {
                ping_interval_ms: o.ping_interval,
            })
            .unwrap_or(Packet::Other),
        b'1' => Packet::Close,
        b'2' if rest.is_empty() => Packet::Ping,
        b'4' => decode_socketio(rest),
        _ => Packet::Other,
    }
}

fn decode_socketio(s: &str) -> Packet<'_> {
    let Some(kind) = s.as_bytes().first() else {
        return Packet::Other;
    };
    let rest = &s[1..];
    let (namespace, rest) = if rest.starts_with('/') {
        match rest.find(',') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        }
    } else {
        ("/", rest)
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = rest[..digits].parse::<u64>().ok();
    let body = &rest[digits..];
    match kind {
        b'0' => Packet::Connected { namespace },
        b'1' => Packet::Disconnected { namespace },
        b'2' => decode_event(namespace, ack, body),
        b'3' => match ack {
            Some(id) => Packet::Ack {
                namespace,
                id,
                payload: body,
            },
            None => Packet::Other,
        },
        b'4' => Packet::ConnectError {
            namespace,
            payload: body,
        },
        _ => Packet::Other,
    }
}

/// `["name",payload]` → name and raw payload. Event names with escapes are not live events and
/// decode as [`Packet::Other`].
fn decode_event<'a>(namespace: &'a str, ack: Option<u64>, body: &'a str) -> Packet<'a> {
    let Some(inner) = body.strip_prefix("[\"").and_then(|b| b.strip_suffix(']')) else {
        return Packet::Other;
    };
    let Some(end) = inner.find('"') else {
        return Packet::Other;
    };
    let name = &inner[..end];
    if name.contains('\\') {
        return Packet::Other;
    }
    let after = &inner[end + 1..];
    let payload = match after.strip_prefix(',') {
        Some(p) => p,
        None if after.is_empty() => "",
        None => return Packet::Other,
    };
    Packet::Event {
        namespace,
        name,
        payload,
        ack,
    }
}

/// `40/ns,{"token":...}`: connects to a namespace with the handshake `auth` object.
pub fn encode_connect(namespace: &str, token: &str) -> String {
    let auth = serde_json::json!({ "token": token });
    format!("4{}{auth}", socketio_head('0', namespace))
}

/// `42/ns,[id]["name",payload]`, where `payload_json` is already-serialized JSON.
pub fn encode_event(namespace: &str, ack: Option<u64>, name: &str, payload_json: &str) -> String {
    let id = ack.map(|a| a.to_string()).unwrap_or_default();
    let name = serde_json::Value::from(name);
    format!(
        "4{}{id}[{name},{payload_json}]",
        socketio_head('2', namespace)
    )
}

fn socketio_head(kind: char, namespace: &str) -> String {
    if namespace == "/" {
        kind.to_string()
    } else {
        format!("{kind}{namespace},")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_packet_yields_the_ping_interval() {
        let frame = r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(
            decode(frame),
            Packet::Open {
                ping_interval_ms: 25000
            }
        );
    }

    #[test]
    fn a_malformed_open_packet_is_other_not_a_panic() {
        assert_eq!(decode("0{nope"), Packet::Other);
        assert_eq!(decode(""), Packet::Other);
        assert_eq!(decode("4"), Packet::Other);
    }

    #[test]
    fn ping_and_close_are_recognised_but_a_probe_is_not_a_ping() {
        assert_eq!(decode("2"), Packet::Ping);
        assert_eq!(decode("1"), Packet::Close);
        assert_eq!(decode("2probe"), Packet::Other);
    }

    #[test]
    fn a_namespace_connect_reply_names_its_namespace() {
        assert_eq!(
            decode(r#"40/live,{"sid":"x1"}"#),
            Packet::Connected { namespace: "/live" }
        );
        assert_eq!(
            decode(r#"40{"sid":"x1"}"#),
            Packet::Connected { namespace: "/" }
        );
    }

    #[test]
    fn a_connect_error_carries_its_payload() {
        assert_eq!(
            decode(r#"44/live,{"message":"unauthorized"}"#),
            Packet::ConnectError {
                namespace: "/live",
                payload: r#"{"message":"unauthorized"}"#
            }
        );
    }

    #[test]
    fn an_event_splits_into_name_and_raw_payload() {
        let frame = r#"42/live,["chat:new",{"userId":"u1","message":"a,b]","timestamp":1}]"#;
        assert_eq!(
            decode(frame),
            Packet::Event {
                namespace: "/live",
                name: "chat:new",
                payload: r#"{"userId":"u1","message":"a,b]","timestamp":1}"#,
                ack: None
            }
        );
    }

    #[test]
    fn an_event_without_payload_has_an_empty_payload() {
        assert_eq!(
            decode(r#"42["tick"]"#),
            Packet::Event {
                namespace: "/",
                name: "tick",
                payload: "",
                ack: None
            }
        );
    }

    #[test]
    fn an_event_with_an_ack_id_keeps_the_id() {
        assert_eq!(
            decode(r#"42/live,7["join",{}]"#),
            Packet::Event {
                namespace: "/live",
                name: "join",
                payload: "{}",
                ack: Some(7)
            }
        );
    }

    #[test]
    fn an_ack_carries_its_id_and_payload() {
        assert_eq!(
            decode(r#"43/live,0[{"ok":true}]"#),
            Packet::Ack {
                namespace: "/live",
                id: 0,
                payload: r#"[{"ok":true}]"#
            }
        );
        assert_eq!(decode("43/live,[]"), Packet::Other);
    }

    #[test]
    fn broken_events_decode_as_other() {
        assert_eq!(decode(r#"42/live,["chat:new""#), Packet::Other);
        assert_eq!(decode(r#"42/live,{"a":1}"#), Packet::Other);
        assert_eq!(decode(r#"42/live,["a\"b",1]"#), Packet::Other);
        assert_eq!(decode(r#"42/live,["x"junk]"#), Packet::Other);
    }

    #[test]
    fn connect_encodes_the_token_as_the_auth_object() {
        assert_eq!(
            encode_connect("/live", "a.b\"c"),
            r#"40/live,{"token":"a.b\"c"}"#
        );
        assert_eq!(encode_connect("/", "t"), r#"40{"token":"t"}"#);
    }

    #[test]
    fn events_encode_with_and_without_an_ack_id() {
        assert_eq!(
            encode_event("/live", None, "chat:send", r#"{"channelName":"c"}"#),
            r#"42/live,["chat:send",{"channelName":"c"}]"#
        );
        assert_eq!(
            encode_event("/live", Some(0), "join", "{}"),
            r#"42/live,0["join",{}]"#
        );
    }

    #[test]
    fn an_encoded_event_decodes_back_to_itself() {
        let frame = encode_event("/live", Some(12), "chat:send", r#"{"message":"hi"}"#);
        assert_eq!(
            decode(&frame),
            Packet::Event {
                namespace: "/live",
                name: "chat:send",
                payload: r#"{"message":"hi"}"#,
                ack: Some(12)
            }
        );
    }
}

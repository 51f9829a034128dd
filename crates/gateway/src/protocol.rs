//! The live protocol's payloads: pure parsing and validation of what clients and backends send,
//! and the shapes of what the gateway emits. No IO here; handlers in `realtime` and `bridge` call
//! these and do the sending.
//!
//! Client payloads are parsed from `serde_json::Value` by hand rather than derived, because each
//! wrong field must map to the Node layer's specific refusal (`Invalid gift data`, ...) and a
//! number where a string was expected must be a refusal, never a crash.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::history::Position;
use crate::history::socket::HistoryRequest;

/// Event names, client → server.
pub mod inbound {
    pub const JOIN: &str = "join";
    pub const LEAVE: &str = "leave";
    pub const CHAT: &str = "chat:send";
    pub const GIFT: &str = "gift:announce";
    pub const MODERATION: &str = "mod:decision";
    pub const HEARTBEAT: &str = "heartbeat";
}

/// Event names, server → client.
pub mod outbound {
    pub const PRESENCE: &str = "presence:update";
    pub const SYSTEM: &str = "system:event";
    pub const CHAT: &str = "chat:new";
    pub const GIFT: &str = "gift:new";
    pub const MODERATION: &str = "mod:event";
    pub const HEARTBEAT_ACK: &str = "heartbeat:ack";
    pub const METRICS_PING: &str = "metrics:ping";
    pub const METRICS_UPDATE: &str = "metrics:update";
    pub const ERROR: &str = "error";
}

/// Longest gift id (the catalogue-id pattern, [`valid_gift_id`]).
pub const MAX_GIFT_ID_LEN: usize = 64;
/// Longest user id accepted from a backend or a moderator.
pub const MAX_USER_ID_LEN: usize = 128;

/// The room of a live channel.
pub fn room(channel: &str) -> String {
    format!("channel:{channel}")
}

/// The channel of a room, when the room is a channel room.
pub fn channel_of(room: &str) -> Option<&str> {
    room.strip_prefix("channel:")
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, without a regex engine on the hot path.
pub fn valid_channel_name(name: &str) -> bool {
    valid_id(name)
}

/// A gift id is a catalogue id: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, the channel-name pattern.
/// It reaches every member's screen, so it may hold nothing but these characters.
pub fn valid_gift_id(id: &str) -> bool {
    valid_id(id)
}

fn valid_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_GIFT_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn object(v: &Value) -> Result<&Map<String, Value>> {
    v.as_object().ok_or(Error::InvalidPayload)
}

/// The validated `channelName` of a payload.
pub fn channel(v: &Value) -> Result<&str> {
    let o = object(v)?;
    match o.get("channelName") {
        Some(Value::String(s)) if valid_channel_name(s) => Ok(s),
        _ => Err(Error::InvalidChannel),
    }
}

/// A viewer or the host of a live channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Host,
    Viewer,
}

/// `join {channelName, role?, since?: {offset, epoch}, history?: N}`.
#[derive(Debug, PartialEq)]
pub struct Join<'a> {
    pub channel: &'a str,
    pub role: Role,
    /// What the join asks of the channel's history.
    pub history: HistoryRequest,
}

pub fn parse_join(v: &Value) -> Result<Join<'_>> {
    let channel = channel(v)?;
    let role = match v.get("role") {
        None | Some(Value::Null) => Role::Viewer,
        Some(Value::String(r)) if r == "viewer" => Role::Viewer,
        Some(Value::String(r)) if r == "host" => Role::Host,
        Some(_) => return Err(Error::InvalidRole),
    };
    let since = match v.get("since") {
        None | Some(Value::Null) => None,
        Some(s) => {
            let offset = s.get("offset").and_then(Value::as_u64);
            let epoch = s
                .get("epoch")
                .and_then(Value::as_str)
                .filter(|e| crate::history::valid_epoch(e));
            match (offset, epoch) {
                (Some(o), Some(e)) => Some(Position::new(e.into(), o)),
                _ => return Err(Error::InvalidHistory),
            }
        }
    };
    let history = match v.get("history") {
        None | Some(Value::Null) => None,
        // Any count is accepted and capped at `history.maxItems`.
        Some(n) => Some(
            n.as_u64()
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .ok_or(Error::InvalidHistory)?,
        ),
    };
    Ok(Join {
        channel,
        role,
        history: HistoryRequest { since, history },
    })
}

/// The message of a `chat:send`, checked for type and length (in characters, before
/// sanitizing). Sanitizing happens after the rate-limit check, in the handler.
pub fn chat_message(v: &Value, max_len: u32) -> Result<&str> {
    let Some(Value::String(m)) = v.get("message") else {
        return Err(Error::InvalidPayload);
    };
    let len = m.chars().count();
    if len == 0 || len > max_len as usize {
        return Err(Error::InvalidMessageLength);
    }
    Ok(m)
}

/// `gift:announce {channelName, giftId, qty}` after the channel is known.
#[derive(Debug, PartialEq)]
pub struct Gift<'a> {
    pub gift_id: &'a str,
    pub qty: u32,
}

pub fn parse_gift(v: &Value, max_qty: u32) -> Result<Gift<'_>> {
    let gift_id = match v.get("giftId") {
        Some(Value::String(g)) if valid_gift_id(g) => g,
        _ => return Err(Error::InvalidGift),
    };
    let qty = v
        .get("qty")
        .and_then(Value::as_u64)
        .filter(|q| (1..=u64::from(max_qty)).contains(q))
        .ok_or(Error::InvalidGift)?;
    Ok(Gift {
        gift_id,
        qty: qty as u32,
    })
}

/// A moderation action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Warn,
    Mute,
    End,
}

/// `mod:decision` (or a bridge moderation call) after the channel is known.
#[derive(Debug, PartialEq)]
pub struct Moderation<'a> {
    pub action: Action,
    pub reason: Option<&'a str>,
    pub target_user_id: Option<&'a str>,
    pub duration_seconds: Option<u64>,
}

/// Parses a moderation decision; `reason`, when given, must be a string of at most
/// `max_reason_len` characters (before sanitizing, which the caller does).
pub fn parse_moderation(v: &Value, max_reason_len: u32) -> Result<Moderation<'_>> {
    let o = object(v)?;
    let action = match o.get("action").and_then(Value::as_str) {
        Some("warn") => Action::Warn,
        Some("mute") => Action::Mute,
        Some("end") => Action::End,
        _ => return Err(Error::InvalidAction),
    };
    let reason = optional_str(o, "reason").map_err(|_| Error::InvalidReason)?;
    if reason.is_some_and(|r| r.chars().count() > max_reason_len as usize) {
        return Err(Error::InvalidReason);
    }
    let target_user_id = optional_str(o, "targetUserId").map_err(|_| Error::InvalidTarget)?;
    if target_user_id.is_some_and(|t| t.is_empty() || t.len() > MAX_USER_ID_LEN) {
        return Err(Error::InvalidTarget);
    }
    if action == Action::Mute && target_user_id.is_none() {
        return Err(Error::InvalidTarget);
    }
    let duration_seconds = match o.get("durationSeconds") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            d.as_u64()
                .filter(|d| (1..=live_api::MAX_MUTE_SECONDS).contains(d))
                .ok_or(Error::InvalidPayload)?,
        ),
    };
    Ok(Moderation {
        action,
        reason,
        target_user_id,
        duration_seconds,
    })
}

fn optional_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidPayload),
    }
}

/// `heartbeat {channelName?}`: the channel, when given, must be valid.
pub fn parse_heartbeat(v: &Value) -> Result<()> {
    let o = object(v)?;
    match o.get("channelName") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => channel(v).map(|_| ()),
    }
}

// ---- what the gateway emits ----

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceUpdate<'a> {
    pub channel_name: &'a str,
    pub delta: i8,
    pub user_id: &'a str,
    /// Present on bridge-originated updates only, where the backend may name the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<Option<&'a str>>,
    pub timestamp: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemJoinLeave<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: &'a str,
    pub username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub timestamp: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatNew<'a> {
    pub user_id: &'a str,
    pub username: Option<&'a str>,
    pub message: &'a str,
    pub timestamp: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GiftNew<'a> {
    pub from: &'a str,
    pub from_username: Option<&'a str>,
    pub gift_id: &'a str,
    pub qty: u32,
    pub timestamp: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModEvent<'a> {
    pub action: Action,
    pub by: &'a str,
    pub by_username: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub target_user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    pub timestamp: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck<'a> {
    pub timestamp: u64,
    pub user_id: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsPing<'a> {
    pub channel_name: &'a str,
    pub timestamp: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsUpdate<'a> {
    pub channel_name: &'a str,
    pub metrics: &'a Value,
    pub timestamp: u64,
}

/// The acknowledgement a client's callback receives.
pub fn ack(result: &Result<()>) -> Value {
    match result {
        Ok(()) => serde_json::json!({ "ok": true }),
        Err(e) => serde_json::json!({ "ok": false, "error": e.to_client() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_names_follow_the_documented_pattern() {
        for ok in ["a", "A1", "live_1.b-c", &"x".repeat(64)] {
            assert!(valid_channel_name(ok), "{ok}");
        }
        for bad in [
            "",
            "_a",
            ".a",
            "-a",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(65),
            "a:b",
        ] {
            assert!(!valid_channel_name(bad), "{bad}");
        }
    }

    #[test]
    fn non_objects_and_bad_channels_are_refused() {
        assert!(matches!(channel(&json!(5)), Err(Error::InvalidPayload)));
        assert!(matches!(channel(&json!("c")), Err(Error::InvalidPayload)));
        assert!(matches!(channel(&json!([1])), Err(Error::InvalidPayload)));
        assert!(matches!(channel(&json!({})), Err(Error::InvalidChannel)));
        assert!(matches!(
            channel(&json!({"channelName": 7})),
            Err(Error::InvalidChannel)
        ));
        assert_eq!(channel(&json!({"channelName": "c1"})).unwrap(), "c1");
    }

    #[test]
    fn join_defaults_to_viewer_and_refuses_other_roles() {
        let v = json!({"channelName": "c"});
        let j = parse_join(&v).unwrap();
        assert_eq!(j.role, Role::Viewer);
        let v = json!({"channelName": "c", "role": "host"});
        let j = parse_join(&v).unwrap();
        assert_eq!(j.role, Role::Host);
        assert!(matches!(
            parse_join(&json!({"channelName": "c", "role": "god"})),
            Err(Error::InvalidRole)
        ));
        assert!(matches!(
            parse_join(&json!({"channelName": "c", "role": 1})),
            Err(Error::InvalidRole)
        ));
    }

    #[test]
    fn join_reads_since_and_history_and_refuses_malformed_ones() {
        let v = json!({"channelName": "c", "since": {"offset": 4, "epoch": "ab12"}, "history": 50});
        let j = parse_join(&v).unwrap();
        assert_eq!(j.history.since, Some(Position::new("ab12".into(), 4)));
        assert_eq!(j.history.history, Some(50));
        let j = parse_join(&json!({"channelName": "c", "history": 1e12})).unwrap_err();
        assert!(matches!(j, Error::InvalidHistory));
        let big = json!({"channelName": "c", "history": 99_999_999_999u64});
        let j = parse_join(&big).unwrap();
        assert_eq!(j.history.history, Some(u32::MAX));
        assert!(
            !parse_join(&json!({"channelName": "c"}))
                .unwrap()
                .history
                .wants()
        );
        for bad in [
            json!({"channelName": "c", "since": 5}),
            json!({"channelName": "c", "since": {"offset": -1, "epoch": "ab"}}),
            json!({"channelName": "c", "since": {"offset": 1}}),
            json!({"channelName": "c", "since": {"offset": 1, "epoch": "a b"}}),
            json!({"channelName": "c", "since": {"offset": 1, "epoch": ""}}),
            json!({"channelName": "c", "history": -1}),
            json!({"channelName": "c", "history": "10"}),
        ] {
            assert!(
                matches!(parse_join(&bad), Err(Error::InvalidHistory)),
                "{bad}"
            );
        }
    }

    #[test]
    fn chat_length_is_counted_in_characters_before_sanitizing() {
        assert!(chat_message(&json!({"message": "a"}), 500).is_ok());
        assert!(chat_message(&json!({"message": "é".repeat(500)}), 500).is_ok());
        assert!(matches!(
            chat_message(&json!({"message": "a".repeat(501)}), 500),
            Err(Error::InvalidMessageLength)
        ));
        assert!(matches!(
            chat_message(&json!({"message": ""}), 500),
            Err(Error::InvalidMessageLength)
        ));
        assert!(matches!(
            chat_message(&json!({"message": 12}), 500),
            Err(Error::InvalidPayload)
        ));
        assert!(matches!(
            chat_message(&json!({}), 500),
            Err(Error::InvalidPayload)
        ));
    }

    #[test]
    fn gifts_need_an_id_and_an_integer_quantity_in_range() {
        assert_eq!(
            parse_gift(&json!({"giftId": "rose", "qty": 3}), 100).unwrap(),
            Gift {
                gift_id: "rose",
                qty: 3
            }
        );
        for bad in [
            json!({"giftId": "rose", "qty": 0}),
            json!({"giftId": "rose", "qty": 101}),
            json!({"giftId": "rose", "qty": 1.5}),
            json!({"giftId": "rose", "qty": "3"}),
            json!({"giftId": "rose", "qty": -1}),
            json!({"giftId": "", "qty": 1}),
            json!({"giftId": 5, "qty": 1}),
            json!({"giftId": "x".repeat(65), "qty": 1}),
            json!({"qty": 1}),
            json!({"giftId": "<img src=x onerror=alert(1)>", "qty": 1}),
            json!({"giftId": "rose\"", "qty": 1}),
            json!({"giftId": " rose", "qty": 1}),
            json!({"giftId": "-rose", "qty": 1}),
        ] {
            assert!(
                matches!(parse_gift(&bad, 100), Err(Error::InvalidGift)),
                "{bad}"
            );
        }
    }

    #[test]
    fn moderation_needs_a_known_action_and_a_target_for_mutes() {
        let v = json!({"action": "warn", "reason": "spam"});
        let m = parse_moderation(&v, 200).unwrap();
        assert_eq!(m.action, Action::Warn);
        assert_eq!(m.reason, Some("spam"));
        assert!(matches!(
            parse_moderation(&json!({"action": "ban"}), 200),
            Err(Error::InvalidAction)
        ));
        assert!(matches!(
            parse_moderation(&json!({"action": "mute"}), 200),
            Err(Error::InvalidTarget)
        ));
        assert!(matches!(
            parse_moderation(&json!({"action": "mute", "targetUserId": 42}), 200),
            Err(Error::InvalidTarget)
        ));
        let v = json!({"action": "mute", "targetUserId": "u", "durationSeconds": 2});
        let m = parse_moderation(&v, 200).unwrap();
        assert_eq!(m.duration_seconds, Some(2));
        assert!(matches!(
            parse_moderation(
                &json!({"action": "mute", "targetUserId": "u", "durationSeconds": 0}),
                200
            ),
            Err(Error::InvalidPayload)
        ));
        assert!(matches!(
            parse_moderation(&json!({"action": "warn", "reason": 5}), 200),
            Err(Error::InvalidReason)
        ));
    }

    #[test]
    fn a_moderation_reason_is_capped_in_characters() {
        let ok = json!({"action": "warn", "reason": "é".repeat(200)});
        assert!(parse_moderation(&ok, 200).is_ok());
        let long = json!({"action": "warn", "reason": "x".repeat(201)});
        assert!(matches!(
            parse_moderation(&long, 200),
            Err(Error::InvalidReason)
        ));
    }

    #[test]
    fn heartbeat_channel_is_optional_but_must_be_valid_when_given() {
        assert!(parse_heartbeat(&json!({})).is_ok());
        assert!(parse_heartbeat(&json!({"channelName": "c"})).is_ok());
        assert!(matches!(
            parse_heartbeat(&json!({"channelName": "bad name"})),
            Err(Error::InvalidChannel)
        ));
        assert!(matches!(
            parse_heartbeat(&json!(1)),
            Err(Error::InvalidPayload)
        ));
    }

    #[test]
    fn emitted_payloads_use_the_node_layers_field_names() {
        let v = serde_json::to_value(GiftNew {
            from: "u",
            from_username: None,
            gift_id: "rose",
            qty: 2,
            timestamp: 1,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"from": "u", "fromUsername": null, "giftId": "rose", "qty": 2, "timestamp": 1})
        );
        let v = serde_json::to_value(SystemJoinLeave {
            kind: "join",
            user_id: "u",
            username: Some("U"),
            role: Some(Role::Viewer),
            timestamp: 1,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "join", "userId": "u", "username": "U", "role": "viewer", "timestamp": 1})
        );
    }

    #[test]
    fn acks_carry_ok_or_the_error() {
        assert_eq!(ack(&Ok(())), json!({"ok": true}));
        assert_eq!(
            ack(&Err(Error::InvalidGift)),
            json!({"ok": false, "error": {"code": "invalid_gift", "message": "Invalid gift data"}})
        );
    }
}

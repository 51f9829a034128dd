//! The send time travels inside the chat text, so latency is measured end to end on receipt
//! without any bookkeeping per message. Sender and receivers share the host, so their clocks
//! agree.
//!
//! The text is `lb<unix micros>.<seq>`: letters, digits and a dot only, so the gateway's
//! sanitizer returns it unchanged and the JSON string needs no escaping.

/// The marker that starts a bench message, so other chat can never be mistaken for one.
const MARK: &str = "lb";

/// The chat text for a message sent at `sent_unix_micros`.
pub fn message(sent_unix_micros: u64, seq: u64) -> String {
    format!("{MARK}{sent_unix_micros}.{seq}")
}

/// The `chat:send` payload JSON for `channel`. Channel names are plain (see `plan`), so no
/// escaping is needed.
pub fn chat_send_payload(channel: &str, sent_unix_micros: u64, seq: u64) -> String {
    format!(
        r#"{{"channelName":"{channel}","message":"{}"}}"#,
        message(sent_unix_micros, seq)
    )
}

/// The send time stamped into a `chat:new` payload, when the message is one of ours.
pub fn sent_micros(chat_new_payload: &str) -> Option<u64> {
    const KEY: &str = r#""message":""#;
    let start = chat_new_payload.find(KEY)? + KEY.len();
    let text = chat_new_payload[start..].strip_prefix(MARK)?;
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// Latency in microseconds; a receipt that seems earlier than its send (clock step) counts as 0.
pub fn latency_micros(sent_unix_micros: u64, received_unix_micros: u64) -> u64 {
    received_unix_micros.saturating_sub(sent_unix_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_survives_the_round_trip_through_chat_new() {
        let text = message(1_700_000_000_123_456, 42);
        let chat_new = format!(
            r#"{{"userId":"lb-1","username":"lb-1","message":"{text}","timestamp":1700000000124}}"#
        );
        assert_eq!(sent_micros(&chat_new), Some(1_700_000_000_123_456));
    }

    #[test]
    fn the_send_payload_is_valid_json_with_the_channel_and_text() {
        let p = chat_send_payload("bench-3", 5, 9);
        let v: serde_json::Value = serde_json::from_str(&p).expect("valid json");
        assert_eq!(v["channelName"], "bench-3");
        assert_eq!(v["message"], "lb5.9");
    }

    #[test]
    fn foreign_chat_has_no_send_time() {
        assert_eq!(sent_micros(r#"{"message":"hello"}"#), None);
        assert_eq!(sent_micros(r#"{"message":"lb"}"#), None);
        assert_eq!(sent_micros(r#"{"userId":"x"}"#), None);
    }

    #[test]
    fn a_receipt_before_the_send_counts_as_zero_latency() {
        assert_eq!(latency_micros(100, 40), 0);
        assert_eq!(latency_micros(100, 1_100), 1_000);
    }
}

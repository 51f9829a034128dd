//! The gateway's one error type, and its single conversion into what a client sees (a stable
//! `code`, a fixed message) and what a metric label may hold (the same bounded `code`).

use crate::auth::AuthError;

/// Everything that can go wrong in the gateway, named for the step that failed.
///
/// Refusals of client input carry the Node layer's exact message where one existed, because
/// existing apps match on those strings. Internal detail never reaches a client: `client_message`
/// is a fixed string per variant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("payload is not a JSON object of the expected shape")]
    InvalidPayload,
    #[error("invalid channel name")]
    InvalidChannel,
    #[error("invalid role")]
    InvalidRole,
    #[error("socket is not a member of the channel")]
    NotMember,
    #[error("message length out of bounds")]
    InvalidMessageLength,
    #[error("message is empty after sanitizing")]
    EmptyMessage,
    #[error("user is muted in the channel")]
    Muted,
    #[error("message rate limit exceeded")]
    MessageRateLimited,
    #[error("gift rate limit exceeded")]
    GiftRateLimited,
    #[error("invalid gift data")]
    InvalidGift,
    #[error("insufficient privileges")]
    Forbidden,
    #[error("invalid moderation action")]
    InvalidAction,
    #[error("mute without targetUserId")]
    InvalidTarget,
    #[error("socket is in the maximum number of channels")]
    TooManyChannels,
    #[error("connection sent more events than its budget allows")]
    TooManyEvents,
    #[error("joining as host needs a host token or the channel's asserted host")]
    HostNotAllowed,
    #[error("moderation reason is not a string of the allowed length")]
    InvalidReason,
    #[error("moderation rate limit exceeded")]
    ModerationRateLimited,
    #[error("invalid `since` or `history` in join")]
    InvalidHistory,
    #[error("authentication failed: {0}")]
    Unauthorized(#[from] AuthError),
    #[error("auth:refresh with a token for another user")]
    UserMismatch,
    #[error("request body is not a JSON object: {0}")]
    InvalidJson(String),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("too many console streams are open on this gateway")]
    TooManyStreams,
    #[error("configuration: {0}")]
    Config(#[from] live_api::ConfigError),
    #[error("startup: {0}")]
    Startup(String),
    #[error("verification keys: {0}")]
    Keys(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A stable snake_case identifier: part of the client protocol and the only error text that
    /// may become a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidRole => "invalid_role",
            Self::NotMember => "not_member",
            Self::InvalidMessageLength => "invalid_message_length",
            Self::EmptyMessage => "empty_message",
            Self::Muted => "muted",
            Self::MessageRateLimited | Self::GiftRateLimited | Self::ModerationRateLimited => {
                "rate_limited"
            }
            Self::InvalidGift => "invalid_gift",
            Self::Forbidden => "forbidden",
            Self::InvalidAction => "invalid_action",
            Self::InvalidTarget => "invalid_target",
            Self::TooManyChannels => "too_many_channels",
            Self::TooManyEvents => "too_many_events",
            Self::HostNotAllowed => "host_not_allowed",
            Self::InvalidReason => "invalid_reason",
            Self::InvalidHistory => "invalid_history",
            Self::Unauthorized(_) => "unauthorized",
            Self::UserMismatch => "user_mismatch",
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidField { .. } => "invalid_field",
            Self::TooManyStreams => "too_many_streams",
            Self::Config(_) => "config",
            Self::Startup(_) => "startup",
            Self::Keys(_) => "keys",
            Self::Io(_) => "io",
        }
    }

    /// The text a client sees. Fixed per variant (never formatted from internals), except for
    /// `InvalidField` and `InvalidJson`, whose text is built only from the request itself, so a
    /// backend author can see which field was wrong.
    pub fn client_message(&self) -> String {
        match self {
            Self::InvalidPayload => "Invalid payload".into(),
            Self::InvalidChannel => "Invalid channel name".into(),
            Self::InvalidRole => "Invalid role".into(),
            Self::NotMember => "Not a member of this channel".into(),
            Self::InvalidMessageLength => "Invalid message length".into(),
            Self::EmptyMessage => "Message cannot be empty".into(),
            Self::Muted => "You are muted in this channel".into(),
            Self::MessageRateLimited => "Rate limit exceeded for messages".into(),
            Self::GiftRateLimited => "Rate limit exceeded for gifts".into(),
            Self::InvalidGift => "Invalid gift data".into(),
            Self::Forbidden => "Insufficient privileges for moderation".into(),
            Self::InvalidAction => "Invalid moderation action".into(),
            Self::InvalidTarget => "Mute requires targetUserId".into(),
            Self::TooManyChannels => "Too many channels joined".into(),
            Self::TooManyEvents => "Too many events, slow down".into(),
            Self::HostNotAllowed => "Not allowed to join as host".into(),
            Self::InvalidReason => "Invalid moderation reason".into(),
            Self::ModerationRateLimited => "Rate limit exceeded for moderation".into(),
            Self::InvalidHistory => "Invalid history request".into(),
            Self::Unauthorized(_) => "unauthorized".into(),
            Self::UserMismatch => "The new token is for another user".into(),
            Self::InvalidJson(m) => format!("Invalid JSON body: {m}"),
            Self::InvalidField { field, reason } => format!("Invalid field `{field}`: {reason}"),
            Self::TooManyStreams => "Too many console streams are open; close one and retry".into(),
            Self::Config(_) | Self::Startup(_) | Self::Keys(_) | Self::Io(_) => {
                "Internal error".into()
            }
        }
    }

    /// The JSON body clients receive: `{code, message}`.
    pub fn to_client(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code(), "message": self.client_message() })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_node_layers_exact_texts() {
        assert_eq!(
            Error::InvalidMessageLength.client_message(),
            "Invalid message length"
        );
        assert_eq!(
            Error::EmptyMessage.client_message(),
            "Message cannot be empty"
        );
        assert_eq!(
            Error::MessageRateLimited.client_message(),
            "Rate limit exceeded for messages"
        );
        assert_eq!(
            Error::GiftRateLimited.client_message(),
            "Rate limit exceeded for gifts"
        );
        assert_eq!(Error::InvalidGift.client_message(), "Invalid gift data");
        assert_eq!(
            Error::Forbidden.client_message(),
            "Insufficient privileges for moderation"
        );
    }

    #[test]
    fn internal_errors_never_leak_detail_to_clients() {
        let e = Error::Startup("secret path /etc/x".into());
        assert_eq!(e.client_message(), "Internal error");
        assert_eq!(e.to_client()["code"], "startup");
    }
}

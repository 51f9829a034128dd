//! The gateway's hot-reloadable configuration: one Rust type that `live-operator` renders into a
//! ConfigMap and `live-gateway` reads back, so the two can never drift.
//!
//! Every field has a default, so an empty file (or `{}`) is a valid configuration. Unknown keys are
//! rejected: a misspelt key that silently did nothing would be worse than a refused reload.
//!
//! Everything in this type is applied by a running gateway within seconds of the file changing;
//! settings that need a restart (listeners, keys, Redis URL, drain window) are command-line flags
//! or environment variables instead.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The key under which the operator stores the config in its ConfigMap, and so the file name the
/// gateway finds in the mounted directory.
pub const CONFIG_FILE_NAME: &str = "gateway.yaml";

/// Upper bounds that keep a typo (an extra zero) from turning into an outage or a memory blow-up.
pub const MAX_RATE_PER_MINUTE: u32 = 100_000;
pub const MAX_MESSAGE_LENGTH: u32 = 10_000;
pub const MAX_GIFT_QTY: u32 = 1_000_000;
pub const MAX_MUTE_SECONDS: u64 = 30 * 24 * 3600;
pub const MAX_CHANNELS_PER_SOCKET: u32 = 1_000;
pub const MAX_REASON_LENGTH: u32 = 2_000;
/// A JWT larger than this cannot be a sane token: the cap on `limits.maxTokenBytes`.
pub const MAX_TOKEN_BYTES: u32 = 64 * 1024;
pub const MAX_EVENTS_PER_SECOND: u32 = 10_000;
pub const MAX_MUTES_PER_CHANNEL: u32 = 1_000_000;
/// The one origin-list entry that allows every browser origin (never with credentials).
pub const ANY_ORIGIN: &str = "*";

/// The gateway's hot-reloadable settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Per-user limits, counted over all of a user's connections.
    pub rate_limits: RateLimits,
    /// Which browser origins may connect.
    pub cors: Cors,
    /// Who may moderate, and how long a mute lasts by default.
    pub moderation: Moderation,
    /// Input limits for chat and gifts.
    pub limits: Limits,
    /// How presence is announced in large rooms.
    pub presence: Presence,
    /// Token lifecycle on live connections.
    pub auth: Auth,
    /// Channel history: offsets, recovery on reconnect, the late joiner's recent items.
    pub history: History,
}

/// Per-user limits over a fixed one-minute window that starts with the user's first event, and
/// the per-connection event budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RateLimits {
    /// Chat messages a user may send per minute (default 30).
    #[schemars(range(min = 1, max = 100_000))]
    pub messages_per_minute: u32,
    /// Gift announcements a user may send per minute (default 30).
    #[schemars(range(min = 1, max = 100_000))]
    pub gifts_per_minute: u32,
    /// Moderation decisions a user may send per minute (default 30).
    #[schemars(range(min = 1, max = 100_000))]
    pub moderation_per_minute: u32,
    /// Events of any name one connection may send per second, sustained (default 20). Every
    /// event counts: join, leave, chat, gifts, moderation, heartbeat and unknown names.
    #[schemars(range(min = 1, max = 10_000))]
    pub events_per_second: u32,
    /// Events one connection may send in a burst above `eventsPerSecond` (default 100). A
    /// connection that goes on sending this many events after running out is disconnected.
    #[schemars(range(min = 1, max = 10_000))]
    pub event_burst: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            messages_per_minute: 30,
            gifts_per_minute: 30,
            moderation_per_minute: 30,
            events_per_second: 20,
            event_burst: 100,
        }
    }
}

/// Browser origins allowed to open a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Cors {
    /// Exact origins (`scheme://host[:port]`), or `["*"]` for every origin (then without
    /// credentials). Absent: the gateway falls back to the `CORS_ALLOW` environment variable, and
    /// when that is unset too every browser origin is refused (unless the gateway runs with
    /// `--dev`). Present, even empty: this list wins over `CORS_ALLOW`; an empty list refuses
    /// every request that carries an `Origin` header (native mobile clients send none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
}

/// Moderation rights and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Moderation {
    /// Token `role` values that may moderate (default `["admin"]`).
    pub admin_roles: Vec<String>,
    /// Tokens whose `ogLevel` is at least this may moderate (default 5).
    pub min_og_level: u32,
    /// How long a `mute` lasts when the moderator gives no `durationSeconds` (default 300).
    #[schemars(range(min = 1, max = 2_592_000))]
    pub mute_seconds: u64,
    /// Active mutes kept per channel on one gateway; a new mute beyond it evicts the oldest
    /// (default 1000).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_mutes_per_channel: u32,
}

impl Default for Moderation {
    fn default() -> Self {
        Self {
            admin_roles: vec!["admin".to_owned()],
            min_og_level: 5,
            mute_seconds: 300,
            max_mutes_per_channel: 1000,
        }
    }
}

/// Input limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Limits {
    /// Longest chat message in characters, counted before sanitizing (default 500).
    #[schemars(range(min = 1, max = 10_000))]
    pub max_message_length: u32,
    /// Largest gift quantity (default 100).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_gift_qty: u32,
    /// Channels one connection may be in at once (default 32).
    #[schemars(range(min = 1, max = 1_000))]
    pub max_channels_per_socket: u32,
    /// Longest moderation `reason` in characters, counted before sanitizing (default 200).
    #[schemars(range(min = 1, max = 2_000))]
    pub max_reason_length: u32,
    /// Largest handshake token in bytes; a larger one is refused before its signature is
    /// checked (default 4096).
    #[schemars(range(min = 256, max = 65_536))]
    pub max_token_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_length: 500,
            max_gift_qty: 100,
            max_channels_per_socket: 32,
            max_reason_length: 200,
            max_token_bytes: 4096,
        }
    }
}

/// Presence announcements. In a small room every join and leave is announced at once
/// (`presence:update` and `system:event` per socket). In a room at or above `batchThreshold`
/// local members, that would cost O(members) per join, O(N²) for a join storm; there, joins and
/// leaves are collected and announced as one `presence:update` with `batched: true` per
/// `batchIntervalMs`, and no per-socket `system:event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Presence {
    /// Local members from which a room's presence is batched (default 200).
    #[schemars(range(min = 1, max = 1_000_000))]
    pub batch_threshold: u32,
    /// How often a batched room's presence is announced, in milliseconds (default 1000).
    #[schemars(range(min = 100, max = 60_000))]
    pub batch_interval_ms: u64,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            batch_threshold: 200,
            batch_interval_ms: 1000,
        }
    }
}

/// Longest notice lead: an hour.
pub const MAX_EXPIRING_NOTICE_SECONDS: u64 = 3600;

/// Token lifecycle on live connections. A connection whose token's `exp` nears gets
/// `auth:expiring`, and is disconnected at expiry unless the client sent `auth:refresh` with a
/// fresh token for the same user (see the gateway's protocol documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Auth {
    /// Seconds before a token's `exp` at which its connection gets `auth:expiring` (default 60;
    /// 0 sends it at `exp`, within the 5 s leeway before the disconnect). Also how long a
    /// connection whose key was retired has to refresh.
    #[schemars(range(min = 0, max = 3600))]
    pub expiring_notice_seconds: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            expiring_notice_seconds: 60,
        }
    }
}

/// Channel history (see docs/protocol.md, "History and recovery"). Every chat, gift, moderation
/// notice and backend `system:event` delivered to a channel gets a strictly increasing `offset`
/// in that channel's stream (named by its `epoch`) and is kept for recovery: a client that
/// reconnects asks for what it missed, a late joiner for the recent items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct History {
    /// Items kept per channel (default 200). `0` turns history off: no offsets, no recovery.
    /// A `join` asking for more recent items than this gets this many.
    #[schemars(range(min = 0, max = 10_000))]
    pub max_items: u32,
    /// How long an item is kept, in seconds (default 600).
    #[schemars(range(min = 1, max = 86_400))]
    pub max_age_seconds: u64,
    /// Without Redis: channels whose history one gateway keeps (default 5000). Past it, the
    /// channel written to least recently is forgotten (its recoveries answer `recovered: false`).
    /// With Redis, history lives in Redis and expires by `maxAgeSeconds`.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_channels: u32,
    /// Socket.IO Connection State Recovery for the stock `socket.io-client` (default true): the
    /// CONNECT reply carries a private session id, every history item carries its position as a
    /// last argument, and a client that reconnects within `maxDisconnectionSeconds` gets its
    /// channels and the items it missed back, with `socket.recovered === true`.
    pub connection_state_recovery: bool,
    /// How long after a disconnection its session can be recovered, in seconds (default 120).
    #[schemars(range(min = 1, max = 3600))]
    pub max_disconnection_seconds: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            max_items: 200,
            max_age_seconds: 600,
            max_channels: 5000,
            connection_state_recovery: true,
            max_disconnection_seconds: 120,
        }
    }
}

/// Upper bound of `history.maxItems`.
pub const MAX_HISTORY_ITEMS: u32 = 10_000;

/// Why a configuration was refused. The gateway keeps its last good config when it sees one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config is not valid YAML for the gateway schema: {0}")]
    Parse(String),
    #[error("config field `{field}` is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl GatewayConfig {
    /// Parses and validates a YAML document. An empty document is the default configuration.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Renders the YAML document the gateway reads. Serialization of these plain types cannot
    /// fail, so this is infallible.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Checks the bounds the schema documents, so a file written by hand is held to the same rules
    /// as a ConfigMap rendered from a validated `LiveRealtime`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + std::fmt::Display>(
            field: &'static str,
            value: T,
            min: T,
            max: T,
        ) -> Result<(), ConfigError> {
            if value < min || value > max {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("{value} is outside {min}..={max}"),
                });
            }
            Ok(())
        }
        range(
            "rateLimits.messagesPerMinute",
            self.rate_limits.messages_per_minute,
            1,
            MAX_RATE_PER_MINUTE,
        )?;
        range(
            "rateLimits.giftsPerMinute",
            self.rate_limits.gifts_per_minute,
            1,
            MAX_RATE_PER_MINUTE,
        )?;
        range(
            "rateLimits.moderationPerMinute",
            self.rate_limits.moderation_per_minute,
            1,
            MAX_RATE_PER_MINUTE,
        )?;
        range(
            "rateLimits.eventsPerSecond",
            self.rate_limits.events_per_second,
            1,
            MAX_EVENTS_PER_SECOND,
        )?;
        range(
            "rateLimits.eventBurst",
            self.rate_limits.event_burst,
            1,
            MAX_EVENTS_PER_SECOND,
        )?;
        range(
            "moderation.maxMutesPerChannel",
            self.moderation.max_mutes_per_channel,
            1,
            MAX_MUTES_PER_CHANNEL,
        )?;
        range(
            "limits.maxChannelsPerSocket",
            self.limits.max_channels_per_socket,
            1,
            MAX_CHANNELS_PER_SOCKET,
        )?;
        range(
            "limits.maxReasonLength",
            self.limits.max_reason_length,
            1,
            MAX_REASON_LENGTH,
        )?;
        range(
            "limits.maxTokenBytes",
            self.limits.max_token_bytes,
            256,
            MAX_TOKEN_BYTES,
        )?;
        range(
            "moderation.muteSeconds",
            self.moderation.mute_seconds,
            1,
            MAX_MUTE_SECONDS,
        )?;
        range(
            "limits.maxMessageLength",
            self.limits.max_message_length,
            1,
            MAX_MESSAGE_LENGTH,
        )?;
        range(
            "limits.maxGiftQty",
            self.limits.max_gift_qty,
            1,
            MAX_GIFT_QTY,
        )?;
        range(
            "presence.batchThreshold",
            self.presence.batch_threshold,
            1,
            1_000_000,
        )?;
        range(
            "presence.batchIntervalMs",
            self.presence.batch_interval_ms,
            100,
            60_000,
        )?;
        range(
            "auth.expiringNoticeSeconds",
            self.auth.expiring_notice_seconds,
            0,
            MAX_EXPIRING_NOTICE_SECONDS,
        )?;
        range(
            "history.maxItems",
            self.history.max_items,
            0,
            MAX_HISTORY_ITEMS,
        )?;
        range(
            "history.maxAgeSeconds",
            self.history.max_age_seconds,
            1,
            86_400,
        )?;
        range(
            "history.maxChannels",
            self.history.max_channels,
            1,
            1_000_000,
        )?;
        range(
            "history.maxDisconnectionSeconds",
            self.history.max_disconnection_seconds,
            1,
            3600,
        )?;
        if let Some(role) = self
            .moderation
            .admin_roles
            .iter()
            .find(|r| r.trim().is_empty())
        {
            return Err(ConfigError::Invalid {
                field: "moderation.adminRoles",
                reason: format!("role {role:?} is empty"),
            });
        }
        if let Some(list) = &self.cors.allowed_origins {
            validate_origin_list(list).map_err(|reason| ConfigError::Invalid {
                field: "cors.allowedOrigins",
                reason,
            })?;
        }
        Ok(())
    }
}

/// An origin list is exact origins, or `*` alone.
fn validate_origin_list(list: &[String]) -> Result<(), String> {
    if list.iter().any(|o| o == ANY_ORIGIN) {
        if list.len() > 1 {
            return Err(format!(
                "{ANY_ORIGIN:?} allows every origin and must be the only entry"
            ));
        }
        return Ok(());
    }
    list.iter().try_for_each(|o| validate_origin(o))
}

/// An allowed origin is what browsers send in `Origin`: `scheme://host[:port]`, nothing after.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| format!("origin {origin:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '*']) {
        return Err(format!(
            "origin {origin:?} must be scheme://host[:port] with no path, wildcard or trailing slash"
        ));
    }
    Ok(())
}

/// Parses a comma-separated origin list (the `CORS_ALLOW` variable): exact origins, or `*`
/// alone for every origin.
pub fn parse_origin_list(list: &str) -> Result<Vec<String>, String> {
    let origins: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    validate_origin_list(&origins)?;
    Ok(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_document_is_the_default_config() {
        assert_eq!(
            GatewayConfig::from_yaml("").unwrap(),
            GatewayConfig::default()
        );
        assert_eq!(
            GatewayConfig::from_yaml("{}\n").unwrap(),
            GatewayConfig::default()
        );
    }

    #[test]
    fn defaults_match_the_node_layer() {
        let c = GatewayConfig::default();
        assert_eq!(c.rate_limits.messages_per_minute, 30);
        assert_eq!(c.rate_limits.gifts_per_minute, 30);
        assert_eq!(c.limits.max_message_length, 500);
        assert_eq!(c.limits.max_gift_qty, 100);
        assert_eq!(c.moderation.admin_roles, vec!["admin"]);
        assert_eq!(c.moderation.min_og_level, 5);
        assert_eq!(c.moderation.mute_seconds, 300);
        assert_eq!(c.cors.allowed_origins, None);
        assert_eq!(c.presence.batch_threshold, 200);
        assert_eq!(c.presence.batch_interval_ms, 1000);
        assert_eq!(c.auth.expiring_notice_seconds, 60);
        assert_eq!(c.history.max_items, 200);
        assert_eq!(c.history.max_age_seconds, 600);
        assert!(c.history.connection_state_recovery);
        assert_eq!(c.history.max_disconnection_seconds, 120);
    }

    #[test]
    fn hardening_defaults_are_the_documented_safe_ones() {
        let c = GatewayConfig::default();
        assert_eq!(c.limits.max_channels_per_socket, 32);
        assert_eq!(c.limits.max_reason_length, 200);
        assert_eq!(c.limits.max_token_bytes, 4096);
        assert_eq!(c.rate_limits.moderation_per_minute, 30);
        assert_eq!(c.rate_limits.events_per_second, 20);
        assert_eq!(c.rate_limits.event_burst, 100);
        assert_eq!(c.moderation.max_mutes_per_channel, 1000);
    }

    #[test]
    fn a_star_allows_every_origin_only_on_its_own() {
        assert!(GatewayConfig::from_yaml("cors: {allowedOrigins: [\"*\"]}").is_ok());
        assert!(
            GatewayConfig::from_yaml("cors: {allowedOrigins: [\"*\", \"https://a.example\"]}")
                .is_err()
        );
        assert_eq!(parse_origin_list(" * ").unwrap(), vec!["*"]);
        assert!(parse_origin_list("*,https://a.example").is_err());
    }

    #[test]
    fn history_bounds_are_checked_and_zero_items_turns_it_off() {
        let c = GatewayConfig::from_yaml("history: {maxItems: 0}").unwrap();
        assert_eq!(c.history.max_items, 0);
        assert!(GatewayConfig::from_yaml("history: {maxItems: 10001}").is_err());
        assert!(GatewayConfig::from_yaml("history: {maxAgeSeconds: 0}").is_err());
        assert!(GatewayConfig::from_yaml("history: {maxChannels: 0}").is_err());
        assert!(GatewayConfig::from_yaml("history: {maxDisconnectionSeconds: 3601}").is_err());
        let c = GatewayConfig::from_yaml(
            "history: {maxItems: 50, maxAgeSeconds: 60, connectionStateRecovery: false}",
        )
        .unwrap();
        assert_eq!(c.history.max_items, 50);
        assert!(!c.history.connection_state_recovery);
    }

    #[test]
    fn the_documented_example_parses() {
        let c = GatewayConfig::from_yaml(
            "rateLimits: {messagesPerMinute: 10, giftsPerMinute: 3}\n\
             cors: {allowedOrigins: [\"https://staging.example.com\"]}\n\
             moderation: {adminRoles: [\"admin\", \"mod\"], minOgLevel: 4, muteSeconds: 60}\n\
             limits: {maxMessageLength: 200, maxGiftQty: 50}\n",
        )
        .unwrap();
        assert_eq!(c.rate_limits.messages_per_minute, 10);
        assert_eq!(c.rate_limits.gifts_per_minute, 3);
        assert_eq!(
            c.cors.allowed_origins,
            Some(vec!["https://staging.example.com".to_owned()])
        );
        assert_eq!(c.moderation.admin_roles, vec!["admin", "mod"]);
        assert_eq!(c.limits.max_gift_qty, 50);
    }

    #[test]
    fn yaml_round_trips() {
        let mut c = GatewayConfig::default();
        c.rate_limits.gifts_per_minute = 7;
        c.cors.allowed_origins = Some(vec!["http://localhost:3000".into()]);
        assert_eq!(GatewayConfig::from_yaml(&c.to_yaml()).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = GatewayConfig::from_yaml("rateLimits: {messagesPerMinut: 10}").unwrap_err();
        assert!(matches!(err, ConfigError::Parse(m) if m.contains("messagesPerMinut")));
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(matches!(
            GatewayConfig::from_yaml("rateLimits: {messagesPerMinute: lots}"),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            GatewayConfig::from_yaml("- a list"),
            Err(ConfigError::Parse(_))
        ));
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_field_name() {
        let err = GatewayConfig::from_yaml("rateLimits: {messagesPerMinute: 0}").unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid {
                field: "rateLimits.messagesPerMinute",
                reason: "0 is outside 1..=100000".into()
            }
        );
        assert!(GatewayConfig::from_yaml("limits: {maxMessageLength: 10001}").is_err());
        assert!(GatewayConfig::from_yaml("moderation: {muteSeconds: 0}").is_err());
        assert!(GatewayConfig::from_yaml("moderation: {adminRoles: [\" \"]}").is_err());
        assert!(GatewayConfig::from_yaml("presence: {batchIntervalMs: 10}").is_err());
        assert!(GatewayConfig::from_yaml("limits: {maxChannelsPerSocket: 0}").is_err());
        assert!(GatewayConfig::from_yaml("limits: {maxTokenBytes: 100}").is_err());
        assert!(GatewayConfig::from_yaml("rateLimits: {eventBurst: 0}").is_err());
        assert!(GatewayConfig::from_yaml("moderation: {maxMutesPerChannel: 0}").is_err());
        assert!(GatewayConfig::from_yaml("auth: {expiringNoticeSeconds: 3601}").is_err());
        assert!(GatewayConfig::from_yaml("auth: {expiringNoticeSeconds: 0}").is_ok());
    }

    #[test]
    fn origins_must_be_bare_scheme_host_port() {
        assert!(validate_origin("https://a.example.com").is_ok());
        assert!(validate_origin("http://localhost:3000").is_ok());
        assert!(validate_origin("https://a.example.com/").is_err());
        assert!(validate_origin("a.example.com").is_err());
        assert!(validate_origin("https://*.example.com").is_err());
        assert!(GatewayConfig::from_yaml("cors: {allowedOrigins: [\"ftp://x\"]}").is_err());
    }

    #[test]
    fn origin_lists_split_on_commas_and_skip_blanks() {
        assert_eq!(
            parse_origin_list(" https://a.example , http://localhost:3000,").unwrap(),
            vec!["https://a.example", "http://localhost:3000"]
        );
        assert!(parse_origin_list("https://a.example,nope").is_err());
    }
}

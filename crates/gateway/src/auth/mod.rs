//! Token verification for handshakes, `auth:refresh` and bridge calls.
//!
//! - [`keys`]: what a verification key is (one algorithm, an optional `kid`), how key material is
//!   parsed, the [`KeySet`] that picks the candidate keys for a token, and the [`KeyRing`] that
//!   merges the key sources into that set.
//! - [`files`]: `JWT_KEYS_DIR`, one key per file, reloaded on change.
//! - [`jwks`]: a JWKS document from a file (reloaded on change) or an HTTPS URL (cached).
//! - [`policy`]: which claims a token must carry, for a socket or for the bridge; pure, with the
//!   time passed in.
//! - [`verify`]: the [`Verifier`] that ties them together.
//!
//! A key's type decides its one algorithm (RSA → RS256, EC P-256 → ES256, a secret → HS256); a
//! token's `alg` header can never choose the key type, so `alg: none` and HS256 tokens signed
//! with a public key fail. Keys are never taken from a token's own headers (`jku`, `x5u`, `jwk`).

pub mod files;
pub mod jwks;
pub mod keys;
pub mod policy;
pub mod verify;
mod watch;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
pub use keys::{KeyMaterial, KeyRing, KeySet, KeySource, KeyTag};
pub use policy::{Purpose, TokenPolicy};
pub use verify::Verifier;

/// Clock skew tolerated on `exp`, `nbf` and the lifetime bounds, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;

/// Longest accepted `userId`, in bytes.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Why a token was refused. The client only ever sees `unauthorized`; this is for logs and the
/// bounded `reason` label of `ws_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in auth.token or the Authorization header")]
    MissingToken,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("no key for the token's algorithm, or its kid names a key of another algorithm")]
    WrongAlgorithm,
    #[error("the token's kid matches no configured key")]
    UnknownKid,
    #[error("signature does not verify with the configured key")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token's exp is further away than the maximum lifetime")]
    LifetimeTooLong,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer is missing or does not match")]
    WrongIssuer,
    #[error("token audience is missing or does not match")]
    WrongAudience,
    #[error("claims are missing or of the wrong type (userId must be a string of 1 to 128 bytes)")]
    InvalidClaims,
    #[error("token role may not call the bridge")]
    RoleNotAllowed,
}

impl AuthError {
    /// Bounded metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::MissingExp => "missing_exp",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaims => "invalid_claims",
            Self::RoleNotAllowed => "role_not_allowed",
        }
    }
}

/// The claims a token carries, as sent; [`TokenPolicy::check`] decides whether they are enough.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RawClaims {
    #[serde(rename = "userId")]
    pub user_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, rename = "ogLevel")]
    pub og_level: Option<f64>,
    #[serde(default)]
    pub role: Option<String>,
    /// JWT NumericDate: seconds, possibly fractional.
    #[serde(default)]
    pub exp: Option<f64>,
    #[serde(default)]
    pub nbf: Option<f64>,
    #[serde(default)]
    pub iss: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, aud: &str) -> bool {
        match self {
            Self::One(a) => a == aud,
            Self::Many(list) => list.iter().any(|a| a == aud),
        }
    }
}

/// The verified identity of a connection or bridge caller. A connection keeps it for its whole
/// life (replaced by `auth:refresh`), so it holds only what is used later.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub user_id: String,
    pub username: Option<String>,
    pub og_level: Option<f64>,
    pub role: Option<String>,
    /// `exp` in whole seconds since the Unix epoch; `None` only when `JWT_REQUIRE_EXP=false`.
    pub exp: Option<u64>,
    /// The key that verified the token, so a connection can be ended once that key is retired.
    pub key: KeyTag,
}

impl Claims {
    /// Claims for tests and dev tokens.
    pub fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            username: None,
            og_level: None,
            role: None,
            exp: None,
            key: KeyTag::default(),
        }
    }

    /// The verified claims of a token, keeping only what a connection needs later.
    pub fn verified(raw: RawClaims, key: KeyTag) -> Self {
        Self {
            user_id: raw.user_id,
            username: raw.username,
            og_level: raw.og_level,
            role: raw.role,
            // A fractional exp ends at its whole second; a negative one was refused as expired.
            exp: raw.exp.map(|e| e.max(0.0) as u64),
            key,
        }
    }

    /// Moderation right: a role in `admin_roles`, or an `ogLevel` of at least `min_og_level`.
    pub fn can_moderate(&self, moderation: &live_api::Moderation) -> bool {
        self.role
            .as_deref()
            .is_some_and(|r| moderation.admin_roles.iter().any(|a| a == r))
            || self
                .og_level
                .is_some_and(|l| l >= f64::from(moderation.min_og_level))
    }
}

/// Everything about keys and token rules the server is started with.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `JWT_SECRET` or `JWT_PUBLIC_KEY(_FILE)`: one key without a `kid`.
    pub key: Option<KeyMaterial>,
    /// `JWT_KEYS_DIR`.
    pub keys_dir: Option<std::path::PathBuf>,
    /// `JWT_JWKS_FILE`.
    pub jwks_file: Option<std::path::PathBuf>,
    /// `JWT_JWKS_URL` and its cache and TLS settings.
    pub jwks_url: Option<jwks::UrlSettings>,
    pub policy: TokenPolicy,
    /// `--dev`: HS256 secrets shorter than 32 bytes are accepted (with a warning).
    pub allow_weak_secrets: bool,
}

/// Loads every configured key source, starts their reloaders (until `stop`) and returns the
/// verifier. A key that cannot be loaded at startup is fatal; at most [`jwks::STARTUP_WAIT`] is
/// spent waiting for a JWKS URL.
pub async fn start(
    settings: &AuthSettings,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<Verifier> {
    let weak = settings.allow_weak_secrets;
    let env_key = settings
        .key
        .as_ref()
        .map(|m| keys::Key::from_material(m, weak))
        .transpose()
        .map_err(Error::Keys)?;
    let ring = KeyRing::new(env_key, metrics.clone());
    if let Some(dir) = &settings.keys_dir {
        let (keys, snapshot) = files::load(dir, weak).map_err(Error::Keys)?;
        ring.replace(KeySource::Dir, keys);
        files::spawn_reloader(
            dir.clone(),
            snapshot,
            weak,
            ring.clone(),
            metrics.clone(),
            stop.clone(),
        )
        .map_err(Error::Keys)?;
    }
    if let Some(path) = &settings.jwks_file {
        let (parsed, bytes) = jwks::load_file(path, weak).map_err(Error::Keys)?;
        for s in &parsed.skipped {
            tracing::info!("JWT_JWKS_FILE member skipped: {s}");
        }
        ring.replace(KeySource::Jwks, parsed.keys);
        jwks::spawn_file_reloader(
            path.clone(),
            bytes,
            weak,
            ring.clone(),
            metrics.clone(),
            stop.clone(),
        )
        .map_err(Error::Keys)?;
    }
    let refresh = match &settings.jwks_url {
        None => None,
        Some(url) => {
            let refresh = jwks::spawn_url(
                url.clone(),
                weak,
                ring.clone(),
                metrics.clone(),
                stop.clone(),
            )
            .map_err(Error::Keys)?;
            if !refresh.first_attempt(jwks::STARTUP_WAIT).await {
                tracing::warn!(url = %url.url, "JWT_JWKS_URL not fetched yet: serving, its keys follow when it answers");
            }
            Some(refresh)
        }
    };
    let set = ring.current();
    if set.is_empty() && settings.jwks_url.is_none() {
        return Err(Error::Keys("no verification key".into()));
    }
    tracing::info!(
        env = set.count(KeySource::Env),
        dir = set.count(KeySource::Dir),
        jwks = set.count(KeySource::Jwks),
        "verification keys loaded"
    );
    Ok(Verifier::with_keys(ring, settings.policy.clone(), refresh))
}

/// Picks the token from the handshake: `auth.token` first, else `Authorization: Bearer <jwt>`.
/// A `Bearer ` prefix inside `auth.token` is tolerated, as some clients send the header value.
pub fn token_from<'a>(
    auth: Option<&'a serde_json::Value>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    let from_auth = auth
        .and_then(|a| a.get("token"))
        .and_then(serde_json::Value::as_str)
        .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).trim())
        .filter(|t| !t.is_empty());
    from_auth.or_else(|| bearer(authorization?))
}

/// The token of an `Authorization: Bearer <jwt>` header value (scheme case-insensitive).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    /// The HS256 secret of the unit tests: 32 bytes, the shortest accepted outside `--dev`.
    pub(crate) const SECRET: &str = "test-secret-0123456789abcdefghij";

    /// An HS256 token signed with [`SECRET`], without a `kid`.
    pub(crate) fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn the_token_comes_from_auth_first_then_the_bearer_header() {
        let auth = json!({"token": "a.b.c"});
        assert_eq!(token_from(Some(&auth), Some("Bearer x.y.z")), Some("a.b.c"));
        assert_eq!(token_from(None, Some("Bearer x.y.z")), Some("x.y.z"));
        assert_eq!(token_from(None, Some("bearer x.y.z")), Some("x.y.z"));
        assert_eq!(token_from(Some(&json!({"token": 5})), None), None);
        assert_eq!(
            token_from(Some(&json!({"token": "Bearer q"})), None),
            Some("q")
        );
        assert_eq!(token_from(None, Some("Basic abc")), None);
        assert_eq!(token_from(None, None), None);
    }

    #[test]
    fn moderation_rights_follow_the_config() {
        let m = live_api::Moderation::default();
        let mut c = Claims::new("u");
        assert!(!c.can_moderate(&m));
        c.og_level = Some(5.0);
        assert!(c.can_moderate(&m));
        c.og_level = Some(4.0);
        assert!(!c.can_moderate(&m));
        c.role = Some("admin".into());
        assert!(c.can_moderate(&m));
        c.role = Some("service".into());
        assert!(!c.can_moderate(&m));
    }

    #[test]
    fn an_audience_is_a_string_or_a_list() {
        let one: Audience = serde_json::from_value(json!("live")).unwrap();
        assert!(one.contains("live") && !one.contains("x"));
        let many: Audience = serde_json::from_value(json!(["a", "live"])).unwrap();
        assert!(many.contains("live") && !many.contains("b"));
    }
}

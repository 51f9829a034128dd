//! JWT verification for handshakes and bridge calls: a pure function of the token, the configured
//! key and the current time.
//!
//! The accepted algorithm is pinned by configuration (`HS256` with a shared secret, or `RS256` /
//! `ES256` with a PEM public key), so a token's own `alg` header can never choose the key type:
//! `alg: none` and HS256-signed-with-the-public-key tokens fail. `exp` and `nbf` are checked here,
//! against a time the caller passes in, rather than by the library against the system clock.

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;

/// Why a token was refused. The client only ever sees `unauthorized`; this is for logs and the
/// bounded `reason` label of `ws_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token in auth.token or the Authorization header")]
    MissingToken,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token header names an algorithm other than the configured one")]
    WrongAlgorithm,
    #[error("signature does not verify with the configured key")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer does not match")]
    WrongIssuer,
    #[error("token audience does not match")]
    WrongAudience,
    #[error("claims are missing or of the wrong type (userId must be a string)")]
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
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaims => "invalid_claims",
            Self::RoleNotAllowed => "role_not_allowed",
        }
    }
}

/// The verified identity of a connection or bridge caller.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Claims {
    #[serde(rename = "userId")]
    pub user_id: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, rename = "ogLevel")]
    pub og_level: Option<f64>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
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
            nbf: None,
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

    /// Bridge right: a backend service or an admin.
    pub fn can_use_bridge(&self) -> bool {
        matches!(self.role.as_deref(), Some("service" | "admin"))
    }
}

/// How tokens are verified: which algorithm and key, and the optional issuer/audience checks.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// The key material a verifier is built from.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    Hs256Secret(String),
    Rs256Pem(String),
    Es256Pem(String),
}

impl Verifier {
    /// Builds a verifier; fails when the key cannot be parsed for its algorithm.
    pub fn new(
        key: &KeyMaterial,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, String> {
        let (alg, key) = match key {
            KeyMaterial::Hs256Secret(s) => {
                if s.is_empty() {
                    return Err("JWT_SECRET is empty".into());
                }
                (Algorithm::HS256, DecodingKey::from_secret(s.as_bytes()))
            }
            KeyMaterial::Rs256Pem(p) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(p.as_bytes())
                    .map_err(|e| format!("JWT_PUBLIC_KEY is not an RSA public key PEM: {e}"))?,
            ),
            KeyMaterial::Es256Pem(p) => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(p.as_bytes())
                    .map_err(|e| format!("JWT_PUBLIC_KEY is not an EC public key PEM: {e}"))?,
            ),
        };
        let mut validation = Validation::new(alg);
        // Time claims are checked by `verify` against the caller's clock; existing clients' tokens
        // may carry no `exp`, as the Node layer accepted.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = audience.is_some();
        // A configured issuer or audience must be present, not merely right when present.
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self { key, validation })
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    AuthError::InvalidClaims
                }
                // A JSON error can be the header (e.g. `alg: none`) or the claims.
                ErrorKind::Json(_) => match jsonwebtoken::decode_header(token) {
                    Ok(_) => AuthError::InvalidClaims,
                    Err(_) => AuthError::Malformed,
                },
                _ => AuthError::Malformed,
            },
        )?;
        let claims = data.claims;
        let now = now as f64;
        let leeway = LEEWAY_SECONDS as f64;
        if claims.exp.is_some_and(|exp| now > exp + leeway) {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if claims.user_id.is_empty() {
            return Err(AuthError::InvalidClaims);
        }
        Ok(claims)
    }
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
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    pub(crate) const SECRET: &str = "test-secret";
    const NOW: u64 = 1_800_000_000;

    pub(crate) fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(&KeyMaterial::Hs256Secret(SECRET.into()), None, None).unwrap()
    }

    // A P-256 key pair generated for these tests only.
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8ViV5Ww6VY8EZzwC
IFfhTAF+pWryg4tWY1Nf5JbAiSahRANCAASyl71XCzlqmM8UQ/SVdtR5a8+hGjWu
8IeisQhEdyJpJyIskCJ/EnrhYk+CKv3J8aihTyXnLy/GvC+PK7gaWXo0
-----END PRIVATE KEY-----";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEspe9Vws5apjPFEP0lXbUeWvPoRo1
rvCHorEIRHciaSciLJAifxJ64WJPgir9yfGooU8l5y8vxrwvjyu4Gll6NA==
-----END PUBLIC KEY-----";

    #[test]
    fn a_valid_hs256_token_yields_its_claims() {
        let t = hs256(json!({"userId": "u1", "username": "Ann", "ogLevel": 5, "role": "admin"}));
        let c = verifier().verify(&t, NOW).unwrap();
        assert_eq!(c.user_id, "u1");
        assert_eq!(c.username.as_deref(), Some("Ann"));
        assert_eq!(c.og_level, Some(5.0));
        assert_eq!(c.role.as_deref(), Some("admin"));
    }

    #[test]
    fn an_expired_token_is_refused_beyond_the_leeway() {
        let v = verifier();
        let t = hs256(json!({"userId": "u1", "exp": NOW - 10}));
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Expired));
        let t = hs256(json!({"userId": "u1", "exp": NOW - 3}));
        assert!(v.verify(&t, NOW).is_ok(), "within the leeway");
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let t = hs256(json!({"userId": "u1", "nbf": NOW + 60}));
        assert_eq!(verifier().verify(&t, NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let t = encode(
            &Header::new(Algorithm::HS256),
            &json!({"userId": "u1"}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert_eq!(verifier().verify(&t, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        use base64_url as b64;
        let t = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"userId":"u1"}"#)
        );
        assert!(verifier().verify(&t, NOW).is_err());
    }

    fn base64_url(s: &str) -> String {
        // Minimal unpadded base64url so the test needs no extra dependency.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &c)| n | (u32::from(c) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn the_wrong_algorithm_is_refused_even_with_the_right_secret() {
        let t = encode(
            &Header::new(Algorithm::HS512),
            &json!({"userId": "u1"}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier().verify(&t, NOW), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn es256_verifies_and_refuses_the_public_key_used_as_an_hmac_secret() {
        let v = Verifier::new(&KeyMaterial::Es256Pem(EC_PUBLIC.into()), None, None).unwrap();
        let good = encode(
            &Header::new(Algorithm::ES256),
            &json!({"userId": "u1"}),
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&good, NOW).unwrap().user_id, "u1");
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &json!({"userId": "u1"}),
            &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&confused, NOW), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn a_missing_or_non_string_user_id_is_refused() {
        let v = verifier();
        assert_eq!(
            v.verify(&hs256(json!({"username": "x"})), NOW),
            Err(AuthError::InvalidClaims)
        );
        assert_eq!(
            v.verify(&hs256(json!({"userId": 42})), NOW),
            Err(AuthError::InvalidClaims)
        );
        assert_eq!(
            v.verify(&hs256(json!({"userId": ""})), NOW),
            Err(AuthError::InvalidClaims)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(
            verifier().verify("not.a.jwt", NOW),
            Err(AuthError::Malformed)
        );
        assert_eq!(verifier().verify("", NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let v = Verifier::new(
            &KeyMaterial::Hs256Secret(SECRET.into()),
            Some("https://auth.example"),
            Some("live"),
        )
        .unwrap();
        let ok = hs256(json!({"userId": "u", "iss": "https://auth.example", "aud": "live"}));
        assert!(v.verify(&ok, NOW).is_ok());
        let bad_iss = hs256(json!({"userId": "u", "iss": "https://evil", "aud": "live"}));
        assert_eq!(v.verify(&bad_iss, NOW), Err(AuthError::WrongIssuer));
        let bad_aud = hs256(json!({"userId": "u", "iss": "https://auth.example", "aud": "x"}));
        assert_eq!(v.verify(&bad_aud, NOW), Err(AuthError::WrongAudience));
        let no_iss = hs256(json!({"userId": "u", "aud": "live"}));
        assert_eq!(v.verify(&no_iss, NOW), Err(AuthError::InvalidClaims));
        let no_aud = hs256(json!({"userId": "u", "iss": "https://auth.example"}));
        assert_eq!(v.verify(&no_aud, NOW), Err(AuthError::InvalidClaims));
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
        assert!(c.can_use_bridge());
    }
}

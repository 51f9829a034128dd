//! The verifier: picks the candidate keys for a token from the current key set, checks the
//! signature, then the claims against the token policy. Verification itself is a pure function of
//! the token, the key set, the policy and the time passed in; only an unknown `kid` with a JWKS
//! URL configured waits (briefly) for a refetch of the document.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use tokio::sync::watch;

use super::jwks::JwksRefresh;
use super::keys::{Key, KeyMaterial, KeyRing, KeySet};
use super::policy::{Purpose, TokenPolicy};
use super::{AuthError, Claims, RawClaims};
use crate::metrics::Metrics;

/// Verifies tokens against the live key set. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Verifier {
    /// Holds the sender side, so the set stays current and its updates observable for as long as
    /// any verifier lives.
    keys: Arc<KeyRing>,
    policy: Arc<TokenPolicy>,
    /// Present with `JWT_JWKS_URL`: asked to refetch the document when a token names an unknown
    /// `kid` (an identity provider that just rotated).
    jwks: Option<JwksRefresh>,
}

impl Verifier {
    /// A verifier over a ring's live key set.
    pub fn with_keys(keys: Arc<KeyRing>, policy: TokenPolicy, jwks: Option<JwksRefresh>) -> Self {
        Self {
            keys,
            policy: Arc::new(policy),
            jwks,
        }
    }

    /// A verifier with one static key and the default policy (plus `issuer` / `audience`), for
    /// tests and embedders.
    pub fn new(
        key: &KeyMaterial,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, String> {
        let key = Key::from_material(key, false)?;
        let ring = KeyRing::new(Some(key), Metrics::new());
        let policy = TokenPolicy {
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            ..TokenPolicy::default()
        };
        Ok(Self::with_keys(ring, policy, None))
    }

    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// The key set in force now.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.keys.current()
    }

    /// A receiver that sees every future change of the key set.
    pub fn key_updates(&self) -> watch::Receiver<Arc<KeySet>> {
        self.keys.subscribe()
    }

    /// Verifies `token` for `purpose` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, purpose: Purpose, now: u64) -> Result<Claims, AuthError> {
        verify_with(&self.key_set(), &self.policy, token, purpose, now)
    }

    /// Like [`Verifier::verify`], but a token whose `kid` is unknown makes the JWKS URL (when
    /// configured) be fetched again, rate-limited, and is verified once more if that brought new
    /// keys. `now` is read after any wait.
    pub async fn verify_fresh(
        &self,
        token: &str,
        purpose: Purpose,
        now: impl Fn() -> u64,
    ) -> Result<Claims, AuthError> {
        match self.verify(token, purpose, now()) {
            Err(AuthError::UnknownKid) => match &self.jwks {
                Some(jwks) if jwks.refetch_for_unknown_kid().await => {
                    self.verify(token, purpose, now())
                }
                _ => Err(AuthError::UnknownKid),
            },
            other => other,
        }
    }
}

/// The verification decision: header, key selection, signature, then policy.
pub fn verify_with(
    set: &KeySet,
    policy: &TokenPolicy,
    token: &str,
    purpose: Purpose,
    now: u64,
) -> Result<Claims, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    let mut refusal = AuthError::BadSignature;
    for key in set.candidates(header.kid.as_deref(), header.alg)? {
        match jsonwebtoken::decode::<RawClaims>(token, key.decoding(), key.validation()) {
            Ok(data) => {
                policy.check(&data.claims, purpose, now)?;
                return Ok(Claims::verified(data.claims, key.tag()));
            }
            Err(e) => match classify(&e) {
                // Another key of the same algorithm may be the one.
                AuthError::BadSignature => continue,
                other => {
                    refusal = other;
                    break;
                }
            },
        }
    }
    Err(refusal)
}

fn classify(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        // The signature verified (it is checked first), so the claims are what is wrong.
        ErrorKind::Json(_)
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_) => AuthError::InvalidClaims,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeySource;
    use crate::auth::keys::tests::{EC_PRIVATE, EC_PUBLIC, SECRET_A, SECRET_B};
    use crate::auth::tests::{SECRET, hs256};
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn verifier() -> Verifier {
        Verifier::new(&KeyMaterial::Hs256Secret(SECRET.into()), None, None).unwrap()
    }

    fn user(extra: serde_json::Value) -> serde_json::Value {
        let mut v = json!({"userId": "u1", "exp": NOW + 600});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    }

    fn signed(kid: Option<&str>, secret: &[u8], claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn ring_set(keys: Vec<Key>) -> Arc<KeySet> {
        let ring = KeyRing::new(None, Metrics::new());
        ring.replace(KeySource::Dir, keys);
        ring.current()
    }

    fn dir_key(kid: &str, secret: &[u8]) -> Key {
        Key::hs256(Some(kid), secret, KeySource::Dir, false).unwrap()
    }

    #[test]
    fn a_valid_hs256_token_yields_its_claims_and_its_key() {
        let v = verifier();
        let t = hs256(user(
            json!({"username": "Ann", "ogLevel": 5, "role": "admin"}),
        ));
        let c = v.verify(&t, Purpose::Socket, NOW).unwrap();
        assert_eq!(c.user_id, "u1");
        assert_eq!(c.username.as_deref(), Some("Ann"));
        assert_eq!(c.og_level, Some(5.0));
        assert_eq!(c.role.as_deref(), Some("admin"));
        assert_eq!(c.exp, Some(NOW + 600));
        assert!(v.key_set().contains(c.key));
    }

    #[test]
    fn a_token_without_exp_is_refused_by_default() {
        let t = hs256(json!({"userId": "u1"}));
        assert_eq!(
            verifier().verify(&t, Purpose::Socket, NOW),
            Err(AuthError::MissingExp)
        );
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let t = signed(None, b"other-secret-0123456789abcdefghij", user(json!({})));
        assert_eq!(
            verifier().verify(&t, Purpose::Socket, NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        let t = format!(
            "{}.{}.",
            base64_url(r#"{"alg":"none","typ":"JWT"}"#),
            base64_url(&user(json!({})).to_string())
        );
        assert_eq!(
            verifier().verify(&t, Purpose::Socket, NOW),
            Err(AuthError::Malformed)
        );
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
            &user(json!({})),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verifier().verify(&t, Purpose::Socket, NOW),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn es256_verifies_and_refuses_the_public_key_used_as_an_hmac_secret() {
        let v = Verifier::new(&KeyMaterial::Es256Pem(EC_PUBLIC.into()), None, None).unwrap();
        let good = encode(
            &Header::new(Algorithm::ES256),
            &user(json!({})),
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&good, Purpose::Socket, NOW).unwrap().user_id, "u1");
        let confused = signed(None, EC_PUBLIC.as_bytes(), user(json!({})));
        assert_eq!(
            v.verify(&confused, Purpose::Socket, NOW),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn a_missing_or_non_string_user_id_is_refused() {
        let v = verifier();
        for claims in [
            json!({"username": "x", "exp": NOW + 60}),
            json!({"userId": 42, "exp": NOW + 60}),
            json!({"userId": "", "exp": NOW + 60}),
            json!({"userId": "x".repeat(129), "exp": NOW + 60}),
        ] {
            assert_eq!(
                v.verify(&hs256(claims), Purpose::Socket, NOW),
                Err(AuthError::InvalidClaims)
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let v = verifier();
        assert_eq!(
            v.verify("not.a.jwt", Purpose::Socket, NOW),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            v.verify("", Purpose::Socket, NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn two_keys_verify_their_own_tokens_by_kid() {
        let set = ring_set(vec![dir_key("a", SECRET_A), dir_key("b", SECRET_B)]);
        let p = TokenPolicy::default();
        let ta = signed(Some("a"), SECRET_A, user(json!({})));
        let tb = signed(Some("b"), SECRET_B, user(json!({})));
        let ca = verify_with(&set, &p, &ta, Purpose::Socket, NOW).unwrap();
        let cb = verify_with(&set, &p, &tb, Purpose::Socket, NOW).unwrap();
        assert_ne!(ca.key, cb.key);
        // A token claiming kid "a" but signed with b's secret does not verify.
        let lying = signed(Some("a"), SECRET_B, user(json!({})));
        assert_eq!(
            verify_with(&set, &p, &lying, Purpose::Socket, NOW),
            Err(AuthError::BadSignature)
        );
        let unknown = signed(Some("c"), SECRET_A, user(json!({})));
        assert_eq!(
            verify_with(&set, &p, &unknown, Purpose::Socket, NOW),
            Err(AuthError::UnknownKid)
        );
    }

    #[test]
    fn a_token_without_kid_verifies_with_whichever_key_of_its_algorithm_signed_it() {
        let set = ring_set(vec![dir_key("a", SECRET_A), dir_key("b", SECRET_B)]);
        let p = TokenPolicy::default();
        let t = signed(None, SECRET_B, user(json!({})));
        let c = verify_with(&set, &p, &t, Purpose::Socket, NOW).unwrap();
        assert_eq!(c.key, dir_key("b", SECRET_B).tag());
    }

    #[test]
    fn claims_are_checked_after_the_signature_for_the_purpose() {
        let v = verifier();
        let admin = hs256(user(json!({"role": "admin"})));
        assert!(v.verify(&admin, Purpose::Socket, NOW).is_ok());
        assert_eq!(
            v.verify(&admin, Purpose::Bridge, NOW),
            Err(AuthError::RoleNotAllowed)
        );
        let service = hs256(user(json!({"role": "service", "aud": "live-bridge"})));
        assert!(v.verify(&service, Purpose::Bridge, NOW).is_ok());
    }
}

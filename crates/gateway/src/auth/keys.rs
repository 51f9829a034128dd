//! Verification keys: one key and its one algorithm, the parsing of key material (PEM public keys,
//! HS256 secrets, JWKS members), the [`KeySet`] that picks the candidate keys for a token, and the
//! [`KeyRing`] that merges the key sources into the set every handshake reads.
//!
//! Key selection (pure, [`KeySet::candidates`]):
//! - a token with a `kid` is verified with the key of that `kid` only; no such key is
//!   `unknown_kid`, a key of another algorithm than the token's `alg` is `wrong_algorithm`;
//! - a token without a `kid` is tried against every key whose algorithm is the token's `alg`, in
//!   order: the `JWT_SECRET` / `JWT_PUBLIC_KEY` key, then the `JWT_KEYS_DIR` files by name, then
//!   the JWKS keys in document order. No key of that algorithm is `wrong_algorithm`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::watch;

use super::AuthError;
use crate::metrics::Metrics;
use crate::state::lock;

/// Shortest HS256 secret accepted outside `--dev`: 256 bits, the size of the HMAC-SHA-256 output
/// (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The key material of `JWT_SECRET` / `JWT_PUBLIC_KEY(_FILE)`.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    Hs256Secret(String),
    Rs256Pem(String),
    Es256Pem(String),
}

/// Identifies a key by its content (kid, algorithm and material), so the same key loaded again
/// from a reloaded file keeps its identity and the connections it verified live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyTag(u64);

/// Where a key came from; also the bounded `source` label of `live_jwt_keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// `JWT_SECRET` or `JWT_PUBLIC_KEY(_FILE)`.
    Env,
    /// A file in `JWT_KEYS_DIR`.
    Dir,
    /// A JWKS document (`JWT_JWKS_FILE` or `JWT_JWKS_URL`).
    Jwks,
}

impl KeySource {
    pub const ALL: [KeySource; 3] = [Self::Env, Self::Dir, Self::Jwks];

    pub fn label(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::Dir => "dir",
            Self::Jwks => "jwks",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Env => 0,
            Self::Dir => 1,
            Self::Jwks => 2,
        }
    }
}

/// One verification key, good for exactly one algorithm.
#[derive(Clone)]
pub struct Key {
    kid: Option<String>,
    alg: Algorithm,
    decoding: DecodingKey,
    validation: Validation,
    tag: KeyTag,
    source: KeySource,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the material: an HS256 secret is a credential.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The parts of a key's material that identify it.
enum Material<'a> {
    Bytes(&'a [u8]),
    Strings(&'a [&'a str]),
}

impl Key {
    fn build(
        kid: Option<&str>,
        alg: Algorithm,
        decoding: DecodingKey,
        material: Material<'_>,
        source: KeySource,
    ) -> Self {
        let mut h = DefaultHasher::new();
        kid.hash(&mut h);
        format!("{alg:?}").hash(&mut h);
        match material {
            Material::Bytes(b) => b.hash(&mut h),
            Material::Strings(s) => s.hash(&mut h),
        }
        let mut validation = Validation::new(alg);
        // The library checks the signature and that the header's alg is this key's; every claim
        // is checked by `TokenPolicy` against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Self {
            kid: kid.map(str::to_owned),
            alg,
            decoding,
            validation,
            tag: KeyTag(h.finish()),
            source,
        }
    }

    /// An HS256 key. Secrets shorter than [`MIN_HS256_SECRET_BYTES`] are refused unless
    /// `allow_weak` (`--dev`).
    pub fn hs256(
        kid: Option<&str>,
        secret: &[u8],
        source: KeySource,
        allow_weak: bool,
    ) -> Result<Self, String> {
        if secret.is_empty() {
            return Err("the HS256 secret is empty".into());
        }
        if secret.len() < MIN_HS256_SECRET_BYTES && !allow_weak {
            return Err(format!(
                "the HS256 secret is {} bytes; at least {MIN_HS256_SECRET_BYTES} are required (e.g. `openssl rand -hex 32`; --dev accepts shorter ones)",
                secret.len()
            ));
        }
        Ok(Self::build(
            kid,
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            Material::Bytes(secret),
            source,
        ))
    }

    /// An RS256 key from a PEM RSA public key (SPKI or PKCS#1).
    pub fn rs256_pem(kid: Option<&str>, pem: &[u8], source: KeySource) -> Result<Self, String> {
        refuse_private_pem(pem)?;
        let decoding = DecodingKey::from_rsa_pem(pem)
            .map_err(|e| format!("not an RSA public key PEM: {e}"))?;
        Ok(Self::build(
            kid,
            Algorithm::RS256,
            decoding,
            Material::Bytes(pem),
            source,
        ))
    }

    /// An ES256 key from a PEM EC public key, which must be on P-256.
    pub fn es256_pem(kid: Option<&str>, pem: &[u8], source: KeySource) -> Result<Self, String> {
        refuse_private_pem(pem)?;
        let decoding =
            DecodingKey::from_ec_pem(pem).map_err(|e| format!("not an EC public key PEM: {e}"))?;
        if !is_p256_point(decoding.try_get_as_bytes().unwrap_or_default()) {
            return Err("the EC public key is not on P-256 (ES256 needs P-256)".into());
        }
        Ok(Self::build(
            kid,
            Algorithm::ES256,
            decoding,
            Material::Bytes(pem),
            source,
        ))
    }

    /// The key of one `JWT_KEYS_DIR` file: a PEM public key (RSA → RS256, EC P-256 → ES256) or
    /// else an HS256 secret (the file's bytes, a trailing newline trimmed).
    pub fn from_file(kid: &str, bytes: &[u8], allow_weak: bool) -> Result<Self, String> {
        if contains(bytes, b"-----BEGIN") {
            refuse_private_pem(bytes)?;
            return Self::rs256_pem(Some(kid), bytes, KeySource::Dir).or_else(|rsa| {
                Self::es256_pem(Some(kid), bytes, KeySource::Dir).map_err(|ec| {
                    format!("a PEM file that is neither an RSA public key ({rsa}) nor a P-256 EC public key ({ec})")
                })
            });
        }
        let secret = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        Self::hs256(Some(kid), secret, KeySource::Dir, allow_weak)
    }

    /// The `JWT_SECRET` / `JWT_PUBLIC_KEY` key (no `kid`).
    pub fn from_material(material: &KeyMaterial, allow_weak: bool) -> Result<Self, String> {
        match material {
            KeyMaterial::Hs256Secret(s) => {
                Self::hs256(None, s.as_bytes(), KeySource::Env, allow_weak)
                    .map_err(|e| format!("JWT_SECRET: {e}"))
            }
            KeyMaterial::Rs256Pem(p) => Self::rs256_pem(None, p.as_bytes(), KeySource::Env)
                .map_err(|e| format!("JWT_PUBLIC_KEY: {e}")),
            KeyMaterial::Es256Pem(p) => Self::es256_pem(None, p.as_bytes(), KeySource::Env)
                .map_err(|e| format!("JWT_PUBLIC_KEY: {e}")),
        }
    }

    /// A JWKS `RSA` member (base64url `n` and `e`).
    pub fn rsa_components(kid: Option<&str>, n: &str, e: &str) -> Result<Self, String> {
        let decoding = DecodingKey::from_rsa_components(n, e)
            .map_err(|err| format!("invalid RSA n/e: {err}"))?;
        Ok(Self::build(
            kid,
            Algorithm::RS256,
            decoding,
            Material::Strings(&[n, e]),
            KeySource::Jwks,
        ))
    }

    /// A JWKS `EC` P-256 member (base64url `x` and `y`).
    pub fn ec_components(kid: Option<&str>, x: &str, y: &str) -> Result<Self, String> {
        let decoding = DecodingKey::from_ec_components(x, y)
            .map_err(|err| format!("invalid EC x/y: {err}"))?;
        if !is_p256_point(decoding.try_get_as_bytes().unwrap_or_default()) {
            return Err("x/y are not 32-byte P-256 coordinates".into());
        }
        Ok(Self::build(
            kid,
            Algorithm::ES256,
            decoding,
            Material::Strings(&[x, y]),
            KeySource::Jwks,
        ))
    }

    /// A JWKS `oct` member (base64url `k`), an HS256 secret.
    pub fn oct(kid: Option<&str>, k: &str, allow_weak: bool) -> Result<Self, String> {
        // The library decodes base64url for JWKs; borrow that rather than carry a decoder.
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::json!({"kty": "oct", "k": k}))
                .map_err(|e| format!("invalid oct key: {e}"))?;
        let decoded = DecodingKey::from_jwk(&jwk).map_err(|e| format!("invalid oct k: {e}"))?;
        let secret = decoded.try_get_as_bytes().unwrap_or_default().to_vec();
        Self::hs256(kid, &secret, KeySource::Jwks, allow_weak)
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn tag(&self) -> KeyTag {
        self.tag
    }

    pub fn source(&self) -> KeySource {
        self.source
    }

    pub(crate) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    pub(crate) fn validation(&self) -> &Validation {
        &self.validation
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A private key mounted where a public one belongs is an operator mistake worth a clear error
/// (and the gateway should not hold it).
fn refuse_private_pem(pem: &[u8]) -> Result<(), String> {
    if contains(pem, b"PRIVATE KEY-----") {
        return Err("this PEM is a private key; mount the public key".into());
    }
    Ok(())
}

/// An uncompressed (`04 || x || y`, 65 bytes) or compressed (33 bytes) SEC1 point is P-256;
/// P-384 and P-521 points are longer.
fn is_p256_point(point: &[u8]) -> bool {
    matches!(
        (point.len(), point.first()),
        (65, Some(4)) | (33, Some(2 | 3))
    )
}

/// The keys a token may be verified with, in the order they are tried.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
    by_kid: HashMap<String, usize>,
}

/// The keys to try for one token.
#[derive(Debug)]
pub enum Candidates<'a> {
    One(Option<&'a Key>),
    ByAlg(std::slice::Iter<'a, Arc<Key>>, Algorithm),
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Key;

    fn next(&mut self) -> Option<&'a Key> {
        match self {
            Self::One(k) => k.take(),
            Self::ByAlg(iter, alg) => iter.by_ref().map(|k| &**k).find(|k| k.alg == *alg),
        }
    }
}

impl KeySet {
    /// Builds the set from keys in their try order. A second key with a `kid` already taken is
    /// left out; its description is returned so the caller can log it.
    pub fn new(keys: impl IntoIterator<Item = Arc<Key>>) -> (Self, Vec<String>) {
        let mut set = Self::default();
        let mut dropped = Vec::new();
        for key in keys {
            if let Some(kid) = &key.kid {
                if set.by_kid.contains_key(kid) {
                    dropped.push(format!(
                        "kid {kid:?} from {} is already defined; the first definition wins",
                        key.source.label()
                    ));
                    continue;
                }
                set.by_kid.insert(kid.clone(), set.keys.len());
            }
            set.keys.push(key);
        }
        (set, dropped)
    }

    /// The keys to try for a token whose header says `kid` and `alg`.
    pub fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Candidates<'_>, AuthError> {
        match kid {
            Some(kid) => {
                let key = self
                    .by_kid
                    .get(kid)
                    .map(|&i| &*self.keys[i])
                    .ok_or(AuthError::UnknownKid)?;
                if key.alg != alg {
                    return Err(AuthError::WrongAlgorithm);
                }
                Ok(Candidates::One(Some(key)))
            }
            None => {
                if !self.keys.iter().any(|k| k.alg == alg) {
                    return Err(AuthError::WrongAlgorithm);
                }
                Ok(Candidates::ByAlg(self.keys.iter(), alg))
            }
        }
    }

    /// Whether the key that verified a connection's token is still in the set.
    pub fn contains(&self, tag: KeyTag) -> bool {
        self.keys.iter().any(|k| k.tag == tag)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys from `source`.
    pub fn count(&self, source: KeySource) -> usize {
        self.keys.iter().filter(|k| k.source == source).count()
    }

    /// Identities of the keys, in order: two sets with the same tags verify the same tokens.
    fn tags(&self) -> impl Iterator<Item = KeyTag> + '_ {
        self.keys.iter().map(|k| k.tag)
    }
}

/// Merges the key sources into one [`KeySet`] and publishes every change to it.
///
/// Each source replaces only its own part (a reloaded `JWT_KEYS_DIR` never drops the JWKS keys),
/// under one lock, so two sources reloading at once cannot lose each other's update.
#[derive(Debug)]
pub struct KeyRing {
    parts: Mutex<[Vec<Arc<Key>>; 3]>,
    tx: watch::Sender<Arc<KeySet>>,
    metrics: Metrics,
}

impl KeyRing {
    /// A ring holding the environment's key, if any.
    pub fn new(env: Option<Key>, metrics: Metrics) -> Arc<Self> {
        let (tx, _) = watch::channel(Arc::new(KeySet::default()));
        let ring = Arc::new(Self {
            parts: Mutex::default(),
            tx,
            metrics,
        });
        ring.replace(KeySource::Env, env.into_iter().collect());
        ring
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<KeySet> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every future change of the set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.tx.subscribe()
    }

    /// Replaces the keys of `source` and publishes the merged set when it changed. Returns whether
    /// it changed.
    pub fn replace(&self, source: KeySource, keys: Vec<Key>) -> bool {
        let mut parts = lock(&self.parts);
        parts[source.index()] = keys.into_iter().map(Arc::new).collect();
        let (set, dropped) = KeySet::new(parts.iter().flatten().cloned());
        for d in dropped {
            tracing::warn!("{d}");
        }
        for s in KeySource::ALL {
            self.metrics
                .jwt_keys
                .with_label_values(&[s.label()])
                .set(i64::try_from(set.count(s)).unwrap_or(i64::MAX));
        }
        self.tx.send_if_modified(|current| {
            if current.tags().eq(set.tags()) {
                return false;
            }
            *current = Arc::new(set);
            true
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SECRET_A: &[u8] = b"key-a-0123456789abcdef0123456789";
    pub(crate) const SECRET_B: &[u8] = b"key-b-0123456789abcdef0123456789";

    // A P-256 key pair generated for these tests only.
    pub(crate) const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg8ViV5Ww6VY8EZzwC
IFfhTAF+pWryg4tWY1Nf5JbAiSahRANCAASyl71XCzlqmM8UQ/SVdtR5a8+hGjWu
8IeisQhEdyJpJyIskCJ/EnrhYk+CKv3J8aihTyXnLy/GvC+PK7gaWXo0
-----END PRIVATE KEY-----";
    pub(crate) const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEspe9Vws5apjPFEP0lXbUeWvPoRo1
rvCHorEIRHciaSciLJAifxJ64WJPgir9yfGooU8l5y8vxrwvjyu4Gll6NA==
-----END PUBLIC KEY-----";
    // A P-384 public key: a valid EC key that ES256 must not take.
    const P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEqT6073eni9bq3dE66qFdI+HSjFLoNnao
s2t6+4gLVd1AWvlQwSJMe/aokCSy1SD+LdNawIUvwvM2MCUYm3UUI6WpSefaayHN
gwwToJmHwTHziTDBnS+0QQFuYINEpWxS
-----END PUBLIC KEY-----";

    fn hs(kid: Option<&str>, secret: &[u8]) -> Arc<Key> {
        Arc::new(Key::hs256(kid, secret, KeySource::Dir, false).unwrap())
    }

    fn es(kid: Option<&str>) -> Arc<Key> {
        Arc::new(Key::es256_pem(kid, EC_PUBLIC.as_bytes(), KeySource::Dir).unwrap())
    }

    fn kids(c: Candidates<'_>) -> Vec<Option<String>> {
        c.map(|k| k.kid.clone()).collect()
    }

    #[test]
    fn a_kid_picks_exactly_its_key() {
        let (set, _) = KeySet::new([hs(Some("a"), SECRET_A), hs(Some("b"), SECRET_B)]);
        let c = set.candidates(Some("b"), Algorithm::HS256).unwrap();
        assert_eq!(kids(c), [Some("b".to_owned())]);
    }

    #[test]
    fn a_kid_that_matches_no_key_is_unknown() {
        let (set, _) = KeySet::new([hs(Some("a"), SECRET_A), hs(None, SECRET_B)]);
        assert!(matches!(
            set.candidates(Some("zz"), Algorithm::HS256),
            Err(AuthError::UnknownKid)
        ));
    }

    #[test]
    fn a_kid_of_another_algorithm_is_refused_rather_than_trusted() {
        let (set, _) = KeySet::new([es(Some("ec")), hs(Some("hs"), SECRET_A)]);
        assert!(matches!(
            set.candidates(Some("ec"), Algorithm::HS256),
            Err(AuthError::WrongAlgorithm)
        ));
        assert!(matches!(
            set.candidates(Some("hs"), Algorithm::RS256),
            Err(AuthError::WrongAlgorithm)
        ));
    }

    #[test]
    fn without_a_kid_every_key_of_the_tokens_algorithm_is_tried_in_order() {
        let (set, _) = KeySet::new([hs(None, SECRET_A), es(Some("ec")), hs(Some("b"), SECRET_B)]);
        let c = set.candidates(None, Algorithm::HS256).unwrap();
        assert_eq!(kids(c), [None, Some("b".to_owned())]);
        let c = set.candidates(None, Algorithm::ES256).unwrap();
        assert_eq!(kids(c), [Some("ec".to_owned())]);
        assert!(matches!(
            set.candidates(None, Algorithm::RS256),
            Err(AuthError::WrongAlgorithm)
        ));
    }

    #[test]
    fn a_duplicate_kid_keeps_the_first_definition() {
        let (set, dropped) = KeySet::new([hs(Some("a"), SECRET_A), hs(Some("a"), SECRET_B)]);
        assert_eq!(set.len(), 1);
        assert_eq!(dropped.len(), 1);
        assert!(set.contains(hs(Some("a"), SECRET_A).tag));
    }

    #[test]
    fn a_key_keeps_its_tag_when_loaded_again_and_changes_it_with_its_material() {
        assert_eq!(hs(Some("a"), SECRET_A).tag, hs(Some("a"), SECRET_A).tag);
        assert_ne!(hs(Some("a"), SECRET_A).tag, hs(Some("a"), SECRET_B).tag);
        assert_ne!(hs(Some("a"), SECRET_A).tag, hs(Some("b"), SECRET_A).tag);
    }

    #[test]
    fn short_hs256_secrets_are_refused_outside_dev() {
        let short = b"0123456789abcdef0123456789abcde"; // 31 bytes
        let err = Key::hs256(None, short, KeySource::Env, false).unwrap_err();
        assert!(err.contains("31 bytes"), "{err}");
        assert!(Key::hs256(None, short, KeySource::Env, true).is_ok());
        assert!(Key::hs256(None, b"", KeySource::Env, true).is_err());
        assert!(Key::hs256(None, &short[..], KeySource::Env, false).is_err());
        let err = Key::from_material(&KeyMaterial::Hs256Secret("x".into()), false).unwrap_err();
        assert!(err.starts_with("JWT_SECRET"), "{err}");
    }

    #[test]
    fn a_key_file_is_a_pem_public_key_or_else_a_secret_with_its_newline_trimmed() {
        let ec = Key::from_file("ec1", EC_PUBLIC.as_bytes(), false).unwrap();
        assert_eq!((ec.alg, ec.kid()), (Algorithm::ES256, Some("ec1")));
        let with_newline = [SECRET_A, b"\n"].concat();
        let hs = Key::from_file("hs1", &with_newline, false).unwrap();
        assert_eq!(hs.alg, Algorithm::HS256);
        assert_eq!(
            hs.tag,
            Key::hs256(Some("hs1"), SECRET_A, KeySource::Dir, false)
                .unwrap()
                .tag
        );
        // A 31-byte secret with its newline is still 31 bytes.
        assert!(Key::from_file("short", b"0123456789abcdef0123456789abcde\n", false).is_err());
    }

    #[test]
    fn a_private_key_or_another_curve_is_not_a_verification_key() {
        let err = Key::from_file("priv", EC_PRIVATE.as_bytes(), false).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        let err = Key::from_file("p384", P384_PUBLIC.as_bytes(), false).unwrap_err();
        assert!(err.contains("P-256"), "{err}");
        assert!(Key::from_file("junk", b"-----BEGIN PUBLIC KEY-----\nxx\n", false).is_err());
    }

    #[test]
    fn the_ring_publishes_a_change_of_keys_and_not_a_reload_of_the_same_ones() {
        let ring = KeyRing::new(None, Metrics::new());
        let mut rx = ring.subscribe();
        let a = || Key::hs256(Some("a"), SECRET_A, KeySource::Dir, false).unwrap();
        assert!(ring.replace(KeySource::Dir, vec![a()]));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!ring.replace(KeySource::Dir, vec![a()]));
        assert!(!rx.has_changed().unwrap());
        // Another source's keys are kept when one source reloads.
        let jwks = Key::oct(
            Some("j"),
            "a2V5LWotMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk",
            false,
        )
        .unwrap();
        assert!(ring.replace(KeySource::Jwks, vec![jwks]));
        assert!(ring.replace(KeySource::Dir, vec![]));
        let set = ring.current();
        assert_eq!((set.len(), set.count(KeySource::Jwks)), (1, 1));
    }
}

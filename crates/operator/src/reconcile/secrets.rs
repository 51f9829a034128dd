//! The Secrets a LiveRealtime references: which ones must exist, which ones the pods read only
//! at start (and so are hashed into the pod template, so rotating one rolls the pods), and
//! their digest. Pure; the reads are in [`super::apply`].

use std::collections::BTreeSet;

use super::sha256_hex;
use crate::crd::{LiveRealtime, RedisMode};

/// One referenced Secret (and key, when only one key is used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Secret name, in the LiveRealtime's namespace.
    pub name: String,
    /// The key used; `None` for a Secret mounted whole (JWT keys), which needs at least one.
    pub key: Option<String>,
    /// The gateway reloads it at runtime (JWT keys): not hashed into the pod template.
    pub reloaded: bool,
    /// Which spec field, for messages.
    pub field: &'static str,
}

/// Every Secret the user's spec references (not the generated Redis password). Pure.
pub fn references(lr: &LiveRealtime) -> Vec<Reference> {
    let spec = &lr.spec;
    let key_ref = |r: &crate::crd::SecretKeyRef, field| Reference {
        name: r.name.clone(),
        key: Some(r.key.clone()),
        reloaded: false,
        field,
    };
    let mut out = Vec::new();
    if let Some(r) = &spec.jwt_secret_ref {
        out.push(key_ref(r, "spec.jwtSecretRef"));
    }
    if let Some(p) = &spec.jwt_public_key {
        out.push(key_ref(&p.secret_ref, "spec.jwtPublicKey.secretRef"));
    }
    if let Some(r) = &spec.jwt_keys_secret_ref {
        out.push(Reference {
            name: r.name.clone(),
            key: None,
            reloaded: true,
            field: "spec.jwtKeysSecretRef",
        });
    }
    if spec.redis.mode == RedisMode::External {
        if let Some(r) = &spec.redis.url_secret_ref {
            out.push(key_ref(r, "spec.redis.urlSecretRef"));
        }
        if let Some(r) = &spec.redis.password_secret_ref {
            out.push(key_ref(r, "spec.redis.passwordSecretRef"));
        }
        if let Some(r) = spec
            .redis
            .tls
            .as_ref()
            .and_then(|t| t.ca_secret_ref.as_ref())
        {
            out.push(key_ref(r, "spec.redis.tls.caSecretRef"));
        }
    }
    out
}

/// Names of every Secret whose change should trigger a reconcile of `lr` (the watch mapper):
/// the references and the generated Redis password. Pure.
pub fn watched_names(lr: &LiveRealtime) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = references(lr).into_iter().map(|r| r.name).collect();
    if lr.spec.redis.mode == RedisMode::Managed {
        names.insert(super::redis_name(lr));
    }
    names
}

/// Incremental digest of (secret, key, value) triples, in a stable order.
#[derive(Clone, Debug, Default)]
pub struct Digest {
    parts: Vec<(String, String, Vec<u8>)>,
}

impl Digest {
    /// Adds one value.
    pub fn add(&mut self, name: &str, key: &str, value: &[u8]) {
        self.parts
            .push((name.to_owned(), key.to_owned(), value.to_vec()));
    }

    /// The sha256 over every part (sorted, length-prefixed so parts cannot run together).
    pub fn finish(mut self) -> String {
        self.parts.sort();
        let mut bytes = Vec::new();
        for (name, key, value) in &self.parts {
            for field in [name.as_bytes(), key.as_bytes(), value.as_slice()] {
                bytes.extend((field.len() as u64).to_be_bytes());
                bytes.extend(field);
            }
        }
        sha256_hex(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_references_are_hashed_and_jwt_keys_are_not() {
        let mut lr = LiveRealtime::test();
        lr.spec.jwt_keys_secret_ref = Some(crate::crd::SecretRef {
            name: "keys".into(),
        });
        let refs = references(&lr);
        assert_eq!(refs.len(), 2);
        assert!(!refs[0].reloaded && refs[0].key.as_deref() == Some("secret"));
        assert!(refs[1].reloaded && refs[1].key.is_none());
        let names = watched_names(&lr);
        assert!(names.contains("chat-redis") && names.contains("keys"));
    }

    #[test]
    fn the_digest_changes_with_any_value_and_not_with_order() {
        let mut a = Digest::default();
        a.add("s", "k", b"one");
        a.add("t", "k", b"two");
        let mut b = Digest::default();
        b.add("t", "k", b"two");
        b.add("s", "k", b"one");
        let mut c = Digest::default();
        c.add("s", "k", b"one");
        c.add("t", "k", b"twO");
        let (a, b, c) = (a.finish(), b.finish(), c.finish());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

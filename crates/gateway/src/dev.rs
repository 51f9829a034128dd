//! Dev mode: ready-made tokens and copy-paste examples, so `live-gateway --dev` is useful with no
//! setup at all. Never used unless `--dev` is given.

use std::net::SocketAddr;

use jsonwebtoken::{EncodingKey, Header, encode};
use rand::RngCore;
use serde_json::json;

use crate::auth::TokenPolicy;
use crate::state::unix_seconds;

/// User tokens last a day (or the configured maximum lifetime, if shorter): long enough for a
/// dev session, short enough not to be worth stealing. The bridge token lasts as long as service
/// tokens may (an hour by default).
const DEV_TOKEN_SECONDS: u64 = 24 * 3600;

/// A fresh random HS256 secret (256 bits, hex).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signed dev tokens that pass `policy`: (name, token).
pub fn tokens(secret: &str, policy: &TokenPolicy) -> Vec<(&'static str, String)> {
    let now = unix_seconds();
    let exp = now + DEV_TOKEN_SECONDS.min(policy.max_lifetime);
    let service_exp = now + policy.service_max_lifetime;
    // The user audience, when one is required; the service audience for the bridge token.
    let aud = policy.audience.as_deref();
    let iss = policy.issuer.as_deref();
    let key = EncodingKey::from_secret(secret.as_bytes());
    [
        ("viewer", json!({"userId": "viewer-1", "username": "Viewer One", "role": "viewer", "exp": exp, "iat": now, "aud": aud, "iss": iss})),
        ("admin", json!({"userId": "admin-1", "username": "Admin", "role": "admin", "ogLevel": 5, "exp": exp, "iat": now, "aud": aud, "iss": iss})),
        ("bridge", json!({"userId": "backend", "username": "Backend", "role": "service", "exp": service_exp, "iat": now, "aud": policy.service_audience, "iss": iss})),
    ]
    .into_iter()
    .filter_map(|(name, mut claims)| {
        // Absent rather than null: a null `aud` or `iss` is not a missing one to every verifier.
        if let Some(o) = claims.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        encode(&Header::default(), &claims, &key)
            .ok()
            .map(|t| (name, t))
    })
    .collect()
}

/// The banner printed on stdout in dev mode.
pub fn banner(
    secret: Option<&str>,
    tokens: &[(&str, String)],
    public: SocketAddr,
    admin: SocketAddr,
) -> String {
    let host = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            format!("127.0.0.1:{}", a.port())
        } else {
            a.to_string()
        }
    };
    let token = |name: &str| {
        tokens
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.as_str())
            .unwrap_or_default()
    };
    let mut out = String::from("live-gateway dev mode: NOT for production\n");
    if let Some(s) = secret {
        out.push_str(&format!("  generated JWT_SECRET (HS256): {s}\n"));
    }
    for (name, t) in tokens {
        out.push_str(&format!("  {name} token: {t}\n"));
    }
    let (p, a) = (host(public), host(admin));
    out.push_str(&format!(
        r#"
Connect with socket.io-client (npm i socket.io-client):
  const {{ io }} = require("socket.io-client");
  const s = io("http://{p}/live", {{ path: "/ws", auth: {{ token: "{viewer}" }} }});
  s.on("connect", () => s.emit("join", {{ channelName: "demo" }}, console.log));
  s.on("chat:new", console.log); s.on("gift:new", console.log);

Publish a gift from a backend:
  curl -i -X POST http://{a}/v1/channels/demo/gift \
    -H "Authorization: Bearer {bridge}" -H "Content-Type: application/json" \
    -d '{{"from":"viewer-1","giftId":"rose","qty":1}}'

Console: http://{a}/console (sign in with the admin token)
Metrics: curl http://{a}/metrics
"#,
        viewer = token("viewer"),
        bridge = token("bridge"),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeyMaterial, Purpose, Verifier};

    #[test]
    fn dev_tokens_verify_with_their_secret_and_carry_the_right_roles() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 64);
        let v = Verifier::new(&KeyMaterial::Hs256Secret(secret.clone()), None, None).unwrap();
        let toks = tokens(&secret, v.policy());
        let roles: Vec<_> = toks
            .iter()
            .map(|(_, t)| {
                v.verify(t, Purpose::Socket, unix_seconds())
                    .unwrap()
                    .role
                    .unwrap()
            })
            .collect();
        assert_eq!(roles, ["viewer", "admin", "service"]);
        // The bridge token is a service token; the admin one may not drive the bridge.
        let now = unix_seconds();
        assert!(v.verify(&toks[2].1, Purpose::Bridge, now).is_ok());
        assert!(v.verify(&toks[1].1, Purpose::Bridge, now).is_err());
        let b = banner(
            Some(&secret),
            &toks,
            "0.0.0.0:3000".parse().unwrap(),
            "0.0.0.0:9091".parse().unwrap(),
        );
        assert!(b.contains("http://127.0.0.1:3000/live"));
        assert!(b.contains(&toks[2].1));
        assert!(b.contains("http://127.0.0.1:9091/console"));
    }

    #[test]
    fn dev_tokens_follow_a_required_audience_and_issuer() {
        let secret = generate_secret();
        let v = Verifier::new(
            &KeyMaterial::Hs256Secret(secret.clone()),
            Some("https://issuer.dev"),
            Some("live"),
        )
        .unwrap();
        let now = unix_seconds();
        for (name, t) in tokens(&secret, v.policy()) {
            let purpose = if name == "bridge" {
                Purpose::Bridge
            } else {
                Purpose::Socket
            };
            assert!(v.verify(&t, purpose, now).is_ok(), "{name}");
        }
    }
}

//! Dev mode: ready-made tokens and copy-paste examples, so `live-gateway --dev` is useful with no
//! setup at all. Never used unless `--dev` is given.

use std::net::SocketAddr;

use jsonwebtoken::{EncodingKey, Header, encode};
use rand::RngCore;
use serde_json::json;

use crate::state::unix_seconds;

/// Tokens last a day: long enough for a dev session, short enough not to be worth stealing.
const DEV_TOKEN_SECONDS: u64 = 24 * 3600;

/// A fresh random HS256 secret (256 bits, hex).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signed dev tokens: (name, token).
pub fn tokens(secret: &str) -> Vec<(&'static str, String)> {
    let exp = unix_seconds() + DEV_TOKEN_SECONDS;
    let key = EncodingKey::from_secret(secret.as_bytes());
    [
        ("viewer", json!({"userId": "viewer-1", "username": "Viewer One", "role": "viewer", "exp": exp})),
        ("admin", json!({"userId": "admin-1", "username": "Admin", "role": "admin", "ogLevel": 5, "exp": exp})),
        ("bridge", json!({"userId": "backend", "username": "Backend", "role": "service", "exp": exp})),
    ]
    .into_iter()
    .filter_map(|(name, claims)| {
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
    use crate::auth::{KeyMaterial, Verifier};

    #[test]
    fn dev_tokens_verify_with_their_secret_and_carry_the_right_roles() {
        let secret = generate_secret();
        assert_eq!(secret.len(), 64);
        let v = Verifier::new(&KeyMaterial::Hs256Secret(secret.clone()), None, None).unwrap();
        let toks = tokens(&secret);
        let roles: Vec<_> = toks
            .iter()
            .map(|(_, t)| v.verify(t, unix_seconds()).unwrap().role.unwrap())
            .collect();
        assert_eq!(roles, ["viewer", "admin", "service"]);
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
}

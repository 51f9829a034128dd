//! Which claims a token must carry, and for what: a pure decision over the claims, the token's
//! purpose and the current time (passed in), made after the signature verified.
//!
//! Two kinds of token share the keys:
//! - **user tokens** open Socket.IO connections (and, with `LIVE_BRIDGE_ALLOW_ADMIN=true`, an
//!   `admin`-role user token may also call the bridge): `aud` must hold `JWT_AUDIENCE` when that is
//!   set, and `exp` may be at most `JWT_MAX_LIFETIME_SECONDS` away;
//! - **service tokens** drive the bridge: `role: "service"`, `aud` holding the service audience
//!   (`JWT_SERVICE_AUDIENCE`, default `live-bridge`), and an `exp` at most
//!   `JWT_SERVICE_MAX_LIFETIME_SECONDS` (default 1 h) away, always required. A moderator's app
//!   token (role `admin`, no service audience) therefore cannot drive the bridge.
//!
//! The lifetime bound is on `exp - now`, the time a token still has to live when it is
//! presented, not on `exp - iat`: `iat` is optional and says nothing about how long a stolen
//! token stays useful.

use super::{AuthError, LEEWAY_SECONDS, MAX_USER_ID_BYTES, RawClaims};

/// What a token is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A Socket.IO handshake or `auth:refresh`.
    Socket,
    /// A call to the HTTP bridge on the admin listener.
    Bridge,
}

/// The default service audience.
pub const DEFAULT_SERVICE_AUDIENCE: &str = "live-bridge";
/// Default bound on how far away a user token's `exp` may be: a day.
pub const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 24 * 3600;
/// Default bound on how far away a service token's `exp` may be: an hour.
pub const DEFAULT_SERVICE_MAX_LIFETIME_SECONDS: u64 = 3600;

/// The token rules the gateway runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Required `iss` (`JWT_ISSUER`), for every token.
    pub issuer: Option<String>,
    /// Required `aud` of user tokens (`JWT_AUDIENCE`).
    pub audience: Option<String>,
    /// Whether user tokens must carry `exp` (`JWT_REQUIRE_EXP`, default true). Service tokens
    /// always must.
    pub require_exp: bool,
    /// Largest `exp - now` of a user token, in seconds (`JWT_MAX_LIFETIME_SECONDS`).
    pub max_lifetime: u64,
    /// The `aud` a service token must hold (`JWT_SERVICE_AUDIENCE`).
    pub service_audience: String,
    /// Largest `exp - now` of a service token, in seconds (`JWT_SERVICE_MAX_LIFETIME_SECONDS`).
    pub service_max_lifetime: u64,
    /// Whether `admin`-role user tokens may call the bridge (`LIVE_BRIDGE_ALLOW_ADMIN`).
    pub bridge_allows_admin: bool,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            require_exp: true,
            max_lifetime: DEFAULT_MAX_LIFETIME_SECONDS,
            service_audience: DEFAULT_SERVICE_AUDIENCE.to_owned(),
            service_max_lifetime: DEFAULT_SERVICE_MAX_LIFETIME_SECONDS,
            bridge_allows_admin: false,
        }
    }
}

impl TokenPolicy {
    /// Whether claims whose signature verified are good for `purpose` at `now` (seconds since
    /// the Unix epoch).
    pub fn check(&self, c: &RawClaims, purpose: Purpose, now: u64) -> Result<(), AuthError> {
        let now_f = now as f64;
        let leeway = LEEWAY_SECONDS as f64;
        if let Some(iss) = &self.issuer
            && c.iss.as_deref() != Some(iss.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }
        if c.exp.is_some_and(|exp| now_f > exp + leeway) {
            return Err(AuthError::Expired);
        }
        if c.nbf.is_some_and(|nbf| now_f + leeway < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if c.user_id.is_empty() || c.user_id.len() > MAX_USER_ID_BYTES {
            return Err(AuthError::InvalidClaims);
        }
        let service = match purpose {
            Purpose::Socket => false,
            Purpose::Bridge => match c.role.as_deref() {
                Some("service") => true,
                Some("admin") if self.bridge_allows_admin => false,
                _ => return Err(AuthError::RoleNotAllowed),
            },
        };
        let (audience, max_lifetime, require_exp) = if service {
            (
                Some(self.service_audience.as_str()),
                self.service_max_lifetime,
                true,
            )
        } else {
            (
                self.audience.as_deref(),
                self.max_lifetime,
                self.require_exp,
            )
        };
        if let Some(aud) = audience
            && !c.aud.as_ref().is_some_and(|a| a.contains(aud))
        {
            return Err(AuthError::WrongAudience);
        }
        match c.exp {
            None if require_exp => Err(AuthError::MissingExp),
            Some(exp) if exp - now_f > (max_lifetime + LEEWAY_SECONDS) as f64 => {
                Err(AuthError::LifetimeTooLong)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn claims(v: serde_json::Value) -> RawClaims {
        serde_json::from_value(v).unwrap()
    }

    /// `base` with `extra`'s fields added or replaced.
    fn with(mut base: serde_json::Value, extra: serde_json::Value) -> RawClaims {
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims(base)
    }

    fn user(extra: serde_json::Value) -> RawClaims {
        with(json!({"userId": "u1", "exp": NOW + 600}), extra)
    }

    fn service(extra: serde_json::Value) -> RawClaims {
        let base =
            json!({"userId": "svc", "exp": NOW + 600, "role": "service", "aud": "live-bridge"});
        with(base, extra)
    }

    #[test]
    fn a_user_token_with_a_near_exp_is_good_for_a_socket() {
        let p = TokenPolicy::default();
        assert_eq!(p.check(&user(json!({})), Purpose::Socket, NOW), Ok(()));
    }

    #[test]
    fn exp_is_required_by_default_and_optional_when_configured() {
        let no_exp = claims(json!({"userId": "u1"}));
        let p = TokenPolicy::default();
        assert_eq!(
            p.check(&no_exp, Purpose::Socket, NOW),
            Err(AuthError::MissingExp)
        );
        let lax = TokenPolicy {
            require_exp: false,
            ..TokenPolicy::default()
        };
        assert_eq!(lax.check(&no_exp, Purpose::Socket, NOW), Ok(()));
    }

    #[test]
    fn the_lifetime_bound_is_on_exp_minus_now_with_the_leeway() {
        let p = TokenPolicy {
            max_lifetime: 3600,
            ..TokenPolicy::default()
        };
        let at_bound = user(json!({"exp": NOW + 3600 + LEEWAY_SECONDS}));
        assert_eq!(p.check(&at_bound, Purpose::Socket, NOW), Ok(()));
        let beyond = user(json!({"exp": NOW + 3600 + LEEWAY_SECONDS + 1}));
        assert_eq!(
            p.check(&beyond, Purpose::Socket, NOW),
            Err(AuthError::LifetimeTooLong)
        );
        // The same token is fine once enough of its life has passed.
        assert_eq!(p.check(&beyond, Purpose::Socket, NOW + 2), Ok(()));
    }

    #[test]
    fn expiry_and_nbf_have_five_seconds_of_leeway() {
        let p = TokenPolicy::default();
        let expired = user(json!({"exp": NOW - 10}));
        assert_eq!(
            p.check(&expired, Purpose::Socket, NOW),
            Err(AuthError::Expired)
        );
        assert_eq!(
            p.check(&user(json!({"exp": NOW - 3})), Purpose::Socket, NOW),
            Ok(())
        );
        assert_eq!(
            p.check(&user(json!({"nbf": NOW + 60})), Purpose::Socket, NOW),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            p.check(&user(json!({"nbf": NOW + 3})), Purpose::Socket, NOW),
            Ok(())
        );
    }

    #[test]
    fn a_user_id_longer_than_128_bytes_is_refused() {
        let p = TokenPolicy::default();
        let ok = user(json!({"userId": "é".repeat(64)}));
        assert_eq!(p.check(&ok, Purpose::Socket, NOW), Ok(()));
        let long = user(json!({"userId": "é".repeat(64) + "x"}));
        assert_eq!(
            p.check(&long, Purpose::Socket, NOW),
            Err(AuthError::InvalidClaims)
        );
        assert_eq!(
            p.check(&user(json!({"userId": ""})), Purpose::Socket, NOW),
            Err(AuthError::InvalidClaims)
        );
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let p = TokenPolicy {
            issuer: Some("https://auth.example".into()),
            audience: Some("live".into()),
            ..TokenPolicy::default()
        };
        let ok = user(json!({"iss": "https://auth.example", "aud": ["x", "live"]}));
        assert_eq!(p.check(&ok, Purpose::Socket, NOW), Ok(()));
        for (bad, why) in [
            (
                json!({"iss": "https://evil", "aud": "live"}),
                AuthError::WrongIssuer,
            ),
            (json!({"aud": "live"}), AuthError::WrongIssuer),
            (
                json!({"iss": "https://auth.example", "aud": "x"}),
                AuthError::WrongAudience,
            ),
            (
                json!({"iss": "https://auth.example"}),
                AuthError::WrongAudience,
            ),
        ] {
            assert_eq!(p.check(&user(bad), Purpose::Socket, NOW), Err(why));
        }
    }

    #[test]
    fn the_bridge_takes_service_tokens_with_the_service_audience_and_a_short_exp() {
        let p = TokenPolicy::default();
        assert_eq!(p.check(&service(json!({})), Purpose::Bridge, NOW), Ok(()));
        // Without the service audience, or with another one.
        let no_aud = user(json!({"role": "service"}));
        assert_eq!(
            p.check(&no_aud, Purpose::Bridge, NOW),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            p.check(&service(json!({"aud": "live"})), Purpose::Bridge, NOW),
            Err(AuthError::WrongAudience)
        );
        // A service token lives at most an hour, and must say when it ends.
        assert_eq!(
            p.check(&service(json!({"exp": NOW + 7200})), Purpose::Bridge, NOW),
            Err(AuthError::LifetimeTooLong)
        );
        let lax = TokenPolicy {
            require_exp: false,
            ..TokenPolicy::default()
        };
        let no_exp = claims(json!({"userId": "svc", "role": "service", "aud": "live-bridge"}));
        assert_eq!(
            lax.check(&no_exp, Purpose::Bridge, NOW),
            Err(AuthError::MissingExp)
        );
    }

    #[test]
    fn admin_tokens_reach_the_bridge_only_when_allowed() {
        let admin = user(json!({"role": "admin", "ogLevel": 9}));
        let p = TokenPolicy::default();
        assert_eq!(
            p.check(&admin, Purpose::Bridge, NOW),
            Err(AuthError::RoleNotAllowed)
        );
        let allowing = TokenPolicy {
            bridge_allows_admin: true,
            ..TokenPolicy::default()
        };
        assert_eq!(allowing.check(&admin, Purpose::Bridge, NOW), Ok(()));
        // Allowed admin tokens are user tokens: the user audience and lifetime apply.
        let with_aud = TokenPolicy {
            audience: Some("live".into()),
            ..allowing.clone()
        };
        assert_eq!(
            with_aud.check(&admin, Purpose::Bridge, NOW),
            Err(AuthError::WrongAudience)
        );
        for role in [
            json!({}),
            json!({"role": "viewer"}),
            json!({"role": "host"}),
        ] {
            assert_eq!(
                allowing.check(&user(role), Purpose::Bridge, NOW),
                Err(AuthError::RoleNotAllowed)
            );
        }
    }

    #[test]
    fn a_service_token_on_a_socket_is_an_ordinary_user_token() {
        let p = TokenPolicy::default();
        let service = user(json!({"role": "service", "aud": "live-bridge"}));
        assert_eq!(p.check(&service, Purpose::Socket, NOW), Ok(()));
    }
}

//! Who may use the console: a token the HTTP bridge would accept (a backend's service token:
//! role `service`, the service audience, a short `exp`), or a user token whose role is `admin`.
//! The console can end streams and mute users, so a viewer or moderator token is refused however
//! high its `ogLevel`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use socketioxide::adapter::Adapter;

use super::Console;
use crate::auth::{AuthError, Claims, Purpose, bearer};
use crate::error::Error;
use crate::state::AppState;

/// The role that may always sign in to the console.
pub const ADMIN_ROLE: &str = "admin";

/// Whether the verified claims of a *user* token may use the console. Pure. (Service tokens are
/// verified as the bridge verifies them, which checks their role itself.)
pub fn user_may_sign_in(claims: &Claims) -> bool {
    claims.role.as_deref() == Some(ADMIN_ROLE)
}

/// Verifies `token` now: as a bridge token first, else as a user token that must pass
/// [`user_may_sign_in`].
pub async fn check(st: &AppState, token: &str) -> Result<Claims, Error> {
    if let Ok(claims) = st.verify(token, Purpose::Bridge).await {
        return Ok(claims);
    }
    let claims = st.verify(token, Purpose::Socket).await?;
    if !user_may_sign_in(&claims) {
        return Err(AuthError::RoleNotAllowed.into());
    }
    Ok(claims)
}

/// A signed-in console user: the verified claims, and the token itself so that a long-lived
/// stream can verify it again (expiry, a retired key).
#[derive(Debug, Clone)]
pub struct Operator {
    pub claims: Arc<Claims>,
    token: Arc<str>,
}

impl Operator {
    /// Verifies the token again, now.
    pub async fn reverify(&self, st: &AppState) -> Result<(), Error> {
        check(st, &self.token).await.map(|_| ())
    }
}

/// Why a request did not sign in. Handlers take `Result<Operator, Refused>` and answer it
/// through the console's one response conversion, under their own route label.
#[derive(Debug)]
pub struct Refused(pub Error);

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        r.0
    }
}

impl axum::response::IntoResponse for Refused {
    fn into_response(self) -> axum::response::Response {
        // Only reached by a handler that takes `Operator` bare; every console handler takes the
        // `Result` and answers through `respond`.
        let status = match self.0 {
            Error::Unauthorized(AuthError::RoleNotAllowed) => axum::http::StatusCode::FORBIDDEN,
            _ => axum::http::StatusCode::UNAUTHORIZED,
        };
        status.into_response()
    }
}

/// Reads `Authorization: Bearer <jwt>` and checks it with [`check`].
impl<A: Adapter> FromRequestParts<Console<A>> for Operator {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console<A>,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(Refused(AuthError::MissingToken.into()))?;
        let claims = check(console.app(), token).await.map_err(Refused)?;
        Ok(Self {
            claims: Arc::new(claims),
            token: token.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_role(role: Option<&str>) -> Claims {
        let mut c = Claims::new("u");
        c.role = role.map(str::to_owned);
        c
    }

    #[test]
    fn of_user_tokens_only_admins_may_sign_in() {
        assert!(user_may_sign_in(&with_role(Some("admin"))));
        // A service role in a user token is not a service token (no service audience).
        for role in [
            Some("service"),
            None,
            Some("viewer"),
            Some("host"),
            Some("moderator"),
            Some("Admin"),
        ] {
            assert!(!user_may_sign_in(&with_role(role)), "{role:?}");
        }
    }

    #[test]
    fn a_high_og_level_does_not_open_the_console() {
        let mut c = with_role(Some("viewer"));
        c.og_level = Some(99.0);
        assert!(!user_may_sign_in(&c));
    }
}

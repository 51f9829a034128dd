//! Who may use the console: a token that verifies with the gateway's keys, whose role is
//! `admin`, or which the HTTP bridge would accept (a backend `service` token). The console can
//! end streams and mute users, so a viewer or moderator token is refused however high its
//! `ogLevel`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use socketioxide::adapter::Adapter;

use super::Console;
use crate::auth::{AuthError, Claims, bearer};
use crate::error::Error;
use crate::state::AppState;

/// The role that may always sign in to the console.
pub const ADMIN_ROLE: &str = "admin";

/// Whether verified `claims` may use the console. Pure.
pub fn may_sign_in(claims: &Claims) -> bool {
    claims.role.as_deref() == Some(ADMIN_ROLE) || claims.can_use_bridge()
}

/// Verifies `token` now and applies [`may_sign_in`].
pub fn check(st: &AppState, token: &str) -> Result<Claims, Error> {
    let claims = st.verify(token)?;
    if !may_sign_in(&claims) {
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
    pub fn reverify(&self, st: &AppState) -> Result<(), Error> {
        check(st, &self.token).map(|_| ())
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
        let claims = check(console.app(), token).map_err(Refused)?;
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
    fn admins_and_services_may_sign_in_and_nobody_else() {
        assert!(may_sign_in(&with_role(Some("admin"))));
        assert!(may_sign_in(&with_role(Some("service"))));
        for role in [
            None,
            Some("viewer"),
            Some("host"),
            Some("moderator"),
            Some("Admin"),
        ] {
            assert!(!may_sign_in(&with_role(role)), "{role:?}");
        }
    }

    #[test]
    fn a_high_og_level_does_not_open_the_console() {
        let mut c = with_role(Some("viewer"));
        c.og_level = Some(99.0);
        assert!(!may_sign_in(&c));
    }
}

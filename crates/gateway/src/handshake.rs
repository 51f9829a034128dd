//! The namespace handshake's checks: the token is found and checked for size *before* its
//! signature is verified, then verified. A refusal is counted (`ws_auth_failures_total{reason}`)
//! and logged sampled, never one line per CONNECT.
//!
//! The transport bounds the rest of the handshake (see `server`): an Engine.IO session that has
//! not connected to `/live` within `LIVE_CONNECT_TIMEOUT_SECONDS` is closed, and so is a session
//! whose CONNECTs failed `LIVE_MAX_CONNECT_FAILURES` times.

use serde_json::Value;

use crate::auth::{AuthError, Claims, Purpose, token_from};
use crate::state::AppState;

/// Why a handshake was refused; the client only ever learns `unauthorized`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than `limits.maxTokenBytes`: refused unverified.
    TokenTooLarge,
    Auth(AuthError),
}

impl Refusal {
    /// Bounded label for `ws_auth_failures_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TokenTooLarge => "token_too_large",
            Self::Auth(e) => e.reason(),
        }
    }
}

/// Finds the token (`auth.token`, else `Authorization: Bearer`), checks its size, then verifies
/// it.
pub async fn verify(
    state: &AppState,
    auth: Option<&Value>,
    authorization: Option<&str>,
    max_token_bytes: u32,
) -> Result<Claims, Refusal> {
    let token = token_from(auth, authorization).ok_or(Refusal::Auth(AuthError::MissingToken))?;
    if token.len() > max_token_bytes as usize {
        return Err(Refusal::TokenTooLarge);
    }
    state
        .verify(token, Purpose::Socket)
        .await
        .map_err(Refusal::Auth)
}

/// Counts a refusal and logs it, sampled.
pub fn refused(state: &AppState, refusal: Refusal) {
    state
        .metrics
        .connections
        .with_label_values(&["rejected"])
        .inc();
    state
        .metrics
        .auth_failures
        .with_label_values(&[refusal.reason()])
        .inc();
    state.metrics.error("unauthorized");
    if let Some(suppressed) = state.logs.admit("handshake_refused") {
        tracing::info!(
            reason = refusal.reason(),
            suppressed,
            "handshake refused (lines of this kind are sampled; `suppressed` were not logged)"
        );
    }
}

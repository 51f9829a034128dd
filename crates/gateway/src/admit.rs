//! The per-connection event budget, taken in the order the client's events arrived.
//!
//! socketioxide runs each async event handler as a task of its own, and tokio does not start
//! tasks in the order they were spawned (the newest one may run first). A budget taken inside
//! the handler would therefore count a burst in some other order than it was sent: the last
//! event of a flood could be handled while earlier ones were refused. Extractors run before the
//! spawn, on the connection's read path, so [`Admitted`] takes the budget there, and gives an
//! admitted event its [`Turn`] in the socket's order.

use std::sync::Arc;
use std::time::Instant;

use socketioxide::adapter::Adapter;
use socketioxide::extract::{Extension, SocketRef, State};
use socketioxide::handler::{FromMessageParts, Value as Packet};
use socketioxide::socket::Socket;

use crate::budget::Verdict;
use crate::error::{Error, Result};
use crate::order::{Running, Turn};
use crate::session::{self, Session};
use crate::state::AppState;

/// One inbound event's admission: the budget's verdict, when it was taken, its turn when it is
/// to be handled, and the socket's state and session (so handlers need no extractors of their
/// own for them).
pub struct Admitted {
    pub verdict: Verdict,
    pub at: Instant,
    pub state: AppState,
    pub session: Arc<Session>,
    /// Only an allowed event takes a turn: a refused one changes nothing, so it is answered at
    /// once rather than held behind the socket's earlier events.
    turn: Option<Turn>,
}

impl Admitted {
    /// Waits until the socket's earlier events have been handled; the event's turn lasts while
    /// the guard lives. `None` for a refused event (it has no turn).
    pub async fn begin(&mut self) -> Option<Running> {
        match self.turn.take() {
            Some(turn) => Some(turn.begin().await),
            None => None,
        }
    }

    /// The event's data to handle, or the refusal: `too_many_events` over the budget (whatever
    /// the data), `invalid_payload` for data that is not JSON.
    pub fn payload<E>(
        &self,
        data: std::result::Result<serde_json::Value, E>,
    ) -> Result<serde_json::Value> {
        match (self.verdict, data) {
            (Verdict::Allowed, Ok(v)) => Ok(v),
            (Verdict::Allowed, Err(_)) => Err(Error::InvalidPayload),
            (Verdict::Refused | Verdict::Disconnect, _) => Err(Error::TooManyEvents),
        }
    }

    /// Once the event is answered: disconnects a socket that kept sending a whole burst of
    /// events over its budget.
    pub fn settle<A: Adapter>(&self, s: SocketRef<A>) {
        if self.verdict == Verdict::Disconnect {
            session::disconnect_over_budget(s, &self.state);
        }
    }
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted")
            .field("verdict", &self.verdict)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// The socket has no session: it was not authenticated by this gateway's middleware. Handlers
/// are registered only after authentication, so this is a programming error, and the event is
/// dropped as socketioxide drops any event whose extractor fails.
#[derive(Debug, thiserror::Error)]
#[error("event on a socket without a session")]
pub struct NoSession;

impl<A: Adapter> FromMessageParts<A> for Admitted {
    type Error = NoSession;

    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut Packet,
        ack_id: &Option<i64>,
    ) -> std::result::Result<Self, NoSession> {
        let State(state) =
            State::<AppState>::from_message_parts(s, v, ack_id).map_err(|_| NoSession)?;
        let Extension(session) =
            Extension::<Arc<Session>>::from_message_parts(s, v, ack_id).map_err(|_| NoSession)?;
        let at = Instant::now();
        let verdict = session::take_event(&state, &session, at);
        let turn = (verdict == Verdict::Allowed).then(|| session.turns.take());
        Ok(Self {
            verdict,
            at,
            state,
            session,
            turn,
        })
    }
}

//! Token lifecycle on live connections: the `auth:expiring` notice ahead of a token's `exp`, the
//! disconnect at expiry (`token_expired`) unless the client refreshed with `auth:refresh`, the end
//! of connections whose key was retired (`key_retired`), and the bridge's "disconnect this user
//! everywhere".
//!
//! Timers: one [`ExpiryQueue`] for the whole process, swept once a second by one task, rather than
//! a timer or task per connection. Each connection with an `exp` costs one ordered-set entry
//! (a 24-byte `(u64, Sid)` key in a B-tree: ~30–40 bytes with node overhead).
//!
//! Key retirement: when the key set changes, every local connection whose token was verified by
//! a key no longer in the set gets `auth:expiring` with `reason: "key_retired"` and is ended after
//! the notice lead (or at its own `exp`, if sooner) unless it refreshes with a token from a
//! current key. A key that comes back before then (a rollback) lets the connection live on.
//!
//! Disconnect everywhere: every authenticated socket joins the room `user:<userId>`, so the bridge
//! reaches a user's sockets on every replica through the Socket.IO adapter (the Redis adapter
//! included) with one room broadcast and one room disconnect.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::socket::Sid;
use tokio_util::sync::CancellationToken;

use crate::admit::Admitted;
use crate::auth::{Claims, KeySet, LEEWAY_SECONDS, Purpose};
use crate::error::{Error, Result};
use crate::realtime::NAMESPACE;
use crate::session::Session;
use crate::state::{AppState, lock, unix_millis, unix_seconds};

/// Client → server: `{token}`, a fresh token for the same user.
pub const REFRESH: &str = "auth:refresh";
/// Server → client: the connection ends at `expiresAt` unless refreshed.
pub const EXPIRING: &str = "auth:expiring";
/// Server → client, right before the server disconnects: why (`token_expired`, `key_retired`).
pub const EXPIRED: &str = "auth:expired";
/// Server → client, right before the server disconnects on a bridge call.
pub const REVOKED: &str = "auth:revoked";
/// Longest token `auth:refresh` accepts; longer ones are refused before any verification.
pub const MAX_REFRESH_TOKEN_BYTES: usize = 8 * 1024;
/// How often the queue is swept: expiry is decided in whole seconds.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The room of a user's sockets.
pub fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// When a connection is ended at the latest: its token's `exp` plus the verification leeway
/// (the handshake accepts a token up to then, so the live connection keeps the same rule).
pub fn deadline(c: &Claims) -> Option<u64> {
    c.exp.map(|e| e.saturating_add(LEEWAY_SECONDS))
}

/// Every connection's next lifecycle moment, in seconds since the Unix epoch. Pure: time is
/// passed in.
///
/// A connection is in `pending` (keyed by its deadline) until its notice is due, then in
/// `noticed` until the deadline. Retired connections go straight to `noticed` with an earlier
/// deadline, remembered in `retiring` so they can be found again.
#[derive(Debug)]
pub struct ExpiryQueue<Id> {
    pending: BTreeSet<(u64, Id)>,
    noticed: BTreeSet<(u64, Id)>,
    retiring: HashMap<Id, u64>,
}

impl<Id> Default for ExpiryQueue<Id> {
    fn default() -> Self {
        Self {
            pending: BTreeSet::new(),
            noticed: BTreeSet::new(),
            retiring: HashMap::new(),
        }
    }
}

/// What a sweep found due.
#[derive(Debug, PartialEq, Eq)]
pub struct Due<Id> {
    /// Connections to send `auth:expiring`.
    pub notices: Vec<Id>,
    /// Connections whose deadline passed: end them unless they refreshed meanwhile.
    pub expiries: Vec<Id>,
}

impl<Id: Ord + Copy + Hash> ExpiryQueue<Id> {
    /// Schedules a connection whose deadline is `at`.
    pub fn schedule(&mut self, id: Id, at: u64) {
        self.pending.insert((at, id));
    }

    /// Forgets a connection scheduled at `at` (on disconnect, or before a refresh reschedules it).
    pub fn cancel(&mut self, id: Id, at: Option<u64>) {
        if let Some(at) = at {
            self.pending.remove(&(at, id));
            self.noticed.remove(&(at, id));
        }
        if let Some(r) = self.retiring.remove(&id) {
            self.noticed.remove(&(r, id));
        }
    }

    /// Moves a connection scheduled at `at` to end at `deadline` (if sooner), its notice due
    /// now. Returns false when it is already retiring.
    pub fn retire(&mut self, id: Id, at: Option<u64>, deadline: u64) -> bool {
        if self.retiring.contains_key(&id) {
            return false;
        }
        let deadline = at.map_or(deadline, |at| at.min(deadline));
        self.cancel(id, at);
        self.noticed.insert((deadline, id));
        self.retiring.insert(id, deadline);
        true
    }

    pub fn is_retiring(&self, id: Id) -> bool {
        self.retiring.contains_key(&id)
    }

    /// Takes what is due at `now`: notices for deadlines within `notice_before` seconds, and
    /// deadlines that passed.
    pub fn tick(&mut self, now: u64, notice_before: u64) -> Due<Id> {
        let mut due = Due {
            notices: Vec::new(),
            expiries: Vec::new(),
        };
        let notice_until = now.saturating_add(notice_before);
        while let Some(&(at, id)) = self.pending.first() {
            if at > notice_until {
                break;
            }
            self.pending.pop_first();
            self.noticed.insert((at, id));
            due.notices.push(id);
        }
        while let Some(&(at, id)) = self.noticed.first() {
            if at > now {
                break;
            }
            self.noticed.pop_first();
            self.retiring.remove(&id);
            due.expiries.push(id);
        }
        due
    }

    /// Connections scheduled.
    pub fn len(&self) -> usize {
        self.pending.len() + self.noticed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's expiry queue, shared by the handshake, the refresh handler and the sweeper.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    queue: Arc<Mutex<ExpiryQueue<Sid>>>,
}

impl Sessions {
    fn schedule(&self, sid: Sid, c: &Claims) {
        if let Some(at) = deadline(c) {
            lock(&self.queue).schedule(sid, at);
        }
    }

    fn cancel(&self, sid: Sid, c: &Claims) {
        lock(&self.queue).cancel(sid, deadline(c));
    }

    fn replace(&self, sid: Sid, old: &Claims, new: &Claims) {
        let mut q = lock(&self.queue);
        q.cancel(sid, deadline(old));
        if let Some(at) = deadline(new) {
            q.schedule(sid, at);
        }
    }

    /// Connections with a scheduled end.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why the gateway ended a connection; read by the disconnect handler for its bounded
/// `ws_disconnects_total` label.
#[derive(Debug, Clone, Copy)]
pub struct EndReason(pub &'static str);

/// `auth:expiring` payload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Expiring {
    /// When the gateway ends the connection unless it is refreshed, in ms since the epoch.
    expires_at: u64,
    reason: &'static str,
    timestamp: u64,
}

/// `auth:expired` / `auth:revoked` payload.
#[derive(Debug, Serialize)]
struct Ended {
    code: &'static str,
    message: &'static str,
    timestamp: u64,
}

/// Called by the handshake once the token verified: joins the user's room, schedules the
/// connection's end, and registers `auth:refresh`.
pub fn on_authenticated<A: Adapter>(s: &SocketRef<A>, st: &AppState, c: &Claims) {
    s.join(user_room(&c.user_id));
    st.sessions.schedule(s.id, c);
    s.on(
        REFRESH,
        async |s: SocketRef<A>,
               mut a: Admitted,
               ack: AckSender<A>,
               TryData(data): TryData<Value>| {
            // A refresh verifies a token (and may fetch keys): it spends the event budget and
            // takes its turn like any event.
            let _turn = a.begin().await;
            let (st, started) = (&a.state, a.at);
            let result = async { refresh(&s, st, &a.session, &a.payload(data)?).await }.await;
            st.metrics
                .messages
                .with_label_values(&["auth_refresh", "in"])
                .inc();
            let reply = match &result {
                Ok(exp) => {
                    st.metrics.token_event("refreshed");
                    json!({ "ok": true, "expiresAt": exp.map(|e| e.saturating_add(LEEWAY_SECONDS) * 1000) })
                }
                Err(e) => {
                    st.metrics.token_event("refresh_refused");
                    st.metrics.error(e.code());
                    emit(&s, st, crate::protocol::outbound::ERROR, "error", &e.to_client());
                    json!({ "ok": false, "error": e.to_client() })
                }
            };
            let _ = ack.send(&reply);
            st.metrics
                .message_duration
                .with_label_values(&["auth_refresh"])
                .observe(started.elapsed().as_secs_f64());
            a.settle(s);
        },
    );
}

/// Replaces a connection's claims with those of a fresh token for the same user. Returns the new
/// `exp`. A token for another user is refused and changes nothing.
async fn refresh<A: Adapter>(
    s: &SocketRef<A>,
    st: &AppState,
    session: &Session,
    v: &Value,
) -> Result<Option<u64>> {
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_REFRESH_TOKEN_BYTES)
        .ok_or(Error::InvalidPayload)?;
    let fresh = st.verify(token, Purpose::Socket).await.inspect_err(|e| {
        st.metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
    })?;
    let current = session.claims();
    if fresh.user_id != current.user_id {
        return Err(Error::UserMismatch);
    }
    let exp = fresh.exp;
    st.sessions.replace(s.id, &current, &fresh);
    session.set_claims(Arc::new(fresh));
    Ok(exp)
}

/// Called by the disconnect handler: the connection leaves the queue.
pub fn on_disconnect(sid: Sid, st: &AppState, c: &Claims) {
    st.sessions.cancel(sid, c);
}

/// The `ws_disconnects_total` label of a connection the gateway ended itself, if it did.
pub fn end_reason<A: Adapter>(s: &SocketRef<A>) -> Option<&'static str> {
    s.extensions.get::<EndReason>().map(|r| r.0)
}

fn emit<A: Adapter, T: Serialize + ?Sized>(
    s: &SocketRef<A>,
    st: &AppState,
    event: &str,
    kind: &'static str,
    payload: &T,
) {
    st.metrics.messages.with_label_values(&[kind, "out"]).inc();
    if let Err(e) = s.emit(event, payload) {
        st.metrics.emit_failures.inc();
        tracing::debug!(event, error = %e, "emit to socket failed");
    }
}

/// Tells the client why, then ends the connection.
fn end<A: Adapter>(s: SocketRef<A>, st: &AppState, code: &'static str, message: &'static str) {
    s.extensions.insert(EndReason(code));
    let payload = Ended {
        code,
        message,
        timestamp: unix_millis(),
    };
    emit(&s, st, EXPIRED, "auth_expired", &payload);
    st.metrics.token_event(code);
    if let Err(e) = s.disconnect() {
        tracing::debug!(error = %e, "ending a connection: disconnect failed");
    }
}

/// Sweeps the queue once a second and retires connections on every key-set change, until `stop`.
pub fn spawn<A: Adapter>(io: SocketIo<A>, st: AppState, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut keys = st.verifier.key_updates();
        keys.borrow_and_update();
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => sweep(&io, &st, unix_seconds()),
                Ok(()) = keys.changed() => {
                    let set = keys.borrow_and_update().clone();
                    retire(&io, &st, &set, unix_seconds());
                }
            }
        }
    });
}

fn lead(st: &AppState) -> u64 {
    st.config().gateway.auth.expiring_notice_seconds
}

/// One sweep: notices, then expiries. Each due connection is checked against its current claims
/// and the current key set, so a refresh that raced the sweep is honoured.
fn sweep<A: Adapter>(io: &SocketIo<A>, st: &AppState, now: u64) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    let due = lock(&st.sessions.queue).tick(now, lead(st) + LEEWAY_SECONDS);
    if due.notices.is_empty() && due.expiries.is_empty() {
        return;
    }
    let keys = st.verifier.key_set();
    for sid in due.notices {
        let Some((s, c)) = socket(&ns, sid) else {
            continue;
        };
        let Some(at) = deadline(&c) else { continue };
        if at > now + lead(st) + LEEWAY_SECONDS {
            continue; // refreshed meanwhile
        }
        st.metrics.token_event("expiring");
        let payload = Expiring {
            expires_at: at * 1000,
            reason: "token_expiring",
            timestamp: unix_millis(),
        };
        emit(&s, st, EXPIRING, "auth_expiring", &payload);
    }
    for sid in due.expiries {
        let Some((s, c)) = socket(&ns, sid) else {
            continue;
        };
        if !keys.contains(c.key) {
            end(
                s,
                st,
                "key_retired",
                "The key that signed your token was retired",
            );
        } else if deadline(&c).is_some_and(|at| at <= now) {
            end(s, st, "token_expired", "Token expired");
        } else if let Some(at) = deadline(&c) {
            // Refreshed meanwhile, or its key came back: it lives on to its own deadline.
            lock(&st.sessions.queue).schedule(sid, at);
        }
    }
}

/// After a key-set change: every local connection verified by a key no longer in `set` is told
/// and scheduled to end after the notice lead.
fn retire<A: Adapter>(io: &SocketIo<A>, st: &AppState, set: &KeySet, now: u64) {
    let Some(ns) = io.of(NAMESPACE) else {
        return;
    };
    let until = now + lead(st);
    let mut retired = 0u64;
    for s in ns.sockets() {
        let Some(c) = crate::session::claims_of(&s.extensions) else {
            continue;
        };
        if set.contains(c.key) {
            continue;
        }
        let at = deadline(&c);
        if !lock(&st.sessions.queue).retire(s.id, at, until) {
            continue;
        }
        retired += 1;
        let payload = Expiring {
            expires_at: at.map_or(until, |at| at.min(until)) * 1000,
            reason: "key_retired",
            timestamp: unix_millis(),
        };
        emit(&s, st, EXPIRING, "auth_expiring", &payload);
    }
    if retired > 0 {
        st.metrics
            .token_events
            .with_label_values(&["key_retiring"])
            .inc_by(retired);
        tracing::info!(
            connections = retired,
            "key retired: connections told to refresh"
        );
    }
}

fn socket<A: Adapter>(
    ns: &socketioxide::operators::BroadcastOperators<A>,
    sid: Sid,
) -> Option<(SocketRef<A>, Arc<Claims>)> {
    let s = ns.get_socket(sid)?;
    let c = crate::session::claims_of(&s.extensions)?;
    Some((s, c))
}

/// The bridge's `POST /v1/users/{userId}/disconnect`: tells every socket of the user, on every
/// replica, and disconnects them.
pub async fn disconnect_user<A: Adapter>(
    io: &SocketIo<A>,
    st: &AppState,
    user_id: &str,
) -> Result<()> {
    let ops = io
        .of(NAMESPACE)
        .ok_or_else(|| Error::Startup("the /live namespace is not registered".into()))?
        .to(user_room(user_id));
    let payload = Ended {
        code: "revoked",
        message: "Disconnected by the server",
        timestamp: unix_millis(),
    };
    // A user's room is no channel: nothing is recorded in history.
    crate::realtime::emit_to_room(
        ops.clone(),
        st,
        "",
        crate::history::Retention::LiveOnly,
        REVOKED,
        "auth_revoked",
        &payload,
    )
    .await;
    st.metrics.token_event("revoked");
    if let Err(e) = ops.disconnect().await {
        // Sockets already gone or a full queue for some: the rest are disconnected.
        tracing::warn!(error = %e, "disconnecting a user: not every socket answered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(notices: &[u32], expiries: &[u32]) -> Due<u32> {
        Due {
            notices: notices.to_vec(),
            expiries: expiries.to_vec(),
        }
    }

    #[test]
    fn a_connection_is_noticed_lead_seconds_before_and_expired_at_its_deadline() {
        let mut q = ExpiryQueue::default();
        q.schedule(1, 1000);
        assert_eq!(q.tick(900, 60), due(&[], &[]));
        assert_eq!(q.tick(940, 60), due(&[1], &[]));
        assert_eq!(q.tick(999, 60), due(&[], &[]), "noticed once");
        assert_eq!(q.tick(1000, 60), due(&[], &[1]));
        assert!(q.is_empty());
    }

    #[test]
    fn a_sweep_that_comes_late_notices_and_expires_at_once() {
        let mut q = ExpiryQueue::default();
        q.schedule(1, 1000);
        q.schedule(2, 5000);
        assert_eq!(q.tick(1001, 60), due(&[1], &[1]));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_refresh_moves_the_deadline_and_a_disconnect_forgets_it() {
        let mut q = ExpiryQueue::default();
        q.schedule(1, 1000);
        q.schedule(2, 1000);
        assert_eq!(q.tick(950, 60), due(&[1, 2], &[]));
        // 1 refreshes: its old entry goes, the new deadline is an hour later.
        q.cancel(1, Some(1000));
        q.schedule(1, 4600);
        // 2 disconnects.
        q.cancel(2, Some(1000));
        assert_eq!(q.tick(1000, 60), due(&[], &[]));
        assert_eq!(q.tick(4540, 60), due(&[1], &[]));
    }

    #[test]
    fn a_retired_connection_ends_after_the_lead_or_at_its_exp_if_sooner() {
        let mut q = ExpiryQueue::default();
        q.schedule(1, 10_000);
        q.schedule(2, 1030);
        q.schedule(3, 20_000);
        assert!(q.retire(1, Some(10_000), 1060));
        assert!(q.retire(2, Some(1030), 1060));
        assert!(!q.retire(1, Some(10_000), 1060), "already retiring");
        assert!(q.is_retiring(1));
        assert_eq!(q.tick(1030, 60), due(&[], &[2]));
        assert_eq!(q.tick(1060, 60), due(&[], &[1]));
        assert!(!q.is_retiring(1));
        assert_eq!(q.len(), 1, "3 keeps its own deadline");
    }

    #[test]
    fn a_retired_connection_that_disconnects_leaves_nothing_behind() {
        let mut q = ExpiryQueue::default();
        q.schedule(1, 10_000);
        q.retire(1, Some(10_000), 1060);
        q.cancel(1, Some(10_000));
        assert!(q.is_empty());
        assert!(!q.is_retiring(1));
        // A connection without exp can be retired too.
        assert!(q.retire(2, None, 1060));
        assert_eq!(q.tick(1060, 60), due(&[], &[2]));
    }

    #[test]
    fn the_queue_entry_is_small() {
        // The per-connection cost of the timer: one (deadline, Sid) key in a B-tree.
        assert_eq!(std::mem::size_of::<(u64, Sid)>(), 24);
    }
}

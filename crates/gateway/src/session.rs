//! What the gateway keeps per connection beside socketioxide's own state: the verified claims
//! (and their outgoing, escaped form), the channels the socket is in, and its event budget.
//! Stored once per socket as an `Arc<Session>` extension.
//!
//! **Membership.** socketioxide answers "is this socket in that room?" only by copying the
//! socket's whole room set, and a socket could join any number of rooms, so checking
//! membership on every event cost O(rooms) allocations and made a join flood quadratic. The
//! session keeps the socket's channels itself (at most `limits.maxChannelsPerSocket`, default
//! 32), so a check is a scan of a few short strings and allocates nothing.
//!
//! The adapter stays the truth: one case changes rooms without passing through this socket's
//! handlers, an `end` decided on another replica (the Redis adapter removes the members there).
//! So a "member" answer older than [`RECHECK`] is confirmed against the adapter once (at most one
//! room-set copy per socket per [`RECHECK`], never one per event), and a join of a channel the
//! session already lists always is.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketioxide::adapter::Adapter;
use socketioxide::extract::SocketRef;

use crate::auth::Claims;
use crate::budget::{EventBudget, Verdict};
use crate::churn;
use crate::order::Turns;
use crate::protocol::{self, Role};
use crate::sanitize;
use crate::state::{AppState, lock};

/// How old a positive membership answer may be before it is confirmed against the adapter.
pub const RECHECK: Duration = Duration::from_secs(1);

/// One socket's gateway state.
#[derive(Debug)]
pub struct Session {
    /// Replaced when the client refreshes its token (`lifecycle`); the user stays the same.
    claims: std::sync::RwLock<Arc<Claims>>,
    /// `userId` as it goes out in events: escaped for HTML text and attributes.
    pub user_id_out: Box<str>,
    /// `username` as it goes out in events, escaped likewise.
    pub username_out: Option<Box<str>>,
    channels: Mutex<Channels>,
    budget: Mutex<EventBudget>,
    /// Set when the gateway disconnects the socket for its budget, so the disconnect is counted
    /// under its own reason.
    over_budget: std::sync::atomic::AtomicBool,
    /// The order its events are handled in (see [`crate::order`]).
    pub turns: Turns,
}

#[derive(Debug)]
struct Channels {
    names: Vec<Box<str>>,
    /// When the adapter last confirmed the positive answers.
    confirmed_at: Instant,
}

/// What the session knows of a socket's membership of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Not a member: the session saw every join and leave of this socket.
    No,
    /// A member, confirmed recently.
    Yes,
    /// Listed, but not confirmed for a while: ask the adapter.
    Unconfirmed,
}

/// Why a join was refused by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyChannels;

impl Session {
    /// The claims in force: those of the connect token, or of the last accepted refresh.
    pub fn claims(&self) -> Arc<Claims> {
        Arc::clone(
            &self
                .claims
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts a refreshed token's claims in force (same user, checked by the caller).
    pub fn set_claims(&self, claims: Arc<Claims>) {
        *self
            .claims
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = claims;
    }

    pub fn new(claims: Claims, now: Instant, burst: u32) -> Self {
        let user_id_out = sanitize::escape(&claims.user_id).into();
        let username_out = claims
            .username
            .as_deref()
            .map(|u| sanitize::escape(u).into());
        Self {
            claims: std::sync::RwLock::new(Arc::new(claims)),
            user_id_out,
            username_out,
            channels: Mutex::new(Channels {
                names: Vec::new(),
                confirmed_at: now,
            }),
            budget: Mutex::new(EventBudget::new(now, burst)),
            over_budget: Default::default(),
            turns: Turns::default(),
        }
    }

    /// Counts one inbound event against the budget.
    pub fn take_event(&self, now: Instant, rate: u32, burst: u32) -> Verdict {
        let verdict = lock(&self.budget).take(now, rate, burst);
        if verdict == Verdict::Disconnect {
            self.over_budget
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        verdict
    }

    /// Whether the gateway disconnected this socket for its event budget.
    pub fn was_over_budget(&self) -> bool {
        self.over_budget.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The session's answer for `channel` at `now`.
    pub fn membership(&self, channel: &str, now: Instant) -> Membership {
        let c = lock(&self.channels);
        if !c.names.iter().any(|n| &**n == channel) {
            Membership::No
        } else if now.saturating_duration_since(c.confirmed_at) < RECHECK {
            Membership::Yes
        } else {
            Membership::Unconfirmed
        }
    }

    /// Replaces the listed channels with the adapter's truth, as of `now`.
    pub fn confirm<'a>(&self, channels: impl IntoIterator<Item = &'a str>, now: Instant) {
        let mut c = lock(&self.channels);
        c.names = channels.into_iter().map(Box::from).collect();
        c.confirmed_at = now;
    }

    /// Lists `channel`, unless the socket is in `max` channels already.
    pub fn add(&self, channel: &str, max: u32) -> Result<(), TooManyChannels> {
        let mut c = lock(&self.channels);
        if c.names.iter().any(|n| &**n == channel) {
            return Ok(());
        }
        if c.names.len() >= max as usize {
            return Err(TooManyChannels);
        }
        c.names.push(channel.into());
        Ok(())
    }

    /// Unlists `channel`; true when it was listed.
    pub fn remove(&self, channel: &str) -> bool {
        let mut c = lock(&self.channels);
        let before = c.names.len();
        c.names.retain(|n| &**n != channel);
        c.names.len() != before
    }

    /// The listed channels.
    pub fn channels(&self) -> Vec<Box<str>> {
        lock(&self.channels).names.clone()
    }

    /// This socket's join (`Some(role)`) or leave of `channel`, for churn damping, with its
    /// outgoing names.
    pub fn change(&self, channel: &str, joined: Option<Role>) -> churn::Held {
        churn::Held {
            channel: channel.to_owned(),
            joined,
            user_id: self.user_id_out.clone(),
            username: self.username_out.clone(),
        }
    }
}

/// Whether the socket is in `channel`: the session's answer, confirmed against the adapter
/// when it is old.
pub fn is_member<A: Adapter>(s: &SocketRef<A>, session: &Session, channel: &str) -> bool {
    let now = Instant::now();
    match session.membership(channel, now) {
        Membership::No => false,
        Membership::Yes => true,
        Membership::Unconfirmed => {
            confirm_membership(s, session, now);
            session.membership(channel, now) != Membership::No
        }
    }
}

/// Replaces the session's channel list with the adapter's: one copy of the socket's rooms.
pub fn confirm_membership<A: Adapter>(s: &SocketRef<A>, session: &Session, now: Instant) {
    let rooms = s.rooms();
    session.confirm(rooms.iter().filter_map(|r| protocol::channel_of(r)), now);
}

/// Counts one event against the connection's budget, with the limits in force now; an event
/// over it is counted as a rate-limit hit.
pub fn take_event(st: &AppState, session: &Session, now: Instant) -> Verdict {
    let limits = &st.config().gateway.rate_limits;
    let verdict = session.take_event(now, limits.events_per_second, limits.event_burst);
    if verdict != Verdict::Allowed {
        st.metrics
            .rate_limit_hits
            .with_label_values(&["events"])
            .inc();
    }
    verdict
}

/// The claims in force on a socket (its [`Session`]'s): the one place they are kept, so a refresh
/// changes what every reader sees. `None` for a socket this gateway did not authenticate.
pub fn claims_of(extensions: &socketioxide::extensions::Extensions) -> Option<Arc<Claims>> {
    extensions.get::<Arc<Session>>().map(|s| s.claims())
}

/// Disconnects a socket that kept sending a whole burst of events over its budget.
pub fn disconnect_over_budget<A: Adapter>(s: SocketRef<A>, st: &AppState) {
    if let Some(suppressed) = st.logs.admit("event_budget_disconnect") {
        tracing::info!(
            suppressed,
            "socket disconnected: it kept sending events over its budget (sampled)"
        );
    }
    // Failing means it is gone already.
    let _ = s.disconnect();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: Instant) -> Session {
        Session::new(Claims::new("u"), now, 10)
    }

    #[test]
    fn membership_is_answered_from_the_session_and_rechecked_when_old() {
        let t0 = Instant::now();
        let s = session(t0);
        assert_eq!(s.membership("a", t0), Membership::No);
        s.add("a", 32).unwrap();
        assert_eq!(s.membership("a", t0), Membership::Yes);
        assert_eq!(s.membership("a", t0 + RECHECK), Membership::Unconfirmed);
        s.confirm(["a"], t0 + RECHECK);
        assert_eq!(s.membership("a", t0 + RECHECK), Membership::Yes);
        s.confirm([], t0 + RECHECK * 2);
        assert_eq!(s.membership("a", t0 + RECHECK * 2), Membership::No);
    }

    #[test]
    fn a_socket_is_in_at_most_max_channels() {
        let s = session(Instant::now());
        for i in 0..3 {
            s.add(&format!("c{i}"), 3).unwrap();
        }
        assert_eq!(s.add("c3", 3), Err(TooManyChannels));
        assert_eq!(s.add("c0", 3), Ok(()), "already listed");
        assert!(s.remove("c1"));
        assert!(!s.remove("c1"));
        assert_eq!(s.add("c3", 3), Ok(()));
        assert_eq!(s.channels().len(), 3);
    }

    #[test]
    fn outgoing_ids_and_names_are_escaped_once() {
        let mut c = Claims::new("id\"1");
        c.username = Some("<b>Ann</b> & 'Bo'".into());
        let s = Session::new(c, Instant::now(), 10);
        assert_eq!(&*s.user_id_out, "id&quot;1");
        assert_eq!(
            s.username_out.as_deref(),
            Some("&lt;b&gt;Ann&lt;/b&gt; &amp; &#39;Bo&#39;")
        );
        assert_eq!(s.claims().user_id, "id\"1", "the claims keep the raw id");
    }
}

//! The gateway's shared state: one `Clone` struct of `Arc`s handed to every handler, the bridge and
//! the admin endpoints. No statics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::auth::{Claims, Verifier};
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::moderation::Mutes;
use crate::ratelimit::{Decision, Kind, RateLimiter};
use crate::sanitize::Sanitizer;

/// Shared state; cloning is a handful of reference-count increments.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The current configuration. Handlers take a snapshot per event with [`AppState::config`], so
    /// a reload applies to existing connections from their next event on.
    config: watch::Receiver<Arc<RuntimeConfig>>,
    pub verifier: Arc<Verifier>,
    /// One lock for all users: a check is a hash lookup and an add, far shorter than the JSON
    /// work around it, so contention stays low at the rates one gateway sees.
    limiter: Arc<Mutex<RateLimiter>>,
    mutes: Arc<Mutex<Mutes>>,
    pub sanitizer: Arc<Sanitizer>,
    pub metrics: Metrics,
    /// Set once, on SIGTERM/SIGINT: readiness fails and new handshakes are refused from then on.
    draining: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(
        config: watch::Receiver<Arc<RuntimeConfig>>,
        verifier: Verifier,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            verifier: Arc::new(verifier),
            limiter: Arc::default(),
            mutes: Arc::default(),
            sanitizer: Arc::new(Sanitizer::default()),
            metrics,
            draining: Arc::default(),
        }
    }

    /// A snapshot of the configuration in force now.
    pub fn config(&self) -> Arc<RuntimeConfig> {
        self.config.borrow().clone()
    }

    /// A receiver that sees every future config change.
    pub fn config_updates(&self) -> watch::Receiver<Arc<RuntimeConfig>> {
        self.config.clone()
    }

    /// Verifies a token now.
    pub fn verify(&self, token: &str) -> Result<Claims, crate::auth::AuthError> {
        self.verifier.verify(token, unix_seconds())
    }

    /// Counts one event against the user's budget for `kind` under the current limits.
    pub fn rate_limit(&self, kind: Kind, user: &str, limit: u32) -> Decision {
        let decision = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(kind, user, limit, Instant::now());
        if matches!(decision, Decision::Limited { .. }) {
            self.metrics
                .rate_limit_hits
                .with_label_values(&[kind.label()])
                .inc();
        }
        decision
    }

    /// Mutes `user` in `channel` for `seconds`.
    pub fn mute(&self, channel: &str, user: &str, seconds: u64) {
        let until = Instant::now() + std::time::Duration::from_secs(seconds);
        self.mutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mute(channel, user, until);
    }

    pub fn is_muted(&self, channel: &str, user: &str) -> bool {
        self.mutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_muted(channel, user, Instant::now())
    }

    /// Drops expired rate-limit windows and mutes; run periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sweep(now);
        self.mutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sweep(now);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.draining.set(1);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the Unix epoch: the protocol's `timestamp`, like JavaScript's `Date.now()`.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, for JWT time claims.
pub fn unix_seconds() -> u64 {
    unix_millis() / 1000
}

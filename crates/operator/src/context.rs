//! The state every reconcile shares: one struct of `Arc`s, passed explicitly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::MANAGER;
use crate::metrics::Metrics;
use crate::reconcile::service_monitor;

/// How long a ServiceMonitor CRD discovery result is trusted. Installing prometheus-operator
/// later is picked up within this time, without a discovery request per reconcile.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// Shared reconcile state.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client (a mocked service in tests).
    pub client: Client,
    /// Publishes events on `LiveRealtime` objects. Its cache groups repeats into series.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Last ServiceMonitor CRD discovery: when, and whether it was found. A mutex rather than
    /// an async lock: it is held only to read or write the pair, never across an await.
    discovery: Arc<Mutex<Option<(Instant, bool)>>>,
    /// Consecutive failures per `namespace/name`, for the error policy's backoff.
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client`, reporting events as `instance` (the pod name).
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance,
            },
        );
        Self {
            client,
            recorder,
            metrics,
            discovery: Arc::default(),
            failures: Arc::default(),
        }
    }

    /// Whether the ServiceMonitor CRD is installed, discovered at most every [`DISCOVERY_TTL`].
    /// A transient discovery failure keeps the last answer (or "absent" when there is none): an
    /// optional integration must never fail the reconcile.
    pub async fn service_monitor_crd(&self) -> bool {
        let cached = self.discovery.lock().ok().and_then(|d| *d);
        if let Some((at, present)) = cached
            && at.elapsed() < DISCOVERY_TTL
        {
            return present;
        }
        let present = match kube::discovery::pinned_kind(&self.client, &service_monitor::gvk())
            .await
        {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => false,
            Err(kube::Error::Discovery(_)) => false,
            Err(e) => {
                tracing::warn!(error = %e, "ServiceMonitor discovery failed; keeping the last answer");
                cached.is_some_and(|(_, p)| p)
            }
        };
        self.metrics.service_monitor_crd.set(i64::from(present));
        if let Ok(mut d) = self.discovery.lock() {
            *d = Some((Instant::now(), present));
        }
        present
    }

    /// Records a failure of `key` and returns how many in a row it has had.
    pub fn record_failure(&self, key: &str) -> u32 {
        let Ok(mut failures) = self.failures.lock() else {
            return 1;
        };
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn record_success(&self, key: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(key);
        }
    }
}

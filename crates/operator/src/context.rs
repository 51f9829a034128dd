//! The state every reconcile shares: one struct of `Arc`s, passed explicitly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::MANAGER;
use crate::metrics::Metrics;
use crate::reconcile::apply::owned_fields_digest;
use crate::reconcile::{Facts, network, service_monitor};

/// How long an optional-CRD discovery result is trusted. Installing prometheus-operator or the
/// Gateway API later is picked up within this time, without a discovery request per reconcile.
const DISCOVERY_TTL: Duration = Duration::from_secs(60);

/// Watch caches of the children (selected by the `managed-by` label) and of Secret metadata,
/// fed by the controller's watches. Reads come from here, so a steady-state reconcile sends no
/// request at all.
#[derive(Clone, Debug)]
pub struct Caches {
    pub config_maps: Store<ConfigMap>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub network_policies: Store<NetworkPolicy>,
    pub ingresses: Store<Ingress>,
    /// Every Secret's metadata (data is never cached): rotation triggers and the managed
    /// Redis password's existence.
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

/// What the operator's last apply of one child left: the digest of the desired object and of
/// the fields its field manager then owned.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    desired: String,
    fields: Option<String>,
}

/// Shared reconcile state.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client (a mocked service in tests).
    pub client: Client,
    /// Publishes events on `LiveRealtime` objects. Its cache groups repeats into series.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The watch caches; `None` (mocked tests) makes every lookup a GET.
    pub caches: Option<Caches>,
    /// How often a settled object is reconciled again without a watch event.
    pub resync: Duration,
    /// Last optional-CRD discovery: when, and what was found. A mutex rather than an async
    /// lock: it is held only to read or write the pair, never across an await.
    discovery: Arc<Mutex<Option<(Instant, Facts)>>>,
    /// Consecutive failures per `namespace/name`, for the error policy's backoff.
    failures: Arc<Mutex<HashMap<String, u32>>>,
    /// The last apply of each child, by `Kind/namespace/name`: what makes unchanged applies
    /// skippable. Lost on restart (the first reconcile then applies once more).
    applied: Arc<Mutex<HashMap<String, Applied>>>,
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
            caches: None,
            resync: crate::controller::DEFAULT_RESYNC,
            discovery: Arc::default(),
            failures: Arc::default(),
            applied: Arc::default(),
        }
    }

    /// The same memory (applies, failures, discovery) on another client: a test reconciles
    /// twice against a fresh mocked apiserver.
    #[cfg(test)]
    pub(crate) fn with_client(&self, client: Client) -> Self {
        Self {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: MANAGER.to_owned(),
                    instance: Some("test".to_owned()),
                },
            ),
            client,
            ..self.clone()
        }
    }

    /// The same context reading children from `caches`.
    pub fn with_caches(mut self, caches: Caches) -> Self {
        self.caches = Some(caches);
        self
    }

    /// Which optional CRDs are installed, discovered at most every [`DISCOVERY_TTL`]. A
    /// transient discovery failure keeps the last answer (or "absent" when there is none): an
    /// optional integration must never fail the reconcile.
    pub async fn facts(&self) -> Facts {
        let cached = self.discovery.lock().ok().and_then(|d| *d);
        if let Some((at, facts)) = cached
            && at.elapsed() < DISCOVERY_TTL
        {
            return facts;
        }
        let service_monitor_crd = self
            .discover(
                &service_monitor::gvk(),
                cached.map(|(_, f)| f.service_monitor_crd),
            )
            .await;
        let http_route_crd = self
            .discover(
                &network::http_route_gvk(),
                cached.map(|(_, f)| f.http_route_crd),
            )
            .await;
        let facts = Facts {
            service_monitor_crd,
            http_route_crd,
        };
        self.metrics
            .service_monitor_crd
            .set(i64::from(service_monitor_crd));
        if let Ok(mut d) = self.discovery.lock() {
            *d = Some((Instant::now(), facts));
        }
        facts
    }

    async fn discover(&self, gvk: &GroupVersionKind, last: Option<bool>) -> bool {
        match kube::discovery::pinned_kind(&self.client, gvk).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => false,
            Err(kube::Error::Discovery(_)) => false,
            Err(e) => {
                tracing::warn!(error = %e, kind = %gvk.kind, "discovery failed; keeping the last answer");
                last.unwrap_or(false)
            }
        }
    }

    /// True when the child `key` was last applied with the `desired` digest and still has the
    /// fields that apply left on it (nobody took or changed a field we own since).
    pub fn unchanged(&self, key: &str, desired: &str, live: &ObjectMeta) -> bool {
        let Ok(applied) = self.applied.lock() else {
            return false;
        };
        applied.get(key).is_some_and(|a| {
            a.desired == desired && a.fields.is_some() && a.fields == owned_fields_digest(live)
        })
    }

    /// Records an apply of `key`.
    pub fn record_applied(&self, key: &str, desired: &str, applied_meta: &ObjectMeta) {
        if let Ok(mut applied) = self.applied.lock() {
            applied.insert(
                key.to_owned(),
                Applied {
                    desired: desired.to_owned(),
                    fields: owned_fields_digest(applied_meta),
                },
            );
        }
    }

    /// Forgets `key` (deleted, or its feature turned off).
    pub fn forget_applied(&self, key: &str) {
        if let Ok(mut applied) = self.applied.lock() {
            applied.remove(key);
        }
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

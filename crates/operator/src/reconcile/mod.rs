//! Reconciliation of one `LiveRealtime`: pure `desired()` builders (one file per child), the
//! conditions computed from what was observed ([`status`]), and the thin IO shell that applies
//! them ([`apply`]).
//!
//! Builders take the resource and the discovered [`Facts`] and return typed objects; they never
//! talk to the apiserver, so `render` and the snapshot tests see exactly what the controller
//! applies.

pub mod apply;
pub mod configmap;
pub mod deployment;
pub mod grafana_dashboard;
pub mod hpa;
pub mod network;
pub mod pdb;
pub mod pod;
pub mod redis;
pub mod secrets;
pub mod service;
pub mod service_monitor;
pub mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::DynamicObject;
use sha2::{Digest, Sha256};

use crate::MANAGER;
use crate::crd::{LiveRealtime, RedisMode};

/// What the operator discovered about the cluster, as input to the builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The `monitoring.coreos.com/v1` ServiceMonitor CRD is installed.
    pub service_monitor_crd: bool,
    /// The `gateway.networking.k8s.io/v1` HTTPRoute CRD is installed.
    pub http_route_crd: bool,
}

impl Facts {
    /// Every optional CRD installed (what `render` assumes by default).
    pub const ALL: Self = Self {
        service_monitor_crd: true,
        http_route_crd: true,
    };
}

/// Digests of the Secret data the pods read at start only (env variables, the Redis CA, the
/// managed Redis password), put on the pod templates so that rotating one rolls the pods.
/// `None` where unknown (`render` without a cluster): no annotation then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    pub gateway: Option<String>,
    pub redis: Option<String>,
}

/// Every child of one `LiveRealtime`. `None` means "must not exist" (its feature is off or its
/// CRD is missing), so the applier deletes it.
#[derive(Clone, Debug)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub admin_service: Service,
    pub admin_network_policy: Option<NetworkPolicy>,
    pub redis_deployment: Option<Deployment>,
    pub redis_service: Option<Service>,
    pub redis_network_policy: Option<NetworkPolicy>,
    pub redis_pdb: Option<PodDisruptionBudget>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
    pub ingress: Option<Ingress>,
    pub service_monitor: Option<DynamicObject>,
    pub http_route: Option<DynamicObject>,
    pub grafana_dashboard: Option<ConfigMap>,
}

/// Builds every child of `lr`. Pure.
pub fn desired(lr: &LiveRealtime, facts: Facts, digests: &Digests) -> Children {
    let managed_redis = lr.spec.redis.mode == RedisMode::Managed;
    Children {
        config_map: configmap::desired(lr),
        deployment: deployment::desired(lr, digests.gateway.as_deref()),
        service: service::desired(lr),
        admin_service: service::desired_admin(lr),
        admin_network_policy: lr
            .spec
            .admin
            .network_policy
            .enabled
            .then(|| network::desired_admin_policy(lr)),
        redis_deployment: managed_redis
            .then(|| redis::desired_deployment(lr, digests.redis.as_deref())),
        redis_service: managed_redis.then(|| redis::desired_service(lr)),
        redis_network_policy: managed_redis.then(|| redis::desired_network_policy(lr)),
        redis_pdb: (managed_redis && lr.spec.redis.pod_disruption_budget.enabled)
            .then(|| redis::desired_pdb(lr)),
        hpa: lr.spec.autoscaling_enabled().then(|| hpa::desired(lr)),
        pdb: lr
            .spec
            .pod_disruption_budget
            .enabled
            .then(|| pdb::desired(lr)),
        ingress: lr
            .spec
            .ingress
            .as_ref()
            .filter(|i| i.enabled)
            .map(|_| network::desired_ingress(lr)),
        service_monitor: (lr.spec.monitoring.service_monitor.enabled && facts.service_monitor_crd)
            .then(|| service_monitor::desired(lr)),
        http_route: (lr.spec.http_route.as_ref().is_some_and(|r| r.enabled)
            && facts.http_route_crd)
            .then(|| network::desired_http_route(lr)),
        grafana_dashboard: lr
            .spec
            .monitoring
            .grafana_dashboard
            .enabled
            .then(|| grafana_dashboard::desired(lr)),
    }
}

/// The children as YAML documents, in apply order (what `render` prints).
pub fn to_yaml_documents(children: &Children) -> Vec<String> {
    fn doc<T: serde::Serialize>(obj: &T) -> String {
        crate::to_yaml(obj)
    }
    let mut docs = vec![doc(&children.config_map)];
    docs.extend(children.redis_deployment.as_ref().map(doc));
    docs.extend(children.redis_service.as_ref().map(doc));
    docs.extend(children.redis_network_policy.as_ref().map(doc));
    docs.extend(children.redis_pdb.as_ref().map(doc));
    docs.push(doc(&children.deployment));
    docs.push(doc(&children.service));
    docs.push(doc(&children.admin_service));
    docs.extend(children.admin_network_policy.as_ref().map(doc));
    docs.extend(children.hpa.as_ref().map(doc));
    docs.extend(children.pdb.as_ref().map(doc));
    docs.extend(children.ingress.as_ref().map(doc));
    docs.extend(children.service_monitor.as_ref().map(doc));
    docs.extend(children.http_route.as_ref().map(doc));
    docs.extend(children.grafana_dashboard.as_ref().map(doc));
    docs
}

/// Container ports and paths of the gateway contract.
pub mod gateway {
    /// Public Socket.IO port inside the pod.
    pub const HTTP_PORT: i32 = 3000;
    /// Admin port: health, readiness, metrics and the HTTP bridge.
    pub const ADMIN_PORT: i32 = 9091;
    /// Where the ConfigMap is mounted (as a directory, so updates reach the pod).
    pub const CONFIG_DIR: &str = "/etc/live-gateway";
    /// Port of the managed Redis.
    pub const REDIS_PORT: i32 = 6379;
}

/// Suffixes of derived names. None is a suffix of another, and the CRD's CEL rule refuses
/// LiveRealtime names ending in one, so two LiveRealtimes can never derive the same name.
pub mod names {
    /// The admin Service and the admin NetworkPolicy.
    pub const ADMIN_SUFFIX: &str = "-admin";
    /// The gateway ConfigMap.
    pub const CONFIG_SUFFIX: &str = "-config";
    /// Every managed Redis child (Deployment, Service, NetworkPolicy, PDB, password Secret).
    pub const REDIS_SUFFIX: &str = "-redis";
    /// The Grafana dashboard ConfigMap. Not among [`SUFFIXES`]: no other ConfigMap name ends in
    /// it, and a LiveRealtime called `x-dashboard` derives `x-dashboard-dashboard`, so no name
    /// needs refusing for it.
    pub const DASHBOARD_SUFFIX: &str = "-dashboard";
    /// The suffixes a LiveRealtime's own name must not end in.
    pub const SUFFIXES: [&str; 3] = [ADMIN_SUFFIX, CONFIG_SUFFIX, REDIS_SUFFIX];
    /// Longest LiveRealtime name: a Service name (DNS-1035 label) is at most 63 characters,
    /// and `-admin` / `-redis` are the longest suffixes a Service gets.
    pub const MAX_NAME_LEN: usize = 63 - ADMIN_SUFFIX.len();
}

/// Name of the gateway Deployment, public Service, HPA, PDB, Ingress, HTTPRoute and
/// ServiceMonitor.
pub fn gateway_name(lr: &LiveRealtime) -> String {
    lr.metadata.name.clone().unwrap_or_default()
}

/// Name of the admin Service and the admin NetworkPolicy.
pub fn admin_name(lr: &LiveRealtime) -> String {
    format!("{}{}", gateway_name(lr), names::ADMIN_SUFFIX)
}

/// Name of the gateway ConfigMap.
pub fn config_map_name(lr: &LiveRealtime) -> String {
    format!("{}{}", gateway_name(lr), names::CONFIG_SUFFIX)
}

/// Name of every managed Redis child.
pub fn redis_name(lr: &LiveRealtime) -> String {
    format!("{}{}", gateway_name(lr), names::REDIS_SUFFIX)
}

/// Which part of the tier a child belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Gateway,
    Redis,
}

impl Component {
    fn app_name(self) -> &'static str {
        match self {
            Self::Gateway => "live-gateway",
            Self::Redis => "redis",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Redis => "redis",
        }
    }
}

/// Labels that select the pods of one component (immutable in a Deployment selector).
pub fn selector_labels(lr: &LiveRealtime, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            component.app_name().to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), gateway_name(lr)),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// Labels on every child: the selector labels plus `part-of` and `managed-by` (the operator's
/// watches select on `managed-by`).
pub fn labels(lr: &LiveRealtime, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(lr, component);
    labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "live-realtime".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGER.to_owned(),
    );
    labels
}

/// The label selector the controller's owned watches use.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=live-operator";

/// The gateway pod selector as a string, for `status.selector` (scale subresource).
pub fn gateway_selector_string(lr: &LiveRealtime) -> String {
    selector_labels(lr, Component::Gateway)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The controller owner reference, so Kubernetes garbage-collects children with their parent.
/// `None` when the object has no uid yet (e.g. `render` of a file never applied).
pub fn owner_reference(lr: &LiveRealtime) -> Option<OwnerReference> {
    lr.controller_owner_ref(&())
}

/// Metadata shared by every child.
pub fn child_meta(lr: &LiveRealtime, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: lr.metadata.namespace.clone(),
        labels: Some(labels(lr, component)),
        owner_references: owner_reference(lr).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Lower-case hex sha256 of `bytes`: config and restart hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::LiveRealtime;

    #[test]
    fn managed_redis_and_defaults_produce_every_child_but_the_hpa() {
        let children = desired(&LiveRealtime::test(), Facts::ALL, &Digests::default());
        assert!(children.redis_deployment.is_some());
        assert!(children.redis_pdb.is_some());
        assert!(children.admin_network_policy.is_none());
        assert!(children.ingress.is_none());
        assert!(children.http_route.is_none());
        assert!(children.redis_service.is_some());
        assert!(children.redis_network_policy.is_some());
        assert!(children.hpa.is_none());
        assert!(children.pdb.is_some());
        assert!(children.service_monitor.is_some());
    }

    #[test]
    fn a_missing_service_monitor_crd_drops_only_the_service_monitor() {
        let children = desired(
            &LiveRealtime::test(),
            Facts {
                service_monitor_crd: false,
                http_route_crd: true,
            },
            &Digests::default(),
        );
        assert!(children.service_monitor.is_none());
        assert!(children.pdb.is_some());
    }

    #[test]
    fn no_derived_name_suffix_is_a_suffix_of_another() {
        for a in names::SUFFIXES {
            for b in names::SUFFIXES {
                assert!(a == b || !a.ends_with(b), "{a} ends with {b}");
            }
        }
        assert_eq!(names::MAX_NAME_LEN, 57);
    }

    #[test]
    fn the_selector_string_is_sorted_and_stable() {
        assert_eq!(
            gateway_selector_string(&LiveRealtime::test()),
            "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=chat,\
             app.kubernetes.io/name=live-gateway"
        );
    }
}

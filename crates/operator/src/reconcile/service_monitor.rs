//! The prometheus-operator ServiceMonitor for the gateway's admin port (it selects the admin
//! Service `NAME-admin` only). No typed crate supports
//! kube 5, so it is a `DynamicObject`; it is applied only when its CRD is installed (discovered
//! at runtime, see [`crate::context::Context::service_monitor_crd`]).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::service::SERVICE_LABEL;
use super::{Component, child_meta, gateway_name, selector_labels};
use crate::crd::LiveRealtime;

/// The ServiceMonitor's group, version and kind.
pub fn gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor")
}

/// The ServiceMonitor's API resource (plural `servicemonitors`).
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&gvk(), "servicemonitors")
}

/// The desired ServiceMonitor. Pure.
pub fn desired(lr: &LiveRealtime) -> DynamicObject {
    let settings = &lr.spec.monitoring.service_monitor;
    let mut metadata = child_meta(lr, gateway_name(lr), Component::Gateway);
    if let Some(labels) = metadata.labels.as_mut() {
        // User labels (e.g. `release`) first, so they can never override ours.
        let mut merged = settings.labels.clone();
        merged.append(labels);
        *labels = merged;
    }
    let mut obj = DynamicObject::new(&gateway_name(lr), &api_resource());
    obj.metadata = metadata;
    let mut selector = selector_labels(lr, Component::Gateway);
    selector.insert(SERVICE_LABEL.to_owned(), "admin".to_owned());
    obj.data = json!({
        "spec": {
            // `job` = the LiveRealtime's name (the instance label's value), not the admin
            // Service's `NAME-admin`: the dashboard and alerts in deploy/monitoring join on it.
            "jobLabel": "app.kubernetes.io/instance",
            "selector": {"matchLabels": selector},
            "endpoints": [{
                "port": "admin",
                "path": "/metrics",
                "interval": settings.interval,
                "scheme": "http",
            }],
        }
    });
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_labels_cannot_override_the_operator_labels() {
        let mut lr = LiveRealtime::test();
        lr.spec
            .monitoring
            .service_monitor
            .labels
            .insert("app.kubernetes.io/managed-by".into(), "someone-else".into());
        lr.spec
            .monitoring
            .service_monitor
            .labels
            .insert("release".into(), "kube-prometheus".into());
        let sm = desired(&lr);
        let labels = sm.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "live-operator");
        assert_eq!(labels["release"], "kube-prometheus");
    }

    #[test]
    fn snapshot_default() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test()));
    }
}

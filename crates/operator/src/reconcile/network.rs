//! Network exposure beyond the Services: the optional admin-port NetworkPolicy, the optional
//! Ingress and the optional Gateway API HTTPRoute, both with WebSocket-friendly timeouts. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{Component, admin_name, child_meta, gateway, gateway_name, selector_labels};
use crate::crd::{LiveRealtime, SessionAffinity};

/// Seconds ingress-nginx keeps an idle proxied connection open: one hour, so a quiet
/// WebSocket is not cut at the default 60 s (Socket.IO's heartbeat is 25 s, but a viewer's
/// connection may carry nothing else for long stretches and proxies differ).
const PROXY_TIMEOUT_SECONDS: &str = "3600";

/// The admin-port NetworkPolicy on the gateway pods: the public port open to all, the admin
/// port only to `spec.admin.networkPolicy.from` (nobody when empty).
pub fn desired_admin_policy(lr: &LiveRealtime) -> NetworkPolicy {
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let from = &lr.spec.admin.network_policy.from;
    let mut rules = vec![NetworkPolicyIngressRule {
        // No `from`: every source may reach the public port.
        from: None,
        ports: Some(vec![port(gateway::HTTP_PORT)]),
    }];
    // A rule with an empty `from` would admit everyone: with no peers, no admin rule at all.
    if !from.is_empty() {
        rules.push(NetworkPolicyIngressRule {
            from: Some(from.clone()),
            ports: Some(vec![port(gateway::ADMIN_PORT)]),
        });
    }
    NetworkPolicy {
        metadata: child_meta(lr, admin_name(lr), Component::Gateway),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Gateway)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The Ingress for the public Service. Pure; call only when `spec.ingress` is set.
pub fn desired_ingress(lr: &LiveRealtime) -> Ingress {
    let settings = lr
        .spec
        .ingress
        .clone()
        .unwrap_or_else(|| crate::crd::IngressSpec {
            enabled: true,
            class_name: None,
            host: String::new(),
            path: "/".to_owned(),
            tls_secret_name: None,
            annotations: BTreeMap::new(),
        });
    let mut annotations = BTreeMap::from([
        (
            "nginx.ingress.kubernetes.io/proxy-read-timeout".to_owned(),
            PROXY_TIMEOUT_SECONDS.to_owned(),
        ),
        (
            "nginx.ingress.kubernetes.io/proxy-send-timeout".to_owned(),
            PROXY_TIMEOUT_SECONDS.to_owned(),
        ),
    ]);
    if lr.spec.service.session_affinity == SessionAffinity::ClientIP {
        // ingress-nginx balances over endpoints itself (Service affinity does not apply):
        // a cookie keeps long-polling clients on one pod.
        annotations.insert(
            "nginx.ingress.kubernetes.io/affinity".to_owned(),
            "cookie".to_owned(),
        );
        annotations.insert(
            "nginx.ingress.kubernetes.io/session-cookie-name".to_owned(),
            "live-affinity".to_owned(),
        );
    }
    annotations.extend(settings.annotations.clone());
    let mut metadata = child_meta(lr, gateway_name(lr), Component::Gateway);
    metadata.annotations = Some(annotations);
    Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: settings.class_name.clone(),
            tls: settings.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![settings.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(settings.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(settings.path.clone()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: gateway_name(lr),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".to_owned()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

/// The HTTPRoute's group, version and kind.
pub fn http_route_gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute")
}

/// The HTTPRoute's API resource (plural `httproutes`).
pub fn http_route_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&http_route_gvk(), "httproutes")
}

/// The HTTPRoute for the public Service. Timeouts `0s` disable the request timeouts (Gateway
/// API ≥ v1.2), which would otherwise cut every WebSocket after the implementation's default.
/// Pure.
pub fn desired_http_route(lr: &LiveRealtime) -> DynamicObject {
    let settings = lr
        .spec
        .http_route
        .clone()
        .unwrap_or_else(|| crate::crd::HttpRouteSpec {
            enabled: true,
            parent_refs: Vec::new(),
            hostnames: Vec::new(),
            path: "/".to_owned(),
        });
    let mut obj = DynamicObject::new(&gateway_name(lr), &http_route_api_resource());
    obj.metadata = child_meta(lr, gateway_name(lr), Component::Gateway);
    let parents: Vec<_> = settings
        .parent_refs
        .iter()
        .map(|p| {
            let mut r =
                json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name});
            if let Some(ns) = &p.namespace {
                r["namespace"] = json!(ns);
            }
            if let Some(section) = &p.section_name {
                r["sectionName"] = json!(section);
            }
            r
        })
        .collect();
    let mut spec = json!({
        "parentRefs": parents,
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": settings.path}}],
            "backendRefs": [{"name": gateway_name(lr), "port": lr.spec.service.port}],
            "timeouts": {"request": "0s", "backendRequest": "0s"},
        }],
    });
    if !settings.hostnames.is_empty() {
        spec["hostnames"] = json!(settings.hostnames);
    }
    obj.data = json!({ "spec": spec });
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_admin_policy(from: serde_json::Value) -> LiveRealtime {
        let mut lr = LiveRealtime::test();
        lr.spec.admin = serde_json::from_value(
            serde_json::json!({"networkPolicy": {"enabled": true, "from": from}}),
        )
        .unwrap();
        lr
    }

    #[test]
    fn without_peers_the_admin_port_is_closed_and_the_public_port_open() {
        let np = desired_admin_policy(&with_admin_policy(serde_json::json!([])));
        let rules = np.spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 1, "an empty from would admit everyone");
        assert!(rules[0].from.is_none());
        assert_eq!(
            rules[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(gateway::HTTP_PORT))
        );
    }

    #[test]
    fn listed_peers_reach_the_admin_port() {
        let np = desired_admin_policy(&with_admin_policy(serde_json::json!([
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ])));
        let rules = np.spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].from.as_ref().unwrap().len(), 1);
        assert_eq!(
            rules[1].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(gateway::ADMIN_PORT))
        );
    }

    #[test]
    fn the_ingress_has_long_timeouts_affinity_and_user_annotations_win() {
        let mut lr = LiveRealtime::test();
        lr.spec.ingress = Some(
            serde_json::from_value(serde_json::json!({
                "enabled": true, "host": "live.example.com", "tlsSecretName": "live-tls",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"}
            }))
            .unwrap(),
        );
        let ing = desired_ingress(&lr);
        let a = ing.metadata.annotations.unwrap();
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "7200");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600");
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
        let spec = ing.spec.unwrap();
        assert_eq!(
            spec.tls.unwrap()[0].secret_name.as_deref(),
            Some("live-tls")
        );
        let rules = spec.rules.unwrap();
        let path = &rules[0].http.as_ref().unwrap().paths[0];
        assert_eq!(path.backend.service.as_ref().unwrap().name, "chat");
    }

    #[test]
    fn the_http_route_disables_request_timeouts() {
        let mut lr = LiveRealtime::test();
        lr.spec.http_route = Some(
            serde_json::from_value(serde_json::json!({
                "enabled": true, "parentRefs": [{"name": "public", "namespace": "gateways"}],
                "hostnames": ["live.example.com"]
            }))
            .unwrap(),
        );
        let route = desired_http_route(&lr);
        assert_eq!(route.data["spec"]["rules"][0]["timeouts"]["request"], "0s");
        assert_eq!(route.data["spec"]["parentRefs"][0]["namespace"], "gateways");
        assert_eq!(route.data["spec"]["rules"][0]["backendRefs"][0]["port"], 80);
    }
}

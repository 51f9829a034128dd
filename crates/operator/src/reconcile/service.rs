//! The gateway Services: `NAME`, the public Socket.IO port (what a LoadBalancer or an Ingress
//! publishes), and `NAME-admin`, the admin port (bridge, `/metrics`, health) as a ClusterIP
//! Service only, scraped by the ServiceMonitor. Keeping them apart means `type: LoadBalancer`
//! can never publish the bridge or the unauthenticated metrics.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, admin_name, child_meta, gateway, gateway_name, selector_labels};
use crate::crd::{LiveRealtime, SessionAffinity};

/// How long `ClientIP` affinity sticks (the Kubernetes default, 3 h): longer than any
/// polling session.
const AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;

/// Label telling the two gateway Services apart (`public` / `admin`); the ServiceMonitor
/// selects `admin`.
pub const SERVICE_LABEL: &str = "realtime.halobuzz.com/service";

/// The desired public gateway Service. Pure.
pub fn desired(lr: &LiveRealtime) -> Service {
    let spec = &lr.spec.service;
    let mut metadata = child_meta(lr, gateway_name(lr), Component::Gateway);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SERVICE_LABEL.to_owned(), "public".to_owned());
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let client_ip = spec.session_affinity == SessionAffinity::ClientIP;
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(selector_labels(lr, Component::Gateway)),
            session_affinity: Some(spec.session_affinity.as_str().to_owned()),
            session_affinity_config: client_ip.then_some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(AFFINITY_TIMEOUT_SECONDS),
                }),
            }),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: spec.port,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                // Tells Gateway API implementations and service meshes the port upgrades to
                // WebSocket.
                app_protocol: Some("kubernetes.io/ws".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The desired admin Service: ClusterIP, the admin port only. Pure.
pub fn desired_admin(lr: &LiveRealtime) -> Service {
    let mut metadata = child_meta(lr, admin_name(lr), Component::Gateway);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SERVICE_LABEL.to_owned(), "admin".to_owned());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(lr, Component::Gateway)),
            ports: Some(vec![ServicePort {
                name: Some("admin".to_owned()),
                port: gateway::ADMIN_PORT,
                target_port: Some(IntOrString::String("admin".to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("http".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_service_never_carries_the_admin_port() {
        let mut lr = LiveRealtime::test();
        lr.spec.service.type_ = crate::crd::ServiceType::LoadBalancer;
        let ports = desired(&lr).spec.unwrap().ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].app_protocol.as_deref(), Some("kubernetes.io/ws"));
        let admin = desired_admin(&lr).spec.unwrap();
        assert_eq!(admin.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(admin.ports.unwrap()[0].port, gateway::ADMIN_PORT);
    }

    #[test]
    fn snapshot_admin() {
        insta::assert_yaml_snapshot!(desired_admin(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_default() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_external_with_annotations() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test().external()));
    }
}

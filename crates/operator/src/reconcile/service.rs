//! The gateway Service: the public Socket.IO port and the admin port (scraped by the
//! ServiceMonitor, and home of the HTTP bridge).

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, child_meta, gateway, gateway_name, selector_labels};
use crate::crd::{LiveRealtime, SessionAffinity};

/// How long `ClientIP` affinity sticks (the Kubernetes default, 3 h): longer than any
/// polling session.
const AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;

/// The desired gateway Service. Pure.
pub fn desired(lr: &LiveRealtime) -> Service {
    let spec = &lr.spec.service;
    let mut metadata = child_meta(lr, gateway_name(lr), Component::Gateway);
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
            ports: Some(vec![
                ServicePort {
                    name: Some("http".to_owned()),
                    port: spec.port,
                    target_port: Some(IntOrString::String("http".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some("http".to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("admin".to_owned()),
                    port: gateway::ADMIN_PORT,
                    target_port: Some(IntOrString::String("admin".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some("http".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_default() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_external_with_annotations() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test().external()));
    }
}

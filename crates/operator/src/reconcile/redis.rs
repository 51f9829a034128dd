//! Managed Redis: one ephemeral Redis 7 (pub/sub, rate-limit and presence keys need no
//! persistence), hardened like the gateway, with a Service the gateway reaches it by and a
//! NetworkPolicy that lets only the gateway pods in (it has no password).
//! `External` mode creates nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployment::{pull_secrets, restricted_security_context};
use super::{Component, child_meta, gateway, labels, redis_name, selector_labels};
use crate::crd::{DEFAULT_REDIS_IMAGE, LiveRealtime};

/// The `redis` user of the official alpine image.
const REDIS_UID: i64 = 999;

/// The desired managed Redis Deployment. Pure.
pub fn desired_deployment(lr: &LiveRealtime) -> Deployment {
    let redis = &lr.spec.redis;
    let container = Container {
        name: "redis".to_owned(),
        image: Some(
            redis
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_REDIS_IMAGE.to_owned()),
        ),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        // No snapshots, no AOF: the data is ephemeral by design. Protected mode is off because
        // only the gateway pods reach this Service.
        args: Some(
            [
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--port",
                "6379",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("redis".to_owned()),
            container_port: gateway::REDIS_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("redis".to_owned()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["redis-cli".to_owned(), "ping".to_owned()]),
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        resources: Some(redis.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".to_owned(),
            mount_path: "/data".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Deployment {
        metadata: child_meta(lr, redis_name(lr), Component::Redis),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Redis)),
                ..LabelSelector::default()
            },
            // One instance: never run two side by side (gateways would split across them).
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(lr, Component::Redis)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    image_pull_secrets: pull_secrets(lr),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(REDIS_UID),
                        run_as_group: Some(REDIS_UID),
                        fs_group: Some(REDIS_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "data".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The desired managed Redis Service. Pure.
pub fn desired_service(lr: &LiveRealtime) -> Service {
    Service {
        metadata: child_meta(lr, redis_name(lr), Component::Redis),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(lr, Component::Redis)),
            ports: Some(vec![ServicePort {
                name: Some("redis".to_owned()),
                port: gateway::REDIS_PORT,
                target_port: Some(IntOrString::String("redis".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The desired NetworkPolicy: only this tier's gateway pods may reach Redis. Pure.
/// (Enforced only where the cluster's network plugin implements NetworkPolicy.)
pub fn desired_network_policy(lr: &LiveRealtime) -> NetworkPolicy {
    NetworkPolicy {
        metadata: child_meta(lr, redis_name(lr), Component::Redis),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Redis)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(lr, Component::Gateway)),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(gateway::REDIS_PORT)),
                    protocol: Some("TCP".to_owned()),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("256Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_deployment() {
        insta::assert_yaml_snapshot!(desired_deployment(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_network_policy() {
        insta::assert_yaml_snapshot!(desired_network_policy(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_service() {
        insta::assert_yaml_snapshot!(desired_service(&LiveRealtime::test()));
    }
}

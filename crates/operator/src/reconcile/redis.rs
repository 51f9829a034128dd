//! Managed Redis: one ephemeral Redis 7 for pub/sub, rate-limit windows, mutes and presence
//! snapshots — the small-scale choice (one pod, no replication; use an external Redis for HA).
//!
//! Decisions:
//! - **Password**: a generated Secret `NAME-redis` (`password`, and `redis.conf` with
//!   `requirepass`, mounted so the password never appears in a process's arguments). Created
//!   once, never rewritten; its digest is on both pod templates, so a re-created Secret rolls
//!   Redis and the gateways together.
//! - **Memory**: `maxmemory` is 75% of the container's memory limit (the rest covers client
//!   buffers and fragmentation) with `volatile-ttl`: under pressure Redis drops the keys nearest
//!   their expiry (10 s presence snapshots, rate windows) before mutes.
//! - **emptyDir, not a PVC**: nothing is worth keeping across a restart (everything expires
//!   within minutes and the gateways rewrite their snapshots within 2 s), and a zonal volume
//!   would pin the pod to one zone and add attach time to every reschedule.
//! - **Recreate, not RollingUpdate**: two Redis pods behind one Service would split the
//!   gateways between them and cross-pod delivery with them; a few seconds without Redis only
//!   degrade to local delivery (docs/scaling.md, failure semantics).
//! - **PodDisruptionBudget** `maxUnavailable: 1` by default: a drain may move Redis (same
//!   seconds-long degradation) rather than block cluster upgrades; `0` makes drains wait.
//!
//! A NetworkPolicy lets only this tier's gateway pods in. `External` mode creates nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, ExecAction, KeyToPath, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::deployment::{SECRETS_HASH_ANNOTATION, from_secret, pull_secrets};
use super::{Component, child_meta, gateway, labels, pod, redis_name, selector_labels};
use crate::crd::{DEFAULT_REDIS_IMAGE, LiveRealtime, SecretKeyRef};

/// The `redis` user of the official alpine image (it has no numeric `USER`).
const REDIS_UID: i64 = 999;

/// Key of the generated Secret holding the password.
pub const PASSWORD_KEY: &str = "password";
/// Key of the generated Secret holding `requirepass PASSWORD`.
pub const CONFIG_KEY: &str = "redis.conf";
/// Where the generated `redis.conf` is mounted.
const CONFIG_DIR: &str = "/etc/redis-auth";

/// The generated password's Secret key, for `REDIS_PASSWORD` and `REDISCLI_AUTH`.
pub fn password_key_ref(lr: &LiveRealtime) -> SecretKeyRef {
    SecretKeyRef {
        name: redis_name(lr),
        key: PASSWORD_KEY.to_owned(),
    }
}

/// The generated password Secret for `password` (random, chosen by the caller). Pure.
pub fn desired_secret(lr: &LiveRealtime, password: &str) -> Secret {
    Secret {
        metadata: child_meta(lr, redis_name(lr), Component::Redis),
        type_: Some("Opaque".to_owned()),
        string_data: Some(BTreeMap::from([
            (PASSWORD_KEY.to_owned(), password.to_owned()),
            (CONFIG_KEY.to_owned(), format!("requirepass {password}\n")),
        ])),
        ..Secret::default()
    }
}

/// Bytes of a Kubernetes memory quantity (`256Mi`, `1G`, `1e9`, `512`); `None` when it is not
/// one. Pure.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "m" => 1e-3,
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = number * factor;
    (bytes.is_finite() && bytes >= 0.0).then_some(bytes as u64)
}

/// `maxmemory` for a memory limit: 75% of it. Pure.
pub fn maxmemory(resources: &ResourceRequirements) -> Option<u64> {
    let limit = resources.limits.as_ref()?.get("memory")?;
    quantity_bytes(&limit.0).map(|b| b / 4 * 3)
}

/// The desired managed Redis Deployment. `secrets_hash` is the password's digest. Pure.
pub fn desired_deployment(lr: &LiveRealtime, secrets_hash: Option<&str>) -> Deployment {
    let redis = &lr.spec.redis;
    let resources = redis.resources.clone().unwrap_or_else(default_resources);
    // No snapshots, no AOF: the data is ephemeral by design. The first argument is the
    // generated config (the image's entrypoint runs `redis-server FILE.conf ARGS`).
    let mut args: Vec<String> = [
        &format!("{CONFIG_DIR}/{CONFIG_KEY}") as &str,
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
    .to_vec();
    if let Some(bytes) = maxmemory(&resources) {
        args.extend([
            "--maxmemory".to_owned(),
            bytes.to_string(),
            "--maxmemory-policy".to_owned(),
            "volatile-ttl".to_owned(),
        ]);
    }
    let container = Container {
        name: "redis".to_owned(),
        image: Some(
            redis
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_REDIS_IMAGE.to_owned()),
        ),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(args),
        // redis-cli (the readiness probe) authenticates with it.
        env: Some(vec![from_secret("REDISCLI_AUTH", &password_key_ref(lr))]),
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
        resources: Some(resources),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "live-data".to_owned(),
                mount_path: "/data".to_owned(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "live-redis-auth".to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let spec = PodSpec {
        enable_service_links: Some(false),
        image_pull_secrets: pull_secrets(lr),
        volumes: Some(vec![
            Volume {
                name: "live-data".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("64Mi".to_owned())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "live-redis-auth".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(redis_name(lr)),
                    items: Some(vec![KeyToPath {
                        key: CONFIG_KEY.to_owned(),
                        path: CONFIG_KEY.to_owned(),
                        ..KeyToPath::default()
                    }]),
                    optional: Some(false),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    let default_security = PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(REDIS_UID),
        run_as_group: Some(REDIS_UID),
        fs_group: Some(REDIS_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    };
    let annotations = secrets_hash
        .map(|h| BTreeMap::from([(SECRETS_HASH_ANNOTATION.to_owned(), h.to_owned())]))
        .unwrap_or_default();
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
                metadata: Some(pod::metadata(
                    &redis.pod_template,
                    labels(lr, Component::Redis),
                    annotations,
                )),
                spec: Some(pod::apply(
                    &redis.pod_template,
                    spec,
                    container,
                    default_security,
                    None,
                )),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The desired managed Redis PodDisruptionBudget. Pure.
pub fn desired_pdb(lr: &LiveRealtime) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(lr, redis_name(lr), Component::Redis),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                lr.spec.redis.pod_disruption_budget.max_unavailable,
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Redis)),
                ..LabelSelector::default()
            }),
            // A crash-looping Redis must not block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
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
    fn memory_quantities_parse_to_bytes() {
        assert_eq!(quantity_bytes("256Mi"), Some(256 * 1024 * 1024));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(quantity_bytes("512"), Some(512));
        assert_eq!(quantity_bytes("lots"), None);
        assert_eq!(quantity_bytes("12Qi"), None);
    }

    #[test]
    fn maxmemory_is_three_quarters_of_the_limit_with_volatile_ttl() {
        let d = desired_deployment(&LiveRealtime::test(), None);
        let args = d.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        let at = args.iter().position(|a| a == "--maxmemory").unwrap();
        assert_eq!(args[at + 1], (256u64 * 1024 * 1024 / 4 * 3).to_string());
        assert!(args.ends_with(&["--maxmemory-policy".to_owned(), "volatile-ttl".to_owned()]));
        assert!(
            args[0].ends_with("redis.conf"),
            "the password is in a file, not argv"
        );
    }

    #[test]
    fn the_password_secret_holds_the_password_and_requirepass() {
        let s = desired_secret(&LiveRealtime::test(), "pw");
        let data = s.string_data.unwrap();
        assert_eq!(data[PASSWORD_KEY], "pw");
        assert_eq!(data[CONFIG_KEY], "requirepass pw\n");
        assert_eq!(s.metadata.name.as_deref(), Some("chat-redis"));
    }

    #[test]
    fn snapshot_deployment() {
        insta::assert_yaml_snapshot!(desired_deployment(&LiveRealtime::test(), Some("digest")));
    }

    #[test]
    fn snapshot_pdb() {
        insta::assert_yaml_snapshot!(desired_pdb(&LiveRealtime::test()));
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

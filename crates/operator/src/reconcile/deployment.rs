//! The gateway Deployment.
//!
//! Everything that needs a restart (image, env, secret references, Redis URL, drain window) is in
//! the pod template, and the template carries [`RESTART_HASH_ANNOTATION`], a hash of exactly
//! that. The ConfigMap *content* is not in the template: it is mounted as a directory (never
//! `subPath`, which the kubelet does not refresh), so config edits hot-reload without a restart.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, LocalObjectReference,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, SleepAction, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use live_api::CONFIG_FILE_NAME;

use super::{
    Component, child_meta, config_map_name, gateway, gateway_name, labels, redis_name,
    selector_labels, sha256_hex,
};
use crate::crd::{DEFAULT_GATEWAY_IMAGE, LiveRealtime, RedisMode, SecretKeyRef};

/// Pod-template annotation: sha256 of the restart-only settings. A change rolls the pods.
pub const RESTART_HASH_ANNOTATION: &str = "realtime.halobuzz.com/restart-hash";

/// The non-root user of the distroless gateway image.
const GATEWAY_UID: i64 = 65_532;

/// The desired gateway Deployment. Pure.
pub fn desired(lr: &LiveRealtime) -> Deployment {
    let template = pod_template(lr);
    Deployment {
        metadata: child_meta(lr, gateway_name(lr), Component::Gateway),
        spec: Some(DeploymentSpec {
            // Absent when an HPA owns scaling: with both setting it they would fight on every apply.
            replicas: (!lr.spec.autoscaling_enabled()).then_some(lr.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Gateway)),
                ..LabelSelector::default()
            },
            // Surge first, never go below the desired count: every lost pod drops its sockets.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The restart hash of `lr`'s pod template (also written to status).
pub fn restart_hash(lr: &LiveRealtime) -> String {
    pod_template(lr)
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|mut a| a.remove(RESTART_HASH_ANNOTATION))
        .unwrap_or_default()
}

fn pod_template(lr: &LiveRealtime) -> PodTemplateSpec {
    let spec = pod_spec(lr);
    // Hash the pod spec itself: it holds exactly the restart-only settings, and the ConfigMap
    // appears in it only by name.
    let hash = sha256_hex(serde_json::to_string(&spec).unwrap_or_default().as_bytes());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(lr, Component::Gateway)),
            annotations: Some(BTreeMap::from([(RESTART_HASH_ANNOTATION.to_owned(), hash)])),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}

fn pod_spec(lr: &LiveRealtime) -> PodSpec {
    PodSpec {
        containers: vec![container(lr)],
        // The gateway never calls the Kubernetes API.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(lr.spec.termination_grace_period_seconds()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(GATEWAY_UID),
            run_as_group: Some(GATEWAY_UID),
            fs_group: Some(GATEWAY_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: pull_secrets(lr),
        // Spread over nodes when possible so one node loss drops as few sockets as possible.
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Gateway)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]),
        volumes: Some(vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(lr),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("64Mi".to_owned())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    }
}

/// Image pull secrets of the tier (shared with managed Redis).
pub(crate) fn pull_secrets(lr: &LiveRealtime) -> Option<Vec<LocalObjectReference>> {
    (!lr.spec.image_pull_secrets.is_empty()).then(|| {
        lr.spec
            .image_pull_secrets
            .iter()
            .map(|name| LocalObjectReference { name: name.clone() })
            .collect()
    })
}

/// The restricted-profile container security context shared by every container we create.
pub(crate) fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn container(lr: &LiveRealtime) -> Container {
    let spec = &lr.spec;
    Container {
        name: "gateway".to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| DEFAULT_GATEWAY_IMAGE.to_owned()),
        ),
        image_pull_policy: Some(spec.image_pull_policy.as_str().to_owned()),
        env: Some(env(lr)),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".to_owned()),
                container_port: gateway::HTTP_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".to_owned()),
                container_port: gateway::ADMIN_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        liveness_probe: Some(http_probe("/healthz", 3)),
        readiness_probe: Some(http_probe("/readyz", 1)),
        lifecycle: Some(Lifecycle {
            // Keep serving while endpoints stop routing here; no shell needed.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: spec.pre_stop_sleep_seconds,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: gateway::CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

fn http_probe(path: &str, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("128Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("512Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn from_secret(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env(lr: &LiveRealtime) -> Vec<EnvVar> {
    let spec = &lr.spec;
    let mut env = vec![
        value("LIVE_LISTEN", format!("0.0.0.0:{}", gateway::HTTP_PORT)),
        value(
            "LIVE_ADMIN_LISTEN",
            format!("0.0.0.0:{}", gateway::ADMIN_PORT),
        ),
        value(
            "LIVE_CONFIG",
            format!("{}/{CONFIG_FILE_NAME}", gateway::CONFIG_DIR),
        ),
        value("LIVE_DRAIN_SECONDS", spec.drain_seconds.to_string()),
        value("LIVE_LOG_FORMAT", "json"),
        // The gateway names itself by pod in shared (Redis) counts.
        EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    if let Some(window) = spec.write_coalesce_ms {
        env.push(value("LIVE_WS_WRITE_COALESCE_MS", window.to_string()));
    }
    if let Some(secret) = &spec.jwt_secret_ref {
        env.push(from_secret("JWT_SECRET", secret));
    }
    if let Some(public) = &spec.jwt_public_key {
        env.push(from_secret("JWT_PUBLIC_KEY", &public.secret_ref));
        env.push(value("JWT_ALGORITHM", public.algorithm.as_str()));
    }
    if let Some(issuer) = &spec.jwt_issuer {
        env.push(value("JWT_ISSUER", issuer.clone()));
    }
    if let Some(audience) = &spec.jwt_audience {
        env.push(value("JWT_AUDIENCE", audience.clone()));
    }
    match spec.redis.mode {
        RedisMode::Managed => env.push(value(
            "REDIS_URL",
            format!("redis://{}:{}", redis_name(lr), gateway::REDIS_PORT),
        )),
        RedisMode::External => {
            if let Some(secret) = &spec.redis.url_secret_ref {
                env.push(from_secret("REDIS_URL", secret));
            } else if let Some(url) = &spec.redis.url {
                env.push(value("REDIS_URL", url.clone()));
            }
            // An external Redis may serve several tiers: keep their keys and channels apart.
            env.push(value(
                "LIVE_REDIS_PREFIX",
                format!(
                    "live.{}.{}",
                    lr.metadata.namespace.as_deref().unwrap_or_default(),
                    gateway_name(lr)
                ),
            ));
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_names(d: &Deployment) -> Vec<String> {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect()
    }

    #[test]
    fn an_autoscaled_deployment_leaves_replicas_to_the_hpa() {
        let d = desired(&LiveRealtime::test().autoscaled());
        assert_eq!(d.spec.unwrap().replicas, None);
        let d = desired(&LiveRealtime::test());
        assert_eq!(d.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn hot_settings_do_not_change_the_pod_template() {
        let a = LiveRealtime::test();
        let mut b = a.clone();
        b.spec.rate_limits.messages_per_minute = 1;
        b.spec.cors.allowed_origins = Some(vec!["https://x.example".into()]);
        b.spec.moderation.mute_seconds = 5;
        b.spec.limits.max_gift_qty = 1;
        assert_eq!(desired(&a), desired(&b));
    }

    #[test]
    fn restart_settings_change_the_restart_hash() {
        let a = LiveRealtime::test();
        let mut b = a.clone();
        b.spec.drain_seconds = 40;
        assert_ne!(restart_hash(&a), restart_hash(&b));
        let mut c = a.clone();
        c.spec.image = Some("ghcr.io/live-realtime/live-gateway:9.9.9".into());
        assert_ne!(restart_hash(&a), restart_hash(&c));
        assert_eq!(restart_hash(&a).len(), 64);
    }

    #[test]
    fn the_grace_period_outlasts_prestop_and_drain() {
        let lr = LiveRealtime::test();
        let d = desired(&lr);
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(20 + 5 + 15));
    }

    #[test]
    fn the_config_is_mounted_as_a_directory_never_sub_path() {
        let d = desired(&LiveRealtime::test());
        let pod = d.spec.unwrap().template.spec.unwrap();
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().all(|m| m.sub_path.is_none()));
        assert!(mounts.iter().any(|m| m.mount_path == "/etc/live-gateway"));
    }

    #[test]
    fn public_key_auth_and_external_redis_come_from_secrets() {
        let d = desired(&LiveRealtime::test().external());
        let names = env_names(&d);
        assert!(names.contains(&"JWT_PUBLIC_KEY".to_owned()));
        assert!(names.contains(&"JWT_ALGORITHM".to_owned()));
        assert!(!names.contains(&"JWT_SECRET".to_owned()));
        assert!(names.contains(&"REDIS_URL".to_owned()));
    }

    #[test]
    fn the_write_coalescing_window_is_passed_only_when_set() {
        let d = desired(&LiveRealtime::test());
        assert!(!env_names(&d).contains(&"LIVE_WS_WRITE_COALESCE_MS".to_owned()));
        let mut lr = LiveRealtime::test();
        lr.spec.write_coalesce_ms = Some(0);
        let d = desired(&lr);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let var = pod.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "LIVE_WS_WRITE_COALESCE_MS")
            .cloned()
            .unwrap();
        assert_eq!(var.value.as_deref(), Some("0"));
    }

    #[test]
    fn the_default_image_is_the_matching_gateway_release() {
        let mut lr = LiveRealtime::test();
        lr.spec.image = None;
        let d = desired(&lr);
        let image = d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone();
        assert_eq!(
            image.unwrap(),
            format!(
                "ghcr.io/live-realtime/live-gateway:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn snapshot_default() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_autoscaled_external() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test().autoscaled().external()));
    }
}

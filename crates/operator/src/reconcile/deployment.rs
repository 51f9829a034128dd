//! The gateway Deployment.
//!
//! Everything that needs a restart (image, env, secret references, Redis URL, drain window) is in
//! the pod template, and the template carries [`RESTART_HASH_ANNOTATION`], a hash of exactly
//! that. The ConfigMap *content* is not in the template: it is mounted as a directory (never
//! `subPath`, which the kubelet does not refresh), so config edits hot-reload without a restart.
//! So is the JWT keys Secret (`JWT_KEYS_DIR`), which the gateway reloads. Secrets read only at
//! start (env variables, the Redis CA) are hashed into [`SECRETS_HASH_ANNOTATION`], so rotating
//! one rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, LocalObjectReference,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector,
    SecretVolumeSource, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use live_api::CONFIG_FILE_NAME;

use super::{
    Component, child_meta, config_map_name, gateway, gateway_name, labels, pod, redis_name,
    selector_labels, sha256_hex,
};
use crate::crd::{DEFAULT_GATEWAY_IMAGE, LiveRealtime, RedisMode, SecretKeyRef};

/// Pod-template annotation: sha256 of the restart-only settings. A change rolls the pods.
pub const RESTART_HASH_ANNOTATION: &str = "realtime.halobuzz.com/restart-hash";

/// Pod-template annotation: sha256 of the Secret data the pods read at start only.
pub const SECRETS_HASH_ANNOTATION: &str = "realtime.halobuzz.com/secrets-hash";

/// Where the JWT keys Secret is mounted (`JWT_KEYS_DIR`).
pub const JWT_KEYS_DIR: &str = "/etc/live-gateway/jwt-keys";

/// Where the external Redis CA is mounted (`REDIS_TLS_CA_FILE`).
pub const REDIS_CA_DIR: &str = "/etc/live-gateway/redis-ca";

/// The desired gateway Deployment. `secrets_hash` is the digest of the start-only Secrets
/// (`None`: not known, no annotation). Pure.
pub fn desired(lr: &LiveRealtime, secrets_hash: Option<&str>) -> Deployment {
    let template = pod_template(lr, secrets_hash);
    Deployment {
        metadata: child_meta(lr, gateway_name(lr), Component::Gateway),
        spec: Some(DeploymentSpec {
            // Always the LiveRealtime's count: the HPA scales the LiveRealtime (its scale
            // subresource), so the operator is the Deployment's only writer of `replicas`.
            replicas: Some(lr.spec.replicas),
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

/// The gateway image: `spec.image`, or the release matching the operator.
pub fn image(lr: &LiveRealtime) -> String {
    lr.spec
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_GATEWAY_IMAGE.to_owned())
}

/// The restart hash of `lr`'s pod template (also written to status).
pub fn restart_hash(lr: &LiveRealtime) -> String {
    sha256_hex(
        serde_json::to_string(&pod_spec(lr))
            .unwrap_or_default()
            .as_bytes(),
    )
}

fn pod_template(lr: &LiveRealtime, secrets_hash: Option<&str>) -> PodTemplateSpec {
    let spec = pod_spec(lr);
    // Hash the pod spec itself: it holds exactly the restart-only settings, and the ConfigMap
    // appears in it only by name.
    let hash = sha256_hex(serde_json::to_string(&spec).unwrap_or_default().as_bytes());
    let mut annotations = BTreeMap::from([(RESTART_HASH_ANNOTATION.to_owned(), hash)]);
    if let Some(secrets) = secrets_hash {
        annotations.insert(SECRETS_HASH_ANNOTATION.to_owned(), secrets.to_owned());
    }
    PodTemplateSpec {
        metadata: Some(pod::metadata(
            &lr.spec.pod_template,
            labels(lr, Component::Gateway),
            annotations,
        )),
        spec: Some(spec),
    }
}

fn pod_spec(lr: &LiveRealtime) -> PodSpec {
    let mut volumes = vec![
        Volume {
            name: "live-config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(lr),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "live-tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if let Some(keys) = &lr.spec.jwt_keys_secret_ref {
        // The whole Secret, each key a file named by its kid; the kubelet swaps the directory
        // when the Secret changes and the gateway reloads it.
        volumes.push(Volume {
            name: "live-jwt-keys".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(keys.name.clone()),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(ca) = redis_ca(lr) {
        volumes.push(Volume {
            name: "live-redis-ca".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".to_owned(),
                    ..KeyToPath::default()
                }]),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let spec = PodSpec {
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(lr.spec.termination_grace_period_seconds()),
        image_pull_secrets: pull_secrets(lr),
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    pod::apply(
        &lr.spec.pod_template,
        spec,
        container(lr),
        pod::restricted_pod_security_context(),
        Some(pod::default_spread(&selector_labels(
            lr,
            Component::Gateway,
        ))),
    )
}

fn redis_ca(lr: &LiveRealtime) -> Option<&SecretKeyRef> {
    (lr.spec.redis.mode == RedisMode::External)
        .then(|| lr.spec.redis.tls.as_ref()?.ca_secret_ref.as_ref())
        .flatten()
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

fn container(lr: &LiveRealtime) -> Container {
    let spec = &lr.spec;
    let mut mounts = vec![
        VolumeMount {
            name: "live-config".to_owned(),
            mount_path: gateway::CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "live-tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    if spec.jwt_keys_secret_ref.is_some() {
        mounts.push(VolumeMount {
            name: "live-jwt-keys".to_owned(),
            mount_path: JWT_KEYS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    if redis_ca(lr).is_some() {
        mounts.push(VolumeMount {
            name: "live-redis-ca".to_owned(),
            mount_path: REDIS_CA_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: "gateway".to_owned(),
        image: Some(image(lr)),
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
        volume_mounts: Some(mounts),
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

pub(crate) fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

pub(crate) fn from_secret(name: &str, secret: &SecretKeyRef) -> EnvVar {
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
    if spec.admin.allow_admin_tokens {
        env.push(value("LIVE_BRIDGE_ALLOW_ADMIN", "true"));
    }
    if let Some(secret) = &spec.jwt_secret_ref {
        env.push(from_secret("JWT_SECRET", secret));
    }
    if let Some(public) = &spec.jwt_public_key {
        env.push(from_secret("JWT_PUBLIC_KEY", &public.secret_ref));
        env.push(value("JWT_ALGORITHM", public.algorithm.as_str()));
    }
    if spec.jwt_keys_secret_ref.is_some() {
        env.push(value("JWT_KEYS_DIR", JWT_KEYS_DIR));
    }
    if let Some(issuer) = &spec.jwt_issuer {
        env.push(value("JWT_ISSUER", issuer.clone()));
    }
    if let Some(audience) = &spec.jwt_audience {
        env.push(value("JWT_AUDIENCE", audience.clone()));
    }
    match spec.redis.mode {
        RedisMode::Managed => {
            env.push(value(
                "REDIS_URL",
                format!("redis://{}:{}", redis_name(lr), gateway::REDIS_PORT),
            ));
            env.push(from_secret(
                "REDIS_PASSWORD",
                &super::redis::password_key_ref(lr),
            ));
        }
        RedisMode::External => {
            if let Some(secret) = &spec.redis.url_secret_ref {
                env.push(from_secret("REDIS_URL", secret));
            } else if let Some(url) = &spec.redis.url {
                env.push(value("REDIS_URL", url.clone()));
            }
            if let Some(secret) = &spec.redis.password_secret_ref {
                env.push(from_secret("REDIS_PASSWORD", secret));
            }
            if redis_ca(lr).is_some() {
                env.push(value("REDIS_TLS_CA_FILE", format!("{REDIS_CA_DIR}/ca.crt")));
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
    fn the_deployment_always_runs_the_liverealtimes_replica_count() {
        let mut lr = LiveRealtime::test().autoscaled();
        lr.spec.replicas = 7;
        assert_eq!(desired(&lr, None).spec.unwrap().replicas, Some(7));
        let d = desired(&LiveRealtime::test(), None);
        assert_eq!(d.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn the_default_pod_is_restricted_without_a_fixed_uid_and_spread_over_zones_and_nodes() {
        let d = desired(&LiveRealtime::test(), None);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.run_as_user, None,
            "OpenShift restricted-v2 assigns the UID"
        );
        let keys: Vec<_> = pod
            .topology_spread_constraints
            .unwrap()
            .into_iter()
            .map(|c| c.topology_key)
            .collect();
        assert_eq!(
            keys,
            ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn the_pod_template_surface_reaches_the_pod() {
        let mut lr = LiveRealtime::test();
        let t: crate::crd::PodTemplate = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"team": "chat"}, "annotations": {"a": "b"}},
            "nodeSelector": {"pool": "realtime"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "priorityClassName": "high",
            "serviceAccountName": "gw",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000650000},
            "env": [{"name": "LIVE_LOG_FORMAT", "value": "text"}, {"name": "X", "value": "1"}],
            "envFrom": [{"configMapRef": {"name": "extra"}}],
            "volumes": [{"name": "certs", "emptyDir": {}}],
            "volumeMounts": [{"name": "certs", "mountPath": "/certs"}],
            "sidecars": [{"name": "proxy", "image": "envoy:1"}]
        }))
        .unwrap();
        lr.spec.pod_template = t;
        let d = desired(&lr, Some("abc"));
        let template = d.spec.unwrap().template;
        let meta = template.metadata.unwrap();
        assert_eq!(meta.labels.unwrap()["team"], "chat");
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations["a"], "b");
        assert_eq!(annotations[SECRETS_HASH_ANNOTATION], "abc");
        let pod = template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "realtime");
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(pod.service_account_name.as_deref(), Some("gw"));
        assert_eq!(pod.security_context.unwrap().run_as_user, Some(1000650000));
        assert_eq!(pod.containers.len(), 2);
        assert_eq!(pod.containers[1].name, "proxy");
        let main = &pod.containers[0];
        let env = main.env.clone().unwrap();
        let format: Vec<_> = env.iter().filter(|e| e.name == "LIVE_LOG_FORMAT").collect();
        assert_eq!(format.len(), 1);
        assert_eq!(format[0].value.as_deref(), Some("text"));
        assert!(env.iter().any(|e| e.name == "X"));
        assert!(
            main.volume_mounts
                .clone()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/certs")
        );
        assert!(pod.volumes.unwrap().iter().any(|v| v.name == "certs"));
    }

    #[test]
    fn jwt_keys_are_a_mounted_directory_outside_the_secrets_hash() {
        let mut lr = LiveRealtime::test();
        lr.spec.jwt_keys_secret_ref = Some(crate::crd::SecretRef {
            name: "chat-keys".into(),
        });
        let d = desired(&lr, None);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "live-jwt-keys")
            .unwrap();
        let secret = vol.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("chat-keys"));
        assert!(
            secret.items.is_none(),
            "every key of the Secret is a key file"
        );
        let env = pod.containers[0].env.clone().unwrap();
        let dir = env.iter().find(|e| e.name == "JWT_KEYS_DIR").unwrap();
        assert_eq!(dir.value.as_deref(), Some(JWT_KEYS_DIR));
    }

    #[test]
    fn admin_bridge_tokens_are_opt_in() {
        let d = desired(&LiveRealtime::test(), None);
        assert!(!env_names(&d).contains(&"LIVE_BRIDGE_ALLOW_ADMIN".to_owned()));
        let mut lr = LiveRealtime::test();
        lr.spec.admin.allow_admin_tokens = true;
        assert!(env_names(&desired(&lr, None)).contains(&"LIVE_BRIDGE_ALLOW_ADMIN".to_owned()));
    }

    #[test]
    fn external_redis_tls_and_password_come_from_secrets() {
        let mut lr = LiveRealtime::test();
        lr.spec.redis = serde_json::from_value(serde_json::json!({
            "mode": "External", "url": "rediss://r.example:6380",
            "passwordSecretRef": {"name": "r", "key": "password"},
            "tls": {"caSecretRef": {"name": "r-ca", "key": "ca.pem"}}
        }))
        .unwrap();
        let d = desired(&lr, None);
        let names = env_names(&d);
        assert!(names.contains(&"REDIS_PASSWORD".to_owned()));
        assert!(names.contains(&"REDIS_TLS_CA_FILE".to_owned()));
        let pod = d.spec.unwrap().template.spec.unwrap();
        let ca = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "live-redis-ca")
            .unwrap();
        assert_eq!(ca.secret.unwrap().items.unwrap()[0].path, "ca.crt");
    }

    #[test]
    fn hot_settings_do_not_change_the_pod_template() {
        let a = LiveRealtime::test();
        let mut b = a.clone();
        b.spec.rate_limits.messages_per_minute = 1;
        b.spec.cors.allowed_origins = Some(vec!["https://x.example".into()]);
        b.spec.moderation.mute_seconds = 5;
        b.spec.limits.max_gift_qty = 1;
        assert_eq!(desired(&a, None), desired(&b, None));
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
        let d = desired(&lr, None);
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(20 + 5 + 15));
    }

    #[test]
    fn the_config_is_mounted_as_a_directory_never_sub_path() {
        let d = desired(&LiveRealtime::test(), None);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().all(|m| m.sub_path.is_none()));
        assert!(mounts.iter().any(|m| m.mount_path == "/etc/live-gateway"));
    }

    #[test]
    fn public_key_auth_and_external_redis_come_from_secrets() {
        let d = desired(&LiveRealtime::test().external(), None);
        let names = env_names(&d);
        assert!(names.contains(&"JWT_PUBLIC_KEY".to_owned()));
        assert!(names.contains(&"JWT_ALGORITHM".to_owned()));
        assert!(!names.contains(&"JWT_SECRET".to_owned()));
        assert!(names.contains(&"REDIS_URL".to_owned()));
    }

    #[test]
    fn the_write_coalescing_window_is_passed_only_when_set() {
        let d = desired(&LiveRealtime::test(), None);
        assert!(!env_names(&d).contains(&"LIVE_WS_WRITE_COALESCE_MS".to_owned()));
        let mut lr = LiveRealtime::test();
        lr.spec.write_coalesce_ms = Some(0);
        let d = desired(&lr, None);
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
        let d = desired(&lr, None);
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
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test(), None));
    }

    #[test]
    fn snapshot_autoscaled_external() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test().autoscaled().external(), None));
    }
}

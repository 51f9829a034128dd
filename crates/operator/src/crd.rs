//! The `LiveRealtime` custom resource: its spec, status and the validation rules the apiserver
//! enforces (OpenAPI schema + CEL), so a bad spec fails at `kubectl apply`, not in the operator.
//!
//! The gateway config sections (`rateLimits`, `cors`, `moderation`, `limits`, `presence`, `auth`, `history`) are the very types
//! `live-gateway` reloads, re-exported from `live-api`, so the CRD, the ConfigMap and the gateway
//! cannot drift apart.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, PodSecurityContext, ResourceRequirements,
    SecurityContext, Toleration, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use live_api::{Auth, Cors, GatewayConfig, History, Limits, Moderation, Presence, RateLimits};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the resource; also the prefix of our annotations.
pub const GROUP: &str = "realtime.halobuzz.com";

/// Setting this annotation to `"true"` on a `LiveRealtime` stops reconciliation of its children
/// (status still says so, in the `ReconciliationPaused` condition).
pub const PAUSE_ANNOTATION: &str = "realtime.halobuzz.com/paused";

/// The gateway image used when `spec.image` is empty: the release matching this operator, so an
/// operator upgrade moves gateways that did not pin an image.
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!(
    "ghcr.io/live-realtime/live-gateway:",
    env!("CARGO_PKG_VERSION")
);

/// Managed Redis image. The gateway's Redis adapter needs Redis 7 or newer.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4-alpine";

/// Desired state of a live-gateway tier: Deployment, Service, config, Redis, autoscaling,
/// monitoring and disruption budget, reconciled by `live-operator`.
// Each `printcolumn(...)` repeats `type_ = ...` legitimately; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "realtime.halobuzz.com",
    version = "v1alpha1",
    kind = "LiveRealtime",
    namespaced,
    status = "LiveRealtimeStatus",
    derive = "PartialEq",
    shortname = "lrt",
    category = "realtime",
    doc = "A live-gateway tier (Socket.IO realtime gateway) reconciled by live-operator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "ready / desired gateway pods",
        json_path = ".status.readyRatio"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        description = "reason of the Ready condition",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        description = "gateway image",
        json_path = ".status.image"
    ),
    printcolumn(
        name = "Redis",
        type_ = "string",
        priority = "1",
        json_path = ".spec.redis.mode"
    ),
    printcolumn(
        name = "ConnsPerPod",
        type_ = "integer",
        priority = "1",
        description = "autoscaling target: WebSocket connections per pod",
        json_path = ".spec.autoscaling.targetConnectionsPerPod"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    // Every derived name must be a valid DNS-1035 label (Service names) and no two LiveRealtimes
    // may derive the same name: see `crate::reconcile::names`, which this rule is tested against.
    validation = Rule::new(
        "size(self.metadata.name) <= 57 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && !self.metadata.name.endsWith('-admin') && !self.metadata.name.endsWith('-config') && !self.metadata.name.endsWith('-redis')"
    ).message("metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter) of at most 57 characters that does not end in -admin, -config or -redis: the operator derives Service names from it"),
    cel
)]
#[x_kube(validation = Rule::new("!(has(self.jwtSecretRef) && has(self.jwtPublicKey)) && (has(self.jwtSecretRef) || has(self.jwtPublicKey) || has(self.jwtKeysSecretRef))")
    .message("set jwtKeysSecretRef, or exactly one of jwtSecretRef (HS256) or jwtPublicKey (RS256/ES256), or jwtKeysSecretRef with one of them"))]
#[x_kube(validation = Rule::new(
    "!has(self.terminationGracePeriodSeconds) || self.terminationGracePeriodSeconds > self.drainSeconds + self.preStopSleepSeconds"
).message("terminationGracePeriodSeconds must be greater than drainSeconds + preStopSleepSeconds, or the kubelet kills pods mid-drain"))]
#[serde(rename_all = "camelCase")]
pub struct LiveRealtimeSpec {
    /// Gateway container image. Empty: the gateway release matching the operator version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the gateway container (default `IfNotPresent`).
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Names of Secrets (in this namespace) used to pull the gateway and Redis images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Gateway pods (default 2). The scale subresource's target: `kubectl scale`, and the HPA
    /// when autoscaling is on (so turning autoscaling off keeps the count it reached).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Horizontal autoscaling on WebSocket connections per pod. When enabled, an HPA scales this
    /// LiveRealtime (its scale subresource, i.e. `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// HS256 signing secret: a key of a Secret in this namespace. Never inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// Public-key verification (RS256 or ES256) instead of an HS256 secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_key: Option<JwtPublicKey>,
    /// A Secret whose every key is one verification key, named by its `kid` (PEM public key or
    /// HS256 secret). Mounted as a directory (`JWT_KEYS_DIR`): adding or removing a key reloads
    /// without a restart, so keys rotate with two valid at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_keys_secret_ref: Option<SecretRef>,
    /// Required `iss` claim, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// Allowed browser origins (hot-reloaded).
    #[serde(default)]
    pub cors: Cors,
    /// Per-user rate limits (hot-reloaded).
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Moderation rights and mute length (hot-reloaded).
    #[serde(default)]
    pub moderation: Moderation,
    /// Chat and gift input limits (hot-reloaded).
    #[serde(default)]
    pub limits: Limits,
    /// Presence coalescing for large rooms (hot-reloaded).
    #[serde(default)]
    pub presence: Presence,
    /// Token lifecycle on live connections: the `auth:expiring` lead (hot-reloaded).
    #[serde(default)]
    pub auth: Auth,
    /// Channel history and recovery on reconnect (hot-reloaded).
    #[serde(default)]
    pub history: History,
    /// Redis for cross-pod broadcast, rate limits and presence.
    #[serde(default)]
    pub redis: RedisSpec,
    /// Prometheus integration.
    #[serde(default)]
    pub monitoring: Monitoring,
    /// Gateway container resources. Default: requests 100m CPU / 128Mi, limit 512Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PodDisruptionBudget for the gateway pods.
    #[serde(default)]
    pub pod_disruption_budget: PodDisruptionBudgetSpec,
    /// The public gateway Service (Socket.IO only).
    #[serde(default)]
    pub service: ServiceSpec,
    /// The admin port (bridge, metrics, health): its own ClusterIP Service `NAME-admin`.
    #[serde(default)]
    pub admin: AdminSpec,
    /// An optional Ingress in front of the public Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// An optional Gateway API HTTPRoute in front of the public Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<HttpRouteSpec>,
    /// Gateway pod settings: metadata, scheduling, security, env, volumes, sidecars.
    #[serde(default)]
    pub pod_template: PodTemplate,
    /// Seconds a terminating gateway keeps serving while it tells clients to reconnect
    /// elsewhere (default 20). Changing it restarts the pods.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: i64,
    /// Seconds the preStop hook waits so endpoints stop routing to a terminating pod before it
    /// starts draining (default 5).
    #[serde(default = "default_pre_stop_sleep_seconds")]
    // At least 1: a zero-second sleep action needs a feature gate on Kubernetes < 1.34.
    #[schemars(range(min = 1, max = 300))]
    pub pre_stop_sleep_seconds: i64,
    /// WebSocket write-coalescing window in milliseconds (`LIVE_WS_WRITE_COALESCE_MS`). Empty:
    /// the gateway's default, 20. 0 turns coalescing off. Changing it restarts the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub write_coalesce_ms: Option<i64>,
    /// Pod grace period. Empty: `drainSeconds + preStopSleepSeconds + 15`. Must be larger than
    /// `drainSeconds + preStopSleepSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7200))]
    pub termination_grace_period_seconds: Option<i64>,
}

fn default_replicas() -> i32 {
    2
}

fn default_drain_seconds() -> i64 {
    20
}

fn default_pre_stop_sleep_seconds() -> i64 {
    5
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A key of a Secret in the LiveRealtime's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A whole Secret in the LiveRealtime's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Asymmetric token verification.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtPublicKey {
    /// The PEM public key: a key of a Secret in this namespace.
    pub secret_ref: SecretKeyRef,
    /// Signature algorithm (default `RS256`).
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
}

/// Asymmetric JWT algorithms the gateway verifies.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum JwtAlgorithm {
    #[default]
    #[serde(rename = "RS256")]
    Rs256,
    #[serde(rename = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

/// Autoscaling on the gateway's `ws_active_connections` metric (served to the HPA by
/// prometheus-adapter or another custom-metrics provider).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not exceed maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Create the HPA (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Fewest gateway pods (default 2).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most gateway pods (default 10).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average open WebSocket connections per pod the HPA aims for (default 1000).
    #[serde(default = "default_target_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub target_connections_per_pod: i64,
    /// How fast to remove pods. Every removed pod makes its clients reconnect to the survivors,
    /// so the default is slow: wait 600 s, then at most 1 pod per 120 s.
    #[serde(default)]
    pub scale_down: ScaleDown,
}

fn default_min_replicas() -> i32 {
    2
}

fn default_max_replicas() -> i32 {
    10
}

fn default_target_connections() -> i64 {
    1000
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            enabled: false,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_connections_per_pod: default_target_connections(),
            scale_down: ScaleDown::default(),
        }
    }
}

/// HPA scale-down behaviour.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    /// Seconds of lower recommendations before scaling down (default 600).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,
    /// Pods removed at most per period (default 1).
    #[serde(default = "default_pods_per_period")]
    #[schemars(range(min = 1, max = 100))]
    pub pods_per_period: i32,
    /// The period, in seconds (default 120).
    #[serde(default = "default_period")]
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

fn default_stabilization() -> i32 {
    600
}

fn default_pods_per_period() -> i32 {
    1
}

fn default_period() -> i32 {
    120
}

impl Default for ScaleDown {
    fn default() -> Self {
        Self {
            stabilization_window_seconds: default_stabilization(),
            pods_per_period: default_pods_per_period(),
            period_seconds: default_period(),
        }
    }
}

/// Where Redis comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "self.mode == 'External' ? has(self.url) != has(self.urlSecretRef) : !has(self.url) && !has(self.urlSecretRef)"
).message("External redis needs exactly one of url or urlSecretRef; Managed redis takes neither"))]
#[x_kube(validation = Rule::new(
    "self.mode == 'External' || (!has(self.passwordSecretRef) && !has(self.tls))"
).message("passwordSecretRef and tls are for External redis (Managed redis gets a generated password)"))]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// `Managed` (default): the operator runs a single ephemeral Redis. `External`: bring your own.
    #[serde(default)]
    pub mode: RedisMode,
    /// External only: the URL, without credentials (use urlSecretRef or passwordSecretRef for
    /// those). Schemes: `redis://`, `rediss://` (TLS), `redis-cluster://`, `rediss-cluster://`,
    /// `redis-sentinel://`, `rediss-sentinel://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.matches('^rediss?(-cluster|-sentinel)?://')")
        .message("url must start with redis://, rediss://, redis-cluster://, rediss-cluster://, redis-sentinel:// or rediss-sentinel://"))]
    pub url: Option<String>,
    /// External only: a Secret key holding the URL (use when it carries a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// External only: a Secret key holding the password (`REDIS_PASSWORD`, overrides the URL's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// External only: TLS settings for `rediss*://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
    /// Managed only: Redis image (default `redis:7.4-alpine`; must be Redis 7 or newer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Managed only: Redis container resources. Default: requests 50m CPU / 64Mi, limit 256Mi.
    /// `maxmemory` is 75% of the memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Managed only: the PodDisruptionBudget of the Redis pod.
    #[serde(default)]
    pub pod_disruption_budget: RedisDisruptionBudget,
    /// Managed only: Redis pod settings (as for the gateway; no default topology spread).
    #[serde(default)]
    pub pod_template: PodTemplate,
}

/// TLS to an external Redis.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisTls {
    /// A Secret key holding the PEM CA bundle that signs the Redis server certificate
    /// (`REDIS_TLS_CA_FILE`). Absent: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// The managed Redis PodDisruptionBudget.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisDisruptionBudget {
    /// Create it (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `1` (default) lets a node drain move Redis (gateways keep serving locally for the few
    /// seconds it is away); `0` makes drains wait until you move it yourself.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 0, max = 1))]
    pub max_unavailable: i32,
}

impl Default for RedisDisruptionBudget {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// Redis provisioning mode.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedisMode {
    #[default]
    Managed,
    External,
}

/// Monitoring integrations.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// A prometheus-operator ServiceMonitor for the gateway's admin port.
    #[serde(default)]
    pub service_monitor: ServiceMonitorSpec,
    /// A Grafana dashboard for this tier, as a ConfigMap the Grafana sidecar loads.
    #[serde(default)]
    pub grafana_dashboard: GrafanaDashboardSpec,
}

/// The tier's Grafana dashboard: the live-realtime dashboard (deploy/monitoring) preset to this
/// tier, in the ConfigMap `NAME-dashboard`, for the dashboard sidecar of kube-prometheus-stack
/// (which must search this namespace). See docs/monitoring.md.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrafanaDashboardSpec {
    /// Create the dashboard ConfigMap (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Labels the sidecar selects on (default `grafana_dashboard: "1"`, kube-prometheus-stack's).
    #[serde(default = "default_dashboard_labels")]
    pub labels: BTreeMap<String, String>,
    /// Annotations, e.g. `grafana_folder: Live` for a sidecar with `folderAnnotation` set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_dashboard_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("grafana_dashboard".to_owned(), "1".to_owned())])
}

impl Default for GrafanaDashboardSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            labels: default_dashboard_labels(),
            annotations: BTreeMap::new(),
        }
    }
}

/// ServiceMonitor settings. Created only when the ServiceMonitor CRD is installed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Create the ServiceMonitor (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Scrape interval (default `30s`).
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: String,
    /// Extra labels, e.g. the `release` label your Prometheus selects ServiceMonitors by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

fn default_interval() -> String {
    "30s".to_owned()
}

impl Default for ServiceMonitorSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: default_interval(),
            labels: BTreeMap::new(),
        }
    }
}

/// PodDisruptionBudget settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodDisruptionBudgetSpec {
    /// Create the PodDisruptionBudget (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Gateway pods that may be voluntarily evicted at once (default 1).
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: i32,
}

fn default_max_unavailable() -> i32 {
    1
}

impl Default for PodDisruptionBudgetSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// The public gateway Service (Socket.IO port only, `appProtocol: kubernetes.io/ws`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type (default `ClusterIP`). Only the Socket.IO port is on this Service; the admin
    /// port has its own ClusterIP Service `NAME-admin`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service port for Socket.IO (default 80; the pod listens on 3000).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `ClientIP` (default) keeps a client on one pod, which Socket.IO's HTTP long-polling
    /// transport needs when there is more than one pod. `None` is fine for WebSocket-only clients.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
}

fn default_port() -> i32 {
    80
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_port(),
            annotations: BTreeMap::new(),
            session_affinity: SessionAffinity::default(),
        }
    }
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Kubernetes Service session affinity.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SessionAffinity {
    None,
    #[default]
    ClientIP,
}

impl SessionAffinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::ClientIP => "ClientIP",
        }
    }
}

/// The admin port: HTTP bridge, `/metrics`, health. Never published outside the cluster.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdminSpec {
    /// Let `admin`-role tokens call the bridge too (`LIVE_BRIDGE_ALLOW_ADMIN`). Default false:
    /// only `service`-role tokens, so a moderator's token cannot drive the bridge.
    #[serde(default)]
    pub allow_admin_tokens: bool,
    /// A NetworkPolicy on the gateway pods: the public port stays open, the admin port admits
    /// only `from`.
    #[serde(default)]
    pub network_policy: AdminNetworkPolicy,
}

/// The admin-port NetworkPolicy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicy {
    /// Create it (default false).
    #[serde(default)]
    pub enabled: bool,
    /// Who may reach the admin port (e.g. your Prometheus' and app backends' namespaces). Empty:
    /// no pod may (kubelet probes are not affected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub from: Vec<NetworkPolicyPeer>,
}

/// An Ingress for the public Socket.IO port, with WebSocket-friendly timeouts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Create the Ingress `NAME`.
    #[serde(default)]
    pub enabled: bool,
    /// `ingressClassName` (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// The host clients connect to.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Path prefix routed to the gateway (default `/`).
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// A TLS Secret (`kubernetes.io/tls`) for `host`; absent: plain HTTP at the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Annotations, merged over the defaults (ingress-nginx timeouts of one hour and cookie
    /// affinity when `service.sessionAffinity` is `ClientIP`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_path() -> String {
    "/".to_owned()
}

/// A Gateway API HTTPRoute for the public Socket.IO port. TLS terminates at the Gateway's
/// listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!self.enabled || size(self.parentRefs) > 0")
    .message("an enabled httpRoute needs at least one parentRef"))]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Create the HTTPRoute `NAME` (only where the gateway.networking.k8s.io CRDs exist).
    #[serde(default)]
    pub enabled: bool,
    /// The Gateways (listeners) to attach to.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route matches (empty: the listeners' own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
    /// Path prefix routed to the gateway (default `/`).
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

/// A Gateway API parent reference.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Gateway namespace (default: the LiveRealtime's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// Pod settings for the gateway or the managed Redis, in the manner of prometheus-operator's
/// `podMetadata` and scheduling fields. Lists replace the operator's defaults only where noted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Extra pod labels and annotations. The operator's own labels are reserved.
    #[serde(default)]
    pub metadata: PodMetadata,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// Affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread. Absent: gateway pods spread over zones and nodes (`ScheduleAnyway`);
    /// present (even empty): exactly these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// ServiceAccount (default: the namespace's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Mount the ServiceAccount token (default false: the gateway never calls the API).
    #[serde(default)]
    pub automount_service_account_token: bool,
    /// Pod security context. Absent: `runAsNonRoot` and `seccompProfile: RuntimeDefault`, no
    /// fixed UID for the gateway (the image's numeric user; OpenShift assigns its own), UID 999
    /// for Redis. Present: replaces the default entirely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// Security context of the main container. Absent: restricted (no privilege escalation,
    /// read-only root filesystem, all capabilities dropped). Present: replaces it entirely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
    /// Extra environment variables of the main container; one named like an operator-set
    /// variable replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Extra `envFrom` sources of the main container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env_from: Vec<EnvFromSource>,
    /// Extra volumes (names starting with `live-` are reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(v, !v.name.startsWith('live-'))")
        .message("volume names starting with live- are reserved for the operator"))]
    pub volumes: Vec<Volume>,
    /// Extra volume mounts of the main container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volume_mounts: Vec<VolumeMount>,
    /// Extra containers run beside the main one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, c.name != 'gateway' && c.name != 'redis')")
        .message("sidecar names gateway and redis are reserved"))]
    pub sidecars: Vec<Container>,
}

/// Extra pod metadata.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    /// Extra labels (not the operator's `app.kubernetes.io/{name,instance,component,part-of,managed-by}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/part-of', 'app.kubernetes.io/managed-by']))")
        .message("the operator's app.kubernetes.io labels are reserved"))]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations (not `realtime.halobuzz.com/*`, which the operator sets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('realtime.halobuzz.com/'))")
        .message("realtime.halobuzz.com/ annotations are reserved for the operator"))]
    pub annotations: BTreeMap<String, String>,
}

/// What the operator last observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LiveRealtimeStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Gateway pods (all, from the Deployment).
    #[serde(default)]
    pub replicas: i32,
    /// Gateway pods passing readiness.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/desired` gateway pods, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ratio: Option<String>,
    /// The gateway image the pods run (the default when `spec.image` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Label selector of the gateway pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// sha256 of the gateway config in the ConfigMap (hot-reloaded, no restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// sha256 of the restart-only settings on the pod template (changes roll the pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_hash: Option<String>,
    /// `Ready`, `Reconciling`, `Stalled`, `Progressing`, `Degraded`, `RedisReady`,
    /// `AutoscalingReady`, `ServiceMonitorReady`, `HTTPRouteReady`, `ReconciliationPaused`.
    /// See docs/liverealtime.md.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

impl LiveRealtimeSpec {
    /// The gateway's hot-reloadable config, assembled from the spec sections that are the
    /// gateway's own types.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            rate_limits: self.rate_limits.clone(),
            cors: self.cors.clone(),
            moderation: self.moderation.clone(),
            limits: self.limits.clone(),
            presence: self.presence.clone(),
            auth: self.auth.clone(),
            history: self.history.clone(),
        }
    }

    /// True when an HPA scales this LiveRealtime.
    pub fn autoscaling_enabled(&self) -> bool {
        self.autoscaling.as_ref().is_some_and(|a| a.enabled)
    }

    /// The pod grace period: explicit, or long enough for preStop + drain + a margin.
    pub fn termination_grace_period_seconds(&self) -> i64 {
        /// The gateway's hard deadline is its drain window + 10 s (after the preStop sleep);
        /// 5 s more covers process teardown before the kubelet's SIGKILL.
        const MARGIN_SECONDS: i64 = 15;
        self.termination_grace_period_seconds
            .unwrap_or(self.drain_seconds + self.pre_stop_sleep_seconds + MARGIN_SECONDS)
    }
}

impl LiveRealtime {
    /// True when the pause annotation is set to `"true"`.
    pub fn is_paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSE_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

/// The CRD's CEL rules, compiled once to check many objects client-side (`render`, tests) the
/// way the apiserver would. Compiling the rules of this large schema is the expensive part.
pub struct CelRules(kube::core::cel::CompiledSchema);

impl std::fmt::Debug for CelRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelRules").finish_non_exhaustive()
    }
}

impl CelRules {
    /// Compiles the rules of the generated CRD.
    pub fn new() -> Self {
        let schema = LiveRealtime::crd().spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default();
        Self(kube::core::cel::compile_schema(&schema))
    }

    /// Checks `lr` against every rule: `Err` carries the apiserver's messages.
    pub fn check(&self, lr: &LiveRealtime) -> Result<(), String> {
        let object = serde_json::to_value(lr).map_err(|e| e.to_string())?;
        kube::core::cel::validate_compiled(&self.0, &object, None).map_err(|e| e.to_string())
    }
}

impl Default for CelRules {
    fn default() -> Self {
        Self::new()
    }
}

/// The CRD as YAML, exactly as committed in `crds/liverealtime.yaml`.
pub fn crd_yaml() -> String {
    let crd = LiveRealtime::crd();
    let body = crate::to_yaml(&crd);
    format!(
        "# Generated by `live-operator crd` from crates/operator/src/crd.rs. Do not edit.\n\
         # Regenerate: cargo run -p live-operator -- crd > crds/liverealtime.yaml\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed CRD and the Helm chart's copy of it, checked against the types like
    /// rust-analyzer's `ensure_file_contents`. `UPDATE_CRDS=1` rewrites both.
    #[test]
    fn the_committed_crd_is_fresh() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let fresh = crd_yaml();
        for rel in [
            "crds/liverealtime.yaml",
            "charts/live-realtime-operator/crds/liverealtime.yaml",
        ] {
            let path = root.join(rel);
            if std::env::var_os("UPDATE_CRDS").is_some() {
                std::fs::write(&path, &fresh).unwrap();
                continue;
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == fresh,
                "{rel} is stale. Regenerate it with\n  \
                 UPDATE_CRDS=1 cargo test -p live-operator the_committed_crd_is_fresh\nor\n  \
                 cargo run -p live-operator -- crd | tee crds/liverealtime.yaml \
                 charts/live-realtime-operator/crds/liverealtime.yaml >/dev/null"
            );
        }
    }

    fn with(patch: serde_json::Value) -> LiveRealtime {
        let mut value = serde_json::to_value(LiveRealtime::test()).unwrap();
        json_merge(&mut value["spec"], patch);
        serde_json::from_value(value).unwrap()
    }

    fn json_merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        json_merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p,
        }
    }

    /// Compiled once for every test of this module.
    static RULES: std::sync::LazyLock<CelRules> = std::sync::LazyLock::new(CelRules::new);

    trait Check {
        fn validate_cel(&self) -> Result<(), String>;
    }

    impl Check for LiveRealtime {
        fn validate_cel(&self) -> Result<(), String> {
            RULES.check(self)
        }
    }

    fn rejected(lr: &LiveRealtime, message: &str) {
        let err = Check::validate_cel(lr).expect_err("the apiserver would refuse this");
        assert!(err.contains(message), "{err}");
    }

    #[test]
    fn the_fixtures_pass_every_rule() {
        LiveRealtime::test().validate_cel().unwrap();
        LiveRealtime::test()
            .autoscaled()
            .external()
            .validate_cel()
            .unwrap();
        LiveRealtime::test().minimal().validate_cel().unwrap();
    }

    #[test]
    fn min_replicas_above_max_is_refused() {
        let lr = with(
            serde_json::json!({"autoscaling": {"enabled": true, "minReplicas": 5, "maxReplicas": 3}}),
        );
        rejected(&lr, "minReplicas must not exceed maxReplicas");
        let ok = with(
            serde_json::json!({"autoscaling": {"enabled": true, "minReplicas": 3, "maxReplicas": 3}}),
        );
        ok.validate_cel().unwrap();
    }

    #[test]
    fn external_redis_needs_exactly_one_url_source() {
        rejected(
            &with(serde_json::json!({"redis": {"mode": "External"}})),
            "External redis needs exactly one",
        );
        rejected(
            &with(
                serde_json::json!({"redis": {"mode": "External", "url": "redis://r:6379",
                "urlSecretRef": {"name": "r", "key": "url"}}}),
            ),
            "External redis needs exactly one",
        );
        with(serde_json::json!({"redis": {"mode": "External", "url": "rediss://r:6380"}}))
            .validate_cel()
            .unwrap();
    }

    #[test]
    fn managed_redis_takes_no_url() {
        rejected(
            &with(serde_json::json!({"redis": {"mode": "Managed", "url": "redis://r:6379"}})),
            "Managed redis takes neither",
        );
    }

    #[test]
    fn a_redis_url_needs_a_redis_scheme() {
        rejected(
            &with(serde_json::json!({"redis": {"mode": "External", "url": "http://r:6379"}})),
            "url must start with redis://",
        );
        rejected(
            &with(serde_json::json!({"redis": {"mode": "External", "url": "redis-clusterx://r"}})),
            "url must start with redis://",
        );
        for url in [
            "redis://r:6379",
            "rediss://r:6380",
            "redis-cluster://r:7000?node=r2:7000",
            "rediss-cluster://r:7000",
            "redis-sentinel://s:26379?sentinelServiceName=mymaster",
            "rediss-sentinel://s:26379?sentinelServiceName=mymaster",
        ] {
            with(serde_json::json!({"redis": {"mode": "External", "url": url}}))
                .validate_cel()
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn an_auth_method_is_required_and_hs256_and_public_key_exclude_each_other() {
        rejected(
            &with(serde_json::json!({"jwtSecretRef": null})),
            "set jwtKeysSecretRef, or exactly one of",
        );
        rejected(
            &with(serde_json::json!({"jwtPublicKey": {"secretRef": {"name": "k", "key": "pem"}}})),
            "set jwtKeysSecretRef, or exactly one of",
        );
        with(serde_json::json!({"jwtSecretRef": null, "jwtKeysSecretRef": {"name": "keys"}}))
            .validate_cel()
            .unwrap();
        with(serde_json::json!({"jwtKeysSecretRef": {"name": "keys"}}))
            .validate_cel()
            .unwrap();
    }

    fn named(name: &str) -> LiveRealtime {
        let mut lr = LiveRealtime::test();
        lr.metadata.name = Some(name.to_owned());
        lr
    }

    #[test]
    fn names_that_would_derive_invalid_or_colliding_names_are_refused() {
        let message = "metadata.name must be a DNS-1035 label";
        for bad in [
            "chat.v2",
            "1chat",
            "chat-redis",
            "chat-admin",
            "chat-config",
            &"a".repeat(58),
        ] {
            rejected(&named(bad), message);
        }
        for good in ["chat", "a", "chat-redis-eu", &"a".repeat(57)] {
            named(good).validate_cel().unwrap();
        }
    }

    #[test]
    fn the_name_rule_matches_the_derived_names() {
        use crate::reconcile::names;
        let crd = serde_json::to_string(&LiveRealtime::crd()).unwrap();
        assert!(crd.contains(&format!(
            "size(self.metadata.name) <= {}",
            names::MAX_NAME_LEN
        )));
        for suffix in names::SUFFIXES {
            assert!(crd.contains(&format!("endsWith('{suffix}')")), "{suffix}");
        }
    }

    #[test]
    fn every_redis_url_scheme_of_the_gateway_is_accepted() {
        for url in [
            "redis://r:6379",
            "rediss://r:6380",
            "redis-cluster://r:6379",
            "rediss-cluster://r:6380",
            "redis-sentinel://s:26379/0?sentinelServiceName=mymaster",
            "rediss-sentinel://s:26379",
        ] {
            with(serde_json::json!({"redis": {"mode": "External", "url": url}}))
                .validate_cel()
                .unwrap();
        }
        rejected(
            &with(serde_json::json!({"redis": {"mode": "External", "url": "redis+tls://r"}})),
            "url must start with redis://",
        );
        rejected(
            &with(serde_json::json!({"redis": {"mode": "Managed",
                "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}}}})),
            "passwordSecretRef and tls are for External redis",
        );
    }

    #[test]
    fn operator_labels_volumes_and_container_names_are_reserved() {
        rejected(
            &with(serde_json::json!({"podTemplate": {"metadata":
                {"labels": {"app.kubernetes.io/instance": "x"}}}})),
            "labels are reserved",
        );
        rejected(
            &with(serde_json::json!({"podTemplate": {"metadata":
                {"annotations": {"realtime.halobuzz.com/restart-hash": "x"}}}})),
            "annotations are reserved",
        );
        rejected(
            &with(
                serde_json::json!({"podTemplate": {"volumes": [{"name": "live-config", "emptyDir": {}}]}}),
            ),
            "volume names starting with live-",
        );
        rejected(
            &with(
                serde_json::json!({"redis": {"podTemplate": {"sidecars": [{"name": "redis", "image": "x"}]}}}),
            ),
            "sidecar names gateway and redis are reserved",
        );
        with(
            serde_json::json!({"podTemplate": {"metadata": {"labels": {"team": "chat"}},
            "volumes": [{"name": "certs", "emptyDir": {}}],
            "sidecars": [{"name": "proxy", "image": "envoy"}]}}),
        )
        .validate_cel()
        .unwrap();
    }

    #[test]
    fn the_grace_period_must_outlast_the_drain() {
        rejected(
            &with(
                serde_json::json!({"drainSeconds": 30, "preStopSleepSeconds": 5,
                "terminationGracePeriodSeconds": 35}),
            ),
            "terminationGracePeriodSeconds must be greater",
        );
        with(
            serde_json::json!({"drainSeconds": 30, "preStopSleepSeconds": 5,
            "terminationGracePeriodSeconds": 45}),
        )
        .validate_cel()
        .unwrap();
    }

    #[test]
    fn the_crd_has_the_names_columns_and_subresources_kubectl_needs() {
        let crd = LiveRealtime::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["lrt".to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["realtime".to_owned()]));
        let version = &crd.spec.versions[0];
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some());
        assert_eq!(
            subresources
                .scale
                .as_ref()
                .unwrap()
                .label_selector_path
                .as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            columns,
            ["Ready", "Reason", "Image", "Redis", "ConnsPerPod", "Age"]
        );
        let ready = &version.additional_printer_columns.as_ref().unwrap()[0];
        assert_eq!(ready.json_path, ".status.readyRatio");
    }

    #[test]
    fn a_spec_section_is_literally_the_gateway_config_type() {
        let lr = LiveRealtime::test().external();
        let config: GatewayConfig = lr.spec.gateway_config();
        assert_eq!(config.cors, lr.spec.cors);
        assert_eq!(GatewayConfig::from_yaml(&config.to_yaml()).unwrap(), config);
    }

    fn field_paths(schema: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
            return;
        };
        for (name, sub) in props {
            let path = format!("{prefix}.{name}");
            // Embedded Kubernetes types are documented upstream.
            const UPSTREAM: [&str; 12] = [
                "resources",
                "affinity",
                "securityContext",
                "containerSecurityContext",
                "tolerations",
                "env",
                "envFrom",
                "volumes",
                "volumeMounts",
                "sidecars",
                "topologySpreadConstraints",
                "from",
            ];
            if !UPSTREAM.contains(&name.as_str()) {
                field_paths(sub, &path, out);
            }
            out.push(path);
        }
    }

    #[test]
    fn the_docs_cover_every_field_and_reason() {
        let docs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/liverealtime.md"),
        )
        .unwrap();
        let crd = serde_json::to_value(LiveRealtime::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut paths = Vec::new();
        field_paths(spec, "spec", &mut paths);
        assert!(paths.len() > 40);
        // The managed Redis pod template is the gateway's type, documented once.
        let missing: Vec<_> = paths
            .iter()
            .map(|p| p.replace("spec.redis.podTemplate.", "spec.podTemplate."))
            .filter(|p| !docs.contains(&format!("`{p}`")))
            .collect();
        assert!(missing.is_empty(), "docs/liverealtime.md lacks {missing:?}");
        use crate::reconcile::status::{reasons as r, types as t};
        for word in [
            t::READY,
            t::RECONCILING,
            t::STALLED,
            t::HTTP_ROUTE_READY,
            t::PROGRESSING,
            t::DEGRADED,
            t::REDIS_READY,
            t::AUTOSCALING_READY,
            t::SERVICE_MONITOR_READY,
            t::RECONCILIATION_PAUSED,
            r::AVAILABLE,
            r::GATEWAY_UNAVAILABLE,
            r::REDIS_NOT_READY,
            r::INVALID_CONFIG,
            r::ROLLING_OUT,
            r::ROLLOUT_COMPLETE,
            r::PROGRESS_DEADLINE_EXCEEDED,
            r::AUTOSCALING_UNAVAILABLE,
            r::AS_EXPECTED,
            r::EXTERNAL,
            r::STARTING,
            r::DISABLED,
            r::ACTIVE,
            r::PENDING,
            r::METRIC_UNAVAILABLE,
            r::CANNOT_SCALE,
            r::APPLIED,
            r::CRD_NOT_INSTALLED,
            r::PAUSED,
            r::RECONCILING,
            r::CONFIG_UPDATED,
            r::RESTART_SETTINGS_CHANGED,
            r::SCALED_TO_ZERO,
            r::APPLY_FAILED,
            r::NAME_CONFLICT,
            r::INVALID_SPEC,
            r::MISSING_SECRET,
            r::RECONCILED,
        ] {
            assert!(
                docs.contains(&format!("`{word}`")),
                "docs/liverealtime.md lacks `{word}`"
            );
        }
    }
}

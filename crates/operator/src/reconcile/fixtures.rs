//! Test fixtures: builder methods over a representative `LiveRealtime`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{
    Autoscaling, JwtAlgorithm, JwtPublicKey, LiveRealtime, LiveRealtimeSpec, PAUSE_ANNOTATION,
    RedisMode, SecretKeyRef,
};

impl LiveRealtime {
    /// `chat` in namespace `live`: HS256 secret, managed Redis, every default.
    pub fn test() -> Self {
        let spec: LiveRealtimeSpec = serde_json::from_value(serde_json::json!({
            "image": "ghcr.io/live-realtime/live-gateway:1.2.3",
            "jwtSecretRef": {"name": "chat-jwt", "key": "secret"},
        }))
        .expect("fixture spec parses");
        let mut lr = LiveRealtime::new("chat", spec);
        lr.metadata = ObjectMeta {
            name: Some("chat".into()),
            namespace: Some("live".into()),
            uid: Some("6b1f0c1e-1c2a-4d7e-9a59-2f1d9c3b7a10".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        lr
    }

    /// Autoscaling on, 3..=20 pods at 800 connections each.
    pub fn autoscaled(mut self) -> Self {
        self.spec.autoscaling = Some(Autoscaling {
            enabled: true,
            min_replicas: 3,
            max_replicas: 20,
            target_connections_per_pod: 800,
            ..Autoscaling::default()
        });
        self
    }

    /// External Redis from a Secret key, RS256 public-key auth, custom gateway config.
    pub fn external(mut self) -> Self {
        self.spec.redis.mode = RedisMode::External;
        self.spec.redis.url_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        });
        self.spec.jwt_secret_ref = None;
        self.spec.jwt_public_key = Some(JwtPublicKey {
            secret_ref: SecretKeyRef {
                name: "chat-jwt-public".into(),
                key: "key.pem".into(),
            },
            algorithm: JwtAlgorithm::Es256,
        });
        self.spec.jwt_issuer = Some("https://auth.example.com".into());
        self.spec.cors.allowed_origins = Some(vec!["https://app.example.com".into()]);
        self.spec.rate_limits.messages_per_minute = 10;
        self.spec.moderation.admin_roles = vec!["admin".into(), "mod".into()];
        self.spec.service.annotations =
            BTreeMap::from([("example.com/lb".to_owned(), "internal".to_owned())]);
        self
    }

    /// Optional features off: no PDB, no ServiceMonitor.
    pub fn minimal(mut self) -> Self {
        self.spec.pod_disruption_budget.enabled = false;
        self.spec.monitoring.service_monitor.enabled = false;
        self
    }

    /// The pause annotation set.
    pub fn paused(mut self) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(PAUSE_ANNOTATION.into(), "true".into());
        self
    }
}

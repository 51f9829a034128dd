//! The scenarios of the envtest suite, each in its own namespace.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cluster::{ControlPlane, Operator, lrt_resource, repo_root};
use crate::wait;

/// Long enough for a slow CI machine; scenarios finish much sooner.
const T: Duration = Duration::from_secs(60);

/// A CRD of `kind` that accepts anything (a stand-in for prometheus-operator's or Gateway
/// API's).
pub fn stub_crd(group: &str, kind: &str, plural: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        // Groups under k8s.io need the approval annotation (Gateway API carries the same).
        "metadata": {"name": format!("{plural}.{group}"),
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    })
}

/// A condition of a LiveRealtime's status as `(status, reason, message)`.
fn condition(lr: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    lr.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// The scenarios, sharing one control plane.
#[derive(Clone)]
pub struct Tests {
    cp: Arc<ControlPlane>,
}

impl Tests {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        Self { cp }
    }

    fn lrts(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.cp.admin.clone(), ns, &lrt_resource())
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.cp.admin.clone(), ns)
    }

    async fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>(ns).get_opt(name).await.ok().flatten()
    }

    /// Applies a LiveRealtime (as a user would, with `kubectl apply --server-side`).
    async fn apply_lr(&self, ns: &str, name: &str, spec: Value) -> Result<()> {
        self.cp.namespace(ns).await?;
        self.cp
            .apply_value(&json!({
                "apiVersion": "realtime.halobuzz.com/v1alpha1", "kind": "LiveRealtime",
                "metadata": {"name": name, "namespace": ns}, "spec": spec,
            }))
            .await?;
        Ok(())
    }

    async fn secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) -> Result<()> {
        self.cp.namespace(ns).await?;
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.cp
            .apply_value(&json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": ns}, "stringData": data}))
            .await?;
        Ok(())
    }

    async fn lr(&self, ns: &str, name: &str) -> Option<DynamicObject> {
        self.lrts(ns).get_opt(name).await.ok().flatten()
    }

    /// Waits until condition `type_` has `status` (and `reason`, when given).
    async fn wait_condition(
        &self,
        ns: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(String, String, String)> {
        wait(
            &format!("{ns}/{name} {type_}={status} {reason:?}"),
            T,
            || async {
                let c = condition(&self.lr(ns, name).await?, type_)?;
                (c.0 == status && reason.is_none_or(|r| c.1 == r)).then_some(c)
            },
        )
        .await
    }

    /// Stands in for the missing kubelet: binds the pods matching `selector` to a node and
    /// reports them Running and Ready, so Deployments become available.
    async fn make_pods_ready(&self, ns: &str, selector: &str) -> Result<usize> {
        let pods: Api<Pod> = self.api(ns);
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        let mut n = 0;
        for pod in list.items {
            let name = pod.name_any();
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                n += 1;
                continue;
            }
            if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_none()
            {
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name}, "target": {"apiVersion": "v1", "kind": "Node", "name": "envtest-node"}});
                let _ = pods
                    .create_subresource::<Value, Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await;
            }
            let now = Timestamp::now().to_string();
            let status = json!({"status": {
                "phase": "Running",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ],
            }});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("making pod {ns}/{name} ready"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Keeps marking the tier's pods ready until `Ready=True`.
    async fn until_ready(&self, ns: &str, name: &str) -> Result<()> {
        wait(&format!("{ns}/{name} Ready=True"), T, || async {
            let _ = self
                .make_pods_ready(ns, &format!("app.kubernetes.io/instance={name}"))
                .await;
            let c = condition(&self.lr(ns, name).await?, "Ready")?;
            (c.0 == "True").then_some(())
        })
        .await
    }

    /// The children of `name` that exist, as `Kind/name`.
    async fn children(&self, ns: &str, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let candidates = [
            name.to_owned(),
            format!("{name}-admin"),
            format!("{name}-config"),
            format!("{name}-redis"),
            format!("{name}-dashboard"),
        ];
        for n in &candidates {
            if self.get::<ConfigMap>(ns, n).await.is_some() {
                out.insert(format!("ConfigMap/{n}"));
            }
            if self.get::<Deployment>(ns, n).await.is_some() {
                out.insert(format!("Deployment/{n}"));
            }
            if self.get::<Service>(ns, n).await.is_some() {
                out.insert(format!("Service/{n}"));
            }
            if self.get::<NetworkPolicy>(ns, n).await.is_some() {
                out.insert(format!("NetworkPolicy/{n}"));
            }
            if self.get::<PodDisruptionBudget>(ns, n).await.is_some() {
                out.insert(format!("PodDisruptionBudget/{n}"));
            }
            if self.get::<HorizontalPodAutoscaler>(ns, n).await.is_some() {
                out.insert(format!("HorizontalPodAutoscaler/{n}"));
            }
            if let Some(s) = self.get::<Secret>(ns, n).await
                && s.metadata
                    .labels
                    .is_some_and(|l| l.contains_key("app.kubernetes.io/managed-by"))
            {
                out.insert(format!("Secret/{n}"));
            }
        }
        let sm: Api<DynamicObject> = Api::namespaced_with(
            self.cp.admin.clone(),
            ns,
            &kube::api::ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
                "servicemonitors",
            ),
        );
        if sm.get_opt(name).await.ok().flatten().is_some() {
            out.insert(format!("ServiceMonitor/{name}"));
        }
        out
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    pub async fn crd_install_and_cel_rejections(self) -> Result<()> {
        let ns = "cel";
        self.cp.namespace(ns).await?;
        let api = self.lrts(ns);
        let create = |name: &str, spec: Value| {
            let api = api.clone();
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "realtime.halobuzz.com/v1alpha1", "kind": "LiveRealtime",
                "metadata": {"name": name}, "spec": spec,
            }))
            .expect("object");
            async move { api.create(&PostParams::default(), &obj).await }
        };
        let jwt = json!({"jwtSecretRef": {"name": "s", "key": "k"}});
        let cases: Vec<(String, Value, &str)> = vec![
            (
                "chat-redis".into(),
                jwt.clone(),
                "metadata.name must be a DNS-1035 label",
            ),
            (
                "chat-admin".into(),
                jwt.clone(),
                "metadata.name must be a DNS-1035 label",
            ),
            (
                "chat.v2".into(),
                jwt.clone(),
                "metadata.name must be a DNS-1035 label",
            ),
            (
                "a".repeat(58),
                jwt.clone(),
                "metadata.name must be a DNS-1035 label",
            ),
            (
                "noauth".into(),
                json!({}),
                "set jwtKeysSecretRef, or exactly one of",
            ),
            (
                "scaling".into(),
                json!({"jwtSecretRef": {"name": "s", "key": "k"}, "autoscaling": {"enabled": true, "minReplicas": 5, "maxReplicas": 2}}),
                "minReplicas must not exceed maxReplicas",
            ),
            (
                "badurl".into(),
                json!({"jwtSecretRef": {"name": "s", "key": "k"}, "redis": {"mode": "External", "url": "http://r:6379"}}),
                "url must start with redis://",
            ),
            (
                "labels".into(),
                json!({"jwtSecretRef": {"name": "s", "key": "k"}, "podTemplate": {"metadata": {"labels": {"app.kubernetes.io/name": "x"}}}}),
                "labels are reserved",
            ),
        ];
        for (name, spec, message) in cases {
            match create(&name, spec).await {
                Ok(_) => bail!("the apiserver accepted {name}"),
                Err(kube::Error::Api(e)) => ensure!(
                    e.code == 422 && e.message.contains(message),
                    "{name}: expected a 422 with {message:?}, got {} {}",
                    e.code,
                    e.message
                ),
                Err(e) => return Err(e.into()),
            }
        }
        // Every URL scheme of the gateway contract is accepted.
        for (i, url) in [
            "redis://r:6379",
            "rediss://r:6380",
            "redis-cluster://r:6379",
            "rediss-cluster://r:6380",
            "redis-sentinel://s:26379?sentinelServiceName=m",
            "rediss-sentinel://s:26379",
        ]
        .iter()
        .enumerate()
        {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "realtime.halobuzz.com/v1alpha1", "kind": "LiveRealtime",
                "metadata": {"name": format!("url{i}")},
                "spec": {"jwtSecretRef": {"name": "s", "key": "k"}, "redis": {"mode": "External", "url": url}},
            }))?;
            api.create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &obj,
            )
            .await
            .with_context(|| format!("{url} refused"))?;
        }
        Ok(())
    }

    pub async fn the_basic_example_gets_every_child_with_owner_references_and_a_filled_status(
        self,
        ns: &'static str,
    ) -> Result<()> {
        self.secret(
            ns,
            "chat-jwt",
            &[("secret", "0123456789abcdef0123456789abcdef")],
        )
        .await?;
        // The example file, as `kubectl apply -f crds/examples/basic.yaml` would send it.
        let mut example: Value = serde_yaml::from_str(&std::fs::read_to_string(
            repo_root().join("crds/examples/basic.yaml"),
        )?)?;
        example["metadata"]["namespace"] = json!(ns);
        self.cp.apply_value(&example).await?;
        let want = Self::set(&[
            "ConfigMap/chat-config",
            "Deployment/chat",
            "Deployment/chat-redis",
            "NetworkPolicy/chat-redis",
            "PodDisruptionBudget/chat",
            "PodDisruptionBudget/chat-redis",
            "Secret/chat-redis",
            "Service/chat",
            "Service/chat-admin",
            "Service/chat-redis",
            "ServiceMonitor/chat",
        ]);
        wait("every child of the basic example", T, || async {
            let have = self.children(ns, "chat").await;
            (have == want).then_some(())
        })
        .await
        .map_err(|e| e.context(format!("want {want:?}")))?;
        let lr = self.lr(ns, "chat").await.context("lr")?;
        let uid = lr.uid().context("uid")?;
        // Controller owner references on every child.
        let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            meta.owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == "LiveRealtime")
        };
        for (kind, ok) in [
            (
                "ConfigMap",
                owned(
                    &self
                        .get::<ConfigMap>(ns, "chat-config")
                        .await
                        .context("cm")?
                        .metadata,
                ),
            ),
            (
                "Deployment",
                owned(
                    &self
                        .get::<Deployment>(ns, "chat")
                        .await
                        .context("d")?
                        .metadata,
                ),
            ),
            (
                "Deployment redis",
                owned(
                    &self
                        .get::<Deployment>(ns, "chat-redis")
                        .await
                        .context("rd")?
                        .metadata,
                ),
            ),
            (
                "Service",
                owned(&self.get::<Service>(ns, "chat").await.context("s")?.metadata),
            ),
            (
                "Service admin",
                owned(
                    &self
                        .get::<Service>(ns, "chat-admin")
                        .await
                        .context("sa")?
                        .metadata,
                ),
            ),
            (
                "Secret",
                owned(
                    &self
                        .get::<Secret>(ns, "chat-redis")
                        .await
                        .context("sec")?
                        .metadata,
                ),
            ),
            (
                "PDB",
                owned(
                    &self
                        .get::<PodDisruptionBudget>(ns, "chat")
                        .await
                        .context("pdb")?
                        .metadata,
                ),
            ),
        ] {
            ensure!(
                ok,
                "{kind} has no controller owner reference to the LiveRealtime"
            );
        }
        // The public Service is Socket.IO only; the admin port is ClusterIP.
        let public = self
            .get::<Service>(ns, "chat")
            .await
            .context("svc")?
            .spec
            .context("spec")?;
        let ports = public.ports.unwrap_or_default();
        ensure!(ports.len() == 1 && ports[0].app_protocol.as_deref() == Some("kubernetes.io/ws"));
        let admin = self
            .get::<Service>(ns, "chat-admin")
            .await
            .context("admin")?
            .spec
            .context("spec")?;
        ensure!(admin.type_.as_deref() == Some("ClusterIP"));
        ensure!(admin.ports.unwrap_or_default()[0].port == 9091);
        // Status: generation observed, conditions, columns.
        self.wait_condition(ns, "chat", "Ready", "False", Some("GatewayUnavailable"))
            .await?;
        self.until_ready(ns, "chat").await?;
        let lr = self.lr(ns, "chat").await.context("lr")?;
        let status = &lr.data["status"];
        ensure!(
            status["observedGeneration"] == json!(lr.metadata.generation),
            "{status}"
        );
        ensure!(status["readyRatio"] == "2/2", "{status}");
        ensure!(status["replicas"] == 2, "{status}");
        ensure!(
            status["selector"]
                .as_str()
                .is_some_and(|s| s.contains("instance=chat"))
        );
        ensure!(
            status["image"]
                .as_str()
                .is_some_and(|s| s.starts_with("ghcr.io/live-realtime/live-gateway:"))
        );
        for (type_, want) in [
            ("Ready", "True"),
            ("Reconciling", "False"),
            ("Stalled", "False"),
            ("RedisReady", "True"),
        ] {
            let c = condition(&lr, type_).context(type_)?;
            ensure!(c.0 == want, "{type_} is {c:?}");
        }
        Ok(())
    }

    pub async fn drift_is_put_back(self) -> Result<()> {
        let ns = "drift";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(ns, "chat", json!({"image": "example.com/gw:1", "jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}))
            .await?;
        wait("Deployment", T, || self.get::<Deployment>(ns, "chat")).await?;
        // Someone edits a field the operator owns (`kubectl edit`: an update by another manager).
        let deployments: Api<Deployment> = self.api(ns);
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "gateway", "image": "evil:1"}]}}}});
        deployments
            .patch(
                "chat",
                &PatchParams {
                    field_manager: Some("kubectl-edit".into()),
                    ..PatchParams::default()
                },
                &Patch::Strategic(&patch),
            )
            .await?;
        wait("the image put back", T, || async {
            let d = self.get::<Deployment>(ns, "chat").await?;
            let image = d.spec?.template.spec?.containers[0].image.clone()?;
            (image == "example.com/gw:1").then_some(())
        })
        .await?;
        // A deleted child comes back.
        let services: Api<Service> = self.api(ns);
        services
            .delete("chat-admin", &DeleteParams::default())
            .await?;
        wait("the admin Service re-created", T, || {
            self.get::<Service>(ns, "chat-admin")
        })
        .await?;
        Ok(())
    }

    pub async fn a_hot_reloadable_edit_does_not_change_the_pod_template(self) -> Result<()> {
        let ns = "hot";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        let spec = |n: u32| json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}, "rateLimits": {"messagesPerMinute": n}});
        self.apply_lr(ns, "chat", spec(30)).await?;
        let before = wait("Deployment", T, || self.get::<Deployment>(ns, "chat")).await?;
        wait("ConfigMap", T, || self.get::<ConfigMap>(ns, "chat-config")).await?;
        self.apply_lr(ns, "chat", spec(3)).await?;
        wait("the ConfigMap updated", T, || async {
            let cm = self.get::<ConfigMap>(ns, "chat-config").await?;
            cm.data?
                .get("gateway.yaml")?
                .contains("messagesPerMinute: 3")
                .then_some(())
        })
        .await?;
        // Give the operator a resync to (wrongly) touch the Deployment.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let after = self
            .get::<Deployment>(ns, "chat")
            .await
            .context("deployment")?;
        ensure!(
            before.metadata.generation == after.metadata.generation,
            "the Deployment's generation moved"
        );
        ensure!(
            serde_json::to_value(&before.spec.context("spec")?.template)?
                == serde_json::to_value(&after.spec.context("spec")?.template)?,
            "the pod template changed"
        );
        Ok(())
    }

    pub async fn feature_toggles_delete_exactly_their_children(self) -> Result<()> {
        let ns = "toggles";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        let base = json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}});
        let with = |patch: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .expect("object")
                .extend(patch.as_object().cloned().unwrap_or_default());
            v
        };
        let managed = Self::set(&[
            "ConfigMap/chat-config",
            "Deployment/chat",
            "Deployment/chat-redis",
            "NetworkPolicy/chat-redis",
            "PodDisruptionBudget/chat",
            "PodDisruptionBudget/chat-redis",
            "Secret/chat-redis",
            "Service/chat",
            "Service/chat-admin",
            "Service/chat-redis",
            "ServiceMonitor/chat",
        ]);
        let expect = |want: BTreeSet<String>, what: &'static str| {
            let this = self.clone();
            async move {
                wait(what, T, || async {
                    (this.children(ns, "chat").await == want).then_some(())
                })
                .await
                .map_err(|e| e.context(format!("want {want:?}")))
            }
        };
        self.apply_lr(ns, "chat", base.clone()).await?;
        expect(managed.clone(), "every default child").await?;
        // Admin NetworkPolicy, an HPA and the Grafana dashboard on: exactly those appear.
        self.apply_lr(ns, "chat", with(json!({"admin": {"networkPolicy": {"enabled": true}}, "autoscaling": {"enabled": true},
                                              "monitoring": {"grafanaDashboard": {"enabled": true}}})))
            .await?;
        let mut more = managed.clone();
        more.insert("NetworkPolicy/chat-admin".into());
        more.insert("HorizontalPodAutoscaler/chat".into());
        more.insert("ConfigMap/chat-dashboard".into());
        expect(more, "admin NetworkPolicy, HPA and dashboard").await?;
        let dashboard: ConfigMap = self
            .get(ns, "chat-dashboard")
            .await
            .expect("the dashboard ConfigMap");
        assert_eq!(
            dashboard
                .metadata
                .labels
                .unwrap_or_default()
                .get("grafana_dashboard")
                .map(String::as_str),
            Some("1"),
            "the sidecar's label"
        );
        // PDB, ServiceMonitor, the dashboard off (the monitoring section replaced), Redis
        // external: exactly those go.
        self.apply_lr(
            ns,
            "chat",
            with(json!({"podDisruptionBudget": {"enabled": false}, "monitoring": {"serviceMonitor": {"enabled": false}},
                        "redis": {"mode": "External", "url": "redis://redis.example:6379"}})),
        )
        .await?;
        expect(
            Self::set(&[
                "ConfigMap/chat-config",
                "Deployment/chat",
                "Service/chat",
                "Service/chat-admin",
            ]),
            "only the always-on children",
        )
        .await?;
        Ok(())
    }

    async fn scale(&self, ns: &str, name: &str, replicas: i32) -> Result<()> {
        let body = json!({"spec": {"replicas": replicas}});
        self.lrts(ns)
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&body))
            .await?;
        Ok(())
    }

    async fn deployment_replicas(&self, ns: &str, name: &str) -> Option<i32> {
        self.get::<Deployment>(ns, name).await?.spec?.replicas
    }

    pub async fn autoscaling_hands_over_both_ways(self) -> Result<()> {
        let ns = "autoscale";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        let spec = |enabled: bool| {
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"},
            "autoscaling": {"enabled": enabled, "minReplicas": 3, "maxReplicas": 10}})
        };
        self.apply_lr(ns, "chat", spec(true)).await?;
        // The real HPA controller scales the LiveRealtime (its scale subresource) up to
        // minReplicas; the Deployment follows.
        wait("the HPA raising the Deployment to 3", T, || async {
            (self.deployment_replicas(ns, "chat").await? == 3).then_some(())
        })
        .await?;
        let hpa = self
            .get::<HorizontalPodAutoscaler>(ns, "chat")
            .await
            .context("hpa")?;
        let target = hpa.spec.context("spec")?.scale_target_ref;
        // What the HPA does on load: scale its target (whatever it is) through /scale.
        let body = json!({"spec": {"replicas": 5}});
        if target.kind == "LiveRealtime" {
            self.scale(ns, "chat", 5).await?;
        } else {
            self.api::<Deployment>(ns)
                .patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                .await?;
        }
        wait("the Deployment at 5", T, || async {
            (self.deployment_replicas(ns, "chat").await? == 5).then_some(())
        })
        .await?;
        // Off: the HPA goes, the count it reached stays.
        self.apply_lr(ns, "chat", spec(false)).await?;
        wait("the HPA deleted", T, || async {
            self.get::<HorizontalPodAutoscaler>(ns, "chat")
                .await
                .is_none()
                .then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        ensure!(
            self.deployment_replicas(ns, "chat").await == Some(5),
            "turning autoscaling off changed the count"
        );
        // On again: it starts from the live count, no dip.
        self.apply_lr(ns, "chat", spec(true)).await?;
        wait("the HPA back", T, || {
            self.get::<HorizontalPodAutoscaler>(ns, "chat")
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        ensure!(
            self.deployment_replicas(ns, "chat").await == Some(5),
            "turning autoscaling on changed the count"
        );
        ensure!(
            target.kind == "LiveRealtime",
            "the HPA scales {}, not the LiveRealtime",
            target.kind
        );
        Ok(())
    }

    pub async fn an_object_it_does_not_own_is_left_alone_with_a_visible_condition(
        self,
    ) -> Result<()> {
        let ns = "conflict";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.cp
            .apply_value(&json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "chat", "namespace": ns, "labels": {"team": "db"}},
                "spec": {"ports": [{"name": "pg", "port": 5432}], "selector": {"app": "postgres"}}}))
            .await?;
        let before = self.get::<Service>(ns, "chat").await.context("service")?;
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}),
        )
        .await?;
        let (_, _, message) = self
            .wait_condition(ns, "chat", "Ready", "False", Some("NameConflict"))
            .await?;
        ensure!(message.contains("Service chat"), "{message}");
        self.wait_condition(ns, "chat", "Stalled", "True", Some("NameConflict"))
            .await?;
        // The rest of the tier exists; the foreign Service is untouched.
        wait("the gateway Deployment", T, || {
            self.get::<Deployment>(ns, "chat")
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let after = self.get::<Service>(ns, "chat").await.context("service")?;
        ensure!(
            before.metadata.resource_version == after.metadata.resource_version,
            "the foreign Service was written"
        );
        ensure!(
            after.metadata.owner_references.is_none(),
            "the foreign Service was adopted"
        );
        // One Warning event, however many retries.
        let events: Api<Event> = self.api(ns);
        let list = events.list(&ListParams::default()).await?;
        let conflicts: Vec<_> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("NameConflict"))
            .collect();
        ensure!(
            conflicts.len() == 1,
            "{} NameConflict events",
            conflicts.len()
        );
        ensure!(conflicts[0].type_.as_deref() == Some("Warning"));
        // Once it is gone, the operator creates its own.
        self.api::<Service>(ns)
            .delete("chat", &DeleteParams::default())
            .await?;
        wait("the operator's Service", T, || async {
            let s = self.get::<Service>(ns, "chat").await?;
            s.metadata.owner_references.is_some().then_some(())
        })
        .await?;
        Ok(())
    }

    pub async fn garbage_collection_on_delete(self) -> Result<()> {
        let ns = "gc";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(ns, "chat", json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}, "autoscaling": {"enabled": true}}))
            .await?;
        wait("children", T, || async {
            (self.children(ns, "chat").await.len() >= 12).then_some(())
        })
        .await?;
        self.lrts(ns)
            .delete("chat", &DeleteParams::background())
            .await?;
        wait(
            "every child garbage-collected",
            Duration::from_secs(120),
            || async { self.children(ns, "chat").await.is_empty().then_some(()) },
        )
        .await?;
        Ok(())
    }

    pub async fn pause_leaves_children_alone(self) -> Result<()> {
        let ns = "pause";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(ns, "chat", json!({"image": "example.com/gw:1", "jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}))
            .await?;
        wait("Deployment", T, || self.get::<Deployment>(ns, "chat")).await?;
        let pause = |on: bool| {
            let value = if on { json!("true") } else { Value::Null };
            json!({"metadata": {"annotations": {"realtime.halobuzz.com/paused": value}}})
        };
        self.lrts(ns)
            .patch("chat", &PatchParams::default(), &Patch::Merge(&pause(true)))
            .await?;
        self.wait_condition(ns, "chat", "ReconciliationPaused", "True", Some("Paused"))
            .await?;
        let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "gateway", "image": "hand:1"}]}}}});
        self.api::<Deployment>(ns)
            .patch(
                "chat",
                &PatchParams {
                    field_manager: Some("kubectl-edit".into()),
                    ..PatchParams::default()
                },
                &Patch::Strategic(&edit),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(7)).await;
        let image = |d: Deployment| {
            d.spec
                .and_then(|s| s.template.spec)
                .and_then(|s| s.containers[0].image.clone())
        };
        ensure!(
            image(self.get::<Deployment>(ns, "chat").await.context("d")?).as_deref()
                == Some("hand:1"),
            "changed while paused"
        );
        self.lrts(ns)
            .patch(
                "chat",
                &PatchParams::default(),
                &Patch::Merge(&pause(false)),
            )
            .await?;
        wait("the image put back after resuming", T, || async {
            (image(self.get::<Deployment>(ns, "chat").await?)? == "example.com/gw:1").then_some(())
        })
        .await?;
        self.wait_condition(ns, "chat", "ReconciliationPaused", "False", None)
            .await?;
        Ok(())
    }

    pub async fn a_422_surfaces_in_status_with_one_event(self) -> Result<()> {
        let ns = "invalid";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        // Valid for the CRD, refused by the Service's own validation.
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"},
            "service": {"annotations": {"bad key!": "x"}}}),
        )
        .await?;
        let (_, _, message) = self
            .wait_condition(ns, "chat", "Ready", "False", Some("ApplyFailed"))
            .await?;
        ensure!(
            message.contains("Service chat") && message.contains("(422)"),
            "{message}"
        );
        self.wait_condition(ns, "chat", "Stalled", "True", Some("ApplyFailed"))
            .await?;
        // The other children are there.
        wait("the Deployment", T, || self.get::<Deployment>(ns, "chat")).await?;
        // Several retries later (5 s, 10 s backoff), still one event.
        tokio::time::sleep(Duration::from_secs(16)).await;
        let events = self.api::<Event>(ns).list(&ListParams::default()).await?;
        let failed: Vec<_> = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("ApplyFailed"))
            .collect();
        ensure!(failed.len() == 1, "{} ApplyFailed events", failed.len());
        Ok(())
    }

    pub async fn an_undecodable_object_gets_invalid_spec_and_the_rest_go_on(self) -> Result<()> {
        let ns = "skew";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        // A newer CRD with a field this operator does not know.
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(self.cp.admin.clone());
        let patch = json!([{"op": "add",
            "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/rateLimits/properties/burst",
            "value": {"type": "integer"}}]);
        crds.patch(
            "liverealtimes.realtime.halobuzz.com",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(patch)?),
        )
        .await?;
        // Until the apiserver stores the new field (before, it would prune it, and the object
        // would be an ordinary one), probed with a real object the operator cannot see (paused).
        self.cp.namespace("skew-probe").await?;
        let probes = self.lrts("skew-probe");
        wait("the new field stored", T, || async {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "realtime.halobuzz.com/v1alpha1", "kind": "LiveRealtime",
                "metadata": {"generateName": "probe", "annotations": {"realtime.halobuzz.com/paused": "true"}},
                "spec": {"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}, "rateLimits": {"burst": 3}}})).ok()?;
            let created = probes.create(&PostParams::default(), &obj).await.ok()?;
            let stored = probes.get(&created.name_any()).await.ok()?;
            let _ = probes.delete(&created.name_any(), &DeleteParams::default()).await;
            (stored.data["spec"]["rateLimits"]["burst"] == 3).then_some(())
        })
        .await?;
        self.apply_lr(ns, "newer", json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}, "rateLimits": {"burst": 3}}))
            .await?;
        self.apply_lr(
            ns,
            "older",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}),
        )
        .await?;
        let (_, _, message) = self
            .wait_condition(ns, "newer", "Ready", "False", Some("InvalidSpec"))
            .await?;
        ensure!(message.contains("burst"), "{message}");
        self.wait_condition(ns, "newer", "Stalled", "True", Some("InvalidSpec"))
            .await?;
        wait("the other object reconciled", T, || {
            self.get::<Deployment>(ns, "older")
        })
        .await?;
        // (Children of "newer" may exist: until the apiserver restarts its watches after the CRD
        // change, the operator's watch serves the object with the new field pruned, which this
        // operator reads as an ordinary spec. What matters is the InvalidSpec above and the
        // other object reconciled.)
        Ok(())
    }

    pub async fn a_missing_secret_shows_at_once_and_rotation_rolls_only_start_only_secrets(
        self,
    ) -> Result<()> {
        let ns = "secrets";
        self.cp.namespace(ns).await?;
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}),
        )
        .await?;
        let (_, _, message) = self
            .wait_condition(ns, "chat", "Ready", "False", Some("MissingSecret"))
            .await?;
        ensure!(message.contains("chat-jwt"), "{message}");
        let hash = |d: Deployment| {
            d.spec?
                .template
                .metadata?
                .annotations?
                .get("realtime.halobuzz.com/secrets-hash")
                .cloned()
        };
        self.secret(ns, "chat-jwt", &[("secret", "one")]).await?;
        self.wait_condition(ns, "chat", "Ready", "False", Some("GatewayUnavailable"))
            .await?;
        let first = wait("a secrets hash", T, || async {
            hash(self.get::<Deployment>(ns, "chat").await?)
        })
        .await?;
        // Rotating a Secret read at start rolls the pods (the template changes)...
        self.secret(ns, "chat-jwt", &[("secret", "two")]).await?;
        wait("a new secrets hash", T, || async {
            let h = hash(self.get::<Deployment>(ns, "chat").await?)?;
            (h != first).then_some(())
        })
        .await?;
        // ...rotating the JWT keys directory does not: the gateway reloads it.
        self.secret(
            ns,
            "keys",
            &[("k1", "first-key-of-at-least-32-bytes-long!!")],
        )
        .await?;
        self.apply_lr(
            ns,
            "rotating",
            json!({"jwtKeysSecretRef": {"name": "keys"}}),
        )
        .await?;
        let template = |d: Deployment| serde_json::to_value(d.spec?.template).ok();
        let before = wait("the keys-dir Deployment", T, || async {
            template(self.get::<Deployment>(ns, "rotating").await?)
        })
        .await?;
        self.secret(
            ns,
            "keys",
            &[
                ("k1", "first-key-of-at-least-32-bytes-long!!"),
                ("k2", "second-key-of-at-least-32-bytes-long!"),
            ],
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(7)).await;
        let after =
            template(self.get::<Deployment>(ns, "rotating").await.context("d")?).context("t")?;
        ensure!(
            before == after,
            "rotating the JWT keys changed the pod template"
        );
        Ok(())
    }

    pub async fn scale_to_zero_reports_zero(self) -> Result<()> {
        let ns = "zero";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}),
        )
        .await?;
        wait("2 pods reported", T, || async {
            (self.lr(ns, "chat").await?.data["status"]["replicas"] == 2).then_some(())
        })
        .await?;
        self.scale(ns, "chat", 0).await?;
        let (_, _, message) = self
            .wait_condition(ns, "chat", "Ready", "True", Some("ScaledToZero"))
            .await?;
        ensure!(message.contains("0"), "{message}");
        // Pods go; the count must follow them to 0 (it used to stay at the last non-zero value).
        wait("status.replicas at 0", T, || async {
            let lr = self.lr(ns, "chat").await?;
            (lr.data["status"]["replicas"] == 0 && lr.data["status"]["readyRatio"] == "0/0")
                .then_some(())
        })
        .await?;
        let scale = self.lrts(ns).get_scale("chat").await?;
        ensure!(
            scale.status.context("scale status")?.replicas == 0,
            "the scale subresource reports a stale count"
        );
        Ok(())
    }

    pub async fn steady_state_writes_nothing(self, operator_user: &str) -> Result<()> {
        let ns = "steady";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"},
            "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 4}}),
        )
        .await?;
        self.until_ready(ns, "chat").await?;
        // The HPA's first evaluation is a real state change (no metrics adapter here:
        // `MetricUnavailable`, after the controller's first sync of the new HPA, which can take a
        // minute); the measurement starts after it.
        wait(
            "the HPA's first evaluation",
            Duration::from_secs(150),
            || async {
                let c = condition(&self.lr(ns, "chat").await?, "AutoscalingReady")?;
                (c.1 == "MetricUnavailable").then_some(())
            },
        )
        .await?;
        // Settled: nothing written for a few seconds.
        wait("a quiet operator", T, || async {
            let since = Timestamp::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let writes = self
                .cp
                .audited(operator_user, since)
                .into_iter()
                .filter(|e| e.is_write() && e.namespace == ns)
                .count();
            (writes == 0).then_some(())
        })
        .await?;
        let window: u64 = std::env::var("LIVE_ENVTEST_STEADY_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20);
        let started = Timestamp::now();
        let hpas: Api<HorizontalPodAutoscaler> = self.api(ns);
        let end = std::time::Instant::now() + Duration::from_secs(window);
        let mut tick = 0u32;
        // HPA status ticks (what the HPA controller writes every sync) trigger reconciles; the
        // operator resyncs every 5 s on top.
        while std::time::Instant::now() < end {
            tick += 1;
            let status = json!({"status": {"currentReplicas": 2, "desiredReplicas": 2,
                "lastScaleTime": Timestamp::now().to_string(),
                "currentMetrics": [{"type": "Pods", "pods": {"metric": {"name": "ws_active_connections"},
                    "current": {"averageValue": format!("{}", 100 + tick)}}}]}});
            hpas.patch_status("chat", &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let writes: Vec<_> = self
            .cp
            .audited(operator_user, started)
            .into_iter()
            .filter(|e| e.is_write() && e.namespace == ns)
            .collect();
        let reads = self
            .cp
            .audited(operator_user, started)
            .into_iter()
            .filter(|e| !e.is_write() && e.namespace == ns)
            .count();
        eprintln!(
            "steady state: {} write requests (PATCH/PUT/POST/DELETE) by the operator in {window} s with {tick} HPA status ticks and a 5 s resync ({reads} reads in the namespace)",
            writes.len()
        );
        ensure!(
            writes.is_empty(),
            "writes in steady state: {:#?}",
            writes
                .iter()
                .map(|e| format!("{} {}", e.verb, e.uri))
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    pub async fn leader_election_takes_over_when_the_leader_is_killed(
        self,
        a: &mut Operator,
        b: &mut Operator,
    ) -> Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.cp.admin.clone(), "live-system");
        let holder = || async {
            leases
                .get_opt("live-operator")
                .await
                .ok()
                .flatten()?
                .spec?
                .holder_identity
        };
        let first = wait("a lease holder", T, holder).await?;
        let (leader, follower) = if first == a.identity { (a, b) } else { (b, a) };
        ensure!(leader.identity == first, "unknown holder {first}");
        ensure!(leader.metrics().await?.contains("live_operator_leader 1"));
        ensure!(follower.metrics().await?.contains("live_operator_leader 0"));
        let killed = std::time::Instant::now();
        leader.kill().await;
        let next = wait(
            "the follower taking the lease",
            Duration::from_secs(45),
            || async {
                let h = holder().await?;
                (h == follower.identity).then_some(h)
            },
        )
        .await?;
        let took = killed.elapsed();
        eprintln!(
            "leader election: {next} took over {:.1} s after {} was killed (lease 15 s)",
            took.as_secs_f64(),
            leader.identity
        );
        ensure!(took < Duration::from_secs(30), "took {took:?}");
        // And it reconciles.
        let ns = "takeover";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}),
        )
        .await?;
        self.wait_condition(ns, "chat", "Ready", "False", Some("GatewayUnavailable"))
            .await?;
        ensure!(follower.metrics().await?.contains("live_operator_leader 1"));
        Ok(())
    }

    pub async fn single_namespace_mode_reconciles_its_namespace_only(self) -> Result<()> {
        // The basic example, in the watched namespace, with namespaced RBAC only.
        self.clone()
            .the_basic_example_gets_every_child_with_owner_references_and_a_filled_status("tenant")
            .await?;
        let ns = "outside";
        self.secret(ns, "chat-jwt", &[("secret", "x")]).await?;
        self.apply_lr(
            ns,
            "chat",
            json!({"jwtSecretRef": {"name": "chat-jwt", "key": "secret"}}),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let lr = self.lr(ns, "chat").await.context("lr")?;
        ensure!(
            lr.data.get("status").is_none_or(Value::is_null),
            "an unwatched namespace was reconciled"
        );
        ensure!(self.get::<Deployment>(ns, "chat").await.is_none());
        Ok(())
    }
}

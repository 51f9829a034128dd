//! The IO shell around the pure builders: server-side apply of every desired child, deletion of
//! children whose feature is off, the Secrets the pods need, and the status patch.
//!
//! Expected flow: read the referenced Secrets and make sure the managed Redis password exists
//! ([`Applier::prepare`]), then apply ConfigMap → managed Redis (Deployment, Service,
//! NetworkPolicy, PDB) → gateway Deployment, Service, admin Service, admin NetworkPolicy → HPA →
//! PDB → Ingress → Grafana dashboard → ServiceMonitor → HTTPRoute, deleting each optional child
//! that is `None`.
//!
//! Guarantees:
//! - Never writes over an object something else controls: a child that exists without this
//!   LiveRealtime as its controller owner is left untouched and reported as a `NameConflict`.
//!   Deletion checks the same, with a uid precondition so a re-created object is never hit.
//! - Steady state writes nothing: a child is applied only when its desired state changed since
//!   the operator's last apply, or when the live object's fields owned by the operator's field
//!   manager differ from what that apply left (someone edited a field we own: drift is put
//!   back). Status-only changes (a Deployment's ready count, an HPA's metrics) change neither.
//! - Every failed step becomes a [`Problem`] in [`Observed`]; the reconcile goes on with the
//!   other children and the status says what failed.
//!
//! Assumptions: the caller has checked the object has a namespace, name and uid.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::secrets::{self, Digest};
use super::status::{Observed, Problem, reasons};
use super::{
    Children, Digests, admin_name, gateway_name, grafana_dashboard, network, redis, redis_name,
    service_monitor, sha256_hex,
};
use crate::MANAGER;
use crate::context::Context;
use crate::crd::{LiveRealtime, LiveRealtimeStatus, RedisMode};
use crate::error::{Error, Result};

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// The controller owner's uid of an object, if it has one.
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Describes who controls an object that is not ours, for a `NameConflict` message.
fn controller_of(meta: &ObjectMeta) -> String {
    match meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        Some(o) => format!("is controlled by {} {}", o.kind, o.name),
        None => "exists and is not controlled by this LiveRealtime".to_owned(),
    }
}

/// sha256 of the fields our field manager's apply owns on `meta`'s object (`None`: it owns
/// nothing, e.g. someone else created it or another manager took every field).
pub fn owned_fields_digest(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.manager.as_deref() == Some(MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.subresource.as_deref().unwrap_or_default().is_empty()
        })
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| sha256_hex(f.0.to_string().as_bytes()))
}

/// The cache of one child kind, or `None` when the kind is not watched (then every lookup is a
/// GET).
fn cached<K>(store: Option<&Store<K>>, ns: &str, name: &str) -> Option<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.map(|s| {
        s.get(&ObjectRef::new(name).within(ns))
            .map(|o| (*o).clone())
    })
}

/// One reconcile's writes, collecting what it observed and what failed.
#[derive(Debug)]
pub struct Applier<'a> {
    ctx: &'a Context,
    ns: &'a str,
    lr: &'a LiveRealtime,
    /// What the status is computed from.
    pub observed: Observed,
}

impl<'a> Applier<'a> {
    /// An applier for `lr` in `ns`.
    pub fn new(ctx: &'a Context, ns: &'a str, lr: &'a LiveRealtime, observed: Observed) -> Self {
        Self {
            ctx,
            ns,
            lr,
            observed,
        }
    }

    fn problem(&mut self, problem: Problem) {
        tracing::warn!(
            object = %format!("{}/{}", self.ns, self.lr.name_any()),
            reason = problem.reason,
            message = %problem.message,
            "reconcile step failed"
        );
        self.observed.problems.push(problem);
    }

    fn conflict(&mut self, kind: &str, name: &str, meta: &ObjectMeta) {
        self.problem(Problem {
            reason: reasons::NAME_CONFLICT,
            message: format!(
                "{kind} {name} {}; rename or delete it, or rename this LiveRealtime",
                controller_of(meta)
            ),
            stalled: true,
        });
    }

    fn ours(&self, meta: &ObjectMeta) -> bool {
        controller_uid(meta).is_some() && controller_uid(meta) == self.lr.metadata.uid.as_deref()
    }

    /// Reads the Secrets the pods need: every reference must exist with its key (else a
    /// `MissingSecret` problem), the start-only ones are digested, and the managed Redis
    /// password Secret is created when missing. Returns the digests for the pod templates.
    pub async fn prepare(&mut self) -> Digests {
        let mut gateway = Digest::default();
        let mut redis_digest = None;
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        for reference in secrets::references(self.lr) {
            let secret = match api.get_opt(&reference.name).await {
                Ok(s) => s,
                Err(e) => {
                    self.problem(Problem::request("reading", "Secret", &reference.name, &e));
                    continue;
                }
            };
            let Some(secret) = secret else {
                self.problem(Problem {
                    reason: reasons::MISSING_SECRET,
                    message: format!("Secret {} ({}) not found", reference.name, reference.field),
                    stalled: true,
                });
                continue;
            };
            let data = secret.data.unwrap_or_default();
            match &reference.key {
                Some(key) => match data.get(key) {
                    Some(value) if !reference.reloaded => {
                        gateway.add(&reference.name, key, &value.0);
                    }
                    Some(_) => {}
                    None => self.problem(Problem {
                        reason: reasons::MISSING_SECRET,
                        message: format!(
                            "Secret {} ({}) has no key {key}",
                            reference.name, reference.field
                        ),
                        stalled: true,
                    }),
                },
                None if data.is_empty() => self.problem(Problem {
                    reason: reasons::MISSING_SECRET,
                    message: format!(
                        "Secret {} ({}) has no keys",
                        reference.name, reference.field
                    ),
                    stalled: true,
                }),
                None => {}
            }
        }
        if self.lr.spec.redis.mode == RedisMode::Managed
            && let Some(version) = self.ensure_redis_password().await
        {
            gateway.add(
                &redis_name(self.lr),
                redis::PASSWORD_KEY,
                version.as_bytes(),
            );
            let mut d = Digest::default();
            d.add(
                &redis_name(self.lr),
                redis::PASSWORD_KEY,
                version.as_bytes(),
            );
            redis_digest = Some(d.finish());
        }
        Digests {
            gateway: Some(gateway.finish()),
            redis: redis_digest,
        }
    }

    /// Makes sure the managed Redis password Secret exists, creating it with a random password
    /// when missing (never rewriting it). Returns its version (uid and resourceVersion: the
    /// password only changes when someone edits or re-creates the Secret).
    async fn ensure_redis_password(&mut self) -> Option<String> {
        let name = redis_name(self.lr);
        let version = |m: &ObjectMeta| {
            format!(
                "{}/{}",
                m.uid.as_deref().unwrap_or_default(),
                m.resource_version.as_deref().unwrap_or_default()
            )
        };
        let cached_meta = self.ctx.caches.as_ref().map(|c| {
            c.secrets
                .get(&ObjectRef::new(&name).within(self.ns))
                .map(|s| s.metadata.clone())
        });
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let live = match cached_meta {
            Some(Some(meta)) => Some(meta),
            _ => match api.get_metadata_opt(&name).await {
                Ok(m) => m.map(|m| m.metadata),
                Err(e) => {
                    self.problem(Problem::request("reading", "Secret", &name, &e));
                    return None;
                }
            },
        };
        if let Some(meta) = live {
            if !self.ours(&meta) {
                self.conflict("Secret", &name, &meta);
                return None;
            }
            return Some(version(&meta));
        }
        let password = hex::encode(rand::random::<[u8; 32]>());
        let secret = redis::desired_secret(self.lr, &password);
        let params = PostParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PostParams::default()
        };
        match api.create(&params, &secret).await {
            Ok(created) => {
                tracing::info!(name, "created the managed Redis password Secret");
                Some(version(&created.metadata))
            }
            Err(e) => {
                self.problem(Problem::request("creating", "Secret", &name, &e));
                None
            }
        }
    }

    /// Applies `obj` unless the last apply already left it so; returns the object as it is now
    /// (or as it was, when the apply failed).
    async fn apply<K>(
        &mut self,
        kind: &str,
        api: &Api<K>,
        cache: Option<Option<K>>,
        obj: &K,
    ) -> Option<K>
    where
        K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        let live = match cache {
            Some(Some(live)) => Some(live),
            // Not in the cache (not created yet, or not labelled as ours): ask.
            _ => match api.get_opt(&name).await {
                Ok(live) => live,
                Err(e) => {
                    self.problem(Problem::request("reading", kind, &name, &e));
                    return None;
                }
            },
        };
        let key = format!("{kind}/{}/{name}", self.ns);
        let want = sha256_hex(&serde_json::to_vec(obj).unwrap_or_default());
        if let Some(live) = &live {
            if !self.ours(live.meta()) {
                self.conflict(kind, &name, live.meta());
                return None;
            }
            if self.ctx.unchanged(&key, &want, live.meta()) {
                return Some(live.clone());
            }
        }
        match api.patch(&name, &apply_params(), &Patch::Apply(obj)).await {
            Ok(applied) => {
                self.ctx.record_applied(&key, &want, applied.meta());
                Some(applied)
            }
            Err(e) => {
                self.problem(Problem::request("applying", kind, &name, &e));
                live
            }
        }
    }

    /// Deletes `name` if this LiveRealtime controls it; a missing object is fine.
    async fn remove<K>(&mut self, kind: &str, api: &Api<K>, cache: Option<Option<K>>, name: &str)
    where
        K: Resource + DeserializeOwned + Clone + Debug,
    {
        self.ctx
            .forget_applied(&format!("{kind}/{}/{name}", self.ns));
        let live = match cache {
            Some(live) => live,
            None => match api.get_opt(name).await {
                Ok(live) => live,
                Err(e) => {
                    self.problem(Problem::request("reading", kind, name, &e));
                    return;
                }
            },
        };
        let Some(live) = live else { return };
        if !self.ours(live.meta()) {
            // Not ours: we do not want it, and it is not ours to delete either.
            return;
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: live.meta().uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(name, &params).await {
            Ok(_) => tracing::info!(kind, name, "deleted child of a disabled feature"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => self.problem(Problem::request("deleting", kind, name, &e)),
        }
    }

    async fn ensure<K>(
        &mut self,
        kind: &str,
        cache: Option<&Store<K>>,
        name: &str,
        desired: Option<&K>,
    ) -> Option<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug
            + 'static,
    {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let cache = cached(cache, self.ns, name);
        match desired {
            Some(obj) => self.apply(kind, &api, cache, obj).await,
            None => {
                self.remove(kind, &api, cache, name).await;
                None
            }
        }
    }

    async fn ensure_dynamic(
        &mut self,
        kind: &str,
        ar: &ApiResource,
        present: bool,
        desired: Option<&DynamicObject>,
    ) {
        // Without the CRD there is nothing to apply or delete (and no such resource to ask
        // about).
        if !present {
            return;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), self.ns, ar);
        let name = gateway_name(self.lr);
        match desired {
            Some(obj) => {
                self.apply(kind, &api, None, obj).await;
            }
            None => self.remove(kind, &api, None, &name).await,
        }
    }

    /// Applies every child, recording what it observed and what failed.
    pub async fn apply_children(&mut self, children: &Children) {
        let caches = self.ctx.caches.clone();
        let c = caches.as_ref();
        let lr = self.lr;
        let gateway = gateway_name(lr);
        let redis = redis_name(lr);
        let admin = admin_name(lr);
        let config_map_name = super::config_map_name(lr);
        self.ensure::<ConfigMap>(
            "ConfigMap",
            c.map(|c| &c.config_maps),
            &config_map_name,
            Some(&children.config_map),
        )
        .await;
        self.observed.redis = self
            .ensure::<Deployment>(
                "Deployment",
                c.map(|c| &c.deployments),
                &redis,
                children.redis_deployment.as_ref(),
            )
            .await;
        self.ensure::<Service>(
            "Service",
            c.map(|c| &c.services),
            &redis,
            children.redis_service.as_ref(),
        )
        .await;
        self.ensure::<NetworkPolicy>(
            "NetworkPolicy",
            c.map(|c| &c.network_policies),
            &redis,
            children.redis_network_policy.as_ref(),
        )
        .await;
        self.ensure::<PodDisruptionBudget>(
            "PodDisruptionBudget",
            c.map(|c| &c.pdbs),
            &redis,
            children.redis_pdb.as_ref(),
        )
        .await;
        if lr.spec.redis.mode != RedisMode::Managed {
            // Only the operator's own generated Secret: a user's Secret of that name is not
            // ours (ownership is checked) and stays.
            let known_absent = c.is_some_and(|c| {
                c.secrets
                    .get(&ObjectRef::new(&redis).within(self.ns))
                    .is_none()
            });
            if !known_absent {
                let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
                self.remove("Secret", &api, None::<Option<Secret>>, &redis)
                    .await;
            }
        }
        self.observed.gateway = self
            .ensure::<Deployment>(
                "Deployment",
                c.map(|c| &c.deployments),
                &gateway,
                Some(&children.deployment),
            )
            .await;
        self.ensure::<Service>(
            "Service",
            c.map(|c| &c.services),
            &gateway,
            Some(&children.service),
        )
        .await;
        self.ensure::<Service>(
            "Service",
            c.map(|c| &c.services),
            &admin,
            Some(&children.admin_service),
        )
        .await;
        self.ensure::<NetworkPolicy>(
            "NetworkPolicy",
            c.map(|c| &c.network_policies),
            &admin,
            children.admin_network_policy.as_ref(),
        )
        .await;
        self.observed.hpa = self
            .ensure::<HorizontalPodAutoscaler>(
                "HorizontalPodAutoscaler",
                c.map(|c| &c.hpas),
                &gateway,
                children.hpa.as_ref(),
            )
            .await;
        self.ensure::<PodDisruptionBudget>(
            "PodDisruptionBudget",
            c.map(|c| &c.pdbs),
            &gateway,
            children.pdb.as_ref(),
        )
        .await;
        self.ensure::<Ingress>(
            "Ingress",
            c.map(|c| &c.ingresses),
            &gateway,
            children.ingress.as_ref(),
        )
        .await;
        self.ensure::<ConfigMap>(
            "ConfigMap",
            c.map(|c| &c.config_maps),
            &grafana_dashboard::name(lr),
            children.grafana_dashboard.as_ref(),
        )
        .await;
        let sm_crd = self.observed.service_monitor_crd;
        self.ensure_dynamic(
            "ServiceMonitor",
            &service_monitor::api_resource(),
            sm_crd,
            children.service_monitor.as_ref(),
        )
        .await;
        let route_crd = self.observed.http_route_crd;
        self.ensure_dynamic(
            "HTTPRoute",
            &network::http_route_api_resource(),
            route_crd,
            children.http_route.as_ref(),
        )
        .await;
    }
}

/// Writes `.status` by server-side apply with the operator's field manager.
pub async fn patch_status(
    client: &kube::Client,
    ns: &str,
    lr: &LiveRealtime,
    status: &LiveRealtimeStatus,
) -> Result<()> {
    // Not `Api<LiveRealtime>`: the response would be decoded, and a field from a newer CRD
    // (which this operator's watch may still see pruned) would fail the write that succeeded.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<LiveRealtime>(&()));
    let body = serde_json::json!({
        "apiVersion": LiveRealtime::api_version(&()),
        "kind": LiveRealtime::kind(&()),
        "status": status,
    });
    api.patch_status(&lr.name_any(), &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(Error::PatchStatus)?;
    Ok(())
}

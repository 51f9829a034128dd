//! The IO shell around the pure builders: server-side apply of every desired child, deletion of
//! children whose feature is off, and the status patch.
//!
//! Expected flow: apply ConfigMap → (managed) Redis Deployment, Service and NetworkPolicy →
//! gateway Deployment and Service → HPA → PDB → Grafana dashboard → ServiceMonitor, deleting
//! each optional child that is `None`.
//!
//! Guarantees: every apply uses the one field manager [`crate::MANAGER`] with `force`, so drift
//! (an edited field we own) is put back on the next reconcile; a child is deleted only when its
//! controller owner reference is this `LiveRealtime` (a same-named object someone else created
//! is left alone), with a uid precondition so a re-created object is never hit.
//!
//! Assumptions: the caller has checked the object has a namespace and name.
//!
//! Errors: the first failed request stops the reconcile (the next one retries everything).

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::Observed;
use super::{Children, gateway_name, grafana_dashboard, redis_name, service_monitor};
use crate::MANAGER;
use crate::crd::{LiveRealtime, LiveRealtimeStatus};
use crate::error::{Error, Result};

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Applies `obj` (typed, namespaced) and returns the object the apiserver now holds.
async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(|source| Error::Apply {
            kind: <K as k8s_openapi::Resource>::KIND,
            name,
            source,
        })
}

/// Deletes `name` if this `LiveRealtime` is its controller. A missing object is fine.
async fn delete_owned<K>(
    api: &Api<K>,
    kind: &'static str,
    name: &str,
    owner: &LiveRealtime,
) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let wrap = |source| Error::Delete {
        kind,
        name: name.to_owned(),
        source,
    };
    let Some(existing) = api.get_opt(name).await.map_err(wrap)? else {
        return Ok(());
    };
    let owned = existing
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == owner.metadata.uid.as_ref());
    if !owned {
        tracing::warn!(kind, name, "not deleting a child we do not control");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            tracing::info!(kind, name, "deleted child of a disabled feature");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(wrap(source)),
    }
}

async fn apply_or_delete<K>(
    client: &Client,
    ns: &str,
    owner: &LiveRealtime,
    name: &str,
    desired: Option<&K>,
) -> Result<Option<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    match desired {
        Some(obj) => apply(client, ns, obj).await.map(Some),
        None => {
            let api: Api<K> = Api::namespaced(client.clone(), ns);
            delete_owned(&api, <K as k8s_openapi::Resource>::KIND, name, owner)
                .await
                .map(|()| None)
        }
    }
}

/// The field manager that keeps `spec.replicas` when autoscaling takes over.
pub const REPLICAS_HANDOVER_MANAGER: &str = "live-operator-replicas-handover";

/// When autoscaling is turned on, our apply stops setting `spec.replicas`. Server-side apply
/// would then *remove* the field we owned and the Deployment would fall back to 1 replica,
/// dropping every socket on the other pods until the HPA scales back up. So first, if we still
/// own the field, re-apply its current value under a second manager: a co-owned field survives
/// our dropping it, and the HPA takes it from there (the handover the Kubernetes docs describe
/// for migrating a Deployment to an HPA).
async fn hand_over_replicas(client: &Client, ns: &str, desired: &Deployment) -> Result<()> {
    if desired.spec.as_ref().is_some_and(|s| s.replicas.is_some()) {
        return Ok(());
    }
    let name = desired.metadata.name.clone().unwrap_or_default();
    let wrap = |source| Error::Apply {
        kind: "Deployment",
        name: name.clone(),
        source,
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let Some(live) = api.get_opt(&name).await.map_err(wrap)? else {
        return Ok(());
    };
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(());
    };
    if !owns_replicas(&live) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    api.patch(
        &name,
        &PatchParams::apply(REPLICAS_HANDOVER_MANAGER),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(wrap)?;
    tracing::info!(name, replicas, "handed spec.replicas over to the HPA");
    Ok(())
}

/// True when our field manager's apply owns `spec.replicas`.
fn owns_replicas(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    })
}

/// Applies every child and returns what the apiserver reported back.
pub async fn apply_children(
    client: &Client,
    ns: &str,
    lr: &LiveRealtime,
    children: &Children,
    mut observed: Observed,
) -> Result<Observed> {
    let gateway = gateway_name(lr);
    let _: ConfigMap = apply(client, ns, &children.config_map).await?;
    let redis = redis_name(lr);
    observed.redis =
        apply_or_delete::<Deployment>(client, ns, lr, &redis, children.redis_deployment.as_ref())
            .await?;
    apply_or_delete::<Service>(client, ns, lr, &redis, children.redis_service.as_ref()).await?;
    apply_or_delete::<NetworkPolicy>(
        client,
        ns,
        lr,
        &redis,
        children.redis_network_policy.as_ref(),
    )
    .await?;
    hand_over_replicas(client, ns, &children.deployment).await?;
    observed.gateway = Some(apply(client, ns, &children.deployment).await?);
    let _: Service = apply(client, ns, &children.service).await?;
    observed.hpa =
        apply_or_delete::<HorizontalPodAutoscaler>(client, ns, lr, &gateway, children.hpa.as_ref())
            .await?;
    apply_or_delete::<PodDisruptionBudget>(client, ns, lr, &gateway, children.pdb.as_ref()).await?;
    apply_or_delete::<ConfigMap>(
        client,
        ns,
        lr,
        &grafana_dashboard::name(lr),
        children.grafana_dashboard.as_ref(),
    )
    .await?;
    // Without the CRD there is nothing to apply or delete (and no such resource to ask about).
    if observed.service_monitor_crd {
        let ar: ApiResource = service_monitor::api_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        match &children.service_monitor {
            Some(sm) => {
                api.patch(&gateway, &apply_params(), &Patch::Apply(sm))
                    .await
                    .map_err(|source| Error::Apply {
                        kind: "ServiceMonitor",
                        name: gateway.clone(),
                        source,
                    })?;
            }
            None => delete_owned(&api, "ServiceMonitor", &gateway, lr).await?,
        }
    }
    Ok(observed)
}

/// Writes `.status` by server-side apply with the operator's field manager.
pub async fn patch_status(
    client: &Client,
    ns: &str,
    lr: &LiveRealtime,
    status: &LiveRealtimeStatus,
) -> Result<()> {
    let api: Api<LiveRealtime> = Api::namespaced(client.clone(), ns);
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

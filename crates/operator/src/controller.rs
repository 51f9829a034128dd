//! The controller: watches `LiveRealtime` objects, the children they own and the Secrets they
//! reference, reconciles each object, and backs off on errors. [`run`] wires it to leader
//! election and the admin server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, PartialObjectMeta, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::context::{Caches, Context};
use crate::crd::LiveRealtime;
use crate::error::{Error, Result};
use crate::reconcile::apply::Applier;
use crate::reconcile::status::{self, Notice, Observed};
use crate::reconcile::{self, MANAGED_BY_SELECTOR, configmap, deployment, secrets};

/// Periodic re-reconcile: re-checks drift on children we do not watch (ServiceMonitor,
/// HTTPRoute) and re-discovers optional CRDs. Reads only, unless something drifted.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
/// While a rollout or an optional part is pending, look again sooner than the resync.
const PENDING_RESYNC: Duration = Duration::from_secs(30);

/// The object the controller reconciles: a `LiveRealtime`, or the metadata of one this
/// operator cannot decode (so one bad object never stops the others).
pub type Guarded = DeserializeGuard<LiveRealtime>;

/// Reconciles one `LiveRealtime`.
///
/// Expected flow: undecodable → `InvalidSpec` in status and stop; paused → write the paused
/// condition and stop; invalid gateway config → write `InvalidConfig` and stop (children keep
/// the last good config); otherwise read the Secrets, apply every child that changed, then
/// write status (only when it changed) and publish one event per state change.
///
/// Guarantees: idempotent (server-side apply of pure `desired()` output); never writes or
/// deletes a child it does not control; every failed step is in status within this reconcile.
///
/// Errors: a failed step still writes status, then returns [`Error`] so [`error_policy`]
/// requeues with backoff.
pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action> {
    let lr = match &guard.0 {
        Ok(lr) => lr,
        Err(invalid) => return reconcile_invalid(invalid, &ctx).await,
    };
    let started = Instant::now();
    let ns = lr.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    if lr.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground): garbage collection removes the children through their
        // owner references; re-applying them would fight it.
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();

    let mut failure = None;
    let (next, action, result) = if lr.is_paused() {
        (
            status::paused(lr, now),
            Action::requeue(ctx.resync),
            "paused",
        )
    } else if let Err(e) = lr.spec.gateway_config().validate() {
        let observed = Observed {
            invalid_config: Some(e.to_string()),
            ..Observed::default()
        };
        (
            status::compute(lr, &observed, now),
            Action::requeue(ctx.resync),
            "invalid",
        )
    } else {
        let facts = ctx.facts().await;
        let mut observed = Observed::new(facts);
        observed.config_hash = Some(configmap::config_hash(lr));
        observed.restart_hash = Some(deployment::restart_hash(lr));
        observed.image = Some(deployment::image(lr));
        let mut applier = Applier::new(&ctx, &ns, lr, observed);
        let digests = applier.prepare().await;
        let children = reconcile::desired(lr, facts, &digests);
        applier.apply_children(&children).await;
        let observed = applier.observed;
        if let Some(first) = observed.problems.first() {
            failure = Some(Error::Step {
                reason: first.reason,
                message: first.message.clone(),
            });
        }
        let next = status::compute(lr, &observed, now);
        let settled = next
            .conditions
            .iter()
            .all(|c| c.type_ != status::types::READY || c.status == "True");
        let action = Action::requeue(if settled {
            ctx.resync
        } else {
            PENDING_RESYNC.min(ctx.resync)
        });
        (next, action, if failure.is_some() { "error" } else { "ok" })
    };

    if lr.status.as_ref() != Some(&next) {
        reconcile::apply::patch_status(&ctx.client, &ns, lr, &next).await?;
    }
    for notice in status::notices(lr.status.as_ref(), &next) {
        publish(&ctx, lr.object_ref(&()), notice).await;
    }
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if let Some(error) = failure {
        // error_policy counts it and backs off.
        return Err(error);
    }
    ctx.record_success(&key(guard.as_ref()));
    ctx.metrics.reconciles.with_label_values(&[result]).inc();
    Ok(action)
}

/// An object this operator cannot decode: `InvalidSpec` in its status (merged into the
/// conditions it has), one Warning event, and no change to its children.
async fn reconcile_invalid(invalid: &InvalidObject, ctx: &Context) -> Result<Action> {
    let meta = &invalid.metadata;
    let ns = meta
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let name = meta.name.clone().ok_or(Error::MissingObjectKey("name"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<LiveRealtime>(&()),
    );
    let raw = api.get(&name).await.map_err(Error::PatchStatus)?;
    let previous: Vec<Condition> = raw
        .data
        .pointer("/status/conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let next = status::invalid_spec(&previous, meta.generation, &invalid.error, Timestamp::now());
    let unchanged =
        next.len() == previous.len() && next.iter().all(|c| previous.iter().any(|p| p == c));
    if !unchanged {
        // A merge patch, not an apply: it must leave the status fields this object had
        // (replicas, selector: the scale subresource) as they are.
        let body = serde_json::json!({"status": {
            "observedGeneration": meta.generation,
            "conditions": next,
        }});
        // Not `Api<LiveRealtime>`: the response is the object it cannot decode.
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(Error::PatchStatus)?;
        let reference = ObjectReference {
            api_version: Some(LiveRealtime::api_version(&()).into_owned()),
            kind: Some(LiveRealtime::kind(&()).into_owned()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: meta.uid.clone(),
            ..ObjectReference::default()
        };
        let note = next
            .iter()
            .find(|c| c.type_ == status::types::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(
            ctx,
            reference,
            Notice {
                warning: true,
                reason: status::reasons::INVALID_SPEC.to_owned(),
                note: note.chars().take(1000).collect(),
            },
        )
        .await;
    }
    tracing::warn!(object = %format!("{ns}/{name}"), error = %invalid.error, "cannot decode LiveRealtime");
    ctx.metrics.reconciles.with_label_values(&["invalid"]).inc();
    Ok(Action::requeue(ctx.resync))
}

/// Publishes an event; a failure is counted and logged, never fails the reconcile.
async fn publish(ctx: &Context, reference: ObjectReference, notice: Notice) {
    let event = Event {
        type_: if notice.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: notice.reason,
        note: Some(notice.note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        ctx.metrics.event_failures.inc();
        tracing::warn!(error = %e, "publishing event failed");
    }
}

fn key(obj: &Guarded) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Backoff after `failures` consecutive errors: 5 s doubling up to 5 min. Pure.
pub fn backoff(failures: u32) -> Duration {
    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);
    BASE.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX)
}

/// The longest wait before retrying a reconcile whose step met a user-fixable problem (a name
/// taken by an object the operator does not own, a missing Secret, a rejected child): fixing it
/// may not touch anything the operator watches (a foreign object carries none of its labels), so
/// the retry is what notices the fix.
pub const STEP_RETRY_MAX: Duration = Duration::from_secs(30);

/// When to retry after `failures` consecutive errors, the last being `error`. Pure.
pub fn retry_after(error: &Error, failures: u32) -> Duration {
    match error {
        Error::Step { .. } => backoff(failures).min(STEP_RETRY_MAX),
        _ => backoff(failures),
    }
}

/// Logs and counts a failed reconcile, then requeues with backoff.
pub fn error_policy(obj: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&obj));
    let delay = retry_after(error, failures);
    tracing::warn!(
        object = %key(&obj),
        code = error.code(),
        error = %error,
        failures,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    ctx.metrics.errors.with_label_values(&[error.code()]).inc();
    Action::requeue(delay)
}

fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A cached watch of one child kind: the store the reconciler reads, and the stream that
/// triggers the owner's reconcile. A deleted child's apply record is forgotten.
fn child_watch<K>(
    ctx_slot: &Arc<std::sync::Mutex<Option<Arc<Context>>>>,
    kind: &'static str,
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let slot = ctx_slot.clone();
    let stream = watcher(api, watcher::Config::default().labels(MANAGED_BY_SELECTOR))
        .default_backoff()
        .reflect(writer)
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(obj) = event
                && let Ok(guard) = slot.lock()
                && let Some(ctx) = guard.as_ref()
            {
                ctx.forget_applied(&format!(
                    "{kind}/{}/{}",
                    obj.namespace().unwrap_or_default(),
                    obj.name_any()
                ));
            }
        })
        .applied_objects();
    (store, stream)
}

/// Runs the controller until `shutdown` resolves.
///
/// `namespace` limits every watch to one namespace (all namespaces when `None`).
pub async fn run_controller(
    ctx: Context,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    // The child watches need the context to forget deleted children, and the context needs
    // their stores: the slot breaks the cycle.
    let slot = Arc::new(std::sync::Mutex::new(None));
    let (config_maps, cm_stream) =
        child_watch(&slot, "ConfigMap", api::<ConfigMap>(&client, namespace));
    let (deployments, deploy_stream) =
        child_watch(&slot, "Deployment", api::<Deployment>(&client, namespace));
    let (services, svc_stream) = child_watch(&slot, "Service", api::<Service>(&client, namespace));
    let (hpas, hpa_stream) = child_watch(
        &slot,
        "HorizontalPodAutoscaler",
        api::<HorizontalPodAutoscaler>(&client, namespace),
    );
    let (pdbs, pdb_stream) = child_watch(
        &slot,
        "PodDisruptionBudget",
        api::<PodDisruptionBudget>(&client, namespace),
    );
    let (network_policies, np_stream) = child_watch(
        &slot,
        "NetworkPolicy",
        api::<NetworkPolicy>(&client, namespace),
    );
    let (ingresses, ing_stream) = child_watch(&slot, "Ingress", api::<Ingress>(&client, namespace));
    // Secrets: metadata only (their data is read when needed, never cached), every Secret,
    // since the ones users reference carry no label of ours.
    let (secrets_store, secrets_writer) = reflector::store();
    let secret_stream = watcher(
        api::<PartialObjectMeta<Secret>>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|s| {
        s.metadata.managed_fields = None;
        s.metadata.annotations = None;
    })
    .reflect(secrets_writer)
    .applied_objects();
    let caches = Caches {
        config_maps,
        deployments,
        services,
        hpas,
        pdbs,
        network_policies,
        ingresses,
        secrets: secrets_store,
    };
    let ctx = Arc::new(ctx.with_caches(caches));
    if let Ok(mut s) = slot.lock() {
        *s = Some(ctx.clone());
    }

    let controller = Controller::new(
        api::<Guarded>(&client, namespace),
        watcher::Config::default().any_semantic(),
    );
    let lrs = controller.store();
    ctx.metrics
        .register(Box::new(crate::readiness::ReadinessCollector::new(
            controller.store(),
        )));
    controller
        .owns_stream(cm_stream)
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .owns_stream(hpa_stream)
        .owns_stream(pdb_stream)
        .owns_stream(np_stream)
        .owns_stream(ing_stream)
        .watches_stream(secret_stream, move |secret| {
            let ns = secret.namespace();
            let name = secret.name_any();
            lrs.state()
                .into_iter()
                .filter(|g| {
                    g.0.as_ref().is_ok_and(|lr| {
                        lr.namespace() == ns && secrets::watched_names(lr).contains(&name)
                    })
                })
                .map(|g| ObjectRef::from_obj(g.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// Reconciles in parallel.
    pub concurrency: u16,
    /// Leader election; `None` runs without (a single replica).
    pub leader_election: Option<LeaderElection>,
    /// This replica's name (events and lease holder).
    pub identity: String,
}

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
}

/// Runs the operator: waits for the lease (when configured), then runs the controller until
/// SIGTERM/SIGINT or until the lease is lost (then returns [`Error::LostLeadership`] so the
/// process restarts as a follower rather than risk two leaders).
pub async fn run(ctx: Context, config: RunConfig, ready: watch::Sender<bool>) -> Result<()> {
    let RunConfig {
        namespace,
        concurrency,
        leader_election,
        identity,
    } = config;
    let Some(election) = leader_election else {
        let _ = ready.send(true);
        ctx.metrics.leader.set(1);
        run_controller(ctx, namespace.as_deref(), concurrency, shutdown_signal()).await;
        return Ok(());
    };

    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(ctx.client.clone(), &election.lease_name)
            .with_namespace(&election.lease_namespace)
            .with_identity(&identity)
            .with_duration(15)
            .with_grace(5)
            .with_field_manager(format!("{}-lease", crate::MANAGER))
            .build()
            .await?;
    let (mut leading, task) = manager.watch().await;
    // A follower is healthy and ready: it is waiting for its turn.
    let _ = ready.send(true);
    tracing::info!(%identity, lease = %election.lease_name, "waiting for the leader lease");
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    // The lease task ended before we ever led: surface its error, or treat it
                    // as a lost election so the process restarts and tries again.
                    return finish(task).await.and(Err(Error::LostLeadership));
                }
            }
            () = &mut signal => return Ok(()),
        }
    }
    tracing::info!(%identity, "became leader");
    let metrics = ctx.metrics.clone();
    metrics.leader.set(1);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let controller = run_controller(ctx, namespace.as_deref(), concurrency, async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut controller = std::pin::pin!(controller);
    let outcome = loop {
        tokio::select! {
            () = &mut controller => break Ok(()),
            () = &mut signal => {
                let _ = stop_tx.send(true);
                (&mut controller).await;
                break Ok(());
            }
            changed = leading.changed() => {
                if changed.is_err() || !*leading.borrow_and_update() {
                    let _ = stop_tx.send(true);
                    (&mut controller).await;
                    break Err(Error::LostLeadership);
                }
            }
        }
    };
    metrics.leader.set(0);
    // Closing the channel makes the lease task release the lease for the next leader.
    drop(leading);
    if let Err(e) = finish(task).await {
        tracing::warn!(error = %e, "releasing the lease failed");
    }
    outcome
}

async fn finish(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) -> Result<()> {
    match task.await {
        Ok(Ok(manager)) => {
            manager.release().await?;
            Ok(())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "lease task panicked");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests;

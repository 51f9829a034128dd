//! The controller: watches `LiveRealtime` objects and the children they own, reconciles each
//! one, and backs off on errors. [`run`] wires it to leader election and the admin server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::watch;

use crate::context::Context;
use crate::crd::LiveRealtime;
use crate::error::{Error, Result};
use crate::reconcile::status::{self, Notice, Observed};
use crate::reconcile::{self, Facts, MANAGED_BY_SELECTOR, apply, configmap, deployment};

/// Periodic re-reconcile: re-checks drift on children we do not watch (the ServiceMonitor) and
/// re-discovers optional CRDs.
const RESYNC: Duration = Duration::from_secs(300);
/// While a rollout or an optional part is pending, look again sooner than [`RESYNC`].
const PENDING_RESYNC: Duration = Duration::from_secs(30);

/// Reconciles one `LiveRealtime`.
///
/// Expected flow: paused → write the paused condition and stop; invalid gateway config → write
/// `Degraded/InvalidConfig` and stop (children keep the last good config); otherwise apply every
/// child, then write status computed from the apply responses, then publish one event per
/// state change.
///
/// Guarantees: idempotent (server-side apply of pure `desired()` output); never deletes a child
/// it does not control.
///
/// Errors: a failed apiserver request returns [`Error`]; [`error_policy`] requeues with backoff.
pub async fn reconcile(lr: Arc<LiveRealtime>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = lr.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
    if lr.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground): garbage collection removes the children through their
        // owner references; re-applying them would fight it.
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();

    let (next, action, result) = if lr.is_paused() {
        (status::paused(&lr, now), Action::requeue(RESYNC), "paused")
    } else if let Err(e) = lr.spec.gateway_config().validate() {
        let observed = Observed {
            invalid_config: Some(e.to_string()),
            ..Observed::default()
        };
        (
            status::compute(&lr, &observed, now),
            Action::requeue(RESYNC),
            "invalid",
        )
    } else {
        let facts = Facts {
            service_monitor_crd: ctx.service_monitor_crd().await,
        };
        let children = reconcile::desired(&lr, facts);
        let mut observed = Observed::new(facts);
        observed.config_hash = Some(configmap::config_hash(&lr));
        observed.restart_hash = Some(deployment::restart_hash(&lr));
        let observed = apply::apply_children(&ctx.client, &ns, &lr, &children, observed).await?;
        let next = status::compute(&lr, &observed, now);
        let settled = next
            .conditions
            .iter()
            .all(|c| c.type_ != status::types::READY || c.status == "True");
        let action = Action::requeue(if settled { RESYNC } else { PENDING_RESYNC });
        (next, action, "ok")
    };

    if lr.status.as_ref() != Some(&next) {
        apply::patch_status(&ctx.client, &ns, &lr, &next).await?;
    }
    for notice in status::notices(lr.status.as_ref(), &next) {
        publish(&ctx, &lr, notice).await;
    }
    ctx.record_success(&key(&lr));
    ctx.metrics.reconciles.with_label_values(&[result]).inc();
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    Ok(action)
}

/// Publishes an event; a failure is counted and logged, never fails the reconcile.
async fn publish(ctx: &Context, lr: &LiveRealtime, notice: Notice) {
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
    if let Err(e) = ctx.recorder.publish(&event, &lr.object_ref(&())).await {
        ctx.metrics.event_failures.inc();
        tracing::warn!(error = %e, "publishing event failed");
    }
}

fn key(lr: &LiveRealtime) -> String {
    format!("{}/{}", lr.namespace().unwrap_or_default(), lr.name_any())
}

/// Backoff after `failures` consecutive errors: 5 s doubling up to 5 min. Pure.
pub fn backoff(failures: u32) -> Duration {
    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);
    BASE.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX)
}

/// Logs and counts a failed reconcile, then requeues with backoff.
pub fn error_policy(lr: Arc<LiveRealtime>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&key(&lr));
    let delay = backoff(failures);
    tracing::warn!(
        object = %key(&lr),
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

/// Runs the controller until `shutdown` resolves.
///
/// `namespace` limits the watch to one namespace (all namespaces when `None`).
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = || {
        watcher::Config::default()
            .labels(MANAGED_BY_SELECTOR)
            .any_semantic()
    };
    let controller = Controller::new(
        api::<LiveRealtime>(&client, namespace),
        watcher::Config::default().any_semantic(),
    );
    ctx.metrics
        .register(Box::new(crate::readiness::ReadinessCollector::new(
            controller.store(),
        )));
    controller
        .owns(api::<ConfigMap>(&client, namespace), owned())
        .owns(api::<Deployment>(&client, namespace), owned())
        .owns(api::<Service>(&client, namespace), owned())
        .owns(api::<HorizontalPodAutoscaler>(&client, namespace), owned())
        .owns(api::<PodDisruptionBudget>(&client, namespace), owned())
        .owns(api::<NetworkPolicy>(&client, namespace), owned())
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
pub async fn run(ctx: Arc<Context>, config: RunConfig, ready: watch::Sender<bool>) -> Result<()> {
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
    ctx.metrics.leader.set(1);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let controller = run_controller(ctx.clone(), namespace.as_deref(), concurrency, async move {
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
    ctx.metrics.leader.set(0);
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

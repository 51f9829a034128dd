//! The operator against a real Kubernetes API server (etcd, kube-apiserver and
//! kube-controller-manager from `KUBEBUILDER_ASSETS`, as users get them with `setup-envtest`).
//!
//! The operator runs as separate `live-operator run` processes authenticated as the Helm chart's
//! ServiceAccount, with exactly the RBAC `helm template` renders (cluster-wide, then with
//! `operator.watchNamespace`), never as an admin: a missing verb fails a scenario. One control
//! plane serves every scenario, each in its own namespace; the scenarios of a phase run
//! concurrently. Without `KUBEBUILDER_ASSETS` the suite says it skipped and passes.
//!
//! `LIVE_ENVTEST_ONLY=a,b` runs only the named scenarios; `LIVE_ENVTEST_STEADY_SECONDS` sets
//! the steady-state write measurement window (default 20 s; the figure in the docs is 300).

mod cluster;
mod scenarios;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use cluster::{ControlPlane, Operator};

/// Polls `check` every 250 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Release namespace and ServiceAccount of the cluster-wide install, and of the
/// single-namespace one.
const SYSTEM_NS: &str = "live-system";
const TENANT_SYSTEM_NS: &str = "live-tenant-system";
const SA: &str = "live-operator";

fn sa_user(ns: &str) -> String {
    format!("system:serviceaccount:{ns}:{SA}")
}

type Scenario<'a> = (
    &'static str,
    std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>,
);

/// Runs scenarios concurrently; returns the names of the failed ones.
async fn run(scenarios: Vec<Scenario<'_>>) -> Vec<String> {
    let only = std::env::var("LIVE_ENVTEST_ONLY").ok();
    let selected: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n.trim() == *name))
        })
        .collect();
    let results = futures::future::join_all(selected.into_iter().map(|(name, fut)| async move {
        let started = Instant::now();
        let result = fut.await;
        match &result {
            Ok(()) => eprintln!(
                "scenario {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => eprintln!(
                "scenario {name} ... FAILED ({:.1} s): {e:#}",
                started.elapsed().as_secs_f64()
            ),
        }
        (name, result.is_ok())
    }))
    .await;
    results
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| n.to_owned())
        .collect()
}

/// Installs the chart's RBAC (and ServiceAccount) for a release in `release_ns` rendered with
/// `sets`, and returns the env its operator Deployment would run with.
async fn install_chart_rbac(
    cp: &ControlPlane,
    release_ns: &str,
    sets: &[&str],
) -> Result<Vec<(String, String)>> {
    cp.namespace(release_ns).await?;
    let mut all_sets = vec!["fullnameOverride=live-operator"];
    all_sets.extend_from_slice(sets);
    let docs = cluster::helm_template(release_ns, &all_sets)?;
    let rbac = cluster::rbac_objects(&docs);
    if rbac.is_empty() {
        bail!("the chart rendered no RBAC");
    }
    for obj in &rbac {
        let mut obj = obj.clone();
        if obj["metadata"]["namespace"].is_null()
            && matches!(
                obj["kind"].as_str(),
                Some("ServiceAccount" | "Role" | "RoleBinding")
            )
        {
            obj["metadata"]["namespace"] = release_ns.into();
        }
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            cp.namespace(ns).await?;
        }
        cp.apply_value(&obj).await?;
    }
    Ok(cluster::chart_env(&docs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_works_on_a_real_apiserver_as_the_charts_service_account() -> Result<()> {
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS") else {
        eprintln!(
            "SKIP envtest: KUBEBUILDER_ASSETS is not set. Point it at etcd, kube-apiserver and \
             kube-controller-manager (e.g. `setup-envtest use 1.33.x -p path`, or \
             ../shared/envtest/unpack.sh) to run the operator against a real API server."
        );
        return Ok(());
    };
    for bin in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        if !std::path::Path::new(&assets).join(bin).exists() {
            bail!(
                "KUBEBUILDER_ASSETS={} has no {bin}",
                assets.to_string_lossy()
            );
        }
    }
    let tmp = tempfile::Builder::new().prefix("live-envtest-").tempdir()?;
    // Kept (logs of every process, the audit log) when asked, or when something fails.
    let dir = tmp.path().to_owned();
    let keep = std::env::var_os("LIVE_ENVTEST_KEEP").is_some();
    let result = suite(&dir).await;
    if keep || result.is_err() {
        let kept = tmp.keep();
        eprintln!("envtest: logs and audit log kept in {}", kept.display());
    }
    result
}

async fn suite(dir: &std::path::Path) -> Result<()> {
    let cp =
        Arc::new(ControlPlane::start(dir, &[sa_user(SYSTEM_NS), sa_user(TENANT_SYSTEM_NS)]).await?);
    let suite_started = k8s_openapi::jiff::Timestamp::now();

    // The CRD exactly as the chart ships it, and stand-ins for the optional CRDs (their kinds
    // must exist for the operator to apply them; their schemas do not matter here).
    let crd: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(
        cluster::repo_root().join("charts/live-realtime-operator/crds/liverealtime.yaml"),
    )?)?;
    cp.install_crd(&crd).await?;
    for (group, kind, plural) in [
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        ("gateway.networking.k8s.io", "HTTPRoute", "httproutes"),
    ] {
        cp.install_crd(&scenarios::stub_crd(group, kind, plural))
            .await?;
    }

    // The node the kubelet stand-in binds pods to: it must exist, or the pod garbage collector
    // deletes them as orphans (a real state change in the middle of a steady-state measurement).
    cp.apply_value(&serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "envtest-node"}}))
        .await?;

    // Phase 1: the default install (cluster-wide), two replicas with leader election.
    let env = install_chart_rbac(&cp, SYSTEM_NS, &[]).await?;
    let kubeconfig = cp.service_account_kubeconfig(SYSTEM_NS, SA).await?;
    let mut a = Operator::start(dir, "operator-a", &kubeconfig, SYSTEM_NS, &env)?;
    let mut b = Operator::start(dir, "operator-b", &kubeconfig, SYSTEM_NS, &env)?;
    let t = scenarios::Tests::new(cp.clone());
    let mut failed = run(vec![
        (
            "crd_install_and_cel_rejections",
            Box::pin(t.clone().crd_install_and_cel_rejections()),
        ),
        (
            "the_basic_example_gets_every_child_with_owner_references_and_a_filled_status",
            Box::pin(
                t.clone()
                    .the_basic_example_gets_every_child_with_owner_references_and_a_filled_status(
                        "basic",
                    ),
            ),
        ),
        ("drift_is_put_back", Box::pin(t.clone().drift_is_put_back())),
        (
            "a_hot_reloadable_edit_does_not_change_the_pod_template",
            Box::pin(
                t.clone()
                    .a_hot_reloadable_edit_does_not_change_the_pod_template(),
            ),
        ),
        (
            "feature_toggles_delete_exactly_their_children",
            Box::pin(t.clone().feature_toggles_delete_exactly_their_children()),
        ),
        (
            "autoscaling_hands_over_both_ways",
            Box::pin(t.clone().autoscaling_hands_over_both_ways()),
        ),
        (
            "an_object_it_does_not_own_is_left_alone_with_a_visible_condition",
            Box::pin(
                t.clone()
                    .an_object_it_does_not_own_is_left_alone_with_a_visible_condition(),
            ),
        ),
        (
            "garbage_collection_on_delete",
            Box::pin(t.clone().garbage_collection_on_delete()),
        ),
        (
            "pause_leaves_children_alone",
            Box::pin(t.clone().pause_leaves_children_alone()),
        ),
        (
            "a_422_surfaces_in_status_with_one_event",
            Box::pin(t.clone().a_422_surfaces_in_status_with_one_event()),
        ),
        (
            "an_undecodable_object_gets_invalid_spec_and_the_rest_go_on",
            Box::pin(
                t.clone()
                    .an_undecodable_object_gets_invalid_spec_and_the_rest_go_on(),
            ),
        ),
        (
            "a_missing_secret_shows_at_once_and_rotation_rolls_only_start_only_secrets",
            Box::pin(
                t.clone()
                    .a_missing_secret_shows_at_once_and_rotation_rolls_only_start_only_secrets(),
            ),
        ),
        (
            "scale_to_zero_reports_zero",
            Box::pin(t.clone().scale_to_zero_reports_zero()),
        ),
        (
            "steady_state_writes_nothing",
            Box::pin(t.clone().steady_state_writes_nothing(&sa_user(SYSTEM_NS))),
        ),
    ])
    .await;

    failed.extend(
        run(vec![(
            "leader_election_takes_over_when_the_leader_is_killed",
            Box::pin(
                t.clone()
                    .leader_election_takes_over_when_the_leader_is_killed(&mut a, &mut b),
            ),
        )])
        .await,
    );
    a.kill().await;
    b.kill().await;

    // Phase 2: one watched namespace, namespaced RBAC.
    let env = install_chart_rbac(
        &cp,
        TENANT_SYSTEM_NS,
        &["operator.watchNamespace=tenant", "replicaCount=1"],
    )
    .await?;
    cp.namespace("tenant").await?;
    let kubeconfig = cp.service_account_kubeconfig(TENANT_SYSTEM_NS, SA).await?;
    let mut c = Operator::start(dir, "operator-tenant", &kubeconfig, TENANT_SYSTEM_NS, &env)?;
    failed.extend(
        run(vec![(
            "single_namespace_mode_reconciles_its_namespace_only",
            Box::pin(
                t.clone()
                    .single_namespace_mode_reconciles_its_namespace_only(),
            ),
        )])
        .await,
    );
    c.kill().await;

    // Sufficient RBAC, proven on the wire: the operators never met a 403.
    let mut forbidden = Vec::new();
    for user in [sa_user(SYSTEM_NS), sa_user(TENANT_SYSTEM_NS)] {
        forbidden.extend(
            cp.audited(&user, suite_started)
                .into_iter()
                .filter(|e| e.code == 403)
                .map(|e| format!("{user}: {} {}", e.verb, e.uri)),
        );
    }
    if forbidden.is_empty() {
        eprintln!("scenario the_charts_rbac_is_sufficient ... ok (no 403 in the audit log)");
    } else {
        eprintln!("scenario the_charts_rbac_is_sufficient ... FAILED: {forbidden:#?}");
        failed.push("the_charts_rbac_is_sufficient".to_owned());
    }

    if !failed.is_empty() {
        bail!("failed scenarios: {failed:?}");
    }
    Ok(())
}

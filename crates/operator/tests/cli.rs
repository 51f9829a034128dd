//! The `live-operator` binary's offline subcommands, run as a user would.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn live_operator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_live-operator"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("live-operator runs")
}

#[test]
fn render_prints_every_child_of_an_example() {
    let out = live_operator(&["render", "-f", "crds/examples/production.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "ServiceMonitor"
        ]
    );
}

#[test]
fn render_refuses_a_spec_the_apiserver_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: realtime.halobuzz.com/v1alpha1\nkind: LiveRealtime\nmetadata: {name: x}\n\
         spec:\n  jwtSecretRef: {name: s, key: k}\n  autoscaling: {enabled: true, minReplicas: 9, maxReplicas: 2}\n",
    )
    .unwrap();
    let out = live_operator(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("minReplicas must not exceed maxReplicas"),
        "{stderr}"
    );
}

#[test]
fn crd_prints_the_committed_crd() {
    let out = live_operator(&["crd"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(root().join("crds/liverealtime.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn rbac_prints_a_cluster_role() {
    let out = live_operator(&["rbac"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("kind: ClusterRole"));
    assert!(text.contains("liverealtimes/status"));
}

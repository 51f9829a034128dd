//! The exact permissions the operator uses, as data. `live-operator rbac` prints them as a
//! ClusterRole; a Helm chart's role can be checked against [`RULES`].

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// One RBAC rule: API group, resources, verbs, and why the operator needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub why: &'static str,
}

/// Server-side apply is `patch`, and `create` as well when the object does not exist yet (the
/// apiserver authorizes an apply that creates as a create). `list`/`watch` feed the caches,
/// `get` the ownership check of an uncached name, `delete` the children of disabled features.
const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// Children of optional CRDs are not watched (the CRD may be absent): read, apply, delete.
const UNWATCHED_CHILD_VERBS: &[&str] = &["get", "create", "patch", "delete"];

/// Every API group, resource and verb the operator uses. Nothing else.
pub const RULES: &[Rule] = &[
    Rule {
        group: "realtime.halobuzz.com",
        resources: &["liverealtimes"],
        verbs: &["get", "list", "watch"],
        why: "watch the resources it reconciles",
    },
    Rule {
        group: "realtime.halobuzz.com",
        resources: &["liverealtimes/status"],
        verbs: &["get", "patch"],
        why: "write status by server-side apply",
    },
    Rule {
        group: "",
        resources: &["configmaps", "services"],
        verbs: CHILD_VERBS,
        why: "gateway config, gateway, admin and Redis Services",
    },
    Rule {
        group: "",
        resources: &["secrets"],
        verbs: &["get", "list", "watch", "create", "delete"],
        why: "referenced Secrets must exist (get) and roll pods when rotated (metadata watch); \
              the managed Redis password is created once and deleted with managed Redis",
    },
    Rule {
        group: "apps",
        resources: &["deployments"],
        verbs: CHILD_VERBS,
        why: "gateway and managed Redis Deployments",
    },
    Rule {
        group: "autoscaling",
        resources: &["horizontalpodautoscalers"],
        verbs: CHILD_VERBS,
        why: "autoscaling on ws_active_connections",
    },
    Rule {
        group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: CHILD_VERBS,
        why: "gateway PodDisruptionBudget",
    },
    Rule {
        group: "networking.k8s.io",
        resources: &["networkpolicies", "ingresses"],
        verbs: CHILD_VERBS,
        why: "managed Redis and admin-port NetworkPolicies; the optional Ingress",
    },
    Rule {
        group: "monitoring.coreos.com",
        resources: &["servicemonitors"],
        verbs: UNWATCHED_CHILD_VERBS,
        why: "gateway ServiceMonitor, when the CRD exists (not watched; resynced periodically)",
    },
    Rule {
        group: "gateway.networking.k8s.io",
        resources: &["httproutes"],
        verbs: UNWATCHED_CHILD_VERBS,
        why: "the optional HTTPRoute, when the CRD exists (not watched; resynced periodically)",
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        why: "events on LiveRealtime objects",
    },
    Rule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "patch"],
        why: "leader election (kube-lease-manager); namespaced to the operator's namespace is enough",
    },
];

/// Discovery of the optional ServiceMonitor CRD reads `/apis/monitoring.coreos.com/v1`, a
/// non-resource URL every authenticated user may read through the default
/// `system:discovery` ClusterRole, so it needs no rule here.
pub const DISCOVERY_NOTE: &str = "discovery uses system:discovery (no extra rule)";

/// [`RULES`] as a ClusterRole named `name`.
pub fn cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/name".to_owned(),
                    "live-operator".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(
            RULES
                .iter()
                .map(|r| PolicyRule {
                    api_groups: Some(vec![r.group.to_owned()]),
                    resources: Some(r.resources.iter().map(|s| (*s).to_owned()).collect()),
                    verbs: r.verbs.iter().map(|s| (*s).to_owned()).collect(),
                    ..PolicyRule::default()
                })
                .collect(),
        ),
        ..ClusterRole::default()
    }
}

/// The ClusterRole as YAML (what `live-operator rbac` prints).
pub fn cluster_role_yaml() -> String {
    format!(
        "# Generated by `live-operator rbac`: exactly the permissions live-operator uses.\n{}",
        crate::to_yaml(&cluster_role("live-operator"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server-side apply of an object that does not exist yet is authorized as `create`: a
    /// role with `patch` alone creates nothing (the chart once shipped exactly that). The
    /// envtest suite proves the whole role sufficient against a real apiserver; this is the
    /// cheap guard.
    #[test]
    fn every_applied_child_kind_may_be_created_patched_read_and_deleted() {
        for (group, resource) in [
            ("", "configmaps"),
            ("", "services"),
            ("apps", "deployments"),
            ("autoscaling", "horizontalpodautoscalers"),
            ("policy", "poddisruptionbudgets"),
            ("networking.k8s.io", "networkpolicies"),
            ("networking.k8s.io", "ingresses"),
            ("monitoring.coreos.com", "servicemonitors"),
            ("gateway.networking.k8s.io", "httproutes"),
        ] {
            for verb in ["get", "create", "patch", "delete"] {
                assert!(
                    RULES.iter().any(|r| r.group == group
                        && r.resources.contains(&resource)
                        && r.verbs.contains(&verb)),
                    "{group}/{resource} lacks {verb}"
                );
            }
        }
    }

    #[test]
    fn snapshot_cluster_role() {
        insta::assert_snapshot!(cluster_role_yaml());
    }
}

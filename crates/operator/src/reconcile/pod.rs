//! The pod-template surface shared by the gateway and the managed Redis: a user's
//! [`PodTemplate`] laid over the operator's defaults. Pure.
//!
//! Rules: the operator's labels and annotations win (the CRD refuses reserved keys anyway);
//! lists the user gives are appended (volumes, sidecars, tolerations) or replace a default
//! wholesale where the field says so (security contexts, topology spread); an environment
//! variable the user names like one of the operator's replaces it, so the list never holds a
//! name twice (server-side apply refuses duplicate keys).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::crd::PodTemplate;

/// `seccompProfile: RuntimeDefault`.
fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

/// The restricted-profile pod security context, with no fixed UID: the image's numeric user
/// runs, and OpenShift's restricted-v2 can assign one from the namespace's range.
pub fn restricted_pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

/// The restricted-profile container security context of every main container.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// Spread over zones, then nodes, when the scheduler can (`ScheduleAnyway`): a zone or node
/// loss drops as few sockets as possible. `pod-template-hash` keeps a rollout's new pods
/// spread among themselves.
pub fn default_spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            match_label_keys: Some(vec!["pod-template-hash".to_owned()]),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Pod metadata: the user's labels and annotations under the operator's.
pub fn metadata(
    template: &PodTemplate,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut all_labels = template.metadata.labels.clone();
    all_labels.extend(labels);
    let mut all_annotations = template.metadata.annotations.clone();
    all_annotations.extend(annotations);
    ObjectMeta {
        labels: Some(all_labels),
        annotations: (!all_annotations.is_empty()).then_some(all_annotations),
        ..ObjectMeta::default()
    }
}

/// `ours` with the user's variables: a same-named one replaces ours in place, the others are
/// appended in the user's order.
pub fn merge_env(ours: Vec<EnvVar>, theirs: &[EnvVar]) -> Vec<EnvVar> {
    let mut out: Vec<EnvVar> = ours
        .into_iter()
        .map(|e| {
            theirs
                .iter()
                .find(|t| t.name == e.name)
                .cloned()
                .unwrap_or(e)
        })
        .collect();
    for t in theirs {
        if !out.iter().any(|e| e.name == t.name) {
            out.push(t.clone());
        }
    }
    out
}

/// Lays the user's template over `main` (the operator's container, already complete) and
/// `spec` (the operator's pod spec with its own volumes), given the defaults for the fields
/// that replace wholesale.
pub fn apply(
    template: &PodTemplate,
    mut spec: PodSpec,
    mut main: Container,
    default_pod_security: PodSecurityContext,
    default_spread: Option<Vec<TopologySpreadConstraint>>,
) -> PodSpec {
    main.env = Some(merge_env(main.env.unwrap_or_default(), &template.env));
    if !template.env_from.is_empty() {
        main.env_from = Some(template.env_from.clone());
    }
    main.security_context = Some(
        template
            .container_security_context
            .clone()
            .unwrap_or_else(restricted_security_context),
    );
    let mut mounts = main.volume_mounts.unwrap_or_default();
    mounts.extend(template.volume_mounts.iter().cloned());
    main.volume_mounts = Some(mounts);

    let mut containers = vec![main];
    containers.extend(template.sidecars.iter().cloned());
    spec.containers = containers;
    let mut volumes = spec.volumes.unwrap_or_default();
    volumes.extend(template.volumes.iter().cloned());
    spec.volumes = Some(volumes);
    spec.security_context = Some(
        template
            .security_context
            .clone()
            .unwrap_or(default_pod_security),
    );
    spec.automount_service_account_token = Some(template.automount_service_account_token);
    spec.service_account_name = template.service_account_name.clone();
    spec.priority_class_name = template.priority_class_name.clone();
    spec.node_selector =
        (!template.node_selector.is_empty()).then(|| template.node_selector.clone());
    spec.tolerations = (!template.tolerations.is_empty()).then(|| template.tolerations.clone());
    spec.affinity = template.affinity.clone();
    spec.topology_spread_constraints = template
        .topology_spread_constraints
        .clone()
        .or(default_spread)
        .filter(|c| !c.is_empty());
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            ..EnvVar::default()
        }
    }

    #[test]
    fn a_user_variable_replaces_ours_in_place_and_others_are_appended() {
        let out = merge_env(
            vec![var("A", "1"), var("B", "2")],
            &[var("C", "3"), var("A", "x")],
        );
        let pairs: Vec<_> = out
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(pairs, [("A", "x"), ("B", "2"), ("C", "3")]);
    }

    #[test]
    fn operator_labels_win_over_the_users() {
        let mut t = PodTemplate::default();
        t.metadata.labels.insert("team".into(), "a".into());
        t.metadata
            .labels
            .insert("app.kubernetes.io/name".into(), "evil".into());
        let m = metadata(
            &t,
            BTreeMap::from([("app.kubernetes.io/name".into(), "live-gateway".into())]),
            BTreeMap::new(),
        );
        let labels = m.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "live-gateway");
        assert_eq!(labels["team"], "a");
        assert!(m.annotations.is_none());
    }

    #[test]
    fn an_empty_spread_list_means_no_constraints() {
        let t = PodTemplate {
            topology_spread_constraints: Some(vec![]),
            ..PodTemplate::default()
        };
        let spec = apply(
            &t,
            PodSpec::default(),
            Container::default(),
            restricted_pod_security_context(),
            Some(default_spread(&BTreeMap::new())),
        );
        assert!(spec.topology_spread_constraints.is_none());
        let spec = apply(
            &PodTemplate::default(),
            PodSpec::default(),
            Container::default(),
            restricted_pod_security_context(),
            Some(default_spread(&BTreeMap::new())),
        );
        assert_eq!(spec.topology_spread_constraints.unwrap().len(), 2);
    }
}

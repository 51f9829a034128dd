//! The PodDisruptionBudget: node drains evict gateway pods one at a time, so clients reconnect
//! in small waves.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Component, child_meta, gateway_name, selector_labels};
use crate::crd::LiveRealtime;

/// The desired PodDisruptionBudget. Pure.
pub fn desired(lr: &LiveRealtime) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(lr, gateway_name(lr), Component::Gateway),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                lr.spec.pod_disruption_budget.max_unavailable,
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(lr, Component::Gateway)),
                ..LabelSelector::default()
            }),
            // A crash-looping pod must not block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_default() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test()));
    }
}

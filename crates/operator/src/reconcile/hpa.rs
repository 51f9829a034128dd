//! The HorizontalPodAutoscaler (autoscaling/v2) on the gateway's per-pod `ws_active_connections`
//! metric. Scale-up is fast; scale-down is slow because every removed pod makes its clients
//! reconnect onto the survivors, which inflates the metric again.
//!
//! It scales the LiveRealtime itself, through its scale subresource (`spec.replicas`,
//! `status.replicas`, `status.selector`), not the Deployment: the operator stays the only writer
//! of the Deployment's `replicas`, and turning autoscaling off keeps the count the HPA reached
//! (it is in `spec.replicas`) instead of snapping back.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use kube::Resource;

use super::{Component, child_meta, gateway_name};
use crate::crd::LiveRealtime;

/// The per-pod metric the gateway exports and a custom-metrics adapter serves to the HPA.
pub const METRIC: &str = "ws_active_connections";

/// The desired HPA, or the defaults when `autoscaling` is absent. Pure.
pub fn desired(lr: &LiveRealtime) -> HorizontalPodAutoscaler {
    let autoscaling = lr.spec.autoscaling.clone().unwrap_or_default();
    let down = &autoscaling.scale_down;
    HorizontalPodAutoscaler {
        metadata: child_meta(lr, gateway_name(lr), Component::Gateway),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(LiveRealtime::api_version(&()).into_owned()),
                kind: LiveRealtime::kind(&()).into_owned(),
                name: gateway_name(lr),
            },
            min_replicas: Some(autoscaling.min_replicas),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Pods".to_owned(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: METRIC.to_owned(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".to_owned(),
                        average_value: Some(Quantity(
                            autoscaling.target_connections_per_pod.to_string(),
                        )),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    select_policy: Some("Max".to_owned()),
                    policies: Some(vec![policy("Percent", 100, 30), policy("Pods", 4, 30)]),
                    ..HPAScalingRules::default()
                }),
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(down.stabilization_window_seconds),
                    select_policy: Some("Min".to_owned()),
                    policies: Some(vec![policy(
                        "Pods",
                        down.pods_per_period,
                        down.period_seconds,
                    )]),
                    ..HPAScalingRules::default()
                }),
            }),
        }),
        ..HorizontalPodAutoscaler::default()
    }
}

fn policy(type_: &str, value: i32, period_seconds: i32) -> HPAScalingPolicy {
    HPAScalingPolicy {
        type_: type_.to_owned(),
        value,
        period_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_down_is_one_pod_per_two_minutes_after_ten_by_default() {
        let hpa = desired(&LiveRealtime::test().autoscaled());
        let down = hpa.spec.unwrap().behavior.unwrap().scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(600));
        assert_eq!(down.select_policy.as_deref(), Some("Min"));
        let p = &down.policies.unwrap()[0];
        assert_eq!(
            (p.type_.as_str(), p.value, p.period_seconds),
            ("Pods", 1, 120)
        );
    }

    #[test]
    fn the_hpa_scales_the_liverealtime_not_the_deployment() {
        let hpa = desired(&LiveRealtime::test().autoscaled());
        let target = hpa.spec.unwrap().scale_target_ref;
        assert_eq!(target.kind, "LiveRealtime");
        assert_eq!(
            target.api_version.as_deref(),
            Some("realtime.halobuzz.com/v1alpha1")
        );
        assert_eq!(target.name, "chat");
    }

    #[test]
    fn snapshot_autoscaled() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test().autoscaled()));
    }
}

//! The tier's Grafana dashboard (`spec.monitoring.grafanaDashboard`): a ConfigMap the Grafana
//! sidecar of kube-prometheus-stack loads because of its label. The dashboard is
//! `deploy/monitoring/grafana-dashboard.json`, compiled in, with its own uid and title and its
//! variables preset to this tier, so the dashboards of several tiers never replace each other.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use super::{Component, child_meta, gateway_name, names, sha256_hex};
use crate::crd::LiveRealtime;

/// The live-realtime dashboard, as shipped in `deploy/monitoring/`.
pub const DASHBOARD_JSON: &str =
    include_str!("../../../../deploy/monitoring/grafana-dashboard.json");

/// Name of the dashboard ConfigMap.
pub fn name(lr: &LiveRealtime) -> String {
    format!("{}{}", gateway_name(lr), names::DASHBOARD_SUFFIX)
}

fn namespace(lr: &LiveRealtime) -> String {
    lr.metadata.namespace.clone().unwrap_or_default()
}

/// The dashboard's uid: stable for the tier, 36 characters (Grafana allows 40).
pub fn uid(lr: &LiveRealtime) -> String {
    let id = format!("{}/{}", namespace(lr), gateway_name(lr));
    format!("lrt-{}", &sha256_hex(id.as_bytes())[..32])
}

/// The data key, which the sidecar uses as the file name: unique per tier, so two tiers' files
/// never overwrite each other in Grafana's dashboard folder.
pub fn file_name(lr: &LiveRealtime) -> String {
    format!("live-realtime-{}-{}.json", namespace(lr), gateway_name(lr))
}

/// Sets a dashboard variable's current value (an "all"-capable multi-value variable).
fn preset(var: &mut Value, value: &str) {
    var["current"] = json!({"selected": true, "text": [value], "value": [value]});
}

/// The dashboard for `lr`: the shipped one with the tier's uid, title and variable values.
/// Pure.
pub fn dashboard(lr: &LiveRealtime) -> Value {
    // The embedded file is checked by `the_shipped_dashboard_is_valid_json`; were it ever not,
    // the tier would get an empty dashboard rather than a failed reconcile.
    let mut d: Value = serde_json::from_str(DASHBOARD_JSON).unwrap_or_else(|_| json!({}));
    d["uid"] = json!(uid(lr));
    d["title"] = json!(format!(
        "live-realtime: {}/{}",
        namespace(lr),
        gateway_name(lr)
    ));
    if let Some(vars) = d
        .pointer_mut("/templating/list")
        .and_then(Value::as_array_mut)
    {
        for var in vars {
            match var["name"].as_str() {
                Some("namespace") => preset(var, &namespace(lr)),
                Some("job") => preset(var, &gateway_name(lr)),
                _ => {}
            }
        }
    }
    d
}

/// The desired ConfigMap. Pure.
pub fn desired(lr: &LiveRealtime) -> ConfigMap {
    let settings = &lr.spec.monitoring.grafana_dashboard;
    let mut metadata = child_meta(lr, name(lr), Component::Gateway);
    if let Some(labels) = metadata.labels.as_mut() {
        // User labels (the sidecar's) first, so they can never override ours.
        let mut merged = settings.labels.clone();
        merged.append(labels);
        *labels = merged;
    }
    if !settings.annotations.is_empty() {
        metadata.annotations = Some(settings.annotations.clone());
    }
    let json = serde_json::to_string_pretty(&dashboard(lr)).unwrap_or_default();
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(file_name(lr), json)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> LiveRealtime {
        let mut lr = LiveRealtime::test();
        lr.spec.monitoring.grafana_dashboard.enabled = true;
        lr
    }

    #[test]
    fn the_shipped_dashboard_is_valid_json() {
        let d: Value = serde_json::from_str(DASHBOARD_JSON).unwrap();
        assert_eq!(d["uid"], "live-realtime");
    }

    #[test]
    fn the_configmap_carries_the_sidecar_label_and_a_dashboard_preset_to_the_tier() {
        let cm = desired(&enabled());
        let labels = cm.metadata.labels.unwrap();
        assert_eq!(labels["grafana_dashboard"], "1");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "live-operator");
        assert_eq!(cm.metadata.name.as_deref(), Some("chat-dashboard"));
        let data = cm.data.unwrap();
        let d: Value = serde_json::from_str(&data["live-realtime-live-chat.json"]).unwrap();
        assert_eq!(d["title"], "live-realtime: live/chat");
        assert!(d["uid"].as_str().unwrap().len() <= 40);
        let vars = d["templating"]["list"].as_array().unwrap();
        let current = |n: &str| {
            vars.iter().find(|v| v["name"] == n).unwrap()["current"]["value"][0]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(current("namespace"), "live");
        assert_eq!(current("job"), "chat");
        assert_eq!(
            d["panels"],
            serde_json::from_str::<Value>(DASHBOARD_JSON).unwrap()["panels"],
            "the panels are the shipped ones"
        );
    }

    #[test]
    fn two_tiers_get_distinct_uids_and_file_names() {
        let a = enabled();
        let mut b = enabled();
        b.metadata.namespace = Some("other".into());
        assert_ne!(uid(&a), uid(&b));
        assert_ne!(file_name(&a), file_name(&b));
        assert_eq!(uid(&a), uid(&enabled()), "stable for the same tier");
    }

    #[test]
    fn user_labels_cannot_override_the_operator_labels_and_annotations_pass_through() {
        let mut lr = enabled();
        let settings = &mut lr.spec.monitoring.grafana_dashboard;
        settings
            .labels
            .insert("app.kubernetes.io/managed-by".into(), "someone-else".into());
        settings
            .annotations
            .insert("grafana_folder".into(), "Live".into());
        let cm = desired(&lr);
        assert_eq!(
            cm.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
            "live-operator"
        );
        assert_eq!(cm.metadata.annotations.unwrap()["grafana_folder"], "Live");
    }
}

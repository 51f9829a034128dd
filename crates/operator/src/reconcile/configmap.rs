//! The gateway ConfigMap: the hot-reloadable `gateway.yaml`, rendered from the spec sections that
//! are the gateway's own config types. Its content is deliberately kept out of the pod template,
//! so editing it never restarts pods: the kubelet refreshes the mounted directory and the gateway
//! reloads the file.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use live_api::CONFIG_FILE_NAME;

use super::{Component, child_meta, config_map_name, sha256_hex};
use crate::crd::LiveRealtime;

/// Annotation on the ConfigMap with the sha256 of its `gateway.yaml`.
pub const CONFIG_HASH_ANNOTATION: &str = "realtime.halobuzz.com/config-hash";

/// The `gateway.yaml` the gateway reads.
pub fn gateway_yaml(lr: &LiveRealtime) -> String {
    lr.spec.gateway_config().to_yaml()
}

/// sha256 of the rendered config: recorded in status so users can see which config is applied.
pub fn config_hash(lr: &LiveRealtime) -> String {
    sha256_hex(gateway_yaml(lr).as_bytes())
}

/// The desired ConfigMap. Pure.
pub fn desired(lr: &LiveRealtime) -> ConfigMap {
    let yaml = gateway_yaml(lr);
    let mut metadata = child_meta(lr, config_map_name(lr), Component::Gateway);
    metadata.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_owned(),
        sha256_hex(yaml.as_bytes()),
    )]));
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(CONFIG_FILE_NAME.to_owned(), yaml)])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use live_api::GatewayConfig;

    use super::*;

    #[test]
    fn the_config_map_holds_a_config_the_gateway_accepts() {
        let lr = LiveRealtime::test().external();
        let cm = desired(&lr);
        let yaml = &cm.data.as_ref().unwrap()[CONFIG_FILE_NAME];
        let parsed = GatewayConfig::from_yaml(yaml).unwrap();
        assert_eq!(parsed, lr.spec.gateway_config());
        assert_eq!(parsed.rate_limits.messages_per_minute, 10);
    }

    #[test]
    fn changing_a_hot_setting_changes_the_config_hash() {
        let a = LiveRealtime::test();
        let mut b = a.clone();
        b.spec.rate_limits.gifts_per_minute = 3;
        assert_ne!(config_hash(&a), config_hash(&b));
    }

    #[test]
    fn snapshot_default() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test()));
    }

    #[test]
    fn snapshot_external() {
        insta::assert_yaml_snapshot!(desired(&LiveRealtime::test().external()));
    }
}

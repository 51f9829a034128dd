//! `live-operator render`: parse LiveRealtime documents, check them the way the apiserver would
//! (schema via serde, CEL rules client-side, the gateway's own config validation), and print
//! every child the controller would apply. No cluster needed.

use kube::ResourceExt;
use serde::Deserialize;

use crate::crd::LiveRealtime;
use crate::error::{Error, Result};
use crate::reconcile::{self, Facts};

/// Parses every document of `text` as a LiveRealtime. Documents of other kinds are refused.
pub fn parse(path: &str, text: &str, namespace: &str) -> Result<Vec<LiveRealtime>> {
    let invalid = |reason: String| Error::InvalidManifest {
        path: path.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    let mut rules = None;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| invalid(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(|k| k.as_str()) != Some("LiveRealtime") {
            return Err(invalid("every document must be a LiveRealtime".to_owned()));
        }
        let mut lr: LiveRealtime =
            serde_yaml::from_value(value).map_err(|e| invalid(e.to_string()))?;
        if lr.metadata.name.is_none() {
            return Err(invalid("metadata.name is required".to_owned()));
        }
        lr.metadata
            .namespace
            .get_or_insert_with(|| namespace.to_owned());
        rules
            .get_or_insert_with(crate::crd::CelRules::new)
            .check(&lr)
            .map_err(|e| invalid(format!("{} violates a CRD rule: {e}", lr.name_any())))?;
        lr.spec
            .gateway_config()
            .validate()
            .map_err(|e| invalid(format!("{}: {e}", lr.name_any())))?;
        out.push(lr);
    }
    Ok(out)
}

/// Renders the children of every LiveRealtime in `text` as one multi-document YAML stream.
pub fn render(path: &str, text: &str, namespace: &str, facts: Facts) -> Result<String> {
    let mut docs = Vec::new();
    for lr in parse(path, text, namespace)? {
        // Without a cluster the Secrets are unknown: no secrets-hash annotation.
        docs.extend(reconcile::to_yaml_documents(&reconcile::desired(
            &lr,
            facts,
            &reconcile::Digests::default(),
        )));
    }
    Ok(docs.iter().map(|d| format!("---\n{d}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: Facts = Facts::ALL;

    #[test]
    fn a_minimal_manifest_renders_every_default_child() {
        let text = "apiVersion: realtime.halobuzz.com/v1alpha1\nkind: LiveRealtime\n\
                    metadata: {name: chat}\nspec:\n  jwtSecretRef: {name: jwt, key: secret}\n";
        let out = render("x.yaml", text, "live", FACTS).unwrap();
        for kind in [
            "kind: ConfigMap",
            "kind: Deployment",
            "kind: Service",
            "kind: PodDisruptionBudget",
            "kind: ServiceMonitor",
        ] {
            assert!(out.contains(kind), "{kind} missing");
        }
        assert!(!out.contains("HorizontalPodAutoscaler"));
        assert!(out.contains("namespace: live"));
    }

    #[test]
    fn a_spec_breaking_a_cel_rule_is_refused() {
        let text = "apiVersion: realtime.halobuzz.com/v1alpha1\nkind: LiveRealtime\n\
                    metadata: {name: chat}\nspec: {}\n";
        let err = render("x.yaml", text, "live", FACTS).unwrap_err();
        assert!(
            err.to_string().contains("exactly one of jwtSecretRef"),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_origin_is_refused() {
        let text = "apiVersion: realtime.halobuzz.com/v1alpha1\nkind: LiveRealtime\n\
                    metadata: {name: chat}\nspec:\n  jwtSecretRef: {name: jwt, key: s}\n  \
                    cors: {allowedOrigins: [\"https://a.example/\"]}\n";
        assert!(render("x.yaml", text, "live", FACTS).is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = "apiVersion: realtime.halobuzz.com/v1alpha1\nkind: LiveRealtime\n\
                    metadata: {name: chat}\nspec:\n  jwtSecretRef: {name: jwt, key: s}\n  \
                    rateLimits: {messagesPerMinut: 3}\n";
        assert!(render("x.yaml", text, "live", FACTS).is_err());
    }

    fn example(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../crds/examples")
            .join(name);
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn every_example_renders() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            render(&path.display().to_string(), &text, "default", FACTS).unwrap();
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn rendered_yaml_quotes_what_yaml_1_1_would_misread() {
        let out = render("basic.yaml", &example("basic.yaml"), "default", FACTS).unwrap();
        assert!(out.contains("- \"no\""), "redis args must quote `no`");
    }

    #[test]
    fn render_without_the_service_monitor_crd_leaves_it_out() {
        let facts = Facts {
            service_monitor_crd: false,
            http_route_crd: true,
        };
        let out = render("basic.yaml", &example("basic.yaml"), "default", facts).unwrap();
        assert!(!out.contains("ServiceMonitor"));
    }

    #[test]
    fn snapshot_production_example() {
        let out = render(
            "production.yaml",
            &example("production.yaml"),
            "default",
            FACTS,
        )
        .unwrap();
        insta::assert_snapshot!(out);
    }

    #[test]
    fn snapshot_basic_example() {
        let out = render("basic.yaml", &example("basic.yaml"), "default", FACTS).unwrap();
        insta::assert_snapshot!(out);
    }
}

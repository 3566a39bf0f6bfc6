//! The checked-in CRD YAML (and the Helm chart's copy) must be exactly what the Rust types
//! generate. Regenerate with `cargo run -p pipeline-operator -- crd > crds/pipelinedeployment.yaml`
//! and copy it to `helm/sluice-operator/crds/` (or run this test with `SLUICE_BLESS=1`).

mod common;

#[test]
fn checked_in_crd_yaml_and_the_charts_copy_match_the_rust_types() {
    let generated = pipeline_crds::crd_yaml();
    for file in [
        "crds/pipelinedeployment.yaml",
        "helm/sluice-operator/crds/pipelinedeployment.yaml",
    ] {
        let path = common::repo_root().join(file);
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is stale: run `cargo run -p pipeline-operator -- crd > {file}`",
            path.display()
        );
    }
}

#[test]
fn crd_declares_status_scale_short_name_and_printer_columns() {
    let crd = pipeline_crds::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["pd".to_owned()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.parallelism");
    assert_eq!(scale.status_replicas_path, ".status.parallelism");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Parallelism", "Pods", "Lag", "Backpressure", "Phase", "Age"]
    );
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    let crd = serde_json::to_value(pipeline_crds::crd()).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    for top in ["spec", "status"] {
        walk(&root["properties"][top], top, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:#?}"
    );

    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if schema.get("description").is_none() {
            missing.push(path.to_owned());
        }
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                walk(child, &format!("{path}.{name}"), missing);
            }
        }
        if let Some(items) = schema
            .get("items")
            .filter(|i| i.get("properties").is_some())
        {
            walk(items, &format!("{path}[]"), missing);
        }
    }
}

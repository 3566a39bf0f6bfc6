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
    let columns: Vec<(&str, &str)> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Parallelism", ".status.parallelism"),
            ("Desired", ".status.desiredParallelism"),
            ("Pods", ".status.readyReplicas"),
            ("Lag", ".status.lag"),
            ("Backpressure", ".status.backpressure"),
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Phase", ".status.phase"),
            ("Age", ".metadata.creationTimestamp"),
        ]
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

/// A rough static estimate of the CRD's CEL rules' cost, in the API server's units: each rule
/// runs once per element of every list or map above it (their `maxItems`/`maxProperties`), and
/// a rule reading a string pays about a tenth of a unit per character of its `maxLength`. An
/// unbounded list, map or string where a rule reaches it would make the API server's estimate
/// unbounded and the CRD be refused, so each must be bounded.
#[test]
fn cel_rules_are_bounded_and_within_the_api_servers_cost_budget() {
    const PER_RULE_LIMIT: f64 = 1_000_000.0; // apiextensions' PerCallLimit
    const CRD_LIMIT: f64 = 10_000_000.0; // StaticEstimatedCRDCostLimit
    let crd = serde_json::to_value(pipeline_crds::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut problems = Vec::new();
    let mut total = 0.0;
    estimate(spec, "spec", 1.0, &mut total, &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(total < CRD_LIMIT, "estimated total cost {total}");
    eprintln!(
        "estimated CEL cost of the CRD: {total:.0} (limit {CRD_LIMIT:.0}, per rule {PER_RULE_LIMIT:.0})"
    );

    fn estimate(
        node: &serde_json::Value,
        path: &str,
        cardinality: f64,
        total: &mut f64,
        problems: &mut Vec<String>,
    ) {
        if let Some(rules) = node["x-kubernetes-validations"].as_array() {
            for rule in rules {
                let text = rule["rule"].as_str().unwrap_or_default();
                let mut cost = 10.0;
                for (name, property) in node["properties"].as_object().into_iter().flatten() {
                    let referenced = text.contains(&format!("self.{name}"))
                        || text.contains(&format!("self.__{name}__"));
                    if !referenced {
                        continue;
                    }
                    match property["type"].as_str() {
                        Some("string") if property["enum"].is_null() => {
                            match property["maxLength"].as_f64() {
                                Some(max) => cost += max / 10.0,
                                None => problems.push(format!(
                                    "{path}.{name}: a rule reads it but it has no maxLength"
                                )),
                            }
                        }
                        Some("array") => match property["maxItems"].as_f64() {
                            Some(max) => cost += max,
                            None => problems.push(format!(
                                "{path}.{name}: a rule reads it but it has no maxItems"
                            )),
                        },
                        _ => {}
                    }
                }
                let rule_cost = cost * cardinality;
                if rule_cost > 1_000_000.0 {
                    problems.push(format!("{path}: rule {text:?} costs about {rule_cost}"));
                }
                *total += rule_cost;
            }
        }
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            estimate(
                child,
                &format!("{path}.{name}"),
                cardinality,
                total,
                problems,
            );
        }
        if node["items"].is_object() {
            let contains_rules = node["items"]
                .to_string()
                .contains("x-kubernetes-validations");
            let max = node["maxItems"].as_f64();
            if contains_rules && max.is_none() {
                problems.push(format!("{path}: rules below an array without maxItems"));
            }
            estimate(
                &node["items"],
                &format!("{path}[]"),
                cardinality * max.unwrap_or(1.0),
                total,
                problems,
            );
        }
    }
}

#[test]
fn every_string_list_and_map_of_sluices_own_fields_is_bounded() {
    let crd = serde_json::to_value(pipeline_crds::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut unbounded = Vec::new();
    walk_bounds(spec, "spec", &mut unbounded);
    assert!(
        unbounded.is_empty(),
        "no maxLength/maxItems/maxProperties: {unbounded:#?}"
    );

    fn walk_bounds(node: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        // Kubernetes' own types (affinity, tolerations' fields) keep the upstream schema.
        if path.starts_with("spec.podTemplate.affinity")
            || path.starts_with("spec.podTemplate.tolerations[]")
            || path.starts_with("spec.podTemplate.imagePullSecrets[]")
            || path.starts_with("spec.podTemplate.topologySpreadConstraints[]")
        {
            return;
        }
        match node["type"].as_str() {
            Some("string") if node["enum"].is_null() && node["maxLength"].is_null() => {
                out.push(path.to_owned());
            }
            Some("array") if node["maxItems"].is_null() => out.push(path.to_owned()),
            Some("object")
                if node["additionalProperties"].is_object() && node["maxProperties"].is_null() =>
            {
                out.push(path.to_owned());
            }
            _ => {}
        }
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            walk_bounds(child, &format!("{path}.{name}"), out);
        }
        if node["items"].is_object() {
            walk_bounds(&node["items"], &format!("{path}[]"), out);
        }
    }
}

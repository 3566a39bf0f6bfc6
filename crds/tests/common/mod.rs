#![allow(dead_code)] // each test binary uses a different subset of these helpers
//! Helpers shared by the crds integration tests: load manifests and run the three validation
//! layers (OpenAPI schema, CEL rules, `validate()`), reporting each problem as `layer path`.

use std::path::{Path, PathBuf};

use pipeline_crds::{PipelineDeployment, crd};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

/// Every `*.yaml` file directly in `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The problems each layer finds in a manifest, as `schema <path>`, `cel <path>`,
/// `validate <path>` strings (paths dotted, list indices in brackets).
pub fn problems(manifest: &str) -> Vec<String> {
    let value: serde_json::Value = serde_norway::from_str(manifest).expect("manifest is YAML");
    let mut found = schema_problems(&value);
    // The CEL rules and validate() run on the typed object, as the API server runs CEL on the
    // defaulted object. A manifest that does not even deserialize is reported as a schema problem.
    match serde_json::from_value::<PipelineDeployment>(value) {
        Ok(pd) => {
            if let Err(errors) = pd.validate_cel() {
                for e in errors.as_slice() {
                    // Only a rule that evaluated to false counts as a rejection; a rule that
                    // cannot be evaluated is a bug in the rule and shows up as such.
                    if e.kind == kube::core::cel::ErrorKind::ValidationFailure {
                        found.push(format!("cel {}", e.field_path));
                    } else {
                        found.push(format!(
                            "cel-broken {}: {} ({})",
                            e.field_path, e.rule, e.message
                        ));
                    }
                }
            }
            if let Err(errors) = pipeline_crds::validate(&pd.spec) {
                for e in errors.0 {
                    found.push(format!("validate {}", e.path));
                }
            }
        }
        Err(e) => found.push(format!("deserialize {e}")),
    }
    found
}

fn schema_problems(value: &serde_json::Value) -> Vec<String> {
    let crd = serde_json::to_value(crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let validator = jsonschema::validator_for(schema).expect("the CRD schema compiles");
    validator
        .iter_errors(value)
        .map(|e| format!("schema {}", dotted(e.instance_path().as_str())))
        .collect()
}

/// `/spec/aggregates/0/function` → `spec.aggregates[0].function`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

//! The CustomResourceDefinition, generated from the Rust types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::PipelineDeployment;

/// First lines of the generated YAML file.
pub const CRD_YAML_HEADER: &str =
    "# Generated from crds/src by `cargo run -p pipeline-operator -- crd`. Do not edit.\n";

/// The PipelineDeployment CRD object.
pub fn crd() -> CustomResourceDefinition {
    PipelineDeployment::crd()
}

/// The CRD as the YAML document checked in at `crds/pipelinedeployment.yaml`.
pub fn crd_yaml() -> String {
    let body = serde_norway::to_string(&crd()).expect("a CRD always serializes");
    format!("{CRD_YAML_HEADER}{body}")
}

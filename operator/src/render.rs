//! `pipeline-operator render`: every object the operator would create for a PipelineDeployment,
//! as YAML, without a cluster.

use pipeline_crds::{
    FieldError, PipelineDeployment,
    valid::{AnyInstallation, validate_pipeline},
};

use crate::{
    backend::kube::children::{Environment, build},
    desired::{BuildError, desired},
    sizing::{SizingError, size},
};

/// Why a manifest cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The spec is invalid or uses what this release cannot run.
    #[error("the pipeline cannot run:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<FieldError>),
    /// Sizing failed.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// Building failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Placeholder uid of a resource that was never stored (owner references need one).
pub const UNSTORED_UID: &str = "00000000-0000-0000-0000-000000000000";

/// The children of `pd` for a source of `partitions` partitions, running `decision` slots when
/// the autoscaler decided them (within the same bounds and sizing rules as in the cluster), as a
/// multi-document YAML in apply order. A missing namespace is `default`; a missing uid is
/// [`UNSTORED_UID`].
pub fn render(
    pd: &PipelineDeployment,
    partitions: i32,
    decision: Option<i32>,
    environment: &Environment,
) -> Result<String, RenderError> {
    let mut pd = pd.clone();
    pd.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pd.metadata.uid.get_or_insert_with(|| UNSTORED_UID.into());
    let valid = validate_pipeline(&pd, &AnyInstallation).map_err(|e| RenderError::Problems(e.0))?;
    let sizing = size(valid.spec(), partitions, decision)?;
    let children = build(&desired(&valid, &sizing), environment)?;
    let mut documents = vec![
        typed("v1", "ConfigMap", &children.config_map),
        typed("v1", "Service", &children.headless_service),
        typed("v1", "Service", &children.metrics_service),
        typed("apps/v1", "StatefulSet", &children.stateful_set),
    ];
    documents.extend(
        children
            .pod_disruption_budget
            .iter()
            .map(|pdb| typed("policy/v1", "PodDisruptionBudget", pdb)),
    );
    documents.extend(children.pod_monitor);
    Ok(documents
        .iter()
        .map(|d| serde_norway::to_string(d).expect("objects serialize"))
        .collect::<Vec<_>>()
        .join("---\n"))
}

fn typed(api_version: &str, kind: &str, object: &impl serde::Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(object).expect("objects serialize");
    let map = value.as_object_mut().expect("objects are maps");
    map.insert("apiVersion".into(), api_version.into());
    map.insert("kind".into(), kind.into());
    value
}

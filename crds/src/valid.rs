//! The validated pipeline. [`validate_pipeline`] is the one function that runs every check a
//! PipelineDeployment must pass before anything runs it (its name, the spec's semantics, the
//! parts this release cannot run yet, and the rules of the installation that runs it); what it
//! returns, [`ValidPipeline`], is what the operator builds from and the runtime compiles, so no
//! later step checks again or carries on with an unchecked spec.

use crate::{
    PipelineDeployment, PipelineDeploymentSpec,
    validate::{FieldError, ValidationErrors, name_problems},
};

/// The namespace of a resource that names none (a manifest run outside a cluster).
pub const DEFAULT_NAMESPACE: &str = "default";

/// What depends on where a pipeline runs: the rules of an installation (the runtime images it
/// allows, the checkpoint storage it can offer), each problem with its field path.
pub trait InstallationRules {
    /// Problems of `pd` under these rules.
    fn problems(&self, pd: &PipelineDeployment) -> Vec<FieldError>;
}

/// No rules beyond the spec's own: the runtime, local mode and the command-line checks.
pub struct AnyInstallation;

impl InstallationRules for AnyInstallation {
    fn problems(&self, _: &PipelineDeployment) -> Vec<FieldError> {
        Vec::new()
    }
}

/// A PipelineDeployment that passed [`validate_pipeline`]; only that function makes one.
#[derive(Clone, Debug)]
pub struct ValidPipeline {
    resource: PipelineDeployment,
    name: String,
    namespace: String,
}

impl ValidPipeline {
    /// The resource as validated (status and metadata included).
    pub fn resource(&self) -> &PipelineDeployment {
        &self.resource
    }

    /// Its spec.
    pub fn spec(&self) -> &PipelineDeploymentSpec {
        &self.resource.spec
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace ([`DEFAULT_NAMESPACE`] when it names none).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

/// Every check of `pd`, in the order they are reported: its name, the spec's semantics
/// ([`crate::validate()`]), the parts not supported yet ([`crate::support::unsupported`]), then
/// `rules`.
pub fn validate_pipeline(
    pd: &PipelineDeployment,
    rules: &dyn InstallationRules,
) -> Result<ValidPipeline, ValidationErrors> {
    let name = pd.metadata.name.clone().unwrap_or_default();
    let mut problems = name_problems(&name);
    problems.extend(crate::support::problems(&pd.spec));
    problems.extend(rules.problems(pd));
    if !problems.is_empty() {
        return Err(ValidationErrors(problems));
    }
    Ok(ValidPipeline {
        namespace: pd
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name,
        resource: pd.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::from_yaml;

    fn pd(name: &str, extra: &str) -> PipelineDeployment {
        from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: {name}}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n{extra}"),
            "t",
        )
        .unwrap()
    }

    struct NoImages;

    impl InstallationRules for NoImages {
        fn problems(&self, _: &PipelineDeployment) -> Vec<FieldError> {
            vec![FieldError {
                path: "spec.image".into(),
                message: "not allowed here".into(),
            }]
        }
    }

    #[test]
    fn every_check_is_run_and_reported_in_order_name_spec_unsupported_installation() {
        let bad = pd("Bad_Name", "  sink: {kafka: {topic: in, format: avro}}\n");
        let errors = validate_pipeline(&bad, &NoImages).unwrap_err();
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths.first(), Some(&"metadata.name"));
        assert_eq!(paths.last(), Some(&"spec.image"));
        assert!(paths.contains(&"spec.sink.kafka.topic"), "{paths:?}");
        assert!(paths.contains(&"spec.sink.kafka.format"), "{paths:?}");
    }

    #[test]
    fn a_valid_pipeline_keeps_its_resource_and_names_a_namespace() {
        let good = pd("iot", "  sink: {kafka: {topic: out}}\n");
        let valid = validate_pipeline(&good, &AnyInstallation).unwrap();
        assert_eq!(
            (valid.name(), valid.namespace()),
            ("iot", DEFAULT_NAMESPACE)
        );
        assert_eq!(
            serde_json::to_value(valid.resource()).unwrap(),
            serde_json::to_value(&good).unwrap()
        );
        assert!(validate_pipeline(&good, &NoImages).is_err());
    }
}

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

/// What `validate` (of the operator and of the runtime) says about each pipeline of a manifest
/// file: `<file>: valid`, or `<file>:` and one line per problem; a file of several documents
/// names each pipeline (`<file> (<name>): valid`). Every document of every file is judged, the
/// same way a reconcile judges it (name, spec, unsupported parts), without an installation's
/// rules.
pub struct FileVerdicts {
    /// Lines for standard output (the valid pipelines).
    pub valid: Vec<String>,
    /// Lines for standard error (unreadable files, problems).
    pub invalid: Vec<String>,
}

impl FileVerdicts {
    /// Judges every pipeline in `paths` (`-` is standard input).
    pub fn of(paths: &[std::path::PathBuf]) -> Self {
        let mut verdicts = Self {
            valid: Vec::new(),
            invalid: Vec::new(),
        };
        for path in paths {
            match crate::manifest::all_from_path(path) {
                Ok(pipelines) => verdicts.judge(path, &pipelines),
                Err(e) => verdicts.invalid.push(e.to_string()),
            }
        }
        verdicts
    }

    fn judge(&mut self, path: &std::path::Path, pipelines: &[PipelineDeployment]) {
        let file = if path.as_os_str() == "-" {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        };
        for pd in pipelines {
            let origin = if pipelines.len() == 1 {
                file.clone()
            } else {
                format!(
                    "{file} ({})",
                    pd.metadata.name.as_deref().unwrap_or("<no name>")
                )
            };
            match validate_pipeline(pd, &AnyInstallation) {
                Ok(_) => self.valid.push(format!("{origin}: valid")),
                Err(ValidationErrors(problems)) => {
                    self.invalid.push(format!("{origin}:"));
                    self.invalid
                        .extend(problems.iter().map(|p| format!("  - {p}")));
                }
            }
        }
    }

    /// Whether every pipeline was readable and valid.
    pub fn all_valid(&self) -> bool {
        self.invalid.is_empty()
    }
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

    #[test]
    fn file_verdicts_judge_every_document_and_name_each_of_several() {
        let dir = std::env::temp_dir().join(format!("sluice-verdicts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let doc = |name: &str| {
            format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: {name}}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n"
            )
        };
        let one = dir.join("one.yaml");
        std::fs::write(&one, doc("a")).unwrap();
        let two = dir.join("two.yaml");
        std::fs::write(&two, format!("{}---\n{}", doc("b"), doc("Bad_Name"))).unwrap();
        let missing = dir.join("missing.yaml");
        let verdicts = FileVerdicts::of(&[one.clone(), two.clone(), missing.clone()]);
        assert_eq!(
            verdicts.valid,
            [
                format!("{}: valid", one.display()),
                format!("{} (b): valid", two.display())
            ]
        );
        assert_eq!(
            verdicts.invalid[0],
            format!("{} (Bad_Name):", two.display())
        );
        assert!(
            verdicts.invalid[1].starts_with("  - metadata.name"),
            "{:?}",
            verdicts.invalid
        );
        assert!(
            verdicts
                .invalid
                .last()
                .unwrap()
                .starts_with(&format!("cannot read {}", missing.display())),
            "{:?}",
            verdicts.invalid
        );
        assert!(!verdicts.all_valid());
        std::fs::remove_dir_all(&dir).unwrap();
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

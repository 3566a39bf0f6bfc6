//! Reading PipelineDeployment manifests from YAML, as `kubectl apply -f` files are written: one
//! or several documents, judged as the API server judges them with strict field validation (an
//! unknown field is an error naming it, never silently dropped).

use std::path::Path;

use kube::Resource;

use crate::PipelineDeployment;

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not describe a PipelineDeployment (syntax, types, unknown enum values).
    #[error("{origin}: not a valid PipelineDeployment: {source}")]
    Parse {
        /// The file name, or `<input>`.
        origin: String,
        /// The serde error, with line and column.
        source: serde_norway::Error,
    },
    /// The document is some other kind of object.
    #[error(
        "{origin}: expected apiVersion {expected_api}, kind {expected_kind}; found apiVersion {api_version:?}, kind {kind:?}"
    )]
    WrongKind {
        /// The file name, or `<input>`.
        origin: String,
        /// What the document says.
        api_version: String,
        /// What the document says.
        kind: String,
        /// `sluice.dev/v1alpha1`.
        expected_api: String,
        /// `PipelineDeployment`.
        expected_kind: String,
    },
    /// The document has fields the resource does not declare (a misspelled section would
    /// otherwise be dropped and the pipeline run without it).
    #[error("{origin}: {}", describe_unknown(.fields))]
    UnknownFields {
        /// The file name, or `<input>`.
        origin: String,
        /// Their paths (`spec.windw`).
        fields: Vec<String>,
    },
    /// The file holds no document.
    #[error("{origin}: no PipelineDeployment in it")]
    Empty {
        /// The file name, or `<input>`.
        origin: String,
    },
}

/// `unknown field "spec.windw"`, as `kubectl apply` words it.
fn describe_unknown(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses one PipelineDeployment from YAML text; `origin` names it in errors.
pub fn from_yaml(text: &str, origin: &str) -> Result<PipelineDeployment, ManifestError> {
    let parse = |source| ManifestError::Parse {
        origin: origin.to_owned(),
        source,
    };
    let document: serde_json::Value = serde_norway::from_str(text).map_err(parse)?;
    check_document(&document, origin)?;
    serde_norway::from_str(text).map_err(parse)
}

/// Parses every PipelineDeployment of a multi-document YAML text (`---` between them; empty
/// documents are skipped); `origin` names them in errors. At least one is required.
pub fn all_from_yaml(text: &str, origin: &str) -> Result<Vec<PipelineDeployment>, ManifestError> {
    use serde::Deserialize;
    let parse = |source| ManifestError::Parse {
        origin: origin.to_owned(),
        source,
    };
    // Twice over the documents: as plain values to judge their kind and fields, then as the
    // typed resource (its errors keep the line in the whole text).
    let mut wanted = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = serde_json::Value::deserialize(document).map_err(parse)?;
        if !value.is_null() {
            check_document(&value, origin)?;
        }
        wanted.push(!value.is_null());
    }
    let mut pipelines = Vec::new();
    for (document, wanted) in serde_norway::Deserializer::from_str(text).zip(wanted) {
        if wanted {
            pipelines.push(PipelineDeployment::deserialize(document).map_err(parse)?);
        }
    }
    if pipelines.is_empty() {
        return Err(ManifestError::Empty {
            origin: origin.to_owned(),
        });
    }
    Ok(pipelines)
}

/// Whether one document is a PipelineDeployment of this API version with only declared fields.
fn check_document(document: &serde_json::Value, origin: &str) -> Result<(), ManifestError> {
    let text_of = |key: &str| {
        document
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (text_of("apiVersion"), text_of("kind"));
    let expected_api = PipelineDeployment::api_version(&()).into_owned();
    let expected_kind = PipelineDeployment::kind(&()).into_owned();
    if api_version != expected_api || kind != expected_kind {
        return Err(ManifestError::WrongKind {
            origin: origin.to_owned(),
            api_version,
            kind,
            expected_api,
            expected_kind,
        });
    }
    let fields = crate::strict::unknown_fields(document);
    if !fields.is_empty() {
        return Err(ManifestError::UnknownFields {
            origin: origin.to_owned(),
            fields,
        });
    }
    Ok(())
}

/// Reads every PipelineDeployment of `path`, `-` meaning standard input (as `kubectl apply -f -`).
pub fn all_from_path(path: &Path) -> Result<Vec<PipelineDeployment>, ManifestError> {
    let (origin, text) = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            ManifestError::Io {
                path: "<stdin>".to_owned(),
                source,
            }
        })?;
        ("<stdin>".to_owned(), text)
    } else {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: origin.clone(),
            source,
        })?;
        (origin, text)
    };
    all_from_yaml(&text, &origin)
}

/// Reads and parses a manifest file.
pub fn from_file(path: &Path) -> Result<PipelineDeployment, ManifestError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: origin.clone(),
        source,
    })?;
    from_yaml(&text, &origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_minimal_manifest_and_fills_defaults() {
        let pd = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: a}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(pd.spec.resources.slots_per_pod, 4);
        assert_eq!(pd.spec.sink.kafka.unwrap().linger.as_millis(), 5);
    }

    #[test]
    fn names_the_origin_and_the_line_of_a_type_error() {
        let err = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: a}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  parallelism: many\n",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("t.yaml: not a valid PipelineDeployment"),
            "{err}"
        );
        assert!(err.contains("line 8"), "{err}");
    }

    #[test]
    fn rejects_another_kind() {
        let err = from_yaml("apiVersion: v1\nkind: ConfigMap\n", "cm.yaml").unwrap_err();
        assert!(matches!(err, ManifestError::WrongKind { .. }), "{err}");
    }

    const MINIMAL: &str = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: a}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n";

    #[test]
    fn refuses_a_misspelled_section_naming_it_as_kubectl_does() {
        let err = from_yaml(
            &format!("{MINIMAL}  windw: {{tumbling: {{size: 1m}}}}\n"),
            "t.yaml",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "t.yaml: unknown field \"spec.windw\"");
    }

    #[test]
    fn reads_every_document_of_a_file_and_skips_empty_ones() {
        let second = MINIMAL.replace("name: a", "name: b");
        let text = format!("---\n{MINIMAL}---\n{second}---\n");
        let names: Vec<String> = all_from_yaml(&text, "t.yaml")
            .unwrap()
            .iter()
            .map(|pd| pd.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_wrong_field_in_a_later_document_is_refused_and_an_empty_file_too() {
        let text = format!("{MINIMAL}---\n{MINIMAL}  paralelism: 3\n");
        let err = all_from_yaml(&text, "t.yaml").unwrap_err();
        assert!(
            matches!(err, ManifestError::UnknownFields { ref fields, .. } if fields == &["spec.paralelism"]),
            "{err}"
        );
        let err = all_from_yaml("# nothing\n", "t.yaml").unwrap_err();
        assert_eq!(err.to_string(), "t.yaml: no PipelineDeployment in it");
    }
}

//! Reading a PipelineDeployment manifest from YAML, as `kubectl apply -f` files are written.

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
}

/// Parses one PipelineDeployment from YAML text; `origin` names it in errors.
pub fn from_yaml(text: &str, origin: &str) -> Result<PipelineDeployment, ManifestError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TypeMeta {
        #[serde(default)]
        api_version: String,
        #[serde(default)]
        kind: String,
    }
    let parse = |source| ManifestError::Parse {
        origin: origin.to_owned(),
        source,
    };
    let meta: TypeMeta = serde_norway::from_str(text).map_err(parse)?;
    let expected_api = PipelineDeployment::api_version(&()).into_owned();
    let expected_kind = PipelineDeployment::kind(&()).into_owned();
    if meta.api_version != expected_api || meta.kind != expected_kind {
        return Err(ManifestError::WrongKind {
            origin: origin.to_owned(),
            api_version: meta.api_version,
            kind: meta.kind,
            expected_api,
            expected_kind,
        });
    }
    serde_norway::from_str(text).map_err(parse)
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
}

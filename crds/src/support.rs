//! Parts of the contract the current runtime cannot execute yet. The CRD documents the whole
//! product; a spec that uses a part not built yet is refused with "not supported yet" and the
//! field path, by the operator (as a condition) and the runtime (at start), instead of being run
//! wrongly.

use crate::{PipelineDeploymentSpec, validate::FieldError};

/// Everything that stops `spec` from running in this release: the semantic problems of
/// [`validate`](crate::validate) followed by the features not supported yet.
pub fn problems(spec: &PipelineDeploymentSpec) -> Vec<FieldError> {
    let mut found = crate::validate(spec).err().map(|e| e.0).unwrap_or_default();
    found.extend(unsupported(spec));
    found
}

/// Every field of `spec` that the runtime of this release cannot run, with the reason.
pub fn unsupported(spec: &PipelineDeploymentSpec) -> Vec<FieldError> {
    let mut found = Vec::new();
    let mut not_yet = |path: &str, what: &str| {
        found.push(FieldError {
            path: path.to_owned(),
            message: format!("not supported yet: {what}"),
        });
    };
    if spec.window.is_none()
        && spec
            .sink
            .kafka
            .as_ref()
            .is_some_and(|k| k.format == crate::sink::OutputFormat::Avro)
    {
        not_yet(
            "spec.sink.kafka.format",
            "Avro output of stateless pipelines (windowed pipelines write Avro)",
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::from_yaml;

    fn spec(extra: &str) -> PipelineDeploymentSpec {
        from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092', schemaRegistryUrl: 'http://r:8081'}}\n  source: {{topic: in}}\n{extra}"),
            "t",
        )
        .unwrap()
        .spec
    }

    #[test]
    fn features_not_built_yet_are_refused_with_their_path() {
        let paths = |s: &PipelineDeploymentSpec| -> Vec<String> {
            problems(s).into_iter().map(|e| e.path).collect()
        };
        assert!(paths(&spec("  sink: {kafka: {topic: out}}\n")).is_empty());
        assert_eq!(
            paths(&spec("  sink: {kafka: {topic: out, format: avro}}\n")),
            ["spec.sink.kafka.format"]
        );
        let eos = spec(
            "  sink: {kafka: {topic: out}}\n  delivery: exactly-once\n  checkpoint: {storage: {local: {path: /tmp/cp}}}\n",
        );
        assert!(paths(&eos).is_empty());
        let stateless_into_clickhouse =
            spec("  sink: {clickhouse: {url: 'http://ch:8123', table: t}}\n");
        assert!(problems(&stateless_into_clickhouse).is_empty());
        let windowed = spec(
            "  sink: {clickhouse: {url: 'http://ch:8123', table: t}}\n  transform: {keyBy: k, timestamp: {field: ts}}\n  window: {tumbling: {size: 1m}}\n  aggregates: [{name: n, function: count}]\n",
        );
        assert!(problems(&windowed).is_empty(), "{:?}", problems(&windowed));
    }

    #[test]
    fn problems_lists_validation_errors_before_unsupported_features() {
        let s = spec("  sink: {kafka: {topic: in, format: avro}}\n");
        let paths: Vec<String> = problems(&s).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["spec.sink.kafka.topic", "spec.sink.kafka.format"]);
    }
}

//! Parts of the contract the current runtime cannot execute yet. The CRD documents the whole
//! product; a spec that uses a part not built yet is refused with "not supported yet" and the
//! field path, by the operator (as a condition) and the runtime (at start), instead of being run
//! wrongly.

use crate::{PipelineDeploymentSpec, validate::FieldError};

/// Every field of `spec` that the runtime of this release cannot run, with the reason.
pub fn unsupported(spec: &PipelineDeploymentSpec) -> Vec<FieldError> {
    let mut found = Vec::new();
    let mut not_yet = |path: &str, what: &str| {
        found.push(FieldError {
            path: path.to_owned(),
            message: format!("not supported yet: {what}"),
        });
    };
    if spec.sink.clickhouse.is_some() {
        not_yet(
            "spec.sink.clickhouse",
            "the ClickHouse sink (roadmap item 9)",
        );
    }
    if spec.delivery == crate::checkpoint::DeliveryGuarantee::ExactlyOnce {
        not_yet(
            "spec.delivery",
            "exactly-once delivery (Kafka transactions at checkpoints)",
        );
    }
    if spec
        .sink
        .kafka
        .as_ref()
        .is_some_and(|k| k.format == crate::sink::OutputFormat::Avro)
    {
        not_yet("spec.sink.kafka.format", "Avro output (JSON output works)");
    }
    if spec.checkpoint.is_some() {
        not_yet("spec.checkpoint", "state checkpoints to object storage");
    }
    found
}

//! The `PipelineDeployment` custom resource.

// kube's `printcolumn(...)` attributes repeat `type_ = ...` on purpose, one per column.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{
    aggregate::AggregateSpec,
    autoscaler::AutoscalerSpec,
    checkpoint::{CheckpointSpec, DeliveryGuarantee},
    enrich::EnrichSpec,
    kafka::KafkaSpec,
    pod_template::PodTemplateOverrides,
    resources::ResourcesSpec,
    sink::{SinkSpec, TopicRef},
    source::SourceSpec,
    status::PipelineDeploymentStatus,
    transform::TransformSpec,
    window::WindowSpec,
};

/// A Kafka stream-processing pipeline that Sluice runs as right-sized runtime pods and rescales
/// from consumer lag and backpressure.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "PipelineDeployment",
    plural = "pipelinedeployments",
    singular = "pipelinedeployment",
    shortname = "pd",
    category = "sluice",
    namespaced,
    cel,
    status = "PipelineDeploymentStatus",
    doc = "A Kafka stream-processing pipeline (source, filter, keyBy, window, aggregates, sink) run by Sluice as autoscaled runtime pods.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".status.parallelism",
        description = "Running slots"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredParallelism",
        description = "Slots decided (by spec.parallelism, kubectl scale or the autoscaler)"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready runtime pods"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Consumer lag in records"
    ),
    printcolumn(
        name = "Backpressure",
        type_ = "number",
        json_path = ".status.backpressure",
        description = "Share of time blocked on the sink"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "The Ready condition"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.window) || (has(self.aggregates) && size(self.aggregates) > 0)").message("a window needs at least one aggregate"))]
#[x_kube(validation = Rule::new("!has(self.aggregates) || size(self.aggregates) == 0 || has(self.window)").message("aggregates need a window"))]
#[x_kube(validation = Rule::new("!has(self.lateData) || has(self.window)").message("lateData only applies to windowed pipelines"))]
#[x_kube(validation = Rule::new("self.delivery != 'exactly-once' || has(self.checkpoint)").message("exactly-once delivery requires checkpoint"))]
pub struct PipelineDeploymentSpec {
    /// Kafka connection shared by source, sink and side topics.
    pub kafka: KafkaSpec,

    /// The topic(s) to read and their format.
    pub source: SourceSpec,

    /// Reference tables joined into each record, in order, before the filter (see
    /// docs/enrichment.md). Nothing is processed until every table is loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 16))]
    pub enrich: Vec<EnrichSpec>,

    /// Filter, projection, key and event time.
    #[serde(default)]
    pub transform: TransformSpec,

    /// Event-time window. Absent = a stateless pipeline (filter, project, route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,

    /// Aggregates computed per key and window; each becomes a field of the output record, beside
    /// the key field, `window_start` and `window_end` (epoch milliseconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 64))]
    pub aggregates: Vec<AggregateSpec>,

    /// Where output records go.
    pub sink: SinkSpec,

    /// Topic for records that arrive after their window closed (past `allowedLateness`). Absent =
    /// such records are counted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_data: Option<TopicRef>,

    /// Topic for records that cannot be processed (undecodable, missing key or timestamp, filter
    /// error), with the error in a header. Absent = such records are counted and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<TopicRef>,

    /// `at-least-once` (default) or `exactly-once` (Kafka transactions).
    #[serde(default)]
    pub delivery: DeliveryGuarantee,

    /// Periodic state snapshots. Required for `exactly-once` and recommended for windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,

    /// Total task slots (initial value when the autoscaler is on, fixed otherwise). Defaults to the
    /// source partition count. The operator keeps it within the autoscaler bounds and at most the
    /// partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<i32>,

    /// Slots per pod and the slot-to-CPU ratio.
    #[serde(default)]
    pub resources: ResourcesSpec,

    /// Automatic rescaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,

    /// Overrides for the runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Runtime container image. Defaults to the image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,

    /// Scale to zero pods and keep checkpoints and committed offsets.
    #[serde(default)]
    pub suspend: bool,

    /// What deleting the PipelineDeployment removes besides its Kubernetes objects: `retain`
    /// (default) keeps the consumer group's committed offsets and the checkpoints, so a pipeline
    /// recreated with the same consumer group resumes from them; `delete` holds the deletion
    /// (finalizer `sluice.dev/cleanup`) until the pods are gone, the group's offsets and
    /// repartition topic are deleted and a cleanup Job has removed the checkpoints.
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_retain")]
    pub deletion_policy: DeletionPolicy,
}

/// What deleting a pipeline removes (see `deletionPolicy`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum DeletionPolicy {
    /// Keep the consumer group, the repartition topic and the checkpoints (no finalizer).
    #[default]
    Retain,
    /// Remove them before the PipelineDeployment goes away (finalizer `sluice.dev/cleanup`).
    Delete,
}

impl DeletionPolicy {
    /// Whether this is the default, `retain`.
    pub fn is_retain(&self) -> bool {
        *self == Self::Retain
    }
}

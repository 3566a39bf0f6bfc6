//! What the operator reports about a running pipeline.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a PipelineDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineDeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A one-word summary: Pending, Running, Scaling, Suspended, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Ready, Progressing, Degraded and ScalingLimited conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Running parallelism (total slots of the current pods); the scale subresource's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,

    /// Parallelism the operator is moving to (after sizing and autoscaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_parallelism: Option<i32>,

    /// Runtime pods wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Runtime pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Partition count of the source topic(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,

    /// Label selector of the runtime pods, for the scale subresource (and HPA/VPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Total consumer lag in records across the source partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,

    /// Share of time the slots were blocked on the sink, 0 to 1, over the metrics window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<f64>,

    /// Share of time the slots were busy processing, 0 to 1, over the metrics window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,

    /// When the parallelism last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// The autoscaler's last decision, with its inputs and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// A one-word summary of the pipeline's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted; pods are being created.
    Pending,
    /// All pods ready and consuming.
    Running,
    /// Parallelism is changing.
    Scaling,
    /// `spec.suspend` is true: no pods, checkpoints kept.
    Suspended,
    /// Running with problems (pods not ready, Kafka unreachable).
    Degraded,
    /// The spec is invalid or cannot run.
    Failed,
}

/// The autoscaler's last evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// When the evaluation ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_time: Option<Time>,
    /// The metrics the decision was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<AutoscalerInputs>,
    /// Parallelism the autoscaler recommends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_parallelism: Option<i32>,
    /// What was done: ScaleUp, ScaleDown, NoChange, Held (delay or bounds) or NoMetrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Human-readable reason, e.g. `lag 1.2M would take 14m at 85k rec/s; target 5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Metric values behind an autoscaler decision, averaged over the metrics window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerInputs {
    /// Records per second arriving on the source partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Records per second the pipeline processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_rate: Option<f64>,
    /// Records per second one fully busy slot can process (processing rate / busy share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_per_slot: Option<f64>,
    /// Consumer lag in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Busy share, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,
    /// Backpressured share, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<f64>,
    /// Parallelism when the metrics were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
}

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

/// The autoscaler's last evaluation, and the memory it keeps between evaluations (kept in status so
/// that it survives operator restarts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// When the evaluation ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation_time: Option<Time>,
    /// The metrics the decision was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<AutoscalerInputs>,
    /// Records per second the pipeline must process: arrival rate + lag / catchUpDuration +
    /// arrival rate × observed rescale pause / catchUpDuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_rate: Option<f64>,
    /// Parallelism the autoscaler recommends (after bounds, partitions and even spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_parallelism: Option<i32>,
    /// The parallelism the autoscaler decided and the operator runs (mode `auto`). Absent until
    /// its first decision, and cleared when `spec.parallelism` changes (`kubectl scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_parallelism: Option<i32>,
    /// `spec.parallelism` when the autoscaler last decided; a different value means the user
    /// scaled by hand, which takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_parallelism: Option<i32>,
    /// What was done: ScaleUp, ScaleDown, NoChange, Held or NoMetrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Human-readable reason with the numbers, e.g. `lag 1.2M would take 14m at 85k rec/s;
    /// target 5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Vetoes in force: SinkBound, Skew, Ineffective, MetricsUnknown, AtMax, PartitionCap,
    /// Stabilizing, ScaleDownDelay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vetoes: Vec<String>,
    /// A lower recommendation waiting for `scaleDownDelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_scale_down: Option<PendingScaleDown>,
    /// The rescale in progress or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<RescaleRecord>,
    /// Seconds from the last rescale decision until every partition was consumed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_pause_seconds: Option<f64>,
    /// Last capacity per slot measured with enough load to trust it (records per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_per_slot: Option<f64>,
    /// Scale-ups are blocked because the last one did not deliver (until the spec or the load
    /// changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up_blocked: Option<ScaleUpBlock>,
}

/// A scale-down waiting for its delay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingScaleDown {
    /// When the first lower recommendation came.
    pub since: Time,
    /// The highest recommendation since then: what the scale-down goes to.
    pub highest: i32,
}

/// A rescale the autoscaler made, tracked until the pipeline is stable again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescaleRecord {
    /// When it was decided.
    pub started: Time,
    /// Parallelism before.
    pub from: i32,
    /// Parallelism after.
    pub to: i32,
    /// When every partition was consumed again at the new parallelism; absent while the rescale
    /// is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_since: Option<Time>,
    /// Total capacity (records per second) measured before a scale-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_before: Option<f64>,
    /// Total capacity the scale-up was expected to reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_capacity: Option<f64>,
    /// Whether the achieved capacity has been compared with the expected one.
    #[serde(default)]
    pub effect_checked: bool,
}

/// Why scale-ups are blocked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleUpBlock {
    /// The reason, with the numbers.
    pub reason: String,
    /// Arrival rate when blocked; a change by half of it lifts the block.
    pub arrival_rate: f64,
    /// `metadata.generation` when blocked; a spec change lifts the block.
    pub generation: i64,
}

/// Metric values behind an autoscaler decision, over the metrics window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerInputs {
    /// Records per second arriving on the source partitions (rate of their end offsets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Records per second the pipeline processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_rate: Option<f64>,
    /// Records per second one fully busy slot can process (from the busiest slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_per_slot: Option<f64>,
    /// Consumer lag in records (paused partitions excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Lag in seconds of input at the arrival rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Busy share of the busiest slot, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,
    /// Mean busy share over the slots, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_mean: Option<f64>,
    /// Backpressured share of the most backpressured slot, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure: Option<f64>,
    /// Mean backpressured share over the slots, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure_mean: Option<f64>,
    /// Partitions that lag while most do not (`topic/partition`), when lag is skewed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skewed_partitions: Vec<String>,
    /// Partitions paused after a failed restore (`topic/partition`), excluded from lag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paused_partitions: Vec<String>,
    /// Slots whose recent checkpoints failed (`pod/slot: N in a row`). They process on from
    /// their last good checkpoint, so a restart replays more; past
    /// `checkpoint.tolerableFailures` the slot restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_checkpoints: Vec<String>,
    /// Seconds of data the window covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<f64>,
    /// Parallelism when the metrics were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
}

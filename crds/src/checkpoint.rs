//! Delivery guarantee and where state snapshots are stored.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, kafka::CredentialsSecretRef};

/// What a consumer of the output sees after failures and rescaling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryGuarantee {
    /// Outputs may be repeated after a failure. Windowed outputs are deterministic and keyed by
    /// (key, window start), so a compacted topic or an upserting sink still ends exactly-once.
    #[default]
    AtLeastOnce,
    /// Kafka transactions: outputs and source offsets commit together at each checkpoint;
    /// readers use `isolation.level=read_committed`. Requires `checkpoint`.
    ExactlyOnce,
}

/// Periodic snapshots of per-partition state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Time between checkpoints of each slot. In exactly-once mode this is also the output
    /// latency. Defaults to `10s`.
    #[serde(default = "default_interval")]
    pub interval: Duration,

    /// Where snapshots are written.
    pub storage: CheckpointStorage,

    /// Snapshots kept per partition; older ones are deleted after a successful commit.
    /// Defaults to 3.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 100))]
    pub retain: i32,

    /// Consecutive failed checkpoints a slot tolerates (storage unreachable, a commit refused)
    /// while it keeps processing from the last good one; one more restarts the slot from that
    /// checkpoint (Flink's `tolerable-failed-checkpoints`). With exactly-once delivery any failure
    /// aborts the transaction and restarts the slot. Defaults to 3.
    #[serde(default = "default_tolerable_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub tolerable_failures: i32,

    /// What a slot does with a partition whose committed offset has no state it can restore
    /// because the pipeline changed: its window, aggregates, key or event time changed (the
    /// snapshot's fingerprint differs), or checkpoints were just turned on for a pipeline that
    /// already committed offsets. `fail` (default) pauses the partition, reports it
    /// (`pipeline_partition_paused`, `/readyz`, the `PartitionsPaused` condition) and waits for
    /// someone to decide; `reset` starts it with empty state from the committed offset (windows
    /// open at that moment lose what came before it), counted in
    /// `pipeline_state_resets_total`. Corrupt snapshots are never reset.
    #[serde(default)]
    pub on_incompatible_state: IncompatibleStatePolicy,
}

/// What to do with state that does not fit the changed pipeline (see `onIncompatibleState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IncompatibleStatePolicy {
    /// Pause the partition and report it.
    #[default]
    Fail,
    /// Start the partition with empty state from its committed offset.
    Reset,
}

impl CheckpointSpec {
    /// Checkpoints to `storage` with the default interval and retention.
    pub fn with_storage(storage: CheckpointStorage) -> Self {
        Self {
            interval: default_interval(),
            storage,
            retain: default_retain(),
            tolerable_failures: default_tolerable_failures(),
            on_incompatible_state: IncompatibleStatePolicy::default(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_retain() -> i32 {
    3
}

fn default_tolerable_failures() -> i32 {
    3
}

/// Snapshot storage. Exactly one of `s3`, `volume` and `local` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.s3), has(self.volume), has(self.local)].filter(x, x).size() == 1").message("set exactly one of s3, volume or local"))]
pub struct CheckpointStorage {
    /// An S3 bucket (or an S3-compatible store via `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// A ReadWriteMany PersistentVolumeClaim mounted into every pod (e.g. EFS), so any pod can
    /// restore any partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeStorage>,
    /// A local directory: only for `pipeline-runtime run` and local mode on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalStorage>,
}

/// S3 location of snapshots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name.
    #[schemars(length(max = 63, min = 3))]
    pub bucket: String,
    /// Key prefix under which this pipeline's snapshots live. Defaults to `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,
    /// AWS region. Absent = the pod's environment (`AWS_REGION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Custom endpoint for S3-compatible stores such as MinIO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Secret with `username` = access key id and `password` = secret access key. Absent = the
    /// pod's identity (IRSA on EKS) or the default credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
}

/// A shared PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStorage {
    /// Name of an existing ReadWriteMany PersistentVolumeClaim in the pipeline's namespace.
    #[schemars(length(max = 253, min = 1))]
    pub claim_name: String,
}

/// A directory on the local machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalStorage {
    /// Absolute or working-directory-relative path.
    #[schemars(length(max = 4096, min = 1))]
    pub path: String,
}

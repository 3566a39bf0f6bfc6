//! Per-record work before windowing: filter, projection, key, event time and watermarks.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// Stateless per-record transformation and the event-time settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformSpec {
    /// A CEL expression over the decoded record, bound as `record` (e.g.
    /// `record.temperature > -50.0 && record.site == "north"`). Records for which it is false are
    /// counted as filtered; records for which it fails to evaluate go to the dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub filter: Option<String>,

    /// Fields to keep in each output record of a stateless pipeline (dotted paths such as
    /// `user.id`). Absent = the whole record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256, min = 1), inner(length(max = 253)))]
    pub select: Option<Vec<String>>,

    /// Dotted path of the field that keys the stream (e.g. `device_id`). Windows and aggregates are
    /// computed per key; the key field is copied into every windowed output record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253, min = 1))]
    pub key_by: Option<String>,

    /// Where each record's event time comes from. Absent = the Kafka record timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimestampSpec>,

    /// How event time advances: watermark = highest event time seen − `maxOutOfOrderness`.
    #[serde(default)]
    pub watermark: WatermarkSpec,

    /// Whether records are re-keyed through an internal topic so that all records of a key reach
    /// the same slot. `auto` repartitions only when `keyBy` is set and the source topic is not
    /// already keyed by that field (see `sourceKeyed`). Defaults to `auto`.
    #[serde(default)]
    pub repartition: RepartitionPolicy,

    /// Declares that the source topic's Kafka message key already equals `keyBy` (producers
    /// partition by it), so `repartition: auto` can skip the internal topic.
    #[serde(default)]
    pub source_keyed: bool,
}

/// The origin of event time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.field) == (self.source == 'field')").message("field is required exactly when source is field"))]
pub struct TimestampSpec {
    /// `field` (a record field), `kafka` (the Kafka record timestamp) or `processingTime` (the
    /// wall clock when the record is read). Defaults to `field`.
    #[serde(default)]
    pub source: TimestampSource,

    /// Dotted path of the event-time field, for `source: field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub field: Option<String>,

    /// Encoding of the event-time field: `epochMillis` (default), `epochSeconds` or `rfc3339`.
    #[serde(default)]
    pub format: TimestampFormat,

    /// Records whose event time is more than this ahead of the runtime's wall clock go to the
    /// dead-letter topic instead of the windows (one far-future record would otherwise move the
    /// watermark past every open window of its partition). Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ahead_of_wall_clock: Option<Duration>,

    /// Records whose event time is more than this ahead of their partition's watermark go to the
    /// dead-letter topic. Unset by default: a partition quiet for days legitimately jumps ahead,
    /// but a replay of old data is not protected by the wall-clock bound alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ahead_of_watermark: Option<Duration>,
}

impl TimestampSpec {
    /// The default of `maxAheadOfWallClock`.
    pub const DEFAULT_MAX_AHEAD_OF_WALL_CLOCK: Duration = Duration::from_secs(3600);
}

/// Where event time is read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimestampSource {
    /// A field of the record.
    #[default]
    Field,
    /// The Kafka record timestamp (CreateTime or LogAppendTime).
    Kafka,
    /// The time the runtime reads the record: no out-of-order handling, not replayable.
    ProcessingTime,
}

/// Encoding of an event-time field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TimestampFormat {
    /// Integer milliseconds since the Unix epoch.
    #[default]
    EpochMillis,
    /// Integer or fractional seconds since the Unix epoch.
    EpochSeconds,
    /// An RFC 3339 string such as `2026-11-23T10:00:00Z`.
    Rfc3339,
}

/// Watermark generation, per source partition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkSpec {
    /// How far behind the highest event time seen a record may arrive and still count as on time.
    /// Defaults to `0s`.
    #[serde(default)]
    pub max_out_of_orderness: Duration,

    /// A partition that receives no record for this long advances its watermark by processing
    /// time, so its windows still close. Absent = idle partitions hold their watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

/// When to re-key the stream through an internal topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RepartitionPolicy {
    /// Repartition when `keyBy` is set and the source is not declared keyed by it.
    #[default]
    Auto,
    /// Always repartition when `keyBy` is set.
    Always,
    /// Never repartition: the user guarantees every key lives in one source partition.
    Never,
}

//! Where records come from: topics, consumer group, starting offsets and the record format.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The suffix of the repartition topic's name after the consumer group.
pub const REPARTITION_TOPIC_SUFFIX: &str = "-repartition";
/// The longest consumer group: the repartition topic's name (group + suffix) must fit Kafka's
/// 249 characters.
pub const MAX_CONSUMER_GROUP_LENGTH: usize = 249 - REPARTITION_TOPIC_SUFFIX.len();

/// The Kafka topic(s) the pipeline reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.topic) != has(self.topics)").message("set exactly one of topic or topics"))]
pub struct SourceSpec {
    /// The topic to read. Use `topics` to read several topics with the same format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 249, min = 1))]
    pub topic: Option<String>,

    /// Several topics to read as one stream. Their partition counts are added up for sizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64, min = 1), inner(length(max = 249)))]
    pub topics: Option<Vec<String>>,

    /// Consumer group id: 1 to 237 letters, digits, `.`, `_` and `-` (it also names the
    /// checkpoint directory and, with `-repartition`, the repartition topic, which must fit
    /// Kafka's 249). Defaults to `sluice.<namespace>.<name>`. Offsets committed under this group
    /// are where a restarted or rescaled pipeline resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 237), regex(pattern = r"^[A-Za-z0-9._-]+$"))]
    pub consumer_group: Option<String>,

    /// Where to start when the group has no committed offset for a partition. Defaults to
    /// `earliest`, so a new pipeline processes the retained history instead of silently skipping it.
    #[serde(default)]
    pub starting_offsets: StartingOffsets,

    /// How record values are encoded.
    #[serde(default)]
    pub format: SourceFormat,
}

impl SourceSpec {
    /// Every topic this source reads, in the order written.
    pub fn topic_names(&self) -> Vec<&str> {
        match (&self.topic, &self.topics) {
            (Some(topic), _) => vec![topic.as_str()],
            (None, Some(topics)) => topics.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// Kafka's `auto.offset.reset`, used only when no offset is committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartingOffsets {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records produced after the pipeline starts.
    Latest,
}

/// Record value encoding of the source topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.schema) || self.type == 'avro'").message("schema is only used with type avro"))]
pub struct SourceFormat {
    /// `json` (UTF-8 JSON objects), `avro` (Confluent wire format, or raw Avro datums when `schema`
    /// is given) or `raw` (bytes, exposed to expressions as `record.value`).
    #[serde(rename = "type", default)]
    pub kind: FormatKind,

    /// Inline Avro writer schema (JSON). When set, values are plain Avro datums; when absent, values
    /// carry the Confluent wire header and schemas are fetched from `kafka.schemaRegistryUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub schema: Option<String>,
}

/// A record encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FormatKind {
    /// A JSON object per record.
    #[default]
    Json,
    /// Apache Avro.
    Avro,
    /// Opaque bytes.
    Raw,
}

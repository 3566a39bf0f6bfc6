//! Where results go: a Kafka topic or a ClickHouse table, plus the late-data and dead-letter topics.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, kafka::CredentialsSecretRef};

/// The output of the pipeline. Exactly one of `kafka` and `clickhouse` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kafka) != has(self.clickhouse)").message("set exactly one of kafka or clickhouse"))]
pub struct SinkSpec {
    /// Write output records to a Kafka topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,
    /// Insert output records into a ClickHouse table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clickhouse: Option<ClickHouseSink>,
}

/// A Kafka output topic and its producer tuning.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    /// The output topic. Windowed outputs are keyed by (key, window start), so a compacted topic
    /// holds exactly one record per window.
    #[schemars(length(max = 249, min = 1))]
    pub topic: String,

    /// Encoding of output values. Defaults to `json`.
    #[serde(default)]
    pub format: OutputFormat,

    /// Compression of produced batches. Defaults to `lz4`.
    #[serde(default)]
    pub compression: Compression,

    /// How long the producer waits to fill a batch (`linger.ms`). Defaults to `5ms`.
    #[serde(default = "default_linger")]
    pub linger: Duration,

    /// Largest batch per partition in bytes (`batch.size`). Defaults to 262144 (256 KiB).
    #[serde(default = "default_batch_bytes")]
    #[schemars(range(min = 1024, max = 16777216))]
    pub batch_bytes: i32,
}

fn default_linger() -> Duration {
    Duration::from_millis(5)
}

fn default_batch_bytes() -> i32 {
    262_144
}

/// Output value encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutputFormat {
    /// A JSON object per record.
    #[default]
    Json,
    /// Avro in the Confluent wire format; the schema is derived from the output fields and
    /// registered in `kafka.schemaRegistryUrl`.
    Avro,
}

/// Producer batch compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip: small, slow.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4: fast, the usual choice for high-throughput pipelines.
    #[default]
    Lz4,
    /// Zstandard: smaller than LZ4 at more CPU.
    Zstd,
}

impl Compression {
    /// The value librdkafka expects for `compression.codec`.
    pub fn as_kafka_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// A ClickHouse table reached over HTTP. Window results are effectively-once: each row carries a
/// deterministic `_version`, the table is a `ReplacingMergeTree(_version)` ordered by the key and
/// `window_start`, and a query with `FINAL` returns one exact row per window. A stateless
/// pipeline's records go into a table you create: each record fills the columns of its field
/// names (a record that does not fit is dead-lettered), and columns `_topic`, `_partition`,
/// `_offset` get where it was read, so a `ReplacingMergeTree` ordered by them counts each record
/// once under `FINAL` (docs/clickhouse.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClickHouseSink {
    /// HTTP(S) endpoint, e.g. `http://clickhouse.analytics:8123`.
    #[schemars(length(max = 2048, min = 1))]
    pub url: String,
    /// Database name. Defaults to `default`.
    #[serde(default = "default_database")]
    #[schemars(length(max = 253))]
    pub database: String,
    /// Table name.
    #[schemars(length(max = 253, min = 1))]
    pub table: String,
    /// Secret with the ClickHouse username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
    /// Create the table when it does not exist: a `ReplacingMergeTree(_version)` ordered by the
    /// key and `window_start`, with one column per output field. Windowed pipelines only. Without it
    /// the table must exist, and the runtime refuses to start when its columns do not fit the
    /// pipeline's output, naming each difference.
    #[serde(default)]
    pub create_table: bool,
    /// Rows per insert: a batch is inserted once it holds this many rows, after `batchInterval`,
    /// and at every checkpoint. Defaults to 10000.
    #[serde(default = "default_batch_rows")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_rows: i32,
    /// Bytes per insert: a batch is also inserted once its JSON reaches this size (a single
    /// larger row is inserted alone). Defaults to 8388608 (8 MiB).
    #[serde(default = "default_clickhouse_batch_bytes")]
    #[schemars(range(min = 1024, max = 268435456))]
    pub batch_bytes: i64,
    /// Longest time a row waits in a batch before it is inserted. Defaults to `1s`.
    #[serde(default = "default_batch_interval")]
    pub batch_interval: Duration,
}

fn default_clickhouse_batch_bytes() -> i64 {
    8 << 20
}

fn default_batch_rows() -> i32 {
    10_000
}

fn default_batch_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_database() -> String {
    "default".to_owned()
}

/// A side-output Kafka topic (late data, dead letters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopicRef {
    /// Topic name.
    #[schemars(length(max = 249, min = 1))]
    pub topic: String,
}

//! The execution plan of a pipeline: what every slot does with a record, compiled once from the
//! spec.

use std::{sync::Arc, time::Duration};

use pipeline_crds::{
    PipelineDeploymentSpec,
    checkpoint::{CheckpointSpec, DeliveryGuarantee},
    contract,
    sink::OutputFormat,
    source::{FormatKind, SourceFormat, StartingOffsets},
    transform::RepartitionPolicy,
};
use rdkafka::ClientConfig;

use crate::{
    aggregate::AggregatePlan,
    event_time::{EventTime, EventTimeBounds},
    field::FieldPath,
    window::Assigner,
};

/// The windowed stage's settings.
#[derive(Clone, Debug)]
pub struct WindowStage {
    /// Window kind and sizes.
    pub assigner: Assigner,
    /// Allowed lateness in ms.
    pub lateness_ms: i64,
    /// The aggregates.
    pub aggregates: Arc<AggregatePlan>,
}

/// A librdkafka client configuration settled from the spec (brokers, security, the user's
/// properties, the runtime's own settings), to which a slot adds only its `client.id` (and its
/// `transactional.id`). Its `Debug` names the keys, not the values: they may hold credentials.
#[derive(Clone)]
pub struct KafkaClient(ClientConfig);

impl KafkaClient {
    /// The configuration for one client: `client_id` unless the user's properties set one.
    pub fn for_client(&self, client_id: &str) -> ClientConfig {
        crate::client::with_client_id(self.0.clone(), client_id)
    }

    /// One setting, as the slot's client will have it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.0.config_map();
        let mut keys: Vec<&str> = map.keys().copied().collect();
        keys.sort_unstable();
        f.debug_tuple("KafkaClient").field(&keys).finish()
    }
}

/// Everything a slot needs: what to do with each record, how to reach Kafka, what delivery
/// guarantee to give and where to checkpoint. Compiled once from the spec; the slot reads nothing
/// else of it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The consumer group of the pipeline's slots.
    pub group: String,
    /// The slots' consumers (group, assignment strategy, offsets, isolation).
    pub consumer: KafkaClient,
    /// The slots' producers (idempotence, batching, compression; transactions when exactly-once).
    pub producer: KafkaClient,
    /// The delivery guarantee.
    pub delivery: DeliveryGuarantee,
    /// Where a partition without a committed offset starts.
    pub starting_offsets: StartingOffsets,
    /// Checkpoints (snapshots of window state and, exactly-once, transactions).
    pub checkpoint: Option<CheckpointSpec>,
    /// The source topics, in spec order.
    pub source_topics: Vec<String>,
    /// The internal topic records are re-keyed through, when repartitioning.
    pub repartition_topic: Option<String>,
    /// Source value format.
    pub format: SourceFormat,
    /// Schema Registry URL.
    pub schema_registry_url: Option<String>,
    /// CEL filter source.
    pub filter: Option<String>,
    /// Projection of stateless outputs.
    pub select: Option<Vec<FieldPath>>,
    /// The key field.
    pub key_by: Option<FieldPath>,
    /// Event time.
    pub event_time: EventTime,
    /// How far ahead event times may be.
    pub event_time_bounds: EventTimeBounds,
    /// Watermark bound in ms.
    pub out_of_orderness_ms: i64,
    /// Idleness timeout.
    pub idle_timeout: Option<Duration>,
    /// The window stage; `None` = stateless.
    pub window: Option<WindowStage>,
    /// Output topic.
    pub sink_topic: String,
    /// The ClickHouse sink, when output goes there instead of `sink_topic`.
    pub clickhouse: Option<pipeline_crds::sink::ClickHouseSink>,
    /// Encoding of window results.
    pub output_format: OutputFormat,
    /// Late-data topic.
    pub late_topic: Option<String>,
    /// Dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// Partition count of each source topic (spec order).
    pub source_partitions: Vec<usize>,
    /// The top-level fields of a JSON source record that any stage reads (filter, key, event
    /// time, aggregates, projection); `None` when every field is needed. The decoder skips the
    /// others.
    pub decode_fields: Option<std::collections::BTreeSet<String>>,
    /// A checksum of the settings that shape stored state (window, aggregates, key, event
    /// time, stages): a snapshot is only restored into a pipeline with the same fingerprint.
    pub state_fingerprint: u32,
}

fn state_fingerprint(spec: &PipelineDeploymentSpec, group: &str) -> u32 {
    let shaping = serde_json::json!({
        "window": spec.window.as_ref().map(|w| (&w.tumbling, &w.sliding, &w.session)),
        "aggregates": spec.aggregates,
        "keyBy": spec.transform.key_by,
        "timestamp": spec.transform.timestamp,
        "repartition": Plan::repartition_topic_name(spec, group),
    });
    crc32fast::hash(shaping.to_string().as_bytes())
}

/// Topic index 0.. for source topics, then the repartition topic.
pub type TopicIndex = usize;

impl Plan {
    /// The internal topic's name when the spec needs one.
    pub fn repartition_topic_name(spec: &PipelineDeploymentSpec, group: &str) -> Option<String> {
        let repartition = spec.window.is_some()
            && spec.transform.key_by.is_some()
            && match spec.transform.repartition {
                RepartitionPolicy::Never => false,
                RepartitionPolicy::Always => true,
                RepartitionPolicy::Auto => !spec.transform.source_keyed,
            };
        repartition.then(|| format!("{group}{}", pipeline_crds::source::REPARTITION_TOPIC_SUFFIX))
    }

    /// Brokers other than the spec's (the runtime's `--bootstrap-servers`).
    pub fn with_bootstrap_servers(mut self, servers: &str) -> Self {
        for client in [&mut self.consumer, &mut self.producer] {
            client.0.set("bootstrap.servers", servers);
        }
        self
    }

    /// Compiles a validated spec. `group` is the consumer group (it also names the internal
    /// repartition topic); `source_partitions` are the partition counts of the source topics, in
    /// spec order.
    pub fn new(spec: &PipelineDeploymentSpec, group: &str, source_partitions: Vec<usize>) -> Self {
        let window = spec.window.as_ref().and_then(|w| {
            Some(WindowStage {
                assigner: Assigner::from_kind(w.kind()?),
                lateness_ms: i64::try_from(w.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
                aggregates: Arc::new(AggregatePlan::new(&spec.aggregates)),
            })
        });
        let bootstrap = spec.kafka.bootstrap_servers.as_str();
        Self {
            group: group.to_owned(),
            consumer: KafkaClient(crate::client::consumer_config(spec, bootstrap, group)),
            producer: KafkaClient(crate::client::producer_config(spec, bootstrap)),
            delivery: spec.delivery,
            starting_offsets: spec.source.starting_offsets,
            checkpoint: spec.checkpoint.clone(),
            source_topics: spec
                .source
                .topic_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            repartition_topic: Self::repartition_topic_name(spec, group),
            format: spec.source.format.clone(),
            schema_registry_url: spec.kafka.schema_registry_url.clone(),
            filter: spec.transform.filter.clone(),
            select: spec
                .transform
                .select
                .as_ref()
                .map(|s| s.iter().map(|p| FieldPath::parse(p)).collect()),
            key_by: spec.transform.key_by.as_deref().map(FieldPath::parse),
            event_time: EventTime::new(spec.transform.timestamp.as_ref()),
            event_time_bounds: EventTimeBounds::new(spec.transform.timestamp.as_ref()),
            out_of_orderness_ms: i64::try_from(
                spec.transform.watermark.max_out_of_orderness.as_millis(),
            )
            .unwrap_or(i64::MAX),
            idle_timeout: spec.transform.watermark.idle_timeout.map(|d| d.get()),
            window,
            sink_topic: spec
                .sink
                .kafka
                .as_ref()
                .map(|k| k.topic.clone())
                .unwrap_or_default(),
            clickhouse: spec.sink.clickhouse.clone(),
            output_format: spec
                .sink
                .kafka
                .as_ref()
                .map(|k| k.format)
                .unwrap_or_default(),
            late_topic: spec.late_data.as_ref().map(|t| t.topic.clone()),
            dead_letter_topic: spec.dead_letter.as_ref().map(|t| t.topic.clone()),
            source_partitions,
            state_fingerprint: state_fingerprint(spec, group),
            decode_fields: None,
        }
        .with_decode_fields()
    }

    /// The top-level fields stage two of a repartitioning pipeline reads from the records of the
    /// repartition topic (its key and its aggregates' inputs; event time comes in the record's
    /// timestamp). Empty without a window.
    pub fn repartitioned_fields(&self) -> std::collections::BTreeSet<String> {
        let Some(window) = &self.window else {
            return std::collections::BTreeSet::new();
        };
        self.key_by
            .iter()
            .chain(window.aggregates.fields())
            .map(|p| p.root().to_owned())
            .collect()
    }

    /// Works out [`Self::decode_fields`].
    fn with_decode_fields(mut self) -> Self {
        let filter = match &self.filter {
            Some(expression) => crate::filter::record_fields(expression),
            None => Some(std::collections::BTreeSet::new()),
        };
        let stages: Option<Vec<&FieldPath>> = match (&self.window, &self.select) {
            (Some(window), _) => {
                let mut paths: Vec<&FieldPath> = self.key_by.iter().collect();
                if let EventTime::Field { path, .. } = &self.event_time {
                    paths.push(path);
                }
                paths.extend(window.aggregates.fields());
                Some(paths)
            }
            (None, Some(select)) => Some(select.iter().collect()),
            // Stateless without a projection forwards the record's own bytes.
            (None, None) => Some(Vec::new()),
        };
        self.decode_fields = match (self.format.kind, filter, stages) {
            (FormatKind::Json, Some(mut fields), Some(paths)) => {
                fields.extend(paths.iter().map(|p| p.root().to_owned()));
                Some(fields)
            }
            _ => None,
        };
        self
    }

    /// Source partitions in all: the upstream partitions of the repartition topic.
    pub fn upstream_partitions(&self) -> usize {
        self.source_partitions.iter().sum()
    }

    /// Partitions of the repartition topic: as many as the largest source topic.
    pub fn repartition_partitions(&self) -> i32 {
        i32::try_from(self.source_partitions.iter().copied().max().unwrap_or(1)).unwrap_or(i32::MAX)
    }

    /// A source partition's id among all source partitions (topics in spec order).
    pub fn upstream_id(&self, topic: TopicIndex, partition: i32) -> u32 {
        let before: usize = self.source_partitions.iter().take(topic).sum();
        u32::try_from(before)
            .unwrap_or(u32::MAX)
            .saturating_add(u32::try_from(partition).unwrap_or(0))
    }

    /// Every topic the slots subscribe to.
    pub fn subscribed_topics(&self) -> Vec<&str> {
        self.source_topics
            .iter()
            .chain(self.repartition_topic.iter())
            .map(String::as_str)
            .collect()
    }

    /// The index of a subscribed topic (called per record: no allocation).
    pub fn topic_index(&self, topic: &str) -> Option<TopicIndex> {
        self.source_topics
            .iter()
            .chain(self.repartition_topic.iter())
            .position(|t| t == topic)
    }

    /// The name of a topic index.
    pub fn topic_name(&self, index: TopicIndex) -> &str {
        match self.source_topics.get(index) {
            Some(topic) => topic,
            None => self
                .repartition_topic
                .as_deref()
                .expect("index of a subscribed topic"),
        }
    }

    /// Whether `index` is the internal repartition topic.
    pub fn is_repartition_topic(&self, index: TopicIndex) -> bool {
        self.repartition_topic.is_some() && index == self.source_topics.len()
    }

    /// Whether source values are JSON objects that can be forwarded byte for byte.
    pub fn source_is_json(&self) -> bool {
        self.format.kind == FormatKind::Json
    }

    /// The output field holding the key.
    pub fn key_field(&self) -> &str {
        self.key_by.as_ref().map_or("key", FieldPath::leaf)
    }

    /// Output field names of windowed records, for documentation and schema derivation.
    pub fn window_fields(&self) -> Vec<String> {
        let mut fields = vec![
            self.key_field().to_owned(),
            contract::output::WINDOW_START.to_owned(),
            contract::output::WINDOW_END.to_owned(),
        ];
        if let Some(w) = &self.window {
            fields.extend(w.aggregates.names().map(str::to_owned));
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(spec: &str) -> Plan {
        plan_from("json", spec)
    }

    fn plan_from(format: &str, spec: &str) -> Plan {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in, format: {{type: {format}}}}}\n  sink: {{kafka: {{topic: out}}}}\n{spec}"
        );
        let spec = pipeline_crds::manifest::from_yaml(&text, "t").unwrap().spec;
        Plan::new(&spec, "g", vec![4])
    }

    fn fields(p: &Plan) -> Option<Vec<&str>> {
        p.decode_fields
            .as_ref()
            .map(|f| f.iter().map(String::as_str).collect())
    }

    #[test]
    fn the_plan_carries_the_clients_the_guarantee_and_the_checkpoints_and_hides_client_values() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p}\nspec:\n  kafka: {bootstrapServers: 'k:9092', properties: {ssl.key.password: hunter2}}\n  source: {topic: in, startingOffsets: latest}\n  sink: {kafka: {topic: out}}\n  delivery: exactly-once\n  checkpoint: {interval: 20s, storage: {local: {path: /tmp/cp}}}\n";
        let spec = pipeline_crds::manifest::from_yaml(text, "t").unwrap().spec;
        let p = Plan::new(&spec, "g", vec![4]).with_bootstrap_servers("other:9092");
        assert_eq!(p.delivery, DeliveryGuarantee::ExactlyOnce);
        assert_eq!(p.starting_offsets, StartingOffsets::Latest);
        assert_eq!(
            p.checkpoint.as_ref().map(|c| c.interval.as_millis()),
            Some(20_000)
        );
        assert_eq!(p.consumer.get("group.id"), Some("g"));
        assert_eq!(p.consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(p.consumer.get("bootstrap.servers"), Some("other:9092"));
        assert_eq!(p.producer.get("bootstrap.servers"), Some("other:9092"));
        assert_eq!(p.producer.get("transaction.timeout.ms"), Some("120000"));
        let consumer = p.consumer.for_client("sluice-p-pod-0");
        assert_eq!(consumer.get("client.id"), Some("sluice-p-pod-0"));
        let printed = format!("{p:?}");
        assert!(printed.contains("ssl.key.password"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn the_decoder_keeps_exactly_the_fields_some_stage_reads() {
        let windowed = plan(
            "  transform: {filter: 'record.status == \"ok\"', keyBy: site.id, timestamp: {field: ts}}\n  window: {tumbling: {size: 1m}}\n  aggregates: [{name: n, function: count}, {name: t, function: max, field: temperature}]\n",
        );
        assert_eq!(
            fields(&windowed),
            Some(vec!["site", "status", "temperature", "ts"])
        );
        let projected =
            plan("  transform: {filter: 'record.amount > 1.0', select: [order_id, customer.id]}\n");
        assert_eq!(
            fields(&projected),
            Some(vec!["amount", "customer", "order_id"])
        );
        // Forwarding the record's own bytes needs only what the filter reads.
        assert_eq!(
            fields(&plan("  transform: {filter: 'record.a > 1'}\n")),
            Some(vec!["a"])
        );
        // A filter that uses the record whole, or a non-JSON source: every field.
        assert_eq!(
            fields(&plan("  transform: {filter: 'size(record) > 1'}\n")),
            None
        );
        let raw = plan_from("raw", "");
        assert_eq!(fields(&raw), None);
    }
}

//! The execution plan of a pipeline: what every slot does with a record, compiled once from the
//! spec.

use std::{sync::Arc, time::Duration};

use pipeline_crds::{
    PipelineDeploymentSpec,
    checkpoint::{DeliveryGuarantee, IncompatibleStatePolicy},
    contract,
    source::StartingOffsets,
    transform::RepartitionPolicy,
    valid::ValidPipeline,
};
use rdkafka::ClientConfig;

use crate::{
    aggregate::AggregatePlan,
    checkpoint::store::StoreLocation,
    decode::SourceDecoding,
    event_time::{EventTime, EventTimeBounds},
    field::FieldPath,
    kafka_sign_in::KafkaSignIn,
    sink::registry::RowsTarget,
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
/// `transactional.id`), and how it signs in where librdkafka cannot alone (MSK IAM). Its
/// `Debug` names the keys, not the values: they may hold credentials.
#[derive(Clone)]
pub struct KafkaClient {
    config: ClientConfig,
    sign_in: KafkaSignIn,
}

impl KafkaClient {
    /// The configuration for one client: `client_id` unless the user's properties set one.
    pub fn for_client(&self, client_id: &str) -> ClientConfig {
        crate::client::with_client_id(self.config.clone(), client_id)
    }

    /// One setting, as the slot's client will have it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key)
    }

    /// The sign-in the client's context answers token refreshes with.
    pub fn sign_in(&self) -> &KafkaSignIn {
        &self.sign_in
    }
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.config.config_map();
        let mut keys: Vec<&str> = map.keys().copied().collect();
        keys.sort_unstable();
        f.debug_tuple("KafkaClient")
            .field(&keys)
            .field(&self.sign_in)
            .finish()
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
    /// Exactly-once: outputs and offsets commit in one Kafka transaction per checkpoint.
    pub transactional: bool,
    /// Whether a partition without a committed offset starts at its earliest offset (else at
    /// its latest).
    pub reset_to_earliest: bool,
    /// Checkpoints, when the spec asks for them.
    pub checkpoint: Option<CheckpointPlan>,
    /// Time between checkpoints, or between offset commits without them.
    pub commit_interval: Duration,
    /// The source topics, in spec order.
    pub source_topics: Vec<String>,
    /// The internal topic records are re-keyed through, when repartitioning.
    pub repartition_topic: Option<String>,
    /// How source values are decoded.
    pub source: SourceDecoding,
    /// The reference tables joined into each record, in order (`spec.enrich`).
    pub enrich: Vec<crate::enrich::TablePlan>,
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
    /// Where output rows go.
    pub rows: RowsTarget,
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

/// A pipeline's checkpoints, settled from `spec.checkpoint`.
#[derive(Clone, Debug)]
pub struct CheckpointPlan {
    /// Time between checkpoints.
    pub interval: Duration,
    /// Where window state is snapshotted; `None` for a stateless pipeline, whose checkpoints are
    /// its offsets (and, exactly-once, its transactions).
    pub snapshots: Option<SnapshotPlan>,
    /// Where the reference tables (`spec.enrich`) are checkpointed, when there are any.
    pub tables: Option<SnapshotPlan>,
    /// Checkpoints that may fail in a row before the slot restarts from the last good one.
    pub tolerable_failures: u64,
    /// Whether a partition whose snapshot cannot be restored starts over from its earliest
    /// offset with empty state (`onIncompatibleState: reset`) instead of staying paused.
    pub reset_incompatible_state: bool,
}

/// Where and how many snapshots a windowed pipeline keeps.
#[derive(Clone, Debug)]
pub struct SnapshotPlan {
    /// The store.
    pub location: StoreLocation,
    /// Snapshots kept per partition.
    pub retain: usize,
}

impl CheckpointPlan {
    /// The checkpoints of `spec` (snapshots when it is windowed); keys go under
    /// `default_prefix` unless the storage sets its own.
    fn of(spec: &PipelineDeploymentSpec, default_prefix: &str) -> Option<Self> {
        let checkpoint = spec.checkpoint.as_ref()?;
        let snapshots = spec.window.as_ref().and_then(|_| {
            Some(SnapshotPlan {
                location: StoreLocation::of(&checkpoint.storage, default_prefix)?,
                retain: usize::try_from(checkpoint.retain).unwrap_or(1),
            })
        });
        let tables = (!spec.enrich.is_empty()).then(|| {
            Some(SnapshotPlan {
                location: StoreLocation::of(&checkpoint.storage, default_prefix)?,
                retain: usize::try_from(checkpoint.retain).unwrap_or(1),
            })
        });
        Some(Self {
            interval: checkpoint.interval.get(),
            snapshots,
            tables: tables.flatten(),
            tolerable_failures: u64::try_from(checkpoint.tolerable_failures).unwrap_or(0),
            reset_incompatible_state: checkpoint.on_incompatible_state
                == IncompatibleStatePolicy::Reset,
        })
    }
}

/// Time between offset commits of a pipeline without checkpoints, unless the runtime sets its
/// own (`--commit-interval`, whose default this is).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

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
            client.config.set("bootstrap.servers", servers);
        }
        self
    }

    /// Offset commits every `interval`, unless the plan commits with its checkpoints (at the
    /// checkpoint interval).
    pub fn with_commit_interval(mut self, interval: Duration) -> Self {
        if self.checkpoint_pace().is_none() {
            self.commit_interval = interval;
        }
        self
    }

    /// The checkpoint interval, when checkpoints set the pace of commits: when there is
    /// something to checkpoint (window state, or an exactly-once transaction).
    fn checkpoint_pace(&self) -> Option<Duration> {
        self.checkpoint
            .as_ref()
            .filter(|c| self.transactional || c.snapshots.is_some())
            .map(|c| c.interval)
    }

    /// Compiles a validated pipeline. `group` is the consumer group (it also names the internal
    /// repartition topic); `source_partitions` are the partition counts of the source topics, in
    /// spec order.
    pub fn new(pipeline: &ValidPipeline, group: &str, source_partitions: Vec<usize>) -> Self {
        let spec = pipeline.spec();
        let default_prefix = format!("{}/{}", pipeline.namespace(), pipeline.name());
        let window = spec.window.as_ref().and_then(|w| {
            Some(WindowStage {
                assigner: Assigner::from_kind(w.kind()?),
                lateness_ms: i64::try_from(w.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
                aggregates: Arc::new(AggregatePlan::new(&spec.aggregates)),
            })
        });
        let bootstrap = spec.kafka.bootstrap_servers.as_str();
        let sign_in = KafkaSignIn::of(&spec.kafka);
        Self {
            group: group.to_owned(),
            consumer: KafkaClient {
                config: crate::client::consumer_config(spec, bootstrap, group),
                sign_in: sign_in.clone(),
            },
            producer: KafkaClient {
                config: crate::client::producer_config(spec, bootstrap),
                sign_in,
            },
            transactional: spec.delivery == DeliveryGuarantee::ExactlyOnce,
            reset_to_earliest: spec.source.starting_offsets == StartingOffsets::Earliest,
            checkpoint: CheckpointPlan::of(spec, &default_prefix),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            source_topics: spec
                .source
                .topic_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            repartition_topic: Self::repartition_topic_name(spec, group),
            source: SourceDecoding::of(
                &spec.source.format,
                spec.kafka.schema_registry_url.as_deref(),
            ),
            enrich: spec
                .enrich
                .iter()
                .map(|t| crate::enrich::TablePlan::of(t, spec.kafka.schema_registry_url.as_deref()))
                .collect(),
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
            rows: RowsTarget::of(spec),
            late_topic: spec.late_data.as_ref().map(|t| t.topic.clone()),
            dead_letter_topic: spec.dead_letter.as_ref().map(|t| t.topic.clone()),
            source_partitions,
            state_fingerprint: state_fingerprint(spec, group),
            decode_fields: None,
        }
        .with_decode_fields()
        .with_paced_commits()
    }

    /// Commits at the checkpoint interval when checkpoints set the pace, else every
    /// [`DEFAULT_COMMIT_INTERVAL`].
    fn with_paced_commits(mut self) -> Self {
        self.commit_interval = self.checkpoint_pace().unwrap_or(DEFAULT_COMMIT_INTERVAL);
        self
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
        // A stateless pipeline that enriches writes the whole record, joined fields added.
        let whole_record =
            !self.enrich.is_empty() && self.window.is_none() && self.select.is_none();
        self.decode_fields = match (&self.source, filter, stages) {
            (SourceDecoding::Json, Some(mut fields), Some(paths)) if !whole_record => {
                fields.extend(paths.iter().map(|p| p.root().to_owned()));
                fields.extend(self.enrich.iter().map(|t| t.lookup.root().to_owned()));
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
        self.source == SourceDecoding::Json
    }

    /// Whether a record goes on (to the sink or the repartition topic) as the bytes it was read
    /// as: a JSON source that joins no table.
    pub fn forwards_source_bytes(&self) -> bool {
        self.source_is_json() && self.enrich.is_empty()
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
impl Plan {
    /// The plan of `spec` (which must pass validation) in a pipeline `t`, group `g`.
    pub(crate) fn of_spec(spec: &PipelineDeploymentSpec, source_partitions: Vec<usize>) -> Self {
        let pd = pipeline_crds::PipelineDeployment::new("t", spec.clone());
        let pipeline =
            pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
                .unwrap_or_else(|e| panic!("the test's spec is invalid: {e}"));
        Self::new(&pipeline, "g", source_partitions)
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
        Plan::of_spec(&spec, vec![4])
    }

    fn fields(p: &Plan) -> Option<Vec<&str>> {
        p.decode_fields
            .as_ref()
            .map(|f| f.iter().map(String::as_str).collect())
    }

    #[test]
    fn the_plan_carries_the_clients_the_guarantee_and_the_checkpoints_and_hides_client_values() {
        let text = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p}\nspec:\n  kafka: {bootstrapServers: 'k:9092', properties: {ssl.ca.location: /etc/hunter2}}\n  source: {topic: in, startingOffsets: latest}\n  sink: {kafka: {topic: out}}\n  delivery: exactly-once\n  checkpoint: {interval: 20s, storage: {local: {path: /tmp/cp}}}\n";
        let spec = pipeline_crds::manifest::from_yaml(text, "t").unwrap().spec;
        let p = Plan::of_spec(&spec, vec![4]).with_bootstrap_servers("other:9092");
        assert!(p.transactional);
        assert!(!p.reset_to_earliest);
        assert!(p.checkpoint.is_some());
        // Exactly-once commits with its checkpoints, whatever the runtime's own interval.
        let p = p.with_commit_interval(Duration::from_secs(1));
        assert_eq!(p.commit_interval, Duration::from_secs(20));
        assert_eq!(p.consumer.get("group.id"), Some("g"));
        assert_eq!(p.consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(p.consumer.get("bootstrap.servers"), Some("other:9092"));
        assert_eq!(p.producer.get("bootstrap.servers"), Some("other:9092"));
        assert_eq!(p.producer.get("transaction.timeout.ms"), Some("120000"));
        let consumer = p.consumer.for_client("sluice-p-pod-0");
        assert_eq!(consumer.get("client.id"), Some("sluice-p-pod-0"));
        let printed = format!("{p:?}");
        assert!(printed.contains("ssl.ca.location"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn checkpoints_store_and_pace_settle_when_the_plan_is_compiled() {
        let checkpoint = "  checkpoint: {interval: 20s, retain: 3, onIncompatibleState: reset, storage: {s3: {bucket: snapshots, region: eu-west-1}}}\n";
        let windowed = plan(&format!(
            "  transform: {{keyBy: k, timestamp: {{field: ts}}, repartition: never}}\n  window: {{tumbling: {{size: 1m}}}}\n  aggregates: [{{name: n, function: count}}]\n{checkpoint}"
        ))
        .with_commit_interval(Duration::from_secs(1));
        let settled = windowed.checkpoint.as_ref().unwrap();
        let snapshots = settled.snapshots.as_ref().unwrap();
        assert_eq!(
            snapshots.location,
            StoreLocation::S3(crate::checkpoint::store::S3Location {
                bucket: "snapshots".into(),
                prefix: "default/t".into(),
                region: Some("eu-west-1".into()),
                endpoint: None,
            })
        );
        assert_eq!(snapshots.retain, 3);
        assert!(settled.reset_incompatible_state);
        assert_eq!(windowed.commit_interval, Duration::from_secs(20));
        // Stateless at-least-once has nothing to snapshot: offsets commit at the runtime's pace.
        let stateless = plan(checkpoint).with_commit_interval(Duration::from_secs(1));
        assert!(stateless.checkpoint.as_ref().unwrap().snapshots.is_none());
        assert_eq!(stateless.commit_interval, Duration::from_secs(1));
        assert_eq!(plan("").commit_interval, DEFAULT_COMMIT_INTERVAL);
        assert!(plan("").reset_to_earliest);
    }

    #[test]
    fn the_rows_target_is_settled_from_the_sink_spec() {
        let clickhouse = Plan::of_spec(
            &pipeline_crds::manifest::from_yaml(
                "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {clickhouse: {url: 'http://ch:8123/', table: t, batchRows: 0}}\n",
                "t",
            )
            .unwrap()
            .spec,
            vec![1],
        );
        let RowsTarget::ClickHouse(target) = &clickhouse.rows else {
            panic!("{:?}", clickhouse.rows)
        };
        assert_eq!(target.url, "http://ch:8123");
        assert_eq!(target.batch_rows, 1);
        let kafka = plan("");
        let RowsTarget::Kafka(target) = &kafka.rows else {
            panic!("{:?}", kafka.rows)
        };
        assert_eq!(target.topic, "out");
        assert_eq!(target.avro_registry, None);
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

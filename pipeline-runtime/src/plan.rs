//! The execution plan of a pipeline: what every slot does with a record, compiled once from the
//! spec.

use std::{sync::Arc, time::Duration};

use pipeline_crds::{
    PipelineDeploymentSpec, contract,
    sink::OutputFormat,
    source::{FormatKind, SourceFormat},
    transform::RepartitionPolicy,
};

use crate::{aggregate::AggregatePlan, event_time::EventTime, field::FieldPath, window::Assigner};

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

/// Everything a slot needs to process records.
#[derive(Clone, Debug)]
pub struct Plan {
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
    /// Watermark bound in ms.
    pub out_of_orderness_ms: i64,
    /// Idleness timeout.
    pub idle_timeout: Option<Duration>,
    /// The window stage; `None` = stateless.
    pub window: Option<WindowStage>,
    /// Output topic.
    pub sink_topic: String,
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
        repartition.then(|| format!("{group}-repartition"))
    }

    /// Compiles a validated spec. `group` names the internal repartition topic;
    /// `source_partitions` are the partition counts of the source topics, in spec order.
    pub fn new(spec: &PipelineDeploymentSpec, group: &str, source_partitions: Vec<usize>) -> Self {
        let window = spec.window.as_ref().and_then(|w| {
            Some(WindowStage {
                assigner: Assigner::from_kind(w.kind()?),
                lateness_ms: i64::try_from(w.allowed_lateness.as_millis()).unwrap_or(i64::MAX),
                aggregates: Arc::new(AggregatePlan::new(&spec.aggregates)),
            })
        });
        Self {
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

//! The runtime's Prometheus metrics (names from `pipeline_crds::contract::metrics`).

use std::sync::atomic::AtomicU64;

use pipeline_crds::contract::metrics::{self as names, registration_name};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::processor::{Counts, FailedStage};

/// Labels of per-slot series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Slot index.
    pub slot: String,
}

/// Labels of per-partition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Slot index.
    pub slot: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: String,
}

/// Labels of per-slot series with a result or reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Slot index.
    pub slot: String,
    /// The outcome.
    pub result: String,
}

/// Labels of dead-letter counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Slot index.
    pub slot: String,
    /// The failed stage.
    pub reason: String,
}

type Seconds = Counter<f64, AtomicU64>;
/// Labels of a topic that keeps the pipeline from starting.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// The topic.
    pub topic: String,
    /// `source`, `sink`, `dead-letter`, `late-data` or `repartition`.
    pub role: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Registers `$family` in `$registry` under the metric name `$name` (without `_total`).
macro_rules! register {
    ($registry:expr, $name:expr, $help:expr, $family:expr) => {
        $registry.register(registration_name($name), $help, $family.clone())
    };
}

/// Labels of a reference table of a process.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// The `spec.enrich` entry's name.
    pub table: String,
}

/// Labels of a table's lookups.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLookupLabels {
    /// PipelineDeployment name.
    pub pipeline: String,
    /// Its namespace.
    pub namespace: String,
    /// Pod.
    pub pod: String,
    /// The `spec.enrich` entry's name.
    pub table: String,
    /// `hit` or `miss`.
    pub result: String,
}

/// The families of the reference tables (`spec.enrich`).
#[derive(Clone, Default)]
pub struct TableMetrics {
    /// Keys whose latest version is a row.
    pub rows: Family<TableLabels, Gauge>,
    /// Versions kept.
    pub versions: Family<TableLabels, Gauge>,
    /// Bytes counted.
    pub bytes: Family<TableLabels, Gauge>,
    /// Records not loaded yet.
    pub lag: Family<TableLabels, Gauge>,
    /// Highest timestamp loaded.
    pub watermark_ms: Family<TableLabels, Gauge>,
    /// Lookups by result.
    pub lookups: Family<TableLookupLabels, Counter>,
    /// Table records rejected.
    pub rejected: Family<TableLabels, Counter>,
}

impl TableMetrics {
    fn register(&self, registry: &mut Registry) {
        register!(
            registry,
            names::TABLE_ROWS,
            "Keys of a reference table whose latest version is a row",
            self.rows
        );
        register!(
            registry,
            names::TABLE_VERSIONS,
            "Versions a reference table keeps, tombstones included",
            self.versions
        );
        register!(
            registry,
            names::TABLE_BYTES,
            "Bytes counted for a reference table's versions (bounded by maxBytes)",
            self.bytes
        );
        register!(
            registry,
            names::TABLE_LAG,
            "Records of a table's topic not loaded yet",
            self.lag
        );
        register!(
            registry,
            names::TABLE_WATERMARK_MS,
            "The highest timestamp a table has loaded, epoch ms",
            self.watermark_ms
        );
        register!(
            registry,
            names::TABLE_LOOKUPS_TOTAL,
            "Lookups of a reference table, by result (hit, miss)",
            self.lookups
        );
        register!(
            registry,
            names::TABLE_RECORDS_REJECTED_TOTAL,
            "Table records that could not be loaded and were dead-lettered or logged",
            self.rejected
        );
    }

    fn example(&self, labels: &TableLabels) {
        for family in [
            &self.rows,
            &self.versions,
            &self.bytes,
            &self.lag,
            &self.watermark_ms,
        ] {
            let _ = family.get_or_create(labels);
        }
        let _ = self.rejected.get_or_create(labels);
        let _ = self.lookups.get_or_create(&TableLookupLabels {
            pipeline: labels.pipeline.clone(),
            namespace: labels.namespace.clone(),
            pod: labels.pod.clone(),
            table: labels.table.clone(),
            result: "<result>".into(),
        });
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~1 h.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    records_in: Family<SlotLabels, Counter>,
    records_out: Family<SlotLabels, Counter>,
    filtered: Family<SlotLabels, Counter>,
    late: Family<SlotLabels, Counter>,
    dead_letter: Family<ReasonLabels, Counter>,
    /// Dead letters dropped because they could not be produced even truncated.
    pub dead_letters_dropped: Family<SlotLabels, Counter>,
    windowed: Family<SlotLabels, Counter>,
    repartitioned: Family<SlotLabels, Counter>,
    /// Busy time per slot.
    pub busy: Family<SlotLabels, Seconds>,
    /// Backpressured time per slot.
    pub backpressured: Family<SlotLabels, Seconds>,
    /// Idle time per slot.
    pub idle: Family<SlotLabels, Seconds>,
    /// High watermark per partition.
    pub end_offset: Family<PartitionLabels, Gauge>,
    /// Next offset to read per partition.
    pub position: Family<PartitionLabels, Gauge>,
    /// End offset − position.
    pub lag: Family<PartitionLabels, Gauge>,
    /// 1 while a partition is paused for want of its state, or held at a record that cannot be
    /// processed yet with no dead-letter topic.
    pub paused: Family<PartitionLabels, Gauge>,
    /// Wall clock − watermark.
    pub watermark_lag: Family<PartitionLabels, FloatGauge>,
    /// Output latency.
    pub output_latency: Family<SlotLabels, Histogram, fn() -> Histogram>,
    /// Keys in window state.
    pub state_keys: Family<SlotLabels, Gauge>,
    /// Assigned partitions.
    pub assigned_partitions: Family<SlotLabels, Gauge>,
    /// Rebalances.
    pub rebalances: Family<SlotLabels, Counter>,
    /// Failed produce requests.
    pub sink_errors: Family<SlotLabels, Counter>,
    /// Kafka client errors.
    pub kafka_errors: Family<SlotLabels, Counter>,
    /// Slot restarts.
    pub slot_restarts: Family<SlotLabels, Counter>,
    /// Panics contained in a slot.
    pub slot_panics: Family<SlotLabels, Counter>,
    /// Checkpoint duration (flush, write, commit).
    pub checkpoint_duration: Family<SlotLabels, Histogram, fn() -> Histogram>,
    /// Bytes written by the last checkpoint.
    pub checkpoint_bytes: Family<SlotLabels, Gauge>,
    /// Checkpoints by result.
    pub checkpoints: Family<ResultLabels, Counter>,
    /// Checkpoints failed in a row, per slot.
    pub checkpoint_failures_in_a_row: Family<SlotLabels, Gauge>,
    /// 1 while a slot's checkpoint is being stored.
    pub checkpoint_in_progress: Family<SlotLabels, Gauge>,
    /// Restore duration per partition.
    pub restore_duration: Family<SlotLabels, Histogram, fn() -> Histogram>,
    /// Failed restores by reason.
    pub restore_failures: Family<ResultLabels, Counter>,
    /// Partitions started with empty state (`onIncompatibleState: reset`), by reason.
    pub state_resets: Family<ResultLabels, Counter>,
    /// Pause per moved partition.
    pub partition_pause: Family<SlotLabels, Histogram, fn() -> Histogram>,
    /// Topics that keep the pipeline from starting.
    pub topics_missing: Family<TopicLabels, Gauge>,
    /// Partitions of each source topic, from the metadata read at start.
    pub source_partitions: Family<TopicLabels, Gauge>,
    /// Rows a non-Kafka sink (ClickHouse) wrote.
    pub sink_rows: Family<SlotLabels, Counter>,
    /// Bytes of the rows it wrote.
    pub sink_bytes: Family<SlotLabels, Counter>,
    /// Duration of one successful insert.
    pub sink_insert_duration: Family<SlotLabels, Histogram, fn() -> Histogram>,
    /// Failed insert attempts (each retried).
    pub sink_insert_failures: Family<SlotLabels, Counter>,
    /// Rows per insert.
    pub sink_batch_rows: Family<SlotLabels, Histogram, fn() -> Histogram>,
    /// The reference tables.
    pub tables: TableMetrics,
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut m = Self::unregistered();
        m.register_records(&mut registry);
        m.register_slots_and_partitions(&mut registry);
        m.register_checkpoint_writes(&mut registry);
        m.register_sink(&mut registry);
        m.register_state(&mut registry);
        m.tables.register(&mut registry);
        m.registry = registry;
        m
    }

    /// Every family, empty and not registered yet.
    fn unregistered() -> Self {
        Self {
            records_in: Family::default(),
            records_out: Family::default(),
            filtered: Family::default(),
            late: Family::default(),
            dead_letter: Family::default(),
            dead_letters_dropped: Family::default(),
            windowed: Family::default(),
            repartitioned: Family::default(),
            busy: Family::default(),
            backpressured: Family::default(),
            idle: Family::default(),
            end_offset: Family::default(),
            position: Family::default(),
            lag: Family::default(),
            paused: Family::default(),
            watermark_lag: Family::default(),
            output_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            state_keys: Family::default(),
            assigned_partitions: Family::default(),
            rebalances: Family::default(),
            sink_errors: Family::default(),
            kafka_errors: Family::default(),
            slot_restarts: Family::default(),
            slot_panics: Family::default(),
            checkpoint_duration: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            checkpoint_bytes: Family::default(),
            checkpoints: Family::default(),
            checkpoint_failures_in_a_row: Family::default(),
            checkpoint_in_progress: Family::default(),
            restore_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            restore_failures: Family::default(),
            state_resets: Family::default(),
            partition_pause: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            topics_missing: Family::default(),
            source_partitions: Family::default(),
            sink_rows: Family::default(),
            sink_bytes: Family::default(),
            sink_insert_duration: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            sink_insert_failures: Family::default(),
            sink_batch_rows: Family::new_with_constructor(batch_histogram as fn() -> Histogram),
            tables: TableMetrics::default(),
            registry: Registry::default(),
        }
    }

    /// Registers the records' path: read, filtered, late, dead-lettered, windowed, re-keyed, and the topics that keep a pipeline from starting.
    fn register_records(&self, registry: &mut Registry) {
        register!(
            registry,
            names::TOPICS_MISSING,
            "1 for each topic that keeps the pipeline from starting (missing, or not fitting)",
            self.topics_missing
        );
        register!(
            registry,
            names::SOURCE_PARTITIONS,
            "Partitions of a source topic, from the metadata read at start",
            self.source_partitions
        );
        register!(
            registry,
            names::RECORDS_IN_TOTAL,
            "Records read from the source topics",
            self.records_in
        );
        register!(
            registry,
            names::RECORDS_OUT_TOTAL,
            "Records written to the sink",
            self.records_out
        );
        register!(
            registry,
            names::RECORDS_FILTERED_TOTAL,
            "Records dropped by the filter",
            self.filtered
        );
        register!(
            registry,
            names::RECORDS_LATE_TOTAL,
            "Records later than the allowed lateness",
            self.late
        );
        register!(
            registry,
            names::RECORDS_DEAD_LETTER_TOTAL,
            "Records that could not be processed",
            self.dead_letter
        );
        register!(
            registry,
            names::DEAD_LETTERS_DROPPED_TOTAL,
            "Dead letters that could not be produced even truncated, skipped",
            self.dead_letters_dropped
        );
        register!(
            registry,
            names::RECORDS_WINDOWED_TOTAL,
            "Records accepted into windows",
            self.windowed
        );
        register!(
            registry,
            names::RECORDS_REPARTITIONED_TOTAL,
            "Records re-keyed through the repartition topic",
            self.repartitioned
        );
    }

    /// Registers each slot's time, partitions, lag and watermarks, its rebalances, errors, restarts and panics.
    fn register_slots_and_partitions(&self, registry: &mut Registry) {
        register!(
            registry,
            names::BUSY_SECONDS_TOTAL,
            "Seconds a slot spent processing records",
            self.busy
        );
        register!(
            registry,
            names::BACKPRESSURED_SECONDS_TOTAL,
            "Seconds a slot spent blocked on the sink",
            self.backpressured
        );
        register!(
            registry,
            names::IDLE_SECONDS_TOTAL,
            "Seconds a slot spent waiting for input",
            self.idle
        );
        register!(
            registry,
            names::PARTITION_END_OFFSET,
            "High watermark of a source partition",
            self.end_offset
        );
        register!(
            registry,
            names::PARTITION_POSITION,
            "Next offset the slot reads from a partition",
            self.position
        );
        register!(
            registry,
            names::CONSUMER_LAG_RECORDS,
            "End offset minus position",
            self.lag
        );
        register!(
            registry,
            names::PARTITION_PAUSED,
            "1 while a source partition is paused: its state could not be restored, or it is held at a record that cannot be processed yet and there is no dead-letter topic",
            self.paused
        );
        register!(
            registry,
            names::WATERMARK_LAG_SECONDS,
            "Wall clock minus the partition's watermark",
            self.watermark_lag
        );
        register!(
            registry,
            names::OUTPUT_LATENCY_SECONDS,
            "Window end (or record time) to output sent",
            self.output_latency
        );
        register!(
            registry,
            names::STATE_KEYS,
            "Keys with open windows",
            self.state_keys
        );
        register!(
            registry,
            names::ASSIGNED_PARTITIONS,
            "Partitions assigned to the slot",
            self.assigned_partitions
        );
        register!(
            registry,
            names::REBALANCES_TOTAL,
            "Consumer-group rebalances seen by the slot",
            self.rebalances
        );
        register!(
            registry,
            names::SINK_ERRORS_TOTAL,
            "Produce requests that failed for good",
            self.sink_errors
        );
        register!(
            registry,
            names::KAFKA_ERRORS_TOTAL,
            "Errors reported by the Kafka client",
            self.kafka_errors
        );
        register!(
            registry,
            names::SLOT_RESTARTS_TOTAL,
            "Slot restarts after an error",
            self.slot_restarts
        );
        register!(
            registry,
            names::SLOT_PANICS_TOTAL,
            "Panics contained in a slot (each also restarts it)",
            self.slot_panics
        );
    }

    /// Registers checkpoint writes: their duration, size and failures in a row.
    fn register_checkpoint_writes(&self, registry: &mut Registry) {
        register!(
            registry,
            names::CHECKPOINT_DURATION_SECONDS,
            "Duration of a checkpoint: flush, snapshot writes (off the slot thread), offset commit",
            self.checkpoint_duration
        );
        register!(
            registry,
            names::CHECKPOINT_BYTES,
            "Snapshot bytes written by the slot's last checkpoint",
            self.checkpoint_bytes
        );
        register!(
            registry,
            names::CHECKPOINT_FAILURES_IN_A_ROW,
            "Checkpoints failed in a row (checkpoint.tolerableFailures more restart the slot)",
            self.checkpoint_failures_in_a_row
        );
    }

    /// Registers a non-Kafka sink (ClickHouse): rows, bytes, inserts and their failures.
    fn register_sink(&self, registry: &mut Registry) {
        register!(
            registry,
            names::SINK_ROWS_TOTAL,
            "Rows the sink (ClickHouse) acknowledged",
            self.sink_rows
        );
        register!(
            registry,
            names::SINK_BYTES_TOTAL,
            "Bytes of the rows the sink (ClickHouse) acknowledged",
            self.sink_bytes
        );
        register!(
            registry,
            names::SINK_INSERT_DURATION_SECONDS,
            "Duration of one successful insert into the sink (ClickHouse)",
            self.sink_insert_duration
        );
        register!(
            registry,
            names::SINK_INSERT_FAILURES_TOTAL,
            "Failed insert attempts into the sink (ClickHouse); each is retried with backoff",
            self.sink_insert_failures
        );
        register!(
            registry,
            names::SINK_BATCH_ROWS,
            "Rows per insert into the sink (ClickHouse)",
            self.sink_batch_rows
        );
    }

    /// Registers state: checkpoints in progress and by result, restores, resets and the pause of a moved partition.
    fn register_state(&self, registry: &mut Registry) {
        register!(
            registry,
            names::CHECKPOINT_IN_PROGRESS,
            "1 while a checkpoint's snapshots are being stored; the slot processes on meanwhile",
            self.checkpoint_in_progress
        );
        register!(
            registry,
            names::STATE_RESETS_TOTAL,
            "Partitions started with empty state (checkpoint.onIncompatibleState: reset)",
            self.state_resets
        );
        register!(
            registry,
            names::CHECKPOINTS_TOTAL,
            "Checkpoints by result (success or failure)",
            self.checkpoints
        );
        register!(
            registry,
            names::RESTORE_DURATION_SECONDS,
            "Duration of restoring one partition's state",
            self.restore_duration
        );
        register!(
            registry,
            names::RESTORE_FAILURES_TOTAL,
            "Partitions whose state could not be restored (they are paused)",
            self.restore_failures
        );
        register!(
            registry,
            names::PARTITION_PAUSE_SECONDS,
            "Per moved partition: its last snapshot by the previous owner to its restore",
            self.partition_pause
        );
    }

    /// Labels of a slot with a result or reason.
    pub fn result_labels(slot: &SlotLabels, result: &str) -> ResultLabels {
        ResultLabels {
            pipeline: slot.pipeline.clone(),
            namespace: slot.namespace.clone(),
            pod: slot.pod.clone(),
            slot: slot.slot.clone(),
            result: result.to_owned(),
        }
    }

    /// Every family with one series of placeholder labels: what the metrics reference
    /// (docs/metrics.md, checked by a test) is generated from, labels included.
    pub fn example() -> Self {
        let m = Self::new();
        let slot = SlotLabels {
            pipeline: "<pipeline>".into(),
            namespace: "<namespace>".into(),
            pod: "<pod>".into(),
            slot: "<slot>".into(),
        };
        let partition = Self::partition_labels(&slot, "<topic>", 0);
        let result = Self::result_labels(&slot, "<result>");
        let reason = ReasonLabels {
            pipeline: slot.pipeline.clone(),
            namespace: slot.namespace.clone(),
            pod: slot.pod.clone(),
            slot: slot.slot.clone(),
            reason: "<stage>".into(),
        };
        let topic = TopicLabels {
            pipeline: slot.pipeline.clone(),
            namespace: slot.namespace.clone(),
            pod: slot.pod.clone(),
            topic: "<topic>".into(),
            role: "<role>".into(),
        };
        for family in [
            &m.records_in,
            &m.records_out,
            &m.filtered,
            &m.late,
            &m.dead_letters_dropped,
            &m.windowed,
            &m.repartitioned,
            &m.rebalances,
            &m.sink_errors,
            &m.kafka_errors,
            &m.slot_restarts,
            &m.slot_panics,
            &m.sink_rows,
            &m.sink_bytes,
            &m.sink_insert_failures,
        ] {
            let _ = family.get_or_create(&slot);
        }
        for family in [&m.busy, &m.backpressured, &m.idle] {
            let _ = family.get_or_create(&slot);
        }
        for family in [
            &m.state_keys,
            &m.assigned_partitions,
            &m.checkpoint_bytes,
            &m.checkpoint_failures_in_a_row,
            &m.checkpoint_in_progress,
        ] {
            let _ = family.get_or_create(&slot);
        }
        for family in [
            &m.output_latency,
            &m.checkpoint_duration,
            &m.restore_duration,
            &m.partition_pause,
            &m.sink_insert_duration,
            &m.sink_batch_rows,
        ] {
            let _ = family.get_or_create(&slot);
        }
        for family in [&m.end_offset, &m.position, &m.lag, &m.paused] {
            let _ = family.get_or_create(&partition);
        }
        let _ = m.watermark_lag.get_or_create(&partition);
        for family in [&m.checkpoints, &m.restore_failures, &m.state_resets] {
            let _ = family.get_or_create(&result);
        }
        let _ = m.dead_letter.get_or_create(&reason);
        for family in [&m.topics_missing, &m.source_partitions] {
            let _ = family.get_or_create(&topic);
        }
        m.tables.example(&TableLabels {
            pipeline: slot.pipeline.clone(),
            namespace: slot.namespace.clone(),
            pod: slot.pod.clone(),
            table: "<table>".into(),
        });
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Adds the growth of `now` over `before` to the record counters of a slot.
    pub fn add_counts(&self, labels: &SlotLabels, before: &Counts, now: &Counts) {
        let add = |family: &Family<SlotLabels, Counter>, a: u64, b: u64| {
            if b > a {
                family.get_or_create(labels).inc_by(b - a);
            }
        };
        add(&self.records_in, before.records_in, now.records_in);
        add(&self.records_out, before.records_out, now.records_out);
        add(&self.filtered, before.filtered, now.filtered);
        add(&self.late, before.late, now.late);
        add(&self.windowed, before.windowed, now.windowed);
        add(&self.repartitioned, before.repartitioned, now.repartitioned);
    }

    /// Counts one dead-lettered record.
    pub fn dead_lettered(&self, labels: &SlotLabels, stage: FailedStage) {
        self.dead_lettered_n(labels, stage, 1);
    }

    /// Counts `n` dead letters of a slot at `stage`.
    pub fn dead_lettered_n(&self, labels: &SlotLabels, stage: FailedStage, n: u64) {
        self.dead_letter
            .get_or_create(&ReasonLabels {
                pipeline: labels.pipeline.clone(),
                namespace: labels.namespace.clone(),
                pod: labels.pod.clone(),
                slot: labels.slot.clone(),
                reason: stage.as_str().to_owned(),
            })
            .inc_by(n);
    }

    /// Labels of one partition of a slot.
    pub fn partition_labels(slot: &SlotLabels, topic: &str, partition: i32) -> PartitionLabels {
        PartitionLabels {
            pipeline: slot.pipeline.clone(),
            namespace: slot.namespace.clone(),
            pod: slot.pod.clone(),
            slot: slot.slot.clone(),
            topic: topic.to_owned(),
            partition: partition.to_string(),
        }
    }

    /// Drops the series that say a slot is alive (busy, backpressured and idle time, assigned
    /// partitions, state keys) when it stops for good in a rescale: the autoscaler counts slots
    /// by them. Record counters stay (they are totals of the process).
    pub fn forget_slot(&self, labels: &SlotLabels) {
        self.busy.remove(labels);
        self.backpressured.remove(labels);
        self.idle.remove(labels);
        self.assigned_partitions.remove(labels);
        self.state_keys.remove(labels);
    }

    /// Drops the per-partition series of a partition the slot gave up.
    pub fn forget_partition(&self, labels: &PartitionLabels) {
        self.end_offset.remove(labels);
        self.position.remove(labels);
        self.lag.remove(labels);
        self.paused.remove(labels);
        self.watermark_lag.remove(labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_contract_names() {
        let m = Metrics::new();
        let slot = SlotLabels {
            pipeline: "p".into(),
            namespace: "n".into(),
            pod: "pod-0".into(),
            slot: "0".into(),
        };
        let after = Counts {
            records_in: 3,
            records_out: 2,
            filtered: 1,
            ..Counts::default()
        };
        m.add_counts(&slot, &Counts::default(), &after);
        m.busy.get_or_create(&slot).inc_by(0.5);
        m.dead_lettered(&slot, FailedStage::Decode);
        let p = Metrics::partition_labels(&slot, "in", 4);
        m.end_offset.get_or_create(&p).set(10);
        let text = m.encode();
        for line in [
            r#"pipeline_records_in_total{pipeline="p",namespace="n",pod="pod-0",slot="0"} 3"#,
            r#"pipeline_records_out_total{pipeline="p",namespace="n",pod="pod-0",slot="0"} 2"#,
            r#"pipeline_busy_seconds_total{pipeline="p",namespace="n",pod="pod-0",slot="0"} 0.5"#,
            r#"pipeline_records_dead_letter_total{pipeline="p",namespace="n",pod="pod-0",slot="0",reason="decode"} 1"#,
            r#"pipeline_partition_end_offset{pipeline="p",namespace="n",pod="pod-0",slot="0",topic="in",partition="4"} 10"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.forget_partition(&p);
        assert!(!m.encode().contains("pipeline_partition_end_offset{"));
    }
}

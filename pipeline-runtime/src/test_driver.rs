//! A broker-free test driver, as Kafka Streams' `TopologyTestDriver`: a manifest and records in;
//! output records, dead letters and late records out, with time under the test's control.
//!
//! It runs what a slot runs on each record (the validated pipeline compiled into its plan, the
//! processor: decoding, the filter, the key, event time and watermarks, windows and aggregates)
//! and stands in for the broker where the pipeline talks to itself: re-keyed records and
//! watermark markers go to the repartition topic's partitions (a record by the CRC-32 of its key,
//! a marker to every partition) and are read back in order, as stage two would read them. What
//! it leaves out: Kafka, the sink's encoding for Avro output and ClickHouse (rows come out as
//! the Kafka sink's JSON), checkpoints, and Schema Registry lookups (JSON, raw and inline-schema
//! Avro sources only).
//!
//! ```
//! use pipeline_runtime::test_driver::TestDriver;
//!
//! let manifest = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: counts}\nspec:\n  kafka: {bootstrapServers: 'unused:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  transform: {keyBy: device, timestamp: {field: ts}, sourceKeyed: true}\n  window: {tumbling: {size: 10s}}\n  aggregates: [{name: n, function: count}]\n";
//! let mut driver = TestDriver::new(manifest, &[1]).unwrap();
//! driver.pipe("in", 0, None, r#"{"device": "a", "ts": 1000}"#).unwrap();
//! driver.pipe("in", 0, None, r#"{"device": "a", "ts": 25000}"#).unwrap();
//! let windows = driver.outputs();
//! assert_eq!(windows[0].value["n"], 1);
//! ```

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use pipeline_crds::{
    ValidationErrors,
    valid::{AnyInstallation, validate_pipeline},
};
use serde_json::Value;

use crate::{
    decode::DecodeError,
    enrich::Tables,
    plan::{Plan, TopicIndex},
    processor::{Emit, InRecord, Processor, ProcessorError},
    sink::encode::row_json,
};

/// Why the driver cannot start or take a record.
#[derive(Debug, thiserror::Error)]
pub enum TestDriverError {
    /// The manifest is not a PipelineDeployment.
    #[error("the manifest: {0}")]
    Manifest(#[from] pipeline_crds::manifest::ManifestError),
    /// The pipeline does not validate.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The processor cannot be built (a filter or schema that does not compile).
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// The topic is not a source topic of the pipeline.
    #[error("{0} is not a source topic of the pipeline")]
    UnknownTopic(String),
    /// A record failed for a reason that may pass (a Schema Registry lookup): the slot would
    /// read it again.
    #[error("the record was not consumed: {0}")]
    NotConsumed(#[from] DecodeError),
}

/// An output record as the Kafka sink writes it (JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputRecord {
    /// The record's key.
    pub key: Option<String>,
    /// The record's value.
    pub value: Value,
}

/// A record sent to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// The stage it failed at (`decode`, `filter`, `key`, `timestamp`, ...).
    pub stage: &'static str,
    /// Why.
    pub error: String,
    /// The original value.
    pub value: Option<Vec<u8>>,
}

/// A record later than the allowed lateness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateRecord {
    /// The original value.
    pub value: Option<Vec<u8>>,
    /// The window it missed, `[start, end)` in epoch ms.
    pub window: (i64, i64),
    /// How late it was, ms.
    pub lateness_ms: i64,
}

/// A record on the stand-in repartition topic.
struct Internal {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
    upstream: Option<(u32, i64)>,
    marker: Option<(u32, i64)>,
}

/// One pipeline, driven record by record.
pub struct TestDriver {
    plan: Arc<Plan>,
    processor: Processor,
    /// Processing time: `started` plus what the test advanced.
    started: Instant,
    elapsed: Duration,
    /// The wall clock at `started`, ms since the epoch.
    wall_start_ms: i64,
    next_offsets: HashMap<(TopicIndex, i32), i64>,
    internal: VecDeque<Internal>,
    outputs: Vec<OutputRecord>,
    dead_letters: Vec<DeadLetterRecord>,
    late: Vec<LateRecord>,
    /// The reference tables (`spec.enrich`), loaded by [`Self::table`].
    tables: Arc<Tables>,
}

impl TestDriver {
    /// A driver for `manifest` (YAML) whose source topics have `source_partitions` partitions
    /// (in spec order). The wall clock starts at 2026-01-01T00:00:00Z.
    pub fn new(manifest: &str, source_partitions: &[usize]) -> Result<Self, TestDriverError> {
        let pd = pipeline_crds::manifest::from_yaml(manifest, "test driver manifest")?;
        let pipeline = validate_pipeline(&pd, &AnyInstallation)?;
        let group = pipeline_crds::contract::consumer_group(
            pipeline.spec(),
            pipeline.namespace(),
            pipeline.name(),
        );
        let plan = Arc::new(Plan::new(&pipeline, &group, source_partitions.to_vec()));
        let tables = Arc::new(Tables::new(&plan.enrich));
        Ok(Self {
            processor: Processor::new(plan.clone())?.with_tables(tables.clone()),
            tables,
            plan,
            started: Instant::now(),
            elapsed: Duration::ZERO,
            wall_start_ms: 1_767_225_600_000,
            next_offsets: HashMap::new(),
            internal: VecDeque::new(),
            outputs: Vec::new(),
            dead_letters: Vec::new(),
            late: Vec::new(),
        })
    }

    /// Loads a record of the `spec.enrich` table `name` (as its reader would: decoded, keyed,
    /// timed, its fields picked); `value` `None` is a tombstone. Records piped afterwards see
    /// it: the table counts as read up to now. A malformed record is refused with why.
    pub fn table(
        &mut self,
        name: &str,
        key: Option<&str>,
        value: Option<&str>,
        timestamp_ms: Option<i64>,
    ) -> Result<(), String> {
        self.table_bytes(name, key, value.map(str::as_bytes), timestamp_ms)
    }

    /// [`Self::table`] with the value's bytes (an Avro table's datums).
    pub fn table_bytes(
        &mut self,
        name: &str,
        key: Option<&str>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> Result<(), String> {
        let table = (self.tables.iter())
            .find(|t| t.plan.name == name)
            .ok_or_else(|| format!("the pipeline joins no table {name}"))?;
        let mut decoder =
            crate::decode::Decoder::new(&table.plan.decoding).map_err(|e| e.to_string())?;
        let record = (table.plan)
            .table_record(&mut decoder, key.map(str::as_bytes), value, timestamp_ms)
            .map_err(|e| e.to_string())?;
        if !table.load([record]) {
            return Err("past maxBytes".into());
        }
        table.caught_up(self.now());
        Ok(())
    }

    /// Processing time now.
    fn now(&self) -> Instant {
        self.started + self.elapsed
    }

    /// The wall clock now, ms since the epoch.
    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_start_ms + i64::try_from(self.elapsed.as_millis()).unwrap_or(i64::MAX)
    }

    /// Sets the wall clock (what `processingTime` timestamps and `maxAheadOfWallClock` read).
    pub fn set_wall_clock_ms(&mut self, ms: i64) {
        self.wall_start_ms = ms - (self.wall_clock_ms() - self.wall_start_ms);
    }

    /// Reads `value` (with `key`, and no Kafka timestamp) from `partition` of source `topic`, at
    /// the partition's next offset, and everything it causes downstream.
    pub fn pipe(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: &str,
    ) -> Result<(), TestDriverError> {
        self.pipe_at(topic, partition, key, value.as_bytes(), None)
    }

    /// [`Self::pipe`] with raw bytes and a Kafka timestamp.
    pub fn pipe_at(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<(), TestDriverError> {
        let index = self
            .plan
            .topic_index(topic)
            .filter(|&i| !self.plan.is_repartition_topic(i))
            .ok_or_else(|| TestDriverError::UnknownTopic(topic.to_owned()))?;
        let offset = self.take_offset(index, partition);
        let rec = InRecord {
            topic: index,
            partition,
            offset,
            key: key.map(str::as_bytes),
            payload: Some(value),
            timestamp_ms,
            upstream: None,
            marker: None,
        };
        let mut emits = Vec::new();
        let (now, wall_ms) = (self.now(), self.wall_clock_ms());
        self.processor.process(&rec, now, wall_ms, &mut emits)?;
        // Nothing is left to read behind it: the partition is caught up (idleness counts).
        self.processor.set_caught_up(index, partition, true);
        self.route(emits);
        self.drain_internal();
        self.tick();
        Ok(())
    }

    /// Moves processing time and the wall clock on by `by`, then runs a tick.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        self.tick();
    }

    /// The periodic work a slot does every 100 ms: idle partitions, and the watermark markers
    /// of a re-keyed pipeline. The driver ticks after every record (at the same instant) and on
    /// [`Self::advance`].
    fn tick(&mut self) {
        let mut emits = Vec::new();
        self.processor.on_tick(self.now(), &mut emits);
        self.route(emits);
        self.drain_internal();
    }

    /// The output records since the last call, in order.
    pub fn outputs(&mut self) -> Vec<OutputRecord> {
        std::mem::take(&mut self.outputs)
    }

    /// The dead letters since the last call, in order.
    pub fn dead_letters(&mut self) -> Vec<DeadLetterRecord> {
        std::mem::take(&mut self.dead_letters)
    }

    /// The late records since the last call, in order.
    pub fn late_records(&mut self) -> Vec<LateRecord> {
        std::mem::take(&mut self.late)
    }

    fn take_offset(&mut self, topic: TopicIndex, partition: i32) -> i64 {
        let next = self.next_offsets.entry((topic, partition)).or_insert(0);
        let offset = *next;
        *next += 1;
        offset
    }

    /// Sorts what the processor emitted: outputs, side outputs, and records for the repartition
    /// topic.
    fn route(&mut self, emits: Vec<Emit>) {
        let partitions = self.plan.repartition_partitions().max(1);
        for emit in emits {
            match emit {
                Emit::Output(row) => {
                    let (key, value) = row_json(self.plan.key_field(), &row);
                    self.outputs.push(OutputRecord {
                        key: key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                        value: serde_json::from_slice(&value).unwrap_or(Value::Null),
                    });
                }
                Emit::Repartition {
                    key,
                    value,
                    timestamp_ms,
                    upstream,
                    upstream_offset,
                } => {
                    let bucket = crc32fast::hash(&key) % partitions.unsigned_abs();
                    self.internal.push_back(Internal {
                        partition: i32::try_from(bucket).unwrap_or(0),
                        key: Some(key),
                        value: Some(value),
                        timestamp_ms: Some(timestamp_ms),
                        upstream: Some((upstream, upstream_offset)),
                        marker: None,
                    });
                }
                Emit::WatermarkMarker {
                    upstream,
                    watermark,
                } => {
                    for partition in 0..partitions {
                        self.internal.push_back(Internal {
                            partition,
                            key: None,
                            value: None,
                            timestamp_ms: None,
                            upstream: None,
                            marker: Some((upstream, watermark)),
                        });
                    }
                }
                Emit::DeadLetter {
                    value,
                    stage,
                    error,
                    ..
                } => self.dead_letters.push(DeadLetterRecord {
                    stage: stage.as_str(),
                    error,
                    value,
                }),
                Emit::Late {
                    value,
                    window,
                    lateness_ms,
                    ..
                } => self.late.push(LateRecord {
                    value,
                    window,
                    lateness_ms,
                }),
            }
        }
    }

    /// Reads the repartition topic's records in the order they were written.
    fn drain_internal(&mut self) {
        let Some(topic) = self
            .plan
            .repartition_topic
            .as_deref()
            .and_then(|t| self.plan.topic_index(t))
        else {
            return;
        };
        while let Some(record) = self.internal.pop_front() {
            let offset = self.take_offset(topic, record.partition);
            let rec = InRecord {
                topic,
                partition: record.partition,
                offset,
                key: record.key.as_deref(),
                payload: record.value.as_deref(),
                timestamp_ms: record.timestamp_ms,
                upstream: record.upstream,
                marker: record.marker,
            };
            let mut emits = Vec::new();
            let (now, wall_ms) = (self.now(), self.wall_clock_ms());
            // Stage two reads only what stage one wrote: it never waits on a registry.
            if self
                .processor
                .process(&rec, now, wall_ms, &mut emits)
                .is_ok()
            {
                self.route(emits);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: t}\nspec:\n  kafka: {bootstrapServers: 'unused:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  deadLetter: {topic: dlq}\n  lateData: {topic: late}\n";

    fn windowed(transform: &str) -> String {
        format!(
            "{HEADER}  transform: {{keyBy: device, timestamp: {{field: ts}}, watermark: {{maxOutOfOrderness: 1s}}, {transform}}}\n  window: {{tumbling: {{size: 10s}}, allowedLateness: 2s}}\n  aggregates: [{{name: n, function: count}}, {{name: total, function: sum, field: v}}]\n"
        )
    }

    fn reading(device: &str, ts: i64, v: i64) -> String {
        format!(r#"{{"device": "{device}", "ts": {ts}, "v": {v}}}"#)
    }

    #[test]
    fn a_window_closes_when_the_watermark_passes_its_end_and_late_records_go_aside() {
        let mut driver = TestDriver::new(&windowed("sourceKeyed: true"), &[1]).unwrap();
        for (device, ts, v) in [("a", 1_000, 1), ("b", 2_000, 5), ("a", 9_000, 2)] {
            driver.pipe("in", 0, None, &reading(device, ts, v)).unwrap();
        }
        assert!(driver.outputs().is_empty(), "no window has closed yet");
        driver
            .pipe("in", 0, None, &reading("a", 14_000, 7))
            .unwrap();
        let mut closed: Vec<(String, i64, f64)> = driver
            .outputs()
            .into_iter()
            .map(|o| {
                let field = |name: &str| o.value[name].clone();
                (
                    field("device").as_str().unwrap_or_default().to_owned(),
                    field("n").as_i64().unwrap_or_default(),
                    field("total").as_f64().unwrap_or_default(),
                )
            })
            .collect();
        closed.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(closed, [("a".to_owned(), 2, 3.0), ("b".to_owned(), 1, 5.0)]);
        // Past the window's end and its 2 s of lateness (watermark 13 s, then 16 s).
        driver
            .pipe("in", 0, None, &reading("a", 17_000, 1))
            .unwrap();
        driver.pipe("in", 0, None, &reading("a", 3_000, 1)).unwrap();
        let late = driver.late_records();
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!(late[0].window, (0, 10_000));
    }

    #[test]
    fn undecodable_and_keyless_records_are_dead_lettered_with_their_stage() {
        let mut driver = TestDriver::new(&windowed("sourceKeyed: true"), &[1]).unwrap();
        driver.pipe("in", 0, None, "not json").unwrap();
        driver.pipe("in", 0, None, r#"{"ts": 1000}"#).unwrap();
        let stages: Vec<&str> = driver.dead_letters().iter().map(|d| d.stage).collect();
        assert_eq!(stages, ["decode", "key"]);
    }

    #[test]
    fn a_re_keyed_pipeline_goes_through_the_repartition_stage_and_gives_the_same_windows() {
        // The same records read in order from one partition of a topic keyed by device.
        let direct = {
            let mut driver = TestDriver::new(&windowed("sourceKeyed: true"), &[1]).unwrap();
            for (_, device, ts) in RECORDS {
                driver.pipe("in", 0, None, &reading(device, ts, 1)).unwrap();
            }
            sorted(driver.outputs())
        };
        let mut driver = TestDriver::new(&windowed("repartition: always"), &[2]).unwrap();
        feed_both_partitions(&mut driver);
        let rekeyed = sorted(driver.outputs());
        assert!(!rekeyed.is_empty());
        assert_eq!(rekeyed, direct);
    }

    /// (partition, device, event time): each device on both partitions.
    const RECORDS: [(i32, &str, i64); 6] = [
        (0, "a", 1_000),
        (1, "a", 2_000),
        (1, "b", 3_000),
        (0, "b", 4_000),
        (0, "z", 30_000),
        (1, "z", 30_000),
    ];

    fn feed_both_partitions(driver: &mut TestDriver) {
        for (partition, device, ts) in RECORDS {
            driver
                .pipe("in", partition, None, &reading(device, ts, 1))
                .unwrap();
        }
    }

    fn sorted(mut outputs: Vec<OutputRecord>) -> Vec<(Option<String>, String)> {
        let mut rows: Vec<_> = outputs
            .drain(..)
            .map(|o| (o.key, o.value.to_string()))
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn an_idle_partition_advances_its_watermark_by_processing_time_once_time_is_advanced() {
        // Re-keyed: stage two's watermark is the lowest of the source partitions'.
        let manifest =
            windowed("repartition: always, watermark: {maxOutOfOrderness: 1s, idleTimeout: 5s}")
                .replace("watermark: {maxOutOfOrderness: 1s}, ", "");
        let mut driver = TestDriver::new(&manifest, &[2]).unwrap();
        driver.pipe("in", 0, None, &reading("a", 1_000, 1)).unwrap();
        driver.pipe("in", 1, None, &reading("a", 1_500, 1)).unwrap();
        driver
            .pipe("in", 0, None, &reading("a", 20_000, 1))
            .unwrap();
        let early = driver.outputs();
        assert!(
            early.is_empty(),
            "partition 1 holds the watermark: {early:?}"
        );
        // Idle after 5 s; then its watermark is its last one plus the quiet time (1.5 s − 1 s
        // of disorder + 12 s), past the window's end.
        driver.advance(Duration::from_secs(3));
        assert!(driver.outputs().is_empty(), "not idle yet");
        driver.advance(Duration::from_secs(9));
        driver
            .pipe("in", 0, None, &reading("a", 21_000, 1))
            .unwrap();
        let windows = driver.outputs();
        assert_eq!(windows.len(), 1, "partition 1 went idle: {windows:?}");
        assert_eq!(windows[0].value["n"], 2);
    }

    #[test]
    fn a_topic_the_pipeline_does_not_read_is_refused_by_name() {
        let mut driver = TestDriver::new(&windowed("sourceKeyed: true"), &[1]).unwrap();
        let error = driver.pipe("elsewhere", 0, None, "{}").unwrap_err();
        assert!(error.to_string().contains("elsewhere"), "{error}");
        let invalid = TestDriver::new(&HEADER.replace("name: t", "name: Bad_Name"), &[1]);
        assert!(matches!(invalid, Err(TestDriverError::Invalid(_))));
    }
}

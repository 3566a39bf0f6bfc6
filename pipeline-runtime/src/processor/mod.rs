//! What one slot does with each record: decode → filter → (project | key → event time →
//! repartition | window → aggregate), producing emits for the sink. Kafka-free: the slot feeds it
//! records and sends what it emits.
//!
//! State is owned per (topic, partition), so a partition's state can be handed over on its own.

use std::{borrow::Cow, collections::HashMap, sync::Arc, time::Instant};

use serde_json::Value;

mod lifecycle;

use crate::{
    aggregate::Arrival,
    checkpoint::snapshot::{ClockState, PartitionSnapshot},
    decode::{DecodeError, Decoder, DecoderConfigError, Fields, decode_json_fields},
    enrich::{Joined, JoinedRows, Tables, WithJoined},
    event_time::EventTime,
    field::{FieldSource, key_text},
    filter::{Filter, FilterError},
    plan::{Plan, TopicIndex},
    projection::Projection,
    row::Row,
    watermark::{IDLE_MARKER, NO_WATERMARK, UpstreamWatermarks, Watermark},
    window::{Added, PartitionWindows, RestoreError, WindowResult},
};

/// A record read from Kafka.
#[derive(Clone, Copy, Debug)]
pub struct InRecord<'a> {
    /// Index of the topic in [`Plan::subscribed_topics`].
    pub topic: TopicIndex,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub payload: Option<&'a [u8]>,
    /// Kafka timestamp, epoch ms.
    pub timestamp_ms: Option<i64>,
    /// On repartitioned records: (upstream partition id, upstream offset).
    pub upstream: Option<(u32, i64)>,
    /// On watermark markers: (upstream partition id, its watermark).
    pub marker: Option<(u32, i64)>,
}

/// Where a side-output record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRef {
    /// Topic index.
    pub topic: TopicIndex,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The stage at which a record was rejected (the `reason` label and the `sluice.stage` header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailedStage {
    /// Value not decodable.
    Decode,
    /// Filter evaluation failed.
    Filter,
    /// Key field missing.
    Key,
    /// Event time missing or malformed.
    Timestamp,
    /// An aggregate input had the wrong type.
    Aggregate,
    /// A window result could not be written in the output format.
    Encode,
    /// Processing the record made the slot panic (a bug); its replay is dead-lettered.
    Panic,
    /// An output of the record (sink, repartition or late-data record) does not fit in one Kafka
    /// message (`message.max.bytes`).
    Output,
    /// A reference table's join refused it (`onMissing: deadLetter`, a clashing field).
    Enrich,
}

impl FailedStage {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Filter => "filter",
            Self::Key => "key",
            Self::Timestamp => "timestamp",
            Self::Aggregate => "aggregate",
            Self::Encode => "encode",
            Self::Panic => "panic",
            Self::Output => "output",
            Self::Enrich => "enrich",
        }
    }
}

/// Something the slot must send.
#[derive(Clone, Debug, PartialEq)]
pub enum Emit {
    /// An output row, for the sink to encode and write.
    Output(Row),
    /// A re-keyed record for the internal repartition topic.
    Repartition {
        /// The key text.
        key: Vec<u8>,
        /// The record as JSON.
        value: Vec<u8>,
        /// Its event time, carried as the Kafka timestamp.
        timestamp_ms: i64,
        /// Its source partition's id.
        upstream: u32,
        /// Its source offset.
        upstream_offset: i64,
    },
    /// A source partition's watermark, for every partition of the repartition topic.
    WatermarkMarker {
        /// The source partition's id.
        upstream: u32,
        /// Its watermark.
        watermark: i64,
    },
    /// A record that could not be processed.
    DeadLetter {
        /// Original key.
        key: Option<Vec<u8>>,
        /// Original value.
        value: Option<Vec<u8>>,
        /// Failed stage.
        stage: FailedStage,
        /// Error text.
        error: String,
        /// Origin (`None` for a window result that could not be encoded: it has no one source).
        source: Option<SourceRef>,
    },
    /// A record later than the allowed lateness.
    Late {
        /// Original key.
        key: Option<Vec<u8>>,
        /// Original value.
        value: Option<Vec<u8>>,
        /// Origin.
        source: SourceRef,
        /// The window it missed.
        window: (i64, i64),
        /// How late, ms.
        lateness_ms: i64,
    },
}

/// Record counts of one slot, in the sense of the metric contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read from the source topics.
    pub records_in: u64,
    /// Records written to the sink (stateless) or window results written (windowed).
    pub records_out: u64,
    /// Records dropped by the filter.
    pub filtered: u64,
    /// Records later than allowed lateness.
    pub late: u64,
    /// Records dead-lettered.
    pub dead_letter: u64,
    /// Records accepted into windows.
    pub windowed: u64,
    /// Records forwarded to the repartition topic.
    pub repartitioned: u64,
    /// Repartitioned records read twice (after a crash upstream) and skipped.
    pub duplicates: u64,
}

/// How a partition's event time advances.
enum EventClock {
    /// From its own records (source partitions).
    Local(Watermark),
    /// From its upstream partitions' markers (repartition-topic partitions), with the highest
    /// upstream offset seen per upstream partition for de-duplication.
    Upstream(UpstreamWatermarks, HashMap<u32, i64>),
}

impl EventClock {
    fn current(&self) -> i64 {
        match self {
            Self::Local(w) => w.current(),
            Self::Upstream(u, _) => u.current(),
        }
    }
}

struct PartitionState {
    /// Next offset to read; `None` until a record was read (nothing to commit yet).
    next_offset: Option<i64>,
    /// Whether the consumer has read everything the partition holds (lag 0): only then can
    /// quiet time count as idleness. A partition with a backlog is never idle.
    caught_up: bool,
    clock: EventClock,
    windows: Option<PartitionWindows>,
    /// The last watermark announced downstream (stage one of a repartitioned pipeline);
    /// [`IDLE_MARKER`] once idleness was announced.
    announced: Option<i64>,
    /// What the last checkpoint of this partition saw; `None` before the first.
    checkpointed: Option<Progress>,
}

/// How far a partition's state has come: any change of state moves one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    next_offset: Option<i64>,
    watermark: i64,
    announced: Option<i64>,
}

impl PartitionState {
    fn progress(&self) -> Progress {
        Progress {
            next_offset: self.next_offset,
            watermark: self.clock.current(),
            announced: self.announced,
        }
    }
}

/// The version of window results emitted while processing the record at `offset`.
fn version_after(offset: i64) -> u64 {
    u64::try_from(offset.saturating_add(1)).unwrap_or(0)
}

/// Why a slot cannot build its processor.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The source format.
    #[error(transparent)]
    Decoder(#[from] DecoderConfigError),
    /// The filter.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

impl Drop for Processor {
    /// The lookups counted since the last tick reach the tables' counters.
    fn drop(&mut self) {
        self.tables.count_lookups(&mut self.joined);
    }
}

/// Whether `plan` may keep joined rows beside the record (see [`Processor::joins_beside`]).
fn joins_beside(plan: &Plan, tables: &Tables) -> bool {
    let joined_root = |root: &str| tables.iter().any(|t| t.plan.name == root);
    let time_reads_joined =
        matches!(&plan.event_time, EventTime::Field { path, .. } if joined_root(path.root()));
    plan.window.is_some()
        && plan.repartition_topic.is_none()
        && plan.filter.is_none()
        && !time_reads_joined
}

/// The per-slot record processor and the state of the partitions the slot owns.
pub struct Processor {
    plan: Arc<Plan>,
    decoder: Decoder,
    filter: Option<Filter>,
    /// Looked up per record: foldhash, not SipHash.
    partitions: HashMap<(TopicIndex, i32), PartitionState, foldhash::fast::RandomState>,
    results: Vec<WindowResult>,
    /// How `transform.select` is written (`None`: no `select`).
    projection: Option<Projection>,
    /// The fields stage two decodes from repartition-topic records (they carry the whole source
    /// record, for the late-data and dead-letter topics; stage two reads a few fields of it).
    repartitioned_fields: Fields,
    /// The process's reference tables (none when the pipeline joins none).
    tables: Arc<Tables>,
    /// Where this processor tells the tables the oldest event time it may still join.
    open_time: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// The rows the tables joined to the record in hand, reused record after record.
    joined: JoinedRows,
    /// Whether joined rows stay beside the record (read through [`WithJoined`]) instead of
    /// being copied into it: a windowed pipeline whose filter, repartition topic and event time
    /// need no joined field in the record itself.
    joins_beside: bool,
    /// Counts since the slot started.
    pub counts: Counts,
}

impl Processor {
    /// A processor for `plan`.
    pub fn new(plan: Arc<Plan>) -> Result<Self, ProcessorError> {
        let decoder = Decoder::new(&plan.source)?.keeping(plan.decode_fields.as_ref());
        let filter = plan.filter.as_deref().map(Filter::compile).transpose()?;
        let projection = plan.select.as_deref().map(Projection::new);
        let repartitioned_fields = plan.repartitioned_fields().into_iter().collect();
        Ok(Self {
            projection,
            repartitioned_fields,
            plan,
            decoder,
            filter,
            partitions: HashMap::default(),
            results: Vec::new(),
            tables: Arc::new(Tables::default()),
            open_time: None,
            joined: JoinedRows::default(),
            joins_beside: false,
            counts: Counts::default(),
        })
    }

    /// The same processor, joining the process's tables (shared by its slots).
    pub fn with_tables(mut self, tables: Arc<Tables>) -> Self {
        self.open_time = (!tables.is_empty()).then(|| tables.open_time());
        self.joined = JoinedRows::of(&tables);
        self.joins_beside = joins_beside(&self.plan, &tables);
        self.tables = tables;
        self
    }

    /// The oldest event time a record this processor joins may still have: its source
    /// partitions' lowest watermark less the allowed lateness; `i64::MAX` (unknown, nothing
    /// pruned for it) before any partition has one.
    fn oldest_open(&self) -> i64 {
        let lateness = self.plan.window.as_ref().map_or(0, |w| w.lateness_ms);
        self.partitions
            .values()
            .filter_map(|s| match &s.clock {
                EventClock::Local(w) if w.current() != NO_WATERMARK => Some(w.current()),
                _ => None,
            })
            .min()
            .map_or(i64::MAX, |wm| wm.saturating_sub(lateness))
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Processes one record. `Err` only for a transient failure (Schema Registry down): the record
    /// was not consumed and must be offered again.
    pub fn process(
        &mut self,
        rec: &InRecord<'_>,
        now: Instant,
        wall_ms: i64,
        out: &mut Vec<Emit>,
    ) -> Result<(), DecodeError> {
        if let Some(state) = self.partitions.get(&(rec.topic, rec.partition))
            && state.next_offset.is_some_and(|next| rec.offset < next)
        {
            // Already in this partition's state (restored from a checkpoint past it).
            self.counts.duplicates += 1;
            return Ok(());
        }
        let internal = self.plan.is_repartition_topic(rec.topic);
        if internal {
            self.process_repartitioned(rec, now, out);
        } else {
            self.process_source(rec, now, wall_ms, out)?;
        }
        self.state(rec.topic, rec.partition, now).next_offset = Some(rec.offset + 1);
        Ok(())
    }

    fn process_source(
        &mut self,
        rec: &InRecord<'_>,
        now: Instant,
        wall_ms: i64,
        out: &mut Vec<Emit>,
    ) -> Result<(), DecodeError> {
        let mut record = match self.decoder.decode(rec.payload) {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => {
                self.counts.records_in += 1;
                self.dead_letter(rec, FailedStage::Decode, e.to_string(), out);
                return Ok(());
            }
        };
        self.counts.records_in += 1;
        let mut joined = std::mem::take(&mut self.joined);
        let processed = self.process_decoded(rec, &mut record, &mut joined, (now, wall_ms), out);
        self.joined = joined;
        processed
    }

    /// The stages after decoding: join, filter, then stateless output, the repartition topic or
    /// the windows.
    fn process_decoded(
        &mut self,
        rec: &InRecord<'_>,
        record: &mut Value,
        joined: &mut JoinedRows,
        (now, wall_ms): (Instant, i64),
        out: &mut Vec<Emit>,
    ) -> Result<(), DecodeError> {
        // The event time, when the join already read it.
        let mut joined_at = None;
        if !self.tables.is_empty() {
            match self.enrich(rec, record, joined, (now, wall_ms), out) {
                Some(event_ms) => joined_at = event_ms,
                None => return Ok(()),
            }
        }
        let record = &*record;
        if let Some(filter) = &self.filter {
            match filter.matches(record) {
                Ok(true) => {}
                Ok(false) => {
                    self.counts.filtered += 1;
                    return Ok(());
                }
                Err(e) => {
                    self.dead_letter(rec, FailedStage::Filter, e.to_string(), out);
                    return Ok(());
                }
            }
        }
        if self.plan.window.is_none() {
            self.emit_stateless(rec, record, wall_ms, out);
            return Ok(());
        }
        let fields = WithJoined {
            record,
            joined: &*joined,
        };
        let Some((key, key_value)) = self.key_of(fields) else {
            let path = self.plan.key_field().to_owned();
            self.dead_letter(
                rec,
                FailedStage::Key,
                format!("key field {path} is missing"),
                out,
            );
            return Ok(());
        };
        let watermark = match self.partitions.get(&(rec.topic, rec.partition)) {
            Some(PartitionState {
                clock: EventClock::Local(w),
                ..
            }) => w.current(),
            _ => NO_WATERMARK,
        };
        let extracted = joined_at.map_or_else(
            || (self.plan.event_time).extract(record, rec.timestamp_ms, wall_ms),
            Ok,
        );
        let ts = match extracted {
            Ok(ts) => ts,
            Err(e) => {
                self.dead_letter(rec, FailedStage::Timestamp, e.to_string(), out);
                return Ok(());
            }
        };
        if let Err(e) = self.plan.event_time_bounds.check(ts, wall_ms, watermark) {
            let error = format!("{}: {e}", self.plan.event_time.describe());
            self.dead_letter(rec, FailedStage::Timestamp, error, out);
            return Ok(());
        }
        if self.plan.repartition_topic.is_some() {
            let value = match rec.payload {
                Some(bytes) if self.plan.forwards_source_bytes() => bytes.to_vec(),
                _ => serde_json::to_vec(record).expect("JSON values serialize"),
            };
            if let EventClock::Local(w) = &mut self.state(rec.topic, rec.partition, now).clock {
                w.on_record(ts, now);
            }
            self.counts.repartitioned += 1;
            out.push(Emit::Repartition {
                key: key.as_bytes().to_vec(),
                value,
                timestamp_ms: ts,
                upstream: self.plan.upstream_id(rec.topic, rec.partition),
                upstream_offset: rec.offset,
            });
            return Ok(());
        }
        self.window_add(rec, fields, &key, key_value, ts, now, out);
        Ok(())
    }

    fn process_repartitioned(&mut self, rec: &InRecord<'_>, now: Instant, out: &mut Vec<Emit>) {
        if let Some((upstream, watermark)) = rec.marker {
            let mut results = std::mem::take(&mut self.results);
            let state = self.state(rec.topic, rec.partition, now);
            if let EventClock::Upstream(marks, _) = &mut state.clock {
                let combined = marks.on_marker(upstream, watermark);
                if let Some(windows) = &mut state.windows {
                    windows.advance(combined, &mut results);
                }
            }
            self.emit_windows(&mut results, version_after(rec.offset), out);
            self.results = results;
            return;
        }
        if let Some((upstream, offset)) = rec.upstream {
            let state = self.state(rec.topic, rec.partition, now);
            if let EventClock::Upstream(_, seen) = &mut state.clock {
                let last = seen.entry(upstream).or_insert(-1);
                if offset <= *last {
                    self.counts.duplicates += 1;
                    return;
                }
                *last = offset;
            }
        }
        // Written by stage one of this pipeline: JSON, keyed, timestamped with event time.
        let parsed = rec
            .payload
            .ok_or(DecodeError::Empty)
            .and_then(|bytes| decode_json_fields(bytes, &self.repartitioned_fields));
        let record = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.dead_letter(rec, FailedStage::Decode, e.to_string(), out);
                return;
            }
        };
        let (Some((key, key_value)), Some(ts)) = (self.key_of(&record), rec.timestamp_ms) else {
            self.dead_letter(
                rec,
                FailedStage::Key,
                "repartitioned record lost its key or time".into(),
                out,
            );
            return;
        };
        self.window_add(rec, &record, &key, key_value, ts, now, out);
    }

    /// Joins the tables into `record`: `None` when the join dropped or dead-lettered it, else
    /// the event time it read (`Some(None)`: it needed none).
    fn enrich(
        &mut self,
        rec: &InRecord<'_>,
        record: &mut Value,
        joined: &mut JoinedRows,
        (now, wall_ms): (Instant, i64),
        out: &mut Vec<Emit>,
    ) -> Option<Option<i64>> {
        let event_ms = if self.tables.need_event_time() {
            match self
                .plan
                .event_time
                .extract(record, rec.timestamp_ms, wall_ms)
            {
                Ok(ts) if self.plan.window.is_none() => {
                    // A stateless pipeline keeps a watermark only for the tables: what their
                    // history is kept for.
                    if let EventClock::Local(w) =
                        &mut self.state(rec.topic, rec.partition, now).clock
                    {
                        w.on_record(ts, now);
                    }
                    ts
                }
                Ok(ts) => ts,
                Err(e) => {
                    self.dead_letter(rec, FailedStage::Timestamp, e.to_string(), out);
                    return None;
                }
            }
        } else {
            wall_ms
        };
        let done = if self.joins_beside {
            self.tables.look_up(record, event_ms, joined)
        } else {
            self.tables.join(record, event_ms, joined)
        };
        match done {
            Joined::Kept => Some(self.tables.need_event_time().then_some(event_ms)),
            Joined::Dropped => {
                self.counts.filtered += 1;
                None
            }
            Joined::DeadLetter(why) => {
                self.dead_letter(rec, FailedStage::Enrich, why, out);
                None
            }
        }
    }

    /// The record's key as text (borrowed when it is a string) and as its JSON value.
    fn key_of<'r>(&self, fields: impl FieldSource<'r>) -> Option<(Cow<'r, str>, &'r Value)> {
        let value = fields.field(self.plan.key_by.as_ref()?)?;
        let text = match value {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(key_text(other)),
        };
        Some((text, value))
    }

    #[allow(clippy::too_many_arguments)]
    fn window_add<'r>(
        &mut self,
        rec: &InRecord<'_>,
        fields: impl FieldSource<'r>,
        key: &str,
        key_value: &Value,
        ts: i64,
        now: Instant,
        out: &mut Vec<Emit>,
    ) {
        let stage = self.plan.window.as_ref().expect("windowed plan");
        let arrival = Arrival {
            event_ms: ts,
            seq: rec.offset,
        };
        let inputs = match stage.aggregates.inputs_from(fields, arrival) {
            Ok(i) => i,
            Err(e) => {
                self.dead_letter(rec, FailedStage::Aggregate, e.to_string(), out);
                return;
            }
        };
        let mut results = std::mem::take(&mut self.results);
        let state = self.state(rec.topic, rec.partition, now);
        let watermark = match &mut state.clock {
            EventClock::Local(w) => w.on_record(ts, now),
            EventClock::Upstream(u, _) => u.current(),
        };
        let windows = state
            .windows
            .as_mut()
            .expect("windowed plan has window state");
        let added = windows.add(key, key_value, ts, &inputs, rec.offset, &mut results);
        windows.advance(watermark, &mut results);
        match added {
            Added::OnTime => self.counts.windowed += 1,
            Added::Late {
                start,
                end,
                lateness_ms,
            } => {
                self.counts.late += 1;
                if self.plan.late_topic.is_some() {
                    out.push(Emit::Late {
                        key: rec.key.map(<[u8]>::to_vec),
                        value: rec.payload.map(<[u8]>::to_vec),
                        source: source_ref(rec),
                        window: (start, end),
                        lateness_ms,
                    });
                }
            }
        }
        self.emit_windows(&mut results, version_after(rec.offset), out);
        self.results = results;
    }

    fn emit_windows(&mut self, results: &mut Vec<WindowResult>, version: u64, out: &mut Vec<Emit>) {
        self.counts.records_out += results.len() as u64;
        out.extend(
            results
                .drain(..)
                .map(|result| Emit::Output(Row::Window { result, version })),
        );
    }

    fn emit_stateless(
        &mut self,
        rec: &InRecord<'_>,
        record: &Value,
        wall_ms: i64,
        out: &mut Vec<Emit>,
    ) {
        let value = match (&self.projection, rec.payload) {
            (Some(projection), _) => {
                let mut value = Vec::with_capacity(rec.payload.map_or(64, <[u8]>::len));
                projection.write(record, &mut value);
                value
            }
            (None, Some(bytes)) if self.plan.forwards_source_bytes() => bytes.to_vec(),
            (None, _) => serde_json::to_vec(record).expect("JSON values serialize"),
        };
        self.counts.records_out += 1;
        out.push(Emit::Output(Row::Record {
            key: rec.key.map(<[u8]>::to_vec),
            json: value,
            event_ms: rec.timestamp_ms.unwrap_or(wall_ms),
            source: source_ref(rec),
        }));
    }

    fn dead_letter(
        &mut self,
        rec: &InRecord<'_>,
        stage: FailedStage,
        error: String,
        out: &mut Vec<Emit>,
    ) {
        self.counts.dead_letter += 1;
        out.push(Emit::DeadLetter {
            key: rec.key.map(<[u8]>::to_vec),
            value: rec.payload.map(<[u8]>::to_vec),
            stage,
            error,
            source: Some(source_ref(rec)),
        });
    }

    /// Dead-letters a record without processing it (one that made the slot panic before), and
    /// moves its partition past it.
    pub fn dead_letter_unprocessed(
        &mut self,
        rec: &InRecord<'_>,
        stage: FailedStage,
        error: String,
        out: &mut Vec<Emit>,
    ) {
        self.counts.records_in += 1;
        self.dead_letter(rec, stage, error, out);
        self.state(rec.topic, rec.partition, Instant::now())
            .next_offset = Some(rec.offset + 1);
    }

    fn state(&mut self, topic: TopicIndex, partition: i32, now: Instant) -> &mut PartitionState {
        let plan = &self.plan;
        // With repartitioning, window state lives on the repartition topic's partitions.
        let holds_windows = plan.repartition_topic.is_none() || plan.is_repartition_topic(topic);
        self.partitions
            .entry((topic, partition))
            .or_insert_with(|| PartitionState {
                next_offset: None,
                caught_up: false,
                clock: if plan.is_repartition_topic(topic) {
                    EventClock::Upstream(
                        UpstreamWatermarks::new(plan.upstream_partitions()),
                        HashMap::new(),
                    )
                } else {
                    EventClock::Local(Watermark::new(
                        plan.out_of_orderness_ms,
                        plan.idle_timeout,
                        now,
                    ))
                },
                announced: None,
                checkpointed: None,
                windows: plan.window.as_ref().filter(|_| holds_windows).map(|w| {
                    PartitionWindows::new(w.assigner, w.lateness_ms, w.aggregates.clone())
                }),
            })
    }

    /// Advances idle partitions by processing time, emits the windows that closes, and (stage one
    /// of a repartitioned pipeline) announces source watermarks that moved.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Emit>) {
        if let Some(open) = &self.open_time {
            let oldest = self.oldest_open();
            open.store(oldest, std::sync::atomic::Ordering::Relaxed);
            self.tables.count_lookups(&mut self.joined);
        }
        let mut results = std::mem::take(&mut self.results);
        let mut ticked = Vec::new();
        let repartitioning = self.plan.repartition_topic.is_some();
        let mut keys: Vec<_> = self.partitions.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let upstream = self.plan.upstream_id(key.0, key.1);
            let state = self.partitions.get_mut(&key).expect("listed");
            let EventClock::Local(clock) = &mut state.clock else {
                continue;
            };
            let watermark = if state.caught_up {
                clock.on_idle_check(now)
            } else {
                clock.current()
            };
            if let Some(windows) = &mut state.windows {
                windows.advance(watermark, &mut results);
            }
            // Each partition's results carry its own version.
            let version = state
                .next_offset
                .map_or(0, |n| u64::try_from(n).unwrap_or(0));
            self.counts.records_out += results.len() as u64;
            ticked.extend(
                results
                    .drain(..)
                    .map(|result| Emit::Output(Row::Window { result, version })),
            );
            if repartitioning {
                // A caught-up, quiet partition that never had a record has no event time to
                // announce: it announces idleness so it does not hold the others back.
                let announce = if watermark == NO_WATERMARK {
                    (state.caught_up && clock.is_idle(now)).then_some(IDLE_MARKER)
                } else {
                    Some(watermark)
                };
                if let Some(value) = announce
                    && state
                        .announced
                        .is_none_or(|a| a == IDLE_MARKER || value > a)
                    && announce != state.announced
                {
                    state.announced = Some(value);
                    out.push(Emit::WatermarkMarker {
                        upstream,
                        watermark: value,
                    });
                }
            }
        }
        out.extend(ticked);
        self.results = results;
    }
}

fn source_ref(rec: &InRecord<'_>) -> SourceRef {
    SourceRef {
        topic: rec.topic,
        partition: rec.partition,
        offset: rec.offset,
    }
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;
    use serde_json::json;

    use super::*;

    fn processor(extra: &str) -> Processor {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n  deadLetter: {{topic: dlq}}\n{extra}"
        );
        let spec = from_yaml(&text, "test").unwrap().spec;
        pipeline_crds::validate(&spec).unwrap();
        Processor::new(Arc::new(Plan::of_spec(&spec, vec![2]))).unwrap()
    }

    fn feed(
        p: &mut Processor,
        topic: TopicIndex,
        partition: i32,
        offset: i64,
        value: &[u8],
        ts: i64,
    ) -> Vec<Emit> {
        let mut out = Vec::new();
        let rec = InRecord {
            topic,
            partition,
            offset,
            key: Some(b"k"),
            payload: Some(value),
            timestamp_ms: Some(ts),
            upstream: None,
            marker: None,
        };
        p.process(&rec, Instant::now(), 0, &mut out).unwrap();
        out
    }

    fn json_of(e: &Emit) -> Value {
        match e {
            Emit::Output(Row::Window { result, .. }) => {
                serde_json::from_slice(&crate::sink::encode::window_record("dev", result).1)
                    .unwrap()
            }
            Emit::Output(Row::Record { json: value, .. }) | Emit::Repartition { value, .. } => {
                serde_json::from_slice(value).unwrap()
            }
            other => panic!("not an output: {other:?}"),
        }
    }

    #[test]
    fn stateless_pipeline_filters_projects_and_dead_letters() {
        let mut p =
            processor("  transform: {filter: 'record.amount >= 10', select: [id, customer.id]}\n");
        let out = feed(
            &mut p,
            0,
            0,
            0,
            br#"{"id":1,"amount":12,"customer":{"id":"c","x":1}}"#,
            5,
        );
        assert_eq!(json_of(&out[0]), json!({"id": 1, "customer": {"id": "c"}}));
        assert!(feed(&mut p, 0, 0, 1, br#"{"id":2,"amount":3}"#, 5).is_empty());
        let dlq = feed(&mut p, 0, 0, 2, b"not json", 5);
        assert!(matches!(
            &dlq[0],
            Emit::DeadLetter {
                stage: FailedStage::Decode,
                ..
            }
        ));
        let dlq = feed(&mut p, 0, 0, 3, br#"{"id":4}"#, 5);
        assert!(matches!(
            &dlq[0],
            Emit::DeadLetter {
                stage: FailedStage::Filter,
                ..
            }
        ));
        let c = p.counts;
        assert_eq!(
            (c.records_in, c.records_out, c.filtered, c.dead_letter),
            (4, 1, 1, 2)
        );
        assert_eq!(
            c.records_in,
            c.records_out + c.filtered + c.late + c.dead_letter
        );
        assert_eq!(p.committable_offsets(), vec![(0, 0, 4)]);
    }

    #[test]
    fn stateless_json_without_select_forwards_the_bytes_unchanged() {
        let mut p = processor("");
        let raw = br#"{ "spaced" :  true }"#;
        let out = feed(&mut p, 0, 3, 7, raw, 5);
        assert_eq!(
            out,
            vec![Emit::Output(Row::Record {
                key: Some(b"k".to_vec()),
                json: raw.to_vec(),
                event_ms: 5,
                source: SourceRef {
                    topic: 0,
                    partition: 3,
                    offset: 7
                },
            })]
        );
    }

    const WINDOWED: &str = "  transform: {keyBy: dev, timestamp: {field: ts}, repartition: never}\n  window: {tumbling: {size: 10s}, allowedLateness: 5s}\n  aggregates: [{name: n, function: count}, {name: total, function: sum, field: v}]\n  lateData: {topic: late}\n";

    #[test]
    fn windowed_pipeline_emits_keyed_window_results_and_routes_late_records() {
        let mut p = processor(WINDOWED);
        let mut out = Vec::new();
        for (offset, (dev, ts, v)) in [
            ("a", 1_000, 1),
            ("b", 2_000, 2),
            ("a", 9_999, 3),
            ("a", 12_000, 4),
        ]
        .iter()
        .enumerate()
        {
            let value = json!({"dev": dev, "ts": ts, "v": v}).to_string();
            out.extend(feed(&mut p, 0, 0, offset as i64, value.as_bytes(), 0));
        }
        // Watermark 11_999 closed [0,10s) for a and b; state kept for 5 s lateness.
        let results: Vec<Value> = out.iter().map(json_of).collect();
        assert_eq!(
            results,
            vec![
                json!({"dev": "a", "window_start": 0, "window_end": 10_000, "n": 2, "total": 4}),
                json!({"dev": "b", "window_start": 0, "window_end": 10_000, "n": 1, "total": 2}),
            ]
        );
        assert!(
            matches!(&out[0], Emit::Output(Row::Window { result, version: 4 }) if crate::sink::encode::window_record("dev", result).0 == br#"{"dev":"a","window_start":0}"#)
        );
        // Offsets 0..=2 are in windows still within lateness: commit stays at 0.
        assert_eq!(p.committable_offset(0, 0), Some(0));
        // A late record within lateness re-fires its window.
        let again = feed(&mut p, 0, 0, 4, br#"{"dev":"a","ts":500,"v":10}"#, 0);
        assert_eq!(json_of(&again[0])["total"], json!(14));
        // Past lateness: routed to the late topic.
        feed(&mut p, 0, 0, 5, br#"{"dev":"a","ts":40000,"v":0}"#, 0);
        let late = feed(&mut p, 0, 0, 6, br#"{"dev":"a","ts":1000,"v":0}"#, 0);
        assert!(
            matches!(
                &late[0],
                Emit::Late {
                    window: (0, 10_000),
                    ..
                }
            ),
            "{late:?}"
        );
        let c = p.counts;
        assert_eq!(
            c.records_in,
            c.windowed + c.filtered + c.late + c.dead_letter
        );
        assert_eq!((c.windowed, c.late), (6, 1));
    }

    #[test]
    fn quiet_partitions_advance_by_processing_time_only_once_caught_up() {
        let mut p = processor(
            "  transform: {keyBy: dev, timestamp: {field: ts}, repartition: never, watermark: {idleTimeout: 1s}}\n  window: {tumbling: {size: 10s}}\n  aggregates: [{name: n, function: count}]\n",
        );
        feed(&mut p, 0, 0, 0, br#"{"dev":"a","ts":1000}"#, 0);
        let later = Instant::now() + std::time::Duration::from_secs(15);
        let mut out = Vec::new();
        p.on_tick(later, &mut out);
        assert!(
            out.is_empty(),
            "a partition with a backlog is not idle, however quiet"
        );
        p.set_caught_up(0, 0, true);
        p.on_tick(later, &mut out);
        assert_eq!(
            json_of(&out[0])["n"],
            json!(1),
            "caught up and quiet: the window closes"
        );
    }

    #[test]
    fn an_assigned_partition_without_records_commits_nothing() {
        let mut p = processor("");
        p.assign(0, 5, Instant::now());
        assert_eq!(p.committable_offset(0, 5), None);
    }

    #[test]
    fn missing_key_timestamp_or_wrongly_typed_aggregate_input_is_dead_lettered() {
        let mut p = processor(WINDOWED);
        let stages: Vec<FailedStage> = [
            r#"{"ts":1,"v":1}"#,
            r#"{"dev":"a","v":1}"#,
            r#"{"dev":"a","ts":1,"v":"x"}"#,
        ]
        .iter()
        .enumerate()
        .map(
            |(i, v)| match &feed(&mut p, 0, 0, i as i64, v.as_bytes(), 0)[0] {
                Emit::DeadLetter { stage, .. } => *stage,
                other => panic!("{other:?}"),
            },
        )
        .collect();
        assert_eq!(
            stages,
            [
                FailedStage::Key,
                FailedStage::Timestamp,
                FailedStage::Aggregate
            ]
        );
    }

    #[test]
    fn wrongly_typed_or_out_of_range_event_times_and_inputs_are_dead_lettered_naming_the_field() {
        let mut p = processor(WINDOWED);
        let errors: Vec<String> = [
            r#"{"dev":"a","ts":1,"v":"21.5"}"#,
            r#"{"dev":"a","ts":"1","v":1}"#,
            r#"{"dev":"a","ts":1e30,"v":1}"#,
            r#"{"dev":"a","ts":-99999999999999999,"v":1}"#,
        ]
        .iter()
        .enumerate()
        .map(
            |(i, v)| match &feed(&mut p, 0, 0, i as i64, v.as_bytes(), 0)[..] {
                [Emit::DeadLetter { error, .. }] => error.clone(),
                other => panic!("{v}: {other:?}"),
            },
        )
        .collect();
        assert!(
            errors[0].contains("field v") && errors[0].contains("a string"),
            "{}",
            errors[0]
        );
        for error in &errors[1..] {
            assert!(error.contains("field ts"), "{error}");
        }
        assert_eq!(p.counts.dead_letter, 4);
    }

    #[test]
    fn a_far_future_event_time_is_dead_lettered_and_closes_no_window() {
        let mut p = processor(WINDOWED);
        let mut out = Vec::new();
        let now = 1_800_000_000_000_i64;
        let mut send = |offset: i64, ts: i64, out: &mut Vec<Emit>| {
            let value = format!(r#"{{"dev":"a","ts":{ts},"v":1}}"#);
            let rec = InRecord {
                topic: 0,
                partition: 0,
                offset,
                key: None,
                payload: Some(value.as_bytes()),
                timestamp_ms: Some(ts),
                upstream: None,
                marker: None,
            };
            p.process(&rec, Instant::now(), now, out).unwrap();
        };
        send(0, now - 5_000, &mut out);
        // Year 2100: past the default hour ahead of the wall clock.
        send(1, 4_102_444_800_000, &mut out);
        match &out[..] {
            [Emit::DeadLetter { stage, error, .. }] => {
                assert_eq!(*stage, FailedStage::Timestamp);
                assert!(error.contains("maxAheadOfWallClock"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        // The open window was not closed by it: nothing fires until event time passes it.
        out.clear();
        send(2, now - 4_000, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn repartitioning_rekeys_source_records_and_windows_them_on_the_internal_topic() {
        let mut p = processor(
            "  transform: {keyBy: dev, timestamp: {field: ts}}\n  window: {tumbling: {size: 10s}}\n  aggregates: [{name: n, function: count}]\n",
        );
        assert_eq!(p.plan().repartition_topic.as_deref(), Some("g-repartition"));
        let out = feed(&mut p, 0, 1, 0, br#"{"dev":"a","ts":1000}"#, 0);
        let Emit::Repartition {
            key,
            timestamp_ms,
            upstream,
            upstream_offset,
            ..
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(
            (key.as_slice(), *timestamp_ms, *upstream, *upstream_offset),
            (b"a".as_slice(), 1000, 1, 0)
        );
        // Stage one announces its source watermark on the next tick.
        let mut ticked = Vec::new();
        p.on_tick(Instant::now(), &mut ticked);
        assert_eq!(
            ticked,
            vec![Emit::WatermarkMarker {
                upstream: 1,
                watermark: 999
            }]
        );
        // Stage two: the internal topic (index 1) holds the windows and follows the slowest
        // upstream partition (ids 0 and 1: two source partitions).
        let mut out = Vec::new();
        let internal = |offset, upstream, payload: Option<&'static [u8]>, marker| InRecord {
            topic: 1,
            partition: 0,
            offset,
            key: Some(b"a"),
            payload,
            timestamp_ms: Some(1000),
            upstream,
            marker,
        };
        let now = Instant::now();
        p.process(
            &internal(0, Some((1, 0)), Some(br#"{"dev":"a","ts":1000}"#), None),
            now,
            0,
            &mut out,
        )
        .unwrap();
        p.process(
            &internal(1, Some((1, 0)), Some(br#"{"dev":"a","ts":1000}"#), None),
            now,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            p.counts.duplicates, 1,
            "the same upstream offset twice is a duplicate"
        );
        p.process(
            &internal(2, None, None, Some((1, 20_000))),
            now,
            0,
            &mut out,
        )
        .unwrap();
        assert!(
            out.is_empty(),
            "upstream 0 has not announced: no watermark yet"
        );
        p.process(
            &internal(3, None, None, Some((0, 15_000))),
            now,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            json_of(&out[0]),
            json!({"dev": "a", "window_start": 0, "window_end": 10_000, "n": 1})
        );
        assert_eq!(p.counts.repartitioned, 1);
        assert_eq!(
            p.counts.records_in, 1,
            "internal records are not source input"
        );
        assert_eq!(p.committable_offset(1, 0), Some(4));
    }
}

//! The thread that loads one reference table: it reads every partition of the table's topic
//! by explicit assignment (no consumer group), from the beginning, into the process's
//! [`SharedTable`], and says how far it has read. Each round asks for the end offsets, reads up
//! to them and then marks the table caught up as of the instant it asked: a record read before
//! that instant may be joined (every update written before it has been loaded).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::{BorrowedMessage, OwnedHeaders},
    producer::{BaseRecord, DefaultProducerContext, ThreadedProducer},
};
use serde_json::Value;
use tracing::{info, warn};

use crate::{
    kafka_sign_in::{KafkaSignIn, SignInContext},
    metrics::{Metrics, TableLabels, TableLookupLabels},
    sink::header,
};

use crate::decode::Decoder;

use super::{
    SharedTable, TableRecordError,
    checkpoint::{TableCheckpointConfig, TableCheckpoints, restore_into},
};

/// The shortest round: an idle table asks its brokers for end offsets at most this often, so
/// a record waits about this long at most for the table to vouch for it.
const ROUND: Duration = Duration::from_millis(50);
/// How often the wait between rounds looks whether a slot holds records for the next one.
const WANTED_CHECK: Duration = Duration::from_millis(2);
/// How long one request for metadata or end offsets may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Records loaded under one write lock.
const LOAD_BATCH: usize = 512;

/// What a reader needs besides its table.
pub struct ReaderConfig {
    /// The consumer's settings (brokers, security); the reader sets its own group and client id.
    pub consumer: ClientConfig,
    /// How it signs in (MSK IAM).
    pub sign_in: KafkaSignIn,
    /// The producer's settings, for dead letters.
    pub producer: ClientConfig,
    /// Where malformed table records go.
    pub dead_letter_topic: Option<String>,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// This table's labels.
    pub labels: TableLabels,
    /// Where the table is checkpointed, when the pipeline has checkpoints.
    pub checkpoints: Option<TableCheckpointConfig>,
}

/// Starts the reader of `table`; it runs until `stop`.
pub fn spawn(
    table: Arc<SharedTable>,
    config: ReaderConfig,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("sluice-table-{}", table.plan.name))
        .spawn(move || {
            let _span = tracing::info_span!("table", table = %table.plan.name).entered();
            run(&table, &config, &stop);
        })
        .expect("spawning a thread")
}

fn run(table: &SharedTable, config: &ReaderConfig, stop: &AtomicBool) {
    let mut checkpoints = open_checkpoints(table, config);
    // Where to read on: a restored checkpoint's offsets, then (after a failure) the reader's own.
    let mut resume = checkpoints
        .as_mut()
        .map(|c| restore_into(c, table))
        .unwrap_or_default();
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        match Reader::open(table, config, &resume) {
            Ok(mut reader) => {
                let followed = reader.follow(stop, checkpoints.as_mut());
                resume.clone_from(&reader.next);
                match followed {
                    Ok(()) => return,
                    Err(reason) => table.fail(reason, false),
                }
            }
            Err(reason) => table.fail(reason, false),
        }
        if let Some(reason) = table.progress().failure.clone() {
            warn!(%reason, ?backoff, "the table cannot be read; trying again");
        }
        if crate::sleep_unless_stopped(backoff, stop) {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The table's checkpoints, when the pipeline has them (a store that cannot be opened is said
/// and the table goes without).
fn open_checkpoints(table: &SharedTable, config: &ReaderConfig) -> Option<TableCheckpoints> {
    let settings = config.checkpoints.as_ref()?;
    match TableCheckpoints::open(settings, &table.plan) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "the table cannot be checkpointed: its store cannot be opened");
            None
        }
    }
}

struct Reader<'a> {
    table: &'a SharedTable,
    decoder: Decoder,
    consumer: BaseConsumer<SignInContext>,
    /// Asks for end offsets, on connections of its own: on the reading consumer's, a request
    /// waits behind its long-poll fetch (up to `fetch.wait.max.ms`, 500 ms by default, each
    /// round).
    offsets: BaseConsumer<SignInContext>,
    dead_letters: DeadLetters,
    partitions: Vec<i32>,
    /// The next offset to load, per partition.
    next: HashMap<i32, i64>,
    metrics: Arc<Metrics>,
    labels: TableLabels,
    /// The counts last published: hits, misses, rejected.
    published: [u64; 3],
}

impl<'a> Reader<'a> {
    /// A reader of `table` positioned at `resume` (partitions not in it: at the beginning).
    fn open(
        table: &'a SharedTable,
        config: &ReaderConfig,
        resume: &HashMap<i32, i64>,
    ) -> Result<Self, String> {
        let topic = table.plan.topic.as_str();
        let mut consumer_config = config.consumer.clone();
        consumer_config
            .set("client.id", format!("sluice-table-{}", table.plan.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A resumed offset the topic no longer has (compacted away, topic recreated).
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer<SignInContext> = consumer_config
            .create_with_context(SignInContext(config.sign_in.clone()))
            .map_err(|e| format!("table {}: cannot create its consumer: {e}", table.plan.name))?;
        let _ = consumer.poll(Duration::from_millis(10));
        let offsets: BaseConsumer<SignInContext> = consumer_config
            .clone()
            .set(
                "client.id",
                format!("sluice-table-{}-offsets", table.plan.name),
            )
            .create_with_context(SignInContext(config.sign_in.clone()))
            .map_err(|e| format!("table {}: cannot create its consumer: {e}", table.plan.name))?;
        let _ = offsets.poll(Duration::ZERO);
        let metadata = consumer
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("table {}: cannot read topic {topic}: {e}", table.plan.name))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!(
                "table {}: topic {topic} does not exist (create it, compacted, with the reference data)",
                table.plan.name
            ));
        }
        let mut assignment = TopicPartitionList::new();
        for p in &partitions {
            let offset = resume
                .get(p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment
                .add_partition_offset(topic, *p, offset)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let dead_letters = match &config.dead_letter_topic {
            Some(t) => Some((
                config.producer.create().map_err(|e| {
                    format!(
                        "table {}: cannot create its dead-letter producer: {e}",
                        table.plan.name
                    )
                })?,
                t.clone(),
            )),
            None => None,
        };
        let decoder = Decoder::new(&table.plan.decoding)
            .map_err(|e| format!("table {}: {e}", table.plan.name))?;
        info!(topic, partitions = partitions.len(), "reading the table");
        Ok(Self {
            table,
            decoder,
            consumer,
            offsets,
            dead_letters,
            partitions,
            next: resume.clone(),
            metrics: config.metrics.clone(),
            labels: config.labels.clone(),
            published: [0; 3],
        })
    }

    /// Rounds until `stop`: end offsets, then everything up to them, and a checkpoint when one
    /// is due (and a last one at `stop`).
    fn follow(
        &mut self,
        stop: &AtomicBool,
        mut checkpoints: Option<&mut TableCheckpoints>,
    ) -> Result<(), String> {
        let mut loaded_once = false;
        while !stop.load(Ordering::Relaxed) {
            let asked = Instant::now();
            let ends = self.end_offsets()?;
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            let mut lag = self.lag(&ends, true);
            let mut polls = 0_u32;
            while lag > 0 && !stop.load(Ordering::Relaxed) {
                polls += 1;
                if polls.is_multiple_of(1024) {
                    self.table.behind(lag);
                }
                let taken = match self.consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => {
                        let taken = take(
                            self.table,
                            &mut self.decoder,
                            &self.dead_letters,
                            &message,
                            &mut batch,
                        );
                        if taken.is_ok() {
                            self.next.insert(message.partition(), message.offset() + 1);
                        }
                        taken
                    }
                    Some(Err(e)) => Err(format!("table {}: {e}", self.table.plan.name)),
                    // Nothing fetched: the consumer's position may have passed control records.
                    None => {
                        lag = self.lag(&ends, true);
                        Ok(())
                    }
                };
                if let Err(reason) = taken {
                    // What was read is loaded: the reader resumes after it.
                    self.table.load(batch.drain(..));
                    return Err(reason);
                }
                lag = lag.min(self.lag(&ends, false));
                if batch.len() >= LOAD_BATCH && !self.table.load(batch.drain(..)) {
                    return self.stopped(stop);
                }
            }
            if !self.table.load(batch.drain(..)) {
                return self.stopped(stop);
            }
            self.table.caught_up(asked);
            self.publish();
            if let Some(c) = checkpoints.as_deref_mut() {
                self.checkpoint(c, false);
            }
            if !loaded_once {
                loaded_once = true;
                let size = self.table.size();
                info!(
                    rows = size.rows,
                    versions = size.versions,
                    bytes = size.bytes,
                    "table loaded"
                );
            }
            if !self.wait_for_next_round(asked, stop, &mut batch)? {
                return self.stopped(stop);
            }
        }
        if let Some(c) = checkpoints {
            self.checkpoint(c, true);
        }
        Ok(())
    }

    /// Waits until the next round: at most [`ROUND`] after this one was `asked`, sooner when a
    /// slot holds records for it. The wait serves the consumer's callbacks (token refreshes);
    /// a record it fetches is loaded like any other, never dropped. False when that takes the
    /// table past its memory bound.
    fn wait_for_next_round(
        &mut self,
        asked: Instant,
        stop: &AtomicBool,
        batch: &mut Vec<(String, i64, Option<Value>)>,
    ) -> Result<bool, String> {
        // Serves the offsets client's callbacks (token refreshes) too.
        let _ = self.offsets.poll(Duration::ZERO);
        while !self.table.take_wanted() && !stop.load(Ordering::Relaxed) {
            let left = ROUND.saturating_sub(asked.elapsed());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(WANTED_CHECK)) {
                Some(Ok(message)) => {
                    take(
                        self.table,
                        &mut self.decoder,
                        &self.dead_letters,
                        &message,
                        batch,
                    )?;
                    self.next.insert(message.partition(), message.offset() + 1);
                    if !self.table.load(batch.drain(..)) {
                        return Ok(false);
                    }
                }
                Some(Err(e)) => return Err(format!("table {}: {e}", self.table.plan.name)),
                None => {}
            }
        }
        Ok(true)
    }

    /// Writes a table checkpoint when one is due; a failure is said and retried next round.
    fn checkpoint(&self, checkpoints: &mut TableCheckpoints, force: bool) {
        match checkpoints.write_if_due(self.table, &self.next, force) {
            Ok(Some(bytes)) => tracing::debug!(bytes, "table checkpointed"),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "the table checkpoint failed; trying again next round"),
        }
    }

    /// The table's figures, to its metrics.
    fn publish(&mut self) {
        let tables = &self.metrics.tables;
        let size = self.table.size();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        tables
            .rows
            .get_or_create(&self.labels)
            .set(gauge(size.rows));
        tables
            .versions
            .get_or_create(&self.labels)
            .set(gauge(size.versions));
        tables
            .bytes
            .get_or_create(&self.labels)
            .set(gauge(size.bytes));
        tables.lag.get_or_create(&self.labels).set(self.table.lag());
        if let Some(newest) = self.table.newest() {
            tables.watermark_ms.get_or_create(&self.labels).set(newest);
        }
        let now = [
            self.table.hits.load(Ordering::Relaxed),
            self.table.misses.load(Ordering::Relaxed),
            self.table.rejected.load(Ordering::Relaxed),
        ];
        for (result, i) in [("hit", 0), ("miss", 1)] {
            let labels = TableLookupLabels {
                pipeline: self.labels.pipeline.clone(),
                namespace: self.labels.namespace.clone(),
                pod: self.labels.pod.clone(),
                table: self.labels.table.clone(),
                result: result.to_owned(),
            };
            tables
                .lookups
                .get_or_create(&labels)
                .inc_by(now[i] - self.published[i]);
        }
        tables
            .rejected
            .get_or_create(&self.labels)
            .inc_by(now[2] - self.published[2]);
        self.published = now;
    }

    /// Past the memory bound: the table stops loading (the slots stop joining) and the thread
    /// waits for the process to stop.
    fn stopped(&self, stop: &AtomicBool) -> Result<(), String> {
        if let Some(reason) = self.table.progress().failure.clone() {
            tracing::error!(%reason, "the pipeline stops: a table is past its memory bound");
        }
        while !crate::sleep_unless_stopped(Duration::from_secs(1), stop) {}
        Ok(())
    }

    fn end_offsets(&mut self) -> Result<HashMap<i32, i64>, String> {
        let topic = self.table.plan.topic.as_str();
        let mut ends = HashMap::with_capacity(self.partitions.len());
        for p in &self.partitions {
            let (low, high) = self
                .offsets
                .fetch_watermarks(topic, *p, REQUEST_TIMEOUT)
                .map_err(|e| {
                    format!(
                        "table {}: cannot read the end offsets of topic {topic}: {e}",
                        self.table.plan.name
                    )
                })?;
            self.next.entry(*p).or_insert(low);
            ends.insert(*p, high);
        }
        Ok(ends)
    }

    /// Records behind `ends`, by what was loaded (and, with `ask_position`, by the consumer's
    /// position, which passes transaction markers).
    fn lag(&self, ends: &HashMap<i32, i64>, ask_position: bool) -> i64 {
        let topic = self.table.plan.topic.as_str();
        let position = if ask_position {
            self.consumer.position().unwrap_or_default()
        } else {
            TopicPartitionList::new()
        };
        ends.iter()
            .map(|(p, end)| {
                let consumed = self.next.get(p).copied().unwrap_or(0);
                // librdkafka's position passes control records (transaction markers).
                let fetched = position
                    .find_partition(topic, *p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(0);
                (end - consumed.max(fetched)).max(0)
            })
            .sum()
    }
}

/// Where a reader's malformed records go: a producer and the dead-letter topic.
type DeadLetters = Option<(ThreadedProducer<DefaultProducerContext>, String)>;

/// Decodes a fetched table record into `batch` (a malformed one is dead-lettered); `Err` when
/// it cannot be decoded now (its schema cannot be fetched): the reader starts again from it.
fn take(
    table: &SharedTable,
    decoder: &mut Decoder,
    dead_letters: &DeadLetters,
    message: &BorrowedMessage<'_>,
    batch: &mut Vec<(String, i64, Option<Value>)>,
) -> Result<(), String> {
    let decoded = table.plan.table_record(
        decoder,
        message.key(),
        message.payload(),
        message.timestamp().to_millis(),
    );
    match decoded {
        Ok(record) => batch.push(record),
        Err(TableRecordError::Malformed(why)) => reject(table, dead_letters, message, &why),
        Err(TableRecordError::Unavailable(why)) => {
            return Err(format!(
                "table {}: cannot decode a record of topic {} now: {why}",
                table.plan.name, table.plan.topic
            ));
        }
    }
    Ok(())
}

/// Dead-letters a malformed table record (stage `table`) and counts it.
fn reject(
    table: &SharedTable,
    dead_letters: &DeadLetters,
    message: &BorrowedMessage<'_>,
    why: &str,
) {
    let plan = &table.plan;
    table.rejected.fetch_add(1, Ordering::Relaxed);
    let error = format!("table {}: record skipped: {why}", plan.name);
    warn!(partition = message.partition(), offset = message.offset(), %error, "table record rejected");
    if let Some((producer, topic)) = dead_letters {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(header(pipeline_crds::contract::headers::ERROR, &error))
            .insert(header(pipeline_crds::contract::headers::STAGE, "table"))
            .insert(header(
                pipeline_crds::contract::headers::SOURCE_TOPIC,
                &plan.topic,
            ))
            .insert(header(
                pipeline_crds::contract::headers::SOURCE_PARTITION,
                &partition,
            ))
            .insert(header(
                pipeline_crds::contract::headers::SOURCE_OFFSET,
                &offset,
            ));
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(k) = message.key() {
            record = record.key(k);
        }
        if let Some(v) = message.payload() {
            record = record.payload(v);
        }
        if let Err((e, _)) = producer.send(record) {
            warn!(error = %e, "the table record could not be dead-lettered");
        }
    }
}

//! One task slot: a thread with its own consumer-group member and producer, owning the state of
//! the partitions Kafka assigns to it (shared-nothing, like a Kafka Streams stream thread).
//!
//! The loop (here): poll a batch of records → process them → send what they emit. Every 100 ms
//! idle partitions advance their watermarks and the metrics are published (`report`); every
//! commit interval the producer is flushed and the committable offsets (which never pass a record
//! still held in an open window) are committed, or a checkpoint is taken (`commit`). On
//! revocation the revoked partitions are flushed and committed before they are released, and
//! assigned ones are restored before reading starts (`context`). The slot's only input is the
//! execution plan ([`crate::plan::Plan`]).

mod commit;
mod context;
mod quarantine;
mod report;
mod retry;
mod upload;
mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pipeline_crds::contract::headers;
use rdkafka::{
    Message, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Headers},
};
use tracing::{debug, info, warn};

use crate::{
    checkpoint::{
        Checkpointer,
        store::{CheckpointStore, StoreError},
    },
    enrich::{Admission, Tables},
    metrics::{Metrics, SlotLabels},
    plan::{Plan, TopicIndex},
    processor::{Counts, Emit, FailedStage, InRecord, Processor, ProcessorError},
    sink::{Sink, SinkError},
};

pub use quarantine::{Quarantine, panic_message};
pub use watch::SlotWatch;

use commit::{begin_checkpoint, checkpoint, commit, finish_stored};
use context::SlotContext;
use report::{observe_emits, publish};
use retry::{Retries, Verdict};

/// How often idle watermarks and metrics are refreshed.
const TICK: Duration = Duration::from_millis(100);

/// The most records one turn of the slot loop polls before processing them. Per turn, not per
/// record, the loop reads the clocks, takes the state lock and hands emits to the sink: on
/// this project's 2-core machine clock reads alone were a tenth of the slot thread's CPU when
/// done per record.
const BATCH: usize = 512;

/// Why a slot stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Building the processor failed (bad filter or schema): not retryable.
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    /// Consumer creation, subscription or commit failed.
    #[error("kafka consumer: {0}")]
    Consumer(#[from] KafkaError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The checkpoint store cannot be opened or failed while restoring.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A rebalance callback or a partition hold failed for a reason that may pass (Kafka or
    /// storage): restoring or handing over partitions, pausing or rewinding one.
    #[error("{0}")]
    Restore(String),
    /// The slot thread panicked (a bug): contained, and the slot restarted.
    #[error("the slot panicked: {0}")]
    Panic(String),
}

impl SlotError {
    /// Whether restarting the slot can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A filter or format that does not compile stays so.
            Self::Processor(_) => false,
            // A configuration librdkafka refuses stays refused.
            Self::Consumer(KafkaError::ClientCreation(_)) => false,
            Self::Sink(e) => e.is_retryable(),
            _ => true,
        }
    }
}

/// What a slot needs to run.
pub struct SlotConfig {
    /// The compiled plan: what to do with records, how to reach Kafka, the delivery guarantee and
    /// checkpoints. The slot reads nothing of the spec besides.
    pub plan: Arc<Plan>,
    /// Metric labels; `slot` is the slot index.
    pub labels: SlotLabels,
    /// Process-wide metrics.
    pub metrics: Arc<Metrics>,
    /// Extra busy time per record (a stand-in for heavier work; demos and tests only).
    pub simulated_record_cost: Option<Duration>,
    /// This slot's progress, for the supervisor that contains its panics and for `/healthz`.
    pub watch: Arc<SlotWatch>,
    /// Records that made a slot of this process panic: dead-lettered instead of processed.
    pub quarantine: Arc<Quarantine>,
    /// The process's reference tables (`spec.enrich`), shared by its slots.
    pub tables: Arc<Tables>,
}

pub(super) struct Core {
    pub(super) processor: Processor,
    pub(super) emits: Vec<Emit>,
    pub(super) committed: HashMap<(usize, i32), i64>,
    /// Restored partitions whose first record has not arrived yet: when it does, its offset is
    /// checked against where the restored state resumes. Empty almost always, so the per-record
    /// check is one `is_empty`.
    pub(super) awaiting_first: HashSet<(TopicIndex, i32)>,
}

/// Milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A slot's clients and state, ready to poll.
struct Opened {
    consumer: BaseConsumer<SlotContext>,
    core: Arc<Mutex<Core>>,
    sink: Arc<Sink>,
}

/// The snapshot store of a windowed pipeline with checkpoints, written as this slot incarnation.
fn open_checkpointer(
    plan: &Plan,
    labels: &SlotLabels,
) -> Result<Option<Arc<Checkpointer>>, SlotError> {
    let Some(snapshots) = plan.checkpoint.as_ref().and_then(|c| c.snapshots.as_ref()) else {
        return Ok(None);
    };
    let writer = format!("{}-{}-{}", labels.pod, labels.slot, wall_clock_ms());
    let store = CheckpointStore::new(&snapshots.location, &plan.group, &writer)?;
    info!(location = store.location(), "checkpoints enabled");
    Ok(Some(Arc::new(Checkpointer::new(
        store,
        plan.state_fingerprint,
        snapshots.retain,
    ))))
}

/// Creates the slot's producer (transactional under exactly-once) and sink, its state, its
/// checkpoint store and uploader, and the consumer, subscribed to the pipeline's topics.
fn open(config: &SlotConfig, stop: &Arc<AtomicBool>) -> Result<Opened, SlotError> {
    let plan = config.plan.clone();
    let client_id = format!(
        "sluice-{}-{}-{}",
        config.labels.pipeline, config.labels.pod, config.labels.slot
    );
    let transactional = plan.transactional;
    // One transactional id per pod and slot: a restarted slot (or a zombie's replacement) fences
    // the previous producer of the same slot.
    let transactional_id = transactional.then(|| {
        format!(
            "{}-{}-{}",
            plan.group, config.labels.pod, config.labels.slot
        )
    });
    let mut producer = plan.producer.for_client(&client_id);
    if let Some(id) = &transactional_id {
        producer.set("transactional.id", id);
    }
    let sink = Arc::new(Sink::new(
        &producer,
        &plan,
        config.metrics.clone(),
        config.labels.clone(),
    )?);
    if transactional {
        sink.init_transactions(Duration::from_secs(60))?;
        info!(transactional_id = ?transactional_id, "exactly-once: transactional producer ready");
    }
    let core = Arc::new(Mutex::new(Core {
        processor: Processor::new(plan.clone())?.with_tables(config.tables.clone()),
        emits: Vec::new(),
        committed: HashMap::new(),
        awaiting_first: HashSet::new(),
    }));
    let checkpointer = open_checkpointer(&plan, &config.labels)?;
    let uploader = match &checkpointer {
        Some(c) => Some(
            upload::Uploader::start(c.clone(), config.labels.slot.clone()).map_err(|e| {
                SlotError::Restore(format!("cannot start the snapshot uploader: {e}"))
            })?,
        ),
        None => None,
    };
    let context = SlotContext {
        checkpointer,
        uploader,
        transactional,
        failure: Mutex::new(None),
        paused: Mutex::new(TopicPartitionList::new()),
        revocations: AtomicU64::new(0),
        failed_checkpoints: AtomicU64::new(0),
        watch: config.watch.clone(),
        plan: plan.clone(),
        core: core.clone(),
        sink: sink.clone(),
        metrics: config.metrics.clone(),
        labels: config.labels.clone(),
        end_offsets: Mutex::new(HashMap::new()),
        reset_to_earliest: plan.reset_to_earliest,
        stop: stop.clone(),
    };
    let consumer: BaseConsumer<SlotContext> = plan
        .consumer
        .for_client(&client_id)
        .create_with_context(context)?;
    consumer.subscribe(&plan.subscribed_topics())?;
    info!(group = %plan.group, topics = ?plan.subscribed_topics(), "slot started");
    Ok(Opened {
        consumer,
        core,
        sink,
    })
}

/// Polls into `batch`: one wait of up to 100 ms, then what librdkafka already holds, up to
/// `limit` records. A poll that serves a rebalance or a commit returns nothing, so a rebalance
/// always ends the batch.
fn poll_batch<'c>(
    consumer: &'c BaseConsumer<SlotContext>,
    config: &SlotConfig,
    batch: &mut Vec<BorrowedMessage<'c>>,
    limit: usize,
) {
    match consumer.poll(Duration::from_millis(100)) {
        None => {}
        Some(Ok(message)) => batch.push(message),
        Some(Err(e)) => poll_failed(config, &e),
    }
    while !batch.is_empty() && batch.len() < limit {
        match consumer.poll(Duration::ZERO) {
            Some(Ok(message)) => batch.push(message),
            Some(Err(e)) => {
                poll_failed(config, &e);
                break;
            }
            None => break,
        }
    }
}

/// Drops what belongs to partitions revoked while the batch was drained: their next owner
/// resumes where this slot's state stopped.
fn drop_revoked<'c>(
    consumer: &BaseConsumer<SlotContext>,
    plan: &Plan,
    batch: &mut Vec<BorrowedMessage<'c>>,
    held: &mut Held<'c>,
    retries: &mut Retries,
) {
    let assignment = consumer.assignment().unwrap_or_default();
    let assigned = |m: &BorrowedMessage<'_>| {
        assignment
            .find_partition(m.topic(), m.partition())
            .is_some()
    };
    batch.retain(assigned);
    held.records.retain(|(m, _)| assigned(m));
    retries.retain(|topic, partition| {
        assignment
            .find_partition(plan.topic_name(topic), partition)
            .is_some()
    });
}

/// The most records held for the tables before the slot stops polling: a slot catching up
/// reads this many per round of the table readers (a round takes the end offsets' round trip
/// while slots wait on it).
const HELD_LIMIT: usize = 32 * BATCH;

/// Records read while the tables had not yet vouched for them: a record read at instant t is
/// joined only once every table has read the end offsets it had at t (an update written before
/// the record is seen). Their partitions' offsets and watermarks stay where they were until they
/// are processed, so a checkpoint or commit never covers them.
#[derive(Default)]
struct Held<'c> {
    records: std::collections::VecDeque<(BorrowedMessage<'c>, Instant)>,
    /// Why the front waits, as last reported.
    reported: Option<String>,
}

impl<'c> Held<'c> {
    fn is_full(&self) -> bool {
        self.records.len() >= HELD_LIMIT
    }

    /// Moves what was just polled behind the held records, then the prefix the tables admit
    /// back into `batch`, to be processed in order.
    fn admit(
        &mut self,
        config: &SlotConfig,
        read_at: Instant,
        batch: &mut Vec<BorrowedMessage<'c>>,
    ) {
        self.records.extend(batch.drain(..).map(|m| (m, read_at)));
        let mut verdict: Option<(Instant, Admission)> = None;
        while let Some((_, at)) = self.records.front() {
            let admission = match &verdict {
                Some((seen, admission)) if seen == at => admission.clone(),
                _ => {
                    let admission = config.tables.admits(*at);
                    verdict = Some((*at, admission.clone()));
                    admission
                }
            };
            match admission {
                Admission::Join => {
                    let (message, _) = self.records.pop_front().expect("a front record");
                    batch.push(message);
                }
                Admission::Wait(why) => {
                    self.report(Some(why));
                    return;
                }
                Admission::Stopped(why) => {
                    // Said on `/readyz`; nothing more is processed.
                    config.watch.set_failure(Some(format!("stopped: {why}")));
                    self.report(Some(why));
                    return;
                }
            }
        }
        self.report(None);
    }

    fn report(&mut self, why: Option<String>) {
        if self.reported == why {
            return;
        }
        match &why {
            Some(why) => debug!(held = self.records.len(), %why, "records held for the tables"),
            None => debug!("the tables admit every record read"),
        }
        self.reported = why;
    }
}

/// One batch's clock readings.
struct BatchClock {
    /// When processing the batch began.
    at: Instant,
    /// The wall clock then, ms since the epoch.
    wall_ms: i64,
}

/// Processes one polled record; `false` when it was skipped (not a subscribed topic, its
/// partition held for a retry) rather than processed or dead-lettered.
fn process_record(
    config: &SlotConfig,
    consumer: &BaseConsumer<SlotContext>,
    retries: &mut Retries,
    core: &mut Core,
    step: &BatchClock,
    message: &BorrowedMessage<'_>,
) -> bool {
    let plan = &config.plan;
    let Core {
        processor,
        emits,
        awaiting_first,
        ..
    } = core;
    let Some(topic) = plan.topic_index(message.topic()) else {
        return false;
    };
    let (upstream, marker) = if plan.is_repartition_topic(topic) {
        read_internal_headers(message)
    } else {
        (None, None)
    };
    let rec = InRecord {
        topic,
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload(),
        timestamp_ms: message.timestamp().to_millis(),
        upstream,
        marker,
    };
    if !awaiting_first.is_empty() && awaiting_first.remove(&(topic, rec.partition)) {
        let resume = processor.next_offset(topic, rec.partition);
        if resume.is_some_and(|r| r != rec.offset) {
            warn!(
                topic = message.topic(),
                partition = rec.partition,
                offset = rec.offset,
                ?resume,
                "first record after assignment is not where the restored state resumes"
            );
        } else {
            debug!(
                topic = message.topic(),
                partition = rec.partition,
                offset = rec.offset,
                "first record after assignment"
            );
        }
    }
    if !retries.is_empty() && retries.is_paused(topic, rec.partition) {
        // Read again from the record that failed, after its backoff.
        return false;
    }
    if let Some(panic) = config.quarantine.take(topic, rec.partition, rec.offset) {
        warn!(
            topic = message.topic(),
            partition = rec.partition,
            offset = rec.offset,
            "dead-lettering the record a slot panicked on"
        );
        processor.dead_letter_unprocessed(
            &rec,
            FailedStage::Panic,
            format!("the slot panicked processing this record: {panic}"),
            emits,
        );
        return false;
    }
    config.watch.processing(topic, rec.partition, rec.offset);
    crate::failpoint::panic_on_record(rec.payload);
    match processor.process(&rec, step.at, step.wall_ms, emits) {
        Ok(()) if retries.is_empty() => {}
        Ok(()) => {
            if retries.passed(topic, rec.partition, rec.offset) {
                info!(
                    topic = message.topic(),
                    partition = rec.partition,
                    offset = rec.offset,
                    "the held record passed: the partition consumes again"
                );
                report_held(config, message.topic(), rec.partition, false);
            }
        }
        Err(e) => {
            let failed = Failed {
                topic: message.topic(),
                rec: &rec,
                error: &e,
                at: step.at,
            };
            on_transient_failure(config, consumer, retries, processor, emits, failed);
        }
    }
    true
}

/// Runs one slot until `stop` is set (then flushes, commits and leaves the group) or an error.
pub fn run(config: &SlotConfig, stop: &Arc<AtomicBool>) -> Result<(), SlotError> {
    let plan = config.plan.clone();
    let Opened {
        consumer,
        core,
        sink,
    } = open(config, stop)?;
    let interval = plan.commit_interval;
    let latency = config
        .metrics
        .output_latency
        .get_or_create(&config.labels)
        .clone();
    let is_stopped = || stop.load(Ordering::Relaxed);
    let mut clock = SlotClock::default();
    let mut reported = Counts::default();
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    // Simulated work owed, slept off in steps of at least a millisecond (sleeping per record
    // would cost more than the records).
    // Oversleeping is credited to later records, so the capacity is 1/cost.
    let mut owed = 0.0_f64;
    // Records polled together and processed under one lock, one clock reading and one send.
    // With simulated work (demos, tests) a batch holds at most 10 ms of it, so the slot still
    // polls, serves callbacks and publishes its metrics as often as it did record by record.
    let batch_limit = config.simulated_record_cost.map_or(BATCH, |cost| {
        ((0.010 / cost.as_secs_f64().max(1e-9)) as usize).clamp(1, BATCH)
    });
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(batch_limit);
    // Records read but not joinable yet (see `enrich`), oldest first, with when they were read.
    let mut held = Held::default();
    // Without a dead-letter topic a record is never dropped: its partition is held instead.
    let mut retries = Retries::new(
        plan.dead_letter_topic
            .is_some()
            .then_some(retry::GIVE_UP_AFTER),
    );
    while !is_stopped() {
        config.watch.beat(wall_clock_ms());
        if !retries.is_empty() {
            resume_due(&consumer, &plan, &mut retries);
        }
        let poll_start = Instant::now();
        let revocations = consumer.context().revocations.load(Ordering::Relaxed);
        if held.is_full() {
            // Polling on would only hold more: wait for the tables instead.
            std::thread::sleep(Duration::from_millis(5));
        } else {
            poll_batch(&consumer, config, &mut batch, batch_limit);
        }
        let processing_start = Instant::now();
        if let Some(reason) = consumer
            .context()
            .failure
            .lock()
            .expect("not poisoned")
            .take()
        {
            return Err(SlotError::Restore(reason));
        }
        clock.idle += processing_start - poll_start;
        if consumer.context().revocations.load(Ordering::Relaxed) != revocations {
            drop_revoked(&consumer, &plan, &mut batch, &mut held, &mut retries);
        }
        if !config.tables.is_empty() {
            held.admit(config, processing_start, &mut batch);
        }
        if !batch.is_empty() {
            let step = BatchClock {
                at: processing_start,
                wall_ms: wall_clock_ms(),
            };
            let mut guard = lock(&core);
            for message in batch.drain(..) {
                let processed =
                    process_record(config, &consumer, &mut retries, &mut guard, &step, &message);
                if let (true, Some(cost)) = (processed, config.simulated_record_cost) {
                    owed += cost.as_secs_f64();
                }
            }
            let emits = &mut guard.emits;
            config.watch.idle();
            observe_emits(config, &latency, emits);
            sink.send_all(&plan, emits, &mut clock.backpressured, &is_stopped)?;
            drop(guard);
            if owed >= 0.001 {
                let slept = Instant::now();
                std::thread::sleep(Duration::from_secs_f64(owed));
                owed -= slept.elapsed().as_secs_f64();
            }
            clock.busy += processing_start.elapsed();
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let mut guard = lock(&core);
            let Core {
                processor, emits, ..
            } = &mut *guard;
            processor.on_tick(Instant::now(), emits);
            observe_emits(config, &latency, emits);
            sink.send_all(&plan, emits, &mut clock.backpressured, &is_stopped)?;
            sink.tick(&mut clock.backpressured, &is_stopped)?;
            sink.poll();
            publish(config, &consumer, processor, &mut reported, &mut clock);
            drop(guard);
            if let Some(failure) = sink.failure() {
                return Err(SlotError::Sink(SinkError::Delivery(failure)));
            }
        }
        finish_stored(consumer.context(), &consumer)?;
        if last_commit.elapsed() >= interval {
            let ctx = consumer.context();
            if let (Some(uploader), false) = (&ctx.uploader, ctx.transactional) {
                // Stored on the uploader's thread and committed by `finish_stored` once it is;
                // due again each turn until the previous one is stored.
                if begin_checkpoint(ctx, uploader, &mut clock.backpressured, &is_stopped)? {
                    last_commit = Instant::now();
                }
                continue;
            }
            last_commit = Instant::now();
            if ctx.checkpoints() {
                checkpoint(
                    consumer.context(),
                    &consumer,
                    None,
                    &mut clock.backpressured,
                    &is_stopped,
                )?;
                continue;
            }
            commit(
                &consumer,
                &core,
                &sink,
                &plan,
                &mut clock,
                CommitMode::Async,
                &is_stopped,
            )?;
        }
    }
    leave(config, &consumer, &core, &sink, &mut clock, &mut reported);
    info!("slot stopped");
    Ok(())
}

/// Stops the slot: everything processed so far flushed and committed, the partitions revoked
/// (committing them again) and the group left at once; the last figures published.
fn leave(
    config: &SlotConfig,
    consumer: &BaseConsumer<SlotContext>,
    core: &Arc<Mutex<Core>>,
    sink: &Arc<Sink>,
    clock: &mut SlotClock,
    reported: &mut Counts,
) {
    let plan = &config.plan;
    // A commit refused now (a rebalance under way as other slots leave) is repeated by the
    // revocation that unsubscribing triggers; either way the next owner resumes at or before it.
    let never = || false;
    let finished = match consumer.context().checkpoints() {
        true => checkpoint(
            consumer.context(),
            consumer,
            None,
            &mut clock.backpressured,
            &never,
        ),
        false => commit(consumer, core, sink, plan, clock, CommitMode::Sync, &never),
    };
    if let Err(e) = finished {
        warn!(error = %e, "final commit failed");
    }
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let mut guard = lock(core);
    publish(config, consumer, &mut guard.processor, reported, clock);
}

/// An upstream partition id with an offset or a watermark.
type Upstream = (u32, i64);

/// The upstream headers of a repartition-topic record: (partition, offset) on data records,
/// (partition, watermark) on watermark markers.
fn read_internal_headers(message: &impl Message) -> (Option<Upstream>, Option<Upstream>) {
    let Some(headers) = message.headers() else {
        return (None, None);
    };
    let (mut partition, mut offset, mut watermark) = (None, None, None);
    for header in headers.iter() {
        let number = || std::str::from_utf8(header.value?).ok()?.parse::<i64>().ok();
        match header.key {
            h if h == headers::UPSTREAM_PARTITION => {
                partition = number().and_then(|n| u32::try_from(n).ok())
            }
            h if h == headers::UPSTREAM_OFFSET => offset = number(),
            h if h == headers::WATERMARK => watermark = number(),
            _ => {}
        }
    }
    match (partition, offset, watermark) {
        (Some(p), _, Some(w)) => (None, Some((p, w))),
        (Some(p), Some(o), None) => (Some((p, o)), None),
        _ => (None, None),
    }
}

/// Pauses a partition and moves its position back to `offset`, so the record there is read again
/// once the partition is resumed (records already fetched after it are dropped by librdkafka).
/// A record whose processing failed for a reason that may pass.
struct Failed<'a> {
    topic: &'a str,
    rec: &'a InRecord<'a>,
    error: &'a crate::decode::DecodeError,
    at: Instant,
}

/// A record failed for a reason that may pass: its partition is paused and read again from it
/// after a backoff; past the retries the record is dead-lettered, or, without a dead-letter
/// topic, its partition stays held (and is reported so) until the record passes.
fn on_transient_failure(
    config: &SlotConfig,
    consumer: &BaseConsumer<SlotContext>,
    retries: &mut Retries,
    processor: &mut Processor,
    emits: &mut Vec<Emit>,
    failed: Failed<'_>,
) {
    let Failed {
        topic,
        rec,
        error: e,
        at,
    } = failed;
    let (slot, partition, offset) = (&config.labels.slot, rec.partition, rec.offset);
    match retries.failed(rec.topic, partition, offset, at) {
        Verdict::Retry(wait) => {
            warn!(%slot, topic, partition, offset, error = %e, ?wait, "transient failure: the partition is paused and read again from this record after the wait");
            hold(consumer, topic, partition, offset);
        }
        Verdict::Hold { wait, first } => {
            if first {
                warn!(%slot, topic, partition, offset, error = %e, ?wait, "transient failure did not pass and there is no deadLetter topic: the partition is held at this record, never dropping it, until it can be processed");
                report_held(config, topic, partition, true);
            }
            hold(consumer, topic, partition, offset);
        }
        Verdict::GiveUp { attempts, waited } => {
            warn!(%slot, topic, partition, offset, error = %e, attempts, "transient failure did not pass: dead-lettering the record");
            processor.dead_letter_unprocessed(
                rec,
                FailedStage::Decode,
                format!(
                    "{e} (gave up after {attempts} tries over {} s)",
                    waited.as_secs()
                ),
                emits,
            );
        }
    }
}

/// Reports a partition held at a record (no dead-letter topic to set it aside) as paused, or
/// consuming again: `/readyz`, `pipeline_partition_paused` and the operator's `PartitionsPaused`.
fn report_held(config: &SlotConfig, topic: &str, partition: i32, held: bool) {
    config.watch.set_paused(topic, partition, held);
    config
        .metrics
        .paused
        .get_or_create(&Metrics::partition_labels(&config.labels, topic, partition))
        .set(i64::from(held));
}

fn hold(consumer: &BaseConsumer<SlotContext>, topic: &str, partition: i32, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let paused = consumer.pause(&tpl);
    let seeked = consumer.seek(
        topic,
        partition,
        rdkafka::Offset::Offset(offset),
        Duration::from_secs(5),
    );
    if let Err(e) = paused.and(seeked) {
        // The record cannot be offered again in place: restart the slot from its commits.
        consumer
            .context()
            .fail(format!("holding {topic}/{partition} at {offset}: {e}"));
        warn!(topic, partition, error = %e, "could not pause and rewind the partition");
    }
}

/// Resumes the held partitions whose backoff is over.
fn resume_due(consumer: &BaseConsumer<SlotContext>, plan: &Plan, retries: &mut Retries) {
    let due = retries.due(Instant::now());
    if due.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in due {
        tpl.add_partition(plan.topic_name(topic), partition);
    }
    if let Err(e) = consumer.resume(&tpl) {
        warn!(error = %e, "could not resume held partitions");
    }
}

/// A failed poll: counted and logged; the loop goes on (librdkafka retries by itself).
fn poll_failed(config: &SlotConfig, error: &KafkaError) {
    config
        .metrics
        .kafka_errors
        .get_or_create(&config.labels)
        .inc();
    warn!(%error, "poll failed");
}

pub(super) fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().expect("slot state lock is never poisoned")
}

#[derive(Default)]
pub(super) struct SlotClock {
    pub(super) busy: Duration,
    pub(super) idle: Duration,
    pub(super) backpressured: Duration,
}

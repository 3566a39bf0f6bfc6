//! One task slot: a thread with its own consumer-group member and producer, owning the state of
//! the partitions Kafka assigns to it (shared-nothing, like a Kafka Streams stream thread).
//!
//! The loop: poll a batch of records → process them → send what they emit. Every 100 ms idle partitions
//! advance their watermarks and the metrics are published; every commit interval the producer is
//! flushed and the committable offsets (which never pass a record still held in an open window)
//! are committed. On revocation the revoked partitions are flushed and committed before they are
//! released.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use pipeline_crds::{checkpoint::DeliveryGuarantee, contract::headers, source::StartingOffsets};
use prometheus_client::metrics::histogram::Histogram;
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    message::{BorrowedMessage, Headers},
    statistics::Statistics,
};
use tracing::{debug, error, info, warn};

use crate::{
    checkpoint::{
        CheckpointError, Checkpointer,
        store::{CheckpointStore, StoreError},
    },
    metrics::{Metrics, SlotLabels},
    plan::{Plan, TopicIndex},
    processor::{Counts, Emit, InRecord, Processor, ProcessorError},
    sink::{Sink, SinkError},
};

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
    /// Restoring assigned partitions failed for a reason that may pass (Kafka or storage).
    #[error("restoring assigned partitions: {0}")]
    Restore(String),
}

impl SlotError {
    /// Whether restarting the slot can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Processor(e) => e.is_transient(),
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
    /// Time between offset commits.
    pub commit_interval: Duration,
    /// Process-wide metrics.
    pub metrics: Arc<Metrics>,
    /// Extra busy time per record (a stand-in for heavier work; demos and tests only).
    pub simulated_record_cost: Option<Duration>,
}

struct Core {
    processor: Processor,
    emits: Vec<Emit>,
    committed: HashMap<(usize, i32), i64>,
    /// Restored partitions whose first record has not arrived yet: when it does, its offset is
    /// checked against where the restored state resumes. Empty almost always, so the per-record
    /// check is one `is_empty`.
    awaiting_first: HashSet<(TopicIndex, i32)>,
}

struct SlotContext {
    plan: Arc<Plan>,
    core: Arc<Mutex<Core>>,
    sink: Arc<Sink>,
    metrics: Arc<Metrics>,
    labels: SlotLabels,
    /// Per (topic, partition), from librdkafka's statistics: the end (last stable offset, as we
    /// read committed data only, else the high watermark) and where reading starts before the
    /// first record (the committed offset, else the reset point).
    end_offsets: Mutex<HashMap<(String, i32), (i64, i64)>>,
    /// Whether the reset point is the log start (`earliest`) or its end (`latest`).
    reset_to_earliest: bool,
    stop: Arc<AtomicBool>,
    /// Snapshots of window state, when the pipeline is windowed and has `checkpoint`.
    checkpointer: Option<Checkpointer>,
    /// Exactly-once delivery: outputs and offsets commit together in a Kafka transaction at
    /// each checkpoint.
    transactional: bool,
    /// Set by a rebalance callback when the slot must restart (a restore that may succeed later).
    failure: Mutex<Option<String>>,
    /// Partitions of the assignment under way whose state could not be restored: paused once the
    /// assignment is in effect.
    paused: Mutex<TopicPartitionList>,
    /// Revocations (and losses) so far: the loop drops polled records of partitions revoked
    /// before it processed them.
    revocations: AtomicU64,
}

impl ClientContext for SlotContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                warn!(slot = %self.labels.slot, fac, "librdkafka: {log_message}")
            }
            _ => debug!(slot = %self.labels.slot, fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.get_or_create(&self.labels).inc();
        warn!(slot = %self.labels.slot, %error, "kafka client error: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let mut ends = self.end_offsets.lock().expect("not poisoned");
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let start = match (p.committed_offset >= 0, self.reset_to_earliest) {
                    (true, _) => p.committed_offset,
                    (false, true) => p.lo_offset,
                    (false, false) => end,
                };
                // Only partitions being fetched: librdkafka keeps the last figures of partitions
                // this slot no longer owns.
                if *partition >= 0 && end >= 0 && p.fetch_state == "active" {
                    ends.insert((topic.clone(), *partition), (end, start));
                }
            }
        }
    }
}

impl ConsumerContext for SlotContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.metrics.rebalances.get_or_create(&self.labels).inc();
        if !matches!(rebalance, Rebalance::Assign(_)) {
            self.revocations.fetch_add(1, Ordering::Relaxed);
        }
        if let (Rebalance::Assign(assigned), Some(checkpointer)) = (rebalance, &self.checkpointer) {
            // Before the assignment takes effect: restore state and set where reading starts.
            self.restore(consumer, checkpointer, assigned);
            return;
        }
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        // A revoked partition's end offset goes stale; should it come back, only fresh
        // statistics may report it again (else its next owner reports a jump that reads as
        // arrivals to the autoscaler).
        {
            let mut ends = self.end_offsets.lock().expect("not poisoned");
            for e in revoked.elements() {
                ends.remove(&(e.topic().to_owned(), e.partition()));
            }
        }
        if self.checkpoints() {
            self.hand_over(consumer, revoked);
            return;
        }
        // Hand over cleanly: everything emitted so far is flushed, then each revoked partition's
        // committable offset is committed before Kafka gives the partition to another slot.
        let mut core = self.core.lock().expect("not poisoned");
        let mut blocked = Duration::ZERO;
        let stop = || self.stop.load(Ordering::Relaxed);
        let flushed = self
            .sink
            .send_all(&self.plan, &mut core.emits, &mut blocked, &stop)
            .and_then(|()| self.sink.flush(&mut blocked, &stop));
        let mut offsets = TopicPartitionList::new();
        for element in revoked.elements() {
            let Some(topic) = self.plan.topic_index(element.topic()) else {
                continue;
            };
            let offset = core.processor.release(topic, element.partition());
            core.committed.remove(&(topic, element.partition()));
            if let (Some(offset), Ok(())) = (offset, &flushed) {
                let _ = offsets.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(offset),
                );
            }
            self.metrics.forget_partition(&Metrics::partition_labels(
                &self.labels,
                element.topic(),
                element.partition(),
            ));
        }
        drop(core);
        match flushed {
            Err(e) => {
                warn!(slot = %self.labels.slot, error = %e, "revoked partitions not committed: sink failed")
            }
            Ok(()) if offsets.count() > 0 => {
                debug!(slot = %self.labels.slot, offsets = ?offsets.to_topic_map(), "committing revoked partitions");
                if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                    // While stopping, other slots leave at the same moment and the coordinator
                    // may refuse with RebalanceInProgress; the final commit already covered it.
                    if self.stop.load(Ordering::Relaxed) {
                        info!(slot = %self.labels.slot, error = %e, "commit on revocation skipped while stopping");
                    } else {
                        warn!(slot = %self.labels.slot, error = %e, "commit on revocation failed");
                    }
                }
            }
            Ok(()) => {}
        }
        info!(slot = %self.labels.slot, partitions = ?revoked.to_topic_map(), "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            if self.checkpointer.is_some() {
                // State was restored before the assignment took effect; pause what has none.
                let paused = std::mem::take(&mut *self.paused.lock().expect("not poisoned"));
                if paused.count() > 0
                    && let Err(e) = consumer.pause(&paused)
                {
                    self.fail(format!("pausing partitions without state: {e}"));
                }
                for element in paused.elements() {
                    self.metrics
                        .paused
                        .get_or_create(&Metrics::partition_labels(
                            &self.labels,
                            element.topic(),
                            element.partition(),
                        ))
                        .set(1);
                }
            } else {
                let mut core = self.core.lock().expect("not poisoned");
                for element in assigned.elements() {
                    if let Some(topic) = self.plan.topic_index(element.topic()) {
                        core.processor
                            .assign(topic, element.partition(), Instant::now());
                    }
                }
            }
            info!(slot = %self.labels.slot, partitions = ?assigned.to_topic_map(), "partitions assigned");
        }
        let count = consumer.assignment().map_or(0, |a| a.count());
        self.metrics
            .assigned_partitions
            .get_or_create(&self.labels)
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

impl SlotContext {
    /// Whether this slot checkpoints (snapshots, or transactions, or both) rather than only
    /// committing offsets.
    fn checkpoints(&self) -> bool {
        self.checkpointer.is_some() || self.transactional
    }

    /// Revocation with checkpoints: the revoked partitions are checkpointed (flush, snapshot,
    /// commit) before Kafka gives them to another slot, which restores them from that snapshot.
    /// A transaction covers every partition of the slot, so in exactly-once mode all are.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let partitions: Vec<(TopicIndex, i32)> = revoked
            .elements()
            .iter()
            .filter_map(|e| Some((self.plan.topic_index(e.topic())?, e.partition())))
            .collect();
        let stop = || self.stop.load(Ordering::Relaxed);
        let mut blocked = Duration::ZERO;
        if let Err(e) = checkpoint(self, consumer, Some(&partitions), &mut blocked, &stop) {
            warn!(slot = %self.labels.slot, error = %e, "revoked partitions not checkpointed: their next owner replays from the previous checkpoint");
            if self.transactional {
                // The aborted transaction held the other partitions' outputs too.
                self.fail(format!("checkpoint at revocation failed: {e}"));
            }
        }
        let mut core = self.core.lock().expect("not poisoned");
        for &(topic, partition) in &partitions {
            core.processor.release(topic, partition);
            self.metrics.forget_partition(&Metrics::partition_labels(
                &self.labels,
                self.plan.topic_name(topic),
                partition,
            ));
        }
        drop(core);
        info!(slot = %self.labels.slot, partitions = ?revoked.to_topic_map(), "partitions checkpointed and revoked");
    }

    /// Assignment with checkpoints: each partition with a committed offset gets the state of the
    /// snapshot stored with that offset, and reading starts exactly where that state ends (set in
    /// the assignment itself, before fetching starts). A partition whose state is lost (no
    /// readable snapshot) is paused and reported, never run on empty state; a failure that may
    /// pass (Kafka or the store unreachable) restarts the slot.
    fn restore(
        &self,
        consumer: &BaseConsumer<Self>,
        checkpointer: &Checkpointer,
        assigned: &TopicPartitionList,
    ) {
        let committed = match consumer.committed_offsets(assigned.clone(), Duration::from_secs(30))
        {
            Ok(c) => c,
            Err(e) => {
                self.fail(format!("reading committed offsets: {e}"));
                return;
            }
        };
        let mut paused = TopicPartitionList::new();
        let mut core = self.core.lock().expect("not poisoned");
        for mut element in assigned.elements() {
            let (name, partition) = (element.topic().to_owned(), element.partition());
            let Some(topic) = self.plan.topic_index(&name) else {
                continue;
            };
            let started = Instant::now();
            core.processor.assign(topic, partition, started);
            core.awaiting_first.insert((topic, partition));
            let offset = match committed
                .find_partition(&name, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset,
                _ => continue, // nothing committed: a fresh start
            };
            let failure = |reason: &str| {
                self.metrics
                    .restore_failures
                    .get_or_create(&Metrics::result_labels(&self.labels, reason))
                    .inc();
            };
            match checkpointer.restore(&name, partition, offset) {
                Ok(restored) => {
                    for (path, error) in &restored.skipped {
                        failure("unreadable");
                        error!(slot = %self.labels.slot, %path, %error, "snapshot unreadable; falling back to the one before it");
                    }
                    let resume = restored.snapshot.next_offset;
                    if let Err(e) =
                        core.processor
                            .restore(topic, partition, restored.snapshot, Instant::now())
                    {
                        failure("mismatch");
                        error!(slot = %self.labels.slot, path = %restored.file.path, error = %e, "snapshot does not fit this pipeline; partition paused");
                        core.processor.release(topic, partition);
                        let _ = paused.add_partition(&name, partition);
                        continue;
                    }
                    if let Err(e) = element.set_offset(Offset::Offset(resume)) {
                        self.fail(format!(
                            "setting the start offset of {name}[{partition}]: {e}"
                        ));
                    }
                    let pause_ms = (wall_clock_ms() - restored.file.written_ms).max(0);
                    self.metrics
                        .restore_duration
                        .get_or_create(&self.labels)
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics
                        .partition_pause
                        .get_or_create(&self.labels)
                        .observe(pause_ms as f64 / 1000.0);
                    info!(slot = %self.labels.slot, topic = name, partition, committed = offset, resume, bytes = restored.bytes, pause_ms, path = %restored.file.path, "partition state restored");
                }
                Err(CheckpointError::Store(e)) => {
                    drop(core);
                    self.fail(e.to_string());
                    return;
                }
                Err(e) => {
                    failure(match e {
                        CheckpointError::Missing { .. } => "missing",
                        _ => "unreadable",
                    });
                    error!(slot = %self.labels.slot, topic = name, partition, error = %e, "partition paused: its state cannot be restored");
                    core.processor.release(topic, partition);
                    let _ = paused.add_partition(&name, partition);
                }
            }
        }
        *self.paused.lock().expect("not poisoned") = paused;
    }

    fn fail(&self, reason: String) {
        error!(slot = %self.labels.slot, %reason, "slot restarts");
        *self.failure.lock().expect("not poisoned") = Some(reason);
    }
}

/// Milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs one slot until `stop` is set (then flushes, commits and leaves the group) or an error.
pub fn run(config: &SlotConfig, stop: &Arc<AtomicBool>) -> Result<(), SlotError> {
    let plan = config.plan.clone();
    let client_id = format!(
        "sluice-{}-{}-{}",
        config.labels.pipeline, config.labels.pod, config.labels.slot
    );
    let transactional = plan.delivery == DeliveryGuarantee::ExactlyOnce;
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
    let sink = Arc::new(Sink::new(&producer)?);
    if transactional {
        sink.init_transactions(Duration::from_secs(60))?;
        info!(slot = %config.labels.slot, transactional_id = ?transactional_id, "exactly-once: transactional producer ready");
    }
    let core = Arc::new(Mutex::new(Core {
        processor: Processor::new(plan.clone())?,
        emits: Vec::new(),
        committed: HashMap::new(),
        awaiting_first: HashSet::new(),
    }));
    let checkpointer = match (&plan.checkpoint, &plan.window) {
        (Some(settings), Some(_)) => {
            let writer = format!(
                "{}-{}-{}",
                config.labels.pod,
                config.labels.slot,
                wall_clock_ms()
            );
            let prefix = format!("{}/{}", config.labels.namespace, config.labels.pipeline);
            let store = CheckpointStore::new(&settings.storage, &prefix, &plan.group, &writer)?;
            info!(slot = %config.labels.slot, location = store.location(), "checkpoints enabled");
            Some(Checkpointer::new(
                store,
                plan.state_fingerprint,
                usize::try_from(settings.retain).unwrap_or(1),
            ))
        }
        _ => None,
    };
    let interval = match (&plan.checkpoint, checkpointer.is_some() || transactional) {
        (Some(settings), true) => settings.interval.get(),
        _ => config.commit_interval,
    };
    let context = SlotContext {
        checkpointer,
        transactional,
        failure: Mutex::new(None),
        paused: Mutex::new(TopicPartitionList::new()),
        revocations: AtomicU64::new(0),
        plan: plan.clone(),
        core: core.clone(),
        sink: sink.clone(),
        metrics: config.metrics.clone(),
        labels: config.labels.clone(),
        end_offsets: Mutex::new(HashMap::new()),
        reset_to_earliest: plan.starting_offsets == StartingOffsets::Earliest,
        stop: stop.clone(),
    };
    let consumer: BaseConsumer<SlotContext> = plan
        .consumer
        .for_client(&client_id)
        .create_with_context(context)?;
    consumer.subscribe(&plan.subscribed_topics())?;
    info!(slot = %config.labels.slot, group = %plan.group, topics = ?plan.subscribed_topics(), "slot started");

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
    let mut batch: Vec<BorrowedMessage<'_>> = Vec::with_capacity(BATCH);
    while !is_stopped() {
        let poll_start = Instant::now();
        let revocations = consumer.context().revocations.load(Ordering::Relaxed);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => batch.push(message),
            Some(Err(e)) => poll_failed(config, &e),
        }
        // Drain what librdkafka already holds, without waiting. A poll that serves a rebalance
        // or a commit returns nothing, so a rebalance always ends the batch.
        while !batch.is_empty() && batch.len() < BATCH {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => batch.push(message),
                Some(Err(e)) => {
                    poll_failed(config, &e);
                    break;
                }
                None => break,
            }
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
            // Records of partitions revoked while the batch was drained belong to their next
            // owner, which resumes where this slot's state stopped.
            let assignment = consumer.assignment().unwrap_or_default();
            batch.retain(|m| {
                assignment
                    .find_partition(m.topic(), m.partition())
                    .is_some()
            });
        }
        if !batch.is_empty() {
            let wall_ms = wall_clock_ms();
            let mut guard = lock(&core);
            let Core {
                processor,
                emits,
                awaiting_first,
                ..
            } = &mut *guard;
            for message in batch.drain(..) {
                let Some(topic) = plan.topic_index(message.topic()) else {
                    continue;
                };
                let (upstream, marker) = if plan.is_repartition_topic(topic) {
                    read_internal_headers(&message)
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
                        warn!(slot = %config.labels.slot, topic = message.topic(), partition = rec.partition, offset = rec.offset, ?resume, "first record after assignment is not where the restored state resumes");
                    } else {
                        debug!(slot = %config.labels.slot, topic = message.topic(), partition = rec.partition, offset = rec.offset, "first record after assignment");
                    }
                }
                let mut backoff = Duration::from_millis(200);
                while let Err(e) = processor.process(&rec, processing_start, wall_ms, emits) {
                    warn!(slot = %config.labels.slot, error = %e, "transient failure, retrying the record");
                    std::thread::sleep(backoff);
                    clock.backpressured += backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if is_stopped() {
                        return Ok(());
                    }
                }
                if let Some(cost) = config.simulated_record_cost {
                    owed += cost.as_secs_f64();
                }
            }
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
            sink.poll();
            publish(config, &consumer, processor, &mut reported, &mut clock);
            drop(guard);
            if let Some(failure) = sink.failure() {
                return Err(SlotError::Sink(SinkError::Delivery(failure)));
            }
        }
        if last_commit.elapsed() >= interval {
            last_commit = Instant::now();
            if consumer.context().checkpoints() {
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
    // Stopping: everything processed so far is flushed and committed; unsubscribing revokes the
    // partitions (committing them again) and leaves the group at once.
    // A commit refused now (a rebalance under way as other slots leave) is repeated by the
    // revocation that unsubscribing triggers; either way the next owner resumes at or before it.
    let never = || false;
    let finished = match consumer.context().checkpoints() {
        true => checkpoint(
            consumer.context(),
            &consumer,
            None,
            &mut clock.backpressured,
            &never,
        ),
        false => commit(
            &consumer,
            &core,
            &sink,
            &plan,
            &mut clock,
            CommitMode::Sync,
            &never,
        ),
    };
    if let Err(e) = finished {
        warn!(slot = %config.labels.slot, error = %e, "final commit failed");
    }
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let mut guard = lock(&core);
    publish(
        config,
        &consumer,
        &mut guard.processor,
        &mut reported,
        &mut clock,
    );
    info!(slot = %config.labels.slot, "slot stopped");
    Ok(())
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

/// A failed poll: counted and logged; the loop goes on (librdkafka retries by itself).
fn poll_failed(config: &SlotConfig, error: &KafkaError) {
    config
        .metrics
        .kafka_errors
        .get_or_create(&config.labels)
        .inc();
    warn!(slot = %config.labels.slot, %error, "poll failed");
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().expect("slot state lock is never poisoned")
}

#[derive(Default)]
struct SlotClock {
    busy: Duration,
    idle: Duration,
    backpressured: Duration,
}

/// Counts dead letters by stage and observes output latency into `latency` (the slot's
/// histogram, resolved once so the per-record path does not look it up).
fn observe_emits(config: &SlotConfig, latency: &Histogram, emits: &[Emit]) {
    let wall = wall_clock_ms();
    for emit in emits {
        if let Emit::Output { event_ms, .. } = emit {
            latency.observe((wall - event_ms).max(0) as f64 / 1000.0);
        }
        if let Emit::DeadLetter { stage, error, .. } = emit {
            config.metrics.dead_lettered(&config.labels, *stage);
            if config.plan.dead_letter_topic.is_none() {
                warn!(slot = %config.labels.slot, stage = stage.as_str(), %error, "record rejected (no deadLetter topic configured)");
            }
        }
    }
}

/// Flushes the producer and commits every partition's committable offset that moved.
fn commit(
    consumer: &BaseConsumer<SlotContext>,
    core: &Mutex<Core>,
    sink: &Sink,
    plan: &Plan,
    clock: &mut SlotClock,
    mode: CommitMode,
    stop: &dyn Fn() -> bool,
) -> Result<(), SlotError> {
    let mut guard = lock(core);
    let Core {
        processor,
        emits,
        committed,
        ..
    } = &mut *guard;
    sink.send_all(plan, emits, &mut clock.backpressured, stop)?;
    sink.flush(&mut clock.backpressured, stop)?;
    let mut offsets = TopicPartitionList::new();
    for (topic, partition, offset) in processor.committable_offsets() {
        if committed.get(&(topic, partition)) != Some(&offset) {
            offsets.add_partition_offset(
                plan.topic_name(topic),
                partition,
                Offset::Offset(offset),
            )?;
            committed.insert((topic, partition), offset);
        }
    }
    drop(guard);
    if offsets.count() > 0 {
        debug!(offsets = ?offsets.to_topic_map(), "committing");
        consumer.commit(&offsets, mode)?;
    }
    Ok(())
}

/// Publishes the slot's counters, clocks and partition gauges.
fn publish(
    config: &SlotConfig,
    consumer: &BaseConsumer<SlotContext>,
    processor: &mut Processor,
    reported: &mut Counts,
    clock: &mut SlotClock,
) {
    let m = &config.metrics;
    let labels = &config.labels;
    m.add_counts(labels, reported, &processor.counts);
    *reported = processor.counts;
    m.busy
        .get_or_create(labels)
        .inc_by(clock.busy.saturating_sub(clock.backpressured).as_secs_f64());
    m.backpressured
        .get_or_create(labels)
        .inc_by(clock.backpressured.as_secs_f64());
    m.idle
        .get_or_create(labels)
        .inc_by(clock.idle.as_secs_f64());
    *clock = SlotClock::default();
    let ends = consumer.context().end_offsets.lock().expect("not poisoned");
    let wall = wall_clock_ms();
    let mut keys = 0;
    for (topic, partition, position, watermark, key_count) in processor.partition_stats() {
        keys += key_count;
        let name = config.plan.topic_name(topic);
        let p = Metrics::partition_labels(labels, name, partition);
        // An end offset behind the position is stale (librdkafka reports a re-assigned
        // partition's last figures until its first fetch answers): it is left out, else the
        // jump to the real end would read as arrivals to the autoscaler.
        let known = ends
            .get(&(name.to_owned(), partition))
            .filter(|(end, _)| position < 0 || *end >= position);
        if let Some((end, start)) = known {
            // Caught up = everything up to the end has been processed (not merely committed:
            // windowed slots commit behind their open windows on purpose; not merely fetched:
            // prefetched records are still to be processed). Before the first record, the start
            // offset says whether anything is there to read.
            let read = if position >= 0 { position } else { *start };
            m.end_offset.get_or_create(&p).set(*end);
            m.lag.get_or_create(&p).set((end - read).max(0));
            processor.set_caught_up(topic, partition, read >= *end);
        }
        if position >= 0 {
            m.position.get_or_create(&p).set(position);
        }
        if watermark != crate::watermark::NO_WATERMARK {
            m.watermark_lag
                .get_or_create(&p)
                .set((wall - watermark) as f64 / 1000.0);
        }
    }
    m.state_keys
        .get_or_create(labels)
        .set(i64::try_from(keys).unwrap_or(i64::MAX));
}

/// A checkpoint: flush the producer, write a snapshot of every partition (of `only`, when
/// given) whose state changed, commit those partitions' offsets, then prune old snapshots. A
/// partition whose snapshot could not be written keeps its previous committed offset.
///
/// Exactly-once: the offsets of every partition the slot reads are committed inside the
/// producer's transaction, which commits the outputs since the last checkpoint with them. A
/// snapshot that cannot be written, or a failed commit, aborts the transaction and fails the
/// slot, which restarts from the last committed checkpoint.
fn checkpoint(
    ctx: &SlotContext,
    consumer: &BaseConsumer<SlotContext>,
    only: Option<&[(TopicIndex, i32)]>,
    backpressured: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), SlotError> {
    let started = Instant::now();
    let only = only.filter(|_| !ctx.transactional);
    let mut guard = lock(&ctx.core);
    let Core {
        processor, emits, ..
    } = &mut *guard;
    ctx.sink.send_all(&ctx.plan, emits, backpressured, stop)?;
    ctx.sink.flush(backpressured, stop)?;
    let flushed = started.elapsed();
    let written_ms = wall_clock_ms();
    let mut stored = Vec::new();
    let mut bytes = 0;
    let mut failed = None;
    if let Some(checkpointer) = &ctx.checkpointer {
        for (topic, partition, snapshot, progress) in processor.changed_snapshots(only) {
            let name = ctx.plan.topic_name(topic);
            match checkpointer.write(name, partition, &snapshot, written_ms) {
                Ok(written) => {
                    bytes += written.bytes;
                    stored.push((topic, partition, snapshot.next_offset, progress));
                }
                Err(e) => {
                    warn!(slot = %ctx.labels.slot, topic = name, partition, error = %e, "snapshot not written; the partition keeps its previous checkpoint");
                    failed = Some(e.to_string());
                }
            }
        }
    }
    // At least once: the stored partitions. Exactly once: every partition read so far, stored or
    // not, since the transaction holds all their outputs.
    let mut offsets = TopicPartitionList::new();
    let positions = if ctx.transactional {
        processor.positions()
    } else {
        stored.iter().map(|&(t, p, next, _)| (t, p, next)).collect()
    };
    for (topic, partition, next) in positions {
        offsets.add_partition_offset(
            ctx.plan.topic_name(topic),
            partition,
            Offset::Offset(next),
        )?;
    }
    drop(guard);
    let written = started.elapsed();
    if !stored.is_empty() {
        crate::failpoint::crash_if(crate::failpoint::CHECKPOINT_BEFORE_COMMIT);
    }
    let committed = match (ctx.transactional, &failed) {
        (true, Some(reason)) => {
            let _ = ctx.sink.abort_transaction(Duration::from_secs(60));
            Err(SlotError::Restore(format!(
                "checkpoint aborted, a snapshot was not written: {reason}"
            )))
        }
        (true, None) => match consumer.group_metadata() {
            Some(group) => ctx
                .sink
                .commit_transaction(&offsets, &group, Duration::from_secs(60))
                .map_err(SlotError::from),
            None => Err(SlotError::Restore("no consumer group metadata".into())),
        },
        (false, _) if offsets.count() > 0 => consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(SlotError::from),
        (false, _) => Ok(()),
    };
    let result = match committed {
        Ok(()) => {
            let mut guard = lock(&ctx.core);
            for &(topic, partition, _, progress) in &stored {
                guard.processor.checkpointed(topic, partition, progress);
            }
            drop(guard);
            if let Some(checkpointer) = &ctx.checkpointer {
                for &(topic, partition, offset, _) in &stored {
                    if let Err(e) =
                        checkpointer.prune(ctx.plan.topic_name(topic), partition, offset)
                    {
                        warn!(slot = %ctx.labels.slot, error = %e, "old snapshots not pruned");
                    }
                }
            }
            Ok(())
        }
        // At least once, a failed commit leaves the previous checkpoint current; the snapshots
        // just written stay as orphans until the next checkpoint prunes them.
        Err(e) if !ctx.transactional => {
            warn!(slot = %ctx.labels.slot, error = %e, "checkpoint commit failed; the previous checkpoint stays current");
            failed = Some(e.to_string());
            Ok(())
        }
        Err(e) => {
            failed = Some(e.to_string());
            Err(e)
        }
    };
    let m = &ctx.metrics;
    let outcome = if failed.is_some() {
        "failure"
    } else {
        "success"
    };
    m.checkpoints
        .get_or_create(&Metrics::result_labels(&ctx.labels, outcome))
        .inc();
    m.checkpoint_duration
        .get_or_create(&ctx.labels)
        .observe(started.elapsed().as_secs_f64());
    m.checkpoint_bytes
        .get_or_create(&ctx.labels)
        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    debug!(slot = %ctx.labels.slot, partitions = stored.len(), bytes, ?flushed, ?written, elapsed = ?started.elapsed(), "checkpoint");
    result
}

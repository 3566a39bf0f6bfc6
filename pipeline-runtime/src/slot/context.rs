//! The slot consumer's context: librdkafka's callbacks on the slot's thread (logs, errors,
//! statistics for the end-offset gauges) and the rebalance protocol: revoked partitions are
//! handed over (flushed, checkpointed or committed) before they leave, assigned ones restored
//! from their snapshots before reading starts.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    statistics::Statistics,
};
use tracing::{debug, error, info, warn};

use crate::{
    checkpoint::{CheckpointError, Checkpointer, RestoreFrom, snapshot::SnapshotError},
    metrics::{Metrics, SlotLabels},
    plan::{Plan, TopicIndex},
    sink::Sink,
};

use super::commit::checkpoint;
use super::{Core, wall_clock_ms};

pub(super) struct SlotContext {
    pub(super) plan: Arc<Plan>,
    pub(super) core: Arc<Mutex<Core>>,
    pub(super) sink: Arc<Sink>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) labels: SlotLabels,
    /// Per (topic, partition), from librdkafka's statistics: the end (last stable offset, as we
    /// read committed data only, else the high watermark) and where reading starts before the
    /// first record (the committed offset, else the reset point).
    pub(super) end_offsets: Mutex<HashMap<(String, i32), (i64, i64)>>,
    /// Whether the reset point is the log start (`earliest`) or its end (`latest`).
    pub(super) reset_to_earliest: bool,
    pub(super) stop: Arc<AtomicBool>,
    /// Snapshots of window state, when the pipeline is windowed and has `checkpoint`.
    pub(super) checkpointer: Option<Arc<Checkpointer>>,
    /// Writes and prunes snapshots off the slot thread; present with `checkpointer`.
    pub(super) uploader: Option<super::upload::Uploader>,
    /// Exactly-once delivery: outputs and offsets commit together in a Kafka transaction at
    /// each checkpoint.
    pub(super) transactional: bool,
    /// Set by a rebalance callback when the slot must restart (a restore that may succeed later).
    pub(super) failure: Mutex<Option<String>>,
    /// Partitions of the assignment under way whose state could not be restored: paused once the
    /// assignment is in effect.
    pub(super) paused: Mutex<TopicPartitionList>,
    /// Revocations (and losses) so far: the loop drops polled records of partitions revoked
    /// before it processed them.
    pub(super) revocations: AtomicU64,
    /// Checkpoints failed in a row (see `checkpoint.tolerableFailures`).
    pub(super) failed_checkpoints: AtomicU64,
    /// The slot's progress and paused partitions, for the health endpoints.
    pub(super) watch: Arc<super::SlotWatch>,
}

impl ClientContext for SlotContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.plan.consumer.sign_in().oauth_token()
    }

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
        if std::thread::panicking() {
            return;
        }
        self.watch.brokers_seen(
            statistics
                .brokers
                .values()
                .any(|b| b.state == "UP" && b.source != "internal"),
        );
        let mut ends = self
            .end_offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
    /// An offset commit's answer: only offsets Kafka acknowledged are marked committed, so a
    /// failed (asynchronous) commit is sent again by the next one.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if std::thread::panicking() {
            return;
        }
        if let Err(error) = result {
            warn!(%error, "offset commit failed; the next commit sends it again");
            return;
        }
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        for element in offsets.elements() {
            let (Some(topic), Offset::Offset(offset), None) = (
                self.plan.topic_index(element.topic()),
                element.offset(),
                element.error().err(),
            ) else {
                continue;
            };
            core.committed.insert((topic, element.partition()), offset);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Closing the consumer while a panic unwinds the slot revokes its partitions: nothing is
        // committed or checkpointed then (the state may be half-updated, its lock poisoned); the
        // next owner resumes from the last commit. A second panic here would abort the process.
        if std::thread::panicking() {
            warn!("partitions handed over uncommitted after a panic");
            return;
        }
        self.metrics.rebalances.get_or_create(&self.labels).inc();
        if !matches!(rebalance, Rebalance::Assign(_)) {
            self.revocations.fetch_add(1, Ordering::Relaxed);
        }
        if let (Rebalance::Assign(assigned), Some(checkpointer)) =
            (rebalance, self.checkpointer.as_deref())
        {
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
            let mut ends = self
                .end_offsets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for e in revoked.elements() {
                ends.remove(&(e.topic().to_owned(), e.partition()));
                self.watch.set_paused(e.topic(), e.partition(), false);
            }
        }
        if self.checkpoints() {
            self.hand_over(consumer, revoked);
            return;
        }
        // Hand over cleanly: everything emitted so far is flushed, then each revoked partition's
        // committable offset is committed before Kafka gives the partition to another slot.
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
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
                warn!(error = %e, "revoked partitions not committed: sink failed")
            }
            Ok(()) if offsets.count() > 0 => {
                debug!(offsets = ?offsets.to_topic_map(), "committing revoked partitions");
                if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                    // While stopping, other slots leave at the same moment and the coordinator
                    // may refuse with RebalanceInProgress; the final commit already covered it.
                    if self.stop.load(Ordering::Relaxed) {
                        info!(error = %e, "commit on revocation skipped while stopping");
                    } else {
                        warn!(error = %e, "commit on revocation failed");
                    }
                }
            }
            Ok(()) => {}
        }
        info!(partitions = ?revoked.to_topic_map(), "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if std::thread::panicking() {
            return;
        }
        if let Rebalance::Assign(assigned) = rebalance {
            if self.checkpointer.is_some() {
                // State was restored before the assignment took effect; pause what has none.
                let paused = std::mem::take(
                    &mut *self.paused.lock().unwrap_or_else(PoisonError::into_inner),
                );
                if paused.count() > 0
                    && let Err(e) = consumer.pause(&paused)
                {
                    self.fail(format!("pausing partitions without state: {e}"));
                }
                for element in paused.elements() {
                    self.watch
                        .set_paused(element.topic(), element.partition(), true);
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
                let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
                for element in assigned.elements() {
                    if let Some(topic) = self.plan.topic_index(element.topic()) {
                        core.processor
                            .assign(topic, element.partition(), Instant::now());
                    }
                }
            }
            info!(partitions = ?assigned.to_topic_map(), "partitions assigned");
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
    pub(super) fn checkpoints(&self) -> bool {
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
            warn!(error = %e, "revoked partitions not checkpointed: their next owner replays from the previous checkpoint");
            if self.transactional {
                // The aborted transaction held the other partitions' outputs too.
                self.fail(format!("checkpoint at revocation failed: {e}"));
            }
        }
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        for &(topic, partition) in &partitions {
            core.processor.release(topic, partition);
            self.metrics.forget_partition(&Metrics::partition_labels(
                &self.labels,
                self.plan.topic_name(topic),
                partition,
            ));
        }
        drop(core);
        info!(partitions = ?revoked.to_topic_map(), "partitions checkpointed and revoked");
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
        let reset = self
            .plan
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.reset_incompatible_state);
        // Exactly-once: only the snapshot at the committed offset; an older one would re-emit
        // outputs an earlier transaction committed. Without it the partition is paused (or reset
        // with `onIncompatibleState: reset`).
        let from = if self.transactional {
            RestoreFrom::CommittedOffsetOnly
        } else {
            RestoreFrom::NewestReadable
        };
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
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
            match checkpointer.restore(&name, partition, offset, from) {
                Ok(restored) => {
                    for (path, error) in &restored.skipped {
                        failure("unreadable");
                        error!(%path, %error, "snapshot unreadable; falling back to the one before it");
                    }
                    let resume = restored.snapshot.next_offset;
                    if let Err(e) =
                        core.processor
                            .restore(topic, partition, restored.snapshot, Instant::now())
                    {
                        failure("mismatch");
                        core.processor.release(topic, partition);
                        if reset {
                            self.reset_state(&mut core, topic, &name, partition, "mismatch", &e);
                        } else {
                            error!(path = %restored.file.path, error = %e, "snapshot does not fit this pipeline; partition paused");
                            let _ = paused.add_partition(&name, partition);
                        }
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
                    info!(topic = name, partition, committed = offset, resume, bytes = restored.bytes, pause_ms, path = %restored.file.path, "partition state restored");
                }
                Err(CheckpointError::Store(e)) => {
                    drop(core);
                    self.fail(format!("restoring assigned partitions: {e}"));
                    return;
                }
                Err(e) => {
                    let (reason, incompatible) = match &e {
                        CheckpointError::Missing { .. } => ("missing", true),
                        CheckpointError::Unreadable {
                            source: SnapshotError::Fingerprint { .. },
                            ..
                        } => ("incompatible", true),
                        // Under exactly-once an unreadable snapshot may be reset too: there
                        // is no older one to fall back to.
                        _ => ("unreadable", self.transactional),
                    };
                    failure(reason);
                    core.processor.release(topic, partition);
                    if reset && incompatible {
                        self.reset_state(&mut core, topic, &name, partition, reason, &e);
                    } else {
                        error!(topic = name, partition, error = %e, "partition paused: its state cannot be restored");
                        let _ = paused.add_partition(&name, partition);
                    }
                }
            }
        }
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) = paused;
    }

    /// `onIncompatibleState: reset`: the partition starts with empty state from its committed
    /// offset (its assignment keeps that offset).
    fn reset_state(
        &self,
        core: &mut Core,
        topic: TopicIndex,
        name: &str,
        partition: i32,
        reason: &str,
        error: &dyn std::fmt::Display,
    ) {
        core.processor.assign(topic, partition, Instant::now());
        self.metrics
            .state_resets
            .get_or_create(&Metrics::result_labels(&self.labels, reason))
            .inc();
        warn!(topic = name, partition, %error, "state reset (checkpoint.onIncompatibleState: reset): the partition starts empty from its committed offset");
    }

    pub(super) fn fail(&self, reason: String) {
        error!(%reason, "slot restarts");
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }
}

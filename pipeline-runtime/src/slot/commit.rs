//! Committing what a slot has processed: offsets alone (at-least-once without checkpoints), or a
//! checkpoint (snapshots of window state, offsets, and in exactly-once mode the transaction).

use std::{
    sync::{Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
};
use tracing::{debug, warn};

use crate::{
    metrics::Metrics,
    plan::{Plan, TopicIndex},
    sink::Sink,
};

use super::context::SlotContext;
use super::{Core, SlotClock, SlotError, lock, wall_clock_ms};

/// Flushes the producer and commits every partition's committable offset that moved.
pub(super) fn commit(
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

/// A checkpoint: flush the producer, write a snapshot of every partition (of `only`, when
/// given) whose state changed, commit those partitions' offsets, then prune old snapshots. A
/// partition whose snapshot could not be written keeps its previous committed offset.
///
/// Exactly-once: the offsets of every partition the slot reads are committed inside the
/// producer's transaction, which commits the outputs since the last checkpoint with them. A
/// snapshot that cannot be written, or a failed commit, aborts the transaction and fails the
/// slot, which restarts from the last committed checkpoint.
pub(super) fn checkpoint(
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
    let mut skipped = false;
    if let Some(checkpointer) = &ctx.checkpointer {
        for (topic, partition, snapshot, progress) in processor.changed_snapshots(only) {
            let name = ctx.plan.topic_name(topic);
            match checkpointer.write(name, partition, &snapshot, written_ms) {
                Ok(written) => {
                    bytes += written.bytes;
                    stored.push((topic, partition, snapshot.next_offset, progress));
                }
                Err(e) => {
                    warn!(slot = %ctx.labels.slot, topic = name, partition, error = %e, "snapshot not written; the slot's partitions keep their previous checkpoint");
                    failed = Some(e.to_string());
                    // The store is likely down for the other partitions too: one bounded wait
                    // per checkpoint, not one per partition.
                    break;
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
        // A commit refused because the group is rebalancing is no failure of the checkpoint: the
        // revocation that follows checkpoints the partitions that move, and the next checkpoint
        // commits the rest. Counting it would restart slots in the middle of rebalances.
        Err(e) if !ctx.transactional && refused_by_a_rebalance(&e) => {
            debug!(slot = %ctx.labels.slot, error = %e, "checkpoint commit refused during a rebalance; the next one commits");
            skipped = true;
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
    let outcome = match (&failed, skipped) {
        (Some(_), _) => "failure",
        (None, true) => "skipped",
        (None, false) => "success",
    };
    let in_a_row = match (&failed, skipped) {
        (Some(_), _) => ctx.failed_checkpoints.fetch_add(1, Ordering::Relaxed) + 1,
        (None, true) => ctx.failed_checkpoints.load(Ordering::Relaxed),
        (None, false) => {
            ctx.failed_checkpoints.store(0, Ordering::Relaxed);
            0
        }
    };
    m.checkpoint_failures_in_a_row
        .get_or_create(&ctx.labels)
        .set(i64::try_from(in_a_row).unwrap_or(i64::MAX));
    let tolerated = ctx
        .plan
        .checkpoint
        .as_ref()
        .map_or(0, |c| u64::try_from(c.tolerable_failures).unwrap_or(0));
    let result = match (result, &failed) {
        (Ok(()), Some(reason)) if in_a_row > tolerated => Err(SlotError::Restore(format!(
            "{in_a_row} checkpoints failed in a row, more than checkpoint.tolerableFailures \
             ({tolerated}): restarting from the last good one; last failure: {reason}"
        ))),
        (Ok(()), Some(_)) => {
            warn!(slot = %ctx.labels.slot, in_a_row, tolerated, "checkpoint failed; processing goes on from the last good one");
            Ok(())
        }
        (result, _) => result,
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

/// Whether Kafka refused a commit because the consumer group is rebalancing (the generation moved
/// on, or a rebalance is under way), which the revocation and the next checkpoint take care of.
fn refused_by_a_rebalance(error: &SlotError) -> bool {
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};
    matches!(
        error,
        SlotError::Consumer(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::UnknownMemberId
        ))
    )
}

//! Committing what a slot has processed: offsets alone (at-least-once without checkpoints), or a
//! checkpoint (snapshots of window state, offsets, and in exactly-once mode the transaction).
//!
//! A checkpoint is taken under the state lock (flush, snapshot), stored by the slot's uploader
//! ([`super::upload`]), then finished on the slot thread (commit, prune, count). Periodic
//! at-least-once checkpoints store asynchronously while the slot keeps processing; the ones at
//! revocation, at stop and in exactly-once mode wait for the store.

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
use super::upload::{Snapshot, Stored, Taken, Uploader};
use super::{Core, SlotClock, SlotError, lock, wall_clock_ms};

/// Flushes the producer and commits every partition's committable offset that moved. The
/// offsets count as committed once Kafka acknowledged them (the consumer's commit callback,
/// [`SlotContext`]'s `commit_callback`): a failed commit is sent again by the next one.
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
        }
    }
    drop(guard);
    if offsets.count() > 0 {
        debug!(offsets = ?offsets.to_topic_map(), "committing");
        consumer.commit(&offsets, mode)?;
    }
    Ok(())
}

/// A checkpoint, start to end on the calling thread: flush the producer, store a snapshot of
/// every partition (of `only`, when given) whose state changed, commit those partitions' offsets,
/// then prune old snapshots. A partition whose snapshot could not be written keeps its previous
/// committed offset. Used at revocation and when stopping (the partitions must be handed over
/// before the call returns) and in exactly-once mode; periodic at-least-once checkpoints store
/// their snapshots on the uploader's thread instead ([`begin_checkpoint`]).
///
/// Exactly-once: the offsets of every partition the slot reads are committed inside the
/// producer's transaction, which commits the outputs since the last checkpoint with them. A
/// snapshot that cannot be written, or a failed commit, aborts the transaction and fails the
/// slot, which restarts from the last committed checkpoint.
#[tracing::instrument(name = "checkpoint", skip_all)]
pub(super) fn checkpoint(
    ctx: &SlotContext,
    consumer: &BaseConsumer<SlotContext>,
    only: Option<&[(TopicIndex, i32)]>,
    backpressured: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), SlotError> {
    let result = checkpoint_now(ctx, consumer, only, backpressured, stop);
    // However it ended, no write or prune of this slot is left running when the caller hands
    // partitions over: a late prune would delete what their next owner wrote.
    if let Some(uploader) = &ctx.uploader {
        uploader.wait();
    }
    result
}

fn checkpoint_now(
    ctx: &SlotContext,
    consumer: &BaseConsumer<SlotContext>,
    only: Option<&[(TopicIndex, i32)]>,
    backpressured: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), SlotError> {
    // A checkpoint being stored is finished first: its prune must not run after this one's
    // writes, and revoked partitions leave with everything committed that can be.
    settle(ctx, consumer)?;
    let taken = take(ctx, only, backpressured, stop)?;
    let stored = match &ctx.uploader {
        Some(uploader) => {
            uploader.store(taken);
            uploader
                .wait()
                .unwrap_or_else(|| Stored::failed("the snapshot uploader reported nothing".into()))
        }
        None => Stored {
            started: taken.started,
            partitions: Vec::new(),
            bytes: 0,
            failed: None,
            positions: taken.positions,
        },
    };
    finish(ctx, consumer, stored)
}

/// A periodic at-least-once checkpoint: flush and take the snapshots under the state lock, then
/// hand them to the uploader's thread and return. The slot loop calls [`finish_stored`] each
/// turn, which commits the offsets once the snapshots are stored. While a checkpoint is being
/// stored no other begins (returns `false`).
#[tracing::instrument(name = "checkpoint", skip_all)]
pub(super) fn begin_checkpoint(
    ctx: &SlotContext,
    uploader: &Uploader,
    backpressured: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<bool, SlotError> {
    if uploader.is_storing() {
        return Ok(false);
    }
    let taken = take(ctx, None, backpressured, stop)?;
    uploader.store(taken);
    ctx.metrics
        .checkpoint_in_progress
        .get_or_create(&ctx.labels)
        .set(1);
    Ok(true)
}

/// Commits a checkpoint whose snapshots the uploader stored, if one is done; never blocks on the
/// store.
pub(super) fn finish_stored(
    ctx: &SlotContext,
    consumer: &BaseConsumer<SlotContext>,
) -> Result<(), SlotError> {
    match ctx.uploader.as_ref().and_then(Uploader::stored) {
        Some(stored) => finish(ctx, consumer, stored),
        None => Ok(()),
    }
}

/// Waits for the checkpoint being stored, if any, and commits it.
pub(super) fn settle(
    ctx: &SlotContext,
    consumer: &BaseConsumer<SlotContext>,
) -> Result<(), SlotError> {
    match ctx.uploader.as_ref().filter(|u| u.is_storing()) {
        Some(uploader) => match uploader.wait() {
            Some(stored) => finish(ctx, consumer, stored),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Under the state lock: everything emitted so far sent and acknowledged, then the snapshots of
/// the partitions whose state changed (encoded later, off the lock).
fn take(
    ctx: &SlotContext,
    only: Option<&[(TopicIndex, i32)]>,
    backpressured: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<Taken, SlotError> {
    let started = Instant::now();
    let only = only.filter(|_| !ctx.transactional);
    let mut guard = lock(&ctx.core);
    let Core {
        processor, emits, ..
    } = &mut *guard;
    ctx.sink.send_all(&ctx.plan, emits, backpressured, stop)?;
    ctx.sink.flush(backpressured, stop)?;
    let snapshots = match ctx.checkpointer {
        Some(_) => processor
            .changed_snapshots(only)
            .into_iter()
            .map(|(topic, partition, snapshot, progress)| Snapshot {
                topic,
                name: ctx.plan.topic_name(topic).to_owned(),
                partition,
                snapshot,
                progress,
            })
            .collect(),
        None => Vec::new(),
    };
    // Exactly once: every partition read so far, stored or not, since the transaction holds all
    // their outputs.
    let positions = match ctx.transactional {
        true => processor.positions(),
        false => Vec::new(),
    };
    Ok(Taken {
        started,
        written_ms: wall_clock_ms(),
        snapshots,
        positions,
    })
}

/// After the snapshots were stored (or failed): commit the offsets (in the transaction, in
/// exactly-once mode), mark the stored state checkpointed, prune, and count the outcome against
/// `checkpoint.tolerableFailures`.
#[tracing::instrument(name = "checkpoint", skip_all)]
fn finish(
    ctx: &SlotContext,
    consumer: &BaseConsumer<SlotContext>,
    stored: Stored,
) -> Result<(), SlotError> {
    let Stored {
        started,
        partitions: stored,
        bytes,
        mut failed,
        positions,
    } = stored;
    let mut skipped = false;
    // At least once: the stored partitions. Exactly once: every partition read.
    let mut offsets = TopicPartitionList::new();
    let positions = match ctx.transactional {
        true => positions,
        false => stored.iter().map(|&(t, p, next, _)| (t, p, next)).collect(),
    };
    for (topic, partition, next) in positions {
        offsets.add_partition_offset(
            ctx.plan.topic_name(topic),
            partition,
            Offset::Offset(next),
        )?;
    }
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
            if let Some(uploader) = &ctx.uploader {
                uploader.prune(
                    stored
                        .iter()
                        .map(|&(t, p, offset, _)| (ctx.plan.topic_name(t).to_owned(), p, offset))
                        .collect(),
                );
            }
            Ok(())
        }
        // A commit refused because the group is rebalancing is no failure of the checkpoint: the
        // revocation that follows checkpoints the partitions that move, and the next checkpoint
        // commits the rest. Counting it would restart slots in the middle of rebalances.
        Err(e) if !ctx.transactional && refused_by_a_rebalance(&e) => {
            debug!(error = %e, "checkpoint commit refused during a rebalance; the next one commits");
            skipped = true;
            Ok(())
        }
        // At least once, a failed commit leaves the previous checkpoint current; the snapshots
        // just written stay as orphans until the next checkpoint prunes them.
        Err(e) if !ctx.transactional => {
            warn!(error = %e, "checkpoint commit failed; the previous checkpoint stays current");
            failed = Some(e.to_string());
            Ok(())
        }
        Err(e) => {
            failed = Some(e.to_string());
            Err(e)
        }
    };
    let m = &ctx.metrics;
    m.checkpoint_in_progress.get_or_create(&ctx.labels).set(0);
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
        .map_or(0, |c| c.tolerable_failures);
    let result = match (result, &failed) {
        (Ok(()), Some(reason)) if in_a_row > tolerated => Err(SlotError::Restore(format!(
            "{in_a_row} checkpoints failed in a row, more than checkpoint.tolerableFailures \
             ({tolerated}): restarting from the last good one; last failure: {reason}"
        ))),
        (Ok(()), Some(_)) => {
            warn!(
                in_a_row,
                tolerated, "checkpoint failed; processing goes on from the last good one"
            );
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
    debug!(partitions = stored.len(), bytes, ?written, elapsed = ?started.elapsed(), "checkpoint");
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

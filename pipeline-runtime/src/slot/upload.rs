//! The slot's snapshot uploader: a thread of its own that encodes and writes a checkpoint's
//! snapshots and prunes old ones, so a slow or unreachable store never stalls the slot loop,
//! never keeps the state lock and never delays a poll past `max.poll.interval.ms`.
//!
//! Every store write and delete of a slot goes through this one thread, in the order the slot
//! asked for them: a prune never races a write of the same partition. At most one checkpoint is
//! stored at a time (Flink's `max-concurrent-checkpoints: 1`); the slot commits its offsets when
//! the thread reports it stored (`slot::commit`). Restores stay on the slot thread: a partition
//! cannot be read before its state is back.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, Sender, TryRecvError, channel},
    },
    time::Instant,
};

use tracing::warn;

use crate::{
    checkpoint::{Checkpointer, snapshot::PartitionSnapshot},
    plan::TopicIndex,
    processor::Progress,
};

/// One partition's snapshot to store.
pub(super) struct Snapshot {
    pub(super) topic: TopicIndex,
    pub(super) name: String,
    pub(super) partition: i32,
    pub(super) snapshot: PartitionSnapshot,
    pub(super) progress: Progress,
}

/// A checkpoint taken under the state lock: its snapshots, not yet stored.
pub(super) struct Taken {
    /// When the checkpoint began (flush included).
    pub(super) started: Instant,
    /// When the snapshots were taken, ms since the epoch (their file names carry it).
    pub(super) written_ms: i64,
    pub(super) snapshots: Vec<Snapshot>,
    /// Exactly once: the position of every partition read, committed in the transaction.
    pub(super) positions: Vec<(TopicIndex, i32, i64)>,
}

/// What of a checkpoint was stored.
pub(super) struct Stored {
    pub(super) started: Instant,
    /// (topic, partition, next offset, progress) of each snapshot written.
    pub(super) partitions: Vec<(TopicIndex, i32, i64, Progress)>,
    pub(super) bytes: usize,
    /// The first failure; the snapshots after it were not tried (the store is likely down for
    /// them too: one bounded wait per checkpoint, not one per partition).
    pub(super) failed: Option<String>,
    pub(super) positions: Vec<(TopicIndex, i32, i64)>,
}

/// Stores a checkpoint's snapshots in order, stopping at the first failure.
pub(super) fn store(checkpointer: &Checkpointer, taken: Taken) -> Stored {
    let _span = tracing::info_span!("checkpoint", written_ms = taken.written_ms).entered();
    let mut stored = Stored {
        started: taken.started,
        partitions: Vec::with_capacity(taken.snapshots.len()),
        bytes: 0,
        failed: None,
        positions: taken.positions,
    };
    for s in taken.snapshots {
        match checkpointer.write(&s.name, s.partition, &s.snapshot, taken.written_ms) {
            Ok(written) => {
                stored.bytes += written.bytes;
                stored
                    .partitions
                    .push((s.topic, s.partition, s.snapshot.next_offset, s.progress));
            }
            Err(e) => {
                warn!(topic = s.name, partition = s.partition, error = %e, "snapshot not written; the slot's partitions keep their previous checkpoint");
                stored.failed = Some(e.to_string());
                break;
            }
        }
    }
    stored
}

enum Job {
    Store(Taken),
    /// (topic, partition, committed offset) of partitions whose checkpoint was committed.
    Prune(Vec<(String, i32, i64)>),
}

enum Done {
    Stored(Stored),
    Pruned,
    /// A job panicked.
    Panicked {
        is_store: bool,
        reason: String,
    },
}

/// The uploader's thread is gone, so a job cannot reach it.
#[derive(Debug, thiserror::Error)]
#[error("the snapshot uploader stopped")]
struct UploaderStopped;

fn run(checkpointer: &Checkpointer, job: Job) -> Done {
    match job {
        Job::Store(taken) => Done::Stored(store(checkpointer, taken)),
        Job::Prune(partitions) => {
            for (topic, partition, committed) in partitions {
                if let Err(e) = checkpointer.prune(&topic, partition, committed) {
                    warn!(topic, partition, error = %e, "old snapshots not pruned");
                }
            }
            Done::Pruned
        }
    }
}

impl Stored {
    /// A checkpoint of which nothing was stored.
    pub(super) fn failed(reason: String) -> Self {
        Self {
            started: Instant::now(),
            partitions: Vec::new(),
            bytes: 0,
            failed: Some(reason),
            positions: Vec::new(),
        }
    }
}

/// The uploader of one slot incarnation. Dropping it lets its thread finish the jobs it has
/// and end; nothing waits for it (a restarted slot resumes from what was committed).
pub(super) struct Uploader {
    jobs: Sender<Job>,
    done: Mutex<Receiver<Done>>,
    /// Jobs sent and not yet reported done.
    outstanding: AtomicUsize,
    /// Store jobs among them (0 or 1).
    storing: AtomicUsize,
    /// A store job the thread never got (it had ended): reported as a failed checkpoint.
    lost: Mutex<Option<Stored>>,
}

impl Uploader {
    /// Starts the thread.
    pub(super) fn start(checkpointer: Arc<Checkpointer>, slot: String) -> std::io::Result<Self> {
        let (jobs, inbox) = channel::<Job>();
        let (outbox, done) = channel::<Done>();
        // Started on the slot's thread: the uploader's lines carry the slot's span.
        let slot_span = tracing::Span::current();
        std::thread::Builder::new()
            .name(format!("sluice-upload-{slot}"))
            .spawn(move || {
                let _span = tracing::info_span!(parent: &slot_span, "uploader").entered();
                for job in inbox {
                    // A panic (a bug) fails this job, not the thread: the slot counts a failed
                    // checkpoint and goes on.
                    let is_store = matches!(job, Job::Store(_));
                    let result = catch_unwind(AssertUnwindSafe(|| run(&checkpointer, job)))
                        .unwrap_or_else(|panic| {
                            let reason = format!(
                                "the snapshot uploader panicked: {}",
                                super::panic_message(panic.as_ref())
                            );
                            warn!(%reason, "snapshot job failed");
                            Done::Panicked { is_store, reason }
                        });
                    if outbox.send(result).is_err() {
                        break; // the slot is gone
                    }
                }
            })?;
        Ok(Self {
            jobs,
            done: Mutex::new(done),
            outstanding: AtomicUsize::new(0),
            storing: AtomicUsize::new(0),
            lost: Mutex::new(None),
        })
    }

    /// Whether a checkpoint is being stored.
    pub(super) fn is_storing(&self) -> bool {
        self.storing.load(Ordering::Relaxed) > 0
    }

    /// Hands a checkpoint to the thread; its result comes from [`Self::stored`] or
    /// [`Self::wait`].
    pub(super) fn store(&self, taken: Taken) {
        if let Err(stopped) = self.send(Job::Store(taken), true) {
            *self.lost.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Stored::failed(stopped.to_string()));
        }
    }

    /// Deletes snapshots older than the retained ones, after a commit.
    pub(super) fn prune(&self, partitions: Vec<(String, i32, i64)>) {
        if !partitions.is_empty() {
            let _ = self.send(Job::Prune(partitions), false);
        }
    }

    /// The stored checkpoint, if the thread finished one; never blocks.
    pub(super) fn stored(&self) -> Option<Stored> {
        if let Some(lost) = self.take_lost() {
            return Some(lost);
        }
        if self.outstanding.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match done.try_recv() {
                Ok(result) => {
                    if let Some(stored) = self.received(result) {
                        return Some(stored);
                    }
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => return self.disconnected(),
            }
        }
    }

    /// Waits until every job sent so far is done, and returns the stored checkpoint among them.
    pub(super) fn wait(&self) -> Option<Stored> {
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stored = self.take_lost();
        while self.outstanding.load(Ordering::Relaxed) > 0 {
            match done.recv() {
                Ok(result) => stored = self.received(result).or(stored),
                Err(_) => return self.disconnected().or(stored),
            }
        }
        stored
    }

    fn send(&self, job: Job, is_store: bool) -> Result<(), UploaderStopped> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        if is_store {
            self.storing.fetch_add(1, Ordering::Relaxed);
        }
        self.jobs.send(job).map_err(|_| {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            if is_store {
                self.storing.fetch_sub(1, Ordering::Relaxed);
            }
            UploaderStopped
        })
    }

    fn received(&self, result: Done) -> Option<Stored> {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        match result {
            Done::Stored(stored) => {
                self.storing.fetch_sub(1, Ordering::Relaxed);
                Some(stored)
            }
            Done::Pruned => None,
            // Nothing is committed for a checkpoint whose store panicked: a failed one.
            Done::Panicked {
                is_store: true,
                reason,
            } => {
                self.storing.fetch_sub(1, Ordering::Relaxed);
                Some(Stored::failed(reason))
            }
            Done::Panicked { .. } => None,
        }
    }

    fn disconnected(&self) -> Option<Stored> {
        let storing = self.storing.swap(0, Ordering::Relaxed) > 0;
        self.outstanding.store(0, Ordering::Relaxed);
        storing.then(|| Stored::failed("the snapshot uploader stopped".into()))
    }

    fn take_lost(&self) -> Option<Stored> {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

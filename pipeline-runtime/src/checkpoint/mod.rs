//! Checkpoints: per-partition snapshots of state in an object store, tied to the consumer
//! group's committed offsets.
//!
//! A slot checkpoints every `checkpoint.interval` and before it releases revoked partitions:
//! flush the producer (every output so far is acknowledged), write a snapshot of each partition
//! whose state changed, then commit each stored partition's offset. The committed offset of a
//! partition therefore always has a snapshot written before it; a crash between the two leaves
//! an older committed offset whose snapshot is still retained. On assignment a slot restores the
//! snapshot whose offset is the committed offset and reads on from there. See
//! docs/checkpoints.md.

pub mod snapshot;
pub mod store;

use snapshot::{PartitionSnapshot, SnapshotError};
use store::{CheckpointStore, SnapshotFile, StoreError};

/// Why a checkpoint or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The group has a committed offset but no snapshot at or before it exists.
    #[error(
        "no snapshot at or before committed offset {offset} in {location}: the state of this partition is lost; restore the snapshots or reset the group's offsets to start over"
    )]
    Missing {
        /// The partition's snapshot directory.
        location: String,
        /// The committed offset.
        offset: i64,
    },
    /// Every candidate snapshot was unreadable; the newest one's error.
    #[error("snapshot {path} cannot be restored: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: SnapshotError,
    },
}

/// A restored partition.
#[derive(Debug)]
pub struct Restored {
    /// The state.
    pub snapshot: PartitionSnapshot,
    /// The file it came from.
    pub file: SnapshotFile,
    /// Its size in bytes.
    pub bytes: usize,
    /// Newer candidates that could not be read, with the reason (the restore fell back past
    /// them and must read on from `snapshot.next_offset`).
    pub skipped: Vec<(String, SnapshotError)>,
}

/// A written snapshot.
#[derive(Debug)]
pub struct Written {
    /// The file.
    pub file: SnapshotFile,
    /// Its size in bytes.
    pub bytes: usize,
}

/// Which snapshots a restore may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest readable one at or before the committed offset (at-least-once: an older one
    /// replays more records, whose outputs are re-sent).
    NewestReadable,
    /// Only the one at the committed offset (exactly-once).
    CommittedOffsetOnly,
}

/// Writes, finds and prunes the snapshots of one pipeline's partitions.
#[derive(Debug)]
pub struct Checkpointer {
    store: CheckpointStore,
    fingerprint: u32,
    retain: usize,
}

impl Checkpointer {
    /// Snapshots in `store` of a pipeline with state fingerprint `fingerprint`, keeping `retain`
    /// committed snapshots per partition.
    pub fn new(store: CheckpointStore, fingerprint: u32, retain: usize) -> Self {
        Self {
            store,
            fingerprint,
            retain: retain.max(1),
        }
    }

    /// The store.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Writes a partition's snapshot.
    pub fn write(
        &self,
        topic: &str,
        partition: i32,
        snapshot: &PartitionSnapshot,
        written_ms: i64,
    ) -> Result<Written, CheckpointError> {
        let bytes = snapshot::encode(snapshot, self.fingerprint);
        let len = bytes.len();
        let file = self
            .store
            .put(topic, partition, snapshot.next_offset, written_ms, bytes)?;
        Ok(Written { file, bytes: len })
    }

    /// The state to resume a partition whose committed offset is `committed`: the newest
    /// readable snapshot at or before it, unreadable newer candidates skipped and reported. With
    /// [`RestoreFrom::CommittedOffsetOnly`] only the snapshot at `committed` will do: under
    /// exactly-once an older one would replay records whose outputs an earlier transaction
    /// already committed.
    pub fn restore(
        &self,
        topic: &str,
        partition: i32,
        committed: i64,
        from: RestoreFrom,
    ) -> Result<Restored, CheckpointError> {
        let mut skipped = Vec::new();
        for file in self.store.list(topic, partition)? {
            if file.offset > committed {
                continue; // written, never committed: a crash before the commit
            }
            if from == RestoreFrom::CommittedOffsetOnly && file.offset < committed {
                break;
            }
            let bytes = self.store.get(&file)?;
            match snapshot::decode(&bytes, self.fingerprint) {
                Ok(snapshot) if snapshot.next_offset == file.offset => {
                    return Ok(Restored {
                        snapshot,
                        bytes: bytes.len(),
                        file,
                        skipped,
                    });
                }
                Ok(_) => skipped.push((
                    file.path.clone(),
                    SnapshotError::NotASnapshot, // its name and content disagree
                )),
                Err(e) => skipped.push((file.path.clone(), e)),
            }
        }
        match skipped.into_iter().next() {
            Some((path, source)) => Err(CheckpointError::Unreadable { path, source }),
            None => Err(CheckpointError::Missing {
                location: self.store.partition_location(topic, partition),
                offset: committed,
            }),
        }
    }

    /// After `committed` was committed for a partition: keeps the newest `retain` snapshots at
    /// or before it, deletes older ones and orphans past it (written, never committed). Returns
    /// how many were deleted.
    pub fn prune(&self, topic: &str, partition: i32, committed: i64) -> Result<usize, StoreError> {
        let mut kept = 0;
        let mut deleted = 0;
        for file in self.store.list(topic, partition)? {
            let keep = file.offset <= committed && kept < self.retain;
            if keep {
                kept += 1;
            } else {
                self.store.delete(&file)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshot::ClockState;

    fn checkpointer(dir: &std::path::Path, retain: usize) -> Checkpointer {
        let location = store::StoreLocation::Directory(dir.to_str().unwrap().to_owned());
        let store = CheckpointStore::new(&location, "g", "w-1").unwrap();
        Checkpointer::new(store, 42, retain)
    }

    fn snapshot(next_offset: i64) -> PartitionSnapshot {
        PartitionSnapshot {
            next_offset,
            clock: ClockState::Local {
                max_event_time: Some(next_offset * 10),
                watermark: next_offset * 10 - 1,
            },
            announced: None,
            windows: None,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn restore_picks_the_snapshot_of_the_committed_offset_and_ignores_uncommitted_ones() {
        let dir = temp("restore");
        let c = checkpointer(&dir, 3);
        for offset in [100, 200, 300] {
            c.write("in", 0, &snapshot(offset), 1_000 + offset).unwrap();
        }
        // Crash after writing 300 but before committing it: the group says 200.
        let restored = c
            .restore("in", 0, 200, RestoreFrom::NewestReadable)
            .unwrap();
        assert_eq!(restored.snapshot.next_offset, 200);
        assert!(restored.skipped.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_snapshot_is_reported_by_path_and_the_previous_one_is_used() {
        let dir = temp("corrupt");
        let c = checkpointer(&dir, 3);
        c.write("in", 0, &snapshot(100), 1).unwrap();
        let newest = c.write("in", 0, &snapshot(200), 2).unwrap();
        let on_disk = dir.join(newest.file.path.as_str());
        let mut bytes = std::fs::read(&on_disk).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&on_disk, bytes).unwrap();
        let restored = c
            .restore("in", 0, 200, RestoreFrom::NewestReadable)
            .unwrap();
        assert_eq!(restored.snapshot.next_offset, 100);
        assert_eq!(restored.skipped.len(), 1);
        assert_eq!(restored.skipped[0].0, newest.file.path);
        assert!(matches!(restored.skipped[0].1, SnapshotError::Checksum));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn under_exactly_once_a_corrupt_snapshot_at_the_committed_offset_is_an_error_not_a_fallback() {
        let dir = temp("corrupt-eos");
        let c = checkpointer(&dir, 3);
        c.write("in", 0, &snapshot(100), 1).unwrap();
        let newest = c.write("in", 0, &snapshot(200), 2).unwrap();
        let exact = c
            .restore("in", 0, 200, RestoreFrom::CommittedOffsetOnly)
            .unwrap();
        assert_eq!(exact.snapshot.next_offset, 200);
        let on_disk = dir.join(newest.file.path.as_str());
        let mut bytes = std::fs::read(&on_disk).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&on_disk, bytes).unwrap();
        let err = c
            .restore("in", 0, 200, RestoreFrom::CommittedOffsetOnly)
            .unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Unreadable { path, source: SnapshotError::Checksum } if *path == newest.file.path),
            "{err}"
        );
        // No snapshot at the committed offset at all: missing, though an older one exists.
        let err = c
            .restore("in", 0, 150, RestoreFrom::CommittedOffsetOnly)
            .unwrap_err();
        assert!(
            matches!(err, CheckpointError::Missing { offset: 150, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_unreadable_snapshot_is_an_error_naming_where_it_was_looked_for() {
        let dir = temp("missing");
        let c = checkpointer(&dir, 3);
        let err = c
            .restore("in", 5, 77, RestoreFrom::NewestReadable)
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CheckpointError::Missing { offset: 77, .. }));
        assert!(text.contains("/g/in/5"), "{text}");
        let only = c.write("in", 5, &snapshot(50), 1).unwrap();
        std::fs::write(dir.join(only.file.path.as_str()), b"garbage").unwrap();
        let err = c
            .restore("in", 5, 77, RestoreFrom::NewestReadable)
            .unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Unreadable { path, source: SnapshotError::NotASnapshot } if *path == only.file.path),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pruning_keeps_the_newest_committed_snapshots_and_deletes_orphans() {
        let dir = temp("prune");
        let c = checkpointer(&dir, 2);
        for offset in [100, 200, 300, 400, 500] {
            c.write("in", 1, &snapshot(offset), offset).unwrap();
        }
        assert_eq!(c.prune("in", 1, 400).unwrap(), 3);
        let left: Vec<_> = c
            .store()
            .list("in", 1)
            .unwrap()
            .into_iter()
            .map(|f| f.offset)
            .collect();
        assert_eq!(left, [400, 300]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Checkpoints of a reference table: its versions and the table-topic offsets they were read
//! up to, in the pipeline's checkpoint store.
//!
//! Compaction keeps only the latest value of each key, so rereading a compacted table topic
//! cannot give back the versions that records replayed after a restart must be joined with.
//! The reader therefore writes the table it holds, every checkpoint interval when it changed
//! and when it stops, under `<prefix>/<group>/table@<name>/0/`, and a restarting process
//! restores the newest readable one and reads the topic on from its offsets. Reading a record
//! twice is harmless: a version with the timestamp of an existing one replaces it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::checkpoint::{
    snapshot::{SnapshotError, decode_framed, encode_framed},
    store::{CheckpointStore, SnapshotFile, StoreError, StoreLocation},
};

use super::{
    SharedTable, TablePlan,
    table::{StoredTable, VersionedTable},
};

/// First bytes of every table checkpoint.
pub const MAGIC: &[u8; 8] = b"SLUICETB";

/// Where and how often a table is checkpointed.
#[derive(Clone, Debug)]
pub struct TableCheckpointConfig {
    /// The pipeline's checkpoint store.
    pub location: StoreLocation,
    /// The pipeline's consumer group (the store's directory).
    pub group: String,
    /// Who writes (the pod).
    pub writer: String,
    /// Time between checkpoints of a changing table.
    pub interval: Duration,
    /// Checkpoints kept.
    pub retain: usize,
}

/// The body of a table checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct TableSnapshot {
    /// The next offset to read, per partition of the table's topic.
    next_offsets: Vec<(i32, i64)>,
    /// The versions read before them (and not pruned).
    table: StoredTable,
}

/// Why a table checkpoint could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum TableRestoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint file cannot be read back.
    #[error("table checkpoint {path} cannot be restored: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: SnapshotError,
    },
}

/// A restored table: its versions, where to read on, and the file they came from.
pub struct RestoredTable {
    /// The versions.
    pub table: VersionedTable,
    /// The next offset to read, per partition.
    pub next_offsets: HashMap<i32, i64>,
    /// The file.
    pub file: SnapshotFile,
}

/// A table's checkpoints, written and restored by its reader.
pub struct TableCheckpoints {
    store: CheckpointStore,
    /// The store's "topic" directory of this table.
    dir: String,
    fingerprint: u32,
    interval: Duration,
    retain: usize,
    /// When a checkpoint was last tried (written or not).
    tried_at: Option<Instant>,
    /// What the last checkpoint written (or restored) held.
    last: Option<Written>,
}

/// What a checkpoint held, to tell whether the table changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Written {
    offsets: i64,
    versions: u64,
    bytes: u64,
}

impl TableCheckpoints {
    /// The checkpoints of the table of `plan`.
    pub fn open(config: &TableCheckpointConfig, plan: &TablePlan) -> Result<Self, StoreError> {
        let store = CheckpointStore::new(&config.location, &config.group, &config.writer)?;
        Ok(Self {
            store,
            // `@` cannot occur in a Kafka topic name, so this never meets a partition's snapshots.
            dir: format!("table@{}", plan.name),
            fingerprint: plan.fingerprint,
            interval: config.interval,
            retain: config.retain.max(1),
            tried_at: None,
            last: None,
        })
    }

    /// Where this table's checkpoints live, for messages.
    pub fn location(&self) -> String {
        self.store.partition_location(&self.dir, 0)
    }

    /// The newest readable checkpoint, `None` when there is none; unreadable newer ones are
    /// skipped with a warning (the older one read on from its offsets gives the same table).
    pub fn restore(
        &mut self,
        plan: &TablePlan,
    ) -> Result<Option<RestoredTable>, TableRestoreError> {
        let mut first_error = None;
        for file in self.store.list(&self.dir, 0)? {
            let bytes = self.store.get(&file)?;
            let decoded =
                decode_framed::<TableSnapshot>(MAGIC, &bytes, self.fingerprint).and_then(|s| {
                    let table = VersionedTable::from_stored(plan.keeping(), s.table)
                        .ok_or(SnapshotError::NotASnapshot)?;
                    Ok((table, s.next_offsets))
                });
            match decoded {
                Ok((table, next_offsets)) => {
                    let size = table.size();
                    self.tried_at = Some(Instant::now());
                    self.last = Some(Written {
                        offsets: next_offsets.iter().map(|(_, o)| o).sum(),
                        versions: size.versions,
                        bytes: size.bytes,
                    });
                    return Ok(Some(RestoredTable {
                        table,
                        next_offsets: next_offsets.into_iter().collect(),
                        file,
                    }));
                }
                Err(source) => {
                    warn!(path = %file.path, error = %source, "table checkpoint skipped");
                    first_error.get_or_insert(TableRestoreError::Unreadable {
                        path: file.path.clone(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }

    /// Writes a checkpoint of `table`, read up to `next`, when one is due: the table changed
    /// since the last one, and an interval passed since the last try (`force`: whenever it
    /// changed, as when the reader stops). Returns its bytes.
    pub fn write_if_due(
        &mut self,
        table: &SharedTable,
        next: &HashMap<i32, i64>,
        force: bool,
    ) -> Result<Option<usize>, StoreError> {
        let size = table.size();
        let now = Written {
            offsets: next.values().sum(),
            versions: size.versions,
            bytes: size.bytes,
        };
        let changed = self.last != Some(now);
        let waited = force || self.tried_at.is_none_or(|at| at.elapsed() >= self.interval);
        if !(changed && waited) {
            return Ok(None);
        }
        self.tried_at = Some(Instant::now());
        let mut next_offsets: Vec<(i32, i64)> = next.iter().map(|(p, o)| (*p, *o)).collect();
        next_offsets.sort_unstable();
        let snapshot = TableSnapshot {
            next_offsets,
            table: table.stored(),
        };
        let bytes = encode_framed(MAGIC, &snapshot, self.fingerprint);
        let len = bytes.len();
        self.store.put(
            &self.dir,
            0,
            now.offsets,
            crate::slot::wall_clock_ms(),
            bytes,
        )?;
        self.last = Some(now);
        for old in self.store.list(&self.dir, 0)?.into_iter().skip(self.retain) {
            self.store.delete(&old)?;
        }
        Ok(Some(len))
    }
}

/// Restores the newest checkpoint of `table` into it; returns the offsets to read on from
/// (empty: from the beginning).
pub fn restore_into(checkpoints: &mut TableCheckpoints, table: &SharedTable) -> HashMap<i32, i64> {
    match checkpoints.restore(&table.plan) {
        Ok(Some(restored)) => {
            let size = restored.table.size();
            info!(
                path = %restored.file.path,
                versions = size.versions,
                bytes = size.bytes,
                "table restored from its checkpoint; reading on from its offsets"
            );
            table.replace(restored.table);
            restored.next_offsets
        }
        Ok(None) => {
            info!(location = %checkpoints.location(), "no table checkpoint yet: reading the topic from the beginning");
            HashMap::new()
        }
        Err(e) => {
            warn!(error = %e, "the table checkpoint cannot be restored: reading the topic from the beginning, which holds only what compaction kept");
            HashMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::enrich::Tables;

    fn plan(extra: &str) -> TablePlan {
        let spec: pipeline_crds::enrich::EnrichSpec = serde_norway::from_str(&format!(
            "{{name: profile, topic: profiles, lookup: user_id, {extra}}}"
        ))
        .unwrap();
        TablePlan::of(&spec, None)
    }

    fn config(dir: &std::path::Path, interval: Duration) -> TableCheckpointConfig {
        TableCheckpointConfig {
            location: StoreLocation::Directory(dir.to_str().unwrap().to_owned()),
            group: "g".into(),
            writer: "pod-0".into(),
            interval,
            retain: 2,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-table-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_restored_table_has_the_versions_and_offsets_written_and_only_changes_are_written() {
        let dir = temp("restore");
        let tables = Tables::new(&[plan("")]);
        let table = tables.iter().next().unwrap();
        table.load([
            ("42".to_owned(), 100, Some(json!({"country": "fr"}))),
            ("42".to_owned(), 200, Some(json!({"country": "de"}))),
            ("7".to_owned(), 150, None),
        ]);
        let next = HashMap::from([(0, 2), (1, 1)]);
        let mut checkpoints =
            TableCheckpoints::open(&config(&dir, Duration::ZERO), &table.plan).unwrap();
        assert!(
            checkpoints
                .write_if_due(table, &next, false)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            checkpoints.write_if_due(table, &next, true).unwrap(),
            None,
            "unchanged: not written again"
        );
        let fresh = Tables::new(&[plan("")]);
        let into = fresh.iter().next().unwrap();
        let mut reader = TableCheckpoints::open(&config(&dir, Duration::ZERO), &into.plan).unwrap();
        assert_eq!(restore_into(&mut reader, into), next);
        let mut record = json!({"user_id": 42});
        fresh.join(&mut record, 150, &mut crate::enrich::JoinedRows::of(&fresh));
        assert_eq!(
            record["profile"],
            json!({"country": "fr"}),
            "the old version came back"
        );
        assert_eq!(into.size(), table.size());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_checkpoint_of_another_table_definition_is_not_restored_and_old_ones_are_pruned() {
        let dir = temp("fingerprint");
        let tables = Tables::new(&[plan("")]);
        let table = tables.iter().next().unwrap();
        let mut checkpoints =
            TableCheckpoints::open(&config(&dir, Duration::ZERO), &table.plan).unwrap();
        for offset in 1..=4 {
            table.load([("k".to_owned(), offset, Some(json!(offset)))]);
            checkpoints
                .write_if_due(table, &HashMap::from([(0, offset)]), false)
                .unwrap();
        }
        let kept = checkpoints.store.list(&checkpoints.dir, 0).unwrap();
        assert_eq!(kept.iter().map(|f| f.offset).collect::<Vec<_>>(), [4, 3]);
        let other = Tables::new(&[plan("fields: [country]")]);
        let into = other.iter().next().unwrap();
        let mut reader = TableCheckpoints::open(&config(&dir, Duration::ZERO), &into.plan).unwrap();
        let err = reader.restore(&into.plan).err().expect("refused");
        assert!(err.to_string().contains("different"), "{err}");
        assert!(
            restore_into(&mut reader, into).is_empty(),
            "read from the beginning"
        );
        assert_eq!(into.size().versions, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

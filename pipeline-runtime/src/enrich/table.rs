//! One reference table in memory: every key's versions in timestamp order, so a record can be
//! joined with the version in force at its event time, and the versions a replay may still
//! need can be kept, checkpointed and pruned.
//!
//! Pure: the table reader feeds it decoded table records, slots look keys up.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use smallvec::SmallVec;
use smol_str::SmolStr;

/// Bytes counted per version beyond its key and value text: the version's own fields and its
/// slot in the key's list, the map entry (amortised), the parsed value's allocations.
const VERSION_OVERHEAD: usize = 96;

/// Which versions a table keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keeping {
    /// Every version within the history (lookups as of an event time).
    History,
    /// Only the version read last (lookups of the latest).
    Latest,
}

/// What a lookup found.
#[derive(Clone, Debug, PartialEq)]
pub enum Found<'a> {
    /// The joined object of the version in force.
    Row(&'a Value),
    /// No version at that time, or a tombstone.
    Missing,
}

impl<'a> Found<'a> {
    fn of(row: Option<&'a Arc<Value>>) -> Self {
        row.map_or(Found::Missing, |r| Found::Row(r))
    }
}

/// A key's versions, oldest first; the first one inline (most keys have one).
type Versions = SmallVec<[Version; 1]>;

/// One version of a key: its timestamp, and its joined object (`None`: a tombstone).
#[derive(Clone, Debug, PartialEq)]
struct Version {
    ts: i64,
    row: Option<Arc<Value>>,
    /// The bytes it is counted for.
    bytes: usize,
}

/// The figures of a table (its metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSize {
    /// Keys whose latest version is a row (not a tombstone).
    pub rows: u64,
    /// Versions kept, tombstones included.
    pub versions: u64,
    /// Bytes counted for them.
    pub bytes: u64,
}

/// A versioned table.
#[derive(Debug)]
pub struct VersionedTable {
    keeping: Keeping,
    keys: HashMap<SmolStr, Versions, foldhash::fast::RandomState>,
    size: TableSize,
    /// The highest timestamp loaded (`i64::MIN` before any).
    newest: i64,
}

impl VersionedTable {
    /// An empty table.
    pub fn new(keeping: Keeping) -> Self {
        Self {
            keeping,
            keys: HashMap::default(),
            size: TableSize::default(),
            newest: i64::MIN,
        }
    }

    /// Its figures.
    pub fn size(&self) -> TableSize {
        self.size
    }

    /// The highest timestamp loaded, if any.
    pub fn newest(&self) -> Option<i64> {
        (self.newest != i64::MIN).then_some(self.newest)
    }

    /// Loads a table record read after every record already loaded: `row` is its joined object,
    /// `None` for a tombstone. A version with the timestamp of an existing one replaces it (the
    /// later record of a key wins, as compaction keeps it).
    pub fn load(&mut self, key: &str, ts: i64, row: Option<Value>) {
        let bytes = key.len() + VERSION_OVERHEAD + row.as_ref().map_or(0, json_len);
        let version = Version {
            ts,
            row: row.map(Arc::new),
            bytes,
        };
        self.newest = self.newest.max(ts);
        let was_row = self.latest_is_row(key);
        let versions = match self.keys.get_mut(key) {
            Some(v) => v,
            None => self.keys.entry(SmolStr::new(key)).or_default(),
        };
        let mut freed = Vec::new();
        match self.keeping {
            Keeping::Latest => freed.extend(versions.drain(..)),
            Keeping::History => {
                let at = versions.partition_point(|v| v.ts < ts);
                if versions.get(at).is_some_and(|v| v.ts == ts) {
                    freed.push(versions.remove(at));
                }
            }
        }
        let at = versions.partition_point(|v| v.ts <= ts);
        versions.insert(at, version);
        self.size.versions += 1;
        self.size.bytes += bytes as u64;
        for old in freed {
            self.size.versions -= 1;
            self.size.bytes -= old.bytes as u64;
        }
        self.recount(key, was_row);
    }

    fn latest_is_row(&self, key: &str) -> bool {
        self.keys
            .get(key)
            .and_then(|v| v.last())
            .is_some_and(|v| v.row.is_some())
    }

    fn recount(&mut self, key: &str, was_row: bool) {
        match (was_row, self.latest_is_row(key)) {
            (false, true) => self.size.rows += 1,
            (true, false) => self.size.rows -= 1,
            _ => {}
        }
    }

    /// The version of `key` in force at `at` (the greatest timestamp at or before it).
    pub fn as_of(&self, key: &str, at: i64) -> Found<'_> {
        Found::of(self.row_as_of(key, at))
    }

    /// The version of `key` read last.
    pub fn latest(&self, key: &str) -> Found<'_> {
        Found::of(self.latest_row(key))
    }

    /// The row of [`Self::as_of`], shared.
    pub fn row_as_of(&self, key: &str, at: i64) -> Option<&Arc<Value>> {
        let versions = self.keys.get(key)?;
        let after = versions.partition_point(|v| v.ts <= at);
        versions[after.checked_sub(1)?].row.as_ref()
    }

    /// The row of [`Self::latest`], shared.
    pub fn latest_row(&self, key: &str) -> Option<&Arc<Value>> {
        self.keys.get(key)?.last()?.row.as_ref()
    }

    /// Drops the versions no lookup at or after `cutoff` can find: those older than the one in
    /// force at `cutoff`, and keys whose only version left is a tombstone in force there.
    pub fn prune(&mut self, cutoff: i64) {
        let mut freed = TableSize::default();
        self.keys.retain(|_, versions| {
            let in_force = versions.partition_point(|v| v.ts <= cutoff);
            if in_force > 1 {
                for old in versions.drain(..in_force - 1) {
                    freed.versions += 1;
                    freed.bytes += old.bytes as u64;
                }
            }
            let dead = versions.len() == 1 && versions[0].ts <= cutoff && versions[0].row.is_none();
            if dead {
                freed.versions += 1;
                freed.bytes += versions[0].bytes as u64;
            }
            !dead
        });
        self.size.versions -= freed.versions;
        self.size.bytes -= freed.bytes;
    }

    /// The table as stored in a checkpoint.
    pub fn to_stored(&self) -> StoredTable {
        let mut keys: Vec<StoredKey> = self
            .keys
            .iter()
            .map(|(key, versions)| StoredKey {
                key: key.to_string(),
                versions: versions
                    .iter()
                    .map(|v| (v.ts, v.row.as_ref().map(|r| r.to_string())))
                    .collect(),
            })
            .collect();
        keys.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        StoredTable { keys }
    }

    /// A table from a checkpoint; `None` when a stored row is not JSON.
    pub fn from_stored(keeping: Keeping, stored: StoredTable) -> Option<Self> {
        let mut table = Self::new(keeping);
        for key in stored.keys {
            for (ts, row) in key.versions {
                let row = row
                    .map(|text| serde_json::from_str(&text))
                    .transpose()
                    .ok()?;
                table.load(&key.key, ts, row);
            }
        }
        Some(table)
    }
}

/// The length of a value's JSON text, without writing it anywhere.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("JSON values serialize");
    count.0
}

/// A table in a checkpoint: each key's versions, oldest first, rows as JSON text (postcard
/// cannot read back a `serde_json::Value`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredTable {
    keys: Vec<StoredKey>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredKey {
    key: String,
    versions: Vec<(i64, Option<String>)>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_is_joined_with_the_version_in_force_at_its_time_and_a_tombstone_deletes() {
        let mut t = VersionedTable::new(Keeping::History);
        t.load("42", 100, Some(json!({"country": "fr"})));
        t.load("42", 200, Some(json!({"country": "de"})));
        t.load("42", 300, None);
        t.load("7", 50, Some(json!({"country": "it"})));
        assert_eq!(t.as_of("42", 99), Found::Missing);
        assert_eq!(t.as_of("42", 100), Found::Row(&json!({"country": "fr"})));
        assert_eq!(t.as_of("42", 299), Found::Row(&json!({"country": "de"})));
        assert_eq!(t.as_of("42", 300), Found::Missing);
        assert_eq!(t.latest("42"), Found::Missing);
        assert_eq!(t.latest("7"), Found::Row(&json!({"country": "it"})));
        assert_eq!(t.as_of("nobody", 1_000), Found::Missing);
        assert_eq!(
            (t.size().rows, t.size().versions, t.newest()),
            (1, 4, Some(300))
        );
    }

    #[test]
    fn latest_keeps_one_version_per_key_the_one_read_last() {
        let mut t = VersionedTable::new(Keeping::Latest);
        t.load("k", 200, Some(json!({"v": 1})));
        t.load("k", 100, Some(json!({"v": 2})));
        assert_eq!(t.latest("k"), Found::Row(&json!({"v": 2})));
        assert_eq!(t.size().versions, 1);
        t.load("k", 300, None);
        assert_eq!((t.size().rows, t.size().versions), (0, 1));
        t.prune(i64::MAX);
        assert_eq!(t.size(), TableSize::default());
    }

    #[test]
    fn pruning_keeps_the_version_in_force_and_drops_dead_keys() {
        let mut t = VersionedTable::new(Keeping::History);
        t.load("a", 10, Some(json!(1)));
        t.load("a", 20, Some(json!(2)));
        t.load("a", 30, Some(json!(3)));
        t.load("b", 10, None);
        let before = t.size().bytes;
        t.prune(25);
        assert_eq!(t.as_of("a", 25), Found::Row(&json!(2)));
        assert_eq!(t.as_of("a", 30), Found::Row(&json!(3)));
        assert_eq!(
            t.as_of("a", 15),
            Found::Missing,
            "pruned: before the cutoff"
        );
        assert_eq!(t.size().versions, 2);
        assert!(t.size().bytes < before);
    }

    fn event() -> impl Strategy<Value = (u8, i64, Option<u8>)> {
        (0u8..4, 0i64..50, proptest::option::weighted(0.8, 0u8..100))
    }

    /// The naive as-of rule over every event loaded: the greatest timestamp at or before `at`,
    /// among equal timestamps the one loaded last.
    fn model(events: &[(u8, i64, Option<u8>)], key: u8, at: i64) -> Option<Value> {
        events
            .iter()
            .enumerate()
            .filter(|(_, (k, ts, _))| *k == key && *ts <= at)
            .max_by_key(|(i, (_, ts, _))| (*ts, *i))
            .and_then(|(_, (_, _, v))| v.map(|v| json!({ "v": v })))
    }

    proptest! {
        /// Lookups equal the naive rule; pruning changes no lookup at or after its cutoff; the
        /// byte and version counts equal a recount; a stored table reads back the same.
        #[test]
        fn lookups_follow_the_as_of_rule_through_pruning_and_storage(
            events in proptest::collection::vec(event(), 0..80),
            cutoff in 0i64..60,
        ) {
            let mut t = VersionedTable::new(Keeping::History);
            for (k, ts, v) in &events {
                t.load(&k.to_string(), *ts, v.map(|v| json!({ "v": v })));
            }
            let found = |t: &VersionedTable, k: u8, at: i64| match t.as_of(&k.to_string(), at) {
                Found::Row(r) => Some(r.clone()),
                Found::Missing => None,
            };
            for k in 0..4 {
                for at in 0..60 {
                    prop_assert_eq!(found(&t, k, at), model(&events, k, at));
                }
            }
            t.prune(cutoff);
            let recount: u64 = t.keys.values().flatten().map(|v| v.bytes as u64).sum();
            prop_assert_eq!(t.size().bytes, recount);
            prop_assert_eq!(t.size().versions, t.keys.values().map(|v| v.len() as u64).sum::<u64>());
            let rows = t.keys.values().filter(|v| v.last().is_some_and(|v| v.row.is_some())).count();
            prop_assert_eq!(t.size().rows, rows as u64);
            for k in 0..4 {
                for at in cutoff..60 {
                    prop_assert_eq!(found(&t, k, at), model(&events, k, at));
                }
            }
            let stored = postcard::to_stdvec(&t.to_stored()).unwrap();
            let back = VersionedTable::from_stored(Keeping::History, postcard::from_bytes(&stored).unwrap()).unwrap();
            for k in 0..4 {
                for at in cutoff..60 {
                    prop_assert_eq!(found(&back, k, at), found(&t, k, at));
                }
            }
            prop_assert_eq!(back.size(), t.size());
        }
    }
}

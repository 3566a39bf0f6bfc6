//! Stream–table enrichment (`spec.enrich`): reference tables read from compacted topics, one
//! copy per process shared by its slots, joined into each record as of its event time.
//!
//! - [`table`]: one table's versions (pure);
//! - [`reader`]: the thread that loads a table from its topic and says how far it has read;
//! - here: the compiled entries ([`TablePlan`]), the process's tables ([`Tables`]), the join.

use std::{
    borrow::Cow,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use pipeline_crds::{
    enrich::{AsOf, DEFAULT_MAX_BYTES, EnrichSpec, OnMissing},
    transform::{TimestampSource, TimestampSpec},
};
use serde_json::Value;

use crate::{
    decode::{Decoder, SourceDecoding},
    event_time::EventTime,
    field::{FieldPath, FieldSource, key_text},
};

pub mod checkpoint;
pub mod reader;
pub mod table;

use table::{Keeping, TableSize, VersionedTable};

/// One `spec.enrich` entry, compiled.
#[derive(Clone, Debug)]
pub struct TablePlan {
    /// The entry's name: the record field the joined object lands in.
    pub name: String,
    /// The table's topic.
    pub topic: String,
    /// How its values are decoded (`format`).
    pub decoding: SourceDecoding,
    /// The value field holding the table's key (`None`: the Kafka key).
    pub key: Option<FieldPath>,
    /// The record field looked up.
    pub lookup: FieldPath,
    /// The fields copied (`None`: all).
    pub fields: Option<Vec<FieldPath>>,
    /// Which version a record is joined with.
    pub as_of: AsOf,
    /// A table record's time.
    pub time: EventTime,
    /// What becomes of a record without a version.
    pub on_missing: OnMissing,
    /// How far back versions are kept, ms.
    pub history_ms: i64,
    /// The memory bound, bytes.
    pub max_bytes: u64,
    /// A checksum of the settings that shape the table's content (topic, format, key, fields,
    /// timestamp, `asOf`): a table checkpoint is only restored into a table with the same one.
    pub fingerprint: u32,
}

impl TablePlan {
    /// Compiles a validated entry; `registry_url` is the pipeline's Schema Registry (Avro
    /// tables without an inline schema).
    pub fn of(spec: &EnrichSpec, registry_url: Option<&str>) -> Self {
        let time = spec.timestamp.as_ref().map(|t| TimestampSpec {
            source: TimestampSource::Field,
            field: Some(t.field.clone()),
            format: t.format,
            max_ahead_of_wall_clock: None,
            max_ahead_of_watermark: None,
        });
        Self {
            name: spec.name.clone(),
            topic: spec.topic.clone(),
            decoding: SourceDecoding::of(&spec.format, registry_url),
            key: spec.key.as_deref().map(FieldPath::parse),
            lookup: FieldPath::parse(&spec.lookup),
            fields: (spec.fields.as_ref()).map(|f| f.iter().map(|p| FieldPath::parse(p)).collect()),
            as_of: spec.as_of,
            time: EventTime::new(time.as_ref()),
            on_missing: spec.on_missing,
            history_ms: i64::try_from(spec.history().as_millis()).unwrap_or(i64::MAX),
            max_bytes: spec
                .max_bytes
                .as_ref()
                .and_then(|q| pipeline_crds::quantity::parse_quantity(q).ok())
                .map_or(DEFAULT_MAX_BYTES, |b| b as u64),
            fingerprint: content_fingerprint(spec),
        }
    }

    /// The joined object of a table value: the listed fields under their last segment (null
    /// when absent), or the whole value.
    pub fn row_of(&self, value: &Value) -> Value {
        match &self.fields {
            None => value.clone(),
            Some(fields) => Value::Object(
                fields
                    .iter()
                    .map(|f| {
                        (
                            f.leaf().to_owned(),
                            f.get(value).cloned().unwrap_or(Value::Null),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// The table key of a record of the table topic, as text: the `key` field of its value, or
    /// its Kafka key (always, for a tombstone, which has no value).
    pub fn key_of(&self, kafka_key: Option<&[u8]>, value: Option<&Value>) -> Option<String> {
        let kafka = || {
            kafka_key
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_owned)
        };
        match (&self.key, value) {
            (Some(path), Some(v)) => path.get(v).filter(|v| !v.is_null()).map(key_text),
            _ => kafka(),
        }
    }

    /// A record of the table topic as the table loads it: (key, time, joined object or `None`
    /// for a tombstone), decoded by `decoder` (made from [`Self::decoding`]).
    pub fn table_record(
        &self,
        decoder: &mut Decoder,
        kafka_key: Option<&[u8]>,
        payload: Option<&[u8]>,
        kafka_ms: Option<i64>,
    ) -> Result<(String, i64, Option<Value>), TableRecordError> {
        let value = match payload {
            None => None,
            Some(bytes) => match decoder.decode(Some(bytes)) {
                Ok(v) => Some(v),
                Err(e) if e.is_transient() => {
                    return Err(TableRecordError::Unavailable(e.to_string()));
                }
                Err(e) => return Err(TableRecordError::Malformed(format!("undecodable: {e}"))),
            },
        };
        let malformed = |why: String| TableRecordError::Malformed(why);
        let key = (self.key_of(kafka_key, value.as_ref()))
            .ok_or_else(|| malformed("it has no key".into()))?;
        let ts = match (&value, kafka_ms) {
            (Some(v), _) => self
                .time
                .extract(v, kafka_ms, 0)
                .map_err(|e| malformed(e.to_string()))?,
            // A tombstone has no fields: its Kafka timestamp is its time.
            (None, Some(ms)) => ms,
            (None, None) => return Err(malformed("a tombstone without a timestamp".into())),
        };
        Ok((key, ts, value.map(|v| self.row_of(&v))))
    }

    fn keeping(&self) -> Keeping {
        match self.as_of {
            AsOf::EventTime => Keeping::History,
            AsOf::Latest => Keeping::Latest,
        }
    }
}

/// The checksum of the settings that shape a table's content (see [`TablePlan::fingerprint`]).
fn content_fingerprint(spec: &EnrichSpec) -> u32 {
    let shaping = serde_json::json!({
        "topic": spec.topic,
        "format": spec.format,
        "key": spec.key,
        "fields": spec.fields,
        "asOf": spec.as_of,
        "timestamp": spec.timestamp,
    });
    crc32fast::hash(shaping.to_string().as_bytes())
}

/// Why a table record was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum TableRecordError {
    /// It cannot be loaded, ever (dead-lettered).
    #[error("{0}")]
    Malformed(String),
    /// Not now: its schema cannot be fetched (the registry is down); read it again later.
    #[error("{0}")]
    Unavailable(String),
}

/// How far a table's reader has come.
#[derive(Clone, Debug, Default)]
struct Progress {
    /// Read up to the end offsets it had at start.
    loaded: bool,
    /// The latest instant whose end offsets the reader has since read up to.
    caught_up_at: Option<Instant>,
    /// Why the reader cannot go on (the topic unreadable, the memory bound passed).
    failure: Option<String>,
    /// Whether the failure stops the pipeline for good (the memory bound).
    fatal: bool,
    /// Records behind the end offsets last read.
    lag: i64,
}

/// One table of a process, shared by its slots.
pub struct SharedTable {
    /// Its entry.
    pub plan: TablePlan,
    table: RwLock<VersionedTable>,
    progress: Mutex<Progress>,
    /// Lookups that found a version.
    pub hits: AtomicU64,
    /// Lookups that found none.
    pub misses: AtomicU64,
    /// Table records dead-lettered (malformed, no key).
    pub rejected: AtomicU64,
    /// A slot holds records until the next round: the reader starts it without waiting out
    /// the idle round time (so a slot catching up on a backlog is not paced by it).
    wanted: AtomicBool,
}

impl SharedTable {
    fn new(plan: TablePlan) -> Self {
        Self {
            table: RwLock::new(VersionedTable::new(plan.keeping())),
            plan,
            progress: Mutex::new(Progress::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
        }
    }

    /// Loads table records (key, time, joined object or tombstone) read in this order; false
    /// (and the table stops) when they take it past `maxBytes`.
    pub fn load(&self, records: impl IntoIterator<Item = (String, i64, Option<Value>)>) -> bool {
        let mut table = self.table.write().expect("not poisoned");
        for (key, ts, row) in records {
            table.load(&key, ts, row);
        }
        let bytes = table.size().bytes;
        drop(table);
        if bytes > self.plan.max_bytes {
            self.fail(
                format!(
                    "table {} (topic {}) holds {bytes} bytes, past its maxBytes of {}: raise spec.enrich maxBytes (and the pod's memory), or lower history",
                    self.plan.name, self.plan.topic, self.plan.max_bytes
                ),
                true,
            );
            return false;
        }
        true
    }

    /// The table as stored in a checkpoint.
    pub fn stored(&self) -> table::StoredTable {
        self.table.read().expect("not poisoned").to_stored()
    }

    /// Replaces the versions (by those restored from a checkpoint).
    pub fn replace(&self, table: VersionedTable) {
        *self.table.write().expect("not poisoned") = table;
    }

    /// Drops versions no record can still need: older than `history` before `oldest_open`.
    pub fn prune(&self, oldest_open: i64) {
        let cutoff = oldest_open.saturating_sub(self.plan.history_ms);
        self.table.write().expect("not poisoned").prune(cutoff);
    }

    /// Its figures.
    pub fn size(&self) -> TableSize {
        self.table.read().expect("not poisoned").size()
    }

    /// The highest table timestamp loaded.
    pub fn newest(&self) -> Option<i64> {
        self.table.read().expect("not poisoned").newest()
    }

    /// Records behind the end offsets last read.
    pub fn lag(&self) -> i64 {
        self.progress().lag
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().expect("not poisoned")
    }

    /// The reader has read up to the end offsets it saw at `since`.
    pub fn caught_up(&self, since: Instant) {
        let mut p = self.progress();
        p.loaded = true;
        p.lag = 0;
        if !p.fatal {
            p.failure = None;
        }
        p.caught_up_at = Some(p.caught_up_at.map_or(since, |at| at.max(since)));
    }

    /// Whether a slot has held records for the next round since the last call.
    pub fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }

    /// The reader is `lag` records behind the end offsets it last saw.
    pub fn behind(&self, lag: i64) {
        self.progress().lag = lag;
    }

    /// The reader cannot go on: said on `/readyz` until it can (`fatal`: never again).
    pub fn fail(&self, reason: String, fatal: bool) {
        let mut p = self.progress();
        if p.fatal {
            return;
        }
        p.failure = Some(reason);
        p.fatal = fatal;
    }

    /// Whether records read at `read_at` may be joined now.
    fn admits(&self, read_at: Instant) -> Admission {
        let p = self.progress();
        if p.fatal {
            return Admission::Stopped(p.failure.clone().unwrap_or_default());
        }
        let waiting = |why: String| Admission::Wait(why);
        if !p.loaded {
            let why = p.failure.clone().unwrap_or_else(|| {
                format!(
                    "loading table {} from topic {} ({} records to go)",
                    self.plan.name, self.plan.topic, p.lag
                )
            });
            return waiting(why);
        }
        match self.plan.as_of {
            AsOf::Latest => Admission::Join,
            AsOf::EventTime if p.caught_up_at.is_some_and(|at| at >= read_at) => Admission::Join,
            AsOf::EventTime => {
                self.wanted.store(true, Ordering::Relaxed);
                waiting(p.failure.clone().unwrap_or_else(|| {
                format!(
                    "table {} has not read topic {} up to the end offsets it had when the records were read",
                    self.plan.name, self.plan.topic
                )
                }))
            }
        }
    }

    /// The row of this table for the record `fields` reads (the record and the rows joined
    /// before this table's), whose event time is `event_ms`: `Ok(None)` for none kept as null
    /// (`onMissing: keep`), `Err` when the record is dropped or dead-lettered. The lookup is
    /// counted in `counts`.
    fn find(
        &self,
        fields: WithJoined<'_>,
        event_ms: i64,
        counts: &mut LookupCount,
    ) -> Result<Option<Arc<Value>>, Joined> {
        let name = &self.plan.name;
        let Some(record) = fields.record.as_object() else {
            return Err(Joined::DeadLetter(format!(
                "enrich {name}: the record is not an object, so nothing can be joined into it"
            )));
        };
        if record.contains_key(name) {
            return Err(Joined::DeadLetter(format!(
                "enrich {name}: the record already has a field {name}, which the join would replace"
            )));
        }
        // A string is looked up as it is (no copy); other values as their JSON text.
        let key: Option<Cow<'_, str>> = match fields.field(&self.plan.lookup) {
            None => None,
            Some(Value::String(s)) => Some(Cow::Borrowed(s)),
            Some(v) => Some(Cow::Owned(key_text(v))),
        };
        let table = self.table.read().expect("not poisoned");
        let row = match (&key, self.plan.as_of) {
            (None, _) => None,
            (Some(k), AsOf::EventTime) => table.row_as_of(k, event_ms).cloned(),
            (Some(k), AsOf::Latest) => table.latest_row(k).cloned(),
        };
        drop(table);
        if row.is_some() {
            counts.hits += 1;
            return Ok(row);
        }
        counts.misses += 1;
        match self.plan.on_missing {
            OnMissing::Keep => Ok(None),
            OnMissing::Drop => Err(Joined::Dropped),
            OnMissing::DeadLetter => {
                let lookup = self.plan.lookup.as_str();
                Err(Joined::DeadLetter(match &key {
                    None => format!("enrich {name}: the record has no {lookup} to look up"),
                    Some(k) => format!("enrich {name}: no version of key {k:?} at {event_ms}"),
                }))
            }
        }
    }
}

/// The rows a record's tables joined, in table order (`None`: none, kept as null), kept beside
/// the record instead of copied into it: the windowed stages read `name.field` from them
/// through [`WithJoined`]. A processor keeps one and reuses it record after record.
#[derive(Debug, Default)]
pub struct JoinedRows {
    /// The tables' names, in order.
    names: Vec<String>,
    rows: Vec<Option<Arc<Value>>>,
    /// Lookups per table not yet added to the tables' counters ([`Tables::count_lookups`]):
    /// counted here, by one slot, so slots on other cores do not contend on them per record.
    counts: Vec<LookupCount>,
}

/// Lookups of one table by one processor.
#[derive(Clone, Copy, Debug, Default)]
pub struct LookupCount {
    hits: u64,
    misses: u64,
}

impl JoinedRows {
    /// Rows of `tables`' entries.
    pub fn of(tables: &Tables) -> Self {
        Self {
            names: tables.iter().map(|t| t.plan.name.clone()).collect(),
            rows: Vec::with_capacity(tables.tables.len()),
            counts: vec![LookupCount::default(); tables.tables.len()],
        }
    }
}

/// A record read with the rows joined to it beside it: `profile.country` is read from the row
/// of the table `profile`, anything else from the record, as if the rows had been copied into
/// it under their names.
#[derive(Clone, Copy, Debug)]
pub struct WithJoined<'a> {
    /// The record.
    pub record: &'a Value,
    /// Its joined rows.
    pub joined: &'a JoinedRows,
}

impl<'a> FieldSource<'a> for WithJoined<'a> {
    fn field(self, path: &FieldPath) -> Option<&'a Value> {
        let root = path.root();
        // (Rows not looked up, as when they were copied into the record: read the record.)
        let looked_up = self.joined.names.iter().position(|n| n == root);
        match looked_up.and_then(|i| self.joined.rows.get(i)) {
            Some(row) => path.get_below_root(row.as_deref()?),
            None => path.get(self.record),
        }
    }
}

/// Whether records may be joined yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Join,
    /// Not yet: held, with why.
    Wait(String),
    /// Never: the pipeline stops, with why (a table past its memory bound).
    Stopped(String),
}

/// What the join did with a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Joined {
    /// Joined (with null where `onMissing: keep` found nothing).
    Kept,
    /// Dropped by `onMissing: drop`.
    Dropped,
    /// To the dead-letter topic, with why.
    DeadLetter(String),
}

/// The tables of a process, in spec order, and the oldest event time each of its processors
/// may still join (what pruning keeps history for).
#[derive(Default)]
pub struct Tables {
    tables: Vec<Arc<SharedTable>>,
    open: Mutex<Vec<std::sync::Weak<AtomicI64>>>,
}

impl Tables {
    /// Empty tables for the entries.
    pub fn new(plans: &[TablePlan]) -> Self {
        Self {
            tables: plans
                .iter()
                .cloned()
                .map(|p| Arc::new(SharedTable::new(p)))
                .collect(),
            open: Mutex::new(Vec::new()),
        }
    }

    /// A processor's say in pruning: it stores there the oldest event time it may still join
    /// (`i64::MAX` until it knows). Forgotten when dropped.
    pub fn open_time(&self) -> Arc<AtomicI64> {
        let clock = Arc::new(AtomicI64::new(i64::MAX));
        let mut open = self.open.lock().expect("not poisoned");
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&clock));
        clock
    }

    /// The oldest event time any processor may still join, if they have said.
    fn oldest_open(&self) -> Option<i64> {
        let open = self.open.lock().expect("not poisoned");
        open.iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .filter(|t| *t != i64::MAX)
    }

    /// Drops the versions no processor can still need.
    pub fn prune_to_open(&self) {
        if let Some(oldest) = self.oldest_open() {
            self.prune(oldest);
        }
    }

    /// Whether there are none (the pipeline enriches nothing).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The tables.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<SharedTable>> {
        self.tables.iter()
    }

    /// Whether any table is joined as of event time.
    pub fn need_event_time(&self) -> bool {
        self.tables.iter().any(|t| t.plan.as_of == AsOf::EventTime)
    }

    /// Whether records read at `read_at` may be joined now: the first table that says otherwise.
    pub fn admits(&self, read_at: Instant) -> Admission {
        for table in &self.tables {
            match table.admits(read_at) {
                Admission::Join => {}
                other => return other,
            }
        }
        Admission::Join
    }

    /// Looks up every table for `record`, in order, into `joined` (a later entry may look up
    /// what an earlier one joined), stopping at the first that drops or dead-letters it.
    pub fn look_up(&self, record: &Value, event_ms: i64, joined: &mut JoinedRows) -> Joined {
        joined.rows.clear();
        joined
            .counts
            .resize(self.tables.len(), LookupCount::default());
        for (i, table) in self.tables.iter().enumerate() {
            let mut count = joined.counts[i];
            let fields = WithJoined {
                record,
                joined: &*joined,
            };
            let found = table.find(fields, event_ms, &mut count);
            joined.counts[i] = count;
            match found {
                Ok(row) => joined.rows.push(row),
                Err(other) => return other,
            }
        }
        Joined::Kept
    }

    /// Joins every table into `record`: the rows [`Self::look_up`] finds, copied in under
    /// their names (`null` for none), for the stages that need them in the record (the filter,
    /// the output of a stateless pipeline, the repartition topic).
    /// `joined` (of these tables, reused) is left empty: the rows are in the record.
    pub fn join(&self, record: &mut Value, event_ms: i64, joined: &mut JoinedRows) -> Joined {
        let looked_up = self.look_up(record, event_ms, joined);
        if looked_up != Joined::Kept {
            joined.rows.clear();
            return looked_up;
        }
        if let Some(fields) = record.as_object_mut() {
            for (name, row) in joined.names.iter().zip(joined.rows.drain(..)) {
                fields.insert(name.clone(), row.map_or(Value::Null, |r| Value::clone(&r)));
            }
        }
        Joined::Kept
    }

    /// Adds the lookups counted in `joined` to the tables' counters (their metrics), and
    /// starts counting again.
    pub fn count_lookups(&self, joined: &mut JoinedRows) {
        for (table, count) in self.tables.iter().zip(joined.counts.iter_mut()) {
            table.hits.fetch_add(count.hits, Ordering::Relaxed);
            table.misses.fetch_add(count.misses, Ordering::Relaxed);
            *count = LookupCount::default();
        }
    }

    /// Drops the versions no record can still need (see [`SharedTable::prune`]).
    pub fn prune(&self, oldest_open: i64) {
        for table in &self.tables {
            table.prune(oldest_open);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn plan(extra: &str) -> TablePlan {
        let spec: EnrichSpec = serde_norway::from_str(&format!(
            "{{name: profile, topic: profiles, lookup: user_id, {extra}}}"
        ))
        .unwrap();
        TablePlan::of(&spec, None)
    }

    #[test]
    fn a_joined_object_lands_under_the_name_with_the_listed_fields_and_keys_match_as_text() {
        let tables = Tables::new(&[plan("fields: [country, meta.tier]")]);
        let table = tables.iter().next().unwrap();
        table.load([(
            "42".to_owned(),
            100,
            Some(
                table
                    .plan
                    .row_of(&json!({"country": "fr", "meta": {"tier": 2}, "x": 1})),
            ),
        )]);
        let mut record = json!({"user_id": 42});
        let mut joined = JoinedRows::of(&tables);
        assert_eq!(tables.join(&mut record, 150, &mut joined), Joined::Kept);
        assert_eq!(
            record,
            json!({"user_id": 42, "profile": {"country": "fr", "tier": 2}})
        );
        let mut early = json!({"user_id": "42"});
        tables.join(&mut early, 99, &mut joined);
        assert_eq!(
            table.hits.load(Ordering::Relaxed),
            0,
            "counted by the processor first"
        );
        tables.count_lookups(&mut joined);
        assert_eq!(early["profile"], Value::Null, "no version yet at 99");
        assert_eq!(table.hits.load(Ordering::Relaxed), 1);
        assert_eq!(table.misses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rows_kept_beside_the_record_read_as_if_they_had_been_copied_into_it() {
        let org: EnrichSpec = serde_norway::from_str(
            "{name: org, topic: orgs, lookup: profile.org_id, asOf: latest}",
        )
        .unwrap();
        let tables = Tables::new(&[plan("fields: [country, org_id]"), TablePlan::of(&org, None)]);
        let mut each = tables.iter();
        let (profiles, orgs) = (each.next().unwrap(), each.next().unwrap());
        profiles.load([(
            "42".to_owned(),
            100,
            Some(json!({"country": "fr", "org_id": 9})),
        )]);
        orgs.load([(
            "9".to_owned(),
            0,
            Some(json!({"name": "acme", "seats": {"max": 5}})),
        )]);
        for record in [json!({"user_id": 42, "page": "/a"}), json!({"user_id": 7})] {
            let mut copied = record.clone();
            assert_eq!(
                tables.join(&mut copied, 150, &mut JoinedRows::of(&tables)),
                Joined::Kept
            );
            let mut joined = JoinedRows::of(&tables);
            assert_eq!(tables.look_up(&record, 150, &mut joined), Joined::Kept);
            let beside = WithJoined {
                record: &record,
                joined: &joined,
            };
            for path in [
                "user_id",
                "page",
                "profile",
                "profile.country",
                "profile.nothing",
                "org",
                "org.name",
                "org.seats.max",
                "nothing",
            ] {
                let path = FieldPath::parse(path);
                assert_eq!(
                    beside.field(&path),
                    path.get(&copied),
                    "{} of {record}",
                    path.as_str()
                );
            }
        }
    }

    #[test]
    fn on_missing_drops_or_dead_letters_and_a_clashing_field_is_dead_lettered() {
        let drop = Tables::new(&[plan("onMissing: drop")]);
        assert_eq!(
            drop.join(&mut json!({"user_id": 1}), 0, &mut JoinedRows::of(&drop)),
            Joined::Dropped
        );
        let dead = Tables::new(&[plan("onMissing: deadLetter")]);
        let Joined::DeadLetter(why) =
            dead.join(&mut json!({"other": 1}), 0, &mut JoinedRows::of(&dead))
        else {
            panic!("dead-lettered");
        };
        assert!(why.contains("no user_id to look up"), "{why}");
        let keep = Tables::new(&[plan("")]);
        let Joined::DeadLetter(why) = keep.join(
            &mut json!({"user_id": 1, "profile": 2}),
            0,
            &mut JoinedRows::of(&keep),
        ) else {
            panic!("dead-lettered");
        };
        assert!(why.contains("already has a field profile"), "{why}");
    }

    #[test]
    fn records_wait_until_the_table_has_read_what_was_there_when_they_were_read() {
        let tables = Tables::new(&[plan("")]);
        let table = tables.iter().next().unwrap().clone();
        let read_at = Instant::now();
        assert!(
            matches!(tables.admits(read_at), Admission::Wait(why) if why.contains("loading table profile"))
        );
        table.caught_up(read_at - Duration::from_millis(5));
        assert!(
            matches!(tables.admits(read_at), Admission::Wait(_)),
            "caught up only to before the read"
        );
        table.caught_up(read_at);
        assert_eq!(tables.admits(read_at), Admission::Join);
        let latest = Tables::new(&[plan("asOf: latest")]);
        let t = latest.iter().next().unwrap();
        t.caught_up(read_at - Duration::from_secs(1));
        assert_eq!(
            latest.admits(read_at),
            Admission::Join,
            "latest only needs the load"
        );
    }

    #[test]
    fn a_table_past_its_memory_bound_stops_the_pipeline_naming_the_table() {
        let tables = Tables::new(&[plan("maxBytes: 1Mi")]);
        let table = tables.iter().next().unwrap();
        table.caught_up(Instant::now());
        let big = "x".repeat(2 << 20);
        assert!(!table.load([("k".to_owned(), 1, Some(json!(big)))]));
        let Admission::Stopped(why) = tables.admits(Instant::now()) else {
            panic!("stopped");
        };
        assert!(
            why.contains("table profile (topic profiles)") && why.contains("maxBytes"),
            "{why}"
        );
        table.caught_up(Instant::now());
        assert!(
            matches!(tables.admits(Instant::now()), Admission::Stopped(_)),
            "for good"
        );
    }
}

//! Event-time windows over the records of one source partition.
//!
//! - Tumbling and sliding windows are built from panes of `slide` length (tumbling: slide = size):
//!   a record updates exactly one pane, and a window's result merges its `size / slide` panes when
//!   it fires.
//! - Session windows are kept per key and merge when they touch (Flink's inclusive rule).
//! - A window fires when the watermark reaches its last millisecond (`end − 1`). It keeps its state
//!   for `allowedLateness` more; a record arriving in that time updates it and fires it again. A
//!   record whose every window is past that point is late.
//! - State is owned by one partition, and the smallest source offset still contributing to open
//!   state is tracked ([`PartitionWindows::min_open_offset`]), so offsets can be committed without
//!   losing windows that have not been emitted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use pipeline_crds::window::WindowKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    aggregate::{Accumulators, AggregatePlan, Inputs},
    watermark::NO_WATERMARK,
};

/// Window parameters in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assigner {
    /// Panes of `slide`, windows of `size` (tumbling: `slide == size`).
    Sliding { size: i64, slide: i64 },
    /// Sessions closed by `gap`.
    Session { gap: i64 },
}

impl Assigner {
    /// From the spec's window kind.
    pub fn from_kind(kind: WindowKind) -> Self {
        let ms = |d: pipeline_crds::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match kind {
            WindowKind::Tumbling { size } => Self::Sliding {
                size: ms(size),
                slide: ms(size),
            },
            WindowKind::Sliding { size, slide } => Self::Sliding {
                size: ms(size),
                slide: ms(slide),
            },
            WindowKind::Session { gap } => Self::Session { gap: ms(gap) },
        }
    }
}

/// One emitted window: the key, its bounds, and the aggregate values in spec order.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowResult {
    /// The key as text (see [`crate::field::key_text`]).
    pub key: Arc<str>,
    /// The key as it appeared in the record.
    pub key_value: Value,
    /// Inclusive start, epoch ms.
    pub start: i64,
    /// Exclusive end, epoch ms.
    pub end: i64,
    /// `(aggregate name, value)` in spec order.
    pub values: Vec<(String, Value)>,
}

/// What happened to a record offered to the windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Added {
    /// Accounted in its window(s).
    OnTime,
    /// Every window of the record is past its allowed lateness: the record was not used.
    Late {
        /// Start of the (last) window the record missed.
        start: i64,
        /// End of that window.
        end: i64,
        /// Watermark minus the window's last millisecond, in ms.
        lateness_ms: i64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: i64,
    key: Arc<str>,
    start: i64,
    end: i64,
}

#[derive(Debug)]
struct Pane {
    acc: Accumulators,
    first_offset: i64,
}

#[derive(Debug)]
struct Session {
    start: i64,
    end: i64,
    acc: Accumulators,
    first_offset: i64,
}

#[derive(Debug)]
struct KeyEntry {
    /// The key as it appeared in the record; `None` when that is the JSON string equal to the
    /// key's text (the usual case: the text is not stored twice).
    value: Option<Value>,
    live: u32,
}

impl KeyEntry {
    fn new(key: &str, value: &Value) -> Self {
        let value = match value {
            Value::String(s) if s == key => None,
            other => Some(other.clone()),
        };
        Self { value, live: 0 }
    }

    fn value(&self, key: &str) -> Value {
        self.value
            .clone()
            .unwrap_or_else(|| Value::String(key.to_owned()))
    }
}

/// A map keyed by record keys: foldhash, seeded per process (SipHash, the standard one, was 7%
/// of the windowed job's slot CPU).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The window state of one source partition.
#[derive(Debug)]
pub struct PartitionWindows {
    assigner: Assigner,
    lateness: i64,
    plan: Arc<AggregatePlan>,
    keys: FastMap<Arc<str>, KeyEntry>,
    /// Tumbling and sliding windows: panes by start, then by key. A window fires for every key
    /// with a pane in it when the watermark passes its end, and a pane start's keys are dropped
    /// together past their lateness, so no timer is kept per key.
    panes: BTreeMap<i64, FastMap<Arc<str>, Pane>>,
    sessions: FastMap<Arc<str>, Vec<Session>>,
    /// Session windows' timers (each session has its own bounds).
    fire: BTreeSet<Timer>,
    cleanup: BTreeSet<Timer>,
    first_offsets: BTreeMap<i64, u32>,
    watermark: i64,
}

impl PartitionWindows {
    /// Empty state.
    pub fn new(assigner: Assigner, allowed_lateness_ms: i64, plan: Arc<AggregatePlan>) -> Self {
        Self {
            assigner,
            lateness: allowed_lateness_ms,
            plan,
            keys: FastMap::default(),
            panes: BTreeMap::new(),
            sessions: FastMap::default(),
            fire: BTreeSet::new(),
            cleanup: BTreeSet::new(),
            first_offsets: BTreeMap::new(),
            watermark: NO_WATERMARK,
        }
    }

    /// Keys that hold state.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The smallest source offset of a record still held in state: replaying from here rebuilds
    /// every window that can still change. `None` when no state is held.
    pub fn min_open_offset(&self) -> Option<i64> {
        self.first_offsets.keys().next().copied()
    }

    /// Offers a record (key, event time, aggregate inputs, source offset). Windows that had
    /// already fired and are updated by it are pushed to `out` again.
    pub fn add(
        &mut self,
        key: &str,
        key_value: &Value,
        ts: i64,
        inputs: &Inputs<'_>,
        offset: i64,
        out: &mut Vec<WindowResult>,
    ) -> Added {
        // Interned: a key that holds state is allocated once, whatever its record count.
        let key = match self.keys.get_key_value(key) {
            Some((interned, _)) => interned.clone(),
            None => Arc::from(key),
        };
        let key = &key;
        match self.assigner {
            Assigner::Sliding { size, slide } => {
                self.add_to_pane(key, key_value, ts, inputs, offset, size, slide, out)
            }
            Assigner::Session { gap } => {
                self.add_to_session(key, key_value, ts, inputs, offset, gap, out)
            }
        }
    }

    /// Moves event time to `watermark`: fires the windows that end by it and drops state past
    /// its allowed lateness. Results are pushed to `out` in (end, key, start) order.
    pub fn advance(&mut self, watermark: i64, out: &mut Vec<WindowResult>) {
        if watermark <= self.watermark {
            return;
        }
        let before = self.watermark;
        self.watermark = watermark;
        match self.assigner {
            Assigner::Sliding { size, slide } => {
                self.advance_panes(before, watermark, size, slide, out);
            }
            Assigner::Session { .. } => self.advance_sessions(watermark, out),
        }
    }

    /// Fires every window whose last millisecond is in `(before, watermark]`, for each key with
    /// a pane in it, in (end, key) order; then drops the pane starts past their lateness.
    fn advance_panes(
        &mut self,
        before: i64,
        watermark: i64,
        size: i64,
        slide: i64,
        out: &mut Vec<WindowResult>,
    ) {
        // Pane starts are multiples of the slide, and so are window ends. Walk the ends in
        // (before + 1, watermark + 1], skipping stretches without panes.
        if let Some(&first) = self.panes.keys().next() {
            let low = before.saturating_add(2).max(first.saturating_add(slide));
            let high = watermark.saturating_add(1);
            let mut end = low.div_euclid(slide).saturating_mul(slide);
            if end < low {
                end = end.saturating_add(slide);
            }
            let mut keys: Vec<Arc<str>> = Vec::new();
            while end <= high {
                let start = end.saturating_sub(size);
                if self.panes.range(start..end).next().is_none() {
                    // The next window holding a pane ends one slide after that pane's start.
                    match self.panes.range(end..).next() {
                        Some((&next, _)) if next <= high => {
                            let jump = next.saturating_add(slide).max(end.saturating_add(slide));
                            if jump <= end {
                                break;
                            }
                            end = jump;
                            continue;
                        }
                        _ => break,
                    }
                }
                keys.clear();
                for (_, panes) in self.panes.range(start..end) {
                    keys.extend(panes.keys().cloned());
                }
                keys.sort_unstable();
                keys.dedup();
                for key in &keys {
                    if let Some(result) = self.result(key, start, end) {
                        out.push(result);
                    }
                }
                let Some(next) = end.checked_add(slide) else {
                    break;
                };
                end = next;
            }
        }
        while let Some((&start, _)) = self.panes.first_key_value() {
            if (start.saturating_add(size) - 1).saturating_add(self.lateness) > watermark {
                break;
            }
            let (_, panes) = self.panes.pop_first().expect("checked");
            for (key, pane) in panes {
                self.release(&key, pane.first_offset);
            }
        }
    }

    fn advance_sessions(&mut self, watermark: i64, out: &mut Vec<WindowResult>) {
        while self.fire.first().is_some_and(|t| t.at <= watermark) {
            let timer = self.fire.pop_first().expect("checked");
            if let Some(result) = self.result(&timer.key, timer.start, timer.end) {
                out.push(result);
            }
        }
        while self.cleanup.first().is_some_and(|t| t.at <= watermark) {
            let timer = self.cleanup.pop_first().expect("checked");
            let sessions = self.sessions.get_mut(&timer.key);
            let found = sessions.and_then(|list| {
                let i = list
                    .iter()
                    .position(|s| s.start == timer.start && s.end == timer.end)?;
                let removed = list.remove(i);
                Some((removed.first_offset, list.is_empty()))
            });
            if let Some((first_offset, now_empty)) = found {
                if now_empty {
                    self.sessions.remove(&timer.key);
                }
                self.release(&timer.key, first_offset);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_to_pane(
        &mut self,
        key: &Arc<str>,
        key_value: &Value,
        ts: i64,
        inputs: &Inputs<'_>,
        offset: i64,
        size: i64,
        slide: i64,
        out: &mut Vec<WindowResult>,
    ) -> Added {
        let wm = self.watermark;
        // Event times are bounded (years 1 to 9999) and so are sizes, but the arithmetic
        // saturates anyway: state restored or read from the internal topic is not re-checked.
        let pane_start = ts.div_euclid(slide) * slide;
        let last_end = pane_start.saturating_add(size);
        if self.past_lateness(last_end, wm) {
            return Added::Late {
                start: pane_start,
                end: last_end,
                lateness_ms: wm.saturating_sub(last_end - 1),
            };
        }
        let panes = self.panes.entry(pane_start).or_default();
        if let Some(pane) = panes.get_mut(key) {
            pane.acc.add(inputs);
        } else {
            let mut acc = self.plan.empty();
            acc.add(inputs);
            panes.insert(
                key.clone(),
                Pane {
                    acc,
                    first_offset: offset,
                },
            );
            self.retain(key, key_value, offset);
        }
        // Windows that already fired but are within their lateness fire again, updated.
        let mut end = pane_start.saturating_add(slide);
        while end <= last_end {
            if end - 1 <= wm
                && !self.past_lateness(end, wm)
                && let Some(result) = self.result(key, end.saturating_sub(size), end)
            {
                out.push(result);
            }
            let Some(next) = end.checked_add(slide) else {
                break;
            };
            end = next;
        }
        Added::OnTime
    }

    #[allow(clippy::too_many_arguments)]
    fn add_to_session(
        &mut self,
        key: &Arc<str>,
        key_value: &Value,
        ts: i64,
        inputs: &Inputs<'_>,
        offset: i64,
        gap: i64,
        out: &mut Vec<WindowResult>,
    ) -> Added {
        let wm = self.watermark;
        let end = ts.saturating_add(gap);
        if self.past_lateness(end, wm) {
            return Added::Late {
                start: ts,
                end,
                lateness_ms: wm.saturating_sub(end - 1),
            };
        }
        let mut acc = self.plan.empty();
        acc.add(inputs);
        let mut merged = Session {
            start: ts,
            end,
            acc,
            first_offset: offset,
        };
        let list = self.sessions.entry(key.clone()).or_default();
        let mut absorbed = Vec::new();
        let mut i = 0;
        while i < list.len() {
            let s = &list[i];
            if s.start <= merged.end && s.end >= merged.start {
                let s = list.remove(i);
                merged.start = merged.start.min(s.start);
                merged.end = merged.end.max(s.end);
                merged.acc.merge(&s.acc);
                merged.first_offset = merged.first_offset.min(s.first_offset);
                absorbed.push(s.first_offset);
            } else {
                i += 1;
            }
        }
        let (start, end) = (merged.start, merged.end);
        let position = list.partition_point(|s| s.start < start);
        list.insert(position, merged);
        for first_offset in absorbed {
            self.release(key, first_offset);
        }
        self.retain(
            key,
            key_value,
            offset.min(self.session_first_offset(key, start)),
        );
        if end - 1 > wm {
            self.fire.insert(Timer {
                at: end - 1,
                key: key.clone(),
                start,
                end,
            });
        } else if let Some(result) = self.result(key, start, end) {
            out.push(result);
        }
        self.cleanup.insert(Timer {
            at: (end - 1).saturating_add(self.lateness),
            key: key.clone(),
            start,
            end,
        });
        Added::OnTime
    }

    /// The timers the panes stand for (the stored form of earlier versions kept them): a fire
    /// timer per key and window not fired yet, a cleanup timer per pane.
    fn pane_timers(&self) -> (BTreeSet<Timer>, BTreeSet<Timer>) {
        let (mut fire, mut cleanup) = (BTreeSet::new(), BTreeSet::new());
        let Assigner::Sliding { size, slide } = self.assigner else {
            return (fire, cleanup);
        };
        for (&start, panes) in &self.panes {
            let last_end = start.saturating_add(size);
            for key in panes.keys() {
                let mut end = start.saturating_add(slide);
                while end <= last_end {
                    if end - 1 > self.watermark {
                        fire.insert(Timer {
                            at: end - 1,
                            key: key.clone(),
                            start: end.saturating_sub(size),
                            end,
                        });
                    }
                    let Some(next) = end.checked_add(slide) else {
                        break;
                    };
                    end = next;
                }
                cleanup.insert(Timer {
                    at: (last_end - 1).saturating_add(self.lateness),
                    key: key.clone(),
                    start,
                    end: start.saturating_add(slide),
                });
            }
        }
        (fire, cleanup)
    }

    fn session_first_offset(&self, key: &Arc<str>, start: i64) -> i64 {
        self.sessions
            .get(key)
            .and_then(|l| l.iter().find(|s| s.start == start))
            .map_or(i64::MAX, |s| s.first_offset)
    }

    fn past_lateness(&self, end: i64, watermark: i64) -> bool {
        watermark != NO_WATERMARK && (end - 1).saturating_add(self.lateness) <= watermark
    }

    /// Counts one more piece of state for `key`, starting at `first_offset`.
    fn retain(&mut self, key: &Arc<str>, key_value: &Value, first_offset: i64) {
        *self.first_offsets.entry(first_offset).or_insert(0) += 1;
        self.keys
            .entry(key.clone())
            .or_insert_with(|| KeyEntry::new(key, key_value))
            .live += 1;
    }

    /// Forgets one piece of state of `key` that started at `first_offset`.
    fn release(&mut self, key: &Arc<str>, first_offset: i64) {
        if let Some(count) = self.first_offsets.get_mut(&first_offset) {
            *count -= 1;
            if *count == 0 {
                self.first_offsets.remove(&first_offset);
            }
        }
        if let Some(entry) = self.keys.get_mut(key) {
            entry.live -= 1;
            if entry.live == 0 {
                self.keys.remove(key);
            }
        }
    }

    fn result(&self, key: &Arc<str>, start: i64, end: i64) -> Option<WindowResult> {
        let acc = match self.assigner {
            Assigner::Sliding { slide, .. } => {
                let mut acc: Option<Accumulators> = None;
                let mut pane = start;
                while pane < end {
                    if let Some(p) = self.panes.get(&pane).and_then(|panes| panes.get(key)) {
                        match &mut acc {
                            None => acc = Some(p.acc.clone()),
                            Some(a) => a.merge(&p.acc),
                        }
                    }
                    pane += slide;
                }
                acc?
            }
            Assigner::Session { .. } => self
                .sessions
                .get(key)?
                .iter()
                .find(|s| s.start == start && s.end == end)?
                .acc
                .clone(),
        };
        Some(WindowResult {
            key: key.clone(),
            key_value: self.keys.get(key)?.value(key),
            start,
            end,
            values: self.plan.results(&acc),
        })
    }
}

/// The window state of one partition as stored in a checkpoint: every key once in a table, the
/// rest refers to keys by index.
#[derive(Debug, Serialize, Deserialize)]
pub struct WindowsState {
    watermark: i64,
    /// Key texts; index = key id.
    key_texts: Vec<String>,
    /// Keys holding state: (key id, key as JSON text, pieces of state).
    keys: Vec<(u32, String, u32)>,
    /// (key id, pane start, first offset, accumulators).
    panes: Vec<(u32, i64, i64, Accumulators)>,
    /// (key id, start, end, first offset, accumulators).
    sessions: Vec<(u32, i64, i64, i64, Accumulators)>,
    /// (at, key id, start, end).
    fire: Vec<(i64, u32, i64, i64)>,
    /// (at, key id, start, end).
    cleanup: Vec<(i64, u32, i64, i64)>,
    /// (first offset, pieces of state starting there).
    first_offsets: Vec<(i64, u32)>,
}

/// Why stored window state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A reference to a key that the key table does not have.
    #[error("window state refers to key #{0}, which is not in its key table")]
    UnknownKey(u32),
    /// A stored key is not valid JSON.
    #[error("window state key is not valid JSON: {0}")]
    KeyValue(#[from] serde_json::Error),
    /// The state does not match the pipeline's window, aggregates or stages.
    #[error("stored state does not fit this pipeline's window, aggregates or stages")]
    Mismatch,
}

impl PartitionWindows {
    /// The state to store in a checkpoint.
    pub fn to_state(&self) -> WindowsState {
        let mut ids: HashMap<Arc<str>, u32> = HashMap::new();
        let mut key_texts = Vec::new();
        let mut id = |key: &Arc<str>| {
            *ids.entry(key.clone()).or_insert_with(|| {
                key_texts.push(key.to_string());
                u32::try_from(key_texts.len() - 1).expect("fewer than 2^32 keys")
            })
        };
        let keys = self
            .keys
            .iter()
            .map(|(k, e)| (id(k), e.value(k).to_string(), e.live))
            .collect();
        let panes = self
            .panes
            .iter()
            .flat_map(|(start, panes)| panes.iter().map(move |(k, p)| (*start, k, p)))
            .map(|(start, k, p)| (id(k), start, p.first_offset, p.acc.clone()))
            .collect();
        let sessions = self
            .sessions
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |s| (k, s)))
            .map(|(k, s)| (id(k), s.start, s.end, s.first_offset, s.acc.clone()))
            .collect();
        let mut timers = |set: &BTreeSet<Timer>| -> Vec<_> {
            set.iter()
                .map(|t| (t.at, id(&t.key), t.start, t.end))
                .collect()
        };
        // Panes keep no timers; the stored form lists the ones they stand for, as sessions do.
        let (pane_fire, pane_cleanup) = self.pane_timers();
        let fire = timers(&self.fire.iter().chain(&pane_fire).cloned().collect());
        let cleanup = timers(&self.cleanup.iter().chain(&pane_cleanup).cloned().collect());
        WindowsState {
            watermark: self.watermark,
            key_texts,
            keys,
            panes,
            sessions,
            fire,
            cleanup,
            first_offsets: self.first_offsets.iter().map(|(o, n)| (*o, *n)).collect(),
        }
    }

    /// Rebuilds the state from a checkpoint.
    pub fn from_state(
        assigner: Assigner,
        allowed_lateness_ms: i64,
        plan: Arc<AggregatePlan>,
        state: WindowsState,
    ) -> Result<Self, RestoreError> {
        let texts: Vec<Arc<str>> = state.key_texts.into_iter().map(Arc::from).collect();
        let key = |id: u32| {
            texts
                .get(id as usize)
                .cloned()
                .ok_or(RestoreError::UnknownKey(id))
        };
        let mut w = Self::new(assigner, allowed_lateness_ms, plan);
        w.watermark = state.watermark;
        for (id, json, live) in state.keys {
            let value: Value = serde_json::from_str(&json)?;
            let key = key(id)?;
            let mut entry = KeyEntry::new(&key, &value);
            entry.live = live;
            w.keys.insert(key, entry);
        }
        for (id, start, first_offset, acc) in state.panes {
            if !w.plan.fits(&acc) {
                return Err(RestoreError::Mismatch);
            }
            w.panes
                .entry(start)
                .or_default()
                .insert(key(id)?, Pane { acc, first_offset });
        }
        for (id, start, end, first_offset, acc) in state.sessions {
            if !w.plan.fits(&acc) {
                return Err(RestoreError::Mismatch);
            }
            let list = w.sessions.entry(key(id)?).or_default();
            let position = list.partition_point(|s| s.start < start);
            list.insert(
                position,
                Session {
                    start,
                    end,
                    acc,
                    first_offset,
                },
            );
        }
        // Panes' timers follow from the panes and the watermark; only sessions keep theirs.
        let (fire, cleanup) = match assigner {
            Assigner::Sliding { .. } => (Vec::new(), Vec::new()),
            Assigner::Session { .. } => (state.fire, state.cleanup),
        };
        for (target, timers) in [(&mut w.fire, fire), (&mut w.cleanup, cleanup)] {
            for (at, id, start, end) in timers {
                target.insert(Timer {
                    at,
                    key: key(id)?,
                    start,
                    end,
                });
            }
        }
        w.first_offsets = state.first_offsets.into_iter().collect();
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pipeline_crds::aggregate::AggregateSpec;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::aggregate::Arrival;

    /// Where the `offset`-th record of a test stream stands.
    fn arrival(event_ms: i64, offset: usize) -> Arrival {
        Arrival {
            event_ms,
            seq: offset as i64,
        }
    }

    fn plan() -> Arc<AggregatePlan> {
        let specs: Vec<AggregateSpec> = serde_norway::from_str(
            "[{name: n, function: count}, {name: s, function: sum, field: v}]",
        )
        .unwrap();
        Arc::new(AggregatePlan::new(&specs))
    }

    /// The last result per (key, window start): (end, count, sum).
    type Finals = BTreeMap<(String, i64), (i64, Value, Value)>;

    /// Feeds `(key, ts, v)` in order with watermark = max ts − ooo − 1, then closes everything.
    /// Returns the last result per (key, start) and the late records.
    fn run(
        assigner: Assigner,
        lateness: i64,
        ooo: i64,
        records: &[(&str, i64, i64)],
    ) -> (Finals, Vec<Added>, usize) {
        let p = plan();
        let mut w = PartitionWindows::new(assigner, lateness, p.clone());
        let mut out = Vec::new();
        let mut late = Vec::new();
        let mut max = i64::MIN;
        for (offset, (key, ts, v)) in records.iter().enumerate() {
            let record = json!({"v": v});
            let inputs = p.inputs(&record, arrival(*ts, offset)).unwrap();
            let key: Arc<str> = Arc::from(*key);
            let added = w.add(
                &key,
                &json!(key.as_ref()),
                *ts,
                &inputs,
                offset as i64,
                &mut out,
            );
            if added != Added::OnTime {
                late.push(added);
            }
            max = max.max(*ts);
            w.advance(max - ooo - 1, &mut out);
        }
        let emitted = out.len();
        w.advance(i64::MAX - 1, &mut out);
        assert_eq!(w.key_count(), 0, "all state is dropped at the end");
        assert_eq!(w.min_open_offset(), None);
        let mut last = BTreeMap::new();
        for r in out {
            last.insert(
                (r.key.to_string(), r.start),
                (r.end, r.values[0].1.clone(), r.values[1].1.clone()),
            );
        }
        (last, late, emitted)
    }

    /// Every result in emission order, with the state stored (postcard, as checkpoints do) and
    /// restored before record `restore_at`.
    fn emitted_with_restore(
        assigner: Assigner,
        lateness: i64,
        ooo: i64,
        records: &[(&str, i64, i64)],
        restore_at: Option<usize>,
    ) -> Vec<WindowResult> {
        let p = plan();
        let mut w = PartitionWindows::new(assigner, lateness, p.clone());
        let mut out = Vec::new();
        let mut max = i64::MIN;
        for (offset, (key, ts, v)) in records.iter().enumerate() {
            if restore_at == Some(offset) {
                let bytes = postcard::to_stdvec(&w.to_state()).unwrap();
                let state: WindowsState = postcard::from_bytes(&bytes).unwrap();
                let min_open = w.min_open_offset();
                w = PartitionWindows::from_state(assigner, lateness, p.clone(), state).unwrap();
                assert_eq!(w.min_open_offset(), min_open);
            }
            let record = json!({"v": v});
            let inputs = p.inputs(&record, arrival(*ts, offset)).unwrap();
            w.add(key, &json!(key), *ts, &inputs, offset as i64, &mut out);
            max = max.max(*ts);
            w.advance(max - ooo - 1, &mut out);
        }
        w.advance(i64::MAX - 1, &mut out);
        out
    }

    /// Tumbling 10 ms windows, no lateness, the test plan.
    fn tumbling_ten() -> (Assigner, Arc<AggregatePlan>, PartitionWindows) {
        let t = Assigner::Sliding {
            size: 10,
            slide: 10,
        };
        let p = plan();
        let w = PartitionWindows::new(t, 0, p.clone());
        (t, p, w)
    }

    #[test]
    fn a_key_that_is_not_a_string_keeps_its_json_value_through_a_restore() {
        let (t, p, mut w) = tumbling_ten();
        let record = json!({"v": 1});
        let inputs = p.inputs(&record, Arrival::default()).unwrap();
        let mut out = Vec::new();
        w.add(&Arc::from("7"), &json!(7), 1, &inputs, 0, &mut out);
        w.add(&Arc::from("s"), &json!("s"), 2, &inputs, 1, &mut out);
        let state = w.to_state();
        let mut w = PartitionWindows::from_state(t, 0, p, state).unwrap();
        w.advance(100, &mut out);
        let values: Vec<Value> = out.iter().map(|r| r.key_value.clone()).collect();
        assert_eq!(values, vec![json!(7), json!("s")]);
    }

    #[test]
    fn tumbling_windows_fire_when_the_watermark_passes_their_end() {
        let (_, p, mut w) = tumbling_ten();
        let mut out = Vec::new();
        let key: Arc<str> = Arc::from("a");
        let rec = json!({"v": 1});
        let inputs = p.inputs(&rec, Arrival::default()).unwrap();
        w.add(&key, &json!("a"), 3, &inputs, 0, &mut out);
        w.add(&key, &json!("a"), 9, &inputs, 1, &mut out);
        w.advance(8, &mut out);
        assert!(out.is_empty(), "window [0,10) must not fire at watermark 8");
        assert_eq!(w.min_open_offset(), Some(0));
        w.advance(9, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end), (0, 10));
        assert_eq!(out[0].values[0].1, json!(2));
        assert_eq!(
            w.min_open_offset(),
            None,
            "no lateness: state dropped at firing"
        );
    }

    #[test]
    fn out_of_order_records_within_the_bound_are_counted() {
        let t = Assigner::Sliding {
            size: 10,
            slide: 10,
        };
        let (res, late, _) = run(
            t,
            0,
            5,
            &[("a", 12, 1), ("a", 8, 1), ("a", 14, 1), ("a", 9, 1)],
        );
        assert!(late.is_empty());
        assert_eq!(res[&("a".into(), 0)].1, json!(2));
        assert_eq!(res[&("a".into(), 10)].1, json!(2));
    }

    #[test]
    fn a_late_record_within_allowed_lateness_fires_the_window_again() {
        let t = Assigner::Sliding {
            size: 10,
            slide: 10,
        };
        // [0,10) fires at watermark 9 (record 10), then record 5 arrives within lateness 10.
        let (res, late, emitted) = run(t, 10, 0, &[("a", 5, 1), ("a", 10, 1), ("a", 5, 100)]);
        assert!(late.is_empty());
        assert_eq!(res[&("a".into(), 0)], (10, json!(2), json!(101)));
        assert_eq!(
            emitted, 2,
            "fired once on time, once more for the late update"
        );
    }

    #[test]
    fn a_record_past_allowed_lateness_is_late_and_changes_nothing() {
        let t = Assigner::Sliding {
            size: 10,
            slide: 10,
        };
        let (res, late, _) = run(t, 5, 0, &[("a", 5, 1), ("a", 30, 1), ("a", 6, 1)]);
        assert_eq!(
            late,
            vec![Added::Late {
                start: 0,
                end: 10,
                lateness_ms: 29 - 9
            }]
        );
        assert_eq!(res[&("a".into(), 0)].1, json!(1));
    }

    #[test]
    fn sessions_merge_when_a_record_bridges_them() {
        let s = Assigner::Session { gap: 10 };
        // Two sessions [0,10) and [18,28) bridged by 9 ([9,19) touches both) into [0,28).
        let (res, late, _) = run(s, 100, 100, &[("a", 0, 1), ("a", 18, 2), ("a", 9, 4)]);
        assert!(late.is_empty());
        assert_eq!(res.len(), 1, "{res:?}");
        assert_eq!(res[&("a".into(), 0)], (28, json!(3), json!(7)));
    }

    #[test]
    fn min_open_offset_follows_the_oldest_open_window() {
        let (_, p, mut w) = tumbling_ten();
        let rec = json!({"v": 1});
        let inputs = p.inputs(&rec, Arrival::default()).unwrap();
        let mut out = Vec::new();
        for (offset, (key, ts)) in [("a", 1), ("b", 11), ("a", 12)].iter().enumerate() {
            let key: Arc<str> = Arc::from(*key);
            w.add(
                &key,
                &json!(key.as_ref()),
                *ts,
                &inputs,
                offset as i64,
                &mut out,
            );
        }
        assert_eq!(w.min_open_offset(), Some(0));
        w.advance(9, &mut out);
        assert_eq!(w.min_open_offset(), Some(1));
        assert_eq!(w.key_count(), 2);
    }

    /// Brute force: every window that contains at least one record, per key.
    fn reference(assigner: Assigner, records: &[(&str, i64, i64)]) -> Finals {
        let mut out: BTreeMap<(String, i64), (i64, i64, i64)> = BTreeMap::new();
        match assigner {
            Assigner::Sliding { size, slide } => {
                for (key, ts, v) in records {
                    let mut start = ts.div_euclid(slide) * slide;
                    while start > ts - size {
                        let e = out
                            .entry((key.to_string(), start))
                            .or_insert((start + size, 0, 0));
                        e.1 += 1;
                        e.2 += v;
                        start -= slide;
                    }
                }
            }
            Assigner::Session { gap } => {
                let mut by_key: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
                for (key, ts, v) in records {
                    by_key.entry(key).or_default().push((*ts, *v));
                }
                for (key, mut list) in by_key {
                    list.sort();
                    let mut current: Option<(i64, i64, i64, i64)> = None;
                    for (ts, v) in list {
                        current = match current {
                            Some((s, e, n, sum)) if ts <= e => {
                                Some((s, e.max(ts + gap), n + 1, sum + v))
                            }
                            other => {
                                if let Some((s, e, n, sum)) = other {
                                    out.insert((key.to_string(), s), (e, n, sum));
                                }
                                Some((ts, ts + gap, 1, v))
                            }
                        };
                    }
                    if let Some((s, e, n, sum)) = current {
                        out.insert((key.to_string(), s), (e, n, sum));
                    }
                }
            }
        }
        out.into_iter()
            .map(|(k, (e, n, s))| (k, (e, json!(n), json!(s))))
            .collect()
    }

    fn records_strategy() -> impl Strategy<Value = Vec<(&'static str, i64, i64)>> {
        proptest::collection::vec(
            (
                prop::sample::select(vec!["a", "b", "c"]),
                0i64..500,
                1i64..100,
            ),
            0..80,
        )
    }

    proptest! {
        /// With an out-of-orderness bound larger than the data's spread nothing is late, and the
        /// final windows equal a brute-force computation, for every window kind.
        #[test]
        fn final_windows_equal_a_brute_force_reference(
            records in records_strategy(),
            size_panes in 1i64..5,
            slide in 1i64..40,
            gap in 1i64..60,
        ) {
            for assigner in [
                Assigner::Sliding { size: slide * size_panes, slide },
                Assigner::Sliding { size: slide, slide },
                Assigner::Session { gap },
            ] {
                let (got, late, _) = run(assigner, 0, 1_000, &records);
                prop_assert!(late.is_empty());
                prop_assert_eq!(got, reference(assigner, &records), "{:?}", assigner);
            }
        }

        /// In-order input with no out-of-orderness: each window fires exactly once.
        #[test]
        fn a_restore_at_any_record_changes_no_result(
            records in records_strategy(),
            size_panes in 1i64..5,
            slide in 1i64..40,
            gap in 1i64..60,
            lateness in 0i64..30,
            at in any::<prop::sample::Index>(),
        ) {
            let at = at.index(records.len().max(1));
            for assigner in [
                Assigner::Sliding { size: slide * size_panes, slide },
                Assigner::Session { gap },
            ] {
                let straight = emitted_with_restore(assigner, lateness, 20, &records, None);
                let restored = emitted_with_restore(assigner, lateness, 20, &records, Some(at));
                prop_assert_eq!(straight, restored, "{:?}", assigner);
            }
        }

        #[test]
        fn in_order_input_fires_each_window_once(mut records in records_strategy(), slide in 1i64..40) {
            records.sort_by_key(|r| r.1);
            let assigner = Assigner::Sliding { size: slide * 2, slide };
            let (got, late, emitted) = run(assigner, 0, 0, &records);
            prop_assert!(late.is_empty());
            prop_assert_eq!(got.len(), reference(assigner, &records).len());
            prop_assert!(emitted <= got.len());
        }
    }
}

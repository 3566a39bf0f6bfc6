//! The data set of the failure tests and its offline reference: sensor readings with
//! out-of-order timestamps on a source topic keyed by device, aggregated into 10-second tumbling
//! windows (count, sum, min, max per device).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::broker::{Consumed, Outgoing, Rng};

/// Window size in ms.
pub const WINDOW_MS: i64 = 10_000;
/// Event time of the first reading.
pub const BASE_MS: i64 = 1_700_000_000_000;
/// Largest disorder in the data; the pipeline's maxOutOfOrderness must exceed it.
pub const DISORDER_MS: i64 = 2_000;

/// The aggregates the test pipelines compute (YAML flow list).
pub const AGGREGATES: &str = "[{name: n, function: count}, {name: total, function: sum, field: v}, {name: lo, function: min, field: v}, {name: hi, function: max, field: v}]";

/// Readings, in production order.
pub struct Dataset {
    /// (partition, key, value) as produced.
    pub records: Vec<Outgoing>,
    /// (device, event time, value) of each record.
    pub readings: Vec<(String, i64, i64)>,
}

impl Dataset {
    /// `n` readings from `devices` devices over `partitions` partitions (a device always on the
    /// same partition), event time advancing `step_ms` per reading with up to
    /// [`DISORDER_MS`] of disorder.
    pub fn generate(n: usize, devices: u64, partitions: i32, step_ms: i64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut records = Vec::with_capacity(n);
        let mut readings = Vec::with_capacity(n);
        for i in 0..n {
            let device = rng.below(devices);
            let dev = format!("dev-{device:04}");
            let ts = BASE_MS + i as i64 * step_ms
                - i64::try_from(rng.below(DISORDER_MS as u64)).expect("small");
            let v = i64::try_from(rng.below(2_001)).expect("small") - 1_000;
            let partition = i32::try_from(device % u64::try_from(partitions).expect("positive"))
                .expect("small");
            let value = json!({"dev": dev, "ts": ts, "v": v}).to_string();
            records.push((
                partition,
                Some(dev.clone().into_bytes()),
                value.into_bytes(),
            ));
            readings.push((dev, ts, v));
        }
        Self { records, readings }
    }

    /// One record per partition far past the data's event time, so every window of the data
    /// closes by its watermark alone (the test pipelines have no idle timeout: idleness makes
    /// event time depend on the wall clock, and output on timing). Not part of the reference;
    /// their own windows never close.
    pub fn closing_records(&self, partitions: i32) -> Vec<Outgoing> {
        let last = self.readings.iter().map(|r| r.1).max().unwrap_or(BASE_MS);
        (0..partitions)
            .map(|p| {
                let dev = format!("closing-{p}");
                let value = json!({"dev": dev, "ts": last + 100 * WINDOW_MS, "v": 0}).to_string();
                (p, Some(dev.into_bytes()), value.into_bytes())
            })
            .collect()
    }

    /// The records followed by [`Self::closing_records`].
    pub fn with_closing_records(&self, partitions: i32) -> Vec<Outgoing> {
        let mut records = self.records.clone();
        records.extend(self.closing_records(partitions));
        records
    }

    /// The exact result of every (device, window start): the expected output record.
    pub fn reference(&self) -> BTreeMap<(String, i64), Value> {
        let mut acc: BTreeMap<(String, i64), (i64, i64, i64, i64)> = BTreeMap::new();
        for (dev, ts, v) in &self.readings {
            let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
            let e = acc
                .entry((dev.clone(), start))
                .or_insert((0, 0, i64::MAX, i64::MIN));
            e.0 += 1;
            e.1 += v;
            e.2 = e.2.min(*v);
            e.3 = e.3.max(*v);
        }
        acc.into_iter()
            .map(|((dev, start), (n, total, lo, hi))| {
                let value = json!({
                    "dev": dev, "window_start": start, "window_end": start + WINDOW_MS,
                    "n": n, "total": total, "lo": lo, "hi": hi,
                });
                ((dev, start), value)
            })
            .collect()
    }
}

/// What the output topic held, compared with the reference.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Output records read.
    pub records: usize,
    /// Distinct (key, window) results.
    pub windows: usize,
    /// Records repeating an earlier (key, window) with identical content.
    pub identical_repeats: usize,
    /// Problems: missing, extra or wrong windows, and repeats that differ.
    pub problems: Vec<String>,
}

impl Comparison {
    /// Whether the output equals the reference exactly (after de-duplication by (key, window)).
    pub fn exact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Compares output records (JSON keyed by (dev, window_start)) with `reference`. Every repeat of
/// a (key, window) must be byte-identical to its first emission.
pub fn compare(outputs: &[Consumed], reference: &BTreeMap<(String, i64), Value>) -> Comparison {
    compare_by("dev", outputs, reference)
}

/// [`compare`] for outputs whose key is the field `key_field`.
pub fn compare_by(
    key_field: &str,
    outputs: &[Consumed],
    reference: &BTreeMap<(String, i64), Value>,
) -> Comparison {
    let mut first: BTreeMap<(String, i64), &[u8]> = BTreeMap::new();
    let mut c = Comparison {
        records: outputs.len(),
        ..Comparison::default()
    };
    for record in outputs {
        let Some(bytes) = record.value.as_deref() else {
            c.problems.push("an output record without a value".into());
            continue;
        };
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            c.problems.push(format!(
                "output is not JSON: {}",
                String::from_utf8_lossy(bytes)
            ));
            continue;
        };
        let (Some(dev), Some(start)) = (value[key_field].as_str(), value["window_start"].as_i64())
        else {
            c.problems
                .push(format!("output without {key_field}/window_start: {value}"));
            continue;
        };
        let id = (dev.to_owned(), start);
        match first.get(&id) {
            None => {
                first.insert(id, bytes);
            }
            Some(earlier) if *earlier == bytes => c.identical_repeats += 1,
            Some(earlier) => c.problems.push(format!(
                "window {id:?} emitted twice with different content: {} then {}",
                String::from_utf8_lossy(earlier),
                String::from_utf8_lossy(bytes)
            )),
        }
    }
    c.windows = first.len();
    let got: BTreeSet<_> = first.keys().cloned().collect();
    let want: BTreeSet<_> = reference.keys().cloned().collect();
    for id in want.difference(&got).take(5) {
        c.problems.push(format!("window {id:?} missing"));
    }
    let missing = want.difference(&got).count();
    if missing > 5 {
        c.problems
            .push(format!("... {missing} windows missing in all"));
    }
    for id in got.difference(&want).take(5) {
        c.problems
            .push(format!("window {id:?} not in the reference"));
    }
    for (id, bytes) in &first {
        if let Some(expected) = reference.get(id) {
            let value: Value = serde_json::from_slice(bytes).expect("checked above");
            if &value != expected {
                c.problems
                    .push(format!("window {id:?}: got {value}, expected {expected}"));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumed(value: Value) -> Consumed {
        Consumed {
            key: None,
            value: Some(value.to_string().into_bytes()),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn comparison_accepts_identical_repeats_and_rejects_wrong_missing_or_differing_ones() {
        let data = Dataset::generate(500, 5, 3, 50, 7);
        let reference = data.reference();
        let mut outputs: Vec<Consumed> = reference.values().cloned().map(consumed).collect();
        let c = compare(&outputs, &reference);
        assert!(c.exact(), "{:?}", c.problems);
        outputs.push(outputs[0].clone());
        let c = compare(&outputs, &reference);
        assert!(c.exact() && c.identical_repeats == 1);
        let mut wrong = reference.values().next().unwrap().clone();
        wrong["n"] = json!(0);
        outputs.push(consumed(wrong));
        assert!(!compare(&outputs, &reference).exact());
        assert!(!compare(&outputs[2..outputs.len() - 2], &reference).exact());
    }
}

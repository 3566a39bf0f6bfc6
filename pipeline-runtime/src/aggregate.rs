//! Mergeable accumulators for the aggregate functions of a window.
//!
//! Every accumulator can absorb a record and merge with another accumulator of the same kind, so
//! sliding windows are computed from panes and state can later be split and combined. `null` and
//! missing fields are skipped (as in SQL); a non-numeric value for a numeric function is an error,
//! reported before any accumulator changes so the record can be dead-lettered cleanly.

use std::hash::BuildHasher;

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use pipeline_crds::aggregate::{AggregateFunction, AggregateSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use siphasher::sip::SipHasher13;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::field::{FieldPath, FieldSource};

/// HyperLogLog++ precision: 2^14 registers, about 0.8% standard error.
const HLL_PRECISION: u8 = 14;

/// A fixed-key SipHash-1-3, so the same values give the same sketch in every process and in
/// every release (sketches are persisted in checkpoints; std's `DefaultHasher` may change).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(0, 0)
    }
}

/// Why a record cannot be aggregated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("aggregate {name}: field {field} is {found}, expected a number")]
pub struct AggregateError {
    name: String,
    field: String,
    found: String,
}

/// The compiled aggregate list of a pipeline.
#[derive(Clone, Debug)]
pub struct AggregatePlan {
    columns: Vec<Column>,
}

#[derive(Clone, Debug)]
struct Column {
    name: String,
    function: AggregateFunction,
    field: Option<FieldPath>,
    quantile: f64,
}

impl AggregatePlan {
    /// The fields the aggregates read.
    pub fn fields(&self) -> impl Iterator<Item = &FieldPath> {
        self.columns.iter().filter_map(|c| c.field.as_ref())
    }

    /// Compiles the spec's aggregates (already validated).
    pub fn new(specs: &[AggregateSpec]) -> Self {
        let columns = specs
            .iter()
            .map(|s| Column {
                name: s.name.clone(),
                function: s.function,
                field: s.field.as_deref().map(FieldPath::parse),
                quantile: s.quantile.unwrap_or(0.5),
            })
            .collect();
        Self { columns }
    }

    /// Output field names, in spec order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// Output field names with their functions, in spec order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, AggregateFunction)> {
        self.columns.iter().map(|c| (c.name.as_str(), c.function))
    }

    /// Empty accumulators, one per aggregate.
    pub fn empty(&self) -> Accumulators {
        Accumulators(
            self.columns
                .iter()
                .map(|c| Accumulator::new(c.function))
                .collect(),
        )
    }

    /// Whether restored accumulators have one accumulator of the right kind per aggregate, each
    /// fit for use (see `Accumulator::fit_for_use`).
    pub fn fits(&self, acc: &Accumulators) -> bool {
        acc.0.len() == self.columns.len()
            && self
                .columns
                .iter()
                .zip(&acc.0)
                .all(|(c, a)| a.function() == c.function && a.fit_for_use())
    }

    /// Reads the inputs of every aggregate from `record`, failing before any state changes.
    /// `at` places the record for `first` and `last`: its event time and its place in the
    /// order of arrival (its partition offset).
    pub fn inputs<'a>(&self, record: &'a Value, at: Arrival) -> Result<Inputs<'a>, AggregateError> {
        self.inputs_from(record, at)
    }

    /// [`Self::inputs`] read from any [`FieldSource`] (a record with its joined rows beside it).
    pub fn inputs_from<'a>(
        &self,
        source: impl FieldSource<'a>,
        at: Arrival,
    ) -> Result<Inputs<'a>, AggregateError> {
        let mut values = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            let value = column.field.as_ref().and_then(|f| source.field(f));
            let input = match (column.function, value) {
                (AggregateFunction::Count, _) | (_, None) => Input::Skip,
                (_, Some(Value::Null)) if column.function.takes_any_value() => Input::Skip,
                (f, Some(v)) if f.takes_any_value() => Input::Any(v),
                (_, Some(Value::Number(n))) => Input::Number(n),
                (_, Some(other)) => {
                    return Err(AggregateError {
                        name: column.name.clone(),
                        field: column
                            .field
                            .as_ref()
                            .map(|f| f.as_str())
                            .unwrap_or("")
                            .to_owned(),
                        found: type_name(other).to_owned(),
                    });
                }
            };
            values.push(input);
        }
        Ok(Inputs { values, at })
    }

    /// The output values of `acc`, in spec order.
    pub fn results(&self, acc: &Accumulators) -> Vec<(String, Value)> {
        self.columns
            .iter()
            .zip(&acc.0)
            .map(|(column, a)| (column.name.clone(), a.result(column.quantile)))
            .collect()
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a record stands for `first` and `last`: its event time, then its arrival order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Arrival {
    /// Event time, epoch ms.
    pub event_ms: i64,
    /// Arrival order among records of the same event time (the partition offset).
    pub seq: i64,
}

/// The per-aggregate inputs read from one record.
#[derive(Debug)]
pub struct Inputs<'a> {
    values: Vec<Input<'a>>,
    at: Arrival,
}

#[derive(Debug)]
enum Input<'a> {
    /// Nothing to add (count, or a missing/null field).
    Skip,
    Number(&'a Number),
    Any(&'a Value),
}

/// The state of every aggregate of one key and window (or pane): a boxed slice, not a `Vec`
/// (its length never changes; one word less per window).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Accumulators(Box<[Accumulator]>);

impl Accumulators {
    /// Adds one record's inputs.
    pub fn add(&mut self, inputs: &Inputs<'_>) {
        for (acc, input) in self.0.iter_mut().zip(&inputs.values) {
            acc.add(input, inputs.at);
        }
    }

    /// Folds `other` (same plan) into `self`.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.merge(b);
        }
    }
}

/// An exact sum: integers add up in 128 bits; once a fractional value arrives the sum continues
/// in f64 with Neumaier compensation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExactSum {
    int: Wide,
    float: Option<(f64, f64)>,
}

/// A 128-bit integer kept as two words: `i128` is 16-byte aligned, which made every accumulator
/// holding a sum 16 bytes larger. Stored in checkpoints as an `i128`, as before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Wide {
    low: u64,
    high: i64,
}

impl Wide {
    fn get(self) -> i128 {
        (i128::from(self.high) << 64) | i128::from(self.low)
    }

    fn set(&mut self, value: i128) {
        // Truncation on purpose: the two words are the value's two halves.
        self.low = value as u64;
        self.high = (value >> 64) as i64;
    }

    fn add(&mut self, value: i128) {
        self.set(self.get() + value);
    }
}

impl Serialize for Wide {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Wide {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut wide = Wide::default();
        wide.set(i128::deserialize(d)?);
        Ok(wide)
    }
}

impl ExactSum {
    fn add(&mut self, n: &Number) {
        match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => self.int.add(i128::from(i)),
            (None, Some(u)) => self.int.add(i128::from(u)),
            _ => self.add_float(n.as_f64().unwrap_or(0.0)),
        }
    }

    fn add_float(&mut self, x: f64) {
        let (sum, comp) = self.float.get_or_insert((0.0, 0.0));
        let t = *sum + x;
        if sum.abs() >= x.abs() {
            *comp += (*sum - t) + x;
        } else {
            *comp += (x - t) + *sum;
        }
        *sum = t;
    }

    fn merge(&mut self, other: &Self) {
        self.int.add(other.int.get());
        if let Some((s, c)) = other.float {
            self.add_float(s);
            self.add_float(c);
        }
    }

    fn value(&self) -> Value {
        match self.float {
            None => i64::try_from(self.int.get())
                .map(Value::from)
                .unwrap_or_else(|_| float(self.int.get() as f64)),
            Some((s, c)) => float(self.int.get() as f64 + s + c),
        }
    }

    fn as_f64(&self) -> f64 {
        match self.float {
            None => self.int.get() as f64,
            Some((s, c)) => self.int.get() as f64 + s + c,
        }
    }
}

fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[derive(Clone, Serialize, Deserialize)]
enum Accumulator {
    Count(u64),
    Sum(ExactSum),
    Min(#[serde(with = "stored_number")] Option<Number>),
    Max(#[serde(with = "stored_number")] Option<Number>),
    Avg { sum: ExactSum, count: u64 },
    CountDistinct(Box<HyperLogLogPlus<String, StableHasher>>),
    Percentile(Box<DDSketch>),
    // New variants go last: snapshots name variants by index.
    First(Option<Box<Placed>>),
    Last(Option<Box<Placed>>),
}

/// A value of `first` or `last` and where its record stands. The value is kept as JSON text:
/// checkpoints are postcard, which cannot read back a `serde_json::Value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Placed {
    at: Arrival,
    json: String,
}

impl Placed {
    fn of(value: &Value, at: Arrival) -> Box<Self> {
        Box::new(Self {
            at,
            json: value.to_string(),
        })
    }

    fn value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

/// Keeps in `current` whichever of it and the candidate `wins` says.
fn keep_placed(
    current: &mut Option<Box<Placed>>,
    at: Arrival,
    candidate: impl FnOnce() -> Box<Placed>,
    wins: fn(Arrival, Arrival) -> bool,
) {
    if current.as_ref().is_none_or(|old| wins(at, old.at)) {
        *current = Some(candidate());
    }
}

/// JSON numbers in checkpoints: `serde_json::Number` can only be read back by self-describing
/// formats, so it is stored as an explicit integer-or-float variant.
mod stored_number {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Number;

    #[derive(Serialize, Deserialize)]
    enum Stored {
        I64(i64),
        U64(u64),
        F64(f64),
    }

    pub fn serialize<S: Serializer>(n: &Option<Number>, s: S) -> Result<S::Ok, S::Error> {
        n.as_ref()
            .map(|n| match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Stored::I64(i),
                (None, Some(u)) => Stored::U64(u),
                _ => Stored::F64(n.as_f64().unwrap_or(0.0)),
            })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Number>, D::Error> {
        Ok(Option::<Stored>::deserialize(d)?.and_then(|n| match n {
            Stored::I64(i) => Some(Number::from(i)),
            Stored::U64(u) => Some(Number::from(u)),
            Stored::F64(f) => Number::from_f64(f),
        }))
    }
}

impl std::fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.result(0.5))
    }
}

impl Accumulator {
    fn function(&self) -> AggregateFunction {
        match self {
            Self::Count(_) => AggregateFunction::Count,
            Self::Sum(_) => AggregateFunction::Sum,
            Self::Min(_) => AggregateFunction::Min,
            Self::Max(_) => AggregateFunction::Max,
            Self::Avg { .. } => AggregateFunction::Avg,
            Self::CountDistinct(_) => AggregateFunction::CountDistinct,
            Self::Percentile(_) => AggregateFunction::Percentile,
            Self::First(_) => AggregateFunction::First,
            Self::Last(_) => AggregateFunction::Last,
        }
    }

    fn new(function: AggregateFunction) -> Self {
        match function {
            AggregateFunction::Count => Self::Count(0),
            AggregateFunction::Sum => Self::Sum(ExactSum::default()),
            AggregateFunction::Min => Self::Min(None),
            AggregateFunction::Max => Self::Max(None),
            AggregateFunction::Avg => Self::Avg {
                sum: ExactSum::default(),
                count: 0,
            },
            AggregateFunction::CountDistinct => Self::CountDistinct(Box::new(
                HyperLogLogPlus::new(HLL_PRECISION, StableHasher).expect("precision 14 is valid"),
            )),
            AggregateFunction::Percentile => {
                Self::Percentile(Box::new(DDSketch::new(SketchConfig::defaults())))
            }
            AggregateFunction::First => Self::First(None),
            AggregateFunction::Last => Self::Last(None),
        }
    }

    fn add(&mut self, input: &Input<'_>, at: Arrival) {
        match (self, input) {
            (Self::Count(n), _) => *n += 1,
            (_, Input::Skip) => {}
            (Self::Sum(sum), Input::Number(x)) => sum.add(x),
            (Self::Min(current), Input::Number(x)) => {
                keep_extreme(current, x, |new, old| new < old)
            }
            (Self::Max(current), Input::Number(x)) => {
                keep_extreme(current, x, |new, old| new > old)
            }
            (Self::Avg { sum, count }, Input::Number(x)) => {
                sum.add(x);
                *count += 1;
            }
            (Self::CountDistinct(hll), Input::Any(v)) => match v {
                Value::String(s) => hll.insert(s.as_str()),
                other => hll.insert(other.to_string().as_str()),
            },
            (Self::Percentile(sketch), Input::Number(x)) => sketch.add(x.as_f64().unwrap_or(0.0)),
            (Self::First(current), Input::Any(v)) => {
                keep_placed(current, at, || Placed::of(v, at), |new, old| new < old);
            }
            (Self::Last(current), Input::Any(v)) => {
                keep_placed(current, at, || Placed::of(v, at), |new, old| new >= old);
            }
            _ => {}
        }
    }

    /// Whether a restored accumulator is fit for use: sketches with the plan's precision, hasher
    /// and configuration, whose internals survive the operations windows will apply (adding,
    /// merging both ways with a wide-ranged sketch, reading a quantile). The sketch crates do not
    /// check what they deserialize, and a damaged sketch panics inside them later: a DDSketch's
    /// store invariants are checked (`sketch_integrity`), then the operations are tried once, at
    /// restore, under `catch_unwind`, so a damaged snapshot is refused instead.
    fn fit_for_use(&self) -> bool {
        match self {
            Self::CountDistinct(b) => {
                let mut fresh: HyperLogLogPlus<String, StableHasher> =
                    HyperLogLogPlus::new(HLL_PRECISION, StableHasher)
                        .expect("precision 14 is valid");
                fresh.merge(b).is_ok()
            }
            Self::Percentile(b) if !crate::sketch_integrity::ddsketch_is_consistent(b) => false,
            Self::Percentile(b) => std::panic::catch_unwind(|| {
                let mut wide = DDSketch::new(SketchConfig::defaults());
                for x in [-1e12, -1.0, 1e-12, 0.5, 3.0, 1e12] {
                    wide.add(x);
                }
                let mut restored = (**b).clone();
                let merged = DDSketch::new(SketchConfig::defaults()).merge(b).is_ok()
                    && restored.merge(&wide).is_ok();
                let mut used = (**b).clone();
                used.add(42.0);
                merged && used.quantile(0.5).is_ok() && restored.quantile(0.9).is_ok()
            })
            .unwrap_or(false),
            _ => true,
        }
    }

    fn merge(&mut self, other: &Self) {
        match (self, other) {
            (Self::Count(a), Self::Count(b)) => *a += b,
            (Self::Sum(a), Self::Sum(b)) => a.merge(b),
            (Self::Min(a), Self::Min(Some(b))) => keep_extreme(a, b, |new, old| new < old),
            (Self::Max(a), Self::Max(Some(b))) => keep_extreme(a, b, |new, old| new > old),
            (Self::Avg { sum, count }, Self::Avg { sum: s2, count: c2 }) => {
                sum.merge(s2);
                *count += c2;
            }
            (Self::CountDistinct(a), Self::CountDistinct(b)) => {
                a.merge(b)
                    .expect("sketches of one plan share precision and hasher");
            }
            (Self::Percentile(a), Self::Percentile(b)) => {
                a.merge(b).expect("sketches of one plan share their config");
            }
            (Self::First(a), Self::First(Some(b))) => {
                keep_placed(a, b.at, || b.clone(), |new, old| new < old);
            }
            (Self::Last(a), Self::Last(Some(b))) => {
                keep_placed(a, b.at, || b.clone(), |new, old| new > old);
            }
            _ => {}
        }
    }

    fn result(&self, quantile: f64) -> Value {
        match self {
            Self::Count(n) => Value::from(*n),
            Self::Sum(sum) => sum.value(),
            Self::Min(v) | Self::Max(v) => v.clone().map_or(Value::Null, Value::Number),
            Self::Avg { sum, count } => {
                if *count == 0 {
                    Value::Null
                } else {
                    float(sum.as_f64() / *count as f64)
                }
            }
            Self::CountDistinct(hll) => {
                // `count` needs `&mut` (it may convert the sparse form); work on a copy.
                let mut copy: HyperLogLogPlus<String, StableHasher> = (**hll).clone();
                Value::from(copy.count().round() as u64)
            }
            Self::Percentile(sketch) => match sketch.quantile(quantile) {
                Ok(Some(v)) => float(v),
                _ => Value::Null,
            },
            Self::First(placed) | Self::Last(placed) => {
                placed.as_ref().map_or(Value::Null, |p| p.value())
            }
        }
    }
}

fn keep_extreme(current: &mut Option<Number>, candidate: &Number, better: fn(f64, f64) -> bool) {
    let new = candidate.as_f64().unwrap_or(f64::NAN);
    let replace = match current {
        None => true,
        Some(old) => better(new, old.as_f64().unwrap_or(f64::NAN)),
    };
    if replace {
        *current = Some(candidate.clone());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_wide_sum_keeps_every_128_bit_value_and_is_stored_as_an_i128() {
        for value in [
            0,
            1,
            -1,
            i128::from(i64::MAX) + 1,
            i128::from(i64::MIN) - 1,
            i128::MAX,
            i128::MIN,
        ] {
            let mut wide = Wide::default();
            wide.set(value);
            assert_eq!(wide.get(), value);
            let stored = postcard::to_stdvec(&wide).unwrap();
            assert_eq!(stored, postcard::to_stdvec(&value).unwrap());
            assert_eq!(postcard::from_bytes::<Wide>(&stored).unwrap(), wide);
        }
        assert_eq!(std::mem::align_of::<ExactSum>(), 8, "no 16-byte alignment");
    }

    fn plan(yaml: &str) -> AggregatePlan {
        let specs: Vec<AggregateSpec> = serde_norway::from_str(yaml).unwrap();
        AggregatePlan::new(&specs)
    }

    fn all() -> AggregatePlan {
        plan(
            "[{name: n, function: count}, {name: s, function: sum, field: v}, {name: lo, function: min, field: v},
              {name: hi, function: max, field: v}, {name: mean, function: avg, field: v},
              {name: d, function: count_distinct, field: u}, {name: p50, function: percentile, field: v, quantile: 0.5}]",
        )
    }

    fn run(plan: &AggregatePlan, records: &[Value]) -> Vec<(String, Value)> {
        let mut acc = plan.empty();
        for r in records {
            acc.add(&plan.inputs(r, Arrival::default()).unwrap());
        }
        plan.results(&acc)
    }

    #[test]
    fn computes_every_function_on_a_small_input() {
        let records: Vec<Value> = [3, 1, 4, 1, 5]
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"v": v, "u": format!("user{}", i % 3)}))
            .collect();
        let out: serde_json::Map<String, Value> = run(&all(), &records).into_iter().collect();
        assert_eq!(out["n"], json!(5));
        assert_eq!(out["s"], json!(14));
        assert_eq!(out["lo"], json!(1));
        assert_eq!(out["hi"], json!(5));
        assert_eq!(out["mean"], json!(2.8));
        assert_eq!(out["d"], json!(3));
        let p50 = out["p50"].as_f64().unwrap();
        assert!((p50 - 3.0).abs() <= 0.03, "p50 {p50}");
    }

    #[test]
    fn skips_missing_and_null_fields_but_counts_the_record() {
        let records = vec![json!({"v": 2}), json!({"v": null}), json!({})];
        let out: serde_json::Map<String, Value> = run(&all(), &records).into_iter().collect();
        assert_eq!(out["n"], json!(3));
        assert_eq!(out["s"], json!(2));
        assert_eq!(out["mean"], json!(2.0));
        assert_eq!(out["d"], json!(0));
    }

    #[test]
    fn a_string_for_a_numeric_aggregate_is_an_error_naming_the_field() {
        let err = all()
            .inputs(&json!({"v": "seven"}), Arrival::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "aggregate s: field v is a string, expected a number"
        );
    }

    #[test]
    fn empty_windows_give_nulls_not_zeros_for_value_functions() {
        let out: serde_json::Map<String, Value> = run(&all(), &[]).into_iter().collect();
        assert_eq!(out["lo"], Value::Null);
        assert_eq!(out["mean"], Value::Null);
        assert_eq!(out["p50"], Value::Null);
        assert_eq!(out["s"], json!(0));
    }

    #[test]
    fn count_distinct_is_within_two_percent_on_fifty_thousand_values() {
        let p = plan("[{name: d, function: count_distinct, field: u}]");
        let records: Vec<Value> = (0..100_000).map(|i| json!({"u": i % 50_000})).collect();
        let got = run(&p, &records)[0].1.as_f64().unwrap();
        assert!((got - 50_000.0).abs() / 50_000.0 < 0.02, "estimate {got}");
    }

    #[test]
    fn percentile_has_one_percent_relative_error() {
        let p = plan("[{name: p99, function: percentile, field: v, quantile: 0.99}]");
        let records: Vec<Value> = (1..=10_000).map(|i| json!({"v": i})).collect();
        let got = run(&p, &records)[0].1.as_f64().unwrap();
        assert!((got - 9_900.0).abs() / 9_900.0 <= 0.011, "p99 {got}");
    }

    fn at(event_ms: i64, seq: i64) -> Arrival {
        Arrival { event_ms, seq }
    }

    #[test]
    fn first_and_last_take_the_value_at_the_extreme_event_times_ties_by_arrival() {
        let p = plan("[{name: f, function: first, field: c}, {name: l, function: last, field: c}]");
        let mut acc = p.empty();
        for (record, when) in [
            (json!({"c": "fr"}), at(20, 1)),
            (json!({"c": "de"}), at(10, 2)),
            (json!({"c": 7}), at(10, 3)),
            (json!({"c": null}), at(5, 4)),
            (json!({}), at(50, 5)),
            (json!({"c": {"n": 1}}), at(30, 6)),
            (json!({"c": true}), at(30, 7)),
        ] {
            acc.add(&p.inputs(&record, when).unwrap());
        }
        let out: serde_json::Map<String, Value> = p.results(&acc).into_iter().collect();
        assert_eq!(
            out["f"],
            json!("de"),
            "earliest event time, first read of the tie"
        );
        assert_eq!(
            out["l"],
            json!(true),
            "latest event time, last read of the tie"
        );
        let stored = postcard::to_stdvec(&acc).unwrap();
        let restored: Accumulators = postcard::from_bytes(&stored).unwrap();
        assert!(p.fits(&restored));
        assert_eq!(p.results(&restored), p.results(&acc));
        assert_eq!(p.results(&p.empty())[0].1, Value::Null);
    }

    proptest! {
        /// `first` and `last` give the same value whichever way the records are split into
        /// panes and merged, and whatever order the panes are merged in.
        #[test]
        fn first_and_last_merge_in_any_order(times in proptest::collection::vec(0i64..20, 1..60), split in 0usize..60, swap in any::<bool>()) {
            let p = plan("[{name: f, function: first, field: v}, {name: l, function: last, field: v}]");
            let records: Vec<(Value, Arrival)> = times.iter().enumerate().map(|(i, t)| (json!({"v": i}), at(*t, i as i64))).collect();
            let cut = split.min(records.len());
            let (mut left, mut right, mut whole) = (p.empty(), p.empty(), p.empty());
            for (r, a) in &records[..cut] { left.add(&p.inputs(r, *a).unwrap()); }
            for (r, a) in &records[cut..] { right.add(&p.inputs(r, *a).unwrap()); }
            for (r, a) in &records { whole.add(&p.inputs(r, *a).unwrap()); }
            if swap { std::mem::swap(&mut left, &mut right); }
            left.merge(&right);
            prop_assert_eq!(p.results(&left), p.results(&whole));
            let first = records.iter().min_by_key(|(_, a)| *a).unwrap().0["v"].clone();
            let last = records.iter().max_by_key(|(_, a)| *a).unwrap().0["v"].clone();
            prop_assert_eq!(p.results(&whole), vec![("f".to_owned(), first), ("l".to_owned(), last)]);
        }

        /// Splitting a stream into panes and merging them gives the same result as one pass:
        /// what sliding windows and state hand-over rely on.
        #[test]
        fn merging_split_accumulators_equals_one_pass(values in proptest::collection::vec(-1_000_000i64..1_000_000, 0..200), split in 0usize..200) {
            let p = all();
            let records: Vec<Value> = values.iter().map(|v| json!({"v": v, "u": v % 17})).collect();
            let cut = split.min(records.len());
            let mut left = p.empty();
            let mut right = p.empty();
            for r in &records[..cut] { left.add(&p.inputs(r, Arrival::default()).unwrap()); }
            for r in &records[cut..] { right.add(&p.inputs(r, Arrival::default()).unwrap()); }
            left.merge(&right);
            prop_assert_eq!(p.results(&left), run(&p, &records));
        }

        /// Integer sums are exact whatever the order.
        #[test]
        fn integer_sums_are_exact(values in proptest::collection::vec(any::<i64>(), 0..50)) {
            let p = plan("[{name: s, function: sum, field: v}]");
            let records: Vec<Value> = values.iter().map(|v| json!({"v": v})).collect();
            let exact: i128 = values.iter().map(|v| i128::from(*v)).sum();
            let got = run(&p, &records)[0].1.clone();
            match i64::try_from(exact) {
                Ok(e) => prop_assert_eq!(got, json!(e)),
                Err(_) => prop_assert_eq!(got.as_f64().unwrap(), exact as f64),
            }
        }
    }
}

//! Whether a DDSketch read back from a snapshot keeps the invariants its store relies on.
//!
//! `sketches-ddsketch` deserializes its dense stores without checking them, and indexes its bins
//! with keys and offsets it trusts, so a store whose `offset`, `min_key`, `max_key` and bin count
//! disagree panics later, inside a merge that may come minutes after the restore (seen with a
//! snapshot body damaged under a valid checksum). The crate keeps the fields private; their serde
//! form is public, so the check reads that.
//!
//! The invariants, as every operation of the crate leaves a store:
//! - an empty store has no bins, a zero count and the initial keys (`min_key = i32::MAX`,
//!   `max_key = i32::MIN`);
//! - a non-empty store's count is the sum of its bins, its bins are at most `bin_limit`, which is
//!   the configuration's `max_num_bins`, and `offset ≤ min_key ≤ max_key < offset + bins`;
//! - every key is within what an `f64` can map to (|key| ≤ 2²⁰ for any gamma above 1.0001), so
//!   the crate's `i32` key arithmetic cannot overflow.

use serde_json::Value;
use sketches_ddsketch::DDSketch;

/// The largest key magnitude accepted: an `f64`'s logarithm in base gamma stays far below it for
/// every configuration this runtime uses (about 48,000 for the default gamma of 1.015).
const MAX_KEY_MAGNITUDE: i64 = 1 << 20;

/// Whether both stores of `sketch` keep the invariants the crate's operations rely on.
pub fn ddsketch_is_consistent(sketch: &DDSketch) -> bool {
    let Ok(Value::Object(fields)) = serde_json::to_value(sketch) else {
        return false;
    };
    let Some(max_bins) = fields
        .get("config")
        .and_then(|config| config.get("max_num_bins"))
        .and_then(Value::as_u64)
    else {
        return false;
    };
    ["store", "negative_store"].iter().all(|name| {
        fields
            .get(*name)
            .is_some_and(|store| store_is_consistent(store, max_bins))
    })
}

fn store_is_consistent(store: &Value, max_bins: u64) -> bool {
    let integer = |name: &str| store.get(name).and_then(Value::as_i64);
    let (Some(count), Some(min_key), Some(max_key), Some(offset), Some(bin_limit)) = (
        store.get("count").and_then(Value::as_u64),
        integer("min_key"),
        integer("max_key"),
        integer("offset"),
        store.get("bin_limit").and_then(Value::as_u64),
    ) else {
        return false;
    };
    let Some(bins) = store.get("bins").and_then(Value::as_array) else {
        return false;
    };
    if bin_limit != max_bins || bins.len() as u64 > bin_limit {
        return false;
    }
    if bins.is_empty() {
        return count == 0 && min_key == i64::from(i32::MAX) && max_key == i64::from(i32::MIN);
    }
    let keys_in_range = [min_key, max_key, offset]
        .iter()
        .all(|key| key.abs() <= MAX_KEY_MAGNITUDE);
    let ordered = offset <= min_key && min_key <= max_key && max_key < offset + bins.len() as i64;
    let summed = bins
        .iter()
        .try_fold(0u64, |sum, bin| sum.checked_add(bin.as_u64()?))
        .is_some_and(|sum| sum == count && sum > 0);
    keys_in_range && ordered && summed
}

#[cfg(test)]
mod tests {
    use super::*;
    use sketches_ddsketch::Config;

    fn sketch_of(values: &[f64]) -> DDSketch {
        let mut sketch = DDSketch::new(Config::defaults());
        for &x in values {
            sketch.add(x);
        }
        sketch
    }

    fn with_store_field(sketch: &DDSketch, field: &str, value: Value) -> DDSketch {
        let mut form = serde_json::to_value(sketch).unwrap();
        form["store"][field] = value;
        // An empty sketch's infinite min and max have no JSON form; any number reads back.
        for bound in ["min", "max"] {
            if form[bound].is_null() {
                form[bound] = 0.0.into();
            }
        }
        serde_json::from_value(form).unwrap()
    }

    #[test]
    fn sketches_built_by_the_crate_are_consistent() {
        assert!(ddsketch_is_consistent(&sketch_of(&[])));
        assert!(ddsketch_is_consistent(&sketch_of(&[
            0.0, 1.5, -3.0, 1e300, -1e-300
        ])));
        let wide: Vec<f64> = (0..5_000)
            .map(|i| 1.01f64.powi(i) * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut merged = sketch_of(&wide);
        merged.merge(&sketch_of(&[1e-9, 7.0])).unwrap();
        assert!(
            ddsketch_is_consistent(&merged),
            "collapsed stores stay consistent"
        );
    }

    #[test]
    fn a_store_whose_offset_disagrees_with_its_keys_is_refused() {
        let sketch = sketch_of(&[3.0, 4.0, 5.0]);
        let form = serde_json::to_value(&sketch).unwrap();
        let min_key = form["store"]["min_key"].as_i64().unwrap();
        assert!(!ddsketch_is_consistent(&with_store_field(
            &sketch,
            "offset",
            (min_key + 1).into()
        )));
        assert!(!ddsketch_is_consistent(&with_store_field(
            &sketch,
            "offset",
            (min_key - 5_000).into()
        )));
    }

    #[test]
    fn a_store_whose_count_is_not_its_bins_or_whose_limit_is_not_the_configs_is_refused() {
        let sketch = sketch_of(&[3.0, 4.0]);
        assert!(!ddsketch_is_consistent(&with_store_field(
            &sketch,
            "count",
            9.into()
        )));
        assert!(!ddsketch_is_consistent(&with_store_field(
            &sketch,
            "bin_limit",
            (1u64 << 40).into()
        )));
        let empty = sketch_of(&[]);
        assert!(!ddsketch_is_consistent(&with_store_field(
            &empty,
            "min_key",
            0.into()
        )));
    }
}

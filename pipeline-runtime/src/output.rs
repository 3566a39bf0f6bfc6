//! Encoding output records.
//!
//! A windowed output is a JSON object `{<key field>, window_start, window_end, <aggregates>…}`
//! whose Kafka key is `{"<key field>":<key>,"window_start":<start>}`: one key per (key, window), so
//! a re-emitted window replaces the earlier record in a compacted topic.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::window::WindowResult;
use pipeline_crds::contract::output::{WINDOW_END, WINDOW_START};

struct WindowValue<'a> {
    key_field: &'a str,
    result: &'a WindowResult,
}

impl Serialize for WindowValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.result;
        let mut map = serializer.serialize_map(Some(3 + r.values.len()))?;
        map.serialize_entry(self.key_field, &r.key_value)?;
        map.serialize_entry(WINDOW_START, &r.start)?;
        map.serialize_entry(WINDOW_END, &r.end)?;
        for (name, value) in &r.values {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

struct WindowKey<'a> {
    key_field: &'a str,
    result: &'a WindowResult,
}

impl Serialize for WindowKey<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(self.key_field, &self.result.key_value)?;
        map.serialize_entry(WINDOW_START, &self.result.start)?;
        map.end()
    }
}

/// The Kafka key and JSON value of a window result.
pub fn window_record(key_field: &str, result: &WindowResult) -> (Vec<u8>, Vec<u8>) {
    let key = serde_json::to_vec(&WindowKey { key_field, result }).expect("JSON values serialize");
    let value =
        serde_json::to_vec(&WindowValue { key_field, result }).expect("JSON values serialize");
    (key, value)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    #[test]
    fn window_records_carry_key_bounds_and_aggregates_in_order() {
        let result = WindowResult {
            key: Arc::from("d-1"),
            key_value: json!("d-1"),
            start: 60_000,
            end: 120_000,
            values: vec![("readings".into(), json!(3)), ("avg_t".into(), json!(20.5))],
        };
        let (key, value) = window_record("device_id", &result);
        assert_eq!(
            String::from_utf8(key).unwrap(),
            r#"{"device_id":"d-1","window_start":60000}"#
        );
        assert_eq!(
            String::from_utf8(value).unwrap(),
            r#"{"device_id":"d-1","window_start":60000,"window_end":120000,"readings":3,"avg_t":20.5}"#
        );
    }
}

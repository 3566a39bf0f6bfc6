//! Encoding output rows as JSON and Avro (the Kafka sink's formats; ClickHouse takes the JSON).
//!
//! A windowed output is a JSON object `{<key field>, window_start, window_end, <aggregates>…}`
//! whose Kafka key is `{"<key field>":<key>,"window_start":<start>}`: one key per (key, window), so
//! a re-emitted window replaces the earlier record in a compacted topic.

use apache_avro::{Schema, types::Value as AvroValue};
use pipeline_crds::{
    aggregate::AggregateFunction,
    contract::output::{WINDOW_END, WINDOW_START, avro_field_name},
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::{aggregate::AggregatePlan, row::Row, window::WindowResult};

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

/// The Kafka key and JSON value of a row: a window result's (key, window start) key and object,
/// or a record's own key and object.
pub fn row_json(key_field: &str, row: &Row) -> (Option<Vec<u8>>, Vec<u8>) {
    match row {
        Row::Window { result, .. } => {
            let (key, value) = window_record(key_field, result);
            (Some(key), value)
        }
        Row::Record { key, json, .. } => (key.clone(), json.clone()),
    }
}

/// Why window results cannot be written in Avro.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The schema derived from the spec does not parse (two fields alike once sanitised).
    #[error("the Avro schema derived for the window results is invalid: {0}")]
    Schema(apache_avro::Error),
    /// A result does not fit the schema.
    #[error("a window result does not fit its Avro schema: {0}")]
    Encode(apache_avro::Error),
    /// The schema is not a record.
    #[error("the Avro schema of the window results is not a record")]
    NotARecord,
}

/// How window results are written.
pub enum WindowEncoding {
    /// JSON objects.
    Json,
    /// Avro in the Confluent wire format with a registered schema.
    Avro {
        /// The derived schema.
        schema: Box<Schema>,
        /// Its registry id.
        id: u32,
    },
}

/// The Avro type of `first` and `last`, whose values keep the field's JSON type: a union of
/// every type a JSON value can take (an object or array is written as its JSON text).
const ANY_VALUE: [&str; 5] = ["null", "boolean", "long", "double", "string"];

/// The Avro schema of a pipeline's window results: the key as a string, `window_start` and
/// `window_end` as longs, counts as longs, `first` and `last` as [`ANY_VALUE`], and every other
/// aggregate as an optional double.
/// Fails when two output fields share a name once sanitised (validation refuses such specs).
pub fn window_schema(key_field: &str, aggregates: &AggregatePlan) -> Result<Schema, OutputError> {
    let mut fields = vec![
        serde_json::json!({"name": avro_field_name(key_field), "type": "string"}),
        serde_json::json!({"name": WINDOW_START, "type": "long"}),
        serde_json::json!({"name": WINDOW_END, "type": "long"}),
    ];
    for (name, function) in aggregates.columns() {
        let kind = match function {
            AggregateFunction::Count | AggregateFunction::CountDistinct => {
                serde_json::json!("long")
            }
            AggregateFunction::First | AggregateFunction::Last => serde_json::json!(ANY_VALUE),
            _ => serde_json::json!(["null", "double"]),
        };
        fields.push(serde_json::json!({"name": name, "type": kind, "default": if kind.is_string() { Value::from(0) } else { Value::Null }}));
    }
    let schema = serde_json::json!({
        "type": "record",
        "name": "WindowResult",
        "namespace": "dev.sluice",
        "fields": fields,
    });
    Schema::parse(&schema).map_err(OutputError::Schema)
}

/// A JSON value in the [`ANY_VALUE`] union.
fn any_value(value: &Value) -> AvroValue {
    let (index, avro) = match value {
        Value::Null => (0, AvroValue::Null),
        Value::Bool(b) => (1, AvroValue::Boolean(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => (2, AvroValue::Long(i)),
            None => (3, AvroValue::Double(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => (4, AvroValue::String(s.clone())),
        other => (4, AvroValue::String(other.to_string())),
    };
    AvroValue::Union(index, Box::new(avro))
}

/// The Avro datum of a window result, in the Confluent wire format.
pub fn window_avro(
    schema: &Schema,
    id: u32,
    result: &WindowResult,
) -> Result<Vec<u8>, OutputError> {
    let Schema::Record(record) = schema else {
        return Err(OutputError::NotARecord);
    };
    let mut values = Vec::with_capacity(record.fields.len());
    values.push((
        record.fields[0].name.clone(),
        AvroValue::String(result.key.to_string()),
    ));
    values.push((WINDOW_START.to_owned(), AvroValue::Long(result.start)));
    values.push((WINDOW_END.to_owned(), AvroValue::Long(result.end)));
    for (field, (_, value)) in record.fields[3..].iter().zip(&result.values) {
        let avro = match (&field.schema, value) {
            (Schema::Long, v) => AvroValue::Long(v.as_i64().unwrap_or(0)),
            (Schema::Union(union), v) if union.variants().len() == ANY_VALUE.len() => any_value(v),
            (_, Value::Number(n)) => AvroValue::Union(
                1,
                Box::new(AvroValue::Double(n.as_f64().unwrap_or(f64::NAN))),
            ),
            _ => AvroValue::Union(0, Box::new(AvroValue::Null)),
        };
        values.push((field.name.clone(), avro));
    }
    let mut bytes = vec![0];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.extend(
        apache_avro::to_avro_datum(schema, AvroValue::Record(values))
            .map_err(OutputError::Encode)?,
    );
    Ok(bytes)
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

#[cfg(test)]
mod avro_tests {
    use std::sync::Arc;

    use pipeline_crds::aggregate::AggregateSpec;
    use serde_json::json;

    use super::*;

    #[test]
    fn avro_window_records_decode_with_the_derived_schema() {
        let specs: Vec<AggregateSpec> = serde_norway::from_str(
            "[{name: n, function: count}, {name: avg_t, function: avg, field: t}, {name: lo, function: min, field: t}]",
        )
        .unwrap();
        let plan = AggregatePlan::new(&specs);
        let schema = window_schema("device-id", &plan).unwrap();
        let result = WindowResult {
            key: Arc::from("d-1"),
            key_value: json!("d-1"),
            start: 60_000,
            end: 120_000,
            values: vec![
                ("n".into(), json!(3)),
                ("avg_t".into(), json!(20.5)),
                ("lo".into(), Value::Null),
            ],
        };
        let bytes = window_avro(&schema, 42, &result).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
        let decoded = apache_avro::from_avro_datum(&schema, &mut &bytes[5..], None).unwrap();
        let decoded = Value::try_from(decoded).unwrap();
        assert_eq!(
            decoded,
            json!({"device_id": "d-1", "window_start": 60_000, "window_end": 120_000, "n": 3, "avg_t": 20.5, "lo": null})
        );
    }

    #[test]
    fn first_and_last_keep_their_json_type_in_avro() {
        let specs: Vec<AggregateSpec> = serde_norway::from_str(
            "[{name: a, function: first, field: x}, {name: b, function: last, field: x}, {name: c, function: last, field: x}, {name: d, function: first, field: x}, {name: e, function: last, field: x}, {name: f, function: first, field: x}]",
        )
        .unwrap();
        let plan = AggregatePlan::new(&specs);
        let schema = window_schema("k", &plan).unwrap();
        let values = [
            json!("fr"),
            json!(7),
            json!(2.5),
            json!(true),
            Value::Null,
            json!({"n": 1}),
        ];
        let result = WindowResult {
            key: Arc::from("u"),
            key_value: json!("u"),
            start: 0,
            end: 10,
            values: ["a", "b", "c", "d", "e", "f"]
                .iter()
                .zip(values)
                .map(|(n, v)| ((*n).to_owned(), v))
                .collect(),
        };
        let bytes = window_avro(&schema, 1, &result).unwrap();
        let decoded = apache_avro::from_avro_datum(&schema, &mut &bytes[5..], None).unwrap();
        assert_eq!(
            Value::try_from(decoded).unwrap(),
            json!({"k": "u", "window_start": 0, "window_end": 10, "a": "fr", "b": 7, "c": 2.5, "d": true, "e": null, "f": "{\"n\":1}"})
        );
    }
}

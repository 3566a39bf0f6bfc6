//! Dotted field paths (`user.id`) resolved against decoded records.

use serde_json::Value;

/// Where the stages read field paths: a decoded record, or a record with the rows its
/// reference tables joined kept beside it (`enrich::WithJoined`).
pub trait FieldSource<'a>: Copy {
    /// The value at `path`; `None` when a segment is missing or the value is `null`.
    fn field(self, path: &FieldPath) -> Option<&'a Value>;
}

impl<'a> FieldSource<'a> for &'a Value {
    fn field(self, path: &FieldPath) -> Option<&'a Value> {
        path.get(self)
    }
}

/// A parsed field path, split once so lookups do not re-parse it per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a.b.c`.
    pub fn parse(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            segments: text.split('.').map(str::to_owned).collect(),
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first segment: the top-level field a decoder must keep for this path.
    pub fn root(&self) -> &str {
        self.segments
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The last segment: the name a copied field gets in an output record.
    pub fn leaf(&self) -> &str {
        self.segments.last().map(String::as_str).unwrap_or_default()
    }

    /// The value at this path; `None` when a segment is missing or the value is `null`.
    pub fn get<'a>(&self, record: &'a Value) -> Option<&'a Value> {
        let mut current = record;
        for segment in &self.segments {
            current = current.as_object()?.get(segment)?;
        }
        (!current.is_null()).then_some(current)
    }

    /// The value at this path below its root, in `root_value` (the value of its first
    /// segment); `None` when a segment is missing or the value is `null`.
    pub fn get_below_root<'a>(&self, root_value: &'a Value) -> Option<&'a Value> {
        let mut current = root_value;
        for segment in self.segments.iter().skip(1) {
            current = current.as_object()?.get(segment)?;
        }
        (!current.is_null()).then_some(current)
    }

    /// Copies the value at this path into `out` under the same nested path.
    pub fn copy_into(&self, record: &Value, out: &mut serde_json::Map<String, Value>) {
        let Some(value) = self.get(record) else {
            return;
        };
        let (last, parents) = self.segments.split_last().expect("a path has a segment");
        let mut target = out;
        for segment in parents {
            let entry = target
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(serde_json::Map::new());
            }
            target = entry.as_object_mut().expect("just made an object");
        }
        target.insert(last.clone(), value.clone());
    }
}

/// The text form of a key value: strings as-is, other scalars as JSON. Two records have the same
/// key exactly when these texts are equal.
pub fn key_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resolves_nested_paths_and_treats_null_as_missing() {
        let record = json!({"user": {"id": 7, "name": null}, "x": 1});
        assert_eq!(FieldPath::parse("user.id").get(&record), Some(&json!(7)));
        assert_eq!(FieldPath::parse("user.name").get(&record), None);
        assert_eq!(FieldPath::parse("user.id.deeper").get(&record), None);
        assert_eq!(FieldPath::parse("missing").get(&record), None);
        assert_eq!(FieldPath::parse("user.id").leaf(), "id");
    }

    #[test]
    fn copies_nested_fields_keeping_their_shape() {
        let record = json!({"order_id": 1, "customer": {"id": "c9", "email": "x"}, "amount": 5});
        let mut out = serde_json::Map::new();
        for path in ["order_id", "customer.id", "absent"] {
            FieldPath::parse(path).copy_into(&record, &mut out);
        }
        assert_eq!(
            Value::Object(out),
            json!({"order_id": 1, "customer": {"id": "c9"}})
        );
    }

    #[test]
    fn key_text_keeps_strings_and_writes_other_scalars_as_json() {
        assert_eq!(key_text(&json!("d-1")), "d-1");
        assert_eq!(key_text(&json!(42)), "42");
        assert_eq!(key_text(&json!(true)), "true");
    }
}

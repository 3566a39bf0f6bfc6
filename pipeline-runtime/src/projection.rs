//! Stateless output: the selected fields of a record (`transform.select`), written as one JSON
//! object.
//!
//! When every path is a top-level field, the object is written straight from the decoded record:
//! no copy of the values into a new object that is serialised and dropped (that copy was about
//! a tenth of the stateless job's slot CPU). Nested paths build the object first. Both write the
//! same bytes: fields in the order a `serde_json` object keeps them, a missing or `null` field
//! left out, a path named twice written once.

use serde_json::{Map, Value};

use crate::field::FieldPath;

/// How a plan's `select` is written.
#[derive(Clone, Debug)]
pub struct Projection(Layout);

#[derive(Clone, Debug)]
enum Layout {
    /// Every path is a top-level field: `"name":` already encoded, and the path, in the order a
    /// JSON object holds the names.
    TopLevel(Vec<(Vec<u8>, FieldPath)>),
    /// Some path is nested: copied into an object, which is then written.
    Nested(Vec<FieldPath>),
}

impl Projection {
    /// The projection of `paths`.
    pub fn new(paths: &[FieldPath]) -> Self {
        if paths.iter().any(|p| p.root() != p.as_str()) {
            return Self(Layout::Nested(paths.to_vec()));
        }
        // A `serde_json` object orders its names (sorted, or as inserted with `preserve_order`):
        // ask one for that order rather than assume it.
        let mut order = Map::new();
        for (i, path) in paths.iter().enumerate() {
            order.insert(path.as_str().to_owned(), Value::from(i));
        }
        let fields = order
            .iter()
            .filter_map(|(name, i)| {
                let path = paths[usize::try_from(i.as_u64()?).ok()?].clone();
                let mut prefix = serde_json::to_vec(name).expect("a string serialises");
                prefix.push(b':');
                Some((prefix, path))
            })
            .collect();
        Self(Layout::TopLevel(fields))
    }

    /// Appends the projected object of `record` to `out`.
    pub fn write(&self, record: &Value, out: &mut Vec<u8>) {
        match &self.0 {
            Layout::TopLevel(fields) => {
                out.push(b'{');
                let mut first = true;
                for (prefix, path) in fields {
                    let Some(value) = path.get(record) else {
                        continue;
                    };
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(prefix);
                    serde_json::to_writer(&mut *out, value).expect("JSON values serialise");
                }
                out.push(b'}');
            }
            Layout::Nested(paths) => {
                let mut projected = Map::new();
                for path in paths {
                    path.copy_into(record, &mut projected);
                }
                serde_json::to_writer(&mut *out, &projected).expect("JSON values serialise");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// The reference: copy every path into an object and serialise it.
    fn copied(paths: &[FieldPath], record: &Value) -> Vec<u8> {
        let mut projected = Map::new();
        for path in paths {
            path.copy_into(record, &mut projected);
        }
        serde_json::to_vec(&projected).unwrap()
    }

    fn written(paths: &[FieldPath], record: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        Projection::new(paths).write(record, &mut out);
        out
    }

    #[test]
    fn top_level_fields_are_written_as_the_copied_object_would_be() {
        let record = json!({
            "zeta": 1.5, "alpha": "a\"b\u{e9}", "mid": null, "n": {"x": [1, 2]}, "big": 18446744073709551615u64
        });
        let paths: Vec<FieldPath> = ["zeta", "alpha", "mid", "missing", "n", "zeta", "big"]
            .into_iter()
            .map(FieldPath::parse)
            .collect();
        assert_eq!(written(&paths, &record), copied(&paths, &record));
        assert_eq!(
            String::from_utf8(written(&paths, &record)).unwrap(),
            r#"{"alpha":"a\"bé","big":18446744073709551615,"n":{"x":[1,2]},"zeta":1.5}"#
        );
    }

    #[test]
    fn nested_paths_build_the_object() {
        let record = json!({"user": {"id": 7, "name": "n"}, "x": 1});
        let paths: Vec<FieldPath> = ["user.id", "x"].into_iter().map(FieldPath::parse).collect();
        assert_eq!(
            String::from_utf8(written(&paths, &record)).unwrap(),
            r#"{"user":{"id":7},"x":1}"#
        );
    }

    #[test]
    fn a_record_without_any_selected_field_is_an_empty_object() {
        let paths = vec![FieldPath::parse("a")];
        assert_eq!(written(&paths, &json!({"b": 1})), b"{}");
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z\"\\\\é ]{0,6}".prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn writes_the_same_bytes_as_copying_into_an_object(
            record in prop::collection::btree_map("[a-e]{1,2}", scalar(), 0..8),
            names in prop::collection::vec("[a-e]{1,2}", 0..6),
        ) {
            let record = Value::Object(record.into_iter().collect());
            let paths: Vec<FieldPath> = names.iter().map(|n| FieldPath::parse(n)).collect();
            prop_assert_eq!(written(&paths, &record), copied(&paths, &record));
        }
    }
}

//! Strict field validation of a manifest read from a file, as the API server applies it for
//! `kubectl apply` (its default, `--validate=strict`): every field must be one the CRD's schema
//! (or, under `metadata`, `ObjectMeta`) declares. serde ignores unknown fields, so without this a
//! misspelled section (`spec.windw`) would be dropped and the pipeline would run without it.
//!
//! The schema walked is the generated CRD's own (`crd()`), so the check cannot drift from what
//! the API server enforces.

use std::sync::OnceLock;

use serde_json::Value;

use crate::generate::crd;

/// The fields of `ObjectMeta` a manifest may set (the API server fills in the rest, which are
/// accepted too, so a manifest saved with `kubectl get -o yaml` reads back).
const OBJECT_META_FIELDS: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];

/// The top-level fields of a PipelineDeployment object.
const OBJECT_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// The CRD's OpenAPI schema of the whole object, computed once.
fn object_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = serde_json::to_value(crd()).expect("a CRD always serializes");
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
            .cloned()
            .expect("the generated CRD has a schema")
    })
}

/// Every field of `document` (a whole PipelineDeployment object) that its schema does not
/// declare, as paths (`spec.source.topc`, `spec.aggregates[1].fild`), in document order.
pub fn unknown_fields(document: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    let Some(object) = document.as_object() else {
        return unknown;
    };
    let schema = object_schema();
    for (key, value) in object {
        match key.as_str() {
            "metadata" => unknown_metadata_fields(value, &mut unknown),
            "apiVersion" | "kind" => {}
            _ if OBJECT_FIELDS.contains(&key.as_str()) => {
                if let Some(field) = schema.pointer(&format!("/properties/{key}")) {
                    walk(value, field, key, &mut unknown);
                }
            }
            _ => unknown.push(key.clone()),
        }
    }
    unknown
}

/// `metadata` against `ObjectMeta` (one level: labels and annotations are maps).
fn unknown_metadata_fields(metadata: &Value, unknown: &mut Vec<String>) {
    if let Some(object) = metadata.as_object() {
        unknown.extend(
            object
                .keys()
                .filter(|key| !OBJECT_META_FIELDS.contains(&key.as_str()))
                .map(|key| format!("metadata.{key}")),
        );
    }
}

/// `value` at `path` against `schema`, pushing what the schema does not declare.
fn walk(value: &Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return;
    }
    match value {
        Value::Object(object) => {
            for (key, field_value) in object {
                let child = format!("{path}.{key}");
                match field_schema(schema, key) {
                    Some(FieldSchema::Declared(field)) => walk(field_value, field, &child, unknown),
                    Some(FieldSchema::Any) => {}
                    None => unknown.push(child),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// What a schema says about one key of an object.
enum FieldSchema<'a> {
    /// A declared property, or a map's value schema.
    Declared(&'a Value),
    /// Anything is accepted (`additionalProperties: true`, or an object without properties).
    Any,
}

/// The schema of `key` in an object of `schema`: a property, a map value, or one of the
/// `anyOf`/`oneOf`/`allOf` branches that declares it; `None` when nothing does.
fn field_schema<'a>(schema: &'a Value, key: &str) -> Option<FieldSchema<'a>> {
    if let Some(field) = schema.get("properties").and_then(|p| p.get(key)) {
        return Some(FieldSchema::Declared(field));
    }
    for branches in ["allOf", "anyOf", "oneOf"] {
        let found = schema
            .get(branches)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|branch| field_schema(branch, key));
        if found.is_some() {
            return found;
        }
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(true)) => Some(FieldSchema::Any),
        Some(map_value @ Value::Object(_)) => Some(FieldSchema::Declared(map_value)),
        Some(_) => None,
        // An object type that declares no properties at all takes any fields (the API server
        // prunes nothing from it either); one that declares some takes only those.
        None if schema.get("properties").is_none() && !has_branches(schema) => {
            Some(FieldSchema::Any)
        }
        None => None,
    }
}

fn has_branches(schema: &Value) -> bool {
    ["allOf", "anyOf", "oneOf"]
        .iter()
        .any(|b| schema.get(b).is_some())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn minimal() -> Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "PipelineDeployment",
            "metadata": {"name": "a", "labels": {"team": "x"}},
            "spec": {
                "kafka": {"bootstrapServers": "k:9092", "properties": {"any.librdkafka.key": "1"}},
                "source": {"topic": "in"},
                "sink": {"kafka": {"topic": "out"}},
                "aggregates": [{"name": "n", "function": "count"}]
            }
        })
    }

    #[test]
    fn a_manifest_of_declared_fields_and_free_maps_has_no_unknown_field() {
        assert_eq!(unknown_fields(&minimal()), Vec::<String>::new());
    }

    #[test]
    fn a_misspelled_section_a_nested_typo_and_a_field_in_a_list_item_are_named_by_path() {
        let mut doc = minimal();
        doc["spec"]["windw"] = json!({"size": "1m"});
        doc["spec"]["source"]["topc"] = json!("in");
        doc["spec"]["aggregates"][0]["fild"] = json!("x");
        doc["metadata"]["lables"] = json!({});
        doc["extra"] = json!(1);
        let mut found = unknown_fields(&doc);
        found.sort();
        assert_eq!(
            found,
            [
                "extra",
                "metadata.lables",
                "spec.aggregates[0].fild",
                "spec.source.topc",
                "spec.windw"
            ]
        );
    }

    #[test]
    fn the_pod_templates_kubernetes_types_are_checked_too() {
        let mut doc = minimal();
        doc["spec"]["podTemplate"] = json!({"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "k", "effct": "NoSchedule"}]});
        assert_eq!(
            unknown_fields(&doc),
            ["spec.podTemplate.tolerations[0].effct"]
        );
    }
}

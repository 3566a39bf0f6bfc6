//! Stream–table enrichment: each record joined with a reference table read from a compacted
//! topic, as of the record's event time (or the latest version loaded).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Duration, FieldError,
    source::{FormatKind, SourceFormat},
    transform::TimestampFormat,
    validate::{MAX_EVENT_TIME_SPAN, is_valid_field_path, is_valid_topic_name},
};

/// The default of `history`: versions kept for an hour before the oldest open event time.
pub const DEFAULT_HISTORY: Duration = Duration::from_secs(3600);
/// The default of `maxBytes`: 256 MiB per table in each runtime process.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// One reference table joined into every record, in the order the entries are written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.history) || self.asOf != 'latest'").message("history only applies to asOf eventTime"))]
pub struct EnrichSpec {
    /// The entry's name: the joined fields appear in each record as `record.<name>.<field>`
    /// (an object), usable in `filter`, `keyBy`, `timestamp` (not with `asOf: eventTime`),
    /// aggregates and stateless output.
    #[schemars(
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"),
        length(min = 1, max = 64)
    )]
    pub name: String,

    /// The table's topic: key → latest value (compacted), read from every partition by each
    /// runtime process. A tombstone (null value) deletes its key.
    #[schemars(length(min = 1, max = 249))]
    pub topic: String,

    /// How the table's values are encoded: `json` or `avro`, as `source.format`.
    #[serde(default)]
    pub format: SourceFormat,

    /// Dotted path of the value field holding the table's key. Absent = the Kafka message key.
    /// A tombstone (no value) is always keyed by its Kafka message key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,

    /// Dotted path of the record field whose value is looked up as the table's key. Keys
    /// match as text: a number 42 matches the key `42`. It may name a field an earlier entry
    /// joined.
    #[schemars(length(min = 1, max = 253))]
    pub lookup: String,

    /// The table fields copied into the record (dotted paths; each lands under its last
    /// segment). Absent = every field of the table's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(max = 253)))]
    pub fields: Option<Vec<String>>,

    /// `eventTime` (default): a record with event time t is joined with the version of its
    /// key whose timestamp is the greatest at or before t, once the table has been read up to
    /// the end offsets it had when the record was read (records held for that hold back their
    /// partition's watermark). `latest`: the latest version loaded.
    #[serde(default)]
    pub as_of: AsOf,

    /// Where a table record's time comes from. Absent = its Kafka timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TableTimestampSpec>,

    /// What happens to a record whose key is not in the table (or was deleted by its time):
    /// `keep` (default; the joined object is null), `drop` (counted) or `deadLetter`.
    #[serde(default)]
    pub on_missing: OnMissing,

    /// With `asOf: eventTime`, how far back versions are kept: versions older than this before
    /// the oldest event time still open are dropped, except the one in force. Defaults to `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Duration>,

    /// The table's memory bound in each runtime process (a quantity such as `256Mi`, the
    /// default). Past it the pipeline stops with a condition naming the table instead of
    /// being killed for memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Quantity>,
}

/// Which version of a key a record is joined with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AsOf {
    /// The version in force at the record's event time: deterministic on replay.
    #[default]
    EventTime,
    /// The latest version loaded when the record is processed (a `GlobalKTable`).
    Latest,
}

/// What becomes of a record whose lookup finds no version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnMissing {
    /// Keep the record; its joined object is null.
    #[default]
    Keep,
    /// Drop the record (counted as filtered).
    Drop,
    /// Send the record to the dead-letter topic.
    DeadLetter,
}

/// The time of a table record, from one of its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableTimestampSpec {
    /// Dotted path of the time field in the table's value.
    #[schemars(length(min = 1, max = 253))]
    pub field: String,

    /// Its encoding: `epochMillis` (default), `epochSeconds` or `rfc3339`.
    #[serde(default)]
    pub format: TimestampFormat,
}

impl EnrichSpec {
    /// `history`, or its default.
    pub fn history(&self) -> Duration {
        self.history.unwrap_or(DEFAULT_HISTORY)
    }
}

/// The semantic problems of `spec.enrich`, each with its field path.
pub(crate) fn problems(spec: &crate::PipelineDeploymentSpec) -> Vec<FieldError> {
    let mut found = Vec::new();
    for (i, entry) in spec.enrich.iter().enumerate() {
        let at = Entry {
            spec,
            entry,
            path: format!("spec.enrich[{i}]"),
            earlier: &spec.enrich[..i],
            later: &spec.enrich[i + 1..],
        };
        at.naming(&mut found);
        at.table(&mut found);
        at.paths(&mut found);
        at.versions(&mut found);
    }
    if spec.transform.source_keyed
        && let Some(key) = &spec.transform.key_by
        && joined_by(key, spec.enrich.iter().map(|e| e.name.as_str()))
    {
        found.push(FieldError {
            path: "spec.transform.sourceKeyed".into(),
            message: "the source cannot be keyed by a joined field (keyBy names one)".into(),
        });
    }
    found
}

/// One entry of `spec.enrich` being checked, with the entries around it.
struct Entry<'a> {
    spec: &'a crate::PipelineDeploymentSpec,
    entry: &'a EnrichSpec,
    path: String,
    earlier: &'a [EnrichSpec],
    later: &'a [EnrichSpec],
}

impl Entry<'_> {
    fn error(&self, found: &mut Vec<FieldError>, field: &str, message: impl Into<String>) {
        found.push(FieldError {
            path: format!("{}.{field}", self.path),
            message: message.into(),
        });
    }

    /// The name: an identifier no earlier entry uses.
    fn naming(&self, found: &mut Vec<FieldError>) {
        let name = &self.entry.name;
        let is_identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_identifier {
            self.error(
                found,
                "name",
                "must be 1 to 64 letters, digits or _, not starting with a digit",
            );
        }
        if self.earlier.iter().any(|e| e.name == *name) {
            self.error(
                found,
                "name",
                format!("{name:?} is used by an earlier entry"),
            );
        }
    }

    /// The topic and its format.
    fn table(&self, found: &mut Vec<FieldError>) {
        let entry = self.entry;
        if !is_valid_topic_name(&entry.topic) {
            self.error(
                found,
                "topic",
                "is not a valid Kafka topic name ([A-Za-z0-9._-], 1 to 249 characters)",
            );
        } else if self
            .spec
            .source
            .topic_names()
            .contains(&entry.topic.as_str())
        {
            self.error(
                found,
                "topic",
                "is a source topic; a table is read from its own (compacted) topic",
            );
        }
        match entry.format.kind {
            FormatKind::Raw => self.error(
                found,
                "format.type",
                "must be json or avro: a table's values need fields",
            ),
            FormatKind::Avro
                if entry.format.schema.is_none()
                    && self.spec.kafka.schema_registry_url.is_none() =>
            {
                self.error(
                    found,
                    "format",
                    "avro without an inline schema needs spec.kafka.schemaRegistryUrl",
                );
            }
            _ => {}
        }
    }

    /// The field paths: well formed, and a lookup only of what is joined before it.
    fn paths(&self, found: &mut Vec<FieldError>) {
        let entry = self.entry;
        if self.spec.source.format.kind == FormatKind::Raw {
            self.error(found, "lookup", "raw records have no fields to look up");
        }
        let mut paths = vec![("lookup".to_owned(), entry.lookup.as_str())];
        paths.extend(entry.key.as_deref().map(|k| ("key".to_owned(), k)));
        paths.extend(
            (entry.timestamp.as_ref()).map(|t| ("timestamp.field".to_owned(), t.field.as_str())),
        );
        paths.extend(
            (entry.fields.iter().flatten().enumerate())
                .map(|(j, f)| (format!("fields[{j}]"), f.as_str())),
        );
        for (field, path) in paths {
            if !is_valid_field_path(path) {
                self.error(found, &field, "is not a dotted field path");
            }
        }
        let mut copied = std::collections::BTreeSet::new();
        for (j, field) in entry.fields.iter().flatten().enumerate() {
            let last = field.rsplit('.').next().unwrap_or(field);
            if !copied.insert(last) {
                self.error(
                    found,
                    &format!("fields[{j}]"),
                    format!("lands under {last:?}, as an earlier field does"),
                );
            }
        }
        if entry.fields.as_ref().is_some_and(Vec::is_empty) {
            self.error(
                found,
                "fields",
                "must list at least one field (omit it to copy all)",
            );
        }
        if joined_by(&entry.lookup, std::iter::once(entry.name.as_str())) {
            self.error(
                found,
                "lookup",
                "names a field this entry joins; it may name one an earlier entry joined",
            );
        }
        if let Some(later) = (self.later.iter())
            .find(|later| joined_by(&entry.lookup, std::iter::once(later.name.as_str())))
        {
            self.error(
                found,
                "lookup",
                format!(
                    "names a field of {:?}, which is joined after this entry",
                    later.name
                ),
            );
        }
    }

    /// `asOf`, `history`, `maxBytes` and the event time they depend on.
    fn versions(&self, found: &mut Vec<FieldError>) {
        let entry = self.entry;
        if entry.history.is_some() && entry.as_of == AsOf::Latest {
            self.error(found, "history", "only applies to asOf eventTime");
        }
        if let Some(history) = entry.history
            && (history.is_zero() || history > MAX_EVENT_TIME_SPAN)
        {
            self.error(
                found,
                "history",
                format!("must be greater than 0s and at most {MAX_EVENT_TIME_SPAN}"),
            );
        }
        if let Some(max) = &entry.max_bytes {
            match crate::quantity::parse_quantity(max) {
                Ok(bytes) if bytes >= 1024.0 * 1024.0 => {}
                Ok(_) => self.error(found, "maxBytes", "must be at least 1Mi"),
                Err(e) => self.error(found, "maxBytes", e.to_string()),
            }
        }
        let timestamp_field =
            (self.spec.transform.timestamp.as_ref()).and_then(|t| t.field.as_deref());
        if entry.as_of == AsOf::EventTime
            && let Some(field) = timestamp_field
            && joined_by(field, std::iter::once(entry.name.as_str()))
        {
            found.push(FieldError {
                path: "spec.transform.timestamp.field".into(),
                message: format!(
                    "names a field joined by {:?} as of event time, which needs the event time first",
                    entry.name
                ),
            });
        }
    }
}

/// Whether `path` lies under one of `names` (a joined object).
pub fn joined_by<'a>(path: &str, mut names: impl Iterator<Item = &'a str>) -> bool {
    let head = path.split('.').next().unwrap_or(path);
    names.any(|name| name == head)
}

#[cfg(test)]
mod tests {
    use crate::manifest::from_yaml;

    fn problems(extra: &str) -> Vec<(String, String)> {
        let spec = from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: clicks}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
            "t",
        )
        .unwrap()
        .spec;
        super::problems(&spec)
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    fn paths(extra: &str) -> Vec<String> {
        problems(extra).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn the_issue_s_example_is_valid_and_a_later_entry_may_look_up_an_earlier_join() {
        let example = "  enrich:\n    - {name: profile, topic: user-profiles, format: {type: json}, key: user_id, lookup: user_id, fields: [country, tier, org_id], asOf: eventTime, timestamp: {field: updated_at}, onMissing: keep, history: 1h, maxBytes: 256Mi}\n    - {name: org, topic: orgs, lookup: profile.org_id, asOf: latest}\n  transform: {keyBy: profile.country, timestamp: {field: ts}}\n";
        assert_eq!(problems(example), []);
    }

    #[test]
    fn each_mistake_is_reported_at_its_field() {
        assert_eq!(
            paths("  enrich: [{name: p, topic: clicks, lookup: u}]\n"),
            ["spec.enrich[0].topic"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: u}, {name: p, topic: t2, lookup: u}]\n"),
            ["spec.enrich[1].name"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: 'a..b'}]\n"),
            ["spec.enrich[0].lookup"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: p.id}]\n"),
            ["spec.enrich[0].lookup"]
        );
        assert_eq!(
            paths(
                "  enrich: [{name: a, topic: t, lookup: b.id}, {name: b, topic: t2, lookup: u}]\n"
            ),
            ["spec.enrich[0].lookup"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: u, format: {type: raw}}]\n"),
            ["spec.enrich[0].format.type"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: u, asOf: latest, history: 1h}]\n"),
            ["spec.enrich[0].history"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: u, maxBytes: 10Ki}]\n"),
            ["spec.enrich[0].maxBytes"]
        );
        assert_eq!(
            paths("  enrich: [{name: p, topic: t, lookup: u, fields: [a.c, b.c]}]\n"),
            ["spec.enrich[0].fields[1]"]
        );
        assert_eq!(
            paths(
                "  enrich: [{name: p, topic: t, lookup: u}]\n  transform: {timestamp: {field: p.ts}}\n"
            ),
            ["spec.transform.timestamp.field"]
        );
        assert_eq!(
            paths(
                "  enrich: [{name: p, topic: t, lookup: u, asOf: latest}]\n  transform: {timestamp: {field: p.ts}}\n"
            ),
            Vec::<String>::new(),
            "a joined time is fine as of the latest version"
        );
        assert_eq!(
            paths(
                "  enrich: [{name: p, topic: t, lookup: u}]\n  transform: {keyBy: p.country, sourceKeyed: true}\n"
            ),
            ["spec.transform.sourceKeyed"]
        );
    }

    #[test]
    fn messages_say_what_would_be_right() {
        let found = problems("  enrich: [{name: p, topic: clicks, lookup: u}]\n");
        assert!(
            found[0].1.contains("its own (compacted) topic"),
            "{found:?}"
        );
    }
}

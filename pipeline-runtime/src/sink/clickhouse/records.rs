//! Stateless pipelines into ClickHouse: each record (a JSON object) is checked against the
//! existing table's columns and written with only those columns, so that one record that does
//! not fit is dead-lettered (naming the field) instead of failing the whole batch's insert, which
//! would be retried, and replayed, forever.
//!
//! Columns named `_topic`, `_partition` and `_offset` are filled with where the record was read:
//! with a `ReplacingMergeTree` ordered by them, a replay after a crash replaces the rows it
//! inserted again, and `FINAL` counts every record once.

use serde_json::{Map, Value};

use crate::processor::SourceRef;

/// The metadata columns the sink fills itself.
pub const TOPIC_COLUMN: &str = "_topic";
/// See [`TOPIC_COLUMN`].
pub const PARTITION_COLUMN: &str = "_partition";
/// See [`TOPIC_COLUMN`].
pub const OFFSET_COLUMN: &str = "_offset";

/// One column of the table as `DESCRIBE TABLE` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// Its name.
    pub name: String,
    /// Its type, e.g. `Nullable(Int32)`.
    pub kind: String,
    /// `DEFAULT`, `MATERIALIZED`, `ALIAS` or empty.
    pub default_kind: String,
}

/// What values a column takes, as JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A JSON string, at most `max_bytes` long when set (`FixedString(N)`).
    String { max_bytes: Option<usize> },
    /// A JSON integer in `min..=max`.
    Integer { min: i128, max: i128 },
    /// A JSON number.
    Float,
    /// A JSON string `YYYY-MM-DD`.
    Date,
    /// A JSON string `YYYY-MM-DD hh:mm:ss`.
    DateTime,
}

/// What a column of this kind wants, as a dead letter says it.
impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::String {
                max_bytes: Some(max),
            } => write!(f, "a string of at most {max} bytes"),
            Kind::String { max_bytes: None } => f.write_str("a string"),
            Kind::Integer { min, max } => write!(f, "an integer in {min}..={max}"),
            Kind::Float => f.write_str("a number"),
            Kind::Date => f.write_str("a date string YYYY-MM-DD (1970 to 2105)"),
            Kind::DateTime => f.write_str("a date-time string YYYY-MM-DD hh:mm:ss (1970 to 2105)"),
        }
    }
}

/// Why a record does not fit the table (the dead letter's reason).
#[derive(Debug, thiserror::Error)]
pub enum RowMismatch {
    /// The record is not a JSON object.
    #[error("the record is not a JSON object: {0}")]
    NotAnObject(#[source] serde_json::Error),
    /// A column that must be filled has no value.
    #[error(
        "field `{column}` is missing or null, and column `{column}` ({declared}) is not Nullable and has no DEFAULT"
    )]
    Missing {
        /// The column (and field) name.
        column: String,
        /// The column's declared type.
        declared: String,
    },
    /// The value is not what the column takes.
    #[error("field `{column}` is {shown}, column `{column}` ({declared}) wants {wants}")]
    Unfit {
        /// The column (and field) name.
        column: String,
        /// The value, cut at 40 characters.
        shown: String,
        /// The column's declared type.
        declared: String,
        /// What the column takes.
        wants: Kind,
    },
}

/// Where a column's value comes from.
#[derive(Clone, Debug, PartialEq)]
enum Fill {
    /// The record's field of the same name.
    Field,
    /// The source topic.
    Topic,
    /// The source partition.
    Partition,
    /// The source offset.
    Offset,
}

#[derive(Clone, Debug, PartialEq)]
struct Column {
    name: String,
    /// The type as the table declares it, for messages.
    declared: String,
    kind: Kind,
    /// `Nullable`: a missing field or `null` is inserted as NULL.
    nullable: bool,
    /// Has a `DEFAULT`: a missing field is left out of the row (ClickHouse fills it in).
    defaulted: bool,
    fill: Fill,
}

/// The table a stateless pipeline writes, and how a record becomes one of its rows.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordTable {
    columns: Vec<Column>,
}

impl RecordTable {
    /// From the table's columns; every column whose type the sink cannot check is named in the
    /// error (one with a `DEFAULT` is left to it instead).
    pub fn new(described: &[Described]) -> Result<Self, Vec<String>> {
        let mut columns = Vec::new();
        let mut problems = Vec::new();
        for d in described {
            if matches!(d.default_kind.as_str(), "MATERIALIZED" | "ALIAS") {
                continue;
            }
            let defaulted = d.default_kind == "DEFAULT";
            let (nullable, kind) = match parse_kind(&d.kind) {
                Some(parsed) => parsed,
                None if defaulted => continue,
                None => {
                    problems.push(format!(
                        "column `{}` is {}: the sink checks String, FixedString, Int*, UInt*, Float*, Date, DateTime and their Nullable and LowCardinality forms (give it a DEFAULT to leave it to ClickHouse)",
                        d.name, d.kind
                    ));
                    continue;
                }
            };
            let fill = match d.name.as_str() {
                TOPIC_COLUMN => Fill::Topic,
                PARTITION_COLUMN => Fill::Partition,
                OFFSET_COLUMN => Fill::Offset,
                _ => Fill::Field,
            };
            let fits = match fill {
                Fill::Field => true,
                Fill::Topic => matches!(kind, Kind::String { max_bytes: None }),
                Fill::Partition => fits_integer(&kind, 0, i128::from(i32::MAX)),
                Fill::Offset => fits_integer(&kind, 0, i128::from(i64::MAX)),
            };
            if !fits {
                problems.push(format!(
                    "column `{}` is {}, but the sink fills it with the source {} (want {})",
                    d.name,
                    d.kind,
                    d.name.trim_start_matches('_'),
                    if fill == Fill::Topic {
                        "String"
                    } else {
                        "an integer type that holds it, e.g. UInt64"
                    }
                ));
                continue;
            }
            columns.push(Column {
                name: d.name.clone(),
                declared: d.kind.clone(),
                kind,
                nullable,
                defaulted,
                fill,
            });
        }
        if problems.is_empty() {
            Ok(Self { columns })
        } else {
            Err(problems)
        }
    }

    /// Whether the table has the columns that identify a record (see the module's docs).
    pub fn identifies_records(&self) -> bool {
        [Fill::Topic, Fill::Partition, Fill::Offset]
            .iter()
            .all(|fill| self.columns.iter().any(|c| &c.fill == fill))
    }

    /// The `JSONEachRow` line (without its newline) of a record read at `source` from `topic`,
    /// or why it does not fit the table.
    pub fn line(
        &self,
        json: &[u8],
        topic: &str,
        source: &SourceRef,
    ) -> Result<Vec<u8>, RowMismatch> {
        let record: Map<String, Value> =
            serde_json::from_slice(json).map_err(RowMismatch::NotAnObject)?;
        let mut row = Map::new();
        for column in &self.columns {
            let value = match column.fill {
                Fill::Topic => Value::from(topic),
                Fill::Partition => Value::from(source.partition),
                Fill::Offset => Value::from(source.offset),
                Fill::Field => match record.get(&column.name) {
                    None | Some(Value::Null) if column.nullable || column.defaulted => continue,
                    None | Some(Value::Null) => {
                        return Err(RowMismatch::Missing {
                            column: column.name.clone(),
                            declared: column.declared.clone(),
                        });
                    }
                    Some(value) => {
                        if !fits(&column.kind, value) {
                            return Err(RowMismatch::Unfit {
                                column: column.name.clone(),
                                shown: shown(value),
                                declared: column.declared.clone(),
                                wants: column.kind.clone(),
                            });
                        }
                        value.clone()
                    }
                },
            };
            row.insert(column.name.clone(), value);
        }
        Ok(serde_json::to_vec(&row).expect("JSON values serialize"))
    }
}

/// `(nullable, kind)` of a ClickHouse type the sink can check.
fn parse_kind(declared: &str) -> Option<(bool, Kind)> {
    let mut kind = declared.trim();
    let mut nullable = false;
    loop {
        if let Some(inner) = unwrap_type(kind, "LowCardinality") {
            kind = inner;
        } else if let Some(inner) = unwrap_type(kind, "Nullable") {
            kind = inner;
            nullable = true;
        } else {
            break;
        }
    }
    let integer = |bits: u32, signed: bool| {
        let (min, max) = if signed {
            (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
        } else {
            (0, (1i128 << bits) - 1)
        };
        Kind::Integer { min, max }
    };
    let parsed = match kind {
        "String" => Kind::String { max_bytes: None },
        "Int8" => integer(8, true),
        "Int16" => integer(16, true),
        "Int32" => integer(32, true),
        "Int64" => integer(64, true),
        "UInt8" => integer(8, false),
        "UInt16" => integer(16, false),
        "UInt32" => integer(32, false),
        "UInt64" => integer(64, false),
        "Float32" | "Float64" => Kind::Float,
        "Date" => Kind::Date,
        k if k == "DateTime" || unwrap_type(k, "DateTime").is_some() => Kind::DateTime,
        k => Kind::String {
            max_bytes: Some(unwrap_type(k, "FixedString")?.trim().parse().ok()?),
        },
    };
    Some((nullable, parsed))
}

/// `inner` of `name(inner)`.
fn unwrap_type<'a>(kind: &'a str, name: &str) -> Option<&'a str> {
    kind.strip_prefix(name)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn fits_integer(kind: &Kind, min: i128, max: i128) -> bool {
    matches!(kind, Kind::Integer { min: lo, max: hi } if *lo <= min && max <= *hi)
}

/// Whether `value` is what a column of `kind` takes.
fn fits(kind: &Kind, value: &Value) -> bool {
    match kind {
        Kind::String { max_bytes } => value
            .as_str()
            .is_some_and(|s| max_bytes.is_none_or(|max| s.len() <= max)),
        Kind::Integer { min, max } => value
            .as_i64()
            .map(i128::from)
            .or_else(|| value.as_u64().map(i128::from))
            .is_some_and(|n| (*min..=*max).contains(&n)),
        Kind::Float => value.is_number(),
        Kind::Date => value.as_str().is_some_and(is_date),
        Kind::DateTime => value.as_str().is_some_and(|s| {
            s.len() == 19 && s.as_bytes()[10] == b' ' && is_date(&s[..10]) && is_time(&s[11..])
        }),
    }
}

/// `YYYY-MM-DD`, a real calendar day within the range of ClickHouse's `Date` and `DateTime`.
fn is_date(s: &str) -> bool {
    use chrono::Datelike;
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .is_ok_and(|d| (1970..=2105).contains(&d.year()))
}

/// `hh:mm:ss`.
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let part = |range: std::ops::Range<usize>, max: u32| {
        b.get(range.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
            && s[range].parse::<u32>().is_ok_and(|v| v <= max)
    };
    b.len() == 8
        && b[2] == b':'
        && b[5] == b':'
        && part(0..2, 23)
        && part(3..5, 59)
        && part(6..8, 59)
}

/// A value for an error message, shortened.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(columns: &[(&str, &str, &str)]) -> Vec<Described> {
        columns
            .iter()
            .map(|(name, kind, default_kind)| Described {
                name: (*name).into(),
                kind: (*kind).into(),
                default_kind: (*default_kind).into(),
            })
            .collect()
    }

    fn events() -> RecordTable {
        RecordTable::new(&described(&[
            ("user_id", "LowCardinality(String)", ""),
            ("price", "Nullable(Float64)", ""),
            ("status", "UInt16", ""),
            ("country", "FixedString(2)", ""),
            ("day", "Date", "DEFAULT"),
            ("at", "DateTime('UTC')", ""),
            ("inserted", "DateTime", "MATERIALIZED"),
            (TOPIC_COLUMN, "String", ""),
            (PARTITION_COLUMN, "UInt32", ""),
            (OFFSET_COLUMN, "UInt64", ""),
        ]))
        .unwrap()
    }

    const AT: SourceRef = SourceRef {
        topic: 0,
        partition: 3,
        offset: 41,
    };

    #[test]
    fn a_record_keeps_only_the_table_columns_and_gets_where_it_was_read() {
        let table = events();
        assert!(table.identifies_records());
        let line = table
            .line(
                br#"{"user_id":"u1","price":9.5,"status":200,"country":"DE","at":"2026-11-30 12:00:00","extra":[1,2]}"#,
                "clicks",
                &AT,
            )
            .unwrap();
        let row: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            row,
            serde_json::json!({"user_id":"u1","price":9.5,"status":200,"country":"DE","at":"2026-11-30 12:00:00","_topic":"clicks","_partition":3,"_offset":41})
        );
    }

    #[test]
    fn nullable_and_defaulted_columns_may_be_missing_others_may_not() {
        let table = events();
        let line = table
            .line(
                br#"{"user_id":"u1","price":null,"status":1,"country":"FR","at":"2026-01-01 00:00:00"}"#,
                "t",
                &AT,
            )
            .unwrap();
        let row: Value = serde_json::from_slice(&line).unwrap();
        assert!(
            row.get("price").is_none() && row.get("day").is_none(),
            "{row}"
        );
        let err = table
            .line(
                br#"{"user_id":"u1","country":"FR","at":"2026-01-01 00:00:00"}"#,
                "t",
                &AT,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `status` is missing or null, and column `status` (UInt16) is not Nullable and has no DEFAULT"
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_or_range_is_refused_naming_it() {
        let table = events();
        let base = r#""user_id":"u1","country":"FR","at":"2026-01-01 00:00:00""#;
        for (fields, want) in [
            (
                r#""status":"200""#,
                r#"field `status` is "200", column `status` (UInt16) wants an integer in 0..=65535"#,
            ),
            (
                r#""status":70000"#,
                "field `status` is 70000, column `status` (UInt16) wants an integer in 0..=65535",
            ),
            (
                r#""status":-1"#,
                "field `status` is -1, column `status` (UInt16) wants an integer in 0..=65535",
            ),
            (
                r#""status":1.5"#,
                "field `status` is 1.5, column `status` (UInt16) wants an integer in 0..=65535",
            ),
            (
                r#""status":1,"price":"9.5""#,
                r#"field `price` is "9.5", column `price` (Nullable(Float64)) wants a number"#,
            ),
        ] {
            let json = format!("{{{base},{fields}}}");
            assert_eq!(
                table
                    .line(json.as_bytes(), "t", &AT)
                    .unwrap_err()
                    .to_string(),
                want
            );
        }
        let err = table
            .line(
                br#"{"user_id":"u1","status":1,"country":"DEU","at":"2026-01-01 00:00:00"}"#,
                "t",
                &AT,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("a string of at most 2 bytes"), "{err}");
        for at in [
            "2026-13-01 00:00:00",
            "2026-02-30 00:00:00",
            "2026-1-01 00:00:00",
            "2026-01-01T00:00:00",
            "1969-12-31 23:59:59",
            "2026-01-01 24:00:00",
        ] {
            let json = format!(r#"{{"user_id":"u1","status":1,"country":"FR","at":"{at}"}}"#);
            let err = table
                .line(json.as_bytes(), "t", &AT)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("field `at`"), "{at}: {err}");
        }
        assert!(
            table
                .line(b"[1,2]", "t", &AT)
                .unwrap_err()
                .to_string()
                .starts_with("the record is not a JSON object"),
        );
    }

    #[test]
    fn a_table_with_columns_the_sink_cannot_check_is_refused_naming_them() {
        let problems = RecordTable::new(&described(&[
            ("tags", "Array(String)", ""),
            ("amount", "Decimal(10, 2)", "DEFAULT"),
            (PARTITION_COLUMN, "UInt8", ""),
            (TOPIC_COLUMN, "Int32", ""),
        ]))
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("column `tags` is Array(String)"));
        assert!(problems[1].starts_with(
            "column `_partition` is UInt8, but the sink fills it with the source partition"
        ));
        assert!(problems[2].starts_with("column `_topic` is Int32"));
        let plain = RecordTable::new(&described(&[("user_id", "String", "")])).unwrap();
        assert!(!plain.identifies_records());
    }
}

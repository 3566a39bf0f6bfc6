//! The nesting depth of an Avro datum, measured before apache-avro decodes it. apache-avro
//! recurses once per nested record, array or map, so a datum of a recursive schema (a linked
//! list, a tree) nested deep enough overflows the slot's stack; so does turning the decoded value
//! into JSON and dropping it. This walk reads the datum with a stack of its own and refuses one
//! nested deeper than [`MAX_AVRO_NESTING`] (the record is dead-lettered). A schema without
//! references cannot nest deeper than itself, and a schema's own nesting is bounded by the JSON
//! parser's (128), so only schemas with references are walked.

use std::collections::HashMap;

use apache_avro::schema::{Name, Namespace, ResolvedSchema, Schema};

/// The deepest nesting of records, arrays and maps a datum may have: serde_json's limit for a JSON
/// record, so both formats take the same shapes.
pub const MAX_AVRO_NESTING: usize = 128;

/// Why a datum was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NestingError {
    /// Nested deeper than the bound.
    #[error("the datum nests records, arrays or maps deeper than {0} levels")]
    TooDeep(usize),
    /// The bytes end inside the datum or do not fit the schema; apache-avro says more.
    #[error("the datum does not fit its schema")]
    Malformed,
}

/// An Avro writer schema, with whether its datums need the nesting walk worked out once (not
/// per record).
#[derive(Debug)]
pub struct WriterSchema {
    schema: Schema,
    references: bool,
}

impl WriterSchema {
    /// `schema`, checked for references.
    pub fn new(schema: Schema) -> Self {
        let references = has_references(&schema);
        Self { schema, references }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Refuses `datum` when it nests deeper than [`MAX_AVRO_NESTING`]; only schemas with
    /// references are walked. A datum that does not fit is left to apache-avro, which names what
    /// is wrong.
    pub fn check_nesting(&self, datum: &[u8]) -> Result<(), NestingError> {
        if !self.references {
            return Ok(());
        }
        match check_nesting(&self.schema, datum, MAX_AVRO_NESTING) {
            Err(NestingError::Malformed) => Ok(()),
            other => other,
        }
    }
}

/// Whether `schema` refers to a named type (only then can a datum nest deeper than the schema).
pub fn has_references(schema: &Schema) -> bool {
    let mut pending = vec![schema];
    while let Some(schema) = pending.pop() {
        match schema {
            Schema::Ref { .. } => return true,
            Schema::Record(record) => pending.extend(record.fields.iter().map(|f| &f.schema)),
            Schema::Array(array) => pending.push(&array.items),
            Schema::Map(map) => pending.push(&map.types),
            Schema::Union(union) => pending.extend(union.variants()),
            _ => {}
        }
    }
    false
}

/// One step of the walk.
enum Step<'s> {
    /// A datum of this schema, at this depth, in this enclosing namespace.
    Datum(&'s Schema, usize, Namespace),
    /// The next block of an array (or map) whose items (values) have this schema.
    Block(&'s Schema, usize, Namespace, bool),
    /// `remaining` more items of the current block.
    Items(&'s Schema, usize, Namespace, bool, u64),
}

/// Checks that `datum` nests no deeper than `max` under `schema`.
pub fn check_nesting(schema: &Schema, datum: &[u8], max: usize) -> Result<(), NestingError> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|_| NestingError::Malformed)?;
    let names: &HashMap<Name, &Schema> = resolved.get_names();
    let mut reader = Reader { bytes: datum };
    let mut steps = vec![Step::Datum(schema, 0, None)];
    while let Some(step) = steps.pop() {
        match step {
            Step::Datum(schema, depth, namespace) => {
                datum_step(
                    schema,
                    depth,
                    namespace,
                    max,
                    names,
                    &mut reader,
                    &mut steps,
                )?;
            }
            Step::Block(items, depth, namespace, map) => {
                let count = reader.long()?;
                if count == 0 {
                    continue;
                }
                if count < 0 {
                    reader.long()?; // the block's size in bytes
                }
                let count = count.unsigned_abs();
                if count > crate::decode::AVRO_MAX_ALLOCATION_BYTES as u64 {
                    return Err(NestingError::Malformed);
                }
                steps.push(Step::Block(items, depth, namespace.clone(), map));
                steps.push(Step::Items(items, depth, namespace, map, count));
            }
            Step::Items(items, depth, namespace, map, remaining) => {
                if remaining > 1 {
                    steps.push(Step::Items(
                        items,
                        depth,
                        namespace.clone(),
                        map,
                        remaining - 1,
                    ));
                }
                if map {
                    reader.skip_length_prefixed()?; // the key
                }
                steps.push(Step::Datum(items, depth, namespace));
            }
        }
    }
    Ok(())
}

/// Reads a datum of `schema` (primitives at once; records, arrays, maps, unions and references as
/// further steps).
fn datum_step<'s>(
    schema: &'s Schema,
    depth: usize,
    namespace: Namespace,
    max: usize,
    names: &HashMap<Name, &'s Schema>,
    reader: &mut Reader<'_>,
    steps: &mut Vec<Step<'s>>,
) -> Result<(), NestingError> {
    let nested = || {
        if depth + 1 > max {
            Err(NestingError::TooDeep(max))
        } else {
            Ok(depth + 1)
        }
    };
    match schema {
        Schema::Null => {}
        Schema::Boolean => reader.skip(1)?,
        Schema::Int
        | Schema::Long
        | Schema::Enum(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => {
            reader.long()?;
        }
        Schema::Float => reader.skip(4)?,
        Schema::Double => reader.skip(8)?,
        Schema::Duration => reader.skip(12)?,
        Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
            reader.skip_length_prefixed()?;
        }
        Schema::Fixed(fixed) => reader.skip(fixed.size)?,
        Schema::Decimal(decimal) => steps.push(Step::Datum(&decimal.inner, depth, namespace)),
        Schema::Union(union) => {
            let index = usize::try_from(reader.long()?).map_err(|_| NestingError::Malformed)?;
            let variant = union.variants().get(index).ok_or(NestingError::Malformed)?;
            steps.push(Step::Datum(variant, depth, namespace));
        }
        Schema::Record(record) => {
            let depth = nested()?;
            let inner = record.name.namespace.clone().or(namespace);
            for field in record.fields.iter().rev() {
                steps.push(Step::Datum(&field.schema, depth, inner.clone()));
            }
        }
        Schema::Array(array) => steps.push(Step::Block(&array.items, nested()?, namespace, false)),
        Schema::Map(map) => steps.push(Step::Block(&map.types, nested()?, namespace, true)),
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(&namespace);
            let target = names
                .get(&full)
                .or_else(|| names.get(name))
                .ok_or(NestingError::Malformed)?;
            steps.push(Step::Datum(target, depth, namespace));
        }
    }
    Ok(())
}

/// The unread rest of a datum.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Result<(), NestingError> {
        if self.bytes.len() < n {
            return Err(NestingError::Malformed);
        }
        self.bytes = &self.bytes[n..];
        Ok(())
    }

    /// A zig-zag varint long.
    fn long(&mut self) -> Result<i64, NestingError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.bytes.split_first().ok_or(NestingError::Malformed)?;
            self.bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(NestingError::Malformed)
    }

    fn skip_length_prefixed(&mut self) -> Result<(), NestingError> {
        let length = usize::try_from(self.long()?).map_err(|_| NestingError::Malformed)?;
        self.skip(length)
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    const LIST: &str = r#"{"type": "record", "name": "Node", "namespace": "t", "fields": [
        {"name": "v", "type": "long"},
        {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "next", "type": ["null", "Node"]}]}"#;

    /// A list of `n` nodes, as a datum of [`LIST`]: each node's fields in order, its `next` a
    /// union whose branch 1 (the next node) follows, or branch 0 (null) at the end; the last
    /// node has one tag list.
    fn list(n: usize) -> Vec<u8> {
        let mut datum = Vec::with_capacity(n * 3 + 8);
        for i in 0..n {
            datum.push((i % 60) as u8 * 2); // v, zig-zag
            if i + 1 == n {
                // tags: one block of one entry "a" -> ["x"], then the end of blocks.
                datum.extend([2, 2, b'a', 2, 2, b'x', 0, 0]);
            } else {
                datum.push(0); // no tags
            }
            datum.push(if i + 1 == n { 0 } else { 2 });
        }
        datum
    }

    #[test]
    fn a_datum_within_the_bound_passes_and_decodes() {
        let schema = Schema::parse_str(LIST).unwrap();
        assert!(has_references(&schema));
        let datum = list(10);
        assert_eq!(check_nesting(&schema, &datum, MAX_AVRO_NESTING), Ok(()));
        // The hand-written datum is what apache-avro reads (with the runtime's allocation limit
        // set first: it is process-wide and the first setting stays).
        crate::decode::limit_avro_allocations();
        let value = apache_avro::from_avro_datum(&schema, &mut datum.as_slice(), None).unwrap();
        assert!(matches!(value, Value::Record(_)));
    }

    #[test]
    fn a_recursive_datum_past_the_bound_is_refused_without_recursing() {
        let schema = Schema::parse_str(LIST).unwrap();
        // A million levels: apache-avro would overflow any thread's stack on it.
        let datum = list(1_000_000);
        assert_eq!(
            check_nesting(&schema, &datum, MAX_AVRO_NESTING),
            Err(NestingError::TooDeep(MAX_AVRO_NESTING))
        );
        // The last node's tags are a map of arrays: two levels below it.
        assert_eq!(check_nesting(&schema, &list(126), 128), Ok(()));
        assert_eq!(
            check_nesting(&schema, &list(127), 128),
            Err(NestingError::TooDeep(128))
        );
    }

    #[test]
    fn truncated_or_mismatched_bytes_are_malformed() {
        let schema = Schema::parse_str(LIST).unwrap();
        let datum = list(5);
        assert_eq!(
            check_nesting(&schema, &datum[..datum.len() - 1], MAX_AVRO_NESTING),
            Err(NestingError::Malformed)
        );
        let plain = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}"#,
        )
        .unwrap();
        assert!(!has_references(&plain));
    }
}

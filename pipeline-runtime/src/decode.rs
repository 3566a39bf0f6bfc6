//! Turning Kafka record values into JSON-shaped records: JSON, Avro (Confluent Schema Registry
//! wire format, or plain datums with an inline schema) and raw bytes.

use apache_avro::Schema;
use pipeline_crds::source::{FormatKind, SourceFormat};

use crate::avro_nesting::WriterSchema;
pub use crate::schema_registry::SchemaRegistry;
use serde_json::Value;

/// Why a value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A record without a value (a tombstone).
    #[error("record has no value")]
    Empty,
    /// Not JSON, or JSON that is not an object.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Not decodable with the Avro schema.
    #[error("invalid Avro: {0}")]
    Avro(String),
    /// The Confluent wire header is missing or the schema id is unknown to the registry.
    #[error("invalid Confluent wire format: {0}")]
    Wire(String),
    /// The Schema Registry could not be reached: the record is fine, try again later.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

impl DecodeError {
    /// True when the record itself may be valid and decoding should be retried.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RegistryUnavailable(_))
    }
}

/// Why a decoder could not be built from the spec.
#[derive(Debug, thiserror::Error)]
pub enum DecoderConfigError {
    /// The inline Avro schema does not parse.
    #[error("spec.source.format.schema: invalid Avro schema: {0}")]
    Schema(String),
    /// Avro without inline schema and without registry.
    #[error("spec.source.format: avro needs an inline schema or spec.kafka.schemaRegistryUrl")]
    NoRegistry,
}

/// The most an Avro datum may make the decoder allocate at once (a string, bytes, or an array's or
/// map's item count). apache-avro allocates what a datum claims, up to 512 MiB by default, so a
/// 10-byte record could claim a huge string; Kafka's default largest record is 1 MB, and an array
/// reserves about 64 bytes per claimed item, so 4 MiB bounds one record's decode to a few hundred
/// MB in the worst case and refuses such records as malformed (dead-lettered).
pub const AVRO_MAX_ALLOCATION_BYTES: usize = 4 << 20;

/// Sets [`AVRO_MAX_ALLOCATION_BYTES`] for the process (apache-avro keeps the first value set).
pub(crate) fn limit_avro_allocations() {
    let limit = apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION_BYTES);
    if limit != AVRO_MAX_ALLOCATION_BYTES {
        tracing::warn!(
            limit,
            "apache-avro's allocation limit was set elsewhere in this process first"
        );
    }
}

/// How source values are decoded: `spec.source.format` (and the registry it may need), settled
/// when the plan is compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceDecoding {
    /// JSON objects.
    Json,
    /// Raw bytes.
    Raw,
    /// Plain Avro datums written with this schema (its JSON text).
    AvroInline(String),
    /// Confluent wire format, schemas from this registry (`None`: none is configured, which
    /// validation refuses).
    AvroRegistry(Option<String>),
}

impl SourceDecoding {
    /// The decoding of `format`; `registry_url` is the pipeline's Schema Registry.
    pub fn of(format: &SourceFormat, registry_url: Option<&str>) -> Self {
        match (format.kind, &format.schema) {
            (FormatKind::Json, _) => Self::Json,
            (FormatKind::Raw, _) => Self::Raw,
            (FormatKind::Avro, Some(schema)) => Self::AvroInline(schema.clone()),
            (FormatKind::Avro, None) => Self::AvroRegistry(registry_url.map(str::to_owned)),
        }
    }
}

/// A record decoder for one slot (it caches registry schemas).
pub enum Decoder {
    /// JSON objects.
    Json,
    /// JSON objects, of which only these top-level fields are needed (the plan reads no other).
    JsonFields(Fields),
    /// Raw bytes, exposed as `{"value": "<text>"}`.
    Raw,
    /// Plain Avro datums written with one known schema.
    AvroInline(Box<WriterSchema>),
    /// Confluent wire format: magic byte 0, 4-byte big-endian schema id, datum.
    AvroRegistry(SchemaRegistry),
}

impl Decoder {
    /// The decoder for a source's decoding.
    pub fn new(decoding: &SourceDecoding) -> Result<Self, DecoderConfigError> {
        if matches!(
            decoding,
            SourceDecoding::AvroInline(_) | SourceDecoding::AvroRegistry(_)
        ) {
            limit_avro_allocations();
        }
        Ok(match decoding {
            SourceDecoding::Json => Self::Json,
            SourceDecoding::Raw => Self::Raw,
            SourceDecoding::AvroInline(schema) => Self::AvroInline(Box::new(WriterSchema::new(
                Schema::parse_str(schema).map_err(|e| DecoderConfigError::Schema(e.to_string()))?,
            ))),
            SourceDecoding::AvroRegistry(url) => Self::AvroRegistry(SchemaRegistry::new(
                url.as_deref().ok_or(DecoderConfigError::NoRegistry)?,
            )),
        })
    }

    /// Keeps only `fields` of JSON records when the plan names them (`None`: every field is
    /// needed). Other formats decode whole records.
    pub fn keeping(self, fields: Option<&std::collections::BTreeSet<String>>) -> Self {
        match (self, fields) {
            (Self::Json, Some(fields)) => Self::JsonFields(fields.iter().cloned().collect()),
            (decoder, _) => decoder,
        }
    }

    /// Decodes one value.
    pub fn decode(&mut self, payload: Option<&[u8]>) -> Result<Value, DecodeError> {
        let bytes = payload.ok_or(DecodeError::Empty)?;
        match self {
            Self::Json => decode_json(bytes),
            Self::JsonFields(fields) => decode_json_fields(bytes, fields),
            Self::Raw => {
                let mut map = serde_json::Map::with_capacity(1);
                map.insert(
                    "value".to_owned(),
                    Value::String(String::from_utf8_lossy(bytes).into_owned()),
                );
                Ok(Value::Object(map))
            }
            Self::AvroInline(schema) => decode_avro(schema, bytes),
            Self::AvroRegistry(registry) => {
                let (id, datum) = split_wire_header(bytes)?;
                let schema = registry.schema(id)?;
                decode_avro(&schema, datum)
            }
        }
    }
}

/// Parses a JSON object, keeping only the top-level `fields` (the others are checked for syntax
/// and skipped without building values). A malformed record fails exactly as with
/// [`decode_json`].
pub fn decode_json_fields(bytes: &[u8], fields: &Fields) -> Result<Value, DecodeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde::de::DeserializeSeed::deserialize(KeepFields(fields), &mut deserializer)
        .and_then(|v| deserializer.end().map(|()| v));
    match value {
        Ok(Some(map)) => Ok(Value::Object(map)),
        Ok(None) => decode_json(bytes),
        Err(e) => Err(DecodeError::Json(e.to_string())),
    }
}

/// Top-level field names a decoder keeps (looked up for every field of every record: foldhash).
pub type Fields = std::collections::HashSet<String, foldhash::fast::RandomState>;

/// Reads an object keeping `fields`; anything but an object is `None` (the caller reports it).
struct KeepFields<'f>(&'f Fields);

impl<'de> serde::de::DeserializeSeed<'de> for KeepFields<'_> {
    type Value = Option<serde_json::Map<String, Value>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeepFields<'_> {
    type Value = Option<serde_json::Map<String, Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::with_capacity(self.0.len());
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if self.0.contains(key.as_ref()) {
                out.insert(key.into_owned(), map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Parses a JSON object.
pub fn decode_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(DecodeError::Json(format!(
            "expected an object, found {}",
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        ))),
        Err(e) => Err(DecodeError::Json(e.to_string())),
    }
}

fn decode_avro(writer: &WriterSchema, mut datum: &[u8]) -> Result<Value, DecodeError> {
    writer
        .check_nesting(datum)
        .map_err(|e| DecodeError::Avro(e.to_string()))?;
    let value = apache_avro::from_avro_datum(writer.schema(), &mut datum, None)
        .map_err(|e| DecodeError::Avro(e.to_string()))?;
    if !datum.is_empty() {
        return Err(DecodeError::Avro(format!(
            "{} bytes left after the datum",
            datum.len()
        )));
    }
    let json = Value::try_from(value).map_err(|e| DecodeError::Avro(e.to_string()))?;
    if json.is_object() {
        Ok(json)
    } else {
        Err(DecodeError::Avro("the schema is not a record".into()))
    }
}

/// Splits the Confluent wire header: magic byte 0 and a big-endian schema id.
pub fn split_wire_header(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [magic, ..] if *magic != 0 => {
            Err(DecodeError::Wire(format!("magic byte {magic}, expected 0")))
        }
        _ => Err(DecodeError::Wire("shorter than the 5-byte header".into())),
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Record;

    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"Reading","fields":[
        {"name":"device_id","type":"string"},{"name":"temperature","type":"double"},
        {"name":"ts","type":"long"}]}"#;

    fn avro_datum() -> Vec<u8> {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("device_id", "d-1");
        record.put("temperature", 21.5);
        record.put("ts", 1_700_000_000_000_i64);
        apache_avro::to_avro_datum(&schema, record).unwrap()
    }

    #[test]
    fn an_avro_datum_claiming_a_huge_string_is_refused_without_allocating_it() {
        let mut decoder = Decoder::new(&format(FormatKind::Avro, Some(SCHEMA))).unwrap();
        // device_id claims 256 MiB (zig-zag varint of 2^28; under apache-avro's default limit, so
        // without ours it would be allocated), then 3 bytes follow.
        let mut datum = vec![0x80, 0x80, 0x80, 0x80, 0x02];
        datum.extend_from_slice(b"abc");
        match decoder.decode(Some(&datum)) {
            Err(DecodeError::Avro(text)) => assert!(text.contains("alloc"), "{text}"),
            other => panic!("expected an Avro decode error, got {other:?}"),
        }
        // An array of nulls claiming 2^25 items (about 2 GB of values, none in the datum) is
        // refused the same way.
        let nulls = r#"{"type":"record","name":"N","fields":[{"name":"a","type":{"type":"array","items":"null"}}]}"#;
        let mut decoder = Decoder::new(&format(FormatKind::Avro, Some(nulls))).unwrap();
        let datum = [0x80, 0x80, 0x80, 0x20, 0x00];
        assert!(matches!(
            decoder.decode(Some(&datum)),
            Err(DecodeError::Avro(_))
        ));
        assert_eq!(
            apache_avro::util::max_allocation_bytes(1),
            AVRO_MAX_ALLOCATION_BYTES
        );
    }

    proptest::proptest! {
        /// Hostile bytes (arbitrary, or a valid datum with bytes changed) are an error or a
        /// record, never a panic, an abort or an unbounded allocation, in every format.
        #[test]
        fn any_bytes_decode_to_a_record_or_an_error_never_a_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            edits in proptest::collection::vec((0..64usize, proptest::num::u8::ANY), 0..4),
        ) {
            let nested = r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":{"type":"array","items":["null","long","string"]}},
                {"name":"m","type":{"type":"map","values":"double"}},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
                {"name":"f","type":{"type":"fixed","name":"F","size":4}}]}"#;
            let mut valid = avro_datum();
            for &(at, byte) in &edits {
                let len = valid.len();
                valid[at % len] = byte;
            }
            let fields: Fields = ["device_id".to_owned(), "ts".to_owned()].into_iter().collect();
            for payload in [&bytes, &valid] {
                let _ = Decoder::new(&format(FormatKind::Json, None)).unwrap().decode(Some(payload));
                let _ = decode_json_fields(payload, &fields);
                let _ = Decoder::new(&format(FormatKind::Raw, None)).unwrap().decode(Some(payload));
                for schema in [SCHEMA, nested] {
                    let _ = Decoder::new(&format(FormatKind::Avro, Some(schema)))
                        .unwrap()
                        .decode(Some(payload));
                }
            }
        }
    }

    fn format(kind: FormatKind, schema: Option<&str>) -> SourceDecoding {
        let format = SourceFormat {
            kind,
            schema: schema.map(str::to_owned),
        };
        SourceDecoding::of(&format, None)
    }

    proptest::proptest! {
        #[test]
        fn decoding_only_some_fields_equals_decoding_all_then_dropping_the_rest(
            text in proptest::string::string_regex(r#"\{("[a-d]":(-?[0-9]{1,4}(\.[0-9]{1,3})?|"[a-z\\"]{0,4}"|\[1,\{"x":2\}\]|\{"y":[0-9]\}|null|true),?){0,5}\}|\[1\]|"s"|[{}\[\]":,0-9a]{0,12}"#).unwrap(),
            keep in proptest::collection::hash_set("[a-e]", 0..4),
        ) {
            let fields: Fields = keep.into_iter().collect();
            let whole = decode_json(text.as_bytes());
            let some = decode_json_fields(text.as_bytes(), &fields);
            match (whole, some) {
                (Ok(Value::Object(mut all)), Ok(Value::Object(kept))) => {
                    all.retain(|k, _| fields.contains(k));
                    proptest::prop_assert_eq!(all, kept);
                }
                (Err(_), Err(_)) => {}
                (whole, some) => proptest::prop_assert!(false, "{text}: {whole:?} vs {some:?}"),
            }
        }
    }

    #[test]
    fn a_decoder_keeping_some_fields_still_rejects_malformed_records_and_non_objects() {
        let fields: std::collections::BTreeSet<String> = ["a".to_owned()].into();
        let mut d = Decoder::new(&format(FormatKind::Json, None))
            .unwrap()
            .keeping(Some(&fields));
        assert_eq!(
            d.decode(Some(br#"{"a": 1, "b": {"deep": [1, 2]}}"#))
                .unwrap(),
            serde_json::json!({"a": 1})
        );
        assert!(matches!(
            d.decode(Some(br#"{"a": 1, "b": }"#)),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            d.decode(Some(br#"{"a": 1} trailing"#)),
            Err(DecodeError::Json(_))
        ));
        match d.decode(Some(b"[1, 2]")) {
            Err(DecodeError::Json(e)) => assert!(e.contains("expected an object, found an array")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_json_objects_and_rejects_everything_else() {
        let mut d = Decoder::new(&format(FormatKind::Json, None)).unwrap();
        assert_eq!(d.decode(Some(br#"{"a":1}"#)).unwrap()["a"], 1);
        assert!(
            matches!(d.decode(Some(b"[1,2]")), Err(DecodeError::Json(m)) if m.contains("array"))
        );
        assert!(matches!(
            d.decode(Some(b"{\"a\":")),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(d.decode(None), Err(DecodeError::Empty)));
    }

    #[test]
    fn decodes_avro_datums_with_an_inline_schema() {
        let mut d = Decoder::new(&format(FormatKind::Avro, Some(SCHEMA))).unwrap();
        let v = d.decode(Some(&avro_datum())).unwrap();
        assert_eq!(v["device_id"], "d-1");
        assert_eq!(v["temperature"], 21.5);
        assert_eq!(v["ts"], 1_700_000_000_000_i64);
    }

    #[test]
    fn malformed_avro_is_an_error_not_a_panic() {
        let mut d = Decoder::new(&format(FormatKind::Avro, Some(SCHEMA))).unwrap();
        let mut datum = avro_datum();
        datum.truncate(4);
        assert!(matches!(d.decode(Some(&datum)), Err(DecodeError::Avro(_))));
        let mut longer = avro_datum();
        longer.push(7);
        assert!(matches!(d.decode(Some(&longer)), Err(DecodeError::Avro(m)) if m.contains("left")));
    }

    #[test]
    fn an_invalid_inline_schema_is_a_config_error() {
        let err = Decoder::new(&format(FormatKind::Avro, Some("{\"type\":\"nope\"}")))
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("spec.source.format.schema"));
    }

    #[test]
    fn wire_header_is_checked() {
        assert_eq!(
            split_wire_header(&[0, 0, 0, 1, 2, 9]).unwrap(),
            (258, &[9][..])
        );
        assert!(matches!(
            split_wire_header(&[1, 0, 0, 0, 1]),
            Err(DecodeError::Wire(_))
        ));
        assert!(matches!(
            split_wire_header(&[0, 0]),
            Err(DecodeError::Wire(_))
        ));
    }

    #[test]
    fn raw_values_are_exposed_as_text() {
        let mut d = Decoder::new(&format(FormatKind::Raw, None)).unwrap();
        assert_eq!(d.decode(Some(b"hello")).unwrap()["value"], "hello");
    }

    /// A one-shot HTTP registry on loopback: it answers the first request with `schema` and
    /// then closes, so a second fetch would fail. Returns its URL and the request it saw.
    fn one_shot_registry(schema: &'static str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = serde_json::json!({ "schema": schema }).to_string();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            )
            .unwrap();
            request
        });
        (url, server)
    }

    #[test]
    fn registry_schemas_are_fetched_once_and_cached() {
        let (url, server) = one_shot_registry(SCHEMA);
        let mut d = Decoder::new(&SourceDecoding::AvroRegistry(Some(url.clone()))).unwrap();
        let mut wire = vec![0, 0, 0, 0, 42];
        wire.extend(avro_datum());
        assert_eq!(d.decode(Some(&wire)).unwrap()["device_id"], "d-1");
        assert!(server.join().unwrap().starts_with("GET /schemas/ids/42 "));
        assert_eq!(d.decode(Some(&wire)).unwrap()["temperature"], 21.5);
    }

    #[test]
    fn a_recursive_registered_schema_with_a_datum_nested_too_deep_is_refused_not_a_stack_overflow()
    {
        const NODE: &str = r#"{"type":"record","name":"Node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","Node"]}]}"#;
        let (url, server) = one_shot_registry(NODE);
        let mut d = Decoder::new(&SourceDecoding::AvroRegistry(Some(url.clone()))).unwrap();
        // Node(v: 0, next: Node(...)) a million times: each level is two bytes.
        let mut wire = vec![0, 0, 0, 0, 9];
        for _ in 0..1_000_000 {
            wire.extend([0, 2]);
        }
        wire.extend([0, 0]);
        match d.decode(Some(&wire)) {
            Err(DecodeError::Avro(text)) => {
                assert!(text.contains("deeper than 128 levels"), "{text}")
            }
            other => panic!("expected a nesting error, got {other:?}"),
        }
        // A shallow list of the same schema decodes.
        let shallow = [0, 0, 0, 0, 9, 2, 2, 4, 0];
        let value = d.decode(Some(&shallow)).unwrap();
        assert_eq!(value["next"]["v"], 2, "{value}");
        assert!(server.join().unwrap().starts_with("GET /schemas/ids/9 "));
    }

    /// A loopback registry answering each request with the next status of `statuses` (and an
    /// empty JSON body), then closing; returns its URL and the requests it saw.
    fn scripted_registry(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in statuses {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).unwrap();
                seen.push(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
                write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                )
                .unwrap();
            }
            seen
        });
        (url, server)
    }

    #[test]
    fn registry_4xx_answers_are_the_records_fault_and_cached_while_5xx_408_and_429_are_transient() {
        let (url, server) = scripted_registry(vec![503, 429, 408, 404, 403]);
        let mut d = Decoder::new(&SourceDecoding::AvroRegistry(Some(url.clone()))).unwrap();
        let record = |id: u8| vec![0, 0, 0, 0, id, 2];
        for _ in 0..3 {
            let err = d.decode(Some(&record(7))).unwrap_err();
            assert!(err.is_transient(), "{err}");
        }
        // 404: unknown id, for good; asked once however many records carry it.
        for _ in 0..3 {
            let err = d.decode(Some(&record(7))).unwrap_err();
            assert!(
                !err.is_transient() && err.to_string().contains("unknown"),
                "{err}"
            );
        }
        let err = d.decode(Some(&record(9))).unwrap_err();
        assert!(
            !err.is_transient() && err.to_string().contains("HTTP 403"),
            "{err}"
        );
        assert!(!d.decode(Some(&record(9))).unwrap_err().is_transient());
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(seen[4].starts_with("GET /schemas/ids/9 "), "{seen:?}");
    }

    #[test]
    fn an_unreachable_registry_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let mut d = Decoder::new(&SourceDecoding::AvroRegistry(Some(url.clone()))).unwrap();
        let err = d.decode(Some(&[0, 0, 0, 0, 1, 2])).unwrap_err();
        assert!(err.is_transient(), "{err}");
    }
}

//! Any bytes as a JSON, raw or Avro (inline schema) record value: a record or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline_crds::source::{FormatKind, SourceFormat};
use pipeline_runtime::decode::Decoder;

const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
    {"name":"id","type":"string"},{"name":"t","type":"double"},
    {"name":"a","type":{"type":"array","items":["null","long","string"]}},
    {"name":"m","type":{"type":"map","values":"double"}}]}"#;

fuzz_target!(|data: &[u8]| {
    for (kind, schema) in [
        (FormatKind::Json, None),
        (FormatKind::Raw, None),
        (FormatKind::Avro, Some(SCHEMA.to_owned())),
    ] {
        let format = SourceFormat { kind, schema };
        if let Ok(mut decoder) = Decoder::new(&format, None) {
            let _ = decoder.decode(Some(data));
        }
    }
});

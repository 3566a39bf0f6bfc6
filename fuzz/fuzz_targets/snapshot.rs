//! Any bytes as a snapshot file body (behind a valid header and checksum, so the fuzzer reaches
//! the decoder): refused, or restored into a processor that then processes records and ticks.
#![no_main]

use std::{sync::Arc, time::Instant};

use libfuzzer_sys::fuzz_target;
use pipeline_runtime::{
    checkpoint::snapshot,
    plan::Plan,
    processor::{InRecord, Processor},
};

const SPEC: &str = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: f}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  transform: {keyBy: dev, timestamp: {field: ts}, repartition: never}\n  window: {sliding: {size: 6s, slide: 2s}, allowedLateness: 2s}\n  aggregates: [{name: n, function: count}, {name: s, function: sum, field: v}, {name: u, function: count_distinct, field: v}, {name: p, function: percentile, field: v, quantile: 0.9}]\n";

fuzz_target!(|body: &[u8]| {
    let spec = pipeline_crds::manifest::from_yaml(SPEC, "fuzz").unwrap().spec;
    let plan = Arc::new(Plan::new(&spec, "g", vec![1]));
    let mut file = Vec::with_capacity(20 + body.len());
    file.extend_from_slice(snapshot::MAGIC);
    file.extend_from_slice(&snapshot::FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&plan.state_fingerprint.to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    file.extend_from_slice(&[0, 0]);
    file.extend_from_slice(body);
    let Ok(state) = snapshot::decode(&file, plan.state_fingerprint) else {
        return;
    };
    let mut processor = Processor::new(plan).unwrap();
    if processor.restore(0, 0, state, Instant::now()).is_err() {
        return;
    }
    let mut out = Vec::new();
    for (offset, ts) in [(0, 1_000), (1, 9_000), (2, 40_000)] {
        let value = format!(r#"{{"dev":"d","ts":{ts},"v":{offset}.5}}"#);
        let rec = InRecord {
            topic: 0,
            partition: 0,
            offset: i64::MAX / 2 + offset,
            key: None,
            payload: Some(value.as_bytes()),
            timestamp_ms: None,
            upstream: None,
            marker: None,
        };
        let _ = processor.process(&rec, Instant::now(), 50_000, &mut out);
    }
    processor.on_tick(Instant::now(), &mut out);
});

//! Window state per key: resident memory added per open key-window (from the process's resident
//! set before and after) and snapshot bytes per key, for the IoT job's aggregates
//! (count/avg/min/max) at 100,000 and 1,000,000 keys, each key with one open 1-minute window
//! holding 5 readings. Run: `cargo bench -p pipeline-runtime --bench state`.

use std::{sync::Arc, time::Instant};

use pipeline_runtime::{
    checkpoint::snapshot,
    plan::Plan,
    processor::{InRecord, Processor},
};

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn plan() -> Arc<Plan> {
    let text = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: b}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  transform: {keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n";
    let pd = pipeline_crds::manifest::from_yaml(text, "bench").expect("a manifest");
    let pipeline =
        pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
            .expect("a valid spec");
    Arc::new(Plan::new(&pipeline, "g", vec![1]))
}

fn measure(keys: usize) {
    let plan = plan();
    let mut processor = Processor::new(plan.clone()).expect("a processor");
    let mut out = Vec::new();
    // Records built on the fly so that only the state stays resident.
    let before = resident_bytes();
    let started = Instant::now();
    for i in 0..keys * 5 {
        let value = format!(
            r#"{{"device_id":"device-{:07}","ts":{},"temperature":{}.25}}"#,
            i % keys,
            1_700_000_000_000u64 + (i / keys) as u64,
            i % 40
        );
        let rec = InRecord {
            topic: 0,
            partition: 0,
            offset: i as i64,
            key: None,
            payload: Some(value.as_bytes()),
            timestamp_ms: None,
            upstream: None,
            marker: None,
        };
        processor
            .process(&rec, Instant::now(), 0, &mut out)
            .expect("no transient errors");
        out.clear();
    }
    let loaded = started.elapsed();
    let after = resident_bytes();
    let (_, _, snap, _) = processor
        .changed_snapshots(None)
        .pop()
        .expect("the partition's state");
    let bytes = snapshot::encode(&snap, plan.state_fingerprint);
    println!(
        "{keys} keys × 1 open window: resident +{:.1} MB ({:.0} bytes per key-window); snapshot {:.1} MB ({:.0} bytes per key-window); {} records in {:.2} s",
        after.saturating_sub(before) as f64 / 1e6,
        after.saturating_sub(before) as f64 / keys as f64,
        bytes.len() as f64 / 1e6,
        bytes.len() as f64 / keys as f64,
        keys * 5,
        loaded.as_secs_f64()
    );
}

fn main() {
    for keys in [100_000, 1_000_000] {
        measure(keys);
    }
}

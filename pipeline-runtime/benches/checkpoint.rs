//! Snapshot size and speed: builds one partition's window state from generated readings (the
//! iot-sensors aggregates, plus sketches when asked), then encodes and decodes its snapshot
//! repeatedly. Prints bytes per key and MB/s. Run: `cargo bench -p pipeline-runtime --bench
//! checkpoint`.

use std::{sync::Arc, time::Instant};

use pipeline_runtime::{
    checkpoint::snapshot,
    plan::Plan,
    processor::{InRecord, Processor},
};

fn plan(aggregates: &str) -> Arc<Plan> {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: b}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n  transform: {{keyBy: dev, timestamp: {{field: ts}}, repartition: never, watermark: {{maxOutOfOrderness: 5s}}}}\n  window: {{tumbling: {{size: 60s}}}}\n  aggregates: {aggregates}\n"
    );
    let pd = pipeline_crds::manifest::from_yaml(&text, "bench").unwrap();
    let pipeline =
        pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
            .unwrap();
    Arc::new(Plan::new(&pipeline, "g", vec![1]))
}

fn measure(label: &str, aggregates: &str, keys: usize) {
    let plan = plan(aggregates);
    let mut p = Processor::new(plan.clone()).unwrap();
    let mut out = Vec::new();
    // Every key gets 5 readings inside one open minute.
    for i in 0..keys * 5 {
        let value = format!(
            r#"{{"dev":"device-{:06}","ts":{},"t":{}.5,"u":"user-{}"}}"#,
            i % keys,
            1_000 + i as i64 % 50_000,
            i % 40,
            i % 977
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
        p.process(&rec, Instant::now(), 0, &mut out).unwrap();
        out.clear();
    }
    let (_, _, snap, _) = p.changed_snapshots(None).pop().unwrap();
    let rounds = 20;
    let started = Instant::now();
    let mut bytes = Vec::new();
    for _ in 0..rounds {
        bytes = snapshot::encode(&snap, plan.state_fingerprint);
    }
    let encode = started.elapsed().as_secs_f64() / f64::from(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        snapshot::decode(&bytes, plan.state_fingerprint).unwrap();
    }
    let decode = started.elapsed().as_secs_f64() / f64::from(rounds);
    let mb = bytes.len() as f64 / 1e6;
    println!(
        "{label}: {keys} keys, snapshot {:.2} MB ({:.0} bytes/key); encode {:.1} ms ({:.0} MB/s), decode {:.1} ms ({:.0} MB/s)",
        mb,
        bytes.len() as f64 / keys as f64,
        encode * 1e3,
        mb / encode,
        decode * 1e3,
        mb / decode
    );
}

fn main() {
    let basic = "[{name: n, function: count}, {name: max_t, function: max, field: t}, {name: avg_t, function: avg, field: t}]";
    let sketches = "[{name: n, function: count}, {name: users, function: count_distinct, field: u}, {name: p99, function: percentile, field: t, quantile: 0.99}]";
    for keys in [10_000, 100_000] {
        measure("count+max+avg", basic, keys);
    }
    measure("count+count_distinct+p99", sketches, 10_000);
}

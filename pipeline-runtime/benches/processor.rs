//! Processor micro-benchmark (criterion): the `Processor` fed from memory with pre-encoded
//! ≈240-byte JSON sensor readings, for the jobs the backlog benchmark runs (stateless filter,
//! projection, windowed, windowed behind a CEL filter, session windows), and each stage alone
//! (decode, filter, key, encode of a window result). Criterion reports time per batch of
//! records and records per second; ns per record = 1e9 / that rate.
//!
//! `cargo bench -p pipeline-runtime --bench processor` (add `-- windowed` to run a subset).

use std::{hint::black_box, sync::Arc, time::Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use pipeline_runtime::{
    decode::decode_json,
    enrich::Tables,
    field::{FieldPath, key_text},
    filter::Filter,
    loadgen::{Generator, Shape, Workload},
    plan::Plan,
    processor::{InRecord, Processor},
    sink::encode::window_record,
    window::WindowResult,
};

const BATCH: usize = 10_000;
const DEVICES: u64 = 100_000;

/// The load generator's ≈240-byte readings, event time advancing 1 ms per record.
fn readings(n: usize) -> Vec<Vec<u8>> {
    let shape = Shape {
        keys: DEVICES,
        ..Shape::default()
    };
    let mut generator = Generator::new(Workload::IotJson, shape, 7, None);
    (0..n)
        .map(|i| generator.next(1_700_000_000_000 + i as i64).value)
        .collect()
}

const AGGREGATES: &str = "\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n";
const FILTER: &str = "record.temperature > -50.0 && record.status == \"ok\"";

fn plan(spec: &str) -> Arc<Plan> {
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: b}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{spec}"
    );
    let pd = pipeline_crds::manifest::from_yaml(&text, "bench").expect("a bench manifest");
    let pipeline =
        pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
            .expect("a valid bench spec");
    Arc::new(Plan::new(&pipeline, "g", vec![1]))
}

fn jobs() -> Vec<(&'static str, String)> {
    let keyed = "keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}";
    vec![
        (
            "filter-only",
            format!("  transform: {{filter: '{FILTER}'}}\n"),
        ),
        (
            "projection",
            "  transform: {select: [device_id, ts, temperature, humidity]}\n".to_string(),
        ),
        (
            "windowed",
            format!("  transform: {{{keyed}}}\n  window: {{tumbling: {{size: 1m}}}}{AGGREGATES}"),
        ),
        (
            "windowed-cel",
            format!(
                "  transform: {{filter: '{FILTER}', {keyed}}}\n  window: {{tumbling: {{size: 1m}}}}{AGGREGATES}"
            ),
        ),
        (
            "windowed-enriched",
            format!(
                "  enrich: [{{name: device, topic: devices, lookup: device_id, fields: [owner, region]}}]\n  transform: {{{keyed}}}\n  window: {{tumbling: {{size: 1m}}}}{AGGREGATES}    - {{name: region, function: last, field: device.region}}\n"
            ),
        ),
        (
            "windowed-same-aggregates",
            format!(
                "  transform: {{{keyed}}}\n  window: {{tumbling: {{size: 1m}}}}{AGGREGATES}    - {{name: region, function: last, field: site}}\n"
            ),
        ),
        (
            "session",
            format!("  transform: {{{keyed}}}\n  window: {{session: {{gap: 30s}}}}{AGGREGATES}"),
        ),
    ]
}

/// The reference table of the enriched job: one row per device, loaded before the run; also
/// prints its bytes per row.
fn device_table(plan: &Plan) -> Tables {
    let tables = Tables::new(&plan.enrich);
    for table in tables.iter() {
        table.load((0..DEVICES).map(|i| {
            let row = serde_json::json!({"owner": format!("team-{}", i % 40), "region": format!("eu-{}", i % 3)});
            (format!("device-{i:06}"), 0, Some(row))
        }));
        table.caught_up(Instant::now());
        let size = table.size();
        eprintln!(
            "table {}: {} rows, {} bytes, {:.0} bytes per row",
            table.plan.name,
            size.rows,
            size.bytes,
            size.bytes as f64 / size.rows as f64
        );
    }
    tables
}

fn jobs_bench(c: &mut Criterion) {
    let data = readings(BATCH * 5);
    let mut group = c.benchmark_group("job");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, spec) in jobs() {
        let plan = plan(&spec);
        let tables = Arc::new(device_table(&plan));
        let mut processor = Processor::new(plan)
            .expect("a processor")
            .with_tables(tables);
        let mut out = Vec::new();
        let mut offset = 0i64;
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let now = Instant::now();
                for _ in 0..BATCH {
                    let payload = &data[next];
                    next = (next + 1) % data.len();
                    let rec = InRecord {
                        topic: 0,
                        partition: 0,
                        offset,
                        key: None,
                        payload: Some(payload),
                        timestamp_ms: None,
                        upstream: None,
                        marker: None,
                    };
                    offset += 1;
                    processor
                        .process(&rec, now, 1_700_000_000_000, &mut out)
                        .expect("no transient errors from memory");
                    out.clear();
                }
            });
        });
    }
    group.finish();
}

fn stages_bench(c: &mut Criterion) {
    let data = readings(BATCH);
    let values: Vec<serde_json::Value> = data.iter().map(|d| decode_json(d).unwrap()).collect();
    let filter = Filter::compile(FILTER).expect("the filter compiles");
    let key = FieldPath::parse("device_id");
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for d in &data {
                black_box(decode_json(d).unwrap());
            }
        });
    });
    group.bench_function("filter", |b| {
        b.iter(|| {
            for v in &values {
                black_box(filter.matches(v).unwrap());
            }
        });
    });
    group.bench_function("key", |b| {
        b.iter(|| {
            for v in &values {
                black_box(key_text(key.get(v).unwrap()));
            }
        });
    });
    let results: Vec<WindowResult> = values
        .iter()
        .map(|v| WindowResult {
            key: key_text(key.get(v).unwrap()).into(),
            key_value: key.get(v).unwrap().clone(),
            start: 1_700_000_000_000,
            end: 1_700_000_060_000,
            values: vec![
                ("readings".into(), serde_json::json!(12)),
                ("avg_temperature".into(), serde_json::json!(21.5)),
                ("min_temperature".into(), serde_json::json!(-3.25)),
                ("max_temperature".into(), serde_json::json!(38.0)),
            ],
        })
        .collect();
    group.bench_function("encode", |b| {
        b.iter(|| {
            for r in &results {
                black_box(window_record("device_id", r));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, jobs_bench, stages_bench);
criterion_main!(benches);

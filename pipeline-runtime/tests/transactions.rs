//! Exactly-once delivery on librdkafka's mock cluster, the only broker here that accepts
//! transactions (tansu 0.6 rejects EndTxn). Measured limits of the mock cluster: it shows
//! aborted records to `read_committed` readers, does not fence a producer when another one
//! registers the same transactional id, and does not apply offsets sent with a transaction to
//! the group. So this test proves the transactional path runs (init, begin, send offsets,
//! commit), that a failed checkpoint aborts and restarts the slot, and that the pipeline then
//! completes with exact results. Invisibility of aborted outputs and fencing are verified only
//! against a real Kafka (`e2e/tests/exactly_once.rs`, opt-in): see docs/checkpoints.md.

mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use pipeline_runtime::runtime::Runtime;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde_json::Value;

fn produce(bootstrap: &str, records: &[(i32, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for (partition, value) in records {
        producer
            .send(
                BaseRecord::<(), str>::to("readings")
                    .partition(*partition)
                    .payload(value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// Every record of `topic` visible at `isolation` within `wait`.
fn read(bootstrap: &str, topic: &str, isolation: &str, wait: Duration) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{isolation}-{}", rand_suffix()))
        .set("isolation.level", isolation)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
            && let Some(bytes) = m.payload()
        {
            out.push(serde_json::from_slice(bytes).unwrap());
        }
    }
    out
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The sum of the series starting with `name` in a runtime's exposition.
fn metric(runtime: &pipeline_runtime::metrics::Metrics, name: &str) -> f64 {
    let text = runtime.encode();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn exactly_once_checkpoints_commit_transactions_and_a_failed_one_aborts_and_restarts_the_slot() {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("readings", 2, 1).unwrap();
    cluster.create_topic("out", 1, 1).unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-eos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A file where the group's snapshot directory belongs: every snapshot write fails.
    let blocker = dir.join("sluice.test.eos");
    std::fs::write(&blocker, b"in the way").unwrap();
    let yaml = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: PipelineDeployment
metadata: {{name: eos, namespace: test}}
spec:
  kafka: {{bootstrapServers: '{bootstrap}'}}
  source: {{topic: readings, startingOffsets: earliest}}
  transform: {{keyBy: dev, sourceKeyed: true, timestamp: {{field: ts}}, watermark: {{maxOutOfOrderness: 1s}}}}
  window: {{tumbling: {{size: 10s}}}}
  aggregates: [{{name: n, function: count}}, {{name: total, function: sum, field: v}}]
  sink: {{kafka: {{topic: out}}}}
  delivery: exactly-once
  checkpoint: {{interval: 1s, storage: {{local: {{path: '{}'}}}}}}
",
        dir.display()
    );
    let spec = pipeline_crds::manifest::from_yaml(&yaml, "test")
        .unwrap()
        .spec;
    // 10 devices × 6 windows, then one record per partition far ahead to close them all.
    let mut records = Vec::new();
    let mut expected: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for i in 0..600i64 {
        let dev = format!("d{}", i % 10);
        let ts = 1_000_000 + i * 100;
        let partition = i32::try_from(i % 10 % 2).unwrap();
        records.push((partition, format!(r#"{{"dev":"{dev}","ts":{ts},"v":{i}}}"#)));
        let e = expected
            .entry((dev, ts.div_euclid(10_000) * 10_000))
            .or_default();
        e.0 += 1;
        e.1 += i;
    }
    for partition in 0..2 {
        records.push((
            partition,
            format!(r#"{{"dev":"end","ts":9000000,"v":{partition}}}"#),
        ));
    }
    produce(&bootstrap, &records);

    let runtime = Runtime::start(support::options("eos", "eos-0", spec, 1)).unwrap();
    // Checkpoints fail while the blocker is there: their transactions abort, the slot restarts.
    let deadline = Instant::now() + Duration::from_secs(60);
    let failures = "pipeline_checkpoints_total{pipeline=\"eos\",namespace=\"test\",pod=\"eos-0\",slot=\"0\",result=\"failure\"}";
    while metric(runtime.metrics(), failures) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint was attempted:\n{}",
            runtime.metrics().encode()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(metric(runtime.metrics(), "pipeline_slot_restarts_total") >= 1.0);
    let aborted = read(
        &bootstrap,
        "out",
        "read_uncommitted",
        Duration::from_secs(2),
    );
    assert!(
        !aborted.is_empty(),
        "windows fired and were sent in the transactions that aborted"
    );

    // Storage back: the next checkpoint commits and the pipeline completes.
    std::fs::remove_file(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut visible;
    let success = "pipeline_checkpoints_total{pipeline=\"eos\",namespace=\"test\",pod=\"eos-0\",slot=\"0\",result=\"success\"}";
    let successes_before = metric(runtime.metrics(), success);
    loop {
        visible = read(&bootstrap, "out", "read_committed", Duration::from_secs(2));
        let distinct: std::collections::BTreeSet<_> = visible
            .iter()
            .map(|v| (v["dev"].to_string(), v["window_start"].as_i64()))
            .collect();
        if (distinct.len() >= expected.len()
            && metric(runtime.metrics(), success) > successes_before)
            || Instant::now() > deadline
        {
            break;
        }
    }
    let runtime_metrics = runtime.metrics().clone();
    runtime.stop();
    runtime.join();
    assert!(metric(&runtime_metrics, success) >= 1.0);
    // Aborted attempts re-emit identical windows (the mock cluster shows them too).
    let mut got: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for v in &visible {
        let id = (
            v["dev"].as_str().unwrap().to_owned(),
            v["window_start"].as_i64().unwrap(),
        );
        let value = (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap());
        if let Some(earlier) = got.insert(id.clone(), value) {
            assert_eq!(earlier, value, "window {id:?} re-emitted with other values");
        }
    }
    assert_eq!(got, expected);
    let _ = std::fs::remove_dir_all(&dir);
}

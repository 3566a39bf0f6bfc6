//! A record whose outputs would not fit in a Kafka message, against a real broker (tansu): it is
//! dead-lettered, bounded, and the partition goes on (it once failed the slot, which restarted
//! on the same record forever).

mod support;

use std::time::{Duration, Instant};

use pipeline_runtime::runtime::Runtime;
use serde_json::json;
use support::{Tansu, metric_sum, produce_one_per_batch, spec};

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_900_kb_record_with_a_900_kb_timestamp_is_dead_lettered_and_every_other_record_is_processed() {
    let broker = Tansu::start();
    broker.create_topics(&[("readings", 1), ("readings-out", 1), ("readings-dlq", 1)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let reading = |i: i64| {
        let value = json!({"device": format!("d{}", i % 5), "ts": now - 60_000 + i * 10, "v": i});
        (0, None, value.to_string().into_bytes())
    };
    let huge_timestamp = "9".repeat(900_000);
    let mut records: Vec<_> = (0..100).map(reading).collect();
    records.push((
        0,
        None,
        json!({"device": "d0", "ts": huge_timestamp, "v": 0})
            .to_string()
            .into_bytes(),
    ));
    records.extend((100..200).map(reading));
    produce_one_per_batch(&broker.bootstrap, "readings", &records);

    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: readings}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  source: {{topic: readings}}\n  transform: {{keyBy: device, timestamp: {{field: ts}}, repartition: never}}\n  window: {{tumbling: {{size: 1m}}}}\n  aggregates: [{{name: n, function: count}}]\n  sink: {{kafka: {{topic: readings-out}}}}\n  deadLetter: {{topic: readings-dlq}}\n",
        broker.bootstrap
    );
    let runtime =
        Runtime::start(support::options("readings", "pod-a", spec(&manifest), 1)).unwrap();
    let letters = broker.consume("readings-dlq", Duration::from_secs(60), |o| !o.is_empty());
    assert_eq!(letters.len(), 1, "the huge record is dead-lettered");
    let header = |name: &str| {
        letters[0]
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(header("sluice.stage"), "timestamp");
    let error = header("sluice.error");
    assert!(
        error.len() <= 1024,
        "the error is bounded: {} bytes",
        error.len()
    );
    assert!(error.contains("error truncated from"), "{error}");
    assert_eq!(
        letters[0].value.as_ref().map(Vec::len),
        Some(records[100].2.len()),
        "the payload fits, so it is kept whole"
    );

    // Every other record is read and windowed, and the slot never restarted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = runtime.metrics().encode();
        if metric_sum(&text, "pipeline_records_windowed_total") >= 200.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(metric_sum(&text, "pipeline_records_in_total"), 201.0);
    assert_eq!(metric_sum(&text, "pipeline_records_windowed_total"), 200.0);
    assert_eq!(metric_sum(&text, "pipeline_records_dead_letter_total"), 1.0);
    assert_eq!(metric_sum(&text, "pipeline_slot_restarts_total"), 0.0);
    assert_eq!(
        metric_sum(&text, "pipeline_dead_letters_dropped_total"),
        0.0
    );
    runtime.stop();
    runtime.join();
}

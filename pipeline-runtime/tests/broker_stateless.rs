//! A stateless pipeline (filter, projection, dead letters) against a real broker (tansu).

mod support;

use std::{collections::BTreeMap, time::Duration};

use pipeline_runtime::runtime::{Runtime, RuntimeOptions};
use serde_json::{Value, json};
use support::{Rng, Tansu, metric_sum, spec};

#[test]
fn stateless_pipeline_forwards_filtered_projections_keeps_keys_and_dead_letters_bad_records() {
    let Some(broker) = Tansu::start() else { return };
    broker.create_topics(&[("orders", 4), ("big-orders", 2), ("orders-dlq", 1)]);
    let mut rng = Rng::new(3);
    let mut records = Vec::new();
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut bad = 0;
    for i in 0..5_000 {
        let partition = rng.below(4) as i32;
        let key = format!("order-{i}");
        if rng.below(200) == 0 {
            bad += 1;
            records.push((partition, Some(key.into_bytes()), b"<xml/>".to_vec()));
            continue;
        }
        let amount = rng.below(2_000) as i64;
        let value = json!({"order_id": i, "amount": amount, "currency": "EUR", "customer": {"id": format!("c{}", i % 50), "email": "x@example.com"}});
        if amount >= 1_000 {
            expected.insert(key.clone(), json!({"order_id": i, "amount": amount, "customer": {"id": format!("c{}", i % 50)}}));
        }
        records.push((
            partition,
            Some(key.into_bytes()),
            value.to_string().into_bytes(),
        ));
    }
    broker.produce("orders", &records);
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: orders}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  source: {{topic: orders}}\n  transform: {{filter: 'record.amount >= 1000', select: [order_id, amount, customer.id]}}\n  sink: {{kafka: {{topic: big-orders}}}}\n  deadLetter: {{topic: orders-dlq}}\n",
        broker.bootstrap
    );
    let runtime = Runtime::start(RuntimeOptions {
        name: "orders".into(),
        namespace: "test".into(),
        pod: "pod-a".into(),
        spec: spec(&manifest),
        slots: 2,
        scale_file: None,
        metrics_addr: None,
        commit_interval: Duration::from_secs(1),
        simulated_record_cost: None,
    })
    .unwrap();
    let want = expected.len();
    let out = broker.consume("big-orders", Duration::from_secs(120), |o| o.len() >= want);
    let got: BTreeMap<String, Value> = out
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().unwrap()).unwrap(),
                serde_json::from_slice(r.value.as_deref().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(out.len(), want, "each passing record once");
    assert_eq!(got, expected, "projections keep the source key");
    let dlq = broker.consume("orders-dlq", Duration::from_secs(30), |o| o.len() >= bad);
    assert_eq!(dlq.len(), bad);
    assert!(
        dlq.iter()
            .all(|r| r.value.as_deref() == Some(b"<xml/>".as_slice())
                && r.headers["sluice.stage"] == "decode")
    );

    std::thread::sleep(Duration::from_millis(500));
    let text = runtime.metrics().encode();
    let input = metric_sum(&text, "pipeline_records_in_total");
    let identity = metric_sum(&text, "pipeline_records_out_total")
        + metric_sum(&text, "pipeline_records_filtered_total")
        + metric_sum(&text, "pipeline_records_dead_letter_total");
    assert_eq!(input, records.len() as f64);
    assert_eq!(input, identity, "in = out + filtered + dead-letter");
    runtime.stop();
    runtime.join();
}

//! Windowed pipelines against a real Kafka-protocol broker (tansu): the output topic must equal
//! an offline computation of the same windows exactly, and every input record must be accounted.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use pipeline_runtime::{runtime::Runtime, slot::wall_clock_ms};
use serde_json::{Value, json};
use support::{Rng, Tansu, metric_sum, spec};

fn start(name: &str, pod: &str, yaml: &str, slots: usize) -> Runtime {
    Runtime::start(support::options(name, pod, spec(yaml), slots)).unwrap()
}

/// Exact aggregates of integer values: (count, sum, min, max).
type Exact = (u64, i64, i64, i64);

fn fold(acc: &mut Exact, y: i64) {
    acc.0 += 1;
    acc.1 += y;
    acc.2 = acc.2.min(y);
    acc.3 = acc.3.max(y);
}

fn check_outputs(
    outputs: &[support::Consumed],
    key_field: &str,
    expected: &BTreeMap<(String, i64), (i64, Exact)>,
) {
    let mut last: BTreeMap<(String, i64), Value> = BTreeMap::new();
    for record in outputs {
        let value: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        let key: Value = serde_json::from_slice(record.key.as_deref().unwrap()).unwrap();
        let id = (
            value[key_field].as_str().unwrap().to_owned(),
            value["window_start"].as_i64().unwrap(),
        );
        assert_eq!(
            key,
            json!({key_field: id.0, "window_start": id.1}),
            "output key is (key, window start)"
        );
        last.insert(id, value);
    }
    let got: BTreeSet<_> = last.keys().cloned().collect();
    let want: BTreeSet<_> = expected.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "(key, window) outputs differ: {} missing, e.g. {missing:?}; {} extra, e.g. {extra:?}",
        want.difference(&got).count(),
        got.difference(&want).count()
    );
    for (id, (end, (n, sum, lo, hi))) in expected {
        let v = &last[id];
        let want = json!({
            key_field: id.0, "window_start": id.1, "window_end": end,
            "n": n, "total": sum, "lo": lo, "hi": hi, "mean": *sum as f64 / *n as f64,
        });
        assert_eq!(v, &want, "window {id:?}");
    }
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn tumbling_windows_with_repartitioning_on_three_slots_equal_the_offline_reference() {
    let broker = Tansu::start();
    let partitions = 6;
    broker.create_topics(&[
        ("readings", partitions),
        ("aggregates", 3),
        ("readings-dlq", 1),
    ]);

    // 30k readings of 300 devices over three minutes of event time, up to 2 s out of order within
    // each partition, on random partitions (not keyed by device, so the pipeline repartitions).
    let mut rng = Rng::new(7);
    let base = (wall_clock_ms() - 20 * 60_000).div_euclid(10_000) * 10_000;
    let mut records = Vec::new();
    let mut expected: BTreeMap<(String, i64), (i64, Exact)> = BTreeMap::new();
    let (mut malformed, mut keyless, mut filtered) = (0, 0, 0);
    for i in 0..30_000_i64 {
        let partition = rng.below(partitions as u64) as i32;
        let roll = rng.below(1000);
        if roll < 3 {
            malformed += 1;
            records.push((partition, None, b"{\"dev\": ".to_vec()));
            continue;
        }
        let ts = base + i * 6 - rng.below(2_000) as i64;
        let x = rng.below(1_000) as i64 - 100;
        let y = rng.below(10_000) as i64 - 5_000;
        if roll < 5 {
            // The filter runs before the key is read: a keyless record with x < 0 is filtered.
            if x < 0 {
                filtered += 1;
            } else {
                keyless += 1;
            }
            records.push((
                partition,
                None,
                json!({"ts": ts, "x": x, "y": y}).to_string().into_bytes(),
            ));
            continue;
        }
        let dev = format!("dev-{:03}", rng.below(300));
        records.push((
            partition,
            None,
            json!({"dev": dev, "ts": ts, "x": x, "y": y})
                .to_string()
                .into_bytes(),
        ));
        if x < 0 {
            filtered += 1;
            continue;
        }
        let start = ts.div_euclid(10_000) * 10_000;
        let entry = expected
            .entry((dev, start))
            .or_insert((start + 10_000, (0, 0, i64::MAX, i64::MIN)));
        fold(&mut entry.1, y);
    }
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: tumbling}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  source: {{topic: readings}}\n  transform: {{filter: 'record.x >= 0', keyBy: dev, timestamp: {{field: ts}}, watermark: {{maxOutOfOrderness: 3s, idleTimeout: 5s}}}}\n  window: {{tumbling: {{size: 10s}}}}\n  aggregates:\n    - {{name: n, function: count}}\n    - {{name: total, function: sum, field: y}}\n    - {{name: lo, function: min, field: y}}\n    - {{name: hi, function: max, field: y}}\n    - {{name: mean, function: avg, field: y}}\n  sink: {{kafka: {{topic: aggregates}}}}\n  deadLetter: {{topic: readings-dlq}}\n",
        broker.bootstrap
    );
    // One process with three slots, settled before the data arrives (see wait_for_assignment).
    let a = start("tumbling", "pod-a", &manifest, 3);
    // Source and repartition partitions: 6 + 6.
    support::wait_for_assignment(&a, 3, 2 * partitions as usize);
    broker.produce("readings", &records);

    let want = expected.len();
    let outputs = broker.consume("aggregates", Duration::from_secs(150), |out| {
        out.iter()
            .map(|r| r.key.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= want
    });
    check_outputs(&outputs, "dev", &expected);

    // Every input record is accounted for exactly once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let identity = loop {
        let sum = |name| metric_sum(&a.metrics().encode(), name);
        let counts = [
            sum("pipeline_records_in_total"),
            sum("pipeline_records_windowed_total"),
            sum("pipeline_records_filtered_total"),
            sum("pipeline_records_late_total"),
            sum("pipeline_records_dead_letter_total"),
        ];
        if counts[0] >= records.len() as f64 || std::time::Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let [input, windowed, filtered_seen, late, dead] = identity;
    assert_eq!(input, records.len() as f64);
    assert_eq!(
        input,
        windowed + filtered_seen + late + dead,
        "in = windowed + filtered + late + dead-letter"
    );
    assert_eq!(
        (filtered_seen, late, dead),
        (filtered as f64, 0.0, (malformed + keyless) as f64)
    );

    let dlq = broker.consume("readings-dlq", Duration::from_secs(30), |out| {
        out.len() >= malformed + keyless
    });
    assert_eq!(dlq.len(), malformed + keyless);
    let stages: BTreeMap<String, usize> = dlq.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.headers["sluice.stage"].clone()).or_default() += 1;
        m
    });
    assert_eq!(
        stages,
        BTreeMap::from([
            ("decode".to_owned(), malformed),
            ("key".to_owned(), keyless)
        ])
    );
    assert!(dlq.iter().all(|r| r.headers.contains_key("sluice.error")
        && r.headers["sluice.source.topic"] == "readings"));

    a.stop();
    a.join();
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn session_windows_on_a_keyed_topic_without_repartitioning_equal_the_offline_reference() {
    let broker = Tansu::start();
    let partitions = 4;
    broker.create_topics(&[("clicks", partitions), ("sessions", 2)]);

    // 200 users, clicks 0..1.5 s apart with a 6 s pause one time in ten (a new session under a
    // 3 s gap), keyed and partitioned by user, in event-time order.
    let mut rng = Rng::new(11);
    let base = wall_clock_ms() - 30 * 60_000;
    let mut next_ts: Vec<i64> = (0..200).map(|u| base + u * 17).collect();
    let mut events = Vec::new();
    for _ in 0..12_000 {
        let user = rng.below(200) as usize;
        let pause = if rng.below(10) == 0 {
            6_000
        } else {
            rng.below(1_500) as i64
        };
        next_ts[user] += pause;
        events.push((next_ts[user], user, rng.below(1_000) as i64));
    }
    events.sort();
    let records: Vec<_> = events
        .iter()
        .map(|(ts, user, y)| {
            let name = format!("user-{user:03}");
            (
                (*user % partitions as usize) as i32,
                Some(name.clone().into_bytes()),
                json!({"user": name, "ts": ts, "y": y})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect();
    let gap = 3_000;
    let mut expected: BTreeMap<(String, i64), (i64, Exact)> = BTreeMap::new();
    let mut by_user: BTreeMap<usize, Vec<(i64, i64)>> = BTreeMap::new();
    for (ts, user, y) in &events {
        by_user.entry(*user).or_default().push((*ts, *y));
    }
    for (user, clicks) in by_user {
        let mut current: Option<(i64, i64, Exact)> = None;
        for (ts, y) in clicks {
            current = match current {
                Some((start, end, mut acc)) if ts <= end => {
                    fold(&mut acc, y);
                    Some((start, end.max(ts + gap), acc))
                }
                previous => {
                    if let Some((start, end, acc)) = previous {
                        expected.insert((format!("user-{user:03}"), start), (end, acc));
                    }
                    let mut acc = (0, 0, i64::MAX, i64::MIN);
                    fold(&mut acc, y);
                    Some((ts, ts + gap, acc))
                }
            };
        }
        if let Some((start, end, acc)) = current {
            expected.insert((format!("user-{user:03}"), start), (end, acc));
        }
    }

    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: sessions}}\nspec:\n  kafka: {{bootstrapServers: '{}'}}\n  source: {{topic: clicks}}\n  transform: {{keyBy: user, timestamp: {{field: ts}}, watermark: {{maxOutOfOrderness: 1s, idleTimeout: 1s}}, repartition: never}}\n  window: {{session: {{gap: 3s}}}}\n  aggregates:\n    - {{name: n, function: count}}\n    - {{name: total, function: sum, field: y}}\n    - {{name: lo, function: min, field: y}}\n    - {{name: hi, function: max, field: y}}\n    - {{name: mean, function: avg, field: y}}\n  sink: {{kafka: {{topic: sessions}}}}\n",
        broker.bootstrap
    );
    let runtime = start("sessions", "pod-a", &manifest, 3);
    support::wait_for_assignment(&runtime, 3, partitions as usize);
    broker.produce("clicks", &records);
    let want = expected.len();
    let outputs = broker.consume("sessions", Duration::from_secs(150), |out| {
        out.iter()
            .map(|r| r.key.clone())
            .collect::<BTreeSet<_>>()
            .len()
            >= want
    });
    check_outputs(&outputs, "user", &expected);
    runtime.stop();
    runtime.join();
}

//! The ClickHouse sink against a real ClickHouse server (Debian's 18.16) and the tansu broker:
//! window results are exact per window under `FINAL` across a crash that makes the next process
//! insert windows again, a server that
//! goes away mid-stream holds the pipeline back without losing anything, and a table that does
//! not fit is refused with its differences; a stateless pipeline's records count once under
//! `FINAL` across a kill, and a record that does not fit the table is dead-lettered.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{
    PARTITIONS, launch, scratch, seed, start_owning_every_partition,
    start_owning_every_partition_with, stream,
};
use pipeline_e2e::{
    broker::{Consumed, Tansu, metric_sum, produce_one_per_batch},
    clickhouse::ClickHouse,
    dataset::{Dataset, compare},
    process::Launch,
};

/// The test pipeline with its results in ClickHouse table `default.<table>`.
fn launch_into_clickhouse(
    tansu: &Tansu,
    dir: &std::path::Path,
    name: &str,
    clickhouse: &ClickHouse,
    table: &str,
    create: bool,
) -> Launch {
    let launch = launch(tansu, dir, name, "at-least-once", "readings", "unused");
    let manifest = std::fs::read_to_string(&launch.manifest).unwrap();
    let manifest = manifest.replace(
        "  sink: {kafka: {topic: unused}}",
        &format!(
            "  sink: {{clickhouse: {{url: '{}', table: {table}, createTable: {create}, batchRows: 500, batchInterval: 500ms}}}}",
            clickhouse.url
        ),
    );
    assert!(manifest.contains("clickhouse"), "{manifest}");
    std::fs::write(&launch.manifest, manifest).unwrap();
    launch
}

/// The table's rows under `FINAL`, as the output records the dataset comparison reads.
fn final_rows(clickhouse: &ClickHouse, table: &str) -> Vec<Consumed> {
    clickhouse
        .query(&format!(
            "SELECT dev, window_start, window_end, n, total, lo, hi FROM {table} FINAL FORMAT JSONEachRow"
        ))
        .lines()
        .map(|line| {
            // Sums, minimums and maximums are Float64 columns: whole numbers compare as integers.
            let mut row: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in ["total", "lo", "hi"] {
                if let Some(f) = row[field].as_f64() {
                    row[field] = serde_json::json!(f as i64);
                }
            }
            Consumed {
                key: None,
                value: Some(row.to_string().into_bytes()),
                headers: BTreeMap::new(),
            }
        })
        .collect()
}

/// Waits until the table holds `windows` windows under `FINAL`.
fn wait_for_windows(clickhouse: &ClickHouse, table: &str, windows: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let count: usize = clickhouse
            .try_query(&format!("SELECT count() FROM {table} FINAL"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if count >= windows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} of {windows} windows in ClickHouse"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and clickhouse-server (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn window_results_in_clickhouse_are_exact_under_final_across_a_crash_replay_and_a_server_outage() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("readings", PARTITIONS)]);
    let mut clickhouse = ClickHouse::start();
    let dir = scratch("clickhouse");
    let data = Dataset::generate(30_000, 60, PARTITIONS, 5, seed());
    let reference = data.reference();
    let launch = launch_into_clickhouse(&tansu, &dir, "chexact", &clickhouse, "readings_1m", true);
    let thirds: Vec<_> = data.records.chunks(10_000).collect();

    // A first third, streamed; the process crashes on its second checkpoint after inserting the
    // rows of that interval and before committing their offsets (the checkpoint-before-commit
    // failpoint), so the next process emits and inserts those windows again.
    let mut p = start_owning_every_partition_with(
        &launch,
        "chexact-0",
        &[("SLUICE_FAILPOINT", "checkpoint-before-commit:2")],
    );
    // Merges stopped, so the duplicates stay visible to a plain count() (the table exists now).
    clickhouse.query("SYSTEM STOP MERGES");
    let producer = stream(
        &tansu.bootstrap,
        "readings",
        thirds[0].to_vec(),
        10,
        Duration::from_millis(300),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.is_running() {
        assert!(
            Instant::now() < deadline,
            "the failpoint never crashed the process"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    producer.join().unwrap();
    let mut p = start_owning_every_partition(&launch, "chexact-1");
    produce_one_per_batch(&tansu.bootstrap, "readings", thirds[1]);
    // The replayed windows were inserted a second time, with the same versions: more rows than
    // windows, and FINAL keeps one per window.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let raw: usize = clickhouse
            .query("SELECT count() FROM readings_1m")
            .trim()
            .parse()
            .unwrap();
        let last: usize = clickhouse
            .query("SELECT count() FROM readings_1m FINAL")
            .trim()
            .parse()
            .unwrap();
        if raw > last {
            eprintln!("{raw} rows stored for {last} windows: replayed windows inserted again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no window was inserted twice ({raw} rows, {last} windows): the crash replayed nothing"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // ClickHouse goes away while the last third arrives: the windows that third closes cannot be
    // inserted, so inserts fail and are retried, nothing is committed past what it acknowledged,
    // and the process keeps running. The test waits on the failure count, not a clock: with no
    // rows left to insert when the server stops, an outage alone fails nothing. Each failed
    // attempt but a last one is followed by a wait of at least 200 ms, so six failures are more
    // than a second of retrying.
    clickhouse.stop();
    produce_one_per_batch(&tansu.bootstrap, "readings", thirds[2]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let failures = p.metrics().map_or(0.0, |t| {
            metric_sum(&t, "pipeline_sink_insert_failures_total")
        });
        if failures >= 6.0 {
            eprintln!("{failures} inserts failed while ClickHouse was down");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{failures} inserts failed in 60 s of outage"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(p.is_running(), "the outage stopped the process");
    clickhouse.resume();
    produce_one_per_batch(
        &tansu.bootstrap,
        "readings",
        &data.closing_records(PARTITIONS),
    );
    wait_for_windows(
        &clickhouse,
        "readings_1m",
        reference.len(),
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(2));
    let rows = final_rows(&clickhouse, "readings_1m");
    let metrics = p.metrics().unwrap_or_default();
    let restarts = metric_sum(&metrics, "pipeline_slot_restarts_total");
    // The retries while ClickHouse was down were backpressure: what the autoscaler reads to
    // tell a sink-bound pipeline from one that needs more slots. A retrying insert adds its
    // time when it ends, so this is read after the outage.
    let backpressured = metric_sum(&metrics, "pipeline_backpressured_seconds_total");
    drop(p);
    assert!(
        backpressured >= 1.0,
        "{backpressured} s of backpressure through six failed inserts"
    );
    let comparison = compare(&rows, &reference);
    common::assert_exact(&comparison, &dir);
    assert_eq!(comparison.windows, reference.len());
    assert_eq!(restarts, 0.0, "the outage restarted the slot");
    eprintln!("{} windows exact under FINAL", reference.len());
    common::cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and clickhouse-server (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_table_whose_columns_do_not_fit_is_refused_with_each_difference() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("readings", PARTITIONS)]);
    let clickhouse = ClickHouse::start();
    clickhouse.query(
        "CREATE TABLE misfit (dev String, window_start DateTime, n UInt64) ENGINE = MergeTree ORDER BY dev",
    );
    let dir = scratch("clickhouse-misfit");
    let launch = launch_into_clickhouse(&tansu, &dir, "chmisfit", &clickhouse, "misfit", false);
    let mut p = launch.start("chmisfit-0");
    let url = format!("http://127.0.0.1:{}/readyz", p.metrics_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some((503, body)) = pipeline_e2e::process::http_get(&url)
            && body.contains("does not fit")
        {
            break body;
        }
        assert!(Instant::now() < deadline, "/readyz never named the misfit");
        std::thread::sleep(Duration::from_millis(200));
    };
    for difference in [
        "column `window_start` is DateTime",
        "column `window_end` is missing",
        "column `_version` is missing",
        "engine is MergeTree",
    ] {
        assert!(body.contains(difference), "{difference} not in {body}");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(p.is_running(), "a misfit table must not stop the process");
    let restarts = p
        .metrics()
        .map_or(0.0, |t| metric_sum(&t, "pipeline_slot_restarts_total"));
    assert_eq!(restarts, 0.0, "a misfit table is not retried in a loop");
    drop(p);
    common::cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and clickhouse-server (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn stateless_records_count_once_under_final_across_a_kill_and_misfits_are_dead_lettered() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("events", PARTITIONS), ("events-dlq", 1)]);
    let clickhouse = ClickHouse::start();
    clickhouse.query(
        "CREATE TABLE events_raw (dev String, v Int64, note Nullable(String), _topic String, _partition UInt32, _offset UInt64) ENGINE = ReplacingMergeTree ORDER BY (_topic, _partition, _offset)",
    );
    clickhouse.query("SYSTEM STOP MERGES");
    let dir = scratch("clickhouse-stateless");
    let manifest = dir.join("pipeline.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: chrecords, namespace: e2e}}\nspec:\n  kafka: {{bootstrapServers: 'replaced:9092', properties: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}}}}\n  source: {{topic: events, startingOffsets: earliest}}\n  transform: {{filter: 'record.dev != \"skip\"'}}\n  sink: {{clickhouse: {{url: '{}', table: events_raw, batchRows: 200, batchInterval: 200ms}}}}\n  deadLetter: {{topic: events-dlq}}\n",
            clickhouse.url
        ),
    )
    .unwrap();
    let launch = Launch {
        manifest,
        bootstrap: tansu.bootstrap.clone(),
        slots: 1,
        log_dir: dir.clone(),
    };
    // 6,000 records: every 500th has a string where the table wants an Int64, every 7th is
    // filtered out, the others go to ClickHouse.
    let records: Vec<_> = (0..6_000i64)
        .map(|i| {
            let value = match i {
                i if i % 500 == 499 => format!(r#"{{"dev":"d{}","v":"many"}}"#, i % 13),
                i if i % 7 == 0 => format!(r#"{{"dev":"skip","v":{i}}}"#),
                i => format!(r#"{{"dev":"d{}","v":{i},"extra":true}}"#, i % 13),
            };
            (
                i32::try_from(i % PARTITIONS as i64).unwrap(),
                None,
                value.into_bytes(),
            )
        })
        .collect();
    let misfits: Vec<i64> = (0..6_000).filter(|i| i % 500 == 499).collect();
    let kept: Vec<i64> = (0..6_000)
        .filter(|i| i % 500 != 499 && i % 7 != 0)
        .collect();

    // The first half streams in; the process is killed while it inserts, between two offset
    // commits, so the next one reads and inserts some records again.
    let mut p = launch.start("chrecords-0");
    let producer = stream(
        &tansu.bootstrap,
        "events",
        records[..3_000].to_vec(),
        20,
        Duration::from_millis(200),
    );
    let count = |query: &str| -> usize {
        clickhouse
            .try_query(query)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("SELECT count() FROM events_raw") < 1_000 {
        assert!(Instant::now() < deadline, "nothing reached ClickHouse");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    p.kill();
    producer.join().unwrap();
    // (tansu hands the dead member's partitions over only when another joins: see
    // start_owning_every_partition.)
    let p = start_owning_every_partition(&launch, "chrecords-1");
    produce_one_per_batch(&tansu.bootstrap, "events", &records[3_000..]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while count("SELECT count() FROM events_raw FINAL") < kept.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} records in ClickHouse",
            count("SELECT count() FROM events_raw FINAL"),
            kept.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    let raw = count("SELECT count() FROM events_raw");
    let once = count("SELECT count() FROM events_raw FINAL");
    let sum: i64 = clickhouse
        .query("SELECT sum(v) FROM events_raw FINAL")
        .trim()
        .parse()
        .unwrap();
    let dlq = tansu.consume("events-dlq", Duration::from_secs(30), |o| {
        o.len() >= misfits.len()
    });
    let restarts = p
        .metrics()
        .map_or(0.0, |t| metric_sum(&t, "pipeline_slot_restarts_total"));
    drop(p);
    eprintln!("{raw} rows stored for {once} records: replayed records inserted again");
    assert!(raw > once, "the kill replayed nothing ({raw} rows)");
    assert_eq!(once, kept.len(), "each record once under FINAL");
    assert_eq!(sum, kept.iter().sum::<i64>());
    assert!(dlq.len() >= misfits.len(), "{} dead letters", dlq.len());
    for letter in &dlq {
        assert_eq!(letter.headers["sluice.stage"], "encode");
        assert!(
            letter.headers["sluice.error"].contains("field `v` is \"many\""),
            "{:?}",
            letter.headers
        );
    }
    assert_eq!(restarts, 0.0, "a misfit record restarted the slot");
    common::cleanup(&dir);
}

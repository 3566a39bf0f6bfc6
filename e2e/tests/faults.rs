//! Fault injection around checkpoints: a crash between writing snapshots and committing their
//! offsets, a corrupt snapshot, and a missing one.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    PARTITIONS, await_output, launch, scratch, seed, start_owning_every_partition,
    start_owning_every_partition_with,
};
use pipeline_e2e::{
    broker::{Tansu, metric_sum, produce, produce_one_per_batch},
    dataset::{Dataset, compare},
    process::RuntimeProcess,
};

fn snapshots(dir: &Path, name: &str, partition: i32) -> Vec<PathBuf> {
    let folder = dir
        .join("checkpoints")
        .join(format!("sluice.e2e.{name}"))
        .join("readings")
        .join(partition.to_string());
    let mut files: Vec<_> = std::fs::read_dir(folder)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits up to `timeout` until the process's `/readyz` answers `status` with a body containing
/// `says`; the body.
fn wait_for_readyz(process: &RuntimeProcess, status: u16, says: &str, timeout: Duration) -> String {
    let url = format!("http://127.0.0.1:{}/readyz", process.metrics_port);
    let deadline = Instant::now() + timeout;
    loop {
        let answer = pipeline_e2e::process::http_get(&url);
        if let Some((got, body)) = &answer
            && *got == status
            && body.contains(says)
        {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {status} with {says:?}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the process has read `records` records in all.
fn wait_until_read(process: &RuntimeProcess, records: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let read = process
            .metrics()
            .map_or(0.0, |t| metric_sum(&t, "pipeline_partition_position"));
        if read as usize >= records {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "read {read} of {records} records"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_crash_between_snapshot_write_and_offset_commit_resumes_from_the_previous_checkpoint() {
    let tansu = Tansu::start();
    let seed = seed();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 1)]);
    let data = Dataset::generate(30_000, 60, PARTITIONS, 5, seed);
    let dir = scratch("failpoint");
    let launch = launch(
        &tansu,
        &dir,
        "failpoint",
        "at-least-once",
        "readings",
        "out",
    );
    let (first, rest) = data.records.split_at(15_000);
    // Spread over a few seconds, so several checkpoints find changed state.
    let producer = common::stream(
        &tansu.bootstrap,
        "readings",
        first.to_vec(),
        8,
        Duration::from_millis(700),
    );
    // The third checkpoint crashes between its snapshots and its commit: two were committed.
    let mut p = launch.start_with_env(
        "failpoint-0",
        &[("SLUICE_FAILPOINT", "checkpoint-before-commit:3")],
    );
    assert!(
        p.wait_for_exit(Duration::from_secs(60)),
        "the failpoint was never reached"
    );
    producer.join().unwrap();
    let committed = pipeline_e2e::broker::committed_offsets(
        &tansu.bootstrap,
        "sluice.e2e.failpoint",
        "readings",
        PARTITIONS,
    );
    assert!(
        committed.iter().any(|&o| o > 0),
        "earlier checkpoints committed: {committed:?}"
    );
    // Snapshots past a partition's committed offset: written by the crashed checkpoint.
    let orphans: usize = (0..PARTITIONS)
        .map(|part| {
            let committed = committed[part as usize];
            snapshots(&dir, "failpoint", part)
                .iter()
                .filter(|f| {
                    let name = f.file_name().unwrap().to_string_lossy().into_owned();
                    name[..20].parse::<i64>().unwrap() > committed
                })
                .count()
        })
        .sum();
    assert!(
        orphans > 0,
        "the crashed checkpoint wrote snapshots past the commits"
    );
    // The restart resumes each partition from its committed checkpoint and ignores the orphans.
    let p = start_owning_every_partition(&launch, "failpoint-0");
    produce_one_per_batch(&tansu.bootstrap, "readings", rest);
    produce_one_per_batch(
        &tansu.bootstrap,
        "readings",
        &data.closing_records(PARTITIONS),
    );
    let (comparison, _) = await_output(&tansu, "out", &data.reference(), Duration::from_secs(120));
    let restored = p.metrics().map_or(0.0, |t| {
        metric_sum(&t, "pipeline_restore_duration_seconds_count")
    });
    drop(p);
    common::assert_exact(&comparison, &dir);
    assert!(
        restored >= 1.0,
        "partitions resumed from their committed snapshots"
    );
    common::cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_corrupt_snapshot_falls_back_to_the_one_before_and_a_missing_one_pauses_only_its_partition() {
    let tansu = Tansu::start();
    let seed = seed();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 1)]);
    let data = Dataset::generate(30_000, 60, PARTITIONS, 5, seed);
    let dir = scratch("damaged");
    let launch = launch(&tansu, &dir, "damaged", "at-least-once", "readings", "out");
    let (first, rest) = data.records.split_at(20_000);
    let mut p = launch.start("damaged-0");
    produce_one_per_batch(&tansu.bootstrap, "readings", &first[..10_000]);
    wait_until_read(&p, 10_000);
    std::thread::sleep(Duration::from_secs(2)); // a checkpoint at this position
    produce_one_per_batch(&tansu.bootstrap, "readings", &first[10_000..]);
    wait_until_read(&p, 20_000);
    p.terminate(Duration::from_secs(30)); // final checkpoint
    let corrupt = snapshots(&dir, "damaged", 0);
    assert!(
        corrupt.len() >= 2,
        "partition 0 has a snapshot to fall back to"
    );
    let newest = corrupt.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();
    for file in snapshots(&dir, "damaged", 1) {
        std::fs::remove_file(file).unwrap();
    }

    let p = launch.start("damaged-0");
    produce_one_per_batch(&tansu.bootstrap, "readings", rest);
    produce_one_per_batch(
        &tansu.bootstrap,
        "readings",
        &data.closing_records(PARTITIONS),
    );
    // Partition 1 stays paused, so only the other devices' windows can all arrive.
    let mut reference = data.reference();
    let on_partition_1 = |dev: &str| {
        dev.trim_start_matches("dev-")
            .parse::<i32>()
            .is_ok_and(|d| d % PARTITIONS == 1)
    };
    reference.retain(|(dev, _), _| !on_partition_1(dev));
    let (_, outputs) = await_output(&tansu, "out", &reference, Duration::from_secs(120));
    let text = p.metrics().unwrap_or_default();
    drop(p);
    let device_on_1 = |o: &&pipeline_e2e::broker::Consumed| {
        o.value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .is_some_and(|v| on_partition_1(v["dev"].as_str().unwrap_or("")))
    };
    let (on_1, others): (Vec<_>, Vec<_>) = outputs.iter().partition(device_on_1);
    let others: Vec<_> = others.into_iter().cloned().collect();
    let rest = compare(&others, &reference);
    assert!(
        rest.exact(),
        "every window of the other partitions is exact (logs in {}):\n{}",
        dir.display(),
        rest.problems.join("\n")
    );
    let mut reference_1 = data.reference();
    reference_1.retain(|(dev, _), _| on_partition_1(dev));
    let on_1: Vec<_> = on_1.into_iter().cloned().collect();
    let paused = compare(&on_1, &reference_1);
    assert!(
        paused.problems.iter().all(|p| p.contains("missing")),
        "what partition 1 emitted before the restart is exact: {:#?}",
        paused.problems
    );
    assert!(
        !paused.exact(),
        "partition 1's open windows cannot close while it is paused"
    );
    let failures = |reason: &str| {
        metric_sum(
            &text,
            &format!(
                "pipeline_restore_failures_total{{pipeline=\"damaged\",namespace=\"e2e\",pod=\"damaged-0\",slot=\"0\",result=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(failures("unreadable"), 1.0, "{text}");
    assert_eq!(failures("missing"), 1.0, "{text}");
    let log = std::fs::read_to_string(dir.join("damaged-0.log")).unwrap();
    assert!(log.contains("snapshot unreadable; falling back"), "{log}");
    assert!(log.contains("partition paused"), "{log}");
    common::cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_record_that_makes_a_slot_panic_is_dead_lettered_and_the_process_keeps_running() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("events", 2), ("events-out", 2), ("events-dlq", 1)]);
    let dir = scratch("panic");
    let manifest = dir.join("pipeline.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: panics, namespace: e2e}\nspec:\n  kafka: {bootstrapServers: 'replaced:9092'}\n  source: {topic: events}\n  sink: {kafka: {topic: events-out}}\n  deadLetter: {topic: events-dlq}\n",
    )
    .unwrap();
    // Record 37 makes the slot panic (a stand-in for a bug), on every replay.
    let records: Vec<_> = (0..100)
        .map(|i| {
            let marker = if i == 37 { "PANIC-HERE" } else { "fine" };
            let value = format!(r#"{{"i":{i},"note":"{marker}"}}"#);
            (
                i % 2,
                Some(format!("k{i}").into_bytes()),
                value.into_bytes(),
            )
        })
        .collect();
    produce_one_per_batch(&tansu.bootstrap, "events", &records);
    let launch = pipeline_e2e::process::Launch {
        manifest,
        bootstrap: tansu.bootstrap.clone(),
        slots: 1,
        log_dir: dir.clone(),
    };
    let mut process = launch.start_with_env(
        "panics-0",
        &[("SLUICE_FAILPOINT", "panic-on-record:PANIC-HERE")],
    );
    let dlq = tansu.consume("events-dlq", Duration::from_secs(90), |o| !o.is_empty());
    assert_eq!(dlq.len(), 1, "the record that panicked, once");
    assert_eq!(dlq[0].headers["sluice.stage"], "panic");
    assert!(
        dlq[0].headers["sluice.error"].contains("failpoint panic-on-record reached"),
        "{:?}",
        dlq[0].headers
    );
    assert!(String::from_utf8_lossy(dlq[0].value.as_deref().unwrap()).contains(r#""i":37"#));
    // Every other record is delivered (at least once: the restart replays from the last commit).
    let out = tansu.consume("events-out", Duration::from_secs(90), |o| {
        o.iter()
            .filter_map(|r| r.key.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 99
    });
    let keys: std::collections::BTreeSet<_> = out.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 99);
    assert!(!keys.contains(b"k37".as_slice()));
    assert!(process.is_running(), "a panic must not end the process");
    let metrics = process.metrics().unwrap();
    assert_eq!(metric_sum(&metrics, "pipeline_slot_panics_total"), 1.0);
    // The restarted slot is ready again.
    wait_for_readyz(&process, 200, "ready", Duration::from_secs(30));
    process.terminate(Duration::from_secs(20));
    common::cleanup(&dir);
}

/// The sum of `name`'s series whose labels include `label` (e.g. `result="success"`).
fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits up to 60 s until `check` holds for the process's metrics.
fn wait_for_metrics(process: &RuntimeProcess, what: &str, check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if process.metrics().is_some_and(|t| check(&t)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and moto_server (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn s3_checkpoints_go_on_through_a_store_outage_prune_and_restore_exactly_after_a_crash() {
    use pipeline_e2e::s3::{Link, MotoS3, Proxy};
    let tansu = Tansu::start();
    let seed = seed();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 1)]);
    let data = Dataset::generate(30_000, 60, PARTITIONS, 5, seed);
    let dir = scratch("s3");
    let s3 = MotoS3::start();
    s3.create_bucket("sluice-checkpoints");
    let proxy = Proxy::start(s3.port);
    let launch = launch(&tansu, &dir, "s3ckpt", "at-least-once", "readings", "out");
    // The test pipeline, with its snapshots on S3 (plain http: a test server) behind the proxy.
    let manifest = std::fs::read_to_string(&launch.manifest).unwrap();
    let local = manifest
        .lines()
        .find(|l| l.contains("storage:"))
        .unwrap()
        .to_owned();
    let manifest = manifest.replace(
        &local,
        &format!(
            "    tolerableFailures: 1000\n    storage: {{s3: {{bucket: sluice-checkpoints, region: us-east-1, endpoint: 'http://127.0.0.1:{}'}}}}",
            proxy.port
        ),
    );
    std::fs::write(&launch.manifest, manifest).unwrap();
    let credentials = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ];
    let thirds: Vec<_> = data.records.chunks(10_000).collect();
    produce_one_per_batch(&tansu.bootstrap, "readings", thirds[0]);
    let mut p = launch.start_with_env("s3ckpt-0", &credentials);
    wait_for_metrics(&p, "checkpoints on S3", |t| {
        metric_sum(t, "pipeline_partition_position") >= 10_000.0
            && metric_with(t, "pipeline_checkpoints_total", "result=\"success\"") >= 2.0
    });
    let prefix = "e2e/s3ckpt/sluice.e2e.s3ckpt/readings/";
    assert!(
        s3.keys("sluice-checkpoints", prefix)
            .iter()
            .any(|k| k.ends_with(".snap")),
        "snapshots on S3"
    );

    // The store hangs (accepts, never answers): snapshots are stored off the slot thread, so
    // the slot reads on while a checkpoint waits on the store; then the store times out and the
    // checkpoints fail, tolerated.
    proxy.set(Link::Hung);
    let (early, late) = thirds[1].split_at(thirds[1].len() / 2);
    produce(&tansu.bootstrap, "readings", early);
    wait_for_metrics(&p, "a checkpoint waiting on the hung store", |t| {
        metric_sum(t, "pipeline_checkpoint_in_progress") >= 1.0
    });
    produce(&tansu.bootstrap, "readings", late);
    // Read while that checkpoint still waits (its store times out after 10 s): a slot that
    // wrote its snapshots itself would read nothing until the write failed.
    wait_for_metrics(
        &p,
        "processing while a checkpoint waits on the store",
        |t| {
            assert_eq!(
                metric_with(t, "pipeline_checkpoints_total", "result=\"failure\""),
                0.0,
                "a checkpoint failed before the slot had read what was produced during the outage"
            );
            metric_sum(t, "pipeline_partition_position") >= 20_000.0
        },
    );
    wait_for_metrics(&p, "checkpoints failing through the outage", |t| {
        metric_sum(t, "pipeline_checkpoint_failures_in_a_row") >= 1.0
    });
    // A store that is gone (connections reset) fails checkpoints too.
    proxy.set(Link::Down);
    let failed = metric_with(
        &p.metrics().unwrap(),
        "pipeline_checkpoints_total",
        "result=\"failure\"",
    );
    wait_for_metrics(&p, "more checkpoints failing with the store gone", |t| {
        metric_with(t, "pipeline_checkpoints_total", "result=\"failure\"") > failed
    });
    assert!(p.is_running());
    assert_eq!(
        metric_sum(&p.metrics().unwrap(), "pipeline_slot_restarts_total"),
        0.0
    );
    // Back: checkpoints succeed again, and old snapshots are pruned.
    proxy.set_up(true);
    wait_for_metrics(&p, "a checkpoint after the outage", |t| {
        metric_sum(t, "pipeline_checkpoint_failures_in_a_row") == 0.0
    });
    std::thread::sleep(Duration::from_secs(3));
    for partition in 0..PARTITIONS {
        let snapshots = s3
            .keys("sluice-checkpoints", &format!("{prefix}{partition}/"))
            .len();
        // retain 3 committed ones, plus at most one written but not committed yet.
        assert!(
            (1..=4).contains(&snapshots),
            "partition {partition}: {snapshots} snapshots"
        );
    }

    // A crash: the next process restores every partition from S3 and the output is exact.
    p.kill();
    let p = start_owning_every_partition_with(&launch, "s3ckpt-1", &credentials);
    produce_one_per_batch(&tansu.bootstrap, "readings", thirds[2]);
    produce_one_per_batch(
        &tansu.bootstrap,
        "readings",
        &data.closing_records(PARTITIONS),
    );
    let (comparison, _) = await_output(&tansu, "out", &data.reference(), Duration::from_secs(120));
    let restored = metric_with(
        &p.metrics().unwrap_or_default(),
        "pipeline_restore_duration_seconds_count",
        "",
    );
    drop(p);
    common::assert_exact(&comparison, &dir);
    assert!(restored >= 1.0, "partitions restored from S3");
    common::cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_changed_window_pauses_partitions_and_says_so_unless_on_incompatible_state_is_reset() {
    let tansu = Tansu::start();
    let seed = seed();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 1)]);
    let data = Dataset::generate(12_000, 60, PARTITIONS, 5, seed);
    let dir = scratch("incompatible");
    let launch = launch(&tansu, &dir, "changed", "at-least-once", "readings", "out");
    let (first, rest) = data.records.split_at(6_000);
    produce_one_per_batch(&tansu.bootstrap, "readings", first);
    let mut p = start_owning_every_partition(&launch, "changed-0");
    wait_until_read(&p, first.len());
    std::thread::sleep(Duration::from_secs(3)); // a checkpoint or two
    p.terminate(Duration::from_secs(30));

    // The window changes: every snapshot's fingerprint differs from the pipeline's.
    let original = std::fs::read_to_string(&launch.manifest).unwrap();
    let changed = original.replace("tumbling: {size: 10s}", "tumbling: {size: 20s}");
    assert_ne!(changed, original);
    std::fs::write(&launch.manifest, &changed).unwrap();
    let p = start_owning_every_partition(&launch, "changed-1");
    wait_for_metrics(&p, "paused partitions", |t| {
        metric_sum(t, "pipeline_partition_paused") == f64::from(PARTITIONS)
    });
    let body = wait_for_readyz(
        &p,
        503,
        "partitions paused because their state cannot be restored",
        Duration::from_secs(10),
    );
    assert!(body.contains("readings/0"), "{body}");
    drop(p);

    // With reset, the partitions start empty from their committed offsets and run.
    let reset = changed.replace(
        "    retain: 3\n",
        "    retain: 3\n    onIncompatibleState: reset\n",
    );
    assert_ne!(reset, changed);
    std::fs::write(&launch.manifest, &reset).unwrap();
    let p = start_owning_every_partition(&launch, "changed-2");
    wait_for_metrics(&p, "state resets", |t| {
        metric_sum(t, "pipeline_state_resets_total") == f64::from(PARTITIONS)
            && metric_sum(t, "pipeline_partition_paused") == 0.0
    });
    produce_one_per_batch(&tansu.bootstrap, "readings", rest);
    wait_until_read(&p, data.records.len());
    wait_for_readyz(&p, 200, "ready", Duration::from_secs(30));
    drop(p);
    common::cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and moto_server (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_broker_outage_mid_stream_reads_not_ready_loses_nothing_and_recovers_by_itself() {
    use pipeline_e2e::s3::MotoS3;
    let s3 = MotoS3::start();
    // tansu keeps its log on S3, so it comes back with it after being killed.
    let mut tansu = Tansu::start_durable(&s3);
    let seed = seed();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 1)]);
    // Few records: each is a record batch of its own, an object on S3 for this tansu.
    let data = Dataset::generate(1_200, 24, PARTITIONS, 25, seed);
    let dir = scratch("outage");
    let launch = launch(&tansu, &dir, "outage", "at-least-once", "readings", "out");
    let (first, rest) = data.records.split_at(600);
    produce_one_per_batch(&tansu.bootstrap, "readings", first);
    let mut p = start_owning_every_partition(&launch, "outage-0");
    wait_until_read(&p, first.len());

    tansu.kill();
    wait_for_readyz(
        &p,
        503,
        "no Kafka broker reachable",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(p.is_running(), "the process outlives the outage");

    tansu.restart();
    produce_one_per_batch(&tansu.bootstrap, "readings", rest);
    produce_one_per_batch(
        &tansu.bootstrap,
        "readings",
        &data.closing_records(PARTITIONS),
    );
    let (comparison, _) = await_output(&tansu, "out", &data.reference(), Duration::from_secs(180));
    wait_for_readyz(&p, 200, "ready", Duration::from_secs(60));
    let restarts = p
        .metrics()
        .map_or(0.0, |t| metric_sum(&t, "pipeline_slot_restarts_total"));
    eprintln!("slot restarts through the outage: {restarts}");
    assert!(p.is_running());
    drop(p);
    common::assert_exact(&comparison, &dir);
    common::cleanup(&dir);
}

//! `pipeline-operator demo`: autoscaling with nothing installed. An embedded Kafka (librdkafka's
//! mock cluster on 127.0.0.1), a load generator whose rate steps above one slot's capacity and
//! falls again, and the IoT pipeline in local mode with the autoscaler on (direct scrape). It
//! shows each decision with its reason, ends with a summary and a chart, and checks every window
//! of the output against a reference computed from the input topic.
//!
//! Each record gets simulated work (`SLUICE_SIMULATED_RECORD_COST`, counted as busy time), so a
//! slot's capacity is `--slot-capacity` records per second and the scaling is visible on a
//! laptop without saturating it.

pub mod chart;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::IsTerminal,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use pipeline_crds::contract::{env, headers};
use pipeline_runtime::loadgen::{self, Counters, LoadOptions, Profile, Shape, Workload};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
};
use serde_json::Value;

use crate::local::{LocalError, LocalOptions, LocalRun, Tick, clock_time, localize, status_line};

/// The demo's pipeline.
pub const MANIFEST: &str = include_str!("../../demo/iot-autoscaling.yaml");
const INPUT: &str = "iot-sensor-data";
const OUTPUT: &str = "sensor-aggregates";
const DEAD_LETTERS: &str = "iot-dlq";
const LATE: &str = "iot-late";
const WINDOW_MS: i64 = 10_000;

/// Demo parameters.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// Peak input rate (records per second); the low steps are a fifth of it.
    pub peak_rate: f64,
    /// Source partitions.
    pub partitions: i32,
    /// One slot's capacity, records per second.
    pub slot_capacity: f64,
    /// Working directory (chart, logs, checkpoints).
    pub dir: PathBuf,
    /// The runtime command.
    pub runtime: Vec<OsString>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The embedded Kafka cluster.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Local mode.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The load generator.
    #[error("load generator: {0}")]
    Load(#[from] loadgen::LoadgenError),
    /// Files.
    #[error("{0}")]
    Io(String),
}

/// One point of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Seconds since the demo started.
    pub t: f64,
    /// The load generator's target rate.
    pub target_rate: f64,
    /// Measured arrival rate.
    pub arrival_rate: Option<f64>,
    /// Measured processing rate.
    pub processing_rate: Option<f64>,
    /// Records not consumed yet.
    pub lag: Option<f64>,
    /// Slots running.
    pub parallelism: i32,
}

/// A decision that changed the parallelism.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Seconds since the demo started.
    pub t: f64,
    /// ScaleUp or ScaleDown.
    pub result: String,
    /// Why.
    pub reason: String,
    /// Parallelism before and after.
    pub from: i32,
    /// Parallelism after.
    pub to: i32,
}

/// What the demo saw.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Records the load generator wrote (closing records included).
    pub records_in: u64,
    /// Window results read from the output topic (repeats included).
    pub records_out: u64,
    /// Distinct (device, window) results.
    pub windows: usize,
    /// Windows the reference expects.
    pub expected_windows: usize,
    /// Windows that differ from the reference or are missing (must be empty).
    pub mismatches: Vec<String>,
    /// Malformed records written, and distinct dead letters read back (by source offset).
    pub dead_letters: (u64, u64),
    /// Records routed to the late-data topic.
    pub late: u64,
    /// Decisions that changed the parallelism.
    pub decisions: Vec<Decision>,
    /// Highest lag seen.
    pub peak_lag: f64,
    /// Seconds from the peak lag until the lag was below one second of input again.
    pub drain_seconds: Option<f64>,
    /// Every second of the run.
    pub points: Vec<Point>,
    /// The chart.
    pub chart: Option<PathBuf>,
}

impl DemoReport {
    /// Whether every window matches and every malformed record was dead-lettered.
    pub fn exact(&self) -> bool {
        self.mismatches.is_empty()
            && self.windows == self.expected_windows
            && self.dead_letters.0 == self.dead_letters.1
            && self.late == 0
    }
}

/// The rate profile: a fifth of the peak, the peak, a fifth again (20% / 40% / 40%).
pub fn profile(duration: Duration, peak: f64) -> Profile {
    let part = |share: f64| Duration::from_secs_f64(duration.as_secs_f64() * share);
    Profile::Steps(vec![
        (peak / 5.0, part(0.2)),
        (peak, part(0.4)),
        (peak / 5.0, part(0.4)),
    ])
}

/// (count, sum, min, max) of temperature per (device, window start).
type Reference = BTreeMap<(String, i64), (u64, f64, f64, f64)>;

/// Every record of `topic` (all partitions, up to their current ends).
fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> Result<Vec<Vec<u8>>, DemoError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-demo-reference")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > 0 {
            ends.insert(p, high);
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut values = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ends
        .iter()
        .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
    {
        if Instant::now() > deadline {
            return Err(DemoError::Io(format!("reading {topic} back timed out")));
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            next.insert(m.partition(), m.offset() + 1);
            values.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    Ok(values)
}

/// The reference windows of the input: well-formed readings passing the filter, except the
/// closing records (their windows never close).
fn reference(values: &[Vec<u8>]) -> (Reference, u64) {
    let mut windows = Reference::new();
    let mut malformed = 0;
    for bytes in values {
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            malformed += 1;
            continue;
        };
        let (Some(device), Some(ts), Some(t)) = (
            v["device_id"].as_str(),
            v["ts"].as_i64(),
            v["temperature"].as_f64(),
        ) else {
            malformed += 1;
            continue;
        };
        if device.starts_with("close-") || t <= 0.0 {
            continue;
        }
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let e = windows
            .entry((device.to_owned(), start))
            .or_insert((0, 0.0, f64::MAX, f64::MIN));
        e.0 += 1;
        e.1 += t;
        e.2 = e.2.min(t);
        e.3 = e.3.max(t);
    }
    (windows, malformed)
}

#[derive(Default)]
struct Output {
    windows: BTreeMap<(String, i64), Value>,
    repeats_differing: Vec<String>,
    records: u64,
    /// Dead letters by source (partition, offset): a replay may write one twice.
    dead_letters: std::collections::BTreeSet<(String, String)>,
    late: u64,
}

/// Reads the output, dead-letter and late topics into `output` until `stop`.
fn read_output(
    bootstrap: String,
    output: Arc<Mutex<Output>>,
    stop: Arc<AtomicBool>,
) -> Result<(), DemoError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "sluice-demo-output")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[OUTPUT, DEAD_LETTERS, LATE])?;
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let mut out = output.lock().expect("not poisoned");
        match m.topic() {
            DEAD_LETTERS => {
                let header = |name: &str| {
                    use rdkafka::message::Headers;
                    m.headers()
                        .and_then(|h| h.iter().find(|x| x.key == name))
                        .and_then(|x| x.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                let source = (
                    header(headers::SOURCE_PARTITION),
                    header(headers::SOURCE_OFFSET),
                );
                out.dead_letters.insert(source);
            }
            LATE => out.late += 1,
            _ => {
                out.records += 1;
                let Some(value) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                else {
                    continue;
                };
                let key = pipeline_runtime::demo::window_key(&value, "device_id");
                if let Some(before) = out.windows.get(&key)
                    && *before != value
                {
                    let note = format!("{}@{}: {before} then {value}", key.0, key.1);
                    out.repeats_differing.push(note);
                }
                out.windows.insert(key, value);
            }
        }
    }
    Ok(())
}

fn compare(expected: &Reference, got: &BTreeMap<(String, i64), Value>) -> Vec<String> {
    let mut mismatches = Vec::new();
    for ((device, start), (count, sum, min, max)) in expected {
        let Some(v) = got.get(&(device.clone(), *start)) else {
            mismatches.push(format!("{device}@{start}: missing"));
            continue;
        };
        let avg = sum / *count as f64;
        let close =
            |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0));
        let ok = v["readings"].as_u64() == Some(*count)
            && close(v["avg_temperature"].as_f64(), avg)
            && v["min_temperature"].as_f64() == Some(*min)
            && v["max_temperature"].as_f64() == Some(*max);
        if !ok {
            mismatches.push(format!(
                "{device}@{start}: got {v}, expected readings {count} avg {avg} min {min} max {max}"
            ));
        }
    }
    for key in got.keys() {
        if !key.0.starts_with("close-") && !expected.contains_key(key) {
            mismatches.push(format!("{}@{}: not in the input", key.0, key.1));
        }
    }
    mismatches
}

/// What [`check`] found.
#[derive(Clone, Debug)]
pub struct Check {
    /// Records in the input topic.
    pub input_records: usize,
    /// Windows the reference expects.
    pub expected_windows: usize,
    /// Windows that differ from the reference, are missing, or were written twice with
    /// different values (must be empty).
    pub mismatches: Vec<String>,
}

/// Checks the output of the demo pipeline (`operator/demo/iot-autoscaling.yaml`, e.g. run in a
/// cluster with `manifests/dev/`) on the Kafka at `bootstrap`: every window of the input topic,
/// computed here, must be in the output topic with the same values. Waits up to `timeout` for
/// the last windows.
pub fn check(bootstrap: &str, partitions: i32, timeout: Duration) -> Result<Check, DemoError> {
    let values = read_all(bootstrap, INPUT, partitions)?;
    let (expected, _) = reference(&values);
    let output = Arc::new(Mutex::new(Output::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (bootstrap, output, stop) = (bootstrap.to_owned(), output.clone(), stop.clone());
        std::thread::spawn(move || read_output(bootstrap, output, stop))
    };
    let deadline = Instant::now() + timeout;
    loop {
        let complete = {
            let out = output.lock().expect("not poisoned");
            expected.keys().all(|k| out.windows.contains_key(k))
        };
        if complete || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Repeats still in flight are part of what is checked.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| DemoError::Io("the output reader panicked".into()))??;
    let out = std::mem::take(&mut *output.lock().expect("not poisoned"));
    let mut mismatches = compare(&expected, &out.windows);
    mismatches.extend(out.repeats_differing);
    Ok(Check {
        input_records: values.len(),
        expected_windows: expected.len(),
        mismatches,
    })
}

fn print_tick(tty: bool, t: f64, target: f64, tick: &Tick) {
    if tty {
        eprint!("\r\x1b[K");
    }
    for h in &tick.happenings {
        // Decisions get their own line (with the parallelism change); processes are news here.
        if h.reason.starts_with("Process") {
            eprintln!("{} {:<17} {}", clock_time(h.at), h.reason, h.note);
        }
    }
    let line = format!("{:>4.0}s load {:>5.0}/s | {}", t, target, status_line(tick));
    if tty {
        let width = crate::terminal::stderr_width().unwrap_or(usize::MAX);
        eprint!("{}", crate::terminal::fit(&line, width));
    } else if tick.evaluated {
        eprintln!("{line}");
    }
}

/// The parallelism the autoscaler decided last.
fn decided(run: &LocalRun) -> Option<i32> {
    run.pd
        .status
        .as_ref()
        .and_then(|s| s.autoscaler.as_ref())
        .and_then(|a| a.decided_parallelism)
}

/// Local mode's options for the demo: the embedded broker, the demo's directory, and a
/// simulated record cost that makes one slot handle `slot_capacity` records per second.
fn local_options(options: &DemoOptions, bootstrap: &str) -> LocalOptions {
    LocalOptions {
        file: PathBuf::from("(embedded demo manifest)"),
        bootstrap_servers: Some(bootstrap.to_owned()),
        prometheus: None,
        dir: options.dir.join("local"),
        runtime: options.runtime.clone(),
        targets_file: None,
        env: vec![(
            env::SIMULATED_RECORD_COST.to_owned(),
            format!(
                "{}us",
                (1e6 / options.slot_capacity.max(1.0)).round() as u64
            ),
        )],
    }
}

/// The demo's manifest as local mode runs it, its parallelism capped at the partitions.
fn demo_pipeline(
    options: &DemoOptions,
    local: &LocalOptions,
) -> Result<pipeline_crds::PipelineDeployment, DemoError> {
    let mut pd = pipeline_crds::manifest::from_yaml(MANIFEST, "demo manifest")
        .map_err(|e| DemoError::Io(e.to_string()))?;
    localize(&mut pd, local);
    if let Some(a) = pd.spec.autoscaler.as_mut() {
        a.max_parallelism = a.max_parallelism.map(|m| m.min(options.partitions));
    }
    Ok(pd)
}

/// Starts the load generator's thread on the demo's input topic.
fn start_load(
    bootstrap: &str,
    profile: &Profile,
    counters: &Arc<Counters>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<loadgen::LoadReport, loadgen::LoadgenError>> {
    let options = LoadOptions {
        bootstrap_servers: bootstrap.to_owned(),
        topic: INPUT.into(),
        workload: Workload::IotJson,
        shape: Shape {
            keys: 1_000,
            out_of_order: 0.05,
            max_disorder_ms: 2_000,
            malformed: 0.001,
            ..Shape::default()
        },
        profile: profile.clone(),
        seed: 42,
        schema_registry: None,
        properties: Vec::new(),
        close_after_ms: Some(WINDOW_MS + 5_000),
        profiles: None,
    };
    let (c, s) = (counters.clone(), stop.clone());
    std::thread::spawn(move || loadgen::run(&options, &c, &s))
}

/// Fills in `report` from what was read back and the expected result: counts, mismatches, the
/// peak lag and how long it took to drain.
fn complete_report(
    report: &mut DemoReport,
    out: Output,
    expected: Option<(Reference, u64)>,
    sent: u64,
    peak_rate: f64,
) {
    report.records_in = sent;
    report.records_out = out.records;
    report.windows = out
        .windows
        .keys()
        .filter(|k| !k.0.starts_with("close-"))
        .count();
    report.late = out.late;
    let (windows, malformed) = expected.unwrap_or_default();
    report.expected_windows = windows.len();
    report.dead_letters = (malformed, out.dead_letters.len() as u64);
    report.mismatches = compare(&windows, &out.windows);
    report.mismatches.extend(out.repeats_differing);
    let lags: Vec<(f64, f64)> = report
        .points
        .iter()
        .filter_map(|p| Some((p.t, p.lag?)))
        .collect();
    if let Some(&(peak_t, peak)) = lags.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        report.peak_lag = peak;
        let one_second = peak_rate / 5.0;
        report.drain_seconds = lags
            .iter()
            .find(|(t, lag)| *t > peak_t && *lag <= one_second)
            .map(|(t, _)| t - peak_t);
    }
}

/// Runs the demo until done or `stop`.
pub async fn run(
    options: &DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| DemoError::Io(format!("creating {}: {e}", options.dir.display())))?;
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    for (topic, partitions) in [
        (INPUT, options.partitions),
        (OUTPUT, options.partitions),
        (DEAD_LETTERS, 1),
        (LATE, 1),
    ] {
        cluster.create_topic(topic, partitions, 1)?;
    }
    let local = local_options(options, &bootstrap);
    let _ = std::fs::remove_dir_all(&local.dir);
    let pd = demo_pipeline(options, &local)?;
    let profile = profile(options.duration, options.peak_rate);
    eprintln!(
        "Sluice autoscaling demo: embedded Kafka at {bootstrap}, topic {INPUT} with {} partitions.",
        options.partitions
    );
    eprintln!(
        "Load {profile} (IoT readings, 1,000 devices); one slot handles about {:.0} records/s; 2 slots per process.",
        options.slot_capacity
    );
    eprintln!(
        "Files, logs and the chart go to {}.\n",
        options.dir.display()
    );

    let output = Arc::new(Mutex::new(Output::default()));
    let reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let (b, o, s) = (bootstrap.clone(), output.clone(), reading.clone());
        std::thread::spawn(move || read_output(b, o, s))
    };
    let counters = Arc::new(Counters::default());
    let load_stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&bootstrap, &profile, &counters, &load_stop);

    let mut run = LocalRun::new(pd, &local)?;
    let tty = std::io::stderr().is_terminal();
    let mut report = DemoReport::default();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(stop);
    let mut expected: Option<(Reference, u64)> = None;
    let mut finish_by: Option<Instant> = None;
    let mut interrupted = false;
    let mut last_parallelism = 0;
    loop {
        tokio::select! {
            () = &mut stop => { interrupted = true; break; }
            _ = ticker.tick() => {}
        }
        let tick = run.step().await?;
        let t = started.elapsed().as_secs_f64();
        let target = counters.target_rate();
        print_tick(tty, t, target, &tick);
        if tick.evaluated
            && last_parallelism > 0
            && let Some((result, reason)) = &tick.decision
            && (result == "ScaleUp" || result == "ScaleDown")
        {
            let to = decided(&run).unwrap_or(tick.parallelism);
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!(
                "{} {result} {last_parallelism} → {to}: {reason}",
                clock_time(tick.at)
            );
            report.decisions.push(Decision {
                t,
                result: result.clone(),
                reason: reason.clone(),
                from: last_parallelism,
                to,
            });
        }
        if tick.parallelism > 0 {
            last_parallelism = decided(&run).unwrap_or(tick.parallelism);
        }
        report.points.push(Point {
            t,
            target_rate: target,
            arrival_rate: tick.arrival_rate,
            processing_rate: tick.processing_rate,
            lag: tick.lag,
            parallelism: tick.parallelism,
        });
        if expected.is_none() && load.is_finished() {
            let (b, partitions) = (bootstrap.clone(), options.partitions);
            let values = tokio::task::spawn_blocking(move || read_all(&b, INPUT, partitions))
                .await
                .map_err(|e| DemoError::Io(e.to_string()))??;
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!(
                "load done: {} records written; waiting for the last windows to close",
                values.len()
            );
            expected = Some(reference(&values));
            finish_by = Some(Instant::now() + Duration::from_secs(90));
        }
        if let (Some((windows, _)), Some(by)) = (&expected, finish_by) {
            let have = output.lock().expect("not poisoned").windows.len();
            // The closing records' own windows never close: everything else must arrive. The
            // demo also waits (within the same limit) for the scale-down after the load fell.
            let scaled_down = report.decisions.iter().any(|d| d.result == "ScaleDown");
            if (have >= windows.len() && scaled_down) || Instant::now() > by {
                break;
            }
        }
    }
    if tty {
        eprintln!();
    }
    load_stop.store(true, Ordering::Relaxed);
    let sent = match load.join() {
        Ok(Ok(r)) => r.sent,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(DemoError::Io("the load generator panicked".into())),
    };
    // Let the last dead letters arrive before counting them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    reading.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let backend = run.backend.clone();
    tokio::task::spawn_blocking(move || backend.shutdown(Duration::from_secs(30)))
        .await
        .map_err(|e| DemoError::Io(e.to_string()))?;
    drop(cluster);

    let out = std::mem::take(&mut *output.lock().expect("not poisoned"));
    complete_report(&mut report, out, expected, sent, options.peak_rate);
    let path = options.dir.join("autoscaling.svg");
    match chart::draw(&path, &report.points, &report.decisions) {
        Ok(()) => report.chart = Some(path),
        Err(e) => eprintln!("demo: no chart: {e}"),
    }
    summarize(&report, interrupted, started.elapsed());
    Ok(report)
}

fn summarize(report: &DemoReport, interrupted: bool, took: Duration) {
    println!();
    println!(
        "Summary ({:.0} s{})",
        took.as_secs_f64(),
        if interrupted { ", interrupted" } else { "" }
    );
    println!(
        "  records in: {}   window results out: {} ({} distinct windows)",
        report.records_in, report.records_out, report.windows
    );
    println!(
        "  malformed records: {} written, {} in the dead-letter topic; late records: {}",
        report.dead_letters.0, report.dead_letters.1, report.late
    );
    println!(
        "  peak lag: {:.0} records; drained {}",
        report.peak_lag,
        report
            .drain_seconds
            .map_or_else(|| "-".into(), |s| format!("{s:.0} s after the peak"))
    );
    println!("  decisions:");
    if report.decisions.is_empty() {
        println!("    none changed the parallelism");
    }
    for d in &report.decisions {
        println!(
            "    {:>4.0}s {} {} → {}: {}",
            d.t, d.result, d.from, d.to, d.reason
        );
    }
    if let Some(chart) = &report.chart {
        println!("  chart: {}", chart.display());
    }
    if report.exact() {
        println!(
            "  check: all {} windows match the reference computed from the input topic",
            report.expected_windows
        );
    } else {
        println!(
            "  check: FAILED — {} of {} windows differ or are missing; {} of {} malformed records dead-lettered; {} late",
            report.mismatches.len(),
            report.expected_windows,
            report.dead_letters.1,
            report.dead_letters.0,
            report.late
        );
        for m in report.mismatches.iter().take(10) {
            println!("    {m}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_steps_above_and_back_below_the_peak_within_the_duration() {
        let p = profile(Duration::from_secs(100), 2_500.0);
        assert_eq!(p.duration(), Some(Duration::from_secs(100)));
        assert_eq!(p.rate_at(Duration::from_secs(10)), Some(500.0));
        assert_eq!(p.rate_at(Duration::from_secs(30)), Some(2_500.0));
        assert_eq!(p.rate_at(Duration::from_secs(90)), Some(500.0));
    }

    #[test]
    fn the_reference_skips_malformed_filtered_and_closing_records_and_the_check_finds_differences()
    {
        let values: Vec<Vec<u8>> = [
            r#"{"device_id":"d1","ts":10001,"temperature":2.0}"#,
            r#"{"device_id":"d1","ts":19999,"temperature":4.0}"#,
            r#"{"device_id":"d1","ts":19000,"temperature":-1.0}"#,
            r#"{"device_id":"close-0","ts":99000,"temperature":5.0}"#,
            r#"{"device_id": broken"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let (windows, malformed) = reference(&values);
        assert_eq!(malformed, 1);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[&("d1".into(), 10_000)], (2, 6.0, 2.0, 4.0));
        let mut got = BTreeMap::new();
        let ok: Value = serde_json::from_str(r#"{"device_id":"d1","window_start":10000,"readings":2,"avg_temperature":3.0,"min_temperature":2.0,"max_temperature":4.0}"#).unwrap();
        got.insert(("d1".to_owned(), 10_000), ok.clone());
        assert!(compare(&windows, &got).is_empty());
        let mut wrong = ok;
        wrong["readings"] = 3.into();
        got.insert(("d1".to_owned(), 10_000), wrong);
        assert_eq!(compare(&windows, &got).len(), 1);
        got.clear();
        assert_eq!(
            compare(&windows, &got),
            vec!["d1@10000: missing".to_owned()]
        );
    }
}

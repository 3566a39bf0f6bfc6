//! Backlog benchmark (seed 003's method): preload N records into a broker, start the release
//! `pipeline-runtime run` with K slots on the backlog, wait until it has consumed all N (and, for
//! windowed jobs, emitted every window), and report records per CPU-second of the runtime process
//! only (user + sys from /proc, split into slot threads, librdkafka threads and the rest), wall
//! throughput, resident memory, and the broker's CPU separately.
//!
//! ```text
//! cargo bench -p pipeline-runtime --bench backlog                  # every job, 1 and 2 slots
//! SLUICE_BENCH_RECORDS=5000000 SLUICE_BENCH_JOBS=iot-windowed SLUICE_BENCH_SLOTS=1,2,4 \
//!   cargo bench -p pipeline-runtime --bench backlog
//! SLUICE_BENCH_BROKER=mock ...   # librdkafka's mock cluster (3 brokers) in this process, not tansu
//! SLUICE_BENCH_PARTITIONS=16 ... # source partitions (default 4): at least the largest slot count
//! SLUICE_BENCH_WRITE_JSONL=/tmp/readings.jsonl ...  # only write the data set as JSON lines
//! ```
//!
//! Jobs: `passthrough` (JSON in, the same bytes out after a syntax check: the runtime's floor on
//! this machine, consume + produce), `stateless`
//! (JSON, a CEL filter and a projection), `iot-windowed` (source keyed by device, 1-minute tumbling
//! window, count/avg/min/max), `iot-windowed-cel` (the same behind a two-clause CEL filter),
//! `iot-repartitioned` (the same, re-keyed through the repartition topic), `iot-windowed-avro`
//! (`iot-windowed` on the same readings as plain Avro datums with an inline schema, preloaded into
//! a second topic only when that job runs), `clickstream-sessions` (the seed-001 job's shape:
//! click events of 200,000 users keyed by user, heartbeats filtered out, 10-second session
//! windows, count and sum; preloaded into a third topic only when it runs), `iot-windowed-last`
//! (`iot-windowed` plus `last(site)`) and `iot-windowed-enriched` (the same, joined with a
//! 100,000-row device table as of event time, taking `last(device.region)`; the table is
//! preloaded only when it runs, and its reader's CPU counts as the runtime's). The readings are
//! ≈240-byte JSON sensor readings of 100,000 devices, generated with the same bytes on every run.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pipeline_e2e::{
    broker::{Tansu, metric_sum},
    process::{free_port, runtime_binary},
};
use pipeline_runtime::{
    loadgen::{Generator, Shape, Workload},
    produce::{AfterWait, send_with_backpressure},
};
use rdkafka::{
    ClientConfig,
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, Producer},
};

/// Source partitions (`SLUICE_BENCH_PARTITIONS`, default 4; at least the largest slot count).
fn partitions() -> i32 {
    std::env::var("SLUICE_BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}
const DEVICES: u64 = 100_000;
const SOURCE: &str = "readings";
/// The same readings as plain Avro datums (`iot-windowed-avro`).
const AVRO_SOURCE: &str = "readings-avro";
/// Click events of [`USERS`] users (`clickstream-sessions`), at the readings' event-time rate.
const CLICKS_SOURCE: &str = "clicks";
const USERS: u64 = 200_000;
/// The reference table of `iot-windowed-enriched`: a row per device (owner, region), loaded
/// before the job starts.
const DEVICE_TABLE: &str = "devices";
/// The session job's gap: a user's events arrive every 4 s on average, so a session holds about
/// a dozen of them.
const SESSION_GAP_MS: u64 = 10_000;

struct Job {
    name: &'static str,
    /// Reads the Avro copy of the readings.
    avro: bool,
    /// Reads the click events ([`CLICKS_SOURCE`]) instead of the readings.
    clicks: bool,
    /// Joins the device table ([`DEVICE_TABLE`]).
    table: bool,
    /// Whether the job drops the `degraded` readings (its windows are those of the others).
    filtered: bool,
    /// The `spec:` lines after kafka/source.
    spec: &'static str,
    windowed: bool,
}

const JOBS: &[Job] = &[
    Job {
        name: "passthrough",
        avro: false,
        clicks: false,
        table: false,
        filtered: false,
        spec: "  sink: {kafka: {topic: out}}\n",
        windowed: false,
    },
    Job {
        name: "stateless",
        avro: false,
        clicks: false,
        table: false,
        filtered: false,
        spec: "  transform:\n    filter: 'record.temperature > -50.0 && record.status == \"ok\"'\n    select: [device_id, ts, temperature, humidity]\n  sink: {kafka: {topic: out}}\n",
        windowed: false,
    },
    Job {
        name: "iot-windowed",
        avro: false,
        clicks: false,
        table: false,
        filtered: false,
        spec: "  transform: {keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
    Job {
        name: "iot-windowed-cel",
        avro: false,
        clicks: false,
        table: false,
        filtered: true,
        spec: "  transform: {filter: 'record.temperature > -50.0 && record.status == \"ok\"', keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
    Job {
        name: "iot-repartitioned",
        avro: false,
        clicks: false,
        table: false,
        filtered: false,
        spec: "  transform: {keyBy: device_id, repartition: always, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
    Job {
        name: "iot-windowed-avro",
        avro: true,
        clicks: false,
        table: false,
        filtered: false,
        spec: "  transform: {keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
    Job {
        name: "iot-windowed-last",
        avro: false,
        clicks: false,
        table: false,
        filtered: false,
        spec: "  transform: {keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n    - {name: region, function: last, field: site}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
    Job {
        name: "iot-windowed-enriched",
        avro: false,
        clicks: false,
        table: true,
        filtered: false,
        spec: "  enrich: [{name: device, topic: devices, lookup: device_id, fields: [owner, region]}]\n  transform: {keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 5s}}\n  window: {tumbling: {size: 1m}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n    - {name: region, function: last, field: device.region}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
    Job {
        name: "clickstream-sessions",
        avro: false,
        clicks: true,
        table: false,
        filtered: false,
        spec: "  transform: {filter: 'record.event_type != \"heartbeat\"', keyBy: user_id, sourceKeyed: true, timestamp: {field: event_time}, watermark: {maxOutOfOrderness: 5s}}\n  window: {session: {gap: 10s}}\n  aggregates:\n    - {name: clicks, function: count}\n    - {name: revenue, function: sum, field: price}\n  sink: {kafka: {topic: out}}\n",
        windowed: true,
    },
];

/// Event time of reading `i`: 50,000 readings per second of event time, so each of the 100,000
/// devices sends a reading every 2 s (30 per 1-minute window) and 5M readings span 100 s.
fn event_ms(i: u64) -> u64 {
    1_700_000_000_000 + i / 50
}

/// The load generator's IoT readings (≈240 bytes of JSON) of 100,000 devices, the same bytes on
/// every run.
fn readings() -> Generator {
    readings_as(false)
}

/// The same readings (the same draws, so the same keys, times and values), as JSON or as Avro
/// in the Confluent wire format with schema id 1 (the preload strips the 5-byte header).
fn readings_as(avro: bool) -> Generator {
    Generator::new(
        if avro {
            Workload::IotAvro
        } else {
            Workload::IotJson
        },
        Shape {
            keys: DEVICES,
            ..Shape::default()
        },
        42,
        avro.then_some(1),
    )
}

/// The producer of the preloads: large lz4 batches, a deep queue.
fn preload_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("a producer")
}

/// Sends `record`, serving delivery reports while the queue is full.
fn send_waiting(producer: &BaseProducer, record: BaseRecord<'_, str, [u8]>) {
    send_with_backpressure(producer, record, Duration::from_millis(1), |_| {
        AfterWait::Retry
    })
    .expect("the benchmark's records fit");
}

/// Sends one keyed record to `partition` of `topic`, waiting while the queue is full.
fn send_to(producer: &BaseProducer, topic: &str, key: &str, value: &[u8], partition: i32) {
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(value);
    send_waiting(producer, record);
}

/// Preloads the readings as plain Avro datums into [`AVRO_SOURCE`], with a closing record per
/// partition; returns the bytes written.
fn preload_avro(bootstrap: &str, records: u64) -> u64 {
    let producer = preload_producer(bootstrap);
    let mut generator = readings_as(true);
    let mut bytes = 0;
    let send = |key: &str, datum: &[u8], partition: i32| {
        send_to(&producer, AVRO_SOURCE, key, datum, partition);
    };
    for i in 0..records {
        let generated = generator.next(i64::try_from(event_ms(i)).unwrap_or(i64::MAX));
        let datum = &generated.value[5..];
        bytes += datum.len() as u64;
        let partition = i32::try_from(partition_of(&generated.key)).unwrap_or(0);
        send(&generated.key, datum, partition);
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    for partition in 0..partitions() {
        let closing = generator.closing(partition, 4_000_000_000_000);
        send(&closing.key, &closing.value[5..], partition);
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
    bytes
}

/// Preloads click events into [`CLICKS_SOURCE`], with a closing record per partition; returns
/// the sessions the job emits (gap [`SESSION_GAP_MS`], heartbeats filtered out, sessions that
/// touch merge) and the bytes written.
fn preload_clicks(bootstrap: &str, records: u64) -> (usize, u64) {
    let producer = preload_producer(bootstrap);
    let mut generator = Generator::new(
        Workload::ClicksJson,
        Shape {
            keys: USERS,
            ..Shape::default()
        },
        43,
        None,
    );
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let (mut sessions, mut bytes) = (0, 0);
    let send = |key: &str, value: &[u8], partition: i32| {
        send_to(&producer, CLICKS_SOURCE, key, value, partition);
    };
    for i in 0..records {
        let ts = event_ms(i);
        let generated = generator.next(i64::try_from(ts).unwrap_or(i64::MAX));
        bytes += generated.value.len() as u64;
        let heartbeat = generated
            .value
            .windows(24)
            .any(|w| w == br#""event_type":"heartbeat""#);
        if !heartbeat {
            let previous = last.insert(generated.key.clone(), ts);
            if previous.is_none_or(|p| ts - p > SESSION_GAP_MS) {
                sessions += 1;
            }
        }
        let partition = i32::try_from(partition_of(&generated.key)).unwrap_or(0);
        send(&generated.key, &generated.value, partition);
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    for partition in 0..partitions() {
        let closing = generator.closing(partition, 4_000_000_000_000);
        send(&closing.key, &closing.value, partition);
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
    (sessions, bytes)
}

/// Preloads the device table: one row per device, keyed by its id.
fn preload_devices(bootstrap: &str) {
    let producer = preload_producer(bootstrap);
    for i in 0..DEVICES {
        let key = format!("device-{i:06}");
        let row = format!(r#"{{"owner":"team-{}","region":"eu-{}"}}"#, i % 40, i % 3);
        send_to(&producer, DEVICE_TABLE, &key, row.as_bytes(), 0);
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
}

/// The data set as JSON lines (the same bytes the backlog preloads), for engines that read
/// files: `scripts/flink-bench.py` runs Apache Flink on it.
fn write_jsonl(path: &Path, records: u64) {
    use std::io::Write;
    let mut generator = readings();
    let file = std::fs::File::create(path).expect("creating the JSON lines file");
    let mut out = std::io::BufWriter::new(file);
    for i in 0..records {
        let generated = generator.next(i64::try_from(event_ms(i)).unwrap_or(i64::MAX));
        out.write_all(&generated.value).expect("writing a line");
        out.write_all(b"\n").expect("writing a line");
    }
    out.flush().expect("flushing the file");
}

/// The (device, minute) windows of the data set: all, and those of the `ok` readings.
#[derive(Clone, Copy)]
struct Windows {
    all: usize,
    ok: usize,
}

/// Produces the data set; returns its windows and bytes.
fn preload(bootstrap: &str, records: u64) -> (Windows, u64) {
    let producer = preload_producer(bootstrap);
    let mut generator = readings();
    let mut windows = std::collections::HashSet::new();
    let mut ok_windows = std::collections::HashSet::new();
    let mut bytes = 0;
    for i in 0..records {
        let generated = generator.next(i64::try_from(event_ms(i)).unwrap_or(i64::MAX));
        let (key, value) = (
            generated.key,
            String::from_utf8(generated.value).expect("JSON readings are UTF-8"),
        );
        bytes += value.len() as u64;
        let window = (key.clone(), event_ms(i) / 60_000);
        if value.contains(r#""status":"ok""#) {
            ok_windows.insert(window.clone());
        }
        windows.insert(window);
        let partition = i32::try_from(partition_of(&key)).unwrap_or(0);
        let record = BaseRecord::to(SOURCE)
            .partition(partition)
            .key(key.as_str())
            .payload(value.as_bytes());
        send_waiting(&producer, record);
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    // A far-future record per partition closes every window.
    for partition in 0..partitions() {
        let value = format!(
            r#"{{"device_id":"closing-{partition}","ts":{},"temperature":1.0,"status":"ok"}}"#,
            4_000_000_000_000u64
        );
        let key = format!("closing-{partition}");
        producer
            .send(
                BaseRecord::to(SOURCE)
                    .partition(partition)
                    .key(key.as_str())
                    .payload(value.as_str()),
            )
            .expect("queue has room after the data");
    }
    producer.flush(Duration::from_secs(300)).expect("flushed");
    let windows = Windows {
        all: windows.len(),
        ok: ok_windows.len(),
    };
    (windows, bytes)
}

fn partition_of(key: &str) -> u64 {
    key.bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % u64::try_from(partitions()).unwrap_or(1)
}

/// CPU seconds of a process, by thread group: slot threads, librdkafka threads, the rest.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    slots: f64,
    librdkafka: f64,
    other: f64,
}

impl Cpu {
    fn total(self) -> f64 {
        self.slots + self.librdkafka + self.other
    }
}

fn ticks_per_second() -> f64 {
    100.0
}

fn stat_cpu(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / ticks_per_second()))
}

fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_cpu(&s))
        .map_or(0.0, |(_, cpu)| cpu)
}

/// Per-thread CPU, summed by group. Threads that ended are counted in the process total only;
/// they land in `other`.
fn thread_cpu(pid: u32) -> Cpu {
    let mut cpu = Cpu::default();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Some((comm, seconds)) = std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|s| stat_cpu(&s))
            else {
                continue;
            };
            if comm.starts_with("sluice-slot") {
                cpu.slots += seconds;
            } else if comm.starts_with("rdk:") {
                cpu.librdkafka += seconds;
            } else {
                cpu.other += seconds;
            }
        }
    }
    let total = process_cpu(pid);
    cpu.other += (total - cpu.total()).max(0.0);
    cpu
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn metrics(port: u16) -> String {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

struct Result {
    job: &'static str,
    slots: usize,
    records: u64,
    wall: f64,
    cpu: Cpu,
    rss: f64,
    broker_cpu: Option<f64>,
}

fn manifest(dir: &Path, job: &Job, group: &str) -> PathBuf {
    let path = dir.join(format!("{group}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: {group}, namespace: bench}}\nspec:\n  kafka: {{bootstrapServers: 'replaced:9092'}}\n  source: {{topic: {}, startingOffsets: earliest{}}}\n{}",
            match (job.avro, job.clicks) {
                (true, _) => AVRO_SOURCE,
                (_, true) => CLICKS_SOURCE,
                _ => SOURCE,
            },
            if job.avro {
                format!(
                    ", format: {{type: avro, schema: '{}'}}",
                    pipeline_runtime::loadgen::workload::IOT_AVRO_SCHEMA.replace('\n', " ")
                )
            } else {
                String::new()
            },
            job.spec
        ),
    )
    .expect("writing the manifest");
    path
}

fn run(
    bootstrap: &str,
    dir: &Path,
    job: &Job,
    slots: usize,
    records: u64,
    windows: usize,
    broker_pid: Option<u32>,
) -> Result {
    let group = format!("{}-{slots}", job.name);
    let manifest = manifest(dir, job, &group);
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("{group}.log"))).expect("log file");
    let broker_before = broker_pid.map(process_cpu);
    let mut child: Child = Command::new(runtime_binary())
        .args(["run", "-f"])
        .arg(&manifest)
        .args([
            "--bootstrap-servers",
            bootstrap,
            "--pod",
            &format!("{group}-0"),
        ])
        .args([
            "--slots",
            &slots.to_string(),
            "--metrics-port",
            &port.to_string(),
        ])
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pipeline-runtime");
    let pid = child.id();
    let mut progress = (0.0, Instant::now());
    let total = records + u64::try_from(partitions()).unwrap_or(0);
    let mut first_record: Option<Instant> = None;
    let mut last = (Cpu::default(), 0.0, Instant::now());
    let measured = loop {
        std::thread::sleep(Duration::from_millis(100));
        let text = metrics(port);
        let consumed = metric_sum(&text, "pipeline_records_in_total");
        if consumed > 0.0 && first_record.is_none() {
            first_record = Some(Instant::now());
        }
        let out = metric_sum(&text, "pipeline_records_out_total");
        let done = consumed >= total as f64 && (!job.windowed || out >= windows as f64);
        let cpu = thread_cpu(pid);
        if done {
            break (cpu, consumed, Instant::now());
        }
        if consumed + out > progress.0 {
            progress = (consumed + out, Instant::now());
            last = (cpu, consumed, Instant::now());
        }
        // tansu 0.6 skips the rest of a record batch when a partition changes hands mid-batch
        // (shared/FACTS.md): with several slots the group's first rebalance can lose a few
        // records, and the job never reaches the total. Count what was consumed.
        if progress.1.elapsed() > Duration::from_secs(5) && consumed >= 0.99 * total as f64 {
            eprintln!(
                "{group}: {} of {total} records never arrived (tansu's mid-batch hand-over); measured on the {consumed} consumed",
                total as f64 - consumed
            );
            break last;
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(60),
            "{group}: no progress for a minute at {consumed} of {total} records in, {out} out (of {windows} windows; log in {})",
            dir.display()
        );
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "{group}: the runtime exited (log in {})",
            dir.display()
        );
    };
    let (cpu, consumed, finished) = measured;
    let records = consumed as u64;
    let wall = first_record.map_or(0.0, |f| (finished - f).as_secs_f64());
    let rss = rss_mb(pid);
    let broker_cpu = broker_pid
        .zip(broker_before)
        .map(|(p, b)| process_cpu(p) - b);
    let _ = child.kill();
    let _ = child.wait();
    Result {
        job: job.name,
        slots,
        records,
        wall,
        cpu,
        rss,
        broker_cpu,
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').map(str::trim).map(String::from).collect())
}

/// Preloads the data sets only some jobs read (the Avro readings, the clicks, the device
/// table); returns the sessions of the clicks (0 without them).
fn preload_extras(bootstrap: &str, records: u64, jobs: &[&Job]) -> usize {
    if jobs.iter().any(|j| j.avro) {
        let started = Instant::now();
        let bytes = preload_avro(bootstrap, records);
        eprintln!(
            "preloaded {records} Avro records ({:.0} bytes each) in {:.1} s",
            bytes as f64 / records as f64,
            started.elapsed().as_secs_f64()
        );
    }
    if jobs.iter().any(|j| j.table) {
        let started = Instant::now();
        preload_devices(bootstrap);
        eprintln!(
            "preloaded the device table ({DEVICES} rows) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let mut sessions = 0;
    if jobs.iter().any(|j| j.clicks) {
        let started = Instant::now();
        let (count, bytes) = preload_clicks(bootstrap, records);
        sessions = count;
        eprintln!(
            "preloaded {records} click events ({:.0} bytes each, {sessions} sessions) in {:.1} s",
            bytes as f64 / records as f64,
            started.elapsed().as_secs_f64()
        );
    }
    sessions
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let records: u64 = std::env::var("SLUICE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let slots: Vec<usize> = env_list("SLUICE_BENCH_SLOTS")
        .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    let jobs: Vec<&Job> = match env_list("SLUICE_BENCH_JOBS") {
        Some(names) => JOBS
            .iter()
            .filter(|j| names.iter().any(|n| n == j.name))
            .collect(),
        None => JOBS.iter().collect(),
    };
    if let Ok(path) = std::env::var("SLUICE_BENCH_WRITE_JSONL") {
        write_jsonl(Path::new(&path), records);
        eprintln!("wrote {records} readings to {path}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sluice-bench-backlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mock;
    let tansu;
    let (bootstrap, broker_pid, broker_name) = if std::env::var("SLUICE_BENCH_BROKER").as_deref()
        == Ok("mock")
    {
        mock = MockCluster::new(3).expect("a mock cluster");
        mock.create_topic(SOURCE, partitions(), 1).expect("topic");
        mock.create_topic(AVRO_SOURCE, partitions(), 1)
            .expect("topic");
        mock.create_topic(CLICKS_SOURCE, partitions(), 1)
            .expect("topic");
        mock.create_topic(DEVICE_TABLE, 1, 1).expect("topic");
        mock.create_topic("out", partitions(), 1).expect("topic");
        (
            mock.bootstrap_servers(),
            Some(std::process::id()),
            "librdkafka mock cluster, 3 brokers (in the bench process: its CPU is the broker's)",
        )
    } else {
        tansu = Tansu::start();
        tansu.create_topics(&[
            (SOURCE, partitions()),
            (AVRO_SOURCE, partitions()),
            (CLICKS_SOURCE, partitions()),
            (DEVICE_TABLE, 1),
            ("out", partitions()),
        ]);
        let pid = tansu.pid();
        (
            tansu.bootstrap.clone(),
            Some(pid),
            "tansu 0.6 (memory storage)",
        )
    };
    let started = Instant::now();
    let (windows, bytes) = preload(&bootstrap, records);
    eprintln!(
        "preloaded {records} records ({:.0} bytes each, {} windows) in {:.1} s to {broker_name}",
        bytes as f64 / records as f64,
        windows.all,
        started.elapsed().as_secs_f64()
    );
    let sessions = preload_extras(&bootstrap, records, &jobs);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores; broker: {broker_name}; runtime: {}",
        runtime_binary().display()
    );
    println!(
        "{:<20} {:>5} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>12} {:>8} {:>8}",
        "job",
        "slots",
        "records",
        "wall s",
        "rec/s",
        "cpu s",
        "slots s",
        "rdk s",
        "other s",
        "rec/cpu-s",
        "rss MB",
        "broker s"
    );
    let mut by_job: BTreeMap<&str, Vec<Result>> = BTreeMap::new();
    for job in &jobs {
        for &k in &slots {
            let expected = match (job.clicks, job.filtered) {
                (true, _) => sessions,
                (false, true) => windows.ok,
                (false, false) => windows.all,
            };
            let r = run(&bootstrap, &dir, job, k, records, expected, broker_pid);
            println!(
                "{:<20} {:>5} {:>9} {:>7.1} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>12.0} {:>8.0} {:>8}",
                r.job,
                r.slots,
                r.records,
                r.wall,
                r.records as f64 / r.wall.max(1e-9),
                r.cpu.total(),
                r.cpu.slots,
                r.cpu.librdkafka,
                r.cpu.other,
                r.records as f64 / r.cpu.total().max(1e-9),
                r.rss,
                r.broker_cpu.map_or("-".to_string(), |c| format!("{c:.1}"))
            );
            by_job.entry(job.name).or_default().push(r);
        }
    }
    if let Some(floor) = by_job.get("passthrough").and_then(|r| r.first()) {
        let floor = floor.records as f64 / floor.cpu.total().max(1e-9);
        println!(
            "\nratios to the pass-through floor ({floor:.0} records per CPU-second), first slot count:"
        );
        for (job, results) in &by_job {
            if let Some(r) = results.first() {
                let rate = r.records as f64 / r.cpu.total().max(1e-9);
                println!(
                    "  {job:<18} {:.2}× the floor's CPU per record",
                    floor / rate
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

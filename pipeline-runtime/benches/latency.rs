//! Live latency benchmark: the release `pipeline-runtime run` (1 slot) on a live stream from the
//! load generator at 25%, 50% and 90% of the capacity measured in the same run, and the output
//! latency read back from the output topic: p50 / p99 / p999.
//!
//! - Stateless (CEL filter + projection): latency = time the output record is read − the input
//!   record's event time (the generator stamps each record with the wall clock when it makes it).
//! - Windowed (keyed source, 5-second tumbling windows, count/avg/min/max, 1 s out-of-orderness):
//!   latency = time the window result is read − the moment its window could close (window end +
//!   the out-of-orderness allowance, when the record that moves the watermark past it is made).
//!
//! Both include the generator's producer (linger 5 ms), the broker, the runtime's consumer and
//! producer, and the reader. Capacity = the runtime's wall rate on a 200,000-record backlog in
//! the same setup. Broker: librdkafka's mock cluster in this process (`SLUICE_BENCH_BROKER=tansu`
//! for tansu).
//!
//! ```text
//! cargo bench -p pipeline-runtime --bench latency
//! SLUICE_BENCH_SECONDS=30 SLUICE_BENCH_SHARES=0.5 cargo bench -p pipeline-runtime --bench latency
//! SLUICE_BENCH_FETCH_WAIT_MS=10 ...   # the runtime consumer's fetch.wait.max.ms (default 500)
//! ```

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use pipeline_e2e::{
    broker::{Tansu, metric_sum},
    process::{free_port, runtime_binary},
};
use pipeline_runtime::{
    loadgen::{self, Counters, LoadOptions, Profile, Shape, Workload},
    slot::wall_clock_ms,
};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
};
use serde_json::Value;

const PARTITIONS: i32 = 4;
const DEVICES: u64 = 1_000;
const OUT_OF_ORDERNESS_MS: i64 = 1_000;

struct Job {
    name: &'static str,
    spec: &'static str,
    windowed: bool,
}

const JOBS: &[Job] = &[
    Job {
        name: "stateless",
        spec: "  transform:\n    filter: 'record.temperature > -50.0 && record.status == \"ok\"'\n    select: [device_id, ts, temperature, humidity]\n  sink: {kafka: {topic: OUT}}\n",
        windowed: false,
    },
    Job {
        name: "iot-windowed",
        spec: "  transform: {keyBy: device_id, sourceKeyed: true, timestamp: {field: ts}, watermark: {maxOutOfOrderness: 1s}}\n  window: {tumbling: {size: 5s}}\n  aggregates:\n    - {name: readings, function: count}\n    - {name: avg_temperature, function: avg, field: temperature}\n    - {name: min_temperature, function: min, field: temperature}\n    - {name: max_temperature, function: max, field: temperature}\n  sink: {kafka: {topic: OUT}}\n",
        windowed: true,
    },
];

enum Broker {
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Tansu(Tansu),
}

impl Broker {
    fn bootstrap(&self) -> String {
        match self {
            Self::Mock(m) => m.bootstrap_servers(),
            Self::Tansu(t) => t.bootstrap.clone(),
        }
    }

    fn create(&self, topic: &str) {
        match self {
            Self::Mock(m) => m.create_topic(topic, PARTITIONS, 1).expect("a topic"),
            Self::Tansu(t) => t.create_topics(&[(topic, PARTITIONS)]),
        }
    }
}

fn start_runtime(
    dir: &Path,
    bootstrap: &str,
    job: &Job,
    name: &str,
    input: &str,
    output: &str,
) -> (Child, u16) {
    let manifest = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  kafka: {{bootstrapServers: 'replaced:9092'{}}}\n  source: {{topic: {input}, startingOffsets: earliest}}\n{}",
            fetch_wait_ms().map_or_else(String::new, |ms| format!(", properties: {{fetch.wait.max.ms: '{ms}'}}")),
            job.spec.replace("OUT", output)
        ),
    )
    .expect("writing the manifest");
    let port = free_port();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("a log file");
    let child = Command::new(runtime_binary())
        .args(["run", "-f"])
        .arg(&manifest)
        .args([
            "--bootstrap-servers",
            bootstrap,
            "--pod",
            &format!("{name}-0"),
            "--slots",
            "1",
        ])
        .args(["--metrics-port", &port.to_string()])
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pipeline-runtime");
    (child, port)
}

/// `SLUICE_BENCH_FETCH_WAIT_MS`: the runtime consumer's `fetch.wait.max.ms` (librdkafka's
/// default is 500). Neither tansu nor the mock cluster answers a waiting fetch when data arrives,
/// so on them every fetch that finds nothing new waits this long.
fn fetch_wait_ms() -> Option<u64> {
    std::env::var("SLUICE_BENCH_FETCH_WAIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn records_in(port: u16) -> f64 {
    let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    metric_sum(&text, "pipeline_records_in_total")
}

fn load(
    bootstrap: &str,
    topic: &str,
    profile: Profile,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let options = LoadOptions {
        bootstrap_servers: bootstrap.to_owned(),
        topic: topic.to_owned(),
        workload: Workload::IotJson,
        shape: Shape {
            keys: DEVICES,
            ..Shape::default()
        },
        profile,
        seed: 42,
        schema_registry: None,
        properties: Vec::new(),
        close_after_ms: None,
        profiles: None,
    };
    let stop = stop.clone();
    std::thread::spawn(move || {
        loadgen::run(&options, &Arc::new(Counters::default()), &stop)
            .expect("the load generator")
            .sent
    })
}

/// Records per second the runtime consumes from a 200,000-record backlog.
fn capacity(broker: &Broker, dir: &Path, job: &Job) -> f64 {
    let (input, output) = (
        format!("cap-in-{}", job.name),
        format!("cap-out-{}", job.name),
    );
    broker.create(&input);
    broker.create(&output);
    // 100,000 records per second for 2 s: every due record is written, however long it takes.
    let stop = Arc::new(AtomicBool::new(false));
    let profile = Profile::Steps(vec![(100_000.0, Duration::from_secs(2))]);
    let sent = load(&broker.bootstrap(), &input, profile, &stop);
    let sent = sent.join().expect("the load thread") as f64;
    let (mut child, port) = start_runtime(
        dir,
        &broker.bootstrap(),
        job,
        &format!("cap-{}", job.name),
        &input,
        &output,
    );
    let mut first: Option<(Instant, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let rate = loop {
        std::thread::sleep(Duration::from_millis(50));
        let consumed = records_in(port);
        if consumed > 0.0 && first.is_none() {
            first = Some((Instant::now(), consumed));
        }
        if let Some((at, base)) = first
            && consumed >= sent
        {
            break (consumed - base) / at.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "{}: the backlog of {sent} was not consumed",
            job.name
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    rate
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    job: &'static str,
    share: f64,
    target: f64,
    achieved: f64,
    samples: usize,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn live(broker: &Broker, dir: &Path, job: &Job, share: f64, capacity: f64, seconds: u64) -> Row {
    let tag = format!("{}-{}", job.name, (share * 100.0) as u32);
    let (input, output) = (format!("in-{tag}"), format!("out-{tag}"));
    broker.create(&input);
    broker.create(&output);
    let (mut child, _port) = start_runtime(dir, &broker.bootstrap(), job, &tag, &input, &output);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("reader-{tag}"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("a reader");
    reader.subscribe(&[output.as_str()]).expect("subscribe");
    // Let the slot join its group before the stream starts.
    std::thread::sleep(Duration::from_secs(3));
    let target = share * capacity;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sent = load(
        &broker.bootstrap(),
        &input,
        Profile::Steps(vec![(target, Duration::from_secs(seconds))]),
        &stop,
    );
    let warmup = Duration::from_secs(5);
    let mut latencies = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds + 3) {
        let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = wall_clock_ms();
        if started.elapsed() < warmup || started.elapsed() > Duration::from_secs(seconds) {
            continue;
        }
        let Some(v) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        let from = if job.windowed {
            v["window_end"]
                .as_i64()
                .map(|end| end + OUT_OF_ORDERNESS_MS)
        } else {
            v["ts"].as_i64()
        };
        if let Some(from) = from {
            latencies.push((now - from) as f64);
        }
    }
    let sent = sent.join().expect("the load thread") as f64;
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort_by(f64::total_cmp);
    Row {
        job: job.name,
        share,
        target,
        achieved: sent / seconds as f64,
        samples: latencies.len(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = std::env::var("SLUICE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let shares: Vec<f64> = std::env::var("SLUICE_BENCH_SHARES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0.25, 0.5, 0.9]);
    let broker = if std::env::var("SLUICE_BENCH_BROKER").as_deref() == Ok("tansu") {
        Broker::Tansu(Tansu::start())
    } else {
        Broker::Mock(MockCluster::new(1).expect("a mock cluster"))
    };
    let dir = std::env::temp_dir().join(format!("sluice-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    println!(
        "| job | load | target rec/s | achieved rec/s | samples | p50 ms | p99 ms | p999 ms |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for job in JOBS {
        let capacity = capacity(&broker, &dir, job);
        eprintln!(
            "{}: capacity {capacity:.0} records/s (1 slot, backlog)",
            job.name
        );
        for &share in &shares {
            let r = live(&broker, &dir, job, share, capacity, seconds);
            println!(
                "| {} | {:.0}% | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
                r.job,
                r.share * 100.0,
                r.target,
                r.achieved,
                r.samples,
                r.p50,
                r.p99,
                r.p999
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

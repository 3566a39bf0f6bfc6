//! `pipeline-runtime demo`: the IoT pipeline on an embedded Kafka cluster (librdkafka's mock
//! cluster), fed with generated sensor readings, checked against an offline computation of the
//! same windows.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde_json::{Value, json};

use pipeline_crds::valid::{AnyInstallation, validate_pipeline};

use crate::{
    produce::{AfterWait, send_with_backpressure},
    runtime::{Runtime, RuntimeOptions},
    slot::wall_clock_ms,
};

/// The demo's pipeline manifest.
pub const MANIFEST: &str = include_str!("../demo/iot-sensors.yaml");

/// Demo parameters.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Sensor readings to generate.
    pub records: usize,
    /// Distinct devices.
    pub devices: usize,
    /// Source partitions.
    pub partitions: i32,
    /// Slots of the runtime.
    pub slots: usize,
    /// Serve metrics here while the demo runs.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            records: 200_000,
            devices: 1_000,
            partitions: 8,
            slots: 4,
            metrics_addr: None,
        }
    }
}

/// What the demo measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// Readings produced (including malformed ones).
    pub produced: usize,
    /// Malformed readings produced (expected in the dead-letter topic).
    pub malformed: usize,
    /// Readings below the filter threshold.
    pub filtered_expected: usize,
    /// Distinct (device, window) results read from the output topic.
    pub windows: usize,
    /// Windows whose values differ from the offline reference (must be 0).
    pub mismatches: Vec<String>,
    /// Dead-letter records read back.
    pub dead_letters: usize,
    /// Seconds from start until every window was in the output topic.
    pub seconds: f64,
    /// CPU seconds the process used meanwhile.
    pub cpu_seconds: f64,
    /// A few output records.
    pub sample: Vec<String>,
}

/// A small deterministic generator (xorshift64*), so runs are reproducible.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A generated reading: (partition, value bytes, decoded value or None when malformed).
pub type Reading = (i32, Vec<u8>, Option<Value>);

/// Generates readings spread over `minutes` minutes of event time from `base_ms`, up to 3 s out
/// of order (within the pipeline's 5 s bound), on random partitions (so the pipeline must
/// repartition by device), one in a thousand malformed.
pub fn readings(options: &DemoOptions, base_ms: i64, seed: u64) -> Vec<Reading> {
    let mut rng = Rng::new(seed);
    let span_ms = 5 * 60_000;
    let step = span_ms as f64 / options.records.max(1) as f64;
    (0..options.records)
        .map(|i| {
            let partition = rng.below(options.partitions as u64) as i32;
            if rng.below(1000) == 0 {
                return (partition, b"{\"device_id\": broken".to_vec(), None);
            }
            let jitter = rng.below(3_000) as i64;
            let ts = base_ms + (i as f64 * step) as i64 - jitter;
            let device = format!("sensor-{:04}", rng.below(options.devices as u64));
            // Whole tenths of a degree; about 1% below the -50 °C filter.
            let temperature = (rng.below(1_200) as f64 - 520.0) / 10.0
                + if rng.below(100) == 0 { -100.0 } else { 0.0 };
            let value = json!({
                "device_id": device,
                "temperature": temperature,
                "latency_ms": rng.below(500),
                "ts": ts,
                "firmware": "2.4.1",
            });
            (
                partition,
                serde_json::to_vec(&value).expect("json"),
                Some(value),
            )
        })
        .collect()
}

/// The offline reference: per (device, window start), count, max temperature and the sum of
/// temperatures (for the average), over readings that pass the filter.
pub fn reference(readings: &[Reading], window_ms: i64) -> BTreeMap<(String, i64), (u64, f64, f64)> {
    let mut out: BTreeMap<(String, i64), (u64, f64, f64)> = BTreeMap::new();
    for (_, _, value) in readings {
        let Some(v) = value else { continue };
        let t = v["temperature"].as_f64().expect("generated");
        if t <= -50.0 {
            continue;
        }
        let start = v["ts"].as_i64().expect("generated").div_euclid(window_ms) * window_ms;
        let e = out
            .entry((
                v["device_id"].as_str().expect("generated").to_owned(),
                start,
            ))
            .or_insert((0, f64::MIN, 0.0));
        e.0 += 1;
        e.1 = e.1.max(t);
        e.2 += t;
    }
    out
}

/// The (key, window start) of a JSON window result whose key field is `key_field`.
pub fn window_key(value: &Value, key_field: &str) -> (String, i64) {
    (
        value[key_field].as_str().unwrap_or_default().to_owned(),
        value["window_start"].as_i64().unwrap_or_default(),
    )
}

/// Runs the demo.
pub fn run(options: &DemoOptions) -> anyhow::Result<DemoReport> {
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    let mut pd = pipeline_crds::manifest::from_yaml(MANIFEST, "demo manifest")?;
    pd.spec.kafka.bootstrap_servers = bootstrap.clone();
    let name = pd.metadata.name.clone().unwrap_or_default();
    let namespace = pd.metadata.namespace.clone().unwrap_or_default();
    let group = pipeline_crds::contract::default_consumer_group(&namespace, &name);
    for (topic, partitions) in [
        ("iot-sensor-data", options.partitions),
        ("sensor-aggregates", options.partitions),
        ("iot-dlq", 1),
        ("iot-late", 1),
        (&format!("{group}-repartition"), options.partitions),
    ] {
        cluster.create_topic(topic, partitions, 1)?;
    }

    // Event time ends ten minutes ago so the idle timeout closes every window at the end.
    let base_ms = (wall_clock_ms() - 15 * 60_000).div_euclid(60_000) * 60_000;
    let data = readings(options, base_ms, 42);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    for (partition, bytes, _) in &data {
        let record = BaseRecord::<(), [u8]>::to("iot-sensor-data")
            .partition(*partition)
            .payload(bytes.as_slice());
        send_with_backpressure(&producer, record, Duration::from_millis(5), |_| {
            AfterWait::Retry
        })?;
    }
    producer.flush(Duration::from_secs(30))?;
    let expected = reference(&data, 60_000);

    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let pipeline = validate_pipeline(&pd, &AnyInstallation)?;
    let runtime = Runtime::start(RuntimeOptions {
        pipeline,
        pod: "demo-0".into(),
        slots: options.slots,
        scale_file: None,
        metrics_addr: options.metrics_addr,
        commit_interval: Duration::from_secs(1),
        simulated_record_cost: None,
    })?;

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "demo-reader")
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&["sensor-aggregates", "iot-dlq"])?;
    let mut results: BTreeMap<(String, i64), Value> = BTreeMap::new();
    let mut dead_letters = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while results.len() < expected.len() && Instant::now() < deadline {
        let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        if m.topic() == "iot-dlq" {
            dead_letters += 1;
            continue;
        }
        let Some(value) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            continue;
        };
        results.insert(window_key(&value, "device_id"), value);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    // Late dead letters may still be on their way: read what is there.
    let drain = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100))
            && m.topic() == "iot-dlq"
        {
            dead_letters += 1;
        }
    }
    runtime.stop();
    runtime.join();

    let mut mismatches = Vec::new();
    for ((device, start), (count, max, sum)) in &expected {
        let Some(got) = results.get(&(device.clone(), *start)) else {
            mismatches.push(format!("{device}@{start}: missing"));
            continue;
        };
        let avg = sum / *count as f64;
        let ok = got["readings"].as_u64() == Some(*count)
            && got["max_temperature"].as_f64() == Some(*max)
            && got["avg_temperature"]
                .as_f64()
                .is_some_and(|a| (a - avg).abs() <= 1e-9 * avg.abs().max(1.0));
        if !ok {
            mismatches.push(format!(
                "{device}@{start}: got {got}, expected count {count} max {max} avg {avg}"
            ));
        }
    }
    let malformed = data.iter().filter(|r| r.2.is_none()).count();
    let filtered_expected = data
        .iter()
        .filter(|r| {
            r.2.as_ref()
                .is_some_and(|v| v["temperature"].as_f64().is_some_and(|t| t <= -50.0))
        })
        .count();
    Ok(DemoReport {
        produced: data.len(),
        malformed,
        filtered_expected,
        windows: results.len(),
        mismatches,
        dead_letters,
        seconds,
        cpu_seconds,
        sample: results.values().take(3).map(Value::to_string).collect(),
    })
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`; 0 where absent.
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports in USER_HZ, 100 on every supported architecture.
    (ticks(11) + ticks(12)) / 100.0
}

//! The load generator (`loadgen`): writes a workload to a Kafka topic at a rate that follows a
//! profile, then, optionally, one closing record per partition. It is the data source of the
//! `pipeline-operator demo`, the autoscaling tests and the benchmarks.

pub mod profile;
pub mod profiles;
pub mod workload;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::DeliveryResult,
    producer::{BaseProducer, BaseRecord, Producer, ProducerContext},
};

pub use self::{
    profile::Profile,
    profiles::{ProfileGenerator, ProfileOptions},
    workload::{Generated, Generator, Shape, Workload},
};
use crate::{
    produce::{AfterWait, SendError, send_with_backpressure},
    schema_registry::SchemaRegistry,
    slot::wall_clock_ms,
};

/// What to write, where and how fast.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Broker list.
    pub bootstrap_servers: String,
    /// The topic (it must exist).
    pub topic: String,
    /// Record shape.
    pub workload: Workload,
    /// Keys, skew, disorder, malformed share.
    pub shape: Shape,
    /// Records per second over time.
    pub profile: Profile,
    /// Seed of the record generator.
    pub seed: u64,
    /// Schema Registry URL (Avro only): the reading schema is registered under `<topic>-value`.
    pub schema_registry: Option<String>,
    /// Extra producer properties (librdkafka names), applied last.
    pub properties: Vec<(String, String)>,
    /// After the profile, one record per partition this far past the last event time (ms), so
    /// that every window of the run closes; `None` = none.
    pub close_after_ms: Option<i64>,
    /// The profile table of the `clicks-json` workload, written before and during the run.
    pub profiles: Option<ProfileOptions>,
}

/// Why the load generator stopped short.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The topic is not on the cluster.
    #[error("topic {topic:?} does not exist on {bootstrap} (create it first)")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The brokers asked.
        bootstrap: String,
    },
    /// The cluster did not answer.
    #[error("cannot reach Kafka at {bootstrap}: {error}")]
    Unreachable {
        /// The brokers asked.
        bootstrap: String,
        /// What librdkafka said.
        error: KafkaError,
    },
    /// A client could not be created.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be written.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The Avro schema could not be registered.
    #[error("schema registry: {0}")]
    Registry(String),
    /// Avro output needs a Schema Registry.
    #[error("the iot-avro workload needs --schema-registry")]
    NoRegistry,
    /// Profiles belong to the clickstream.
    #[error("--profiles goes with --workload clicks-json (profiles are keyed by its users)")]
    ProfilesNeedClicks,
    /// Records were refused by the brokers.
    #[error("{failed} records were not delivered; first error: {first}")]
    Delivery {
        /// Records not delivered.
        failed: u64,
        /// The first delivery error.
        first: String,
    },
}

/// Counters the generator updates as it goes (shared with a progress display or a chart).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records handed to the producer.
    pub sent: AtomicU64,
    /// Records the brokers acknowledged.
    pub delivered: AtomicU64,
    /// Records the brokers refused.
    pub failed: AtomicU64,
    /// Malformed records among those sent.
    pub malformed: AtomicU64,
    /// The profile's current rate, records per second (as bits of an f64).
    pub target_rate_bits: AtomicU64,
}

impl Counters {
    /// The profile's current rate.
    pub fn target_rate(&self) -> f64 {
        f64::from_bits(self.target_rate_bits.load(Ordering::Relaxed))
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// Records written (closing records included).
    pub sent: u64,
    /// Malformed records among them.
    pub malformed: u64,
    /// Closing records among them.
    pub closing: u64,
    /// Seconds from the first record to the last acknowledgement.
    pub seconds: f64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Profile-table records written (first profiles, updates, deletions).
    pub profile_records: u64,
}

struct Deliveries {
    counters: Arc<Counters>,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// Partitions of `topic`, or a clear error when the cluster or the topic is not there.
pub fn topic_partitions(bootstrap: &str, topic: &str) -> Result<i32, LoadgenError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|error| LoadgenError::Unreachable {
            bootstrap: bootstrap.to_owned(),
            error,
        })?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(LoadgenError::TopicMissing {
            topic: topic.to_owned(),
            bootstrap: bootstrap.to_owned(),
        });
    }
    Ok(i32::try_from(partitions).unwrap_or(i32::MAX))
}

fn send(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    partition: Option<i32>,
    record: &Generated,
) -> Result<(), SendError> {
    let mut r = BaseRecord::to(topic)
        .key(record.key.as_bytes())
        .payload(record.value.as_slice());
    if let Some(p) = partition {
        r = r.partition(p);
    }
    send_with_backpressure(producer, r, Duration::from_millis(1), |_| AfterWait::Retry)
}

fn send_profile(
    producer: &BaseProducer<Deliveries>,
    topic: &str,
    record: &profiles::ProfileRecord,
) -> Result<(), SendError> {
    let mut r = BaseRecord::<[u8], [u8]>::to(topic)
        .key(record.key.as_bytes())
        .timestamp(record.updated_at);
    if let Some(value) = &record.value {
        r = r.payload(value.as_slice());
    }
    send_with_backpressure(producer, r, Duration::from_millis(1), |_| AfterWait::Retry)
}

/// The profile table's generator, its topic checked, when the load has one.
fn profile_generator(options: &LoadOptions) -> Result<Option<ProfileGenerator>, LoadgenError> {
    let Some(profiles) = &options.profiles else {
        return Ok(None);
    };
    if options.workload != Workload::ClicksJson {
        return Err(LoadgenError::ProfilesNeedClicks);
    }
    topic_partitions(&options.bootstrap_servers, &profiles.topic)?;
    Ok(Some(ProfileGenerator::new(profiles.clone(), options.seed)))
}

/// Writes `options`' load until its profile ends or `stop` is set, updating `counters` as it
/// goes; waits for every acknowledgement.
pub fn run(
    options: &LoadOptions,
    counters: &Arc<Counters>,
    stop: &AtomicBool,
) -> Result<LoadReport, LoadgenError> {
    let partitions = topic_partitions(&options.bootstrap_servers, &options.topic)?;
    let mut profiles = profile_generator(options)?;
    let schema_id = match (options.workload, &options.schema_registry) {
        (Workload::IotAvro, None) => return Err(LoadgenError::NoRegistry),
        (Workload::IotAvro, Some(url)) => {
            let schema = apache_avro::Schema::parse_str(workload::IOT_AVRO_SCHEMA)
                .expect("the reading schema parses");
            Some(
                SchemaRegistry::new(url)
                    .register(&format!("{}-value", options.topic), &schema)
                    .map_err(|e| LoadgenError::Registry(e.to_string()))?,
            )
        }
        _ => None,
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.bootstrap_servers)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000");
    for (k, v) in &options.properties {
        config.set(k, v);
    }
    let deliveries = Deliveries {
        counters: counters.clone(),
        first_error: Mutex::new(None),
    };
    let producer: BaseProducer<Deliveries> = config.create_with_context(deliveries)?;
    let mut generator = Generator::new(
        options.workload,
        options.shape.clone(),
        options.seed,
        schema_id,
    );
    let mut profile_records = 0_u64;
    if let Some(table) = profiles.as_mut() {
        let topic = table.options().topic.clone();
        let first: Vec<_> = table.initial(wall_clock_ms()).collect();
        for record in &first {
            send_profile(&producer, &topic, record)?;
            profile_records += 1;
        }
        // Acknowledged before the first click, so every click can find its profile.
        producer.flush(Duration::from_secs(60))?;
    }
    let started = Instant::now();
    let mut due = 0.0_f64;
    let mut last = Duration::ZERO;
    let mut sent = 0_u64;
    let mut malformed = 0_u64;
    let mut last_ts = 0_i64;
    while !stop.load(Ordering::Relaxed) {
        let t = started.elapsed();
        let Some(rate) = options.profile.rate_at(t) else {
            break;
        };
        counters
            .target_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
        due += rate * (t - last).as_secs_f64();
        last = t;
        let now_ms = wall_clock_ms();
        while (sent as f64) < due.floor() {
            let record = generator.next(now_ms);
            send(&producer, &options.topic, None, &record)?;
            sent += 1;
            malformed += u64::from(record.malformed);
            last_ts = now_ms;
            counters.sent.fetch_add(1, Ordering::Relaxed);
            counters
                .malformed
                .fetch_add(u64::from(record.malformed), Ordering::Relaxed);
            if let Some(table) = profiles.as_mut()
                && let Some(change) = table.after_click(now_ms)
            {
                send_profile(&producer, &table.options().topic, &change)?;
                profile_records += 1;
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
    }
    counters
        .target_rate_bits
        .store(0.0_f64.to_bits(), Ordering::Relaxed);
    let mut closing = 0;
    if let Some(ahead) = options.close_after_ms {
        let ts = last_ts.max(wall_clock_ms()) + ahead;
        for partition in 0..partitions {
            let record = generator.closing(partition, ts);
            send(&producer, &options.topic, Some(partition), &record)?;
            closing += 1;
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = counters.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = producer
            .context()
            .first_error
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_default();
        return Err(LoadgenError::Delivery { failed, first });
    }
    Ok(LoadReport {
        sent: sent + closing,
        malformed,
        closing,
        seconds: started.elapsed().as_secs_f64(),
        partitions,
        profile_records,
    })
}

//! A real Kafka-protocol broker (tansu) for integration tests, and helpers to produce, consume
//! and read metrics.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pipeline_runtime::produce::{AfterWait, send_with_backpressure};
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{BaseProducer, BaseRecord, Producer},
};

/// A Kafka-protocol broker reached at `bootstrap`: tansu in CI, or a real Kafka for the opt-in
/// tests (`E2E_KAFKA_BOOTSTRAP`).
#[derive(Clone, Debug)]
pub struct Broker {
    /// `host:port` list.
    pub bootstrap: String,
}

/// A tansu broker on a free loopback port, killed on drop; a [`Broker`] by deref.
pub struct Tansu {
    child: Child,
    broker: Broker,
    launch: TansuLaunch,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Tansu {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        &self.broker
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tansu {
    /// Starts tansu with in-memory storage. Panics with a clear message when it is not installed
    /// (`scripts/test.sh` installs it): a test that needs it fails, never passes without it. To
    /// leave such tests out, `scripts/test.sh` with SLUICE_SKIP_BROKER_TESTS set builds them with
    /// `--cfg sluice_skip_broker_tests`, which marks them ignored.
    /// Broker tests of one binary run one at a time: on a 2-core machine two brokers and two
    /// runtimes starve each other's group heartbeats.
    pub fn start() -> Self {
        Self::start_with("memory://tansu/", &[])
    }

    /// Starts tansu storing its log in the S3 bucket `tansu` of `s3` (created here), so it
    /// survives its own restart ([`Tansu::restart`]): a broker outage, not a data loss.
    pub fn start_durable(s3: &crate::s3::MotoS3) -> Self {
        s3.create_bucket("tansu");
        let endpoint = s3.url.clone();
        Self::start_with(
            "s3://tansu/",
            &[
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_DEFAULT_REGION", "us-east-1"),
                ("AWS_ENDPOINT", &endpoint),
                ("AWS_ALLOW_HTTP", "true"),
            ],
        )
    }

    fn start_with(storage: &str, env: &[(&str, &str)]) -> Self {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let launch = TansuLaunch {
            port,
            storage: storage.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let child = launch.spawn();
        Self {
            child,
            broker: Broker {
                bootstrap: format!("127.0.0.1:{port}"),
            },
            launch,
            _serial: serial,
        }
    }

    /// Kills the broker (SIGKILL): clients see it gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.child = self.launch.spawn();
    }
}

/// How a tansu process is started (again).
struct TansuLaunch {
    port: u16,
    storage: String,
    env: Vec<(String, String)>,
}

impl TansuLaunch {
    fn spawn(&self) -> Child {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &self.storage,
            ])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tansu broker is not installed: run `bash scripts/test.sh`, or `cargo install --locked tansu --version 0.6.0 --features dynostore`");
        let bootstrap = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {bootstrap}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }
}

impl Tansu {
    /// The broker's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Broker {
    /// Creates topics with the admin API.
    pub fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for result in rt
            .block_on(admin.create_topics(&new, &AdminOptions::new()))
            .unwrap()
        {
            result.unwrap();
        }
    }

    /// Deletes topics with the admin API (a test's stand-in for compaction: recreate a topic
    /// with only what compaction would keep).
    pub fn delete_topics(&self, topics: &[&str]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for result in rt
            .block_on(admin.delete_topics(topics, &AdminOptions::new()))
            .unwrap()
        {
            result.unwrap();
        }
    }

    /// Produces `(partition, key, value)` records and waits for every acknowledgement.
    pub fn produce(&self, topic: &str, records: &[Outgoing]) {
        produce(&self.bootstrap, topic, records);
    }

    /// Reads `topic` from the start (committed records only) until `done` says so or `timeout` passes; returns each
    /// record as (key, value, headers).
    pub fn consume(
        &self,
        topic: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Consumed]) -> bool,
    ) -> Vec<Consumed> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("reader-{topic}-{}", std::process::id()))
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !done(&out) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The offsets `group` committed on partitions `0..partitions` of `topic` (`-1`: none), read
/// without joining the group.
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(
            |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => -1,
            },
        )
        .collect()
}

/// Produces `(partition, key, value)` records to `bootstrap` and waits for every
/// acknowledgement (usable from any thread).
pub fn produce(bootstrap: &str, topic: &str, records: &[Outgoing]) {
    produce_with(
        bootstrap,
        topic,
        records,
        &[("linger.ms", "20"), ("compression.type", "lz4")],
    );
}

/// Produces each record in a record batch of its own. tansu 0.6 cannot serve a fetch that
/// starts inside a record batch (it answers with the next batch, or nothing), so data that a
/// consumer must resume reading mid-stream (after a crash or a rebalance) is produced this way.
pub fn produce_one_per_batch(bootstrap: &str, topic: &str, records: &[Outgoing]) {
    produce_with(
        bootstrap,
        topic,
        records,
        &[("linger.ms", "5"), ("batch.num.messages", "1")],
    );
}

fn produce_with(bootstrap: &str, topic: &str, records: &[Outgoing], settings: &[(&str, &str)]) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let producer: BaseProducer = config.create().unwrap();
    for (partition, key, value) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .partition(*partition)
            .payload(value.as_slice());
        if let Some(k) = key {
            record = record.key(k.as_slice());
        }
        send_with_backpressure(&producer, record, Duration::from_millis(5), |_| {
            AfterWait::Retry
        })
        .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// A record to produce: (partition, key, value).
pub type Outgoing = (i32, Option<Vec<u8>>, Vec<u8>);

/// A consumed record.
#[derive(Clone, Debug)]
pub struct Consumed {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers as text.
    pub headers: BTreeMap<String, String>,
}

/// The sum of every series of `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

//! Where a slot's emits go. Output rows go to the pipeline's sink behind [`RowSink`] (Kafka or
//! ClickHouse), which encodes them for its destination; dead letters, late data and
//! repartitioned records always go to Kafka through the slot's producer, which also carries the
//! exactly-once transaction. Time blocked on either is accounted as backpressure.

pub mod clickhouse;
pub mod encode;
pub mod kafka;
pub mod registry;
pub mod size;

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pipeline_crds::contract::headers;
use rdkafka::{
    ClientConfig, ClientContext, TopicPartitionList,
    consumer::ConsumerGroupMetadata,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};

use crate::{
    plan::Plan,
    processor::{Emit, FailedStage},
    produce::{AfterWait, SendError, send_with_backpressure},
    row::Row,
};
use tracing::warn;

/// The destination of a pipeline's output rows.
///
/// A sink may write each row at once or buffer; `flush` returns once every row sent so far is
/// durable at the destination, and the slot commits offsets only after it returned (at-least-once;
/// with ClickHouse's ReplacingMergeTree, effectively-once). A sink that cannot keep up blocks in
/// `send` or `flush`, adding the wait to `blocked`: the slot's backpressure, which tells the
/// autoscaler the pipeline is sink-bound.
pub trait RowSink: Send {
    /// Takes one row.
    fn send(
        &mut self,
        row: Row,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Sent, SinkError>;

    /// Makes every row sent so far durable.
    fn flush(&mut self, blocked: &mut Duration, stop: &dyn Fn() -> bool) -> Result<(), SinkError>;

    /// Called every slot tick (100 ms), rows or not: a buffering sink writes a batch whose
    /// time is up.
    fn tick(&mut self, _blocked: &mut Duration, _stop: &dyn Fn() -> bool) -> Result<(), SinkError> {
        Ok(())
    }

    /// Blocked time the sink already added to the backpressure metric itself while it waited
    /// (a long retry), since the last call; the slot's report leaves it out. A sink that only
    /// reports through `blocked` returns zero.
    fn take_reported_blocked(&mut self) -> Duration {
        Duration::ZERO
    }
}

/// What became of a row.
pub enum Sent {
    /// Written or buffered.
    Accepted,
    /// It cannot be encoded for the destination (stage `encode`) or does not fit in one Kafka
    /// message (stage `output`): dead-lettered as JSON.
    Rejected {
        /// Its Kafka key.
        key: Option<Vec<u8>>,
        /// The row as JSON.
        json: Vec<u8>,
        /// Why.
        error: String,
        /// Where it failed: [`FailedStage::Encode`] or [`FailedStage::Output`].
        stage: FailedStage,
    },
}

/// Why the sink cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The producer could not be created.
    #[error("cannot create producer: {0}")]
    Create(KafkaError),
    /// A record could not be queued.
    #[error("cannot produce to {topic}: {source}")]
    Produce {
        /// Target topic.
        topic: String,
        /// The error.
        source: KafkaError,
    },
    /// A delivery failed after librdkafka's retries: offsets must not be committed past it.
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// Stopped while blocked.
    #[error("stopped while the producer queue was full")]
    Interrupted,
    /// The rows sink failed (its own error, see [`registry`]).
    #[error(transparent)]
    Rows(#[from] registry::RowsError),
    /// A Kafka transaction step failed; the transaction is aborted (or the producer fenced) and
    /// the slot restarts from its last committed checkpoint.
    #[error("transaction {step} failed: {source}")]
    Transaction {
        /// Which step.
        step: &'static str,
        /// The error.
        source: KafkaError,
    },
}

impl SinkError {
    /// Whether restarting the slot can help: not for a configuration librdkafka refuses or a
    /// schema the spec cannot give.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Create(_) => false,
            Self::Rows(rows) => rows.is_retryable(),
            _ => true,
        }
    }

    /// Whether a newer producer with the same transactional id (or a newer group generation)
    /// took over: this producer is a zombie and must not write again.
    pub fn is_fenced(&self) -> bool {
        match self {
            Self::Transaction {
                source: KafkaError::Transaction(e),
                ..
            } => matches!(
                e.code(),
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced
            ),
            _ => false,
        }
    }
}

/// Records delivery failures reported by librdkafka's callbacks.
#[derive(Default)]
pub struct DeliveryTracker {
    failure: Mutex<Option<String>>,
    /// The dead-letter topic: a dead letter the broker refuses as too large (its topic's
    /// `max.message.bytes` below the producer's `message.max.bytes`) is dropped, not a failure.
    dead_letter_topic: Option<String>,
    /// Dead letters dropped that way, not yet reported.
    dropped: AtomicU64,
    /// How the producer signs in (MSK IAM tokens).
    sign_in: crate::kafka_sign_in::KafkaSignIn,
}

impl ClientContext for DeliveryTracker {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.sign_in.oauth_token()
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result {
            use rdkafka::Message;
            let too_large = matches!(
                error,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
            );
            if too_large && self.dead_letter_topic.as_deref() == Some(message.topic()) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut failure = self.failure.lock().expect("not poisoned");
            if failure.is_none() {
                *failure = Some(error.to_string());
            }
        }
    }
}

/// What the sink dead-lettered or dropped since the last report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// Rows that could not be encoded (stage `encode`).
    pub rejected: u64,
    /// Outputs that did not fit in one Kafka message, dead-lettered instead (stage `output`).
    pub oversized: u64,
    /// Dead letters that could not be produced even truncated: counted and skipped.
    pub dead_letters_dropped: u64,
    /// Blocked time the rows sink already reported as backpressure while it waited.
    pub reported_blocked: Duration,
}

/// The sinks of one slot: its producer, and the sink of its output rows.
pub struct Sink {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    rows: Mutex<Box<dyn RowSink>>,
    /// The largest record the producer sends.
    limit: size::OutputLimit,
    /// Rows the sink could not encode, dead-lettered, not yet reported.
    rejected: AtomicU64,
    /// Outputs that did not fit, dead-lettered, not yet reported.
    oversized: AtomicU64,
    /// Dead letters dropped, not yet reported.
    dropped: AtomicU64,
    /// When a dropped dead letter was last logged (at most once a minute).
    dropped_logged: Mutex<Option<Instant>>,
}

impl Sink {
    /// Creates the producer and the sink of `plan`'s rows (its metrics under `labels`).
    pub fn new(
        config: &ClientConfig,
        plan: &Plan,
        metrics: Arc<crate::metrics::Metrics>,
        labels: crate::metrics::SlotLabels,
    ) -> Result<Self, SinkError> {
        let tracker = DeliveryTracker {
            dead_letter_topic: plan.dead_letter_topic.clone(),
            sign_in: plan.producer.sign_in().clone(),
            ..DeliveryTracker::default()
        };
        let producer: Arc<BaseProducer<DeliveryTracker>> = Arc::new(
            config
                .create_with_context(tracker)
                .map_err(SinkError::Create)?,
        );
        let limit = size::OutputLimit::of(config);
        let rows = registry::open(
            plan,
            registry::SlotResources {
                producer: producer.clone(),
                limit,
                metrics,
                labels,
            },
        )?;
        Ok(Self {
            producer,
            rows: Mutex::new(rows),
            limit,
            rejected: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_logged: Mutex::new(None),
        })
    }

    /// What was dead-lettered or dropped here since the last call.
    pub fn take_counts(&self) -> SinkCounts {
        let late_drops = self.producer.context().dropped.swap(0, Ordering::Relaxed);
        if late_drops > 0 {
            self.log_dropped("the broker refused it as too large for the dead-letter topic");
        }
        SinkCounts {
            rejected: self.rejected.swap(0, Ordering::Relaxed),
            oversized: self.oversized.swap(0, Ordering::Relaxed),
            dead_letters_dropped: self.dropped.swap(0, Ordering::Relaxed) + late_drops,
            reported_blocked: self
                .rows
                .lock()
                .expect("not poisoned")
                .take_reported_blocked(),
        }
    }

    /// The underlying producer.
    pub fn producer(&self) -> &BaseProducer<DeliveryTracker> {
        &self.producer
    }

    /// The first delivery failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.producer
            .context()
            .failure
            .lock()
            .expect("not poisoned")
            .clone()
    }

    /// Lets the rows sink write what is due (see [`RowSink::tick`]).
    pub fn tick(&self, blocked: &mut Duration, stop: &dyn Fn() -> bool) -> Result<(), SinkError> {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tick(blocked, stop)
    }

    /// Serves delivery callbacks.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Sends every emit, draining `emits`. Time spent waiting for queue space is added to
    /// `blocked`. Emits without a configured topic (late data, dead letters) are skipped; they
    /// were counted by the processor.
    pub fn send_all(
        &self,
        plan: &Plan,
        emits: &mut Vec<Emit>,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), SinkError> {
        for emit in emits.drain(..) {
            match emit {
                Emit::Output(row) => {
                    let sent = self
                        .rows
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .send(row, blocked, stop)?;
                    if let Sent::Rejected {
                        key,
                        json,
                        error,
                        stage,
                    } = sent
                    {
                        let counter = match stage {
                            FailedStage::Output => &self.oversized,
                            _ => &self.rejected,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let letter = DeadLetter {
                            key: key.as_deref(),
                            value: Some(&json),
                            stage,
                            error: &error,
                            headers: OwnedHeaders::new(),
                        };
                        self.dead_letter(plan, letter, blocked, stop)?;
                    }
                }
                Emit::Repartition {
                    key,
                    value,
                    timestamp_ms,
                    upstream,
                    upstream_offset,
                } => {
                    let topic = plan
                        .repartition_topic
                        .as_deref()
                        .expect("repartitioning plan");
                    let h = OwnedHeaders::new_with_capacity(2)
                        .insert(header(headers::UPSTREAM_PARTITION, &upstream.to_string()))
                        .insert(header(
                            headers::UPSTREAM_OFFSET,
                            &upstream_offset.to_string(),
                        ));
                    let (k, v) = (Some(key.as_slice()), Some(value.as_slice()));
                    if let Some(error) = self.limit.refusal("repartition", k, v, Some(&h)) {
                        self.oversized.fetch_add(1, Ordering::Relaxed);
                        let letter = DeadLetter::of_output(k, v, &error, h);
                        self.dead_letter(plan, letter, blocked, stop)?;
                        continue;
                    }
                    let r = BaseRecord::to(topic)
                        .key(key.as_slice())
                        .payload(value.as_slice())
                        .timestamp(timestamp_ms)
                        .headers(h);
                    self.send(r, blocked, stop)?;
                }
                Emit::WatermarkMarker {
                    upstream,
                    watermark,
                } => {
                    let topic = plan
                        .repartition_topic
                        .as_deref()
                        .expect("repartitioning plan");
                    let (upstream, watermark) = (upstream.to_string(), watermark.to_string());
                    for partition in 0..plan.repartition_partitions() {
                        let h = OwnedHeaders::new_with_capacity(2)
                            .insert(header(headers::UPSTREAM_PARTITION, &upstream))
                            .insert(header(headers::WATERMARK, &watermark));
                        let r = BaseRecord::<[u8], [u8]>::to(topic)
                            .partition(partition)
                            .headers(h);
                        self.send(r, blocked, stop)?;
                    }
                }
                Emit::DeadLetter {
                    key,
                    value,
                    stage,
                    error,
                    source,
                } => {
                    let headers = match source {
                        Some(s) => source_headers(plan, s.topic, s.partition, s.offset),
                        None => OwnedHeaders::new(),
                    };
                    let letter = DeadLetter {
                        key: key.as_deref(),
                        value: value.as_deref(),
                        stage,
                        error: &error,
                        headers,
                    };
                    self.dead_letter(plan, letter, blocked, stop)?;
                }
                Emit::Late {
                    key,
                    value,
                    source,
                    window,
                    lateness_ms,
                } => {
                    let Some(topic) = plan.late_topic.as_deref() else {
                        continue;
                    };
                    let from_source =
                        || source_headers(plan, source.topic, source.partition, source.offset);
                    let h = from_source()
                        .insert(header(
                            headers::WINDOW,
                            &format!("{}-{}", window.0, window.1),
                        ))
                        .insert(header(headers::LATENESS_MS, &lateness_ms.to_string()));
                    let (k, v) = (key.as_deref(), value.as_deref());
                    if let Some(error) = self.limit.refusal("late-data", k, v, Some(&h)) {
                        self.oversized.fetch_add(1, Ordering::Relaxed);
                        let letter = DeadLetter::of_output(k, v, &error, from_source());
                        self.dead_letter(plan, letter, blocked, stop)?;
                        continue;
                    }
                    self.send(side_record(topic, k, v, h), blocked, stop)?;
                }
            }
        }
        Ok(())
    }

    /// Sends a dead letter, if the pipeline has a dead-letter topic. Its error is bounded
    /// ([`size::ERROR_MAX_BYTES`]); one that still does not fit is truncated (key, payload) and
    /// says so; one that cannot be produced even then is counted, logged and skipped. Sizes are
    /// worked out before the headers are built, so they are built once.
    fn dead_letter(
        &self,
        plan: &Plan,
        letter: DeadLetter<'_>,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), SinkError> {
        let Some(topic) = plan.dead_letter_topic.as_deref() else {
            return Ok(());
        };
        let DeadLetter {
            key,
            value,
            stage,
            error,
            headers: source,
        } = letter;
        let fits = |key: Option<&[u8]>, value: Option<&[u8]>, error: &str| {
            size::record_bytes(key, value, Some(&source))
                + size::header_bytes(headers::ERROR, error)
                + size::header_bytes(headers::STAGE, stage.as_str())
                <= self.limit.max_bytes()
        };
        let error = size::bounded_error(error);
        let (key, value, error) = if fits(key, value, &error) {
            (key, value, error)
        } else {
            let short_key = key.map(|k| size::truncated(k, size::TRUNCATED_KEY_MAX_BYTES));
            let short_value =
                value.map(|v| size::truncated(v, self.limit.truncated_payload_bytes()));
            let length = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
            let note = format!(
                "dead letter truncated to fit message.max.bytes {}: payload {} of {} bytes, key {} of {} bytes; {error}",
                self.limit.max_bytes(),
                length(short_value),
                length(value),
                length(short_key),
                length(key),
            );
            let note = size::bounded_error(&note).into_owned();
            if !fits(short_key, short_value, &note) {
                self.drop_dead_letter(&format!(
                    "even truncated it does not fit message.max.bytes {}",
                    self.limit.max_bytes()
                ));
                return Ok(());
            }
            (short_key, short_value, std::borrow::Cow::Owned(note))
        };
        let headers = source
            .insert(header(headers::ERROR, &error))
            .insert(header(headers::STAGE, stage.as_str()));
        self.send_dead_letter(side_record(topic, key, value, headers), blocked, stop)
    }

    /// Produces a dead letter; one the producer refuses as too large is dropped.
    fn send_dead_letter(
        &self,
        record: BaseRecord<'_, [u8], [u8]>,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), SinkError> {
        match self.send(record, blocked, stop) {
            Err(SinkError::Produce {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                ..
            }) => {
                self.drop_dead_letter("the producer refused it as too large");
                Ok(())
            }
            other => other,
        }
    }

    /// Counts a dead letter that cannot be produced, logging at most once a minute.
    fn drop_dead_letter(&self, why: &str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.log_dropped(why);
    }

    /// Logs that dead letters were dropped, at most once a minute.
    fn log_dropped(&self, why: &str) {
        let mut logged = self
            .dropped_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *logged = Some(Instant::now());
            warn!(%why, "a dead letter was dropped (pipeline_dead_letters_dropped_total counts them)");
        }
    }

    fn send(
        &self,
        record: BaseRecord<'_, [u8], [u8]>,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), SinkError> {
        produce(&self.producer, record, blocked, stop)
    }

    /// Registers the transactional id (fencing any older producer with the same id) and begins
    /// the first transaction.
    pub fn init_transactions(&self, timeout: Duration) -> Result<(), SinkError> {
        let step = |step, source| SinkError::Transaction { step, source };
        self.producer
            .init_transactions(timeout)
            .map_err(|e| step("init", e))?;
        self.producer
            .begin_transaction()
            .map_err(|e| step("begin", e))
    }

    /// Commits the current transaction together with the consumer offsets `offsets` of the
    /// group `group`, then begins the next one. On failure the transaction is aborted (its
    /// outputs stay invisible to `read_committed` readers).
    pub fn commit_transaction(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
        timeout: Duration,
    ) -> Result<(), SinkError> {
        let step = |step, source| SinkError::Transaction { step, source };
        let committed = self
            .producer
            .send_offsets_to_transaction(offsets, group, timeout)
            .map_err(|e| step("send offsets", e))
            .and_then(|()| {
                self.producer
                    .commit_transaction(timeout)
                    .map_err(|e| step("commit", e))
            });
        if let Err(e) = committed {
            if !e.is_fenced() {
                let _ = self.producer.abort_transaction(timeout);
            }
            return Err(e);
        }
        self.producer
            .begin_transaction()
            .map_err(|e| step("begin", e))
    }

    /// Aborts the current transaction (its outputs stay invisible to `read_committed` readers).
    pub fn abort_transaction(&self, timeout: Duration) -> Result<(), SinkError> {
        self.producer
            .abort_transaction(timeout)
            .map_err(|source| SinkError::Transaction {
                step: "abort",
                source,
            })
    }

    /// Waits until every queued record is acknowledged; the wait is added to `blocked`. Fails when
    /// a delivery failed, so offsets past a lost record are never committed.
    pub fn flush(&self, blocked: &mut Duration, stop: &dyn Fn() -> bool) -> Result<(), SinkError> {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush(blocked, stop)?;
        let start = Instant::now();
        let result = loop {
            match self.producer.flush(Duration::from_millis(500)) {
                Ok(()) => break Ok(()),
                // Not done within this wait (librdkafka says `OperationTimedOut`, "Local: Timed
                // out"): wait again. Bounded: a record not delivered within `message.timeout.ms`
                // (2 minutes) fails and leaves the queue, and `failure` reports it below.
                Err(KafkaError::Flush(
                    RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut,
                )) if !stop() => {}
                Err(_) if stop() => break Err(SinkError::Interrupted),
                Err(e) => break Err(SinkError::Delivery(e.to_string())),
            }
        };
        *blocked += start.elapsed();
        result?;
        match self.failure() {
            Some(failure) => Err(SinkError::Delivery(failure)),
            None => Ok(()),
        }
    }
}

/// A string header for an `OwnedHeaders` list.
pub(crate) fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

fn source_headers(plan: &Plan, topic: usize, partition: i32, offset: i64) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(header(headers::SOURCE_TOPIC, plan.topic_name(topic)))
        .insert(header(headers::SOURCE_PARTITION, &partition.to_string()))
        .insert(header(headers::SOURCE_OFFSET, &offset.to_string()))
}

/// Queues a record, waiting (counted in `blocked`) while the producer's queue is full.
fn produce(
    producer: &BaseProducer<DeliveryTracker>,
    record: BaseRecord<'_, [u8], [u8]>,
    blocked: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), SinkError> {
    let after_wait = |waited| {
        *blocked += waited;
        if stop() {
            AfterWait::Stop
        } else {
            AfterWait::Retry
        }
    };
    send_with_backpressure(producer, record, Duration::from_millis(10), after_wait).map_err(
        |error| match error {
            SendError::Interrupted => SinkError::Interrupted,
            SendError::Refused { topic, source } => SinkError::Produce { topic, source },
        },
    )
}

fn side_record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: OwnedHeaders,
) -> BaseRecord<'a, [u8], [u8]> {
    let mut r = BaseRecord::to(topic).headers(headers);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(v) = value {
        r = r.payload(v);
    }
    r
}

/// A dead letter to send: the record's key and value, where and why it failed, and the headers
/// naming its source.
struct DeadLetter<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    stage: FailedStage,
    error: &'a str,
    headers: OwnedHeaders,
}

impl<'a> DeadLetter<'a> {
    /// The dead letter of an output record `key`, `value` that does not fit (stage `output`),
    /// with the headers naming its source.
    fn of_output(
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        error: &'a str,
        headers: OwnedHeaders,
    ) -> Self {
        Self {
            key,
            value,
            stage: FailedStage::Output,
            error,
            headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{mocking::MockCluster, producer::Producer};

    use super::*;

    #[test]
    fn a_flush_slower_than_one_wait_keeps_waiting_instead_of_failing_the_slot() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let spec = pipeline_crds::manifest::from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: t}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n",
            "test",
        )
        .unwrap()
        .spec;
        let sink = Sink::new(
            &config,
            &Plan::of_spec(&spec, vec![1]),
            Arc::new(crate::metrics::Metrics::default()),
            crate::metrics::SlotLabels::default(),
        )
        .unwrap();
        // Connected first, so the slow round trips below are the produce requests'.
        sink.producer
            .send(BaseRecord::<[u8], [u8]>::to("out").payload(b"warm-up".as_slice()))
            .unwrap();
        sink.producer.flush(Duration::from_secs(10)).unwrap();
        // Each wait inside `flush` is 500 ms; the broker now answers after 1.5 s.
        cluster
            .broker_round_trip_time(1, Duration::from_millis(1_500))
            .unwrap();
        let never = || false;
        let mut blocked = Duration::ZERO;
        sink.send(
            BaseRecord::to("out").payload(b"slow".as_slice()),
            &mut blocked,
            &never,
        )
        .unwrap();
        sink.flush(&mut blocked, &never).unwrap();
        assert!(blocked >= Duration::from_millis(500), "{blocked:?}");
        assert_eq!(sink.failure(), None);
        assert_eq!(sink.producer.in_flight_count(), 0);
    }

    /// A sink whose producer sends at most 10,000-byte records, to `out` and `dlq` on a mock
    /// cluster; returns it with the cluster (kept alive) and the plan.
    fn small_limit_sink() -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        Sink,
        Plan,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        config.set("message.max.bytes", "10000");
        let spec = pipeline_crds::manifest::from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: t}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  deadLetter: {topic: dlq}\n",
            "test",
        )
        .unwrap()
        .spec;
        let plan = Plan::of_spec(&spec, vec![1]);
        let sink = Sink::new(
            &config,
            &plan,
            Arc::new(crate::metrics::Metrics::default()),
            crate::metrics::SlotLabels::default(),
        )
        .unwrap();
        (cluster, sink, plan)
    }

    /// Every record of `topic`: (payload length, error header, stage header).
    fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Vec<(usize, String, String)> {
        use rdkafka::{
            Message, Offset,
            consumer::{BaseConsumer, Consumer},
            message::Headers,
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < expected && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            out.push((
                m.payload().map_or(0, <[u8]>::len),
                header(headers::ERROR),
                header(headers::STAGE),
            ));
        }
        out
    }

    #[test]
    fn an_output_or_dead_letter_too_large_for_one_message_is_dead_lettered_truncated_never_a_failure()
     {
        let (cluster, sink, plan) = small_limit_sink();
        let source = crate::processor::SourceRef {
            topic: 0,
            partition: 0,
            offset: 7,
        };
        let big = format!("{{\"ts\":\"{}\"}}", "9".repeat(20_000)).into_bytes();
        let mut emits = vec![
            // An output record too large for the sink topic.
            Emit::Output(Row::Record {
                key: Some(b"k".to_vec()),
                json: big.clone(),
                event_ms: 0,
                source: source.clone(),
            }),
            // A dead letter with a huge payload and an error that quotes it.
            Emit::DeadLetter {
                key: None,
                value: Some(big.clone()),
                stage: FailedStage::Timestamp,
                error: format!(
                    "timestamp {:?} is not a time",
                    String::from_utf8_lossy(&big)
                ),
                source: Some(source.clone()),
            },
            // An ordinary record after them.
            Emit::Output(Row::Record {
                key: None,
                json: b"{\"ok\":1}".to_vec(),
                event_ms: 0,
                source,
            }),
        ];
        let never = || false;
        let mut blocked = Duration::ZERO;
        sink.send_all(&plan, &mut emits, &mut blocked, &never)
            .unwrap();
        sink.flush(&mut blocked, &never).unwrap();
        assert_eq!(
            sink.take_counts(),
            SinkCounts {
                rejected: 0,
                oversized: 1,
                dead_letters_dropped: 0,
                reported_blocked: Duration::ZERO,
            }
        );
        let bootstrap = cluster.bootstrap_servers();
        let out = read_all(&bootstrap, "out", 1);
        assert_eq!(out.len(), 1, "the ordinary record is written");
        let letters = read_all(&bootstrap, "dlq", 2);
        assert_eq!(letters.len(), 2, "{letters:?}");
        for (payload, error, _) in &letters {
            assert!(
                *payload <= 5_000,
                "payload truncated to half the limit: {payload}"
            );
            assert!(error.len() <= size::ERROR_MAX_BYTES, "{}", error.len());
            assert!(
                error.starts_with("dead letter truncated to fit message.max.bytes 10000: payload 5000 of 20009 bytes"),
                "{error}"
            );
        }
        assert_eq!(letters[0].2, "output");
        assert!(
            letters[0]
                .1
                .contains("its output record of 20138 bytes does not fit"),
            "{}",
            letters[0].1
        );
        assert_eq!(letters[1].2, "timestamp");
        assert!(
            letters[1].1.contains("error truncated from"),
            "{}",
            letters[1].1
        );
    }
}

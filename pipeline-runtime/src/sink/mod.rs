//! Where a slot's emits go. Output rows go to the pipeline's sink behind [`RowSink`] (Kafka or
//! ClickHouse), which encodes them for its destination; dead letters, late data and
//! repartitioned records always go to Kafka through the slot's producer, which also carries the
//! exactly-once transaction. Time blocked on either is accounted as backpressure.

pub mod clickhouse;
pub mod encode;
pub mod kafka;

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
    row::Row,
    schema_registry::RegistryError,
};

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
}

/// What became of a row.
pub enum Sent {
    /// Written or buffered.
    Accepted,
    /// It cannot be encoded for the destination: dead-lettered as JSON (stage `encode`).
    Rejected {
        /// Its Kafka key.
        key: Option<Vec<u8>>,
        /// The row as JSON.
        json: Vec<u8>,
        /// Why.
        error: String,
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
    /// The output schema could not be registered (retryable).
    #[error("output schema: {0}")]
    Registry(#[from] RegistryError),
    /// The ClickHouse table does not exist or does not fit the output: refused until the spec
    /// or the table changes.
    #[error("ClickHouse sink: {0}")]
    Table(String),
    /// ClickHouse cannot be reached or refused an insert (retried; then the slot restarts).
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    /// The output schema cannot be derived from the spec.
    #[error(transparent)]
    Schema(#[from] encode::OutputError),
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
        !matches!(self, Self::Create(_) | Self::Schema(_) | Self::Table(_))
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
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut failure = self.failure.lock().expect("not poisoned");
            if failure.is_none() {
                *failure = Some(error.to_string());
            }
        }
    }
}

/// The sinks of one slot: its producer, and the sink of its output rows.
pub struct Sink {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    rows: Mutex<Box<dyn RowSink>>,
    /// Rows the sink could not encode, dead-lettered, not yet reported.
    rejected: AtomicU64,
}

impl Sink {
    /// Creates the producer and the sink of `plan`'s rows (its metrics under `labels`).
    pub fn new(
        config: &ClientConfig,
        plan: &Plan,
        metrics: Arc<crate::metrics::Metrics>,
        labels: crate::metrics::SlotLabels,
    ) -> Result<Self, SinkError> {
        let producer: Arc<BaseProducer<DeliveryTracker>> = Arc::new(
            config
                .create_with_context(DeliveryTracker::default())
                .map_err(SinkError::Create)?,
        );
        let rows: Box<dyn RowSink> = match &plan.clickhouse {
            Some(sink) => Box::new(clickhouse::ClickHouseRows::new(
                plan, sink, metrics, labels,
            )?),
            None => Box::new(kafka::KafkaRows::new(plan, producer.clone())?),
        };
        Ok(Self {
            producer,
            rows: Mutex::new(rows),
            rejected: AtomicU64::new(0),
        })
    }

    /// Rows dead-lettered because they could not be encoded, since the last call.
    pub fn take_rejected(&self) -> u64 {
        self.rejected.swap(0, Ordering::Relaxed)
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
                    if let Sent::Rejected { key, json, error } = sent {
                        self.rejected.fetch_add(1, Ordering::Relaxed);
                        if let Some(topic) = plan.dead_letter_topic.as_deref() {
                            let h = OwnedHeaders::new()
                                .insert(header(headers::ERROR, &error))
                                .insert(header(headers::STAGE, FailedStage::Encode.as_str()));
                            self.send(side_record(topic, &key, &Some(json), h), blocked, stop)?;
                        }
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
                    let Some(topic) = plan.dead_letter_topic.as_deref() else {
                        continue;
                    };
                    let h = match source {
                        Some(s) => source_headers(plan, s.topic, s.partition, s.offset),
                        None => OwnedHeaders::new(),
                    }
                    .insert(header(headers::ERROR, &error))
                    .insert(header(headers::STAGE, stage.as_str()));
                    self.send(side_record(topic, &key, &value, h), blocked, stop)?;
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
                    let h = source_headers(plan, source.topic, source.partition, source.offset)
                        .insert(header(
                            headers::WINDOW,
                            &format!("{}-{}", window.0, window.1),
                        ))
                        .insert(header(headers::LATENESS_MS, &lateness_ms.to_string()));
                    self.send(side_record(topic, &key, &value, h), blocked, stop)?;
                }
            }
        }
        Ok(())
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

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
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
    mut record: BaseRecord<'_, [u8], [u8]>,
    blocked: &mut Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), SinkError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                let start = Instant::now();
                producer.poll(Duration::from_millis(10));
                *blocked += start.elapsed();
                if stop() {
                    return Err(SinkError::Interrupted);
                }
                record = back;
            }
            Err((source, back)) => {
                return Err(SinkError::Produce {
                    topic: back.topic.to_owned(),
                    source,
                });
            }
        }
    }
}

fn side_record<'a>(
    topic: &'a str,
    key: &'a Option<Vec<u8>>,
    value: &'a Option<Vec<u8>>,
    headers: OwnedHeaders,
) -> BaseRecord<'a, [u8], [u8]> {
    let mut r = BaseRecord::to(topic).headers(headers);
    if let Some(k) = key {
        r = r.key(k.as_slice());
    }
    if let Some(v) = value {
        r = r.payload(v.as_slice());
    }
    r
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
            &Plan::new(&spec, "g", vec![1]),
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
}

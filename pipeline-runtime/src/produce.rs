//! Queueing a record on a producer whose queue may be full: the one loop every producer of the
//! workspace uses (the sinks, the load generator, the demo, the broker tests and the
//! benchmarks). Only a full queue (`QueueFull`) is waited out, by serving delivery reports; any
//! other error is returned at once, never retried.

use std::time::{Duration, Instant};

use rdkafka::{
    error::KafkaError,
    message::ToBytes,
    producer::{BaseProducer, BaseRecord, Partitioner, ProducerContext},
    types::RDKafkaErrorCode,
};

/// What to do after one wait for room in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterWait {
    /// Try the record again.
    Retry,
    /// Give up: [`SendError::Interrupted`].
    Stop,
}

/// Why a record was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The producer refused the record (too large, unknown partition, a fatal producer error).
    #[error("queueing a record for {topic}: {source}")]
    Refused {
        /// The record's topic.
        topic: String,
        /// The producer's error.
        source: KafkaError,
    },
    /// The wait for room was stopped (see [`AfterWait::Stop`]).
    #[error("interrupted while the producer's queue was full")]
    Interrupted,
}

/// Queues `record`; while the queue is full, serves delivery reports for up to `poll` and calls
/// `after_wait` with the time spent (backpressure, for whoever counts it), which says whether to
/// try again.
pub fn send_with_backpressure<'a, C, Part, K, P>(
    producer: &BaseProducer<C, Part>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    poll: Duration,
    mut after_wait: impl FnMut(Duration) -> AfterWait,
) -> Result<(), SendError>
where
    Part: Partitioner,
    C: ProducerContext<Part>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                let start = Instant::now();
                producer.poll(poll);
                if after_wait(start.elapsed()) == AfterWait::Stop {
                    return Err(SendError::Interrupted);
                }
                record = back;
            }
            Err((source, back)) => {
                return Err(SendError::Refused {
                    topic: back.topic.to_owned(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{ClientConfig, mocking::MockCluster, producer::Producer};

    use super::*;

    fn producer(bootstrap: &str, queue: &str) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("queue.buffering.max.messages", queue)
            .set("linger.ms", "50")
            .create()
            .unwrap()
    }

    #[test]
    fn a_full_queue_is_waited_out_and_counted_and_every_record_is_delivered() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer = producer(&cluster.bootstrap_servers(), "2");
        let mut waits = 0;
        for i in 0..20 {
            let value = format!("record {i}");
            send_with_backpressure(
                &producer,
                BaseRecord::<(), str>::to("t").payload(value.as_str()),
                Duration::from_millis(5),
                |_| {
                    waits += 1;
                    AfterWait::Retry
                },
            )
            .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        assert!(waits > 0, "a queue of 2 filled up");
    }

    #[test]
    fn a_stopped_wait_is_interrupted_and_a_refused_record_is_not_retried() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let producer = producer(&cluster.bootstrap_servers(), "1");
        let first = send_with_backpressure(
            &producer,
            BaseRecord::<(), str>::to("t").payload("fills the queue"),
            Duration::ZERO,
            |_| AfterWait::Stop,
        );
        assert!(first.is_ok());
        let second = send_with_backpressure(
            &producer,
            BaseRecord::<(), str>::to("t").payload("waits"),
            Duration::ZERO,
            |_| AfterWait::Stop,
        );
        assert!(matches!(second, Err(SendError::Interrupted)), "{second:?}");
        let mut waits = 0;
        let huge = vec![0u8; 2_000_000];
        let refused = send_with_backpressure(
            &producer,
            BaseRecord::<(), [u8]>::to("t").payload(huge.as_slice()),
            Duration::ZERO,
            |_| {
                waits += 1;
                AfterWait::Retry
            },
        );
        assert!(
            matches!(&refused, Err(SendError::Refused { topic, .. }) if topic == "t"),
            "{refused:?}"
        );
        assert_eq!(waits, 0, "only a full queue is waited out");
    }
}

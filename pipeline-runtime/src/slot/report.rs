//! What a slot reports: its counters, busy/idle/backpressured time and per-partition gauges
//! (published every tick), and per-emit latency and dead letters.

use prometheus_client::metrics::histogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::warn;

use crate::{
    metrics::Metrics,
    processor::{Counts, Emit, FailedStage, Processor},
};

use super::context::SlotContext;
use super::{SlotClock, SlotConfig, wall_clock_ms};

/// Counts dead letters by stage and observes output latency into `latency` (the slot's
/// histogram, resolved once so the per-record path does not look it up).
pub(super) fn observe_emits(config: &SlotConfig, latency: &Histogram, emits: &[Emit]) {
    let wall = wall_clock_ms();
    for emit in emits {
        if let Emit::Output(row) = emit {
            latency.observe((wall - row.event_ms()).max(0) as f64 / 1000.0);
        }
        if let Emit::DeadLetter { stage, error, .. } = emit {
            config.metrics.dead_lettered(&config.labels, *stage);
            if config.plan.dead_letter_topic.is_none() {
                warn!(stage = stage.as_str(), %error, "record rejected (no deadLetter topic configured)");
            }
        }
    }
}

/// Publishes the slot's counters, clocks and partition gauges.
pub(super) fn publish(
    config: &SlotConfig,
    consumer: &BaseConsumer<SlotContext>,
    processor: &mut Processor,
    reported: &mut Counts,
    clock: &mut SlotClock,
) {
    let m = &config.metrics;
    let labels = &config.labels;
    m.add_counts(labels, reported, &processor.counts);
    *reported = processor.counts;
    // Rows the sink could not encode (stage `encode`), and outputs that did not fit in a Kafka
    // message (stage `output`), went to the dead-letter topic; dead letters that could not be
    // produced even truncated were dropped.
    let counts = consumer.context().sink.take_counts();
    if counts.rejected > 0 {
        m.dead_lettered_n(labels, FailedStage::Encode, counts.rejected);
    }
    if counts.oversized > 0 {
        m.dead_lettered_n(labels, FailedStage::Output, counts.oversized);
    }
    if counts.dead_letters_dropped > 0 {
        m.dead_letters_dropped
            .get_or_create(labels)
            .inc_by(counts.dead_letters_dropped);
    }
    m.busy
        .get_or_create(labels)
        .inc_by(clock.busy.saturating_sub(clock.backpressured).as_secs_f64());
    // What the rows sink reported itself while it retried is part of `clock.backpressured`.
    m.backpressured.get_or_create(labels).inc_by(
        clock
            .backpressured
            .saturating_sub(counts.reported_blocked)
            .as_secs_f64(),
    );
    m.idle
        .get_or_create(labels)
        .inc_by(clock.idle.as_secs_f64());
    *clock = SlotClock::default();
    let ends = consumer.context().end_offsets.lock().expect("not poisoned");
    let wall = wall_clock_ms();
    let mut keys = 0;
    for (topic, partition, position, watermark, key_count) in processor.partition_stats() {
        keys += key_count;
        let name = config.plan.topic_name(topic);
        let p = Metrics::partition_labels(labels, name, partition);
        // An end offset behind the position is stale (librdkafka reports a re-assigned
        // partition's last figures until its first fetch answers): it is left out, else the
        // jump to the real end would read as arrivals to the autoscaler.
        let known = ends
            .get(&(name.to_owned(), partition))
            .filter(|(end, _)| position < 0 || *end >= position);
        if let Some((end, start)) = known {
            // Caught up = everything up to the end has been processed (not merely committed:
            // windowed slots commit behind their open windows on purpose; not merely fetched:
            // prefetched records are still to be processed). Before the first record, the start
            // offset says whether anything is there to read.
            let read = if position >= 0 { position } else { *start };
            m.end_offset.get_or_create(&p).set(*end);
            m.lag.get_or_create(&p).set((end - read).max(0));
            processor.set_caught_up(topic, partition, read >= *end);
        }
        if position >= 0 {
            m.position.get_or_create(&p).set(position);
        }
        if watermark != crate::watermark::NO_WATERMARK {
            m.watermark_lag
                .get_or_create(&p)
                .set((wall - watermark) as f64 / 1000.0);
        }
    }
    m.state_keys
        .get_or_create(labels)
        .set(i64::try_from(keys).unwrap_or(i64::MAX));
}

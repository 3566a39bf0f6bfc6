//! What a pipeline outputs: rows, which the sink encodes for its destination (JSON or Avro for
//! Kafka, JSONEachRow for ClickHouse). The processor never encodes an output itself.

use crate::{processor::SourceRef, window::WindowResult};

/// One output row.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// A window result: the key, the window's bounds and the aggregates, typed.
    Window {
        /// The result.
        result: WindowResult,
        /// Grows with each emission of the same window and is the same when a replay emits it
        /// again: the next offset of the partition the window lives in when it was emitted (an
        /// emission is caused by a record, or by a tick after the last one read). A
        /// ReplacingMergeTree keeps the row with the highest.
        version: u64,
    },
    /// A stateless pipeline's record: a JSON object (the projection of `transform.select`, or
    /// the record as read), kept as bytes because every destination takes JSON objects and
    /// re-encoding each record would cost the stateless path a third of its speed.
    Record {
        /// The source record's Kafka key.
        key: Option<Vec<u8>>,
        /// The JSON object.
        json: Vec<u8>,
        /// The record's event time (its Kafka timestamp), ms.
        event_ms: i64,
        /// Where it was read: a unique, replay-stable id (the ClickHouse sink's `_topic`,
        /// `_partition`, `_offset` columns).
        source: SourceRef,
    },
}

impl Row {
    /// The event time the row is about (the record's time, or the window's end), for latency.
    pub fn event_ms(&self) -> i64 {
        match self {
            Self::Window { result, .. } => result.end,
            Self::Record { event_ms, .. } => *event_ms,
        }
    }
}

//! What a pipeline outputs: rows, which the sink encodes for its destination (JSON or Avro for
//! Kafka, JSONEachRow for ClickHouse). The processor never encodes an output itself.

use crate::window::WindowResult;

/// One output row.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// A window result: the key, the window's bounds and the aggregates, typed.
    Window(WindowResult),
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
    },
}

impl Row {
    /// The event time the row is about (the record's time, or the window's end), for latency.
    pub fn event_ms(&self) -> i64 {
        match self {
            Self::Window(w) => w.end,
            Self::Record { event_ms, .. } => *event_ms,
        }
    }
}

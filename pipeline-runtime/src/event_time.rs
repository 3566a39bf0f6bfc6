//! Reading a record's event time.

use pipeline_crds::transform::{TimestampFormat, TimestampSource, TimestampSpec};
use serde_json::Value;

use crate::field::FieldPath;

/// Why a record has no usable event time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimestampError {
    /// The field is absent or null.
    #[error("timestamp field {0} is missing")]
    Missing(String),
    /// The field cannot be read in the configured format.
    #[error("timestamp field {field} is {found:?}, expected {expected}")]
    Invalid {
        /// The field path.
        field: String,
        /// What was there.
        found: String,
        /// The configured format.
        expected: &'static str,
    },
    /// The Kafka record has no timestamp.
    #[error("record has no Kafka timestamp")]
    NoKafkaTimestamp,
}

/// Where event time comes from, compiled.
#[derive(Clone, Debug)]
pub enum EventTime {
    /// A record field.
    Field {
        /// The field.
        path: FieldPath,
        /// Its encoding.
        format: TimestampFormat,
    },
    /// The Kafka record timestamp.
    Kafka,
    /// The wall clock.
    ProcessingTime,
}

impl EventTime {
    /// From the spec (absent = Kafka timestamps).
    pub fn new(spec: Option<&TimestampSpec>) -> Self {
        match spec {
            None => Self::Kafka,
            Some(s) => match (s.source, &s.field) {
                (TimestampSource::Field, Some(field)) => Self::Field {
                    path: FieldPath::parse(field),
                    format: s.format,
                },
                (TimestampSource::ProcessingTime, _) => Self::ProcessingTime,
                _ => Self::Kafka,
            },
        }
    }

    /// Event time in epoch milliseconds.
    pub fn extract(
        &self,
        record: &Value,
        kafka_ms: Option<i64>,
        wall_clock_ms: i64,
    ) -> Result<i64, TimestampError> {
        match self {
            Self::Kafka => kafka_ms.ok_or(TimestampError::NoKafkaTimestamp),
            Self::ProcessingTime => Ok(wall_clock_ms),
            Self::Field { path, format } => {
                let value = path
                    .get(record)
                    .ok_or_else(|| TimestampError::Missing(path.as_str().to_owned()))?;
                let invalid = |expected| TimestampError::Invalid {
                    field: path.as_str().to_owned(),
                    found: value.to_string(),
                    expected,
                };
                match format {
                    TimestampFormat::EpochMillis => value
                        .as_i64()
                        .ok_or_else(|| invalid("integer epoch milliseconds")),
                    TimestampFormat::EpochSeconds => value
                        .as_f64()
                        .filter(|s| s.is_finite())
                        .map(|s| (s * 1000.0).round() as i64)
                        .ok_or_else(|| invalid("epoch seconds")),
                    TimestampFormat::Rfc3339 => value
                        .as_str()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .map(|t| t.timestamp_millis())
                        .ok_or_else(|| invalid("an RFC 3339 timestamp")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(format: TimestampFormat) -> EventTime {
        EventTime::Field {
            path: FieldPath::parse("ts"),
            format,
        }
    }

    #[test]
    fn reads_every_field_format() {
        let r = |v: Value| json!({ "ts": v });
        assert_eq!(
            field(TimestampFormat::EpochMillis).extract(&r(json!(1500)), None, 0),
            Ok(1500)
        );
        assert_eq!(
            field(TimestampFormat::EpochSeconds).extract(&r(json!(1.5)), None, 0),
            Ok(1500)
        );
        assert_eq!(
            field(TimestampFormat::Rfc3339).extract(&r(json!("1970-01-01T00:00:01.5Z")), None, 0),
            Ok(1500)
        );
    }

    #[test]
    fn missing_or_malformed_timestamps_are_errors() {
        let f = field(TimestampFormat::EpochMillis);
        assert_eq!(
            f.extract(&json!({}), None, 0),
            Err(TimestampError::Missing("ts".into()))
        );
        assert!(matches!(
            f.extract(&json!({"ts": "soon"}), None, 0),
            Err(TimestampError::Invalid { .. })
        ));
        let rfc = field(TimestampFormat::Rfc3339);
        assert!(matches!(
            rfc.extract(&json!({"ts": "yesterday"}), None, 0),
            Err(TimestampError::Invalid { .. })
        ));
    }

    #[test]
    fn kafka_and_processing_time_sources() {
        assert_eq!(EventTime::Kafka.extract(&json!({}), Some(7), 9), Ok(7));
        assert_eq!(
            EventTime::Kafka.extract(&json!({}), None, 9),
            Err(TimestampError::NoKafkaTimestamp)
        );
        assert_eq!(
            EventTime::ProcessingTime.extract(&json!({}), Some(7), 9),
            Ok(9)
        );
    }
}

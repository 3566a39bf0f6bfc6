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
    /// Outside years 1 to 9999.
    #[error("event time {ts} ms is outside years 1 to 9999")]
    OutOfRange {
        /// The event time.
        ts: i64,
    },
    /// Too far ahead of the wall clock or of the partition's watermark.
    #[error(
        "event time {ts} ms is {ahead_ms} ms ahead of the {reference} (bound spec.transform.timestamp.{setting}: {bound_ms} ms)"
    )]
    TooFarAhead {
        /// The event time.
        ts: i64,
        /// By how much.
        ahead_ms: i64,
        /// `wall clock` or `watermark`.
        reference: &'static str,
        /// The setting that bounds it.
        setting: &'static str,
        /// Its value.
        bound_ms: i64,
    },
}

/// The earliest event time accepted: 0001-01-01T00:00:00Z.
pub const MIN_EVENT_TIME_MS: i64 = -62_135_596_800_000;
/// The latest event time accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// How far ahead event times may be, compiled from the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// Ahead of the wall clock, ms.
    pub ahead_of_wall_clock_ms: i64,
    /// Ahead of the partition's watermark, ms (`None`: unbounded).
    pub ahead_of_watermark_ms: Option<i64>,
}

impl EventTimeBounds {
    /// From the spec (absent: the defaults).
    pub fn new(spec: Option<&TimestampSpec>) -> Self {
        let ms = |d: pipeline_crds::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            ahead_of_wall_clock_ms: ms(spec
                .and_then(|s| s.max_ahead_of_wall_clock)
                .unwrap_or(TimestampSpec::DEFAULT_MAX_AHEAD_OF_WALL_CLOCK)),
            ahead_of_watermark_ms: spec.and_then(|s| s.max_ahead_of_watermark).map(ms),
        }
    }

    /// Whether `ts` may enter the windows, given the wall clock and the partition's watermark
    /// (`NO_WATERMARK` before its first record).
    pub fn check(&self, ts: i64, wall_ms: i64, watermark: i64) -> Result<(), TimestampError> {
        if !(MIN_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&ts) {
            return Err(TimestampError::OutOfRange { ts });
        }
        let ahead = ts.saturating_sub(wall_ms);
        if ahead > self.ahead_of_wall_clock_ms {
            return Err(TimestampError::TooFarAhead {
                ts,
                ahead_ms: ahead,
                reference: "wall clock",
                setting: "maxAheadOfWallClock",
                bound_ms: self.ahead_of_wall_clock_ms,
            });
        }
        if let Some(bound) = self.ahead_of_watermark_ms
            && watermark != crate::watermark::NO_WATERMARK
        {
            let ahead = ts.saturating_sub(watermark);
            if ahead > bound {
                return Err(TimestampError::TooFarAhead {
                    ts,
                    ahead_ms: ahead,
                    reference: "watermark",
                    setting: "maxAheadOfWatermark",
                    bound_ms: bound,
                });
            }
        }
        Ok(())
    }
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

    /// Where event time comes from, for error messages: `timestamp field ts`, `the Kafka
    /// timestamp` or `processing time`.
    pub fn describe(&self) -> String {
        match self {
            Self::Field { path, .. } => format!("timestamp field {}", path.as_str()),
            Self::Kafka => "the Kafka timestamp".to_owned(),
            Self::ProcessingTime => "processing time".to_owned(),
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
    use crate::watermark::NO_WATERMARK;

    #[test]
    fn event_times_too_far_ahead_or_outside_the_calendar_are_refused() {
        let bounds = EventTimeBounds::new(None);
        let now = 1_800_000_000_000;
        assert_eq!(bounds.check(now + 3_600_000, now, NO_WATERMARK), Ok(()));
        assert!(matches!(
            bounds.check(now + 3_600_001, now, NO_WATERMARK),
            Err(TimestampError::TooFarAhead {
                reference: "wall clock",
                ..
            })
        ));
        // Far in the past is only late, not invalid; before year 1 or after 9999 is.
        assert_eq!(bounds.check(0, now, NO_WATERMARK), Ok(()));
        for ts in [
            i64::MIN,
            MIN_EVENT_TIME_MS - 1,
            MAX_EVENT_TIME_MS + 1,
            i64::MAX,
        ] {
            assert_eq!(
                bounds.check(ts, i64::MAX, NO_WATERMARK),
                Err(TimestampError::OutOfRange { ts })
            );
        }
        let spec: TimestampSpec = serde_json::from_value(
            json!({"field": "ts", "maxAheadOfWatermark": "1m", "maxAheadOfWallClock": "10s"}),
        )
        .unwrap();
        let bounds = EventTimeBounds::new(Some(&spec));
        assert_eq!(bounds.check(now + 10_000, now, NO_WATERMARK), Ok(()));
        assert!(bounds.check(now + 10_001, now, NO_WATERMARK).is_err());
        // A backlog an hour old: the wall clock does not catch a jump, the watermark does.
        let watermark = now - 3_600_000;
        assert_eq!(bounds.check(watermark + 60_000, now, watermark), Ok(()));
        let err = bounds
            .check(watermark + 60_001, now, watermark)
            .unwrap_err();
        assert!(err.to_string().contains("maxAheadOfWatermark"), "{err}");
    }

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

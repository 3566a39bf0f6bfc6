//! A span of time written the way Kubernetes users write it: `500ms`, `10s`, `1m`, `1h30m`.
//!
//! The accepted syntax is the subset shared by Go's `time.ParseDuration` (so the API server's CEL
//! `duration()` can compare two fields) and the `humantime` crate (so Rust parses it): whole numbers
//! followed by `ms`, `s`, `m` or `h`, repeated.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema enforces for every duration field.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// A non-negative duration, serialized as a string such as `10s` or `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected whole numbers with ms, s, m or h, e.g. 500ms, 10s, 1m30s)"
)]
pub struct DurationParseError {
    input: String,
    reason: String,
}

impl Duration {
    /// A duration of `secs` whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    /// `text` (`500ms`, `1m30s`) as a standard-library duration: the value parser of every
    /// command-line flag that takes a duration.
    pub fn parse_std(text: &str) -> Result<std::time::Duration, DurationParseError> {
        text.parse::<Self>().map(Self::get)
    }

    /// The standard-library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Whole milliseconds (saturating at `u64::MAX`).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// True for `0s`.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self(value)
    }
}

impl FromStr for Duration {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DurationParseError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let bytes = input.as_bytes();
        if bytes.is_empty() {
            return Err(err("empty"));
        }
        let mut total = std::time::Duration::ZERO;
        let mut i = 0;
        while i < bytes.len() {
            let digits_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == digits_start {
                return Err(err("a number must come before each unit"));
            }
            let value: u64 = input[digits_start..i]
                .parse()
                .map_err(|_| err("number too large"))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let part = match &input[unit_start..i] {
                "ms" => std::time::Duration::from_millis(value),
                "s" => std::time::Duration::from_secs(value),
                "m" => std::time::Duration::from_secs(value.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(value.saturating_mul(3600)),
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            total = total.checked_add(part).ok_or_else(|| err("too large"))?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Duration {
    /// Writes the shortest exact form: `90s` becomes `1m30s`, `1500ms` stays `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let mut secs = millis / 1000;
        let hours = secs / 3600;
        secs %= 3600;
        let minutes = secs / 60;
        secs %= 60;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        if secs > 0 {
            write!(f, "{secs}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_compound_forms() {
        assert_eq!(
            "500ms".parse::<Duration>().unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!("10s".parse::<Duration>().unwrap(), Duration::from_secs(10));
        assert_eq!("1m".parse::<Duration>().unwrap(), Duration::from_secs(60));
        assert_eq!("2h".parse::<Duration>().unwrap(), Duration::from_secs(7200));
        assert_eq!(
            "1h30m5s".parse::<Duration>().unwrap(),
            Duration::from_secs(5405)
        );
        assert_eq!("0s".parse::<Duration>().unwrap(), Duration::default());
    }

    #[test]
    fn rejects_what_go_or_the_pattern_would_reject() {
        for bad in ["", "10", "s", "1.5s", "10 s", "1d", "-1s", "1m-", "ms"] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for text in ["0s", "1500ms", "1m30s", "2h", "1h1s", "45m"] {
            let parsed: Duration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.to_string().parse::<Duration>().unwrap(), parsed);
        }
        assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
    }
}

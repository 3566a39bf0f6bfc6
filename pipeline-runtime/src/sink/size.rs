//! Every output a record produces must fit in one Kafka message. A record the producer refuses
//! (larger than `message.max.bytes`) would fail the slot, which restarts on the same record
//! forever, and under exactly-once a failed produce aborts the whole transaction. So each output
//! is measured before it is produced: one that does not fit is dead-lettered instead, and a dead
//! letter that does not fit is truncated (its error says so, with the original sizes).

use std::borrow::Cow;

use rdkafka::{ClientConfig, message::Headers};

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// What librdkafka counts in `message.max.bytes` beyond a record's key, value and headers: the
/// record batch header (61 bytes) and the record's own framing (varints), with room to spare.
const FRAMING_BYTES: usize = 128;
/// Framing of one header (its key and value lengths as varints).
const HEADER_FRAMING_BYTES: usize = 10;
/// The longest error header a dead letter carries; a longer error is cut (and says so).
pub const ERROR_MAX_BYTES: usize = 1024;
/// The most of a payload a truncated dead letter keeps (less when the limit is lower).
pub const TRUNCATED_PAYLOAD_MAX_BYTES: usize = 64 * 1024;
/// The most of a key a truncated dead letter keeps.
pub const TRUNCATED_KEY_MAX_BYTES: usize = 1024;

/// The largest record the slot's producer sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimit {
    max_bytes: usize,
}

impl OutputLimit {
    /// The limit of a producer with `config` (its `message.max.bytes`, librdkafka's default when
    /// unset).
    pub fn of(config: &ClientConfig) -> Self {
        let max_bytes = config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Self { max_bytes }
    }

    /// A limit of `max_bytes` (tests).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }

    /// The limit in bytes.
    pub fn max_bytes(self) -> usize {
        self.max_bytes
    }

    /// Why a record of these parts cannot be produced, naming it as a `what` record, or `None`
    /// when it fits.
    pub fn refusal(
        self,
        what: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<&impl Headers>,
    ) -> Option<String> {
        let bytes = record_bytes(key, value, headers);
        (bytes > self.max_bytes).then(|| {
            format!(
                "its {what} record of {bytes} bytes does not fit in one Kafka message (message.max.bytes {})",
                self.max_bytes
            )
        })
    }

    /// The payload bound of a truncated dead letter under this limit.
    pub fn truncated_payload_bytes(self) -> usize {
        TRUNCATED_PAYLOAD_MAX_BYTES.min(self.max_bytes / 2)
    }
}

/// Bytes of a record as librdkafka measures it against `message.max.bytes`, rounded up.
pub fn record_bytes(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: Option<&impl Headers>,
) -> usize {
    let headers = headers.map_or(0, |h| {
        h.iter()
            .map(|h| header_bytes(h.key, h.value.unwrap_or_default()))
            .sum()
    });
    FRAMING_BYTES + key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + headers
}

/// Bytes one header adds to a record: its key, its value and their framing.
pub fn header_bytes(key: &str, value: impl AsRef<[u8]>) -> usize {
    key.len() + value.as_ref().len() + HEADER_FRAMING_BYTES
}

/// `error` cut to [`ERROR_MAX_BYTES`] at a character boundary, saying so and how long it was.
pub fn bounded_error(error: &str) -> Cow<'_, str> {
    if error.len() <= ERROR_MAX_BYTES {
        return Cow::Borrowed(error);
    }
    let note = format!("… (error truncated from {} bytes)", error.len());
    let mut end = ERROR_MAX_BYTES - note.len();
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{note}", &error[..end]))
}

/// The first `max` bytes of `bytes`.
pub fn truncated(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary_and_says_how_long_it_was() {
        let long = "é".repeat(300_000);
        let bounded = bounded_error(&long);
        assert!(bounded.len() <= ERROR_MAX_BYTES, "{}", bounded.len());
        assert!(
            bounded.ends_with("… (error truncated from 600000 bytes)"),
            "{}",
            &bounded[bounded.len() - 60..]
        );
        assert_eq!(bounded_error("short"), "short");
    }

    #[test]
    fn a_record_is_measured_with_its_key_value_headers_and_framing() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "k",
            value: Some("vv"),
        });
        assert_eq!(
            record_bytes(Some(b"key"), Some(&[0; 100]), Some(&headers)),
            FRAMING_BYTES + 3 + 100 + 1 + 2 + HEADER_FRAMING_BYTES
        );
        let limit = OutputLimit::new(1000);
        assert_eq!(
            limit.refusal("output", None, Some(&[0; 800]), None::<&OwnedHeaders>),
            None
        );
        assert_eq!(
            limit
                .refusal("output", None, Some(&[0; 900]), None::<&OwnedHeaders>)
                .as_deref(),
            Some(
                "its output record of 1028 bytes does not fit in one Kafka message (message.max.bytes 1000)"
            )
        );
        let mut config = ClientConfig::new();
        assert_eq!(
            OutputLimit::of(&config).max_bytes(),
            DEFAULT_MESSAGE_MAX_BYTES
        );
        config.set("message.max.bytes", "2000000");
        assert_eq!(OutputLimit::of(&config).max_bytes(), 2_000_000);
    }
}

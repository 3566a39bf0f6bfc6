//! What the load generator writes: IoT sensor readings (JSON or Avro) and clickstream events
//! (JSON), with a key per device or user, hot keys, out-of-order event times and malformed
//! records in chosen shares.

use std::{fmt, str::FromStr, sync::Arc};

use apache_avro::{Schema, types::Value as AvroValue};

use crate::demo::Rng;

/// The record shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// ≈240-byte JSON sensor readings keyed by `device_id` (the seed-003 job).
    IotJson,
    /// The same readings as Avro in the Confluent wire format (schema id from a registry).
    IotAvro,
    /// JSON click events keyed by `user_id` (the seed-001 job).
    ClicksJson,
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "iot-json" => Ok(Self::IotJson),
            "iot-avro" => Ok(Self::IotAvro),
            "clicks-json" => Ok(Self::ClicksJson),
            other => Err(format!(
                "unknown workload {other:?} (expected iot-json, iot-avro or clicks-json)"
            )),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IotJson => "iot-json",
            Self::IotAvro => "iot-avro",
            Self::ClicksJson => "clicks-json",
        })
    }
}

/// The Avro schema of a sensor reading.
pub const IOT_AVRO_SCHEMA: &str = r#"{"type":"record","name":"SensorReading","namespace":"dev.sluice","fields":[
{"name":"device_id","type":"string"},{"name":"ts","type":"long"},{"name":"temperature","type":"double"},
{"name":"humidity","type":"double"},{"name":"pressure","type":"double"},{"name":"battery","type":"double"},
{"name":"latency_ms","type":"long"},{"name":"firmware","type":"string"},{"name":"site","type":"string"},
{"name":"status","type":"string"},{"name":"lat","type":"double"},{"name":"lon","type":"double"}]}"#;

/// How keys and records are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// Distinct keys (devices or users).
    pub keys: u64,
    /// Keys that get `hot_share` of the records (0 = uniform).
    pub hot_keys: u64,
    /// Share of records that go to the hot keys, in [0, 1].
    pub hot_share: f64,
    /// Share of records whose event time lies up to `max_disorder_ms` in the past.
    pub out_of_order: f64,
    /// Largest event-time disorder, ms.
    pub max_disorder_ms: i64,
    /// Share of records that are not valid for the workload's format.
    pub malformed: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            keys: 100_000,
            hot_keys: 0,
            hot_share: 0.0,
            out_of_order: 0.0,
            max_disorder_ms: 2_000,
            malformed: 0.0,
        }
    }
}

/// One generated record.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The record key (device or user id); the partitioner places equal keys together.
    pub key: String,
    /// The record value.
    pub value: Vec<u8>,
    /// Whether the value was made malformed on purpose.
    pub malformed: bool,
}

/// Draws records of one workload; the same seed gives the same records for the same times.
pub struct Generator {
    workload: Workload,
    shape: Shape,
    rng: Rng,
    avro: Option<(Arc<Schema>, u32)>,
    /// Writing a closing record: ordinary values instead of random ones.
    closing: bool,
}

fn share(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && (rng.below(1_000_000) as f64) < p * 1_000_000.0
}

impl Generator {
    /// A generator; `avro_schema_id` is the registry id of [`IOT_AVRO_SCHEMA`] (Avro only).
    pub fn new(workload: Workload, shape: Shape, seed: u64, avro_schema_id: Option<u32>) -> Self {
        let avro = avro_schema_id.map(|id| {
            (
                Arc::new(Schema::parse_str(IOT_AVRO_SCHEMA).expect("the reading schema parses")),
                id,
            )
        });
        Self {
            workload,
            shape,
            rng: Rng::new(seed),
            avro,
            closing: false,
        }
    }

    fn key_index(&mut self) -> u64 {
        let keys = self.shape.keys.max(1);
        let hot = self.shape.hot_keys.min(keys);
        if hot > 0 && share(&mut self.rng, self.shape.hot_share) {
            self.rng.below(hot)
        } else {
            self.rng.below(keys)
        }
    }

    /// The next record, with event time `now_ms` (moved back when it is out of order).
    pub fn next(&mut self, now_ms: i64) -> Generated {
        let index = self.key_index();
        let ts = if share(&mut self.rng, self.shape.out_of_order) {
            let back = self.shape.max_disorder_ms.max(1) as u64;
            now_ms - 1 - self.rng.below(back) as i64
        } else {
            now_ms
        };
        let malformed = share(&mut self.rng, self.shape.malformed);
        let key = match self.workload {
            Workload::IotJson | Workload::IotAvro => format!("device-{index:06}"),
            Workload::ClicksJson => format!("user-{index:06}"),
        };
        let mut value = self.value(&key, ts);
        if malformed {
            // Cut in half: invalid JSON, or an Avro body that ends inside a field.
            value.truncate(value.len() / 2);
        }
        Generated {
            key,
            value,
            malformed,
        }
    }

    /// A well-formed record of key `close-<partition>` at event time `ts`: written last to
    /// `partition`, it moves that partition's watermark past every window of the run. It has
    /// ordinary values (20 °C, status ok, a page view), so the usual filters let it through.
    pub fn closing(&mut self, partition: i32, ts: i64) -> Generated {
        let key = format!("close-{partition}");
        self.closing = true;
        let value = self.value(&key, ts);
        self.closing = false;
        Generated {
            key,
            value,
            malformed: false,
        }
    }

    fn value(&mut self, key: &str, ts: i64) -> Vec<u8> {
        match self.workload {
            Workload::IotJson | Workload::IotAvro => self.reading(key, ts),
            Workload::ClicksJson => self.click(key, ts),
        }
    }

    fn reading(&mut self, key: &str, ts: i64) -> Vec<u8> {
        let closing = self.closing;
        let r = &mut self.rng;
        let mut temperature = r.below(6_000) as f64 / 100.0 - 10.0;
        let humidity = r.below(1_000) as f64 / 10.0;
        let pressure = 950.0 + r.below(1_000) as f64 / 10.0;
        let battery = r.below(1_000) as f64 / 1_000.0;
        let latency = r.below(500) as i64;
        let firmware = format!("v2.{}.{}", r.below(10), r.below(10));
        let site = format!("plant-{:02}-line-{}", r.below(40), r.below(8));
        let mut status = if r.below(50) == 0 { "degraded" } else { "ok" };
        if closing {
            (temperature, status) = (20.0, "ok");
        }
        let lat = 40.0 + r.below(1_000_000) as f64 / 100_000.0;
        let lon = -3.0 + r.below(1_000_000) as f64 / 100_000.0;
        match &self.avro {
            None => format!(
                r#"{{"device_id":"{key}","ts":{ts},"temperature":{temperature:.2},"humidity":{humidity:.1},"pressure":{pressure:.1},"battery":{battery:.3},"latency_ms":{latency},"firmware":"{firmware}","site":"{site}","status":"{status}","location":{{"lat":{lat:.5},"lon":{lon:.5}}}}}"#
            )
            .into_bytes(),
            Some((schema, id)) => {
                let record = AvroValue::Record(vec![
                    ("device_id".into(), AvroValue::String(key.to_owned())),
                    ("ts".into(), AvroValue::Long(ts)),
                    ("temperature".into(), AvroValue::Double(temperature)),
                    ("humidity".into(), AvroValue::Double(humidity)),
                    ("pressure".into(), AvroValue::Double(pressure)),
                    ("battery".into(), AvroValue::Double(battery)),
                    ("latency_ms".into(), AvroValue::Long(latency)),
                    ("firmware".into(), AvroValue::String(firmware)),
                    ("site".into(), AvroValue::String(site)),
                    ("status".into(), AvroValue::String(status.into())),
                    ("lat".into(), AvroValue::Double(lat)),
                    ("lon".into(), AvroValue::Double(lon)),
                ]);
                let mut bytes = vec![0];
                bytes.extend_from_slice(&id.to_be_bytes());
                bytes.extend(
                    apache_avro::to_avro_datum(schema, record).expect("a reading fits its schema"),
                );
                bytes
            }
        }
    }

    fn click(&mut self, key: &str, ts: i64) -> Vec<u8> {
        const EVENTS: [&str; 5] = [
            "page_view",
            "page_view",
            "click",
            "add_to_cart",
            "heartbeat",
        ];
        let closing = self.closing;
        let r = &mut self.rng;
        let mut event = EVENTS[r.below(EVENTS.len() as u64) as usize];
        if closing {
            event = "page_view";
        }
        let page = format!("/product/{}", r.below(5_000));
        let price = if event == "add_to_cart" {
            r.below(20_000) as f64 / 100.0
        } else {
            0.0
        };
        let duration_ms = r.below(60_000);
        let value = format!(
            r#"{{"user_id":"{key}","event_time":{ts},"event_type":"{event}","page":"{page}","price":{price:.2},"duration_ms":{duration_ms},"session_hint":{},"user_agent":"Mozilla/5.0 (X11; Linux x86_64)"}}"#,
            r.below(1_000)
        );
        value.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_about_240_bytes_of_valid_json_with_the_key_as_device_id() {
        let mut g = Generator::new(Workload::IotJson, Shape::default(), 7, None);
        for _ in 0..100 {
            let r = g.next(1_700_000_000_000);
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(v["device_id"], r.key.as_str());
            assert_eq!(v["ts"], 1_700_000_000_000_i64);
            assert!((200..280).contains(&r.value.len()), "{}", r.value.len());
        }
    }

    #[test]
    fn avro_readings_decode_with_their_schema_after_the_wire_header() {
        let mut g = Generator::new(Workload::IotAvro, Shape::default(), 7, Some(42));
        let r = g.next(5);
        assert_eq!(&r.value[..5], &[0, 0, 0, 0, 42]);
        let schema = Schema::parse_str(IOT_AVRO_SCHEMA).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut &r.value[5..], None).unwrap();
        let AvroValue::Record(fields) = value else {
            panic!()
        };
        assert_eq!(fields[0].1, AvroValue::String(r.key));
        assert_eq!(fields[1].1, AvroValue::Long(5));
    }

    #[test]
    fn shares_of_hot_keys_disorder_and_malformed_records_are_kept() {
        let shape = Shape {
            keys: 1_000,
            hot_keys: 10,
            hot_share: 0.5,
            out_of_order: 0.2,
            max_disorder_ms: 1_000,
            malformed: 0.1,
        };
        let mut g = Generator::new(Workload::ClicksJson, shape, 3, None);
        let n = 20_000;
        let (mut hot, mut late, mut bad) = (0, 0, 0);
        for _ in 0..n {
            let r = g.next(10_000);
            let index: u64 = r.key["user-".len()..].parse().unwrap();
            hot += usize::from(index < 10);
            match serde_json::from_slice::<serde_json::Value>(&r.value) {
                Ok(v) => {
                    let ts = v["event_time"].as_i64().unwrap();
                    assert!((9_000..=10_000).contains(&ts));
                    late += usize::from(ts < 10_000);
                }
                Err(_) => bad += 1,
            }
            assert_eq!(
                r.malformed,
                serde_json::from_slice::<serde_json::Value>(&r.value).is_err()
            );
        }
        let share = |k: usize| k as f64 / n as f64;
        assert!((share(hot) - 0.505).abs() < 0.02, "hot {}", share(hot));
        assert!((share(bad) - 0.1).abs() < 0.01, "malformed {}", share(bad));
        assert!((late as f64 / (n - bad) as f64 - 0.2).abs() < 0.02);
    }
}

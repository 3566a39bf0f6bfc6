//! The Kafka sink of output rows: window results as JSON or Avro (Confluent wire format, the
//! schema derived from the spec and registered under `<topic>-value`), stateless records as
//! JSON, each keyed so that a re-emitted window replaces the earlier record in a compacted topic.
//! Rows go through the slot's producer, so in exactly-once mode they commit in its transaction.

use std::{sync::Arc, time::Duration};

use apache_avro::Schema;
use pipeline_crds::{PipelineDeploymentSpec, sink::OutputFormat};
use rdkafka::{
    message::OwnedHeaders,
    producer::{BaseProducer, BaseRecord},
};

use crate::{plan::Plan, processor::FailedStage, row::Row, schema_registry::SchemaRegistry};

use super::{
    DeliveryTracker, RowSink, Sent, SinkError,
    encode::{OutputError, row_json, window_avro, window_schema},
    produce,
    registry::RowsError,
    size::OutputLimit,
};

/// Where and how rows go to Kafka, settled from `spec.sink.kafka` when the plan is compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTarget {
    /// The output topic.
    pub topic: String,
    /// The Schema Registry window results are registered in, when they are written as Avro
    /// (a windowed pipeline with `format: avro`); JSON otherwise.
    pub avro_registry: Option<String>,
}

impl KafkaTarget {
    /// The target of `spec`'s Kafka sink.
    pub fn of(spec: &PipelineDeploymentSpec) -> Self {
        let sink = spec.sink.kafka.as_ref();
        let avro = spec.window.is_some() && sink.is_some_and(|k| k.format == OutputFormat::Avro);
        Self {
            topic: sink.map(|k| k.topic.clone()).unwrap_or_default(),
            avro_registry: spec.kafka.schema_registry_url.clone().filter(|_| avro),
        }
    }
}

/// How window results are written.
enum Encoding {
    Json,
    Avro { schema: Box<Schema>, id: u32 },
}

/// Rows to a Kafka topic.
pub struct KafkaRows {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    /// The largest record `producer` sends: a row past it is rejected (stage `output`).
    limit: OutputLimit,
    topic: String,
    key_field: String,
    encoding: Encoding,
}

/// Why the Kafka rows sink cannot start; each reaches the slot as a [`SinkError::Rows`].
#[derive(Debug, thiserror::Error)]
pub enum KafkaRowsError {
    /// The output schema could not be registered (retryable).
    #[error("output schema: {0}")]
    Registry(#[from] crate::schema_registry::RegistryError),
    /// The output schema cannot be derived from the spec (not retryable).
    #[error(transparent)]
    Schema(#[from] OutputError),
}

impl From<KafkaRowsError> for SinkError {
    fn from(error: KafkaRowsError) -> Self {
        let retryable = !matches!(error, KafkaRowsError::Schema(_));
        Self::Rows(RowsError::new(error, retryable))
    }
}

impl KafkaRows {
    /// The sink of `plan`'s rows to `target` on `producer`; registers the Avro schema when the
    /// output is Avro (an unreachable registry is a retryable error).
    pub fn new(
        plan: &Plan,
        target: &KafkaTarget,
        producer: Arc<BaseProducer<DeliveryTracker>>,
        limit: OutputLimit,
    ) -> Result<Self, SinkError> {
        let encoding = match (&plan.window, &target.avro_registry) {
            (Some(window), Some(url)) => {
                let schema = window_schema(plan.key_field(), &window.aggregates)
                    .map_err(KafkaRowsError::from)?;
                let subject = format!("{}-value", target.topic);
                let id = SchemaRegistry::new(url)
                    .register(&subject, &schema)
                    .map_err(KafkaRowsError::from)?;
                Encoding::Avro {
                    schema: Box::new(schema),
                    id,
                }
            }
            _ => Encoding::Json,
        };
        Ok(Self {
            producer,
            limit,
            topic: target.topic.clone(),
            key_field: plan.key_field().to_owned(),
            encoding,
        })
    }

    /// The bytes of a row: (key, value).
    fn encode(&self, row: &Row) -> Result<(Option<Vec<u8>>, Vec<u8>), OutputError> {
        match (&self.encoding, row) {
            (Encoding::Avro { schema, id }, Row::Window { result, .. }) => {
                let (key, _) = super::encode::window_record(&self.key_field, result);
                Ok((Some(key), window_avro(schema, *id, result)?))
            }
            _ => Ok(row_json(&self.key_field, row)),
        }
    }

    /// Produces one record to the sink topic; one that does not fit in a Kafka message is
    /// rejected (dead-lettered as JSON, stage `output`).
    fn write(
        &self,
        row: &Row,
        key: Option<&[u8]>,
        value: &[u8],
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Sent, SinkError> {
        if let Some(error) = self
            .limit
            .refusal("output", key, Some(value), None::<&OwnedHeaders>)
        {
            let (key, json) = row_json(&self.key_field, row);
            return Ok(Sent::Rejected {
                key,
                json,
                error,
                stage: FailedStage::Output,
            });
        }
        let mut record = BaseRecord::to(self.topic.as_str()).payload(value);
        if let Some(k) = key {
            record = record.key(k);
        }
        produce(&self.producer, record, blocked, stop)?;
        Ok(Sent::Accepted)
    }
}

impl RowSink for KafkaRows {
    fn send(
        &mut self,
        row: Row,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Sent, SinkError> {
        if let Row::Record { key, json, .. } = &row {
            // As read or projected: sent as it is, no copy.
            return self.write(&row, key.as_deref(), json, blocked, stop);
        }
        match self.encode(&row) {
            Ok((key, value)) => self.write(&row, key.as_deref(), &value, blocked, stop),
            Err(e) => {
                let (key, json) = row_json(&self.key_field, &row);
                Ok(Sent::Rejected {
                    key,
                    json,
                    error: e.to_string(),
                    stage: FailedStage::Encode,
                })
            }
        }
    }

    fn flush(&mut self, _: &mut Duration, _: &dyn Fn() -> bool) -> Result<(), SinkError> {
        // The slot's producer flush (which follows) acknowledges these rows with the rest.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pipeline_crds::manifest::from_yaml;
    use serde_json::{Value, json};

    use super::*;
    use crate::window::WindowResult;

    const WINDOWED: &str = "  transform: {keyBy: dev, timestamp: {field: ts}, repartition: never}\n  window: {tumbling: {size: 10s}}\n  aggregates: [{name: n, function: count}, {name: total, function: sum, field: v}]\n";

    fn plan(url: &str) -> Plan {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092', schemaRegistryUrl: '{url}'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out, format: avro}}}}\n{WINDOWED}"
        );
        let spec = from_yaml(&text, "test").unwrap().spec;
        assert!(pipeline_crds::support::problems(&spec).is_empty());
        Plan::of_spec(&spec, vec![1])
    }

    fn kafka_target(plan: &Plan) -> &KafkaTarget {
        match &plan.rows {
            crate::sink::registry::RowsTarget::Kafka(target) => target,
            other => panic!("{other:?}"),
        }
    }

    fn producer() -> Arc<BaseProducer<DeliveryTracker>> {
        Arc::new(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:1")
                .create_with_context(DeliveryTracker::default())
                .unwrap(),
        )
    }

    /// A registry on loopback that answers one registration with `id` and returns the request.
    fn one_shot_registry(id: u32) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers and the JSON body (ends with the closing brace of the request).
            while !request.ends_with(b"}") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let body = format!("{{\"id\":{id}}}");
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, server)
    }

    #[test]
    fn avro_output_registers_the_derived_schema_and_writes_the_wire_format() {
        let (url, server) = one_shot_registry(7);
        let plan = plan(&url);
        let rows = KafkaRows::new(
            &plan,
            kafka_target(&plan),
            producer(),
            OutputLimit::new(crate::sink::size::DEFAULT_MESSAGE_MAX_BYTES),
        )
        .unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /subjects/out-value/versions "),
            "{request}"
        );
        assert!(request.contains("WindowResult"), "{request}");
        let result = WindowResult {
            key: Arc::from("a"),
            key_value: json!("a"),
            start: 0,
            end: 10_000,
            values: vec![("n".into(), json!(1)), ("total".into(), json!(5))],
        };
        let (key, value) = rows.encode(&Row::Window { result, version: 1 }).unwrap();
        assert_eq!(key.unwrap(), br#"{"dev":"a","window_start":0}"#);
        assert_eq!(&value[..5], &[0, 0, 0, 0, 7]);
        let schema = window_schema("dev", &plan.window.as_ref().unwrap().aggregates).unwrap();
        let decoded = apache_avro::from_avro_datum(&schema, &mut &value[5..], None).unwrap();
        assert_eq!(
            Value::try_from(decoded).unwrap(),
            json!({"dev": "a", "window_start": 0, "window_end": 10_000, "n": 1, "total": 5.0})
        );
    }

    #[test]
    fn an_unreachable_registry_is_a_retryable_start_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let plan = plan(&url);
        let err = KafkaRows::new(
            &plan,
            kafka_target(&plan),
            producer(),
            OutputLimit::new(crate::sink::size::DEFAULT_MESSAGE_MAX_BYTES),
        )
        .err()
        .unwrap();
        assert!(err.is_retryable(), "{err}");
    }
}

//! The source topics' partition count, from Kafka metadata (short timeout, cached for a minute).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use pipeline_crds::PipelineDeploymentSpec;
use rdkafka::{ClientConfig, consumer::BaseConsumer, consumer::Consumer};

use crate::controller::PartitionSource;

const TIMEOUT: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(60);

/// Reads partition counts with a metadata request per topic, remembered for [`TTL`].
#[derive(Default)]
pub struct KafkaPartitions {
    cache: Mutex<HashMap<(String, String), (i32, Instant)>>,
}

impl KafkaPartitions {
    fn topic_partitions(&self, spec: &PipelineDeploymentSpec, topic: &str) -> Result<i32, String> {
        let key = (spec.kafka.bootstrap_servers.clone(), topic.to_owned());
        if let Some((count, at)) = self.cache.lock().expect("not poisoned").get(&key)
            && at.elapsed() < TTL
        {
            return Ok(*count);
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &spec.kafka.bootstrap_servers)
            .set(
                "security.protocol",
                spec.kafka.security_protocol.as_kafka_str(),
            )
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| {
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
            });
        if count == 0 {
            return Err(format!("topic {topic} does not exist or has no partitions"));
        }
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(key, (count, Instant::now()));
        Ok(count)
    }
}

impl PartitionSource for KafkaPartitions {
    fn partitions(&self, spec: &PipelineDeploymentSpec) -> Result<i32, String> {
        spec.source
            .topic_names()
            .into_iter()
            .map(|topic| self.topic_partitions(spec, topic))
            .sum()
    }
}

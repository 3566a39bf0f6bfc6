//! librdkafka client settings for the slots' consumers and producers.
//!
//! Membership: slots join the consumer group as dynamic members (no `group.instance.id`), so a
//! slot that stops leaves the group at once and its partitions move within one rebalance. Static
//! membership would keep a stopped slot's partitions unassigned until `session.timeout.ms` ran
//! out, stalling every scale-down.

use std::env;

use pipeline_crds::{
    PipelineDeploymentSpec,
    checkpoint::DeliveryGuarantee,
    contract::{env as env_names, paths},
    kafka::{DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_SESSION_TIMEOUT_MS},
    source::StartingOffsets,
};
use rdkafka::ClientConfig;

/// Sets `client.id` unless the user's properties already did.
pub fn with_client_id(mut config: ClientConfig, client_id: &str) -> ClientConfig {
    if config.get("client.id").is_none() {
        config.set("client.id", client_id);
    }
    config
}

/// Settings common to consumers and producers: brokers, security, user properties. No
/// `client.id`: each client adds its own ([`with_client_id`]).
pub fn base_config(spec: &PipelineDeploymentSpec, bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    if spec.kafka.sasl.is_some() {
        // Credentials come from the Secret through the environment, never from the spec.
        if let Ok(user) = env::var(env_names::KAFKA_SASL_USERNAME) {
            config.set("sasl.username", user);
        }
        if let Ok(password) = env::var(env_names::KAFKA_SASL_PASSWORD) {
            config.set("sasl.password", password);
        }
    }
    if let Some(ca) = spec.kafka.tls.as_ref().and_then(|t| t.ca_secret.as_ref()) {
        config.set(
            "ssl.ca.location",
            format!("{}/{}", paths::KAFKA_CA_DIR, ca.key),
        );
    }
    if spec
        .kafka
        .tls
        .as_ref()
        .is_some_and(|t| t.client_certificate_secret.is_some())
    {
        use pipeline_crds::kafka::{TLS_CERTIFICATE_KEY, TLS_PRIVATE_KEY_KEY};
        let dir = paths::KAFKA_CLIENT_CERT_DIR;
        config.set(
            "ssl.certificate.location",
            format!("{dir}/{TLS_CERTIFICATE_KEY}"),
        );
        config.set("ssl.key.location", format!("{dir}/{TLS_PRIVATE_KEY_KEY}"));
    }
    if spec.kafka.rack.is_some()
        && let Some(rack) = crate::rack::written_rack(std::path::Path::new(paths::RACK_FILE))
    {
        config.set("client.rack", rack);
    }
    // Last, so the user's properties win where the runtime only sets a default (the CA path;
    // client.id, added later only where they set none); the ones it owns are refused by
    // validate().
    for (key, value) in spec.kafka.client_properties() {
        config.set(key, value);
    }
    config
}

/// A slot's consumer: manual offset commits, cooperative-sticky assignment, statistics for the
/// end-offset gauges, `read_committed` so exactly-once inputs are read correctly.
pub fn consumer_config(
    spec: &PipelineDeploymentSpec,
    bootstrap_servers: &str,
    group: &str,
) -> ClientConfig {
    let mut config = base_config(spec, bootstrap_servers);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set(
            "auto.offset.reset",
            match spec.source.starting_offsets {
                StartingOffsets::Earliest => "earliest",
                StartingOffsets::Latest => "latest",
            },
        )
        .set("statistics.interval.ms", "1000")
        .set("enable.partition.eof", "false");
    // Defaults only: the user's own values (validated) win.
    let user = &spec.kafka.properties;
    for (key, default) in [
        ("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS),
        ("heartbeat.interval.ms", DEFAULT_HEARTBEAT_INTERVAL_MS),
    ] {
        if !user.contains_key(key) {
            config.set(key, default.to_string());
        }
    }
    config
}

/// How long a record may wait for delivery; a transaction must be allowed at least as long.
const MESSAGE_TIMEOUT_MS: u64 = 120_000;

/// Kafka brokers' default `transaction.max.timeout.ms`: a longer transaction timeout makes
/// `InitProducerId` fail.
const MAX_TRANSACTION_TIMEOUT_MS: u64 = 900_000;

/// A slot's producer: idempotent, `acks=all`, batching and compression from the sink spec
/// (defaults from the seeds: linger 5 ms, 256 KiB batches, lz4), and the Java client's murmur2
/// partitioner so keys land where Kafka Streams and Flink would put them. With exactly-once
/// delivery a transaction may stay open for three checkpoint intervals (at least the delivery
/// timeout, two minutes) before the broker aborts it; each slot adds its `transactional.id`.
pub fn producer_config(spec: &PipelineDeploymentSpec, bootstrap_servers: &str) -> ClientConfig {
    let mut config = base_config(spec, bootstrap_servers);
    let (linger_ms, batch_bytes, compression) =
        spec.sink.kafka.as_ref().map_or((5, 262_144, "lz4"), |k| {
            (
                k.linger.as_millis(),
                k.batch_bytes,
                k.compression.as_kafka_str(),
            )
        });
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("batch.size", batch_bytes.to_string())
        .set("compression.type", compression)
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS.to_string())
        .set("queue.buffering.max.kbytes", "131072")
        // Only failures need a delivery report (they stop offsets from passing a lost record);
        // a report per record would pile up between polls and block the slot on a full queue.
        .set("delivery.report.only.error", "true");
    if spec.delivery == DeliveryGuarantee::ExactlyOnce {
        let interval_ms = spec
            .checkpoint
            .as_ref()
            .map_or(10_000, |c| c.interval.as_millis());
        // Validation keeps the interval to 5 minutes, so this stays within the brokers' default
        // transaction.max.timeout.ms (15 minutes); the cap holds it there regardless.
        config.set(
            "transaction.timeout.ms",
            (interval_ms * 3)
                .clamp(MESSAGE_TIMEOUT_MS, MAX_TRANSACTION_TIMEOUT_MS)
                .to_string(),
        );
    }
    config
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::*;

    fn spec(extra: &str) -> PipelineDeploymentSpec {
        from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  source: {{topic: in}}\n{extra}"),
            "t",
        )
        .unwrap()
        .spec
    }

    #[test]
    fn exactly_once_producers_get_a_transaction_timeout_beyond_the_checkpoint_interval() {
        let s = spec(
            "  kafka: {bootstrapServers: 'k:9092'}\n  sink: {kafka: {topic: out}}\n  delivery: exactly-once\n  checkpoint: {interval: 30s, storage: {local: {path: /tmp/cp}}}\n",
        );
        let p = producer_config(&s, "k:9092");
        assert_eq!(p.get("transaction.timeout.ms"), Some("120000"));
        assert_eq!(p.get("transactional.id"), None, "each slot adds its own");
        let at_least_once =
            spec("  kafka: {bootstrapServers: 'k:9092'}\n  sink: {kafka: {topic: out}}\n");
        assert_eq!(
            producer_config(&at_least_once, "k:9092").get("transaction.timeout.ms"),
            None
        );
    }

    #[test]
    fn a_client_id_from_the_users_properties_is_kept() {
        let s = spec(
            "  kafka: {bootstrapServers: 'k:9092', properties: {client.id: mine}}\n  sink: {kafka: {topic: out}}\n",
        );
        let c = with_client_id(consumer_config(&s, "k:9092", "g"), "sluice-p-0-0");
        assert_eq!(c.get("client.id"), Some("mine"));
        let s = spec("  kafka: {bootstrapServers: 'k:9092'}\n  sink: {kafka: {topic: out}}\n");
        let c = with_client_id(consumer_config(&s, "k:9092", "g"), "sluice-p-0-0");
        assert_eq!(c.get("client.id"), Some("sluice-p-0-0"));
    }

    #[test]
    fn consumers_commit_manually_and_rebalance_cooperatively() {
        let s = spec(
            "  kafka: {bootstrapServers: 'k:9092', properties: {fetch.max.bytes: '1048576'}}\n  sink: {kafka: {topic: out}}\n",
        );
        let c = consumer_config(&s, "k:9092", "g");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("group.instance.id"), None, "dynamic membership");
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1048576"));
    }

    #[test]
    fn producers_report_only_failed_deliveries() {
        let s = spec("  kafka: {bootstrapServers: 'k:9092'}\n  sink: {kafka: {topic: out}}\n");
        let p = producer_config(&s, "k:9092");
        assert_eq!(p.get("delivery.report.only.error"), Some("true"));
    }

    #[test]
    fn producers_use_the_sink_tuning() {
        let s = spec(
            "  kafka: {bootstrapServers: 'k:9092'}\n  sink: {kafka: {topic: out, linger: 10ms, batchBytes: 1048576, compression: zstd}}\n",
        );
        let p = producer_config(&s, "k:9092");
        assert_eq!(p.get("linger.ms"), Some("10"));
        assert_eq!(p.get("batch.size"), Some("1048576"));
        assert_eq!(p.get("compression.type"), Some("zstd"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn a_client_certificate_secret_becomes_the_mounted_certificate_and_key() {
        let s = spec(
            "  kafka:\n    bootstrapServers: 'k:9093'\n    securityProtocol: SSL\n    tls: {clientCertificateSecret: {name: client}}\n  sink: {kafka: {topic: out}}\n",
        );
        let c = base_config(&s, "k:9093");
        assert_eq!(
            c.get("ssl.certificate.location"),
            Some("/etc/sluice/kafka-client/tls.crt")
        );
        assert_eq!(
            c.get("ssl.key.location"),
            Some("/etc/sluice/kafka-client/tls.key")
        );
    }

    #[test]
    fn sasl_mechanism_is_set_and_the_ca_path_points_at_the_mounted_secret() {
        let s = spec(
            "  kafka:\n    bootstrapServers: 'k:9092'\n    securityProtocol: SASL_SSL\n    sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: s}}\n    tls: {caSecret: {name: ca}}\n  sink: {kafka: {topic: out}}\n",
        );
        let c = base_config(&s, "k:9092");
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            c.get("ssl.ca.location"),
            Some("/etc/sluice/kafka-ca/ca.crt")
        );
    }
}

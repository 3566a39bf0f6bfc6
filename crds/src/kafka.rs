//! How the runtime connects to Kafka: brokers, security, and extra client properties.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The consumers' `session.timeout.ms` unless `properties` sets it: a dead slot's partitions move
/// after 10 s instead of librdkafka's 45 s.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;
/// The consumers' `heartbeat.interval.ms` unless `properties` sets it.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// librdkafka's `max.poll.interval.ms` default.
pub const DEFAULT_MAX_POLL_INTERVAL_MS: u64 = 300_000;

/// Connection settings shared by the source, the sink and the side topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sasl) || self.securityProtocol == 'SASL_PLAINTEXT' || self.securityProtocol == 'SASL_SSL'").message("sasl requires securityProtocol SASL_PLAINTEXT or SASL_SSL"))]
pub struct KafkaSpec {
    /// Comma-separated `host:port` list of Kafka brokers, e.g. `kafka.kafka:9092`.
    #[schemars(length(max = 4096, min = 1))]
    pub bootstrap_servers: String,

    /// Protocol used to talk to the brokers. Defaults to `PLAINTEXT`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,

    /// SASL authentication. The credentials always come from a Secret, never inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,

    /// TLS settings for `SSL` and `SASL_SSL`: a CA bundle to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// URL of a Confluent-compatible Schema Registry, used by the `avro` format when no inline
    /// schema is given and to register the schema of Avro outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub schema_registry_url: Option<String>,

    /// Secret with the Schema Registry's username and password, sent as HTTP basic auth (for
    /// Confluent Cloud, the API key and secret). Credentials in `schemaRegistryUrl` are refused:
    /// the URL is stored in the spec and the runtime's ConfigMap in plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_registry_credentials_secret: Option<CredentialsSecretRef>,

    /// Extra librdkafka client properties applied to every consumer and producer, e.g.
    /// `fetch.max.bytes` or `client.rack`. Properties the runtime owns (group, offsets,
    /// transactions, credentials) are rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub properties: BTreeMap<String, String>,

    /// Rack awareness: each runtime pod sets librdkafka's `client.rack` to its node's value of
    /// this label, so consumers fetch from the replica in their own zone (KIP-392; the brokers
    /// need `replica.selector.class` set, which Amazon MSK does with zone ids as racks). An init
    /// container reads the label from the pod's node, which needs `get` on nodes for the pods'
    /// ServiceAccount (the chart's `runtime.rack.enabled`). Where it cannot be read, the pod
    /// starts without a rack and says so. Not with `properties[client.rack]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<RackSpec>,

    /// Create the topics the pipeline writes to (sink, dead-letter, late data) when they are
    /// missing. Without it a pipeline whose output topic is missing does not start: it reports the
    /// topic (log, `/readyz`, `pipeline_topics_missing`) and checks again, consuming nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_topics: Option<CreateTopics>,
}

/// Where a pod's rack comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RackSpec {
    /// The node label whose value is the pod's rack: `topology.kubernetes.io/zone` (the zone
    /// name, e.g. `eu-west-1a`) by default; on EKS with Amazon MSK `topology.k8s.aws/zone-id`
    /// (`euw1-az1`), since MSK names its racks by zone id.
    #[serde(default = "default_rack_topology_key")]
    #[schemars(length(min = 1, max = 316))]
    pub topology_key: String,
}

fn default_rack_topology_key() -> String {
    "topology.kubernetes.io/zone".to_owned()
}

/// How missing output topics are created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTopics {
    /// Partitions of each created topic. Defaults to the source topics' largest partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: Option<i32>,

    /// Replication factor of each created topic, and of the internal repartition topic. Defaults
    /// to the broker's `default.replication.factor` (1 on a single-broker cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: Option<i32>,
}

impl KafkaSpec {
    /// The librdkafka properties this spec sets by itself: `security.protocol`,
    /// `sasl.mechanism` and the extra `properties` (which never name those: `validate()` refuses
    /// them). Brokers, credentials and the CA bundle are left to each client, which gets them its
    /// own way: the runtime from its environment and mounts, the operator from the Secrets.
    pub fn client_properties(&self) -> BTreeMap<String, String> {
        let mut properties = self.properties.clone();
        properties.insert(
            "security.protocol".into(),
            self.security_protocol.as_kafka_str().into(),
        );
        if let Some(sasl) = &self.sasl {
            properties.insert(
                "sasl.mechanism".into(),
                sasl.mechanism.as_kafka_str().into(),
            );
        }
        properties
    }
}

/// `url` with the password of its user information (`https://user:password@host`) replaced by
/// `***`, for logs, errors and status messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Kafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SecurityProtocol {
    /// No encryption, no authentication.
    #[default]
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS encryption (and optionally mutual TLS).
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL authentication without encryption.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL authentication over TLS (Amazon MSK, Confluent Cloud).
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka expects for `security.protocol`.
    pub fn as_kafka_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// SASL mechanism and where the credentials come from: a Secret for `PLAIN` and `SCRAM-*`, the
/// runtime pods' own AWS identity for `AWS_MSK_IAM`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mechanism == 'AWS_MSK_IAM' ? !has(self.credentialsSecret) : has(self.credentialsSecret)").message("credentialsSecret is required for PLAIN and SCRAM mechanisms and not allowed with AWS_MSK_IAM (the pods' AWS identity signs in)"))]
#[x_kube(validation = Rule::new("!has(self.region) || self.mechanism == 'AWS_MSK_IAM'").message("region applies to AWS_MSK_IAM only"))]
pub struct SaslSpec {
    /// The SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret in the pipeline's namespace holding the username and password (`PLAIN`,
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512`; not with `AWS_MSK_IAM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<CredentialsSecretRef>,
    /// `AWS_MSK_IAM` only: the AWS region of the MSK cluster, e.g. `eu-west-1`, which the token
    /// is signed for. Defaults to the runtime pod's `AWS_REGION` (set by IRSA and EKS Pod
    /// Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32, min = 1))]
    pub region: Option<String>,
}

impl SaslSpec {
    /// Whether the pods sign in with their own AWS identity (Amazon MSK IAM).
    pub fn is_msk_iam(&self) -> bool {
        self.mechanism == SaslMechanism::AwsMskIam
    }
}

impl KafkaSpec {
    /// Whether this connection signs in with the runtime pods' AWS identity (`AWS_MSK_IAM`): the
    /// operator then never connects itself (it would sign with its own role for a tenant).
    pub fn uses_msk_iam(&self) -> bool {
        self.sasl.as_ref().is_some_and(SaslSpec::is_msk_iam)
    }
}

/// Kafka's `sasl.mechanism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    /// Username and password sent as-is (use with `SASL_SSL`).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512 (Amazon MSK's SCRAM).
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// Amazon MSK IAM: SASL `OAUTHBEARER` with a token signed from the runtime pod's AWS
    /// credentials (IRSA, EKS Pod Identity or the node's instance profile: the default
    /// credential chain), refreshed before it expires. No `credentialsSecret`; needs `SASL_SSL`.
    #[serde(rename = "AWS_MSK_IAM")]
    AwsMskIam,
}

impl SaslMechanism {
    /// The value librdkafka expects for `sasl.mechanism`.
    pub fn as_kafka_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::AwsMskIam => "OAUTHBEARER",
        }
    }
}

/// A Secret holding a username and a password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the pipeline's namespace.
    #[schemars(length(max = 253, min = 1))]
    pub name: String,
    /// Key of the username in the Secret. Defaults to `username`.
    #[serde(default = "default_username_key")]
    #[schemars(length(max = 253))]
    pub username_key: String,
    /// Key of the password in the Secret. Defaults to `password`.
    #[serde(default = "default_password_key")]
    #[schemars(length(max = 253))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// TLS settings: whom to trust, and the client certificate for mutual TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret holding a PEM CA bundle to verify the brokers with. Absent = the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Secret holding the client certificate and its private key for mutual TLS, PEM, under
    /// `tls.crt` and `tls.key` (a `kubernetes.io/tls` Secret, e.g. from cert-manager). Keys and
    /// certificates never go in `kafka.properties`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret: Option<ClientCertificateSecretRef>,
}

/// A `kubernetes.io/tls` Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateSecretRef {
    /// Name of the Secret, in the pipeline's namespace.
    #[schemars(length(max = 253, min = 1))]
    pub name: String,
}

/// Keys of a `kubernetes.io/tls` Secret.
pub const TLS_CERTIFICATE_KEY: &str = "tls.crt";
/// The private key's key in a `kubernetes.io/tls` Secret.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

/// One key of a Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the pipeline's namespace.
    #[schemars(length(max = 253, min = 1))]
    pub name: String,
    /// Key within the Secret. Defaults to `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(length(max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_are_redacted_and_everything_else_kept() {
        assert_eq!(
            redact_url("https://svc:s3cr3t@registry.example.com:8081/subjects/x"),
            "https://svc:***@registry.example.com:8081/subjects/x"
        );
        assert_eq!(
            redact_url("http://registry:8081/a@b"),
            "http://registry:8081/a@b"
        );
        assert_eq!(redact_url("http://token@h/"), "http://token:***@h/");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}

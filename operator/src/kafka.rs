//! The source topics' partition count, from Kafka metadata (short timeout, cached for a minute),
//! with the pipeline's own connection settings: security protocol, SASL credentials and CA bundle
//! read from its Secrets, and its extra client properties.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use pipeline_crds::PipelineDeploymentSpec;
use rdkafka::{ClientConfig, consumer::BaseConsumer, consumer::Consumer};

const TIMEOUT: Duration = Duration::from_secs(5);
const TTL: Duration = Duration::from_secs(60);

/// How to reach a pipeline's Kafka cluster and which topics to look up. Its `Debug` output
/// redacts credentials.
#[derive(Clone, PartialEq)]
pub struct KafkaAccess {
    /// librdkafka client properties (bootstrap servers, security, credentials, extra properties).
    pub properties: BTreeMap<String, String>,
    /// The source topics.
    pub topics: Vec<String>,
    /// The namespace whose Secrets the credentials came from (empty off-cluster): part of the
    /// partition cache's key, with the properties, so one tenant's lookup never answers
    /// another's.
    pub namespace: String,
}

impl std::fmt::Debug for KafkaAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = k == "sasl.username"
                    || pipeline_crds::validate::carries_credentials(k) && k != "sasl.mechanism";
                (k.as_str(), if secret { "***" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaAccess")
            .field("properties", &shown)
            .field("topics", &self.topics)
            .finish()
    }
}

impl KafkaAccess {
    /// The connection of `spec` with `credentials` (username, password) and a PEM `ca` bundle as
    /// read from its Secrets.
    pub fn new(
        spec: &PipelineDeploymentSpec,
        credentials: Option<(String, String)>,
        ca: Option<String>,
    ) -> Self {
        Self::with_client_certificate(spec, credentials, ca, None)
    }

    /// [`Self::new`] with a PEM client certificate and key for mutual TLS.
    pub fn with_client_certificate(
        spec: &PipelineDeploymentSpec,
        credentials: Option<(String, String)>,
        ca: Option<String>,
        client_certificate: Option<(String, String)>,
    ) -> Self {
        let mut properties = spec.kafka.client_properties();
        properties.insert(
            "bootstrap.servers".into(),
            spec.kafka.bootstrap_servers.clone(),
        );
        if let Some((username, password)) = credentials {
            properties.insert("sasl.username".into(), username);
            properties.insert("sasl.password".into(), password);
        }
        if let Some(pem) = ca {
            properties.insert("ssl.ca.pem".into(), pem);
        }
        if let Some((certificate, key)) = client_certificate {
            properties.insert("ssl.certificate.pem".into(), certificate);
            properties.insert("ssl.key.pem".into(), key);
        }
        Self {
            properties,
            topics: spec
                .source
                .topic_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            namespace: String::new(),
        }
    }

    /// The cache key of this access: its namespace and a hash of every property (credentials
    /// included, never stored as such).
    fn cache_scope(&self) -> (String, u64) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.properties.hash(&mut hasher);
        (self.namespace.clone(), hasher.finish())
    }
}

/// Why a pipeline's Kafka credentials cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Local mode: the spec asks for SASL and the environment does not give the credentials.
    #[error("spec.kafka.sasl is set: export {username} and {password} for local mode")]
    NotInEnvironment {
        /// The username's variable.
        username: &'static str,
        /// The password's variable.
        password: &'static str,
    },
    /// The Secret does not exist.
    #[error("Secret {namespace}/{name} (from {field}) does not exist")]
    SecretMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The spec field naming it.
        field: &'static str,
    },
    /// The Secret lacks a key.
    #[error("Secret {namespace}/{name} (from {field}) has no key {key:?}")]
    KeyMissing {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The missing key.
        key: String,
        /// The spec field naming it.
        field: &'static str,
    },
    /// The Secret is not marked for pipelines.
    #[error(
        "Secret {namespace}/{name} (from {field}) is not marked for Sluice pipelines: label it {}=true to let the pipelines of {namespace} use it",
        pipeline_crds::contract::labels::SECRET_FOR_PIPELINES
    )]
    NotMarked {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The spec field naming it.
        field: &'static str,
    },
    /// The value is not UTF-8.
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8 text")]
    NotText {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The key.
        key: String,
    },
    /// The API call failed.
    #[error("reading Secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The error.
        source: kube::Error,
    },
}

/// Secrets read during one lookup, by name (each read once).
struct Secrets {
    api: Api<Secret>,
    namespace: String,
    read: HashMap<String, Secret>,
}

impl Secrets {
    /// The Secret `name`, read once, if it is marked for pipelines.
    async fn marked(
        &mut self,
        name: &str,
        field: &'static str,
    ) -> Result<&Secret, CredentialsError> {
        let namespace = self.namespace.clone();
        if !self.read.contains_key(name) {
            let secret = self
                .api
                .get_opt(name)
                .await
                .map_err(|source| CredentialsError::Api {
                    namespace: namespace.clone(),
                    name: name.into(),
                    source,
                })?
                .ok_or_else(|| CredentialsError::SecretMissing {
                    namespace: namespace.clone(),
                    name: name.into(),
                    field,
                })?;
            self.read.insert(name.to_owned(), secret);
        }
        let secret = &self.read[name];
        let marked = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(pipeline_crds::contract::labels::SECRET_FOR_PIPELINES))
            .is_some_and(|v| v == "true");
        if !marked {
            return Err(CredentialsError::NotMarked {
                namespace,
                name: name.into(),
                field,
            });
        }
        Ok(secret)
    }

    async fn value(
        &mut self,
        name: &str,
        key: &str,
        field: &'static str,
    ) -> Result<String, CredentialsError> {
        let namespace = self.namespace.clone();
        let secret = self.marked(name, field).await?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| CredentialsError::KeyMissing {
                namespace: namespace.clone(),
                name: name.into(),
                key: key.into(),
                field,
            })?;
        String::from_utf8(bytes).map_err(|_| CredentialsError::NotText {
            namespace,
            name: name.into(),
            key: key.into(),
        })
    }

    /// Checks every Secret the pods would receive ([`PipelineDeploymentSpec::secret_references`]):
    /// it exists, carries the label [`pipeline_crds::contract::labels::SECRET_FOR_PIPELINES`] and
    /// has each key read from it. The one gate: the pod template mounts only these references.
    async fn check_every_reference(
        &mut self,
        spec: &PipelineDeploymentSpec,
    ) -> Result<(), CredentialsError> {
        for reference in spec.secret_references() {
            for key in &reference.keys {
                self.value(reference.name, key, reference.field).await?;
            }
        }
        Ok(())
    }
}

/// Checks every Secret the pods would receive (one GET per Secret, never a list), then reads
/// the SASL credentials, the CA bundle and the client certificate for the operator's own
/// partition lookup and returns the pipeline's Kafka access.
pub async fn access(
    client: &Client,
    namespace: &str,
    spec: &PipelineDeploymentSpec,
) -> Result<KafkaAccess, CredentialsError> {
    let mut secrets = Secrets {
        api: Api::namespaced(client.clone(), namespace),
        namespace: namespace.to_owned(),
        read: HashMap::new(),
    };
    secrets.check_every_reference(spec).await?;
    let credentials = match spec
        .kafka
        .sasl
        .as_ref()
        .and_then(|s| s.credentials_secret.as_ref())
    {
        Some(s) => {
            let field = "spec.kafka.sasl.credentialsSecret";
            let username = secrets.value(&s.name, &s.username_key, field).await?;
            let password = secrets.value(&s.name, &s.password_key, field).await?;
            Some((username, password))
        }
        None => None,
    };
    let ca = match spec.kafka.tls.as_ref().and_then(|t| t.ca_secret.as_ref()) {
        Some(s) => Some(
            secrets
                .value(&s.name, &s.key, "spec.kafka.tls.caSecret")
                .await?,
        ),
        None => None,
    };
    let client_certificate = match spec
        .kafka
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate_secret.as_ref())
    {
        Some(s) => {
            use pipeline_crds::kafka::{TLS_CERTIFICATE_KEY, TLS_PRIVATE_KEY_KEY};
            let field = "spec.kafka.tls.clientCertificateSecret";
            let certificate = secrets.value(&s.name, TLS_CERTIFICATE_KEY, field).await?;
            let key = secrets.value(&s.name, TLS_PRIVATE_KEY_KEY, field).await?;
            Some((certificate, key))
        }
        None => None,
    };
    let mut access =
        KafkaAccess::with_client_certificate(spec, credentials, ca, client_certificate);
    access.namespace = namespace.to_owned();
    Ok(access)
}

/// Why the partition count of a topic cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartitionLookupError {
    /// The client properties do not make a Kafka client.
    #[error("{0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// The metadata request failed (an unreachable broker ends here, after the timeout).
    #[error("metadata of {topic}: {source}")]
    Metadata {
        /// The topic asked about.
        topic: String,
        /// Kafka's answer.
        source: rdkafka::error::KafkaError,
    },
    /// `AWS_MSK_IAM`: the operator does not sign in to Kafka with its own identity for a
    /// pipeline (a confused deputy), so the count is the one the runtime pods report; none did.
    #[error(
        "spec.kafka.sasl.mechanism is AWS_MSK_IAM, so the operator does not sign in to Kafka itself: the source partitions come from the runtime pods' report (pipeline_source_partitions), and {0}"
    )]
    NotReported(String),
    /// Kafka answered, and the topic is not there.
    #[error("topic {topic} does not exist or has no partitions")]
    NoSuchTopic {
        /// The topic asked about.
        topic: String,
    },
}

/// How the source topics' partition count is found. Called on a blocking thread.
pub trait PartitionSource: Send + Sync {
    /// Partitions of all source topics together, or why they cannot be read.
    fn partitions(&self, access: &KafkaAccess) -> Result<i32, PartitionLookupError>;
}

/// (namespace, hash of the client properties with credentials, topic).
type CacheKey = (String, u64, String);

/// Reads partition counts with a metadata request per topic, remembered for [`TTL`].
#[derive(Default)]
pub struct KafkaPartitions {
    cache: Mutex<HashMap<CacheKey, (i32, Instant)>>,
}

impl KafkaPartitions {
    /// `consumer` is created on the first topic missing from the cache and serves the rest of
    /// the lookup.
    fn topic_partitions(
        &self,
        access: &KafkaAccess,
        topic: &str,
        consumer: &mut Option<BaseConsumer>,
    ) -> Result<i32, PartitionLookupError> {
        let (namespace, scope) = access.cache_scope();
        let key = (namespace, scope, topic.to_owned());
        if let Some((count, at)) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && at.elapsed() < TTL
        {
            return Ok(*count);
        }
        let consumer = match consumer {
            Some(consumer) => consumer,
            None => {
                let mut config = ClientConfig::new();
                for (k, v) in &access.properties {
                    config.set(k, v);
                }
                consumer.insert(config.create().map_err(PartitionLookupError::Client)?)
            }
        };
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|source| PartitionLookupError::Metadata {
                topic: topic.to_owned(),
                source,
            })?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| {
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)
            });
        if count == 0 {
            return Err(PartitionLookupError::NoSuchTopic {
                topic: topic.to_owned(),
            });
        }
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, (count, Instant::now()));
        Ok(count)
    }
}

impl PartitionSource for KafkaPartitions {
    fn partitions(&self, access: &KafkaAccess) -> Result<i32, PartitionLookupError> {
        let mut consumer = None;
        access
            .topics
            .iter()
            .map(|topic| self.topic_partitions(access, topic, &mut consumer))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_crds::manifest::from_yaml;

    fn spec(kafka: &str) -> PipelineDeploymentSpec {
        from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p}}\nspec:\n  kafka: {kafka}\n  source: {{topics: [a, b]}}\n  sink: {{kafka: {{topic: out}}}}\n"),
            "t",
        )
        .unwrap()
        .spec
    }

    #[test]
    fn debug_output_of_an_access_redacts_the_credentials() {
        let s = spec(
            "{bootstrapServers: 'k:9096', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: u}}}",
        );
        let access = KafkaAccess::new(&s, Some(("alice".into(), "s3cr3t".into())), None);
        let shown = format!("{access:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("alice"),
            "{shown}"
        );
        assert!(
            shown.contains("SCRAM-SHA-512") && shown.contains("k:9096"),
            "{shown}"
        );
    }

    #[test]
    fn the_lookup_uses_the_pipelines_protocol_credentials_ca_and_extra_properties() {
        let s = spec(
            "{bootstrapServers: 'b:9096', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: s}}, properties: {client.rack: use1-az1}}",
        );
        let access = KafkaAccess::new(&s, Some(("u".into(), "pw".into())), Some("PEM".into()));
        let p = |k: &str| access.properties.get(k).map(String::as_str);
        assert_eq!(p("bootstrap.servers"), Some("b:9096"));
        assert_eq!(p("security.protocol"), Some("sasl_ssl"));
        assert_eq!(p("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(
            (p("sasl.username"), p("sasl.password")),
            (Some("u"), Some("pw"))
        );
        assert_eq!(p("ssl.ca.pem"), Some("PEM"));
        assert_eq!(p("client.rack"), Some("use1-az1"));
        assert_eq!(access.topics, vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn an_unreachable_broker_is_an_error_within_the_timeout_not_a_hang() {
        let s = spec("{bootstrapServers: '127.0.0.1:1'}");
        let started = Instant::now();
        let error = KafkaPartitions::default()
            .partitions(&KafkaAccess::new(&s, None, None))
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(&error, PartitionLookupError::Metadata { topic, .. } if topic == "a"),
            "{error}"
        );
        assert!(error.to_string().contains("metadata of a"), "{error}");
        // One metadata request's timeout (the first topic fails the lookup), plus slack.
        assert!(
            took < TIMEOUT + Duration::from_secs(3),
            "the lookup took {took:?} (timeout {TIMEOUT:?})"
        );
    }

    #[test]
    fn the_partition_cache_is_scoped_by_namespace_and_credentials() {
        let s = spec(
            "{bootstrapServers: 'k:9092', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: kafka}}}",
        );
        let alice = KafkaAccess::new(&s, Some(("alice".into(), "a".into())), None);
        let bob = KafkaAccess::new(&s, Some(("bob".into(), "b".into())), None);
        assert_ne!(alice.cache_scope(), bob.cache_scope());
        let mut elsewhere = alice.clone();
        elsewhere.namespace = "team-b".into();
        assert_ne!(alice.cache_scope(), elsewhere.cache_scope());
        assert_eq!(
            alice.cache_scope(),
            KafkaAccess::new(&s, Some(("alice".into(), "a".into())), None).cache_scope()
        );
    }
}

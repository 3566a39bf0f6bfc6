//! Every Secret a pipeline's pods receive, as one list: the operator gates each one (it must be
//! marked for pipelines) and the pod template mounts nothing else. A Secret reference added to
//! the spec without an entry here fails `every_secret_field_of_the_schema_is_a_secret_reference`.

use crate::{
    PipelineDeploymentSpec,
    contract::{env, paths},
    kafka::CredentialsSecretRef,
};

/// A Secret the spec refers to, with the keys the pods read from it and how they get them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretReference<'a> {
    /// The spec field naming it, e.g. `spec.sink.clickhouse.credentialsSecret`.
    pub field: &'static str,
    /// The Secret's name, in the pipeline's namespace.
    pub name: &'a str,
    /// The keys read from it.
    pub keys: Vec<&'a str>,
    /// How the runtime container receives it.
    pub delivery: SecretDelivery,
}

/// How a Secret reaches the runtime container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretDelivery {
    /// Each key as the environment variable of the same position.
    Env(&'static [&'static str]),
    /// The whole Secret mounted read-only as files.
    Files {
        /// The pod volume's name.
        volume: &'static str,
        /// The mount directory.
        dir: &'static str,
        /// The files' mode (the kubelet's default 0644 when absent).
        mode: Option<i32>,
    },
}

/// A username and password delivered as the environment variables `names`.
fn credentials<'a>(
    field: &'static str,
    secret: &'a CredentialsSecretRef,
    names: &'static [&'static str],
) -> SecretReference<'a> {
    SecretReference {
        field,
        name: secret.name.as_str(),
        keys: vec![secret.username_key.as_str(), secret.password_key.as_str()],
        delivery: SecretDelivery::Env(names),
    }
}

impl PipelineDeploymentSpec {
    /// Every Secret whose contents the runtime pods receive (as environment variables or mounted
    /// files), in a fixed order. Image pull Secrets are not among them: the kubelet uses those and
    /// the pods never read them.
    pub fn secret_references(&self) -> Vec<SecretReference<'_>> {
        let mut references = Vec::new();
        let kafka = &self.kafka;
        if let Some(secret) = kafka
            .sasl
            .as_ref()
            .and_then(|s| s.credentials_secret.as_ref())
        {
            references.push(credentials(
                "spec.kafka.sasl.credentialsSecret",
                secret,
                &[env::KAFKA_SASL_USERNAME, env::KAFKA_SASL_PASSWORD],
            ));
        }
        let tls = kafka.tls.as_ref();
        if let Some(ca) = tls.and_then(|t| t.ca_secret.as_ref()) {
            references.push(SecretReference {
                field: "spec.kafka.tls.caSecret",
                name: ca.name.as_str(),
                keys: vec![ca.key.as_str()],
                delivery: SecretDelivery::Files {
                    volume: "kafka-ca",
                    dir: paths::KAFKA_CA_DIR,
                    mode: None,
                },
            });
        }
        if let Some(client) = tls.and_then(|t| t.client_certificate_secret.as_ref()) {
            use crate::kafka::{TLS_CERTIFICATE_KEY, TLS_PRIVATE_KEY_KEY};
            references.push(SecretReference {
                field: "spec.kafka.tls.clientCertificateSecret",
                name: client.name.as_str(),
                keys: vec![TLS_CERTIFICATE_KEY, TLS_PRIVATE_KEY_KEY],
                delivery: SecretDelivery::Files {
                    volume: "kafka-client-certificate",
                    dir: paths::KAFKA_CLIENT_CERT_DIR,
                    mode: Some(0o400),
                },
            });
        }
        let clickhouse = self.sink.clickhouse.as_ref();
        if let Some(secret) = clickhouse.and_then(|c| c.credentials_secret.as_ref()) {
            references.push(credentials(
                "spec.sink.clickhouse.credentialsSecret",
                secret,
                &[env::CLICKHOUSE_USER, env::CLICKHOUSE_PASSWORD],
            ));
        }
        let s3 = self.checkpoint.as_ref().and_then(|c| c.storage.s3.as_ref());
        if let Some(secret) = s3.and_then(|s3| s3.credentials_secret.as_ref()) {
            references.push(credentials(
                "spec.checkpoint.storage.s3.credentialsSecret",
                secret,
                &[env::S3_ACCESS_KEY_ID, env::S3_SECRET_ACCESS_KEY],
            ));
        }
        if let Some(registry) = &kafka.schema_registry_credentials_secret {
            references.push(credentials(
                "spec.kafka.schemaRegistryCredentialsSecret",
                registry,
                &[env::SCHEMA_REGISTRY_USER, env::SCHEMA_REGISTRY_PASSWORD],
            ));
        }
        references
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use crate::manifest::from_yaml;

    /// The schema paths (`spec.a.bSecret`) of every property whose name ends in `Secret`.
    fn secret_fields(schema: &Value, path: &str, found: &mut BTreeSet<String>) {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            if let Some(items) = schema.get("items") {
                secret_fields(items, path, found);
            }
            return;
        };
        for (name, child) in properties {
            let child_path = format!("{path}.{name}");
            if name.ends_with("Secret") {
                found.insert(child_path.clone());
            }
            secret_fields(child, &child_path, found);
        }
    }

    #[test]
    fn every_secret_field_of_the_schema_is_a_secret_reference() {
        let crd = serde_json::to_value(crate::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut in_schema = BTreeSet::new();
        secret_fields(schema, "spec", &mut in_schema);
        assert!(in_schema.len() >= 6, "{in_schema:?}");

        let pd = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p}\nspec:\n  kafka:\n    bootstrapServers: k:9096\n    securityProtocol: SASL_SSL\n    sasl: {mechanism: PLAIN, credentialsSecret: {name: sasl}}\n    tls: {caSecret: {name: ca}, clientCertificateSecret: {name: client}}\n    schemaRegistryUrl: https://registry:8081\n    schemaRegistryCredentialsSecret: {name: registry}\n  source: {topic: in}\n  checkpoint: {storage: {s3: {bucket: snapshots, credentialsSecret: {name: s3}}}}\n  sink: {clickhouse: {url: 'http://ch:8123', table: t, credentialsSecret: {name: clickhouse}}}\n",
            "t",
        )
        .unwrap();
        let references = pd.spec.secret_references();
        let listed: BTreeSet<String> = references.iter().map(|r| r.field.to_owned()).collect();
        assert_eq!(
            listed, in_schema,
            "every Secret field of the spec must be listed by secret_references() (and gated)"
        );
        let names: Vec<&str> = references.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            ["sasl", "ca", "client", "clickhouse", "s3", "registry"]
        );
        assert_eq!(references[0].keys, ["username", "password"]);
        assert_eq!(references[1].keys, ["ca.crt"]);
        assert_eq!(references[2].keys, ["tls.crt", "tls.key"]);
    }
}

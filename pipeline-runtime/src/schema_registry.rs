//! A Confluent Schema Registry client: fetches writer schemas by id (cached: an id never changes
//! its schema) and registers output schemas.

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::Schema;

use crate::{avro_nesting::WriterSchema, decode::DecodeError};

/// A Confluent Schema Registry client with a schema cache (schemas by id never change).
pub struct SchemaRegistry {
    base_url: String,
    /// `base_url` with its password redacted, for errors (they reach logs and dead letters).
    shown_url: String,
    agent: ureq::Agent,
    /// The `Authorization` header, from `spec.kafka.schemaRegistryCredentialsSecret`.
    authorization: Option<String>,
    /// Schemas by id, and ids the registry refused for good (unknown, unparsable): those are
    /// not asked for again, so a topic full of records with an unknown id costs one request.
    cache: HashMap<u32, Result<Arc<WriterSchema>, String>>,
}

impl SchemaRegistry {
    /// A client for `base_url` (e.g. `http://schema-registry:8081`), with the credentials the
    /// operator injected from `spec.kafka.schemaRegistryCredentialsSecret`, if any.
    pub fn new(base_url: &str) -> Self {
        use pipeline_crds::contract::env;
        let authorization =
            crate::basic_auth::from_env(env::SCHEMA_REGISTRY_USER, env::SCHEMA_REGISTRY_PASSWORD);
        Self::with_authorization(base_url, authorization)
    }

    /// A client for `base_url` sending `authorization` (an `Authorization` header value).
    pub fn with_authorization(base_url: &str, authorization: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            shown_url: pipeline_crds::kafka::redact_url(base_url.trim_end_matches('/')),
            agent,
            authorization,
            cache: HashMap::new(),
        }
    }

    /// `error` about a request to `url` under `base_url`, with the password redacted.
    fn shown(&self, method: &str, path: &str, error: impl std::fmt::Display) -> String {
        let text = error.to_string().replace(&self.base_url, &self.shown_url);
        format!("{method} {}{path}: {text}", self.shown_url)
    }

    /// The writer schema with this id, fetched once. A 4xx answer (but 408 and 429) or a schema
    /// that does not parse is the record's fault, for good (cached, dead-lettered); no answer, a
    /// 5xx, 408 or 429 is the registry's, for now ([`DecodeError::RegistryUnavailable`]).
    pub fn schema(&mut self, id: u32) -> Result<Arc<WriterSchema>, DecodeError> {
        if let Some(cached) = self.cache.get(&id) {
            return cached.clone().map_err(DecodeError::Wire);
        }
        let path = format!("/schemas/ids/{id}");
        let url = format!("{}{path}", self.base_url);
        let unavailable = |e: &dyn std::fmt::Display| {
            DecodeError::RegistryUnavailable(self.shown("GET", &path, e))
        };
        let mut request = self.agent.get(&url);
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request.call().map_err(|e| unavailable(&e))?;
        let status = response.status().as_u16();
        let refused = match status {
            200 => None,
            404 => Some(format!("schema id {id} is unknown to the registry")),
            408 | 429 => return Err(unavailable(&format!("HTTP {status}"))),
            400..=499 => Some(format!(
                "the registry refuses schema id {id}: {}",
                self.shown("GET", &path, format!("HTTP {status}"))
            )),
            _ => return Err(unavailable(&format!("HTTP {status}"))),
        };
        let result = match refused {
            Some(reason) => Err(reason),
            None => {
                #[derive(serde::Deserialize)]
                struct SchemaResponse {
                    schema: String,
                }
                let body: SchemaResponse = response
                    .body_mut()
                    .read_json()
                    .map_err(|e| unavailable(&e))?;
                Schema::parse_str(&body.schema)
                    .map(|schema| Arc::new(WriterSchema::new(schema)))
                    .map_err(|e| format!("schema id {id} does not parse: {e}"))
            }
        };
        self.cache.insert(id, result.clone());
        result.map_err(DecodeError::Wire)
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub fn register(&mut self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        let path = format!("/subjects/{subject}/versions");
        let url = format!("{}{path}", self.base_url);
        let body = serde_json::json!({ "schema": schema.canonical_form() });
        let mut request = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some(authorization) = &self.authorization {
            request = request.header("Authorization", authorization);
        }
        let mut response = request
            .send_json(&body)
            .map_err(|e| RegistryError(self.shown("POST", &path, e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            return Err(RegistryError(self.shown(
                "POST",
                &path,
                format!("HTTP {status} {text}"),
            )));
        }
        #[derive(serde::Deserialize)]
        struct Registered {
            id: u32,
        }
        let registered: Registered = response
            .body_mut()
            .read_json()
            .map_err(|e| RegistryError(self.shown("POST", &path, e)))?;
        Ok(registered.id)
    }
}

/// The registry refused or could not be reached when registering a schema.
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema registry: {0}")]
pub struct RegistryError(String);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A loopback registry that answers one request with 404 and returns the request it saw.
    fn one_request_registry() -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap();
            write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (url, server)
    }

    #[test]
    fn registry_credentials_go_in_a_basic_authorization_header_never_in_the_url() {
        let (url, server) = one_request_registry();
        let mut registry = SchemaRegistry::with_authorization(
            &url,
            Some(crate::basic_auth::header("key", "secret")),
        );
        let error = registry.schema(7).unwrap_err();
        assert!(error.to_string().contains("unknown"), "{error}");
        let request = server.join().unwrap().to_ascii_lowercase();
        assert!(request.starts_with("get /schemas/ids/7 "), "{request}");
        // "key:secret" in base64.
        assert!(
            request.contains("authorization: basic a2v5onnly3jlda=="),
            "{request}"
        );
    }
}

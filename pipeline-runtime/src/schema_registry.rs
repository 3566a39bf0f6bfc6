//! A Confluent Schema Registry client: fetches writer schemas by id (cached: an id never changes
//! its schema) and registers output schemas.

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::Schema;

use crate::decode::DecodeError;

/// A Confluent Schema Registry client with a schema cache (schemas by id never change).
pub struct SchemaRegistry {
    base_url: String,
    /// `base_url` with its password redacted, for errors (they reach logs and dead letters).
    shown_url: String,
    agent: ureq::Agent,
    /// Schemas by id, and ids the registry refused for good (unknown, unparsable): those are
    /// not asked for again, so a topic full of records with an unknown id costs one request.
    cache: HashMap<u32, Result<Arc<Schema>, String>>,
}

impl SchemaRegistry {
    /// A client for `base_url` (e.g. `http://schema-registry:8081`).
    pub fn new(base_url: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            shown_url: pipeline_crds::kafka::redact_url(base_url.trim_end_matches('/')),
            agent,
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
    pub fn schema(&mut self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        if let Some(cached) = self.cache.get(&id) {
            return cached.clone().map_err(DecodeError::Wire);
        }
        let path = format!("/schemas/ids/{id}");
        let url = format!("{}{path}", self.base_url);
        let unavailable = |e: &dyn std::fmt::Display| {
            DecodeError::RegistryUnavailable(self.shown("GET", &path, e))
        };
        let mut response = self.agent.get(&url).call().map_err(|e| unavailable(&e))?;
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
                    .map(Arc::new)
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
        let mut response = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
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

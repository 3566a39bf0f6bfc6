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
    cache: HashMap<u32, Arc<Schema>>,
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

    /// The writer schema with this id, fetched once.
    pub fn schema(&mut self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        if let Some(schema) = self.cache.get(&id) {
            return Ok(schema.clone());
        }
        let path = format!("/schemas/ids/{id}");
        let url = format!("{}{path}", self.base_url);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| DecodeError::RegistryUnavailable(self.shown("GET", &path, e)))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 => {
                return Err(DecodeError::Wire(format!(
                    "schema id {id} is unknown to the registry"
                )));
            }
            _ => {
                return Err(DecodeError::RegistryUnavailable(self.shown(
                    "GET",
                    &path,
                    format!("HTTP {status}"),
                )));
            }
        }
        #[derive(serde::Deserialize)]
        struct SchemaResponse {
            schema: String,
        }
        let body: SchemaResponse = response
            .body_mut()
            .read_json()
            .map_err(|e| DecodeError::RegistryUnavailable(self.shown("GET", &path, e)))?;
        let schema = Schema::parse_str(&body.schema)
            .map_err(|e| DecodeError::Wire(format!("schema id {id} does not parse: {e}")))?;
        let schema = Arc::new(schema);
        self.cache.insert(id, schema.clone());
        Ok(schema)
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

//! A Confluent Schema Registry client: fetches writer schemas by id (cached: an id never changes
//! its schema) and registers output schemas.

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::Schema;

use crate::decode::DecodeError;

/// A Confluent Schema Registry client with a schema cache (schemas by id never change).
pub struct SchemaRegistry {
    base_url: String,
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
            agent,
            cache: HashMap::new(),
        }
    }

    /// The writer schema with this id, fetched once.
    pub fn schema(&mut self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        if let Some(schema) = self.cache.get(&id) {
            return Ok(schema.clone());
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let mut response = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| DecodeError::RegistryUnavailable(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 => {
                return Err(DecodeError::Wire(format!(
                    "schema id {id} is unknown to the registry"
                )));
            }
            _ => {
                return Err(DecodeError::RegistryUnavailable(format!(
                    "GET {url}: HTTP {status}"
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
            .map_err(|e| DecodeError::RegistryUnavailable(format!("GET {url}: {e}")))?;
        let schema = Schema::parse_str(&body.schema)
            .map_err(|e| DecodeError::Wire(format!("schema id {id} does not parse: {e}")))?;
        let schema = Arc::new(schema);
        self.cache.insert(id, schema.clone());
        Ok(schema)
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub fn register(&mut self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.base_url);
        let body = serde_json::json!({ "schema": schema.canonical_form() });
        let mut response = self
            .agent
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send_json(&body)
            .map_err(|e| RegistryError(format!("POST {url}: {e}")))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            return Err(RegistryError(format!("POST {url}: HTTP {status} {text}")));
        }
        #[derive(serde::Deserialize)]
        struct Registered {
            id: u32,
        }
        let registered: Registered = response
            .body_mut()
            .read_json()
            .map_err(|e| RegistryError(format!("POST {url}: {e}")))?;
        Ok(registered.id)
    }
}

/// The registry refused or could not be reached when registering a schema.
#[derive(Debug, Clone, thiserror::Error)]
#[error("schema registry: {0}")]
pub struct RegistryError(String);

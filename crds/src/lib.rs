//! The `PipelineDeployment` contract shared by the Sluice operator and runtime.
//!
//! - the custom resource types ([`PipelineDeployment`] and its parts), from which the CRD YAML is
//!   generated ([`crd_yaml`]);
//! - [`validate()`](validate::validate), the semantic checks beyond the schema;
//! - [`contract`], the names both sides must agree on (env vars, paths, ports, labels, metrics);
//! - [`support`], what the current runtime cannot run yet.

pub mod aggregate;
pub mod autoscaler;
pub mod checkpoint;
pub mod contract;
mod duration;
pub mod enrich;
pub mod generate;
pub mod kafka;
pub mod manifest;
pub mod pipeline;
pub mod pod_template;
pub mod quantity;
pub mod resources;
pub mod secret_references;
pub mod sink;
pub mod source;
pub mod status;
pub mod strict;
pub mod support;
pub mod transform;
pub mod valid;
pub mod validate;
pub mod window;

pub use duration::{DURATION_PATTERN, Duration, DurationParseError};
pub use generate::{crd, crd_yaml};
pub use pipeline::{DeletionPolicy, PipelineDeployment, PipelineDeploymentSpec};
pub use status::PipelineDeploymentStatus;
pub use validate::{FieldError, ValidationErrors, validate};

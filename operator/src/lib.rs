//! The Sluice operator: turns each PipelineDeployment into right-sized runtime pods.

pub mod autoscale;
pub mod build;
pub mod controller;
pub mod events;
pub mod http;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod prune;
pub mod rbac;
pub mod render;
pub mod sizing;
pub mod status;

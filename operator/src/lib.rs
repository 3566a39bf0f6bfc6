//! The Sluice operator: turns each PipelineDeployment into right-sized runtime pods.

pub mod build;
pub mod controller;
pub mod kafka;
pub mod rbac;
pub mod render;
pub mod sizing;
pub mod status;

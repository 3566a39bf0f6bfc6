//! The Sluice operator: turns each PipelineDeployment into right-sized runtime pods.

pub mod build;
pub mod rbac;
pub mod render;
pub mod sizing;

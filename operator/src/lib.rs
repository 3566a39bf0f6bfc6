//! The Sluice operator: turns each PipelineDeployment into right-sized runtime pods.

pub mod build;
pub mod render;
pub mod sizing;

//! The Sluice operator: turns each PipelineDeployment into right-sized runtime pods.

pub mod sizing;

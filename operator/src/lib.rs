//! The Sluice operator: turns each PipelineDeployment into right-sized runtime pods (or, in local
//! mode, runtime processes on this machine).

pub mod autoscale;
pub mod backend;
pub mod cleanup;
pub mod controller;
pub mod demo;
pub mod desired;
pub mod events;
pub mod group_state;
pub mod http;
pub mod install;
pub mod kafka;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod sizing;
pub mod status;
pub mod terminal;

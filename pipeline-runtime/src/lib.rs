//! The Sluice stream runtime.
pub mod aggregate;
pub mod decode;
pub mod event_time;
pub mod field;
pub mod filter;
pub mod output;
pub mod plan;
pub mod processor;
pub mod watermark;
pub mod window;

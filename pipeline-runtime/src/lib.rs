//! The Sluice stream runtime.
pub mod aggregate;
pub mod field;
pub mod watermark;
pub mod window;

//! End-to-end test support for Sluice: a real Kafka-protocol broker (tansu), runtime processes
//! that can be killed and restarted, a real Prometheus, and the data sets and offline references the tests compare
//! against.

pub mod broker;
pub mod clickhouse;
pub mod dataset;
pub mod process;
pub mod prometheus;
pub mod s3;

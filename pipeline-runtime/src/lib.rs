//! The Sluice stream runtime: executes one PipelineDeployment's pipeline with a number of task
//! slots, each a consumer-group member with its own producer and per-partition state.

pub mod aggregate;
pub mod avro_nesting;
pub mod basic_auth;
pub mod checkpoint;
pub mod cleanup;
pub mod cli;
pub mod client;
pub mod decode;
pub mod enrich;
pub mod event_time;
pub mod failpoint;
pub mod field;
pub mod filter;
pub mod http;
pub mod kafka_sign_in;
pub mod loadgen;
pub mod metrics;
pub mod plan;
pub mod processor;
pub mod produce;
pub mod projection;
pub mod rack;
pub mod row;
pub mod runtime;
pub mod schema_registry;
pub mod sink;
pub mod sketch_integrity;
pub mod slot;
pub mod test_driver;
pub mod topics;
pub mod watermark;
pub mod window;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// Sleeps for `duration` in short steps; returns true as soon as `stop` is set.
pub fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    stop.load(Ordering::Relaxed)
}
pub mod demo;

//! Helpers of the runtime's integration tests; the broker helpers live in `pipeline-e2e`.

#![allow(dead_code)] // each test binary uses a different subset

use std::time::{Duration, Instant};

#[allow(unused_imports)] // the transactions test uses none of them
pub use pipeline_e2e::broker::*;

/// The options tests start a runtime with: pipeline `name` in namespace `test` (validated), no
/// scale file, no metrics server, a 1 s commit interval and no simulated work. Override fields
/// with `..options(..)`.
pub fn options(
    name: &str,
    pod: &str,
    spec: pipeline_crds::PipelineDeploymentSpec,
    slots: usize,
) -> pipeline_runtime::runtime::RuntimeOptions {
    let mut pd = pipeline_crds::PipelineDeployment::new(name, spec);
    pd.metadata.namespace = Some("test".into());
    let pipeline =
        pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
            .unwrap_or_else(|e| panic!("a test pipeline must be valid: {e}"));
    pipeline_runtime::runtime::RuntimeOptions {
        pipeline,
        pod: pod.into(),
        slots,
        scale_file: None,
        metrics_addr: None,
        commit_interval: Duration::from_secs(1),
        simulated_record_cost: None,
    }
}

/// Parses a manifest written inline in a test.
pub fn spec(yaml: &str) -> pipeline_crds::PipelineDeploymentSpec {
    pipeline_crds::manifest::from_yaml(yaml, "test manifest")
        .unwrap()
        .spec
}

/// Waits until every slot of `runtime` holds partitions and together they hold `partitions`, so
/// data produced afterwards is read without partitions moving mid-stream. (Moving partitions with
/// open windows is the rescale path, the subject of the checkpoint issue.) Produce right after:
/// a partition left empty past `idleTimeout` is announced idle downstream.
pub fn wait_for_assignment(
    runtime: &pipeline_runtime::runtime::Runtime,
    slots: usize,
    partitions: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stable_since: Option<Instant> = None;
    loop {
        let text = runtime.metrics().encode();
        let per_slot: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("pipeline_assigned_partitions{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        let settled = per_slot.len() == slots
            && per_slot.iter().all(|n| *n > 0.0)
            && per_slot.iter().sum::<f64>() as usize == partitions;
        match (settled, stable_since) {
            (true, Some(since)) if since.elapsed() > Duration::from_millis(500) => return,
            (true, None) => stable_since = Some(Instant::now()),
            (false, _) => stable_since = None,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "slots never settled: {per_slot:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

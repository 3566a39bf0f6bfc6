//! Golden tests of `build()` through `render`: the objects for the example manifests are checked
//! in under `tests/golden/`; any difference fails. After an intended change, regenerate with
//! `SLUICE_BLESS=1 cargo test -p pipeline-operator --test golden` and review the diff.

use std::path::PathBuf;

use pipeline_operator::{backend::kube::children::Environment, render::render};

fn check(example: &str, partitions: i32, pod_monitor: bool) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = root
        .join("../manifests/examples")
        .join(format!("{example}.yaml"));
    let pd = pipeline_crds::manifest::from_file(&manifest).unwrap();
    let environment = Environment {
        default_image: "ghcr.io/sluice-dev/pipeline-runtime:test".into(),
        image_pull_policy: None,
        disruption_budget: Default::default(),
        pod_monitor_crd: pod_monitor,
    };
    let rendered = render(&pd, partitions, None, &environment).unwrap();
    let golden = root.join("tests/golden").join(format!("{example}.yaml"));
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&golden, &rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        rendered == expected,
        "{} differs from what render gives; if the change is intended, run SLUICE_BLESS=1 cargo test -p pipeline-operator --test golden\n--- rendered ---\n{rendered}",
        golden.display()
    );
}

#[test]
fn iot_sensors_on_24_partitions_renders_as_checked_in() {
    check("iot-sensors", 24, true);
}

#[test]
fn clickstream_sessions_on_12_partitions_renders_as_checked_in() {
    check("clickstream-sessions", 12, false);
}

#[test]
fn clickstream_into_clickhouse_on_12_partitions_renders_as_checked_in() {
    check("clickstream-clickhouse", 12, false);
}

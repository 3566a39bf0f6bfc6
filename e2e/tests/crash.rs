//! Crash test: runtime processes are killed with SIGKILL at random moments while a data set
//! streams in, and restarted. Deduplicated by (key, window), the output must equal the offline
//! reference exactly, and every repeated window must be an identical re-emission.

mod common;

use common::{PARTITIONS, Shape, crash_scenario, crash_scenario_shaped};
use pipeline_e2e::broker::Tansu;

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn killing_runtime_processes_at_random_moments_loses_and_changes_no_window() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 3)]);
    let outcome = crash_scenario(&tansu, "crash", "at-least-once", "readings", "out");
    common::assert_exact(&outcome.comparison, &outcome.dir);
    assert!(outcome.figures.checkpoints > 0.0 && outcome.figures.restores > 0.0);
    assert_eq!(outcome.figures.restore_failures, 0.0);
    common::cleanup(&outcome.dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn killing_processes_of_a_repartitioned_two_slot_pipeline_loses_and_changes_no_window() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 3)]);
    let shape = Shape {
        records: 40_000,
        slots: 2,
        repartition: true,
    };
    let outcome = crash_scenario_shaped(
        &tansu,
        "crash-repartitioned",
        "at-least-once",
        "readings",
        "out",
        &shape,
    );
    common::assert_exact(&outcome.comparison, &outcome.dir);
    assert!(outcome.figures.checkpoints > 0.0 && outcome.figures.restores > 0.0);
    assert_eq!(outcome.figures.restore_failures, 0.0);
    common::cleanup(&outcome.dir);
}

//! Crash test: runtime processes are killed with SIGKILL at random moments while a data set
//! streams in, and restarted. Deduplicated by (key, window), the output must equal the offline
//! reference exactly, and every repeated window must be an identical re-emission.

mod common;

use common::{PARTITIONS, crash_scenario};
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
    assert!(
        outcome.comparison.exact(),
        "output differs from the reference (logs in {}):\n{}",
        outcome.dir.display(),
        outcome.comparison.problems.join("\n")
    );
    assert!(outcome.figures.checkpoints > 0.0 && outcome.figures.restores > 0.0);
    assert_eq!(outcome.figures.restore_failures, 0.0);
    common::cleanup(&outcome.dir);
}

//! Opt-in (ignored unless run with `--ignored`): the crash test in exactly-once mode against a
//! real Kafka (or MSK), which has the full transactional path that no broker installable here
//! has. Set `E2E_KAFKA_BOOTSTRAP=host:port`
//! (topics are created with unique names; the broker must allow it). Read with
//! `read_committed` and without de-duplication, the output must equal the offline reference
//! exactly: no window missing, none twice.

mod common;

use common::{PARTITIONS, crash_scenario};
use pipeline_e2e::broker::Broker;

#[test]
#[ignore = "needs a real Kafka: set E2E_KAFKA_BOOTSTRAP=host:port and run with --ignored"]
fn exactly_once_output_under_crashes_has_every_window_exactly_once_on_real_kafka() {
    let bootstrap = std::env::var("E2E_KAFKA_BOOTSTRAP")
        .expect("E2E_KAFKA_BOOTSTRAP=host:port names the Kafka to test against");
    let broker = Broker { bootstrap };
    let run = std::process::id();
    let (input, output) = (
        format!("sluice-e2e-in-{run}"),
        format!("sluice-e2e-out-{run}"),
    );
    broker.create_topics(&[(&input, PARTITIONS), (&output, 3)]);
    let outcome = crash_scenario(
        &broker,
        &format!("eos-{run}"),
        "exactly-once",
        &input,
        &output,
    );
    common::assert_exact(&outcome.comparison, &outcome.dir);
    assert_eq!(
        outcome.comparison.identical_repeats, 0,
        "a read_committed reader sees every window exactly once"
    );
    assert_eq!(outcome.comparison.records, outcome.windows);
    common::cleanup(&outcome.dir);
}

//! Rescale test: while a data set streams in, the pipeline goes from 1 to 3 to 2 to 4 runtime
//! processes (scale-down by SIGTERM, as a StatefulSet does). Partitions move with their state;
//! deduplicated by (key, window), the output must equal the offline reference exactly. Prints the
//! pause each moved partition saw: from the snapshot its previous owner wrote at revocation to
//! its state restored by the next owner.

mod common;

use std::time::Duration;

use common::{PARTITIONS, finish, launch, scratch, seed, stream};
use pipeline_e2e::{broker::Tansu, dataset::Dataset};

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn scaling_from_one_to_three_to_two_to_four_processes_mid_stream_keeps_every_window_exact() {
    let tansu = Tansu::start();
    let seed = seed();
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 3)]);
    let data = Dataset::generate(200_000, 400, PARTITIONS, 5, seed);
    let dir = scratch("rescale");
    let launch = launch(&tansu, &dir, "rescale", "at-least-once", "readings", "out");
    let records = data.with_closing_records(PARTITIONS);
    let mut processes = vec![launch.start("rescale-0")];
    std::thread::sleep(Duration::from_secs(2));
    let producer = stream(
        &tansu.bootstrap,
        "readings",
        records,
        40,
        Duration::from_millis(400),
    );
    let mut scraped = Vec::new();
    let step = Duration::from_secs(5);
    std::thread::sleep(step);
    eprintln!("scale 1 -> 3");
    processes.push(launch.start("rescale-1"));
    processes.push(launch.start("rescale-2"));
    std::thread::sleep(step);
    eprintln!("scale 3 -> 2");
    let mut leaving = processes.remove(0);
    scraped.extend(leaving.metrics());
    leaving.terminate(Duration::from_secs(30));
    std::thread::sleep(step);
    eprintln!("scale 2 -> 4");
    processes.push(launch.start("rescale-3"));
    processes.push(launch.start("rescale-4"));
    let (comparison, _) = finish(&tansu, "out", producer, &mut processes, scraped, &data);
    let pauses = common::report_pauses(&dir);
    common::assert_exact(&comparison, &dir);
    assert!(!pauses.is_empty(), "no partition moved with its state");
    common::cleanup(&dir);
}

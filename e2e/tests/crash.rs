//! Crash test: runtime processes are killed with SIGKILL at random moments while a data set
//! streams in, and restarted. Deduplicated by (key, window), the output must equal the offline
//! reference exactly, and every repeated window must be an identical re-emission.

mod common;

use std::time::Duration;

use common::{PARTITIONS, await_output, between, figures, manifest, scratch, seed, stream};
use pipeline_e2e::{
    broker::{Rng, Tansu},
    dataset::Dataset,
    process::Launch,
};

const PROCESSES: usize = 3;
const KILLS: usize = 6;

#[test]
fn killing_runtime_processes_at_random_moments_loses_and_changes_no_window() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    let seed = seed();
    let mut rng = Rng::new(seed);
    tansu.create_topics(&[("readings", PARTITIONS), ("out", 3)]);
    let data = Dataset::generate(200_000, 400, PARTITIONS, 5, seed);
    let reference = data.reference();
    let dir = scratch("crash");
    let launch = Launch {
        manifest: manifest(&dir, "crash", "at-least-once"),
        bootstrap: tansu.bootstrap.clone(),
        slots: 1,
        log_dir: dir.clone(),
    };
    let mut processes: Vec<_> = (0..PROCESSES)
        .map(|i| launch.start(&format!("crash-{i}")))
        .collect();
    let mut records = data.records.clone();
    records.extend(data.closing_records(PARTITIONS));
    let producer = stream(&tansu.bootstrap, records, 40, Duration::from_millis(300));
    let mut scraped = Vec::new();
    for kill in 0..KILLS {
        std::thread::sleep(between(&mut rng, 1_500, 4_500));
        let victim = usize::try_from(rng.below(PROCESSES as u64)).unwrap();
        scraped.extend(processes[victim].metrics());
        processes[victim].kill();
        eprintln!("kill {}: SIGKILL {}", kill + 1, processes[victim].pod);
        std::thread::sleep(between(&mut rng, 0, 1_000));
        processes[victim] = launch.start(&format!("crash-{victim}"));
    }
    producer.join().unwrap();
    let (comparison, _) = await_output(&tansu, &reference, Duration::from_secs(240));
    scraped.extend(processes.iter().filter_map(|p| p.metrics()));
    let figures = figures(&scraped);
    eprintln!(
        "{} records, {} windows expected; output: {} records, {} distinct windows, {} identical repeats; {figures}",
        data.records.len(),
        reference.len(),
        comparison.records,
        comparison.windows,
        comparison.identical_repeats
    );
    for p in &mut processes {
        p.terminate(Duration::from_secs(10));
    }
    assert!(
        comparison.exact(),
        "output differs from the reference (logs in {}):\n{}",
        dir.display(),
        comparison.problems.join("\n")
    );
    assert!(figures.checkpoints > 0.0 && figures.restores > 0.0);
    assert_eq!(figures.restore_failures, 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

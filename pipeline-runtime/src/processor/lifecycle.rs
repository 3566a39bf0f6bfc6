//! A partition's lifecycle in the processor: assigned, read, snapshotted, restored, released;
//! and what of it may be committed. The record path is in the parent module.

use std::time::Instant;

use super::*;

impl Processor {
    /// The offset that is safe to commit for a partition: everything before it has been fully
    /// emitted (once the producer has flushed). `None` when nothing was read from it.
    pub fn committable_offset(&self, topic: TopicIndex, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&(topic, partition))?;
        let next = state.next_offset?;
        let open = state
            .windows
            .as_ref()
            .and_then(PartitionWindows::min_open_offset);
        Some(open.map_or(next, |o| o.min(next)))
    }

    /// A partition was assigned: its state exists from now on, so an empty partition still
    /// becomes idle and announces its watermark.
    pub fn assign(&mut self, topic: TopicIndex, partition: i32, now: Instant) {
        self.state(topic, partition, now);
    }

    /// Whether the consumer has caught up with a partition (from the client's lag statistics).
    pub fn set_caught_up(&mut self, topic: TopicIndex, partition: i32, caught_up: bool) {
        if let Some(state) = self.partitions.get_mut(&(topic, partition)) {
            state.caught_up = caught_up;
        }
    }

    /// Committable offsets of every partition with state.
    pub fn committable_offsets(&self) -> Vec<(TopicIndex, i32, i64)> {
        let mut offsets: Vec<_> = self
            .partitions
            .keys()
            .filter_map(|&(t, p)| Some((t, p, self.committable_offset(t, p)?)))
            .collect();
        offsets.sort_unstable();
        offsets
    }

    /// Drops a partition's state (revoked); returns its committable offset.
    pub fn release(&mut self, topic: TopicIndex, partition: i32) -> Option<i64> {
        let offset = self.committable_offset(topic, partition);
        self.partitions.remove(&(topic, partition));
        offset
    }

    /// Snapshots of the partitions (of `only`, when given) whose state changed since their last
    /// checkpoint, with the progress to confirm through [`Self::checkpointed`] once they are
    /// stored and committed. Partitions that have not read a record yet have nothing to store.
    pub fn changed_snapshots(
        &self,
        only: Option<&[(TopicIndex, i32)]>,
    ) -> Vec<(TopicIndex, i32, PartitionSnapshot, Progress)> {
        let mut changed: Vec<_> = self
            .partitions
            .iter()
            .filter(|(key, _)| only.is_none_or(|o| o.contains(key)))
            .filter(|(_, s)| s.next_offset.is_some() && s.checkpointed != Some(s.progress()))
            .map(|(&(topic, partition), s)| (topic, partition, snapshot_of(s), s.progress()))
            .collect();
        changed.sort_unstable_by_key(|(t, p, ..)| (*t, *p));
        changed
    }

    /// A partition's snapshot was stored and its offset committed at `progress`.
    pub fn checkpointed(&mut self, topic: TopicIndex, partition: i32, progress: Progress) {
        if let Some(state) = self.partitions.get_mut(&(topic, partition)) {
            state.checkpointed = Some(progress);
        }
    }

    /// (topic, partition, next offset) of every partition a record was read from.
    pub fn positions(&self) -> Vec<(TopicIndex, i32, i64)> {
        let mut positions: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(&(t, p), s)| Some((t, p, s.next_offset?)))
            .collect();
        positions.sort_unstable();
        positions
    }

    /// The next offset to read of a partition, once a record was read.
    pub fn next_offset(&self, topic: TopicIndex, partition: i32) -> Option<i64> {
        self.partitions.get(&(topic, partition))?.next_offset
    }

    /// Replaces a partition's state with a checkpoint's (on assignment, before its first
    /// record). The idleness clock starts at `now`.
    pub fn restore(
        &mut self,
        topic: TopicIndex,
        partition: i32,
        snapshot: PartitionSnapshot,
        now: Instant,
    ) -> Result<(), RestoreError> {
        let plan = self.plan.clone();
        self.partitions.remove(&(topic, partition));
        let state = self.state(topic, partition, now);
        let windows = match (snapshot.windows, &plan.window) {
            (Some(stored), Some(stage)) if state.windows.is_some() => {
                Some(PartitionWindows::from_state(
                    stage.assigner,
                    stage.lateness_ms,
                    stage.aggregates.clone(),
                    stored,
                )?)
            }
            (None, _) if state.windows.is_none() => None,
            _ => return Err(RestoreError::Mismatch),
        };
        match (&mut state.clock, snapshot.clock) {
            (
                EventClock::Local(w),
                ClockState::Local {
                    max_event_time,
                    watermark,
                },
            ) => w.restore(max_event_time, watermark, now),
            (EventClock::Upstream(marks, seen), ClockState::Upstream { marks: m, seen: s }) => {
                *marks = m;
                *seen = s.into_iter().collect();
            }
            _ => return Err(RestoreError::Mismatch),
        }
        state.windows = windows;
        state.next_offset = Some(snapshot.next_offset);
        state.announced = snapshot.announced;
        state.checkpointed = Some(state.progress());
        Ok(())
    }

    /// Per partition: (topic, partition, next offset (-1 before the first record), watermark,
    /// keys in state).
    pub fn partition_stats(&self) -> Vec<(TopicIndex, i32, i64, i64, usize)> {
        self.partitions
            .iter()
            .map(|(&(t, p), s)| {
                (
                    t,
                    p,
                    s.next_offset.unwrap_or(-1),
                    s.clock.current(),
                    s.windows.as_ref().map_or(0, PartitionWindows::key_count),
                )
            })
            .collect()
    }
}

fn snapshot_of(state: &PartitionState) -> PartitionSnapshot {
    PartitionSnapshot {
        next_offset: state.next_offset.unwrap_or(0),
        clock: match &state.clock {
            EventClock::Local(w) => ClockState::Local {
                max_event_time: w.max_event_time(),
                watermark: w.current(),
            },
            EventClock::Upstream(marks, seen) => {
                let mut seen: Vec<_> = seen.iter().map(|(u, o)| (*u, *o)).collect();
                seen.sort_unstable();
                ClockState::Upstream {
                    marks: marks.clone(),
                    seen,
                }
            }
        },
        announced: state.announced,
        windows: state.windows.as_ref().map(PartitionWindows::to_state),
    }
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::*;
    use crate::checkpoint::snapshot;

    const AGGREGATES: &str = "  aggregates: [{name: n, function: count}, {name: total, function: sum, field: v}, {name: lo, function: min, field: v}, {name: hi, function: max, field: x}, {name: mean, function: avg, field: x}, {name: users, function: count_distinct, field: u}, {name: p90, function: percentile, field: x, quantile: 0.9}]\n";

    fn plan(window: &str) -> Arc<Plan> {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n  transform: {{keyBy: dev, timestamp: {{field: ts}}, repartition: never, watermark: {{maxOutOfOrderness: 3s}}}}\n  window: {{{window}, allowedLateness: 2s}}\n{AGGREGATES}"
        );
        let spec = from_yaml(&text, "test").unwrap().spec;
        pipeline_crds::validate(&spec).unwrap();
        Arc::new(Plan::of_spec(&spec, vec![2]))
    }

    /// Deterministic disordered records over two partitions: (partition, offset, json).
    fn records(n: usize) -> Vec<(i32, i64, Vec<u8>)> {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed >> 33
        };
        let mut offsets = [0i64; 2];
        (0..n)
            .map(|i| {
                let partition = (next() % 2) as i32;
                let offset = offsets[partition as usize];
                offsets[partition as usize] += 1;
                let ts = i as i64 * 150 - (next() % 2_500) as i64;
                let value = format!(
                    r#"{{"dev":"d{}","ts":{ts},"v":{},"x":{}.25,"u":"u{}"}}"#,
                    next() % 7,
                    next() % 100,
                    next() % 50,
                    next() % 40
                );
                (partition, offset, value.into_bytes())
            })
            .collect()
    }

    fn run(p: &mut Processor, records: &[(i32, i64, Vec<u8>)]) -> Vec<Emit> {
        let mut out = Vec::new();
        for (partition, offset, value) in records {
            let rec = InRecord {
                topic: 0,
                partition: *partition,
                offset: *offset,
                key: None,
                payload: Some(value),
                timestamp_ms: None,
                upstream: None,
                marker: None,
            };
            p.process(&rec, Instant::now(), 0, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn restoring_a_checkpoint_continues_exactly_like_an_uninterrupted_run() {
        let data = records(3_000);
        for window in [
            "tumbling: {size: 10s}",
            "sliding: {size: 6s, slide: 2s}",
            "session: {gap: 700ms}",
        ] {
            let plan = plan(window);
            let uninterrupted = run(&mut Processor::new(plan.clone()).unwrap(), &data);
            assert!(
                uninterrupted.len() > 50,
                "{window}: too few windows to prove anything"
            );
            for split in [1, 777, 1_500, 2_999] {
                let mut before = Processor::new(plan.clone()).unwrap();
                let mut outputs = run(&mut before, &data[..split]);
                let mut after = Processor::new(plan.clone()).unwrap();
                for (topic, partition, snap, _) in before.changed_snapshots(None) {
                    let bytes = snapshot::encode(&snap, plan.state_fingerprint);
                    let back = snapshot::decode(&bytes, plan.state_fingerprint).unwrap();
                    after
                        .restore(topic, partition, back, Instant::now())
                        .unwrap();
                }
                assert!(
                    after.changed_snapshots(None).is_empty(),
                    "restored state is clean"
                );
                outputs.extend(run(&mut after, &data[split..]));
                assert_eq!(outputs, uninterrupted, "{window}, split at {split}");
            }
        }
    }

    /// Snapshot files written by earlier builds must restore, and continue to the same results,
    /// in this one: a dependency upgrade (postcard, the HyperLogLog or DDSketch crates) or a
    /// change of the plan's fingerprint that changed the stored layout fails here. The files are
    /// checked in under `tests/fixtures/snapshots/v<format version>/`; `SLUICE_BLESS=1` writes
    /// the current version's (never rewrite an older version's).
    #[test]
    fn checked_in_snapshots_of_every_format_version_restore_and_continue_identically() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshots");
        let data = records(3_000);
        let split = 1_500;
        let windows = [
            ("tumbling", "tumbling: {size: 10s}"),
            ("sliding", "sliding: {size: 6s, slide: 2s}"),
            ("session", "session: {gap: 700ms}"),
        ];
        if std::env::var_os("SLUICE_BLESS").is_some() {
            let dir = root.join(format!("v{}", snapshot::FORMAT_VERSION));
            std::fs::create_dir_all(&dir).unwrap();
            for (name, window) in windows {
                let plan = plan(window);
                let mut before = Processor::new(plan.clone()).unwrap();
                run(&mut before, &data[..split]);
                for (_, partition, snap, _) in before.changed_snapshots(None) {
                    let bytes = snapshot::encode(&snap, plan.state_fingerprint);
                    std::fs::write(dir.join(format!("{name}-p{partition}.snap")), bytes).unwrap();
                }
            }
        }
        let mut checked = 0;
        for version in std::fs::read_dir(&root).expect("checked-in snapshot fixtures") {
            let version = version.unwrap().path();
            for (name, window) in windows {
                let plan = plan(window);
                let mut uninterrupted = Processor::new(plan.clone()).unwrap();
                run(&mut uninterrupted, &data[..split]);
                let expected = run(&mut uninterrupted, &data[split..]);
                let mut restored = Processor::new(plan.clone()).unwrap();
                for partition in 0..2 {
                    let file = version.join(format!("{name}-p{partition}.snap"));
                    let bytes = std::fs::read(&file).unwrap();
                    let snap = snapshot::decode(&bytes, plan.state_fingerprint)
                        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                    restored
                        .restore(0, partition, snap, Instant::now())
                        .unwrap();
                    checked += 1;
                }
                assert_eq!(
                    run(&mut restored, &data[split..]),
                    expected,
                    "{} {name}",
                    version.display()
                );
            }
        }
        assert!(checked >= 6, "fixtures found: {checked}");
    }

    /// A snapshot body damaged in ways its checksum cannot see (written by a buggy build, or
    /// crafted) is refused or restored, never a panic; restored state then processes records
    /// without panicking either.
    fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&bytes[20..]);
        bytes[14..18].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn damaged_snapshot_bodies_are_refused_or_restored_never_a_panic(
            window in 0..3usize,
            edits in proptest::collection::vec((0..8_000usize, proptest::num::u8::ANY), 1..6),
            cut in proptest::option::of(20..8_000usize),
        ) {
            let window = ["tumbling: {size: 10s}", "sliding: {size: 6s, slide: 2s}", "session: {gap: 700ms}"][window];
            let plan = plan(window);
            let data = records(600);
            let mut before = Processor::new(plan.clone()).unwrap();
            run(&mut before, &data[..300]);
            for (_, partition, snap, _) in before.changed_snapshots(None) {
                let mut bytes = snapshot::encode(&snap, plan.state_fingerprint);
                for &(at, byte) in &edits {
                    let len = bytes.len();
                    bytes[20 + at % (len - 20)] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.max(20).min(bytes.len()));
                }
                let bytes = resealed(bytes);
                if let Ok(snap) = snapshot::decode(&bytes, plan.state_fingerprint) {
                    let mut after = Processor::new(plan.clone()).unwrap();
                    if after.restore(0, partition, snap, Instant::now()).is_ok() {
                        let rest: Vec<_> = data[300..].iter().filter(|r| r.0 == partition).cloned().collect();
                        run(&mut after, &rest);
                        let mut out = Vec::new();
                        after.on_tick(Instant::now(), &mut out);
                    }
                }
            }
        }
    }

    #[test]
    fn only_partitions_whose_state_moved_are_snapshotted_again() {
        let plan = plan("tumbling: {size: 10s}");
        let mut p = Processor::new(plan).unwrap();
        run(&mut p, &records(100));
        let first = p.changed_snapshots(None);
        assert_eq!(first.len(), 2);
        for (topic, partition, _, progress) in first {
            p.checkpointed(topic, partition, progress);
        }
        assert!(p.changed_snapshots(None).is_empty());
        let more: Vec<_> = records(101).into_iter().skip(100).collect();
        run(&mut p, &more);
        let again = p.changed_snapshots(None);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1, more[0].0);
    }
}

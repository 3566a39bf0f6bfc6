//! Per-partition event-time watermarks with idleness.
//!
//! The watermark of a partition is the highest event time seen minus `maxOutOfOrderness` (minus
//! 1 ms, so a record exactly `maxOutOfOrderness` behind is still on time, as in Flink's
//! bounded-out-of-orderness strategy). A partition that receives nothing for `idleTimeout`
//! advances to the wall clock minus `maxOutOfOrderness`, so its last windows close. The watermark
//! never goes back.

use std::time::{Duration, Instant};

/// Event time before any record: nothing is late, nothing fires.
pub const NO_WATERMARK: i64 = i64::MIN;

/// The watermark of one source partition.
#[derive(Clone, Debug)]
pub struct Watermark {
    out_of_orderness_ms: i64,
    idle_timeout: Option<Duration>,
    max_event_time: Option<i64>,
    last_record_at: Instant,
    current: i64,
}

impl Watermark {
    /// A partition that has seen nothing yet; `now` starts the idleness clock.
    pub fn new(out_of_orderness_ms: i64, idle_timeout: Option<Duration>, now: Instant) -> Self {
        Self {
            out_of_orderness_ms,
            idle_timeout,
            max_event_time: None,
            last_record_at: now,
            current: NO_WATERMARK,
        }
    }

    /// Accounts for a record with event time `ts` read at `now`; returns the new watermark.
    pub fn on_record(&mut self, ts: i64, now: Instant) -> i64 {
        self.last_record_at = now;
        let max = self.max_event_time.map_or(ts, |m| m.max(ts));
        self.max_event_time = Some(max);
        self.raise(
            max.saturating_sub(self.out_of_orderness_ms)
                .saturating_sub(1),
        );
        self.current
    }

    /// Advances an idle partition by processing time: when nothing arrived for `idleTimeout`, the
    /// watermark moves to `wall_clock_ms − maxOutOfOrderness − 1`. Returns the new watermark.
    pub fn on_idle_check(&mut self, now: Instant, wall_clock_ms: i64) -> i64 {
        if let Some(timeout) = self.idle_timeout
            && now.duration_since(self.last_record_at) >= timeout
        {
            self.raise(
                wall_clock_ms
                    .saturating_sub(self.out_of_orderness_ms)
                    .saturating_sub(1),
            );
        }
        self.current
    }

    /// The current watermark.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// The highest event time seen, if any.
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }

    fn raise(&mut self, candidate: i64) {
        self.current = self.current.max(candidate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_the_highest_event_time_by_the_out_of_orderness() {
        let t0 = Instant::now();
        let mut wm = Watermark::new(5_000, None, t0);
        assert_eq!(wm.current(), NO_WATERMARK);
        assert_eq!(wm.on_record(100_000, t0), 94_999);
        // An older record does not move it back.
        assert_eq!(wm.on_record(90_000, t0), 94_999);
        assert_eq!(wm.on_record(110_000, t0), 104_999);
    }

    #[test]
    fn an_idle_partition_advances_by_processing_time_only_after_the_timeout() {
        let t0 = Instant::now();
        let mut wm = Watermark::new(1_000, Some(Duration::from_secs(30)), t0);
        wm.on_record(10_000, t0);
        assert_eq!(
            wm.on_idle_check(t0 + Duration::from_secs(29), 500_000),
            8_999
        );
        assert_eq!(
            wm.on_idle_check(t0 + Duration::from_secs(30), 500_000),
            498_999
        );
        // A later record behind the idle watermark leaves it where it is.
        assert_eq!(wm.on_record(20_000, t0 + Duration::from_secs(31)), 498_999);
    }

    #[test]
    fn without_idle_timeout_a_quiet_partition_holds_its_watermark() {
        let t0 = Instant::now();
        let mut wm = Watermark::new(0, None, t0);
        wm.on_record(10, t0);
        assert_eq!(
            wm.on_idle_check(t0 + Duration::from_secs(3600), i64::MAX / 2),
            9
        );
    }
}

/// The watermark of a repartition-topic partition: the minimum of the watermarks its upstream
/// source partitions announced through watermark markers (Flink's rule after a shuffle). Until
/// every upstream partition has announced one there is no watermark.
#[derive(Clone, Debug)]
pub struct UpstreamWatermarks {
    marks: std::collections::HashMap<u32, i64>,
    expected: usize,
    current: i64,
}

impl UpstreamWatermarks {
    /// Waits for `expected` upstream partitions.
    pub fn new(expected: usize) -> Self {
        Self {
            marks: std::collections::HashMap::new(),
            expected,
            current: NO_WATERMARK,
        }
    }

    /// Records upstream partition `upstream`'s watermark; returns the new combined watermark.
    pub fn on_marker(&mut self, upstream: u32, watermark: i64) -> i64 {
        let mark = self.marks.entry(upstream).or_insert(NO_WATERMARK);
        *mark = (*mark).max(watermark);
        if self.marks.len() >= self.expected {
            let min = self.marks.values().copied().min().unwrap_or(NO_WATERMARK);
            self.current = self.current.max(min);
        }
        self.current
    }

    /// The combined watermark.
    pub fn current(&self) -> i64 {
        self.current
    }
}

#[cfg(test)]
mod upstream_tests {
    use super::*;

    #[test]
    fn waits_for_every_upstream_partition_then_follows_the_slowest() {
        let mut u = UpstreamWatermarks::new(3);
        assert_eq!(u.on_marker(0, 100), NO_WATERMARK);
        assert_eq!(u.on_marker(1, 50), NO_WATERMARK);
        assert_eq!(u.on_marker(2, 70), 50);
        assert_eq!(u.on_marker(1, 90), 70);
        // A stale (lower) marker never moves it back.
        assert_eq!(u.on_marker(2, 10), 70);
    }
}

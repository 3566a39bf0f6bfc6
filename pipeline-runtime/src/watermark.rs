//! Per-partition event-time watermarks with idleness.
//!
//! The watermark of a partition is the highest event time seen minus `maxOutOfOrderness` (minus
//! 1 ms, so a record exactly `maxOutOfOrderness` behind is still on time, as in Flink's
//! bounded-out-of-orderness strategy). A caught-up partition that receives nothing for
//! `idleTimeout` lets event time run on at wall-clock speed from its last record, so its last
//! windows close. (It does not jump to the wall clock: a backlog of old records arriving later
//! would all be late.) The watermark never goes back.

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

    /// Whether nothing arrived for `idleTimeout` (never, without one).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.idle_timeout
            .is_some_and(|timeout| now.duration_since(self.last_record_at) >= timeout)
    }

    /// Advances an idle partition by processing time: once nothing arrived for `idleTimeout`,
    /// the watermark is the last one a record set plus the wall-clock time since that record.
    /// Returns the new watermark.
    pub fn on_idle_check(&mut self, now: Instant) -> i64 {
        if self.is_idle(now)
            && let Some(max) = self.max_event_time
        {
            let quiet = i64::try_from(now.duration_since(self.last_record_at).as_millis())
                .unwrap_or(i64::MAX);
            self.raise(
                max.saturating_sub(self.out_of_orderness_ms)
                    .saturating_sub(1)
                    .saturating_add(quiet),
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

    /// Continues from a checkpoint's (highest event time, watermark); the idleness clock starts
    /// at `now`.
    pub fn restore(&mut self, max_event_time: Option<i64>, current: i64, now: Instant) {
        self.max_event_time = max_event_time;
        self.current = current;
        self.last_record_at = now;
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
    fn an_idle_partition_lets_event_time_run_at_wall_clock_speed_after_the_timeout() {
        let t0 = Instant::now();
        let mut wm = Watermark::new(1_000, Some(Duration::from_secs(30)), t0);
        wm.on_record(10_000, t0);
        assert_eq!(wm.on_idle_check(t0 + Duration::from_secs(29)), 8_999);
        assert_eq!(wm.on_idle_check(t0 + Duration::from_secs(30)), 38_999);
        assert_eq!(wm.on_idle_check(t0 + Duration::from_secs(40)), 48_999);
        // A later record behind the idle watermark leaves it where it is.
        assert_eq!(wm.on_record(20_000, t0 + Duration::from_secs(41)), 48_999);
    }

    #[test]
    fn without_idle_timeout_or_records_a_quiet_partition_holds_its_watermark() {
        let t0 = Instant::now();
        let mut wm = Watermark::new(0, None, t0);
        wm.on_record(10, t0);
        assert_eq!(wm.on_idle_check(t0 + Duration::from_secs(3600)), 9);
        let mut empty = Watermark::new(0, Some(Duration::from_secs(1)), t0);
        assert_eq!(
            empty.on_idle_check(t0 + Duration::from_secs(3600)),
            NO_WATERMARK
        );
    }
}

/// A marker value meaning "this upstream partition is idle and has no watermark": it is left
/// out of the minimum until it announces one again (Flink's idle input channels).
pub const IDLE_MARKER: i64 = i64::MAX;

/// The watermark of a repartition-topic partition: the minimum of the watermarks its active
/// upstream source partitions announced through watermark markers (Flink's rule after a
/// shuffle). Until every upstream partition has announced a watermark or idleness there is no
/// watermark.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UpstreamWatermarks {
    /// Per upstream partition: its watermark, or `None` while idle.
    marks: std::collections::HashMap<u32, Option<i64>>,
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

    /// Records upstream partition `upstream`'s watermark (or [`IDLE_MARKER`]); returns the new
    /// combined watermark.
    pub fn on_marker(&mut self, upstream: u32, watermark: i64) -> i64 {
        let mark = self.marks.entry(upstream).or_insert(None);
        *mark = if watermark == IDLE_MARKER {
            None
        } else {
            Some(mark.map_or(watermark, |m| m.max(watermark)))
        };
        if self.marks.len() >= self.expected
            && let Some(min) = self.marks.values().flatten().copied().min()
        {
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
        // An idle upstream partition is left out of the minimum.
        assert_eq!(u.on_marker(2, IDLE_MARKER), 90);
    }

    #[test]
    fn idle_upstream_partitions_count_as_announced_but_hold_nothing_back() {
        let mut u = UpstreamWatermarks::new(2);
        assert_eq!(u.on_marker(0, IDLE_MARKER), NO_WATERMARK);
        assert_eq!(u.on_marker(1, 500), 500);
    }
}

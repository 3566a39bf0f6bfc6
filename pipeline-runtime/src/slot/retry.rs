//! Records whose processing failed for a reason that may pass (the Schema Registry unreachable):
//! their partition is paused and read again from that record after a backoff, while the slot goes
//! on polling (so the group keeps it) and processing its other partitions. Retries are bounded:
//! past [`GIVE_UP_AFTER`] the record goes to the dead-letter topic. A pipeline without one never
//! drops the record: its partition stays held (paused, reported) until the record passes.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::plan::TopicIndex;

/// The first wait before a record is tried again; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a record is tried before it is dead-lettered.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Waiting {
    offset: i64,
    attempts: u32,
    since: Instant,
    backoff: Duration,
    /// `Some` while the partition is paused: when to resume it.
    resume_at: Option<Instant>,
    /// Past [`GIVE_UP_AFTER`] with nowhere to set the record aside: reported as paused.
    held: bool,
}

/// What to do with a record that just failed for a transient reason.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pause the partition and read it again from the record after this long.
    Retry(Duration),
    /// It has failed past [`GIVE_UP_AFTER`] and there is no dead-letter topic: the partition
    /// stays held (paused and reported, never dropping the record) and tries again after this
    /// long. `first` on the first such verdict of the record.
    Hold {
        /// The wait before the next try.
        wait: Duration,
        /// Whether the partition was not held before.
        first: bool,
    },
    /// Dead-letter it: it failed `attempts` times over this long.
    GiveUp {
        /// Tries so far.
        attempts: u32,
        /// Since the first.
        waited: Duration,
    },
}

/// The partitions of a slot that wait on a transient failure.
#[derive(Debug)]
pub struct Retries {
    waiting: HashMap<(TopicIndex, i32), Waiting>,
    /// How long a record is tried before it is dead-lettered; `None` = never (no dead-letter
    /// topic: the partition is held instead).
    give_up_after: Option<Duration>,
}

impl Default for Retries {
    fn default() -> Self {
        Self::new(Some(GIVE_UP_AFTER))
    }
}

impl Retries {
    /// Retries that dead-letter a record after `give_up_after`, or hold its partition for good
    /// when `None`.
    pub fn new(give_up_after: Option<Duration>) -> Self {
        Self {
            waiting: HashMap::new(),
            give_up_after,
        }
    }

    /// Whether any partition waits (one check per batch while none does).
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether records of this partition are to be skipped now: it is paused, and they will be
    /// read again from the failed record.
    pub fn is_paused(&self, topic: TopicIndex, partition: i32) -> bool {
        self.waiting
            .get(&(topic, partition))
            .is_some_and(|w| w.resume_at.is_some())
    }

    /// The record at `offset` failed at `now`.
    pub fn failed(
        &mut self,
        topic: TopicIndex,
        partition: i32,
        offset: i64,
        now: Instant,
    ) -> Verdict {
        let w = self
            .waiting
            .entry((topic, partition))
            .or_insert_with(|| Waiting {
                offset,
                attempts: 0,
                since: now,
                backoff: FIRST_BACKOFF,
                resume_at: None,
                held: false,
            });
        if w.offset != offset {
            // Another record of the partition (the last one passed): a new count.
            *w = Waiting {
                offset,
                attempts: 0,
                since: now,
                backoff: FIRST_BACKOFF,
                resume_at: None,
                held: w.held,
            };
        }
        w.attempts += 1;
        let waited = now - w.since;
        if let Some(limit) = self.give_up_after
            && waited >= limit
        {
            let attempts = w.attempts;
            self.waiting.remove(&(topic, partition));
            return Verdict::GiveUp { attempts, waited };
        }
        let wait = w.backoff;
        w.backoff = (w.backoff * 2).min(MAX_BACKOFF);
        w.resume_at = Some(now + wait);
        if self.give_up_after.is_none() && waited >= GIVE_UP_AFTER {
            let first = !w.held;
            w.held = true;
            return Verdict::Hold { wait, first };
        }
        Verdict::Retry(wait)
    }

    /// A record of this partition was processed: its wait, if any, is over. True when the
    /// partition had been held (it is reported as consuming again).
    pub fn passed(&mut self, topic: TopicIndex, partition: i32, offset: i64) -> bool {
        if self
            .waiting
            .get(&(topic, partition))
            .is_some_and(|w| w.offset <= offset)
        {
            return self
                .waiting
                .remove(&(topic, partition))
                .is_some_and(|w| w.held);
        }
        false
    }

    /// Paused partitions whose backoff ended by `now`: resume them (they stay listed until their
    /// record passes or fails again).
    pub fn due(&mut self, now: Instant) -> Vec<(TopicIndex, i32)> {
        let mut due = Vec::new();
        for (&key, w) in &mut self.waiting {
            if w.resume_at.is_some_and(|at| at <= now) {
                w.resume_at = None;
                due.push(key);
            }
        }
        due
    }

    /// Forgets partitions the slot no longer owns.
    pub fn retain(&mut self, mut owned: impl FnMut(TopicIndex, i32) -> bool) {
        self.waiting.retain(|&(t, p), _| owned(t, p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_record_pauses_its_partition_with_growing_backoff_and_is_given_up_in_the_end() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        assert_eq!(r.failed(0, 1, 50, t0), Verdict::Retry(FIRST_BACKOFF));
        assert!(r.is_paused(0, 1) && !r.is_paused(0, 2));
        assert!(r.due(t0).is_empty());
        assert_eq!(r.due(t0 + FIRST_BACKOFF), [(0, 1)]);
        assert!(!r.is_paused(0, 1), "resumed: its records are read again");
        assert_eq!(
            r.failed(0, 1, 50, t0 + FIRST_BACKOFF),
            Verdict::Retry(FIRST_BACKOFF * 2)
        );
        // The backoff stops growing at its maximum.
        let mut at = t0;
        for _ in 0..12 {
            at += Duration::from_secs(1);
            let _ = r.failed(0, 1, 50, at);
        }
        assert_eq!(r.failed(0, 1, 50, at), Verdict::Retry(MAX_BACKOFF));
        match r.failed(0, 1, 50, t0 + GIVE_UP_AFTER) {
            Verdict::GiveUp { attempts, waited } => {
                assert_eq!((attempts, waited), (16, GIVE_UP_AFTER));
            }
            other => panic!("{other:?}"),
        }
        assert!(r.is_empty());
    }

    #[test]
    fn without_a_dead_letter_topic_a_failing_record_holds_its_partition_and_is_never_given_up() {
        let mut r = Retries::new(None);
        let t0 = Instant::now();
        assert_eq!(r.failed(0, 1, 50, t0), Verdict::Retry(FIRST_BACKOFF));
        assert!(matches!(
            r.failed(0, 1, 50, t0 + GIVE_UP_AFTER),
            Verdict::Hold { first: true, .. }
        ));
        for hours in 1..48 {
            let verdict = r.failed(0, 1, 50, t0 + Duration::from_secs(3600 * hours));
            assert!(
                matches!(verdict, Verdict::Hold { first: false, wait } if wait <= MAX_BACKOFF),
                "after {hours} h: {verdict:?}"
            );
        }
        assert!(r.is_paused(0, 1));
        assert!(r.passed(0, 1, 50), "the hold ends when the record passes");
        assert!(r.is_empty());
    }

    #[test]
    fn a_record_that_passes_ends_the_wait_and_a_revoked_partition_is_forgotten() {
        let mut r = Retries::default();
        let t0 = Instant::now();
        r.failed(0, 1, 50, t0);
        r.failed(0, 2, 7, t0);
        r.passed(0, 1, 49);
        assert!(r.is_paused(0, 1));
        r.passed(0, 1, 50);
        assert!(!r.is_paused(0, 1));
        r.retain(|_, p| p != 2);
        assert!(r.is_empty());
    }
}

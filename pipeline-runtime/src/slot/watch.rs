//! What a slot is doing, for the supervisor that contains its panics and for the health
//! endpoints: its loop's heartbeat, the record in hand, partitions paused for lost state, and
//! whether it has a broker.

use std::sync::{
    Mutex,
    atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering},
};

use crate::plan::TopicIndex;

/// No record in hand.
const NONE: usize = usize::MAX;

/// One slot's progress, written by the slot thread and read by the supervisor and `/healthz`.
#[derive(Debug)]
pub struct SlotWatch {
    topic: AtomicUsize,
    partition: AtomicI32,
    offset: AtomicI64,
    /// When the slot loop last went round (ms since the epoch; 0 = not running).
    heartbeat_ms: AtomicI64,
    /// Partitions paused because their state cannot be restored, as `topic/partition`.
    paused: Mutex<std::collections::BTreeSet<String>>,
    /// Statistics reports in a row (one a second) in which the slot's consumer had no broker up.
    brokers_down_reports: AtomicI64,
    /// Why the slot's last run failed, while it waits to restart.
    failure: Mutex<Option<String>>,
}

impl Default for SlotWatch {
    fn default() -> Self {
        Self {
            topic: AtomicUsize::new(NONE),
            partition: AtomicI32::new(0),
            offset: AtomicI64::new(0),
            heartbeat_ms: AtomicI64::new(0),
            paused: Mutex::new(std::collections::BTreeSet::new()),
            brokers_down_reports: AtomicI64::new(0),
            failure: Mutex::new(None),
        }
    }
}

/// Statistics reports in a row without a broker up before a slot counts as cut off from Kafka
/// (reconnects make single reports flap).
const BROKERS_DOWN_AFTER_REPORTS: i64 = 5;

impl SlotWatch {
    /// The slot starts processing this record.
    pub fn processing(&self, topic: TopicIndex, partition: i32, offset: i64) {
        self.partition.store(partition, Ordering::Relaxed);
        self.offset.store(offset, Ordering::Relaxed);
        self.topic.store(topic, Ordering::Release);
    }

    /// The slot holds no record (between batches).
    pub fn idle(&self) {
        self.topic.store(NONE, Ordering::Release);
    }

    /// The record in hand, if any (read after the slot thread ended).
    pub fn in_hand(&self) -> Option<(TopicIndex, i32, i64)> {
        let topic = self.topic.swap(NONE, Ordering::Acquire);
        (topic != NONE).then(|| {
            (
                topic,
                self.partition.load(Ordering::Relaxed),
                self.offset.load(Ordering::Relaxed),
            )
        })
    }

    /// The slot loop is alive at `now_ms`.
    pub fn beat(&self, now_ms: i64) {
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The slot stopped (a stopped slot is not stuck, and pauses nothing).
    pub fn stopped(&self) {
        self.heartbeat_ms.store(0, Ordering::Relaxed);
        self.brokers_down_reports.store(0, Ordering::Relaxed);
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// A partition was paused (`true`) because its state cannot be restored, or left (`false`).
    pub fn set_paused(&self, topic: &str, partition: i32, paused: bool) {
        let mut set = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!("{topic}/{partition}");
        if paused {
            set.insert(name);
        } else {
            set.remove(&name);
        }
    }

    /// A statistics report: whether any broker connection of the slot's consumer was up.
    pub fn brokers_seen(&self, any_up: bool) {
        if any_up {
            self.brokers_down_reports.store(0, Ordering::Relaxed);
        } else {
            self.brokers_down_reports.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the slot has had no broker up for [`BROKERS_DOWN_AFTER_REPORTS`] reports.
    pub fn cut_off_from_kafka(&self) -> bool {
        self.heartbeat_ms() > 0
            && self.brokers_down_reports.load(Ordering::Relaxed) >= BROKERS_DOWN_AFTER_REPORTS
    }

    /// The partitions paused for lost or incompatible state.
    pub fn paused(&self) -> Vec<String> {
        self.paused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The slot failed and waits to restart (`Some(why)`), or starts again (`None`).
    pub fn set_failure(&self, why: Option<String>) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the slot failed, while it waits to restart.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last heartbeat (0 = not running).
    pub fn heartbeat_ms(&self) -> i64 {
        self.heartbeat_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_hands_out_the_record_in_hand_once_and_forgets_it_when_idle() {
        let w = SlotWatch::default();
        assert_eq!(w.in_hand(), None);
        w.processing(1, 2, 3);
        assert_eq!(w.in_hand(), Some((1, 2, 3)));
        assert_eq!(w.in_hand(), None);
        w.processing(1, 2, 4);
        w.idle();
        assert_eq!(w.in_hand(), None);
    }
}

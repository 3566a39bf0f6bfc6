//! The records that made a slot panic, which its restart dead-letters instead of processing
//! again (else one record would crash the slot on every replay).

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::plan::TopicIndex;

/// Records that made a slot panic, with the panic message, shared by the process's slots (a
/// partition may move to another slot before the record is seen again).
#[derive(Debug, Default)]
pub struct Quarantine {
    any: AtomicBool,
    records: Mutex<HashMap<(TopicIndex, i32, i64), String>>,
}

impl Quarantine {
    /// Puts a record in quarantine.
    pub fn add(&self, record: (TopicIndex, i32, i64), panic: String) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record, panic);
        self.any.store(true, Ordering::Release);
    }

    /// The panic message if this record is in quarantine (taking it out). One atomic load per
    /// record while the quarantine is empty, which is always but after a panic.
    pub fn take(&self, topic: TopicIndex, partition: i32, offset: i64) -> Option<String> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let found = records.remove(&(topic, partition, offset));
        if records.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        found
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_record_is_handed_out_once() {
        let q = Quarantine::default();
        assert_eq!(q.take(0, 1, 5), None);
        q.add((0, 1, 5), "boom".into());
        assert_eq!(q.take(0, 1, 4), None);
        assert_eq!(q.take(0, 1, 5).as_deref(), Some("boom"));
        assert_eq!(q.take(0, 1, 5), None);

        let payload: Box<dyn std::any::Any + Send> = Box::new(format!("index {}", 7));
        assert_eq!(panic_message(payload.as_ref()), "index 7");
    }
}

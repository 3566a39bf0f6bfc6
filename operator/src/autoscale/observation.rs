//! What the autoscaler knows about a running pipeline over a window: rates from counters, lag at
//! the end of the window, busy and backpressured shares per slot. Computed here from two samples
//! of the runtime's counters (direct scrape and the simulator), or by PromQL (see
//! [`super::source::Prometheus`]). Anything missing, stale, not a number, partial or reset makes the
//! window [`Unknown`], never zero.

use std::collections::{BTreeMap, BTreeSet};

/// A source partition: `topic/partition`.
pub type PartitionId = String;

/// The pipeline over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Records per second arriving on the source partitions (rate of their end offsets).
    pub arrival_rate: f64,
    /// Records per second arriving over the last evaluation interval of the window (a load
    /// change shows here before it moves the window's average).
    pub recent_arrival_rate: f64,
    /// Records per second consumed (rate of the slots' positions).
    pub processing_rate: f64,
    /// Per partition (paused ones excluded): lag in records at the end of the window, and its
    /// own arrival rate.
    pub partitions: BTreeMap<PartitionId, PartitionObservation>,
    /// Per slot (`pod/slot`) that reported over the whole window.
    pub slot_rates: BTreeMap<String, SlotObservation>,
    /// Busy share of the busiest slot.
    pub busy_max: f64,
    /// Mean busy share.
    pub busy_mean: f64,
    /// Backpressured share of the most backpressured slot.
    pub backpressure_max: f64,
    /// Mean backpressured share.
    pub backpressure_mean: f64,
    /// Partitions paused after a failed restore.
    pub paused: BTreeSet<PartitionId>,
    /// Slots (`pod/slot`) whose last checkpoints failed, with how many in a row, at the end of
    /// the window.
    pub failing_checkpoints: BTreeMap<String, u64>,
    /// Slots that reported over the whole window.
    pub slots: i32,
    /// Seconds the window covers.
    pub window_seconds: f64,
    /// Seconds since the newest sample.
    pub newest_age_seconds: f64,
}

/// One partition over the window.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionObservation {
    /// Lag in records at the end of the window.
    pub lag: f64,
    /// Records per second arriving.
    pub arrival_rate: f64,
}

/// One slot over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotObservation {
    /// Busy share.
    pub busy: f64,
    /// Backpressured share.
    pub backpressure: f64,
    /// Records per second it consumed (its partitions at the window's end).
    pub processing_rate: f64,
}

impl Observation {
    /// An observation from its parts; the slot count and the busy and backpressured shares
    /// (max and mean) come from `slot_rates`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arrival_rate: f64,
        recent_arrival_rate: f64,
        processing_rate: f64,
        partitions: BTreeMap<PartitionId, PartitionObservation>,
        slot_rates: BTreeMap<String, SlotObservation>,
        paused: BTreeSet<PartitionId>,
        window_seconds: f64,
        newest_age_seconds: f64,
    ) -> Self {
        let busy: Vec<f64> = slot_rates.values().map(|s| s.busy).collect();
        let backpressure: Vec<f64> = slot_rates.values().map(|s| s.backpressure).collect();
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        Self {
            arrival_rate,
            recent_arrival_rate,
            processing_rate,
            partitions,
            busy_max: max(&busy),
            busy_mean: mean(&busy),
            backpressure_max: max(&backpressure),
            backpressure_mean: mean(&backpressure),
            slots: i32::try_from(slot_rates.len()).unwrap_or(i32::MAX),
            slot_rates,
            paused,
            failing_checkpoints: BTreeMap::new(),
            window_seconds,
            newest_age_seconds,
        }
    }

    /// Total lag in records (paused partitions excluded).
    pub fn lag(&self) -> f64 {
        self.partitions.values().map(|p| p.lag).sum()
    }

    /// The arrival rate to plan for: the higher of the window's and the last interval's.
    pub fn arrival(&self) -> f64 {
        self.arrival_rate.max(self.recent_arrival_rate)
    }
}

/// Why there is no observation: the autoscaler holds.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Unknown {
    /// No samples, or the metrics source failed.
    #[error("no metrics: {0}")]
    Missing(String),
    /// The newest sample is too old.
    #[error("metrics are stale: newest sample {age:.0}s old, limit {limit:.0}s")]
    Stale {
        /// Its age.
        age: f64,
        /// Two evaluation intervals.
        limit: f64,
    },
    /// Fewer slots or partitions reported than run.
    #[error("metrics are partial: {0}")]
    Partial(String),
    /// A counter went down (a pod restarted) inside the window.
    #[error("a counter was reset inside the window: {0}")]
    Reset(String),
    /// A value is not a number.
    #[error("a metric is not a number: {0}")]
    NotANumber(String),
    /// The window since the pipeline became stable is shorter than one interval.
    #[error("window of {have:.0}s since the pipeline became stable, need {need:.0}s")]
    Short {
        /// Seconds available.
        have: f64,
        /// Seconds needed.
        need: f64,
    },
}

/// One partition in a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionSample {
    /// High watermark.
    pub end_offset: f64,
    /// Next offset the owning slot reads.
    pub position: f64,
    /// The owning slot (`pod/slot`).
    pub slot: String,
}

/// One slot's counters in a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlotSample {
    /// Seconds busy.
    pub busy_seconds: f64,
    /// Seconds blocked on the sink.
    pub backpressured_seconds: f64,
}

/// The runtime's counters at one moment, from every pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds (any fixed origin, the same for every sample).
    pub at: f64,
    /// By partition; a partition reported by two slots (during a hand-over) keeps the highest.
    pub partitions: BTreeMap<PartitionId, PartitionSample>,
    /// By `pod/slot`.
    pub slots: BTreeMap<String, SlotSample>,
    /// Partitions paused after a failed restore.
    pub paused: BTreeSet<PartitionId>,
    /// By `pod/slot`: checkpoints failed in a row, where any did.
    pub failing_checkpoints: BTreeMap<String, u64>,
}

impl Sample {
    /// Partitions reported, paused ones included.
    pub fn reported(&self) -> usize {
        self.partitions.len()
            + self
                .paused
                .difference(&self.partitions.keys().cloned().collect())
                .count()
    }

    /// Adds a partition's offsets; when two slots report it (a hand-over), the one that read
    /// further owns it.
    pub fn add_partition(&mut self, id: PartitionId, sample: PartitionSample) {
        match self.partitions.get_mut(&id) {
            Some(entry) => {
                entry.end_offset = entry.end_offset.max(sample.end_offset);
                if sample.position > entry.position {
                    entry.position = sample.position;
                    entry.slot = sample.slot;
                }
            }
            None => {
                self.partitions.insert(id, sample);
            }
        }
    }
}

/// What a window must contain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Expectation {
    /// Partitions of the source topics.
    pub partitions: usize,
    /// Slots running.
    pub slots: i32,
    /// Shortest window, seconds.
    pub min_window: f64,
    /// Oldest newest-sample, seconds.
    pub max_age: f64,
}

fn finite(what: &str, v: f64) -> Result<f64, Unknown> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Unknown::NotANumber(what.to_string()))
    }
}

/// The observation between the oldest sample at or after `since` and the newest, at `now`.
pub fn observe(
    samples: &[Sample],
    since: f64,
    now: f64,
    expect: Expectation,
) -> Result<Observation, Unknown> {
    let last = samples
        .last()
        .ok_or_else(|| Unknown::Missing("no sample yet".into()))?;
    let age = now - last.at;
    if age > expect.max_age {
        return Err(Unknown::Stale {
            age,
            limit: expect.max_age,
        });
    }
    let first = samples
        .iter()
        .find(|s| s.at >= since)
        .ok_or_else(|| Unknown::Missing("no sample in the window".into()))?;
    let dt = last.at - first.at;
    if dt < expect.min_window {
        return Err(Unknown::Short {
            have: dt.max(0.0),
            need: expect.min_window,
        });
    }
    let reported = |s: &Sample| s.reported();
    for s in [first, last] {
        if reported(s) < expect.partitions {
            return Err(Unknown::Partial(format!(
                "{} of {} partitions reported",
                reported(s),
                expect.partitions
            )));
        }
    }
    // The last interval of the window: the newest sample at least `min_window` before the last.
    let recent = samples
        .iter()
        .rev()
        .find(|s| s.at >= first.at && last.at - s.at >= expect.min_window)
        .unwrap_or(first);
    let recent_dt = last.at - recent.at;
    let mut recent_arrival = 0.0;
    let mut slot_processed: BTreeMap<&str, f64> = BTreeMap::new();
    let mut partitions = BTreeMap::new();
    let (mut arrival, mut processed) = (0.0, 0.0);
    for (id, end) in &last.partitions {
        if last.paused.contains(id) {
            continue;
        }
        let Some(start) = first.partitions.get(id) else {
            return Err(Unknown::Partial(format!(
                "partition {id} missing at the window start"
            )));
        };
        let arrived = finite(id, end.end_offset - start.end_offset)?;
        let consumed = finite(id, end.position - start.position)?;
        if arrived < 0.0 || consumed < 0.0 {
            return Err(Unknown::Reset(format!("offsets of {id} went back")));
        }
        arrival += arrived / dt;
        processed += consumed / dt;
        *slot_processed.entry(end.slot.as_str()).or_default() += consumed / dt;
        if let Some(r) = recent.partitions.get(id)
            && recent_dt > 0.0
        {
            recent_arrival += (end.end_offset - r.end_offset).max(0.0) / recent_dt;
        }
        partitions.insert(
            id.clone(),
            PartitionObservation {
                lag: finite(id, (end.end_offset - end.position).max(0.0))?,
                arrival_rate: arrived / dt,
            },
        );
    }
    let mut slot_rates = BTreeMap::new();
    for (slot, end) in &last.slots {
        let Some(start) = first.slots.get(slot) else {
            continue;
        };
        let b = finite(slot, end.busy_seconds - start.busy_seconds)?;
        let p = finite(
            slot,
            end.backpressured_seconds - start.backpressured_seconds,
        )?;
        if b < 0.0 || p < 0.0 {
            return Err(Unknown::Reset(format!("counters of slot {slot}")));
        }
        slot_rates.insert(
            slot.clone(),
            SlotObservation {
                busy: (b / dt).clamp(0.0, 1.0),
                backpressure: (p / dt).clamp(0.0, 1.0),
                processing_rate: slot_processed.get(slot.as_str()).copied().unwrap_or(0.0),
            },
        );
    }
    let mut observation = Observation::new(
        arrival,
        recent_arrival,
        processed,
        partitions,
        slot_rates,
        last.paused.clone(),
        dt,
        age,
    );
    observation.failing_checkpoints = last.failing_checkpoints.clone();
    if observation.slots < expect.slots {
        return Err(Unknown::Partial(format!(
            "{} of {} slots reported over the whole window",
            observation.slots, expect.slots
        )));
    }
    Ok(observation)
}

/// When a rescale that started at `since` settled: the first sample after it in which every slot
/// and every partition reports (a moved partition reports again once its new owner consumes it).
pub fn settled_at(samples: &[Sample], since: f64, expect: Expectation) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.at >= since)
        .find(|s| {
            s.reported() >= expect.partitions
                && i32::try_from(s.slots.len()).unwrap_or(i32::MAX) == expect.slots
        })
        .map(|s| s.at)
}

/// Samples kept between evaluations (direct scrape, simulator): the newest ones covering
/// `keep` seconds.
#[derive(Clone, Debug, Default)]
pub struct History {
    samples: Vec<Sample>,
}

impl History {
    /// Adds a sample and forgets those older than `keep` seconds before it.
    pub fn push(&mut self, sample: Sample, keep: f64) {
        let horizon = sample.at - keep;
        self.samples.push(sample);
        let old = self.samples.iter().take_while(|s| s.at < horizon).count();
        // Keep one sample at or before the horizon so a full window stays available.
        self.samples.drain(..old.saturating_sub(1));
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, offset: f64, position: f64, busy: f64) -> Sample {
        let mut s = Sample {
            at,
            ..Sample::default()
        };
        for p in 0..2 {
            s.add_partition(
                format!("t/{p}"),
                PartitionSample {
                    end_offset: offset,
                    position,
                    slot: "pod-0/0".into(),
                },
            );
        }
        s.slots.insert(
            "pod-0/0".into(),
            SlotSample {
                busy_seconds: busy,
                backpressured_seconds: busy / 10.0,
            },
        );
        s
    }

    const EXPECT: Expectation = Expectation {
        partitions: 2,
        slots: 1,
        min_window: 30.0,
        max_age: 60.0,
    };

    #[test]
    fn rates_come_from_counter_differences_over_the_window() {
        let samples = [sample(0.0, 0.0, 0.0, 0.0), sample(60.0, 600.0, 540.0, 30.0)];
        let o = observe(&samples, 0.0, 60.0, EXPECT).unwrap();
        assert_eq!(o.arrival_rate, 20.0);
        assert_eq!(o.processing_rate, 18.0);
        assert_eq!(o.lag(), 120.0);
        assert_eq!(o.busy_max, 0.5);
        assert!((o.backpressure_max - 0.05).abs() < 1e-9);
        assert_eq!(o.window_seconds, 60.0);
        assert_eq!(o.slot_rates["pod-0/0"].processing_rate, 18.0);
    }

    #[test]
    fn a_load_step_shows_in_the_recent_arrival_rate_before_the_window_average() {
        let samples = [
            sample(0.0, 0.0, 0.0, 0.0),
            sample(30.0, 300.0, 300.0, 10.0),
            sample(60.0, 600.0, 600.0, 20.0),
            sample(90.0, 1500.0, 1200.0, 30.0),
        ];
        let o = observe(&samples, 0.0, 90.0, EXPECT).unwrap();
        assert!((o.arrival_rate - 2.0 * 1500.0 / 90.0).abs() < 1e-9);
        assert_eq!(o.recent_arrival_rate, 2.0 * 900.0 / 30.0);
        assert_eq!(o.arrival(), 60.0);
    }

    #[test]
    fn missing_stale_partial_reset_and_nan_metrics_are_unknown_never_zero() {
        let good = [sample(0.0, 0.0, 0.0, 0.0), sample(60.0, 600.0, 540.0, 30.0)];
        assert!(matches!(
            observe(&[], 0.0, 60.0, EXPECT),
            Err(Unknown::Missing(_))
        ));
        assert!(matches!(
            observe(&good, 0.0, 200.0, EXPECT),
            Err(Unknown::Stale { .. })
        ));
        let mut partial = good.clone();
        partial[1].partitions.remove("t/1");
        assert!(matches!(
            observe(&partial, 0.0, 60.0, EXPECT),
            Err(Unknown::Partial(_))
        ));
        let two_slots = Expectation { slots: 2, ..EXPECT };
        assert!(matches!(
            observe(&good, 0.0, 60.0, two_slots),
            Err(Unknown::Partial(_))
        ));
        let mut reset = good.clone();
        reset[1].slots.get_mut("pod-0/0").unwrap().busy_seconds = -1.0;
        assert!(matches!(
            observe(&reset, 0.0, 60.0, EXPECT),
            Err(Unknown::Reset(_))
        ));
        let mut nan = good.clone();
        nan[1].partitions.get_mut("t/0").unwrap().end_offset = f64::NAN;
        assert!(matches!(
            observe(&nan, 0.0, 60.0, EXPECT),
            Err(Unknown::NotANumber(_))
        ));
        assert!(matches!(
            observe(&good, 40.0, 60.0, EXPECT),
            Err(Unknown::Short { .. }) | Err(Unknown::Missing(_))
        ));
    }

    #[test]
    fn paused_partitions_are_excluded_from_lag_and_reported() {
        let mut samples = [sample(0.0, 0.0, 0.0, 0.0), sample(60.0, 600.0, 540.0, 30.0)];
        samples[1].paused.insert("t/1".into());
        let o = observe(&samples, 0.0, 60.0, EXPECT).unwrap();
        assert_eq!(o.lag(), 60.0);
        assert!(o.paused.contains("t/1"));
    }

    #[test]
    fn history_keeps_one_full_window() {
        let mut h = History::default();
        for i in 0..20 {
            h.push(sample(f64::from(i) * 15.0, 0.0, 0.0, 0.0), 60.0);
        }
        let first = h.samples().first().unwrap().at;
        assert!((285.0 - 75.0..=285.0 - 60.0).contains(&first), "{first}");
    }
}

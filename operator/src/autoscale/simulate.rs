//! A deterministic simulator of a running pipeline, for comparing autoscaling policies: ours
//! ([`super::policy`]), a KEDA-style one (replicas = ceil(total lag / lagThreshold), HPA 10%
//! tolerance, 5-minute scale-down stabilisation) and a busy-time-only one (HPA on the slots' busy
//! share). `pipeline-operator simulate` prints the table; docs/autoscaler.md shows it.
//!
//! The pipeline: `N` partitions spread round-robin over the slots, each slot processing up to its
//! capacity per second (shared among its partitions by their backlog), an optional sink limit on
//! the total output (the slots then wait: backpressure), a rescale that applies after a delay and
//! pauses every moved partition for a time that grows with their number, and the runtime's
//! counters sampled every 15 s and seen by the autoscaler 15 s later. Samples go through the same
//! window computation as a direct scrape ([`super::observation`]).

use serde::Serialize;

use super::{
    observation::{self, Expectation, History, PartitionSample, Sample, SlotSample},
    policy::{self, Action, Context, Input, Settings, State},
};

/// Seconds between samples.
pub const SCRAPE_INTERVAL: f64 = 15.0;
/// Seconds from a sample to the autoscaler seeing it.
pub const SCRAPE_DELAY: f64 = 15.0;
/// Seconds from a decision to the new slots starting (pod start, config propagation).
pub const APPLY_DELAY: f64 = 10.0;
/// Pause of a moved partition: this many seconds ...
pub const PAUSE_BASE: f64 = 3.0;
/// ... plus this many per moved partition.
pub const PAUSE_PER_MOVED: f64 = 0.25;
/// Lag (seconds of input) under which the pipeline has caught up.
pub const DRAINED_SECONDS: f64 = 1.0;
/// The KEDA-style policy's `lagThreshold` (records per replica).
pub const KEDA_LAG_THRESHOLD: f64 = 10_000.0;
/// HPA's tolerance.
pub const HPA_TOLERANCE: f64 = 0.1;
/// HPA's scale-down stabilisation window, seconds.
pub const HPA_DOWN_WINDOW: f64 = 300.0;
/// HPA's sync period, seconds.
pub const HPA_PERIOD: f64 = 15.0;

/// Arrival rate over time.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// From `before` to `after` at `at`.
    Step {
        /// Rate before.
        before: f64,
        /// Rate after.
        after: f64,
        /// When.
        at: f64,
    },
    /// `base`, and `peak` between `from` and `to`.
    Spike {
        /// Usual rate.
        base: f64,
        /// Rate during the spike.
        peak: f64,
        /// Start.
        from: f64,
        /// End.
        to: f64,
    },
    /// Linear from `from_rate` at `start` to `to_rate` at `end`, flat outside.
    Ramp {
        /// Rate before.
        from_rate: f64,
        /// Rate after.
        to_rate: f64,
        /// Start.
        start: f64,
        /// End.
        end: f64,
    },
    /// `mean + amplitude × sin(2π t / period)`.
    Sine {
        /// Mean rate.
        mean: f64,
        /// Amplitude.
        amplitude: f64,
        /// Period, seconds.
        period: f64,
    },
}

impl Load {
    /// The rate at `t`.
    pub fn at(self, t: f64) -> f64 {
        match self {
            Self::Step { before, after, at } => {
                if t < at {
                    before
                } else {
                    after
                }
            }
            Self::Spike {
                base,
                peak,
                from,
                to,
            } => {
                if (from..to).contains(&t) {
                    peak
                } else {
                    base
                }
            }
            Self::Ramp {
                from_rate,
                to_rate,
                start,
                end,
            } => {
                let x = ((t - start) / (end - start)).clamp(0.0, 1.0);
                from_rate + (to_rate - from_rate) * x
            }
            Self::Sine {
                mean,
                amplitude,
                period,
            } => mean + amplitude * (std::f64::consts::TAU * t / period).sin(),
        }
    }
}

/// A scenario.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Name (`step-2x`, ...).
    pub name: &'static str,
    /// Seconds simulated.
    pub duration: f64,
    /// Source partitions.
    pub partitions: i32,
    /// Records per second one fully busy slot processes.
    pub capacity_per_slot: f64,
    /// Parallelism at the start.
    pub initial_parallelism: i32,
    /// Arrival rate.
    pub load: Load,
    /// Share of the arrival on partition 0 (the rest spread evenly).
    pub hot_share: Option<f64>,
    /// Records per second the sink accepts.
    pub sink_limit: Option<f64>,
    /// The runtime's metrics are not scraped in this interval.
    pub metrics_outage: Option<(f64, f64)>,
    /// Every slot's counters restart from zero at this time (pods restarted).
    pub counter_reset_at: Option<f64>,
    /// The load change that "decisions to drain" counts from.
    pub change_at: f64,
}

/// The profiles of the comparison.
pub fn profiles() -> Vec<Profile> {
    let base = Profile {
        name: "",
        duration: 3600.0,
        partitions: 24,
        capacity_per_slot: 5_000.0,
        initial_parallelism: 2,
        load: Load::Step {
            before: 7_000.0,
            after: 7_000.0,
            at: 0.0,
        },
        hot_share: None,
        sink_limit: None,
        metrics_outage: None,
        counter_reset_at: None,
        change_at: 600.0,
    };
    let step = |after| Load::Step {
        before: 7_000.0,
        after,
        at: 600.0,
    };
    vec![
        Profile {
            name: "step-2x",
            load: step(14_000.0),
            ..base.clone()
        },
        Profile {
            name: "step-5x",
            load: step(35_000.0),
            ..base.clone()
        },
        Profile {
            name: "spike",
            load: Load::Spike {
                base: 7_000.0,
                peak: 35_000.0,
                from: 600.0,
                to: 780.0,
            },
            ..base.clone()
        },
        Profile {
            name: "ramp",
            load: Load::Ramp {
                from_rate: 7_000.0,
                to_rate: 42_000.0,
                start: 600.0,
                end: 2_400.0,
            },
            ..base.clone()
        },
        Profile {
            name: "sine",
            duration: 7_200.0,
            load: Load::Sine {
                mean: 20_000.0,
                amplitude: 12_000.0,
                period: 1_800.0,
            },
            initial_parallelism: 6,
            change_at: 0.0,
            ..base.clone()
        },
        Profile {
            name: "hot-partition",
            load: step(14_000.0),
            hot_share: Some(0.25),
            ..base.clone()
        },
        Profile {
            name: "slow-sink",
            load: step(14_000.0),
            sink_limit: Some(9_000.0),
            ..base.clone()
        },
        Profile {
            name: "metrics-outage",
            load: Load::Step {
                before: 14_000.0,
                after: 5_000.0,
                at: 600.0,
            },
            initial_parallelism: 4,
            metrics_outage: Some((600.0, 900.0)),
            ..base.clone()
        },
        Profile {
            name: "counter-reset",
            load: step(14_000.0),
            counter_reset_at: Some(1_200.0),
            ..base
        },
    ]
}

/// What a policy decided at one evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// New parallelism, if it changes.
    pub target: Option<i32>,
    /// Whether the policy had metrics.
    pub metrics_known: bool,
}

/// What a policy sees at an evaluation.
pub struct View<'a> {
    /// Now.
    pub now: f64,
    /// Running parallelism.
    pub parallelism: i32,
    /// Partitions.
    pub partitions: i32,
    /// Samples the autoscaler has seen.
    pub history: &'a History,
    /// Total lag read from Kafka (what KEDA reads).
    pub kafka_lag: f64,
}

/// An autoscaling policy under simulation.
pub trait SimPolicy {
    /// `sluice`, `keda` or `busy-time`.
    fn name(&self) -> &'static str;
    /// Seconds between evaluations.
    fn interval(&self) -> f64;
    /// One evaluation.
    fn evaluate(&mut self, view: &View<'_>) -> Decision;
}

/// Our policy, driven as the operator drives it.
pub struct Sluice {
    settings: Settings,
    interval: f64,
    window: f64,
    state: State,
    /// Every evaluation: time, action and reason.
    pub log: Vec<(f64, Action, String)>,
}

impl Sluice {
    /// With the spec's settings.
    pub fn new(spec: &pipeline_crds::autoscaler::AutoscalerSpec) -> Self {
        Self {
            settings: Settings::from_spec(spec),
            interval: spec.interval.get().as_secs_f64(),
            window: spec.metrics_window.get().as_secs_f64(),
            state: State::default(),
            log: Vec::new(),
        }
    }
}

impl SimPolicy for Sluice {
    fn name(&self) -> &'static str {
        "sluice"
    }
    fn interval(&self) -> f64 {
        self.interval
    }
    fn evaluate(&mut self, view: &View<'_>) -> Decision {
        let expect = Expectation {
            partitions: usize::try_from(view.partitions).unwrap_or(0),
            slots: view.parallelism,
            min_window: self.interval,
            max_age: 2.0 * self.interval + SCRAPE_DELAY,
        };
        let samples = view.history.samples();
        let stable_at = self
            .state
            .settling()
            .and_then(|r| observation::settled_at(samples, r.started, expect));
        let mut probe = self.state.clone();
        if let (Some(r), Some(at)) = (probe.rescale.as_mut(), stable_at) {
            r.stable_since = Some(at);
        }
        let since = probe.window_since(view.now, self.window);
        let input = Input {
            observation: observation::observe(samples, since, view.now, expect),
            stable_at,
        };
        let ctx = Context {
            now: view.now,
            parallelism: view.parallelism,
            partitions: view.partitions,
            generation: 1,
        };
        let e = policy::decide(&self.settings, &self.state, ctx, input.clone());
        self.state = e.state;
        self.log.push((view.now, e.action, e.reason));
        Decision {
            target: e.action.target(),
            metrics_known: input.observation.is_ok(),
        }
    }
}

/// HPA's rule: keep within tolerance; scale up at once; scale down to the highest
/// recommendation of the stabilisation window.
struct Hpa {
    recent: Vec<(f64, i32)>,
}

impl Hpa {
    fn decide(&mut self, now: f64, current: i32, desired: i32) -> Option<i32> {
        self.recent.push((now, desired));
        self.recent.retain(|(t, _)| now - t <= HPA_DOWN_WINDOW);
        let target = if desired < current {
            self.recent.iter().map(|r| r.1).max().unwrap_or(desired)
        } else {
            desired
        };
        (target != current).then_some(target)
    }
}

/// KEDA's Kafka scaler behind an HPA: replicas = ceil(total lag / lagThreshold), capped at the
/// partition count; lag read from Kafka directly.
pub struct Keda {
    hpa: Hpa,
}

impl Default for Keda {
    fn default() -> Self {
        Self {
            hpa: Hpa { recent: Vec::new() },
        }
    }
}

impl SimPolicy for Keda {
    fn name(&self) -> &'static str {
        "keda"
    }
    fn interval(&self) -> f64 {
        HPA_PERIOD
    }
    fn evaluate(&mut self, view: &View<'_>) -> Decision {
        let p = f64::from(view.parallelism);
        let ratio = view.kafka_lag / (KEDA_LAG_THRESHOLD * p);
        let desired = if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            view.parallelism
        } else {
            ((view.kafka_lag / KEDA_LAG_THRESHOLD).ceil() as i32).clamp(1, view.partitions)
        };
        Decision {
            target: self.hpa.decide(view.now, view.parallelism, desired),
            metrics_known: true,
        }
    }
}

/// HPA on the slots' mean busy share over the last minute (counters read as Prometheus'
/// `rate()` does, a decrease being a restart from zero), target 70%.
pub struct BusyTime {
    hpa: Hpa,
}

impl Default for BusyTime {
    fn default() -> Self {
        Self {
            hpa: Hpa { recent: Vec::new() },
        }
    }
}

impl SimPolicy for BusyTime {
    fn name(&self) -> &'static str {
        "busy-time"
    }
    fn interval(&self) -> f64 {
        HPA_PERIOD
    }
    fn evaluate(&mut self, view: &View<'_>) -> Decision {
        let samples = view.history.samples();
        let (Some(last), Some(first)) = (
            samples.last(),
            samples.iter().find(|s| s.at >= view.now - 75.0),
        ) else {
            return Decision {
                target: None,
                metrics_known: false,
            };
        };
        let dt = last.at - first.at;
        if dt <= 0.0 || view.now - last.at > 60.0 {
            return Decision {
                target: None,
                metrics_known: false,
            };
        }
        let shares: Vec<f64> = last
            .slots
            .iter()
            .map(|(slot, end)| {
                let start = first.slots.get(slot).map_or(0.0, |s| s.busy_seconds);
                let used = if end.busy_seconds >= start {
                    end.busy_seconds - start
                } else {
                    end.busy_seconds
                };
                (used / dt).min(1.0)
            })
            .collect();
        let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
        let ratio = mean / 0.7;
        let desired = if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            view.parallelism
        } else {
            ((f64::from(view.parallelism) * ratio).ceil() as i32).clamp(1, view.partitions)
        };
        Decision {
            target: self.hpa.decide(view.now, view.parallelism, desired),
            metrics_known: true,
        }
    }
}

/// The figures of one (profile, policy) run; `--json` prints these fields.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Profile name.
    pub profile: String,
    /// `sluice`, `keda` or `busy-time`.
    pub policy: String,
    /// Rescales from the load change until the lag has drained (under one second of input, for a
    /// minute); `null` when it never drains.
    pub decisions_to_drain: Option<u32>,
    /// Highest total lag, records.
    pub peak_lag_records: f64,
    /// Highest lag in seconds of input.
    pub peak_lag_seconds: f64,
    /// Parallelism changes.
    pub rescales: u32,
    /// Slot-hours used.
    pub slot_hours: f64,
    /// Slot-hours of an oracle that runs the fewest slots that keep up at every moment.
    pub oracle_slot_hours: f64,
    /// Seconds the lag was above the lag target.
    pub seconds_over_target: f64,
    /// Scale-downs decided while the policy had no metrics.
    pub scale_downs_without_metrics: u32,
}

/// The lag target of the comparison (the spec default), seconds.
pub fn lag_target() -> f64 {
    pipeline_crds::autoscaler::AutoscalerSpec::default()
        .lag_target
        .get()
        .as_secs_f64()
}

fn weights(profile: &Profile) -> Vec<f64> {
    let n = usize::try_from(profile.partitions).unwrap_or(1).max(1);
    match profile.hot_share {
        Some(hot) if n > 1 => (0..n)
            .map(|i| {
                if i == 0 {
                    hot
                } else {
                    (1.0 - hot) / (n - 1) as f64
                }
            })
            .collect(),
        _ => vec![1.0 / n as f64; n],
    }
}

/// The fewest slots that keep up with `arrival` (round-robin spread, hot partition, sink).
fn oracle(profile: &Profile, arrival: f64, weights: &[f64]) -> i32 {
    let n = profile.partitions;
    let wanted = profile.sink_limit.map_or(arrival, |s| arrival.min(s));
    let scale = if arrival > 0.0 { wanted / arrival } else { 0.0 };
    (1..=n)
        .find(|&p| {
            let slots = usize::try_from(p).unwrap_or(1);
            let mut load = vec![0.0; slots];
            for (i, w) in weights.iter().enumerate() {
                load[i % slots] += w * arrival * scale;
            }
            load.iter().all(|l| *l <= profile.capacity_per_slot)
        })
        .unwrap_or(n)
}

/// The simulated partitions at one moment.
struct Partitions<'a> {
    end: &'a [f64],
    position: &'a [f64],
    paused_until: &'a [f64],
}

/// What a scrape at `t` reads: each consuming partition's offsets and each slot's counters.
fn scraped(
    t: f64,
    slots: usize,
    partitions: &Partitions<'_>,
    busy: &[f64],
    blocked: &[f64],
) -> Sample {
    let mut s = Sample {
        at: t,
        ..Sample::default()
    };
    for (i, &paused_until) in partitions.paused_until.iter().enumerate() {
        if paused_until <= t {
            s.add_partition(
                format!("source/{i}"),
                PartitionSample {
                    end_offset: partitions.end[i],
                    position: partitions.position[i],
                    slot: format!("pod/{}", i % slots),
                },
            );
        }
    }
    for j in 0..slots {
        s.slots.insert(
            format!("pod/{j}"),
            SlotSample {
                busy_seconds: busy[j],
                backpressured_seconds: blocked[j],
            },
        );
    }
    s
}

/// Runs one policy over one profile.
pub fn run(profile: &Profile, policy: &mut dyn SimPolicy) -> Row {
    let n = usize::try_from(profile.partitions).unwrap_or(1).max(1);
    let weights = weights(profile);
    let c = profile.capacity_per_slot;
    let target = lag_target();
    let mut p = profile.initial_parallelism.clamp(1, profile.partitions);
    let mut end = vec![0.0f64; n];
    let mut position = vec![0.0f64; n];
    let mut paused_until = vec![0.0f64; n];
    let mut busy: Vec<f64> = vec![0.0; n];
    let mut blocked: Vec<f64> = vec![0.0; n];
    let mut pending: Option<(f64, i32)> = None;
    let mut seen = History::default();
    let mut in_flight: Vec<Sample> = Vec::new();
    let mut next_eval = policy.interval();
    let mut next_scrape = 0.0;
    let mut row = Row::empty(profile.name, policy.name());
    let (mut rescales_since_change, mut behind_since_change, mut calm_since) = (0u32, false, None);
    let dt = 1.0;
    let steps = (profile.duration / dt) as usize;
    for step in 0..steps {
        let t = step as f64 * dt;
        let arrival = profile.load.at(t).max(0.0);
        if profile
            .counter_reset_at
            .is_some_and(|r| (r..r + dt).contains(&t))
        {
            busy.iter_mut().for_each(|b| *b = 0.0);
            blocked.iter_mut().for_each(|b| *b = 0.0);
        }
        // Apply a decided rescale after its delay: moved partitions pause.
        if let Some((at, to)) = pending
            && t >= at
        {
            let moved = (0..n)
                .filter(|&i| i % p as usize != i % to as usize)
                .count();
            let pause = PAUSE_BASE + PAUSE_PER_MOVED * moved as f64;
            for (i, until) in paused_until.iter_mut().enumerate() {
                if i % p as usize != i % to as usize {
                    *until = t + pause;
                }
            }
            p = to;
            pending = None;
        }
        // Arrivals, then each slot works through its partitions' backlog.
        for (e, w) in end.iter_mut().zip(&weights) {
            *e += arrival * w * dt;
        }
        let slots = usize::try_from(p).unwrap_or(1);
        let mut want = vec![0.0; slots];
        let mut backlog = vec![0.0; n];
        for i in 0..n {
            if paused_until[i] <= t {
                backlog[i] = end[i] - position[i];
                want[i % slots] += backlog[i];
            }
        }
        let doable: Vec<f64> = want.iter().map(|w| w.min(c * dt)).collect();
        let total: f64 = doable.iter().sum();
        let sink_share = match profile.sink_limit {
            Some(s) if total > s * dt => s * dt / total,
            _ => 1.0,
        };
        for j in 0..slots {
            let done = doable[j] * sink_share;
            busy[j] += done / c;
            blocked[j] += (doable[j] - done) / c;
        }
        for i in 0..n {
            let j = i % slots;
            if want[j] > 0.0 {
                position[i] += backlog[i] / want[j] * doable[j] * sink_share;
            }
        }
        // Figures.
        let lag: f64 = end.iter().zip(&position).map(|(e, q)| e - q).sum();
        let lag_seconds = if arrival > 0.0 { lag / arrival } else { 0.0 };
        row.peak_lag_records = row.peak_lag_records.max(lag);
        row.peak_lag_seconds = row.peak_lag_seconds.max(lag_seconds);
        row.slot_hours += f64::from(p) * dt / 3600.0;
        row.oracle_slot_hours += f64::from(oracle(profile, arrival, &weights)) * dt / 3600.0;
        let over = lag_seconds > target;
        if over {
            row.seconds_over_target += dt;
        }
        if t >= profile.change_at && row.decisions_to_drain.is_none() {
            let behind = lag_seconds > DRAINED_SECONDS;
            behind_since_change |= behind;
            if behind {
                calm_since = None;
            } else if behind_since_change {
                let since = *calm_since.get_or_insert(t);
                if t - since >= 60.0 {
                    row.decisions_to_drain = Some(rescales_since_change);
                }
            }
        }
        // Scrape.
        if t >= next_scrape {
            next_scrape += SCRAPE_INTERVAL;
            let outage = profile
                .metrics_outage
                .is_some_and(|(a, b)| (a..b).contains(&t));
            if !outage {
                let partitions = Partitions {
                    end: &end,
                    position: &position,
                    paused_until: &paused_until,
                };
                in_flight.push(scraped(t, slots, &partitions, &busy, &blocked));
            }
        }
        while in_flight.first().is_some_and(|s| s.at + SCRAPE_DELAY <= t) {
            let s = in_flight.remove(0);
            seen.push(s, 3_600.0);
        }
        // Evaluate.
        if t >= next_eval && pending.is_none() {
            next_eval = t + policy.interval();
            let view = View {
                now: t,
                parallelism: p,
                partitions: profile.partitions,
                history: &seen,
                kafka_lag: lag,
            };
            let d = policy.evaluate(&view);
            if let Some(to) = d.target.filter(|&to| to != p) {
                row.rescales += 1;
                if t >= profile.change_at {
                    rescales_since_change += 1;
                }
                if to < p && !d.metrics_known {
                    row.scale_downs_without_metrics += 1;
                }
                pending = Some((t + APPLY_DELAY, to));
            }
        }
    }
    rounded(row)
}

impl Row {
    /// A row with no figures yet.
    fn empty(profile: &str, policy: &str) -> Self {
        Self {
            profile: profile.into(),
            policy: policy.into(),
            decisions_to_drain: None,
            peak_lag_records: 0.0,
            peak_lag_seconds: 0.0,
            rescales: 0,
            slot_hours: 0.0,
            oracle_slot_hours: 0.0,
            seconds_over_target: 0.0,
            scale_downs_without_metrics: 0,
        }
    }
}

/// `row` with its figures rounded as the table shows them.
fn rounded(mut row: Row) -> Row {
    let round = |v: f64, places: i32| {
        let scale = 10f64.powi(places);
        (v * scale).round() / scale
    };
    row.peak_lag_records = row.peak_lag_records.round();
    row.peak_lag_seconds = round(row.peak_lag_seconds, 1);
    row.slot_hours = round(row.slot_hours, 2);
    row.oracle_slot_hours = round(row.oracle_slot_hours, 2);
    row
}

/// Every profile under every policy, our policy with the spec defaults.
pub fn compare() -> Vec<Row> {
    let spec = pipeline_crds::autoscaler::AutoscalerSpec::default();
    let mut rows = Vec::new();
    for profile in profiles() {
        rows.push(run(&profile, &mut Sluice::new(&spec)));
        rows.push(run(&profile, &mut Keda::default()));
        rows.push(run(&profile, &mut BusyTime::default()));
    }
    rows
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<15} {:<10} {:>7} {:>10} {:>8} {:>8} {:>10} {:>10} {:>9} {:>10}\n",
        "profile",
        "policy",
        "drain",
        "peak lag",
        "peak s",
        "rescales",
        "slot-h",
        "oracle-h",
        "s > tgt",
        "down w/o m"
    );
    for r in rows {
        out += &format!(
            "{:<15} {:<10} {:>7} {:>10.0} {:>8.1} {:>8} {:>10.2} {:>10.2} {:>9.0} {:>10}\n",
            r.profile,
            r.policy,
            r.decisions_to_drain
                .map_or_else(|| "never".to_string(), |d| d.to_string()),
            r.peak_lag_records,
            r.peak_lag_seconds,
            r.rescales,
            r.slot_hours,
            r.oracle_slot_hours,
            r.seconds_over_target,
            r.scale_downs_without_metrics
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(rows: &'a [Row], profile: &str, policy: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.profile == profile && r.policy == policy)
            .unwrap()
    }

    #[test]
    fn the_policy_meets_its_targets_against_keda_and_busy_time_on_every_profile() {
        let rows = compare();
        let table = table(&rows);
        for profile in profiles() {
            let ours = row(&rows, profile.name, "sluice");
            let keda = row(&rows, profile.name, "keda");
            assert!(
                ours.rescales < keda.rescales && ours.slot_hours < keda.slot_hours,
                "{}: not fewer rescales and slot-hours than KEDA\n{table}",
                profile.name
            );
            assert_eq!(ours.scale_downs_without_metrics, 0, "{table}");
        }
        for step in ["step-2x", "step-5x"] {
            let drained = row(&rows, step, "sluice").decisions_to_drain;
            assert!(
                drained.is_some_and(|d| d <= 2),
                "{step}: drained after {drained:?} decisions\n{table}"
            );
        }
        // No oscillation under periodic load: at most one move up and one down per period.
        let sine = profiles().into_iter().find(|p| p.name == "sine").unwrap();
        let Load::Sine { period, .. } = sine.load else {
            panic!("sine profile without a sine load")
        };
        let periods = (sine.duration / period).ceil() as u32;
        assert!(
            row(&rows, "sine", "sluice").rescales <= 2 * periods + 1,
            "{table}"
        );
        // The sink limits: our policy stops scaling once the slots wait on the sink.
        assert!(row(&rows, "slow-sink", "sluice").rescales <= 1, "{table}");
    }

    #[test]
    fn the_simulation_is_deterministic() {
        let profile = &profiles()[0];
        let spec = pipeline_crds::autoscaler::AutoscalerSpec::default();
        assert_eq!(
            run(profile, &mut Sluice::new(&spec)),
            run(profile, &mut Sluice::new(&spec))
        );
    }
}

//! The autoscaling policy (pure and deterministic): from an [`Observation`] and the memory of
//! earlier evaluations ([`State`]) to a recommendation, a decision and its reason. The formulas
//! and the reasons behind them are in docs/autoscaler.md.
//!
//! - Capacity (DS2 / Flink): a slot's true rate = processing rate of the busiest slot / its busy
//!   share. A pipeline is as fast as its busiest slot, which holds `ceil(N / p)` of the `N`
//!   partitions, so parallelism `p` can do `perSlot × N / ceil(N / p)` records per second.
//! - Required rate = arrival + lag / catchUp + arrival × observed rescale pause / catchUp; the
//!   recommendation is the smallest `p` whose capacity at the target utilisation covers it, then
//!   the sizing rules (bounds, partitions, even spread).
//! - Fast up, slow down: up on the first complete window after a rescale settled; down only after
//!   `scaleDownDelay`, to the highest recommendation seen meanwhile, never while in backlog.
//!   A band around the target utilisation absorbs small deviations; steps are bounded.
//! - Vetoes: metrics unknown (hold), sink-bound (backpressure without busy time), skew (lag on a
//!   few partitions), ineffective (the last scale-up did not deliver), bounds and partitions.

use super::observation::{Observation, PartitionId, Unknown};
use crate::sizing::{self, Limit};

/// Scale up when the required rate needs more than this share above the target utilisation of
/// today's capacity.
pub const UP_MARGIN: f64 = 0.15;
/// Scale down when the required rate needs less than target − this share of today's capacity.
pub const DOWN_MARGIN: f64 = 0.25;
/// The busiest slot may need at most this share of a slot (a skewed pipeline runs its hot slot
/// above the target, never full).
pub const BUSIEST_SLOT_MAX: f64 = 0.9;
/// A recommendation at least this share below the running parallelism is a scale-down candidate
/// even inside the band (a skewed pipeline's load hardly moves with the slot count).
pub const DOWN_STEP: f64 = 0.25;
/// Below this busy share the capacity per slot is not measured (too little work to tell).
pub const MIN_BUSY_TO_MEASURE: f64 = 0.05;
/// The effectiveness check needs the busiest slot at least this busy.
pub const MIN_BUSY_FOR_EFFECT: f64 = 0.5;
/// A scale-up that delivers less than this share of its expected gain blocks further ones.
pub const MIN_EFFECT: f64 = 0.2;
/// Backpressured this much on average while the busiest slot is below the target: sink-bound.
pub const SINK_BOUND_BACKPRESSURE: f64 = 0.2;
/// Lag is skewed when this share of it sits on at most a quarter of the partitions.
pub const SKEW_SHARE: f64 = 0.8;
/// A load change by this share of the arrival rate lifts an ineffective-scaling block.
pub const LOAD_CHANGE: f64 = 0.5;

/// The autoscaler's settings, from `spec.autoscaler` (durations in seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Target busy share after scaling.
    pub target_utilization: f64,
    /// Time to work off a lag.
    pub catch_up: f64,
    /// Lag in seconds above which the pipeline is in backlog.
    pub lag_target: f64,
    /// Delay before a scale-down.
    pub scale_down_delay: f64,
    /// Largest new/old ratio per scale-up.
    pub max_up_factor: f64,
    /// Largest share removed per scale-down.
    pub max_down_factor: f64,
    /// Lowest parallelism.
    pub min: i32,
    /// Highest parallelism.
    pub max: Option<i32>,
    /// Report only.
    pub recommend_only: bool,
}

impl Settings {
    /// From the spec's autoscaler section.
    pub fn from_spec(spec: &pipeline_crds::autoscaler::AutoscalerSpec) -> Self {
        Self {
            target_utilization: spec.target_utilization.clamp(0.05, 1.0),
            catch_up: spec.catch_up_duration.get().as_secs_f64().max(1.0),
            lag_target: spec.lag_target.get().as_secs_f64(),
            scale_down_delay: spec.scale_down_delay.get().as_secs_f64(),
            max_up_factor: spec.max_scale_up_factor.max(1.0),
            max_down_factor: spec.max_scale_down_factor.clamp(0.01, 0.99),
            min: spec.min_parallelism.unwrap_or(1).max(1),
            max: spec.max_parallelism,
            recommend_only: spec.mode == pipeline_crds::autoscaler::AutoscalerMode::RecommendOnly,
        }
    }
}

/// A rescale the autoscaler made.
#[derive(Clone, Debug, PartialEq)]
pub struct Rescale {
    /// When decided.
    pub started: f64,
    /// Parallelism before.
    pub from: i32,
    /// Parallelism after.
    pub to: i32,
    /// When every slot and partition reported again.
    pub stable_since: Option<f64>,
    /// Total capacity before (scale-ups).
    pub capacity_before: Option<f64>,
    /// Total capacity expected after (scale-ups).
    pub expected_capacity: Option<f64>,
    /// Whether the effect was checked.
    pub effect_checked: bool,
}

/// Scale-ups blocked after an ineffective one.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Why, with the numbers.
    pub reason: String,
    /// Arrival rate when blocked.
    pub arrival_rate: f64,
    /// Spec generation when blocked.
    pub generation: i64,
}

/// What the autoscaler remembers between evaluations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// The parallelism decided (mode auto).
    pub decided: Option<i32>,
    /// A scale-down waiting for its delay: since when, and the highest recommendation since.
    pub pending_down: Option<(f64, i32)>,
    /// The last rescale.
    pub rescale: Option<Rescale>,
    /// Seconds the last rescale paused consumption.
    pub observed_pause: Option<f64>,
    /// Last trusted capacity per slot.
    pub capacity_per_slot: Option<f64>,
    /// Scale-ups blocked.
    pub blocked: Option<Block>,
}

impl State {
    /// Whether a rescale is still settling.
    pub fn settling(&self) -> Option<&Rescale> {
        self.rescale.as_ref().filter(|r| r.stable_since.is_none())
    }

    /// Where the next metrics window starts: `window` seconds back, but never before the last
    /// rescale settled.
    pub fn window_since(&self, now: f64, window: f64) -> f64 {
        let start = now - window;
        match &self.rescale {
            Some(r) => start.max(r.stable_since.unwrap_or(r.started)),
            None => start,
        }
    }
}

/// The pipeline as it runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Context {
    /// Seconds (the same origin as the samples).
    pub now: f64,
    /// Running parallelism.
    pub parallelism: i32,
    /// Source partitions.
    pub partitions: i32,
    /// `metadata.generation`.
    pub generation: i64,
}

/// What the metrics source said.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The window.
    pub observation: Result<Observation, Unknown>,
    /// While a rescale settles: when every slot and partition reported again, if they did.
    pub stable_at: Option<f64>,
}

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// To more slots.
    ScaleUp(i32),
    /// To fewer slots.
    ScaleDown(i32),
    /// The recommendation is within the band.
    NoChange,
    /// A change is wanted or possible but held (a veto, a delay, a settling rescale).
    Held,
    /// The metrics are unknown: hold.
    NoMetrics,
}

impl Action {
    /// The `result` word in status.
    pub fn word(self) -> &'static str {
        match self {
            Self::ScaleUp(_) => "ScaleUp",
            Self::ScaleDown(_) => "ScaleDown",
            Self::NoChange => "NoChange",
            Self::Held => "Held",
            Self::NoMetrics => "NoMetrics",
        }
    }

    /// The target of a rescale.
    pub fn target(self) -> Option<i32> {
        match self {
            Self::ScaleUp(p) | Self::ScaleDown(p) => Some(p),
            _ => None,
        }
    }
}

/// Why a change is not made (or is limited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Veto {
    /// Backpressure without busy time: the sink is the bottleneck.
    SinkBound,
    /// Lag sits on a few partitions.
    Skew(Vec<PartitionId>),
    /// The last scale-up did not deliver.
    Ineffective,
    /// Metrics unknown.
    MetricsUnknown,
    /// At `maxParallelism`.
    AtMax,
    /// Even one slot per partition is not enough.
    PartitionCap,
    /// A rescale is settling.
    Stabilizing,
    /// A scale-down waits for its delay.
    ScaleDownDelay,
    /// In backlog: no scale-down.
    Backlog,
}

impl Veto {
    /// The name in status, events and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SinkBound => "SinkBound",
            Self::Skew(_) => "Skew",
            Self::Ineffective => "Ineffective",
            Self::MetricsUnknown => "MetricsUnknown",
            Self::AtMax => "AtMax",
            Self::PartitionCap => "PartitionCap",
            Self::Stabilizing => "Stabilizing",
            Self::ScaleDownDelay => "ScaleDownDelay",
            Self::Backlog => "Backlog",
        }
    }
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The memory for the next evaluation.
    pub state: State,
    /// What is done (in `recommendOnly` mode: what would be done; nothing is).
    pub action: Action,
    /// The recommended parallelism, when known.
    pub recommendation: Option<i32>,
    /// Records per second the pipeline must process.
    pub required_rate: Option<f64>,
    /// Capacity per slot used.
    pub capacity_per_slot: Option<f64>,
    /// Vetoes in force.
    pub vetoes: Vec<Veto>,
    /// One sentence with the numbers.
    pub reason: String,
}

fn ceil_div(a: i32, b: i32) -> i32 {
    (a + b - 1) / b.max(1)
}

/// Records per second `p` slots of `per_slot` each can do on `partitions` partitions: the
/// busiest slot holds `ceil(partitions / p)` of them.
pub fn capacity(per_slot: f64, p: i32, partitions: i32) -> f64 {
    let p = p.clamp(1, partitions.max(1));
    per_slot * f64::from(partitions) / f64::from(ceil_div(partitions, p))
}

/// A rate for reasons: `850`, `12.3k`, `1.20M`.
pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.2}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Seconds for reasons: `45s`, `5m`, `1h30m`.
pub fn seconds(v: f64) -> String {
    let s = v.max(0.0).round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Records per second one fully busy slot processes: the busiest slot's processing rate over its
/// busy share; from the totals when per-slot rates are missing. `None` when too idle to tell.
fn measured_capacity(o: &Observation, p: i32, n: i32) -> Option<f64> {
    let busiest = o
        .slot_rates
        .values()
        .filter(|s| s.busy >= MIN_BUSY_TO_MEASURE && s.processing_rate > 0.0)
        .max_by(|a, b| a.busy.total_cmp(&b.busy));
    match busiest {
        Some(s) => Some(s.processing_rate / s.busy),
        None if o.busy_max >= MIN_BUSY_TO_MEASURE && o.processing_rate > 0.0 => {
            Some(o.processing_rate * f64::from(ceil_div(n, p)) / (f64::from(n) * o.busy_max))
        }
        None => None,
    }
}

/// The partitions that hold most of the lag when they are few (at most a quarter of them).
fn skewed(o: &Observation, partitions: i32) -> Vec<PartitionId> {
    let total = o.lag();
    if total <= 0.0 || partitions < 4 {
        return Vec::new();
    }
    let mut by_lag: Vec<(&PartitionId, f64)> =
        o.partitions.iter().map(|(id, p)| (id, p.lag)).collect();
    by_lag.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut held = 0.0;
    let mut hot = Vec::new();
    for (id, lag) in by_lag {
        if held >= SKEW_SHARE * total {
            break;
        }
        held += lag;
        hot.push(id.clone());
    }
    if hot.len() as f64 <= f64::from(partitions) / 4.0 {
        hot
    } else {
        Vec::new()
    }
}

/// An evaluation that stops before a recommendation.
fn stopped(state: State, action: Action, vetoes: Vec<Veto>, reason: String) -> Evaluation {
    Evaluation {
        state,
        action,
        recommendation: None,
        required_rate: None,
        capacity_per_slot: None,
        vetoes,
        reason,
    }
}

/// Settles a rescale in progress when every slot and partition reports again (its pause is
/// remembered); the reason to hold while it has not.
fn settle_rescale(state: &mut State, stable_at: Option<f64>, now: f64) -> Option<String> {
    let r = state
        .rescale
        .as_mut()
        .filter(|r| r.stable_since.is_none())?;
    match stable_at {
        Some(at) => {
            r.stable_since = Some(at);
            state.observed_pause = Some((at - r.started).max(0.0));
            None
        }
        None => Some(format!(
            "rescale {} → {} in progress for {}: waiting until every partition is consumed again",
            r.from,
            r.to,
            seconds(now - r.started)
        )),
    }
}

/// What the pipeline must process, from one observation.
struct Need<'a> {
    arrival: f64,
    lag: f64,
    /// Lag in seconds of arrival (infinite when nothing arrives but lag is left).
    lag_seconds: f64,
    /// Lag over the lag target.
    backlog: bool,
    /// Records per second: arrival, the lag worked off within the catch-up time, and the
    /// backlog of the last rescale's pause.
    required: f64,
    /// What each partition needs, the most first.
    demands: Vec<(&'a PartitionId, f64)>,
}

impl<'a> Need<'a> {
    fn of(o: &'a Observation, settings: &Settings, state: &State) -> Self {
        let arrival = o.arrival();
        let lag = o.lag();
        let lag_seconds = if arrival > 0.0 {
            lag / arrival
        } else if lag > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        let pause = state.observed_pause.unwrap_or(0.0).min(settings.catch_up);
        // What each partition needs: its arrival (scaled to the recent rate) and its lag worked
        // off within the catch-up time. (The rescale pause's backlog is headroom for the whole
        // pipeline, in `required`; a hot slot already runs above the target.)
        let recent = if o.arrival_rate > 0.0 {
            arrival / o.arrival_rate
        } else {
            1.0
        };
        let mut demands: Vec<(&PartitionId, f64)> = o
            .partitions
            .iter()
            .map(|(id, p)| {
                let a = p.arrival_rate * recent;
                (id, a + p.lag / settings.catch_up)
            })
            .collect();
        demands.sort_by(|a, b| b.1.total_cmp(&a.1));
        Self {
            arrival,
            lag,
            lag_seconds,
            backlog: lag > 0.0 && lag_seconds > settings.lag_target,
            required: arrival + lag / settings.catch_up + arrival * pause / settings.catch_up,
            demands,
        }
    }
}

/// Whether the last scale-up delivered the capacity it was expected to: when it did not, further
/// scale-ups are blocked (until the load changes or the spec does).
fn check_last_scale_up(
    state: &mut State,
    o: &Observation,
    measured: Option<f64>,
    ctx: &Context,
    arrival: f64,
) {
    let (p_now, n) = (ctx.parallelism.max(1), ctx.partitions.max(1));
    if let (Some(r), Some(per_slot)) = (state.rescale.as_mut(), measured)
        && r.to > r.from
        && !r.effect_checked
        && r.stable_since.is_some()
        && o.busy_max >= MIN_BUSY_FOR_EFFECT
        && let (Some(before), Some(expected)) = (r.capacity_before, r.expected_capacity)
    {
        r.effect_checked = true;
        let achieved = capacity(per_slot, p_now, n);
        let gain = (achieved - before) / (expected - before).max(1e-9);
        if gain < MIN_EFFECT {
            state.blocked = Some(Block {
                reason: format!(
                    "the scale-up {} → {} raised capacity from {} to {} rec/s, {:.0}% of the gain expected (to {}): more slots do not help",
                    r.from,
                    r.to,
                    rate(before),
                    rate(achieved),
                    gain.max(0.0) * 100.0,
                    rate(expected)
                ),
                arrival_rate: arrival,
                generation: ctx.generation,
            });
        }
    }
    if state
        .blocked
        .as_ref()
        .is_some_and(|b| (arrival - b.arrival_rate).abs() > LOAD_CHANGE * b.arrival_rate)
    {
        state.blocked = None;
    }
}

/// The load model at a measured capacity per slot `c`. Two conditions on a parallelism `p`: on
/// average the slots run at the target utilisation (capacity of `p` slots × target ≥
/// required), and the busiest slot, which holds the `ceil(N / p)` partitions that need the
/// most, stays under [`BUSIEST_SLOT_MAX`] of a slot.
struct Load<'a> {
    c: f64,
    n: i32,
    u: f64,
    required: f64,
    demands: &'a [(&'a PartitionId, f64)],
}

impl Load<'_> {
    /// What the busiest of `p` slots must process.
    fn busiest(&self, p: i32) -> f64 {
        let k = usize::try_from(ceil_div(self.n, p)).unwrap_or(1);
        self.demands.iter().take(k).map(|d| d.1).sum()
    }

    /// The share of `p` slots the pipeline needs, on the scale of the target utilisation.
    fn at(&self, p: i32) -> f64 {
        (self.required / capacity(self.c, p, self.n))
            .max(self.busiest(p) / (self.c * BUSIEST_SLOT_MAX) * self.u)
    }
}

/// The recommended parallelism for `need` at a capacity per slot `c`, with the vetoes and notes
/// that limit it. A partition that alone needs more than a whole slot cannot be helped by
/// scaling: it is left out and reported.
fn recommend<'a>(
    settings: &Settings,
    o: &Observation,
    need: &mut Need<'a>,
    c: f64,
    n: i32,
    vetoes: &mut Vec<Veto>,
    notes: &mut Vec<String>,
) -> i32 {
    if need
        .demands
        .first()
        .is_some_and(|d| d.1 > c * BUSIEST_SLOT_MAX)
    {
        let (id, demand) = need.demands.remove(0);
        notes.push(format!(
            "partition {id} alone needs {} rec/s, more than a slot's {}: scaling cannot drain it",
            rate(demand),
            rate(c * BUSIEST_SLOT_MAX)
        ));
        vetoes.push(Veto::Skew(vec![id.clone()]));
    }
    let u = settings.target_utilization;
    let load = Load {
        c,
        n,
        u,
        required: need.required,
        demands: &need.demands,
    };
    let raw = if need.required <= 0.0 {
        settings.min
    } else {
        match (1..=n).find(|&p| load.at(p) <= u) {
            Some(p) => p,
            None => {
                vetoes.push(Veto::PartitionCap);
                n
            }
        }
    };
    let hot = skewed(o, n);
    if !hot.is_empty() && !vetoes.iter().any(|v| matches!(v, Veto::Skew(_))) {
        notes.push(format!(
            "{:.0}%+ of the lag is on {} of {n} partitions ({}): more slots help only the slots that hold them",
            SKEW_SHARE * 100.0,
            hot.len(),
            hot.join(", ")
        ));
        vetoes.push(Veto::Skew(hot));
    }
    let (recommended, limits) = sizing::parallelism(raw, settings.min, settings.max, n);
    if limits.contains(&Limit::Max) {
        vetoes.push(Veto::AtMax);
        notes.push(format!(
            "{raw} slots wanted, capped at maxParallelism {}",
            settings.max.unwrap_or(n)
        ));
    }
    if vetoes.contains(&Veto::PartitionCap) {
        notes.push(format!(
            "even one slot per partition ({n}) cannot reach it at the {:.0}% target",
            u * 100.0
        ));
    }
    recommended
}

/// Where the evaluation stands, for choosing the action.
struct Standing<'a> {
    settings: &'a Settings,
    ctx: &'a Context,
    o: &'a Observation,
    recommended: i32,
    utilization: f64,
    backlog: bool,
    lag_seconds: f64,
    /// The sentence with the numbers every reason starts with.
    need: String,
}

/// Scale up (unless the sink is the bottleneck or scale-ups proved ineffective).
fn scale_up(
    standing: &Standing<'_>,
    state: &mut State,
    vetoes: &mut Vec<Veto>,
) -> (Action, String) {
    let (settings, o, need) = (standing.settings, standing.o, &standing.need);
    let (p_now, n) = (
        standing.ctx.parallelism.max(1),
        standing.ctx.partitions.max(1),
    );
    let u = settings.target_utilization;
    state.pending_down = None;
    if o.backpressure_mean >= SINK_BOUND_BACKPRESSURE && o.busy_max < u {
        vetoes.push(Veto::SinkBound);
        let reason = format!(
            "{need}; but the slots wait on the sink {:.0}% of the time and are busy only {:.0}%: the sink is the bottleneck, more slots would not help",
            o.backpressure_mean * 100.0,
            o.busy_max * 100.0
        );
        return (Action::Held, reason);
    }
    if let Some(block) = &state.blocked {
        vetoes.push(Veto::Ineffective);
        return (
            Action::Held,
            format!("{need}; scale-ups stopped: {}", block.reason),
        );
    }
    let bound = (f64::from(p_now) * settings.max_up_factor).ceil() as i32;
    let target = sizing::parallelism(
        standing.recommended.min(bound),
        settings.min,
        settings.max,
        n,
    )
    .0;
    if target > p_now {
        (
            Action::ScaleUp(target),
            format!("{need} → scale up to {target}"),
        )
    } else {
        (Action::Held, need.clone())
    }
}

/// Scale down after the delay, to the highest recommendation meanwhile (never in backlog).
fn scale_down(
    standing: &Standing<'_>,
    state: &mut State,
    vetoes: &mut Vec<Veto>,
) -> (Action, String) {
    let (settings, ctx, need) = (standing.settings, standing.ctx, &standing.need);
    let (p_now, n) = (ctx.parallelism.max(1), ctx.partitions.max(1));
    let bound = (f64::from(p_now) * (1.0 - settings.max_down_factor)).ceil() as i32;
    let step = sizing::parallelism(
        standing.recommended.max(bound),
        settings.min,
        settings.max,
        n,
    )
    .0;
    if standing.backlog {
        state.pending_down = None;
        vetoes.push(Veto::Backlog);
        let reason = format!(
            "{need}; in backlog ({} of lag, target {}): no scale-down",
            seconds(standing.lag_seconds),
            seconds(settings.lag_target)
        );
        return (Action::Held, reason);
    }
    let (since, highest) = match state.pending_down {
        Some((since, highest)) => (since, highest.max(step)),
        None => (ctx.now, step),
    };
    if ctx.now - since >= settings.scale_down_delay && highest < p_now {
        state.pending_down = None;
        let reason = format!(
            "{need}; lower for {} (delay {}) → scale down to {highest}, the highest recommendation meanwhile",
            seconds(ctx.now - since),
            seconds(settings.scale_down_delay)
        );
        (Action::ScaleDown(highest), reason)
    } else {
        state.pending_down = Some((since, highest));
        vetoes.push(Veto::ScaleDownDelay);
        let reason = format!(
            "{need}; {highest} would do: waiting {} more before scaling down",
            seconds(settings.scale_down_delay - (ctx.now - since))
        );
        (Action::Held, reason)
    }
}

/// The action: up when over the band around the target, down when under it, else none.
fn choose_action(
    standing: &Standing<'_>,
    state: &mut State,
    vetoes: &mut Vec<Veto>,
) -> (Action, String) {
    let u = standing.settings.target_utilization;
    let p_now = standing.ctx.parallelism.max(1);
    let (recommended, utilization) = (standing.recommended, standing.utilization);
    if recommended > p_now && utilization > (u + UP_MARGIN).min(1.0) {
        scale_up(standing, state, vetoes)
    } else if recommended < p_now
        && (utilization < (u - DOWN_MARGIN).max(u / 2.0)
            || f64::from(recommended) <= f64::from(p_now) * (1.0 - DOWN_STEP))
    {
        scale_down(standing, state, vetoes)
    } else {
        state.pending_down = None;
        (
            Action::NoChange,
            format!("{}; within the band around the target", standing.need),
        )
    }
}

/// The sentence with the numbers: arrival, lag, what is needed, what the slots do.
fn need_sentence(
    settings: &Settings,
    need: &Need<'_>,
    c: f64,
    p_now: i32,
    capacity_now: f64,
    utilization: f64,
    notes: &[String],
) -> String {
    format!(
        "arrival {} rec/s, lag {} ({} at arrival), catch-up {} → needs {} rec/s; a slot does {} rec/s, {p_now} slots {} ({:.0}% load, target {:.0}%){}",
        rate(need.arrival),
        rate(need.lag),
        if need.lag_seconds.is_finite() {
            seconds(need.lag_seconds)
        } else {
            "∞".into()
        },
        seconds(settings.catch_up),
        rate(need.required),
        rate(c),
        rate(capacity_now),
        utilization * 100.0,
        settings.target_utilization * 100.0,
        notes.iter().map(|n| format!("; {n}")).collect::<String>()
    )
}

/// Evaluates once.
pub fn decide(settings: &Settings, previous: &State, ctx: Context, input: Input) -> Evaluation {
    let mut state = previous.clone();
    let p_now = ctx.parallelism.max(1);
    let n = ctx.partitions.max(1);
    if state
        .blocked
        .as_ref()
        .is_some_and(|b| b.generation != ctx.generation)
    {
        state.blocked = None;
    }
    if let Some(reason) = settle_rescale(&mut state, input.stable_at, ctx.now) {
        return stopped(state, Action::Held, vec![Veto::Stabilizing], reason);
    }
    let o = match input.observation {
        Ok(o) => o,
        Err(unknown @ Unknown::Short { .. }) => {
            let reason = format!("{unknown}; holding parallelism {p_now}");
            return stopped(state, Action::Held, vec![Veto::Stabilizing], reason);
        }
        Err(unknown) => {
            // A gap restarts the scale-down delay: no scale-down is ever decided across it.
            state.pending_down = None;
            let reason = format!("{unknown}; holding parallelism {p_now}");
            return stopped(state, Action::NoMetrics, vec![Veto::MetricsUnknown], reason);
        }
    };
    let mut need = Need::of(&o, settings, &state);
    let measured = measured_capacity(&o, p_now, n);
    if measured.is_some() {
        state.capacity_per_slot = measured;
    }
    let per_slot = measured.or(state.capacity_per_slot);
    check_last_scale_up(&mut state, &o, measured, &ctx, need.arrival);
    let Some(c) = per_slot else {
        let reason = format!(
            "arrival {} rec/s, but the slots are too idle (busiest {:.0}% busy) to measure their capacity; holding parallelism {p_now}",
            rate(need.arrival),
            o.busy_max * 100.0
        );
        let mut e = stopped(state, Action::Held, vec![], reason);
        e.required_rate = Some(need.required);
        return e;
    };
    let (mut vetoes, mut notes) = (Vec::new(), Vec::new());
    let recommended = recommend(settings, &o, &mut need, c, n, &mut vetoes, &mut notes);
    let load = Load {
        c,
        n,
        u: settings.target_utilization,
        required: need.required,
        demands: &need.demands,
    };
    let capacity_now = capacity(c, p_now, n);
    let utilization = load.at(p_now);
    let standing = Standing {
        settings,
        ctx: &ctx,
        o: &o,
        recommended,
        utilization,
        backlog: need.backlog,
        lag_seconds: need.lag_seconds,
        need: need_sentence(settings, &need, c, p_now, capacity_now, utilization, &notes),
    };
    let (action, reason) = choose_action(&standing, &mut state, &mut vetoes);
    if !settings.recommend_only
        && let Some(to) = action.target()
    {
        state.decided = Some(to);
        let up = to > p_now;
        state.rescale = Some(Rescale {
            started: ctx.now,
            from: p_now,
            to,
            stable_since: None,
            capacity_before: (up && measured.is_some()).then_some(capacity_now),
            expected_capacity: (up && measured.is_some()).then(|| capacity(c, to, n)),
            effect_checked: false,
        });
    }
    Evaluation {
        state,
        action,
        recommendation: Some(recommended),
        required_rate: Some(need.required),
        capacity_per_slot: per_slot,
        vetoes,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::autoscale::observation::{PartitionObservation, SlotObservation};

    fn settings() -> Settings {
        Settings::from_spec(&pipeline_crds::autoscaler::AutoscalerSpec::default())
    }

    /// `n` partitions sharing `arrival` and `lag` evenly, `p` slots each `busy`, processing
    /// `processed` in all.
    fn observe(n: i32, p: i32, arrival: f64, lag: f64, processed: f64, busy: f64) -> Observation {
        let partitions = (0..n)
            .map(|i| {
                (
                    format!("t/{i}"),
                    PartitionObservation {
                        lag: lag / f64::from(n),
                        arrival_rate: arrival / f64::from(n),
                    },
                )
            })
            .collect();
        let slot_rates: BTreeMap<String, SlotObservation> = (0..p)
            .map(|j| {
                (
                    format!("pod-0/{j}"),
                    SlotObservation {
                        busy,
                        backpressure: 0.0,
                        processing_rate: processed / f64::from(p),
                    },
                )
            })
            .collect();
        Observation::new(
            arrival,
            arrival,
            processed,
            partitions,
            slot_rates,
            BTreeSet::new(),
            300.0,
            15.0,
        )
    }

    fn ctx(now: f64, parallelism: i32) -> Context {
        Context {
            now,
            parallelism,
            partitions: 24,
            generation: 1,
        }
    }

    fn known(o: Observation) -> Input {
        Input {
            observation: Ok(o),
            stable_at: None,
        }
    }

    #[test]
    fn lag_growing_past_capacity_scales_up_in_one_step_to_a_parallelism_that_covers_it() {
        // 2 slots of 5k/s each, fully busy, 14k/s arriving, lag building.
        let o = observe(24, 2, 14_000.0, 300_000.0, 10_000.0, 1.0);
        let e = decide(&settings(), &State::default(), ctx(0.0, 2), known(o));
        let Action::ScaleUp(to) = e.action else {
            panic!("{e:?}")
        };
        // Needs 14k + 300k / 300 s = 15k/s: at 70% of 5k per slot that is 5 slots (24 / 5 → 5
        // partitions in the busiest slot: 24k capacity).
        assert_eq!(to, 5, "{}", e.reason);
        assert_eq!(e.state.decided, Some(5));
        assert!(e.reason.contains("needs 15.0k rec/s"), "{}", e.reason);
        let r = e.state.rescale.as_ref().unwrap();
        assert_eq!((r.from, r.to, r.stable_since), (2, 5, None));
    }

    #[test]
    fn unknown_metrics_hold_and_restart_the_scale_down_delay() {
        let previous = State {
            pending_down: Some((0.0, 2)),
            ..State::default()
        };
        let input = Input {
            observation: Err(Unknown::Stale {
                age: 120.0,
                limit: 60.0,
            }),
            stable_at: None,
        };
        let e = decide(&settings(), &previous, ctx(10_000.0, 8), input);
        assert_eq!(e.action, Action::NoMetrics);
        assert_eq!(e.vetoes, [Veto::MetricsUnknown]);
        assert_eq!(e.state.pending_down, None);
        assert!(e.reason.contains("holding parallelism 8"), "{}", e.reason);
    }

    #[test]
    fn backpressure_without_busy_time_vetoes_a_scale_up_as_sink_bound() {
        let mut o = observe(24, 4, 14_000.0, 2_000_000.0, 9_000.0, 0.45);
        o.backpressure_mean = 0.55;
        o.backpressure_max = 0.6;
        let e = decide(&settings(), &State::default(), ctx(0.0, 4), known(o));
        assert_eq!(e.action, Action::Held, "{}", e.reason);
        assert_eq!(e.vetoes, [Veto::SinkBound]);
        assert!(
            e.reason.contains("the sink is the bottleneck"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn a_lower_recommendation_waits_for_the_delay_and_then_goes_to_the_highest_one_seen() {
        let s = Settings {
            max_down_factor: 0.9,
            ..settings()
        };
        // 12 slots, 5k/s each, only 6k/s arriving: 3 slots would do (2 at first, 3 later).
        let low = observe(24, 12, 6_000.0, 0.0, 6_000.0, 0.1);
        let e1 = decide(&s, &State::default(), ctx(0.0, 12), known(low.clone()));
        assert_eq!(e1.action, Action::Held);
        assert_eq!(e1.vetoes, [Veto::ScaleDownDelay]);
        let higher = observe(24, 12, 9_000.0, 0.0, 9_000.0, 0.15);
        let e2 = decide(&s, &e1.state, ctx(300.0, 12), known(higher));
        assert_eq!(e2.action, Action::Held);
        let highest = e2.state.pending_down.unwrap().1;
        let e3 = decide(&s, &e2.state, ctx(600.0, 12), known(low));
        assert_eq!(e3.action, Action::ScaleDown(highest), "{}", e3.reason);
        assert_eq!((e1.state.pending_down.unwrap().1, highest), (2, 3));
        // With the default bound, at most half of the slots go at once.
        let bounded = decide(
            &settings(),
            &State::default(),
            ctx(0.0, 12),
            known(observe(24, 12, 6_000.0, 0.0, 6_000.0, 0.1)),
        );
        assert_eq!(bounded.state.pending_down.unwrap().1, 6);
    }

    #[test]
    fn no_scale_down_while_in_backlog() {
        // Few records arrive but a large lag is left: 100 s of input, target 30 s.
        let o = observe(24, 12, 1_000.0, 100_000.0, 30_000.0, 0.5);
        let e = decide(&settings(), &State::default(), ctx(0.0, 12), known(o));
        assert_ne!(e.action, Action::ScaleDown(e.recommendation.unwrap_or(0)));
        assert!(
            e.vetoes.contains(&Veto::Backlog) || e.action == Action::NoChange,
            "{e:?}"
        );
    }

    #[test]
    fn a_scale_up_that_does_not_deliver_stops_further_scale_ups_until_the_load_changes() {
        let s = settings();
        let o = observe(24, 2, 14_000.0, 300_000.0, 10_000.0, 1.0);
        let up = decide(&s, &State::default(), ctx(0.0, 2), known(o));
        let Action::ScaleUp(to) = up.action else {
            panic!()
        };
        // Settled, and still fully busy at barely more throughput: each slot got slower.
        let settled = Input {
            observation: Ok(observe(24, to, 14_000.0, 600_000.0, 10_500.0, 1.0)),
            stable_at: Some(60.0),
        };
        let after = decide(&s, &up.state, ctx(120.0, to), settled);
        assert!(after.state.blocked.is_some(), "{}", after.reason);
        assert_eq!(after.action, Action::Held);
        assert!(after.vetoes.contains(&Veto::Ineffective));
        assert!(
            after.reason.contains("more slots do not help"),
            "{}",
            after.reason
        );
        // The load doubles: the block is lifted.
        let busier = observe(24, to, 30_000.0, 600_000.0, 10_500.0, 1.0);
        let lifted = decide(&s, &after.state, ctx(180.0, to), known(busier));
        assert!(lifted.state.blocked.is_none());
        assert!(
            matches!(lifted.action, Action::ScaleUp(_)),
            "{}",
            lifted.reason
        );
    }

    #[test]
    fn recommend_only_reports_the_recommendation_and_decides_nothing() {
        let s = Settings {
            recommend_only: true,
            ..settings()
        };
        let o = observe(24, 2, 14_000.0, 300_000.0, 10_000.0, 1.0);
        let e = decide(&s, &State::default(), ctx(0.0, 2), known(o));
        assert_eq!(e.action, Action::ScaleUp(5));
        assert_eq!(e.recommendation, Some(5));
        assert_eq!(e.state.decided, None);
        assert_eq!(e.state.rescale, None);
    }

    #[test]
    fn a_settling_rescale_holds_until_every_partition_is_consumed_and_records_the_pause() {
        let s = settings();
        let state = State {
            rescale: Some(Rescale {
                started: 1_000.0,
                from: 2,
                to: 5,
                stable_since: None,
                capacity_before: None,
                expected_capacity: None,
                effect_checked: false,
            }),
            ..State::default()
        };
        let waiting = Input {
            observation: Err(Unknown::Missing("a rescale is settling".into())),
            stable_at: None,
        };
        let e = decide(&s, &state, ctx(1_030.0, 5), waiting);
        assert_eq!(
            (e.action, e.vetoes.clone()),
            (Action::Held, vec![Veto::Stabilizing])
        );
        let settled = Input {
            observation: Err(Unknown::Short {
                have: 10.0,
                need: 30.0,
            }),
            stable_at: Some(1_042.0),
        };
        let e = decide(&s, &e.state, ctx(1_060.0, 5), settled);
        assert_eq!(e.state.observed_pause, Some(42.0));
        assert_eq!(e.state.window_since(1_060.0, 300.0), 1_042.0);
        assert_eq!(e.action, Action::Held);
    }

    #[test]
    fn a_partition_that_needs_more_than_a_slot_is_reported_as_skew_not_chased() {
        let mut o = observe(24, 6, 14_000.0, 0.0, 14_000.0, 0.7);
        o.partitions.get_mut("t/0").unwrap().arrival_rate = 8_000.0;
        o.partitions.get_mut("t/0").unwrap().lag = 1_000_000.0;
        let e = decide(&settings(), &State::default(), ctx(0.0, 6), known(o));
        assert!(
            e.vetoes
                .iter()
                .any(|v| matches!(v, Veto::Skew(p) if p == &["t/0"])),
            "{e:?}"
        );
        assert!(e.reason.contains("scaling cannot drain it"), "{}", e.reason);
    }

    proptest! {
        #[test]
        fn decisions_stay_in_bounds_move_in_the_stated_direction_and_repeat(
            n in prop::sample::select(vec![1, 3, 7, 12, 13, 24, 60, 64, 128]),
            p in 1i32..=128,
            arrival in 0.0f64..200_000.0,
            lag in 0.0f64..5_000_000.0,
            busy in 0.0f64..=1.0,
            min in 1i32..=4,
            max in prop::option::of(1i32..=128),
        ) {
            let p = p.min(n);
            let s = Settings { min, max: max.map(|m| m.max(min)), ..settings() };
            let processed = 5_000.0 * busy * f64::from(p);
            let o = observe(n, p, arrival, lag, processed, busy);
            let c = Context { now: 0.0, parallelism: p, partitions: n, generation: 1 };
            let e = decide(&s, &State::default(), c, known(o.clone()));
            let again = decide(&s, &State::default(), c, known(o));
            prop_assert_eq!(&e, &again);
            if let Some(r) = e.recommendation {
                prop_assert!(r >= min.min(n) && r <= n);
                if let Some(m) = s.max {
                    prop_assert!(r <= m.max(min));
                }
            }
            match e.action {
                Action::ScaleUp(to) => {
                    prop_assert!(to > p && to <= n);
                    prop_assert!(f64::from(to) <= (f64::from(p) * s.max_up_factor).ceil());
                }
                Action::ScaleDown(_) => prop_assert!(false, "no scale-down without a delay"),
                _ => {}
            }
        }

        #[test]
        fn unknown_metrics_never_scale(
            p in 1i32..=24,
            pending in prop::option::of((0.0f64..1e6, 1i32..=24)),
        ) {
            let previous = State { pending_down: pending, ..State::default() };
            let input = Input {
                observation: Err(Unknown::Partial("1 of 2 slots reported".into())),
                stable_at: None,
            };
            let e = decide(&settings(), &previous, ctx(2e6, p), input);
            prop_assert_eq!(e.action, Action::NoMetrics);
            prop_assert_eq!(e.state.decided, None);
            prop_assert_eq!(e.state.pending_down, None);
        }
    }
}

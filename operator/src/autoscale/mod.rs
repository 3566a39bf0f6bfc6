//! The autoscaler: metrics ([`source`], [`observation`]) → policy ([`policy`], pure) → a decision
//! the controller applies through sizing. [`simulate`] compares the policy with KEDA-style and
//! busy-time-only ones. docs/autoscaler.md explains the model.
//!
//! Its memory between evaluations lives in `status.autoscaler`, so an operator restart (or a new
//! leader) carries on where the last one stopped.

pub mod observation;
pub mod policy;
pub mod simulate;
pub mod source;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use pipeline_crds::{
    PipelineDeploymentSpec,
    autoscaler::{AutoscalerMode, AutoscalerSpec},
    status::{AutoscalerInputs, AutoscalerStatus, PendingScaleDown, RescaleRecord, ScaleUpBlock},
};

use self::{
    observation::{Expectation, Observation},
    policy::{Block, Context, Evaluation, Rescale, Settings, State},
    source::{MetricsSource, Query, Target},
};

/// Seconds since the Unix epoch of a status time.
pub fn seconds_of(time: &Time) -> f64 {
    time.0.as_millisecond() as f64 / 1000.0
}

/// A status time from seconds since the Unix epoch.
pub fn time_of(seconds: f64) -> Time {
    Time(Timestamp::from_millisecond((seconds * 1000.0) as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The autoscaler's spec when it is on.
pub fn enabled(spec: &PipelineDeploymentSpec) -> Option<&AutoscalerSpec> {
    spec.autoscaler.as_ref().filter(|a| a.enabled)
}

/// The parallelism to run when the autoscaler decides it. Precedence, highest first:
/// 1. a changed `spec.parallelism` (an edit or `kubectl scale`, which writes it through the scale
///    subresource) — the autoscaler's decision is dropped and it resumes from the new value;
/// 2. the autoscaler's decision (mode `auto`), kept in status across operator restarts;
/// 3. `spec.parallelism`, else the partition count (sizing's default).
pub fn decided(spec: &PipelineDeploymentSpec, status: Option<&AutoscalerStatus>) -> Option<i32> {
    let autoscaler = enabled(spec)?;
    if autoscaler.mode != AutoscalerMode::Auto {
        return None;
    }
    let status = status?;
    (status.spec_parallelism == spec.parallelism)
        .then_some(status.decided_parallelism)
        .flatten()
}

/// The policy's memory from status.
pub fn state_of(status: &AutoscalerStatus) -> State {
    State {
        decided: status.decided_parallelism,
        pending_down: status
            .pending_scale_down
            .as_ref()
            .map(|p| (seconds_of(&p.since), p.highest)),
        rescale: status.rescale.as_ref().map(|r| Rescale {
            started: seconds_of(&r.started),
            from: r.from,
            to: r.to,
            stable_since: r.stable_since.as_ref().map(seconds_of),
            capacity_before: r.capacity_before,
            expected_capacity: r.expected_capacity,
            effect_checked: r.effect_checked,
        }),
        observed_pause: status.observed_pause_seconds,
        capacity_per_slot: status.capacity_per_slot,
        blocked: status.scale_up_blocked.as_ref().map(|b| Block {
            reason: b.reason.clone(),
            arrival_rate: b.arrival_rate,
            generation: b.generation,
        }),
    }
}

/// The status after an evaluation.
pub fn status_of(
    e: &Evaluation,
    observation: Option<&Observation>,
    now: f64,
    parallelism: i32,
    spec_parallelism: Option<i32>,
) -> AutoscalerStatus {
    let s = &e.state;
    let inputs = observation.map(|o| {
        let lag = o.lag();
        AutoscalerInputs {
            arrival_rate: Some(o.arrival_rate),
            processing_rate: Some(o.processing_rate),
            capacity_per_slot: e.capacity_per_slot,
            lag: Some(lag.round() as i64),
            lag_seconds: (o.arrival_rate > 0.0).then(|| lag / o.arrival_rate),
            busy: Some(o.busy_max),
            busy_mean: Some(o.busy_mean),
            backpressure: Some(o.backpressure_max),
            backpressure_mean: Some(o.backpressure_mean),
            skewed_partitions: e
                .vetoes
                .iter()
                .find_map(|v| match v {
                    policy::Veto::Skew(p) => Some(p.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            paused_partitions: o.paused.iter().cloned().collect(),
            failing_checkpoints: o
                .failing_checkpoints
                .iter()
                .map(|(slot, n)| format!("{slot}: {n} in a row"))
                .collect(),
            window_seconds: Some(o.window_seconds),
            parallelism: Some(parallelism),
        }
    });
    AutoscalerStatus {
        last_evaluation_time: Some(time_of(now)),
        inputs,
        required_rate: e.required_rate,
        recommended_parallelism: e.recommendation,
        decided_parallelism: s.decided,
        spec_parallelism,
        result: Some(e.action.word().into()),
        reason: Some(e.reason.clone()),
        vetoes: e.vetoes.iter().map(|v| v.name().to_string()).collect(),
        pending_scale_down: s.pending_down.map(|(since, highest)| PendingScaleDown {
            since: time_of(since),
            highest,
        }),
        rescale: s.rescale.as_ref().map(|r| RescaleRecord {
            started: time_of(r.started),
            from: r.from,
            to: r.to,
            stable_since: r.stable_since.map(time_of),
            capacity_before: r.capacity_before,
            expected_capacity: r.expected_capacity,
            effect_checked: r.effect_checked,
        }),
        observed_pause_seconds: s.observed_pause,
        capacity_per_slot: s.capacity_per_slot,
        scale_up_blocked: s.blocked.as_ref().map(|b| ScaleUpBlock {
            reason: b.reason.clone(),
            arrival_rate: b.arrival_rate,
            generation: b.generation,
        }),
    }
}

/// Whether an evaluation is due: none yet, or the last one at least `interval` ago (half a second
/// early counts: the requeue after `interval` must not miss by a rounding).
pub fn due(spec: &AutoscalerSpec, status: Option<&AutoscalerStatus>, now: f64) -> bool {
    status
        .and_then(|s| s.last_evaluation_time.as_ref())
        .is_none_or(|t| now - seconds_of(t) >= spec.interval.get().as_secs_f64() - 0.5)
}

/// One evaluation of a running pipeline: reads the metrics and runs the policy. `previous` is
/// the autoscaler's status; when `spec.parallelism` changed since, the memory starts afresh from
/// the new value (precedence of [`decided`]).
pub async fn evaluate(
    source: &dyn MetricsSource,
    target: &Target,
    spec: &PipelineDeploymentSpec,
    autoscaler: &AutoscalerSpec,
    previous: Option<&AutoscalerStatus>,
    ctx: Context,
) -> AutoscalerStatus {
    let state = previous
        .filter(|p| p.spec_parallelism == spec.parallelism)
        .map(state_of)
        .unwrap_or_default();
    let interval = autoscaler.interval.get().as_secs_f64();
    let query = Query {
        now: ctx.now,
        settling_since: state.settling().map(|r| r.started),
        window_since: state.window_since(ctx.now, autoscaler.metrics_window.get().as_secs_f64()),
        expect: Expectation {
            partitions: usize::try_from(ctx.partitions).unwrap_or(0),
            slots: ctx.parallelism,
            min_window: interval,
            max_age: 2.0 * interval,
        },
    };
    let input = source.read(target, query).await;
    let observation = input.observation.as_ref().ok().cloned();
    let e = policy::decide(&Settings::from_spec(autoscaler), &state, ctx, input);
    status_of(
        &e,
        observation.as_ref(),
        ctx.now,
        ctx.parallelism,
        spec.parallelism,
    )
}

//! Status (pure): what a reconcile reports, as the status subresource's content. Conditions keep
//! their `lastTransitionTime` while their status stays the same.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use pipeline_crds::{
    FieldError, PipelineDeployment, PipelineDeploymentStatus,
    status::{AutoscalerStatus, Phase},
};

use crate::{backend::kube::names::selector_labels, sizing::Sizing};

/// `Ready=False` reason: the spec cannot run.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// `Ready=False` reason: the source topic's partition count could not be read.
pub const KAFKA_UNREACHABLE: &str = "KafkaUnreachable";
/// `Ready=False` reason: the Secrets of the Kafka connection cannot be read.
pub const CREDENTIALS_UNAVAILABLE: &str = "CredentialsUnavailable";
/// `Ready=False` reason: a child's name is taken by an object the pipeline does not own.
pub const NAME_CONFLICT: &str = "NameConflict";
/// The `Ready=False` reasons that are errors ([`crate::events`] announces each when it starts).
pub const ERROR_REASONS: [&str; 4] = [
    INVALID_SPEC,
    KAFKA_UNREACHABLE,
    CREDENTIALS_UNAVAILABLE,
    NAME_CONFLICT,
];

/// What the reconcile found.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The spec cannot run: nothing was applied.
    Invalid(Vec<FieldError>),
    /// The source topic's partition count could not be read.
    KafkaUnreachable(String),
    /// The Secrets the Kafka connection refers to cannot be read.
    CredentialsUnavailable(String),
    /// A child's name is taken by an object the pipeline does not own (left alone).
    NameConflict(String),
    /// Kafka could not be reached, so the children were applied with the last known partition
    /// count and the autoscaler's last decision (a suspend, an image or env fix goes through a
    /// broker outage); `applied` says what was applied.
    AppliedWithoutKafka {
        /// Why the partitions could not be read.
        error: String,
        /// What was applied ([`Outcome::Applied`]).
        applied: Box<Outcome>,
    },
    /// The children were applied.
    Applied {
        /// The sizing applied.
        sizing: Sizing,
        /// Source partitions.
        partitions: i32,
        /// Ready runtime pods.
        ready_replicas: i32,
        /// The autoscaler's status (absent when it is off).
        autoscaler: Option<Box<AutoscalerStatus>>,
    },
}

/// Autoscaler vetoes that limit scaling (reported in `ScalingLimited`).
const LIMITING_VETOES: [&str; 5] = ["SinkBound", "Skew", "Ineffective", "AtMax", "PartitionCap"];

fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Conditions as they are now, keeping each one's `lastTransitionTime` while its status stays.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: &'a Time,
}

impl Conditions<'_> {
    fn set(&self, type_: &str, status: bool, reason: &str, message: String) -> Condition {
        condition(
            self.previous,
            type_,
            status,
            reason,
            message,
            self.generation,
            self.now,
        )
    }
}

/// The status to write for `pd` after `outcome`, at `now`.
pub fn status(pd: &PipelineDeployment, outcome: &Outcome, now: &Time) -> PipelineDeploymentStatus {
    let generation = pd.metadata.generation;
    // What this reconcile does not learn (the running sizing when nothing was applied, the
    // autoscaler's figures) is carried over: a status apply drops every field it leaves out.
    let before = pd.status.clone().unwrap_or_default();
    let c = Conditions {
        previous: &before.conditions,
        generation,
        now,
    };
    let name = pd.metadata.name.clone().unwrap_or_default();
    let selector = selector_labels(&name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut s = PipelineDeploymentStatus {
        observed_generation: generation,
        selector: Some(selector),
        conditions: Vec::new(),
        ..before.clone()
    };
    match outcome {
        Outcome::AppliedWithoutKafka { error, applied } => {
            return applied_without_kafka(pd, error, applied, now);
        }
        Outcome::Invalid(problems) => {
            let message = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            s.phase = Some(Phase::Failed);
            s.conditions = vec![
                c.set("Ready", false, INVALID_SPEC, message.clone()),
                c.set(
                    "Progressing",
                    false,
                    INVALID_SPEC,
                    "waiting for a spec change".into(),
                ),
                c.set("Degraded", true, INVALID_SPEC, message),
            ];
        }
        Outcome::KafkaUnreachable(error)
        | Outcome::CredentialsUnavailable(error)
        | Outcome::NameConflict(error) => {
            s.phase = Some(Phase::Degraded);
            let (reason, message) = match outcome {
                Outcome::KafkaUnreachable(_) => (
                    KAFKA_UNREACHABLE,
                    format!("cannot read the source topic's partitions: {error}"),
                ),
                Outcome::NameConflict(_) => (NAME_CONFLICT, error.clone()),
                _ => (
                    CREDENTIALS_UNAVAILABLE,
                    format!("cannot read the Kafka credentials: {error}"),
                ),
            };
            s.conditions = vec![
                c.set("Ready", false, reason, message.clone()),
                c.set("Progressing", false, reason, "retrying".into()),
                c.set("Degraded", true, reason, message),
            ];
        }
        Outcome::Applied {
            sizing,
            partitions,
            ready_replicas,
            autoscaler,
        } => {
            let applied = AppliedFigures {
                sizing,
                partitions: *partitions,
                ready_replicas: *ready_replicas,
                autoscaler: autoscaler.as_deref(),
            };
            applied_status(pd, &before, &applied, &c, &mut s);
        }
    }
    s
}

/// What an apply reported ([`Outcome::Applied`]).
struct AppliedFigures<'a> {
    sizing: &'a Sizing,
    partitions: i32,
    ready_replicas: i32,
    autoscaler: Option<&'a AutoscalerStatus>,
}

/// `s` after an apply: the running figures, the phase and the conditions.
fn applied_status(
    pd: &PipelineDeployment,
    before: &PipelineDeploymentStatus,
    applied: &AppliedFigures<'_>,
    c: &Conditions<'_>,
    s: &mut PipelineDeploymentStatus,
) {
    let sizing = applied.sizing;
    let replicas = if pd.spec.suspend { 0 } else { sizing.replicas };
    let ready = applied.ready_replicas >= replicas;
    let parallelism = if pd.spec.suspend {
        0
    } else {
        sizing.parallelism
    };
    if before.parallelism.is_some_and(|p| p != parallelism) {
        s.last_scale_time = Some(c.now.clone());
    }
    s.parallelism = Some(parallelism);
    s.desired_parallelism = Some(sizing.parallelism);
    s.replicas = Some(replicas);
    s.ready_replicas = Some(applied.ready_replicas);
    s.partitions = Some(applied.partitions);
    let inputs = applied.autoscaler.and_then(|a| a.inputs.as_ref());
    s.autoscaler = applied.autoscaler.cloned();
    s.lag = inputs.and_then(|i| i.lag);
    s.backpressure = inputs.and_then(|i| i.backpressure);
    s.busy = inputs.and_then(|i| i.busy);
    let settling = applied
        .autoscaler
        .and_then(|a| a.rescale.as_ref())
        .is_some_and(|r| r.stable_since.is_none());
    s.phase = Some(match (pd.spec.suspend, ready) {
        (true, _) => Phase::Suspended,
        (false, true) if settling => Phase::Scaling,
        (false, true) => Phase::Running,
        (false, false)
            if before
                .parallelism
                .is_some_and(|p| p > 0 && p != parallelism) =>
        {
            Phase::Scaling
        }
        (false, false) => Phase::Pending,
    });
    let paused: Vec<String> = inputs
        .map(|i| i.paused_partitions.clone())
        .unwrap_or_default();
    let failing: Vec<String> = inputs
        .map(|i| i.failing_checkpoints.clone())
        .unwrap_or_default();
    s.conditions = vec![
        c.set(
            "Ready",
            ready,
            if ready { "PodsReady" } else { "PodsNotReady" },
            format!("{}/{replicas} runtime pods ready", applied.ready_replicas),
        ),
        c.set(
            "Progressing",
            !ready,
            if ready { "Stable" } else { "RollingOut" },
            format!("{} slots on {replicas} pods", sizing.parallelism),
        ),
        c.set("Degraded", false, "Healthy", String::new()),
        partitions_paused(c, &paused),
        checkpoints_failing(c, &failing),
        scaling_limited(c, sizing, applied.autoscaler),
    ];
}

/// `PartitionsPaused`: the partitions that do not consume.
fn partitions_paused(c: &Conditions<'_>, paused: &[String]) -> Condition {
    listed_condition(
        c,
        "PartitionsPaused",
        paused,
        ["AllConsuming", "NotConsuming"],
        "paused because their state could not be restored, or held at a record that cannot be processed yet with no deadLetter topic (see the runtime's /readyz and logs)",
    )
}

/// `CheckpointsFailing`: the slots whose checkpoints fail.
fn checkpoints_failing(c: &Conditions<'_>, failing: &[String]) -> Condition {
    listed_condition(
        c,
        "CheckpointsFailing",
        failing,
        ["CheckpointsSucceeding", "StoreOrCommitFailing"],
        "checkpoints failing (the slots process on from their last good checkpoint; see the runtime logs)",
    )
}

/// A condition that is true while `names` lists something: reason `[when empty, when not]`,
/// and the message `<prefix>: <names>`.
fn listed_condition(
    c: &Conditions<'_>,
    kind: &'static str,
    names: &[String],
    [clear, listed]: [&'static str; 2],
    prefix: &str,
) -> Condition {
    if names.is_empty() {
        c.set(kind, false, clear, String::new())
    } else {
        c.set(
            kind,
            true,
            listed,
            format!("{prefix}: {}", names.join(", ")),
        )
    }
}

/// `ScalingLimited`: the sizing's adjustments and the autoscaler's limiting vetoes.
fn scaling_limited(
    c: &Conditions<'_>,
    sizing: &Sizing,
    autoscaler: Option<&AutoscalerStatus>,
) -> Condition {
    let mut limits: Vec<String> = sizing
        .limits
        .iter()
        .map(|l| l.describe().to_string())
        .collect();
    let vetoes: Vec<&str> = autoscaler
        .map(|a| {
            a.vetoes
                .iter()
                .map(String::as_str)
                .filter(|v| LIMITING_VETOES.contains(v))
                .collect()
        })
        .unwrap_or_default();
    if let (Some(first), Some(reason)) =
        (vetoes.first(), autoscaler.and_then(|a| a.reason.as_ref()))
    {
        limits.push(format!("autoscaler {first}: {reason}"));
    }
    let limited = !limits.is_empty();
    let limits = limits.join("; ");
    c.set(
        "ScalingLimited",
        limited,
        match vetoes.first() {
            Some(v) if sizing.limits.is_empty() => v,
            _ if limited => "Adjusted",
            _ => "AsWanted",
        },
        if limited {
            format!("parallelism {}: {limits}", sizing.parallelism)
        } else {
            String::new()
        },
    )
}

/// The status of an apply with the last known partition count: as [`Outcome::Applied`], but
/// `Ready=False` and `Degraded=True` with reason `KafkaUnreachable`.
fn applied_without_kafka(
    pd: &PipelineDeployment,
    error: &str,
    applied: &Outcome,
    now: &Time,
) -> PipelineDeploymentStatus {
    let mut s = status(pd, applied, now);
    let before = pd.status.clone().unwrap_or_default();
    let message = format!(
        "cannot read the source topic's partitions: {error}; applied with the last known count ({})",
        s.partitions.unwrap_or_default()
    );
    let replaced = |type_: &str, status: bool, message: String| {
        condition(
            &before.conditions,
            type_,
            status,
            KAFKA_UNREACHABLE,
            message,
            pd.metadata.generation,
            now,
        )
    };
    for c in &mut s.conditions {
        match c.type_.as_str() {
            "Ready" => *c = replaced("Ready", false, message.clone()),
            "Degraded" => *c = replaced("Degraded", true, message.clone()),
            _ => {}
        }
    }
    s.phase = Some(if pd.spec.suspend {
        Phase::Suspended
    } else {
        Phase::Degraded
    });
    s
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::*;
    use crate::sizing::size;
    use pipeline_crds::status::AutoscalerInputs;

    fn ready(s: &PipelineDeploymentStatus) -> (&str, &Time) {
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status.as_str(), &c.last_transition_time)
    }

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let mut pd = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p, generation: 3}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  parallelism: 7\n",
            "t",
        )
        .unwrap();
        let sizing = size(&pd.spec, 24, None).unwrap();
        let pending = Outcome::Applied {
            sizing: sizing.clone(),
            partitions: 24,
            ready_replicas: 0,
            autoscaler: None,
        };
        let first = status(&pd, &pending, &at(100));
        assert_eq!(first.phase, Some(Phase::Pending));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(
            first.selector.as_deref(),
            Some("app.kubernetes.io/name=sluice-runtime,sluice.dev/pipeline=p")
        );
        let limited = first
            .conditions
            .iter()
            .find(|c| c.type_ == "ScalingLimited")
            .unwrap();
        assert_eq!(limited.status, "True");
        assert!(
            limited.message.contains("parallelism 6"),
            "{}",
            limited.message
        );
        pd.status = Some(first);
        let again = status(&pd, &pending, &at(200));
        assert_eq!(ready(&again), ("False", &at(100)));
        pd.status = Some(again);
        let running = Outcome::Applied {
            sizing,
            partitions: 24,
            ready_replicas: 2,
            autoscaler: None,
        };
        let later = status(&pd, &running, &at(300));
        assert_eq!(ready(&later), ("True", &at(300)));
        assert_eq!(later.phase, Some(Phase::Running));
    }

    #[test]
    fn failing_checkpoints_and_paused_partitions_seen_by_the_autoscaler_become_conditions() {
        let pd = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p, generation: 1}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n  parallelism: 2\n",
            "t",
        )
        .unwrap();
        let applied = |inputs: AutoscalerInputs| Outcome::Applied {
            sizing: size(&pd.spec, 4, None).unwrap(),
            partitions: 4,
            ready_replicas: 1,
            autoscaler: Some(Box::new(AutoscalerStatus {
                inputs: Some(inputs),
                ..AutoscalerStatus::default()
            })),
        };
        let find = |s: &PipelineDeploymentStatus, t: &str| {
            let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let healthy = status(&pd, &applied(AutoscalerInputs::default()), &at(1));
        assert_eq!(find(&healthy, "CheckpointsFailing").0, "False");
        assert_eq!(find(&healthy, "PartitionsPaused").0, "False");
        let failing = status(
            &pd,
            &applied(AutoscalerInputs {
                failing_checkpoints: vec!["p-0/1: 2 in a row".into()],
                paused_partitions: vec!["in/3".into()],
                ..AutoscalerInputs::default()
            }),
            &at(2),
        );
        let (state, reason, message) = find(&failing, "CheckpointsFailing");
        assert_eq!(
            (state.as_str(), reason.as_str()),
            ("True", "StoreOrCommitFailing")
        );
        assert!(message.contains("p-0/1: 2 in a row"), "{message}");
        let (state, _, message) = find(&failing, "PartitionsPaused");
        assert_eq!(state, "True");
        assert!(message.contains("in/3"), "{message}");
    }
}

//! Kubernetes Events: which ones a reconcile announces (pure, from the status before and after),
//! and publishing them through the `events.k8s.io/v1` API.
//!
//! Events mark changes, so a pipeline that stays broken does not flood `kubectl describe`: a
//! scaling action (the running parallelism changed), suspend and resume, the first deployment, a
//! new error (the `Ready` condition turned to an error reason, or an invalid spec's problems
//! changed) and the recovery from one. Failed reconciles (API errors) are announced by the
//! controller, at most once per object per [`crate::controller::ERROR_EVENT_INTERVAL`].
//!
//! kube's `Recorder` is not used: it merges repeats into a series keyed by reason without the
//! note, so a second scale-up within its six-minute window would show the first one's figures.

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};
use pipeline_crds::{PipelineDeployment, PipelineDeploymentStatus};

use crate::status::ERROR_REASONS;

/// The reporting controller named in every Event.
pub const REPORTING_CONTROLLER: &str = "sluice.dev/operator";

/// Most bytes of an Event's note (the API's limit is 1 kB).
const NOTE_LIMIT: usize = 1000;

/// Severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something happened as asked.
    Normal,
    /// Something needs a look.
    Warning,
}

/// One Event to publish about a PipelineDeployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Severity.
    pub severity: Severity,
    /// Why (`PascalCase`, `kubectl describe`'s Reason column).
    pub reason: &'static str,
    /// What the operator did (`PascalCase`).
    pub action: &'static str,
    /// The human-readable detail.
    pub note: String,
}

fn ready(status: &PipelineDeploymentStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == "Ready")
}

fn scaling_limits(status: &PipelineDeploymentStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "ScalingLimited" && c.status == "True")
        .map(|c| c.message.as_str())
}

/// The Events that the change from `before` to `after` (the status just written) announces.
pub fn announcements(
    before: Option<&PipelineDeploymentStatus>,
    after: &PipelineDeploymentStatus,
) -> Vec<Announcement> {
    let mut out = Vec::new();
    let was = before.and_then(ready);
    let is = ready(after);
    let was_error = was.filter(|c| ERROR_REASONS.contains(&c.reason.as_str()));
    let is_error = is.filter(|c| ERROR_REASONS.contains(&c.reason.as_str()));
    match (was_error, is_error) {
        (_, Some(now)) => {
            if was_error.is_none_or(|w| w.reason != now.reason || w.message != now.message) {
                out.push(Announcement {
                    severity: Severity::Warning,
                    reason: ERROR_REASONS
                        .iter()
                        .find(|r| **r == now.reason)
                        .copied()
                        .unwrap_or("Error"),
                    action: "Reconcile",
                    note: now.message.clone(),
                });
            }
        }
        (Some(w), None) => out.push(Announcement {
            severity: Severity::Normal,
            reason: "Recovered",
            action: "Reconcile",
            note: format!("{} resolved", w.reason),
        }),
        (None, None) => {}
    }
    let (Some(new), Some(pods)) = (after.parallelism, after.replicas) else {
        return out;
    };
    let old = before.and_then(|b| b.parallelism.zip(b.replicas));
    let why = scaling_limits(after).map_or(String::new(), |l| format!(" ({l})"));
    let announcement = match old {
        None => Some(("Deployed", format!("parallelism {new} on {pods} pods{why}"))),
        Some((old, _)) if old == new => None,
        Some(_) if new == 0 => Some((
            "Suspended",
            "scaled to zero pods; checkpoints and committed offsets are kept".to_owned(),
        )),
        Some((0, _)) => Some(("Resumed", format!("parallelism {new} on {pods} pods{why}"))),
        Some((old, old_pods)) => Some((
            if new > old { "ScaledUp" } else { "ScaledDown" },
            format!("parallelism {old} → {new}, pods {old_pods} → {pods}{why}"),
        )),
    };
    if let Some((reason, note)) = announcement {
        out.push(Announcement {
            severity: Severity::Normal,
            reason,
            action: "Scale",
            note,
        });
    }
    out.extend(autoscaler_announcements(
        before.and_then(|b| b.autoscaler.as_ref()),
        after.autoscaler.as_ref(),
    ));
    out
}

/// Veto names and the Event reason of each (vetoes that are part of normal operation are
/// Normal, the others Warnings).
const VETO_EVENTS: [(&str, &str, Severity); 9] = [
    ("SinkBound", "AutoscalerSinkBound", Severity::Warning),
    ("Skew", "AutoscalerSkew", Severity::Warning),
    ("Ineffective", "AutoscalerIneffective", Severity::Warning),
    (
        "MetricsUnknown",
        "AutoscalerMetricsUnknown",
        Severity::Warning,
    ),
    ("AtMax", "AutoscalerAtMax", Severity::Warning),
    ("PartitionCap", "AutoscalerPartitionCap", Severity::Warning),
    ("Backlog", "AutoscalerBacklog", Severity::Normal),
    (
        "ScaleDownDelay",
        "AutoscalerScaleDownDelayed",
        Severity::Normal,
    ),
    ("Stabilizing", "AutoscalerStabilizing", Severity::Normal),
];

/// The autoscaler's Events: every decision to rescale (or, in `recommendOnly` mode, every new
/// recommendation), and every veto when it starts — a veto that holds evaluation after
/// evaluation is announced once.
fn autoscaler_announcements(
    before: Option<&pipeline_crds::status::AutoscalerStatus>,
    after: Option<&pipeline_crds::status::AutoscalerStatus>,
) -> Vec<Announcement> {
    let Some(after) = after else {
        return Vec::new();
    };
    if before.and_then(|b| b.last_evaluation_time.as_ref()) == after.last_evaluation_time.as_ref() {
        return Vec::new();
    }
    let note = after.reason.clone().unwrap_or_default();
    let mut out = Vec::new();
    let rescaled = after
        .rescale
        .as_ref()
        .filter(|r| after.last_evaluation_time.as_ref() == Some(&r.started));
    match (after.result.as_deref(), rescaled) {
        (Some("ScaleUp"), Some(_)) => out.push(Announcement {
            severity: Severity::Normal,
            reason: "AutoscalerScaleUp",
            action: "Autoscale",
            note: note.clone(),
        }),
        (Some("ScaleDown"), Some(_)) => out.push(Announcement {
            severity: Severity::Normal,
            reason: "AutoscalerScaleDown",
            action: "Autoscale",
            note: note.clone(),
        }),
        (Some("ScaleUp" | "ScaleDown"), None)
            if before.and_then(|b| b.recommended_parallelism) != after.recommended_parallelism =>
        {
            out.push(Announcement {
                severity: Severity::Normal,
                reason: "AutoscalerRecommendation",
                action: "Recommend",
                note: format!(
                    "recommended parallelism {} (recommendOnly: nothing changed): {note}",
                    after.recommended_parallelism.unwrap_or_default()
                ),
            });
        }
        _ => {}
    }
    let had = |veto: &str| before.is_some_and(|b| b.vetoes.iter().any(|v| v == veto));
    for veto in &after.vetoes {
        if had(veto) {
            continue;
        }
        if let Some((_, reason, severity)) = VETO_EVENTS.iter().find(|(v, _, _)| v == veto) {
            out.push(Announcement {
                severity: *severity,
                reason,
                action: "Autoscale",
                note: note.clone(),
            });
        }
    }
    out
}

fn truncated(mut note: String) -> String {
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// The Event object for `announcement` about `pd`, at `now`, from `instance` (the operator pod).
pub fn event(
    pd: &PipelineDeployment,
    announcement: &Announcement,
    instance: &str,
    now: Timestamp,
) -> Event {
    let name = pd.name_any();
    let regarding = ObjectReference {
        api_version: Some(PipelineDeployment::api_version(&()).into_owned()),
        kind: Some(PipelineDeployment::kind(&()).into_owned()),
        name: Some(name.clone()),
        namespace: pd.namespace(),
        uid: pd.uid(),
        resource_version: pd.resource_version(),
        ..ObjectReference::default()
    };
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: pd.namespace(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(announcement.action.into()),
        reason: Some(announcement.reason.into()),
        note: Some(truncated(announcement.note.clone())),
        type_: Some(
            match announcement.severity {
                Severity::Normal => "Normal",
                Severity::Warning => "Warning",
            }
            .into(),
        ),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

/// Publishes `announcements` about `pd`; a failure is logged, never fails the reconcile. Called
/// within the reconcile's span, which names the pipeline.
pub async fn publish(
    client: &Client,
    instance: &str,
    pd: &PipelineDeployment,
    announcements: &[Announcement],
) {
    let namespace = pd.namespace().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    for a in announcements {
        let object = event(pd, a, instance, Timestamp::now());
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => tracing::info!(reason = a.reason, note = %a.note, "event"),
            Err(error) => {
                tracing::warn!(reason = a.reason, %error, "publishing an event failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn status(
        parallelism: Option<i32>,
        replicas: i32,
        ready: (&str, &str),
    ) -> PipelineDeploymentStatus {
        let condition = |type_: &str, status: &str, reason: &str, message: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        };
        PipelineDeploymentStatus {
            parallelism,
            replicas: parallelism.map(|_| replicas),
            conditions: vec![condition("Ready", "False", ready.0, ready.1)],
            ..PipelineDeploymentStatus::default()
        }
    }

    fn reasons(a: &[Announcement]) -> Vec<&str> {
        a.iter().map(|a| a.reason).collect()
    }

    const PODS: (&str, &str) = ("PodsNotReady", "0/2 runtime pods ready");

    #[test]
    fn every_change_of_the_running_parallelism_is_one_scaling_event_with_both_figures() {
        let two = status(Some(2), 1, PODS);
        let six = status(Some(6), 2, PODS);
        let up = announcements(Some(&two), &six);
        assert_eq!(up.len(), 1);
        assert_eq!(
            (up[0].reason, up[0].note.as_str()),
            ("ScaledUp", "parallelism 2 → 6, pods 1 → 2")
        );
        assert_eq!(reasons(&announcements(Some(&six), &two)), ["ScaledDown"]);
        assert!(
            announcements(Some(&six), &six).is_empty(),
            "no change, no event"
        );
        assert_eq!(reasons(&announcements(None, &six)), ["Deployed"]);
        let zero = status(Some(0), 0, PODS);
        assert_eq!(reasons(&announcements(Some(&six), &zero)), ["Suspended"]);
        assert_eq!(reasons(&announcements(Some(&zero), &six)), ["Resumed"]);
    }

    #[test]
    fn an_error_is_announced_when_it_starts_or_changes_not_at_every_retry() {
        let running = status(Some(2), 1, PODS);
        let down = status(Some(2), 1, ("KafkaUnreachable", "broker k:9092 down"));
        let first = announcements(Some(&running), &down);
        assert_eq!(
            (first[0].severity, first[0].reason, first[0].note.as_str()),
            (Severity::Warning, "KafkaUnreachable", "broker k:9092 down")
        );
        assert!(announcements(Some(&down), &down).is_empty());
        let invalid = status(Some(2), 1, ("InvalidSpec", "spec.window: a"));
        let other = status(Some(2), 1, ("InvalidSpec", "spec.window: b"));
        assert_eq!(
            reasons(&announcements(Some(&down), &invalid)),
            ["InvalidSpec"]
        );
        assert_eq!(
            reasons(&announcements(Some(&invalid), &other)),
            ["InvalidSpec"]
        );
        assert_eq!(
            reasons(&announcements(Some(&other), &running)),
            ["Recovered"]
        );
    }

    #[test]
    fn an_event_regards_the_pipeline_and_its_note_fits_the_api_limit() {
        let mut pd: PipelineDeployment = pipeline_crds::manifest::from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p, namespace: ns}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n",
            "t",
        )
        .unwrap();
        pd.metadata.uid = Some("u-1".into());
        let a = Announcement {
            severity: Severity::Warning,
            reason: "InvalidSpec",
            action: "Reconcile",
            note: "é".repeat(800),
        };
        let e = event(&pd, &a, "op-0", Timestamp::from_second(1).unwrap());
        let regarding = e.regarding.unwrap();
        assert_eq!(
            (regarding.kind.as_deref(), regarding.uid.as_deref()),
            (Some("PipelineDeployment"), Some("u-1"))
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert!(e.note.unwrap().len() <= NOTE_LIMIT);
        assert_eq!(e.type_.as_deref(), Some("Warning"));
    }
}

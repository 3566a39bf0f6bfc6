//! `deletionPolicy`: what deleting a pipeline removes besides its Kubernetes objects.
//!
//! Under `retain` (the default) nothing is held: the garbage collector removes the children and
//! the consumer group's offsets, the repartition topic and the checkpoints stay, so a pipeline
//! recreated with the same group resumes from them (the operator says so in an Event when it
//! finds such offsets on a new pipeline, whatever its policy).
//!
//! Under `delete` the finalizer [`FINALIZER`] holds the deletion until, in this order:
//! 1. the runtime is stopped and no runtime pod is left (a group with members cannot be deleted,
//!    and a running slot would write snapshots again);
//! 2. the consumer group (its committed offsets) and the repartition topic are deleted, with the
//!    pipeline's own Kafka connection and credentials;
//! 3. where `checkpoint` is set, a cleanup Job deletes the snapshots, running as the pipeline's
//!    own identity (ServiceAccount, storage credentials), since the operator holds no storage
//!    permissions;
//! 4. the finalizer is removed.
//!
//! Kafka goes before the checkpoints: offsets without their snapshots would make a recreated
//! pipeline resume with empty windows, while snapshots without offsets are never restored.
//! A step that keeps failing (a broker gone for good, credentials deleted with the namespace)
//! would hold the deletion forever, and with it a namespace's: after [`GIVE_UP_AFTER`] the
//! finalizer is removed anyway, with a Warning Event naming what was left.

use std::time::Duration;

use futures::future::BoxFuture;
use kube::ResourceExt;
use pipeline_crds::{
    DeletionPolicy, PipelineDeployment, contract, source::REPARTITION_TOPIC_SUFFIX,
};
use tracing::{info, warn};

use crate::{
    backend::{Backend, BackendError},
    events::{Announcement, Severity},
    reconcile::{Inputs, ReconcileError, Reconciled},
};

/// The finalizer of pipelines with `deletionPolicy: delete`.
pub const FINALIZER: &str = "sluice.dev/cleanup";

/// How long after the deletion request a failing cleanup is given up (the finalizer removed).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);

/// How often a deletion in progress is looked at again.
const POLL: Duration = Duration::from_secs(5);

/// Where the cleanup Job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobProgress {
    /// Created by this call.
    Started(String),
    /// Still running.
    Running(String),
    /// Finished and deleted: the checkpoints are gone.
    Done(String),
    /// Failed (left in place for `kubectl logs`; delete it to try again).
    Failed(String),
}

/// What a backend does for a deletion under `deletionPolicy: delete`.
pub trait Deletion: Send + Sync {
    /// Adds the finalizer when `present`, else removes it (each only if needed).
    fn set_finalizer<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
        present: bool,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Stops the runtime; returns how many runtime pods (processes) are still there.
    fn stop_runtime<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<usize, BackendError>>;

    /// Where the Job that deletes the checkpoints is; `None` before it was started.
    fn checkpoint_job<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<Option<JobProgress>, BackendError>>;

    /// Starts the Job that deletes the checkpoints.
    fn start_checkpoint_job<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<JobProgress, BackendError>>;
}

/// Whether `pd` carries the cleanup finalizer.
pub fn has_finalizer(pd: &PipelineDeployment) -> bool {
    pd.finalizers().iter().any(|f| f == FINALIZER)
}

/// The consumer group of `pd` and its repartition topic.
fn group_of(pd: &PipelineDeployment) -> (String, String) {
    let namespace = pd.namespace().unwrap_or_default();
    let group = contract::consumer_group(&pd.spec, &namespace, &pd.name_any());
    let topic = format!("{group}{REPARTITION_TOPIC_SUFFIX}");
    (group, topic)
}

/// Before applying a pipeline that is not being deleted: the finalizer is there exactly when
/// its policy is `delete`.
pub async fn keep_finalizer_in_step(
    deletion: &dyn Deletion,
    pd: &PipelineDeployment,
) -> Result<(), BackendError> {
    let wanted = pd.spec.deletion_policy == DeletionPolicy::Delete;
    if wanted != has_finalizer(pd) {
        deletion.set_finalizer(pd, wanted).await?;
    }
    Ok(())
}

/// On the first reconcile of a pipeline: an Event when its consumer group already has committed
/// offsets (an earlier pipeline's, kept by `retain`), since processing resumes from them.
pub async fn announce_old_state(
    inputs: &Inputs<'_>,
    backend: &dyn Backend,
    pd: &PipelineDeployment,
    access: &crate::kafka::KafkaAccess,
) {
    let (group, _) = group_of(pd);
    let state = inputs.group_state.clone();
    let (access, asked) = (access.clone(), group.clone());
    let found = tokio::task::spawn_blocking(move || state.has_committed_offsets(&access, &asked))
        .await
        .map_err(|e| e.to_string())
        .and_then(|found| found.map_err(|e| e.to_string()));
    match found {
        Ok(true) => {
            let note = format!(
                "consumer group {group} already has committed offsets on the source topics (left by an earlier pipeline): processing resumes from them, with the checkpoints at those offsets where they exist; to start afresh, set source.consumerGroup to a new name (or delete the old pipeline with deletionPolicy: delete)"
            );
            let announcement = Announcement {
                severity: Severity::Warning,
                reason: "OldStateFound",
                action: "Reconcile",
                note,
            };
            backend.announce(pd, &[announcement]).await;
        }
        Ok(false) => {}
        Err(error) => {
            warn!(%group, %error, "could not look for an earlier pipeline's committed offsets");
        }
    }
}

/// A deletion in progress.
fn waiting(label: &'static str) -> Reconciled {
    Reconciled {
        requeue: Some(POLL),
        label,
        status: None,
    }
}

/// Reconciles a pipeline being deleted that carries the finalizer: one step of the cleanup per
/// call, the finalizer removed when all are done (or given up).
pub async fn finalize(
    inputs: &Inputs<'_>,
    backend: &dyn Backend,
    deletion: &dyn Deletion,
    pd: &PipelineDeployment,
) -> Result<Reconciled, ReconcileError> {
    let done = Reconciled {
        requeue: None,
        label: "cleaned_up",
        status: None,
    };
    if pd.spec.deletion_policy == DeletionPolicy::Retain {
        // The policy changed to retain before the finalizer was taken off.
        deletion.set_finalizer(pd, false).await?;
        return Ok(done);
    }
    match clean_up(inputs, backend, deletion, pd).await {
        Ok(Some(summary)) => {
            deletion.set_finalizer(pd, false).await?;
            info!(%summary, "cleaned up; finalizer removed");
            let announcement = Announcement {
                severity: Severity::Normal,
                reason: "CleanedUp",
                action: "Delete",
                note: summary,
            };
            backend.announce(pd, &[announcement]).await;
            Ok(done)
        }
        Ok(None) => Ok(waiting("cleaning_up")),
        Err(error) if past_deadline(pd, inputs.now) => {
            deletion.set_finalizer(pd, false).await?;
            let (group, topic) = group_of(pd);
            let note = format!(
                "cleanup given up {} minutes after the deletion: {error}; what may be left: consumer group {group}, topic {topic}{}",
                GIVE_UP_AFTER.as_secs() / 60,
                if pd.spec.checkpoint.is_some() {
                    ", the checkpoints"
                } else {
                    ""
                }
            );
            warn!(%note, "finalizer removed");
            let announcement = Announcement {
                severity: Severity::Warning,
                reason: "CleanupIncomplete",
                action: "Delete",
                note,
            };
            backend.announce(pd, &[announcement]).await;
            Ok(done)
        }
        Err(error) => Err(error),
    }
}

/// Whether the deletion was asked for more than [`GIVE_UP_AFTER`] before `now`.
fn past_deadline(pd: &PipelineDeployment, now: f64) -> bool {
    pd.metadata.deletion_timestamp.as_ref().is_some_and(|t| {
        let asked = t.0.as_millisecond() as f64 / 1000.0;
        now - asked > GIVE_UP_AFTER.as_secs_f64()
    })
}

/// Deletes the pipeline's consumer group and repartition topic (each only if there). Not for an
/// `AWS_MSK_IAM` pipeline: the operator does not sign in to its Kafka with its own role.
async fn delete_kafka_state(
    inputs: &Inputs<'_>,
    backend: &dyn Backend,
    pd: &PipelineDeployment,
    (group, topic): (String, String),
) -> Result<(), ReconcileError> {
    if pd.spec.kafka.uses_msk_iam() {
        return Ok(());
    }
    let access = backend
        .kafka_access(pd)
        .await
        .map_err(|e| ReconcileError::Cleanup(format!("the Kafka connection: {e}")))?;
    let state = inputs.group_state.clone();
    tokio::task::spawn_blocking(move || state.delete(&access, &group, &[topic]))
        .await
        .map_err(|e| ReconcileError::Cleanup(format!("the Kafka deletion stopped: {e}")))?
        .map_err(|e| ReconcileError::Cleanup(e.to_string()))
}

/// The next step of the cleanup: `Some(summary)` once everything is gone.
async fn clean_up(
    inputs: &Inputs<'_>,
    backend: &dyn Backend,
    deletion: &dyn Deletion,
    pd: &PipelineDeployment,
) -> Result<Option<String>, ReconcileError> {
    let left = deletion.stop_runtime(pd).await?;
    if left > 0 {
        info!(pods = left, "waiting for the runtime pods to stop");
        return Ok(None);
    }
    let (group, topic) = group_of(pd);
    let kafka = if pd.spec.kafka.uses_msk_iam() {
        format!(
            "consumer group {group} and topic {topic} left in Kafka (AWS_MSK_IAM: the operator does not sign in for the pipeline; delete them with the pipeline's IAM role)"
        )
    } else {
        format!("consumer group {group} and topic {topic} deleted")
    };
    if pd.spec.checkpoint.is_none() {
        delete_kafka_state(inputs, backend, pd, (group, topic)).await?;
        return Ok(Some(kafka));
    }
    // The Job is started once the Kafka state is gone: while it runs, Kafka is not asked again.
    let progress = match deletion.checkpoint_job(pd).await? {
        Some(progress) => progress,
        None => {
            delete_kafka_state(inputs, backend, pd, (group, topic)).await?;
            deletion.start_checkpoint_job(pd).await?
        }
    };
    match progress {
        JobProgress::Done(job) => Ok(Some(format!(
            "{kafka}; the checkpoints deleted by Job {job}"
        ))),
        JobProgress::Started(job) => {
            let announcement = Announcement {
                severity: Severity::Normal,
                reason: "CleanupStarted",
                action: "Delete",
                note: format!("{kafka}; Job {job} deletes the checkpoints"),
            };
            backend.announce(pd, &[announcement]).await;
            Ok(None)
        }
        JobProgress::Running(_) => Ok(None),
        JobProgress::Failed(job) => Err(ReconcileError::Cleanup(format!(
            "Job {job} failed to delete the checkpoints (kubectl logs job/{job}; delete the Job to try again)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(extra: &str) -> PipelineDeployment {
        pipeline_crds::manifest::from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns{extra}}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n"),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn the_group_and_repartition_topic_are_those_the_runtime_uses() {
        assert_eq!(
            group_of(&pd("")),
            ("sluice.ns.p".into(), "sluice.ns.p-repartition".into())
        );
    }

    #[test]
    fn a_cleanup_is_given_up_only_past_the_deadline_after_the_deletion_request() {
        let deleted = pd(", deletionTimestamp: '2026-12-02T10:00:00Z'");
        let asked = 1_796_205_600.0; // 2026-12-02T10:00:00Z
        assert!(!past_deadline(&deleted, asked + 60.0));
        assert!(past_deadline(
            &deleted,
            asked + GIVE_UP_AFTER.as_secs_f64() + 1.0
        ));
        assert!(!past_deadline(&pd(""), asked + 1e9));
    }
}

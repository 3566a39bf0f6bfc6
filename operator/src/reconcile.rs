//! One reconcile of one pipeline, whatever runs it: validate (pure) → Kafka access → partitions
//! (Kafka) → autoscaler → sizing → desired deployment (pure) → the backend applies it → status
//! (pure) → the backend reports it. docs/operator.md walks through it.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use pipeline_crds::{
    PipelineDeployment, PipelineDeploymentStatus, ValidationErrors, status::AutoscalerStatus,
    valid::validate_pipeline,
};
use tracing::{info, instrument, warn};

use crate::{
    autoscale::{
        self,
        source::{Sources, Target},
    },
    backend::{Backend, BackendError},
    cleanup,
    desired::{BuildError, desired},
    group_state::GroupState,
    kafka::PartitionSource,
    metrics::OperatorMetrics,
    sizing::{SizingError, size},
    status::{Outcome, status},
};

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Sizing failed.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// Building the desired deployment failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The partition lookup's thread failed.
    #[error("the partition lookup failed: {0}")]
    Lookup(String),
    /// Reconciling panicked (a bug); contained and counted.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
    /// A step of the cleanup under `deletionPolicy: delete` failed.
    #[error("cleanup: {0}")]
    Cleanup(String),
}

impl From<kube::Error> for ReconcileError {
    fn from(error: kube::Error) -> Self {
        Self::Backend(error.into())
    }
}

/// What a reconcile reads besides the pipeline and its backend.
pub struct Inputs<'a> {
    /// The partition lookup.
    pub partitions: &'a Arc<dyn PartitionSource>,
    /// Consumer-group state: found on a new pipeline, deleted under `deletionPolicy: delete`.
    pub group_state: &'a Arc<dyn GroupState>,
    /// The operator's metrics.
    pub metrics: &'a OperatorMetrics,
    /// The autoscaler's metrics sources.
    pub metrics_sources: &'a dyn Sources,
    /// Seconds since the Unix epoch.
    pub now: f64,
}

/// What a reconcile did.
#[derive(Clone, Debug)]
pub struct Reconciled {
    /// When to look again: `None` = on the next change only.
    pub requeue: Option<Duration>,
    /// The outcome, as a metrics label.
    pub label: &'static str,
    /// The status reported (none while the pipeline is being deleted).
    pub status: Option<PipelineDeploymentStatus>,
}

async fn report(
    backend: &dyn Backend,
    pd: &PipelineDeployment,
    outcome: &Outcome,
) -> Result<PipelineDeploymentStatus, BackendError> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let after = status(pd, outcome, &now);
    backend.report(pd, &after).await?;
    Ok(after)
}

/// Reconciles `pd` once through `backend`, in a span naming the pipeline and its namespace.
#[instrument(skip_all, fields(pipeline = %pd.name_any(), namespace = %pd.namespace().unwrap_or_default()))]
pub async fn reconcile_pipeline(
    inputs: Inputs<'_>,
    backend: &dyn Backend,
    pd: &PipelineDeployment,
) -> Result<Reconciled, ReconcileError> {
    let reconciled = |requeue, label, status| Reconciled {
        requeue,
        label,
        status: Some(status),
    };
    if pd.metadata.deletion_timestamp.is_some() {
        if let Some(deletion) = backend.deletion()
            && cleanup::has_finalizer(pd)
        {
            return cleanup::finalize(&inputs, backend, deletion, pd).await;
        }
        // Kubernetes' garbage collector deletes the children (owner references); applying them
        // now would recreate what a foreground deletion is removing.
        info!("being deleted; nothing to apply");
        return Ok(Reconciled {
            requeue: None,
            label: "deleting",
            status: None,
        });
    }
    let valid = match validate_pipeline(pd, backend.rules()) {
        Ok(valid) => valid,
        Err(ValidationErrors(problems)) => {
            info!(
                problems = problems.len(),
                "invalid spec; waiting for a change"
            );
            let status = report(backend, pd, &Outcome::Invalid(problems)).await?;
            return Ok(reconciled(None, "invalid", status));
        }
    };
    if let Some(deletion) = backend.deletion() {
        cleanup::keep_finalizer_in_step(deletion, pd).await?;
    }
    let retry = Some(Duration::from_secs(30));
    let access = match backend.kafka_access(pd).await {
        Ok(access) => access,
        Err(error) => {
            warn!(%error, "Kafka credentials unavailable");
            let status = report(
                backend,
                pd,
                &Outcome::CredentialsUnavailable(error.to_string()),
            )
            .await?;
            return Ok(reconciled(retry, "credentials_unavailable", status));
        }
    };

    let msk_iam = pd.spec.kafka.uses_msk_iam();
    let partitions = if msk_iam {
        reported_partitions(&inputs, pd).await
    } else {
        let source = inputs.partitions.clone();
        let lookup = access.clone();
        tokio::task::spawn_blocking(move || source.partitions(&lookup))
            .await
            .map_err(|e| ReconcileError::Lookup(e.to_string()))?
    };
    let known = pd
        .status
        .as_ref()
        .and_then(|s| s.partitions)
        .filter(|p| *p > 0)
        .or_else(|| msk_iam.then(|| starting_partitions(&pd.spec)));
    let (partitions, kafka_error) = match (partitions, known) {
        (Ok(p), _) => (p, None),
        (Err(error), Some(known)) => {
            // What needs no new partition count (suspend, image, env, resources within the
            // current sizing) is applied through a broker outage.
            warn!(%error, partitions = known, "source partitions unknown; applying with the last known count");
            (known, Some(error))
        }
        (Err(error), None) => {
            warn!(%error, "source partitions unknown");
            let status = report(backend, pd, &Outcome::KafkaUnreachable(error.to_string())).await?;
            return Ok(reconciled(retry, "kafka_unreachable", status));
        }
    };
    if pd.status.is_none() && kafka_error.is_none() && !msk_iam {
        cleanup::announce_old_state(&inputs, backend, pd, &access).await;
    }
    let autoscaler = match kafka_error {
        // The last decision holds: no evaluation without Kafka.
        Some(_) => pd.status.as_ref().and_then(|s| s.autoscaler.clone()),
        None => autoscale_once(&inputs, pd, partitions).await,
    };
    let decision = autoscale::decided(&pd.spec, autoscaler.as_ref());
    let sizing = size(&pd.spec, partitions, decision)?;
    let desired = desired(&valid, &sizing);
    let applied = match backend.apply(&desired).await {
        Ok(applied) => applied,
        Err(conflict @ BackendError::NameConflict { .. }) => {
            let error = conflict.to_string();
            warn!(%error, "a child's name is taken");
            let status = report(backend, pd, &Outcome::NameConflict(error)).await?;
            return Ok(reconciled(
                Some(Duration::from_secs(60)),
                "name_conflict",
                status,
            ));
        }
        Err(error) => return Err(error.into()),
    };
    let requeue = autoscale::enabled(&pd.spec).map_or(Duration::from_secs(60), |a| {
        a.interval
            .get()
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    });
    let outcome = Outcome::Applied {
        sizing,
        partitions,
        ready_replicas: applied.ready_pods,
        autoscaler: autoscaler.map(Box::new),
    };
    if let Some(error) = kafka_error {
        let outcome = Outcome::AppliedWithoutKafka {
            error: error.to_string(),
            applied: Box::new(outcome),
        };
        let status = report(backend, pd, &outcome).await?;
        return Ok(reconciled(retry, "kafka_unreachable", status));
    }
    let status = report(backend, pd, &outcome).await?;
    Ok(reconciled(Some(requeue), "applied", status))
}

/// The source partitions of an `AWS_MSK_IAM` pipeline, as its runtime pods report them: the
/// operator never signs in to Kafka with its own role on a tenant's behalf.
async fn reported_partitions(
    inputs: &Inputs<'_>,
    pd: &PipelineDeployment,
) -> Result<i32, crate::kafka::PartitionLookupError> {
    use crate::kafka::PartitionLookupError::NotReported;
    let target = Target {
        namespace: pd.namespace().unwrap_or_default(),
        name: pd.name_any(),
    };
    match inputs.metrics_sources.reported_partitions(&target).await {
        Ok(Some(partitions)) => Ok(partitions),
        Ok(None) => Err(NotReported(
            "no runtime pod has reported them yet (sized for its starting parallelism until one does)".into(),
        )),
        Err(error) => Err(NotReported(format!("reading the report failed: {error}"))),
    }
}

/// The partition count an `AWS_MSK_IAM` pipeline is sized for before its pods first report one:
/// its starting parallelism (`spec.parallelism`, else `autoscaler.minParallelism`, else 1), so
/// it starts small and is resized once the count is known.
fn starting_partitions(spec: &pipeline_crds::PipelineDeploymentSpec) -> i32 {
    spec.parallelism
        .or_else(|| spec.autoscaler.as_ref().and_then(|a| a.min_parallelism))
        .unwrap_or(1)
        .max(1)
}

/// The autoscaler's status after this reconcile: a new evaluation when one is due for a running
/// pipeline, the previous one otherwise, none when the autoscaler is off.
async fn autoscale_once(
    inputs: &Inputs<'_>,
    pd: &PipelineDeployment,
    partitions: i32,
) -> Option<AutoscalerStatus> {
    let name = pd.name_any();
    let namespace = pd.namespace().unwrap_or_default();
    let Some(spec) = autoscale::enabled(&pd.spec) else {
        inputs.metrics.forget_autoscaler(&namespace, &name);
        return None;
    };
    let previous = pd.status.as_ref().and_then(|s| s.autoscaler.as_ref());
    let running = pd
        .status
        .as_ref()
        .and_then(|s| s.parallelism)
        .filter(|p| *p > 0);
    let now = inputs.now;
    let Some(parallelism) = running.filter(|_| !pd.spec.suspend) else {
        return previous.cloned();
    };
    // A hand-made change of spec.parallelism (kubectl scale) is taken at once: the evaluation
    // starts afresh from it, so the old decision cannot come back.
    let scaled_by_hand = previous.is_some_and(|p| p.spec_parallelism != pd.spec.parallelism);
    if !scaled_by_hand && !autoscale::due(spec, previous, now) {
        return previous.cloned();
    }
    let target = Target {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let policy_ctx = autoscale::policy::Context {
        now,
        parallelism,
        partitions,
        generation: pd.metadata.generation.unwrap_or_default(),
    };
    let status = match inputs.metrics_sources.source(&spec.metrics) {
        Ok(source) => {
            autoscale::evaluate(
                source.as_ref(),
                &target,
                &pd.spec,
                spec,
                previous,
                policy_ctx,
            )
            .await
        }
        Err(error) => {
            let unknown = autoscale::observation::Unknown::Missing(error.to_string());
            let state = previous.map(autoscale::state_of).unwrap_or_default();
            let e = autoscale::policy::decide(
                &autoscale::policy::Settings::from_spec(spec),
                &state,
                policy_ctx,
                autoscale::policy::Input {
                    observation: Err(unknown),
                    stable_at: None,
                },
            );
            autoscale::status_of(&e, None, now, parallelism, pd.spec.parallelism)
        }
    };
    info!(
        result = status.result.as_deref().unwrap_or(""),
        reason = status.reason.as_deref().unwrap_or(""),
        "autoscaler evaluated"
    );
    inputs
        .metrics
        .autoscaled(&namespace, &name, &status, parallelism);
    Some(status)
}

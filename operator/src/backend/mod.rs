//! Backends: what turns a desired deployment into running runtime processes. Validate, sizing,
//! the autoscaler and status are shared ([`crate::reconcile`]); a backend does the side effects:
//! [`kube`] applies Kubernetes objects, [`local`] runs `pipeline-runtime` processes on this
//! machine.

pub mod kube;
pub mod local;

use futures::future::BoxFuture;
use pipeline_crds::{PipelineDeployment, PipelineDeploymentStatus};

use crate::{cleanup::Deletion, desired::Desired, events::Announcement, kafka::KafkaAccess};

/// What a backend found after applying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Pods (processes) that are ready.
    pub ready_pods: i32,
}

/// Why a backend could not do its part.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
    /// The objects cannot be built.
    #[error(transparent)]
    Build(#[from] crate::desired::BuildError),
    /// The pipeline does not pass validation (a cleanup Job is built from a valid one only).
    #[error("{0}")]
    Invalid(String),
    /// The pods cannot be sized.
    #[error(transparent)]
    Sizing(#[from] crate::sizing::SizingError),
    /// A child's name is taken by an object this pipeline does not control: it is left alone.
    #[error("{kind} {name} already exists and is not owned by this pipeline{}: it is left alone; rename the pipeline or remove that object", owner.as_ref().map_or(String::new(), |o| format!(" (its controller is {o})")))]
    NameConflict {
        /// The object's kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Its controller (`kind/name`), if it has one.
        owner: Option<String>,
    },
    /// Local processes or files.
    #[error("{0}")]
    Local(String),
}

/// One way of running pipelines.
pub trait Backend: Send + Sync {
    /// How to reach `pd`'s Kafka cluster, credentials included, or why that cannot be known.
    fn kafka_access<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<KafkaAccess, crate::kafka::CredentialsError>>;

    /// Makes `desired` run: creates, changes and removes what differs, in a fixed order.
    fn apply<'a>(&'a self, desired: &'a Desired) -> BoxFuture<'a, Result<Applied, BackendError>>;

    /// The rules of the installation this backend runs pipelines in (validation checks them
    /// with everything else: [`pipeline_crds::valid::validate_pipeline`]).
    fn rules(&self) -> &dyn pipeline_crds::valid::InstallationRules;

    /// Records `status` as `pd`'s status and announces what changed.
    fn report<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
        status: &'a PipelineDeploymentStatus,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Announces what happened to `pd` that no status change shows (a failure is logged).
    fn announce<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
        announcements: &'a [Announcement],
    ) -> BoxFuture<'a, ()>;

    /// How this backend holds a deletion for `deletionPolicy: delete`; `None` where pipelines
    /// are never deleted by an API server (local mode: a pipeline ends with its operator).
    fn deletion(&self) -> Option<&dyn Deletion>;
}

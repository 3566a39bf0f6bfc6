//! The controller: reconcile = validate (pure) → partitions (Kafka) → size and build (pure) →
//! apply (server-side apply under one field manager, fixed order) → status.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::controller::Action,
};
use pipeline_crds::{PipelineDeployment, PipelineDeploymentSpec};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    build::{BuildError, Environment, build},
    sizing::{SizingError, size},
    status::{Outcome, status},
};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// How the source topics' partition count is found.
pub trait PartitionSource: Send + Sync {
    /// Partitions of all source topics together, or why they cannot be read.
    fn partitions(&self, spec: &PipelineDeploymentSpec) -> Result<i32, String>;
}

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Reconcile counts and durations.
    pub metrics: Arc<crate::metrics::OperatorMetrics>,
    /// Image and cluster capabilities.
    pub environment: Environment,
    /// The partition lookup.
    pub partitions: Arc<dyn PartitionSource>,
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Sizing failed.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// Building failed.
    #[error(transparent)]
    Build(#[from] BuildError),
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

async fn write_status(
    client: &Client,
    pd: &PipelineDeployment,
    outcome: &Outcome,
) -> Result<(), kube::Error> {
    let namespace = pd.namespace().unwrap_or_default();
    let api: Api<PipelineDeployment> = Api::namespaced(client.clone(), &namespace);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "PipelineDeployment",
        "status": status(pd, outcome, &now),
    });
    api.patch_status(
        &pd.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Reconciles one PipelineDeployment, counted and timed in the operator's metrics.
pub async fn reconcile(
    pd: Arc<PipelineDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_once(pd, &ctx).await;
    let label = match &result {
        Ok((_, outcome)) => *outcome,
        Err(_) => "error",
    };
    ctx.metrics.reconciled(label, started.elapsed());
    result.map(|(action, _)| action)
}

async fn reconcile_once(
    pd: Arc<PipelineDeployment>,
    ctx: &Context,
) -> Result<(Action, &'static str), ReconcileError> {
    let name = pd.name_any();
    let namespace = pd.namespace().unwrap_or_default();
    let problems = pipeline_crds::support::problems(&pd.spec);
    if !problems.is_empty() {
        info!(%name, %namespace, problems = problems.len(), "invalid spec; waiting for a change");
        write_status(&ctx.client, &pd, &Outcome::Invalid(problems)).await?;
        return Ok((Action::await_change(), "invalid"));
    }
    let partitions = match ctx.partitions.partitions(&pd.spec) {
        Ok(p) => p,
        Err(error) => {
            warn!(%name, %namespace, %error, "source partitions unknown");
            write_status(&ctx.client, &pd, &Outcome::KafkaUnreachable(error)).await?;
            return Ok((
                Action::requeue(Duration::from_secs(30)),
                "kafka_unreachable",
            ));
        }
    };
    let sizing = size(&pd.spec, partitions, None)?;
    let children = build(&pd, &sizing, &ctx.environment)?;
    let client = &ctx.client;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &children.config_map.name_any(),
        &children.config_map,
    )
    .await?;
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    apply(
        &services,
        &children.headless_service.name_any(),
        &children.headless_service,
    )
    .await?;
    apply(
        &services,
        &children.metrics_service.name_any(),
        &children.metrics_service,
    )
    .await?;
    let applied = apply(
        &Api::<StatefulSet>::namespaced(client.clone(), &namespace),
        &name,
        &children.stateful_set,
    )
    .await?;
    apply(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace),
        &name,
        &children.pod_disruption_budget,
    )
    .await?;
    if let Some(monitor) = &children.pod_monitor {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "monitoring.coreos.com",
            "v1",
            "PodMonitor",
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
        let object: DynamicObject =
            serde_json::from_value(monitor.clone()).expect("a PodMonitor is a dynamic object");
        apply(&api, &name, &object).await?;
    }
    let ready_replicas = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let outcome = Outcome::Applied {
        sizing,
        partitions,
        ready_replicas,
    };
    write_status(client, &pd, &outcome).await?;
    Ok((Action::requeue(Duration::from_secs(60)), "applied"))
}

/// Retry after a failed reconcile.
pub fn error_policy(
    pd: Arc<PipelineDeployment>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    warn!(name = %pd.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

/// Watches every PipelineDeployment (and the StatefulSets it owns) and reconciles until SIGTERM;
/// `readiness` is set once it watches.
pub async fn run(
    client: Client,
    default_image: String,
    partitions: Arc<dyn PartitionSource>,
    metrics: Arc<crate::metrics::OperatorMetrics>,
    readiness: Arc<crate::http::Readiness>,
) {
    use futures::StreamExt;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::runtime::{Controller, watcher};

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pod_monitor_crd = crds
        .get_opt("podmonitors.monitoring.coreos.com")
        .await
        .ok()
        .flatten()
        .is_some();
    info!(pod_monitor_crd, "operator starting");
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        environment: Environment {
            default_image,
            pod_monitor_crd,
        },
        partitions,
    });
    readiness.set_ready();
    Controller::new(
        Api::<PipelineDeployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client), watcher::Config::default())
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
            Err(error) => warn!(%error, "reconcile error"),
        }
    })
    .await;
}

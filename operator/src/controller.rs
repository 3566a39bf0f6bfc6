//! The controller: watches PipelineDeployments and their children, leads through a Lease, and
//! reconciles each pipeline through the Kubernetes backend ([`crate::reconcile`] holds the
//! shared steps, [`crate::backend::kube`] the objects).

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::FutureExt;

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, Client, ResourceExt, runtime::controller::Action};
use pipeline_crds::PipelineDeployment;
use tracing::{error, info, warn};

use crate::{
    autoscale::source::{SharedSources, Sources},
    backend::kube::KubeBackend,
    events,
    group_state::{GroupState, KafkaGroupState},
    reconcile::{Inputs, reconcile_pipeline},
};
pub use crate::{
    backend::kube::{FIELD_MANAGER, PodEndpoints, PodMonitorCrd},
    kafka::PartitionSource,
    reconcile::ReconcileError,
};

/// What reconcile needs.
pub struct Context {
    /// The Kubernetes backend (API client, default image, PodMonitor detection, Event source).
    pub kube: KubeBackend,
    /// Reconcile counts and durations.
    pub metrics: Arc<crate::metrics::OperatorMetrics>,
    /// The partition lookup.
    pub partitions: Arc<dyn PartitionSource>,
    /// Consumer-group state (found on new pipelines, deleted under `deletionPolicy: delete`).
    pub group_state: Arc<dyn GroupState>,
    /// When each object (by uid) last got a `ReconcileFailed` Event.
    pub error_events: Arc<Mutex<HashMap<String, Instant>>>,
    /// Reconciles failed in a row, per object (by uid): the retry backoff grows with them.
    pub failures: Arc<Mutex<HashMap<String, u32>>>,
    /// The autoscaler's metrics sources (direct scrape of the pods, or Prometheus).
    pub metrics_sources: Arc<dyn Sources>,
    /// Seconds since the Unix epoch (a fixed clock in tests).
    pub clock: Arc<dyn Fn() -> f64 + Send + Sync>,
}

/// Seconds since the Unix epoch.
pub fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Context {
    /// A context with no error Events sent yet.
    pub fn new(
        client: Client,
        metrics: Arc<crate::metrics::OperatorMetrics>,
        default_image: String,
        pod_monitor_crd: PodMonitorCrd,
        partitions: Arc<dyn PartitionSource>,
        instance: String,
        install: crate::install::Install,
    ) -> Self {
        let endpoints = PodEndpoints::new(client.clone());
        Self {
            kube: KubeBackend {
                client,
                default_image,
                pod_monitor_crd,
                instance,
                install,
                owned_children: Default::default(),
            },
            metrics,
            partitions,
            group_state: Arc::new(KafkaGroupState),
            error_events: Arc::default(),
            failures: Arc::default(),
            metrics_sources: Arc::new(SharedSources::new(Box::new(endpoints))),
            clock: Arc::new(wall_clock),
        }
    }
}

/// At most one `ReconcileFailed` Event per object in this interval (retries back off from 5 s).
pub const ERROR_EVENT_INTERVAL: Duration = Duration::from_secs(300);

/// Reconciles one PipelineDeployment, counted and timed in the operator's metrics.
pub async fn reconcile(
    pd: Arc<PipelineDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let _in_flight = ctx.metrics.reconcile_started();
    let inputs = Inputs {
        partitions: &ctx.partitions,
        group_state: &ctx.group_state,
        metrics: &ctx.metrics,
        metrics_sources: ctx.metrics_sources.as_ref(),
        now: (ctx.clock)(),
    };
    let pd = Arc::new(ctx.kube.install.with_defaults(&pd));
    // A panic (a bug) fails this object's reconcile, counted and retried with backoff, instead of
    // taking down the operator and with it every other pipeline's reconciles.
    let result = AssertUnwindSafe(reconcile_pipeline(inputs, &ctx.kube, &pd))
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            error!(name = %pd.name_any(), panic = %message, "reconcile panicked");
            Err(ReconcileError::Panicked(message))
        });
    let label = match &result {
        Ok(reconciled) => reconciled.label,
        Err(ReconcileError::Panicked(_)) => "panic",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(label, started.elapsed());
    if let Ok(reconciled) = &result {
        let (namespace, name) = (pd.namespace().unwrap_or_default(), pd.name_any());
        match &reconciled.status {
            Some(status) => ctx.metrics.pipeline_status(&namespace, &name, status),
            None => ctx.metrics.forget_pipeline(&namespace, &name),
        }
    }
    match &result {
        Err(error) => announce_failure(&ctx, &pd, error).await,
        // A later failure is news again; and the map does not keep pipelines that are gone.
        Ok(_) => {
            let uid = pd.uid().unwrap_or_default();
            ctx.error_events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&uid);
            let mut failures = ctx.failures.lock().unwrap_or_else(PoisonError::into_inner);
            failures.remove(&uid);
            ctx.metrics.set_retrying(failures.len());
        }
    }
    result.map(|r| r.requeue.map_or_else(Action::await_change, Action::requeue))
}

/// A `ReconcileFailed` Event, at most once per object per [`ERROR_EVENT_INTERVAL`].
#[tracing::instrument(skip_all, fields(pipeline = %pd.name_any(), namespace = %pd.namespace().unwrap_or_default()))]
async fn announce_failure(ctx: &Context, pd: &PipelineDeployment, error: &ReconcileError) {
    let uid = pd.uid().unwrap_or_default();
    {
        let mut sent = ctx
            .error_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sent
            .get(&uid)
            .is_some_and(|at| at.elapsed() < ERROR_EVENT_INTERVAL)
        {
            return;
        }
        sent.insert(uid, Instant::now());
    }
    let announcement = events::Announcement {
        severity: events::Severity::Warning,
        reason: "ReconcileFailed",
        action: "Reconcile",
        note: error.to_string(),
    };
    events::publish(&ctx.kube.client, &ctx.kube.instance, pd, &[announcement]).await;
}

/// Retry after a failed reconcile, per object with exponential backoff: one failing pipeline
/// (a Secret missing, a broker down) is retried less and less often while the others go on.
pub fn error_policy(
    pd: Arc<PipelineDeployment>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let failures = {
        let mut failures = ctx.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(pd.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        let n = *n;
        ctx.metrics.set_retrying(failures.len());
        n
    };
    let retry = retry_after(failures);
    warn!(name = %pd.name_any(), %error, failures, ?retry, "reconcile failed; retrying");
    Action::requeue(retry)
}

/// The wait before retrying a reconcile that failed `failures` times in a row: 5 s, doubling,
/// at most 5 minutes.
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(6);
    (Duration::from_secs(5) * 2u32.pow(doublings)).min(Duration::from_secs(300))
}

/// How `run` behaves.
pub struct Settings {
    /// Runtime image when a manifest sets none.
    pub default_image: String,
    /// This replica's name (its pod name), in Events and as its Lease identity.
    pub instance: String,
    /// Leader election; `None` = reconcile at once (a single replica, or local development).
    pub lease: Option<crate::leader::LeaseSettings>,
    /// Namespaces to watch; empty = every namespace.
    pub namespaces: Vec<String>,
    /// Create a PodMonitor per pipeline where the Prometheus Operator's CRD exists (else scrape
    /// annotations only, e.g. when one PodMonitor of the Helm chart covers every pipeline).
    pub pod_monitors: bool,
    /// Installation-wide defaults and allowed images.
    pub install: crate::install::Install,
}

/// Why `run` ended other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Joining the election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the Lease; this one stopped reconciling.
    #[error("lost the leader lease")]
    LeadershipLost,
}

/// The API of `K` in `namespace`, or in every namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Watches every PipelineDeployment (and the StatefulSets, ConfigMaps, Services and
/// PodDisruptionBudgets it owns) and reconciles until SIGTERM,
/// while this replica leads (see [`crate::leader`]). `readiness` is set once it has joined the
/// election (a standby is ready: it serves its endpoints and waits).
pub async fn run(
    client: Client,
    settings: Settings,
    partitions: Arc<dyn PartitionSource>,
    metrics: Arc<crate::metrics::OperatorMetrics>,
    readiness: Arc<crate::http::Readiness>,
) -> Result<(), RunError> {
    use futures::{FutureExt, StreamExt};
    use kube::runtime::{Controller, watcher};

    let mut election = match &settings.lease {
        Some(lease) => Some(crate::leader::join(client.clone(), lease).await?),
        None => None,
    };
    readiness.set_ready();
    let stop = signal().shared();
    if let Some(e) = &mut election {
        info!(identity = %settings.instance, "waiting for the leader lease");
        let acquired = tokio::select! {
            () = e.acquired() => true,
            () = stop.clone() => false,
        };
        if !acquired {
            if let Some(e) = election {
                e.leave().await;
            }
            return Ok(());
        }
        info!("leading");
    }
    metrics.set_leader(true);
    let lost = election.as_ref().map(crate::leader::Election::lost);
    let lost_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let stop = stop.clone();
        let flag = lost_flag.clone();
        async move {
            match lost {
                Some(lost) => tokio::select! {
                    () = stop => {},
                    () = lost => {
                        warn!("lost the leader lease; stopping");
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                },
                None => stop.await,
            }
        }
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        settings.default_image,
        if settings.pod_monitors {
            PodMonitorCrd::detect()
        } else {
            PodMonitorCrd::fixed(false)
        },
        partitions,
        settings.instance,
        settings.install,
    ));
    // Children carry the managed-by label: watch only those, not every ConfigMap in the cluster.
    let children =
        watcher::Config::default().labels(&crate::backend::kube::names::managed_selector());
    let shutdown = shutdown.shared();
    // One controller for the whole cluster, or one per watched namespace (with namespaced Roles,
    // a cluster-wide list would be forbidden).
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    info!(namespaces = ?settings.namespaces, "operator reconciling");
    let controllers = scopes.into_iter().map(|namespace| {
        let ns = namespace.as_deref();
        Controller::new(
            scoped::<PipelineDeployment>(&client, ns),
            watcher::Config::default(),
        )
        // The kinds watched here are rbac::WATCHED_CHILDREN (their `watch` permission).
        .owns(scoped::<StatefulSet>(&client, ns), children.clone())
        .owns(scoped::<ConfigMap>(&client, ns), children.clone())
        .owns(scoped::<Service>(&client, ns), children.clone())
        .owns(scoped::<PodDisruptionBudget>(&client, ns), children.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                    // Deleted (no finalizer, so reconcile never sees it go): its gauges go too,
                    // or a pipeline deleted while not Ready would alert for ever.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        let namespace = object.namespace.clone().unwrap_or_default();
                        metrics.forget_pipeline(&namespace, &object.name);
                        tracing::debug!(name = %object.name, %namespace, "deleted");
                    }
                    Err(error) => warn!(%error, "reconcile error"),
                }
            }
        })
    });
    futures::future::join_all(controllers).await;
    metrics.set_leader(false);
    if let Some(election) = election {
        election.leave().await;
    }
    if lost_flag.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RunError::LeadershipLost);
    }
    Ok(())
}

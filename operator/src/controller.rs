//! The controller: reconcile = validate (pure) → Kafka access (Secrets) → partitions (Kafka) →
//! size and build (pure) → apply (server-side apply under one field manager, fixed order) →
//! delete children no longer wanted → status → Events. docs/operator.md walks through it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
    runtime::controller::Action,
};
use pipeline_crds::PipelineDeployment;
use serde_json::json;
use tracing::{info, warn};

pub use crate::kafka::PartitionSource;
use crate::{
    autoscale::{
        self,
        source::{Endpoints, SharedSources, Sources, Target},
    },
    build::{BuildError, Environment, build},
    events, kafka, prune,
    sizing::{SizingError, size},
    status::{Outcome, status},
};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "sluice-operator";

/// Whether the Prometheus Operator's PodMonitor CRD exists: asked at most every [`Self::TTL`],
/// so installing or removing the Prometheus Operator switches between a PodMonitor and scrape
/// annotations without restarting the operator.
pub struct PodMonitorCrd {
    known: Mutex<Option<(bool, Instant)>>,
    ttl: Duration,
}

impl PodMonitorCrd {
    /// How long an answer is trusted.
    pub const TTL: Duration = Duration::from_secs(300);

    /// Asks the API server (at most every [`Self::TTL`]).
    pub fn detect() -> Self {
        Self {
            known: Mutex::new(None),
            ttl: Self::TTL,
        }
    }

    /// A fixed answer (tests, and clusters where the operator may not read CRDs).
    pub fn fixed(exists: bool) -> Self {
        Self {
            known: Mutex::new(Some((exists, Instant::now()))),
            ttl: Duration::MAX,
        }
    }

    async fn exists(&self, client: &Client) -> Result<bool, kube::Error> {
        if let Some((exists, at)) = *self.known.lock().expect("not poisoned")
            && at.elapsed() < self.ttl
        {
            return Ok(exists);
        }
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let exists = crds
            .get_opt("podmonitors.monitoring.coreos.com")
            .await?
            .is_some();
        *self.known.lock().expect("not poisoned") = Some((exists, Instant::now()));
        Ok(exists)
    }

    /// Forgets a detected answer (a PodMonitor apply found no such kind).
    fn forget(&self) {
        let mut known = self.known.lock().expect("not poisoned");
        if self.ttl != Duration::MAX {
            *known = None;
        }
    }
}

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Reconcile counts and durations.
    pub metrics: Arc<crate::metrics::OperatorMetrics>,
    /// Runtime image when `spec.image` is absent.
    pub default_image: String,
    /// Whether PodMonitors can be created.
    pub pod_monitor_crd: PodMonitorCrd,
    /// The partition lookup.
    pub partitions: Arc<dyn PartitionSource>,
    /// This operator replica (its pod name), for Events.
    pub instance: String,
    /// When each object (by uid) last got a `ReconcileFailed` Event.
    pub error_events: Arc<Mutex<HashMap<String, Instant>>>,
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

/// The runtime pods of a pipeline, for the direct scrape: running pods with an IP.
pub struct PodEndpoints {
    client: Client,
}

impl PodEndpoints {
    /// Listing pods with `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Endpoints for PodEndpoints {
    fn endpoints<'a>(
        &'a self,
        target: &'a Target,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &target.namespace);
            let selector = crate::build::selector_labels(&target.name)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let list = pods
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .map_err(|e| format!("listing the runtime pods: {e}"))?;
            Ok(list
                .items
                .iter()
                .filter_map(|p| p.status.as_ref())
                .filter(|s| s.phase.as_deref() == Some("Running"))
                .filter_map(|s| s.pod_ip.as_ref())
                .map(|ip| {
                    format!(
                        "http://{ip}:{}/metrics",
                        pipeline_crds::contract::ports::RUNTIME_METRICS
                    )
                })
                .collect())
        })
    }
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
    ) -> Self {
        let client_for_sources = client.clone();
        Self {
            client,
            metrics,
            default_image,
            pod_monitor_crd,
            partitions,
            instance,
            error_events: Arc::default(),
            metrics_sources: Arc::new(SharedSources::new(Box::new(PodEndpoints::new(
                client_for_sources,
            )))),
            clock: Arc::new(wall_clock),
        }
    }
}

/// At most one `ReconcileFailed` Event per object in this interval (retries come every 15 s).
pub const ERROR_EVENT_INTERVAL: Duration = Duration::from_secs(300);

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
    /// The partition lookup's thread failed.
    #[error("the partition lookup failed: {0}")]
    Lookup(String),
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

/// Writes the status after `outcome` and publishes the Events the change announces.
async fn report(
    ctx: &Context,
    pd: &PipelineDeployment,
    outcome: &Outcome,
) -> Result<(), kube::Error> {
    let namespace = pd.namespace().unwrap_or_default();
    let api: Api<PipelineDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let after = status(pd, outcome, &now);
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "PipelineDeployment",
        "status": after,
    });
    api.patch_status(
        &pd.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let announcements = events::announcements(pd.status.as_ref(), &after);
    events::publish(&ctx.client, &ctx.instance, pd, &announcements).await;
    Ok(())
}

/// Reconciles one PipelineDeployment, counted and timed in the operator's metrics.
pub async fn reconcile(
    pd: Arc<PipelineDeployment>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile_once(&pd, &ctx).await;
    let label = match &result {
        Ok((_, outcome)) => *outcome,
        Err(_) => "error",
    };
    ctx.metrics.reconciled(label, started.elapsed());
    match &result {
        Err(error) => announce_failure(&ctx, &pd, error).await,
        // A later failure is news again; and the map does not keep pipelines that are gone.
        Ok(_) => {
            let uid = pd.uid().unwrap_or_default();
            ctx.error_events.lock().expect("not poisoned").remove(&uid);
        }
    }
    result.map(|(action, _)| action)
}

/// A `ReconcileFailed` Event, at most once per object per [`ERROR_EVENT_INTERVAL`].
async fn announce_failure(ctx: &Context, pd: &PipelineDeployment, error: &ReconcileError) {
    let uid = pd.uid().unwrap_or_default();
    {
        let mut sent = ctx.error_events.lock().expect("not poisoned");
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
    events::publish(&ctx.client, &ctx.instance, pd, &[announcement]).await;
}

async fn reconcile_once(
    pd: &PipelineDeployment,
    ctx: &Context,
) -> Result<(Action, &'static str), ReconcileError> {
    let name = pd.name_any();
    let namespace = pd.namespace().unwrap_or_default();
    if pd.metadata.deletion_timestamp.is_some() {
        // Kubernetes' garbage collector deletes the children (owner references); applying them
        // now would recreate what a foreground deletion is removing.
        info!(%name, %namespace, "being deleted; nothing to apply");
        return Ok((Action::await_change(), "deleting"));
    }
    let problems = pipeline_crds::support::problems(&pd.spec);
    if !problems.is_empty() {
        info!(%name, %namespace, problems = problems.len(), "invalid spec; waiting for a change");
        report(ctx, pd, &Outcome::Invalid(problems)).await?;
        return Ok((Action::await_change(), "invalid"));
    }
    let retry = Action::requeue(Duration::from_secs(30));
    let access = match kafka::access(&ctx.client, &namespace, &pd.spec).await {
        Ok(access) => access,
        Err(error) => {
            warn!(%name, %namespace, %error, "Kafka credentials unavailable");
            report(ctx, pd, &Outcome::CredentialsUnavailable(error.to_string())).await?;
            return Ok((retry, "credentials_unavailable"));
        }
    };
    let source = ctx.partitions.clone();
    let partitions = tokio::task::spawn_blocking(move || source.partitions(&access))
        .await
        .map_err(|e| ReconcileError::Lookup(e.to_string()))?;
    let partitions = match partitions {
        Ok(p) => p,
        Err(error) => {
            warn!(%name, %namespace, %error, "source partitions unknown");
            report(ctx, pd, &Outcome::KafkaUnreachable(error)).await?;
            return Ok((retry, "kafka_unreachable"));
        }
    };
    let client = &ctx.client;
    let pod_monitor_crd = ctx.pod_monitor_crd.exists(client).await?;
    let environment = Environment {
        default_image: ctx.default_image.clone(),
        pod_monitor_crd,
    };
    let autoscaler = autoscale_once(ctx, pd, partitions).await;
    let decision = autoscale::decided(&pd.spec, autoscaler.as_ref());
    let sizing = size(&pd.spec, partitions, decision)?;
    let children = build(pd, &sizing, &environment)?;
    apply(
        &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        &children.config_map.name_any(),
        &children.config_map,
    )
    .await?;
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    for service in [&children.headless_service, &children.metrics_service] {
        apply(&services, &service.name_any(), service).await?;
    }
    let applied = apply(
        &Api::<StatefulSet>::namespaced(client.clone(), &namespace),
        &name,
        &children.stateful_set,
    )
    .await?;
    if let Some(pdb) = &children.pod_disruption_budget {
        apply(
            &Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace),
            &name,
            pdb,
        )
        .await?;
    }
    if let Some(monitor) = &children.pod_monitor {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &namespace, &prune::pod_monitor_resource());
        let object: DynamicObject =
            serde_json::from_value(monitor.clone()).expect("a PodMonitor is a dynamic object");
        if let Err(error) = apply(&api, &name, &object).await {
            if matches!(&error, kube::Error::Api(e) if e.code == 404) {
                // The Prometheus Operator went away: ask again on the retry.
                ctx.pod_monitor_crd.forget();
            }
            return Err(error.into());
        }
    }
    prune::delete_unwanted(
        client,
        &namespace,
        &name,
        &pd.uid().unwrap_or_default(),
        &children.wanted(),
        pod_monitor_crd,
    )
    .await?;
    let ready_replicas = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let requeue = autoscale::enabled(&pd.spec).map_or(Duration::from_secs(60), |a| {
        a.interval
            .get()
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    });
    let outcome = Outcome::Applied {
        sizing,
        partitions,
        ready_replicas,
        autoscaler: autoscaler.map(Box::new),
    };
    report(ctx, pd, &outcome).await?;
    Ok((Action::requeue(requeue), "applied"))
}

/// The autoscaler's status after this reconcile: a new evaluation when one is due for a running
/// pipeline, the previous one otherwise, none when the autoscaler is off.
async fn autoscale_once(
    ctx: &Context,
    pd: &PipelineDeployment,
    partitions: i32,
) -> Option<pipeline_crds::status::AutoscalerStatus> {
    let name = pd.name_any();
    let namespace = pd.namespace().unwrap_or_default();
    let Some(spec) = autoscale::enabled(&pd.spec) else {
        ctx.metrics.forget_autoscaler(&namespace, &name);
        return None;
    };
    let previous = pd.status.as_ref().and_then(|s| s.autoscaler.as_ref());
    let running = pd
        .status
        .as_ref()
        .and_then(|s| s.parallelism)
        .filter(|p| *p > 0);
    let now = (ctx.clock)();
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
    let status = match ctx.metrics_sources.source(&spec.metrics) {
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
    info!(%name, %namespace, result = status.result.as_deref().unwrap_or(""), reason = status.reason.as_deref().unwrap_or(""), "autoscaler evaluated");
    ctx.metrics
        .autoscaled(&namespace, &name, &status, parallelism);
    Some(status)
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

/// How `run` behaves.
pub struct Settings {
    /// Runtime image when a manifest sets none.
    pub default_image: String,
    /// This replica's name (its pod name), in Events and as its Lease identity.
    pub instance: String,
    /// Leader election; `None` = reconcile at once (a single replica, or local development).
    pub lease: Option<crate::leader::LeaseSettings>,
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

/// Resolves on SIGTERM or Ctrl-C.
async fn signal() {
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
        PodMonitorCrd::detect(),
        partitions,
        settings.instance,
    ));
    info!("operator reconciling");
    // Children carry the managed-by label: watch only those, not every ConfigMap in the cluster.
    let children = watcher::Config::default().labels(&crate::build::managed_selector());
    Controller::new(
        Api::<PipelineDeployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<PodDisruptionBudget>::all(client), children)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
            Err(error) => warn!(%error, "reconcile error"),
        }
    })
    .await;
    metrics.set_leader(false);
    if let Some(election) = election {
        election.leave().await;
    }
    if lost_flag.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RunError::LeadershipLost);
    }
    Ok(())
}

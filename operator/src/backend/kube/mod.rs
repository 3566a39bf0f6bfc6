//! The Kubernetes backend: the desired deployment as a ConfigMap, two Services, a StatefulSet, a
//! PodDisruptionBudget and a PodMonitor, applied server-side under one field manager in that
//! order; children no longer wanted are deleted; status goes to the status subresource and
//! changes become Events.

pub mod children;
pub mod cleanup_job;
pub mod configmap;
pub mod deletion;
pub mod names;
pub mod ownership;
pub mod pdb;
pub mod podmonitor;
pub mod prune;
pub mod rbac;
pub mod services;
pub mod statefulset;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Pod, Service},
        policy::v1::PodDisruptionBudget,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
};
use pipeline_crds::{PipelineDeployment, PipelineDeploymentStatus};
use serde_json::json;

use self::children::{Children, Environment, build};
use super::{Applied, Backend, BackendError};
use crate::{
    autoscale::source::{Endpoints, EndpointsError, Target},
    desired::Desired,
    events,
    kafka::{self, KafkaAccess},
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
    ) -> BoxFuture<'a, Result<Vec<String>, EndpointsError>> {
        Box::pin(async move {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &target.namespace);
            let selector = names::selector_labels(&target.name)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let list = pods
                .list(&kube::api::ListParams::default().labels(&selector))
                .await
                .map_err(EndpointsError::ListingPods)?;
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

/// Applies `object` server-side under [`FIELD_MANAGER`].
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

/// Pipelines as Kubernetes objects.
pub struct KubeBackend {
    /// The API client.
    pub client: Client,
    /// Runtime image when `spec.image` is absent.
    pub default_image: String,
    /// Whether PodMonitors can be created.
    pub pod_monitor_crd: PodMonitorCrd,
    /// This operator replica (its pod name), for Events.
    pub instance: String,
    /// Installation-wide defaults and allowed images.
    pub install: crate::install::Install,
    /// Children known to be owned by their pipeline (read before their first apply).
    pub owned_children: ownership::OwnedChildren,
}

impl KubeBackend {
    /// Fails with [`BackendError::NameConflict`] when any child's name is taken by an object the
    /// pipeline `uid` does not control: nothing is applied then ([`ownership`]).
    async fn check_ownership(
        &self,
        children: &Children,
        namespace: &str,
        uid: &str,
        pod_monitor_crd: bool,
    ) -> Result<(), BackendError> {
        let wanted = children.wanted();
        for kind in prune::managed_kinds(pod_monitor_crd) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &kind);
            for (kind, name) in wanted.iter().filter(|(k, _)| *k == kind.kind) {
                self.owned_children.check(&api, kind, name, uid).await?;
            }
        }
        Ok(())
    }

    async fn apply_children(&self, desired: &Desired) -> Result<Applied, BackendError> {
        let pd = desired.pipeline.resource();
        let client = &self.client;
        let namespace = &desired.namespace;
        let name = &desired.name;
        let pod_monitor_crd = self.pod_monitor_crd.exists(client).await?;
        let environment = Environment {
            default_image: self.default_image.clone(),
            image_pull_policy: self.install.runtime_image_pull_policy.clone(),
            disruption_budget: self.install.runtime_disruption_budget.clone(),
            pod_monitor_crd,
        };
        let children = build(desired, &environment)?;
        let uid = pd.uid().unwrap_or_default();
        self.check_ownership(&children, namespace, &uid, pod_monitor_crd)
            .await?;
        apply(
            &Api::<ConfigMap>::namespaced(client.clone(), namespace),
            &children.config_map.name_any(),
            &children.config_map,
        )
        .await?;
        let services = Api::<Service>::namespaced(client.clone(), namespace);
        for service in [&children.headless_service, &children.metrics_service] {
            apply(&services, &service.name_any(), service).await?;
        }
        let applied = apply(
            &Api::<StatefulSet>::namespaced(client.clone(), namespace),
            name,
            &children.stateful_set,
        )
        .await?;
        if let Some(pdb) = &children.pod_disruption_budget {
            apply(
                &Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace),
                name,
                pdb,
            )
            .await?;
        }
        if let Some(monitor) = &children.pod_monitor {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &prune::pod_monitor_resource());
            let object: DynamicObject =
                serde_json::from_value(monitor.clone()).expect("a PodMonitor is a dynamic object");
            if let Err(error) = apply(&api, name, &object).await {
                if matches!(&error, kube::Error::Api(e) if e.code == 404) {
                    // The Prometheus Operator went away: ask again on the retry.
                    self.pod_monitor_crd.forget();
                }
                return Err(error.into());
            }
        }
        self.owned_children.remember(&uid, &children.wanted());
        prune::delete_unwanted(
            client,
            namespace,
            name,
            &uid,
            &children.wanted(),
            pod_monitor_crd,
        )
        .await?;
        Ok(Applied {
            ready_pods: applied
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        })
    }
}

/// In a cluster: the runtime images the installation allows, and no local directory for
/// checkpoints.
impl pipeline_crds::valid::InstallationRules for KubeBackend {
    fn problems(&self, pd: &PipelineDeployment) -> Vec<pipeline_crds::validate::FieldError> {
        use pipeline_crds::validate::FieldError;
        let mut problems = Vec::new();
        let image = pd.spec.image.as_deref().unwrap_or(&self.default_image);
        if !self.install.image_allowed(image) {
            problems.push(FieldError {
                path: "spec.image".into(),
                message: format!(
                    "{image} is not among the runtime images this installation allows ({})",
                    self.install.allowed_images.join(", ")
                ),
            });
        }
        if pd
            .spec
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.storage.local.is_some())
        {
            problems.push(FieldError {
                path: "spec.checkpoint.storage.local".into(),
                message: "a local directory is for local mode only; runtime pods have a read-only root file system and no shared disk (use s3 or volume)".into(),
            });
        }
        problems
    }
}

impl Backend for KubeBackend {
    fn kafka_access<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<KafkaAccess, kafka::CredentialsError>> {
        Box::pin(async move {
            let namespace = pd.namespace().unwrap_or_default();
            kafka::access(&self.client, &namespace, &pd.spec).await
        })
    }

    fn apply<'a>(&'a self, desired: &'a Desired) -> BoxFuture<'a, Result<Applied, BackendError>> {
        Box::pin(self.apply_children(desired))
    }

    fn rules(&self) -> &dyn pipeline_crds::valid::InstallationRules {
        self
    }

    fn report<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
        status: &'a PipelineDeploymentStatus,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let namespace = pd.namespace().unwrap_or_default();
            let api: Api<PipelineDeployment> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": "PipelineDeployment",
                "status": status,
            });
            api.patch_status(
                &pd.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
            let announcements = events::announcements(pd.status.as_ref(), status);
            events::publish(&self.client, &self.instance, pd, &announcements).await;
            Ok(())
        })
    }

    fn announce<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
        announcements: &'a [events::Announcement],
    ) -> BoxFuture<'a, ()> {
        Box::pin(events::publish(
            &self.client,
            &self.instance,
            pd,
            announcements,
        ))
    }

    fn deletion(&self) -> Option<&dyn crate::cleanup::Deletion> {
        Some(self)
    }
}

//! [`Deletion`] in the cluster: the finalizer on the PipelineDeployment, the StatefulSet deleted
//! and its pods waited for, and the cleanup Job ([`super::cleanup_job`]) started and followed.

use futures::future::BoxFuture;
use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use pipeline_crds::{PipelineDeployment, valid::validate_pipeline};
use serde_json::json;

use super::{
    FIELD_MANAGER, KubeBackend,
    children::Environment,
    cleanup_job::{cleanup_job, cleanup_job_name, job_of},
    names::selector_labels,
    ownership::controlled_by,
};
use crate::{
    backend::BackendError,
    cleanup::{Deletion, FINALIZER, JobProgress},
    desired::desired,
    sizing::size,
};

impl KubeBackend {
    async fn patch_finalizers(
        &self,
        pd: &PipelineDeployment,
        present: bool,
    ) -> Result<(), BackendError> {
        let namespace = pd.namespace().unwrap_or_default();
        let api: Api<PipelineDeployment> = Api::namespaced(self.client.clone(), &namespace);
        let mut finalizers: Vec<&str> = pd
            .finalizers()
            .iter()
            .map(String::as_str)
            .filter(|f| *f != FINALIZER)
            .collect();
        if present {
            finalizers.push(FINALIZER);
        }
        let mut metadata = json!({"finalizers": finalizers});
        // Another writer's change in between fails the patch (409) instead of being lost.
        if let Some(version) = pd.resource_version() {
            metadata["resourceVersion"] = json!(version);
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(
            &pd.name_any(),
            &params,
            &Patch::Merge(json!({"metadata": metadata})),
        )
        .await?;
        Ok(())
    }

    async fn stop_pods(&self, pd: &PipelineDeployment) -> Result<usize, BackendError> {
        let namespace = pd.namespace().unwrap_or_default();
        let name = pd.name_any();
        let uid = pd.uid().unwrap_or_default();
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(set) = sets.get_opt(&name).await?
            && controlled_by(&set, &uid)
            && set.metadata.deletion_timestamp.is_none()
        {
            sets.delete(&name, &DeleteParams::background()).await?;
        }
        let selector = selector_labels(&name)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let left = pods.list(&ListParams::default().labels(&selector)).await?;
        Ok(left.items.len())
    }

    /// Creates the cleanup Job, sized as one pod of the pipeline at its last known partition
    /// count.
    async fn start_cleanup_job(
        &self,
        pd: &PipelineDeployment,
    ) -> Result<JobProgress, BackendError> {
        let namespace = pd.namespace().unwrap_or_default();
        let name = cleanup_job_name(&pd.name_any());
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let partitions = pd
            .status
            .as_ref()
            .and_then(|s| s.partitions)
            .unwrap_or(1)
            .max(1);
        let sizing = size(&pd.spec, partitions, Some(1))?;
        let environment = Environment {
            default_image: self.default_image.clone(),
            image_pull_policy: self.install.runtime_image_pull_policy.clone(),
            disruption_budget: self.install.runtime_disruption_budget.clone(),
            pod_monitor_crd: false,
        };
        let valid =
            validate_pipeline(pd, self).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let job = cleanup_job(&desired(&valid, &sizing), &environment);
        jobs.create(&PostParams::default(), &job).await?;
        Ok(JobProgress::Started(name))
    }

    /// Where the cleanup Job is (deleting it once it succeeded); `None` when there is none.
    async fn find_cleanup_job(
        &self,
        pd: &PipelineDeployment,
    ) -> Result<Option<JobProgress>, BackendError> {
        let namespace = pd.namespace().unwrap_or_default();
        let uid = pd.uid().unwrap_or_default();
        let name = cleanup_job_name(&pd.name_any());
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let Some(job) = jobs.get_opt(&name).await? else {
            return Ok(None);
        };
        if !job_of(&job, &uid) {
            return Err(BackendError::NameConflict {
                kind: "Job",
                name,
                owner: None,
            });
        }
        let status = job.status.unwrap_or_default();
        let failed = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True");
        Ok(Some(if status.succeeded.unwrap_or(0) > 0 {
            jobs.delete(&name, &DeleteParams::background()).await?;
            JobProgress::Done(name)
        } else if failed {
            JobProgress::Failed(name)
        } else {
            JobProgress::Running(name)
        }))
    }
}

impl Deletion for KubeBackend {
    fn set_finalizer<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
        present: bool,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.patch_finalizers(pd, present))
    }

    fn stop_runtime<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(self.stop_pods(pd))
    }

    fn checkpoint_job<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<Option<JobProgress>, BackendError>> {
        Box::pin(self.find_cleanup_job(pd))
    }

    fn start_checkpoint_job<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<JobProgress, BackendError>> {
        Box::pin(self.start_cleanup_job(pd))
    }
}

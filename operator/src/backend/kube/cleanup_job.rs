//! The cleanup Job of `deletionPolicy: delete` (pure): one pod that runs `pipeline-runtime
//! cleanup` with the runtime pods' image, ServiceAccount, Secrets and checkpoint volume, so it
//! reaches the checkpoint storage as the pipeline itself does ([`crate::cleanup`]).
//!
//! It differs from a runtime pod in what a deletion may already have removed or must not see:
//! - the manifest comes in an environment variable, not from the runtime ConfigMap;
//! - no owner reference (a foreground deletion would remove the Job before it ran): the
//!   pipeline's uid is an annotation, which the operator checks before it trusts the Job, and
//!   the operator deletes the Job when it has succeeded (`ttlSecondsAfterFinished` removes one
//!   left behind);
//! - its pod lacks the `sluice.dev/pipeline` label, so the StatefulSet, the Services and the
//!   disruption budget never select it, while the runtime NetworkPolicy (by
//!   `app.kubernetes.io/name`) still lets it reach the storage.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::batch::v1::{Job, JobSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use pipeline_crds::contract::{annotations, env, labels, paths};

use super::{children::Environment, statefulset::pod_template};
use crate::desired::Desired;

/// Tries of the cleanup pod before the Job counts as failed.
const BACKOFF_LIMIT: i32 = 3;
/// The longest a cleanup Job runs.
const ACTIVE_DEADLINE_SECONDS: i64 = 600;
/// How long a finished Job the operator did not delete is kept (for `kubectl logs`).
const TTL_SECONDS_AFTER_FINISHED: i32 = 86_400;

/// Name of the cleanup Job.
pub fn cleanup_job_name(pipeline: &str) -> String {
    format!("{pipeline}-cleanup")
}

/// The labels of the cleanup Job and its pod.
fn cleanup_labels(pipeline: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), labels::NAME_RUNTIME.to_owned()),
        (labels::INSTANCE.to_owned(), pipeline.to_owned()),
        (
            labels::COMPONENT.to_owned(),
            labels::COMPONENT_CLEANUP.to_owned(),
        ),
        (
            labels::PART_OF.to_owned(),
            labels::PART_OF_SLUICE.to_owned(),
        ),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_OPERATOR.to_owned(),
        ),
    ])
}

/// Whether `job` was created for the pipeline `uid`.
pub fn job_of(job: &Job, uid: &str) -> bool {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::PIPELINE_UID))
        .is_some_and(|u| u == uid)
}

/// The cleanup Job of the pipeline `desired` would run.
pub fn cleanup_job(desired: &Desired, environment: &Environment) -> Job {
    let name = &desired.name;
    let pd = desired.pipeline.resource();
    let mut template = pod_template(desired, environment);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels = Some(cleanup_labels(name));
    meta.annotations = None;
    let spec = template.spec.as_mut().expect("a pod template has a spec");
    spec.restart_policy = Some("Never".into());
    spec.termination_grace_period_seconds = Some(30);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .retain(|v| v.config_map.is_none());
    let container = &mut spec.containers[0];
    container.name = "cleanup".into();
    container.args = Some(vec!["cleanup".into()]);
    container.ports = None;
    container.liveness_probe = None;
    container.readiness_probe = None;
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .retain(|m| m.mount_path != paths::CONFIG_DIR);
    let variables = container.env.get_or_insert_with(Vec::new);
    variables.retain(|v| v.name != env::CONFIG && v.name != env::SCALE_FILE);
    variables.push(k8s_openapi::api::core::v1::EnvVar {
        name: env::MANIFEST.into(),
        value: Some(desired.config.clone()),
        ..Default::default()
    });
    Job {
        metadata: ObjectMeta {
            name: Some(cleanup_job_name(name)),
            namespace: Some(desired.namespace.clone()),
            labels: Some(cleanup_labels(name)),
            annotations: Some(BTreeMap::from([(
                annotations::PIPELINE_UID.to_owned(),
                pd.metadata.uid.clone().unwrap_or_default(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
            template,
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::*;
    use crate::{desired::desired, sizing::size};

    fn job(extra: &str) -> (Job, Desired) {
        let mut pd = from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n  deletionPolicy: delete\n{extra}"),
            "t",
        )
        .unwrap();
        pd.metadata.uid = Some("u-1".into());
        let valid =
            pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
                .unwrap();
        let d = desired(&valid, &size(&pd.spec, 4, None).unwrap());
        let environment = Environment {
            default_image: "img:1".into(),
            image_pull_policy: None,
            disruption_budget: Default::default(),
            pod_monitor_crd: false,
        };
        (cleanup_job(&d, &environment), d)
    }

    #[test]
    fn the_cleanup_job_runs_as_the_pipeline_with_its_manifest_and_no_configmap() {
        let (job, d) = job(
            "  checkpoint: {storage: {s3: {bucket: bucket-b, credentialsSecret: {name: s3}}}}\n  podTemplate: {serviceAccountName: pipeline-sa}\n",
        );
        assert!(job_of(&job, "u-1") && !job_of(&job, "u-2"));
        assert!(job.metadata.owner_references.is_none());
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("pipeline-sa"));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let container = &pod.containers[0];
        assert_eq!(container.args.as_deref(), Some(&["cleanup".to_owned()][..]));
        assert_eq!(container.image.as_deref(), Some("img:1"));
        let variables = container.env.as_ref().unwrap();
        let manifest = variables.iter().find(|v| v.name == env::MANIFEST).unwrap();
        assert_eq!(manifest.value.as_deref(), Some(d.config.as_str()));
        assert!(
            variables.iter().any(|v| v.name == env::S3_ACCESS_KEY_ID
                && v.value_from
                    .as_ref()
                    .unwrap()
                    .secret_key_ref
                    .as_ref()
                    .unwrap()
                    .name
                    == "s3"),
            "the storage credentials, by Secret reference"
        );
        assert!(variables.iter().all(|v| v.name != env::CONFIG));
        assert!(
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.config_map.is_none())
        );
    }

    #[test]
    fn the_cleanup_pod_is_never_selected_as_a_runtime_pod() {
        let (job, _) = job("");
        let pod_labels = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        let runtime = super::super::names::selector_labels("p");
        assert!(
            runtime.iter().any(|(k, v)| pod_labels.get(k) != Some(v)),
            "{pod_labels:?} matches the runtime selector {runtime:?}"
        );
        assert_eq!(
            pod_labels[labels::NAME],
            labels::NAME_RUNTIME,
            "the runtime NetworkPolicy applies"
        );
    }
}

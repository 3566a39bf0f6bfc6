//! The desired deployment (pure): what every backend receives after validate → sizing →
//! autoscaler. It names no Kubernetes object: the Kubernetes backend turns it into a ConfigMap,
//! Services and a StatefulSet; the local backend into runtime processes on this machine.

use std::collections::BTreeMap;

use pipeline_crds::{
    PipelineDeployment,
    contract::{Scale, env},
    valid::ValidPipeline,
};
use serde_json::json;

use crate::sizing::Sizing;

/// Why a desired deployment cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource lacks a name, namespace or uid.
    #[error("the PipelineDeployment has no {0}")]
    Metadata(&'static str),
}

/// What one pod (or local process) is given.
#[derive(Clone, Debug, PartialEq)]
pub struct PodResources {
    /// CPU request, millicores.
    pub cpu_request_millis: i64,
    /// CPU limit, millicores; `None` = no limit.
    pub cpu_limit_millis: Option<i64>,
    /// Memory request and limit, bytes.
    pub memory_bytes: i64,
}

/// One pipeline as it should run, whatever runs it: the whole input of a backend's apply.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The validated pipeline it was built from (what a backend reads of the spec: Secrets,
    /// TLS, the checkpoint volume, the image, the pod overrides).
    pub pipeline: ValidPipeline,
    /// The pipeline's name.
    pub name: String,
    /// The pipeline's namespace.
    pub namespace: String,
    /// The manifest the runtime executes ([`runtime_config`]).
    pub config: String,
    /// A hash of `config`: a pod (process) runs with one config; a new hash replaces it.
    pub config_hash: String,
    /// The slot count of the whole pipeline and its pods, as the runtime's scale file holds it.
    /// Changing it starts or stops slots inside running pods; it restarts none.
    pub scale: Scale,
    /// Pods (processes) to run: 0 while suspended.
    pub replicas: i32,
    /// Per pod.
    pub resources: PodResources,
    /// Seconds a pod gets to stop: its final checkpoint, with room for a slow store.
    pub grace_seconds: i64,
    /// Environment every runtime process gets, whatever the backend (the backend adds the pod's
    /// own identity, config and scale file locations).
    pub env: BTreeMap<String, String>,
}

impl Desired {
    /// Slots of pod `ordinal` under [`Self::scale`].
    pub fn slots_of(&self, ordinal: i32) -> i32 {
        self.scale.slots_of(Some(ordinal)).unwrap_or(0)
    }
}

/// The seconds a pod gets to stop: its final checkpoint, with room for a slow store.
pub fn termination_grace_seconds(pd: &PipelineDeployment) -> i64 {
    let interval = pd
        .spec
        .checkpoint
        .as_ref()
        .map_or(10, |c| c.interval.as_millis().div_ceil(1000));
    i64::try_from(interval * 2 + 30).unwrap_or(i64::MAX).max(60)
}

/// The manifest the runtime executes: the resource without status and server-set metadata, and
/// without what only the operator reads (`parallelism`, `autoscaler`: the slot count reaches the
/// pods through the scale file; `deletionPolicy`), so that scaling changes neither the config nor
/// its hash and rolls no pod.
pub fn runtime_config(pd: &PipelineDeployment, name: &str, namespace: &str) -> String {
    let mut spec = pd.spec.clone();
    spec.parallelism = None;
    spec.autoscaler = None;
    spec.deletion_policy = pipeline_crds::DeletionPolicy::default();
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "PipelineDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    serde_norway::to_string(&manifest).expect("a spec serializes")
}

/// The desired deployment of `pipeline`, sized by `sizing`.
pub fn desired(pipeline: &ValidPipeline, sizing: &Sizing) -> Desired {
    let pd = pipeline.resource();
    let (name, namespace) = (pipeline.name().to_owned(), pipeline.namespace().to_owned());
    let config = runtime_config(pd, &name, &namespace);
    let config_hash = format!("{:08x}", crc32fast::hash(config.as_bytes()));
    let mut env: BTreeMap<String, String> = pd
        .spec
        .pod_template
        .iter()
        .flat_map(|t| &t.env)
        .filter(|e| pipeline_crds::pod_template::user_may_set_env(&e.name))
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    env.insert(env::PIPELINE.to_owned(), name.clone());
    env.insert(env::NAMESPACE.to_owned(), namespace.clone());
    Desired {
        pipeline: pipeline.clone(),
        config,
        config_hash,
        scale: Scale::pipeline(sizing.parallelism, sizing.replicas),
        replicas: if pd.spec.suspend { 0 } else { sizing.replicas },
        resources: PodResources {
            cpu_request_millis: sizing.cpu_request_millis,
            cpu_limit_millis: sizing.cpu_limit_millis,
            memory_bytes: sizing.memory_bytes,
        },
        grace_seconds: termination_grace_seconds(pd),
        env,
        name,
        namespace,
    }
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::*;
    use crate::sizing::size;

    fn unchecked(extra: &str) -> PipelineDeployment {
        from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
            "t",
        )
        .unwrap()
    }

    fn pd(extra: &str) -> ValidPipeline {
        pipeline_crds::valid::validate_pipeline(
            &unchecked(extra),
            &pipeline_crds::valid::AnyInstallation,
        )
        .unwrap()
    }

    #[test]
    fn pod_template_env_reaches_every_backend_but_never_overrides_the_operators_own() {
        // An override of the operator's own is refused by validation, so no valid pipeline
        // carries one to here.
        let overriding = unchecked(
            "  podTemplate:\n    env: [{name: SLUICE_SIMULATED_RECORD_COST, value: 200us}, {name: SLUICE_PIPELINE, value: other}]\n",
        );
        assert!(
            pipeline_crds::valid::validate_pipeline(
                &overriding,
                &pipeline_crds::valid::AnyInstallation
            )
            .is_err()
        );
        let p =
            pd("  podTemplate:\n    env: [{name: SLUICE_SIMULATED_RECORD_COST, value: 200us}]\n");
        let d = desired(&p, &size(p.spec(), 4, None).unwrap());
        assert_eq!(d.env["SLUICE_SIMULATED_RECORD_COST"], "200us");
        assert_eq!(d.env["SLUICE_PIPELINE"], "p");
    }

    #[test]
    fn scaling_changes_the_scale_but_not_the_config_and_suspend_wants_no_pods() {
        let p = pd("  parallelism: 2\n");
        let two = desired(&p, &size(p.spec(), 12, None).unwrap());
        let six = desired(&p, &size(p.spec(), 12, Some(6)).unwrap());
        assert_eq!(
            (two.config_hash.clone(), two.config.clone()),
            (six.config_hash.clone(), six.config.clone())
        );
        assert_ne!(two.scale, six.scale);
        let slots: i32 = (0..six.replicas).map(|o| six.slots_of(o)).sum();
        assert_eq!(slots, 6);
        let s = pd("  suspend: true\n");
        assert_eq!(desired(&s, &size(s.spec(), 8, None).unwrap()).replicas, 0);
    }

    #[test]
    fn a_changed_spec_changes_the_config_hash() {
        let a = pd("");
        let b = pd("  transform: {filter: 'record.x > 1'}\n");
        let hash = |p: &ValidPipeline| desired(p, &size(p.spec(), 8, None).unwrap()).config_hash;
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&pd("")));
    }
}

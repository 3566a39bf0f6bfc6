//! What one installation sets for all of its pipelines: the operator's `--default-*` and
//! `--allowed-image` flags, which the Helm chart fills from its values. Defaults fill what a
//! PipelineDeployment leaves out (never override what it sets); the checks refuse, as an invalid
//! spec, what this cluster must not run.

use pipeline_crds::{
    PipelineDeployment,
    autoscaler::PrometheusSource,
    checkpoint::{CheckpointSpec, CheckpointStorage, S3Storage},
    pod_template::PodTemplateOverrides,
};

/// Installation-wide defaults and limits.
#[derive(Clone, Debug, Default)]
pub struct Install {
    /// The autoscaler's Prometheus when `spec.autoscaler.metrics` names no source.
    pub default_prometheus_url: Option<String>,
    /// Checkpoint storage for pipelines without `spec.checkpoint` (prefix `<namespace>/<name>`).
    pub default_checkpoint: Option<S3Storage>,
    /// The ServiceAccount of runtime pods whose `spec.podTemplate.serviceAccountName` is unset
    /// (the chart's `runtime.serviceAccount`, annotated for IRSA so the default S3 checkpoints
    /// have an identity).
    pub default_service_account: Option<DefaultServiceAccount>,
    /// The runtime pods' `imagePullPolicy` (the chart's `runtime.image.pullPolicy`); `None`:
    /// Kubernetes' default (`Always` for `:latest`, else `IfNotPresent`).
    pub runtime_image_pull_policy: Option<String>,
    /// The runtime pods' disruption budget (the chart's `runtime.podDisruptionBudget`).
    pub runtime_disruption_budget: crate::backend::kube::pdb::DisruptionBudget,
    /// Pod settings for every pipeline that sets none of its own (the chart's
    /// `runtime.podDefaults`): node selector, tolerations, image pull Secrets, priority class.
    /// Each field is taken only when the pipeline's is empty.
    pub runtime_pod_defaults: Option<PodTemplateOverrides>,
    /// Runtime images pipelines may use, as repositories (`ghcr.io/sluice-dev/pipeline-runtime`,
    /// any tag or digest) or prefixes ending in `/` (`123456789012.dkr.ecr.eu-west-1.amazonaws.com/`).
    /// Empty = any image.
    pub allowed_images: Vec<String>,
}

/// A ServiceAccount that exists in some namespaces (the chart creates it there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultServiceAccount {
    /// Its name.
    pub name: String,
    /// The namespaces it exists in; empty = every namespace. Pipelines elsewhere keep the
    /// namespace's `default` account (a name that does not exist would stop their pods from
    /// being created).
    pub namespaces: Vec<String>,
}

impl DefaultServiceAccount {
    /// The account for a pipeline in `namespace`, if it exists there.
    fn for_namespace(&self, namespace: &str) -> Option<&str> {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace))
            .then_some(self.name.as_str())
    }
}

impl Install {
    /// `pd` with this installation's defaults filled in.
    pub fn with_defaults(&self, pd: &PipelineDeployment) -> PipelineDeployment {
        let mut pd = pd.clone();
        if let (Some(url), Some(autoscaler)) =
            (&self.default_prometheus_url, pd.spec.autoscaler.as_mut())
        {
            let metrics = &mut autoscaler.metrics;
            if metrics.prometheus.is_none() && metrics.direct.is_none() {
                metrics.prometheus = Some(PrometheusSource { url: url.clone() });
            }
        }
        let namespace = pd.metadata.namespace.clone().unwrap_or_default();
        if let Some(account) = self
            .default_service_account
            .as_ref()
            .and_then(|a| a.for_namespace(&namespace))
        {
            let overrides = pd.spec.pod_template.get_or_insert_with(Default::default);
            if overrides.service_account_name.is_none() {
                overrides.service_account_name = Some(account.to_owned());
            }
        }
        if let Some(defaults) = &self.runtime_pod_defaults {
            fill_pod_defaults(
                pd.spec.pod_template.get_or_insert_with(Default::default),
                defaults,
            );
        }
        if let (Some(s3), None) = (&self.default_checkpoint, &pd.spec.checkpoint) {
            pd.spec.checkpoint = Some(CheckpointSpec::with_storage(CheckpointStorage {
                s3: Some(s3.clone()),
                volume: None,
                local: None,
            }));
        }
        pd
    }

    /// Whether `image` is one this installation allows.
    pub fn image_allowed(&self, image: &str) -> bool {
        self.allowed_images.is_empty()
            || self.allowed_images.iter().any(|allowed| {
                if allowed.ends_with('/') {
                    image.starts_with(allowed.as_str())
                } else {
                    image == allowed
                        || image
                            .strip_prefix(allowed.as_str())
                            .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
                }
            })
    }
}

/// `overrides` with each of `defaults`' scheduling fields it leaves empty.
fn fill_pod_defaults(overrides: &mut PodTemplateOverrides, defaults: &PodTemplateOverrides) {
    if overrides.node_selector.is_empty() {
        overrides.node_selector.clone_from(&defaults.node_selector);
    }
    if overrides.tolerations.is_empty() {
        overrides.tolerations.clone_from(&defaults.tolerations);
    }
    if overrides.image_pull_secrets.is_empty() {
        overrides
            .image_pull_secrets
            .clone_from(&defaults.image_pull_secrets);
    }
    if overrides.priority_class_name.is_none() {
        overrides
            .priority_class_name
            .clone_from(&defaults.priority_class_name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_crds::manifest::from_yaml;

    fn pd(extra: &str) -> PipelineDeployment {
        from_yaml(
            &format!(
                "apiVersion: sluice.dev/v1alpha1
kind: PipelineDeployment
metadata: {{name: p, namespace: ns}}
spec:
  kafka: {{bootstrapServers: 'k:9092'}}
  source: {{topic: in}}
  sink: {{kafka: {{topic: out}}}}
{extra}"
            ),
            "test",
        )
        .unwrap()
    }

    fn install() -> Install {
        Install {
            default_prometheus_url: Some("http://prometheus:9090".into()),
            default_checkpoint: Some(S3Storage {
                bucket: "checkpoints".into(),
                prefix: None,
                region: Some("eu-west-1".into()),
                endpoint: None,
                credentials_secret: None,
            }),
            default_service_account: Some(DefaultServiceAccount {
                name: "sluice-runtime".into(),
                namespaces: vec!["ns".into()],
            }),
            runtime_image_pull_policy: None,
            runtime_disruption_budget: Default::default(),
            runtime_pod_defaults: Some(
                serde_json::from_value(serde_json::json!({
                    "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"},
                    "tolerations": [{"key": "streaming", "operator": "Exists"}],
                    "priorityClassName": "streaming",
                }))
                .unwrap(),
            ),
            allowed_images: vec![
                "ghcr.io/sluice-dev/pipeline-runtime".into(),
                "123.dkr.ecr.eu-west-1.amazonaws.com/".into(),
            ],
        }
    }

    #[test]
    fn defaults_fill_only_what_the_pipeline_leaves_out() {
        let filled = install().with_defaults(&pd("  autoscaler: {enabled: true}"));
        let autoscaler = filled.spec.autoscaler.unwrap();
        assert_eq!(
            autoscaler.metrics.prometheus.unwrap().url,
            "http://prometheus:9090"
        );
        let checkpoint = filled.spec.checkpoint.unwrap();
        assert_eq!(checkpoint.storage.s3.unwrap().bucket, "checkpoints");
        assert_eq!(
            filled
                .spec
                .pod_template
                .unwrap()
                .service_account_name
                .as_deref(),
            Some("sluice-runtime")
        );

        let own = pd("  autoscaler: {enabled: true, metrics: {direct: {}}}
  checkpoint: {storage: {volume: {claimName: efs}}}
  podTemplate:
    serviceAccountName: team-a
    nodeSelector: {pool: a}
    tolerations: [{key: a, operator: Exists}]
    imagePullSecrets: [{name: a}]
    priorityClassName: a");
        let kept = install().with_defaults(&own);
        assert_eq!(kept.spec, own.spec, "what the pipeline sets wins");
        assert!(
            install().with_defaults(&pd("")).spec.autoscaler.is_none(),
            "no autoscaler is switched on by a default"
        );
        let pods = install().with_defaults(&pd("")).spec.pod_template.unwrap();
        assert_eq!(
            pods.node_selector["karpenter.sh/capacity-type"],
            "on-demand"
        );
        assert_eq!(pods.tolerations.len(), 1);
        assert_eq!(pods.priority_class_name.as_deref(), Some("streaming"));
        let own = install().with_defaults(&pd(
            "  podTemplate: {nodeSelector: {pool: gpu}, priorityClassName: critical}",
        ));
        let own = own.spec.pod_template.unwrap();
        assert_eq!(
            (own.node_selector.len(), own.node_selector["pool"].as_str()),
            (1, "gpu")
        );
        assert_eq!(own.priority_class_name.as_deref(), Some("critical"));
        assert_eq!(
            own.tolerations.len(),
            1,
            "a field the pipeline leaves empty is filled"
        );
        let mut elsewhere = pd("");
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(
            install()
                .with_defaults(&elsewhere)
                .spec
                .pod_template
                .unwrap()
                .service_account_name,
            None,
            "the account is named only where it exists"
        );
    }

    #[test]
    fn allowed_images_match_whole_repositories_or_registry_prefixes() {
        let install = install();
        for ok in [
            "ghcr.io/sluice-dev/pipeline-runtime",
            "ghcr.io/sluice-dev/pipeline-runtime:0.1.0",
            "ghcr.io/sluice-dev/pipeline-runtime@sha256:abc",
            "123.dkr.ecr.eu-west-1.amazonaws.com/team/runtime:1",
        ] {
            assert!(install.image_allowed(ok), "{ok}");
        }
        for refused in [
            "ghcr.io/sluice-dev/pipeline-runtime-evil:1",
            "ghcr.io/attacker/pipeline-runtime:1",
            "123.dkr.ecr.eu-west-1.amazonaws.com.evil.io/x",
        ] {
            assert!(!install.image_allowed(refused), "{refused}");
        }
        assert!(Install::default().image_allowed("anything:1"));
    }
}

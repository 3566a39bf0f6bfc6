//! Build (pure): every object the operator wants for one PipelineDeployment, from the resource
//! and its sizing. No cluster access; `pipeline-operator render` prints the result.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
            PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
            SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use pipeline_crds::{
    PipelineDeployment,
    contract::{Scale, annotations, env, labels, paths, ports},
};
use serde_json::{Value, json};

use crate::sizing::Sizing;

/// Why objects cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The resource lacks a name, namespace or uid.
    #[error("the PipelineDeployment has no {0}")]
    Metadata(&'static str),
}

/// What the operator knows beyond the resource.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Runtime image when `spec.image` is absent.
    pub default_image: String,
    /// Whether the `monitoring.coreos.com/v1` PodMonitor kind exists in the cluster.
    pub pod_monitor_crd: bool,
}

/// Every child object, in apply order.
#[derive(Clone, Debug)]
pub struct Children {
    /// The runtime config (the manifest the runtime executes).
    pub config_map: ConfigMap,
    /// Headless Service giving the pods stable names.
    pub headless_service: Service,
    /// Service in front of the pods' metrics port.
    pub metrics_service: Service,
    /// The runtime pods.
    pub stateful_set: StatefulSet,
    /// At most one pod down at a time by voluntary disruption; none while suspended (no pods).
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// A Prometheus Operator PodMonitor, when that CRD exists (else scrape annotations).
    pub pod_monitor: Option<Value>,
}

impl Children {
    /// `(kind, name)` of every child, in apply order.
    pub fn wanted(&self) -> Vec<(&'static str, String)> {
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        let mut wanted = vec![
            ("ConfigMap", name(&self.config_map.metadata)),
            ("Service", name(&self.headless_service.metadata)),
            ("Service", name(&self.metrics_service.metadata)),
            ("StatefulSet", name(&self.stateful_set.metadata)),
        ];
        if let Some(pdb) = &self.pod_disruption_budget {
            wanted.push(("PodDisruptionBudget", name(&pdb.metadata)));
        }
        if let Some(monitor) = &self.pod_monitor {
            let name = monitor["metadata"]["name"].as_str().unwrap_or_default();
            wanted.push(("PodMonitor", name.to_owned()));
        }
        wanted
    }
}

/// The label every child of every pipeline carries; the controller watches children by it.
pub fn managed_selector() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_OPERATOR)
}

/// Labels on every child of `pipeline`; [`crate::prune`] lists children by them.
pub fn child_selector(pipeline: &str) -> String {
    format!("{}={pipeline},{}", labels::INSTANCE, managed_selector())
}

/// Name of the runtime ConfigMap.
pub fn config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-pipeline")
}

/// Name of the headless Service.
pub fn headless_service_name(pipeline: &str) -> String {
    format!("{pipeline}-pods")
}

/// Name of the metrics Service.
pub fn metrics_service_name(pipeline: &str) -> String {
    format!("{pipeline}-metrics")
}

/// Labels that select a pipeline's pods.
pub fn selector_labels(pipeline: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), labels::NAME_RUNTIME.to_owned()),
        (labels::PIPELINE.to_owned(), pipeline.to_owned()),
    ])
}

fn object_labels(pipeline: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(pipeline);
    l.insert(labels::INSTANCE.into(), pipeline.into());
    l.insert(labels::COMPONENT.into(), labels::COMPONENT_PIPELINE.into());
    l.insert(labels::PART_OF.into(), labels::PART_OF_SLUICE.into());
    l.insert(
        labels::MANAGED_BY.into(),
        labels::MANAGED_BY_OPERATOR.into(),
    );
    l
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
/// pods through the scale file), so that scaling changes neither the config nor its hash and
/// rolls no pod.
pub fn runtime_config(pd: &PipelineDeployment, name: &str, namespace: &str) -> String {
    let mut spec = pd.spec.clone();
    spec.parallelism = None;
    spec.autoscaler = None;
    let manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "PipelineDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    serde_yaml::to_string(&manifest).expect("a spec serializes")
}

/// Builds every child of `pd`, sized by `sizing`.
pub fn build(
    pd: &PipelineDeployment,
    sizing: &Sizing,
    environment: &Environment,
) -> Result<Children, BuildError> {
    let name = pd
        .metadata
        .name
        .clone()
        .ok_or(BuildError::Metadata("name"))?;
    let namespace = pd
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::Metadata("namespace"))?;
    let uid = pd.metadata.uid.clone().ok_or(BuildError::Metadata("uid"))?;
    let owner = OwnerReference {
        api_version: "sluice.dev/v1alpha1".into(),
        kind: "PipelineDeployment".into(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let meta = |object_name: String| ObjectMeta {
        name: Some(object_name),
        namespace: Some(namespace.clone()),
        labels: Some(object_labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let config = runtime_config(pd, &name, &namespace);
    let config_hash = format!("{:08x}", crc32fast::hash(config.as_bytes()));
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&name)),
        data: Some(BTreeMap::from([
            (paths::CONFIG_FILE.to_owned(), config),
            (
                paths::SCALE_FILE.to_owned(),
                serde_json::to_string(&Scale::pipeline(sizing.parallelism, sizing.replicas))
                    .expect("a scale serializes"),
            ),
        ])),
        ..ConfigMap::default()
    };
    let metrics_port = ServicePort {
        name: Some(ports::RUNTIME_METRICS_NAME.into()),
        port: i32::from(ports::RUNTIME_METRICS),
        target_port: Some(IntOrString::String(ports::RUNTIME_METRICS_NAME.into())),
        ..ServicePort::default()
    };
    let headless_service = Service {
        metadata: meta(headless_service_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![metrics_port.clone()]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let metrics_service = Service {
        metadata: meta(metrics_service_name(&name)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![metrics_port]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let stateful_set = StatefulSet {
        metadata: meta(name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(if pd.spec.suspend { 0 } else { sizing.replicas }),
            service_name: Some(headless_service_name(&name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            template: pod_template(pd, sizing, environment, &name, &config_hash),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let pod_disruption_budget = (!pd.spec.suspend).then(|| PodDisruptionBudget {
        metadata: meta(name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    });
    let pod_monitor = environment.pod_monitor_crd.then(|| {
        let metadata = serde_json::to_value(meta(name.clone())).expect("metadata serializes");
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": metadata,
            "spec": {
                "selector": {"matchLabels": selector_labels(&name)},
                "podMetricsEndpoints": [{"port": ports::RUNTIME_METRICS_NAME, "path": "/metrics", "interval": "15s"}],
            },
        })
    });
    Ok(Children {
        config_map,
        headless_service,
        metrics_service,
        stateful_set,
        pod_disruption_budget,
        pod_monitor,
    })
}

fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn pod_template(
    pd: &PipelineDeployment,
    sizing: &Sizing,
    environment: &Environment,
    name: &str,
    config_hash: &str,
) -> PodTemplateSpec {
    let spec = &pd.spec;
    let overrides = spec.pod_template.clone().unwrap_or_default();
    let mut env = vec![
        env_value(env::CONFIG, paths::CONFIG_PATH),
        env_value(env::PIPELINE, name),
        env_field(env::NAMESPACE, "metadata.namespace"),
        env_field(env::POD_NAME, "metadata.name"),
        env_value(env::SCALE_FILE, paths::SCALE_PATH),
        env_value(env::METRICS_PORT, ports::RUNTIME_METRICS.to_string()),
        env_value(env::LOG_FORMAT, "json"),
    ];
    if let Some(sasl) = &spec.kafka.sasl {
        let secret = &sasl.credentials_secret;
        env.push(env_secret(
            env::KAFKA_SASL_USERNAME,
            &secret.name,
            &secret.username_key,
        ));
        env.push(env_secret(
            env::KAFKA_SASL_PASSWORD,
            &secret.name,
            &secret.password_key,
        ));
    }
    let storage = spec.checkpoint.as_ref().map(|c| &c.storage);
    if let Some(secret) = storage
        .and_then(|s| s.s3.as_ref())
        .and_then(|s3| s3.credentials_secret.as_ref())
    {
        env.push(env_secret(
            env::S3_ACCESS_KEY_ID,
            &secret.name,
            &secret.username_key,
        ));
        env.push(env_secret(
            env::S3_SECRET_ACCESS_KEY,
            &secret.name,
            &secret.password_key,
        ));
    }
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: paths::CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "scratch".into(),
            mount_path: paths::SCRATCH_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(ca) = spec.kafka.tls.as_ref().and_then(|t| t.ca_secret.as_ref()) {
        mounts.push(VolumeMount {
            name: "kafka-ca".into(),
            mount_path: paths::KAFKA_CA_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "kafka-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if let Some(volume) = storage.and_then(|s| s.volume.as_ref()) {
        mounts.push(VolumeMount {
            name: "checkpoints".into(),
            mount_path: paths::CHECKPOINT_VOLUME_DIR.into(),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "checkpoints".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
    }
    let cpu = Quantity(format!("{}m", sizing.cpu_request_millis));
    let memory = Quantity(if sizing.memory_bytes % (1 << 20) == 0 {
        format!("{}Mi", sizing.memory_bytes >> 20)
    } else {
        sizing.memory_bytes.to_string()
    });
    let mut limits = BTreeMap::from([("memory".to_owned(), memory.clone())]);
    if let Some(limit) = sizing.cpu_limit_millis {
        limits.insert("cpu".into(), Quantity(format!("{limit}m")));
    }
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ports::RUNTIME_METRICS_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "runtime".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| environment.default_image.clone()),
        ),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ports::RUNTIME_METRICS_NAME.into()),
            container_port: i32::from(ports::RUNTIME_METRICS),
            ..ContainerPort::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), cpu),
                ("memory".to_owned(), memory),
            ])),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let mut annotations = overrides.annotations.clone();
    annotations.insert(annotations::CONFIG_HASH.into(), config_hash.into());
    if !environment.pod_monitor_crd {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert(
            "prometheus.io/port".into(),
            ports::RUNTIME_METRICS.to_string(),
        );
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(object_labels(name));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            termination_grace_period_seconds: Some(termination_grace_seconds(pd)),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65_532),
                run_as_group: Some(65_532),
                fs_group: Some(65_532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            service_account_name: overrides.service_account_name.clone(),
            node_selector: (!overrides.node_selector.is_empty())
                .then(|| overrides.node_selector.clone()),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            priority_class_name: overrides.priority_class_name.clone(),
            image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
                .then(|| overrides.image_pull_secrets.clone()),
            ..PodSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::*;
    use crate::sizing::size;

    fn pd(extra: &str) -> PipelineDeployment {
        let mut pd = from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
            "t",
        )
        .unwrap();
        pd.metadata.uid = Some("u-1".into());
        pd
    }

    fn children(pd: &PipelineDeployment, pod_monitor: bool) -> Children {
        let sizing = size(&pd.spec, 8, None).unwrap();
        let environment = Environment {
            default_image: "img:1".into(),
            pod_monitor_crd: pod_monitor,
        };
        build(pd, &sizing, &environment).unwrap()
    }

    fn pod(c: &Children) -> PodSpec {
        c.stateful_set.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn every_child_is_owned_by_the_pipeline_as_its_controller() {
        let c = children(&pd(""), true);
        let metas = [
            &c.config_map.metadata,
            &c.headless_service.metadata,
            &c.metrics_service.metadata,
            &c.stateful_set.metadata,
            &c.pod_disruption_budget.as_ref().unwrap().metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
            assert_eq!(meta.namespace.as_deref(), Some("ns"));
            // Pruning finds children by these labels.
            for pair in child_selector("p").split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert_eq!(meta.labels.as_ref().unwrap()[k], v);
            }
        }
        let monitor = c.pod_monitor.unwrap();
        assert_eq!(monitor["metadata"]["ownerReferences"][0]["uid"], "u-1");
    }

    #[test]
    fn the_runtime_container_is_locked_down_and_gets_credentials_only_by_secret_reference() {
        let c = children(
            &pd("  checkpoint: {storage: {s3: {bucket: b, credentialsSecret: {name: s3}}}}\n"),
            false,
        );
        let spec = pod(&c);
        let container = &spec.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
        assert_eq!(spec.security_context.unwrap().run_as_non_root, Some(true));
        let env = container.env.as_ref().unwrap();
        let key = env
            .iter()
            .find(|e| e.name == env::S3_ACCESS_KEY_ID)
            .unwrap();
        assert!(key.value.is_none());
        assert_eq!(
            key.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "s3"
        );
        // No CPU limit: a CFS quota would throttle busy slots.
        let resources = container.resources.as_ref().unwrap();
        assert!(!resources.limits.as_ref().unwrap().contains_key("cpu"));
    }

    #[test]
    fn a_changed_spec_changes_the_config_hash_and_suspend_scales_to_zero() {
        let hash = |c: &Children| {
            c.stateful_set
                .spec
                .clone()
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[annotations::CONFIG_HASH]
                .clone()
        };
        let a = children(&pd(""), false);
        let b = children(&pd("  transform: {filter: 'record.x > 1'}\n"), false);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&children(&pd(""), false)));
        let suspended = children(&pd("  suspend: true\n"), false);
        assert_eq!(suspended.stateful_set.spec.unwrap().replicas, Some(0));
        assert!(
            suspended.pod_disruption_budget.is_none(),
            "no budget for no pods"
        );
        let annotations = a
            .stateful_set
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
    }
}

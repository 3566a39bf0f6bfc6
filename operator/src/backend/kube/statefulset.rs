//! The runtime pods: a StatefulSet whose pod template carries the runtime container, its
//! environment, volumes, probes and the locked-down security context.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMapEnvSource, ConfigMapProjection, ConfigMapVolumeSource,
            Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
            ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
            SecurityContext, ServiceAccountTokenProjection, TopologySpreadConstraint, Volume,
            VolumeMount, VolumeProjection,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use pipeline_crds::{
    contract::{annotations, env, paths, ports},
    secret_references::SecretDelivery,
};

use super::{
    children::Environment,
    names::{config_map_name, headless_service_name, object_labels, selector_labels},
};
use crate::desired::Desired;

/// The StatefulSet of the pipeline's pods, with `metadata`.
pub fn stateful_set(
    desired: &Desired,
    environment: &Environment,
    metadata: ObjectMeta,
) -> StatefulSet {
    let name = &desired.name;
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(desired.replicas),
            service_name: Some(headless_service_name(name)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            template: pod_template(desired, environment),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
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

/// The environment variables of every Secret the spec delivers as variables, by reference (the
/// operator has checked each is marked for pipelines: [`crate::kafka::access`]).
fn secret_env(spec: &pipeline_crds::PipelineDeploymentSpec) -> Vec<EnvVar> {
    let mut env = Vec::new();
    for reference in spec.secret_references() {
        if let SecretDelivery::Env(names) = reference.delivery {
            for (name, key) in names.iter().zip(&reference.keys) {
                env.push(env_secret(name, reference.name, key));
            }
        }
    }
    env
}

/// The read-only mount and volume of every Secret the spec delivers as files.
fn secret_volumes(spec: &pipeline_crds::PipelineDeploymentSpec) -> Vec<(VolumeMount, Volume)> {
    let mut mounted = Vec::new();
    for reference in spec.secret_references() {
        if let SecretDelivery::Files { volume, dir, mode } = reference.delivery {
            let mount = VolumeMount {
                name: volume.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            };
            let volume = Volume {
                name: volume.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(reference.name.into()),
                    default_mode: mode,
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            };
            mounted.push((mount, volume));
        }
    }
    mounted
}

/// The runtime container's environment: where its config and scale file are, who it is, the
/// Secrets the spec delivers as variables, then the desired deployment's own.
fn runtime_env(spec: &pipeline_crds::PipelineDeploymentSpec, desired: &Desired) -> Vec<EnvVar> {
    let mut env = vec![
        env_value(env::CONFIG, paths::CONFIG_PATH),
        env_value(env::PIPELINE, desired.name.as_str()),
        env_field(env::NAMESPACE, "metadata.namespace"),
        env_field(env::POD_NAME, "metadata.name"),
        env_value(env::SCALE_FILE, paths::SCALE_PATH),
        env_value(env::METRICS_PORT, ports::RUNTIME_METRICS.to_string()),
        env_value(env::LOG_FORMAT, "json"),
    ];
    env.extend(secret_env(spec));
    // The rest of the desired deployment's environment (`podTemplate.env`); the pipeline and
    // namespace are set above (the namespace from the pod's own metadata).
    env.extend(
        desired
            .env
            .iter()
            .filter(|(name, _)| *name != env::PIPELINE && *name != env::NAMESPACE)
            .map(|(name, value)| env_value(name, value.clone())),
    );
    env
}

/// The pod's volumes and the container's mounts: the runtime ConfigMap, a scratch directory,
/// the Secrets delivered as files and the checkpoint volume.
fn volumes_and_mounts(
    spec: &pipeline_crds::PipelineDeploymentSpec,
    name: &str,
) -> (Vec<Volume>, Vec<VolumeMount>) {
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
    for (mount, volume) in secret_volumes(spec) {
        mounts.push(mount);
        volumes.push(volume);
    }
    for (mount, volume) in extra_volumes(spec) {
        mounts.push(mount);
        volumes.push(volume);
    }
    let storage = spec.checkpoint.as_ref().map(|c| &c.storage);
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
    (volumes, mounts)
}

/// `podTemplate.volumes`: ConfigMaps (always read-only) and `emptyDir`s.
fn extra_volumes(spec: &pipeline_crds::PipelineDeploymentSpec) -> Vec<(VolumeMount, Volume)> {
    let Some(template) = &spec.pod_template else {
        return Vec::new();
    };
    template
        .volumes
        .iter()
        .map(|extra| {
            let mount = VolumeMount {
                name: extra.name.clone(),
                mount_path: extra.mount_path.clone(),
                read_only: Some(extra.read_only || extra.config_map.is_some()),
                ..VolumeMount::default()
            };
            let volume = Volume {
                name: extra.name.clone(),
                config_map: extra.config_map.as_ref().map(|c| ConfigMapVolumeSource {
                    name: c.name.clone(),
                    items: (!c.items.is_empty()).then(|| {
                        c.items
                            .iter()
                            .map(|item| KeyToPath {
                                key: item.key.clone(),
                                path: item.path.clone(),
                                mode: None,
                            })
                            .collect()
                    }),
                    optional: c.optional.then_some(true),
                    ..ConfigMapVolumeSource::default()
                }),
                empty_dir: extra.empty_dir.as_ref().map(|e| EmptyDirVolumeSource {
                    medium: e.medium.map(|_| "Memory".to_owned()),
                    size_limit: e.size_limit.clone(),
                }),
                ..Volume::default()
            };
            (mount, volume)
        })
        .collect()
}

/// The pod's API token for the `rack` init container only: projected, expiring after 10
/// minutes, with the cluster's CA bundle.
fn rack_api_access_volume() -> Volume {
    Volume {
        name: "rack-api-access".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(600),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
            ]),
            default_mode: Some(0o444),
        }),
        ..Volume::default()
    }
}

/// `spec.kafka.rack`: an init container that writes the node's label where the runtime reads
/// its `client.rack`, with the runtime's locked-down security context and a small footprint.
fn rack_init_container(image: &str, rack: &pipeline_crds::kafka::RackSpec) -> Container {
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity("10m".into())),
        ("memory".to_owned(), Quantity("32Mi".into())),
    ]);
    Container {
        name: "rack".into(),
        image: Some(image.to_owned()),
        args: Some(vec![
            "rack".into(),
            "--topology-key".into(),
            rack.topology_key.clone(),
        ]),
        env: Some(vec![
            env_field(env::NODE_NAME, "spec.nodeName"),
            env_value(env::LOG_FORMAT, "json"),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("32Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "scratch".into(),
                mount_path: paths::SCRATCH_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "rack-api-access".into(),
                mount_path: paths::RACK_API_ACCESS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(locked_down()),
        ..Container::default()
    }
}

/// `podTemplate.envFrom`: ConfigMaps only.
fn env_from(
    overrides: &pipeline_crds::pod_template::PodTemplateOverrides,
) -> Option<Vec<EnvFromSource>> {
    (!overrides.env_from.is_empty()).then(|| {
        overrides
            .env_from
            .iter()
            .map(|source| EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: source.config_map_ref.name.clone(),
                    optional: source.config_map_ref.optional.then_some(true),
                }),
                prefix: source.prefix.clone(),
                ..EnvFromSource::default()
            })
            .collect()
    })
}

/// Requests and limits of one pod: CPU as sized, memory requested and limited alike.
fn resource_requirements(sizing: &crate::desired::PodResources) -> ResourceRequirements {
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
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), cpu),
            ("memory".to_owned(), memory),
        ])),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

/// An HTTP probe of the metrics port.
fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ports::RUNTIME_METRICS_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The runtime container: `run`, its port, probes and the locked-down security context.
fn runtime_container(
    image: String,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    resources: ResourceRequirements,
) -> Container {
    Container {
        name: "runtime".into(),
        image: Some(image),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(ports::RUNTIME_METRICS_NAME.into()),
            container_port: i32::from(ports::RUNTIME_METRICS),
            ..ContainerPort::default()
        }]),
        resources: Some(resources),
        liveness_probe: Some(probe("/healthz", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        volume_mounts: Some(mounts),
        security_context: Some(locked_down()),
        ..Container::default()
    }
}

/// A container's security context of the restricted profile: non-root, read-only root file
/// system, no privilege escalation, every capability dropped.
fn locked_down() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The pod's annotations: the user's, the config hash, and scrape annotations where no
/// PodMonitor selects the pods.
fn pod_annotations(
    overrides: &pipeline_crds::pod_template::PodTemplateOverrides,
    config_hash: &str,
    environment: &Environment,
) -> BTreeMap<String, String> {
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
    annotations
}

/// The pod-level security context of the restricted profile, with the user, groups and
/// seccomp profile `podTemplate.securityContext` chooses (validated to stay within it).
fn pod_security_context(
    chosen: Option<&pipeline_crds::pod_template::PodSecurityOverrides>,
) -> PodSecurityContext {
    let chosen = chosen.cloned().unwrap_or_default();
    let seccomp_profile = match chosen.seccomp_localhost_profile {
        Some(profile) => SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some(profile),
        },
        None => SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        },
    };
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(chosen.run_as_user.unwrap_or(65_532)),
        run_as_group: Some(chosen.run_as_group.unwrap_or(65_532)),
        fs_group: Some(chosen.fs_group.unwrap_or(65_532)),
        fs_group_change_policy: chosen.fs_group_change_policy.map(|p| p.as_str().to_owned()),
        supplemental_groups: (!chosen.supplemental_groups.is_empty())
            .then_some(chosen.supplemental_groups),
        seccomp_profile: Some(seccomp_profile),
        ..PodSecurityContext::default()
    }
}

/// The spread of a pipeline's pods when `podTemplate.topologySpreadConstraints` is unset: over
/// zones, then over nodes, as evenly as the scheduler can without leaving a pod pending.
fn default_topology_spread(pipeline: &str) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(pipeline)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// The runtime pods' template (the cleanup Job's pod starts from it too).
pub(super) fn pod_template(desired: &Desired, environment: &Environment) -> PodTemplateSpec {
    let name = desired.name.as_str();
    let spec = desired.pipeline.spec();
    let overrides = spec.pod_template.clone().unwrap_or_default();
    let (mut volumes, mounts) = volumes_and_mounts(spec, name);
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| environment.default_image.clone());
    let init_containers = spec.kafka.rack.as_ref().map(|rack| {
        volumes.push(rack_api_access_volume());
        let mut init = rack_init_container(&image, rack);
        init.image_pull_policy
            .clone_from(&environment.image_pull_policy);
        vec![init]
    });
    let mut container = runtime_container(
        image,
        runtime_env(spec, desired),
        mounts,
        resource_requirements(&desired.resources),
    );
    container
        .image_pull_policy
        .clone_from(&environment.image_pull_policy);
    container.env_from = env_from(&overrides);
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(object_labels(name));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations(
                &overrides,
                &desired.config_hash,
                environment,
            )),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers,
            containers: vec![container],
            volumes: Some(volumes),
            termination_grace_period_seconds: Some(desired.grace_seconds),
            security_context: Some(pod_security_context(overrides.security_context.as_ref())),
            service_account_name: overrides.service_account_name.clone(),
            automount_service_account_token: Some(
                overrides.automount_service_account_token.unwrap_or(false),
            ),
            node_selector: (!overrides.node_selector.is_empty())
                .then(|| overrides.node_selector.clone()),
            tolerations: (!overrides.tolerations.is_empty()).then(|| overrides.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            topology_spread_constraints: Some(
                overrides
                    .topology_spread_constraints
                    .clone()
                    .unwrap_or_else(|| default_topology_spread(name)),
            )
            .filter(|constraints| !constraints.is_empty()),
            priority_class_name: overrides.priority_class_name.clone(),
            image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
                .then(|| overrides.image_pull_secrets.clone()),
            ..PodSpec::default()
        }),
    }
}

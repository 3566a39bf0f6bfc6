//! Overrides applied to the runtime pods the operator creates.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, LocalObjectReference, Toleration, TopologySpreadConstraint},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pod-level settings merged into every runtime pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Extra pod annotations (e.g. for a service mesh or a log shipper).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels. The operator's own labels win on conflict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Node selector, e.g. `{karpenter.sh/capacity-type: on-demand}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// Affinity and anti-affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over the cluster's topology. Unset: over zones
    /// (`topology.kubernetes.io/zone`), then nodes (`kubernetes.io/hostname`), each with
    /// `maxSkew: 1` and `whenUnsatisfiable: ScheduleAnyway`, selecting this pipeline's pods, so
    /// that a zone outage takes only its share of the slots. `[]`: no constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Service account of the pods (on EKS, the one annotated for IRSA to reach S3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    /// Mount the service account's Kubernetes API token into the pods. The runtime never calls
    /// the Kubernetes API, so this defaults to `false`; IRSA and EKS Pod Identity inject their
    /// own token and do not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra environment variables of the runtime container, as plain values (Secrets are
    /// referenced through the spec's own fields only), e.g. `RUST_BACKTRACE`, `AWS_REGION`,
    /// proxies, or `SLUICE_LOG`. Names the operator sets itself are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env: Vec<EnvVarSpec>,
    /// Secrets used to pull the runtime image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// ConfigMaps whose keys become environment variables of the runtime container (a
    /// container's `envFrom`, ConfigMaps only: Secrets reach the pods through the spec's own
    /// fields, each gated). Where a name is also in the container's `env` (the operator's
    /// variables, `podTemplate.env`), Kubernetes gives `env` precedence. `SLUICE_*` names are
    /// the runtime's: set those through `podTemplate.env`, which checks them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub env_from: Vec<EnvFromConfigMap>,
    /// Extra volumes mounted into the runtime container: ConfigMaps (a CA bundle, a reference
    /// file) and `emptyDir`s. Secrets only through the spec's own fields; nothing from the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub volumes: Vec<ExtraVolume>,
    /// The pods' user, groups and seccomp profile, within the restricted Pod Security Standard
    /// (never root; the container keeps its own locked-down settings: no privilege escalation,
    /// every capability dropped, a read-only root filesystem). Unset fields keep the defaults:
    /// user and groups 65532, seccomp `RuntimeDefault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityOverrides>,
}

/// One ConfigMap as environment variables.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromConfigMap {
    /// The ConfigMap, in the pipeline's namespace.
    pub config_map_ref: ConfigMapRef,
    /// A prefix added to each variable's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
}

/// An extra volume and where the runtime container mounts it: exactly one of `configMap` and
/// `emptyDir`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.emptyDir)").message("a volume has exactly one of configMap and emptyDir"))]
pub struct ExtraVolume {
    /// The volume's name, a DNS label; the operator's own volume names are refused.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// Absolute path of the mount in the runtime container, outside the operator's own
    /// directories (`/etc/sluice`, `/tmp`, `/var/lib/sluice`).
    #[schemars(length(min = 2, max = 1024))]
    pub mount_path: String,
    /// Mount read-only. ConfigMaps are always read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// A ConfigMap's keys as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    /// An empty scratch directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolume>,
}

/// A ConfigMap in the pipeline's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Start the pod even when the ConfigMap does not exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// A ConfigMap mounted as files, one per key (or the listed keys only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolume {
    /// The ConfigMap's name, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Only these keys, each at its own relative path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub items: Vec<ConfigMapKeyPath>,
    /// Start the pod even when the ConfigMap does not exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// One key of a ConfigMap and the relative path of its file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyPath {
    /// The key.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// The file's path below the mount, relative, without `..`.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

/// An empty directory that lives as long as the pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolume {
    /// `Memory` for a tmpfs (counted in the pod's memory); the node's disk when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<EmptyDirMedium>,
    /// The most it may hold, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Quantity>,
}

/// Where an `emptyDir` lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EmptyDirMedium {
    /// A tmpfs in memory.
    Memory,
}

/// The pod-level security settings a pipeline may choose, all within the restricted profile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityOverrides {
    /// The user the runtime runs as; never 0 (root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_as_user: Option<i64>,
    /// The primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_as_group: Option<i64>,
    /// The group that owns mounted volumes (a checkpoint PVC, for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fs_group: Option<i64>,
    /// `OnRootMismatch` (only chown a volume whose root does not match) or `Always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group_change_policy: Option<FsGroupChangePolicy>,
    /// Extra groups of the runtime's process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub supplemental_groups: Vec<i64>,
    /// A seccomp profile the node provides (`localhostProfile`, relative to the kubelet's
    /// seccomp directory) instead of the container runtime's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub seccomp_localhost_profile: Option<String>,
}

/// When the kubelet changes the ownership of a volume to `fsGroup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FsGroupChangePolicy {
    /// Only when the volume's root does not already match (faster for big volumes).
    OnRootMismatch,
    /// On every mount.
    Always,
}

impl FsGroupChangePolicy {
    /// The value of the pod's `fsGroupChangePolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnRootMismatch => "OnRootMismatch",
            Self::Always => "Always",
        }
    }
}

/// The pod volume names the operator uses itself.
pub const OPERATOR_VOLUMES: &[&str] = &[
    "config",
    "scratch",
    "checkpoints",
    "kafka-ca",
    "kafka-client-certificate",
    "rack-api-access",
];

/// One environment variable with a plain value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSpec {
    /// Variable name.
    #[schemars(
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// Value.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// Environment variables of the runtime a pipeline may set through `podTemplate.env`; every
/// other `SLUICE_*` variable, and the S3 credentials, are the operator's.
pub const USER_SETTABLE_SLUICE_ENV: &[&str] = &["SLUICE_LOG", "SLUICE_SIMULATED_RECORD_COST"];

/// Whether a pipeline may set the environment variable `name`.
pub fn user_may_set_env(name: &str) -> bool {
    if USER_SETTABLE_SLUICE_ENV.contains(&name) {
        return true;
    }
    !name.starts_with("SLUICE_") && name != "AWS_ACCESS_KEY_ID" && name != "AWS_SECRET_ACCESS_KEY"
}

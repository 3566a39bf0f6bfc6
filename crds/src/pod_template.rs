//! Overrides applied to the runtime pods the operator creates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, Toleration, TopologySpreadConstraint,
};
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
}

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

//! Task slots per pod and the slot-to-CPU ratio the operator sizes pods from.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pod sizing. A slot is one worker thread with its own Kafka consumer and producer; parallelism
/// is the total number of slots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// Slots per pod. Defaults to 4.
    #[serde(default = "default_slots_per_pod")]
    #[schemars(range(min = 1, max = 256))]
    pub slots_per_pod: i32,

    /// CPU requested per slot: the slot-to-CPU ratio (`"1"` = one core per slot, `"500m"` = two
    /// slots per core). Defaults to `"1"`.
    #[serde(default = "default_cpu_per_slot")]
    pub cpu_per_slot: Quantity,

    /// Memory per slot (window state, producer buffers). Defaults to `1Gi`.
    #[serde(default = "default_memory_per_slot")]
    pub memory_per_slot: Quantity,

    /// Memory added once per pod on top of the slots (runtime, metrics, client libraries).
    /// Defaults to `256Mi`.
    #[serde(default = "default_memory_overhead")]
    pub memory_overhead: Quantity,

    /// CPU limit as a multiple of the CPU request, at least 1. Absent (the default) = no CPU
    /// limit, so the CFS quota never throttles a busy slot; memory always gets a limit equal to its
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 16.0))]
    pub cpu_limit_ratio: Option<f64>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            slots_per_pod: default_slots_per_pod(),
            cpu_per_slot: default_cpu_per_slot(),
            memory_per_slot: default_memory_per_slot(),
            memory_overhead: default_memory_overhead(),
            cpu_limit_ratio: None,
        }
    }
}

fn default_slots_per_pod() -> i32 {
    4
}

fn default_cpu_per_slot() -> Quantity {
    Quantity("1".to_owned())
}

fn default_memory_per_slot() -> Quantity {
    Quantity("1Gi".to_owned())
}

fn default_memory_overhead() -> Quantity {
    Quantity("256Mi".to_owned())
}

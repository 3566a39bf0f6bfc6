//! The Prometheus Operator PodMonitor (a dynamic object: its CRD may not exist).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pipeline_crds::contract::ports;
use serde_json::{Value, json};

use super::names::selector_labels;

/// The PodMonitor scraping pipeline `name`'s pods. `honorLabels` keeps the runtime's own
/// `namespace`/`pod`/`pipeline` labels instead of renaming them `exported_*`.
pub fn pod_monitor(name: &str, metadata: &ObjectMeta) -> Value {
    let metadata = serde_json::to_value(metadata).expect("metadata serializes");
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "podMetricsEndpoints": [{"port": ports::RUNTIME_METRICS_NAME, "path": "/metrics", "interval": "15s", "honorLabels": true}],
        },
    })
}

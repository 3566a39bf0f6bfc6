//! The runtime ConfigMap: the manifest the runtime executes and the scale file its pods follow.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use pipeline_crds::contract::paths;

use crate::desired::Desired;

/// The ConfigMap of `desired`, with `metadata`.
pub fn config_map(desired: &Desired, metadata: ObjectMeta) -> ConfigMap {
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([
            (paths::CONFIG_FILE.to_owned(), desired.config.clone()),
            (
                paths::SCALE_FILE.to_owned(),
                serde_json::to_string(&desired.scale).expect("a scale serializes"),
            ),
        ])),
        ..ConfigMap::default()
    }
}

//! Names and labels of a pipeline's Kubernetes objects.

use std::collections::BTreeMap;

use pipeline_crds::contract::labels;

/// The label every child of every pipeline carries; the controller watches children by it.
pub fn managed_selector() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_OPERATOR)
}

/// Labels on every child of `pipeline`; [`super::prune`] lists children by them.
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

pub(crate) fn object_labels(pipeline: &str) -> BTreeMap<String, String> {
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

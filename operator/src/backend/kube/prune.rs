//! Deleting children that are no longer wanted: the PodDisruptionBudget of a suspended pipeline,
//! objects an earlier operator version named differently, a PodMonitor after the switch back to
//! scrape annotations. After every apply, each kind the operator manages is listed by the
//! pipeline's labels; what the pipeline controls (owner reference with its uid) and build() did
//! not return is deleted. Objects someone else owns are never touched, whatever their labels.

use std::collections::BTreeSet;

use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams},
};

use super::names::child_selector;

/// The Prometheus Operator's PodMonitor.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// Every kind of child, in apply order; the PodMonitor only when its CRD exists.
pub fn managed_kinds(pod_monitor_crd: bool) -> Vec<ApiResource> {
    let mut kinds = vec![
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
    ];
    if pod_monitor_crd {
        kinds.push(pod_monitor_resource());
    }
    kinds
}

/// Names among `existing` (one kind) that the pipeline with `uid` controls and `wanted` lacks.
pub fn unwanted(existing: &[DynamicObject], uid: &str, wanted: &BTreeSet<String>) -> Vec<String> {
    existing
        .iter()
        .filter(|o| super::ownership::controlled_by(*o, uid))
        .map(ResourceExt::name_any)
        .filter(|name| !wanted.contains(name))
        .collect()
}

/// Deletes the children of pipeline `name` (uid `uid`) in `namespace` that are not in `wanted`
/// (`(kind, name)` pairs); returns `Kind/name` of each one deleted.
pub async fn delete_unwanted(
    client: &Client,
    namespace: &str,
    name: &str,
    uid: &str,
    wanted: &[(&'static str, String)],
    pod_monitor_crd: bool,
) -> Result<Vec<String>, kube::Error> {
    let mut deleted = Vec::new();
    let selector = ListParams::default().labels(&child_selector(name));
    for kind in managed_kinds(pod_monitor_crd) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kind);
        let names: BTreeSet<String> = wanted
            .iter()
            .filter(|(k, _)| *k == kind.kind)
            .map(|(_, n)| n.clone())
            .collect();
        let existing = api.list(&selector).await?;
        for child in unwanted(&existing.items, uid, &names) {
            match api.delete(&child, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e),
            }
            tracing::info!(kind = %kind.kind, child = %child, "deleted a child no longer wanted");
            deleted.push(format!("{}/{child}", kind.kind));
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    use super::*;

    fn object(name: &str, owner_uid: Option<&str>, controller: bool) -> DynamicObject {
        let mut o = DynamicObject::new(name, &ApiResource::erase::<ConfigMap>(&()));
        o.metadata = ObjectMeta {
            name: Some(name.into()),
            owner_references: owner_uid.map(|uid| {
                vec![OwnerReference {
                    uid: uid.into(),
                    controller: Some(controller),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        };
        o
    }

    #[test]
    fn only_controlled_children_missing_from_the_wanted_set_are_deleted() {
        let existing = [
            object("p-pipeline", Some("u-1"), true),
            object("p-config", Some("u-1"), true),
            object("p-shared", Some("u-1"), false),
            object("p-other", Some("u-2"), true),
            object("p-hand-made", None, false),
        ];
        let wanted = BTreeSet::from(["p-pipeline".to_owned()]);
        assert_eq!(unwanted(&existing, "u-1", &wanted), ["p-config"]);
    }

    #[test]
    fn the_pod_monitor_is_listed_only_where_its_crd_exists() {
        let kinds = |crd| {
            managed_kinds(crd)
                .into_iter()
                .map(|k| k.kind)
                .collect::<Vec<_>>()
        };
        assert!(!kinds(false).contains(&"PodMonitor".to_owned()));
        assert_eq!(kinds(true).last().map(String::as_str), Some("PodMonitor"));
        assert_eq!(pod_monitor_resource().plural, "podmonitors");
    }
}

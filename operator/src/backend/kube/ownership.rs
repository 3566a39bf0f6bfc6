//! Never apply over an object Sluice does not own. Server-side apply with `force` would merge a
//! pipeline's child into any object that happens to have its name (a pipeline named `kafka`
//! into an existing `kafka-metrics` Service), and the owner reference it adds would let the
//! garbage collector delete that object with the pipeline. So before the first apply of each
//! child, the operator reads it: when any existing child lacks this pipeline's controller owner
//! reference, nothing is applied, and the pipeline reports `NameConflict`.

use std::{collections::HashSet, sync::Mutex};

use kube::{Api, Resource, ResourceExt};

use crate::backend::BackendError;

/// Children already known to be this pipeline's (or created by it), by (pipeline uid, kind,
/// name): read once per operator process, not on every reconcile.
#[derive(Default)]
pub struct OwnedChildren {
    known: Mutex<HashSet<(String, &'static str, String)>>,
}

impl OwnedChildren {
    /// Whether `(uid, kind, name)` was already found to be ours.
    fn known(&self, key: &(String, &'static str, String)) -> bool {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key)
    }

    /// Checks that the object `name` of `kind` behind `api` is absent or controlled by the
    /// pipeline `uid` (one GET, skipped once the child is known to be ours).
    pub async fn check<K>(
        &self,
        api: &Api<K>,
        kind: &'static str,
        name: &str,
        uid: &str,
    ) -> Result<(), BackendError>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let key = (uid.to_owned(), kind, name.to_owned());
        if !self.known(&key)
            && let Some(existing) = api.get_opt(name).await?
            && !controlled_by(&existing, uid)
        {
            return Err(BackendError::NameConflict {
                kind,
                name: name.to_owned(),
                owner: controller_of(&existing),
            });
        }
        Ok(())
    }

    /// Remembers that the pipeline `uid` applied these `(kind, name)` children.
    pub fn remember(&self, uid: &str, children: &[(&'static str, String)]) {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, name) in children {
            known.insert((uid.to_owned(), kind, name.clone()));
        }
    }
}

/// Whether `object`'s controller owner reference is the pipeline `uid`.
pub fn controlled_by<K: Resource>(object: &K, uid: &str) -> bool {
    object
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// `kind/name` of `object`'s controller, if it has one.
fn controller_of<K: Resource>(object: &K) -> Option<String> {
    object
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::Service,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::*;

    fn service(owner: Option<(&str, bool)>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("kafka-metrics".into()),
                owner_references: owner.map(|(uid, controller)| {
                    vec![OwnerReference {
                        api_version: "sluice.dev/v1alpha1".into(),
                        kind: "PipelineDeployment".into(),
                        name: "kafka".into(),
                        uid: uid.into(),
                        controller: Some(controller),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }
    }

    #[test]
    fn only_a_controller_reference_with_the_pipelines_uid_makes_an_object_ours() {
        assert!(controlled_by(&service(Some(("uid-1", true))), "uid-1"));
        assert!(!controlled_by(&service(Some(("uid-1", false))), "uid-1"));
        assert!(!controlled_by(&service(Some(("uid-2", true))), "uid-1"));
        assert!(!controlled_by(&service(None), "uid-1"));
        assert_eq!(
            controller_of(&service(Some(("uid-2", true)))).as_deref(),
            Some("PipelineDeployment/kafka")
        );
    }
}

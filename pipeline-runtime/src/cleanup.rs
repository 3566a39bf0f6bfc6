//! `pipeline-runtime cleanup`: deletes what a pipeline left in its checkpoint storage (every
//! snapshot under `<prefix>/<group>/`). The operator runs it as a Job, with the pipeline's own
//! identity (ServiceAccount, storage credentials), when a pipeline with `deletionPolicy: delete`
//! is deleted: the operator itself holds no storage permissions.

use pipeline_crds::{PipelineDeployment, contract};

use crate::checkpoint::store::{CheckpointStore, StoreError, StoreLocation};

/// What a cleanup found and removed.
#[derive(Debug, PartialEq, Eq)]
pub enum Cleaned {
    /// The pipeline has no `checkpoint`: nothing is stored.
    NoCheckpoints,
    /// `files` snapshot files were deleted under `location`.
    Deleted {
        /// Files deleted.
        files: usize,
        /// Where the pipeline's snapshots lived.
        location: String,
    },
}

/// Deletes every snapshot of `pd` (in `namespace` when its metadata names none).
pub fn delete_checkpoints(pd: &PipelineDeployment, namespace: &str) -> Result<Cleaned, StoreError> {
    let Some(checkpoint) = &pd.spec.checkpoint else {
        return Ok(Cleaned::NoCheckpoints);
    };
    let name = pd.metadata.name.as_deref().unwrap_or_default();
    let namespace = pd.metadata.namespace.as_deref().unwrap_or(namespace);
    let group = contract::consumer_group(&pd.spec, namespace, name);
    // The prefix and group the slots write under (`slot::run`).
    let prefix = format!("{namespace}/{name}");
    let location = StoreLocation::of(&checkpoint.storage, &prefix)
        .ok_or_else(|| StoreError::Config("no storage configured".into()))?;
    let store = CheckpointStore::new(&location, &group, "cleanup")?;
    let files = store.delete_all()?;
    Ok(Cleaned::Deleted {
        files,
        location: store.location().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(checkpoint: &str) -> PipelineDeployment {
        pipeline_crds::manifest::from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{checkpoint}"),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn cleanup_deletes_the_snapshots_the_slots_wrote_under_the_pipelines_group() {
        let dir = std::env::temp_dir().join(format!("sluice-cleanup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pd = pipeline(&format!(
            "  checkpoint: {{storage: {{local: {{path: '{}'}}}}}}\n",
            dir.display()
        ));
        let storage = &pd.spec.checkpoint.as_ref().unwrap().storage;
        // As a slot writes them: the default group, the pipeline's prefix.
        let location = StoreLocation::of(storage, "ns/p").unwrap();
        let slot = CheckpointStore::new(&location, "sluice.ns.p", "p-0-0-1").unwrap();
        slot.put("in", 0, 10, 1, b"s".to_vec()).unwrap();
        slot.put("in", 1, 10, 1, b"s".to_vec()).unwrap();
        let cleaned = delete_checkpoints(&pd, "default").unwrap();
        assert!(
            matches!(&cleaned, Cleaned::Deleted { files: 2, location } if location.ends_with("/sluice.ns.p")),
            "{cleaned:?}"
        );
        assert!(slot.list("in", 0).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pipeline_without_checkpoints_has_nothing_to_clean() {
        assert_eq!(
            delete_checkpoints(&pipeline(""), "ns").unwrap(),
            Cleaned::NoCheckpoints
        );
    }
}

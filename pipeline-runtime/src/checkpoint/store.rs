//! Where snapshots live: a directory per (topic, partition) in an object store (a local or
//! mounted directory, or S3 and S3-compatible stores), one file per snapshot.
//!
//! The file name is the manifest: `<next offset, 20 digits>-<written at, ms, 13 digits>-<writer>.snap`.
//! Restore lists the partition's directory and picks the newest snapshot whose offset is the
//! group's committed offset, so it needs nothing from Kafka but the committed offset (no commit
//! metadata, which some brokers do not keep). Writers never overwrite each other: the writer id
//! names the pod, the slot and the process start.
//!
//! The slot threads are synchronous; each store owns a current-thread Tokio runtime and blocks on
//! it, so object-store I/O happens on the slot's own thread.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, TryStreamExt};

use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    local::LocalFileSystem,
    path::Path,
};
use pipeline_crds::{checkpoint::CheckpointStorage, contract::paths};

/// Where a pipeline's snapshots live, settled from `spec.checkpoint.storage` when the plan is
/// compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// An S3 bucket or an S3-compatible store.
    S3(S3Location),
    /// A directory: the mounted checkpoint volume, or a local path.
    Directory(String),
}

/// An S3 location. Credentials (and the region, unless set here) come from the environment:
/// the credentials Secret mapped to `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or the pod's
/// web identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix snapshots go under (the spec's, or `<namespace>/<pipeline>`).
    pub prefix: String,
    /// The region, when the spec sets one.
    pub region: Option<String>,
    /// An S3-compatible endpoint, when the spec sets one (`http://` allows plain HTTP).
    pub endpoint: Option<String>,
}

impl StoreLocation {
    /// The location `storage` names; S3 keys go under its `prefix`, or `default_prefix` when it
    /// sets none. `None` when it names no storage (validation refuses such a spec).
    pub fn of(storage: &CheckpointStorage, default_prefix: &str) -> Option<Self> {
        match (&storage.s3, &storage.volume, &storage.local) {
            (Some(s3), _, _) => Some(Self::S3(S3Location {
                bucket: s3.bucket.clone(),
                prefix: s3.prefix.clone().unwrap_or_else(|| default_prefix.into()),
                region: s3.region.clone(),
                endpoint: s3.endpoint.clone(),
            })),
            (None, Some(_), _) => Some(Self::Directory(paths::CHECKPOINT_VOLUME_DIR.to_owned())),
            (None, None, Some(local)) => Some(Self::Directory(local.path.clone())),
            (None, None, None) => None,
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage settings cannot be used.
    #[error("checkpoint storage: {0}")]
    Config(String),
    /// A written snapshot could not be made durable (fsync of a local or mounted directory).
    #[error("checkpoint storage sync {path}: {source}")]
    Sync {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An object-store operation failed.
    #[error("checkpoint storage {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: String,
        /// The error.
        source: object_store::Error,
    },
}

/// One snapshot file, parsed from its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotFile {
    /// The offset it belongs with.
    pub offset: i64,
    /// When it was written (ms since the epoch).
    pub written_ms: i64,
    /// Who wrote it.
    pub writer: String,
    /// Its full path in the store, for messages.
    pub path: String,
    /// Its location as the store listed it (not parsed again from `path`: that would
    /// percent-encode an already encoded name a second time).
    pub location: Path,
}

impl SnapshotFile {
    fn name(offset: i64, written_ms: i64, writer: &str) -> String {
        format!("{offset:020}-{written_ms:013}-{writer}.snap")
    }

    fn parse(path: &Path) -> Option<Self> {
        let name = path.filename()?.strip_suffix(".snap")?;
        let mut parts = name.splitn(3, '-');
        let offset = parts.next()?.parse().ok()?;
        let written_ms = parts.next()?.parse().ok()?;
        let writer = parts.next()?.to_owned();
        Some(Self {
            offset,
            written_ms,
            writer,
            path: path.to_string(),
            location: path.clone(),
        })
    }
}

/// Makes a snapshot written to a local or mounted directory durable before its offset is
/// committed: the file's contents, then the directory entry its rename created. (S3 is durable
/// when a put returns.) A seam so tests can see the syncs.
pub trait Durability: Send + Sync {
    /// Flushes a file's contents to the disk.
    fn sync_file(&self, path: &std::path::Path) -> std::io::Result<()>;
    /// Flushes a directory's entries to the disk.
    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()>;
}

/// `fsync` through the file system.
pub struct Fsync;

impl Durability for Fsync {
    fn sync_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        // A directory is synced like a file, through a handle opened for reading.
        self.sync_file(path)
    }
}

/// A local directory's store, to map paths to files, and how its snapshots are made durable.
struct LocalFiles {
    files: Arc<LocalFileSystem>,
    durability: Arc<dyn Durability>,
}

/// A pipeline's snapshot store.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// Set for a local or mounted directory: each put is synced.
    local: Option<LocalFiles>,
    root: Path,
    /// Shown in errors: where the root is.
    location: String,
    writer: String,
    io: tokio::runtime::Runtime,
}

impl std::fmt::Debug for CheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CheckpointStore({}, writer {})",
            self.location, self.writer
        )
    }
}

impl CheckpointStore {
    /// The store at `location`; snapshots go under `<its prefix>/<group>/`. `writer` must be
    /// unique to this slot incarnation (no `-` needed; any characters but `/`).
    pub fn new(location: &StoreLocation, group: &str, writer: &str) -> Result<Self, StoreError> {
        Self::with_durability(location, group, writer, Arc::new(Fsync))
    }

    /// [`Self::new`] whose local snapshots are made durable by `durability`.
    pub fn with_durability(
        location: &StoreLocation,
        group: &str,
        writer: &str,
        durability: Arc<dyn Durability>,
    ) -> Result<Self, StoreError> {
        let io = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config(format!("cannot start I/O runtime: {e}")))?;
        let local_files = |(files, location): (Arc<LocalFileSystem>, String)| {
            let store: Arc<dyn ObjectStore> = files.clone();
            let local = LocalFiles {
                files,
                durability: durability.clone(),
            };
            (store, Some(local), String::new(), location)
        };
        let (store, local, prefix, location) = match location {
            StoreLocation::S3(s3) => {
                let location = format!("s3://{}/{}", s3.bucket, s3.prefix);
                let store: Arc<dyn ObjectStore> = Arc::new(s3_store(s3)?);
                (store, None, s3.prefix.clone(), location)
            }
            StoreLocation::Directory(dir) => local_files(local_store(dir)?),
        };
        let root = Path::from(prefix.as_str()).join(group);
        Ok(Self {
            store,
            local,
            location: format!("{location}/{group}"),
            root,
            writer: writer.replace('/', "_"),
            io,
        })
    }

    /// Where snapshots of this pipeline live, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn dir(&self, topic: &str, partition: i32) -> Path {
        self.root.clone().join(topic).join(partition.to_string())
    }

    /// Where a partition's snapshots live, for messages.
    pub fn partition_location(&self, topic: &str, partition: i32) -> String {
        format!("{}/{topic}/{partition}", self.location)
    }

    /// Writes a snapshot of `(topic, partition)` belonging with `offset`; returns its file.
    pub fn put(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        written_ms: i64,
        bytes: Vec<u8>,
    ) -> Result<SnapshotFile, StoreError> {
        let path =
            self.dir(topic, partition)
                .join(SnapshotFile::name(offset, written_ms, &self.writer));
        self.io
            .block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map_err(|source| StoreError::Io {
                op: "write",
                path: path.to_string(),
                source,
            })?;
        self.make_durable(&path)?;
        Ok(SnapshotFile {
            offset,
            written_ms,
            writer: self.writer.clone(),
            path: path.to_string(),
            location: path,
        })
    }

    /// Syncs a snapshot just written to a local directory, and its directory, so a power loss
    /// after the offset commit cannot lose it.
    fn make_durable(&self, path: &Path) -> Result<(), StoreError> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let file = local
            .files
            .path_to_filesystem(path)
            .map_err(|source| StoreError::Io {
                op: "sync",
                path: path.to_string(),
                source,
            })?;
        let sync_error = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| StoreError::Sync { path, source }
        };
        local
            .durability
            .sync_file(&file)
            .map_err(sync_error(&file))?;
        if let Some(dir) = file.parent() {
            local.durability.sync_dir(dir).map_err(sync_error(dir))?;
        }
        Ok(())
    }

    /// Every snapshot of `(topic, partition)`, newest (highest offset, then latest write) first.
    pub fn list(&self, topic: &str, partition: i32) -> Result<Vec<SnapshotFile>, StoreError> {
        let dir = self.dir(topic, partition);
        let listed = self
            .io
            .block_on(self.store.list_with_delimiter(Some(&dir)))
            .map_err(|source| StoreError::Io {
                op: "list",
                path: dir.to_string(),
                source,
            })?;
        let mut files: Vec<_> = listed
            .objects
            .iter()
            .filter_map(|o| SnapshotFile::parse(&o.location))
            .collect();
        files.sort_unstable_by(|a, b| b.cmp(a));
        Ok(files)
    }

    /// Reads a snapshot file.
    pub fn get(&self, file: &SnapshotFile) -> Result<Vec<u8>, StoreError> {
        let path = &file.location;
        let io_error = |source| StoreError::Io {
            op: "read",
            path: file.path.clone(),
            source,
        };
        self.io.block_on(async {
            let got = self.store.get(path).await.map_err(io_error)?;
            got.bytes().await.map(|b| b.to_vec()).map_err(io_error)
        })
    }

    /// Deletes a snapshot file (a file already gone is fine).
    pub fn delete(&self, file: &SnapshotFile) -> Result<(), StoreError> {
        match self.io.block_on(self.store.delete(&file.location)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "delete",
                path: file.path.clone(),
                source,
            }),
        }
    }
}

impl CheckpointStore {
    /// Deletes every snapshot of this pipeline (everything under `<prefix>/<group>/`, whatever
    /// its topic, partition or writer) and, in a local directory, the emptied directories;
    /// returns how many files were deleted. Files already gone are fine, so a second run after a
    /// failure finishes the job.
    pub fn delete_all(&self) -> Result<usize, StoreError> {
        let io_error = |op: &'static str| {
            let path = self.location.clone();
            move |source| StoreError::Io { op, path, source }
        };
        let deleted = self.io.block_on(async {
            let listed: Vec<Path> = self
                .store
                .list(Some(&self.root))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(io_error("list"))?;
            let count = listed.len();
            let locations = futures::stream::iter(listed.into_iter().map(Ok)).boxed();
            self.store
                .delete_stream(locations)
                .try_for_each(|_| async { Ok(()) })
                .await
                .or_else(|error| match error {
                    object_store::Error::NotFound { .. } => Ok(()),
                    other => Err(other),
                })
                .map_err(io_error("delete"))?;
            Ok::<_, StoreError>(count)
        })?;
        if let Some(local) = &self.local {
            let dir = local
                .files
                .path_to_filesystem(&self.root)
                .map_err(io_error("delete"))?;
            match std::fs::remove_dir_all(&dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Config(format!(
                        "cannot remove directory {}: {error}",
                        dir.display()
                    )));
                }
                _ => {}
            }
        }
        Ok(deleted)
    }
}

/// The store of a local directory and its location for messages.
fn local_store(dir: &str) -> Result<(Arc<LocalFileSystem>, String), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Config(format!("cannot create directory {dir}: {e}")))?;
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| StoreError::Config(format!("directory {dir}: {e}")))?;
    let absolute =
        std::fs::canonicalize(dir).map_or_else(|_| dir.to_owned(), |p| p.display().to_string());
    Ok((Arc::new(store), format!("file://{absolute}")))
}

fn s3_store(s3: &S3Location) -> Result<impl ObjectStore, StoreError> {
    // Credentials and region come from the environment (the operator maps the credentials
    // Secret to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or IRSA provides a web identity).
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(&s3.bucket);
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    // Bounded: a store that does not answer fails a checkpoint within about 20 s (the slot goes
    // on processing, see `checkpoint.tolerableFailures`) instead of holding the slot for the
    // library's default of minutes of retries, past the group's max.poll.interval.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
    };
    // Set key by key: `with_client_options` would replace the options set so far (allow_http,
    // and those read from the environment).
    builder
        .with_retry(retry)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "2s",
        )
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "10s")
        .build()
        .map_err(|e| StoreError::Config(format!("S3 bucket {}: {e}", s3.bucket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path) -> StoreLocation {
        StoreLocation::Directory(dir.to_str().unwrap().to_owned())
    }

    /// Records the syncs instead of making them.
    #[derive(Default)]
    struct RecordedSyncs(std::sync::Mutex<Vec<String>>);

    impl Durability for RecordedSyncs {
        fn sync_file(&self, path: &std::path::Path) -> std::io::Result<()> {
            assert!(path.is_file(), "synced after it was written: {path:?}");
            self.0
                .lock()
                .unwrap()
                .push(format!("file {}", path.display()));
            Ok(())
        }

        fn sync_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("dir {}", path.display()));
            Ok(())
        }
    }

    #[test]
    fn a_snapshot_in_a_local_directory_is_synced_with_its_directory_before_put_returns() {
        let dir = std::env::temp_dir().join(format!("sluice-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let syncs = Arc::new(RecordedSyncs::default());
        let store =
            CheckpointStore::with_durability(&local(&dir), "g", "w", syncs.clone()).unwrap();
        let file = store.put("in", 3, 100, 1_000, b"state".to_vec()).unwrap();
        let written = store
            .local
            .as_ref()
            .unwrap()
            .files
            .path_to_filesystem(&file.location)
            .unwrap();
        assert_eq!(
            *syncs.0.lock().unwrap(),
            [
                format!("file {}", written.display()),
                format!("dir {}", written.parent().unwrap().display())
            ]
        );
        // The real syncs run too.
        let real = CheckpointStore::new(&local(&dir), "g", "w2").unwrap();
        real.put("in", 3, 200, 2_000, b"state".to_vec()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn snapshots_are_listed_newest_offset_first_and_writers_do_not_collide() {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = CheckpointStore::new(&local(&dir), "g", "pod-0-1-100").unwrap();
        let b = CheckpointStore::new(&local(&dir), "g", "pod-1-0-200").unwrap();
        a.put("in", 3, 100, 1_000, b"a100".to_vec()).unwrap();
        a.put("in", 3, 250, 2_000, b"a250".to_vec()).unwrap();
        b.put("in", 3, 250, 2_000, b"b250".to_vec()).unwrap();
        b.put("in", 4, 7, 2_000, b"other partition".to_vec())
            .unwrap();
        let files = a.list("in", 3).unwrap();
        let seen: Vec<_> = files
            .iter()
            .map(|f| (f.offset, f.writer.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (250, "pod-1-0-200"),
                (250, "pod-0-1-100"),
                (100, "pod-0-1-100")
            ]
        );
        assert_eq!(a.get(&files[0]).unwrap(), b"b250");
        assert_eq!(a.get(&files[1]).unwrap(), b"a250");
        a.delete(&files[2]).unwrap();
        a.delete(&files[2]).unwrap();
        assert_eq!(a.list("in", 3).unwrap().len(), 2);
        assert!(a.list("in", 9).unwrap().is_empty());
        assert!(a.location().starts_with("file:///") && a.location().ends_with("/g"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn delete_all_removes_every_snapshot_of_the_group_and_no_other_groups() {
        let dir = std::env::temp_dir().join(format!("sluice-store-cleanup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ours = CheckpointStore::new(&local(&dir), "g", "pod-0-0-1").unwrap();
        let theirs = CheckpointStore::new(&local(&dir), "g-other", "pod-0-0-1").unwrap();
        for (topic, partition) in [("in", 0), ("in", 7), ("g-repartition", 2)] {
            ours.put(topic, partition, 10, 1_000, b"a".to_vec())
                .unwrap();
            ours.put(topic, partition, 20, 2_000, b"b".to_vec())
                .unwrap();
        }
        theirs.put("in", 0, 10, 1_000, b"c".to_vec()).unwrap();
        assert_eq!(ours.delete_all().unwrap(), 6);
        assert!(ours.list("in", 0).unwrap().is_empty());
        assert!(ours.list("g-repartition", 2).unwrap().is_empty());
        assert!(
            !dir.join("ns/p/g").exists(),
            "the emptied directories go too"
        );
        assert_eq!(
            theirs.list("in", 0).unwrap().len(),
            1,
            "another group's are kept"
        );
        assert_eq!(ours.delete_all().unwrap(), 0, "a second run finds nothing");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn groups_and_prefixes_with_reserved_characters_restore_and_prune() {
        let dir = std::env::temp_dir().join(format!("sluice-store-odd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (i, group) in ["g%1", "g#2", "g?3", "g*4", "g~5", "g 6", "g%25"]
            .into_iter()
            .enumerate()
        {
            let store = CheckpointStore::new(&local(&dir), group, "w%1").unwrap();
            store.put("in", 0, 10, 1_000, vec![i as u8]).unwrap();
            store.put("in", 0, 20, 2_000, vec![i as u8, 1]).unwrap();
            let files = store.list("in", 0).unwrap();
            assert_eq!(files.len(), 2, "{group}");
            assert_eq!(store.get(&files[0]).unwrap(), [i as u8, 1], "{group}");
            store.delete(&files[1]).unwrap();
            assert_eq!(
                store.list("in", 0).unwrap().len(),
                1,
                "{group}: pruning deleted nothing"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

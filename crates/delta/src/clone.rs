//! Incremental deep clone of a Delta table to another location, on the same or another store
//! (local ↔ S3): the data files are copied and the clone's log records the source's live files
//! as of one source version, with the source's schema, partitioning and properties. Its history
//! starts at the clone (the source's earlier versions are not replayed).
//!
//! Each run compares the source's live files with the clone's: files added since are copied and
//! added, files removed since (compaction, retention, erasure) are removed, in one commit that
//! also carries `txn(app_id = tributary-clone:<source table id>, version = source version)`.
//! So a run is idempotent (the same source version again is a no-op), two cloners racing on one
//! clone cannot both commit (the txn conflicts), and a run killed mid-copy commits nothing: the
//! next run skips the files already copied at their full size and copies the rest.

use crate::{Action, Add, Table, Transaction};
use deltalake::Path;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::ObjectStoreExt as _;
use std::collections::{HashMap, HashSet};
use tributary_core::{Error, ErrorKind, Result};

/// What one clone run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneReport {
    pub source_version: i64,
    /// The clone's version after this run.
    pub version: i64,
    pub files_copied: usize,
    pub bytes_copied: u64,
    /// Files found already copied at full size (a run that was interrupted before its commit).
    pub files_resumed: usize,
    pub files_removed: usize,
    /// Live files of the clone now (= the source's at `source_version`).
    pub files: usize,
    /// Nothing to do: the clone already holds `source_version`.
    pub up_to_date: bool,
}

impl std::fmt::Display for CloneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up_to_date {
            return write!(
                f,
                "up to date at source version {} (clone version {}, {} files)",
                self.source_version, self.version, self.files
            );
        }
        write!(
            f,
            "source version {} -> clone version {}: {} files copied ({} bytes), {} resumed, {} removed; {} live files",
            self.source_version,
            self.version,
            self.files_copied,
            self.bytes_copied,
            self.files_resumed,
            self.files_removed,
            self.files
        )
    }
}

fn object_path(rel: &str) -> Result<Path> {
    Path::from_url_path(rel).map_err(|e| Error::internal(format!("data file path {rel:?}")).with_source(e))
}

/// Clones (or brings up to date) the table at `source` into `target`; `attempts` bounds the
/// commit retries against other writers of the target.
pub async fn clone_table(source: &str, target: &str, attempts: usize) -> Result<CloneReport> {
    let src = Table::open_existing("clone source", source)
        .await?
        .ok_or_else(|| Error::user(format!("clone: no Delta table at {source}")))?;
    let src_snapshot = src.table.snapshot().map_err(|e| Error::external("source snapshot").with_source(e))?;
    let src_md = src_snapshot.metadata().clone();
    let app_id = format!("tributary-clone:{}", src_md.id());
    let source_version = src.version();
    let partitions: Vec<&str> = src.partition_columns().iter().map(String::as_str).collect();
    let mut dst = Table::open_or_create("clone", target, src.schema(), &partitions).await?;
    let done = dst.txn_version(&app_id).await?;
    let dst_files: HashMap<String, crate::FileRef> = dst.files()?.into_iter().map(|f| (f.path.clone(), f)).collect();
    if done.is_none() && (!dst_files.is_empty() || dst.version() > 0) {
        return Err(Error::user(format!(
            "clone: {target} holds a table that is not a clone of {source} (no clone position for its table id); \
             pick an empty location"
        )));
    }
    if let Some(v) = done {
        if v > source_version {
            return Err(Error::user(format!(
                "clone: {target} holds source version {v}, newer than the source's {source_version} (was the source restored?)"
            )));
        }
        if v == source_version {
            return Ok(CloneReport {
                source_version,
                version: dst.version(),
                files: dst_files.len(),
                up_to_date: true,
                ..Default::default()
            });
        }
    }
    let src_files = src.files()?;
    let live: HashSet<&str> = src_files.iter().map(|f| f.path.as_str()).collect();
    let to_copy: Vec<&crate::FileRef> = src_files.iter().filter(|f| !dst_files.contains_key(&f.path)).collect();
    let to_remove: HashSet<String> = dst_files.keys().filter(|p| !live.contains(p.as_str())).cloned().collect();

    // Copy the new files (a few at a time); a file already there at full size was copied by a run
    // that died before its commit.
    let (from, to) = (src.table.object_store(), dst.table.object_store());
    let results: Vec<(bool, u64)> = futures::stream::iter(to_copy.iter().map(|f| {
        let (from, to) = (from.clone(), to.clone());
        async move {
            let path = object_path(&f.path)?;
            match to.head(&path).await {
                Ok(m) if m.size as i64 == f.size => return Ok::<_, Error>((false, 0)),
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::external(format!("clone: stat {target}/{}", f.path)).with_source(e)),
            }
            let read_err =
                |e: object_store::Error| Error::external(format!("clone: read {source}/{}", f.path)).with_source(e);
            let bytes = from.get(&path).await.map_err(read_err)?.bytes().await.map_err(read_err)?;
            let n = bytes.len() as u64;
            to.put(&path, bytes.into())
                .await
                .map_err(|e| Error::external(format!("clone: write {target}/{}", f.path)).with_source(e))?;
            tributary_core::fault::point("clone.after_file_copy");
            Ok((true, n))
        }
    }))
    .buffer_unordered(4)
    .try_collect()
    .await?;

    let now = chrono::Utc::now().timestamp_millis();
    let mut actions: Vec<Action> = to_copy
        .iter()
        .map(|f| {
            Action::Add(Add {
                path: f.path.clone(),
                partition_values: f.partition_values.clone(),
                size: f.size,
                modification_time: now,
                data_change: true,
                stats: f.stats.clone(),
                ..Default::default()
            })
        })
        .collect();
    actions.extend(dst.remove_actions(&to_remove)?);
    // Schema, partitioning and properties follow the source; the clone keeps its own table id.
    let dst_md = dst.table.snapshot().map_err(|e| Error::external("clone snapshot").with_source(e))?.metadata().clone();
    if dst_md.schema_string() != src_md.schema_string()
        || dst_md.configuration() != src_md.configuration()
        || dst_md.partition_columns() != src_md.partition_columns()
    {
        use deltalake::kernel::MetadataExt as _;
        let md = src_md
            .clone()
            .with_table_id(dst_md.id().to_string())
            .map_err(|e| Error::internal("clone metadata").with_source(e))?;
        actions.push(Action::Metadata(md));
    }
    let info = HashMap::from([(
        "tributary.clone".to_string(),
        serde_json::json!({"source": source, "source_version": source_version}),
    )]);
    let txn = Transaction::new_with_last_update(&app_id, source_version, Some(now));
    let version = match dst.commit(actions, vec![txn], info, attempts).await {
        Ok(v) => v,
        Err(e) if e.kind == ErrorKind::Conflict => {
            return Err(Error::conflict(format!(
                "clone: another clone of {source} into {target} committed first; run again to continue from it"
            ))
            .with_source(e));
        }
        Err(e) => return Err(e),
    };
    let copied: Vec<&(bool, u64)> = results.iter().filter(|r| r.0).collect();
    Ok(CloneReport {
        source_version,
        version,
        files_copied: copied.len(),
        bytes_copied: copied.iter().map(|r| r.1).sum(),
        files_resumed: results.len() - copied.len(),
        files_removed: to_remove.len(),
        files: src_files.len(),
        up_to_date: false,
    })
}

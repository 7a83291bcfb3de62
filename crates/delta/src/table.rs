use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, StructType, Transaction};
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore, Path};
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tributary_core::{Error, ErrorKind, Result};
use url::Url;

fn delta_err(context: impl Into<String>, e: DeltaTableError) -> Error {
    let kind = match &e {
        DeltaTableError::Transaction { source: TransactionError::CommitConflict(_) } => ErrorKind::Conflict,
        DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) } => ErrorKind::Conflict,
        DeltaTableError::VersionAlreadyExists(_) => ErrorKind::Conflict,
        DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. } => ErrorKind::External,
        _ => ErrorKind::External,
    };
    Error::new(kind, context).with_source(e)
}

/// Turns a local path or URI into a table URL. Local paths are made absolute and created.
pub fn location_url(location: &str) -> Result<Url> {
    if location.contains("://") {
        let url =
            Url::parse(location).map_err(|e| Error::user(format!("invalid table URI {location:?}")).with_source(e))?;
        if crate::store::is_remote(location) {
            crate::store::register();
        }
        return Ok(url);
    }
    let path = std::path::Path::new(location);
    std::fs::create_dir_all(path)?;
    let abs = std::fs::canonicalize(path)?;
    Url::from_directory_path(&abs).map_err(|_| Error::user(format!("invalid table path {location:?}")))
}

/// A file of the table's current snapshot.
#[derive(Debug, Clone)]
pub struct FileRef {
    pub path: String,
    pub size: i64,
    pub partition_values: HashMap<String, Option<String>>,
    pub num_records: Option<i64>,
    pub stats: Option<String>,
}

/// Row counts and freshness read from the Delta log (no data files opened).
#[derive(Debug, Clone, Default)]
pub struct TableStats {
    pub version: i64,
    pub last_commit_unix_ms: i64,
    pub row_count: i64,
    pub file_count: i64,
    pub max_time_unix_ms: i64,
}

/// What [`Table::compact`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactReport {
    pub partitions: usize,
    pub files_removed: usize,
    pub rows: usize,
    /// Partitions another writer rewrote meanwhile (left alone).
    pub skipped: usize,
    pub files_after: usize,
    pub version: i64,
}

/// One Delta table, the unit a stage reads from or commits to.
pub struct Table {
    pub name: String,
    pub url: Url,
    pub table: DeltaTable,
    schema: SchemaRef,
    partition_columns: Vec<String>,
    /// W3C trace context of this writer's last commit (for its commit notice).
    last_traceparent: Option<String>,
    /// Lost races of this handle's last commit: deltalake's own retries on a taken version plus
    /// this protocol's re-checks after a conflict (benchmarks, the commit-retry metric).
    pub last_commit_retries: u64,
    /// The columns this handle's row reads return (`None`: all) — see [`Table::reading_only`].
    read_columns: Option<Arc<[String]>>,
    /// The newest version `latest_version` has seen (at or above the loaded snapshot's: a reader
    /// does not load versions that leave the schema and properties as they were).
    head: i64,
    /// `latest_version` calls so far (every `LIST_EVERY`th lists the log).
    head_calls: u32,
}

/// `latest_version` reads at most this many new commits one by one; further behind, it lists
/// the log and loads the table instead.
const PROBE_LIMIT: i64 = 64;
/// Every this many `latest_version` calls list the log as well (a version gap — commits removed
/// by log cleanup under a reader that far behind — is then reported instead of looking idle).
const LIST_EVERY: u32 = 50;

/// commitInfo key of a commit's W3C trace context.
pub const TRACEPARENT_KEY: &str = "tributary.traceparent";

/// Table property set by `tributary fork` while it copies the last increment: writers do not
/// commit (they back off and retry) until the property is gone or the table has moved.
pub const FORK_FROZEN_PROPERTY: &str = "tributary.fork.frozen";
/// Table property set by `tributary fork` once the table lives at another location: every
/// handle follows it there (on open, refresh, or a commit that lost to it).
pub const FORK_MOVED_TO_PROPERTY: &str = "tributary.fork.movedTo";

impl Table {
    fn loaded(name: &str, url: Url, table: DeltaTable, schema: SchemaRef, partition_columns: Vec<String>) -> Self {
        Self {
            name: name.into(),
            url,
            table,
            schema,
            partition_columns,
            last_traceparent: None,
            last_commit_retries: 0,
            read_columns: None,
            head: -1,
            head_calls: 0,
        }
    }

    /// Another handle on the same table, from the snapshot already loaded (no log read).
    pub fn handle(&self) -> Self {
        let mut h = Self::loaded(
            &self.name,
            self.url.clone(),
            self.table.clone(),
            self.schema.clone(),
            self.partition_columns.clone(),
        );
        h.read_columns = self.read_columns.clone();
        h
    }

    /// Makes this handle's row reads (`read_file`, `read_adds`, `read_versions*`) decode only
    /// `columns` of the table's schema, in schema order — a reader that needs the envelope does not
    /// decode every `payload` of the file. Named columns the table does not have are left out;
    /// partition columns are restored from the log as usual.
    pub fn reading_only<S: AsRef<str>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.read_columns = Some(columns.into_iter().map(|c| c.as_ref().to_string()).collect());
        self
    }

    /// The schema a row read returns: the table's, or its `reading_only` columns.
    fn read_schema(&self) -> SchemaRef {
        match &self.read_columns {
            None => self.schema.clone(),
            Some(cols) => Arc::new(Schema::new(
                self.schema.fields().iter().filter(|f| cols.iter().any(|c| c == f.name())).cloned().collect::<Vec<_>>(),
            )),
        }
    }

    /// Opens the table at `location`, creating it with `schema` when it does not exist yet.
    /// Safe when several processes race to create the same table.
    pub async fn open_or_create(
        name: &str,
        location: &str,
        schema: SchemaRef,
        partition_columns: &[&str],
    ) -> Result<Self> {
        let url = location_url(location)?;
        crate::store::check_conditional_put(location).await?;
        let partition_columns: Vec<String> = partition_columns.iter().map(|s| s.to_string()).collect();
        // A table without a log is created directly (probing it would log kernel errors).
        let missing = if url.scheme() == "file" {
            url.to_file_path().map(|p| !p.join("_delta_log").exists()).unwrap_or(false)
        } else {
            !crate::store::has_log(location).await?
        };
        for attempt in 0..20 {
            let opened = if missing && attempt == 0 {
                Err(DeltaTableError::NotATable(String::new()))
            } else {
                deltalake::open_table(url.clone()).await
            };
            match opened {
                Ok(table) => {
                    let mut t = Self::loaded(name, url, table, schema, partition_columns);
                    t.follow().await?;
                    return Ok(t);
                }
                Err(DeltaTableError::NotATable(_)) | Err(DeltaTableError::InvalidTableLocation(_)) => {}
                Err(e) if attempt < 19 => {
                    tracing::debug!(table = name, error = %e, "open failed, retrying");
                }
                Err(e) => return Err(delta_err(format!("opening table {name} at {url}"), e)),
            }
            let kernel: StructType = schema
                .as_ref()
                .try_into_kernel()
                .map_err(|e| Error::internal(format!("schema of {name} is not a Delta schema")).with_source(e))?;
            let create = deltalake::operations::create::CreateBuilder::new()
                .with_location(url.as_str())
                .with_table_name(name)
                .with_columns(kernel.fields().cloned())
                .with_partition_columns(partition_columns.clone())
                .with_save_mode(SaveMode::Ignore)
                .await;
            match create {
                Ok(table) => {
                    tracing::info!(table = name, url = %url, "created Delta table");
                    return Ok(Self::loaded(name, url, table, schema, partition_columns));
                }
                Err(e) => {
                    tracing::debug!(table = name, error = %e, "create lost a race, reopening");
                    tokio::time::sleep(std::time::Duration::from_millis(20 + 10 * attempt)).await;
                }
            }
        }
        Err(Error::external(format!("could not open or create table {name} at {url}")))
    }

    /// Opens an existing table; `Ok(None)` when there is no table at `location` yet. A table
    /// a fork moved away is opened where it lives now.
    pub async fn open_existing(name: &str, location: &str) -> Result<Option<Self>> {
        let Some(mut t) = Self::open_here(name, location).await? else { return Ok(None) };
        t.follow().await?;
        Ok(Some(t))
    }

    /// `open_existing` without following a fork's redirect.
    async fn open_here(name: &str, location: &str) -> Result<Option<Self>> {
        let url = if crate::store::is_remote(location) {
            if !crate::store::has_log(location).await? {
                return Ok(None);
            }
            location_url(location)?
        } else if location.contains("://") {
            location_url(location)?
        } else {
            let p = std::path::Path::new(location);
            if !p.join("_delta_log").exists() {
                return Ok(None);
            }
            location_url(location)?
        };
        match deltalake::open_table(url.clone()).await {
            Ok(table) => {
                let snapshot = table.snapshot().map_err(|e| delta_err("snapshot", e))?;
                let schema = snapshot.snapshot().arrow_schema();
                let partition_columns = snapshot.metadata().partition_columns().to_vec();
                Ok(Some(Self::loaded(name, url, table, schema, partition_columns)))
            }
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta_err(format!("opening table {name} at {url}"), e)),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn partition_columns(&self) -> &[String] {
        &self.partition_columns
    }

    /// Table properties (`configuration`) of the loaded snapshot.
    pub fn properties(&self) -> Result<HashMap<String, String>> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        Ok(snapshot.metadata().configuration().clone())
    }

    /// Makes the writer schema the loaded snapshot's (after another writer evolved the table).
    pub fn sync_schema(&mut self) -> Result<()> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        self.schema = snapshot.snapshot().arrow_schema();
        Ok(())
    }

    /// Schema evolution: the `metadata` action that adds `fields` (nullable, after the existing
    /// columns) and sets `properties`, to commit atomically with the data written in the new
    /// schema. The writer schema switches at once; a failed commit must be followed by
    /// `refresh` + `sync_schema`.
    pub fn evolve(
        &mut self,
        fields: &[deltalake::arrow::datatypes::Field],
        properties: &[(String, String)],
    ) -> Result<Action> {
        use deltalake::kernel::MetadataExt as _;
        let mut all: Vec<deltalake::arrow::datatypes::Field> =
            self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for f in fields {
            if all.iter().any(|x| x.name().eq_ignore_ascii_case(f.name())) {
                return Err(Error::internal(format!("{}: column {} exists already", self.name, f.name())));
            }
            all.push(f.clone().with_nullable(true));
        }
        let arrow = Arc::new(deltalake::arrow::datatypes::Schema::new(all));
        let kernel: StructType = arrow.as_ref().try_into_kernel().map_err(|e| {
            Error::internal(format!("evolved schema of {} is not a Delta schema", self.name)).with_source(e)
        })?;
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        let mut md = snapshot
            .metadata()
            .clone()
            .with_schema(&kernel)
            .map_err(|e| Error::internal(format!("evolving schema of {}", self.name)).with_source(e))?;
        for (k, v) in properties {
            md = md
                .add_config_key(k.clone(), v.clone())
                .map_err(|e| Error::internal(format!("properties of {}", self.name)).with_source(e))?;
        }
        self.schema = arrow;
        Ok(Action::Metadata(md))
    }

    /// The loaded snapshot's version.
    pub fn version(&self) -> i64 {
        self.table.version().map(|v| v as i64).unwrap_or(-1)
    }

    /// Re-reads the table and checks that every input position is still where this writer left
    /// it (`absent` stands for "no txn yet"). A moved position means another writer is active, or
    /// this one is a zombie that lost its input: `ErrorKind::Conflict`, and nothing is committed.
    pub async fn expect_positions(&mut self, expected: &[(&str, i64)], absent: i64) -> Result<()> {
        self.refresh().await?;
        for (app_id, want) in expected {
            let now = self.txn_version(app_id).await?.unwrap_or(absent);
            if now != *want {
                return Err(Error::conflict(format!(
                    "{}: {app_id} is at {now} in the table but this writer expected {want}; another writer is active \
                     (or this one lost its input) — batch dropped",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Loads every commit made since the snapshot was read.
    pub async fn refresh(&mut self) -> Result<()> {
        self.table
            .update_incremental(None)
            .await
            .map_err(|e| delta_err(format!("refreshing table {}", self.name), e))?;
        self.follow().await?;
        Ok(())
    }

    /// `tributary fork`'s state of the loaded snapshot: (frozen, moved to). Called on every
    /// refresh and commit: looks the two keys up without copying the table's properties.
    pub fn fork_state(&self) -> (bool, Option<String>) {
        let Ok(snapshot) = self.table.snapshot() else { return (false, None) };
        let props = snapshot.metadata().configuration();
        let set = |k: &str| props.get(k).filter(|v| !v.is_empty());
        (set(FORK_FROZEN_PROPERTY).is_some(), set(FORK_MOVED_TO_PROPERTY).cloned())
    }

    /// After `tributary fork` moved the table: this handle reopens at the new location (same
    /// versions, same txns, same files: the fork copied the log as it was). Returns whether it
    /// moved.
    pub async fn follow(&mut self) -> Result<bool> {
        let mut moved = false;
        for _ in 0..8 {
            let Some(to) = self.fork_state().1 else { return Ok(moved) };
            let t = Self::open_here(&self.name, &to)
                .await?
                .ok_or_else(|| Error::external(format!("{}: moved to {to}, but no table is there", self.name)))?;
            tracing::info!(table = %self.name, from = %self.url, to = %t.url, "table moved by a fork: following it");
            self.url = t.url;
            self.table = t.table;
            self.schema = t.schema;
            self.partition_columns = t.partition_columns;
            moved = true;
        }
        Err(Error::internal(format!("{}: more than 8 fork redirects in a row", self.name)))
    }

    /// Copies the data files of `actions` written under `from` (before this handle followed a
    /// fork) to the table's location, so the commit's relative paths resolve there.
    async fn relocate(&self, from: &Url, actions: &[Action]) -> Result<()> {
        let src = crate::store::root_store(from.as_str())?;
        let dst = crate::store::root_store(self.url.as_str())?;
        for a in actions {
            if let Action::Add(add) = a {
                let path = Path::from_url_path(&add.path)
                    .map_err(|e| Error::internal(format!("bad file path {:?}", add.path)).with_source(e))?;
                let bytes = src
                    .get(&path)
                    .await
                    .map_err(|e| Error::external(format!("reading {path} to move it")).with_source(e))?
                    .bytes()
                    .await
                    .map_err(|e| Error::external(format!("reading {path} to move it")).with_source(e))?;
                dst.put(&path, bytes.into())
                    .await
                    .map_err(|e| Error::external(format!("writing {path} at {}", self.url)).with_source(e))?;
            }
        }
        tracing::info!(table = %self.name, to = %self.url, "moved this batch's files to where the table now lives");
        Ok(())
    }

    /// The `txn` version recorded for `app_id` in the loaded snapshot.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(|e| delta_err(format!("reading txn {app_id} of {}", self.name), e))
    }

    /// Writes batches as Parquet files (one per partition value) without committing them.
    pub async fn write_files(&self, batches: &[RecordBatch]) -> Result<Vec<Add>> {
        self.write_files_parallel(batches, 1).await
    }

    /// Like `write_files`, with the Parquet encoding spread over up to `parts` tasks: the rows
    /// are cut into `parts` contiguous slices (zero-copy), each encoded by its own writer on the
    /// runtime's worker threads (so at most `parts` files per partition value). Nothing is
    /// committed; the caller commits every `Add` in one commit as before.
    pub async fn write_files_parallel(&self, batches: &[RecordBatch], parts: usize) -> Result<Vec<Add>> {
        const MIN_ROWS_PER_PART: usize = 8192;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok(vec![]);
        }
        let parts = parts.clamp(1, rows.div_ceil(MIN_ROWS_PER_PART).max(1));
        let snapshot_schema = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?.snapshot().arrow_schema();
        let evolved = snapshot_schema.fields().len() != self.schema.fields().len();
        // Contiguous row slices of the batches, `parts` groups of about equal size.
        let per_part = rows.div_ceil(parts);
        let mut groups: Vec<Vec<RecordBatch>> = vec![Vec::new()];
        let mut in_group = 0usize;
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let mut off = 0;
            while off < b.num_rows() {
                if in_group == per_part {
                    groups.push(Vec::new());
                    in_group = 0;
                }
                let take = (b.num_rows() - off).min(per_part - in_group);
                groups.last_mut().expect("one group").push(b.slice(off, take));
                off += take;
                in_group += take;
            }
        }
        if batches.iter().all(|b| crate::datafile::plain_partitions(b, &self.partition_columns)) {
            return self.write_own(groups).await;
        }
        self.write_with_deltalake(groups, evolved).await
    }

    /// Writes each group of rows with our own writer (`datafile.rs`), one task per group, one
    /// file per partition value and group.
    async fn write_own(&self, groups: Vec<Vec<RecordBatch>>) -> Result<Vec<Add>> {
        use crate::datafile::{DataFile, Sink};
        let local = if self.url.scheme() == "file" {
            Some(self.url.to_file_path().map_err(|_| Error::internal(format!("{}: not a file path", self.url)))?)
        } else {
            None
        };
        let num_indexed = self
            .table
            .snapshot()
            .ok()
            .and_then(|s| s.metadata().configuration().get("delta.dataSkippingNumIndexedCols").cloned())
            .and_then(|v| v.parse::<i64>().ok())
            .map_or(32, |n| if n < 0 { usize::MAX } else { n as usize });
        let mut tasks = Vec::with_capacity(groups.len());
        for group in groups {
            let (schema, partitions, name, local) =
                (self.schema.clone(), self.partition_columns.clone(), self.name.clone(), local.clone());
            tasks.push(tokio::task::spawn_blocking(move || -> Result<Vec<(Sink, Add)>> {
                let props = writer_properties(&schema);
                let mut files: Vec<(Vec<String>, DataFile)> = Vec::new();
                for b in &group {
                    let parts = crate::datafile::split(b, &partitions)?
                        .ok_or_else(|| Error::internal(format!("{name}: partition values changed under the writer")))?;
                    for (values, rows) in parts {
                        let at = match files.iter().position(|(v, _)| *v == values) {
                            Some(at) => at,
                            None => {
                                let pv: Vec<(String, String)> =
                                    partitions.iter().cloned().zip(values.iter().cloned()).collect();
                                let path = DataFile::path_for(&pv);
                                let sink = match &local {
                                    Some(root) => {
                                        let full = root.join(&path);
                                        if let Some(dir) = full.parent() {
                                            std::fs::create_dir_all(dir).map_err(|e| {
                                                Error::external(format!("creating {}", dir.display())).with_source(e)
                                            })?;
                                        }
                                        Sink::File(std::fs::File::create(&full).map_err(|e| {
                                            Error::external(format!("creating {}", full.display())).with_source(e)
                                        })?)
                                    }
                                    None => {
                                        // Sized from the group's bytes: one allocation, no growth copies.
                                        let est: usize = group
                                            .iter()
                                            .flat_map(|b| b.columns())
                                            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
                                            .sum();
                                        Sink::Mem(Vec::with_capacity(est + (1 << 20)))
                                    }
                                };
                                let file_schema = crate::datafile::without(schema.clone(), &partitions);
                                files.push((
                                    values,
                                    DataFile::new(
                                        sink,
                                        path,
                                        pv,
                                        file_schema,
                                        props.clone(),
                                        &parquet_stats_enabled,
                                        num_indexed,
                                    )?,
                                ));
                                files.len() - 1
                            }
                        };
                        files[at].1.write(&rows)?;
                    }
                }
                files.into_iter().map(|(_, f)| f.finish()).collect()
            }));
        }
        let store = if local.is_none() { Some(crate::store::root_store(self.url.as_str())?) } else { None };
        let mut adds = Vec::new();
        for t in tasks {
            let written =
                t.await.map_err(|e| Error::internal(format!("writer task of {}", self.name)).with_source(e))??;
            for (sink, add) in written {
                if let (Sink::Mem(bytes), Some(store)) = (sink, &store) {
                    let path = Path::from(add.path.as_str());
                    store
                        .put(&path, bytes::Bytes::from(bytes).into())
                        .await
                        .map_err(|e| Error::external(format!("writing {path} at {}", self.url)).with_source(e))?;
                }
                adds.push(add);
            }
        }
        Ok(adds)
    }

    /// deltalake's `RecordBatchWriter`, one per group: for partition values our writer leaves to
    /// it (nulls, characters a path must escape).
    pub(crate) async fn write_with_deltalake(&self, groups: Vec<Vec<RecordBatch>>, evolved: bool) -> Result<Vec<Add>> {
        let mut tasks = Vec::with_capacity(groups.len());
        for group in groups {
            let (table, url, schema, partitions, name) = (
                self.table.clone(),
                self.url.clone(),
                self.schema.clone(),
                self.partition_columns.clone(),
                self.name.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let props = writer_properties(&schema);
                let writer = if !evolved {
                    RecordBatchWriter::for_table(&table).map_err(|e| delta_err(format!("writer for {name}"), e))?
                } else {
                    // An evolved schema not committed yet: files in the new schema, committed
                    // with the metadata action from `evolve`.
                    RecordBatchWriter::try_new(url.as_str(), schema, Some(partitions), None)
                        .map_err(|e| delta_err(format!("writer for {name}"), e))?
                };
                let mut writer = writer.with_writer_properties(props);
                for b in group {
                    writer.write(b).await.map_err(|e| delta_err(format!("writing files of {name}"), e))?;
                }
                writer.flush().await.map_err(|e| delta_err(format!("flushing files of {name}"), e))
            }));
        }
        let mut adds = Vec::new();
        for t in tasks {
            adds.extend(t.await.map_err(|e| Error::internal(format!("writer task of {}", self.name)).with_source(e))??);
        }
        Ok(adds)
    }

    /// Commits `actions` with the `txn` actions that record the input positions, atomically, on
    /// top of the loaded snapshot. A concurrent commit carrying one of the same app_ids makes this
    /// fail with `ErrorKind::Conflict` (the caller reloads and re-decides); concurrent commits
    /// of other writers are retried inside, up to `max_retries`.
    pub async fn commit(
        &mut self,
        actions: Vec<Action>,
        txns: Vec<Transaction>,
        app_metadata: HashMap<String, Value>,
        max_retries: usize,
    ) -> Result<i64> {
        let (frozen, moved) = self.fork_state();
        if frozen || moved.is_some() {
            return Err(Error::conflict(format!(
                "{}: a fork is moving this table{}; not committing here",
                self.name,
                moved.map(|m| format!(" (to {m})")).unwrap_or_default()
            )));
        }
        self.commit_unfenced(actions, txns, app_metadata, max_retries).await
    }

    /// `commit` without the fork check (the fork's own freeze and redirect commits).
    pub(crate) async fn commit_unfenced(
        &mut self,
        actions: Vec<Action>,
        txns: Vec<Transaction>,
        app_metadata: HashMap<String, Value>,
        max_retries: usize,
    ) -> Result<i64> {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: if self.partition_columns.is_empty() { None } else { Some(self.partition_columns.clone()) },
            predicate: None,
        };
        let mut all = actions;
        all.extend(txns.into_iter().map(Action::Txn));
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        // deltalake's post-commit hook would look for expired log files after *every* commit,
        // listing the whole `_delta_log` (30 days of commits by default) each time; only a new
        // checkpoint can make more of them deletable, so that is when we clean up.
        let props = CommitProperties::default()
            .with_metadata(app_metadata)
            .with_max_retries(max_retries)
            .with_cleanup_expired_logs(Some(false));
        let finalized = CommitBuilder::from(props)
            .with_actions(all)
            .build(Some(snapshot), self.table.log_store(), operation)
            .await
            .map_err(|e| delta_err(format!("committing to {}", self.name), e))?;
        let version = finalized.version();
        self.last_commit_retries = finalized.metrics.num_retries;
        let checkpointed = finalized.metrics.new_checkpoint_created;
        self.table.state = Some(finalized.snapshot());
        if checkpointed {
            self.cleanup_expired_logs().await;
        }
        Ok(version as i64)
    }

    /// Deletes the log files older than the table's `delta.logRetentionDuration` that precede a
    /// checkpoint (what deltalake's post-commit hook does), when `delta.enableExpiredLogCleanup`
    /// allows it. Runs after a commit that wrote a checkpoint;
    /// the commit has succeeded by then, so a failure here is logged, not returned — the next
    /// checkpoint tries again.
    async fn cleanup_expired_logs(&self) {
        let Ok(snapshot) = self.table.snapshot() else { return };
        use deltalake::table::config::TablePropertiesExt;
        if !snapshot.table_config().enable_expired_log_cleanup() {
            return;
        }
        if let Err(e) = deltalake::checkpoints::cleanup_metadata(&self.table, None).await {
            tracing::warn!(table = %self.name, error = %e, "could not clean up expired log files; the next checkpoint retries");
        }
    }

    /// The latest version in the log, for a reader of new versions (`changes`, `read_versions*`).
    /// Found by reading the commits after the newest version seen, one by one (one small read
    /// per new commit, where listing the log touches every file in it); the table is loaded only
    /// when one of them changes its schema, protocol or properties — a fork's redirect is one, so
    /// it is followed before the versions are read by number — or when the reader is more than
    /// `PROBE_LIMIT` versions behind. Loading a table re-reads its checkpoint and every live
    /// file's statistics, which is what a live pipeline's readers spent their time on.
    pub async fn latest_version(&mut self) -> Result<i64> {
        let known = self.version().max(self.head);
        self.head_calls = self.head_calls.wrapping_add(1);
        let listed = if self.head_calls.is_multiple_of(LIST_EVERY) { Some(self.log_head().await?) } else { None };
        let mut v = known;
        let mut load = false;
        while listed.is_none_or(|l| v < l) {
            if v - known >= PROBE_LIMIT {
                load = true;
                break;
            }
            let next = v + 1;
            let Some(actions) = self.commit_actions(next).await? else {
                break; // versions are contiguous: nothing newer (a listed gap is reported by `changes`)
            };
            load |= actions.iter().any(|a| matches!(a, Action::Metadata(_) | Action::Protocol(_)));
            v = next;
        }
        let mut latest = v.max(listed.unwrap_or(v));
        if load {
            let at = self.url.clone();
            self.refresh().await?;
            latest = if self.url != at { self.log_head().await? } else { latest.max(self.version()) };
        }
        self.head = latest;
        Ok(latest)
    }

    async fn log_head(&self) -> Result<i64> {
        self.table
            .get_latest_version()
            .await
            .map(|v| v as i64)
            .map_err(|e| delta_err(format!("latest version of {}", self.name), e))
    }

    /// The data-changing `add` actions of each version in `(after, up_to]`, in order.
    pub async fn changes(&self, after: i64, up_to: i64) -> Result<Vec<(i64, Vec<Add>)>> {
        self.changes_within(after, up_to, u64::MAX).await
    }

    /// Like `changes`, but only as many versions from `after + 1` on as add at most `max_bytes`
    /// of data files in all (at least the first, whatever its size): a reader's batch bounded
    /// by the bytes it will decode, not only by a count of versions (a backlog of large
    /// versions — a catch-up after an outage — would otherwise be read in one go).
    pub async fn changes_within(&self, after: i64, up_to: i64, max_bytes: u64) -> Result<Vec<(i64, Vec<Add>)>> {
        let mut out = Vec::new();
        let mut bytes_so_far = 0u64;
        for v in (after + 1)..=up_to {
            let actions = self.commit_actions(v).await?.ok_or_else(|| {
                Error::user(format!(
                    "version {v} of {} is no longer in the Delta log (log retention); a backfill is needed",
                    self.name
                ))
            })?;
            let adds: Vec<Add> = actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Add(add) if add.data_change => Some(add),
                    Action::CommitInfo(ci) => {
                        // The writer's trace context: this pass's commits continue its trace.
                        if let Some(Value::String(tp)) = ci.info.get(TRACEPARENT_KEY) {
                            tributary_core::telemetry::note_input_trace(tp);
                        }
                        None
                    }
                    _ => None,
                })
                .collect();
            let bytes: u64 = adds.iter().map(|a| a.size.max(0) as u64).sum();
            if !out.is_empty() && bytes_so_far.saturating_add(bytes) > max_bytes {
                break;
            }
            bytes_so_far = bytes_so_far.saturating_add(bytes);
            out.push((v, adds));
        }
        Ok(out)
    }

    /// The actions of commit `version`, read from its log file (`None`: no such file).
    async fn commit_actions(&self, version: i64) -> Result<Option<Vec<Action>>> {
        let bytes = self
            .table
            .log_store()
            .read_commit_entry(version as u64)
            .await
            .map_err(|e| delta_err(format!("reading version {version} of {}", self.name), e))?;
        let Some(bytes) = bytes else { return Ok(None) };
        deltalake::logstore::get_actions(version as u64, &bytes)
            .map(Some)
            .map_err(|e| delta_err(format!("parsing version {version} of {}", self.name), e))
    }

    /// The application metadata `key` of the commitInfo of `version`, if any.
    pub async fn commit_metadata(&self, version: i64, key: &str) -> Result<Option<Value>> {
        if version < 0 {
            return Ok(None);
        }
        let Some(actions) = self.commit_actions(version).await? else { return Ok(None) };
        Ok(actions.into_iter().find_map(|a| match a {
            Action::CommitInfo(ci) => ci.info.get(key).cloned(),
            _ => None,
        }))
    }

    /// Files of the loaded snapshot.
    pub fn files(&self) -> Result<Vec<FileRef>> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        Ok(snapshot
            .log_data()
            .iter()
            .map(|f| FileRef {
                path: f.path().to_string(),
                size: f.size(),
                partition_values: f.partition_values_map(),
                num_records: f.num_records().map(|n| n as i64),
                stats: f.stats(),
            })
            .collect())
    }

    /// `remove` actions (dataChange=true) for the given files of the current snapshot.
    pub fn remove_actions(&self, paths: &std::collections::HashSet<String>) -> Result<Vec<Action>> {
        self.remove_actions_with(paths, true)
    }

    fn remove_actions_with(&self, paths: &std::collections::HashSet<String>, data_change: bool) -> Result<Vec<Action>> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        Ok(snapshot
            .log_data()
            .iter()
            .filter(|f| paths.contains(f.path().as_ref()))
            .map(|f| Action::Remove(f.remove_action(data_change)))
            .collect())
    }

    /// Fails with a conflict unless every one of `paths` is still a live file of the loaded
    /// snapshot: a commit that replaces files another writer already replaced would bring their
    /// rows back next to that writer's (a duplicate).
    fn ensure_present(&self, paths: &std::collections::HashSet<String>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        let live = snapshot.log_data().iter().filter(|f| paths.contains(f.path().as_ref())).count();
        if live != paths.len() {
            return Err(Error::conflict(format!(
                "{}: {} of the {} files this commit replaces were removed by another writer; not committing",
                self.name,
                paths.len() - live,
                paths.len()
            )));
        }
        Ok(())
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        self.table.log_store().object_store(None)
    }

    /// Reads one data file, restoring partition columns, conformed to the table schema.
    #[allow(deprecated)]
    pub async fn read_file(
        &self,
        path: &str,
        size: Option<i64>,
        partition_values: &HashMap<String, Option<String>>,
    ) -> Result<Vec<RecordBatch>> {
        let location = Path::from_url_path(path)
            .map_err(|e| Error::internal(format!("bad file path {path:?} in {}", self.name)).with_source(e))?;
        let mut reader = ParquetObjectReader::new(self.store(), location);
        if let Some(size) = size.filter(|s| *s > 0) {
            reader = reader.with_file_size(size as u64);
        }
        let columns: Option<Vec<&str>> = self.read_columns.as_ref().map(|c| c.iter().map(String::as_str).collect());
        let batches = self.read_parquet(reader, path, columns.as_deref()).await?;
        let schema = self.read_schema();
        batches.into_iter().map(|b| self.conform(&schema, b, partition_values)).collect()
    }

    #[allow(deprecated)]
    async fn read_parquet(
        &self,
        reader: ParquetObjectReader,
        path: &str,
        columns: Option<&[&str]>,
    ) -> Result<Vec<RecordBatch>> {
        let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| Error::external(format!("opening {path} of {}", self.name)).with_source(e))?;
        if let Some(cols) = columns {
            let mask =
                deltalake::parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), cols.iter().copied());
            builder = builder.with_projection(mask);
        }
        let stream =
            builder.build().map_err(|e| Error::external(format!("reading {path} of {}", self.name)).with_source(e))?;
        stream
            .try_collect()
            .await
            .map_err(|e| Error::external(format!("reading {path} of {}", self.name)).with_source(e))
    }

    /// Reads only the named (non-partition) columns of every file of the loaded snapshot.
    pub async fn read_columns(&self, columns: &[&str]) -> Result<Vec<RecordBatch>> {
        self.read_columns_of(self.files()?, columns).await
    }

    /// Some columns of the given files (e.g. one partition's); partition columns are not restored.
    #[allow(deprecated)]
    pub async fn read_columns_of(&self, files: Vec<FileRef>, columns: &[&str]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for f in files {
            let location = Path::from_url_path(&f.path)
                .map_err(|e| Error::internal(format!("bad file path {:?} in {}", f.path, self.name)).with_source(e))?;
            let mut reader = ParquetObjectReader::new(self.store(), location);
            if f.size > 0 {
                reader = reader.with_file_size(f.size as u64);
            }
            out.extend(self.read_parquet(reader, &f.path, Some(columns)).await?);
        }
        Ok(out)
    }

    fn conform(
        &self,
        schema: &SchemaRef,
        batch: RecordBatch,
        partition_values: &HashMap<String, Option<String>>,
    ) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let col = if let Some(c) = batch.column_by_name(field.name()) {
                if c.data_type() == field.data_type() {
                    c.clone()
                } else {
                    deltalake::arrow::compute::cast(c, field.data_type()).map_err(|e| {
                        Error::internal(format!("column {} of {}", field.name(), self.name)).with_source(e)
                    })?
                }
            } else if let Some(v) = partition_values.get(field.name()) {
                let arr: ArrayRef = Arc::new(StringArray::from(vec![v.clone(); n]));
                if arr.data_type() == field.data_type() {
                    arr
                } else {
                    deltalake::arrow::compute::cast(&arr, field.data_type()).map_err(|e| {
                        Error::internal(format!("partition {} of {}", field.name(), self.name)).with_source(e)
                    })?
                }
            } else {
                new_null_array(field.data_type(), n)
            };
            cols.push(col);
        }
        RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Error::internal(format!("conforming a batch of {}", self.name)).with_source(e))
    }

    /// Reads the files named by `add` actions.
    pub async fn read_adds(&self, adds: &[Add]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for add in adds {
            out.extend(self.read_file(&add.path, Some(add.size), &add.partition_values).await?);
        }
        Ok(out)
    }

    /// Reads every row of the loaded snapshot.
    pub async fn read_all(&self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for f in self.files()? {
            out.extend(self.read_file(&f.path, Some(f.size), &f.partition_values).await?);
        }
        Ok(out)
    }

    /// Row count, file count, last commit time and max of `time_column`, from the log alone.
    pub fn stats(&self, time_column: Option<&str>) -> Result<TableStats> {
        let snapshot = self.table.snapshot().map_err(|e| delta_err("snapshot", e))?;
        let version = snapshot.version();
        let mut s = TableStats {
            version: version as i64,
            last_commit_unix_ms: snapshot.version_timestamp(version).unwrap_or(0),
            ..Default::default()
        };
        for f in snapshot.log_data().iter() {
            s.file_count += 1;
            s.row_count += f.num_records().unwrap_or(0) as i64;
            if let (Some(col), Some(stats)) = (time_column, f.stats())
                && let Some(ms) = max_time_from_stats(&stats, col)
            {
                s.max_time_unix_ms = s.max_time_unix_ms.max(ms);
            }
        }
        Ok(s)
    }
}

/// Extracts `maxValues.<col>` from a file's JSON statistics as Unix milliseconds.
pub fn max_time_from_stats(stats: &str, col: &str) -> Option<i64> {
    let v: Value = serde_json::from_str(stats).ok()?;
    let s = v.get("maxValues")?.get(col)?.as_str()?;
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    // Statistics are truncated to milliseconds; the true max is within the next millisecond.
    Some(t.timestamp_millis())
}

/// Extracts `minValues.<col>` of a boolean column from a file's JSON statistics.
pub fn min_bool_from_stats(stats: &str, col: &str) -> Option<bool> {
    let v: Value = serde_json::from_str(stats).ok()?;
    v.get("minValues")?.get(col)?.as_bool()
}

/// Builds a `txn` action.
pub fn txn(app_id: impl Into<String>, version: i64) -> Transaction {
    Transaction::new_with_last_update(app_id.into(), version, Some(tributary_core::now_ms()))
}

impl Table {
    /// Announces a commit of this table to downstream stages (no-op without a notice sink).
    pub fn notice(&self, stage: &str, region: &str, version: i64, rows: u64, max_event_time_ms: i64) {
        tributary_core::notices::publish(tributary_core::notices::CommitNotice {
            table: self.url.to_string(),
            name: self.name.clone(),
            version,
            rows,
            max_event_time_ms,
            stage: stage.into(),
            region: region.into(),
            committed_at_ms: tributary_core::now_ms(),
            traceparent: self.last_traceparent.clone(),
        });
    }
}

impl Table {
    /// Status of this table for the PipelineStatus RPC, from the loaded snapshot's log.
    pub fn status(&self, time_column: Option<&str>) -> tributary_proto::v1::TableStatus {
        let base = tributary_proto::v1::TableStatus {
            name: self.name.clone(),
            uri: self.url.to_string(),
            ..Default::default()
        };
        match self.stats(time_column) {
            Ok(s) => tributary_proto::v1::TableStatus {
                version: s.version,
                last_commit_unix_ms: s.last_commit_unix_ms,
                max_event_time_unix_ms: s.max_time_unix_ms,
                row_count: s.row_count,
                file_count: s.file_count,
                ..base
            },
            Err(_) => tributary_proto::v1::TableStatus { version: self.version(), ..base },
        }
    }
}

/// An input position a commit moves: `app_id` from `from` to `to`.
#[derive(Debug, Clone)]
pub struct PositionMove {
    pub app_id: String,
    pub from: i64,
    pub to: i64,
}

impl Table {
    /// Commits with backoff and jitter when other writers (other regions' federators) keep
    /// winning the race for the next version. Between attempts the table is reloaded and every
    /// position is checked: if this writer's own earlier attempt already landed (all `to`
    /// recorded) the commit is done; if another writer moved a position, this one is a zombie and
    /// gets `ErrorKind::Conflict` without committing. A position without a `txn` yet reads as
    /// `absent`.
    pub(crate) async fn commit_contended(
        &mut self,
        actions: Vec<Action>,
        moves: &[PositionMove],
        app_metadata: HashMap<String, Value>,
        labels: (&str, &str),
        max_attempts: u32,
        absent: i64,
    ) -> Result<i64> {
        let txns: Vec<Transaction> = moves.iter().map(|m| txn(&m.app_id, m.to)).collect();
        // A unique id in the commitInfo: after a lost race, "the position is at `to`" counts as
        // this writer's own earlier attempt only if the commit that moved it carries this id (a
        // twin writer that committed the same position with other content is a conflict).
        let attempt_id = uuid::Uuid::new_v4().to_string();
        let mut app_metadata = app_metadata;
        app_metadata.insert("tributary.attempt".into(), Value::String(attempt_id.clone()));
        let started_at = self.version();
        let mut attempt = 0u32;
        let mut retries = 0u64;
        loop {
            attempt += 1;
            let r = self.commit(actions.clone(), txns.clone(), app_metadata.clone(), 3).await;
            retries += if r.is_ok() { self.last_commit_retries } else { 4 };
            self.last_commit_retries = retries;
            match r {
                Ok(v) => return Ok(v),
                Err(e) if e.kind == ErrorKind::Conflict && attempt < max_attempts => {
                    tributary_core::metrics::commit_conflict(labels.0, labels.1, &self.name, attempt, &e.to_string());
                    // Exponential backoff (capped at 1.28 s) with random jitter: writers that
                    // lost the same race must not retry in lockstep (a clock-derived jitter let
                    // them collide again). A lower cap was measured worse with 50 writers
                    // (`bench-central`): more attempts in flight, more lost races, half the
                    // commits/s.
                    let base = 5u64 << attempt.min(8);
                    let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % base;
                    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
                    let written_at = self.url.clone();
                    self.refresh().await?;
                    if self.url != written_at {
                        self.relocate(&written_at, &actions).await?;
                    }

                    let mut landed = 0;
                    for m in moves {
                        let now = self.txn_version(&m.app_id).await?.unwrap_or(absent);
                        if now == m.to {
                            landed += 1;
                        } else if now != m.from {
                            return Err(Error::conflict(format!(
                                "{}: {} moved to {now} by another writer (expected {}); not committing",
                                self.name, m.app_id, m.from
                            )));
                        }
                    }
                    if landed == moves.len() && !moves.is_empty() {
                        for v in (started_at + 1)..=self.version() {
                            if self.commit_metadata(v, "tributary.attempt").await?.as_ref().and_then(|x| x.as_str())
                                == Some(attempt_id.as_str())
                            {
                                return Ok(v);
                            }
                        }
                        return Err(Error::conflict(format!(
                            "{}: another writer committed the same input positions (to {:?}); this batch is dropped",
                            self.name,
                            moves.iter().map(|m| m.to).collect::<Vec<_>>()
                        )));
                    }
                    // The files this commit replaces must still be live (else another writer
                    // rewrote them: committing would duplicate their rows) — unless they are gone
                    // because an earlier attempt of this very commit landed.
                    let replaced: std::collections::HashSet<String> = actions
                        .iter()
                        .filter_map(|a| match a {
                            Action::Remove(r) => Some(r.path.clone()),
                            _ => None,
                        })
                        .collect();
                    if let Err(e) = self.ensure_present(&replaced) {
                        for v in (started_at + 1)..=self.version() {
                            if self.commit_metadata(v, "tributary.attempt").await?.as_ref().and_then(|x| x.as_str())
                                == Some(attempt_id.as_str())
                            {
                                return Ok(v);
                            }
                        }
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parquet settings of every file Tributary writes: snappy, and for the wide, high-cardinality
/// text columns (the raw payload, rescued data, quarantined raw bytes) no dictionary (it never
/// pays off and is rebuilt then abandoned per page) and statistics per chunk only.
fn writer_properties(schema: &SchemaRef) -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
    use deltalake::parquet::schema::types::ColumnPath;
    let mut b = WriterProperties::builder().set_compression(deltalake::parquet::basic::Compression::SNAPPY);
    for name in ["payload", "_rescued_data", "raw", "detail"] {
        if schema.field_with_name(name).is_ok() {
            b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
        }
    }
    // No statistics on text columns (but a few closed vocabularies): Delta copies a file's
    // min/max values into the log, and the log is history that cannot be rewritten — a
    // customer id or a payload there would survive an erasure ("forget a customer"). Numbers,
    // timestamps and booleans (event_time, is_final: what the stages prune on) keep theirs.
    for f in schema.fields() {
        if !parquet_stats_enabled(f) {
            b = b.set_column_statistics_enabled(ColumnPath::from(f.name().as_str()), EnabledStatistics::None);
        }
    }
    b.build()
}

/// Whether a column's Parquet (and so Delta) statistics are written: not for text columns but a
/// few closed vocabularies (see `writer_properties`).
fn parquet_stats_enabled(f: &deltalake::arrow::datatypes::Field) -> bool {
    use deltalake::arrow::datatypes::DataType;
    const TEXT_WITH_STATS: &[&str] = &["source", "region", "event_date", "sku", "record_type", "level", "stage"];
    let text = matches!(
        f.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Binary | DataType::LargeBinary
    );
    !text || TEXT_WITH_STATS.contains(&f.name().as_str())
}

/// Who commits, how wide and how persistently: one per service, from its config.
#[derive(Debug, Clone)]
pub struct Writer {
    pub stage: String,
    pub region: String,
    /// Parallel Parquet encoders per commit (`server.worker_threads`).
    pub threads: usize,
    /// Commit attempts while other writers win the race for the next version (`commit_attempts`,
    /// the one retry setting of every stage).
    pub attempts: u32,
}

impl Writer {
    pub fn new(stage: &str, region: &str, cfg: &tributary_core::config::Config) -> Self {
        Self {
            stage: stage.into(),
            region: region.into(),
            threads: cfg.server.threads(),
            attempts: cfg.commit_attempts.max(1) as u32,
        }
    }
}

/// One commit of the commit protocol: what a stage hands over once it has decided a batch.
pub struct Commit<'a> {
    /// Rows to write as new files (any number of batches, already in the writer schema).
    pub batches: &'a [RecordBatch],
    /// Write every batch into files of its own (never mixed with the other batches' rows:
    /// gold's final billing rows and provisional ones).
    pub file_per_batch: bool,
    /// Files of the current snapshot the rows replace (a partition rewrite), removed in the
    /// same commit. Only the writer that owns those partitions may name them.
    pub replacing: HashSet<String>,
    /// A schema or properties `metadata` action committed with the rows. A commit that carries
    /// one is never retried on a conflict: the metadata it was built on may be stale.
    pub metadata: Option<Action>,
    /// The input positions this commit moves (`txn` actions), checked before committing.
    pub moves: Vec<PositionMove>,
    /// `commitInfo` application metadata (reconciliation, batch description).
    pub app_metadata: HashMap<String, Value>,
    /// Fault point hit after the files are written, before the commit (crash tests).
    pub fault_before_commit: Option<&'static str>,
    /// What a position without a `txn` in the table reads as (-1 for offsets and versions, 0 for
    /// batch sequences).
    pub absent: i64,
    /// false for a compaction: the same rows in fewer files (`dataChange=false` on the adds and
    /// removes, so incremental readers skip them).
    pub data_change: bool,
    /// An erasure (forget a customer): the removes change data (`dataChange=true`: rows are
    /// gone) but the adds hold rows the table already had (`dataChange=false`), so incremental
    /// readers do not read the rewritten rows a second time.
    pub erasure: bool,
}

impl<'a> Commit<'a> {
    /// Rows moving `moves`, with no schema change and no fault point.
    pub fn new(
        batches: &'a [RecordBatch],
        moves: Vec<PositionMove>,
        app_metadata: HashMap<String, Value>,
        absent: i64,
    ) -> Self {
        Self {
            batches,
            file_per_batch: false,
            replacing: HashSet::new(),
            metadata: None,
            moves,
            app_metadata,
            fault_before_commit: None,
            absent,
            data_change: true,
            erasure: false,
        }
    }
    /// A compaction: the replaced files' rows rewritten unchanged (`dataChange=false`).
    pub fn compaction(mut self) -> Self {
        self.data_change = false;
        self
    }
    /// An erasure: the replaced files' rows minus (or with redacted) a customer's.
    pub fn erasure(mut self) -> Self {
        self.erasure = true;
        self
    }
    /// Commits `metadata` (schema evolution, table properties) with the rows.
    pub fn evolving(mut self, metadata: Option<Action>) -> Self {
        self.metadata = metadata;
        self
    }
    /// Hits fault point `name` after the files are written, before the commit.
    pub fn fault(mut self, name: &'static str) -> Self {
        self.fault_before_commit = Some(name);
        self
    }
    /// Removes `files` (of the loaded snapshot) in the same commit: a partition rewrite.
    pub fn replacing(mut self, files: HashSet<String>) -> Self {
        self.replacing = files;
        self
    }
    /// Writes each batch into files of its own.
    pub fn file_per_batch(mut self) -> Self {
        self.file_per_batch = true;
        self
    }
}

impl Table {
    /// The commit protocol, in one place for every stage and output table:
    /// write the files (Parquet encoding on up to `w.threads` tasks) → fault point → re-read the
    /// table and check that every position is still at its `from` (else this writer is a zombie
    /// or has a concurrent twin: `ErrorKind::Conflict`, nothing committed) → commit rows, removes
    /// of replaced files and txns atomically, backing off while other writers of *other*
    /// positions win the race, up to `w.attempts` (an earlier attempt of this writer that landed
    /// counts as done). Returns the committed version; an empty commit (no rows, no actions)
    /// still records the positions.
    pub async fn commit_batch(&mut self, mut c: Commit<'_>, w: &Writer) -> Result<i64> {
        use tracing::Instrument;
        let span = tributary_core::telemetry::commit_span(&self.name, &w.stage, &w.region);
        let tp = tributary_core::telemetry::traceparent_of(&span);
        if let Some(tp) = &tp {
            c.app_metadata.insert(TRACEPARENT_KEY.to_string(), Value::String(tp.clone()));
        }
        let r = self.commit_batch_inner(c, w).instrument(span.clone()).await;
        if let Ok(v) = &r {
            span.record("version", v);
            self.last_traceparent = tp;
        }
        r
    }

    async fn commit_batch_inner(&mut self, c: Commit<'_>, w: &Writer) -> Result<i64> {
        let mut actions: Vec<Action> = c.metadata.iter().cloned().collect();
        let retry = c.metadata.is_none();
        let typed_on = self.version();
        actions.extend(self.remove_actions_with(&c.replacing, c.data_change)?);
        let mark = |mut a: Add| {
            a.data_change = c.data_change && !c.erasure;
            Action::Add(a)
        };
        if c.file_per_batch {
            for b in c.batches {
                let adds = self.write_files_parallel(std::slice::from_ref(b), w.threads).await?;
                actions.extend(adds.into_iter().map(mark));
            }
        } else {
            actions.extend(self.write_files_parallel(c.batches, w.threads).await?.into_iter().map(mark));
        }
        if let Some(p) = c.fault_before_commit {
            tributary_core::fault::check(p)?;
        }
        let expected: Vec<(&str, i64)> = c.moves.iter().map(|m| (m.app_id.as_str(), m.from)).collect();
        let written_at = self.url.clone();
        self.expect_positions(&expected, c.absent).await?;
        if self.url != written_at {
            self.relocate(&written_at, &actions).await?;
        }
        self.ensure_present(&c.replacing)?;
        if !retry {
            // The metadata action was built on the snapshot the rows were typed with: commit on
            // exactly that state or not at all (another writer's schema change would be lost).
            if self.version() != typed_on {
                self.sync_schema()?;
                return Err(Error::conflict(format!(
                    "{}: the table moved from version {typed_on} to {} while this batch changed its metadata; \
                     batch dropped, to be redone on the new state",
                    self.name,
                    self.version()
                )));
            }
            let txns = c.moves.iter().map(|m| txn(&m.app_id, m.to)).collect();
            return self.commit(actions, txns, c.app_metadata, 0).await;
        }
        self.commit_contended(actions, &c.moves, c.app_metadata, (&w.stage, &w.region), w.attempts, c.absent).await
    }

    /// Retention: removes (dataChange=true) every live file whose `column` partition value is
    /// before `cutoff` (ISO dates compare as strings), in one commit; how many files. Tables not
    /// partitioned by `column` are left alone.
    pub async fn drop_partitions_before(&mut self, column: &str, cutoff: &str, w: &Writer) -> Result<usize> {
        self.refresh().await?;
        if !self.partition_columns.iter().any(|c| c == column) {
            return Ok(0);
        }
        let old: std::collections::HashSet<String> = self
            .files()?
            .into_iter()
            .filter(|f| f.partition_values.get(column).and_then(|v| v.as_deref()).is_some_and(|v| v < cutoff))
            .map(|f| f.path)
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let n = old.len();
        let meta = HashMap::from([(
            "tributary.retention".to_string(),
            serde_json::json!({"column": column, "before": cutoff, "files": n}),
        )]);
        self.commit_batch(Commit::new(&[], vec![], meta, -1).replacing(old), w).await?;
        Ok(n)
    }

    /// OPTIMIZE (bin-packing): per partition with at least `min_files` live files, their rows
    /// rewritten into one file set in one commit with `dataChange=false` — readers see the same
    /// rows, incremental readers see nothing new. A partition at a time (bounded memory). Appends
    /// running meanwhile are not in conflict (their new files are not replaced); a partition
    /// another writer rewrote meanwhile is skipped with a conflict, never duplicated.
    pub async fn compact(&mut self, min_files: usize, w: &Writer) -> Result<CompactReport> {
        self.refresh().await?;
        let mut by_partition: std::collections::BTreeMap<Vec<(String, Option<String>)>, Vec<FileRef>> =
            Default::default();
        for f in self.files()? {
            let mut key: Vec<(String, Option<String>)> = f.partition_values.clone().into_iter().collect();
            key.sort();
            by_partition.entry(key).or_default().push(f);
        }
        let mut report = CompactReport::default();
        for (key, files) in by_partition {
            if files.len() < min_files.max(2) {
                continue;
            }
            let mut batches = Vec::new();
            for f in &files {
                batches.extend(self.read_file(&f.path, Some(f.size), &f.partition_values).await?);
            }
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let paths: std::collections::HashSet<String> = files.iter().map(|f| f.path.clone()).collect();
            let meta = HashMap::from([(
                "tributary.compaction".to_string(),
                serde_json::json!({"partition": key, "files": files.len(), "rows": rows}),
            )]);
            match self.commit_batch(Commit::new(&batches, vec![], meta, -1).replacing(paths).compaction(), w).await {
                Ok(v) => {
                    report.partitions += 1;
                    report.files_removed += files.len();
                    report.rows += rows;
                    report.version = v;
                }
                Err(e) if e.kind == ErrorKind::Conflict => {
                    tracing::warn!(table = %self.name, partition = ?key, error = %e, "compaction of a partition skipped");
                    report.skipped += 1;
                }
                Err(e) => return Err(e),
            }
        }
        report.files_after = self.files()?.len();
        Ok(report)
    }

    /// Every row added by the versions in `(after, up_to]`, with the version that added it, in
    /// commit order: how a stage reads its input incrementally.
    pub async fn read_versions(&self, after: i64, up_to: i64) -> Result<Vec<(i64, RecordBatch)>> {
        Ok(self.read_versions_within(after, up_to, u64::MAX).await?.1)
    }

    /// `read_versions` of as many versions from `after + 1` on as `changes_within` admits under
    /// `max_bytes`; returns the last version read (`up_to` or less) with the rows.
    pub async fn read_versions_within(
        &self,
        after: i64,
        up_to: i64,
        max_bytes: u64,
    ) -> Result<(i64, Vec<(i64, RecordBatch)>)> {
        let changes = self.changes_within(after, up_to, max_bytes).await?;
        let last = changes.last().map_or(up_to.min(after), |(v, _)| *v);
        let mut out = Vec::new();
        for (v, adds) in changes {
            for b in self.read_adds(&adds).await? {
                out.push((v, b));
            }
        }
        Ok((last, out))
    }
}

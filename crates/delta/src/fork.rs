//! `tributary fork SRC DST`: moves a live table to another location or store without pausing
//! ingest for more than the last increment (the seed's manual steps in one command).
//!
//! Unlike `clone`, a fork copies the table *as it is*: every data file and every log file under
//! the same names, so the copy has the same versions, the same `txn` positions of its writers
//! and the same history. That is what lets the table's writers *and* its downstream readers (whose
//! exactly-once positions are version numbers of this table) carry on at the new location.
//!
//! 1. Copy rounds while writers continue: the first lists both tables and copies what DST lacks
//!    (files are immutable in Delta; a file already there at its size is skipped, so a killed fork
//!    resumes); each later round lists the log from the last copied commit on and copies the new
//!    commits and the files they add — its cost is the increment, not the table — until a round
//!    finds at most `quiet` new commits.
//! 2. Freeze: a metadata commit on SRC sets `tributary.fork.frozen`. Writers that see it (or lose
//!    a race to it: Delta refuses an append over a metadata change) back off instead of committing.
//! 3. Last increment (incremental too): every commit up to and including the freeze version F.
//! 4. DST commits F+1 clearing the freeze; then SRC commits F+1 setting `tributary.fork.movedTo`.
//!    Both F+1 commits hold no data, so a reader positioned anywhere up to F+1 of SRC reads the
//!    same rows from DST. Every handle on SRC follows the redirect on its next refresh, open or
//!    lost race (moving the data files of a batch it had written under SRC), and commits to DST.
//!
//! Writers pause from the freeze to the redirect: the time to copy one increment.

use crate::{Action, Table};
use deltalake::Path;
use futures::TryStreamExt as _;
use object_store::{ObjectStore, ObjectStoreExt as _};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tributary_core::{Error, Result};

#[derive(Debug, Clone, Default)]
pub struct ForkReport {
    pub rounds: usize,
    pub files_copied: usize,
    pub bytes_copied: u64,
    /// The freeze version on SRC; DST holds the same versions up to it.
    pub frozen_at: i64,
    /// How long writers were held back (freeze → redirect), milliseconds.
    pub frozen_ms: u64,
    pub total_ms: u64,
}

impl std::fmt::Display for ForkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fork: {} copy rounds, {} files ({:.1} MB), frozen at version {} for {} ms, moved at version {}, {} ms in all",
            self.rounds,
            self.files_copied,
            self.bytes_copied as f64 / 1e6,
            self.frozen_at,
            self.frozen_ms,
            self.frozen_at + 1,
            self.total_ms
        )
    }
}

/// The version of a log file name (`N.json`, `N.checkpoint.parquet`, `N.checkpoint.*.parquet`).
fn log_version(name: &str) -> Option<i64> {
    let digits = name.split('.').next()?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = &name[20..];
    (rest == ".json" || (rest.starts_with(".checkpoint") && rest.ends_with(".parquet"))).then(|| digits.parse().ok())?
}

async fn list(store: &Arc<dyn ObjectStore>, what: &str) -> Result<HashMap<Path, u64>> {
    let metas: Vec<_> =
        store.list(None).try_collect().await.map_err(|e| Error::external(format!("listing {what}")).with_source(e))?;
    Ok(metas.into_iter().map(|m| (m.location, m.size)).collect())
}

/// What a copy round did.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    files: usize,
    bytes: u64,
    /// Log commits copied.
    commits: usize,
    /// The newest commit version DST now holds (-1: none).
    newest: i64,
}

/// Copies one object from SRC to DST; `None` when SRC no longer has it.
async fn copy_one(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    names: (&str, &str),
    p: &Path,
) -> Result<Option<u64>> {
    let b = match src.get(p).await {
        Ok(r) => r.bytes().await.map_err(|e| Error::external(format!("reading {}/{p}", names.0)).with_source(e))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::external(format!("reading {}/{p}", names.0)).with_source(e)),
    };
    let n = b.len() as u64;
    dst.put(p, b.into()).await.map_err(|e| Error::external(format!("writing {}/{p}", names.1)).with_source(e))?;
    Ok(Some(n))
}

/// Copies `_last_checkpoint` when the checkpoint it names is at most `upto`, after making sure
/// DST holds that checkpoint's files (a checkpoint written after the round listed the log would
/// otherwise be named without being there).
async fn copy_last_checkpoint(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    names: (&str, &str),
    upto: Option<i64>,
) -> Result<()> {
    let p = Path::from("_delta_log/_last_checkpoint");
    let Ok(r) = src.get(&p).await else { return Ok(()) };
    let Ok(b) = r.bytes().await else { return Ok(()) };
    let j = serde_json::from_slice::<serde_json::Value>(&b).unwrap_or_default();
    let Some(v) = j["version"].as_i64() else { return Ok(()) };
    if upto.is_some_and(|u| v > u) {
        return Ok(());
    }
    let parts = j["parts"].as_i64().unwrap_or(0);
    let files: Vec<Path> = if parts > 1 {
        (1..=parts).map(|i| Path::from(format!("_delta_log/{v:020}.checkpoint.{i:010}.{parts:010}.parquet"))).collect()
    } else {
        vec![Path::from(format!("_delta_log/{v:020}.checkpoint.parquet"))]
    };
    for f in &files {
        if dst.head(f).await.is_err() && copy_one(src, dst, names, f).await?.is_none() {
            return Ok(()); // not a single-file checkpoint we can see: leave DST's pointer as it is
        }
    }
    dst.put(&p, b.into()).await.map_err(|e| Error::external("writing _last_checkpoint").with_source(e))?;
    Ok(())
}

/// An incremental round: the commits after `after` (up to `upto`) and the files they add, found
/// by listing the log from `after` on and reading those commits — no listing of the data files,
/// so a round costs what changed, not the table's size. Data files go before the commit naming
/// them, commits in version order, then their checkpoints and `_last_checkpoint`.
async fn sync_since(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    names: (&str, &str),
    after: i64,
    upto: Option<i64>,
) -> Result<Round> {
    let prefix = Path::from("_delta_log");
    let offset = Path::from(format!("_delta_log/{:020}", after.max(0)));
    let metas: Vec<_> = src
        .list_with_offset(Some(&prefix), &offset)
        .try_collect()
        .await
        .map_err(|e| Error::external(format!("listing the log of {}", names.0)).with_source(e))?;
    let mut log: Vec<(i64, bool, Path)> = metas
        .into_iter()
        .filter_map(|m| {
            let name = m.location.filename()?.to_string();
            let v = log_version(&name)?;
            (v > after && upto.is_none_or(|u| v <= u)).then(|| (v, name.ends_with(".json"), m.location))
        })
        .collect();
    log.sort_by_key(|(v, json, _)| (*v, !*json));
    let mut round = Round { newest: after, ..Round::default() };
    for (v, json, p) in &log {
        if *json {
            let b = src
                .get(p)
                .await
                .map_err(|e| Error::external(format!("reading {}/{p}", names.0)).with_source(e))?
                .bytes()
                .await
                .map_err(|e| Error::external(format!("reading {}/{p}", names.0)).with_source(e))?;
            for line in b.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                let a: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| Error::external(format!("{}/{p}: not a Delta commit", names.0)).with_source(e))?;
                let file = a["add"]["path"].as_str().or_else(|| a["cdc"]["path"].as_str());
                if let Some(file) = file {
                    if file.contains("://") {
                        continue; // an absolute path (a shallow clone's): nothing of ours to copy
                    }
                    let fp = Path::from_url_path(file)
                        .map_err(|e| Error::external(format!("bad file path {file:?} in {p}")).with_source(e))?;
                    // A file vacuumed since it was added is gone from SRC's history too.
                    if let Some(n) = copy_one(src, dst, names, &fp).await? {
                        round.files += 1;
                        round.bytes += n;
                    }
                }
            }
            dst.put(p, b.clone().into())
                .await
                .map_err(|e| Error::external(format!("writing {}/{p}", names.1)).with_source(e))?;
            round.files += 1;
            round.bytes += b.len() as u64;
            round.commits += 1;
            round.newest = round.newest.max(*v);
        } else if let Some(n) = copy_one(src, dst, names, p).await? {
            round.files += 1;
            round.bytes += n;
        }
    }
    copy_last_checkpoint(src, dst, names, upto).await?;
    Ok(round)
}

/// A full round: lists both tables and copies what SRC has and DST lacks — data files first,
/// then log files up to `upto` in version order, then `_last_checkpoint`. The first round of a
/// fork (and of one resumed after a kill), since nothing says what DST already holds.
async fn sync(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    names: (&str, &str),
    upto: Option<i64>,
) -> Result<Round> {
    // The log is listed before the data files: a commit seen here was written after its data
    // files, so the data listing that follows sees them (whatever order a store lists in). The
    // next rounds start from this listing's newest commit, so nothing it names may be missed.
    let log_listing: Vec<_> = src
        .list(Some(&Path::from("_delta_log")))
        .try_collect()
        .await
        .map_err(|e| Error::external(format!("listing the log of {}", names.0)).with_source(e))?;
    let (have, there) = (list(src, names.0).await?, list(dst, names.1).await?);
    let mut data = Vec::new();
    let mut log = Vec::new();
    let mut last_checkpoint = None;
    for m in &log_listing {
        let Some(name) = m.location.as_ref().strip_prefix("_delta_log/") else { continue };
        if name == "_last_checkpoint" {
            last_checkpoint = Some(m.location.clone());
        } else if let Some(v) = log_version(name)
            && upto.is_none_or(|u| v <= u)
        {
            log.push((v, name.ends_with(".json"), m.location.clone()));
        }
    }
    for (path, size) in &have {
        if !path.as_ref().starts_with("_delta_log/") && there.get(path) != Some(size) {
            data.push(path.clone());
        }
    }
    let newest = log.iter().filter(|(_, json, _)| *json).map(|(v, _, _)| *v).max().unwrap_or(-1);
    log.retain(|(_, _, p)| there.get(p) != have.get(p));
    // Commits before checkpoints of the same version.
    log.sort_by_key(|(v, json, _)| (*v, !*json));
    let commits = log.iter().filter(|(_, json, _)| *json).count();
    let (mut files, mut bytes) = (0, 0u64);
    let copy = async |p: &Path| -> Result<u64> {
        let b = src
            .get(p)
            .await
            .map_err(|e| Error::external(format!("reading {}/{p}", names.0)).with_source(e))?
            .bytes()
            .await
            .map_err(|e| Error::external(format!("reading {}/{p}", names.0)).with_source(e))?;
        let n = b.len() as u64;
        dst.put(p, b.into()).await.map_err(|e| Error::external(format!("writing {}/{p}", names.1)).with_source(e))?;
        Ok(n)
    };
    for p in data.iter().chain(log.iter().map(|(_, _, p)| p)) {
        bytes += copy(p).await?;
        files += 1;
    }
    if last_checkpoint.is_some() {
        copy_last_checkpoint(src, dst, names, upto).await?;
    }
    Ok(Round { files, bytes, commits, newest })
}

fn set_property(t: &Table, key: &str, value: &str) -> Result<Action> {
    use deltalake::kernel::MetadataExt as _;
    let snapshot = t.table.snapshot().map_err(|e| Error::external("snapshot").with_source(e))?;
    let md = snapshot.metadata().clone();
    let md = if value.is_empty() {
        md.remove_config_key(key)
    } else {
        md.add_config_key(key.to_string(), value.to_string())
    };
    let md = md.map_err(|e| Error::internal(format!("properties of {}", t.name)).with_source(e))?;
    Ok(Action::Metadata(md))
}

/// Moves the table at `src` to `dst` (see the module docs). `quiet`: a copy round that finds at
/// most this many new commits is the last before the freeze.
pub async fn fork(src: &str, dst: &str, quiet: usize, mut progress: impl FnMut(&str)) -> Result<ForkReport> {
    let started = Instant::now();
    let mut source =
        Table::open_existing("fork source", src).await?.ok_or_else(|| Error::user(format!("{src}: no Delta table")))?;
    if source.url.as_str().trim_end_matches('/') != crate::location_url(src)?.as_str().trim_end_matches('/') {
        return Err(Error::user(format!("{src} has already moved to {}", source.url)));
    }
    let id =
        source.table.snapshot().map_err(|e| Error::external("snapshot").with_source(e))?.metadata().id().to_string();
    if let Some(existing) = Table::open_existing("fork target", dst).await? {
        let theirs = existing
            .table
            .snapshot()
            .map_err(|e| Error::external("snapshot").with_source(e))?
            .metadata()
            .id()
            .to_string();
        if theirs != id {
            return Err(Error::user(format!("{dst} holds another table (id {theirs}); a fork target must be empty")));
        }
    }
    let (s, d) = (crate::store::root_store(src)?, crate::store::root_store(dst)?);
    let mut report = ForkReport::default();
    // A fork killed after its freeze left the source frozen (its writers waiting): carry on
    // from there — the frozen version is the last (no writer commits on a frozen table).
    // The newest commit the copy rounds brought over (none when resuming after a freeze).
    let mut copied: Option<i64> = None;
    let f = if source.fork_state().0 {
        let f = source.version();
        progress(&format!("{src} is frozen by an interrupted fork at version {f}: finishing it"));
        f
    } else {
        // 1. Copy rounds while the writers go on: the first lists both tables, the next ones
        // read only the commits since the last round.
        let mut newest = None;
        loop {
            let r = match newest {
                None => sync(&s, &d, (src, dst), None).await?,
                Some(after) => sync_since(&s, &d, (src, dst), after, None).await?,
            };
            newest = Some(r.newest);
            report.rounds += 1;
            report.files_copied += r.files;
            report.bytes_copied += r.bytes;
            progress(&format!("round {}: {} files ({} commits)", report.rounds, r.files, r.commits));
            if (r.commits <= quiet && report.rounds > 1) || report.rounds >= 20 {
                break;
            }
        }
        copied = newest;
        // 2. Freeze.
        let fork_id = uuid::Uuid::new_v4().to_string();
        let mut frozen_at = None;
        for _ in 0..50 {
            source.refresh().await?;
            let action = set_property(&source, crate::table::FORK_FROZEN_PROPERTY, &fork_id)?;
            match source.commit_unfenced(vec![action], vec![], HashMap::new(), 0).await {
                Ok(v) => {
                    frozen_at = Some(v);
                    break;
                }
                // A writer's commit took the version first: look again.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        frozen_at.ok_or_else(|| Error::conflict(format!("{src}: could not freeze it between its writers' commits")))?
    };
    tributary_core::fault::point("fork.after_freeze");
    let frozen = Instant::now();
    progress(&format!("frozen at version {f}"));
    // 3. The last increment, up to and including the freeze.
    let r = match copied {
        Some(after) => sync_since(&s, &d, (src, dst), after, Some(f)).await?,
        None => sync(&s, &d, (src, dst), Some(f)).await?,
    };
    report.rounds += 1;
    report.files_copied += r.files;
    report.bytes_copied += r.bytes;
    // 4. DST: F+1 unfreezes; SRC: F+1 points to DST.
    let mut target = Table::open_existing("fork target", dst)
        .await?
        .ok_or_else(|| Error::internal(format!("{dst}: copy has no log")))?;
    if target.version() == f {
        let unfreeze = set_property(&target, crate::table::FORK_FROZEN_PROPERTY, "")?;
        let v = target.commit_unfenced(vec![unfreeze], vec![], HashMap::new(), 0).await?;
        if v != f + 1 {
            return Err(Error::internal(format!("{dst}: unfreeze landed at {v}, expected {}", f + 1)));
        }
    } else if target.version() != f + 1 || target.fork_state().0 {
        return Err(Error::internal(format!(
            "{dst}: the copy is at version {} after copying up to {f}; not a fork of this table's state",
            target.version()
        )));
    }
    source.refresh().await?;
    let redirect = set_property(&source, crate::table::FORK_MOVED_TO_PROPERTY, dst)?;
    let v = source.commit_unfenced(vec![redirect], vec![], HashMap::new(), 0).await?;
    if v != f + 1 {
        return Err(Error::internal(format!(
            "{src}: a commit landed while frozen (redirect at {v}, expected {})",
            f + 1
        )));
    }
    report.frozen_at = f;
    report.frozen_ms = frozen.elapsed().as_millis() as u64;
    report.total_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, RecordBatch};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};

    fn batch(v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    async fn append(t: &mut Table, from: i64, n: i64) {
        for i in from..from + n {
            let adds = t.write_files(&[batch(i)]).await.unwrap();
            t.commit(adds.into_iter().map(Action::Add).collect(), vec![], HashMap::new(), 3).await.unwrap();
        }
    }

    async fn rows(loc: &str) -> (i64, usize) {
        let t = Table::open_existing("copy", loc).await.unwrap().unwrap();
        (t.version(), t.read_all().await.unwrap().iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn later_rounds_copy_only_the_new_commits_and_their_files_checkpoints_included() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src").display().to_string(), dir.path().join("dst").display().to_string());
        let schema = batch(0).schema();
        let mut t = Table::open_or_create("t", &src, schema, &[]).await.unwrap();
        append(&mut t, 0, 30).await;
        let (s, d) = (crate::store::root_store(&src).unwrap(), crate::store::root_store(&dst).unwrap());
        let first = sync(&s, &d, (&src, &dst), None).await.unwrap();
        assert_eq!(first.newest, 30);
        assert_eq!(rows(&dst).await, (30, 30));
        // 80 more commits cross deltalake's checkpoint interval (100): the increment holds a
        // checkpoint and a new `_last_checkpoint`. A data file written but never committed (a
        // writer mid-batch) is not part of any commit and is not copied.
        append(&mut t, 30, 80).await;
        let orphan = t.write_files(&[batch(-1)]).await.unwrap();
        let round = sync_since(&s, &d, (&src, &dst), first.newest, None).await.unwrap();
        assert_eq!((round.commits, round.newest), (80, 110));
        // 80 data files + 80 commits + the checkpoint.
        assert_eq!(round.files, 161, "{round:?}");
        assert_eq!(rows(&dst).await, (110, 110));
        assert!(d.head(&Path::from(orphan[0].path.as_str())).await.is_err(), "an uncommitted file was copied");
        let last: serde_json::Value = serde_json::from_slice(
            &d.get(&Path::from("_delta_log/_last_checkpoint")).await.unwrap().bytes().await.unwrap(),
        )
        .unwrap();
        assert_eq!(last["version"], 99);
        // Nothing new: an empty round; bounded by `upto`.
        append(&mut t, 110, 3).await;
        let r = sync_since(&s, &d, (&src, &dst), 110, Some(111)).await.unwrap();
        assert_eq!((r.commits, r.newest), (1, 111));
        let r = sync_since(&s, &d, (&src, &dst), 111, Some(111)).await.unwrap();
        assert_eq!((r.commits, r.files), (0, 0));
        assert_eq!(rows(&dst).await, (111, 111));
    }
}

//! `tributary fork SRC DST`: moves a live table to another location or store without pausing
//! ingest for more than the last increment (the seed's manual steps in one command).
//!
//! Unlike `clone`, a fork copies the table *as it is*: every data file and every log file under
//! the same names, so the copy has the same versions, the same `txn` positions of its writers
//! and the same history. That is what lets the table's writers *and* its downstream readers (whose
//! exactly-once positions are version numbers of this table) carry on at the new location.
//!
//! 1. Copy rounds while writers continue: each round copies the data and log files that appeared
//!    since the last (files are immutable in Delta; a file already there at its size is skipped,
//!    so a killed fork resumes), until a round finds at most `quiet` new commits.
//! 2. Freeze: a metadata commit on SRC sets `tributary.fork.frozen`. Writers that see it (or lose
//!    a race to it: Delta refuses an append over a metadata change) back off instead of committing.
//! 3. Last increment: every file up to and including the freeze version F.
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

/// Copies what SRC has and DST lacks: data files first, then log files up to `upto` in version
/// order, then `_last_checkpoint`. Returns (files, bytes, log commits copied).
async fn sync(
    src: &Arc<dyn ObjectStore>,
    dst: &Arc<dyn ObjectStore>,
    names: (&str, &str),
    upto: Option<i64>,
) -> Result<(usize, u64, usize)> {
    let (have, there) = (list(src, names.0).await?, list(dst, names.1).await?);
    let mut data = Vec::new();
    let mut log = Vec::new();
    let mut last_checkpoint = None;
    for (path, size) in &have {
        let s = path.as_ref();
        if let Some(name) = s.strip_prefix("_delta_log/") {
            if name == "_last_checkpoint" {
                last_checkpoint = Some(path.clone());
            } else if let Some(v) = log_version(name)
                && upto.is_none_or(|u| v <= u)
            {
                log.push((v, name.ends_with(".json"), path.clone()));
            }
        } else if there.get(path) != Some(size) {
            data.push(path.clone());
        }
    }
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
    if let Some(p) = last_checkpoint {
        // Only a checkpoint DST holds (a checkpoint past `upto` stays behind).
        let b =
            src.get(&p).await.map_err(|e| Error::external("reading _last_checkpoint").with_source(e))?.bytes().await;
        if let Ok(b) = b {
            let v = serde_json::from_slice::<serde_json::Value>(&b).ok().and_then(|j| j["version"].as_i64());
            if v.is_some_and(|v| upto.is_none_or(|u| v <= u)) {
                dst.put(&p, b.into()).await.map_err(|e| Error::external("writing _last_checkpoint").with_source(e))?;
            }
        }
    }
    Ok((files, bytes, commits))
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
    let f = if source.fork_state().0 {
        let f = source.version();
        progress(&format!("{src} is frozen by an interrupted fork at version {f}: finishing it"));
        f
    } else {
        // 1. Copy rounds while the writers go on.
        loop {
            let (files, bytes, commits) = sync(&s, &d, (src, dst), None).await?;
            report.rounds += 1;
            report.files_copied += files;
            report.bytes_copied += bytes;
            progress(&format!("round {}: {files} files ({commits} commits)", report.rounds));
            if (commits <= quiet && report.rounds > 1) || report.rounds >= 20 {
                break;
            }
        }
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
    let (files, bytes, _) = sync(&s, &d, (src, dst), Some(f)).await?;
    report.rounds += 1;
    report.files_copied += files;
    report.bytes_copied += bytes;
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

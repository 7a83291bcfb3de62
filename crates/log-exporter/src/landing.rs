//! Dual landing zones: every landing file put (renamed into place) into the spool folder is
//! written into each zone at the same relative path, then removed from the spool.
//!
//! A zone is a local path or an object-store URI (`s3://bucket/prefix`, settings from
//! `[storage.s3]`). In a local zone a file appears complete or not at all: it is written under a
//! hidden name (`.<name>.mirror-tmp`, never listed by bronze), synced, then renamed; an object
//! store's PUT is atomic. A crash leaves the file in the spool and the next pass writes it again;
//! a zone that already holds the same bytes is left alone. A zone holding *different* bytes under
//! the same name is a conflict: the spool file is moved to `<spool>/_conflict/` (never listed,
//! never lost) and counted, and nothing in the zones is overwritten. Hidden files and `_` folders
//! of the spool are not mirrored.
//!
//! A zone that cannot be reached (the primary region's store in an outage) does not hold back the
//! other: the file is written to every zone that answers and stays in the spool until the last
//! zone has it, so when the store is back the next pass delivers the backlog, in name order (the
//! order bronze's landing contract needs).

use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tributary_core::{Error, Result};

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::external(format!("mirroring {}", what.display())).with_source(e)
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let ft = e.file_type().map_err(io(&e.path()))?;
        if ft.is_dir() {
            walk(&e.path(), &rel.join(&name), out)?;
        } else if ft.is_file() {
            out.push(rel.join(&name));
        }
    }
    Ok(())
}

/// What one pass did.
#[derive(Debug, Default, PartialEq)]
pub struct Mirrored {
    /// Files now in every zone (removed from the spool).
    pub files: Vec<PathBuf>,
    pub conflicts: Vec<PathBuf>,
    /// Files left in the spool because a zone could not be written (with the zone and error).
    pub pending: Vec<(PathBuf, String, String)>,
}

/// One landing zone: a local folder or an object store.
#[derive(Clone)]
pub enum Zone {
    Local(PathBuf),
    Store { uri: String, store: Arc<dyn ObjectStore> },
}

impl Zone {
    pub fn open(root: &str) -> Result<Self> {
        if tributary_delta::store::is_remote(root) {
            Ok(Zone::Store { uri: root.to_string(), store: tributary_delta::store::root_store(root)? })
        } else {
            Ok(Zone::Local(PathBuf::from(root.strip_prefix("file://").unwrap_or(root))))
        }
    }

    pub fn name(&self) -> String {
        match self {
            Zone::Local(p) => p.display().to_string(),
            Zone::Store { uri, .. } => uri.clone(),
        }
    }

    fn key(rel: &Path) -> object_store::path::Path {
        object_store::path::Path::from(rel.to_string_lossy().replace('\\', "/"))
    }

    /// The bytes the zone holds under `rel`, if any.
    async fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        match self {
            Zone::Local(z) => match std::fs::read(z.join(rel)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&z.join(rel))(e)),
            },
            Zone::Store { uri, store } => match store.get(&Self::key(rel)).await {
                Ok(r) => Ok(Some(
                    r.bytes()
                        .await
                        .map_err(|e| Error::external(format!("reading {uri}/{}", rel.display())).with_source(e))?
                        .to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Error::external(format!("reading {uri}/{}", rel.display())).with_source(e)),
            },
        }
    }

    async fn write(&self, rel: &Path, bytes: &[u8]) -> Result<()> {
        match self {
            Zone::Local(z) => {
                let dst = z.join(rel);
                let parent = dst.parent().expect("has a parent");
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                let name = dst.file_name().expect("a file").to_string_lossy();
                let tmp = parent.join(format!(".{name}.mirror-tmp"));
                let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
                f.write_all(bytes).map_err(io(&tmp))?;
                f.sync_all().map_err(io(&tmp))?;
                std::fs::rename(&tmp, &dst).map_err(io(&dst))
            }
            Zone::Store { uri, store } => store
                .put(&Self::key(rel), PutPayload::from(bytes.to_vec()))
                .await
                .map(|_| ())
                .map_err(|e| Error::external(format!("writing {uri}/{}", rel.display())).with_source(e)),
        }
    }
}

/// One pass over the spool.
pub async fn mirror_once(spool: &Path, zones: &[Zone]) -> Result<Mirrored> {
    let mut files = Vec::new();
    walk(spool, Path::new(""), &mut files)?;
    files.sort();
    let mut out = Mirrored::default();
    // A zone that failed once in this pass is skipped for the rest of it (one timeout per pass,
    // not one per file); its files stay in the spool.
    let mut down: Vec<Option<String>> = vec![None; zones.len()];
    'file: for rel in files {
        let src = spool.join(&rel);
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&src)(e)),
        };
        let mut held = vec![false; zones.len()];
        for (i, z) in zones.iter().enumerate() {
            if down[i].is_some() {
                continue;
            }
            match z.read(&rel).await {
                Ok(Some(existing)) if existing != bytes => {
                    let dst = spool.join("_conflict").join(&rel);
                    std::fs::create_dir_all(dst.parent().expect("has a parent")).map_err(io(&dst))?;
                    std::fs::rename(&src, &dst).map_err(io(&src))?;
                    tracing::error!(file = %rel.display(), zone = %z.name(),
                        moved_to = %dst.display(), "a landing zone already holds different bytes under this name; not overwritten");
                    out.conflicts.push(rel);
                    continue 'file;
                }
                Ok(Some(_)) => held[i] = true, // written by an earlier pass
                Ok(None) => {}
                Err(e) => down[i] = Some(e.to_string()),
            }
        }
        for (i, z) in zones.iter().enumerate() {
            if held[i] || down[i].is_some() {
                continue;
            }
            match z.write(&rel, &bytes).await {
                Ok(()) => held[i] = true,
                Err(e) => down[i] = Some(e.to_string()),
            }
        }
        if held.iter().all(|h| *h) {
            std::fs::remove_file(&src).map_err(io(&src))?;
            out.files.push(rel);
        } else {
            for (i, z) in zones.iter().enumerate() {
                if !held[i] {
                    let why = down[i].clone().unwrap_or_default();
                    out.pending.push((rel.clone(), z.name(), why));
                }
            }
        }
    }
    for (i, d) in down.iter().enumerate() {
        if let Some(e) = d {
            tracing::warn!(zone = %zones[i].name(), error = %e, "landing zone unreachable; its files stay in the spool");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_spool_file_lands_in_both_zones_once_and_conflicts_are_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let (spool, a, b) = (d.path().join("spool"), d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(spool.join("audit")).unwrap();
        std::fs::create_dir_all(spool.join("_tmp")).unwrap();
        std::fs::write(spool.join("audit/1.ndjson"), "{\"x\":1}\n").unwrap();
        std::fs::write(spool.join("audit/.2.ndjson.part"), "half").unwrap();
        std::fs::write(spool.join("_tmp/3.ndjson"), "staging").unwrap();
        let zones = vec![Zone::Local(a.clone()), Zone::Local(b.clone())];
        // A crash after zone a was written: the next pass completes b and leaves a alone.
        std::fs::create_dir_all(a.join("audit")).unwrap();
        std::fs::write(a.join("audit/1.ndjson"), "{\"x\":1}\n").unwrap();
        let m = mirror_once(&spool, &zones).await.unwrap();
        assert_eq!(m.files, [PathBuf::from("audit/1.ndjson")]);
        for z in [&a, &b] {
            assert_eq!(std::fs::read_to_string(z.join("audit/1.ndjson")).unwrap(), "{\"x\":1}\n");
            let names: Vec<_> = std::fs::read_dir(z.join("audit")).unwrap().flatten().map(|e| e.file_name()).collect();
            assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        }
        assert!(!spool.join("audit/1.ndjson").exists());
        assert!(spool.join("audit/.2.ndjson.part").exists() && spool.join("_tmp/3.ndjson").exists());
        // Same name, different bytes: nothing overwritten, the file kept aside.
        std::fs::write(spool.join("audit/1.ndjson"), "{\"x\":2}\n").unwrap();
        let m = mirror_once(&spool, &zones).await.unwrap();
        assert_eq!(m.conflicts, [PathBuf::from("audit/1.ndjson")]);
        assert_eq!(std::fs::read_to_string(b.join("audit/1.ndjson")).unwrap(), "{\"x\":1}\n");
        assert_eq!(std::fs::read_to_string(spool.join("_conflict/audit/1.ndjson")).unwrap(), "{\"x\":2}\n");
    }

    #[tokio::test]
    async fn an_unreachable_zone_does_not_hold_back_the_other_and_gets_the_backlog_later() {
        let d = tempfile::tempdir().unwrap();
        let (spool, a) = (d.path().join("spool"), d.path().join("a"));
        // Zone b's root is a file: every write under it fails, like a store that is down.
        let b = d.path().join("b");
        std::fs::write(&b, "not a folder").unwrap();
        std::fs::create_dir_all(spool.join("audit")).unwrap();
        for i in 1..=3 {
            std::fs::write(spool.join(format!("audit/{i}.ndjson")), format!("{{\"x\":{i}}}\n")).unwrap();
        }
        let zones = vec![Zone::Local(a.clone()), Zone::Local(b.clone())];
        let m = mirror_once(&spool, &zones).await.unwrap();
        assert!(m.files.is_empty());
        assert_eq!(m.pending.len(), 3, "{:?}", m.pending);
        assert!(m.pending.iter().all(|(_, z, _)| *z == b.display().to_string()));
        for i in 1..=3 {
            assert!(a.join(format!("audit/{i}.ndjson")).exists(), "the reachable zone got file {i}");
            assert!(spool.join(format!("audit/{i}.ndjson")).exists(), "file {i} kept for the down zone");
        }
        // The store comes back: the backlog lands, the up-to-date zone is not rewritten.
        std::fs::remove_file(&b).unwrap();
        let m = mirror_once(&spool, &zones).await.unwrap();
        assert_eq!(m.files.len(), 3);
        assert!(m.pending.is_empty());
        for i in 1..=3 {
            assert_eq!(
                std::fs::read(b.join(format!("audit/{i}.ndjson"))).unwrap(),
                std::fs::read(a.join(format!("audit/{i}.ndjson"))).unwrap()
            );
            assert!(!spool.join(format!("audit/{i}.ndjson")).exists());
        }
    }
}

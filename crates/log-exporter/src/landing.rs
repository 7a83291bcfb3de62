//! Dual landing zones: every landing file put (renamed into place) into the spool folder is
//! written into each zone at the same relative path, then removed from the spool.
//!
//! In a zone a file appears complete or not at all: it is written under a hidden name
//! (`.<name>.mirror-tmp`, never listed by bronze), synced, then renamed. A crash leaves the file
//! in the spool and the next pass writes it again; a zone that already holds the same bytes is
//! left alone. A zone holding *different* bytes under the same name is a conflict: the spool file
//! is moved to `<spool>/_conflict/` (never listed, never lost) and counted, and nothing in the
//! zones is overwritten. Hidden files and `_` folders of the spool are not mirrored.

use std::io::Write;
use std::path::{Path, PathBuf};
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
    pub files: Vec<PathBuf>,
    pub conflicts: Vec<PathBuf>,
}

/// One pass over the spool.
pub fn mirror_once(spool: &Path, zones: &[PathBuf]) -> Result<Mirrored> {
    let mut files = Vec::new();
    walk(spool, Path::new(""), &mut files)?;
    files.sort();
    let mut out = Mirrored::default();
    'file: for rel in files {
        let src = spool.join(&rel);
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&src)(e)),
        };
        for z in zones {
            if let Ok(existing) = std::fs::read(z.join(&rel))
                && existing != bytes
            {
                let dst = spool.join("_conflict").join(&rel);
                std::fs::create_dir_all(dst.parent().expect("has a parent")).map_err(io(&dst))?;
                std::fs::rename(&src, &dst).map_err(io(&src))?;
                tracing::error!(file = %rel.display(), zone = %z.display(),
                    moved_to = %dst.display(), "a landing zone already holds different bytes under this name; not overwritten");
                out.conflicts.push(rel);
                continue 'file;
            }
        }
        for z in zones {
            let dst = z.join(&rel);
            if std::fs::read(&dst).is_ok_and(|e| e == bytes) {
                continue; // written by a pass that crashed before removing the spool file
            }
            let parent = dst.parent().expect("has a parent");
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            let name = dst.file_name().expect("a file").to_string_lossy();
            let tmp = parent.join(format!(".{name}.mirror-tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        }
        std::fs::remove_file(&src).map_err(io(&src))?;
        out.files.push(rel);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spool_file_lands_in_both_zones_once_and_conflicts_are_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let (spool, a, b) = (d.path().join("spool"), d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(spool.join("audit")).unwrap();
        std::fs::create_dir_all(spool.join("_tmp")).unwrap();
        std::fs::write(spool.join("audit/1.ndjson"), "{\"x\":1}\n").unwrap();
        std::fs::write(spool.join("audit/.2.ndjson.part"), "half").unwrap();
        std::fs::write(spool.join("_tmp/3.ndjson"), "staging").unwrap();
        let zones = vec![a.clone(), b.clone()];
        // A crash after zone a was written: the next pass completes b and leaves a alone.
        std::fs::create_dir_all(a.join("audit")).unwrap();
        std::fs::write(a.join("audit/1.ndjson"), "{\"x\":1}\n").unwrap();
        let m = mirror_once(&spool, &zones).unwrap();
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
        let m = mirror_once(&spool, &zones).unwrap();
        assert_eq!(m.conflicts, [PathBuf::from("audit/1.ndjson")]);
        assert_eq!(std::fs::read_to_string(b.join("audit/1.ndjson")).unwrap(), "{\"x\":1}\n");
        assert_eq!(std::fs::read_to_string(spool.join("_conflict/audit/1.ndjson")).unwrap(), "{\"x\":2}\n");
    }
}

//! Landing-zone access through `object_store`: local directories now, S3 later by URI.

use deltalake::{ObjectMeta, ObjectStore, Path};
use futures::TryStreamExt;
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;
use tributary_core::{Error, Result};

pub fn landing_store(uri: &str) -> Result<Arc<dyn ObjectStore>> {
    if uri.contains("://") && !uri.starts_with("file://") {
        return Err(Error::user(format!(
            "landing zone {uri}: only local paths and file:// URIs are supported by this build"
        )));
    }
    let path = uri.strip_prefix("file://").unwrap_or(uri);
    std::fs::create_dir_all(path)?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| Error::user(format!("landing zone {uri}")).with_source(e))?;
    Ok(Arc::new(store))
}

fn is_data_file(name: &str) -> bool {
    !name.starts_with('.')
        && !name.starts_with('_')
        && [".ndjson", ".jsonl", ".json", ".ndjson.gz", ".jsonl.gz", ".json.gz"].iter().any(|s| name.ends_with(s))
}

/// Files under `<source>/` not yet ingested, sorted by path (names embed time or sequence).
pub async fn list_new(store: &Arc<dyn ObjectStore>, source: &str, done: &HashSet<String>) -> Result<Vec<ObjectMeta>> {
    let prefix = Path::from(source);
    let mut all: Vec<ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| Error::external(format!("listing landing/{source}")).with_source(e))?;
    all.retain(|m| m.location.filename().map(is_data_file).unwrap_or(false) && !done.contains(m.location.as_ref()));
    all.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(all)
}

/// The next batch: at most `max_files` files and about `max_bytes` (at least one file).
pub fn take_batch(files: Vec<ObjectMeta>, max_files: usize, max_bytes: u64) -> Vec<ObjectMeta> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        if out.len() >= max_files || (!out.is_empty() && bytes + f.size > max_bytes) {
            break;
        }
        bytes += f.size;
        out.push(f);
    }
    out
}

pub fn decompress(name: &str, raw: &[u8]) -> Result<Vec<u8>, String> {
    if name.ends_with(".gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(raw)
            .read_to_end(&mut out)
            .map_err(|e| format!("cannot gunzip {name}: {e}"))?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// Non-blank lines with their 1-based line numbers; `\r\n` endings tolerated.
pub fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|b| *b == b'\n').enumerate().filter_map(|(i, l)| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        if l.iter().all(|b| b.is_ascii_whitespace()) { None } else { Some((i + 1, l)) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blank_and_number_from_one() {
        let v: Vec<_> = lines(b"a\r\n\n  \nb\n").collect();
        assert_eq!(v, vec![(1, &b"a"[..]), (4, &b"b"[..])]);
    }

    #[test]
    fn data_files_only() {
        assert!(is_data_file("part-1.ndjson.gz"));
        assert!(!is_data_file(".tmp-part-1.ndjson"));
        assert!(!is_data_file("part-1.csv"));
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_panic() {
        assert!(decompress("x.gz", b"not gzip").is_err());
    }
}

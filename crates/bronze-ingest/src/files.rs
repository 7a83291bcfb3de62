//! Landing-zone access through `object_store`: local directories, or S3 by URI.

use deltalake::{ObjectMeta, ObjectStore, Path};
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;
use tributary_core::{Error, Result};

/// The landing zone at `uri`: a local path, `file://` or `s3://bucket/prefix` (see
/// `tributary_delta::store`).
pub fn landing_store(uri: &str) -> Result<Arc<dyn ObjectStore>> {
    tributary_delta::store::root_store(uri)
        .map_err(|e| Error::new(e.kind, format!("landing zone {uri}")).with_source(e))
}

fn is_data_file(name: &str) -> bool {
    !name.starts_with('.')
        && !name.starts_with('_')
        && [".ndjson", ".jsonl", ".json", ".ndjson.gz", ".jsonl.gz", ".json.gz"].iter().any(|s| name.ends_with(s))
}

/// One landing file (or the part of it appended since the last batch) in a batch: bytes
/// `[from, size)` of `path`, where `from` is rewound to the start of its line when it falls inside
/// one (an incomplete last line read before was quarantined; now whole, it is ingested). Recorded
/// in the bronze commit's `commitInfo` (`tributary.batch.ingested`), so the file list commits
/// atomically with the rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandingFile {
    pub path: String,
    pub size: u64,
    #[serde(default)]
    pub from: u64,
    /// Set when the file shrank or a gzip file changed after ingestion: its current bytes go to
    /// quarantine as one `landing_file_changed` row instead of being decoded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<String>,
}

/// The size of a file ingested by a build that did not record sizes: the whole file as it is now
/// (`part` clamps to it); never kept in `Discovery::sizes`.
pub const UNKNOWN_SIZE: u64 = u64::MAX;

impl LandingFile {
    pub fn whole(path: &str, size: u64) -> Self {
        Self { path: path.to_string(), size, from: 0, changed: None }
    }
}

/// What a listed file is, against what is ingested.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Never ingested.
    New,
    /// Ingested at its current size (or below the frontier, where files are final by contract).
    Done,
    /// Appended to since it was ingested at `from` bytes: the new bytes are ingested.
    Grown { from: u64 },
    /// Shrank (rewritten or truncated) since it was ingested at `was` bytes.
    Shrunk { was: u64 },
}

/// Which landing files of a source are ingested, in memory independent of history
/// (Auto Loader's incremental listing): every path at or below `frontier` (lexical order) is
/// ingested, and `recent` holds the ingested paths above it. The frontier advances over the
/// ingested prefix of each listing, so `recent` only holds the files committed above the first
/// file still pending (a batch or two). `sizes` holds the ingested size of the frontier file and
/// of every file in `recent`: those are listed on every poll, so a file still being appended to
/// (the newest one) has its new bytes ingested, and a shrunk one is reported. The landing
/// contract that makes this exact: files arrive in lexical order of their paths within a source
/// (names embed time or a sequence, or date/hour folders); a file is final once a later one
/// exists (written under a `.`/`_` temp name and renamed into place, or only appended to while
/// it is the newest); files are not moved within the source's folder (archive to a `_` folder).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Discovery {
    pub frontier: Option<String>,
    pub recent: BTreeSet<String>,
    #[serde(default)]
    pub sizes: std::collections::BTreeMap<String, u64>,
}

impl Discovery {
    pub fn is_done(&self, path: &str) -> bool {
        self.frontier.as_deref().is_some_and(|f| path <= f) || self.recent.contains(path)
    }

    /// A listed file against what is ingested.
    pub fn seen(&self, path: &str, size: u64) -> Seen {
        if !self.is_done(path) {
            return Seen::New;
        }
        match self.sizes.get(path) {
            Some(&was) if size > was => Seen::Grown { from: was },
            Some(&was) if size < was => Seen::Shrunk { was },
            _ => Seen::Done,
        }
    }

    /// Records committed files with the size each was ingested at (`UNKNOWN_SIZE`: path only).
    pub fn record(&mut self, files: &[LandingFile]) {
        for f in files {
            if self.frontier.as_deref().is_none_or(|fr| f.path.as_str() > fr) {
                self.recent.insert(f.path.clone());
            }
            if f.size != UNKNOWN_SIZE && self.frontier.as_deref().is_none_or(|fr| f.path.as_str() >= fr) {
                self.sizes.insert(f.path.clone(), f.size);
            }
        }
    }

    /// Moves the frontier over the ingested prefix of `listed` (sorted; entries at or below the
    /// frontier are ignored).
    pub fn advance(&mut self, listed: &[ObjectMeta]) {
        for m in listed {
            let p = m.location.as_ref();
            if self.frontier.as_deref().is_some_and(|f| p <= f) {
                continue;
            }
            if self.recent.remove(p) {
                self.frontier = Some(p.to_string());
            } else {
                break;
            }
        }
        if let Some(f) = &self.frontier {
            // Entries below the frontier are covered by it (e.g. files deleted after ingest).
            let keep = self.recent.split_off(&format!("{f}\u{0}"));
            self.recent = keep;
            let keep = self.sizes.split_off(f.as_str());
            self.sizes = keep;
        }
    }
}

/// Data files under `<source>/` at or above the frontier, sorted by path: for a local landing zone a
/// directory walk that skips every folder whose whole subtree sorts at or below the frontier
/// (so the cost of a poll does not grow with the files already ingested under date/hour folders);
/// otherwise the store's listing from the frontier.
pub async fn list_above(
    store: &Arc<dyn ObjectStore>,
    local_root: Option<&std::path::Path>,
    source: &str,
    frontier: Option<&str>,
) -> Result<Vec<ObjectMeta>> {
    let mut all = match local_root {
        Some(root) => {
            let (root, source, frontier) = (root.to_path_buf(), source.to_string(), frontier.map(str::to_string));
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                walk_local(&root, &source, frontier.as_deref(), &mut out)?;
                Ok::<_, Error>(out)
            })
            .await
            .map_err(|e| Error::internal("landing listing task").with_source(e))??
        }
        None => {
            let prefix = Path::from(source);
            let mut listed: Vec<ObjectMeta> = match frontier {
                Some(f) => store.list_with_offset(Some(&prefix), &Path::from(f)).try_collect().await,
                None => store.list(Some(&prefix)).try_collect().await,
            }
            .map_err(|e| Error::external(format!("listing landing/{source}")).with_source(e))?;
            // The frontier file itself (the listing offset is exclusive): it may still grow.
            if let Some(f) = frontier {
                match store.head(&Path::from(f)).await {
                    // The path we asked for: object_store 0.13's PrefixStore (an `s3://bucket/prefix`
                    // landing zone) returns the prefixed key from `head`
                    // (apache/arrow-rs-object-store#664).
                    Ok(m) => listed.push(ObjectMeta { location: Path::from(f), ..m }),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::external(format!("stat landing/{f}")).with_source(e)),
                }
            }
            listed
        }
    };
    all.retain(|m| {
        m.location.filename().map(is_data_file).unwrap_or(false)
            && frontier.is_none_or(|f| m.location.as_ref() >= f)
            // Temp names anywhere in the path (a folder being filled) are not complete files.
            && !m.location.parts().any(|p| p.as_ref().starts_with('.') || p.as_ref().starts_with('_'))
    });
    all.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(all)
}

/// Whether every path under `prefix/` sorts at or below `frontier`.
fn subtree_done(prefix: &str, frontier: &str) -> bool {
    let dir = format!("{prefix}/");
    dir.as_str() < frontier && !frontier.starts_with(&dir)
}

fn walk_local(root: &std::path::Path, rel: &str, frontier: Option<&str>, out: &mut Vec<ObjectMeta>) -> Result<()> {
    let dir = root.join(rel);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::external(format!("listing landing/{rel}")).with_source(e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::external(format!("listing landing/{rel}")).with_source(e))?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(dir = %dir.display(), "landing entry with a non-UTF-8 name skipped");
            continue;
        };
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        let path = format!("{rel}/{name}");
        let meta = entry.metadata().map_err(|e| Error::external(format!("stat landing/{path}")).with_source(e))?;
        if meta.is_dir() {
            if frontier.is_some_and(|f| subtree_done(&path, f)) {
                continue;
            }
            walk_local(root, &path, frontier, out)?;
        } else if meta.is_file() && frontier.is_none_or(|f| path.as_str() >= f) {
            out.push(ObjectMeta {
                location: Path::from(path.as_str()),
                last_modified: meta.modified().map(chrono::DateTime::<chrono::Utc>::from).unwrap_or_default(),
                size: meta.len(),
                e_tag: None,
                version: None,
            });
        }
    }
    Ok(())
}

/// The next batch: at most `max_files` files and about `max_bytes` (at least one file).
pub fn take_batch(files: Vec<LandingFile>, max_files: usize, max_bytes: u64) -> Vec<LandingFile> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        let n = f.size.saturating_sub(f.from);
        if out.len() >= max_files || (!out.is_empty() && bytes + n > max_bytes) {
            break;
        }
        bytes += n;
        out.push(f);
    }
    out
}

/// Why a landing file cannot be read as a whole: reason code, detail, and its raw bytes (kept
/// in quarantine).
pub type Unreadable = (&'static str, String, bytes::Bytes);

/// A landing file's content (gunzipped, without a UTF-8 byte-order mark), or why it cannot be read.
pub type Body = std::result::Result<bytes::Bytes, Unreadable>;

/// The file's bytes, gunzipped when its name ends in `.gz` (a plain file is not copied). The
/// landing encoding is UTF-8: a leading UTF-8 byte-order mark (Windows tools, some exporters) is
/// skipped; a UTF-16 or UTF-32 one makes the whole file `unsupported_encoding` (quarantined as
/// one row with its bytes: nothing silently lost, nothing decoded as garbage lines).
pub fn decompress(name: &str, raw: bytes::Bytes) -> Body {
    let body: bytes::Bytes = if name.ends_with(".gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        match flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out) {
            Ok(_) => out.into(),
            Err(e) => return Err(("corrupt_file", format!("cannot gunzip {name}: {e}"), raw)),
        }
    } else {
        raw.clone()
    };
    let boms: [(&[u8], &str); 4] = [
        (&[0x00, 0x00, 0xFE, 0xFF], "UTF-32BE"),
        (&[0xFF, 0xFE, 0x00, 0x00], "UTF-32LE"),
        (&[0xFE, 0xFF], "UTF-16BE"),
        (&[0xFF, 0xFE], "UTF-16LE"),
    ];
    for (bom, enc) in boms {
        if body.starts_with(bom) {
            return Err((
                "unsupported_encoding",
                format!("{name} is {enc} (byte-order mark); landing files must be UTF-8 NDJSON"),
                raw,
            ));
        }
    }
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) { Ok(body.slice(3..)) } else { Ok(body) }
}

/// The part of a landing file a batch ingests: bytes `[from, size)` of its raw content, `from`
/// rewound to the start of its line, decoded like a whole file (gunzip, byte-order mark) when
/// `from` is 0. Returns the body and the number of lines before it (line numbers of the part
/// continue the file's). A file read back shorter than `size` (changed since) is read as it is.
pub fn part(f: &LandingFile, raw: bytes::Bytes) -> (Body, usize) {
    let end = (f.size.min(raw.len() as u64)) as usize;
    let from = (f.from as usize).min(end);
    let start = match f.path.ends_with(".gz") {
        true => 0,
        false => memchr::memrchr(b'\n', &raw[..from]).map(|i| i + 1).unwrap_or(0),
    };
    if start == 0 {
        return (decompress(&f.path, raw.slice(..end)), 0);
    }
    let base = memchr::memchr_iter(b'\n', &raw[..start]).count();
    (Ok(raw.slice(start..end)), base)
}

pub use tributary_events::lines::{all_lines, is_blank, lines};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blank_and_number_from_one() {
        let v: Vec<_> = lines(b"a\r\n\n  \nb\n").collect();
        assert_eq!(v, vec![(1, &b"a"[..]), (4, &b"b"[..])]);
        let blank = all_lines(b"a\r\n\n \t\r\nb").filter(|(_, l)| is_blank(l)).count();
        assert_eq!(blank, 2, "blank lines are counted; no trailing phantom line");
        assert_eq!(all_lines(b"a\n").count(), 1);
        assert_eq!(all_lines(b"").count(), 0);
    }

    #[test]
    fn a_utf8_bom_is_skipped_and_utf16_or_32_quarantines_the_file() {
        let body = decompress("a.ndjson", bytes::Bytes::from_static(b"\xEF\xBB\xBF{\"a\":1}\n")).unwrap();
        assert_eq!(&body[..], b"{\"a\":1}\n");
        for (raw, enc) in [
            (&b"\xFF\xFE{\x00"[..], "UTF-16LE"),
            (&b"\xFE\xFF\x00{"[..], "UTF-16BE"),
            (&b"\xFF\xFE\x00\x00{\x00\x00\x00"[..], "UTF-32LE"),
        ] {
            let (code, detail, kept) = decompress("b.ndjson", bytes::Bytes::copy_from_slice(raw)).unwrap_err();
            assert_eq!(code, "unsupported_encoding");
            assert!(detail.contains(enc), "{detail}");
            assert_eq!(&kept[..], raw, "the file's bytes are kept for quarantine");
        }
        // Also inside a gzip file.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"\xEF\xBB\xBF{}\n").unwrap();
        let body = decompress("c.ndjson.gz", gz.finish().unwrap().into()).unwrap();
        assert_eq!(&body[..], b"{}\n");
    }

    fn meta(p: &str) -> ObjectMeta {
        ObjectMeta { location: Path::from(p), last_modified: Default::default(), size: 1, e_tag: None, version: None }
    }

    #[test]
    fn frontier_advances_over_the_ingested_prefix_only() {
        let mut d = Discovery::default();
        d.record(&["a/1", "a/2", "a/4"].map(|p| LandingFile::whole(p, UNKNOWN_SIZE)));
        d.advance(&[meta("a/1"), meta("a/2"), meta("a/3"), meta("a/4")]);
        assert_eq!(d.frontier.as_deref(), Some("a/2"));
        assert_eq!(d.recent.iter().collect::<Vec<_>>(), vec!["a/4"]);
        assert!(d.is_done("a/1") && d.is_done("a/4") && !d.is_done("a/3"));
        d.record(&[LandingFile::whole("a/3", UNKNOWN_SIZE)]);
        d.advance(&[meta("a/3"), meta("a/4"), meta("a/5")]);
        assert_eq!(d.frontier.as_deref(), Some("a/4"));
        assert!(d.recent.is_empty());
    }

    #[test]
    fn sizes_are_kept_for_the_frontier_and_recent_files_only() {
        let mut d = Discovery::default();
        d.record(&[LandingFile::whole("a/1", 10), LandingFile::whole("a/2", 20), LandingFile::whole("a/4", 40)]);
        let sized = |p: &str, n: u64| ObjectMeta { size: n, ..meta(p) };
        d.advance(&[sized("a/1", 10), sized("a/2", 20), sized("a/3", 5), sized("a/4", 40)]);
        assert_eq!(d.frontier.as_deref(), Some("a/2"));
        assert_eq!(d.sizes.keys().collect::<Vec<_>>(), vec!["a/2", "a/4"], "the frontier file and recent ones");
        assert_eq!(d.seen("a/3", 5), Seen::New);
        assert_eq!(d.seen("a/2", 20), Seen::Done);
        assert_eq!(d.seen("a/2", 25), Seen::Grown { from: 20 });
        assert_eq!(d.seen("a/4", 30), Seen::Shrunk { was: 40 });
        // Below the frontier files are final by contract (no size kept, memory stays flat).
        assert_eq!(d.seen("a/1", 99), Seen::Done);
        // The frontier entry in a listing is skipped when advancing, not a stop.
        d.record(&[LandingFile::whole("a/3", 5)]);
        d.advance(&[sized("a/2", 20), sized("a/3", 5), sized("a/4", 40)]);
        assert_eq!(d.frontier.as_deref(), Some("a/4"));
        assert_eq!(d.sizes.keys().collect::<Vec<_>>(), vec!["a/4"]);
    }

    #[test]
    fn an_appended_part_starts_at_its_line_and_numbers_lines_on() {
        let raw = bytes::Bytes::from_static(b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        // Ingested earlier: 12 bytes, i.e. line 1 and half of line 2 (quarantined as malformed);
        // now 24 bytes: the part starts at line 2, whole.
        let f = LandingFile { path: "s/x.ndjson".into(), size: 24, from: 12, changed: None };
        let (body, base) = part(&f, raw.clone());
        assert_eq!(base, 1);
        assert_eq!(&body.unwrap()[..], &b"{\"a\":2}\n{\"a\":3}\n"[..]);
        // A batch re-read after the file grew more reads only its own bytes.
        let whole = LandingFile::whole("s/x.ndjson", 8);
        assert_eq!(&part(&whole, raw.clone()).0.unwrap()[..], b"{\"a\":1}\n");
        // A BOM is only looked at from byte 0.
        let bom = bytes::Bytes::from_static(b"\xEF\xBB\xBF{}\n{}\n");
        assert_eq!(&part(&LandingFile::whole("s/y.ndjson", 9), bom.clone()).0.unwrap()[..], b"{}\n{}\n");
        let (tail, base) = part(&LandingFile { path: "s/y.ndjson".into(), size: 9, from: 6, changed: None }, bom);
        assert_eq!((&tail.unwrap()[..], base), (&b"{}\n"[..], 1));
    }

    #[test]
    fn folders_below_the_frontier_are_not_walked() {
        assert!(subtree_done("audit/2026-11-01", "audit/2026-11-02/00/part-1.ndjson"));
        assert!(!subtree_done("audit/2026-11-02", "audit/2026-11-02/00/part-1.ndjson"));
        assert!(!subtree_done("audit/2026-11-03", "audit/2026-11-02/00/part-1.ndjson"));
        // "audit/2026-11-02x" sorts after "audit/2026-11-02/..." ('x' > '/').
        assert!(!subtree_done("audit/2026-11-02x", "audit/2026-11-02/00/part-1.ndjson"));
    }

    #[tokio::test]
    async fn local_walk_lists_only_above_the_frontier() {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "audit/2026-11-01/a.ndjson",
            "audit/2026-11-02/b.ndjson",
            "audit/2026-11-02/c.ndjson",
            "audit/2026-11-03/d.ndjson.gz",
            "audit/2026-11-03/.tmp-e.ndjson",
            "audit/_x/f.ndjson",
        ] {
            let f = dir.path().join("landing").join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"{}\n").unwrap();
        }
        let root = dir.path().join("landing");
        let store = landing_store(root.to_str().unwrap()).unwrap();
        let names = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.location.to_string()).collect::<Vec<_>>();
        let all = list_above(&store, Some(&root), "audit", None).await.unwrap();
        assert_eq!(
            names(all),
            [
                "audit/2026-11-01/a.ndjson",
                "audit/2026-11-02/b.ndjson",
                "audit/2026-11-02/c.ndjson",
                "audit/2026-11-03/d.ndjson.gz"
            ]
        );
        // The frontier file itself is listed too (it may still be growing).
        let above = list_above(&store, Some(&root), "audit", Some("audit/2026-11-02/b.ndjson")).await.unwrap();
        let want = ["audit/2026-11-02/b.ndjson", "audit/2026-11-02/c.ndjson", "audit/2026-11-03/d.ndjson.gz"];
        assert_eq!(names(above), want);
        // The object-store path gives the same answer.
        let via_store = list_above(&store, None, "audit", Some("audit/2026-11-02/b.ndjson")).await.unwrap();
        assert_eq!(names(via_store), want);
    }

    #[test]
    fn data_files_only() {
        assert!(is_data_file("part-1.ndjson.gz"));
        assert!(!is_data_file(".tmp-part-1.ndjson"));
        assert!(!is_data_file("part-1.csv"));
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_panic() {
        assert!(decompress("x.gz", bytes::Bytes::from_static(b"not gzip")).is_err());
    }
}

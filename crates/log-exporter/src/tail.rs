//! The file side of a log stream: which files to read, from where, across rotation.
//!
//! A file is identified by `dev:ino` plus its first bytes (`head`, up to 64): the inode follows a
//! file through a rename, the head tells an inode reused by a new file, or a file truncated and
//! rewritten, from the file we were reading. Per file the checkpoint is the byte offset up to
//! which its lines were acknowledged by the broker (see `lib.rs` for the Kafka half).
//!
//! Rotation:
//! - **rename + create**: the renamed inode keeps its checkpoint. It is found again by inode in
//!   its folder (the glob need not match rotated names) or read through the handle kept open,
//!   and drained before the new file at the path (same Kafka key, so the order holds);
//! - **copytruncate**: a tracked file shorter than its checkpoint, or whose head changed, was
//!   truncated. The folder is searched for the copy (another inode whose first bytes are the
//!   head and that is at least as long as the checkpoint); the copy takes over the checkpoint and
//!   is drained; the truncated file starts again at 0. Without a copy the bytes between the
//!   checkpoint and the truncation are counted as `lost_truncated` (logrotate's own window
//!   between copy and truncate is not visible to any tailer).
//! - A file deleted while open is drained through its handle; one deleted while the exporter
//!   was down is forgotten (counted `lost_deleted` if it had not been read to its end).
//!
//! Only complete lines are shipped. The last, unterminated line of a file that is no longer the
//! file at its path (rotated away or deleted) is shipped once it has not changed for
//! [`SETTLE_MS`]. A line longer than the read bound is shipped in parts.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use tributary_core::{Error, Result};

pub const HEAD: usize = 64;
/// A rotated-away file whose size has not changed for this long is finished.
pub const SETTLE_MS: i64 = 5_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tracked {
    /// Kafka key: the path the file was first seen at. Every line written to one log path, across
    /// rotations, goes to one partition, in order.
    pub key: String,
    /// Where the file was last seen.
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// Bytes of the file whose lines the broker acknowledged.
    pub offset: u64,
    /// The file's first bytes (up to [`HEAD`]).
    pub head: Vec<u8>,
    pub partition: i32,
    /// Size and time when the size last changed (for the settle rule of the last line).
    #[serde(default)]
    pub last_size: u64,
    #[serde(default)]
    pub last_change_ms: i64,
    /// Position of the file's bytes among its key's files, oldest first: a new file at the path
    /// takes the next number; a copy made by copytruncate takes the original's number and the
    /// original (now holding newer lines) the next one. Inode numbers do not say this order.
    /// 0 in checkpoints written before it existed (ordered as before: rotated, then current).
    #[serde(default)]
    pub generation: u64,
}

impl Tracked {
    pub fn id(&self) -> String {
        id(self.dev, self.ino)
    }
}

pub fn id(dev: u64, ino: u64) -> String {
    format!("{dev}:{ino}")
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamState {
    /// `dev:ino` -> file
    pub files: BTreeMap<String, Tracked>,
    /// Per partition: the Kafka offset after the last record the checkpoints account for.
    #[serde(default)]
    pub partitions: BTreeMap<i32, i64>,
    /// The runs of lines being sent (written before they are sent), in send order.
    #[serde(default)]
    pub inflight: Vec<Inflight>,
    /// The last [`Tracked::generation`] handed out.
    #[serde(default)]
    pub generation: u64,
}

impl StreamState {
    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

/// A run of lines in flight: the bytes `[start, end)` of file `id`, one record per line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inflight {
    pub id: String,
    pub start: u64,
    pub end: u64,
}

/// The end offsets of the records a run `[start, end)` of `buf` (the run's bytes) was sent as:
/// one per line; a last piece without a newline (a part of a long line, or a settled last
/// line) ends at `end`.
pub fn line_ends(buf: &[u8], start: u64) -> Vec<u64> {
    let mut ends: Vec<u64> =
        buf.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| start + i as u64 + 1).collect();
    if buf.last().is_some_and(|b| *b != b'\n') {
        ends.push(start + buf.len() as u64);
    }
    ends
}

/// What a scan noticed (for logs and counters).
#[derive(Debug, Default, PartialEq)]
pub struct Noticed {
    pub new_files: Vec<String>,
    pub renamed: Vec<(String, String)>,
    pub truncated: Vec<String>,
    /// Copies found for truncated files: (copy path, original path).
    pub copies: Vec<(String, String)>,
    pub lost_truncated_bytes: u64,
    pub lost_deleted: Vec<String>,
    /// Files whose recorded first bytes grew (a file first seen nearly empty): the checkpoint must
    /// keep them, they are what tells a later copytruncate.
    pub heads_grown: usize,
}

/// A run of complete lines read from one file: `lines[i]` ends at byte `ends[i]`.
#[derive(Debug)]
pub struct Chunk {
    pub id: String,
    pub lines: Vec<Vec<u8>>,
    pub ends: Vec<u64>,
}

pub struct Tailer {
    pub patterns: Vec<String>,
    pub state: StreamState,
    open: HashMap<String, File>,
    /// Finished files whose handle was closed (reopened only if they grow).
    closed: HashSet<String>,
}

/// Reads up to `n` bytes at `off` (fewer at the end of the file).
fn read_at_most(f: &File, off: u64, n: usize) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read_at(&mut b[got..], off + got as u64)? {
            0 => break,
            k => got += k,
        }
    }
    b.truncate(got);
    Ok(b)
}

fn read_head(f: &File, size: u64) -> std::io::Result<Vec<u8>> {
    read_at_most(f, 0, size.min(HEAD as u64) as usize)
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::external(format!("reading {}", what.display())).with_source(e)
}

impl Tailer {
    pub fn new(patterns: Vec<String>, state: StreamState) -> Self {
        Self { patterns, state, open: HashMap::new(), closed: HashSet::new() }
    }

    /// The regular files the globs match now: path -> (dev, ino).
    fn matched(&self) -> Result<BTreeMap<PathBuf, (u64, u64)>> {
        let mut out = BTreeMap::new();
        for p in &self.patterns {
            let paths = glob::glob(p).map_err(|e| Error::user(format!("invalid log path pattern {p:?}: {e}")))?;
            for path in paths.flatten() {
                let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
                if hidden {
                    continue;
                }
                if let Ok(m) = std::fs::metadata(&path)
                    && m.is_file()
                {
                    out.insert(path, (m.dev(), m.ino()));
                }
            }
        }
        Ok(out)
    }

    /// Finds inode `ino` in `dir`.
    fn find_in(dir: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let m = e.metadata().ok()?;
            (m.is_file() && m.ino() == ino && m.dev() == dev).then(|| e.path())
        })
    }

    /// Brings the tracked set up to date with the file system; `partition_of` places a new key.
    pub fn scan(&mut self, now_ms: i64, partition_of: &dyn Fn(&str) -> i32) -> Result<Noticed> {
        let mut n = Noticed::default();
        let matched = self.matched()?;
        let by_id: HashMap<String, PathBuf> = matched.iter().map(|(p, (d, i))| (id(*d, *i), p.clone())).collect();

        // 1. Where is every tracked file now? Open a handle if there is none.
        let ids: Vec<String> = self.state.files.keys().cloned().collect();
        for fid in &ids {
            let t = self.state.files.get(fid).expect("listed").clone();
            let found = by_id
                .get(fid)
                .cloned()
                .or_else(|| Path::new(&t.path).parent().and_then(|d| Self::find_in(d, t.dev, t.ino)));
            match found {
                Some(p) => {
                    let ps = p.to_string_lossy().into_owned();
                    if ps != t.path {
                        n.renamed.push((t.path.clone(), ps.clone()));
                        self.state.files.get_mut(fid).expect("listed").path = ps;
                    }
                    let grew = || std::fs::metadata(&p).is_ok_and(|m| m.len() > t.offset);
                    if !self.open.contains_key(fid)
                        && (!self.closed.contains(fid) || grew())
                        && let Ok(f) = File::open(&p)
                    {
                        self.closed.remove(fid);
                        self.open.insert(fid.clone(), f);
                    }
                }
                None if self.open.contains_key(fid) => {} // deleted while open: drained by handle
                None => {
                    if t.last_size > t.offset {
                        n.lost_deleted.push(t.path.clone());
                    }
                    self.closed.remove(fid);
                    self.state.files.remove(fid);
                }
            }
        }

        // 2. Truncated (copytruncate) or rewritten files: find the copy, start again at 0.
        for fid in &ids {
            let (Some(f), Some(t)) = (self.open.get(fid), self.state.files.get(fid)) else { continue };
            let size = f.metadata().map_err(io(Path::new(&t.path)))?.len();
            let head_now = read_head(f, size).map_err(io(Path::new(&t.path)))?;
            let shared = head_now.len().min(t.head.len());
            let rewritten = size < t.offset || head_now[..shared] != t.head[..shared];
            if !rewritten {
                if head_now.len() > t.head.len() {
                    self.state.files.get_mut(fid).expect("listed").head = head_now;
                    n.heads_grown += 1;
                }
                continue;
            }
            let t = t.clone();
            n.truncated.push(t.path.clone());
            let copy = Path::new(&t.path).parent().and_then(|d| {
                std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
                    let m = e.metadata().ok()?;
                    let cid = id(m.dev(), m.ino());
                    if !m.is_file() || cid == *fid || self.state.files.contains_key(&cid) || m.len() < t.offset {
                        return None;
                    }
                    let cf = File::open(e.path()).ok()?;
                    (read_head(&cf, m.len()).ok()?.starts_with(&t.head)).then(|| (e.path(), cid, m, cf))
                })
            });
            match copy {
                Some((cp, cid, m, cf)) => {
                    n.copies.push((cp.to_string_lossy().into_owned(), t.path.clone()));
                    let head = read_head(&cf, m.len()).map_err(io(&cp))?;
                    self.state.files.insert(
                        cid.clone(),
                        Tracked {
                            path: cp.to_string_lossy().into_owned(),
                            dev: m.dev(),
                            ino: m.ino(),
                            head,
                            last_size: m.len(),
                            last_change_ms: now_ms,
                            ..t.clone()
                        },
                    );
                    self.open.insert(cid, cf);
                }
                None => n.lost_truncated_bytes += t.offset.saturating_sub(size),
            }
            let g = self.state.next_generation();
            let e = self.state.files.get_mut(fid).expect("listed");
            e.generation = g;
            e.offset = 0;
            e.head = head_now;
            e.last_size = size;
            e.last_change_ms = now_ms;
        }

        // 3. New files at the globbed paths.
        for (path, (dev, ino)) in &matched {
            let fid = id(*dev, *ino);
            if self.state.files.contains_key(&fid) {
                continue;
            }
            let Ok(f) = File::open(path) else { continue };
            let size = f.metadata().map_err(io(path))?.len();
            let head = read_head(&f, size).map_err(io(path))?;
            let key = path.to_string_lossy().into_owned();
            n.new_files.push(key.clone());
            let generation = self.state.next_generation();
            self.state.files.insert(
                fid.clone(),
                Tracked {
                    partition: partition_of(&key),
                    key: key.clone(),
                    path: key,
                    dev: *dev,
                    ino: *ino,
                    offset: 0,
                    head,
                    last_size: size,
                    last_change_ms: now_ms,
                    generation,
                },
            );
            self.open.insert(fid, f);
        }
        Ok(n)
    }

    /// Tracked files in shipping order: per key, in the order their bytes were written (see
    /// [`Tracked::generation`]); files no longer at their path (rotated away) before the one that is.
    pub fn order(&self) -> Vec<String> {
        let mut v: Vec<(&str, u64, bool, &str)> = self
            .state
            .files
            .iter()
            .map(|(fid, t)| (t.key.as_str(), t.generation, t.path == t.key, fid.as_str()))
            .collect();
        v.sort();
        v.into_iter().map(|x| x.3.to_string()).collect()
    }

    /// Reads up to `max` bytes of complete lines of file `fid` from its checkpoint.
    pub fn read(&mut self, fid: &str, max: usize, now_ms: i64) -> Result<Option<Chunk>> {
        let (Some(f), Some(t)) = (self.open.get(fid), self.state.files.get_mut(fid)) else { return Ok(None) };
        let size = f.metadata().map_err(io(Path::new(&t.path)))?.len();
        if size != t.last_size {
            t.last_size = size;
            t.last_change_ms = now_ms;
        }
        if size <= t.offset {
            return Ok(None);
        }
        let n = ((size - t.offset) as usize).min(max.max(1));
        let buf = read_at_most(f, t.offset, n).map_err(io(Path::new(&t.path)))?;
        let got = buf.len();
        let complete = buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1);
        let settled = t.path != t.key && now_ms - t.last_change_ms >= SETTLE_MS;
        let take = match complete {
            Some(c) => c,
            // No newline within the bound: a line longer than the bound goes in parts.
            None if got == max.max(1) => got,
            // The unterminated last line of a finished (rotated-away, unchanged) file.
            None if settled && t.offset + got as u64 == size => got,
            None => return Ok(None),
        };
        let ends = line_ends(&buf[..take], t.offset);
        let mut start = 0;
        let lines = ends
            .iter()
            .map(|e| {
                let line = &buf[start..(e - t.offset) as usize];
                start = (e - t.offset) as usize;
                line.strip_suffix(b"\n").unwrap_or(line).to_vec()
            })
            .collect();
        Ok(Some(Chunk { id: fid.to_string(), lines, ends }))
    }

    /// Whether a file was shipped up to its size (as last seen).
    pub fn drained(&self, fid: &str) -> bool {
        self.state.files.get(fid).is_none_or(|t| t.offset >= t.last_size)
    }

    /// Records that the broker acknowledged the lines of `fid` up to byte `end`.
    pub fn acknowledged(&mut self, fid: &str, end: u64) {
        if let Some(t) = self.state.files.get_mut(fid) {
            t.offset = t.offset.max(end);
        }
    }

    /// Reads the bytes `[start, end)` of a tracked file again (for recovery).
    pub fn reread(&self, fid: &str, start: u64, end: u64) -> Result<Option<Vec<u8>>> {
        let Some(f) = self.open.get(fid) else { return Ok(None) };
        let buf = read_at_most(f, start, (end - start) as usize).map_err(io(Path::new(fid)))?;
        // Shorter than it was: truncated meanwhile.
        Ok((buf.len() as u64 == end - start).then_some(buf))
    }

    /// Forgets files that are no longer at their path, fully shipped and settled (their handle
    /// closed; the checkpoint kept while the inode still exists, so a glob matching rotated names
    /// does not ship it again).
    pub fn close_finished(&mut self, now_ms: i64) {
        let done: Vec<String> = self
            .state
            .files
            .iter()
            .filter(|(_, t)| t.path != t.key && t.offset >= t.last_size && now_ms - t.last_change_ms >= SETTLE_MS)
            .map(|(k, _)| k.clone())
            .collect();
        for fid in done {
            if self.open.remove(&fid).is_some() {
                self.closed.insert(fid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(t: &mut Tailer, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        for fid in t.order() {
            while let Some(c) = t.read(&fid, 64, now).unwrap() {
                out.extend(c.lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()));
                let end = *c.ends.last().unwrap();
                t.acknowledged(&fid, end);
            }
        }
        out
    }

    /// A folder, its `app.log` path and a tailer of `*.log` in it with no checkpoint.
    fn tailer_on_app_log() -> (tempfile::TempDir, PathBuf, Tailer) {
        let d = tempfile::tempdir().unwrap();
        let t = Tailer::new(vec![format!("{}/*.log", d.path().display())], StreamState::default());
        let log = d.path().join("app.log");
        (d, log, t)
    }

    fn append(p: &Path, s: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap().write_all(s.as_bytes()).unwrap();
    }

    #[test]
    fn rename_and_copytruncate_rotations_lose_and_repeat_nothing() {
        let (d, log, mut t) = tailer_on_app_log();
        let p = |_: &str| 0;
        append(&log, "line-001 first\nline-002\npart");
        t.scan(0, &p).unwrap();
        assert_eq!(lines(&mut t, 0), ["line-001 first", "line-002"], "the unterminated line waits");
        append(&log, "ial-003\n");
        // rename + create: the renamed file is drained (through its inode) before the new one
        std::fs::rename(&log, d.path().join("app.log.1")).unwrap();
        append(&log, "line-004 new file\n");
        let n = t.scan(1, &p).unwrap();
        assert_eq!(n.renamed.len(), 1, "{n:?}");
        assert_eq!(lines(&mut t, 1), ["partial-003", "line-004 new file"]);
        // copytruncate: copy, truncate, then the writer goes on
        append(&log, "line-005\n");
        std::fs::copy(&log, d.path().join("app.log.2")).unwrap();
        std::fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
        append(&log, "line-006 after truncate, longer than before........\n");
        // A checkpoint survives a restart: a new tailer from the saved state.
        let sp = d.path().join("state.json");
        crate::save_json(&sp, &t.state).unwrap();
        let mut t = Tailer::new(t.patterns.clone(), crate::load_json(&sp).unwrap());
        let n = t.scan(2, &p).unwrap();
        assert_eq!(n.truncated.len(), 1, "{n:?}");
        assert_eq!(n.copies.len(), 1, "{n:?}");
        assert_eq!(n.lost_truncated_bytes, 0);
        assert_eq!(lines(&mut t, 2), ["line-005", "line-006 after truncate, longer than before........"]);
        // The last unterminated line of a rotated-away file is shipped once it settled.
        append(&d.path().join("app.log.1"), "tail-without-newline");
        t.scan(3, &p).unwrap();
        assert!(lines(&mut t, 3).is_empty());
        t.scan(3 + SETTLE_MS, &p).unwrap();
        assert_eq!(lines(&mut t, 3 + SETTLE_MS), ["tail-without-newline"]);
        // A file deleted while open is drained through its handle.
        append(&log, "line-007\n");
        std::fs::remove_file(&log).unwrap();
        t.scan(4 + SETTLE_MS, &p).unwrap();
        assert_eq!(lines(&mut t, 4 + SETTLE_MS), ["line-007"]);
        // A line longer than the bound goes in parts.
        append(&log, &format!("{}\n", "x".repeat(100)));
        t.scan(5 + SETTLE_MS, &p).unwrap();
        let got = lines(&mut t, 5 + SETTLE_MS);
        assert_eq!(got.concat(), "x".repeat(100));
        assert_eq!(got.len(), 2);
    }

    /// Several rotations while the exporter was not scanning (down, or waiting for the broker):
    /// a copytruncate, then a rename of the truncated file to a name the glob misses, then a new
    /// file. All three are drained in the order their lines were written — not in inode order
    /// (the copy is a newer inode than the file it copied, yet holds older lines).
    #[test]
    fn rotations_seen_at_once_drain_in_write_order() {
        let (d, log, mut t) = tailer_on_app_log();
        let p = |_: &str| 0;
        append(&log, "1 first\n");
        t.scan(0, &p).unwrap();
        assert_eq!(lines(&mut t, 0), ["1 first"]);
        append(&log, "2 copied\n");
        std::fs::copy(&log, d.path().join("app.log.copy")).unwrap();
        std::fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
        append(&log, "3 after the truncate\n");
        std::fs::rename(&log, d.path().join("app.log.old")).unwrap();
        append(&log, "4 new file\n");
        let n = t.scan(1, &p).unwrap();
        assert_eq!((n.renamed.len(), n.copies.len(), n.new_files.len()), (1, 1, 1), "{n:?}");
        assert_eq!(lines(&mut t, 1), ["2 copied", "3 after the truncate", "4 new file"]);
        // The order survives a checkpoint restart.
        let sp = d.path().join("state.json");
        crate::save_json(&sp, &t.state).unwrap();
        let t2 = Tailer::new(t.patterns.clone(), crate::load_json(&sp).unwrap());
        assert_eq!(t2.order(), t.order());
    }
}

//! Forget a customer (an erasure request; the brief's 7-day deadline).
//!
//! One pass over every Delta table under `data_root`, upstream first (bronze, silver, gold,
//! central, then the rest), each partition holding the customer rewritten through the commit
//! protocol (`replacing` its files; removes `dataChange=true`, adds `dataChange=false` so
//! incremental readers do not read the surviving rows twice):
//! - **row tables** (bronze, silver, entities, quarantines, central events): every row in which
//!   any text column holds one of the customer's identifiers as a whole token is deleted;
//! - **aggregates** (gold and central event counts and billing, the event log): the identifiers
//!   are replaced by the request's tag `forgotten:<request_id>` and the numbers kept — billing
//!   is the one exception to "final rows are never rewritten": an invoice's totals per window,
//!   region and SKU stay reproducible, the deleted customer's as an aggregate without personal
//!   fields;
//! - the audit table and the request table are left alone (they never hold an identifier: the
//!   request is recorded by the SHA-256 of the customer id).
//!
//! The identifiers are the customer id plus the workspaces seen only with that customer.
//! Before a table is rewritten, its readers (the stages whose `txn` positions follow the
//! rewritten upstream table) must have read past the upstream's erasure commit, so no rows of
//! the customer flow in after the rewrite; a reader that does not catch up within the wait fails
//! the request (re-run it: it is idempotent). Then every Parquet file on disk that is no longer
//! live and holds an identifier is deleted (an immediate, targeted VACUUM), and the proof scans
//! every remaining Parquet file and every log file under `data_root`.

use crate::{Commit, PositionMove, Table, Writer, catalog};
use deltalake::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringBuilder};
use deltalake::arrow::datatypes::DataType;
use object_store::{ObjectStore, ObjectStoreExt as _, path::Path as ObjectPath};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};
use tributary_core::{Config, Error, ErrorKind, Result};

/// Days from a request to its deadline.
pub const DEADLINE_DAYS: i64 = 7;
const REQUESTS: &str = "_tributary/forget_requests";
const AUDIT: &str = "_tributary/audit";
const EVENT_LOG: &str = "_tributary/event_log";

pub fn requests_location(cfg: &Config) -> String {
    format!("{}/{REQUESTS}", cfg.data_root.trim_end_matches('/'))
}

/// Hex SHA-256 of a customer id: how requests, audit records and logs name the customer.
pub fn customer_hash(customer_id: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, customer_id.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- tokens -------------------------------------------------------------------------------

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// The first occurrence of `needle` at or after `from` that is a whole token: not preceded or
/// followed by a letter, digit, `_`, `-` or `.` ("cust-1" is not found in "cust-10").
pub fn find_token(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    memchr::memmem::find_iter(&hay[from..], needle)
        .map(|i| i + from)
        .find(|&i| (i == 0 || !ident_byte(hay[i - 1])) && hay.get(i + needle.len()).is_none_or(|b| !ident_byte(*b)))
}

pub fn has_token(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles.iter().any(|n| find_token(hay, n, 0).is_some())
}

/// `s` with every whole-token occurrence of a needle replaced by `tag`; None when unchanged.
pub fn replace_tokens(s: &str, needles: &[&[u8]], tag: &str) -> Option<String> {
    let hay = s.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(hay.len());
    let mut at = 0;
    loop {
        let next = needles.iter().filter_map(|n| find_token(hay, n, at).map(|p| (p, n.len()))).min();
        let Some((p, len)) = next else { break };
        out.extend_from_slice(&hay[at..p]);
        out.extend_from_slice(tag.as_bytes());
        at = p + len;
    }
    if at == 0 {
        return None;
    }
    out.extend_from_slice(&hay[at..]);
    // Needles are whole UTF-8 strings matched at character boundaries.
    String::from_utf8(out).ok()
}

/// Calls `f(row, bytes)` for every text value of `a` (strings, binaries, struct fields).
fn each_text(a: &dyn Array, f: &mut dyn FnMut(usize, &[u8])) {
    macro_rules! each {
        ($arr:expr) => {{
            let arr = $arr;
            for i in 0..arr.len() {
                if arr.is_valid(i) {
                    f(i, arr.value(i).as_ref());
                }
            }
        }};
    }
    match a.data_type() {
        DataType::Utf8 => each!(a.as_string::<i32>()),
        DataType::LargeUtf8 => each!(a.as_string::<i64>()),
        DataType::Utf8View => each!(a.as_string_view()),
        DataType::Binary => each!(a.as_binary::<i32>()),
        DataType::LargeBinary => each!(a.as_binary::<i64>()),
        DataType::BinaryView => each!(a.as_binary_view()),
        DataType::Struct(_) => {
            for c in a.as_struct().columns() {
                each_text(c.as_ref(), f);
            }
        }
        _ => {}
    }
}

/// True when any text anywhere in `a` (lists, maps and dictionaries too) holds a token: the proof.
fn array_has_token(a: &dyn Array, needles: &[&[u8]]) -> bool {
    let mut hit = false;
    match a.data_type() {
        DataType::List(_) => return array_has_token(a.as_list::<i32>().values().as_ref(), needles),
        DataType::LargeList(_) => return array_has_token(a.as_list::<i64>().values().as_ref(), needles),
        DataType::Map(_, _) => return array_has_token(a.as_map().entries(), needles),
        DataType::Dictionary(_, _) => return array_has_token(a.as_any_dictionary().values().as_ref(), needles),
        DataType::Struct(_) => return a.as_struct().columns().iter().any(|c| array_has_token(c.as_ref(), needles)),
        _ => each_text(a, &mut |_, v| hit |= has_token(v, needles)),
    }
    hit
}

/// Rows of `batch` with a token in any (top-level or struct) text column.
fn rows_with_token(batch: &RecordBatch, needles: &[&[u8]]) -> Vec<bool> {
    let mut hits = vec![false; batch.num_rows()];
    for c in batch.columns() {
        each_text(c.as_ref(), &mut |i, v| {
            if !hits[i] && has_token(v, needles) {
                hits[i] = true;
            }
        });
    }
    hits
}

// ---- policies -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Rows naming the customer are deleted.
    Delete,
    /// Identifiers are replaced by the tag, rows kept (aggregates, the event log).
    Redact,
    /// Never holds an identifier (the audit, the requests).
    Skip,
}

pub fn policy(rel: &str, schema: &deltalake::arrow::datatypes::Schema) -> Policy {
    if rel == AUDIT || rel == REQUESTS {
        Policy::Skip
    } else if rel == EVENT_LOG || schema.field_with_name("event_count").is_ok() {
        Policy::Redact
    } else {
        Policy::Delete
    }
}

/// Applies `policy` to one batch: (the batch, rows deleted, rows redacted).
pub fn apply(policy: Policy, batch: RecordBatch, needles: &[&[u8]], tag: &str) -> Result<(RecordBatch, u64, u64)> {
    let mut batch = batch;
    let mut redacted = 0u64;
    if policy == Policy::Redact {
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        let mut touched = vec![false; batch.num_rows()];
        for col in cols.iter_mut() {
            if col.data_type() != &DataType::Utf8 {
                continue;
            }
            let s = col.as_string::<i32>();
            if !(0..s.len()).any(|i| s.is_valid(i) && has_token(s.value(i).as_bytes(), needles)) {
                continue;
            }
            let mut b = StringBuilder::with_capacity(s.len(), s.value_data().len());
            for (i, t) in touched.iter_mut().enumerate() {
                if s.is_null(i) {
                    b.append_null();
                } else if let Some(r) = replace_tokens(s.value(i), needles, tag) {
                    *t = true;
                    b.append_value(r);
                } else {
                    b.append_value(s.value(i));
                }
            }
            *col = std::sync::Arc::new(b.finish());
        }
        redacted = touched.iter().filter(|t| **t).count() as u64;
        batch = RecordBatch::try_new(batch.schema(), cols)
            .map_err(|e| Error::internal("redacting a batch").with_source(e))?;
    }
    if policy == Policy::Skip {
        return Ok((batch, 0, 0));
    }
    // Row tables — and, in aggregates, a token left where text could not be redacted (binary).
    let hits = rows_with_token(&batch, needles);
    let deleted = hits.iter().filter(|h| **h).count() as u64;
    if deleted > 0 {
        let keep = BooleanArray::from(hits.iter().map(|h| !h).collect::<Vec<_>>());
        batch = deltalake::arrow::compute::filter_record_batch(&batch, &keep)
            .map_err(|e| Error::internal("filtering a batch").with_source(e))?;
    }
    Ok((batch, deleted, redacted))
}

// ---- one table ----------------------------------------------------------------------------

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableOutcome {
    pub table: String,
    pub rows_deleted: u64,
    pub rows_redacted: u64,
    pub files_rewritten: usize,
    /// The last erasure commit; -1 when nothing held the customer.
    pub version: i64,
}

type PartitionKey = Vec<(String, Option<String>)>;

/// Rewrites every partition of `t` holding a token, a commit per partition (bounded memory);
/// a partition another writer rewrote meanwhile is redone on the new state.
async fn erase_table(
    t: &mut Table,
    policy: Policy,
    needles: &[&[u8]],
    tag: &str,
    request_id: &str,
) -> Result<TableOutcome> {
    let w = Writer { stage: "forget".into(), region: String::new(), threads: 1, attempts: 20 };
    let mut out = TableOutcome { table: t.name.clone(), version: -1, ..Default::default() };
    if policy == Policy::Skip {
        return Ok(out);
    }
    t.refresh().await?;
    let keys: BTreeSet<PartitionKey> = t.files()?.into_iter().map(|f| partition_key(&f.partition_values)).collect();
    for key in keys {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let files: Vec<_> = t.files()?.into_iter().filter(|f| partition_key(&f.partition_values) == key).collect();
            let (mut replaced, mut batches, mut deleted, mut redacted) = (HashSet::new(), Vec::new(), 0, 0);
            for f in &files {
                let mut file_rows = Vec::new();
                let (mut d, mut r) = (0, 0);
                for b in t.read_file(&f.path, Some(f.size), &f.partition_values).await? {
                    let (nb, bd, br) = apply(policy, b, needles, tag)?;
                    d += bd;
                    r += br;
                    file_rows.push(nb);
                }
                if d + r == 0 {
                    continue;
                }
                replaced.insert(f.path.clone());
                (deleted, redacted) = (deleted + d, redacted + r);
                // One output file per input file: gold's final billing rows never share a file
                // with provisional ones, and stay that way.
                let schema = t.schema();
                let one = deltalake::arrow::compute::concat_batches(&schema, &file_rows)
                    .map_err(|e| Error::internal("concatenating a rewritten file").with_source(e))?;
                if one.num_rows() > 0 {
                    batches.push(one);
                }
            }
            if replaced.is_empty() {
                break;
            }
            let n = replaced.len();
            let meta = HashMap::from([(
                "tributary.forget".to_string(),
                serde_json::json!({"request_id": request_id, "rows_deleted": deleted, "rows_redacted": redacted,
                                   "files": n}),
            )]);
            let moves: Vec<PositionMove> = vec![];
            match t
                .commit_batch(Commit::new(&batches, moves, meta, -1).replacing(replaced).erasure().file_per_batch(), &w)
                .await
            {
                Ok(v) => {
                    out.rows_deleted += deleted;
                    out.rows_redacted += redacted;
                    out.files_rewritten += n;
                    out.version = out.version.max(v);
                    break;
                }
                Err(e) if e.kind == ErrorKind::Conflict && attempt < 20 => {
                    tracing::info!(table = %t.name, error = %e, "erasure of a partition raced a writer; redone");
                    t.refresh().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

fn partition_key(pv: &HashMap<String, Option<String>>) -> PartitionKey {
    let mut k: PartitionKey = pv.clone().into_iter().collect();
    k.sort();
    k
}

// ---- identifiers and readers --------------------------------------------------------------

/// Refuses ids that could not name one customer (empty, control characters, a region or
/// source name). The message never repeats the id.
pub fn validate(cfg: &Config, customer_id: &str) -> Result<()> {
    let c = customer_id;
    if c.trim() != c || c.chars().count() < 3 || c.len() > 256 || c.chars().any(char::is_control) {
        return Err(Error::user("customer_id must be 3 to 256 printable characters without surrounding spaces"));
    }
    let reserved = cfg.regions.iter().chain(cfg.bronze.sources.iter());
    if reserved.into_iter().any(|r| r == c) || c.starts_with("forgotten:") {
        return Err(Error::user("customer_id equals a region, a source or a tag: it cannot name one customer"));
    }
    Ok(())
}

/// Workspaces seen with the customer and with no other customer (from the row tables).
async fn exclusive_workspaces(root: &str, rels: &[String], customer_id: &str) -> Result<BTreeSet<String>> {
    let (mut mine, mut shared) = (BTreeSet::new(), BTreeSet::new());
    for rel in rels {
        let loc = crate::store::join(root, rel);
        let Some(t) = Table::open_existing(rel, &loc).await? else { continue };
        let s = t.schema();
        if s.field_with_name("customer_id").is_err() || s.field_with_name("workspace_id").is_err() {
            continue;
        }
        if t.partition_columns().iter().any(|p| p == "customer_id" || p == "workspace_id") {
            continue;
        }
        for b in t.read_columns(&["customer_id", "workspace_id"]).await? {
            let (Some(c), Some(w)) = (b.column_by_name("customer_id"), b.column_by_name("workspace_id")) else {
                continue;
            };
            let (Some(c), Some(w)) = (c.as_string_opt::<i32>(), w.as_string_opt::<i32>()) else { continue };
            for i in 0..b.num_rows() {
                if w.is_null(i) {
                    continue;
                }
                if c.is_valid(i) && c.value(i) == customer_id {
                    mine.insert(w.value(i).to_string());
                } else if c.is_valid(i) {
                    shared.insert(w.value(i).to_string());
                }
            }
        }
    }
    Ok(mine.difference(&shared).cloned().collect())
}

/// Who reads each table incrementally: table (relative to data_root) -> (reader table, app_id).
fn readers(cfg: &Config, root: &str) -> HashMap<String, Vec<(String, String)>> {
    use catalog::*;
    let rel = |loc: String| -> String { relative(root, &loc) };
    let mut m: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in &cfg.regions {
        for s in &cfg.bronze.sources {
            m.entry(rel(bronze_location(cfg, r, s)))
                .or_default()
                .push((rel(silver_location(cfg, r, s)), silver_input_app_id(cfg, r, s)));
            let silver = m.entry(rel(silver_location(cfg, r, s))).or_default();
            silver.push((rel(central_events_location(cfg)), central_silver_app_id(cfg, r, s)));
            for k in GoldKind::ALL {
                silver.push((rel(gold_location(cfg, r, k)), gold_input_app_id(cfg, r, k, s)));
            }
        }
        for k in GoldKind::ALL {
            m.entry(rel(gold_location(cfg, r, k)))
                .or_default()
                .push((rel(central_gold_location(cfg, k)), central_gold_app_id(cfg, r, k)));
        }
    }
    m
}

/// `loc` relative to `root` ("./" segments and repeated slashes ignored), or `loc` itself (a
/// table outside data_root, e.g. a separate central_root: never matched, never waited for).
fn relative(root: &str, loc: &str) -> String {
    let norm = |s: &str| -> String {
        let (scheme, rest) = match s.split_once("://") {
            Some((a, b)) => (format!("{a}://"), b.to_string()),
            None => (String::new(), s.to_string()),
        };
        let lead = if rest.starts_with('/') { "/" } else { "" };
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        format!("{scheme}{lead}{}", parts.join("/"))
    };
    let (root, loc) =
        (norm(root.strip_prefix("file://").unwrap_or(root)), norm(loc.strip_prefix("file://").unwrap_or(loc)));
    match loc.strip_prefix(&root) {
        Some(r) if root.is_empty() => r.to_string(),
        Some(r) if r.starts_with('/') => r.trim_start_matches('/').to_string(),
        _ => loc,
    }
}

fn rank(rel: &str) -> u8 {
    if rel.contains("/bronze/") {
        0
    } else if rel.contains("/silver/") {
        1
    } else if rel.contains("/gold/") {
        2
    } else if rel.starts_with("central/") {
        3
    } else {
        4
    }
}

/// Waits until the reader `app_id` of `reader` has read version `at_least` of its input.
async fn wait_reader(
    root: &str,
    reader: &str,
    app_id: &str,
    at_least: i64,
    upstream: &str,
    deadline: Instant,
) -> Result<()> {
    let loc = crate::store::join(root, reader);
    loop {
        let Some(t) = Table::open_existing(reader, &loc).await? else { return Ok(()) };
        // A reader that never read its input starts from the beginning later, after the rewrite.
        let Some(pos) = t.txn_version(app_id).await? else { return Ok(()) };
        if pos >= at_least {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::user(format!(
                "{} has read {} up to version {pos}, not yet past the erasure commit {}: run (or resume) \
                 the pipeline so it catches up, then repeat the request with the same request_id",
                reader,
                upstream,
                at_least + 1
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- files in the store and the proof -----------------------------------------------------

/// Every object under `prefix` of `store` (None = all), as paths relative to the store's root.
async fn list_all(store: &dyn ObjectStore, prefix: Option<&str>) -> Result<Vec<String>> {
    use futures::TryStreamExt as _;
    let p = prefix.map(ObjectPath::from);
    let mut out: Vec<String> = store
        .list(p.as_ref())
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .map_err(|e| Error::external(format!("listing {}", prefix.unwrap_or("data_root"))).with_source(e))?;
    out.sort();
    Ok(out)
}

async fn get(store: &dyn ObjectStore, path: &str) -> Result<bytes::Bytes> {
    let r = store
        .get(&ObjectPath::from(path))
        .await
        .map_err(|e| Error::external(format!("reading {path}")).with_source(e))?;
    r.bytes().await.map_err(|e| Error::external(format!("reading {path}")).with_source(e))
}

fn parquet_has_token(path: &str, data: bytes::Bytes, needles: &[&[u8]]) -> Result<bool> {
    use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(data)
        .and_then(|b| b.build())
        .map_err(|e| Error::external(format!("reading {path}")).with_source(e))?;
    for b in reader {
        let b = b.map_err(|e| Error::external(format!("reading {path}")).with_source(e))?;
        if b.columns().iter().any(|c| array_has_token(c.as_ref(), needles)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What the scan of everything left under `data_root` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Proof {
    /// Parquet files read (data files of every table, live or not, and log checkpoints).
    pub parquet_files: usize,
    /// Delta log JSON files read.
    pub log_files: usize,
    /// Files (relative to data_root) that still hold an identifier: empty when forgotten.
    pub hits: Vec<String>,
    /// Landing-zone files (raw input, outside the tables) that still mention the customer: they
    /// age out with the landing zone's lifecycle rule (which must be shorter than the deadline).
    pub landing_hits: usize,
}

/// Scans every Parquet file (all text, nested included) and every Delta log file under `root`
/// (a local path or an object store URI).
pub async fn prove(root: &str, needles: &[&[u8]]) -> Result<Proof> {
    let store = crate::store::root_store(root)?;
    let mut p = Proof::default();
    for rel in list_all(store.as_ref(), None).await? {
        let segs: Vec<&str> = rel.split('/').collect();
        let in_landing = segs.contains(&"landing");
        let in_log = segs.contains(&"_delta_log");
        let hit = if in_landing {
            if get(store.as_ref(), &rel).await.map(|b| has_token(&b, needles)).unwrap_or(false) {
                p.landing_hits += 1;
            }
            continue;
        } else if rel.ends_with(".parquet") {
            p.parquet_files += 1;
            parquet_has_token(&rel, get(store.as_ref(), &rel).await?, needles)?
        } else if in_log {
            p.log_files += 1;
            has_token(&get(store.as_ref(), &rel).await?, needles)
        } else {
            false
        };
        if hit {
            p.hits.push(rel);
        }
    }
    Ok(p)
}

/// Deletes every Parquet data file of the table `rel` (under the store's root) that is not
/// `live` (paths relative to the table) and holds a token.
async fn delete_dead_files(
    store: &dyn ObjectStore,
    rel: &str,
    live: &HashSet<String>,
    needles: &[&[u8]],
) -> Result<usize> {
    let mut n = 0;
    let prefix = format!("{}/", rel.trim_end_matches('/'));
    for f in list_all(store, Some(rel)).await? {
        let Some(in_table) = f.strip_prefix(&prefix) else { continue };
        if in_table.starts_with("_delta_log/") || !in_table.ends_with(".parquet") || live.contains(in_table) {
            continue;
        }
        if parquet_has_token(&f, get(store, &f).await?, needles)? {
            store
                .delete(&ObjectPath::from(f.as_str()))
                .await
                .map_err(|e| Error::external(format!("deleting {f}")).with_source(e))?;
            n += 1;
        }
    }
    Ok(n)
}

// ---- the request ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub request_id: String,
    pub customer_sha256: String,
    pub tag: String,
    pub workspaces: usize,
    pub tables: Vec<TableOutcome>,
    pub files_deleted: usize,
    pub proof: Proof,
    pub deadline: String,
    pub seconds: f64,
}

impl Outcome {
    pub fn rows_deleted(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_deleted).sum()
    }
    pub fn rows_redacted(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_redacted).sum()
    }
}

/// Erases `customer_id` from every table under `cfg.data_root` (local data roots), records the
/// request and its outcome in `_tributary/forget_requests`, and proves it. `request_id` names a
/// request to repeat (idempotent); None opens a new one. Readers get `wait` to catch up.
pub async fn forget(cfg: &Config, customer_id: &str, request_id: Option<&str>, wait: Duration) -> Result<Outcome> {
    validate(cfg, customer_id)?;
    let request_id = match request_id.filter(|r| !r.is_empty()) {
        Some(r) if r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => r.to_string(),
        Some(_) => return Err(Error::user("request_id: up to 64 letters, digits and '-'")),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let started = Instant::now();
    let hash = customer_hash(customer_id);
    let deadline = requests::open(cfg, &request_id, &hash).await?;
    let result = run(cfg, customer_id, &request_id, wait).await;
    let (status, details) = match &result {
        Ok(o) if o.proof.hits.is_empty() => (
            "completed",
            serde_json::json!({"rows_deleted": o.rows_deleted(), "rows_redacted": o.rows_redacted(),
                               "files_deleted": o.files_deleted, "parquet_files_scanned": o.proof.parquet_files,
                               "landing_hits": o.proof.landing_hits}),
        ),
        Ok(o) => ("incomplete", serde_json::json!({"files_still_holding": o.proof.hits})),
        Err(e) => ("failed", serde_json::json!({"error": e.to_string()})),
    };
    requests::record(cfg, &request_id, &hash, status, &details).await?;
    tributary_core::event_log::emit(
        if status == "completed" {
            tributary_core::event_log::Level::Info
        } else {
            tributary_core::event_log::Level::Warn
        },
        "forget",
        "",
        REQUESTS,
        "user_action",
        serde_json::json!({"action": "forget", "request_id": request_id, "status": status, "details": details}),
    );
    let mut o = result?;
    o.customer_sha256 = hash;
    o.deadline = deadline;
    o.seconds = started.elapsed().as_secs_f64();
    Ok(o)
}

async fn run(cfg: &Config, customer_id: &str, request_id: &str, wait: Duration) -> Result<Outcome> {
    let root = cfg.data_root.clone();
    let mut rels = crate::store::list_tables(&root).await?;
    rels.sort_by_key(|r| (rank(r), r.clone()));
    let workspaces = exclusive_workspaces(&root, &rels, customer_id).await?;
    let mut ids: Vec<&[u8]> = vec![customer_id.as_bytes()];
    ids.extend(workspaces.iter().map(|w| w.as_bytes()));
    let tag = format!("forgotten:{request_id}");
    let readers = readers(cfg, &root);
    let deadline = Instant::now() + wait;
    // reader table -> (app_id, version it must have read, upstream)
    let mut pending: BTreeMap<String, Vec<(String, i64, String)>> = BTreeMap::new();
    let mut outcome = Outcome {
        request_id: request_id.to_string(),
        tag: tag.clone(),
        workspaces: workspaces.len(),
        ..Default::default()
    };
    let mut live: Vec<(String, HashSet<String>)> = Vec::new();
    for rel in &rels {
        for (app_id, at_least, upstream) in pending.remove(rel).unwrap_or_default() {
            wait_reader(&root, rel, &app_id, at_least, &upstream, deadline).await?;
        }
        let loc = crate::store::join(&root, rel);
        let Some(mut t) = Table::open_existing(rel, &loc).await? else { continue };
        let p = policy(rel, &t.schema());
        let o = erase_table(&mut t, p, &ids, &tag, request_id).await?;
        if o.version >= 0 {
            tracing::info!(table = %rel, deleted = o.rows_deleted, redacted = o.rows_redacted, version = o.version, "erased");
            for (reader, app_id) in readers.get(rel).into_iter().flatten() {
                pending.entry(reader.clone()).or_default().push((app_id.clone(), o.version - 1, rel.clone()));
            }
            outcome.tables.push(o);
        }
        let files: HashSet<String> = t
            .files()?
            .into_iter()
            .filter_map(|f| deltalake::Path::from_url_path(&f.path).ok().map(|p| p.to_string()))
            .collect();
        live.push((rel.clone(), files));
    }
    // Readers of rewritten tables that are not themselves tables under data_root: none to wait
    // for (they would have been visited); the removed files are no longer anyone's input.
    let store = crate::store::root_store(&root)?;
    for (rel, files) in &live {
        outcome.files_deleted += delete_dead_files(store.as_ref(), rel, files, &ids).await?;
    }
    outcome.proof = prove(&root, &ids).await?;
    Ok(outcome)
}

/// Exports the open and overdue requests as `tributary_erasure_requests{state}` every
/// `every` until `shutdown` (the overdue alert's input).
pub fn spawn_deadline_gauge(cfg: &Config, every: Duration, shutdown: tributary_core::Shutdown) {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        loop {
            match requests::list(&cfg).await {
                Ok(list) => tributary_core::metrics::erasure_requests(
                    list.iter().filter(|s| s.completed_at_us.is_none()).count() as u64,
                    list.iter().filter(|s| s.overdue).count() as u64,
                ),
                Err(e) => tracing::warn!(error = %e, "reading the erasure requests failed; retried"),
            }
            if shutdown.sleep(every).await {
                return;
            }
        }
    });
}

/// The request table: one row per state change (`requested`, then `completed`, `incomplete` or
/// `failed` per attempt); the deadline is fixed by the first `requested` row.
pub mod requests {
    use super::*;
    use deltalake::arrow::array::TimestampMicrosecondBuilder;
    use deltalake::arrow::datatypes::{Field, Schema, SchemaRef, TimeUnit};
    use std::sync::Arc;

    pub fn schema() -> SchemaRef {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        Arc::new(Schema::new(vec![
            Field::new("request_id", DataType::Utf8, false),
            Field::new("customer_sha256", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("at", ts.clone(), false),
            Field::new("deadline", ts, false),
            Field::new("details", DataType::Utf8, false),
        ]))
    }

    /// One request as of its latest row.
    #[derive(Debug, Clone, serde::Serialize)]
    pub struct State {
        pub request_id: String,
        pub customer_sha256: String,
        pub requested_at_us: i64,
        pub deadline_us: i64,
        pub status: String,
        /// When it completed (the first `completed` row), if it did.
        pub completed_at_us: Option<i64>,
        /// Not completed by the deadline (or completed after it).
        pub overdue: bool,
        pub details: String,
    }

    async fn table(cfg: &Config) -> Result<Table> {
        Table::open_or_create(REQUESTS, &requests_location(cfg), schema(), &[]).await
    }

    pub(super) async fn append(cfg: &Config, rows: &[(&str, &str, &str, i64, i64, String)]) -> Result<()> {
        let mut t = table(cfg).await?;
        let mut cols: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut dl = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for (id, hash, status, at_us, deadline_us, details) in rows {
            cols[0].append_value(id);
            cols[1].append_value(hash);
            cols[2].append_value(status);
            cols[3].append_value(details);
            at.append_value(*at_us);
            dl.append_value(*deadline_us);
        }
        let d = cols.pop().map(|mut b| b.finish());
        let mut arrays: Vec<ArrayRef> = cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        arrays.push(Arc::new(at.finish()));
        arrays.push(Arc::new(dl.finish()));
        arrays.extend(d.map(|d| Arc::new(d) as ArrayRef));
        let batch =
            RecordBatch::try_new(schema(), arrays).map_err(|e| Error::internal("request row").with_source(e))?;
        let w = Writer { stage: "forget".into(), region: String::new(), threads: 1, attempts: 50 };
        t.commit_batch(Commit::new(&[batch], vec![], HashMap::new(), -1), &w).await?;
        Ok(())
    }

    /// Opens (or re-opens) a request; its deadline as RFC 3339.
    pub async fn open(cfg: &Config, request_id: &str, hash: &str) -> Result<String> {
        let states = list(cfg).await?;
        let deadline_us = match states.iter().find(|s| s.request_id == request_id) {
            Some(s) if s.customer_sha256 != hash => {
                return Err(Error::user(format!("request {request_id} is for another customer")));
            }
            Some(s) => s.deadline_us,
            None => {
                let now = tributary_core::now_ms() * 1000;
                let deadline = now + DEADLINE_DAYS * 86_400_000_000;
                append(cfg, &[(request_id, hash, "requested", now, deadline, "{}".into())]).await?;
                deadline
            }
        };
        Ok(rfc3339(deadline_us))
    }

    pub async fn record(
        cfg: &Config,
        request_id: &str,
        hash: &str,
        status: &str,
        details: &serde_json::Value,
    ) -> Result<()> {
        let deadline = list(cfg)
            .await?
            .into_iter()
            .find(|s| s.request_id == request_id)
            .map(|s| s.deadline_us)
            .ok_or_else(|| Error::internal(format!("request {request_id} was not opened")))?;
        append(cfg, &[(request_id, hash, status, tributary_core::now_ms() * 1000, deadline, details.to_string())]).await
    }

    /// Every request, oldest first, as of `now`.
    pub async fn list(cfg: &Config) -> Result<Vec<State>> {
        let Some(t) = Table::open_existing(REQUESTS, &requests_location(cfg)).await? else { return Ok(vec![]) };
        let now = tributary_core::now_ms() * 1000;
        let mut by_id: BTreeMap<String, State> = BTreeMap::new();
        let mut rows = Vec::new();
        for b in t.read_all().await? {
            let s = |n: &str| b.column_by_name(n).map(|c| c.as_string::<i32>().clone());
            let ts = |n: &str| {
                b.column_by_name(n)
                    .map(|c| c.as_primitive::<deltalake::arrow::datatypes::TimestampMicrosecondType>().clone())
            };
            let (Some(id), Some(h), Some(st), Some(d), Some(at), Some(dl)) =
                (s("request_id"), s("customer_sha256"), s("status"), s("details"), ts("at"), ts("deadline"))
            else {
                continue;
            };
            for i in 0..b.num_rows() {
                rows.push((
                    at.value(i),
                    id.value(i).to_string(),
                    h.value(i).to_string(),
                    st.value(i).to_string(),
                    dl.value(i),
                    d.value(i).to_string(),
                ));
            }
        }
        rows.sort();
        for (at, id, h, st, dl, d) in rows {
            let e = by_id.entry(id.clone()).or_insert(State {
                request_id: id,
                customer_sha256: h,
                requested_at_us: at,
                deadline_us: dl,
                status: String::new(),
                completed_at_us: None,
                overdue: false,
                details: String::new(),
            });
            if st == "completed" && e.completed_at_us.is_none() {
                e.completed_at_us = Some(at);
            }
            e.status = st;
            e.details = d;
        }
        let mut out: Vec<State> = by_id.into_values().collect();
        for s in &mut out {
            s.overdue = s.completed_at_us.map_or(now > s.deadline_us, |c| c > s.deadline_us);
        }
        out.sort_by_key(|s| s.requested_at_us);
        Ok(out)
    }

    pub fn rfc3339(us: i64) -> String {
        chrono::DateTime::from_timestamp_micros(us).map(|d| d.to_rfc3339()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_whole_words() {
        let n: &[&[u8]] = &[b"cust-1"];
        assert!(has_token(br#"{"customer_id":"cust-1"}"#, n));
        assert!(has_token(b"cust-1", n));
        assert!(has_token(b"a cust-1@x", n));
        assert!(!has_token(b"cust-10", n));
        assert!(!has_token(b"xcust-1", n));
        assert!(!has_token(b"cust-1.5", n));
        assert!(!has_token(b"", n));
        assert!(has_token(b"cust-10 cust-1", n), "a later whole occurrence after a partial one");
        assert_eq!(replace_tokens(r#"["cust-1","cust-10",cust-1]"#, n, "T").as_deref(), Some(r#"["T","cust-10",T]"#));
        assert_eq!(replace_tokens("cust-10", n, "T"), None);
        let two: &[&[u8]] = &[b"ws-9", b"cust-1"];
        assert_eq!(replace_tokens("ws-9/cust-1/ö", two, "T").as_deref(), Some("T/T/ö"));
    }

    #[test]
    fn policies_delete_rows_or_redact_aggregates() {
        use deltalake::arrow::array::{BinaryArray, Int64Array, StringArray};
        use deltalake::arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, true),
            Field::new("raw", DataType::Binary, true),
            Field::new("event_count", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("cust-1"), Some("cust-10"), None, Some("cust-2")])),
                Arc::new(BinaryArray::from(vec![
                    Some(&b"x"[..]),
                    None,
                    Some(&b"{\"c\":\"cust-1\"}"[..]),
                    Some(&b"y"[..]),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let n: &[&[u8]] = &[b"cust-1"];
        let (b, deleted, redacted) = apply(Policy::Delete, batch.clone(), n, "T").unwrap();
        assert_eq!((deleted, redacted, b.num_rows()), (2, 0, 2));
        let (b, deleted, redacted) = apply(Policy::Redact, batch.clone(), n, "T").unwrap();
        // The binary column cannot be redacted: that row goes.
        assert_eq!((deleted, redacted, b.num_rows()), (1, 1, 3));
        let c = b.column(0).as_string::<i32>();
        assert_eq!(c.value(0), "T");
        assert_eq!(c.value(1), "cust-10");
        assert_eq!(policy("_tributary/audit", &schema), Policy::Skip);
        assert_eq!(policy("regions/r1/gold/x", &schema), Policy::Redact);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_track_their_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config { data_root: dir.path().display().to_string(), ..Default::default() };
        let now = tributary_core::now_ms() * 1000;
        let day = 86_400_000_000i64;
        // Requested 8 days ago, still open: overdue. Completed late: stays overdue.
        requests::append(&cfg, &[("old", "h1", "requested", now - 8 * day, now - day, "{}".into())]).await.unwrap();
        // Requested yesterday and completed: not overdue.
        requests::append(&cfg, &[("done", "h2", "requested", now - day, now + 6 * day, "{}".into())]).await.unwrap();
        requests::append(&cfg, &[("done", "h2", "completed", now - 1000, now + 6 * day, "{}".into())]).await.unwrap();
        requests::open(&cfg, "new", "h3").await.unwrap();
        let list = requests::list(&cfg).await.unwrap();
        let by: std::collections::BTreeMap<&str, &requests::State> =
            list.iter().map(|s| (s.request_id.as_str(), s)).collect();
        assert!(by["old"].overdue && by["old"].completed_at_us.is_none());
        assert!(!by["done"].overdue && by["done"].completed_at_us == Some(now - 1000));
        assert!(!by["new"].overdue && by["new"].deadline_us - by["new"].requested_at_us == 7 * day);
        assert_eq!(list.iter().map(|s| s.request_id.as_str()).collect::<Vec<_>>(), ["old", "done", "new"]);
        requests::append(&cfg, &[("old", "h1", "completed", now, now - day, "{}".into())]).await.unwrap();
        let old = requests::list(&cfg).await.unwrap().into_iter().find(|s| s.request_id == "old").unwrap();
        assert!(old.overdue && old.completed_at_us == Some(now), "completed after its deadline");
        // Re-opening keeps the first deadline; another customer's id is refused.
        assert_eq!(requests::open(&cfg, "old", "h1").await.unwrap(), requests::rfc3339(now - day));
        assert!(requests::open(&cfg, "old", "h9").await.is_err());
    }

    #[test]
    fn reader_tables_are_named_relative_to_the_data_root() {
        assert_eq!(relative("./data", "data/regions/r1/silver/job"), "regions/r1/silver/job");
        assert_eq!(relative("data/", "./data/./central/events"), "central/events");
        assert_eq!(relative("/d", "/d/central/events"), "central/events");
        assert_eq!(relative("file:///d", "/d/central/events"), "central/events");
        assert_eq!(relative("s3://b/data", "s3://b/data/regions/r1/gold/x"), "regions/r1/gold/x");
        // Outside the root (a separate central_root, a sibling with the same prefix): unchanged.
        assert_eq!(relative("/d", "/central/events"), "/central/events");
        assert_eq!(relative("/d", "/data2/central/events"), "/data2/central/events");
        assert_eq!(relative("s3://b/data", "s3://b/central/events"), "s3://b/central/events");
    }

    #[test]
    fn hashes_and_validation() {
        assert_eq!(customer_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let cfg = Config { regions: vec!["us-east-1".into()], ..Default::default() };
        assert!(validate(&cfg, "cust-007").is_ok());
        for bad in ["", "ab", " cust", "us-east-1", "billing", "forgotten:x", "a\nb"] {
            let e = validate(&cfg, bad).unwrap_err().to_string();
            assert!(bad.len() < 3 || !e.contains(bad), "the message must not repeat the id: {e}");
        }
    }
}

//! Exact dedup by (`source`, `event_id`) over an event-time horizon, in bounded memory.
//!
//! The keys of every row silver holds are also kept in a key index: a Delta table
//! `silver/_dedup/<source>` (`event_id`, `event_time`), hash-partitioned into `buckets`
//! partitions. In memory there is only
//! - a Bloom filter of fixed size (`bloom_mb`), sliced by event time so it forgets keys as they
//!   leave the horizon (`SlicedBloom`): a key it does not hold is new, with no I/O;
//! - an LRU of loaded buckets bounded by `cache_mb`;
//!
//! so memory does not grow with the horizon or the key count (the false-positive rate grows with
//! the keys *within the horizon*, and it only costs lookups, never correctness: every "maybe" is
//! checked exactly against the index). The index is exactly once like every other output: after silver commits version V,
//! the batch's keys are appended with `txn(<pipeline>/silver/<region>/dedup/<source>, V)`; a
//! crash between the two commits is repaired on start by indexing silver's versions after the
//! recorded one (so the index always equals silver's keys), and the Bloom filter is rebuilt by
//! streaming the index one file at a time.
//!
//! Keys older than the horizon (behind the flow's max committed event_time) expire: whole files
//! are dropped once all their keys are older, and merges of small files leave them out. An event
//! older than the horizon cannot be proven new, so the caller quarantines it.

use deltalake::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tributary_core::config::DedupConfig;
use tributary_core::{Error, Result};
use tributary_delta::{Action, Commit, FileRef, PositionMove, Table, Writer, schemas};

pub const DAY_US: i64 = 86_400_000_000;

/// Index table property: the horizon (µs) its content was maintained with. Keys older than it
/// were deleted, so a larger horizon cannot be served from the index alone.
pub const HORIZON_PROPERTY: &str = "tributary.dedup.horizon_us";

pub fn index_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_time", schemas::ts(), false),
        Field::new("bucket", DataType::Utf8, false),
    ]))
}

/// FNV-1a 64 with a seed: stable across processes, versions and platforms.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    // Final avalanche (splitmix64), so low bits are usable for bucketing.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

pub fn bucket_of(event_id: &str, buckets: u32) -> u32 {
    (fnv1a(1, event_id.as_bytes()) % buckets as u64) as u32
}

fn bucket_name(b: u32) -> String {
    format!("{b:04}")
}

/// A fixed-size Bloom filter (k = 7, double hashing).
pub struct Bloom {
    bits: Vec<u64>,
    nbits: u64,
    inserted: u64,
}

impl Bloom {
    const K: u64 = 7;
    pub fn new(bytes: usize) -> Self {
        let words = (bytes / 8).max(1);
        Self { bits: vec![0; words], nbits: words as u64 * 64, inserted: 0 }
    }
    fn positions(&self, key: &str) -> impl Iterator<Item = u64> + '_ {
        let h1 = fnv1a(2, key.as_bytes());
        let h2 = fnv1a(3, key.as_bytes()) | 1;
        (0..Self::K).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.nbits)
    }
    pub fn insert(&mut self, key: &str) {
        let pos: Vec<u64> = self.positions(key).collect();
        for p in pos {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
        self.inserted += 1;
    }
    pub fn may_contain(&self, key: &str) -> bool {
        self.positions(key).all(|p| self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
    pub fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.inserted = 0;
    }
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
    /// Expected false-positive rate at the current fill.
    pub fn fpr(&self) -> f64 {
        let k = Self::K as f64;
        (1.0 - (-k * self.inserted as f64 / self.nbits as f64).exp()).powf(k)
    }
}

/// Bloom filters that forget with the horizon: one filter per slice of event time
/// (`horizon / slices` wide), each `bytes / (slices + 1)` big. A key goes into the slice of its
/// event_time; a lookup asks every live slice (any may hold a resend with another event_time);
/// a slice is dropped once its whole range is older than the dedup floor, so the filter holds
/// the keys within the horizon, not every key since the process started, and its
/// false-positive rate levels off instead of climbing towards 1.
///
/// Never a false negative for a key at or above the floor: a slice is dropped only when all its
/// keys are below it; when all slices are in use, a key older than the oldest slice joins the
/// oldest (which lives longer than its own would), and room for a newer slice is made by
/// merging (OR) the two oldest into the newer of them — keys only ever move to a slice that
/// lives longer.
pub struct SlicedBloom {
    slices: BTreeMap<i64, Bloom>,
    horizon_us: i64,
    /// Max event time inserted: the floor is measured back from it, as the index's.
    max_us: Option<i64>,
    width_us: i64,
    slice_bytes: usize,
    max_slices: usize,
}

impl SlicedBloom {
    pub fn new(bytes: usize, horizon_us: i64, slices: u32) -> Self {
        let slices = slices.max(1) as usize;
        Self {
            slices: BTreeMap::new(),
            horizon_us,
            max_us: None,
            width_us: (horizon_us / slices as i64).max(1),
            // A horizon spans `slices` widths plus the partial ones at both ends.
            slice_bytes: (bytes / (slices + 1)).max(8),
            max_slices: slices + 1,
        }
    }

    pub fn insert(&mut self, key: &str, event_time_us: i64) {
        if self.max_us.is_none_or(|m| event_time_us > m) {
            // A newer key moves the floor: drop what falls behind it before making room.
            self.max_us = Some(event_time_us);
            self.expire(event_time_us - self.horizon_us);
        }
        let start = event_time_us - event_time_us.rem_euclid(self.width_us);
        if let Some(b) = self.slices.get_mut(&start) {
            b.insert(key);
            return;
        }
        if self.slices.len() >= self.max_slices {
            let oldest = *self.slices.keys().next().expect("max_slices >= 1");
            if start < oldest {
                self.slices.get_mut(&oldest).expect("present").insert(key);
                return;
            }
            self.merge_two_oldest();
            if let Some(b) = self.slices.get_mut(&start) {
                b.insert(key);
                return;
            }
        }
        let mut b = Bloom::new(self.slice_bytes);
        b.insert(key);
        self.slices.insert(start, b);
    }

    fn merge_two_oldest(&mut self) {
        let mut it = self.slices.keys().copied();
        let (Some(a), Some(b)) = (it.next(), it.next()) else { return };
        let old = self.slices.remove(&a).expect("present");
        let into = self.slices.get_mut(&b).expect("present");
        for (w, o) in into.bits.iter_mut().zip(&old.bits) {
            *w |= *o;
        }
        into.inserted += old.inserted;
    }

    /// Drops the slices whose whole range is older than `floor_us`; returns how many.
    pub fn expire(&mut self, floor_us: i64) -> usize {
        let width = self.width_us;
        let before = self.slices.len();
        self.slices.retain(|start, _| start + width > floor_us);
        before - self.slices.len()
    }

    pub fn may_contain(&self, key: &str) -> bool {
        // Hash once for every slice (they share size and positions).
        let Some(first) = self.slices.values().next() else { return false };
        let pos: Vec<u64> = first.positions(key).collect();
        self.slices.values().any(|b| pos.iter().all(|p| b.bits[(p / 64) as usize] & (1 << (p % 64)) != 0))
    }

    pub fn clear(&mut self) {
        self.slices.clear();
        self.max_us = None;
    }

    pub fn bytes(&self) -> usize {
        self.slices.values().map(|b| b.bytes()).sum()
    }

    /// The most memory it can take.
    pub fn capacity_bytes(&self) -> usize {
        self.slice_bytes / 8 * 8 * self.max_slices
    }

    pub fn live_slices(&self) -> usize {
        self.slices.len()
    }

    /// Expected false-positive rate of a lookup (any live slice says "maybe").
    pub fn fpr(&self) -> f64 {
        1.0 - self.slices.values().map(|b| 1.0 - b.fpr()).product::<f64>()
    }
}

/// Counters of the index's work (for metrics, logs and the benchmark).
#[derive(Debug, Default, Clone, Copy)]
pub struct DedupStats {
    pub lookups: u64,
    pub bloom_positives: u64,
    pub false_positives: u64,
    pub bucket_loads: u64,
    pub files_read: u64,
    pub keys_indexed: u64,
    pub files_expired: u64,
    pub merges: u64,
}

struct Cached {
    keys: Arc<HashSet<Box<str>>>,
    bytes: usize,
    used: u64,
}

pub struct DedupIndex {
    pub table: Table,
    writer: Writer,
    app_id: String,
    /// The silver version whose keys the index holds up to.
    pub pos: i64,
    buckets: u32,
    horizon_us: i64,
    compact_min_files: usize,
    bloom: SlicedBloom,
    cache: HashMap<u32, Cached>,
    cache_bytes: usize,
    cache_budget: usize,
    tick: u64,
    /// Max event_time of the keys indexed (the horizon is measured back from it).
    pub max_event_time_us: Option<i64>,
    pub stats: DedupStats,
    /// The in-memory state was built from the index (see `recover`).
    loaded: bool,
}

impl DedupIndex {
    pub async fn open(cfg: &DedupConfig, name: &str, location: &str, app_id: &str, writer: Writer) -> Result<Self> {
        let table = Table::open_or_create(name, location, index_schema(), &["bucket"]).await?;
        let pos = table.txn_version(app_id).await?.unwrap_or(-1);
        Ok(Self {
            table,
            writer,
            app_id: app_id.into(),
            pos,
            buckets: cfg.buckets,
            horizon_us: cfg.horizon_days * DAY_US,
            compact_min_files: cfg.compact_min_files,
            bloom: SlicedBloom::new((cfg.bloom_mb * 1024 * 1024) as usize, cfg.horizon_days * DAY_US, cfg.bloom_slices),
            cache: HashMap::new(),
            cache_bytes: 0,
            cache_budget: (cfg.cache_mb * 1024 * 1024) as usize,
            tick: 0,
            max_event_time_us: None,
            stats: DedupStats::default(),
            loaded: false,
        })
    }

    /// Events with an event_time before this cannot be checked (their keys may have expired).
    pub fn floor_us(&self) -> Option<i64> {
        self.max_event_time_us.map(|m| m - self.horizon_us)
    }

    pub fn bloom_bytes(&self) -> usize {
        self.bloom.bytes()
    }
    pub fn bloom_slices(&self) -> usize {
        self.bloom.live_slices()
    }
    pub fn bloom_fpr(&self) -> f64 {
        self.bloom.fpr()
    }
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Brings the index up to `silver` (indexing versions after `pos`). The Bloom filter, cache
    /// and max event_time are rebuilt from the index, one file at a time, on the first call and
    /// whenever another writer moved the index; after this process's own failed batch they are
    /// still right (they only take keys after the index commit that holds them), so the stage's
    /// error path does not re-read the whole index.
    pub async fn recover(&mut self, silver: &Table) -> Result<()> {
        self.table.refresh().await?;
        let recorded = self.table.txn_version(&self.app_id).await?.unwrap_or(-1);
        let rebuild = !self.loaded || recorded != self.pos;
        self.pos = recorded;
        let latest = silver.version();
        if latest > self.pos {
            let mut ids: Vec<(String, i64)> = Vec::new();
            let keys = silver.handle().reading_only(["event_id", "event_time"]);
            for (_, b) in keys.read_versions(self.pos, latest).await? {
                ids.extend(keys_of(&b)?);
            }
            if !ids.is_empty() {
                tracing::warn!(index = %self.table.name, from = self.pos, to = latest, keys = ids.len(),
                    "dedup index caught up with silver after a restart");
            }
            self.append(&ids, latest).await?;
        }
        let rebuild = self.sync_horizon(silver).await? || rebuild;
        if !rebuild {
            return Ok(());
        }
        self.bloom.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        let mut max: Option<i64> = None;
        for f in self.table.files()? {
            for b in self.table.read_file(&f.path, Some(f.size), &f.partition_values).await? {
                for (id, t) in keys_of(&b)? {
                    self.bloom.insert(&id, t);
                    max = Some(max.map_or(t, |m| m.max(t)));
                }
            }
        }
        self.max_event_time_us = max;
        self.loaded = true;
        Ok(())
    }

    /// Makes the index hold every silver key within the configured horizon. When the horizon
    /// grew since the index was maintained (the documented remedy for `beyond_dedup_horizon`),
    /// the expired keys are gone from the index, so it is rebuilt from silver itself
    /// (`event_id`, `event_time` over the new horizon) in one commit that replaces every index
    /// file and records the new horizon; otherwise a replayed event whose key had expired would
    /// be admitted twice. A smaller horizon only records itself (expiry does the rest). Memory of
    /// a rebuild: the keys within the new horizon. Returns whether the index was rebuilt.
    async fn sync_horizon(&mut self, silver: &Table) -> Result<bool> {
        let recorded: Option<i64> = self.table.properties()?.get(HORIZON_PROPERTY).and_then(|v| v.parse().ok());
        if recorded == Some(self.horizon_us) {
            return Ok(false);
        }
        let grew = recorded.is_some_and(|r| r < self.horizon_us);
        let mut batches = Vec::new();
        let mut replacing = HashSet::new();
        if grew {
            let mut keys: Vec<(String, i64)> = Vec::new();
            for b in silver.read_columns(&["event_id", "event_time"]).await? {
                keys.extend(keys_of(&b)?);
            }
            let floor = keys.iter().map(|k| k.1).max().map(|m| m - self.horizon_us);
            keys.retain(|k| floor.is_none_or(|f| k.1 >= f));
            let mut by_bucket: BTreeMap<u32, Vec<(String, i64)>> = BTreeMap::new();
            for k in keys {
                by_bucket.entry(bucket_of(&k.0, self.buckets)).or_default().push(k);
            }
            for (b, mut ks) in by_bucket {
                ks.sort();
                batches.push(index_batch(ks.iter().map(|k| (k.0.as_str(), k.1)), b)?);
            }
            replacing = self.table.files()?.into_iter().map(|f| f.path).collect();
            tracing::warn!(index = %self.table.name, from_us = ?recorded, to_us = self.horizon_us,
                keys = batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                "dedup horizon grew: index rebuilt from silver");
        }
        let props = self.table.evolve(&[], &[(HORIZON_PROPERTY.to_string(), self.horizon_us.to_string())])?;
        let moves = vec![PositionMove { app_id: self.app_id.clone(), from: self.pos, to: self.pos }];
        let meta = HashMap::from([(
            "tributary.dedup".to_string(),
            serde_json::json!({"horizon_us": self.horizon_us, "previous_horizon_us": recorded, "rebuilt_from_silver": grew}),
        )]);
        self.table
            .commit_batch(
                Commit::new(&batches, moves, meta, -1).replacing(replacing).evolving(Some(props)).file_per_batch(),
                &self.writer,
            )
            .await?;
        Ok(grew)
    }

    /// For each id: is it in the index (a key silver holds)? Exact.
    pub async fn contains(&mut self, ids: &[&str]) -> Result<Vec<bool>> {
        let mut out = vec![false; ids.len()];
        let mut suspects: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            self.stats.lookups += 1;
            if self.bloom.may_contain(id) {
                self.stats.bloom_positives += 1;
                suspects.entry(bucket_of(id, self.buckets)).or_default().push(i);
            }
        }
        for (bucket, rows) in suspects {
            let found: HashSet<usize> = self.check_bucket(bucket, ids, &rows).await?;
            for i in rows {
                out[i] = found.contains(&i);
                if !out[i] {
                    self.stats.false_positives += 1;
                }
            }
        }
        Ok(out)
    }

    /// Which of `rows` (indexes into `ids`) are in `bucket`: from the cache, or by loading the
    /// bucket into the cache when it fits the budget, or else by streaming its files one at a
    /// time (memory: one file, whatever the bucket's size).
    async fn check_bucket(&mut self, bucket: u32, ids: &[&str], rows: &[usize]) -> Result<HashSet<usize>> {
        self.tick += 1;
        if let Some(c) = self.cache.get_mut(&bucket) {
            c.used = self.tick;
            return Ok(rows.iter().copied().filter(|i| c.keys.contains(ids[*i])).collect());
        }
        self.stats.bucket_loads += 1;
        let want = bucket_name(bucket);
        let files: Vec<FileRef> = self
            .table
            .files()?
            .into_iter()
            .filter(|f| f.partition_values.get("bucket").and_then(|v| v.as_deref()) == Some(want.as_str()))
            .collect();
        // Estimated in-memory size of the bucket's keys (avg id ~24 bytes + set overhead).
        let estimate: usize = files.iter().map(|f| f.num_records.unwrap_or(i64::MAX / 1024).max(0) as usize * 64).sum();
        let cacheable = estimate <= self.cache_budget;
        // The same id can be asked for more than once in a batch (a replay of a replay).
        let wanted: HashSet<&str> = rows.iter().map(|i| ids[*i]).collect();
        let mut found: HashSet<&str> = HashSet::new();
        let mut keys: HashSet<Box<str>> = HashSet::new();
        let mut bytes = 0usize;
        for f in &files {
            self.stats.files_read += 1;
            for b in self.table.read_file(&f.path, Some(f.size), &f.partition_values).await? {
                let col = b
                    .column_by_name("event_id")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| Error::internal("dedup index lacks event_id"))?;
                for j in 0..col.len() {
                    let id = col.value(j);
                    if let Some(w) = wanted.get(id) {
                        found.insert(w);
                    }
                    if cacheable {
                        bytes += id.len() + 40;
                        keys.insert(id.into());
                    }
                }
            }
        }
        if cacheable {
            while self.cache_bytes + bytes > self.cache_budget {
                let Some((&oldest, _)) = self.cache.iter().min_by_key(|(_, c)| c.used) else { break };
                if let Some(c) = self.cache.remove(&oldest) {
                    self.cache_bytes -= c.bytes;
                }
            }
            self.cache.insert(bucket, Cached { keys: Arc::new(keys), bytes, used: self.tick });
            self.cache_bytes += bytes;
        }
        Ok(rows.iter().copied().filter(|i| found.contains(ids[*i])).collect())
    }

    /// Records the keys silver committed at `silver_version` (exactly once via txn).
    pub async fn append(&mut self, keys: &[(String, i64)], silver_version: i64) -> Result<()> {
        let mut by_bucket: BTreeMap<u32, Vec<&(String, i64)>> = BTreeMap::new();
        for k in keys {
            by_bucket.entry(bucket_of(&k.0, self.buckets)).or_default().push(k);
        }
        let mut batches = Vec::new();
        for (b, ks) in &by_bucket {
            batches.push(index_batch(ks.iter().map(|k| (k.0.as_str(), k.1)), *b)?);
        }
        // Fenced like every commit: a zombie silver whose index position moved gets a conflict.
        let moves = vec![PositionMove { app_id: self.app_id.clone(), from: self.pos, to: silver_version }];
        self.table.commit_batch(Commit::new(&batches, moves, HashMap::new(), -1), &self.writer).await?;
        self.pos = silver_version;
        for (b, ks) in by_bucket {
            for (id, t) in ks {
                self.bloom.insert(id, *t);
                self.max_event_time_us = Some(self.max_event_time_us.map_or(*t, |m| m.max(*t)));
                if let Some(c) = self.cache.get_mut(&b) {
                    let set = Arc::make_mut(&mut c.keys);
                    if set.insert(id.clone().into_boxed_str()) {
                        c.bytes += id.len() + 40;
                        self.cache_bytes += id.len() + 40;
                    }
                }
            }
        }
        self.stats.keys_indexed += keys.len() as u64;
        self.maintain().await
    }

    /// Drops files whose keys have all expired and merges the small files of a bucket once it
    /// has `compact_min_files` of them (leaving expired keys out). Not a data change of silver:
    /// the index content stays equal to silver's keys within the horizon.
    async fn maintain(&mut self) -> Result<()> {
        let floor = self.floor_us();
        let files = self.table.files()?;
        let mut expired: HashSet<String> = HashSet::new();
        let mut per_bucket: BTreeMap<String, Vec<&FileRef>> = BTreeMap::new();
        for f in &files {
            let max_ms = f.stats.as_deref().and_then(|s| tributary_delta::max_time_from_stats(s, "event_time"));
            // Statistics are ms-truncated: the true max is below max_ms + 1 ms.
            if let (Some(fl), Some(ms)) = (floor, max_ms)
                && (ms + 1) * 1000 <= fl
            {
                expired.insert(f.path.clone());
                continue;
            }
            if let Some(Some(b)) = f.partition_values.get("bucket") {
                per_bucket.entry(b.clone()).or_default().push(f);
            }
        }
        // Tiered: only files below MERGE_BYTES are merged (a merged file that reaches it is left
        // alone until it expires), and each bucket's merge is written before the next is read,
        // so a merge holds at most `compact_min_files` small files in memory.
        const MERGE_BYTES: i64 = 4 * 1024 * 1024;
        let mut adds = Vec::new();
        let mut removed = expired.clone();
        for (b, fs) in per_bucket {
            let small: Vec<&&FileRef> = fs.iter().filter(|f| f.size < MERGE_BYTES).collect();
            if small.len() < self.compact_min_files {
                continue;
            }
            let bucket: u32 = b.parse().map_err(|_| Error::internal(format!("bad dedup bucket {b:?}")))?;
            let mut keys: Vec<(String, i64)> = Vec::new();
            for f in small {
                for batch in self.table.read_file(&f.path, Some(f.size), &f.partition_values).await? {
                    keys.extend(keys_of(&batch)?.into_iter().filter(|(_, t)| floor.is_none_or(|fl| *t >= fl)));
                }
                removed.insert(f.path.clone());
            }
            keys.sort();
            adds.extend(
                self.table.write_files(&[index_batch(keys.iter().map(|k| (k.0.as_str(), k.1)), bucket)?]).await?,
            );
            self.stats.merges += 1;
        }
        if removed.is_empty() {
            return Ok(());
        }
        self.stats.files_expired += expired.len() as u64;
        let mut actions = self.table.remove_actions(&removed)?;
        actions.extend(adds.into_iter().map(Action::Add));
        self.table.commit(actions, vec![], HashMap::new(), 0).await?;
        Ok(())
    }
}

fn index_batch<'a>(keys: impl Iterator<Item = (&'a str, i64)>, bucket: u32) -> Result<RecordBatch> {
    let (ids, times): (Vec<&str>, Vec<i64>) = keys.unzip();
    let n = ids.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
        Arc::new(StringArray::from(vec![bucket_name(bucket); n])),
    ];
    RecordBatch::try_new(index_schema(), cols).map_err(|e| Error::internal("dedup index batch").with_source(e))
}

/// (event_id, event_time) of every row of a silver or index batch.
pub fn keys_of(b: &RecordBatch) -> Result<Vec<(String, i64)>> {
    let ids = b
        .column_by_name("event_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::internal("batch lacks a string event_id column"))?;
    let times = b
        .column_by_name("event_time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| Error::internal("batch lacks a timestamp event_time column"))?;
    Ok((0..b.num_rows()).filter(|i| ids.is_valid(*i)).map(|i| (ids.value(i).to_string(), times.value(i))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Writer {
        Writer::new("silver", "t", &tributary_core::Config::default())
    }

    /// A 2-day horizon, 4 buckets, 1 MiB of Bloom, no cache, merges at 3 files.
    fn small_config() -> DedupConfig {
        DedupConfig {
            horizon_days: 2,
            buckets: 4,
            bloom_mb: 1,
            cache_mb: 0,
            compact_min_files: 3,
            ..Default::default()
        }
    }

    #[test]
    fn the_sliced_bloom_forgets_with_the_horizon_and_never_misses_a_key_within_it() {
        let horizon = 8 * DAY_US;
        let mut s = SlicedBloom::new(64 * 1024, horizon, 4);
        let mut plain = Bloom::new(s.capacity_bytes());
        // 200 days of keys, out of order within each day, 2 000 a day (25 horizons).
        let n = 400_000u64;
        let time = |i: u64| (i / 2000) as i64 * DAY_US + ((i * 7919) % 2000) as i64 * (DAY_US / 2000);
        for i in 0..n {
            s.insert(&format!("k{i}"), time(i));
            plain.insert(&format!("k{i}"));
            s.expire(time(i) - horizon);
            assert!(s.live_slices() <= 5, "memory stays bounded");
        }
        let max = time(n - 1);
        s.expire(max - horizon);
        for i in 0..n {
            if time(i) >= max - horizon {
                assert!(s.may_contain(&format!("k{i}")), "key {i} within the horizon is missing");
            }
        }
        let fp = |f: &dyn Fn(&str) -> bool| (0..20_000).filter(|i| f(&format!("x{i}"))).count() as f64 / 20_000.0;
        let (fs, fp_plain) = (fp(&|k| s.may_contain(k)), fp(&|k| plain.may_contain(k)));
        assert!(fs < 0.01, "sliced: {fs}");
        assert!(fp_plain > 0.5, "a filter that never forgets saturates: {fp_plain}");
        // Keys older than every slice, when all slices are in use, still land (in the oldest).
        let mut t = SlicedBloom::new(4096, horizon, 2);
        for d in [10, 12, 14, 16] {
            t.insert(&format!("d{d}"), d * DAY_US);
        }
        t.insert("old", DAY_US);
        assert!(t.live_slices() <= 3);
        for k in ["d10", "d12", "d14", "d16", "old"] {
            assert!(t.may_contain(k), "{k}");
        }
    }

    #[test]
    fn bloom_has_no_false_negatives_and_a_low_fp_rate() {
        let mut b = Bloom::new(1 << 20);
        for i in 0..100_000 {
            b.insert(&format!("k-{i}"));
        }
        assert!((0..100_000).all(|i| b.may_contain(&format!("k-{i}"))));
        let fp = (0..100_000).filter(|i| b.may_contain(&format!("other-{i}"))).count();
        assert!(fp < 100, "{fp} false positives of 100k at {:.5} expected", b.fpr());
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket_of("us-east-1-job-part-00000001", 16), bucket_of("us-east-1-job-part-00000001", 16));
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[bucket_of(&format!("e-{i}"), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[tokio::test]
    async fn index_is_exact_bounded_and_expires() {
        let dir = std::env::temp_dir().join(format!("trib-dedup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = small_config();
        let loc = dir.join("idx").to_string_lossy().to_string();
        let mut idx = DedupIndex::open(&cfg, "idx", &loc, "t/dedup", writer()).await.unwrap();
        for day in 0..5i64 {
            let keys: Vec<(String, i64)> = (0..500).map(|i| (format!("d{day}-{i}"), day * DAY_US + i)).collect();
            idx.append(&keys, day).await.unwrap();
        }
        // The same id twice in one lookup: both answers are exact.
        assert_eq!(idx.contains(&["d3-7", "d3-7", "x", "x"]).await.unwrap(), vec![true, true, false, false]);
        let probe = ["d4-1", "d3-499", "d4-500", "nope", "d2-499"];
        let got = idx.contains(&probe).await.unwrap();
        assert_eq!(got, vec![true, true, false, false, true]);
        // d2-0 is 499 µs older than the horizon's start: expired (merged out or its file dropped).
        assert_eq!(idx.floor_us(), Some(4 * DAY_US + 499 - 2 * DAY_US));
        // Days 0 and 1 expired entirely: their files are gone; day 2 only partly.
        let remaining = idx.table.read_all().await.unwrap();
        let kept: usize = remaining.iter().map(|b| b.num_rows()).sum();
        assert!((1001..=1500).contains(&kept), "{kept}");
        assert_eq!(idx.contains(&["d0-1", "d1-499", "d2-0"]).await.unwrap(), vec![false, false, false]);
        // Re-opened: same answers from the table alone (the "silver" here is an empty table
        // behind the index, so nothing needs catching up).
        let mut again = DedupIndex::open(&cfg, "idx", &loc, "t/dedup", writer()).await.unwrap();
        assert_eq!(again.pos, 4);
        let behind = dir.join("behind").to_string_lossy().to_string();
        let silver = Table::open_or_create("behind", &behind, index_schema(), &["bucket"]).await.unwrap();
        again.recover(&silver).await.unwrap();
        assert_eq!(again.max_event_time_us, Some(4 * DAY_US + 499));
        assert_eq!(again.contains(&probe).await.unwrap(), vec![true, true, false, false, true]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue #14 item 6: raising the horizon and replaying must not admit an expired key again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raising_the_horizon_rebuilds_the_index_from_silver() {
        let dir = tempfile::tempdir().unwrap();
        let loc = |n: &str| dir.path().join(n).to_string_lossy().to_string();
        // "Silver": five days of keys (the index schema has the two columns the index reads).
        let mut silver = Table::open_or_create("silver", &loc("silver"), index_schema(), &["bucket"]).await.unwrap();
        let short = small_config();
        let mut idx = DedupIndex::open(&short, "idx", &loc("idx"), "t/dedup", writer()).await.unwrap();
        // Silver advances a day at a time and the index follows (expiring whole old files).
        for day in 0..5i64 {
            let keys: Vec<(String, i64)> = (0..300).map(|i| (format!("d{day}-{i}"), day * DAY_US + i)).collect();
            let b = index_batch(keys.iter().map(|k| (k.0.as_str(), k.1)), 0).unwrap();
            silver.commit_batch(Commit::new(&[b], vec![], HashMap::new(), -1), &writer()).await.unwrap();
            idx.recover(&silver).await.unwrap();
        }
        assert_eq!(idx.pos, silver.version());
        assert_eq!(idx.contains(&["d0-1", "d4-1"]).await.unwrap(), vec![false, true], "day 0 expired");
        // The operator raises the horizon to 30 days to re-admit a replay: the index is rebuilt
        // from silver, so day 0's keys are known again (a replayed d0-1 is a duplicate).
        let long = DedupConfig { horizon_days: 30, ..short.clone() };
        let mut idx = DedupIndex::open(&long, "idx", &loc("idx"), "t/dedup", writer()).await.unwrap();
        idx.recover(&silver).await.unwrap();
        assert_eq!(idx.contains(&["d0-1", "d2-299", "d4-1", "new"]).await.unwrap(), vec![true, true, true, false]);
        let n: usize = idx.table.read_all().await.unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 1500, "every silver key exactly once");
        assert_eq!(idx.table.properties().unwrap()[HORIZON_PROPERTY], (30 * DAY_US).to_string());
        // Opened again with the same horizon: nothing is rebuilt.
        let v = idx.table.version();
        let mut idx = DedupIndex::open(&long, "idx", &loc("idx"), "t/dedup", writer()).await.unwrap();
        idx.recover(&silver).await.unwrap();
        assert_eq!(idx.table.version(), v);
        assert_eq!(idx.pos, silver.version());
    }
}

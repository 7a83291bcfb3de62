//! DR takeover: which rows central already holds for a region, in bounded memory.
//!
//! After a switch the serving side federates its own silver from its first version and must not
//! append a row the other side already put into `central/events` (both sides hold the same
//! events). The ids of the region's central rows at the switch go into a Bloom filter of fixed
//! size (`dr.overlap_filter_mb`); a row the filter does not hold is new with no I/O, and every
//! "maybe" is checked exactly against the event_ids of its `(region, event_date)` partition of
//! central, loaded once and kept in a small LRU (`dr.overlap_cache_dates`). More ids only raise
//! the false-positive rate (more partition reads), never memory and never a wrong answer.
//! A partition set may be older than this side's own later writes: harmless, since this side
//! never reads a silver version twice and silver's ids are unique.

use deltalake::arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use tributary_core::{Error, Result};
use tributary_delta::Table;

const HASHES: u64 = 7;

struct Bloom {
    bits: Vec<u64>,
    m: u64,
}

impl Bloom {
    fn new(bytes: usize) -> Self {
        let words = (bytes / 8).max(1);
        Self { bits: vec![0; words], m: words as u64 * 64 }
    }
    fn hashes(id: &str) -> (u64, u64) {
        let mut a = std::hash::DefaultHasher::new();
        id.hash(&mut a);
        let mut b = std::hash::DefaultHasher::new();
        (0x9e37_79b9_7f4a_7c15u64, id).hash(&mut b);
        (a.finish(), b.finish() | 1)
    }
    fn insert(&mut self, id: &str) {
        let (h1, h2) = Self::hashes(id);
        for i in 0..HASHES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % self.m;
            self.bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }
    fn maybe(&self, id: &str) -> bool {
        let (h1, h2) = Self::hashes(id);
        (0..HASHES).all(|i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % self.m;
            self.bits[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        })
    }
}

/// What the overlap check did so far (logged; tests read it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Ids central held for the region when the filter was built.
    pub held: u64,
    /// Rows the filter said "maybe" for.
    pub maybe: u64,
    /// Of those, rows central holds (left out).
    pub dropped: u64,
    /// Partition id sets read from central.
    pub partition_loads: u64,
}

pub struct Overlap {
    region: String,
    bloom: Bloom,
    /// Most recently used last: (event_date, the partition's event_ids).
    cache: VecDeque<(String, HashSet<String>)>,
    max_dates: usize,
    pub stats: Stats,
}

fn utf8(b: &RecordBatch, name: &str) -> Result<StringArray> {
    let c = b.column_by_name(name).ok_or_else(|| Error::internal(format!("central rows without {name}")))?;
    let c = deltalake::arrow::compute::cast(c, &deltalake::arrow::datatypes::DataType::Utf8)
        .map_err(|e| Error::internal(format!("{name} column")).with_source(e))?;
    c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| Error::internal(format!("{name} column")))
}

impl Overlap {
    /// Streams the region's central event_ids into the filter (one file at a time). None when
    /// central holds no row of the region.
    pub async fn build(events: &Table, region: &str, filter_bytes: usize, max_dates: usize) -> Result<Option<Self>> {
        let files: Vec<_> = events
            .files()?
            .into_iter()
            .filter(|f| f.partition_values.get("region").and_then(|x| x.as_deref()) == Some(region))
            .collect();
        let mut me = Self {
            region: region.to_string(),
            bloom: Bloom::new(filter_bytes),
            cache: VecDeque::new(),
            max_dates: max_dates.max(1),
            stats: Stats::default(),
        };
        for f in files {
            for b in events.read_columns_of(vec![f], &["event_id"]).await? {
                let ids = utf8(&b, "event_id")?;
                for i in 0..ids.len() {
                    if ids.is_valid(i) {
                        me.bloom.insert(ids.value(i));
                        me.stats.held += 1;
                    }
                }
            }
        }
        Ok((me.stats.held > 0).then_some(me))
    }

    async fn load(&mut self, events: &Table, date: &str) -> Result<()> {
        if let Some(i) = self.cache.iter().position(|(d, _)| d == date) {
            let e = self.cache.remove(i).expect("position is in range");
            self.cache.push_back(e);
            return Ok(());
        }
        let files: Vec<_> = events
            .files()?
            .into_iter()
            .filter(|f| {
                f.partition_values.get("region").and_then(|x| x.as_deref()) == Some(self.region.as_str())
                    && f.partition_values.get("event_date").and_then(|x| x.as_deref()) == Some(date)
            })
            .collect();
        let mut set = HashSet::new();
        for b in events.read_columns_of(files, &["event_id"]).await? {
            let ids = utf8(&b, "event_id")?;
            set.extend((0..ids.len()).filter(|i| ids.is_valid(*i)).map(|i| ids.value(i).to_string()));
        }
        self.stats.partition_loads += 1;
        self.cache.push_back((date.to_string(), set));
        Ok(())
    }

    fn holds(&self, date: &str, id: &str) -> bool {
        self.cache.iter().any(|(d, s)| d == date && s.contains(id))
    }

    /// `batches` (central rows of this region) without the rows central already holds.
    pub async fn drop_held(&mut self, events: &Table, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(batches.len());
        for b in batches {
            let (ids, dates) = (utf8(&b, "event_id")?, utf8(&b, "event_date")?);
            let maybe: Vec<bool> = (0..ids.len())
                .map(|i| ids.is_valid(i) && dates.is_valid(i) && self.bloom.maybe(ids.value(i)))
                .collect();
            let mut need: Vec<&str> = (0..ids.len()).filter(|i| maybe[*i]).map(|i| dates.value(i)).collect();
            need.sort_unstable();
            need.dedup();
            let mut keep = Vec::with_capacity(ids.len());
            // One date at a time, so at most one partition beyond the cache is in memory.
            let mut dropped_here = vec![false; ids.len()];
            for d in need {
                self.load(events, d).await?;
                for i in 0..ids.len() {
                    if maybe[i] && dates.value(i) == d && self.holds(d, ids.value(i)) {
                        dropped_here[i] = true;
                    }
                }
                while self.cache.len() > self.max_dates {
                    self.cache.pop_front();
                }
            }
            for i in 0..ids.len() {
                self.stats.maybe += maybe[i] as u64;
                self.stats.dropped += dropped_here[i] as u64;
                keep.push(Some(!dropped_here[i]));
            }
            let b = deltalake::arrow::compute::filter_record_batch(&b, &BooleanArray::from(keep))
                .map_err(|e| Error::internal("dropping rows central holds").with_source(e))?;
            if b.num_rows() > 0 {
                out.push(b);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_never_misses_an_inserted_id_and_a_tiny_one_says_maybe_to_everything() {
        let mut b = Bloom::new(1 << 16);
        for i in 0..5_000 {
            b.insert(&format!("evt-{i}"));
        }
        assert!((0..5_000).all(|i| b.maybe(&format!("evt-{i}"))));
        let fp = (5_000..105_000).filter(|i| b.maybe(&format!("evt-{i}"))).count();
        assert!(fp < 1_000, "false positives {fp} of 100000 at ~105 bits per id");
        let mut tiny = Bloom::new(8);
        for i in 0..1_000 {
            tiny.insert(&format!("evt-{i}"));
        }
        assert!((1_000..1_100).all(|i| tiny.maybe(&format!("evt-{i}"))), "64 bits, 1000 ids: all maybe");
    }

    /// Central rows of regions r1/r2 on two dates; a takeover batch of r1 with held and new ids
    /// over both dates: exactly the new ones are kept, with a filter of normal size and with one
    /// so small that every id is a "maybe" (only the exact check decides) and one cached date.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_the_rows_central_holds_are_left_out_whatever_the_filter_size() {
        use deltalake::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, false),
            Field::new("event_date", DataType::Utf8, false),
        ]));
        let batch = |rows: &[(&str, &str, &str)]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                ],
            )
            .unwrap()
        };
        let loc = dir.path().join("events").display().to_string();
        let mut t =
            Table::open_or_create("central/events", &loc, schema.clone(), &["region", "event_date"]).await.unwrap();
        let w = tributary_delta::Writer { stage: "t".into(), region: "r1".into(), threads: 1, attempts: 5 };
        let mut held = Vec::new();
        for i in 0..300 {
            let d = if i % 2 == 0 { "2025-10-31" } else { "2025-11-01" };
            held.push((format!("h{i}"), "r1", d));
        }
        let rows: Vec<(&str, &str, &str)> = held.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
        // r2 holds "n1" too: another region's row must not hide r1's.
        let other = [("n1", "r2", "2025-10-31")];
        for b in [batch(&rows[..150]), batch(&rows[150..]), batch(&other)] {
            t.commit_batch(tributary_delta::Commit::new(&[b], vec![], Default::default(), -1), &w).await.unwrap();
        }
        let mut incoming: Vec<(String, &str, &str)> = Vec::new();
        for i in (0..300).step_by(3) {
            incoming.push((format!("h{i}"), "r1", if i % 2 == 0 { "2025-10-31" } else { "2025-11-01" }));
        }
        for i in 0..200 {
            incoming.push((format!("n{i}"), "r1", if i % 2 == 0 { "2025-10-31" } else { "2025-11-01" }));
        }
        let incoming: Vec<(&str, &str, &str)> = incoming.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
        for (bytes, dates) in [(1 << 20, 4), (8, 1)] {
            let mut o = Overlap::build(&t, "r1", bytes, dates).await.unwrap().unwrap();
            assert_eq!(o.stats.held, 300);
            let out = o.drop_held(&t, vec![batch(&incoming[..150]), batch(&incoming[150..])]).await.unwrap();
            let mut kept: Vec<String> = out
                .iter()
                .flat_map(|b| {
                    let c = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                    (0..c.len()).map(|i| c.value(i).to_string()).collect::<Vec<_>>()
                })
                .collect();
            kept.sort();
            let mut want: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
            want.sort();
            assert_eq!(kept, want, "filter {bytes} bytes");
            assert_eq!(o.stats.dropped, 100);
            if bytes == 8 {
                assert_eq!(o.stats.maybe, 300, "a 64-bit filter says maybe to everything");
                assert!(o.stats.partition_loads >= 2);
            } else {
                assert!(o.stats.maybe < 110, "{:?}", o.stats);
            }
        }
        // A region central holds nothing of: no filter at all.
        assert!(Overlap::build(&t, "r9", 1024, 1).await.unwrap().is_none());
    }
}

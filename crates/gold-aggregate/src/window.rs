//! Pure window logic: silver rows → additive deltas → gold rows.
//!
//! Watermarks are per source (the region is the process): `max event_time − allowed lateness`.
//! An event is *late* when its window had already ended at or before its source's watermark as
//! it stood when the event's landing file arrived: the max event_time of every file of that
//! source gold processed before, plus the files of the same batch that sort before it (landing
//! files arrive in name order). The unit is the landing file, not gold's batch, so which events
//! are late — and so every gold row — does not depend on how the input was batched: a primary
//! that streamed the files one by one and a secondary that processed them all at once write the
//! same rows. Rows without a landing file (Kafka) form one unit per batch.

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Decimal128Builder, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tributary_core::{Error, Result};

use tributary_events::contract::{DECIMAL_PRECISION, DECIMAL_SCALE};

pub use tributary_delta::catalog::{DAY_US, GoldKind, HOUR_US, MINUTE_US};

/// (window_start_us, a, b): counts → (source, workspace); billing → (customer, sku).
pub type Key = (i64, String, String);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    pub count: i64,
    /// Exact DBU at scale 9 (billing only).
    pub dbu: i128,
    /// Of `count`: events that arrived after their window was final.
    pub late: i64,
}

impl Agg {
    fn add(&mut self, o: &Agg) {
        self.count += o.count;
        self.dbu += o.dbu;
        self.late += o.late;
    }
}

/// One batch's contribution: per window key, on time and late, and the max event_time per source.
pub struct WindowState {
    kind: GoldKind,
    region: String,
    pub on_time: BTreeMap<Key, Agg>,
    /// Late events per window key and landing file (billing writes one adjustment row per file:
    /// the same rows however the files were batched).
    pub late: BTreeMap<(Key, String), Agg>,
    /// The watermark each landing file's events were judged against.
    pub file_watermarks: BTreeMap<String, Option<i64>>,
    pub max_event_time: BTreeMap<String, i64>,
}

/// Gold's unit of arrival: a row's landing file ("" for rows without one: Kafka).
const NO_FILE: &str = "";

/// The columns gold reads from silver: its input tables decode only these.
pub fn columns(kind: GoldKind) -> &'static [&'static str] {
    if kind.is_billing() {
        &["event_time", "_source_file", "customer_id", "sku", "dbu"]
    } else {
        &["event_time", "_source_file", "workspace_id"]
    }
}

/// A silver batch with just the columns gold uses, in `columns` order.
pub fn project(kind: GoldKind, b: &RecordBatch) -> Result<RecordBatch> {
    let idx = columns(kind)
        .iter()
        .map(|n| b.schema().index_of(n).map_err(|e| Error::internal(format!("silver batch lacks {n}")).with_source(e)))
        .collect::<Result<Vec<_>>>()?;
    b.project(&idx).map_err(|e| Error::internal("projecting a silver batch").with_source(e))
}

/// Per landing file of one source's batches: the watermark its events are judged against —
/// `prior_max` (max event_time of everything processed before) raised by the files of these
/// batches that sort before it, minus `lateness_us`.
pub fn file_watermarks(
    batches: &[RecordBatch],
    prior_max: Option<i64>,
    lateness_us: i64,
) -> Result<BTreeMap<String, Option<i64>>> {
    let mut max_per_file: BTreeMap<String, i64> = BTreeMap::new();
    for b in batches {
        let times: &TimestampMicrosecondArray = col(b, "event_time")?;
        let files: &StringArray = col(b, "_source_file")?;
        for i in 0..b.num_rows() {
            let f = if files.is_valid(i) { files.value(i) } else { NO_FILE };
            let t = times.value(i);
            match max_per_file.get_mut(f) {
                Some(m) => *m = (*m).max(t),
                None => {
                    max_per_file.insert(f.to_string(), t);
                }
            }
        }
    }
    let mut running = prior_max;
    let mut out = BTreeMap::new();
    // BTreeMap order = name order; "" (no file) sorts first and is judged by `prior_max`.
    for (f, m) in max_per_file {
        out.insert(f, running.map(|r| r - lateness_us));
        running = Some(running.map_or(m, |r| r.max(m)));
    }
    Ok(out)
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::internal(format!("batch lacks column {name} of the expected type")))
}

impl WindowState {
    pub fn new(kind: GoldKind, region: &str) -> Self {
        Self {
            kind,
            region: region.into(),
            on_time: BTreeMap::new(),
            late: BTreeMap::new(),
            file_watermarks: BTreeMap::new(),
            max_event_time: BTreeMap::new(),
        }
    }

    /// Adds a silver batch of `source`; `watermarks`: per landing file (`file_watermarks` over
    /// all of this run's batches of the source). Returns rows consumed.
    pub fn add_silver(
        &mut self,
        source: &str,
        b: &RecordBatch,
        watermarks: &BTreeMap<String, Option<i64>>,
    ) -> Result<u64> {
        let times: &TimestampMicrosecondArray = col(b, "event_time")?;
        let files: &StringArray = col(b, "_source_file")?;
        let w = self.kind.window_us();
        let (a, c): (Option<&StringArray>, &StringArray) = if self.kind.is_billing() {
            (Some(col(b, "customer_id")?), col(b, "sku")?)
        } else {
            (None, col(b, "workspace_id")?)
        };
        let dbu: Option<&Decimal128Array> = if self.kind.is_billing() { Some(col(b, "dbu")?) } else { None };
        if b.num_rows() == 0 {
            return Ok(0);
        }
        if let Some(t) = deltalake::arrow::compute::max(times) {
            let m = self.max_event_time.entry(source.to_string()).or_insert(t);
            *m = (*m).max(t);
        }
        // Group the batch with borrowed keys first (no allocation per row), then fold each group
        // into the running state (two strings per group).
        fn name(a: &StringArray, i: usize) -> &str {
            if a.is_valid(i) { a.value(i) } else { "unknown" }
        }
        // Late rows are grouped by file too; on-time ones under NO_FILE.
        let mut groups: std::collections::HashMap<(i64, &str, &str, &str), Agg> = std::collections::HashMap::new();
        let (mut file, mut watermark): (Option<&str>, Option<i64>) = (None, None);
        for i in 0..b.num_rows() {
            let f = if files.is_valid(i) { files.value(i) } else { NO_FILE };
            if file != Some(f) {
                file = Some(f);
                watermark = *watermarks.get(f).ok_or_else(|| {
                    Error::internal(format!("no watermark computed for landing file {f:?} of {source}"))
                })?;
            }
            let t = times.value(i);
            let start = t.div_euclid(w) * w;
            let late = watermark.is_some_and(|wm| start + w <= wm);
            let e = groups
                .entry((start, a.map_or(source, |a| name(a, i)), name(c, i), if late { f } else { NO_FILE }))
                .or_default();
            e.count += 1;
            e.late += late as i64;
            if let Some(d) = dbu {
                e.dbu += d.value(i);
            }
        }
        for ((start, k1, k2, f), g) in groups {
            let key = (start, k1.to_string(), k2.to_string());
            let e = if g.late > 0 {
                self.file_watermarks.insert(f.to_string(), watermarks.get(f).copied().flatten());
                self.late.entry((key, f.to_string())).or_default()
            } else {
                self.on_time.entry(key).or_default()
            };
            e.count += g.count;
            e.late += g.late;
            e.dbu += g.dbu;
        }
        Ok(b.num_rows() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.on_time.is_empty() && self.late.is_empty()
    }

    pub fn late_events(&self) -> i64 {
        self.late.values().map(|a| a.late).sum()
    }

    /// Partitions (`event_date` of the window start) touched by the deltas.
    pub fn dates(&self) -> BTreeSet<String> {
        self.on_time
            .keys()
            .chain(self.late.keys().map(|(k, _)| k))
            .map(|k| tributary_events::date_of_micros(k.0))
            .collect()
    }

    /// Event counts: the new content of `dates` from their current rows and the deltas (late
    /// ones included: monitoring favours availability). `watermarks`: per source after the batch.
    pub fn merge_counts(
        &self,
        current: &[RecordBatch],
        dates: &BTreeSet<String>,
        watermarks: &BTreeMap<String, i64>,
        sources: &[String],
        now_us: i64,
    ) -> Result<Vec<RecordBatch>> {
        // Monitoring: late deltas update their windows too.
        let all = self.merged(current, self.on_time.iter().chain(self.late.iter().map(|((k, _), a)| (k, a))), dates)?;
        let w = self.kind.window_us();
        let rows: Vec<Row> = all
            .into_iter()
            .map(|(k, a)| {
                let end = k.0 + w;
                let wm = watermarks.get(&k.1).copied();
                let reported = sources.iter().filter(|s| watermarks.get(*s).is_some_and(|x| *x >= end)).count();
                Row {
                    is_final: wm.is_some_and(|x| end <= x),
                    watermark: wm,
                    key: k,
                    agg: a,
                    record_type: "window",
                    reason: None,
                    reported: reported as i32,
                    completeness: if sources.is_empty() { 0.0 } else { reported as f64 / sources.len() as f64 },
                }
            })
            .collect();
        self.build(&rows, now_us).map(|b| b.into_iter().collect())
    }

    /// Billing: `provisional` are the current non-final rows of the touched partitions. Returns
    /// (rows that become final now: windows the watermark passed and adjustment rows for late
    /// events — written as new files and never rewritten; the provisional rows left).
    pub fn merge_billing(
        &self,
        provisional: &[RecordBatch],
        dates: &BTreeSet<String>,
        watermark: Option<i64>,
        now_us: i64,
    ) -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
        // Billing: late deltas become adjustment rows below, never part of a window row.
        let all = self.merged(provisional, self.on_time.iter(), dates)?;
        let w = self.kind.window_us();
        let mut finals = Vec::new();
        let mut rest = Vec::new();
        for (k, a) in all {
            let fin = watermark.is_some_and(|wm| k.0 + w <= wm);
            let row = Row {
                key: k,
                agg: a,
                is_final: fin,
                watermark,
                record_type: "window",
                reason: None,
                reported: 0,
                completeness: 0.0,
            };
            if fin { finals.push(row) } else { rest.push(row) }
        }
        for ((k, file), a) in &self.late {
            let wm = self.file_watermarks.get(file).copied().flatten().unwrap_or_default();
            let arrived = if file.is_empty() { "arrived".to_string() } else { format!("arrived in {file}") };
            finals.push(Row {
                key: k.clone(),
                agg: *a,
                is_final: true,
                watermark,
                record_type: "adjustment",
                reason: Some(format!(
                    "late_event: {} event(s) with event_time in [{}, {}) {arrived} after the window was final \
                     (billing watermark {} >= window end)",
                    a.count,
                    rfc3339(k.0),
                    rfc3339(k.0 + w),
                    rfc3339(wm)
                )),
                reported: 0,
                completeness: 0.0,
            });
        }
        Ok((self.build(&finals, now_us)?, self.build(&rest, now_us)?))
    }

    /// The aggregates of `current` gold rows plus `deltas`, restricted to `dates`.
    fn merged<'a>(
        &self,
        current: &[RecordBatch],
        deltas: impl Iterator<Item = (&'a Key, &'a Agg)>,
        dates: &BTreeSet<String>,
    ) -> Result<BTreeMap<Key, Agg>> {
        let billing = self.kind.is_billing();
        let mut all: BTreeMap<Key, Agg> = BTreeMap::new();
        for b in current {
            let starts: &TimestampMicrosecondArray = col(b, "window_start")?;
            let counts: &Int64Array = col(b, "event_count")?;
            let (a, c): (&StringArray, &StringArray) = if billing {
                (col(b, "customer_id")?, col(b, "sku")?)
            } else {
                (col(b, "source")?, col(b, "workspace_id")?)
            };
            let dbu: Option<&Decimal128Array> = if billing { Some(col(b, "dbu")?) } else { None };
            let late: Option<&Int64Array> = if billing { None } else { Some(col(b, "late_events")?) };
            for i in 0..b.num_rows() {
                all.entry((starts.value(i), a.value(i).to_string(), c.value(i).to_string())).or_default().add(&Agg {
                    count: counts.value(i),
                    dbu: dbu.map_or(0, |d| d.value(i)),
                    late: late.map_or(0, |l| l.value(i)),
                });
            }
        }
        for (k, d) in deltas {
            all.entry(k.clone()).or_default().add(d);
        }
        all.retain(|k, _| dates.contains(&tributary_events::date_of_micros(k.0)));
        Ok(all)
    }

    fn build(&self, rows: &[Row], now_us: i64) -> Result<Option<RecordBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let w = self.kind.window_us();
        let n = rows.len();
        let ts = |vals: Vec<Option<i64>>| -> ArrayRef {
            let mut b = TimestampMicrosecondBuilder::with_capacity(vals.len()).with_timezone("UTC");
            for v in vals {
                b.append_option(v);
            }
            Arc::new(b.finish())
        };
        let strs = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let mut cols: Vec<ArrayRef> = vec![
            ts(rows.iter().map(|r| Some(r.key.0)).collect()),
            ts(rows.iter().map(|r| Some(r.key.0 + w)).collect()),
            Arc::new(StringArray::from(vec![self.region.clone(); n])),
            strs(&|r| r.key.1.clone()),
            strs(&|r| r.key.2.clone()),
        ];
        if self.kind.is_billing() {
            let mut b = Decimal128Builder::with_capacity(n)
                .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
                .map_err(|e| Error::internal("decimal type").with_source(e))?;
            for r in rows {
                b.append_value(r.agg.dbu);
            }
            cols.push(Arc::new(b.finish()));
            cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.agg.count))));
            cols.push(strs(&|r| r.record_type.to_string()));
            cols.push(Arc::new(StringArray::from(rows.iter().map(|r| r.reason.clone()).collect::<Vec<_>>())));
            cols.push(Arc::new(BooleanArray::from(rows.iter().map(|r| r.is_final).collect::<Vec<_>>())));
            cols.push(ts(rows.iter().map(|r| r.watermark).collect()));
        } else {
            cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.agg.count))));
            cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.agg.late))));
            cols.push(Arc::new(BooleanArray::from(rows.iter().map(|r| r.is_final).collect::<Vec<_>>())));
            cols.push(ts(rows.iter().map(|r| r.watermark).collect()));
            cols.push(Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.reported))));
            cols.push(Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.completeness))));
        }
        cols.push(ts(vec![Some(now_us); n]));
        cols.push(strs(&|r| tributary_events::date_of_micros(r.key.0)));
        RecordBatch::try_new(self.kind.schema(), cols)
            .map(Some)
            .map_err(|e| Error::internal(format!("building gold/{} batch", self.kind.table_name())).with_source(e))
    }
}

struct Row {
    key: Key,
    agg: Agg,
    is_final: bool,
    watermark: Option<i64>,
    record_type: &'static str,
    reason: Option<String>,
    reported: i32,
    completeness: f64,
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| us.to_string())
}

/// True when every row of the batches is final (a file of final rows is never rewritten).
pub fn all_final(batches: &[RecordBatch]) -> Result<bool> {
    for b in batches {
        let f: &BooleanArray = col(b, "is_final")?;
        if (0..f.len()).any(|i| !f.value(i)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// (customer, sku, window_start_us) -> (dbu at scale 9, events).
pub type BillingSums = BTreeMap<(String, String, i64), (i128, i64)>;

/// (customer, sku, window_start_us) -> (dbu at scale 9, events), from gold billing rows (window
/// and adjustment rows summed: the invoice).
pub fn billing_sums(batches: &[RecordBatch]) -> Result<BillingSums> {
    let mut out = BTreeMap::new();
    for b in batches {
        let s: &TimestampMicrosecondArray = col(b, "window_start")?;
        let c: &StringArray = col(b, "customer_id")?;
        let k: &StringArray = col(b, "sku")?;
        let d: &Decimal128Array = col(b, "dbu")?;
        let n: &Int64Array = col(b, "event_count")?;
        for i in 0..b.num_rows() {
            let e = out.entry((c.value(i).to_string(), k.value(i).to_string(), s.value(i))).or_insert((0i128, 0i64));
            e.0 += d.value(i);
            e.1 += n.value(i);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_delta::schemas;

    #[test]
    fn counts_finality_follows_the_source_watermark_and_completeness_the_others() {
        let mut s = WindowState::new(GoldKind::EventCounts, "r");
        s.on_time.insert((0, "job".into(), "w".into()), Agg { count: 2, dbu: 0, late: 0 });
        s.on_time.insert((MINUTE_US, "job".into(), "w".into()), Agg { count: 1, dbu: 0, late: 0 });
        let dates = s.dates();
        let wms = BTreeMap::from([("job".to_string(), MINUTE_US), ("audit".to_string(), 0)]);
        let sources = vec!["job".to_string(), "audit".to_string()];
        let out = s.merge_counts(&[], &dates, &wms, &sources, 0).unwrap();
        let f = out[0].column_by_name("is_final").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        assert!(f.value(0), "window [0,60s) ends at the job watermark: final");
        assert!(!f.value(1));
        let c = out[0].column_by_name("completeness").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((c.value(0), c.value(1)), (0.5, 0.0), "audit has not reached minute 1: half the sources");
        // Merging the output again as current doubles counts (additive), proving merge reads it.
        let again = s.merge_counts(&out, &dates, &wms, &sources, 0).unwrap();
        let n = again[0].column_by_name("event_count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.value(0), 4);
    }

    #[test]
    fn late_billing_becomes_an_adjustment_and_on_time_stays_provisional() {
        let schema = schemas::silver("billing");
        let _ = schema;
        let mut s = WindowState::new(GoldKind::Billing, "r");
        s.on_time.insert((2 * HOUR_US, "c".into(), "SKU".into()), Agg { count: 1, dbu: 5, late: 0 });
        s.late.insert(((0, "c".into(), "SKU".into()), "f2.ndjson".into()), Agg { count: 2, dbu: 7, late: 2 });
        s.file_watermarks.insert("f2.ndjson".into(), Some(2 * HOUR_US));
        let dates = s.dates();
        let (fin, prov) = s.merge_billing(&[], &dates, Some(2 * HOUR_US + 1), 0).unwrap();
        let fin = fin.unwrap();
        assert_eq!(fin.num_rows(), 1);
        let t = fin.column_by_name("record_type").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(t.value(0), "adjustment");
        let r = fin.column_by_name("reason").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert!(
            r.value(0).starts_with(
                "late_event: 2 event(s) with event_time in [1970-01-01T00:00:00Z, 1970-01-01T01:00:00Z) arrived in \
                 f2.ndjson after the window was final (billing watermark 1970-01-01T02:00:00Z"
            ),
            "{}",
            r.value(0)
        );
        assert_eq!(prov.unwrap().num_rows(), 1);
        assert_eq!(billing_sums(&[fin]).unwrap()[&("c".into(), "SKU".into(), 0)], (7, 2));
    }

    /// Silver-like billing rows: (event_time µs, landing file, dbu at scale 9).
    fn billing_batch(rows: &[(i64, &str, i128)]) -> RecordBatch {
        use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("_source_file", DataType::Utf8, true),
            Field::new("customer_id", DataType::Utf8, true),
            Field::new("sku", DataType::Utf8, true),
            Field::new("dbu", DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8), true),
        ]));
        let n = rows.len();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC")),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from(vec!["c"; n])),
                Arc::new(StringArray::from(vec!["SKU"; n])),
                Arc::new(
                    Decimal128Array::from_iter_values(rows.iter().map(|r| r.2))
                        .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
                        .unwrap(),
                ),
            ],
        )
        .unwrap()
    }

    /// Billing rows a gold run writes: (record_type, window_start, dbu, count, is_final, reason),
    /// sorted — the content a fingerprint sees.
    fn rows_of(batches: &[RecordBatch]) -> Vec<(String, i64, i128, i64, bool, String)> {
        let mut out = Vec::new();
        for b in batches {
            let t = b.column_by_name("record_type").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            let s =
                b.column_by_name("window_start").unwrap().as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
            let d = b.column_by_name("dbu").unwrap().as_any().downcast_ref::<Decimal128Array>().unwrap();
            let n = b.column_by_name("event_count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
            let f = b.column_by_name("is_final").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
            let r = b.column_by_name("reason").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                let reason = if r.is_valid(i) { r.value(i).to_string() } else { String::new() };
                out.push((t.value(i).to_string(), s.value(i), d.value(i), n.value(i), f.value(i), reason));
            }
        }
        out.sort();
        out
    }

    /// Three landing files; file 2 pushes the watermark past hour 0, file 3 brings an event of
    /// hour 0 (late) and one of hour 2. Processed as one batch or one file per batch (final rows
    /// kept, provisional ones carried to the next run like gold's partition rewrite), the rows
    /// are the same: lateness is judged per landing file, not per batch.
    #[test]
    fn lateness_is_judged_per_landing_file_so_batching_does_not_change_the_rows() {
        let lateness = 10 * MINUTE_US;
        let files = [
            billing_batch(&[(10 * MINUTE_US, "part-1", 1_000), (20 * MINUTE_US, "part-1", 2_000)]),
            billing_batch(&[(HOUR_US + 30 * MINUTE_US, "part-2", 4_000)]),
            billing_batch(&[(50 * MINUTE_US, "part-3", 8_000), (2 * HOUR_US + MINUTE_US, "part-3", 16_000)]),
        ];
        // Runs gold's billing merge over `groups` of files in turn; returns every row written
        // (final rows as written, plus the provisional rows left at the end).
        let run = |groups: &[&[RecordBatch]]| {
            let (mut kept, mut provisional, mut max) = (Vec::new(), Vec::new(), None::<i64>);
            for g in groups {
                let mut s = WindowState::new(GoldKind::Billing, "r");
                let wms = file_watermarks(g, max, lateness).unwrap();
                for b in *g {
                    s.add_silver("billing", b, &wms).unwrap();
                }
                max = s.max_event_time.get("billing").copied().max(max);
                let mut dates = s.dates();
                dates.insert(tributary_events::date_of_micros(0));
                let (fin, prov) = s.merge_billing(&provisional, &dates, max.map(|m| m - lateness), 0).unwrap();
                kept.extend(fin);
                provisional = prov.into_iter().collect();
            }
            kept.extend(provisional);
            rows_of(&kept)
        };
        let all_at_once = run(&[&files[..]]);
        let one_by_one = run(&[&files[0..1], &files[1..2], &files[2..3]]);
        assert_eq!(all_at_once, one_by_one);
        let adjustments: Vec<_> = all_at_once.iter().filter(|r| r.0 == "adjustment").collect();
        assert_eq!(adjustments.len(), 1, "{all_at_once:?}");
        assert_eq!((adjustments[0].1, adjustments[0].2, adjustments[0].3), (0, 8_000, 1));
        assert!(adjustments[0].5.contains("arrived in part-3"), "{}", adjustments[0].5);
        let hour0 = all_at_once.iter().find(|r| r.0 == "window" && r.1 == 0).unwrap();
        assert_eq!((hour0.2, hour0.3, hour0.4), (3_000, 2, true), "hour 0 final without the late event");
        // The same rows in one batch, judged per batch as before, would count nothing late:
        let wms = file_watermarks(&files[..], None, lateness).unwrap();
        assert_eq!(wms["part-1"], None);
        assert_eq!(wms["part-3"], Some(HOUR_US + 20 * MINUTE_US));
    }
}

//! Our own Parquet data-file writer: what `Table::write_files_parallel` uses instead of
//! deltalake's `RecordBatchWriter`.
//!
//! Why: profiled on the release binary, bronze's largest costs were the bytes it touches, not
//! its code — deltalake's writer encodes every file into an in-memory buffer that grows by
//! doubling (each growth a copy into freshly faulted pages) and then copies it again into
//! multipart parts before the store writes them. Here a local table's file is encoded straight
//! into the file (row groups flushed every `ROW_GROUP_BYTES`, so a writer holds at most that
//! much encoded data), and an object store's into one buffer uploaded with a single `put`.
//!
//! The `add` action is built like deltalake builds it — same path layout
//! (`<col>=<value>/part-00000-<uuid>-c000.snappy.parquet`), the same statistics in the same JSON
//! spelling (`numRecords`, `minValues`/`maxValues` for the columns whose Parquet statistics are
//! enabled, `nullCount`), the first `delta.dataSkippingNumIndexedCols` (default 32) columns —
//! computed from the Arrow arrays instead of read back from the Parquet footer. A unit test
//! writes the same batches both ways and compares the actions.
//!
//! Partition values outside `[A-Za-z0-9._-]` (or null) are left to deltalake's writer, which
//! knows their escaping: `split` returns `None` and the caller falls back.

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, RecordBatch, StringArray, UInt32Array,
};
use deltalake::arrow::compute;
use deltalake::arrow::datatypes::{
    DataType, Date32Type, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use deltalake::kernel::Add;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use tributary_core::{Error, Result};

/// Encoded bytes a writer holds before it flushes a row group to its sink.
const ROW_GROUP_BYTES: usize = 32 << 20;
/// Longest string whose min/max goes into the statistics (longer ones get none: a truncated max
/// would not be an upper bound).
const MAX_STAT_STRING: usize = 64;

/// Rows of one partition: its values (in partition-column order) and the rows without them.
pub(crate) type Part = (Vec<String>, RecordBatch);

/// Cuts `batch` by its partition columns into (values, rows without the partition columns).
/// For batches `plain_partitions` accepted; `None` when a partition column is not a string column
/// or holds a null (the caller falls back to deltalake's writer for the whole write).
pub(crate) fn split(batch: &RecordBatch, partition_columns: &[String]) -> Result<Option<Vec<Part>>> {
    let file_schema = without(batch.schema(), partition_columns);
    let data: Vec<ArrayRef> = file_schema
        .fields()
        .iter()
        .map(|f| batch.column_by_name(f.name()).cloned().expect("field of the batch"))
        .collect();
    let mut keys: Vec<&StringArray> = Vec::with_capacity(partition_columns.len());
    for p in partition_columns {
        let Some(col) = batch.column_by_name(p) else {
            return Err(Error::internal(format!("batch without its partition column {p}")));
        };
        let Some(s) = col.as_string_opt::<i32>() else {
            return Ok(None); // not a string partition column: deltalake formats it
        };
        // Values needing escaping were ruled out by `plain_partitions` before the write.
        if s.null_count() > 0 {
            return Ok(None);
        }
        keys.push(s);
    }
    let whole = |values: Vec<String>, cols: Vec<ArrayRef>| -> Result<Part> {
        Ok((values, RecordBatch::try_new(file_schema.clone(), cols).map_err(arrow_err)?))
    };
    let n = batch.num_rows();
    if n == 0 {
        return Ok(Some(vec![]));
    }
    // The common case: one value per partition column in the whole batch — no copy.
    if keys.iter().all(|k| (1..n).all(|i| k.value(i) == k.value(0))) {
        return Ok(Some(vec![whole(keys.iter().map(|k| k.value(0).to_string()).collect(), data)?]));
    }
    let mut groups: Vec<(Vec<&str>, Vec<u32>)> = Vec::new();
    let mut index: HashMap<Vec<&str>, usize> = HashMap::new();
    for i in 0..n {
        let key: Vec<&str> = keys.iter().map(|k| k.value(i)).collect();
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i as u32);
    }
    let mut out = Vec::with_capacity(groups.len());
    for (key, rows) in groups {
        let idx = UInt32Array::from(rows);
        let cols =
            data.iter().map(|c| compute::take(c.as_ref(), &idx, None)).collect::<std::result::Result<Vec<_>, _>>();
        out.push(whole(key.iter().map(|s| s.to_string()).collect(), cols.map_err(arrow_err)?)?);
    }
    Ok(Some(out))
}

/// The schema without the partition columns (what a data file holds).
pub(crate) fn without(schema: SchemaRef, partition_columns: &[String]) -> SchemaRef {
    let fields: Vec<Arc<Field>> =
        schema.fields().iter().filter(|f| !partition_columns.iter().any(|p| p == f.name())).cloned().collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A partition value that needs no escaping in a path (deltalake percent-encodes the rest).
fn safe(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn arrow_err(e: deltalake::arrow::error::ArrowError) -> Error {
    Error::internal("splitting a batch by partition").with_source(e)
}

/// Where a data file's bytes go: straight into the file (local tables) or one buffer uploaded
/// with a single `put` (object stores).
pub(crate) enum Sink {
    File(std::fs::File),
    Mem(Vec<u8>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Mem(v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(buf),
            Sink::Mem(v) => {
                v.extend_from_slice(buf);
                Ok(())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Mem(_) => Ok(()),
        }
    }
}

/// Whether every partition value of `batch` is one `split` can write (plain, non-null strings).
pub(crate) fn plain_partitions(batch: &RecordBatch, partition_columns: &[String]) -> bool {
    partition_columns.iter().all(|p| {
        batch.column_by_name(p).and_then(|c| c.as_string_opt::<i32>()).is_some_and(|s| {
            s.null_count() == 0 && {
                // Most batches hold one value: check each distinct run once.
                let mut last: Option<&str> = None;
                s.iter().flatten().all(|v| {
                    let ok = last == Some(v) || safe(v);
                    last = Some(v);
                    ok
                })
            }
        })
    })
}

/// One data file being written: its relative path, encoder and running statistics.
pub(crate) struct DataFile {
    pub path: String,
    partition_values: Vec<(String, String)>,
    writer: ArrowWriter<Sink>,
    stats: Vec<ColumnStats>,
    rows: i64,
}

impl DataFile {
    /// A file under `<col>=<value>/…` for these partition values, encoding `schema` (without
    /// partition columns) to `sink`; `indexed` says which columns get statistics.
    pub(crate) fn new(
        sink: Sink,
        path: String,
        partition_values: Vec<(String, String)>,
        schema: SchemaRef,
        props: WriterProperties,
        indexed: &dyn Fn(&Field) -> bool,
        num_indexed: usize,
    ) -> Result<Self> {
        let stats =
            schema.fields().iter().enumerate().map(|(i, f)| ColumnStats::new(f, i < num_indexed, indexed(f))).collect();
        let writer = ArrowWriter::try_new(sink, schema, Some(props))
            .map_err(|e| Error::internal(format!("parquet writer for {path}")).with_source(e))?;
        Ok(Self { path, partition_values, writer, stats, rows: 0 })
    }

    /// The relative path of a new file with these partition values.
    pub(crate) fn path_for(partition_values: &[(String, String)]) -> String {
        let mut p = String::new();
        for (k, v) in partition_values {
            p.push_str(k);
            p.push('=');
            p.push_str(v);
            p.push('/');
        }
        p.push_str(&format!("part-00000-{}-c000.snappy.parquet", uuid::Uuid::new_v4()));
        p
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        for (s, c) in self.stats.iter_mut().zip(batch.columns()) {
            s.update(c.as_ref());
        }
        self.rows += batch.num_rows() as i64;
        self.writer.write(batch).map_err(|e| Error::external(format!("encoding {}", self.path)).with_source(e))?;
        if self.writer.in_progress_size() >= ROW_GROUP_BYTES {
            self.writer.flush().map_err(|e| Error::external(format!("writing {}", self.path)).with_source(e))?;
        }
        Ok(())
    }

    /// Finishes the file; returns the sink and the `add` (its size is what the sink took).
    pub(crate) fn finish(self) -> Result<(Sink, Add)> {
        let Self { path, partition_values, writer, stats, rows } = self;
        let sink = writer.into_inner().map_err(|e| Error::external(format!("finishing {path}")).with_source(e))?;
        let size = match &sink {
            Sink::File(f) => {
                f.metadata().map_err(|e| Error::external(format!("size of {path}")).with_source(e))?.len() as i64
            }
            Sink::Mem(v) => v.len() as i64,
        };
        let (mut min, mut max, mut nulls) = (Map::new(), Map::new(), Map::new());
        for s in stats {
            if !s.counted {
                continue;
            }
            if let Some((lo, hi)) = s.min_max() {
                min.insert(s.name.clone(), lo);
                max.insert(s.name.clone(), hi);
            }
            nulls.insert(s.name, Value::from(s.nulls));
        }
        let stats = serde_json::json!({"numRecords": rows, "minValues": min, "maxValues": max, "nullCount": nulls});
        let add = Add {
            path,
            size,
            partition_values: partition_values.into_iter().map(|(k, v)| (k, Some(v))).collect(),
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(stats.to_string()),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        };
        Ok((sink, add))
    }
}

/// Running min/max/null count of one column, in the types the Delta statistics spell.
struct ColumnStats {
    name: String,
    /// In the statistics at all (within the indexed columns and Parquet statistics enabled).
    counted: bool,
    nulls: i64,
    acc: Acc,
}

enum Acc {
    None,
    Bool(Option<(bool, bool)>),
    I32(Option<(i32, i32)>),
    I64(Option<(i64, i64)>),
    F64(Option<(f64, f64)>),
    Date(Option<(i32, i32)>),
    Ts { utc: bool, range: Option<(i64, i64)> },
    Dec { precision: u8, scale: i8, range: Option<(i128, i128)> },
    Str { range: Option<(String, String)>, too_long: bool },
}

fn merge<T: PartialOrd + Copy>(cur: &mut Option<(T, T)>, lo: Option<T>, hi: Option<T>) {
    if let (Some(lo), Some(hi)) = (lo, hi) {
        *cur = Some(match *cur {
            None => (lo, hi),
            Some((a, b)) => (if lo < a { lo } else { a }, if hi > b { hi } else { b }),
        });
    }
}

impl ColumnStats {
    fn new(f: &Field, within_indexed: bool, enabled: bool) -> Self {
        let acc = match f.data_type() {
            DataType::Boolean => Acc::Bool(None),
            DataType::Int32 => Acc::I32(None),
            DataType::Int64 => Acc::I64(None),
            DataType::Float64 => Acc::F64(None),
            DataType::Date32 => Acc::Date(None),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Acc::Ts { utc: tz.is_some(), range: None },
            DataType::Decimal128(p, s) => Acc::Dec { precision: *p, scale: *s, range: None },
            DataType::Utf8 => Acc::Str { range: None, too_long: false },
            _ => Acc::None,
        };
        // deltalake skips binary columns entirely; a column without Parquet statistics has none.
        let binary = matches!(f.data_type(), DataType::Binary | DataType::LargeBinary);
        Self { name: f.name().clone(), counted: within_indexed && enabled && !binary, nulls: 0, acc }
    }

    fn update(&mut self, a: &dyn Array) {
        if !self.counted {
            return;
        }
        self.nulls += a.null_count() as i64;
        match &mut self.acc {
            Acc::None => {}
            Acc::Bool(r) => {
                let b: &BooleanArray = a.as_boolean();
                merge(r, compute::min_boolean(b), compute::max_boolean(b));
            }
            Acc::I32(r) => {
                let p = a.as_primitive::<Int32Type>();
                merge(r, compute::min(p), compute::max(p));
            }
            Acc::I64(r) => {
                let p = a.as_primitive::<Int64Type>();
                merge(r, compute::min(p), compute::max(p));
            }
            Acc::Date(r) => {
                let p = a.as_primitive::<Date32Type>();
                merge(r, compute::min(p), compute::max(p));
            }
            Acc::Ts { range, .. } => {
                let p = a.as_primitive::<TimestampMicrosecondType>();
                merge(range, compute::min(p), compute::max(p));
            }
            Acc::Dec { range, .. } => {
                let p: &Decimal128Array = a.as_primitive();
                merge(range, compute::min(p), compute::max(p));
            }
            Acc::F64(r) => {
                // Parquet's statistics ignore NaN; so do these.
                let p: &Float64Array = a.as_primitive();
                let (mut lo, mut hi) = (None::<f64>, None::<f64>);
                for v in p.iter().flatten().filter(|v| !v.is_nan()) {
                    lo = Some(lo.map_or(v, |l| l.min(v)));
                    hi = Some(hi.map_or(v, |h| h.max(v)));
                }
                merge(r, lo, hi);
            }
            Acc::Str { range, too_long } => {
                if *too_long {
                    return;
                }
                let s = a.as_string::<i32>();
                let (Some(lo), Some(hi)) = (compute::min_string(s), compute::max_string(s)) else { return };
                if lo.len() > MAX_STAT_STRING || hi.len() > MAX_STAT_STRING {
                    *too_long = true;
                    *range = None;
                    return;
                }
                *range = Some(match range.take() {
                    None => (lo.to_string(), hi.to_string()),
                    Some((a, b)) => (
                        if lo < a.as_str() { lo.to_string() } else { a },
                        if hi > b.as_str() { hi.to_string() } else { b },
                    ),
                });
            }
        }
    }

    /// (min, max) as the Delta statistics spell them (deltalake's own formatting).
    fn min_max(&self) -> Option<(Value, Value)> {
        match &self.acc {
            Acc::None => None,
            Acc::Bool(r) => r.map(|(a, b)| (Value::Bool(a), Value::Bool(b))),
            Acc::I32(r) => r.map(|(a, b)| (Value::from(a), Value::from(b))),
            Acc::I64(r) => r.map(|(a, b)| (Value::from(a), Value::from(b))),
            Acc::F64(r) => r.map(|(a, b)| (Value::from(a), Value::from(b))),
            Acc::Date(r) => {
                let f = |d: i32| {
                    let day = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)? + chrono::Duration::days(d as i64);
                    Some(Value::from(day.format("%Y-%m-%d").to_string()))
                };
                r.and_then(|(a, b)| Some((f(a)?, f(b)?)))
            }
            Acc::Ts { utc, range } => {
                let f = |us: i64| {
                    use chrono::Timelike as _;
                    let t = chrono::DateTime::from_timestamp_micros(us)?.naive_utc();
                    let fmt = match (utc, t.nanosecond() == 0) {
                        (true, true) => "%Y-%m-%dT%H:%M:%SZ",
                        (true, false) => "%Y-%m-%dT%H:%M:%S%.3fZ",
                        (false, true) => "%Y-%m-%d %H:%M:%S",
                        (false, false) => "%Y-%m-%d %H:%M:%S%.3f",
                    };
                    Some(Value::from(t.format(fmt).to_string()))
                };
                range.and_then(|(a, b)| Some((f(a)?, f(b)?)))
            }
            Acc::Dec { precision, scale, range } => {
                let (p, s) = (*precision, *scale);
                let f = |v: i128| -> Value {
                    if s == 0 {
                        return Value::from((v as f64).round() as i64);
                    }
                    let mut x = v as f64 / 10f64.powi(s as i32);
                    // As deltalake: a value rounded past the type's integer digits takes the
                    // next smaller one by magnitude.
                    if x.is_normal() && (x.trunc() as i128).to_string().len() > (p as i32 - s as i32).max(0) as usize {
                        x = f64::from_bits(x.to_bits() - 1);
                    }
                    Value::from(x)
                };
                range.map(|(a, b)| (f(a), f(b)))
            }
            Acc::Str { range, .. } => range.as_ref().map(|(a, b)| (Value::from(a.as_str()), Value::from(b.as_str()))),
        }
    }
}

//! Pure row logic of silver: validation with reasons, typed field extraction, row building.

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Decimal128Builder, Float64Builder, Int32Array, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use serde_json::value::RawValue;
use std::sync::Arc;
use tributary_core::{Error, Result};
use tributary_delta::quarantine::QuarantineRows;
use tributary_delta::schemas;
use tributary_events::contract::{DECIMAL_PRECISION, DECIMAL_SCALE, Kind, source_fields};

#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    Str(Option<String>),
    I64(Option<i64>),
    F64(Option<f64>),
    Ts(Option<i64>),
    Dec(Option<i128>),
}

#[derive(Debug, Clone)]
pub struct SilverRow {
    pub event_id: String,
    pub event_time: i64,
    pub region: String,
    pub workspace_id: Option<String>,
    pub customer_id: Option<String>,
    pub egress_approved: Option<bool>,
    pub typed: Vec<Typed>,
    pub payload: String,
    pub rescued: Option<String>,
    pub file: Option<String>,
    pub line: Option<i64>,
    pub k_topic: Option<String>,
    pub k_partition: Option<i32>,
    pub k_offset: Option<i64>,
    pub bronze_version: i64,
    pub ingested_at: i64,
}

/// Parses an exact decimal (JSON number or string) at scale 9; `None` if not exact at that scale.
pub fn parse_decimal(raw: &RawValue) -> Option<i128> {
    let text = raw.get();
    let s: String = if text.starts_with('"') { serde_json::from_str(text).ok()? } else { text.to_string() };
    let d = rust_decimal::Decimal::from_str_exact(s.trim()).ok()?;
    let d = d.normalize();
    if d.scale() > DECIMAL_SCALE {
        return None;
    }
    let m = d.mantissa();
    let v = m.checked_mul(10i128.pow(DECIMAL_SCALE - d.scale()))?;
    if v.unsigned_abs() >= 10u128.pow(DECIMAL_PRECISION as u32) {
        return None;
    }
    Some(v)
}

fn parse_typed(kind: Kind, raw: &RawValue) -> Result<Typed, ()> {
    let t = raw.get();
    if t == "null" {
        return Ok(match kind {
            Kind::Str => Typed::Str(None),
            Kind::I64 => Typed::I64(None),
            Kind::F64 => Typed::F64(None),
            Kind::Ts => Typed::Ts(None),
            Kind::Decimal => Typed::Dec(None),
        });
    }
    match kind {
        Kind::Str => serde_json::from_str::<String>(t).map(|s| Typed::Str(Some(s))).map_err(|_| ()),
        Kind::I64 => t.parse::<i64>().map(|v| Typed::I64(Some(v))).map_err(|_| ()),
        Kind::F64 => {
            if t.starts_with('"') {
                Err(())
            } else {
                t.parse::<f64>().map(|v| Typed::F64(Some(v))).map_err(|_| ())
            }
        }
        Kind::Ts => tributary_events::parse_event_time(raw).map(|v| Typed::Ts(Some(v))).ok_or(()),
        Kind::Decimal => parse_decimal(raw).map(|v| Typed::Dec(Some(v))).ok_or(()),
    }
}

fn none_of(kind: Kind) -> Typed {
    match kind {
        Kind::Str => Typed::Str(None),
        Kind::I64 => Typed::I64(None),
        Kind::F64 => Typed::F64(None),
        Kind::Ts => Typed::Ts(None),
        Kind::Decimal => Typed::Dec(None),
    }
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::internal(format!("bronze batch lacks column {name} of the expected type")))
}

fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
    if a.is_valid(i) { Some(a.value(i)) } else { None }
}

/// `validate` with the rows spread over up to `threads` threads, each on one contiguous slice of
/// the batch (zero-copy) with its own quarantine builder; results are concatenated in row
/// order, so the outcome does not depend on the thread count.
pub fn validate_parallel(
    source: &str,
    region: &str,
    b: &RecordBatch,
    bronze_version: i64,
    q: &mut QuarantineRows,
    threads: usize,
) -> Result<Vec<SilverRow>> {
    const MIN_ROWS: usize = 2048;
    let parts = threads.clamp(1, b.num_rows().div_ceil(MIN_ROWS).max(1));
    if parts == 1 {
        return validate(source, region, b, bronze_version, q);
    }
    let chunk = b.num_rows().div_ceil(parts);
    let slices: Vec<RecordBatch> =
        (0..parts).map(|k| b.slice(k * chunk, chunk.min(b.num_rows().saturating_sub(k * chunk)))).collect();
    let now_us = q.now_us();
    let results = tributary_core::parallel_map(&slices, parts, 1, |s| {
        let mut part_q = QuarantineRows::new(now_us);
        validate(source, region, s, bronze_version, &mut part_q).map(|rows| (rows, part_q))
    });
    let mut out = Vec::with_capacity(b.num_rows());
    for r in results {
        let (rows, part_q) = r?;
        out.extend(rows);
        q.absorb(part_q)?;
    }
    Ok(out)
}

/// Splits a bronze batch into valid silver rows and quarantined rows (appended to `q`).
pub fn validate(
    source: &str,
    region: &str,
    b: &RecordBatch,
    bronze_version: i64,
    q: &mut QuarantineRows,
) -> Result<Vec<SilverRow>> {
    let ids: &StringArray = col(b, "event_id")?;
    let times: &TimestampMicrosecondArray = col(b, "event_time")?;
    let regions: &StringArray = col(b, "region")?;
    let ws: &StringArray = col(b, "workspace_id")?;
    let cust: &StringArray = col(b, "customer_id")?;
    let egress: &BooleanArray = col(b, "egress_approved")?;
    let payload: &StringArray = col(b, "payload")?;
    let rescued: &StringArray = col(b, "_rescued_data")?;
    let files: &StringArray = col(b, "_source_file")?;
    let lines: &Int64Array = col(b, "_source_line")?;
    let k_topics: &StringArray = col(b, "_kafka_topic")?;
    let k_parts: &Int32Array = col(b, "_kafka_partition")?;
    let k_offsets: &Int64Array = col(b, "_kafka_offset")?;
    let ingested: &TimestampMicrosecondArray = col(b, "_ingested_at")?;
    let fields = source_fields(source);
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let file = opt_str(files, i);
        let line = if lines.is_valid(i) { Some(lines.value(i)) } else { None };
        let k_topic = opt_str(k_topics, i);
        let k_partition = if k_parts.is_valid(i) { Some(k_parts.value(i)) } else { None };
        let k_offset = if k_offsets.is_valid(i) { Some(k_offsets.value(i)) } else { None };
        // Built only for a rejected row (the rows that pass never need it).
        let lineage = || match (k_topic, k_partition, k_offset) {
            (Some(t), Some(p), Some(o)) => {
                serde_json::json!({"bronze_version": bronze_version, "topic": t, "partition": p, "offset": o})
                    .to_string()
            }
            _ => format!("{{\"bronze_version\":{bronze_version}}}"),
        };
        let raw_row = || {
            let mut m = serde_json::Map::new();
            m.insert("event_id".into(), opt_str(ids, i).into());
            m.insert(
                "event_time".into(),
                if times.is_valid(i) { times.value(i).into() } else { serde_json::Value::Null },
            );
            m.insert("region".into(), opt_str(regions, i).into());
            m.insert("workspace_id".into(), opt_str(ws, i).into());
            m.insert("customer_id".into(), opt_str(cust, i).into());
            m.insert(
                "egress_approved".into(),
                if egress.is_valid(i) { egress.value(i).into() } else { serde_json::Value::Null },
            );
            m.insert("payload".into(), serde_json::from_str(payload.value(i)).unwrap_or(serde_json::Value::Null));
            m.insert("_rescued_data".into(), opt_str(rescued, i).into());
            serde_json::to_vec(&m).unwrap_or_default()
        };
        let Some(event_id) = opt_str(ids, i) else {
            q.push(
                source,
                "null_key",
                Some("event_id IS NOT NULL"),
                "event_id is null or not a string",
                &raw_row(),
                None,
                file,
                line,
                Some(&lineage()),
            );
            continue;
        };
        if !times.is_valid(i) {
            q.push(
                source,
                "invalid_event_time",
                Some("event_time IS NOT NULL"),
                "event_time is missing or not RFC 3339 / epoch ms",
                &raw_row(),
                Some(event_id),
                file,
                line,
                Some(&lineage()),
            );
            continue;
        }
        let parsed = match tributary_events::decode::Fields::parse(payload.value(i)) {
            Ok(p) => p,
            Err(e) => {
                q.push(
                    source,
                    "malformed_payload",
                    None,
                    &format!("payload is not a JSON object: {e}"),
                    &raw_row(),
                    Some(event_id),
                    file,
                    line,
                    Some(&lineage()),
                );
                continue;
            }
        };
        let mut typed = Vec::with_capacity(fields.len());
        let mut extra_rescued: Vec<(String, String)> = Vec::new();
        let mut reject: Option<(String, String, String)> = None;
        for f in fields {
            match parsed.get(f.name) {
                None => {
                    if f.required {
                        reject = Some((
                            "missing_required_field".into(),
                            format!("{} IS NOT NULL", f.name),
                            format!("required field {} is missing", f.name),
                        ));
                        break;
                    }
                    typed.push(none_of(f.kind));
                }
                Some(raw) => match parse_typed(f.kind, raw) {
                    Ok(t) => {
                        let is_null = matches!(
                            &t,
                            Typed::Str(None) | Typed::I64(None) | Typed::F64(None) | Typed::Ts(None) | Typed::Dec(None)
                        );
                        if is_null && f.required {
                            reject = Some((
                                "missing_required_field".into(),
                                format!("{} IS NOT NULL", f.name),
                                format!("required field {} is null", f.name),
                            ));
                            break;
                        }
                        typed.push(t);
                    }
                    Err(()) => {
                        if f.required {
                            reject = Some((
                                "invalid_field".into(),
                                f.name.to_string(),
                                format!(
                                    "field {} = {} is not a valid {:?} (exact, scale {DECIMAL_SCALE} for decimals)",
                                    f.name,
                                    raw.get(),
                                    f.kind
                                ),
                            ));
                            break;
                        }
                        extra_rescued.push((f.name.to_string(), raw.get().to_string()));
                        typed.push(none_of(f.kind));
                    }
                },
            }
        }
        if let Some((reason, rule, detail)) = reject {
            q.push(source, &reason, Some(&rule), &detail, &raw_row(), Some(event_id), file, line, Some(&lineage()));
            continue;
        }
        let mut rescued_out = opt_str(rescued, i).map(|s| s.to_string());
        if !extra_rescued.is_empty() {
            let mut m: serde_json::Map<String, serde_json::Value> =
                rescued_out.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
            for (k, v) in extra_rescued {
                m.insert(k, serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v)));
            }
            rescued_out = Some(serde_json::Value::Object(m).to_string());
        }
        out.push(SilverRow {
            event_id: event_id.to_string(),
            event_time: times.value(i),
            region: opt_str(regions, i).unwrap_or(region).to_string(),
            workspace_id: opt_str(ws, i).map(str::to_string),
            customer_id: opt_str(cust, i).map(str::to_string),
            egress_approved: if egress.is_valid(i) { Some(egress.value(i)) } else { None },
            typed,
            payload: payload.value(i).to_string(),
            rescued: rescued_out,
            file: file.map(str::to_string),
            line,
            k_topic: k_topic.map(str::to_string),
            k_partition,
            k_offset,
            bronze_version,
            ingested_at: ingested.value(i),
        });
    }
    Ok(out)
}

impl SilverRow {
    /// Where the row came from, for messages and quarantine rows.
    pub fn lineage(&self) -> String {
        match (&self.k_topic, self.k_partition, self.k_offset) {
            (Some(t), Some(p), Some(o)) => {
                serde_json::json!({"bronze_version": self.bronze_version, "topic": t, "partition": p, "offset": o})
                    .to_string()
            }
            _ => serde_json::json!({"bronze_version": self.bronze_version, "file": self.file, "line": self.line})
                .to_string(),
        }
    }

    /// The row as JSON (quarantine's `raw`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "event_id": self.event_id,
            "event_time": self.event_time,
            "region": self.region,
            "workspace_id": self.workspace_id,
            "customer_id": self.customer_id,
            "egress_approved": self.egress_approved,
            "payload": serde_json::from_str::<serde_json::Value>(&self.payload).unwrap_or(serde_json::Value::Null),
            "_rescued_data": self.rescued,
        }))
        .unwrap_or_default()
    }
}

/// Accumulates silver rows and builds the batch in the silver schema of the source.
pub struct SilverRows {
    source: String,
    rows: Vec<SilverRow>,
}

impl SilverRows {
    pub fn new(source: &str, _region: &str) -> Self {
        Self { source: source.into(), rows: Vec::new() }
    }
    pub fn push(&mut self, r: SilverRow) {
        self.rows.push(r);
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn max_event_time_us(&self) -> i64 {
        self.rows.iter().map(|r| r.event_time).max().unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn finish(self) -> Result<Vec<RecordBatch>> {
        if self.rows.is_empty() {
            return Ok(vec![]);
        }
        Ok(vec![self.to_batch()?])
    }

    /// Keeps the rows whose `keep` is true; returns the others, in order.
    pub fn retain(&mut self, keep: &[bool]) -> Vec<SilverRow> {
        let all = std::mem::take(&mut self.rows);
        let mut removed = Vec::new();
        for (r, k) in all.into_iter().zip(keep.iter().copied().chain(std::iter::repeat(true))) {
            if k { self.rows.push(r) } else { removed.push(r) }
        }
        removed
    }

    pub fn rows(&self) -> &[SilverRow] {
        &self.rows
    }

    /// The rows as one batch in the silver schema of the source.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = &self.rows;
        let source = self.source.clone();
        let ts_col = |f: &dyn Fn(&SilverRow) -> Option<i64>| -> ArrayRef {
            let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
            for r in rows {
                b.append_option(f(r));
            }
            Arc::new(b.finish())
        };
        let str_col = |f: &dyn Fn(&SilverRow) -> Option<&str>| -> ArrayRef {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_option(f(r));
            }
            Arc::new(b.finish())
        };
        let mut cols: Vec<ArrayRef> = vec![
            str_col(&|r| Some(r.event_id.as_str())),
            ts_col(&|r| Some(r.event_time)),
            Arc::new(StringArray::from(vec![source.clone(); rows.len()])),
            str_col(&|r| Some(r.region.as_str())),
            str_col(&|r| r.workspace_id.as_deref()),
            str_col(&|r| r.customer_id.as_deref()),
            {
                let mut b = BooleanBuilder::new();
                for r in rows {
                    b.append_option(r.egress_approved);
                }
                Arc::new(b.finish())
            },
        ];
        for (k, f) in source_fields(&self.source).iter().enumerate() {
            let arr: ArrayRef = match f.kind {
                Kind::Str => str_col(&|r| match &r.typed[k] {
                    Typed::Str(s) => s.as_deref(),
                    _ => None,
                }),
                Kind::I64 => {
                    let mut b = Int64Builder::new();
                    for r in rows {
                        b.append_option(if let Typed::I64(v) = r.typed[k] { v } else { None });
                    }
                    Arc::new(b.finish())
                }
                Kind::F64 => {
                    let mut b = Float64Builder::new();
                    for r in rows {
                        b.append_option(if let Typed::F64(v) = r.typed[k] { v } else { None });
                    }
                    Arc::new(b.finish())
                }
                Kind::Ts => ts_col(&|r| {
                    if let Typed::Ts(v) = r.typed[k] { v } else { None }
                }),
                Kind::Decimal => {
                    let mut b = Decimal128Builder::new()
                        .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
                        .map_err(|e| Error::internal("decimal type").with_source(e))?;
                    for r in rows {
                        b.append_option(if let Typed::Dec(v) = r.typed[k] { v } else { None });
                    }
                    Arc::new(b.finish())
                }
            };
            cols.push(arr);
        }
        cols.push(str_col(&|r| Some(r.payload.as_str())));
        cols.push(str_col(&|r| r.rescued.as_deref()));
        cols.push(str_col(&|r| r.file.as_deref()));
        cols.push(Arc::new(rows.iter().map(|r| r.line).collect::<Int64Array>()));
        cols.push(str_col(&|r| r.k_topic.as_deref()));
        cols.push(Arc::new(rows.iter().map(|r| r.k_partition).collect::<Int32Array>()));
        cols.push(Arc::new(rows.iter().map(|r| r.k_offset).collect::<Int64Array>()));
        cols.push(Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.bronze_version))));
        cols.push(ts_col(&|r| Some(r.ingested_at)));
        let dates: Vec<String> = rows.iter().map(|r| tributary_events::date_of_micros(r.event_time)).collect();
        cols.push(Arc::new(StringArray::from(dates)));
        RecordBatch::try_new(schemas::silver(&self.source), cols)
            .map_err(|e| Error::internal(format!("building silver/{} batch", self.source)).with_source(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn decimals_are_exact_or_rejected() {
        assert_eq!(parse_decimal(&raw("12.345678")), Some(12_345_678_000));
        assert_eq!(parse_decimal(&raw("\"0.000000001\"")), Some(1));
        assert_eq!(parse_decimal(&raw("0.0000000001")), None, "scale 10 would need rounding");
        assert_eq!(parse_decimal(&raw("\"abc\"")), None);
        assert_eq!(parse_decimal(&raw("-3")), Some(-3_000_000_000));
    }

    #[test]
    fn typed_fields_never_coerce_strings_to_numbers() {
        assert!(parse_typed(Kind::I64, &raw("\"5\"")).is_err());
        assert!(parse_typed(Kind::F64, &raw("\"5.0\"")).is_err());
        assert_eq!(parse_typed(Kind::I64, &raw("5")), Ok(Typed::I64(Some(5))));
    }
}

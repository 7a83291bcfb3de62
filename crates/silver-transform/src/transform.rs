//! Columnar row logic of silver: validation with reasons into a batch of the silver schema, typed
//! field extraction from the payload, quarantine rows from batch rows.

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Builder, Float64Builder, Int32Array, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::{cast, filter};
use deltalake::arrow::datatypes::DataType;
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

/// Parses an exact decimal (JSON number in any spelling, or a string holding one) at the contract's
/// precision and scale (`tributary_events::decimal`, the one parser bronze uses too).
pub fn parse_decimal(raw: &RawValue) -> Option<i128> {
    tributary_events::decimal::parse(raw.get(), DECIMAL_PRECISION, DECIMAL_SCALE as i8).ok()
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

/// One typed column of silver being built from the payloads of the valid rows.
enum TypedBuilder {
    Str(StringBuilder),
    I64(Int64Builder),
    F64(Float64Builder),
    Ts(TimestampMicrosecondBuilder),
    Dec(Decimal128Builder),
}

impl TypedBuilder {
    fn new(kind: Kind, rows: usize) -> Result<Self> {
        Ok(match kind {
            Kind::Str => Self::Str(StringBuilder::with_capacity(rows, rows * 16)),
            Kind::I64 => Self::I64(Int64Builder::with_capacity(rows)),
            Kind::F64 => Self::F64(Float64Builder::with_capacity(rows)),
            Kind::Ts => Self::Ts(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")),
            Kind::Decimal => Self::Dec(
                Decimal128Builder::with_capacity(rows)
                    .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
                    .map_err(|e| Error::internal("decimal type").with_source(e))?,
            ),
        })
    }

    fn append(&mut self, t: Typed) {
        match (self, t) {
            (Self::Str(b), Typed::Str(v)) => b.append_option(v),
            (Self::I64(b), Typed::I64(v)) => b.append_option(v),
            (Self::F64(b), Typed::F64(v)) => b.append_option(v),
            (Self::Ts(b), Typed::Ts(v)) => b.append_option(v),
            (Self::Dec(b), Typed::Dec(v)) => b.append_option(v),
            // `Typed` values come from `parse_typed`/`none_of` with the field's own kind.
            (Self::Str(b), _) => b.append_null(),
            (Self::I64(b), _) => b.append_null(),
            (Self::F64(b), _) => b.append_null(),
            (Self::Ts(b), _) => b.append_null(),
            (Self::Dec(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Self::Str(mut b) => Arc::new(b.finish()),
            Self::I64(mut b) => Arc::new(b.finish()),
            Self::F64(mut b) => Arc::new(b.finish()),
            Self::Ts(mut b) => Arc::new(b.finish()),
            Self::Dec(mut b) => Arc::new(b.finish()),
        }
    }
}

fn is_null(t: &Typed) -> bool {
    matches!(t, Typed::Str(None) | Typed::I64(None) | Typed::F64(None) | Typed::Ts(None) | Typed::Dec(None))
}

/// `validate` with the rows spread over up to `threads` threads, each on one contiguous slice of
/// the batch (zero-copy) with its own quarantine builder; results are concatenated in row
/// order, so the outcome does not depend on the thread count.
pub fn validate_parallel(
    source: &str,
    region: &str,
    b: &RecordBatch,
    bronze_version: i64,
    max_future_us: i64,
    q: &mut QuarantineRows,
    threads: usize,
) -> Result<Vec<RecordBatch>> {
    const MIN_ROWS: usize = 2048;
    let parts = threads.clamp(1, b.num_rows().div_ceil(MIN_ROWS).max(1));
    if parts == 1 {
        return Ok(vec![validate(source, region, b, bronze_version, max_future_us, q)?]);
    }
    let chunk = b.num_rows().div_ceil(parts);
    let slices: Vec<RecordBatch> =
        (0..parts).map(|k| b.slice(k * chunk, chunk.min(b.num_rows().saturating_sub(k * chunk)))).collect();
    let now_us = q.now_us();
    let results = tributary_core::parallel_map(&slices, parts, 1, |s| {
        let mut part_q = QuarantineRows::new(now_us);
        validate(source, region, s, bronze_version, max_future_us, &mut part_q).map(|rows| (rows, part_q))
    });
    let mut out = Vec::with_capacity(parts);
    for r in results {
        let (rows, part_q) = r?;
        out.push(rows);
        q.absorb(part_q)?;
    }
    Ok(out)
}

/// Casts `a` to `t` when its type differs (e.g. a timestamp read back without its zone).
fn as_type(a: ArrayRef, t: &DataType) -> Result<ArrayRef> {
    if a.data_type() == t {
        return Ok(a);
    }
    cast(&a, t).map_err(|e| Error::internal(format!("casting {} to {t}", a.data_type())).with_source(e))
}

fn column(b: &RecordBatch, name: &str) -> Result<ArrayRef> {
    b.column_by_name(name).cloned().ok_or_else(|| Error::internal(format!("bronze batch lacks column {name}")))
}

/// Splits a bronze batch into valid rows — returned as a batch in the silver schema of the
/// source — and rejected rows (appended to `q` with a reason). Columnar: the envelope, payload
/// and lineage columns are the bronze arrays (filtered only when a row was rejected); the only
/// per-row work is parsing the payload for the source's typed fields, and JSON for rejected rows.
pub fn validate(
    source: &str,
    region: &str,
    b: &RecordBatch,
    bronze_version: i64,
    max_future_us: i64,
    q: &mut QuarantineRows,
) -> Result<RecordBatch> {
    let ids: &StringArray = col(b, "event_id")?;
    let times: &TimestampMicrosecondArray = col(b, "event_time")?;
    let ingested: &TimestampMicrosecondArray = col(b, "_ingested_at")?;
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
    let fields = source_fields(source);
    let n = b.num_rows();
    let mut typed_cols = fields.iter().map(|f| TypedBuilder::new(f.kind, n)).collect::<Result<Vec<_>>>()?;
    let mut valid = Vec::with_capacity(n);
    // Rows (index among the valid ones) whose `_rescued_data` gains mistyped optional fields.
    let mut rescued_override: Vec<(usize, String)> = Vec::new();
    let mut typed: Vec<Typed> = Vec::with_capacity(fields.len());
    let mut kept = 0usize;
    for i in 0..n {
        let file = opt_str(files, i);
        let line = if lines.is_valid(i) { Some(lines.value(i)) } else { None };
        // Built only for a rejected row (the rows that pass never need it).
        let lineage = || match (opt_str(k_topics, i), k_parts.is_valid(i), k_offsets.is_valid(i)) {
            (Some(t), true, true) => serde_json::json!({"bronze_version": bronze_version, "topic": t,
                                               "partition": k_parts.value(i), "offset": k_offsets.value(i)})
            .to_string(),
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
        let mut reject = |reason: &str, rule: Option<&str>, detail: &str, id: Option<&str>| {
            q.push(source, reason, rule, detail, &raw_row(), id, file, line, Some(&lineage()));
            valid.push(false);
        };
        let Some(event_id) = opt_str(ids, i) else {
            reject("null_key", Some("event_id IS NOT NULL"), "event_id is null or not a string", None);
            continue;
        };
        if event_id.trim().is_empty() {
            // An empty id would collapse every such event of the region into one silver row.
            reject("null_key", Some("trim(event_id) <> ''"), "event_id is empty or whitespace-only", Some(event_id));
            continue;
        }
        if !times.is_valid(i) {
            reject(
                "invalid_event_time",
                Some("event_time IS NOT NULL"),
                "event_time is missing or not RFC 3339 / epoch ms",
                Some(event_id),
            );
            continue;
        }
        // A producer with a wrong clock: bounded against the time the event landed (a pure
        // function of the bronze row, so a recomputed quarantine decision is the same), or one
        // event dated 2125 would move the dedup floor and every watermark a century ahead.
        if ingested.is_valid(i) && times.value(i) > ingested.value(i).saturating_add(max_future_us) {
            let at = |us: i64| {
                chrono::DateTime::from_timestamp_micros(us).map_or_else(|| us.to_string(), |d| d.to_rfc3339())
            };
            reject(
                "event_time_in_future",
                Some("event_time <= _ingested_at + silver.max_future_secs"),
                &format!(
                    "event_time {} is more than {}s after the event landed ({}): the producer's clock is wrong",
                    at(times.value(i)),
                    max_future_us / 1_000_000,
                    at(ingested.value(i))
                ),
                Some(event_id),
            );
            continue;
        }
        let parsed = match tributary_events::decode::Fields::parse(payload.value(i)) {
            Ok(p) => p,
            Err(e) => {
                reject("malformed_payload", None, &format!("payload is not a JSON object: {e}"), Some(event_id));
                continue;
            }
        };
        typed.clear();
        let mut extra_rescued: Vec<(&str, &str)> = Vec::new();
        let mut rejected: Option<(&str, String, String)> = None;
        for f in fields {
            match parsed.get(f.name) {
                None if f.required => {
                    rejected = Some((
                        "missing_required_field",
                        format!("{} IS NOT NULL", f.name),
                        format!("required field {} is missing", f.name),
                    ));
                    break;
                }
                None => typed.push(none_of(f.kind)),
                Some(raw) => match parse_typed(f.kind, raw) {
                    Ok(t) if is_null(&t) && f.required => {
                        rejected = Some((
                            "missing_required_field",
                            format!("{} IS NOT NULL", f.name),
                            format!("required field {} is null", f.name),
                        ));
                        break;
                    }
                    Ok(t) => typed.push(t),
                    Err(()) if f.required => {
                        rejected = Some((
                            "invalid_field",
                            f.name.to_string(),
                            match tributary_events::decimal::parse(raw.get(), DECIMAL_PRECISION, DECIMAL_SCALE as i8) {
                                Err(e) if f.kind == Kind::Decimal => format!(
                                    "field {} = {} is not an exact decimal({DECIMAL_PRECISION},{DECIMAL_SCALE}): {e}",
                                    f.name,
                                    raw.get()
                                ),
                                _ => format!("field {} = {} is not a valid {:?}", f.name, raw.get(), f.kind),
                            },
                        ));
                        break;
                    }
                    Err(()) => {
                        extra_rescued.push((f.name, raw.get()));
                        typed.push(none_of(f.kind));
                    }
                },
            }
        }
        if let Some((reason, rule, detail)) = rejected {
            reject(reason, Some(&rule), &detail, Some(event_id));
            continue;
        }
        if !extra_rescued.is_empty() {
            let mut m: serde_json::Map<String, serde_json::Value> =
                opt_str(rescued, i).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
            for (k, v) in extra_rescued {
                m.insert(k.to_string(), serde_json::from_str(v).unwrap_or_else(|_| v.into()));
            }
            rescued_override.push((kept, serde_json::Value::Object(m).to_string()));
        }
        for (builder, t) in typed_cols.iter_mut().zip(typed.drain(..)) {
            builder.append(t);
        }
        valid.push(true);
        kept += 1;
    }
    let mask = (kept < n).then(|| BooleanArray::from(valid));
    let pick = |name: &str| -> Result<ArrayRef> {
        let a = column(b, name)?;
        match &mask {
            None => Ok(a),
            Some(m) => filter(&a, m).map_err(|e| Error::internal(format!("filtering {name}")).with_source(e)),
        }
    };
    let schema = schemas::silver(source);
    let times = as_type(pick("event_time")?, &schemas::ts())?;
    let region_col = {
        let r = pick("region")?;
        if r.null_count() == 0 {
            r
        } else {
            let r = r.as_any().downcast_ref::<StringArray>().expect("region is a string column");
            Arc::new(r.iter().map(|v| Some(v.unwrap_or(region))).collect::<StringArray>()) as ArrayRef
        }
    };
    let rescued_col = {
        let r = pick("_rescued_data")?;
        if rescued_override.is_empty() {
            r
        } else {
            let r = r.as_any().downcast_ref::<StringArray>().expect("_rescued_data is a string column");
            let mut next = rescued_override.iter().peekable();
            let mut out = StringBuilder::with_capacity(kept, 0);
            for (k, v) in r.iter().enumerate() {
                match next.peek() {
                    Some((at, s)) if *at == k => {
                        out.append_value(s);
                        next.next();
                    }
                    _ => out.append_option(v),
                }
            }
            Arc::new(out.finish()) as ArrayRef
        }
    };
    let dates = {
        let t = times.as_any().downcast_ref::<TimestampMicrosecondArray>().expect("event_time is a timestamp");
        // Consecutive rows mostly share a day: format each day once.
        let mut out = StringBuilder::with_capacity(kept, kept * 10);
        let mut last: Option<(i64, String)> = None;
        for us in t.values().iter() {
            let day = us.div_euclid(86_400_000_000);
            if last.as_ref().is_none_or(|(d, _)| *d != day) {
                last = Some((day, tributary_events::date_of_micros(*us)));
            }
            out.append_value(&last.as_ref().expect("set above").1);
        }
        Arc::new(out.finish()) as ArrayRef
    };
    let mut cols: Vec<ArrayRef> = vec![
        pick("event_id")?,
        times,
        Arc::new(StringArray::from_iter_values(std::iter::repeat_n(source, kept))),
        region_col,
        pick("workspace_id")?,
        pick("customer_id")?,
        pick("egress_approved")?,
    ];
    cols.extend(typed_cols.into_iter().map(TypedBuilder::finish));
    cols.extend([
        pick("payload")?,
        rescued_col,
        pick("_source_file")?,
        pick("_source_line")?,
        pick("_kafka_topic")?,
        pick("_kafka_partition")?,
        pick("_kafka_offset")?,
        Arc::new(Int64Array::from_value(bronze_version, kept)),
        as_type(pick("_ingested_at")?, &schemas::ts())?,
        dates,
    ]);
    RecordBatch::try_new(schema, cols)
        .map_err(|e| Error::internal(format!("building silver/{source} batch")).with_source(e))
}

/// The event ids of a silver batch.
pub fn event_ids(b: &RecordBatch) -> Result<&StringArray> {
    col(b, "event_id")
}

/// The event times (µs) of a silver batch.
pub fn event_times(b: &RecordBatch) -> Result<&TimestampMicrosecondArray> {
    col(b, "event_time")
}

/// Where row `i` of a silver batch came from, for messages and quarantine rows.
pub fn lineage(b: &RecordBatch, i: usize) -> String {
    let s = |name: &str| col::<StringArray>(b, name).ok().and_then(|a| opt_str(a, i).map(str::to_string));
    let n64 = |name: &str| col::<Int64Array>(b, name).ok().and_then(|a| a.is_valid(i).then(|| a.value(i)));
    let version = n64("_bronze_version");
    let partition = col::<Int32Array>(b, "_kafka_partition").ok().and_then(|a| a.is_valid(i).then(|| a.value(i)));
    match (s("_kafka_topic"), partition, n64("_kafka_offset")) {
        (Some(t), Some(p), Some(o)) => {
            serde_json::json!({"bronze_version": version, "topic": t, "partition": p, "offset": o}).to_string()
        }
        _ => serde_json::json!({"bronze_version": version, "file": s("_source_file"), "line": n64("_source_line")})
            .to_string(),
    }
}

/// Row `i` of a silver batch as JSON (quarantine's `raw`).
pub fn row_json(b: &RecordBatch, i: usize) -> Vec<u8> {
    let s = |name: &str| col::<StringArray>(b, name).ok().and_then(|a| opt_str(a, i));
    let time = col::<TimestampMicrosecondArray>(b, "event_time").ok().map(|a| a.value(i));
    let egress = col::<BooleanArray>(b, "egress_approved").ok().and_then(|a| a.is_valid(i).then(|| a.value(i)));
    serde_json::to_vec(&serde_json::json!({
        "event_id": s("event_id"),
        "event_time": time,
        "region": s("region"),
        "workspace_id": s("workspace_id"),
        "customer_id": s("customer_id"),
        "egress_approved": egress,
        "payload": s("payload").and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok()),
        "_rescued_data": s("_rescued_data"),
    }))
    .unwrap_or_default()
}

/// `row_json`, `lineage`, event id, file and line of row `i`: what a quarantine row needs.
pub fn quarantine_row(
    q: &mut QuarantineRows,
    b: &RecordBatch,
    i: usize,
    source: &str,
    reason: &str,
    rule: Option<&str>,
    detail: &str,
) {
    let id = col::<StringArray>(b, "event_id").ok().and_then(|a| opt_str(a, i));
    let file = col::<StringArray>(b, "_source_file").ok().and_then(|a| opt_str(a, i));
    let line = col::<Int64Array>(b, "_source_line").ok().and_then(|a| a.is_valid(i).then(|| a.value(i)));
    q.push(source, reason, rule, detail, &row_json(b, i), id, file, line, Some(&lineage(b, i)));
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

    /// A bronze batch of `job` rows: (event_id, event_time µs, region, payload, rescued).
    /// (event_id, event_time µs, region, payload, rescued) — one bronze row.
    type Row<'a> = (Option<&'a str>, Option<i64>, Option<&'a str>, &'a str, Option<&'a str>);

    const HOUR: i64 = 3_600_000_000;
    /// `_ingested_at` of the fixture rows: 2027-01-01T00:00:00Z.
    const INGESTED: i64 = 1_798_761_600_000_000;

    fn bronze(rows: &[Row<'_>]) -> RecordBatch {
        let n = rows.len();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<TimestampMicrosecondArray>().with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("job", n))),
            Arc::new(rows.iter().map(|r| r.2).collect::<StringArray>()),
            Arc::new(StringArray::from(vec![Some("ws"); n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(BooleanArray::from(vec![Some(true); n])),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(rows.iter().map(|r| r.4).collect::<StringArray>()),
            Arc::new(StringArray::from(vec![Some("f.json"); n])),
            Arc::new(Int64Array::from_iter_values(1..=n as i64)),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(Int32Array::from(vec![None; n])),
            Arc::new(Int64Array::from(vec![None; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![None; n]).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(vec![INGESTED; n]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![Some("2026-01-01"); n])),
        ];
        RecordBatch::try_new(schemas::bronze(), cols).unwrap()
    }

    #[test]
    fn validation_is_columnar_with_a_reason_for_every_rejected_row() {
        let day = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
        let b = bronze(&[
            (Some("a"), Some(day), Some("eu"), r#"{"job_id":"j","sequence":3}"#, None),
            (None, Some(day), Some("eu"), r#"{}"#, None),
            (Some("c"), None, Some("eu"), r#"{}"#, None),
            (Some("d"), Some(day), Some("eu"), r#"[1]"#, None),
            (Some("e"), Some(day + 86_400_000_000), None, r#"{"sequence":"x"}"#, Some(r#"{"k":1}"#)),
            (Some(" \t"), Some(day), Some("eu"), r#"{}"#, None),
            (Some("g"), Some(INGESTED + HOUR + 1), Some("eu"), r#"{}"#, None),
            (Some("h"), Some(INGESTED + HOUR), Some("eu"), r#"{}"#, None),
        ]);
        let mut q = QuarantineRows::new(0);
        let out = validate("job", "us", &b, 42, HOUR, &mut q).unwrap();
        assert_eq!(out.schema(), schemas::silver("job"));
        assert_eq!(q.len(), 5);
        let reasons = q.finish().unwrap()[0].column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
        let reasons: Vec<&str> = reasons.iter().map(Option::unwrap).collect();
        assert_eq!(
            reasons,
            ["null_key", "invalid_event_time", "malformed_payload", "null_key", "event_time_in_future"],
            "an empty id is no key; an event more than the tolerance after it landed is a wrong clock"
        );
        assert_eq!(out.num_rows(), 3, "exactly at the tolerance is accepted");
        let s = |name: &str, i: usize| {
            let a = out.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            opt_str(a, i).map(str::to_string)
        };
        assert_eq!(s("event_id", 1).as_deref(), Some("e"));
        assert_eq!(s("region", 1).as_deref(), Some("us"), "a null region is the pipeline's");
        assert_eq!(s("event_date", 0).as_deref(), Some("2026-01-01"));
        assert_eq!(s("event_date", 1).as_deref(), Some("2026-01-02"));
        assert_eq!(s("job_id", 0).as_deref(), Some("j"));
        let seq = out.column_by_name("sequence").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((seq.value(0), seq.is_null(1)), (3, true));
        // A mistyped optional field is kept in `_rescued_data` next to bronze's rescued fields.
        let rescued: serde_json::Value = serde_json::from_str(&s("_rescued_data", 1).unwrap()).unwrap();
        assert_eq!(rescued, serde_json::json!({"k": 1, "sequence": "x"}));
        assert_eq!(s("_rescued_data", 0), None);
        let v = out.column_by_name("_bronze_version").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(v.values().to_vec(), vec![42, 42, 42]);
        assert!(lineage(&out, 1).contains("\"line\":5"), "{}", lineage(&out, 1));
        let raw: serde_json::Value = serde_json::from_slice(&row_json(&out, 0)).unwrap();
        assert_eq!(raw["payload"]["sequence"], 3);
    }

    #[test]
    fn parallel_validation_equals_serial() {
        let day = 1_767_225_600_000_000;
        let payloads: Vec<String> = (0..5000).map(|k| format!(r#"{{"sequence":{k}}}"#)).collect();
        let ids: Vec<String> = (0..5000).map(|k| format!("id{k}")).collect();
        let rows: Vec<_> = (0..5000)
            .map(|k| {
                let id = if k % 7 == 0 { None } else { Some(ids[k].as_str()) };
                (id, Some(day + k as i64), Some("eu"), payloads[k].as_str(), None)
            })
            .collect();
        let b = bronze(&rows);
        let mut q1 = QuarantineRows::new(0);
        let serial = validate("job", "eu", &b, 1, HOUR, &mut q1).unwrap();
        let mut q2 = QuarantineRows::new(0);
        let parts = validate_parallel("job", "eu", &b, 1, HOUR, &mut q2, 4).unwrap();
        let parallel = deltalake::arrow::compute::concat_batches(&serial.schema(), &parts).unwrap();
        assert!(parts.len() > 1);
        assert_eq!(serial, parallel);
        assert_eq!((q1.len(), q2.len()), (715, 715));
    }
}

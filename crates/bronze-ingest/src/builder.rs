//! Columnar builders for bronze rows.

use crate::schema::{
    Finding, Mode, Seen, SourceSchema, classify, fits, parse_decimal, parse_timestamp, reserved, seen_name,
};
use deltalake::arrow::array::{
    ArrayRef, BooleanArray, BooleanBuilder, Decimal128Array, Float64Array, Int32Builder, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder, new_null_array,
};
use deltalake::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use deltalake::arrow::datatypes::{Field, Schema};
use std::collections::BTreeMap;
use std::sync::Arc;
use tributary_core::field_type::FieldType;
use tributary_core::{Error, Result};
use tributary_delta::schemas;
use tributary_events::Decoded;

pub use tributary_delta::quarantine::QuarantineRows;

/// Where a bronze row came from.
#[derive(Debug, Clone)]
pub enum Lineage<'a> {
    File { path: &'a str, line: i64 },
    Kafka { topic: &'a str, partition: i32, offset: i64, timestamp_us: Option<i64> },
}

impl Lineage<'_> {
    /// Human form for messages: `file:line` or `topic[partition]@offset`.
    pub fn describe(&self) -> String {
        match self {
            Lineage::File { path, line } => format!("{path}:{line}"),
            Lineage::Kafka { topic, partition, offset, .. } => format!("{topic}[{partition}]@{offset}"),
        }
    }

    /// JSON form kept in quarantine rows.
    pub fn json(&self) -> String {
        match self {
            Lineage::File { path, line } => serde_json::json!({"file": path, "line": line}).to_string(),
            Lineage::Kafka { topic, partition, offset, .. } => {
                serde_json::json!({"topic": topic, "partition": partition, "offset": offset}).to_string()
            }
        }
    }
}

/// (row, start, end): a raw value's byte range inside that row's payload.
type Cell = (u32, u32, u32);

/// Everything bronze saw of one payload field in a batch.
#[derive(Debug, Default, Clone)]
pub struct FieldCells {
    /// Rows carrying the field (null included).
    pub present: u64,
    /// Value kinds seen, with counts.
    pub seen: BTreeMap<Seen, u64>,
    /// Where the field was first seen in the batch (file:line or topic/partition@offset).
    pub first_lineage: String,
    /// (row, start, end): the raw value's byte range inside that row's payload.
    pub(crate) cells: Vec<Cell>,
    /// The first string values (raw JSON text), for timestamp inference.
    pub string_samples: Vec<String>,
}

impl FieldCells {
    pub fn nulls(&self) -> u64 {
        self.seen.get(&Seen::Null).copied().unwrap_or(0)
    }
    pub fn non_null(&self) -> u64 {
        self.present - self.nulls()
    }
}

/// A finished bronze batch and what typing it found.
#[derive(Debug, Default)]
pub struct Built {
    pub batches: Vec<RecordBatch>,
    /// Fields whose values did not fit their column (rescued): type-change findings.
    pub type_changes: Vec<Finding>,
    /// Field values moved to `_rescued_data` (mismatches, unknown fields in rescue mode, clashes).
    pub rescued_values: u64,
}

pub struct BronzeRows {
    source: String,
    now_us: i64,
    event_id: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    src: StringBuilder,
    region: StringBuilder,
    workspace: StringBuilder,
    customer: StringBuilder,
    egress: BooleanBuilder,
    /// Every row's payload back to back (row `i` is `payload[offsets[i]..offsets[i + 1]]`): the
    /// `payload` column's buffer as it will be committed, so finishing moves it instead of
    /// copying it, and a row costs no allocation of its own.
    payload: String,
    payload_offsets: Vec<usize>,
    rescued: Vec<Option<String>>,
    file: StringBuilder,
    line: Int64Builder,
    k_topic: StringBuilder,
    k_partition: Int32Builder,
    k_offset: Int64Builder,
    k_ts: TimestampMicrosecondBuilder,
    ingested: TimestampMicrosecondBuilder,
    date: StringBuilder,
    fields: BTreeMap<String, FieldCells>,
    len: usize,
}

impl BronzeRows {
    pub fn new(source: &str, now_us: i64) -> Self {
        Self::with_capacity(source, now_us, 0, 0)
    }

    /// With room for `rows` rows of up to `payload_bytes` payload bytes in all (the lines' total
    /// length bounds it): one allocation for the payload column instead of doubling copies.
    pub fn with_capacity(source: &str, now_us: i64, rows: usize, payload_bytes: usize) -> Self {
        let mut payload_offsets = Vec::with_capacity(rows + 1);
        payload_offsets.push(0);
        Self {
            source: source.into(),
            now_us,
            event_id: StringBuilder::new(),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            src: StringBuilder::new(),
            region: StringBuilder::new(),
            workspace: StringBuilder::new(),
            customer: StringBuilder::new(),
            egress: BooleanBuilder::new(),
            payload: String::with_capacity(payload_bytes),
            payload_offsets,
            rescued: Vec::with_capacity(rows),
            file: StringBuilder::new(),
            line: Int64Builder::new(),
            k_topic: StringBuilder::new(),
            k_partition: Int32Builder::new(),
            k_offset: Int64Builder::new(),
            k_ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            ingested: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            date: StringBuilder::new(),
            fields: BTreeMap::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payload fields seen so far, by name.
    pub fn observed(&self) -> &BTreeMap<String, FieldCells> {
        &self.fields
    }

    /// Row `row`'s payload.
    fn payload_of(&self, row: usize) -> &str {
        &self.payload[self.payload_offsets[row]..self.payload_offsets[row + 1]]
    }

    pub fn push(&mut self, d: Decoded, lineage: &Lineage<'_>) {
        let row = self.len as u32;
        for (key, range) in &d.payload_fields {
            let raw = &d.payload[range.start as usize..range.end as usize];
            let seen = classify(raw);
            // Look up by `&str` first: the common case (a field seen before) allocates nothing.
            if !self.fields.contains_key(key.as_str()) {
                self.fields.insert(key.clone(), FieldCells { first_lineage: lineage.describe(), ..Default::default() });
            }
            let Some(cells) = self.fields.get_mut(key.as_str()) else { continue };
            cells.present += 1;
            *cells.seen.entry(seen).or_insert(0) += 1;
            if seen == Seen::Str && cells.string_samples.len() < 64 {
                cells.string_samples.push(raw.to_string());
            }
            cells.cells.push((row, range.start, range.end));
        }
        self.event_id.append_option(d.event_id.as_deref());
        self.event_time.append_option(d.event_time);
        self.src.append_value(&self.source);
        self.region.append_option(d.region.as_deref());
        self.workspace.append_option(d.workspace_id.as_deref());
        self.customer.append_option(d.customer_id.as_deref());
        self.egress.append_option(d.egress_approved);
        self.rescued.push(d.rescued);
        match lineage {
            Lineage::File { path, line } => {
                self.file.append_value(path);
                self.line.append_value(*line);
                self.k_topic.append_null();
                self.k_partition.append_null();
                self.k_offset.append_null();
                self.k_ts.append_null();
            }
            Lineage::Kafka { topic, partition, offset, timestamp_us } => {
                self.file.append_null();
                self.line.append_null();
                self.k_topic.append_value(topic);
                self.k_partition.append_value(*partition);
                self.k_offset.append_value(*offset);
                self.k_ts.append_option(*timestamp_us);
            }
        }
        self.ingested.append_value(self.now_us);
        self.date.append_option(d.event_time.map(tributary_events::date_of_micros));
        self.payload.push_str(&d.payload);
        self.payload_offsets.push(self.payload.len());
        self.len += 1;
    }

    /// Builds the batch in the bronze schema plus the typed columns of `schema`. Values that do
    /// not fit their column, fields that clash with a column by case, and (in `rescue` mode)
    /// fields without a column go to `_rescued_data`.
    pub fn finish(mut self, schema: &SourceSchema, mode: Mode) -> Result<Built> {
        let mut built = Built::default();
        if self.len == 0 {
            return Ok(built);
        }
        let n = self.len;
        let mut extra: Vec<Vec<(String, Cell)>> = vec![Vec::new(); n];
        let mut typed: Vec<ArrayRef> = Vec::with_capacity(schema.columns.len());
        for (name, t) in &schema.columns {
            let Some(cells) = self.fields.get(name) else {
                typed.push(new_null_array(&schemas::field_type_arrow(*t), n));
                continue;
            };
            let mut mismatched = 0u64;
            let mut mismatch_kinds = BTreeMap::<&str, u64>::new();
            let mut first_bad: Option<u32> = None;
            let mut values: Vec<Option<&str>> = vec![None; n];
            for &(row, a, b) in &cells.cells {
                let raw = &self.payload_of(row as usize)[a as usize..b as usize];
                if fits(*t, raw) {
                    if raw != "null" {
                        values[row as usize] = Some(raw);
                    }
                } else {
                    mismatched += 1;
                    *mismatch_kinds.entry(seen_name(classify(raw))).or_insert(0) += 1;
                    first_bad.get_or_insert(row);
                    extra[row as usize].push((name.clone(), (row, a, b)));
                }
            }
            typed.push(typed_array(*t, &values)?);
            if mismatched > 0 {
                built.type_changes.push(Finding {
                    kind: "type_change",
                    field: name.clone(),
                    details: serde_json::json!({
                        "expected": t.to_string(),
                        "seen": mismatch_kinds,
                        "rows": mismatched,
                        "first_row_in_batch": first_bad,
                        "action": "rescued",
                    }),
                });
            }
        }
        for (name, cells) in &self.fields {
            if schema.get(name).is_some() {
                continue;
            }
            let clash = reserved(name) || schema.case_clash(name).is_some();
            if clash || mode == Mode::Rescue {
                for &c in &cells.cells {
                    extra[c.0 as usize].push((name.clone(), c));
                }
            }
        }
        // Merge rescued field values into each row's `_rescued_data` object.
        for (row, fields) in extra.iter().enumerate() {
            if fields.is_empty() {
                continue;
            }
            built.rescued_values += fields.len() as u64;
            let mut obj = match self.rescued[row].take() {
                Some(s) if s.len() > 2 => {
                    let mut s = s;
                    s.pop();
                    s
                }
                _ => String::from("{"),
            };
            for (k, (_, a, b)) in fields {
                if obj.len() > 1 {
                    obj.push(',');
                }
                obj.push_str(&serde_json::to_string(k).unwrap_or_else(|_| "\"?\"".into()));
                obj.push(':');
                obj.push_str(&self.payload_of(row)[*a as usize..*b as usize]);
            }
            obj.push('}');
            self.rescued[row] = Some(obj);
        }
        // The buffer becomes the column as it is (no copy); Arrow's `Utf8` offsets are 32-bit.
        let offsets = self
            .payload_offsets
            .iter()
            .map(|&o| i32::try_from(o))
            .collect::<std::result::Result<Vec<i32>, _>>()
            .map_err(|_| {
                Error::user(format!(
                    "a bronze batch of {} payload bytes exceeds the 2 GiB of one Arrow string column: lower bronze.max_bytes_per_batch",
                    self.payload.len()
                ))
            })?;
        let payload: ArrayRef = Arc::new(
            StringArray::try_new(
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                Buffer::from_vec(std::mem::take(&mut self.payload).into_bytes()),
                None,
            )
            .map_err(|e| Error::internal("building the payload column").with_source(e))?,
        );
        let rescued: ArrayRef = Arc::new(StringArray::from_iter(self.rescued.iter().map(|r| r.as_deref())));
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.src.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.workspace.finish()),
            Arc::new(self.customer.finish()),
            Arc::new(self.egress.finish()),
            payload,
            rescued,
            Arc::new(self.file.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.k_topic.finish()),
            Arc::new(self.k_partition.finish()),
            Arc::new(self.k_offset.finish()),
            Arc::new(self.k_ts.finish()),
            Arc::new(self.ingested.finish()),
            Arc::new(self.date.finish()),
        ];
        let mut fields: Vec<Field> = schemas::bronze().fields().iter().map(|f| f.as_ref().clone()).collect();
        for ((name, t), col) in schema.columns.iter().zip(typed) {
            fields.push(Field::new(name, schemas::field_type_arrow(*t), true));
            cols.push(col);
        }
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::internal("building bronze batch").with_source(e))?;
        built.batches.push(b);
        Ok(built)
    }
}

/// The raw values' bytes: a string column's capacity (escapes only shrink a value).
fn text_bytes(values: &[Option<&str>]) -> usize {
    values.iter().flatten().map(|v| v.len()).sum()
}

/// One typed column from raw values that already passed `fits`.
fn typed_array(t: FieldType, values: &[Option<&str>]) -> Result<ArrayRef> {
    Ok(match t {
        FieldType::String => {
            let mut b = StringBuilder::with_capacity(values.len(), text_bytes(values));
            for v in values {
                match v {
                    // Without escapes a JSON string's text between its quotes is its value.
                    Some(r) if r.len() >= 2 && !r.contains('\\') => b.append_value(&r[1..r.len() - 1]),
                    Some(r) => b.append_option(serde_json::from_str::<String>(r).ok()),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        FieldType::Json => {
            let mut b = StringBuilder::with_capacity(values.len(), text_bytes(values));
            for v in values {
                b.append_option(*v);
            }
            Arc::new(b.finish())
        }
        FieldType::Long => Arc::new(Int64Array::from_iter(values.iter().map(|v| v.and_then(|r| r.parse().ok())))),
        FieldType::Double => Arc::new(Float64Array::from_iter(values.iter().map(|v| v.and_then(|r| r.parse().ok())))),
        FieldType::Boolean => Arc::new(BooleanArray::from_iter(values.iter().map(|v| v.map(|r| r == "true")))),
        FieldType::Timestamp => Arc::new(
            TimestampMicrosecondArray::from_iter(values.iter().map(|v| v.and_then(parse_timestamp)))
                .with_timezone("UTC"),
        ),
        FieldType::Decimal { precision, scale } => Arc::new(
            Decimal128Array::from_iter(values.iter().map(|v| v.and_then(|r| parse_decimal(r, precision, scale))))
                .with_precision_and_scale(precision, scale)
                .map_err(|e| Error::internal("decimal column").with_source(e))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::Array;

    /// The payload column is the rows' payloads back to back, exactly as decoded; string
    /// columns unescape only what needs it; values that do not fit go to `_rescued_data`.
    #[test]
    fn payloads_and_typed_columns_come_out_of_the_shared_buffer_exactly() {
        let lines: [&[u8]; 4] = [
            br#"{"event_id":"a","event_time":1,"s":"plain","j":{"k":[1,2]},"n":5}"#,
            br#"{"event_id":"b","event_time":2,"s":"tab\there \"quoted\" \u00e9","n":"not a number"}"#,
            br#"{"event_id":"c","event_time":3,"s":null,"j":"x","n":-7}"#,
            br#"{"event_id":"d","event_time":4,"s":"","x_new":true}"#,
        ];
        let mut rows = BronzeRows::with_capacity("job", 0, 1, 8);
        let mut payloads = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let d = tributary_events::decode_event(l, "job", 1 << 16).unwrap();
            payloads.push(d.payload.clone());
            rows.push(d, &Lineage::File { path: "job/f.ndjson", line: i as i64 + 1 });
        }
        let schema = SourceSchema {
            version: 1,
            columns: vec![
                ("j".into(), FieldType::Json),
                ("n".into(), FieldType::Long),
                ("s".into(), FieldType::String),
            ],
        };
        let built = rows.finish(&schema, Mode::Rescue).unwrap();
        let b = &built.batches[0];
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let payload = col("payload");
        let payload = payload.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<&str> = payload.iter().map(|p| p.unwrap()).collect();
        assert_eq!(got, payloads);
        let s = col("s");
        let s = s.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(s.value(0), "plain");
        assert_eq!(s.value(1), "tab\there \"quoted\" é");
        assert!(s.is_null(2));
        assert_eq!(s.value(3), "");
        let j = col("j");
        let j = j.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(j.value(0), r#"{"k":[1,2]}"#);
        assert_eq!(j.value(2), r#""x""#, "any JSON value fits a JSON column, as its text");
        assert!(j.is_null(1) && j.is_null(3));
        let n = col("n");
        let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((n.value(0), n.is_null(1), n.value(2), n.is_null(3)), (5, true, -7, true));
        let rescued = col("_rescued_data");
        let rescued = rescued.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(rescued.value(1), r#"{"n":"not a number"}"#);
        assert_eq!(rescued.value(3), r#"{"x_new":true}"#, "rescue mode: a field without a column");
        assert!(rescued.is_null(0) && rescued.is_null(2));
        assert_eq!(built.rescued_values, 2);
    }
}

//! Order-independent fingerprints of table content: equal multisets of rows give equal
//! fingerprints whatever the file layout or row order (invariant 6).

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::row::{RowConverter, SortField};
use std::hash::{Hash, Hasher};
use tributary_core::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub rows: u64,
    pub sum: u64,
    pub sum_sq: u64,
    pub xor: u64,
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{:016x}{:016x}{:016x}", self.rows, self.sum, self.sum_sq, self.xor)
    }
}

/// Fingerprint of `columns` (in that order) over all batches.
pub fn fingerprint(batches: &[RecordBatch], columns: &[&str]) -> Result<Fingerprint> {
    let mut fp = Fingerprint::default();
    let Some(first) = batches.first() else {
        return Ok(fp);
    };
    let fields: Vec<SortField> = columns
        .iter()
        .map(|c| {
            first
                .schema()
                .field_with_name(c)
                .map(|f| SortField::new(f.data_type().clone()))
                .map_err(|e| Error::user(format!("fingerprint column {c}")).with_source(e))
        })
        .collect::<Result<_>>()?;
    let converter = RowConverter::new(fields).map_err(|e| Error::internal("row converter").with_source(e))?;
    for b in batches {
        let cols = columns
            .iter()
            .map(|c| b.column_by_name(c).cloned().ok_or_else(|| Error::user(format!("missing column {c}"))))
            .collect::<Result<Vec<_>>>()?;
        let rows = converter.convert_columns(&cols).map_err(|e| Error::internal("row conversion").with_source(e))?;
        for r in rows.iter() {
            let mut h = std::hash::DefaultHasher::new();
            r.as_ref().hash(&mut h);
            let x = h.finish();
            fp.rows += 1;
            fp.sum = fp.sum.wrapping_add(x);
            fp.sum_sq = fp.sum_sq.wrapping_add(x.wrapping_mul(x));
            fp.xor ^= x;
        }
    }
    Ok(fp)
}

/// Fingerprint of a table's logical columns (`tributary fingerprint`, clone checks).
pub async fn table_fingerprint(t: &crate::Table) -> Result<Fingerprint> {
    let batches = t.read_all().await?;
    let cols = crate::schemas::logical_columns(&t.schema());
    let cols: Vec<&str> = cols.iter().map(|s| s.as_str()).collect();
    fingerprint(&batches, &cols)
}

/// Fingerprint of a gold table's *net* content: per business key (window, region and the
/// table's grouping columns) the sum of its measures, whatever rows carried them. Two
/// pipelines fed the same events but in different batches (a DR primary and its scheduled
/// secondary) finalize windows at different watermarks: one writes a window once, the other
/// writes it and later a late-event correction row, with different `is_final`/`late_events`
/// bookkeeping. Their billing is the same; this fingerprint says so. Keys and measures are
/// taken from the table's columns: measures `dbu`, `event_count`; everything else but
/// bookkeeping is a key.
pub async fn net_fingerprint(t: &crate::Table) -> Result<Fingerprint> {
    use deltalake::arrow::array::{Array, ArrayRef, StringArray};
    use deltalake::arrow::datatypes::DataType;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    const MEASURES: &[&str] = &["dbu", "event_count"];
    const BOOKKEEPING: &[&str] = &[
        "is_final",
        "record_type",
        "reason",
        "late_events",
        "sources_reported",
        "completeness",
        "watermark",
        "updated_at",
        "_federated_at",
    ];
    let schema = t.schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let keys: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| !MEASURES.contains(n) && !BOOKKEEPING.contains(n)).collect();
    let measures: Vec<&str> = names.iter().map(String::as_str).filter(|n| MEASURES.contains(n)).collect();
    let text = |c: &ArrayRef| -> Result<ArrayRef> {
        deltalake::arrow::compute::cast(c, &DataType::Utf8)
            .map_err(|e| Error::internal("net fingerprint cast").with_source(e))
    };
    // Measures are summed as exact decimals: scaled to i128 at the column's scale.
    let mut acc: BTreeMap<String, Vec<i128>> = BTreeMap::new();
    for b in t.read_all().await? {
        let kc = keys
            .iter()
            .map(|k| b.column_by_name(k).ok_or_else(|| Error::internal(format!("no column {k}"))).and_then(text))
            .collect::<Result<Vec<_>>>()?;
        let mc = measures
            .iter()
            .map(|m| {
                let c = b.column_by_name(m).ok_or_else(|| Error::internal(format!("no column {m}")))?;
                let ty = match c.data_type() {
                    DataType::Decimal128(_, s) => DataType::Decimal128(38, *s),
                    _ => DataType::Decimal128(38, 0),
                };
                let d = deltalake::arrow::compute::cast(c, &ty)
                    .map_err(|e| Error::internal("measure cast").with_source(e))?;
                Ok(d.as_any()
                    .downcast_ref::<deltalake::arrow::array::Decimal128Array>()
                    .ok_or_else(|| Error::internal("measure column"))?
                    .clone())
            })
            .collect::<Result<Vec<_>>>()?;
        for i in 0..b.num_rows() {
            let mut key = String::new();
            for c in &kc {
                let s = c.as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::internal("key column"))?;
                key.push_str(if s.is_null(i) { "\u{0}" } else { s.value(i) });
                key.push('\u{1f}');
            }
            let sums = acc.entry(key).or_insert_with(|| vec![0; mc.len()]);
            for (j, m) in mc.iter().enumerate() {
                if m.is_valid(i) {
                    sums[j] += m.value(i);
                }
            }
        }
    }
    let mut cols: Vec<(String, ArrayRef)> =
        vec![("key".into(), Arc::new(StringArray::from(acc.keys().cloned().collect::<Vec<_>>())) as ArrayRef)];
    for (j, m) in measures.iter().enumerate() {
        cols.push((
            m.to_string(),
            Arc::new(StringArray::from(acc.values().map(|v| v[j].to_string()).collect::<Vec<_>>())),
        ));
    }
    let batch =
        RecordBatch::try_from_iter(cols).map_err(|e| Error::internal("net fingerprint batch").with_source(e))?;
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    fingerprint(&[batch], &names)
}

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

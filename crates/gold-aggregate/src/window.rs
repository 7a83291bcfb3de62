//! Pure window logic: silver rows → additive deltas → merged gold rows.

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Decimal128Builder, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::SchemaRef;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tributary_core::{Error, Result};
use tributary_delta::schemas;
use tributary_events::contract::{DECIMAL_PRECISION, DECIMAL_SCALE};

pub const MINUTE_US: i64 = 60_000_000;
pub const HOUR_US: i64 = 3_600_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldKind {
    EventCounts,
    Billing,
}

impl GoldKind {
    pub fn table_name(self) -> &'static str {
        match self {
            GoldKind::EventCounts => "event_counts_minute",
            GoldKind::Billing => "billing_usage_hourly",
        }
    }
    pub fn schema(self) -> SchemaRef {
        match self {
            GoldKind::EventCounts => schemas::gold_event_counts(),
            GoldKind::Billing => schemas::gold_billing(),
        }
    }
    pub fn window_us(self) -> i64 {
        match self {
            GoldKind::EventCounts => MINUTE_US,
            GoldKind::Billing => HOUR_US,
        }
    }
}

/// (window_start_us, a, b): counts → (source, workspace); billing → (customer, sku).
type Key = (i64, String, String);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    pub count: i64,
    /// Exact DBU at scale 9 (billing only).
    pub dbu: i128,
}

pub struct WindowState {
    kind: GoldKind,
    region: String,
    deltas: BTreeMap<Key, Agg>,
    max_event_time: Option<i64>,
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::internal(format!("batch lacks column {name} of the expected type")))
}

fn opt(a: &StringArray, i: usize) -> String {
    if a.is_valid(i) { a.value(i).to_string() } else { "unknown".into() }
}

impl WindowState {
    pub fn new(kind: GoldKind, region: &str) -> Self {
        Self { kind, region: region.into(), deltas: BTreeMap::new(), max_event_time: None }
    }

    /// Adds a silver batch; returns rows consumed.
    pub fn add_silver(&mut self, source: &str, b: &RecordBatch) -> Result<u64> {
        let times: &TimestampMicrosecondArray = col(b, "event_time")?;
        let w = self.kind.window_us();
        match self.kind {
            GoldKind::EventCounts => {
                let ws: &StringArray = col(b, "workspace_id")?;
                for i in 0..b.num_rows() {
                    let t = times.value(i);
                    self.max_event_time = Some(self.max_event_time.map_or(t, |m| m.max(t)));
                    let e = self.deltas.entry((t.div_euclid(w) * w, source.to_string(), opt(ws, i))).or_default();
                    e.count += 1;
                }
            }
            GoldKind::Billing => {
                let cust: &StringArray = col(b, "customer_id")?;
                let sku: &StringArray = col(b, "sku")?;
                let dbu: &Decimal128Array = col(b, "dbu")?;
                for i in 0..b.num_rows() {
                    let t = times.value(i);
                    self.max_event_time = Some(self.max_event_time.map_or(t, |m| m.max(t)));
                    let e = self.deltas.entry((t.div_euclid(w) * w, opt(cust, i), opt(sku, i))).or_default();
                    e.count += 1;
                    e.dbu += dbu.value(i);
                }
            }
        }
        Ok(b.num_rows() as u64)
    }

    pub fn max_event_time_us(&self) -> Option<i64> {
        self.max_event_time
    }

    /// Partitions (`event_date` of the window start) touched by the deltas.
    pub fn dates(&self) -> BTreeSet<String> {
        self.deltas.keys().map(|k| tributary_events::date_of_micros(k.0)).collect()
    }

    /// Merges the deltas into the current rows of `dates` and returns the new content of those
    /// partitions.
    pub fn merge_into(
        &self,
        current: &[RecordBatch],
        dates: &BTreeSet<String>,
        watermark: Option<i64>,
        now_us: i64,
    ) -> Result<Vec<RecordBatch>> {
        let mut all: BTreeMap<Key, Agg> = BTreeMap::new();
        for b in current {
            let starts: &TimestampMicrosecondArray = col(b, "window_start")?;
            let counts: &Int64Array = col(b, "event_count")?;
            let (a, c): (&StringArray, &StringArray) = match self.kind {
                GoldKind::EventCounts => (col(b, "source")?, col(b, "workspace_id")?),
                GoldKind::Billing => (col(b, "customer_id")?, col(b, "sku")?),
            };
            let dbu: Option<&Decimal128Array> = match self.kind {
                GoldKind::Billing => Some(col(b, "dbu")?),
                GoldKind::EventCounts => None,
            };
            for i in 0..b.num_rows() {
                let e = all.entry((starts.value(i), a.value(i).to_string(), c.value(i).to_string())).or_default();
                e.count += counts.value(i);
                if let Some(d) = dbu {
                    e.dbu += d.value(i);
                }
            }
        }
        for (k, d) in &self.deltas {
            let e = all.entry(k.clone()).or_default();
            e.count += d.count;
            e.dbu += d.dbu;
        }
        all.retain(|k, _| dates.contains(&tributary_events::date_of_micros(k.0)));
        if all.is_empty() {
            return Ok(vec![]);
        }
        let w = self.kind.window_us();
        let n = all.len();
        let ts = |vals: Vec<Option<i64>>| -> ArrayRef {
            let mut b = TimestampMicrosecondBuilder::with_capacity(vals.len()).with_timezone("UTC");
            for v in vals {
                b.append_option(v);
            }
            Arc::new(b.finish())
        };
        let starts: Vec<Option<i64>> = all.keys().map(|k| Some(k.0)).collect();
        let ends: Vec<Option<i64>> = all.keys().map(|k| Some(k.0 + w)).collect();
        let finals: Vec<bool> = all.keys().map(|k| watermark.is_some_and(|wm| k.0 + w <= wm)).collect();
        let region: ArrayRef = Arc::new(StringArray::from(vec![self.region.clone(); n]));
        let a: ArrayRef = Arc::new(StringArray::from(all.keys().map(|k| k.1.clone()).collect::<Vec<_>>()));
        let c: ArrayRef = Arc::new(StringArray::from(all.keys().map(|k| k.2.clone()).collect::<Vec<_>>()));
        let counts: ArrayRef = Arc::new(Int64Array::from_iter_values(all.values().map(|v| v.count)));
        let mut cols: Vec<ArrayRef> = vec![ts(starts), ts(ends), region, a, c];
        if self.kind == GoldKind::Billing {
            let mut b = Decimal128Builder::with_capacity(n)
                .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
                .map_err(|e| Error::internal("decimal type").with_source(e))?;
            for v in all.values() {
                b.append_value(v.dbu);
            }
            cols.push(Arc::new(b.finish()));
        }
        cols.push(counts);
        cols.push(Arc::new(BooleanArray::from(finals)));
        cols.push(ts(vec![watermark; n]));
        cols.push(ts(vec![Some(now_us); n]));
        cols.push(Arc::new(StringArray::from(
            all.keys().map(|k| tributary_events::date_of_micros(k.0)).collect::<Vec<_>>(),
        )));
        let b = RecordBatch::try_new(self.kind.schema(), cols)
            .map_err(|e| Error::internal(format!("building gold/{} batch", self.kind.table_name())).with_source(e))?;
        Ok(vec![b])
    }
}

/// Largest `watermark` value in the batches.
pub fn max_watermark(batches: &[RecordBatch]) -> Result<Option<i64>> {
    let mut m: Option<i64> = None;
    for b in batches {
        let w: &TimestampMicrosecondArray = col(b, "watermark")?;
        for i in 0..w.len() {
            if w.is_valid(i) {
                m = Some(m.map_or(w.value(i), |x| x.max(w.value(i))));
            }
        }
    }
    Ok(m)
}

/// (customer, sku, window_start_us) -> (dbu at scale 9, events).
pub type BillingSums = BTreeMap<(String, String, i64), (i128, i64)>;

/// (customer, sku, window_start_us) -> (dbu at scale 9, events), from gold billing rows.
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

    #[test]
    fn finality_follows_watermark() {
        let st = WindowState::new(GoldKind::EventCounts, "r");
        let mut s2 = st;
        s2.deltas.insert((0, "job".into(), "w".into()), Agg { count: 2, dbu: 0 });
        s2.deltas.insert((MINUTE_US, "job".into(), "w".into()), Agg { count: 1, dbu: 0 });
        let dates = s2.dates();
        let out = s2.merge_into(&[], &dates, Some(MINUTE_US), 0).unwrap();
        let f = out[0].column_by_name("is_final").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
        assert!(f.value(0), "window [0,60s) ends at the watermark: final");
        assert!(!f.value(1));
        // Merging the output again as current doubles counts (additive), proving merge reads it.
        let again = s2.merge_into(&out, &dates, Some(MINUTE_US), 0).unwrap();
        let c = again[0].column_by_name("event_count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(c.value(0), 4);
    }
}

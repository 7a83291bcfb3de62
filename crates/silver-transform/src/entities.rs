//! Entity tables upserted by key with SEQUENCE BY ordering, as DLT's AUTO CDC does.
//!
//! For each `[[silver.entities]]` (defaults: `job_runs` by `run_id` sequenced by `sequence`,
//! deleted when `state = 'DELETED'`; `clusters` by `cluster_id` sequenced by `event_time`):
//! - `silver/<name>_history` (SCD type 2): one row per change of a key, ordered by
//!   (sequence, event_id), with `__start_at` = its sequence, `__end_at` = the next change's
//!   sequence (NULL for the latest) and `__deleted` (a delete change: the key is absent over
//!   `[__start_at, __end_at)`, the tombstone that keeps an older upsert arriving later from
//!   resurrecting it);
//! - `silver/<name>` (SCD type 1): the current row of every live key (its latest change, unless
//!   that is a delete), with `__start_at`.
//!
//! Both are a pure function of the *set* of changes per key ([`apply`]), so they are the same
//! whatever the arrival order and an older event never overwrites a newer one; ties on the
//! sequence are broken by event_id. Input is the deduplicated silver table of the source, read
//! incrementally; the touched hash buckets (`__bucket`, the partition column) of both tables are
//! rewritten per batch, each commit carrying `txn(<pipeline>/silver/<region>/entity/<name>[/history],
//! silver version)`. Rows with a NULL key or sequence are not applied (counted, logged; they stay
//! in the silver table).

use crate::expectations::Expectation;
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tributary_core::config::{EntityConfig, ExpectationConfig};
use tributary_core::event_log::{self, Level};
use tributary_core::metrics::BatchCommitted;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::{Commit, PositionMove, Table, Writer, schemas};

/// Silver columns that are not entity attributes (raw payload, lineage, processing time).
const NOT_ENTITY: &[&str] = &[
    "payload",
    "_rescued_data",
    "_source_file",
    "_source_line",
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_bronze_version",
    "_ingested_at",
    "event_date",
];
pub const BUCKETS: u32 = 16;

/// One change of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub seq: i64,
    pub event_id: String,
    pub deleted: bool,
}

/// One SCD2 row: the change at `idx`, valid over `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub idx: usize,
    pub start: i64,
    pub end: Option<i64>,
    pub deleted: bool,
}

/// SCD2 history (every change, ordered by key, sequence, event_id) and SCD1 current state (the
/// index of each live key's latest change) of a set of changes. Changes with the same event_id
/// count once. Independent of the order of `changes`.
pub fn apply(changes: &[Change]) -> (Vec<Version>, Vec<usize>) {
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by(|a, b| {
        let (x, y) = (&changes[*a], &changes[*b]);
        (&x.key, x.seq, &x.event_id).cmp(&(&y.key, y.seq, &y.event_id))
    });
    let mut seen = HashSet::new();
    order.retain(|i| seen.insert(changes[*i].event_id.as_str()));
    let mut history = Vec::with_capacity(order.len());
    let mut current = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        let c = &changes[i];
        let next = order.get(pos + 1).map(|&j| &changes[j]).filter(|n| n.key == c.key);
        history.push(Version { idx: i, start: c.seq, end: next.map(|n| n.seq), deleted: c.deleted });
        if next.is_none() && !c.deleted {
            current.push(i);
        }
    }
    (history, current)
}

pub fn key_bucket(key: &str) -> u32 {
    crate::dedup::bucket_of(key, BUCKETS)
}

pub struct EntityFlow {
    pub spec: EntityConfig,
    region: String,
    pub current: Table,
    pub history: Table,
    writer: Writer,
    input_location: String,
    input: Option<Table>,
    pub app_current: String,
    pub app_history: String,
    pub current_pos: i64,
    pub history_pos: i64,
    delete_when: Option<Expectation>,
    entity: SchemaRef,
    seq_type: DataType,
}

fn entity_schema(silver: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        silver.fields().iter().filter(|f| !NOT_ENTITY.contains(&f.name().as_str())).cloned().collect::<Vec<_>>(),
    ))
}

fn with_fields(base: &Schema, extra: Vec<Field>) -> SchemaRef {
    let mut f: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
    f.extend(extra);
    Arc::new(Schema::new(f))
}

pub fn history_schema(entity: &Schema, seq: &DataType) -> SchemaRef {
    with_fields(
        entity,
        vec![
            Field::new("__start_at", seq.clone(), false),
            Field::new("__end_at", seq.clone(), true),
            Field::new("__deleted", DataType::Boolean, false),
            Field::new("__bucket", DataType::Utf8, false),
        ],
    )
}

pub fn current_schema(entity: &Schema, seq: &DataType) -> SchemaRef {
    with_fields(
        entity,
        vec![Field::new("__start_at", seq.clone(), false), Field::new("__bucket", DataType::Utf8, false)],
    )
}

pub fn current_location(cfg: &Config, region: &str, name: &str) -> String {
    cfg.region_table(region, &format!("silver/{name}"))
}
pub fn history_location(cfg: &Config, region: &str, name: &str) -> String {
    cfg.region_table(region, &format!("silver/{name}_history"))
}

fn seq_array(t: &DataType, v: Vec<Option<i64>>) -> ArrayRef {
    match t {
        DataType::Int64 => Arc::new(Int64Array::from(v)),
        _ => Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")),
    }
}

fn seq_values(a: &ArrayRef) -> Result<Vec<Option<i64>>> {
    if let Some(x) = a.as_any().downcast_ref::<Int64Array>() {
        return Ok((0..x.len()).map(|i| x.is_valid(i).then(|| x.value(i))).collect());
    }
    if let Some(x) = a.as_any().downcast_ref::<TimestampMicrosecondArray>() {
        return Ok((0..x.len()).map(|i| x.is_valid(i).then(|| x.value(i))).collect());
    }
    Err(Error::internal(format!("sequence column of type {} (want integer or timestamp)", a.data_type())))
}

fn string_col(b: &RecordBatch, name: &str) -> Result<StringArray> {
    let c = b.column_by_name(name).ok_or_else(|| Error::internal(format!("batch lacks column {name}")))?;
    let c = deltalake::arrow::compute::cast(c, &DataType::Utf8)
        .map_err(|e| Error::internal(format!("column {name} as text")).with_source(e))?;
    c.as_any().downcast_ref::<StringArray>().cloned().ok_or_else(|| Error::internal("cast to text"))
}

fn project(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| {
            b.column_by_name(f.name()).cloned().ok_or_else(|| Error::internal(format!("batch lacks {}", f.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::internal("projecting entity columns").with_source(e))
}

/// Keys (joined with U+001F), one per row; `None` when any key column is NULL.
fn keys_of(b: &RecordBatch, keys: &[String]) -> Result<Vec<Option<String>>> {
    let cols = keys.iter().map(|k| string_col(b, k)).collect::<Result<Vec<_>>>()?;
    Ok((0..b.num_rows())
        .map(|i| {
            if cols.iter().any(|c| c.is_null(i)) {
                None
            } else {
                Some(cols.iter().map(|c| c.value(i)).collect::<Vec<_>>().join("\u{1f}"))
            }
        })
        .collect())
}

impl EntityFlow {
    pub async fn build(cfg: &Config, region: &str, spec: &EntityConfig) -> Result<Self> {
        let silver = schemas::silver(&spec.source);
        let entity = entity_schema(&silver);
        for k in &spec.keys {
            if entity.field_with_name(k).is_err() {
                return Err(Error::user(format!(
                    "silver.entities.{}: key column {k:?} is not a column of silver/{}",
                    spec.name, spec.source
                )));
            }
        }
        let seq_type = match entity.field_with_name(&spec.sequence_by).map(|f| f.data_type().clone()) {
            Ok(t @ DataType::Int64) | Ok(t @ DataType::Timestamp(_, _)) => t,
            _ => {
                return Err(Error::user(format!(
                    "silver.entities.{}: sequence_by {:?} must be an integer or timestamp column of silver/{}",
                    spec.name, spec.sequence_by, spec.source
                )));
            }
        };
        let delete_when = match &spec.delete_when {
            Some(expr) => Some(Expectation::compile(
                &ExpectationConfig {
                    name: format!("{}_delete_when", spec.name),
                    table: spec.source.clone(),
                    expr: expr.clone(),
                    action: "warn".into(),
                },
                &format!("silver/{}", spec.source),
                &silver,
            )?),
            None => None,
        };
        let current = Table::open_or_create(
            &format!("silver/{}", spec.name),
            &current_location(cfg, region, &spec.name),
            current_schema(&entity, &seq_type),
            &["__bucket"],
        )
        .await?;
        let history = Table::open_or_create(
            &format!("silver/{}_history", spec.name),
            &history_location(cfg, region, &spec.name),
            history_schema(&entity, &seq_type),
            &["__bucket"],
        )
        .await?;
        let app = tributary_delta::catalog::silver_entity_app_id(cfg, region, &spec.name);
        let mut me = Self {
            spec: spec.clone(),
            region: region.into(),
            current,
            history,
            writer: Writer::new(crate::STAGE, region, cfg),
            input_location: crate::table_location(cfg, region, &spec.source),
            input: None,
            app_history: format!("{app}/history"),
            app_current: app,
            current_pos: -1,
            history_pos: -1,
            delete_when,
            entity,
            seq_type,
        };
        me.recover().await?;
        Ok(me)
    }

    pub async fn recover(&mut self) -> Result<()> {
        self.current.refresh().await?;
        self.history.refresh().await?;
        self.current_pos = self.current.txn_version(&self.app_current).await?.unwrap_or(-1);
        self.history_pos = self.history.txn_version(&self.app_history).await?.unwrap_or(-1);
        Ok(())
    }

    /// One batch: silver versions after the lagging output's position, applied to both tables.
    pub async fn run(&mut self, max_versions: i64, max_bytes: u64) -> Result<u64> {
        if self.input.is_none() {
            // The entity's columns (not `payload`, `_rescued_data`, lineage), and any of those the
            // keys, ordering or delete condition name.
            let spec = &self.spec;
            let named = |c: &&&str| {
                spec.keys.iter().any(|k| k == **c)
                    || spec.sequence_by == **c
                    || spec.delete_when.as_deref().is_some_and(|e| e.contains(**c))
            };
            let columns: Vec<String> = self
                .entity
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .chain(NOT_ENTITY.iter().filter(named).map(|c| c.to_string()))
                .collect();
            self.input = Table::open_existing(&format!("silver/{}", self.spec.source), &self.input_location)
                .await?
                .map(|t| t.reading_only(columns));
        }
        let Some(input) = self.input.as_mut() else { return Ok(0) };
        let latest = input.latest_version().await?;
        let Some(input) = self.input.as_ref() else { return Ok(0) };
        let lo = self.current_pos.min(self.history_pos);
        let hi = self.current_pos.max(self.history_pos);
        // A crash between the two commits: the lagging table catches up to exactly the other.
        let (up_to, max_bytes) = if lo != hi { (hi, u64::MAX) } else { (latest.min(lo + max_versions), max_bytes) };
        if up_to <= lo {
            return Ok(0);
        }
        let (up_to, read) = input.read_versions_within(lo, up_to, max_bytes).await?;
        let started = Instant::now();
        self.history.expect_positions(&[(&self.app_history, self.history_pos)], -1).await?;
        self.current.expect_positions(&[(&self.app_current, self.current_pos)], -1).await?;
        let mut new_rows: Vec<RecordBatch> = Vec::new();
        let mut new_changes: Vec<Change> = Vec::new();
        let mut skipped = 0u64;
        let mut input_rows = 0u64;
        for (_, b) in read {
            {
                input_rows += b.num_rows() as u64;
                let keys = keys_of(&b, &self.spec.keys)?;
                let seqs = seq_values(
                    b.column_by_name(&self.spec.sequence_by).ok_or_else(|| Error::internal("no sequence column"))?,
                )?;
                let ids = string_col(&b, "event_id")?;
                let deleted = match &self.delete_when {
                    Some(e) => e.evaluate(&b)?,
                    None => vec![false; b.num_rows()],
                };
                let mut keep = vec![false; b.num_rows()];
                for i in 0..b.num_rows() {
                    match (&keys[i], seqs[i]) {
                        (Some(k), Some(s)) => {
                            keep[i] = true;
                            new_changes.push(Change {
                                key: k.clone(),
                                seq: s,
                                event_id: ids.value(i).to_string(),
                                deleted: deleted[i],
                            });
                        }
                        _ => skipped += 1,
                    }
                }
                let kept = deltalake::arrow::compute::filter_record_batch(&b, &BooleanArray::from(keep))
                    .map_err(|e| Error::internal("filtering entity rows").with_source(e))?;
                new_rows.push(project(&kept, &self.entity)?);
            }
        }
        let touched: BTreeSet<String> = new_changes.iter().map(|c| format!("{:04}", key_bucket(&c.key))).collect();
        // The touched buckets' history: every change applied so far to those keys.
        let mut old_hist_files = HashSet::new();
        let mut rows: Vec<RecordBatch> = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        for f in self.history.files()? {
            if !f.partition_values.get("__bucket").and_then(|v| v.clone()).is_some_and(|b| touched.contains(&b)) {
                continue;
            }
            old_hist_files.insert(f.path.clone());
            for b in self.history.read_file(&f.path, Some(f.size), &f.partition_values).await? {
                let keys = keys_of(&b, &self.spec.keys)?;
                let seqs = seq_values(b.column_by_name("__start_at").ok_or_else(|| Error::internal("no __start_at"))?)?;
                let ids = string_col(&b, "event_id")?;
                let del = b
                    .column_by_name("__deleted")
                    .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                    .ok_or_else(|| Error::internal("no __deleted"))?;
                for i in 0..b.num_rows() {
                    changes.push(Change {
                        key: keys[i].clone().unwrap_or_default(),
                        seq: seqs[i].unwrap_or_default(),
                        event_id: ids.value(i).to_string(),
                        deleted: del.value(i),
                    });
                }
                rows.push(project(&b, &self.entity)?);
            }
        }
        let old_changes = changes.len();
        changes.extend(new_changes);
        rows.extend(new_rows);
        let all = deltalake::arrow::compute::concat_batches(&self.entity, &rows)
            .map_err(|e| Error::internal("concatenating entity rows").with_source(e))?;
        let (versions, live) = apply(&changes);
        let bucket_of_idx = |i: usize| format!("{:04}", key_bucket(&changes[i].key));
        let take = |idx: Vec<u32>| -> Result<Vec<ArrayRef>> {
            let idx = UInt32Array::from(idx);
            all.columns()
                .iter()
                .map(|c| {
                    deltalake::arrow::compute::take(c, &idx, None)
                        .map_err(|e| Error::internal("selecting entity rows").with_source(e))
                })
                .collect()
        };
        let mut hcols = take(versions.iter().map(|v| v.idx as u32).collect())?;
        hcols.push(seq_array(&self.seq_type, versions.iter().map(|v| Some(v.start)).collect()));
        hcols.push(seq_array(&self.seq_type, versions.iter().map(|v| v.end).collect()));
        hcols.push(Arc::new(BooleanArray::from(versions.iter().map(|v| v.deleted).collect::<Vec<_>>())));
        hcols.push(Arc::new(StringArray::from(versions.iter().map(|v| bucket_of_idx(v.idx)).collect::<Vec<_>>())));
        let hist_batch = RecordBatch::try_new(self.history.schema(), hcols)
            .map_err(|e| Error::internal("building entity history").with_source(e))?;
        let mut ccols = take(live.iter().map(|i| *i as u32).collect())?;
        ccols.push(seq_array(&self.seq_type, live.iter().map(|i| Some(changes[*i].seq)).collect()));
        ccols.push(Arc::new(StringArray::from(live.iter().map(|i| bucket_of_idx(*i)).collect::<Vec<_>>())));
        let cur_batch = RecordBatch::try_new(self.current.schema(), ccols)
            .map_err(|e| Error::internal("building entity current state").with_source(e))?;
        let applied = (changes.len() - old_changes) as u64;
        let meta = HashMap::from([(
            "tributary.entity".to_string(),
            serde_json::json!({"input_from": lo + 1, "input_to": up_to, "input_rows": input_rows,
                               "applied": applied, "skipped_null_key_or_sequence": skipped,
                               "buckets": touched.len()}),
        )]);
        let name = self.spec.name.clone();
        let mut version = -1;
        if self.history_pos < up_to {
            let moves = vec![PositionMove { app_id: self.app_history.clone(), from: self.history_pos, to: up_to }];
            version = self
                .history
                .commit_batch(
                    Commit::new(std::slice::from_ref(&hist_batch), moves, meta.clone(), -1).replacing(old_hist_files),
                    &self.writer,
                )
                .await?;
            self.history_pos = up_to;
        }
        fault::point("silver.entity_after_history_commit");
        if self.current_pos < up_to {
            let old_cur: HashSet<String> = self
                .current
                .files()?
                .into_iter()
                .filter(|f| {
                    f.partition_values.get("__bucket").and_then(|v| v.clone()).is_some_and(|b| touched.contains(&b))
                })
                .map(|f| f.path)
                .collect();
            let moves = vec![PositionMove { app_id: self.app_current.clone(), from: self.current_pos, to: up_to }];
            version = self
                .current
                .commit_batch(
                    Commit::new(std::slice::from_ref(&cur_batch), moves, meta, -1).replacing(old_cur),
                    &self.writer,
                )
                .await?;
            self.current_pos = up_to;
        }
        if skipped > 0 {
            event_log::emit(
                Level::Warn,
                crate::STAGE,
                &self.region,
                &format!("silver/{name}"),
                "entity_rows_skipped",
                serde_json::json!({"rows": skipped, "reason": "NULL key or sequence column", "keys": self.spec.keys,
                                   "sequence_by": self.spec.sequence_by, "input_from": lo + 1, "input_to": up_to}),
            );
        }
        BatchCommitted {
            stage: crate::STAGE,
            region: &self.region,
            table: &format!("silver/{name}"),
            version,
            input_rows,
            written: applied,
            quarantined: 0,
            duplicates: 0,
            dropped: skipped,
            seconds: started.elapsed().as_secs_f64(),
            input_position: &format!("{}={up_to}", self.app_current),
            // Entity tables are keyed by a sequence column, not event time.
            max_event_ms: 0,
        }
        .emit();
        Ok(input_rows.max(1))
    }
}

/// (key, event_id, start, end, deleted) of a history table and (key, event_id) of a current
/// table, for comparisons in tests.
pub fn snapshot(history: &[RecordBatch], current: &[RecordBatch], keys: &[String]) -> Result<EntitySnapshot> {
    let mut h = BTreeSet::new();
    for b in history {
        let k = keys_of(b, keys)?;
        let ids = string_col(b, "event_id")?;
        let s = seq_values(b.column_by_name("__start_at").ok_or_else(|| Error::internal("no __start_at"))?)?;
        let e = seq_values(b.column_by_name("__end_at").ok_or_else(|| Error::internal("no __end_at"))?)?;
        let d = b
            .column_by_name("__deleted")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .ok_or_else(|| Error::internal("no __deleted"))?;
        for i in 0..b.num_rows() {
            h.insert((k[i].clone().unwrap_or_default(), ids.value(i).to_string(), s[i].unwrap_or(0), e[i], d.value(i)));
        }
    }
    let mut c = BTreeMap::new();
    for b in current {
        let k = keys_of(b, keys)?;
        let ids = string_col(b, "event_id")?;
        for (i, key) in k.into_iter().enumerate() {
            c.insert(key.unwrap_or_default(), ids.value(i).to_string());
        }
    }
    Ok(EntitySnapshot { history: h, current: c })
}

#[derive(Debug, PartialEq, Eq)]
pub struct EntitySnapshot {
    pub history: BTreeSet<(String, String, i64, Option<i64>, bool)>,
    pub current: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(key: &str, seq: i64, id: &str, deleted: bool) -> Change {
        Change { key: key.into(), seq, event_id: id.into(), deleted }
    }

    /// The observable result: history rows and the current row per key, by event_id.
    type HistoryRow = (String, String, i64, Option<i64>, bool);

    fn result(changes: &[Change]) -> (Vec<HistoryRow>, BTreeMap<String, String>) {
        let (h, c) = apply(changes);
        let hist = h
            .iter()
            .map(|v| (changes[v.idx].key.clone(), changes[v.idx].event_id.clone(), v.start, v.end, v.deleted))
            .collect();
        let cur = c.iter().map(|i| (changes[*i].key.clone(), changes[*i].event_id.clone())).collect();
        (hist, cur)
    }

    #[test]
    fn older_event_arriving_late_never_overwrites_and_deletes_are_tombstones() {
        // run-1: RUNNING(2) arrives, then PENDING(1) late: current stays RUNNING.
        let late = [ch("run-1", 2, "b", false), ch("run-1", 1, "a", false)];
        let (h, c) = result(&late);
        assert_eq!(c["run-1"], "b");
        assert_eq!(
            h,
            vec![("run-1".into(), "a".into(), 1, Some(2), false), ("run-1".into(), "b".into(), 2, None, false)]
        );
        // A delete at 5, then an older upsert at 3 arrives: still deleted, history [3,5) then tombstone.
        let del = [ch("k", 5, "d", true), ch("k", 3, "u", false)];
        let (h, c) = result(&del);
        assert!(c.is_empty());
        assert_eq!(h, vec![("k".into(), "u".into(), 3, Some(5), false), ("k".into(), "d".into(), 5, None, true)]);
        // A newer upsert after a delete brings the key back.
        let back = [ch("k", 5, "d", true), ch("k", 7, "n", false)];
        assert_eq!(result(&back).1["k"], "n");
    }

    fn arb_changes() -> impl Strategy<Value = Vec<Change>> {
        prop::collection::vec((0u8..6, 0i64..10, any::<bool>()), 1..60).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (k, s, d))| ch(&format!("key-{k}"), s, &format!("ev-{i:03}"), d && i % 3 == 0))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

        /// Any arrival order, delivered in any batches (each merged into the history the way the
        /// flow does it, with replays of already-applied changes), gives the same SCD1 and SCD2
        /// as applying the set at once, and that result is the SEQUENCE BY semantics.
        #[test]
        fn same_result_whatever_the_arrival_order(
            changes in arb_changes(),
            perm in any::<u64>(),
            cuts in prop::collection::vec(1usize..8, 1..10),
            replay in any::<bool>(),
        ) {
            let once = result(&changes);
            // Deterministic shuffle from `perm`.
            let mut order: Vec<Change> = changes.clone();
            let mut x = perm | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            // Incremental: state = the history's changes; each batch merged into it.
            let mut state: Vec<Change> = Vec::new();
            let mut at = 0;
            let mut ci = 0;
            while at < order.len() {
                let n = cuts[ci % cuts.len()].min(order.len() - at);
                ci += 1;
                let mut batch: Vec<Change> = state.clone();
                batch.extend(order[at..at + n].iter().cloned());
                if replay && at > 0 {
                    batch.push(order[at - 1].clone()); // a replayed change counts once
                }
                let (h, _) = apply(&batch);
                state = h.iter().map(|v| Change { key: batch[v.idx].key.clone(), seq: v.start,
                    event_id: batch[v.idx].event_id.clone(), deleted: v.deleted }).collect();
                at += n;
            }
            let incremental = result(&state);
            prop_assert_eq!(&incremental, &once);
            // The semantics: per key, the max (seq, event_id) change decides the current state.
            let mut best: BTreeMap<String, &Change> = BTreeMap::new();
            for c in &changes {
                let e = best.entry(c.key.clone()).or_insert(c);
                if (c.seq, &c.event_id) > (e.seq, &e.event_id) { *e = c; }
            }
            let want: BTreeMap<String, String> =
                best.into_iter().filter(|(_, c)| !c.deleted).map(|(k, c)| (k, c.event_id.clone())).collect();
            prop_assert_eq!(&once.1, &want);
            // History: every change once; per key, each row ends where the next starts.
            prop_assert_eq!(once.0.len(), changes.len());
        }
    }
}

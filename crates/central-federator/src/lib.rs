//! central-federator: every configured region's silver and gold → the central tables.
//!
//! - `central/events`: the egress-approved rows (policy field from config, default
//!   `egress_approved = true`) of every region's silver tables, appended with
//!   `txn(<pipeline>/central/<region>/silver/<source>, silver version)`.
//! - `central/event_counts_minute`, `central/billing_usage_hourly`: mirrors of each region's gold
//!   tables, partitioned by (region, event_date). When a region's gold rewrites a date, the
//!   federator replaces exactly that (region, date) partition with the content of the region's
//!   gold snapshot, with `txn(<pipeline>/central/<region>/gold/<table>, gold version)`.
//!
//! Many regions' federators commit to the same central tables at once: their commits touch
//! different app_ids and different files, so Delta's conflict checker lets them through, and
//! races for the next version are retried with backoff and jitter. A region never waits for the
//! centre: the federator only reads regional tables, and after a partition it catches up from
//! the recorded positions.

pub mod overlap;

use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tributary_core::metrics::BatchCommitted;
use tributary_core::stage::Stage;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::catalog::{self, GoldKind};
use tributary_delta::{Commit, PositionMove, Table, Writer, schemas};
use tributary_proto::v1::{InputPosition, StageStatus};

pub use tributary_delta::dr;

pub const STAGE: &str = "federator";

struct Input {
    name: String,
    app_id: String,
    location: String,
    table: Option<Table>,
    pos: i64,
    /// The columns read from the table (`None`: all of them).
    columns: Option<Vec<String>>,
}

impl Input {
    async fn open(&mut self) -> Result<bool> {
        if self.table.is_none() {
            self.table = Table::open_existing(&self.name, &self.location).await?.map(|t| match &self.columns {
                Some(c) => t.reading_only(c),
                None => t,
            });
        }
        Ok(self.table.is_some())
    }
}

/// The silver columns federation reads: central's (the typed source fields, `_rescued_data` and
/// the lineage stay in the region) and the egress policy's field when it is a column.
fn silver_columns(cfg: &Config) -> Vec<String> {
    let mut c: Vec<String> = schemas::central_events().fields().iter().map(|f| f.name().clone()).collect();
    c.push(cfg.federator.egress_field.clone());
    c
}

struct RegionFeed {
    region: String,
    silver: Vec<(String, Input)>,
    gold: Vec<(GoldKind, Input)>,
    /// Per gold input: the gold version whose watermarks `central/region_watermarks` holds
    /// (its txn, read on recover; so an idle poll does no I/O for it).
    watermarks_pos: Vec<i64>,
    /// DR (`dr.role` set): the epoch (raw `txn` value, -1 = no switch recorded) this feed's
    /// positions are bound to; `None` until the first poll reads it.
    epoch: Option<i64>,
    /// DR: the side serving this region when it is not this one (the feed stands by).
    standby: Option<&'static str>,
    /// DR, after a switch: which event_ids central already holds for this region (written by
    /// the other side), in bounded memory; rows of this side's silver with those ids are not
    /// appended again.
    overlap: Option<overlap::Overlap>,
}

pub struct CentralFederator {
    cfg: Arc<Config>,
    label: String,
    feeds: Vec<RegionFeed>,
    events: Table,
    gold: Vec<(GoldKind, Table)>,
    /// `central/region_watermarks`: per region, gold table and source, the max committed
    /// event_time and watermark the region's gold was computed with.
    watermarks: Table,
    /// Per region: a failing region backs off alone.
    health: tributary_core::stage::FlowHealth,
}

pub use tributary_delta::catalog::{
    central_events_location as events_location, central_gold_location as gold_location,
    central_watermarks_location as watermarks_location,
};

pub use tributary_delta::schemas::central_watermarks as watermarks_schema;

impl CentralFederator {
    /// Builds a federator for `regions` (each must be in the config).
    pub async fn build(cfg: Arc<Config>, regions: &[String]) -> Result<Self> {
        for r in regions {
            if !cfg.regions.contains(r) {
                return Err(Error::user(format!("region {r:?} is not in the config's regions {:?}", cfg.regions)));
            }
        }
        let events = Table::open_or_create(
            "central/events",
            &events_location(&cfg),
            schemas::central_events(),
            schemas::CENTRAL_PARTITIONS,
        )
        .await?;
        let mut gold = Vec::new();
        for kind in GoldKind::ALL {
            let t = Table::open_or_create(
                &format!("central/{}", kind.table_name()),
                &gold_location(&cfg, kind),
                schemas::central_gold(kind.schema()),
                schemas::CENTRAL_PARTITIONS,
            )
            .await?;
            gold.push((kind, t));
        }
        let watermarks = Table::open_or_create(
            "central/region_watermarks",
            &watermarks_location(&cfg),
            watermarks_schema(),
            &["region", "gold_table"],
        )
        .await?;
        let feeds: Vec<RegionFeed> = regions
            .iter()
            .map(|r| RegionFeed {
                region: r.clone(),
                silver: cfg
                    .bronze
                    .sources
                    .iter()
                    .map(|s| {
                        (
                            s.clone(),
                            Input {
                                name: format!("{r}/silver/{s}"),
                                app_id: catalog::central_silver_app_id(&cfg, r, s),
                                location: catalog::silver_location(&cfg, r, s),
                                table: None,
                                pos: -1,
                                columns: Some(silver_columns(&cfg)),
                            },
                        )
                    })
                    .collect(),
                gold: GoldKind::ALL
                    .into_iter()
                    .map(|k| {
                        (
                            k,
                            Input {
                                name: format!("{r}/gold/{}", k.table_name()),
                                app_id: catalog::central_gold_app_id(&cfg, r, k),
                                location: catalog::gold_location(&cfg, r, k),
                                table: None,
                                pos: -1,
                                columns: None,
                            },
                        )
                    })
                    .collect(),
                watermarks_pos: vec![-1; GoldKind::ALL.len()],
                epoch: None,
                standby: None,
                overlap: None,
            })
            .collect();
        let label = regions.join(",");
        let health = tributary_core::stage::FlowHealth::new(feeds.len());
        let mut me = Self { cfg, label, feeds, events, gold, watermarks, health };
        me.recover().await?;
        Ok(me)
    }

    fn egress_mask(&self, b: &RecordBatch) -> Result<Vec<bool>> {
        let field = &self.cfg.federator.egress_field;
        if let Some(c) = b.column_by_name(field).and_then(|c| c.as_any().downcast_ref::<BooleanArray>()) {
            return Ok((0..c.len()).map(|i| c.is_valid(i) && c.value(i)).collect());
        }
        // Policy on a payload field: only a JSON `true` approves egress.
        let payload = b
            .column_by_name("payload")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::internal("silver batch without payload"))?;
        Ok((0..payload.len())
            .map(|i| {
                serde_json::from_str::<serde_json::Value>(payload.value(i))
                    .ok()
                    .and_then(|v| v.get(field).and_then(|x| x.as_bool()))
                    .unwrap_or(false)
            })
            .collect())
    }

    fn central_rows(&self, region: &str, b: &RecordBatch, version: i64, now_us: i64) -> Result<Option<RecordBatch>> {
        let mask = BooleanArray::from(self.egress_mask(b)?);
        let b = deltalake::arrow::compute::filter_record_batch(b, &mask)
            .map_err(|e| Error::internal("egress filter").with_source(e))?;
        let n = b.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let schema = schemas::central_events();
        let mut cols: Vec<ArrayRef> = Vec::new();
        for f in schema.fields() {
            let c: ArrayRef = match f.name().as_str() {
                "_origin_version" => Arc::new(Int64Array::from(vec![version; n])),
                "_federated_at" => Arc::new(TimestampMicrosecondArray::from(vec![now_us; n]).with_timezone("UTC")),
                "region" => Arc::new(StringArray::from(vec![region.to_string(); n])),
                name => {
                    b.column_by_name(name).cloned().ok_or_else(|| Error::internal(format!("silver lacks {name}")))?
                }
            };
            cols.push(c);
        }
        RecordBatch::try_new(schema, cols).map(Some).map_err(|e| Error::internal("central events batch").with_source(e))
    }

    async fn federate_silver(&mut self, fi: usize, si: usize) -> Result<u64> {
        let max_versions = self.cfg.federator.max_versions_per_batch as i64;
        let region = self.feeds[fi].region.clone();
        let (source, input) = &mut self.feeds[fi].silver[si];
        let source = source.clone();
        if !input.open().await? {
            return Ok(0);
        }
        let latest = input.table.as_mut().ok_or_else(|| Error::internal("input not open"))?.latest_version().await?;
        let t = input.table.as_ref().ok_or_else(|| Error::internal("input not open"))?;
        if latest <= input.pos {
            return Ok(0);
        }
        let started = Instant::now();
        let from = input.pos;
        let up_to = latest.min(from + max_versions);
        let app_id = input.app_id.clone();
        let mut rows_in = 0u64;
        let mut batches = Vec::new();
        let now_us = tributary_core::now_ms() * 1000;
        let read = t.read_versions(from, up_to).await?;
        for (v, b) in &read {
            rows_in += b.num_rows() as u64;
            if let Some(c) = self.central_rows(&region, b, *v, now_us)? {
                batches.push(c);
            }
        }
        if let Some(mut o) = self.feeds[fi].overlap.take() {
            let before = o.stats;
            let result = o.drop_held(&self.events, batches).await;
            if o.stats.dropped > before.dropped {
                tracing::info!(region = %region, source = %source, dropped = o.stats.dropped - before.dropped,
                               maybe = o.stats.maybe - before.maybe, loads = o.stats.partition_loads - before.partition_loads,
                               "DR: rows central already holds left out");
            }
            self.feeds[fi].overlap = Some(o);
            batches = result?;
        }
        let written: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let meta = HashMap::from([(
            "tributary.federation".to_string(),
            serde_json::json!({"region": region, "source": source, "from": from + 1, "to": up_to, "rows_in": rows_in, "egress_rows": written}),
        )]);
        let mut moves = vec![PositionMove { app_id: app_id.clone(), from, to: up_to }];
        moves.extend(self.fence(fi));
        let version = self
            .events
            .commit_batch(
                Commit::new(&batches, moves, meta, -1).fault("federator.before_commit"),
                &Writer::new(STAGE, &region, &self.cfg),
            )
            .await?;
        fault::point("federator.after_events_commit");
        let max_event_ms = tributary_delta::max_event_ms(&batches);
        self.events.notice(STAGE, &region, version, written, max_event_ms);
        self.feeds[fi].silver[si].1.pos = up_to;
        BatchCommitted {
            stage: STAGE,
            region: &region,
            table: "central/events",
            version,
            input_rows: rows_in,
            written,
            quarantined: 0,
            duplicates: rows_in - written,
            dropped: 0,
            seconds: started.elapsed().as_secs_f64(),
            input_position: &format!("{app_id}={up_to}"),
            max_event_ms,
        }
        .emit();
        Ok(rows_in.max(1))
    }

    async fn federate_gold(&mut self, fi: usize, gi: usize) -> Result<u64> {
        let writer = Writer::new(STAGE, &self.feeds[fi].region, &self.cfg);
        let fence = self.fence(fi);
        let region = self.feeds[fi].region.clone();
        let (kind, input) = &mut self.feeds[fi].gold[gi];
        let kind = *kind;
        if !input.open().await? {
            return Ok(0);
        }
        let t = input.table.as_mut().ok_or_else(|| Error::internal("input not open"))?;
        t.refresh().await?;
        let v = t.version();
        if v <= input.pos {
            return Ok(0);
        }
        let started = Instant::now();
        let from = input.pos;
        let app_id = input.app_id.clone();
        let mut dates: BTreeSet<String> = BTreeSet::new();
        for (_, adds) in t.changes(from, v).await? {
            for a in adds {
                if let Some(Some(d)) = a.partition_values.get("event_date") {
                    dates.insert(d.clone());
                }
            }
        }
        let mut batches = Vec::new();
        for f in t.files()? {
            if let Some(Some(d)) = f.partition_values.get("event_date")
                && dates.contains(d)
            {
                batches.extend(t.read_file(&f.path, Some(f.size), &f.partition_values).await?);
            }
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let (_, central) = self
            .gold
            .iter_mut()
            .find(|(k, _)| *k == kind)
            .ok_or_else(|| Error::internal("central gold table missing"))?;
        // This region's partitions of the touched dates are replaced (only this region's
        // federator writes them); the position move fences a zombie.
        central.refresh().await?;
        let old: HashSet<String> = central
            .files()?
            .into_iter()
            .filter(|f| {
                f.partition_values.get("region").and_then(|x| x.as_deref()) == Some(region.as_str())
                    && f.partition_values.get("event_date").and_then(|x| x.clone()).is_some_and(|d| dates.contains(&d))
            })
            .map(|f| f.path)
            .collect();
        let meta = HashMap::from([(
            "tributary.federation".to_string(),
            serde_json::json!({"region": region, "table": kind.table_name(), "from": from + 1, "to": v, "partitions": dates.len(), "rows": rows}),
        )]);
        let mut moves = vec![PositionMove { app_id: app_id.clone(), from, to: v }];
        moves.extend(fence);
        let version = central.commit_batch(Commit::new(&batches, moves, meta, -1).replacing(old), &writer).await?;
        fault::point("federator.after_gold_commit");
        central.notice(STAGE, &region, version, rows, 0);
        let name = central.name.clone();
        self.feeds[fi].gold[gi].1.pos = v;
        BatchCommitted {
            stage: STAGE,
            region: &region,
            table: &name,
            version,
            input_rows: rows,
            written: rows,
            quarantined: 0,
            duplicates: 0,
            dropped: 0,
            seconds: started.elapsed().as_secs_f64(),
            input_position: &format!("{app_id}={v}"),
            // Gold windows: their end times are not event times.
            max_event_ms: 0,
        }
        .emit();
        Ok(rows.max(1))
    }
}

impl CentralFederator {
    /// Re-reads the central tables and this region's positions in them (after a failure, or on
    /// start).
    async fn reload_feed(&mut self, fi: usize) -> Result<()> {
        self.events.refresh().await?;
        for (_, t) in &mut self.gold {
            t.refresh().await?;
        }
        self.watermarks.refresh().await?;
        let feed = &mut self.feeds[fi];
        for (_, input) in &mut feed.silver {
            input.pos = self.events.txn_version(&input.app_id).await?.unwrap_or(-1);
        }
        for (kind, input) in &mut feed.gold {
            let t = &self.gold.iter().find(|(k, _)| k == kind).ok_or_else(|| Error::internal("central gold"))?.1;
            input.pos = t.txn_version(&input.app_id).await?.unwrap_or(-1);
        }
        for (gi, (kind, _)) in feed.gold.iter().enumerate() {
            let app_id = watermarks_app_id(&self.cfg, &feed.region, *kind, feed.epoch);
            feed.watermarks_pos[gi] = self.watermarks.txn_version(&app_id).await?.unwrap_or(-1);
        }
        Ok(())
    }
}

fn watermarks_app_id(cfg: &Config, region: &str, kind: GoldKind, epoch: Option<i64>) -> String {
    catalog::with_epoch(&catalog::central_watermarks_app_id(cfg, region, kind), epoch.unwrap_or(0))
}

impl CentralFederator {
    /// DR: the move that keeps this region's epoch unchanged on every central commit, so a
    /// commit racing a `failover`/`failback` (or coming from the side switched away from) is
    /// refused instead of landing next to the other side's rows.
    fn fence(&self, fi: usize) -> Vec<PositionMove> {
        match (self.cfg.dr.enabled(), self.feeds[fi].epoch) {
            (true, Some(e)) => {
                vec![PositionMove {
                    app_id: catalog::central_dr_app_id(&self.cfg, &self.feeds[fi].region),
                    from: e,
                    to: e,
                }]
            }
            _ => vec![],
        }
    }

    /// DR: binds the feed's positions to `epoch` (a new epoch starts every input from scratch:
    /// gold partitions are rewritten from this side's snapshot, silver rows are appended unless
    /// central already holds their event_id) and reloads them.
    async fn bind_epoch(&mut self, fi: usize, epoch: i64) -> Result<()> {
        let cfg = self.cfg.clone();
        let feed = &mut self.feeds[fi];
        let region = feed.region.clone();
        for (source, input) in &mut feed.silver {
            input.app_id = catalog::with_epoch(&catalog::central_silver_app_id(&cfg, &region, source), epoch);
        }
        for (kind, input) in &mut feed.gold {
            input.app_id = catalog::with_epoch(&catalog::central_gold_app_id(&cfg, &region, *kind), epoch);
        }
        feed.epoch = Some(epoch);
        self.reload_feed(fi).await?;
        self.feeds[fi].overlap = None;
        // Also after a restart within a switched epoch: this side may still be behind what the
        // other side had federated before the switch. (The filter then also holds this epoch's
        // own rows: more exact checks, never a wrong answer.)
        if epoch > 0 {
            let kb = cfg.dr.overlap_filter_kb.clamp(1, 4 << 20) as usize;
            let o = overlap::Overlap::build(&self.events, &region, kb << 10, cfg.dr.overlap_cache_dates).await?;
            if let Some(o) = &o {
                tracing::info!(region = %region, epoch, held = o.stats.held, filter_kb = kb,
                               "DR switch: this side now serves the region; rows central already holds are skipped");
            }
            self.feeds[fi].overlap = o;
        }
        Ok(())
    }

    /// DR: this region's epoch in central (raw txn value, -1 = none).
    async fn dr_epoch(&self, region: &str) -> Result<i64> {
        Ok(self.events.txn_version(&catalog::central_dr_app_id(&self.cfg, region)).await?.unwrap_or(-1))
    }
}

impl CentralFederator {
    /// Replaces the (region, gold table) partition of `central/region_watermarks` with the
    /// per-source max event time / watermark recorded in the region's gold table at the version
    /// mirrored, with `txn(<pipeline>/central/<region>/watermarks/<table>, gold version)`. The
    /// share of regions that have reported a window = regions whose watermark ≥ window end.
    async fn publish_watermarks(&mut self, fi: usize, gi: usize) -> Result<u64> {
        let region = self.feeds[fi].region.clone();
        let (kind, input) = &self.feeds[fi].gold[gi];
        let (kind, mirrored) = (*kind, input.pos);
        let at = self.feeds[fi].watermarks_pos[gi];
        let Some(t) = input.table.as_ref() else { return Ok(0) };
        // The gold snapshot must be the mirrored version (it is after federate_gold).
        if mirrored <= at || t.version() != mirrored {
            return Ok(0);
        }
        let app_id = watermarks_app_id(&self.cfg, &region, kind, self.feeds[fi].epoch);
        self.watermarks.refresh().await?;
        let max = catalog::recorded_max_event_time(t)?;
        let lateness = self.cfg.gold.allowed_lateness_secs * 1_000_000;
        let now = tributary_core::now_ms() * 1000;
        let n = max.len();
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(deltalake::arrow::array::TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let batch = RecordBatch::try_new(
            watermarks_schema(),
            vec![
                Arc::new(StringArray::from(max.keys().cloned().collect::<Vec<_>>())),
                ts(max.values().copied().collect()),
                ts(max.values().map(|m| m - lateness).collect()),
                Arc::new(Int64Array::from(vec![mirrored; n])),
                ts(vec![now; n]),
                Arc::new(StringArray::from(vec![region.clone(); n])),
                Arc::new(StringArray::from(vec![kind.table_name().to_string(); n])),
            ],
        )
        .map_err(|e| Error::internal("region watermarks batch").with_source(e))?;
        let old: HashSet<String> = self
            .watermarks
            .files()?
            .into_iter()
            .filter(|f| {
                f.partition_values.get("region").and_then(|x| x.as_deref()) == Some(region.as_str())
                    && f.partition_values.get("gold_table").and_then(|x| x.as_deref()) == Some(kind.table_name())
            })
            .map(|f| f.path)
            .collect();
        let writer = Writer::new(STAGE, &region, &self.cfg);
        let mut moves = vec![PositionMove { app_id, from: at, to: mirrored }];
        moves.extend(self.fence(fi));
        self.watermarks.commit_batch(Commit::new(&[batch], moves, HashMap::new(), -1).replacing(old), &writer).await?;
        self.feeds[fi].watermarks_pos[gi] = mirrored;
        Ok(1)
    }
}

#[tonic::async_trait]
impl Stage for CentralFederator {
    fn stage(&self) -> &str {
        STAGE
    }
    fn region(&self) -> &str {
        &self.label
    }
    async fn run_once(&mut self) -> Result<u64> {
        let mut total = 0;
        if self.cfg.dr.enabled() {
            // Which side serves each region is recorded in central (failover / failback).
            self.events.refresh().await?;
        }
        for fi in 0..self.feeds.len() {
            // One region's failure (its tables unreadable, a partition) holds back only that
            // region: it backs off and is reloaded; the other regions keep federating.
            if !self.health.due(fi) {
                continue;
            }
            if self.cfg.dr.enabled() {
                let region = self.feeds[fi].region.clone();
                let epoch = self.dr_epoch(&region).await?;
                let serving = self.cfg.dr.active_at(epoch);
                if serving != self.cfg.dr.role {
                    if self.feeds[fi].standby != Some(serving) {
                        tracing::info!(region = %region, role = %self.cfg.dr.role, serving, "DR: standing by, the other side serves central");
                    }
                    self.feeds[fi].standby = Some(serving);
                    continue;
                }
                self.feeds[fi].standby = None;
                if self.feeds[fi].epoch != Some(epoch) {
                    let bound = self.bind_epoch(fi, epoch).await;
                    if let Err(e) = bound {
                        self.feeds[fi].epoch = None;
                        total += self.health.record(fi, Err(e), STAGE, &self.label, || format!("central/{region}"));
                        continue;
                    }
                }
            }
            let result = async {
                if self.health.needs_reload(fi) {
                    self.reload_feed(fi).await?;
                    self.health.reloaded(fi);
                }
                let mut n = 0;
                for si in 0..self.feeds[fi].silver.len() {
                    n += self.federate_silver(fi, si).await?;
                }
                for gi in 0..self.feeds[fi].gold.len() {
                    n += self.federate_gold(fi, gi).await?;
                    n += self.publish_watermarks(fi, gi).await?;
                }
                Ok::<u64, Error>(n)
            }
            .await;
            total +=
                self.health.record(fi, result, STAGE, &self.label, || format!("central/{}", self.feeds[fi].region));
        }
        Ok(total)
    }

    fn caught_up(&self) -> bool {
        self.health.healthy()
    }
    async fn recover(&mut self) -> Result<()> {
        // Each flow reloads itself (isolated) before its next run: see `run_once`.
        self.health.reload_all();
        Ok(())
    }
    fn inputs(&self) -> Vec<String> {
        self.feeds
            .iter()
            .flat_map(|f| f.silver.iter().map(|(_, i)| &i.location).chain(f.gold.iter().map(|(_, i)| &i.location)))
            .filter_map(|l| tributary_delta::location_url(l).ok())
            .map(|u| u.to_string())
            .collect()
    }
    async fn status(&mut self) -> StageStatus {
        let mut tables = vec![self.events.status(Some("event_time"))];
        for (_, t) in &self.gold {
            tables.push(t.status(Some("window_start")));
        }
        let mut positions = Vec::new();
        for feed in &self.feeds {
            for (_, i) in &feed.silver {
                positions.push(InputPosition {
                    app_id: i.app_id.clone(),
                    output_table: self.events.name.clone(),
                    version: i.pos,
                });
            }
            for (k, i) in &feed.gold {
                positions.push(InputPosition {
                    app_id: i.app_id.clone(),
                    output_table: format!("central/{}", k.table_name()),
                    version: i.pos,
                });
            }
        }
        let mut counters = Vec::new();
        for feed in &self.feeds {
            counters.extend(tributary_core::metrics::stage_counters(STAGE, &feed.region));
        }
        StageStatus {
            stage: STAGE.into(),
            region: self.label.clone(),
            tables,
            positions,
            counters,
            last_error: self.health.last_error(&[]),
        }
    }
}

/// Runs the federator for `regions` until `shutdown`.
pub async fn run(
    cfg: Arc<Config>,
    regions: &[String],
    shutdown: tributary_core::Shutdown,
    notices: Option<tributary_core::stage::NoticeHook>,
) -> Result<()> {
    let stage = CentralFederator::build(cfg.clone(), regions).await?;
    tributary_core::stage::serve_stages(STAGE, &cfg, vec![Box::new(stage)], shutdown, notices).await
}

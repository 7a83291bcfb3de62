//! silver-transform: bronze → silver, per source. Reads bronze incrementally by Delta version
//! (data-changing `add` actions only), validates (null keys, bad event_time, missing required
//! typed fields → quarantine with a reason), deduplicates by (`source`, `event_id`) exactly —
//! within a batch, across batches and across restarts — and commits silver with
//! `txn(<pipeline>/silver/<region>/bronze/<source>, bronze version)`. The quarantine table
//! carries its own txn for the same version.
//!
//! Dedup state: the key index `silver/_dedup/<source>` (see [`dedup`]), a Bloom filter of fixed
//! size and an LRU of loaded buckets: exact over `silver.dedup.horizon_days` of event time with
//! memory bounded by configuration, not by the key count. Events older than the horizon go to
//! quarantine (`beyond_dedup_horizon`). Entity tables (SCD 1/2) are maintained by [`entities`].

pub mod dedup;
pub mod entities;
pub mod expectations;
pub mod transform;

use deltalake::arrow::array::{BooleanArray, RecordBatch};
use deltalake::arrow::compute::{concat_batches, filter_record_batch, max};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tributary_core::event_log::{self, Level};
use tributary_core::metrics::BatchCommitted;
use tributary_core::stage::Stage;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::quarantine::QuarantineRows;
use tributary_delta::{Commit, PositionMove, Table, Writer, schemas};
use tributary_proto::v1::{InputPosition, StageStatus};

pub const STAGE: &str = "silver";

struct Flow {
    source: String,
    app_id: String,
    input: Option<Table>,
    input_location: String,
    output: Table,
    pos: i64,
    quarantine_pos: i64,
    dedup: dedup::DedupIndex,
    expectations: Vec<expectations::Expectation>,
    /// Set when a `fail` expectation stopped this flow; the other flows go on.
    stopped: Option<String>,
}

/// What expectations did to one batch.
enum Judged {
    /// Rows dropped (the quarantined ones went to `q`) and the batch filtered to the kept rows.
    Applied { dropped: u64, kept: RecordBatch },
    /// A `fail` expectation failed: the message; nothing of the batch may be committed.
    Stop(String),
}

pub struct SilverTransform {
    cfg: Arc<Config>,
    region: String,
    flows: Vec<Flow>,
    quarantine: Table,
    entities: Vec<entities::EntityFlow>,
    writer: Writer,
    /// Flows then entity tables: a failing one backs off alone; the others keep their freshness.
    health: tributary_core::stage::FlowHealth,
}

pub use tributary_delta::catalog::{
    silver_dedup_location as dedup_location, silver_location as table_location,
    silver_quarantine_location as quarantine_location,
};

impl SilverTransform {
    pub async fn build(cfg: Arc<Config>, region: &str) -> Result<Self> {
        let quarantine = Table::open_or_create(
            "silver/_quarantine",
            &quarantine_location(&cfg, region),
            schemas::quarantine(),
            schemas::QUARANTINE_PARTITIONS,
        )
        .await?;
        let mut flows = Vec::new();
        for source in &cfg.bronze.sources {
            let expectations = expectations::for_source(&cfg.silver.expectations, source, &schemas::silver(source))?;
            let output = Table::open_or_create(
                &format!("silver/{source}"),
                &table_location(&cfg, region, source),
                schemas::silver(source),
                schemas::SILVER_PARTITIONS,
            )
            .await?;
            let dedup = dedup::DedupIndex::open(
                &cfg.silver.dedup,
                &format!("silver/_dedup/{source}"),
                &dedup_location(&cfg, region, source),
                &tributary_delta::catalog::silver_dedup_app_id(&cfg, region, source),
                Writer::new(STAGE, region, &cfg),
            )
            .await?;
            flows.push(Flow {
                source: source.clone(),
                app_id: tributary_delta::catalog::silver_input_app_id(&cfg, region, source),
                input: None,
                input_location: tributary_delta::catalog::bronze_location(&cfg, region, source),
                output,
                pos: -1,
                quarantine_pos: -1,
                dedup,
                expectations,
                stopped: None,
            });
        }
        let mut ents = Vec::new();
        // Entities of sources this pipeline does not ingest are inactive.
        for spec in cfg.silver.entities.iter().filter(|e| cfg.bronze.sources.contains(&e.source)) {
            ents.push(entities::EntityFlow::build(&cfg, region, spec).await?);
        }
        let health = tributary_core::stage::FlowHealth::new(flows.len() + ents.len());
        let mut me = Self {
            writer: Writer::new(STAGE, region, &cfg),
            cfg,
            region: region.into(),
            flows,
            quarantine,
            entities: ents,
            health,
        };
        me.recover().await?;
        Ok(me)
    }

    async fn load_flow(flow: &mut Flow, quarantine: &Table) -> Result<()> {
        flow.output.refresh().await?;
        flow.pos = flow.output.txn_version(&flow.app_id).await?.unwrap_or(-1);
        flow.quarantine_pos = quarantine.txn_version(&flow.app_id).await?.unwrap_or(-1);
        // The key index catches up with silver (a crash between the two commits) and the Bloom
        // filter is rebuilt from it.
        flow.dedup.recover(&flow.output).await?;
        Ok(())
    }

    /// Splits validated rows into new ones (returned), duplicates (counted) and rows older than
    /// the dedup horizon (`q`, reason `beyond_dedup_horizon`). `floor` is the horizon's start.
    /// Columnar: one keep mask over the batch, one filter.
    async fn dedup_rows(
        &mut self,
        i: usize,
        batch: RecordBatch,
        floor: Option<i64>,
        q: &mut QuarantineRows,
    ) -> Result<(RecordBatch, u64)> {
        let source = self.flows[i].source.clone();
        let n = batch.num_rows();
        let ids = transform::event_ids(&batch)?;
        let times = transform::event_times(&batch)?;
        let mut candidates: Vec<usize> = Vec::with_capacity(n);
        let detail = format!(
            "event_time is more than silver.dedup.horizon_days ({}) behind the newest event of {source}; it cannot be \
             proven new, replay it after raising the horizon",
            self.cfg.silver.dedup.horizon_days
        );
        for r in 0..n {
            if floor.is_some_and(|f| times.value(r) < f) {
                transform::quarantine_row(q, &batch, r, &source, "beyond_dedup_horizon", None, &detail);
            } else {
                candidates.push(r);
            }
        }
        let candidate_ids: Vec<&str> = candidates.iter().map(|r| ids.value(*r)).collect();
        let known = self.flows[i].dedup.contains(&candidate_ids).await?;
        let mut seen: HashSet<&str> = HashSet::with_capacity(candidates.len());
        let mut keep = vec![false; n];
        let mut duplicates = 0;
        for ((r, id), known) in candidates.iter().zip(&candidate_ids).zip(known) {
            if known || !seen.insert(id) {
                duplicates += 1;
            } else {
                keep[*r] = true;
            }
        }
        if candidates.len() == n && duplicates == 0 {
            return Ok((batch, 0));
        }
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))
            .map_err(|e| Error::internal(format!("filtering silver/{source}")).with_source(e))?;
        Ok((kept, duplicates))
    }

    /// Validates bronze batches (columnar, on the worker threads) into one silver batch.
    fn validate_input(&self, i: usize, input: &[(i64, RecordBatch)], q: &mut QuarantineRows) -> Result<RecordBatch> {
        let source = &self.flows[i].source;
        let future_us = self.cfg.silver.max_future_secs.saturating_mul(1_000_000);
        let mut parts = Vec::new();
        for (v, b) in input {
            parts.extend(tributary_core::cpu_section(|| {
                transform::validate_parallel(source, &self.region, b, *v, future_us, q, self.cfg.server.threads())
            })?);
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        concat_batches(&schemas::silver(source), &parts)
            .map_err(|e| Error::internal(format!("concatenating silver/{source}")).with_source(e))
    }

    /// Reads bronze versions of one flow from `after + 1` up to `up_to`, as many as add at most
    /// `max_bytes` of data files (at least one; `u64::MAX` reads them all); returns the last
    /// version read with the rows.
    async fn read_input(
        &mut self,
        i: usize,
        after: i64,
        up_to: i64,
        max_bytes: u64,
    ) -> Result<(i64, Vec<(i64, RecordBatch)>)> {
        let input = self.flows[i].input.as_ref().ok_or_else(|| Error::internal("input not open"))?;
        input.read_versions_within(after, up_to, max_bytes).await
    }

    async fn ensure_input(&mut self, i: usize) -> Result<bool> {
        if self.flows[i].input.is_none() {
            let name = format!("bronze/{}", self.flows[i].source);
            // Silver types its source fields from `payload`, so bronze's inferred typed columns (as
            // many bytes again) are not decoded.
            self.flows[i].input = Table::open_existing(&name, &self.flows[i].input_location)
                .await?
                .map(|t| t.reading_only(schemas::bronze().fields().iter().map(|f| f.name().clone())));
        }
        Ok(self.flows[i].input.is_some())
    }

    /// After a crash between the silver and quarantine commits: quarantine decisions are a pure
    /// function of the bronze rows, so they are recomputed for the missing versions.
    async fn catch_up_quarantine(&mut self, i: usize) -> Result<()> {
        let (from, to) = (self.flows[i].quarantine_pos, self.flows[i].pos);
        if from >= to || !self.ensure_input(i).await? {
            return Ok(());
        }
        // Exactly the versions the silver batches committed (unbounded).
        let (_, input) = self.read_input(i, from, to, u64::MAX).await?;
        let mut q = QuarantineRows::new(tributary_core::now_ms() * 1000);
        // Validation rejects, then the expectation quarantines: the rows that were new to silver
        // (not in it now: the rows the batch wrote are) and failed a quarantine rule.
        // The horizon is the one the batch was judged with (recorded in its silver commit).
        let floor = self.flows[i]
            .output
            .commit_metadata(self.flows[i].output.version(), "tributary.reconciliation")
            .await?
            .and_then(|m| m.get("dedup_floor_us").and_then(|v| v.as_i64()));
        let valid = self.validate_input(i, &input, &mut q)?;
        drop(input);
        // Rows in silver now are the ones the batch wrote or had seen before; the others (not
        // beyond the horizon) are the expectation candidates.
        let (candidates, _) = self.dedup_rows(i, valid, floor, &mut q).await?;
        if let Judged::Stop(message) = self.judge(i, candidates, &mut q, (from + 1, to), false)? {
            return Err(Error::internal(format!("a committed batch now fails a `fail` expectation: {message}")));
        }
        let rows = q.len();
        let qbatches = q.finish()?;
        let app_id = self.flows[i].app_id.clone();
        self.quarantine
            .commit_batch(
                Commit::new(&qbatches, vec![PositionMove { app_id, from, to }], HashMap::new(), -1),
                &self.writer,
            )
            .await?;
        tracing::warn!(source = %self.flows[i].source, from, to, rows, "silver quarantine caught up after a restart");
        self.flows[i].quarantine_pos = to;
        Ok(())
    }

    /// Evaluates the flow's expectations over the batch's new rows: quarantined rows go to `q`
    /// (reason `expectation_failed`), dropped ones are counted; neither reaches the dedup index,
    /// so a replay of them is judged again the same way.
    fn judge(
        &self,
        i: usize,
        batch: RecordBatch,
        q: &mut QuarantineRows,
        input: (i64, i64),
        record: bool,
    ) -> Result<Judged> {
        let f = &self.flows[i];
        if f.expectations.is_empty() || batch.num_rows() == 0 {
            return Ok(Judged::Applied { dropped: 0, kept: batch });
        }
        let table = f.output.name.clone();
        let verdict = expectations::judge(&f.expectations, &batch)?;
        if record {
            let rules: Vec<serde_json::Value> = f
                .expectations
                .iter()
                .zip(&verdict.counts)
                .map(|(e, (passed, failed))| {
                    tributary_core::metrics::expectation_checked(
                        &self.region,
                        &table,
                        &e.name,
                        e.action.as_str(),
                        *passed,
                        *failed,
                    );
                    serde_json::json!({"name": e.name, "expr": e.expr, "action": e.action.as_str(),
                                       "passed": passed, "failed": failed})
                })
                .collect();
            let level = if verdict.counts.iter().any(|(_, failed)| *failed > 0) { Level::Warn } else { Level::Info };
            event_log::emit(
                level,
                STAGE,
                &self.region,
                &table,
                "data_quality",
                serde_json::json!({"input_from": input.0, "input_to": input.1, "rows": batch.num_rows(),
                                   "expectations": rules}),
            );
        }
        if let Some((k, row)) = verdict.failure {
            let e = &f.expectations[k];
            return Ok(Judged::Stop(format!(
                "{table}: expectation {:?} (`{}`, action fail) failed for event_id {} at {}; {} of {} rows of bronze \
                 versions {}..={} fail it. The flow is stopped and nothing of the batch was committed",
                e.name,
                e.expr,
                transform::event_ids(&batch)?.value(row),
                transform::lineage(&batch, row),
                verdict.counts[k].1,
                batch.num_rows(),
                input.0,
                input.1
            )));
        }
        let mut dropped = 0;
        for (row, by) in verdict.quarantined_by.iter().enumerate().filter(|(row, _)| !verdict.keep[*row]) {
            match by {
                Some(k) => {
                    let e = &f.expectations[*k];
                    transform::quarantine_row(
                        q,
                        &batch,
                        row,
                        &f.source,
                        "expectation_failed",
                        Some(&e.name),
                        &format!("expectation {} failed: {}", e.name, e.expr),
                    );
                }
                None => dropped += 1,
            }
        }
        if verdict.keep.iter().all(|k| *k) {
            return Ok(Judged::Applied { dropped, kept: batch });
        }
        let kept = filter_record_batch(&batch, &BooleanArray::from(verdict.keep))
            .map_err(|e| Error::internal(format!("filtering {table}")).with_source(e))?;
        Ok(Judged::Applied { dropped, kept })
    }

    async fn run_flow(&mut self, i: usize) -> Result<u64> {
        if self.flows[i].stopped.is_some() {
            return Ok(0);
        }
        if !self.ensure_input(i).await? {
            return Ok(0);
        }
        self.catch_up_quarantine(i).await?;
        let latest = match self.flows[i].input.as_mut() {
            Some(t) => t.latest_version().await?,
            None => return Ok(0),
        };
        let pos = self.flows[i].pos;
        if latest <= pos {
            return Ok(0);
        }
        let started = Instant::now();
        let up_to = latest.min(pos + self.cfg.silver.max_versions_per_batch as i64);
        {
            let f = &mut self.flows[i];
            f.output.expect_positions(&[(&f.app_id, f.pos)], -1).await?;
        }
        // Bounded by bytes too: a backlog of large bronze versions is read a few at a time.
        let (up_to, input) = self.read_input(i, pos, up_to, self.cfg.silver.max_bytes_per_batch).await?;
        let source = self.flows[i].source.clone();
        let now_us = tributary_core::now_ms() * 1000;
        let mut q = QuarantineRows::new(now_us);
        let input_rows: u64 = input.iter().map(|(_, b)| b.num_rows() as u64).sum();
        let valid = self.validate_input(i, &input, &mut q)?;
        drop(input);
        let floor = self.flows[i].dedup.floor_us();
        let before = self.flows[i].dedup.stats;
        let (out, duplicates) = self.dedup_rows(i, valid, floor, &mut q).await?;
        let after = self.flows[i].dedup.stats;
        let (dropped, out) = match self.judge(i, out, &mut q, (pos + 1, up_to), true)? {
            Judged::Applied { dropped, kept } => (dropped, kept),
            Judged::Stop(message) => {
                event_log::flow_stopped(STAGE, &self.region, &self.flows[i].output.name, &message);
                self.flows[i].stopped = Some(message);
                return Ok(0);
            }
        };
        let written = out.num_rows() as u64;
        let max_event_ms = max(transform::event_times(&out)?).unwrap_or(0) / 1000;
        let quarantined = q.len() as u64;
        if input_rows != written + quarantined + duplicates + dropped {
            return Err(Error::internal(format!(
                "silver/{source}: reconciliation failed: {input_rows} in != {written} written + {quarantined} quarantined + {duplicates} duplicates + {dropped} dropped"
            )));
        }
        let app_id = self.flows[i].app_id.clone();
        let meta = HashMap::from([(
            "tributary.reconciliation".to_string(),
            serde_json::json!({"input_from": pos + 1, "input_to": up_to, "input_rows": input_rows, "written": written,
                               "quarantined": quarantined, "duplicates": duplicates, "dropped": dropped,
                               "dedup_floor_us": floor,
                               "dedup": {"bloom_positives": after.bloom_positives - before.bloom_positives,
                                         "false_positives": after.false_positives - before.false_positives,
                                         "bucket_loads": after.bucket_loads - before.bucket_loads}}),
        )]);
        let new_keys: Vec<(String, i64)> = transform::event_ids(&out)?
            .iter()
            .map(|id| id.unwrap_or_default().to_string())
            .zip(transform::event_times(&out)?.values().iter().copied())
            .collect();
        let batches = if out.num_rows() > 0 { vec![out] } else { vec![] };
        let version = self.flows[i]
            .output
            .commit_batch(
                Commit::new(
                    &batches,
                    vec![PositionMove { app_id: app_id.clone(), from: pos, to: up_to }],
                    meta.clone(),
                    -1,
                )
                .fault("silver.before_commit"),
                &self.writer,
            )
            .await?;
        fault::point("silver.after_data_commit");
        self.flows[i].output.notice(STAGE, &self.region, version, written, max_event_ms);
        self.flows[i].pos = up_to;
        self.flows[i].dedup.append(&new_keys, version).await?;
        fault::point("silver.after_index_commit");
        let qbatches = q.finish()?;
        let q_from = self.flows[i].quarantine_pos;
        self.quarantine
            .commit_batch(
                Commit::new(
                    &qbatches,
                    vec![PositionMove { app_id: app_id.clone(), from: q_from, to: up_to }],
                    meta,
                    -1,
                ),
                &self.writer,
            )
            .await?;
        fault::point("silver.after_quarantine_commit");
        self.flows[i].quarantine_pos = up_to;
        BatchCommitted {
            stage: STAGE,
            region: &self.region,
            table: &format!("silver/{source}"),
            version,
            input_rows,
            written,
            quarantined,
            duplicates,
            dropped,
            seconds: started.elapsed().as_secs_f64(),
            input_position: &format!("{app_id}={up_to}"),
            max_event_ms,
        }
        .emit();
        Ok(input_rows.max(1))
    }
}

#[tonic::async_trait]
impl Stage for SilverTransform {
    fn stage(&self) -> &str {
        STAGE
    }
    fn region(&self) -> &str {
        &self.region
    }
    async fn run_once(&mut self) -> Result<u64> {
        let mut total = 0;
        let nf = self.flows.len();
        for i in 0..nf {
            if !self.health.due(i) {
                continue;
            }
            let result = async {
                if self.health.needs_reload(i) {
                    self.quarantine.refresh().await?;
                    // (run_flow catches the quarantine up first.)
                    Self::load_flow(&mut self.flows[i], &self.quarantine).await?;
                    self.health.reloaded(i);
                }
                self.run_flow(i).await
            }
            .await;
            total += self.health.record(i, result, STAGE, &self.region, || format!("silver/{}", self.flows[i].source));
        }
        let (max_versions, max_bytes) =
            (self.cfg.silver.max_versions_per_batch as i64, self.cfg.silver.max_bytes_per_batch);
        for (k, e) in self.entities.iter_mut().enumerate() {
            let h = nf + k;
            if !self.health.due(h) {
                continue;
            }
            let result = async {
                if self.health.needs_reload(h) {
                    e.recover().await?;
                    self.health.reloaded(h);
                }
                e.run(max_versions, max_bytes).await
            }
            .await;
            total += self.health.record(h, result, STAGE, &self.region, || format!("silver/{}", e.spec.name));
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
        self.flows
            .iter()
            .filter_map(|f| tributary_delta::location_url(&f.input_location).ok())
            .map(|u| u.to_string())
            .collect()
    }
    async fn status(&mut self) -> StageStatus {
        let mut tables = Vec::new();
        let mut positions = Vec::new();
        let stopped: Vec<&str> = self.flows.iter().filter_map(|f| f.stopped.as_deref()).collect();
        for f in &self.flows {
            tables.push(f.output.status(Some("event_time")));
            positions.push(InputPosition {
                app_id: f.app_id.clone(),
                output_table: f.output.name.clone(),
                version: f.pos,
            });
            positions.push(InputPosition {
                app_id: f.app_id.clone(),
                output_table: self.quarantine.name.clone(),
                version: f.quarantine_pos,
            });
        }
        tables.push(self.quarantine.status(None));
        for e in &self.entities {
            for (t, pos, app) in
                [(&e.current, e.current_pos, e.app_current.clone()), (&e.history, e.history_pos, e.app_history.clone())]
            {
                tables.push(t.status(None));
                positions.push(InputPosition { app_id: app, output_table: t.name.clone(), version: pos });
            }
        }
        StageStatus {
            stage: STAGE.into(),
            region: self.region.clone(),
            tables,
            positions,
            counters: tributary_core::metrics::stage_counters(STAGE, &self.region),
            last_error: self.health.last_error(&stopped),
        }
    }
}

/// Runs the service for one region until `shutdown`.
pub async fn run(
    cfg: Arc<Config>,
    region: &str,
    shutdown: tributary_core::Shutdown,
    notices: Option<tributary_core::stage::NoticeHook>,
) -> Result<()> {
    let stage = SilverTransform::build(cfg.clone(), region).await?;
    tributary_core::stage::serve_stages(STAGE, &cfg, vec![Box::new(stage)], shutdown, notices).await
}

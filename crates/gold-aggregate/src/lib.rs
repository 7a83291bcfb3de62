//! gold-aggregate: silver → gold windows, per region.
//!
//! Outputs (each exactly once on its own, `txn(<pipeline>/gold/<region>/<output>/silver/<source>,
//! silver version)` per input that advanced):
//! - monitoring (availability): `gold/event_counts_{minute,hourly,daily}` — events per window per
//!   (region, source, workspace), updated as data arrives, late data included (and counted in
//!   `late_events`); `is_final` once the source's watermark passed the window end;
//!   `sources_reported`/`completeness`: how many of the region's sources have data past it.
//! - billing (consistency): `gold/billing_usage_{hourly,daily}` — exact DBU per (customer, sku,
//!   window). Window rows are provisional until the billing watermark passes the window end; then
//!   they are written once into files that are never removed. A later event never rewrites a final
//!   row: it becomes an `adjustment` row (window, DBU, count, reason), final at once.
//!
//! Watermarks are per source and region: max committed event_time − `gold.allowed_lateness_secs`,
//! kept in the output table's properties (`tributary.max_event_time`) in the same commit as the
//! rows computed with them, so they advance only on committed data and survive restarts. Each
//! source has its own watermark, so an idle source holds back only its own windows.

pub mod window;

use deltalake::arrow::array::RecordBatch;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tributary_core::event_log::{self, Level};
use tributary_core::metrics::BatchCommitted;
use tributary_core::stage::Stage;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::{Commit, PositionMove, Table, Writer, schemas};
use tributary_proto::v1::{InputPosition, StageStatus};
use window::{GoldKind, WindowState};

pub const STAGE: &str = "gold";
use tributary_delta::catalog::{self, MAX_EVENT_TIME_PROPERTY};

struct Input {
    source: String,
    app_id: String,
    location: String,
    table: Option<Table>,
    pos: i64,
}

struct Flow {
    kind: GoldKind,
    output: Table,
    inputs: Vec<Input>,
    /// Max committed event_time per source (µs).
    max_event_time: BTreeMap<String, i64>,
}

pub struct GoldAggregate {
    cfg: Arc<Config>,
    region: String,
    writer: Writer,
    flows: Vec<Flow>,
    /// Per gold table: a failing one backs off alone.
    health: tributary_core::stage::FlowHealth,
}

pub use tributary_delta::catalog::{recorded_max_event_time, watermarks};

pub fn table_location(cfg: &Config, region: &str, kind: GoldKind) -> String {
    catalog::gold_location(cfg, region, kind)
}

impl GoldAggregate {
    pub async fn build(cfg: Arc<Config>, region: &str) -> Result<Self> {
        let mut flows = Vec::new();
        for kind in GoldKind::ALL {
            let output = Table::open_or_create(
                &format!("gold/{}", kind.table_name()),
                &table_location(&cfg, region, kind),
                kind.schema(),
                schemas::GOLD_PARTITIONS,
            )
            .await?;
            let sources: Vec<String> = if kind.is_billing() {
                cfg.bronze.sources.iter().filter(|s| *s == "billing").cloned().collect()
            } else {
                cfg.bronze.sources.clone()
            };
            let inputs = sources
                .into_iter()
                .map(|s| Input {
                    app_id: catalog::gold_input_app_id(&cfg, region, kind, &s),
                    location: catalog::silver_location(&cfg, region, &s),
                    source: s,
                    table: None,
                    pos: -1,
                })
                .collect();
            flows.push(Flow { kind, output, inputs, max_event_time: BTreeMap::new() });
        }
        let health = tributary_core::stage::FlowHealth::new(flows.len());
        let mut me = Self { writer: Writer::new(STAGE, region, &cfg), cfg, region: region.into(), flows, health };
        me.recover().await?;
        Ok(me)
    }

    async fn run_flow(&mut self, fi: usize) -> Result<u64> {
        let started = Instant::now();
        let max_versions = self.cfg.gold.max_versions_per_batch as i64;
        let lateness_us = self.cfg.gold.allowed_lateness_secs * 1_000_000;
        let region = self.region.clone();
        let flow = &mut self.flows[fi];
        // Which inputs have new versions?
        let mut plan: Vec<(usize, i64)> = Vec::new();
        for (ii, input) in flow.inputs.iter_mut().enumerate() {
            if input.table.is_none() {
                input.table = Table::open_existing(&format!("silver/{}", input.source), &input.location)
                    .await?
                    .map(|t| t.reading_only(window::columns(flow.kind)));
            }
            let Some(t) = input.table.as_mut() else {
                continue;
            };
            let latest = t.latest_version().await?;
            if latest > input.pos {
                plan.push((ii, latest.min(input.pos + max_versions)));
            }
        }
        if plan.is_empty() {
            return Ok(0);
        }
        let expected: Vec<(&str, i64)> = flow.inputs.iter().map(|i| (i.app_id.as_str(), i.pos)).collect();
        flow.output.expect_positions(&expected, -1).await?;
        let old_wm = watermarks(&flow.max_event_time, lateness_us);
        let mut state = WindowState::new(flow.kind, &region);
        let mut input_rows = 0u64;
        for (ii, up_to) in &plan {
            let input = &flow.inputs[*ii];
            let t = input.table.as_ref().ok_or_else(|| Error::internal("input not open"))?;
            // Read the run's batches of this source first (only the columns gold uses): each
            // landing file's watermark depends on the files before it (see `window`).
            let mut got = Vec::new();
            for (_, adds) in t.changes(input.pos, *up_to).await? {
                for b in t.read_adds(&adds).await? {
                    got.push(window::project(flow.kind, &b)?);
                }
            }
            let wms = window::file_watermarks(&got, flow.max_event_time.get(&input.source).copied(), lateness_us)?;
            for b in &got {
                input_rows += state.add_silver(&input.source, b, &wms)?;
            }
        }
        let mut new_max = flow.max_event_time.clone();
        for (s, m) in &state.max_event_time {
            let e = new_max.entry(s.clone()).or_insert(*m);
            *e = (*e).max(*m);
        }
        let new_wm = watermarks(&new_max, lateness_us);
        // Partitions to rewrite: those with new data, plus those whose windows may have become
        // final or more complete because a source's max event time advanced.
        let w = flow.kind.window_us();
        let mut dates: BTreeSet<String> = state.dates();
        let changed: Vec<&String> =
            new_max.iter().filter(|(s, m)| flow.max_event_time.get(*s) != Some(*m)).map(|(s, _)| s).collect();
        let existing: Vec<tributary_delta::FileRef> = flow.output.files()?;
        if !changed.is_empty() {
            let lo_us = changed.iter().map(|s| old_wm.get(*s).copied().unwrap_or(i64::MIN / 4)).min().unwrap_or(0) - w;
            let lo = tributary_events::date_of_micros(lo_us.max(0));
            let hi = tributary_events::date_of_micros(new_max.values().copied().max().unwrap_or(0));
            for f in &existing {
                if let Some(Some(d)) = f.partition_values.get("event_date")
                    && d.as_str() >= lo.as_str()
                    && d.as_str() <= hi.as_str()
                {
                    dates.insert(d.clone());
                }
            }
        }
        let mut old_files: HashSet<String> = HashSet::new();
        let mut current: Vec<RecordBatch> = Vec::new();
        for f in &existing {
            if let Some(Some(d)) = f.partition_values.get("event_date")
                && dates.contains(d)
            {
                // Billing: files of final rows are immutable — never removed, rewritten or even
                // read again (known from their statistics; read only when a file has none).
                if flow.kind.is_billing() {
                    let all_final =
                        match f.stats.as_deref().and_then(|st| tributary_delta::min_bool_from_stats(st, "is_final")) {
                            Some(min) => min,
                            None => window::all_final(
                                &flow.output.read_file(&f.path, Some(f.size), &f.partition_values).await?,
                            )?,
                        };
                    if all_final {
                        continue;
                    }
                }
                old_files.insert(f.path.clone());
                current.extend(flow.output.read_file(&f.path, Some(f.size), &f.partition_values).await?);
            }
        }
        let now_us = tributary_core::now_ms() * 1000;
        let sources: Vec<String> = flow.inputs.iter().map(|i| i.source.clone()).collect();
        let batches: Vec<RecordBatch> = if flow.kind.is_billing() {
            let src = sources.first().cloned().unwrap_or_default();
            let (fin, prov) = state.merge_billing(&current, &dates, new_wm.get(&src).copied(), now_us)?;
            [fin, prov].into_iter().flatten().collect()
        } else {
            state.merge_counts(&current, &dates, &new_wm, &sources, now_us)?
        };
        let written: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let recorded =
            serde_json::to_string(&new_max).map_err(|e| Error::internal("watermark state").with_source(e))?;
        let properties = if flow.output.properties()?.get(MAX_EVENT_TIME_PROPERTY) != Some(&recorded) {
            Some(flow.output.evolve(&[], &[(MAX_EVENT_TIME_PROPERTY.to_string(), recorded)])?)
        } else {
            None
        };
        let moves: Vec<PositionMove> = plan
            .iter()
            .map(|(ii, up_to)| {
                let i = &flow.inputs[*ii];
                PositionMove { app_id: i.app_id.clone(), from: i.pos, to: *up_to }
            })
            .collect();
        let late = state.late_events();
        let meta = HashMap::from([(
            "tributary.gold".to_string(),
            serde_json::json!({"input_rows": input_rows, "partitions": dates.len(), "rows_written": written,
                               "late_events": late, "watermarks_us": new_wm}),
        )]);
        // The touched partitions are rewritten in one commit with the watermark property; final
        // billing rows never share a file with provisional ones (file per batch).
        let version = flow
            .output
            .commit_batch(
                Commit::new(&batches, moves, meta, -1)
                    .replacing(old_files)
                    .evolving(properties)
                    .file_per_batch()
                    .fault("gold.before_commit"),
                &self.writer,
            )
            .await?;
        fault::point("gold.after_commit");
        let name = flow.output.name.clone();
        flow.output.notice(STAGE, &region, version, written, new_max.values().copied().max().unwrap_or(0) / 1000);
        for (ii, up_to) in &plan {
            flow.inputs[*ii].pos = *up_to;
        }
        flow.max_event_time = new_max;
        for s in &sources {
            let late_s: i64 =
                state.late.iter().filter(|((k, _), _)| flow.kind.is_billing() || k.1 == *s).map(|(_, a)| a.late).sum();
            tributary_core::metrics::late_and_watermark(&region, &name, s, late_s as u64, new_wm.get(s).copied());
        }
        if late > 0 {
            let windows: Vec<serde_json::Value> = state
                .late
                .iter()
                .take(50)
                .map(|((k, file), a)| {
                    serde_json::json!({"window_start_us": k.0, "key": [k.1, k.2], "file": file, "events": a.count,
                                       "dbu_scale9": a.dbu.to_string(),
                                       "watermark_us": state.file_watermarks.get(file).copied().flatten()})
                })
                .collect();
            event_log::emit(
                Level::Warn,
                STAGE,
                &region,
                &name,
                "late_events",
                serde_json::json!({"events": late, "windows": state.late.len(), "version": version,
                                   "handling": if flow.kind.is_billing() { "adjustment rows" } else { "window updated, counted in late_events" },
                                   "watermarks_us": watermarks(&flow.max_event_time, lateness_us), "first_windows": windows}),
            );
        }
        let max_event_ms = flow.max_event_time.values().copied().max().unwrap_or(0).div_euclid(1000);
        BatchCommitted {
            stage: STAGE,
            region: &region,
            table: &name,
            version,
            input_rows,
            written: input_rows,
            quarantined: 0,
            duplicates: 0,
            dropped: 0,
            seconds: started.elapsed().as_secs_f64(),
            input_position: &plan
                .iter()
                .map(|(ii, v)| format!("{}={v}", self.flows[fi].inputs[*ii].source))
                .collect::<Vec<_>>()
                .join(","),
            max_event_ms,
        }
        .emit();
        Ok(input_rows.max(1))
    }
}

#[tonic::async_trait]
impl Stage for GoldAggregate {
    fn stage(&self) -> &str {
        STAGE
    }
    fn region(&self) -> &str {
        &self.region
    }
    async fn run_once(&mut self) -> Result<u64> {
        let mut total = 0;
        for i in 0..self.flows.len() {
            if !self.health.due(i) {
                continue;
            }
            let result = async {
                if self.health.needs_reload(i) {
                    reload(&mut self.flows[i]).await?;
                    self.health.reloaded(i);
                }
                self.run_flow(i).await
            }
            .await;
            total += self.health.record(i, result, STAGE, &self.region, || self.flows[i].output.name.clone());
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
            .flat_map(|f| f.inputs.iter())
            .filter_map(|i| tributary_delta::location_url(&i.location).ok())
            .map(|u| u.to_string())
            .collect()
    }
    async fn status(&mut self) -> StageStatus {
        let mut tables = Vec::new();
        let mut positions = Vec::new();
        for f in &self.flows {
            tables.push(f.output.status(Some("window_start")));
            for i in &f.inputs {
                positions.push(InputPosition {
                    app_id: i.app_id.clone(),
                    output_table: f.output.name.clone(),
                    version: i.pos,
                });
            }
        }
        StageStatus {
            stage: STAGE.into(),
            region: self.region.clone(),
            tables,
            positions,
            counters: tributary_core::metrics::stage_counters(STAGE, &self.region),
            last_error: self.health.last_error(&[]),
        }
    }
}

/// Exact billing sums per (customer, sku, hour) as read back from a gold billing table.
/// Re-reads a gold table's input positions and recorded watermarks (on start, after a failure).
async fn reload(flow: &mut Flow) -> Result<()> {
    flow.output.refresh().await?;
    for input in &mut flow.inputs {
        input.pos = flow.output.txn_version(&input.app_id).await?.unwrap_or(-1);
    }
    flow.max_event_time = recorded_max_event_time(&flow.output)?;
    Ok(())
}

pub fn billing_sums(batches: &[RecordBatch]) -> Result<window::BillingSums> {
    window::billing_sums(batches)
}

/// Runs the service for one region until `shutdown`.
pub async fn run(
    cfg: Arc<Config>,
    region: &str,
    shutdown: tributary_core::Shutdown,
    notices: Option<tributary_core::stage::NoticeHook>,
) -> Result<()> {
    let stage = GoldAggregate::build(cfg.clone(), region).await?;
    tributary_core::stage::serve_stages(STAGE, &cfg, vec![Box::new(stage)], shutdown, notices).await
}

//! gold-aggregate: silver → gold windows, per region.
//!
//! Two outputs, each exactly once on its own: `gold/event_counts_minute` (events per minute per
//! region, source, workspace; inputs: every silver table) and `gold/billing_usage_hourly` (exact
//! DBU per customer, sku and hour; input: silver billing). Windows are additive: new silver rows
//! become deltas that are merged into the affected `event_date` partitions, which are rewritten
//! (remove old file + add new) in one commit together with `txn(<pipeline>/gold/<region>/<output>/
//! silver/<source>, silver version)` for each input that advanced. Rows carry the watermark
//! (max committed event_time − allowed lateness) they were computed at and `is_final` =
//! window end ≤ watermark. A late event still updates its window (adjustment rows come with the
//! CAP issue).

pub mod window;

use deltalake::arrow::array::RecordBatch;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tributary_core::metrics::BatchCommitted;
use tributary_core::stage::Stage;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::{Action, Table, schemas, txn};
use tributary_proto::v1::{InputPosition, StageStatus};
use window::{GoldKind, WindowState};

pub const STAGE: &str = "gold";

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
    watermark_us: Option<i64>,
}

pub struct GoldAggregate {
    cfg: Arc<Config>,
    region: String,
    flows: Vec<Flow>,
}

pub fn table_location(cfg: &Config, region: &str, kind: GoldKind) -> String {
    cfg.region_table(region, &format!("gold/{}", kind.table_name()))
}

impl GoldAggregate {
    pub async fn build(cfg: Arc<Config>, region: &str) -> Result<Self> {
        let mut flows = Vec::new();
        for kind in [GoldKind::EventCounts, GoldKind::Billing] {
            let output = Table::open_or_create(
                &format!("gold/{}", kind.table_name()),
                &table_location(&cfg, region, kind),
                kind.schema(),
                schemas::GOLD_PARTITIONS,
            )
            .await?;
            let sources: Vec<String> = match kind {
                GoldKind::EventCounts => cfg.bronze.sources.clone(),
                GoldKind::Billing => cfg.bronze.sources.iter().filter(|s| *s == "billing").cloned().collect(),
            };
            let inputs = sources
                .into_iter()
                .map(|s| Input {
                    app_id: format!("{}/gold/{region}/{}/silver/{s}", cfg.pipeline, kind.table_name()),
                    location: silver_transform::table_location(&cfg, region, &s),
                    source: s,
                    table: None,
                    pos: -1,
                })
                .collect();
            flows.push(Flow { kind, output, inputs, watermark_us: None });
        }
        let mut me = Self { cfg, region: region.into(), flows };
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
                input.table = Table::open_existing(&format!("silver/{}", input.source), &input.location).await?;
            }
            let Some(t) = input.table.as_ref() else {
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
        let mut state = WindowState::new(flow.kind, &region);
        let mut input_rows = 0u64;
        for (ii, up_to) in &plan {
            let input = &flow.inputs[*ii];
            let t = input.table.as_ref().ok_or_else(|| Error::internal("input not open"))?;
            for (_, adds) in t.changes(input.pos, *up_to).await? {
                for b in t.read_adds(&adds).await? {
                    input_rows += state.add_silver(&input.source, &b)?;
                }
            }
        }
        let old_wm = flow.watermark_us;
        let new_wm = match (old_wm, state.max_event_time_us()) {
            (Some(o), Some(m)) => Some(o.max(m - lateness_us)),
            (None, Some(m)) => Some(m - lateness_us),
            (o, None) => o,
        };
        // Partitions to rewrite: those with new data, plus those where windows may have become
        // final because the watermark advanced.
        let mut dates: BTreeSet<String> = state.dates();
        let existing: Vec<tributary_delta::FileRef> = flow.output.files()?;
        if let Some(nw) = new_wm
            && old_wm != Some(nw)
        {
            let lo = tributary_events::date_of_micros(old_wm.unwrap_or(i64::MIN / 2).max(0) - 3_600_000_000);
            let hi = tributary_events::date_of_micros(nw);
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
                old_files.insert(f.path.clone());
                current.extend(flow.output.read_file(&f.path, Some(f.size), &f.partition_values).await?);
            }
        }
        let now_us = tributary_core::now_ms() * 1000;
        let batches = state.merge_into(&current, &dates, new_wm, now_us)?;
        let written: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let adds = flow.output.write_files(&batches).await?;
        let mut actions = flow.output.remove_actions(&old_files)?;
        actions.extend(adds.into_iter().map(Action::Add));
        let txns: Vec<_> = plan.iter().map(|(ii, up_to)| txn(&flow.inputs[*ii].app_id, *up_to)).collect();
        let meta = HashMap::from([(
            "tributary.gold".to_string(),
            serde_json::json!({"input_rows": input_rows, "partitions": dates.len(), "rows_written": written,
                               "watermark_us": new_wm}),
        )]);
        fault::point("gold.before_commit");
        let version = flow.output.commit(actions, txns, meta, 0).await?;
        fault::point("gold.after_commit");
        flow.output.notice(STAGE, &region, version, written, state.max_event_time_us().unwrap_or(0) / 1000);
        for (ii, up_to) in &plan {
            flow.inputs[*ii].pos = *up_to;
        }
        flow.watermark_us = new_wm;
        let name = flow.output.name.clone();
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
            total += self.run_flow(i).await?;
        }
        Ok(total)
    }
    async fn recover(&mut self) -> Result<()> {
        for flow in &mut self.flows {
            flow.output.refresh().await?;
            for input in &mut flow.inputs {
                input.pos = flow.output.txn_version(&input.app_id).await?.unwrap_or(-1);
            }
            // The watermark is the largest one any committed row was computed at. Statistics are
            // millisecond-truncated, so the exact value is read from the files that hold the max.
            let files = flow.output.files()?;
            let per_file: Vec<(i64, &tributary_delta::FileRef)> = files
                .iter()
                .filter_map(|f| {
                    f.stats
                        .as_deref()
                        .and_then(|s| tributary_delta::max_time_from_stats(s, "watermark"))
                        .map(|ms| (ms, f))
                })
                .collect();
            let mut wm: Option<i64> = None;
            if let Some(max_ms) = per_file.iter().map(|(ms, _)| *ms).max() {
                for (ms, f) in per_file.iter().filter(|(ms, _)| *ms == max_ms) {
                    let _ = ms;
                    let rows = flow.output.read_file(&f.path, Some(f.size), &f.partition_values).await?;
                    if let Some(w) = window::max_watermark(&rows)? {
                        wm = Some(wm.map_or(w, |x: i64| x.max(w)));
                    }
                }
            }
            flow.watermark_us = wm;
        }
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
            last_error: String::new(),
        }
    }
}

/// Exact billing sums per (customer, sku, hour) as read back from a gold billing table.
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

//! Process-wide Prometheus metrics (`tributary_` prefix) and the internal events that feed them.
//!
//! Each internal event is one struct = one log line + its metrics, emitted per batch, never per
//! record. Label values come from small fixed sets (stage, region, table, outcome).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowLabels {
    pub stage: String,
    pub region: String,
    pub table: String,
    /// input | written | quarantined | duplicate
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub stage: String,
    pub region: String,
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
    pub level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpectationLabels {
    pub region: String,
    pub table: String,
    pub expectation: String,
    /// warn | drop | quarantine | fail
    pub action: String,
    /// passed | failed
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub region: String,
    pub table: String,
    /// new_field | missing_field | type_change | null_rate | malformed_rate
    pub kind: String,
    pub field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatermarkLabels {
    pub region: String,
    pub table: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExporterLabels {
    /// `dumps`, or the name of a log stream, or `landing`
    pub stream: String,
    /// dumps: queued | shipped | failed | dropped_oldest; logs: shipped | recovered | lost_deleted;
    /// landing: mirrored
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BridgeLabels {
    /// kafka2prom: updated | older_dropped | evicted | expired | dropped_oldest | invalid_dump |
    /// invalid_line
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub path: String,
    pub code: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub rows: Family<RowLabels, Counter>,
    pub commits: Family<TableLabels, Counter>,
    pub commit_conflicts: Family<TableLabels, Counter>,
    pub batch_errors: Family<TableLabels, Counter>,
    pub batch_seconds: Family<TableLabels, Histogram>,
    pub table_version: Family<TableLabels, Gauge>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    pub notice_wakeups: Family<TableLabels, Counter>,
    pub event_log_records: Family<EventLabels, Counter>,
    pub expectation_rows: Family<ExpectationLabels, Counter>,
    pub drift_events: Family<DriftLabels, Counter>,
    pub schema_version: Family<TableLabels, Gauge>,
    pub landing_recent_files: Family<TableLabels, Gauge>,
    pub bronze_members_live: Gauge,
    pub bronze_slots_owned: Gauge,
    pub blank_lines: Family<TableLabels, Counter>,
    pub late_events: Family<WatermarkLabels, Counter>,
    pub watermark: Family<WatermarkLabels, Gauge>,
    pub bridge_samples: Family<BridgeLabels, Counter>,
    pub bridge_series: Gauge,
    pub exporter_records: Family<ExporterLabels, Counter>,
    pub max_event_time: Family<TableLabels, Gauge>,
    pub backlog: Family<StageLabels, Gauge>,
    pub consumer_lag: Family<LagLabels, Gauge>,
    pub erasure_requests: Family<StateLabels, Gauge>,
    /// Mirror of the row/commit counters for the status RPC: (stage, region, name, table) -> value.
    status_counters: Mutex<BTreeMap<(String, String, String, String), u64>>,
}

fn hist() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    pub fn global() -> &'static Metrics {
        static M: OnceLock<Metrics> = OnceLock::new();
        M.get_or_init(|| {
            let mut registry = Registry::with_prefix("tributary");
            let rows = Family::<RowLabels, Counter>::default();
            let commits = Family::<TableLabels, Counter>::default();
            let commit_conflicts = Family::<TableLabels, Counter>::default();
            let batch_errors = Family::<TableLabels, Counter>::default();
            let batch_seconds = Family::<TableLabels, Histogram>::new_with_constructor(hist as fn() -> Histogram);
            let table_version = Family::<TableLabels, Gauge>::default();
            let notice_wakeups = Family::<TableLabels, Counter>::default();
            let grpc_requests = Family::<GrpcLabels, Counter>::default();
            let event_log_records = Family::<EventLabels, Counter>::default();
            let expectation_rows = Family::<ExpectationLabels, Counter>::default();
            let drift_events = Family::<DriftLabels, Counter>::default();
            let schema_version = Family::<TableLabels, Gauge>::default();
            let landing_recent_files = Family::<TableLabels, Gauge>::default();
            registry.register(
                "landing_recent_files",
                "Ingested landing files held above the discovery frontier (bounded; history is not kept)",
                landing_recent_files.clone(),
            );
            let bronze_members_live = Gauge::default();
            registry.register(
                "bronze_members_live",
                "Live bronze replicas sharing this region's landing zone, as this replica sees them",
                bronze_members_live.clone(),
            );
            let bronze_slots_owned = Gauge::default();
            registry.register(
                "bronze_landing_slots_owned",
                "Landing slots (per source) this bronze replica ingests",
                bronze_slots_owned.clone(),
            );
            let blank_lines = Family::<TableLabels, Counter>::default();
            registry.register(
                "landing_blank_lines",
                "Blank or whitespace-only lines of landing files, skipped (not events) and counted",
                blank_lines.clone(),
            );
            let late_events = Family::<WatermarkLabels, Counter>::default();
            let watermark = Family::<WatermarkLabels, Gauge>::default();
            registry.register(
                "late_events",
                "Events that arrived after their window was final (counted, applied as adjustments or late updates)",
                late_events.clone(),
            );
            registry.register(
                "watermark_unix_seconds",
                "Event-time watermark per source and region (max committed event_time - allowed lateness)",
                watermark.clone(),
            );
            registry.register(
                "event_log_records",
                "Records made in the pipeline event log, by type and level",
                event_log_records.clone(),
            );
            registry.register(
                "expectation_rows",
                "Rows checked by each data-quality expectation, by outcome",
                expectation_rows.clone(),
            );
            registry.register(
                "drift_events",
                "Source drift findings (new or missing field, type change, null or malformed rate jump)",
                drift_events.clone(),
            );
            registry.register(
                "schema_version",
                "Current inferred schema version of a bronze table",
                schema_version.clone(),
            );
            registry.register("rows", "Rows per stage, table and outcome", rows.clone());
            registry.register("commits", "Delta commits made", commits.clone());
            registry.register(
                "commit_conflicts",
                "Delta commits that lost a race and were retried",
                commit_conflicts.clone(),
            );
            registry.register("batch_errors", "Batches that failed and will be retried", batch_errors.clone());
            registry.register(
                "batch_duration_seconds",
                "Wall time of one batch from read to commit",
                batch_seconds.clone(),
            );
            registry.register("table_version", "Latest Delta version committed by this process", table_version.clone());
            registry.register(
                "notice_wakeups",
                "Stage passes started by a commit notice instead of the poll timer",
                notice_wakeups.clone(),
            );
            registry.register("grpc_requests", "gRPC requests served", grpc_requests.clone());
            let bridge_samples = Family::<BridgeLabels, Counter>::default();
            registry.register(
                "kafka2prom_samples",
                "kafka2prom: samples and dumps by outcome (exposed, dropped as older, evicted on revoke, expired by TTL, dropped oldest-first in emergency mode, invalid)",
                bridge_samples.clone(),
            );
            let bridge_series = Gauge::default();
            registry.register("kafka2prom_series", "kafka2prom: series exposed by this member", bridge_series.clone());
            let exporter_records = Family::<ExporterLabels, Counter>::default();
            registry.register(
                "log_exporter_records",
                "log-exporter: metric dumps, log lines and landing files by stream and outcome",
                exporter_records.clone(),
            );
            let max_event_time = Family::<TableLabels, Gauge>::default();
            registry.register(
                "max_event_time_unix_seconds",
                "Newest event time committed to a table (freshness = now - this; the catch-up measure of a DR side)",
                max_event_time.clone(),
            );
            let backlog = Family::<StageLabels, Gauge>::default();
            registry.register(
                "backlog",
                "Input units (files, messages, rows) the stage's last pass found; 0 = caught up. A stage that is behind keeps finding full batches",
                backlog.clone(),
            );
            let consumer_lag = Family::<LagLabels, Gauge>::default();
            registry.register(
                "kafka_consumer_lag",
                "Messages between a consumer's position and the partition's end (librdkafka statistics)",
                consumer_lag.clone(),
            );
            let erasure_requests = Family::<StateLabels, Gauge>::default();
            registry.register(
                "erasure_requests",
                "Forget-a-customer requests: state=open (not completed) and state=overdue (not completed within 7 days, or completed late)",
                erasure_requests.clone(),
            );
            Metrics {
                registry: Mutex::new(registry),
                rows,
                commits,
                commit_conflicts,
                batch_errors,
                batch_seconds,
                table_version,
                grpc_requests,
                notice_wakeups,
                event_log_records,
                expectation_rows,
                drift_events,
                schema_version,
                landing_recent_files,
                bronze_members_live,
                bronze_slots_owned,
                blank_lines,
                late_events,
                watermark,
                bridge_samples,
                bridge_series,
                exporter_records,
                max_event_time,
                backlog,
                consumer_lag,
                erasure_requests,
                status_counters: Mutex::new(BTreeMap::new()),
            }
        })
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }

    fn bump(&self, stage: &str, region: &str, name: &str, table: &str, n: u64) {
        let mut c = self.status_counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((stage.into(), region.into(), name.into(), table.into())).or_insert(0) += n;
    }

    /// Counters of one stage for the status RPC: (name, table, value).
    pub fn status_counters(&self, stage: &str, region: &str) -> Vec<(String, String, u64)> {
        let c = self.status_counters.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .filter(|((s, r, _, _), _)| s == stage && r == region)
            .map(|((_, _, n, t), v)| (n.clone(), t.clone(), *v))
            .collect()
    }
}

/// Internal event: one batch committed to one output table.
#[derive(Debug, Clone)]
pub struct BatchCommitted<'a> {
    pub stage: &'a str,
    pub region: &'a str,
    pub table: &'a str,
    pub version: i64,
    pub input_rows: u64,
    pub written: u64,
    pub quarantined: u64,
    pub duplicates: u64,
    /// Rows removed by `drop` expectations.
    pub dropped: u64,
    pub seconds: f64,
    pub input_position: &'a str,
    /// Newest event time (ms since the epoch) among the rows committed; 0 = none or unknown.
    pub max_event_ms: i64,
}

impl BatchCommitted<'_> {
    pub fn emit(&self) {
        tracing::info!(
            stage = self.stage,
            region = self.region,
            table = self.table,
            version = self.version,
            input_rows = self.input_rows,
            written = self.written,
            quarantined = self.quarantined,
            duplicates = self.duplicates,
            dropped = self.dropped,
            reconciled = self.reconciled(),
            seconds = self.seconds,
            input_position = self.input_position,
            "batch committed"
        );
        let m = Metrics::global();
        let tl = TableLabels { stage: self.stage.into(), region: self.region.into(), table: self.table.into() };
        for (outcome, n) in [
            ("input", self.input_rows),
            ("written", self.written),
            ("quarantined", self.quarantined),
            ("duplicate", self.duplicates),
            ("dropped", self.dropped),
        ] {
            m.rows
                .get_or_create(&RowLabels {
                    stage: self.stage.into(),
                    region: self.region.into(),
                    table: self.table.into(),
                    outcome: outcome.into(),
                })
                .inc_by(n);
            m.bump(self.stage, self.region, &format!("rows_{outcome}"), self.table, n);
        }
        m.commits.get_or_create(&tl).inc();
        // Every table that commits has its error and conflict series, at 0 until something
        // happens: rates and alerts then work from the first failure on.
        let _ = m.commit_conflicts.get_or_create(&tl);
        let _ = m.batch_errors.get_or_create(&tl);
        if self.max_event_ms > 0 {
            let g = m.max_event_time.get_or_create(&tl);
            let secs = self.max_event_ms.div_euclid(1000);
            if secs > g.get() {
                g.set(secs);
            }
        }
        m.bump(self.stage, self.region, "commits", self.table, 1);
        m.batch_seconds.get_or_create(&tl).observe(self.seconds);
        m.table_version.get_or_create(&tl).set(self.version);
        crate::event_log::emit(
            if self.reconciled() { crate::event_log::Level::Info } else { crate::event_log::Level::Error },
            self.stage,
            self.region,
            self.table,
            "flow_progress",
            serde_json::json!({
                "version": self.version,
                "input_position": self.input_position,
                "input_rows": self.input_rows,
                "written": self.written,
                "quarantined": self.quarantined,
                "duplicates": self.duplicates,
                "dropped": self.dropped,
                "reconciled": self.reconciled(),
                "seconds": self.seconds,
            }),
        );
    }

    /// input = written + quarantined + duplicates + dropped.
    pub fn reconciled(&self) -> bool {
        self.input_rows == self.written + self.quarantined + self.duplicates + self.dropped
    }
}

/// Internal event: a record was made in the event log.
pub fn event_logged(event_type: &str, level: &str) {
    Metrics::global()
        .event_log_records
        .get_or_create(&EventLabels { event_type: event_type.into(), level: level.into() })
        .inc();
}

/// Internal event: one expectation evaluated over one batch.
pub fn expectation_checked(region: &str, table: &str, expectation: &str, action: &str, passed: u64, failed: u64) {
    let m = Metrics::global();
    for (outcome, n) in [("passed", passed), ("failed", failed)] {
        m.expectation_rows
            .get_or_create(&ExpectationLabels {
                region: region.into(),
                table: table.into(),
                expectation: expectation.into(),
                action: action.into(),
                outcome: outcome.into(),
            })
            .inc_by(n);
    }
}

/// Internal event: a drift finding on a source.
pub fn drift_detected(region: &str, table: &str, kind: &str, field: &str) {
    Metrics::global()
        .drift_events
        .get_or_create(&DriftLabels {
            region: region.into(),
            table: table.into(),
            kind: kind.into(),
            field: field.into(),
        })
        .inc();
}

/// Internal event: a bronze table's schema version.
pub fn schema_version(stage: &str, region: &str, table: &str, version: i64) {
    Metrics::global()
        .schema_version
        .get_or_create(&TableLabels { stage: stage.into(), region: region.into(), table: table.into() })
        .set(version);
}

/// Internal event: the files bronze keeps in memory above its landing frontier, per source.
pub fn landing_discovery(region: &str, source: &str, recent: u64) {
    Metrics::global()
        .landing_recent_files
        .get_or_create(&TableLabels {
            stage: "bronze".into(),
            region: region.into(),
            table: format!("bronze/{source}"),
        })
        .set(recent as i64);
}

/// Internal event: the bronze replicas sharing the landing zone changed.
pub fn bronze_members(live: u64, owned_slots: u64) {
    let m = Metrics::global();
    m.bronze_members_live.set(live as i64);
    m.bronze_slots_owned.set(owned_slots as i64);
}

/// Internal event: kafka2prom counted `n` samples (or dumps) with `outcome`.
pub fn bridge(outcome: &str, n: u64) {
    if n > 0 {
        Metrics::global().bridge_samples.get_or_create(&BridgeLabels { outcome: outcome.into() }).inc_by(n);
    }
}

/// log-exporter: `n` records of `stream` with `outcome`.
pub fn exporter(stream: &str, outcome: &str, n: u64) {
    if n > 0 {
        Metrics::global()
            .exporter_records
            .get_or_create(&ExporterLabels { stream: stream.into(), outcome: outcome.into() })
            .inc_by(n);
    }
}

/// The input units a stage's last pass found (0 = caught up).
pub fn backlog(stage: &str, region: &str, units: u64) {
    Metrics::global()
        .backlog
        .get_or_create(&StageLabels { stage: stage.into(), region: region.into() })
        .set(units.min(i64::MAX as u64) as i64);
}

/// Open and overdue erasure requests (from `_tributary/forget_requests`).
pub fn erasure_requests(open: u64, overdue: u64) {
    let m = Metrics::global();
    m.erasure_requests.get_or_create(&StateLabels { state: "open".into() }).set(open as i64);
    m.erasure_requests.get_or_create(&StateLabels { state: "overdue".into() }).set(overdue as i64);
}

/// A consumer's lag per partition, from librdkafka statistics.
pub fn consumer_lag(group: &str, topic: &str, partition: i32, lag: i64) {
    Metrics::global()
        .consumer_lag
        .get_or_create(&LagLabels { group: group.into(), topic: topic.into(), partition: partition.to_string() })
        .set(lag);
}

/// Internal event: blank lines bronze skipped in a batch of landing files.
pub fn blank_lines(region: &str, source: &str, n: u64) {
    Metrics::global()
        .blank_lines
        .get_or_create(&TableLabels {
            stage: "bronze".into(),
            region: region.into(),
            table: format!("bronze/{source}"),
        })
        .inc_by(n);
}

/// Internal event: a commit lost a race to a concurrent writer and is retried.
pub fn commit_conflict(stage: &str, region: &str, table: &str, attempt: u32, reason: &str) {
    // A lost race is routine with many writers (it is retried or fenced): not a warning.
    tracing::info!(stage, region, table, attempt, reason, "commit conflict, retrying");
    let m = Metrics::global();
    m.commit_conflicts
        .get_or_create(&TableLabels { stage: stage.into(), region: region.into(), table: table.into() })
        .inc();
    m.bump(stage, region, "commit_conflicts", table, 1);
    crate::event_log::emit(
        crate::event_log::Level::Warn,
        stage,
        region,
        table,
        "commit_conflict",
        serde_json::json!({"attempt": attempt, "reason": reason}),
    );
}

/// Internal event: a stage was woken by a commit notice of one of its inputs.
pub fn notice_wakeup(stage: &str, region: &str) {
    let m = Metrics::global();
    m.notice_wakeups
        .get_or_create(&TableLabels { stage: stage.into(), region: region.into(), table: String::new() })
        .inc();
    m.bump(stage, region, "notice_wakeups", "", 1);
}

/// Internal event: a batch failed; the stage will retry it from the table's recorded position.
pub fn batch_failed(stage: &str, region: &str, table: &str, error: &dyn std::fmt::Display) {
    tracing::error!(stage, region, table, error = %error, "batch failed; will retry from the committed position");
    let m = Metrics::global();
    m.batch_errors
        .get_or_create(&TableLabels { stage: stage.into(), region: region.into(), table: table.into() })
        .inc();
    m.bump(stage, region, "batch_errors", table, 1);
    crate::event_log::emit(
        crate::event_log::Level::Error,
        stage,
        region,
        table,
        "error",
        serde_json::json!({"message": error.to_string(), "retrying": true}),
    );
}

/// The status RPC's counters of one stage (a mirror of its Prometheus counters).
pub fn stage_counters(stage: &str, region: &str) -> Vec<tributary_proto::v1::Counter> {
    Metrics::global()
        .status_counters(stage, region)
        .into_iter()
        .map(|(name, table, value)| tributary_proto::v1::Counter {
            name,
            labels: std::collections::HashMap::from([("table".to_string(), table)]),
            value,
        })
        .collect()
}

/// Late events of one gold batch and the source's watermark after it.
pub fn late_and_watermark(region: &str, table: &str, source: &str, late: u64, watermark_us: Option<i64>) {
    let m = Metrics::global();
    let l = WatermarkLabels { region: region.into(), table: table.into(), source: source.into() };
    if late > 0 {
        m.late_events.get_or_create(&l).inc_by(late);
    }
    if let Some(w) = watermark_us {
        m.watermark.get_or_create(&l).set(w.div_euclid(1_000_000));
    }
}

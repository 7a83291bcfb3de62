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
    pub seconds: f64,
    pub input_position: &'a str,
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
            reconciled = self.input_rows == self.written + self.quarantined + self.duplicates,
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
        m.bump(self.stage, self.region, "commits", self.table, 1);
        m.batch_seconds.get_or_create(&tl).observe(self.seconds);
        m.table_version.get_or_create(&tl).set(self.version);
    }
}

/// Internal event: a commit lost a race to a concurrent writer and is retried.
pub fn commit_conflict(stage: &str, region: &str, table: &str, attempt: u32, reason: &str) {
    tracing::warn!(stage, region, table, attempt, reason, "commit conflict, retrying");
    let m = Metrics::global();
    m.commit_conflicts
        .get_or_create(&TableLabels { stage: stage.into(), region: region.into(), table: table.into() })
        .inc();
    m.bump(stage, region, "commit_conflicts", table, 1);
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
}

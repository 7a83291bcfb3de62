//! The pipeline event log, in the spirit of the DLT event log: one record per batch
//! (`flow_progress`, with its reconciliation), per expectation and batch (`data_quality`), per
//! schema version (`schema_change`), per drift finding (`drift`), per lost commit race
//! (`commit_conflict`), per failure (`error`) and per operator action (`user_action`).
//!
//! Stages call [`record`]; a writer installed at start-up (`tributary_delta::event_log::start`)
//! appends the records to the Delta table `<data_root>/_tributary/event_log` in small batches.
//! Without a writer (unit tests) records only go to the log and the metric. The event log is an
//! operational record, not part of the exactly-once data path: a record can be lost when the
//! process dies between its batch commit and the next event-log flush (at most
//! `event_log.flush_interval_ms` of records), and nothing in the pipeline reads it back.

use serde_json::Value;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Every event type the log carries.
pub const EVENT_TYPES: &[&str] = &[
    "flow_progress",
    "data_quality",
    "schema_change",
    "drift",
    "commit_conflict",
    "error",
    "user_action",
    "late_events",
    "entity_rows_skipped",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// One event-log record.
#[derive(Debug, Clone)]
pub struct LogEvent {
    pub timestamp_us: i64,
    pub level: Level,
    pub stage: String,
    pub region: String,
    /// The table the record is about (`silver/billing`), or empty.
    pub table: String,
    /// One of [`EVENT_TYPES`].
    pub event_type: &'static str,
    pub details: Value,
}

impl LogEvent {
    pub fn new(level: Level, stage: &str, region: &str, table: &str, event_type: &'static str, details: Value) -> Self {
        debug_assert!(EVENT_TYPES.contains(&event_type));
        Self {
            timestamp_us: crate::now_ms() * 1000,
            level,
            stage: stage.into(),
            region: region.into(),
            table: table.into(),
            event_type,
            details,
        }
    }
}

/// What the writer task receives.
pub enum Msg {
    Record(LogEvent),
    /// Write everything buffered, then answer.
    Flush(oneshot::Sender<()>),
}

static SINK: Mutex<Option<mpsc::UnboundedSender<Msg>>> = Mutex::new(None);

/// Installs the writer's channel (replacing any earlier one).
pub fn install(tx: mpsc::UnboundedSender<Msg>) {
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
}

/// Whether a writer is installed.
pub fn installed() -> bool {
    SINK.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// Records one event: a log line, a metric and (with a writer) a row of the event-log table.
pub fn record(ev: LogEvent) {
    crate::metrics::event_logged(ev.event_type, ev.level.as_str());
    let details = ev.details.to_string();
    match ev.level {
        Level::Error => tracing::error!(
            stage = %ev.stage, region = %ev.region, table = %ev.table, event_type = ev.event_type, %details, "event log"
        ),
        Level::Warn => tracing::warn!(
            stage = %ev.stage, region = %ev.region, table = %ev.table, event_type = ev.event_type, %details, "event log"
        ),
        Level::Info => tracing::debug!(
            stage = %ev.stage, region = %ev.region, table = %ev.table, event_type = ev.event_type, %details, "event log"
        ),
    }
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = sink.as_ref()
        && tx.send(Msg::Record(ev)).is_err()
    {
        // The writer's runtime is gone (a finished test runtime); forget it.
        *sink = None;
    }
}

/// Shorthand for [`record`] of a new [`LogEvent`].
pub fn emit(level: Level, stage: &str, region: &str, table: &str, event_type: &'static str, details: Value) {
    record(LogEvent::new(level, stage, region, table, event_type, details));
}

/// Records that one table's flow stopped (a `fail` expectation, `failOnNewColumns`): it stays
/// stopped until the service restarts, the stage's other flows go on.
pub fn flow_stopped(stage: &str, region: &str, table: &str, message: &str) {
    emit(Level::Error, stage, region, table, "error", serde_json::json!({"message": message, "stopped": true}));
}

/// Waits until every record made so far has been written (or the writer gave up on them).
pub async fn flush() {
    let tx = SINK.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(tx) = tx {
        let (ack, done) = oneshot::channel();
        if tx.send(Msg::Flush(ack)).is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), done).await;
        }
    }
}

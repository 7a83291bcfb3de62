//! The writer of the pipeline event log: drains `tributary_core::event_log` records and appends
//! them to `<data_root>/_tributary/event_log` every `event_log.flush_interval_ms` (and on
//! `tributary_core::event_log::flush`). Several processes append to the same table; appends
//! never conflict logically, lost version races are retried with backoff.

use crate::{Commit, Table, Writer, schemas};
use deltalake::arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tributary_core::event_log::{LogEvent, Msg};
use tributary_core::{Config, Error, Result};

/// Records kept in memory while the table cannot be written; older ones are dropped (counted in
/// the log) beyond this.
const MAX_BUFFERED: usize = 100_000;

pub fn location(cfg: &Config) -> String {
    let root = cfg.data_root.trim_end_matches('/');
    format!("{root}/_tributary/event_log")
}

/// Starts the writer on the current runtime (when `event_log.enabled`).
pub fn start(cfg: &Config) {
    if !cfg.event_log.enabled {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tributary_core::event_log::install(tx);
    let location = location(cfg);
    let pipeline = cfg.pipeline.clone();
    let every = Duration::from_millis(cfg.event_log.flush_interval_ms);
    tokio::spawn(writer(rx, location, pipeline, every));
}

async fn writer(mut rx: mpsc::UnboundedReceiver<Msg>, location: String, pipeline: String, every: Duration) {
    let mut table: Option<Table> = None;
    let mut buf: Vec<LogEvent> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut acks = Vec::new();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Record(ev)) => { buf.push(ev); continue; }
                Some(Msg::Flush(ack)) => acks.push(ack),
                None => {}
            },
            _ = tick.tick() => {}
        }
        // Take whatever else is queued (a flush answers only after records sent before it).
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Record(ev) => buf.push(ev),
                Msg::Flush(ack) => acks.push(ack),
            }
        }
        if !buf.is_empty() {
            match append(&mut table, &location, &pipeline, &buf).await {
                Ok(()) => buf.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, records = buf.len(), "event log append failed; will retry");
                    table = None;
                    if buf.len() > MAX_BUFFERED {
                        let n = buf.len() - MAX_BUFFERED;
                        buf.drain(..n);
                        tracing::error!(dropped = n, "event log buffer full; oldest records dropped");
                    }
                }
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if rx.is_closed() && buf.is_empty() {
            return;
        }
    }
}

async fn append(table: &mut Option<Table>, location: &str, pipeline: &str, events: &[LogEvent]) -> Result<()> {
    if table.is_none() {
        *table = Some(
            Table::open_or_create(
                "_tributary/event_log",
                location,
                schemas::event_log(),
                schemas::EVENT_LOG_PARTITIONS,
            )
            .await?,
        );
    }
    let t = table.as_mut().ok_or_else(|| Error::internal("event log table"))?;
    let batch = to_batch(pipeline, events)?;
    t.refresh().await?;
    // Append-only, no input position: every process appends concurrently, retried on races.
    let writer = Writer { stage: "event_log".into(), region: String::new(), threads: 1, attempts: 50 };
    t.commit_batch(Commit::new(&[batch], vec![], HashMap::new(), -1), &writer).await?;
    Ok(())
}

fn to_batch(pipeline: &str, events: &[LogEvent]) -> Result<RecordBatch> {
    let mut id = StringBuilder::new();
    let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut level, mut pipe, mut stage, mut region, mut table, mut ty, mut details, mut date) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for e in events {
        id.append_value(uuid::Uuid::new_v4().to_string());
        ts.append_value(e.timestamp_us);
        level.append_value(e.level.as_str());
        pipe.append_value(pipeline);
        stage.append_value(&e.stage);
        region.append_value(&e.region);
        table.append_value(&e.table);
        ty.append_value(e.event_type);
        details.append_value(e.details.to_string());
        date.append_value(tributary_events::date_of_micros(e.timestamp_us));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(ts.finish()),
        Arc::new(level.finish()),
        Arc::new(pipe.finish()),
        Arc::new(stage.finish()),
        Arc::new(region.finish()),
        Arc::new(table.finish()),
        Arc::new(ty.finish()),
        Arc::new(details.finish()),
        Arc::new(date.finish()),
    ];
    RecordBatch::try_new(schemas::event_log(), cols)
        .map_err(|e| Error::internal("building event log batch").with_source(e))
}

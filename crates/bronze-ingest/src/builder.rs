//! Columnar builders for bronze rows.

use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use std::sync::Arc;
use tributary_core::{Error, Result};
use tributary_delta::schemas;
use tributary_events::Decoded;

pub use tributary_delta::quarantine::QuarantineRows;

/// Where a bronze row came from.
#[derive(Debug, Clone)]
pub enum Lineage<'a> {
    File { path: &'a str, line: i64 },
    Kafka { topic: &'a str, partition: i32, offset: i64, timestamp_us: Option<i64> },
}

impl Lineage<'_> {
    /// JSON form kept in quarantine rows.
    pub fn json(&self) -> String {
        match self {
            Lineage::File { path, line } => serde_json::json!({"file": path, "line": line}).to_string(),
            Lineage::Kafka { topic, partition, offset, .. } => {
                serde_json::json!({"topic": topic, "partition": partition, "offset": offset}).to_string()
            }
        }
    }
}

pub struct BronzeRows {
    source: String,
    now_us: i64,
    event_id: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    src: StringBuilder,
    region: StringBuilder,
    workspace: StringBuilder,
    customer: StringBuilder,
    egress: BooleanBuilder,
    payload: StringBuilder,
    rescued: StringBuilder,
    file: StringBuilder,
    line: Int64Builder,
    k_topic: StringBuilder,
    k_partition: Int32Builder,
    k_offset: Int64Builder,
    k_ts: TimestampMicrosecondBuilder,
    ingested: TimestampMicrosecondBuilder,
    date: StringBuilder,
    len: usize,
}

impl BronzeRows {
    pub fn new(source: &str, now_us: i64) -> Self {
        Self {
            source: source.into(),
            now_us,
            event_id: StringBuilder::new(),
            event_time: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            src: StringBuilder::new(),
            region: StringBuilder::new(),
            workspace: StringBuilder::new(),
            customer: StringBuilder::new(),
            egress: BooleanBuilder::new(),
            payload: StringBuilder::new(),
            rescued: StringBuilder::new(),
            file: StringBuilder::new(),
            line: Int64Builder::new(),
            k_topic: StringBuilder::new(),
            k_partition: Int32Builder::new(),
            k_offset: Int64Builder::new(),
            k_ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            ingested: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            date: StringBuilder::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, d: Decoded, lineage: &Lineage<'_>) {
        self.event_id.append_option(d.event_id.as_deref());
        self.event_time.append_option(d.event_time);
        self.src.append_value(&self.source);
        self.region.append_option(d.region.as_deref());
        self.workspace.append_option(d.workspace_id.as_deref());
        self.customer.append_option(d.customer_id.as_deref());
        self.egress.append_option(d.egress_approved);
        self.payload.append_value(&d.payload);
        self.rescued.append_option(d.rescued.as_deref());
        match lineage {
            Lineage::File { path, line } => {
                self.file.append_value(path);
                self.line.append_value(*line);
                self.k_topic.append_null();
                self.k_partition.append_null();
                self.k_offset.append_null();
                self.k_ts.append_null();
            }
            Lineage::Kafka { topic, partition, offset, timestamp_us } => {
                self.file.append_null();
                self.line.append_null();
                self.k_topic.append_value(topic);
                self.k_partition.append_value(*partition);
                self.k_offset.append_value(*offset);
                self.k_ts.append_option(*timestamp_us);
            }
        }
        self.ingested.append_value(self.now_us);
        self.date.append_option(d.event_time.map(tributary_events::date_of_micros));
        self.len += 1;
    }

    pub fn finish(mut self) -> Result<Vec<RecordBatch>> {
        if self.len == 0 {
            return Ok(vec![]);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.src.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.workspace.finish()),
            Arc::new(self.customer.finish()),
            Arc::new(self.egress.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.rescued.finish()),
            Arc::new(self.file.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.k_topic.finish()),
            Arc::new(self.k_partition.finish()),
            Arc::new(self.k_offset.finish()),
            Arc::new(self.k_ts.finish()),
            Arc::new(self.ingested.finish()),
            Arc::new(self.date.finish()),
        ];
        let b = RecordBatch::try_new(schemas::bronze(), cols)
            .map_err(|e| Error::internal("building bronze batch").with_source(e))?;
        Ok(vec![b])
    }
}

//! Columnar builders for bronze rows.

use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use std::sync::Arc;
use tributary_core::{Error, Result};
use tributary_delta::schemas;
use tributary_events::Decoded;

pub use tributary_delta::quarantine::QuarantineRows;

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
            ingested: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            date: StringBuilder::new(),
            len: 0,
        }
    }

    pub fn push(&mut self, d: Decoded, file: &str, line: i64) {
        self.event_id.append_option(d.event_id.as_deref());
        self.event_time.append_option(d.event_time);
        self.src.append_value(&self.source);
        self.region.append_option(d.region.as_deref());
        self.workspace.append_option(d.workspace_id.as_deref());
        self.customer.append_option(d.customer_id.as_deref());
        self.egress.append_option(d.egress_approved);
        self.payload.append_value(&d.payload);
        self.rescued.append_option(d.rescued.as_deref());
        self.file.append_value(file);
        self.line.append_value(line);
        self.ingested.append_value(self.now_us);
        self.date
            .append_option(d.event_time.map(tributary_events::date_of_micros));
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
            Arc::new(self.ingested.finish()),
            Arc::new(self.date.finish()),
        ];
        let b = RecordBatch::try_new(schemas::bronze(), cols)
            .map_err(|e| Error::internal("building bronze batch").with_source(e))?;
        Ok(vec![b])
    }
}

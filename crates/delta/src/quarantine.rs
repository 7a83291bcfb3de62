//! Quarantine rows: raw bytes, reason code, rule, lineage and time. Shared by every layer.

use crate::schemas;
use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use std::sync::Arc;
use tributary_core::{Error, Result};

pub struct QuarantineRows {
    now_us: i64,
    reason: StringBuilder,
    rule: StringBuilder,
    detail: StringBuilder,
    raw: BinaryBuilder,
    event_id: StringBuilder,
    file: StringBuilder,
    line: Int64Builder,
    lineage: StringBuilder,
    at: TimestampMicrosecondBuilder,
    source: StringBuilder,
    /// Finished batches taken over from other builders (`absorb`), kept after this one's rows.
    extra: Vec<RecordBatch>,
    len: usize,
}

impl QuarantineRows {
    pub fn new(now_us: i64) -> Self {
        Self {
            now_us,
            reason: StringBuilder::new(),
            rule: StringBuilder::new(),
            detail: StringBuilder::new(),
            raw: BinaryBuilder::new(),
            event_id: StringBuilder::new(),
            file: StringBuilder::new(),
            line: Int64Builder::new(),
            lineage: StringBuilder::new(),
            at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            source: StringBuilder::new(),
            extra: Vec::new(),
            len: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        source: &str,
        reason: &str,
        rule: Option<&str>,
        detail: &str,
        raw: &[u8],
        event_id: Option<&str>,
        file: Option<&str>,
        line: Option<i64>,
        lineage: Option<&str>,
    ) {
        self.reason.append_value(reason);
        self.rule.append_option(rule);
        self.detail.append_value(detail);
        self.raw.append_value(raw);
        self.event_id.append_option(event_id);
        self.file.append_option(file);
        self.line.append_option(line);
        self.lineage.append_option(lineage);
        self.at.append_value(self.now_us);
        self.source.append_value(source);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The time stamped on every row of this builder.
    pub fn now_us(&self) -> i64 {
        self.now_us
    }

    /// Takes over the rows of another builder (e.g. one filled by a worker thread).
    pub fn absorb(&mut self, other: QuarantineRows) -> Result<()> {
        let n = other.len;
        self.extra.extend(other.finish()?);
        self.len += n;
        Ok(())
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(mut self) -> Result<Vec<RecordBatch>> {
        let extra_rows: usize = self.extra.iter().map(|b| b.num_rows()).sum();
        if self.len == extra_rows {
            return Ok(self.extra);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.reason.finish()),
            Arc::new(self.rule.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.raw.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.file.finish()),
            Arc::new(self.line.finish()),
            Arc::new(self.lineage.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.source.finish()),
        ];
        let b = RecordBatch::try_new(schemas::quarantine(), cols)
            .map_err(|e| Error::internal("building quarantine batch").with_source(e))?;
        let mut out = vec![b];
        out.extend(self.extra);
        Ok(out)
    }
}

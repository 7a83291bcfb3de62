//! Commit notices: after every commit a stage announces (table, version, rows, max event_time)
//! so downstream stages wake at once instead of waiting for their next poll. The transport
//! (Kafka) is installed by the binary; without one, notices are dropped and stages poll.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommitNotice {
    /// Table URI (file:///…/silver/billing/).
    pub table: String,
    pub name: String,
    pub version: i64,
    pub rows: u64,
    /// Max event_time of the committed rows (ms since epoch), 0 when unknown.
    pub max_event_time_ms: i64,
    pub stage: String,
    pub region: String,
    pub committed_at_ms: i64,
    /// W3C trace context of the commit's span (`tributary.commit`), when traces are exported:
    /// the reader's commits of this version become its children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

pub trait NoticeSink: Send + Sync + 'static {
    fn publish(&self, notice: CommitNotice);
}

static SINK: OnceLock<Box<dyn NoticeSink>> = OnceLock::new();

/// Installs the process-wide sink (first call wins).
pub fn install(sink: Box<dyn NoticeSink>) {
    let _ = SINK.set(sink);
}

/// Publishes a notice if a sink is installed. Never fails the caller.
pub fn publish(notice: CommitNotice) {
    if let Some(s) = SINK.get() {
        s.publish(notice);
    }
}

/// Normalised form of a table URI for matching notices to inputs.
pub fn table_key(uri: &str) -> String {
    uri.trim_end_matches('/').to_string()
}

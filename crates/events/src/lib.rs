//! Event contracts (the JSON envelope every source shares), the decoder bronze uses, and the
//! deterministic generator with its ground truth.

pub mod contract;
pub mod decimal;
pub mod decode;
pub mod generator;
pub mod lines;
pub mod rng;
pub mod truth;

pub use decode::{Decoded, Reject, decode_event};

/// The four telemetry sources.
pub const SOURCES: &[&str] = &["audit", "job", "billing", "cluster_metrics"];

/// Parses `event_time`: RFC 3339 text or epoch milliseconds. Returns microseconds since epoch.
pub fn parse_event_time(raw: &serde_json::value::RawValue) -> Option<i64> {
    let text = raw.get();
    if let Some(stripped) = text.strip_prefix('"') {
        let s: String = serde_json::from_str(text).ok().or_else(|| Some(stripped.trim_end_matches('"').to_string()))?;
        let t = chrono::DateTime::parse_from_rfc3339(&s).ok()?;
        return Some(t.timestamp_micros());
    }
    let ms: i64 = text.parse().ok()?;
    // Reasonable bounds: years 1970..2200.
    if !(0..=7_258_118_400_000).contains(&ms) {
        return None;
    }
    Some(ms * 1000)
}

/// `YYYY-MM-DD` of a microsecond timestamp.
pub fn date_of_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

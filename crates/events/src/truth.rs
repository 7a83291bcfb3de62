//! Ground truth the generator writes beside the traffic, so tests can check every layer exactly.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceTruth {
    pub files: u64,
    /// Lines written (every kind below, duplicates included).
    pub lines: u64,
    /// Lines bronze must quarantine (malformed JSON, invalid UTF-8, not an object).
    pub malformed: u64,
    /// Parseable events with a null event_id (silver quarantines them).
    pub null_id: u64,
    /// Exact re-sends of an earlier valid event.
    pub duplicates: u64,
    /// Valid events whose event_time is deliberately late.
    pub late: u64,
    /// Valid events carrying unknown extra fields.
    pub unknown_fields: u64,
    /// Distinct valid events: what silver must hold.
    pub unique_valid: u64,
    /// Distinct valid events with egress_approved = true: what central must hold.
    pub egress_unique: u64,
}

impl SourceTruth {
    /// Rows bronze must hold: every line that decodes.
    pub fn bronze_rows(&self) -> u64 {
        self.lines - self.malformed
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Truth {
    pub seed: u64,
    /// region -> source -> counts
    pub regions: BTreeMap<String, BTreeMap<String, SourceTruth>>,
    /// "region|customer|sku|hour-start RFC 3339" -> exact DBU sum (decimal text)
    pub billing_hourly: BTreeMap<String, String>,
    /// "region|customer|sku|hour-start RFC 3339" -> event count
    pub billing_hourly_events: BTreeMap<String, u64>,
    /// "region|source|workspace|minute-start RFC 3339" -> event count
    pub event_counts_minute: BTreeMap<String, u64>,
}

impl Truth {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }
    pub fn total(&self, f: impl Fn(&SourceTruth) -> u64) -> u64 {
        self.regions.values().flat_map(|m| m.values()).map(f).sum()
    }
}

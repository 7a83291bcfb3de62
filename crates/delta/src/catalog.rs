//! The table catalog: what two services must agree on about a table, in one place — ids,
//! locations, schemas, partitioning, `txn` app_id builders and shared table properties.
//!
//! Services depend on this crate, never on each other: silver finds bronze's tables here, gold
//! finds silver's, the federator finds gold's and reads gold's watermark property here.

use crate::{Table, schemas};
use deltalake::arrow::datatypes::SchemaRef;
use std::collections::BTreeMap;
use tributary_core::{Config, Error, Result};

pub const MINUTE_US: i64 = 60_000_000;
pub const HOUR_US: i64 = 3_600_000_000;
pub const DAY_US: i64 = 86_400_000_000;

/// The gold outputs of a region (and their central mirrors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldKind {
    /// Event counts per minute.
    EventCounts,
    EventCountsHourly,
    EventCountsDaily,
    /// Billing usage per hour.
    Billing,
    BillingDaily,
}

impl GoldKind {
    pub const ALL: [GoldKind; 5] =
        [Self::EventCounts, Self::EventCountsHourly, Self::EventCountsDaily, Self::Billing, Self::BillingDaily];

    pub fn table_name(self) -> &'static str {
        match self {
            Self::EventCounts => "event_counts_minute",
            Self::EventCountsHourly => "event_counts_hourly",
            Self::EventCountsDaily => "event_counts_daily",
            Self::Billing => "billing_usage_hourly",
            Self::BillingDaily => "billing_usage_daily",
        }
    }
    pub fn is_billing(self) -> bool {
        matches!(self, Self::Billing | Self::BillingDaily)
    }
    pub fn schema(self) -> SchemaRef {
        if self.is_billing() { schemas::gold_billing() } else { schemas::gold_event_counts() }
    }
    pub fn window_us(self) -> i64 {
        match self {
            Self::EventCounts => MINUTE_US,
            Self::EventCountsHourly | Self::Billing => HOUR_US,
            Self::EventCountsDaily | Self::BillingDaily => DAY_US,
        }
    }
}

// ---- bronze -------------------------------------------------------------------------------

pub fn bronze_location(cfg: &Config, region: &str, source: &str) -> String {
    cfg.region_table(region, &format!("bronze/{source}"))
}
pub fn bronze_quarantine_location(cfg: &Config, region: &str) -> String {
    cfg.region_table(region, "bronze/_quarantine")
}
/// Landing files of one source: `txn` version = batch sequence.
pub fn bronze_landing_app_id(cfg: &Config, region: &str, source: &str) -> String {
    format!("{}/landing/{region}/{source}", cfg.pipeline)
}

/// One slot of a source's landing files when `bronze.landing_slots` > 1 (several replicas
/// share the landing zone): `txn` version = batch sequence of that slot. With one slot the id is
/// `bronze_landing_app_id`'s, so turning slots on is a change of the id (refused at start when
/// the table holds the other layout's positions).
pub fn bronze_landing_slot_app_id(cfg: &Config, region: &str, source: &str, slot: u32, slots: u32) -> String {
    if slots <= 1 {
        bronze_landing_app_id(cfg, region, source)
    } else {
        format!("{}/landing/{region}/{source}/slot-{slot}-of-{slots}", cfg.pipeline)
    }
}

/// The slot of a landing file: FNV-1a (64 bit) of its path inside the landing zone, modulo
/// `slots`. Stable across builds and machines (it decides which position holds the file).
pub fn landing_slot(path: &str, slots: u32) -> u32 {
    if slots <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % slots as u64) as u32
}

/// A backfill of one source: `txn` version = landing files of its plan committed.
pub fn bronze_backfill_app_id(cfg: &Config, region: &str, source: &str, id: &str) -> String {
    format!("{}/backfill/{id}/{region}/{source}", cfg.pipeline)
}

// ---- silver -------------------------------------------------------------------------------

pub fn silver_location(cfg: &Config, region: &str, source: &str) -> String {
    cfg.region_table(region, &format!("silver/{source}"))
}
pub fn silver_quarantine_location(cfg: &Config, region: &str) -> String {
    cfg.region_table(region, "silver/_quarantine")
}
pub fn silver_dedup_location(cfg: &Config, region: &str, source: &str) -> String {
    cfg.region_table(region, &format!("silver/_dedup/{source}"))
}
/// Silver reading bronze: `txn` version = bronze version.
pub fn silver_input_app_id(cfg: &Config, region: &str, source: &str) -> String {
    format!("{}/silver/{region}/bronze/{source}", cfg.pipeline)
}
/// The dedup key index following silver: `txn` version = silver version.
pub fn silver_dedup_app_id(cfg: &Config, region: &str, source: &str) -> String {
    format!("{}/silver/{region}/dedup/{source}", cfg.pipeline)
}
pub fn silver_entity_app_id(cfg: &Config, region: &str, entity: &str) -> String {
    format!("{}/silver/{region}/entity/{entity}", cfg.pipeline)
}

// ---- gold ---------------------------------------------------------------------------------

pub fn gold_location(cfg: &Config, region: &str, kind: GoldKind) -> String {
    cfg.region_table(region, &format!("gold/{}", kind.table_name()))
}
/// Gold reading silver: `txn` version = silver version.
pub fn gold_input_app_id(cfg: &Config, region: &str, kind: GoldKind, source: &str) -> String {
    format!("{}/gold/{region}/{}/silver/{source}", cfg.pipeline, kind.table_name())
}

/// Gold table property: per-source max committed event_time (µs), written in the same commit as
/// the rows computed with it; the watermark is this minus the allowed lateness.
pub const MAX_EVENT_TIME_PROPERTY: &str = "tributary.max_event_time";

/// The per-source max event times recorded in a gold table's properties.
pub fn recorded_max_event_time(t: &Table) -> Result<BTreeMap<String, i64>> {
    match t.properties()?.get(MAX_EVENT_TIME_PROPERTY) {
        Some(v) => serde_json::from_str(v)
            .map_err(|e| Error::internal(format!("{}: bad {MAX_EVENT_TIME_PROPERTY} property", t.name)).with_source(e)),
        None => Ok(BTreeMap::new()),
    }
}

/// Per-source watermarks (µs) from max event times.
pub fn watermarks(max_event_time: &BTreeMap<String, i64>, lateness_us: i64) -> BTreeMap<String, i64> {
    max_event_time.iter().map(|(s, m)| (s.clone(), m - lateness_us)).collect()
}

// ---- central ------------------------------------------------------------------------------

pub fn central_events_location(cfg: &Config) -> String {
    cfg.central_table("events")
}
pub fn central_gold_location(cfg: &Config, kind: GoldKind) -> String {
    cfg.central_table(kind.table_name())
}
pub fn central_watermarks_location(cfg: &Config) -> String {
    cfg.central_table("region_watermarks")
}
/// The federator mirroring a region's silver table.
pub fn central_silver_app_id(cfg: &Config, region: &str, source: &str) -> String {
    format!("{}/central/{region}/silver/{source}", cfg.pipeline)
}
/// The disaster-recovery epoch of a region, a `txn` on every central table: each `failover` /
/// `failback` raises it by one; a federator commits with it unchanged, so a commit from the side
/// that was switched away from is refused (it fences a zombie primary).
pub fn central_dr_app_id(cfg: &Config, region: &str) -> String {
    format!("{}/dr/{region}", cfg.pipeline)
}
/// An input position of the federator within DR epoch `epoch` (0 = before any switch: the plain
/// app_id, so enabling DR changes nothing for an existing central table).
pub fn with_epoch(app_id: &str, epoch: i64) -> String {
    if epoch <= 0 { app_id.to_string() } else { format!("{app_id}#dr{epoch}") }
}
/// The federator mirroring a region's gold table.
pub fn central_gold_app_id(cfg: &Config, region: &str, kind: GoldKind) -> String {
    format!("{}/central/{region}/gold/{}", cfg.pipeline, kind.table_name())
}
/// The federator publishing a region's watermarks for one gold table.
pub fn central_watermarks_app_id(cfg: &Config, region: &str, kind: GoldKind) -> String {
    format!("{}/central/{region}/watermarks/{}", cfg.pipeline, kind.table_name())
}

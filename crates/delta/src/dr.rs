//! Disaster recovery: which side (primary or secondary pipeline) serves a region's rows in the
//! central tables, switched by `failover` / `failback`.
//!
//! The switch is recorded where the federators commit: a `txn(<pipeline>/dr/<region>, epoch)` on
//! every central table, raised by one per switch (`central/events` first). Even epochs are served
//! by `dr.active` (default the primary), odd ones by the other side. Every federator commit
//! carries that txn unchanged, so once a switch has landed, a commit from the side switched away
//! from — a primary that comes back from a partition still believing it serves — is refused by
//! the same check that fences a zombie writer; it never lands next to the other side's rows.
//! A switch is idempotent (asking for the side already serving changes nothing, and completes a
//! switch that was interrupted between tables) and recorded in each commit's `commitInfo`
//! (`tributary.dr`: from, to, epoch, by, at) and in the event log.

use crate::catalog::{self, GoldKind};
use crate::{Commit, PositionMove, Table, Writer};
use std::collections::HashMap;
use tributary_core::{Config, Error, Result};

/// What one switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    pub region: String,
    pub from: &'static str,
    pub to: &'static str,
    /// The epoch now recorded (raw txn value; -1 = none).
    pub epoch: i64,
    /// Tables whose epoch this call raised (0: it was already switched).
    pub tables: usize,
}

impl std::fmt::Display for Switched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tables == 0 {
            write!(
                f,
                "{}: {} already serves central (epoch {}); nothing changed",
                self.region,
                self.to,
                self.epoch.max(0)
            )
        } else {
            write!(
                f,
                "{}: central now served by {} (was {}), epoch {}, recorded on {} central tables",
                self.region, self.to, self.from, self.epoch, self.tables
            )
        }
    }
}

async fn central_tables(cfg: &Config) -> Result<Vec<Table>> {
    let mut out = vec![
        Table::open_or_create(
            "central/events",
            &catalog::central_events_location(cfg),
            crate::schemas::central_events(),
            crate::schemas::CENTRAL_PARTITIONS,
        )
        .await?,
    ];
    for kind in GoldKind::ALL {
        out.push(
            Table::open_or_create(
                &format!("central/{}", kind.table_name()),
                &catalog::central_gold_location(cfg, kind),
                crate::schemas::central_gold(kind.schema()),
                crate::schemas::CENTRAL_PARTITIONS,
            )
            .await?,
        );
    }
    out.push(
        Table::open_or_create(
            "central/region_watermarks",
            &catalog::central_watermarks_location(cfg),
            crate::schemas::central_watermarks(),
            &["region", "gold_table"],
        )
        .await?,
    );
    Ok(out)
}

fn side(s: &str) -> Result<&'static str> {
    match s {
        "primary" => Ok("primary"),
        "secondary" => Ok("secondary"),
        other => Err(Error::user(format!("DR side {other:?}: expected primary or secondary"))),
    }
}

/// The epoch recorded for `region` (raw txn value, -1 = none) and the side serving it.
pub async fn serving(cfg: &Config, region: &str) -> Result<(i64, &'static str)> {
    let events = Table::open_existing("central/events", &catalog::central_events_location(cfg)).await?;
    let epoch = match events {
        Some(t) => t.txn_version(&catalog::central_dr_app_id(cfg, region)).await?.unwrap_or(-1),
        None => -1,
    };
    Ok((epoch, cfg.dr.active_at(epoch)))
}

/// Makes `to` the side serving `region` in central. `by` names who asked (recorded).
pub async fn switch(cfg: &Config, region: &str, to: &str, by: &str) -> Result<Switched> {
    let to = side(to)?;
    if !cfg.regions.iter().any(|r| r == region) {
        return Err(Error::user(format!("region {region:?} is not in the config's regions {:?}", cfg.regions)));
    }
    let app_id = catalog::central_dr_app_id(cfg, region);
    let mut tables = central_tables(cfg).await?;
    let current = tables[0].txn_version(&app_id).await?.unwrap_or(-1);
    let from = cfg.dr.active_at(current);
    // Already serving: only finish a switch interrupted between tables (epoch = events').
    let target = if from == to { current } else { current.max(0) + 1 };
    let mut raised = 0;
    for t in &mut tables {
        for attempt in 0..5 {
            t.refresh().await?;
            let at = t.txn_version(&app_id).await?.unwrap_or(-1);
            if at >= target {
                break;
            }
            let meta = HashMap::from([(
                "tributary.dr".to_string(),
                serde_json::json!({"region": region, "from": from, "to": to, "epoch": target, "by": by, "at": tributary_core::now_ms()}),
            )]);
            let writer =
                Writer { stage: "dr".into(), region: region.into(), threads: 1, attempts: cfg.commit_attempts as u32 };
            match t
                .commit_batch(
                    Commit::new(&[], vec![PositionMove { app_id: app_id.clone(), from: at, to: target }], meta, -1),
                    &writer,
                )
                .await
            {
                Ok(_) => {
                    raised += 1;
                    break;
                }
                // Another switch of this region raced us: look again.
                Err(e) if e.kind == tributary_core::ErrorKind::Conflict && attempt < 4 => continue,
                Err(e) => return Err(e),
            }
        }
    }
    let done = Switched { region: region.into(), from, to, epoch: target, tables: raised };
    if raised > 0 {
        tributary_core::event_log::emit(
            tributary_core::event_log::Level::Warn,
            "dr",
            region,
            "central",
            "user_action",
            serde_json::json!({"action": if to == "secondary" { "failover" } else { "failback" }, "from": from, "to": to, "epoch": target, "by": by}),
        );
        tracing::warn!(region, from, to, epoch = target, by, "DR switch recorded in central");
    }
    Ok(done)
}

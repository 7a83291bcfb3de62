//! `tributary dr-status`: which side serves each region in central, and how far this side's
//! tables have got — the seed's catch-up check (`max(event_timestamp)` per table, the same
//! timestamp in both landing zones) — compared with the newest event of the landing zone and,
//! with `--caught-up-at`, with an instant ("has the secondary processed everything from before
//! the outage started?").

use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use tributary_core::{Config, Error, Result};
use tributary_delta::Table;
use tributary_delta::catalog::{self, GoldKind};

pub struct Row {
    pub table: String,
    /// The sources whose events the table holds.
    pub sources: Vec<String>,
    /// Microseconds; None: empty or absent.
    pub max_event_us: Option<i64>,
}

fn rfc(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into())
}

/// max(event_time) of a table from its files' statistics (no data file opened).
fn stats_max(t: &Table) -> Result<Option<i64>> {
    let mut max = None;
    for f in t.files()? {
        let Some(stats) = f.stats else { continue };
        let v: serde_json::Value =
            serde_json::from_str(&stats).map_err(|e| Error::internal("file stats").with_source(e))?;
        let Some(m) = v.pointer("/maxValues/event_time") else { continue };
        let us = match m {
            serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros()),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        };
        max = max.max(us);
    }
    Ok(max)
}

/// The newest event time in a landing zone: the event times of the lexically last file of each
/// source (the landing contract: files of a source arrive in name order).
async fn landing_newest(cfg: &Config, region: &str) -> Result<std::collections::BTreeMap<String, i64>> {
    let root = cfg.landing(region);
    let store = tributary_delta::store::root_store(&root)?;
    let mut out = std::collections::BTreeMap::new();
    for source in &cfg.bronze.sources {
        let mut max = None;
        let prefix = object_store::path::Path::from(source.as_str());
        let metas: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::external(format!("listing {root}/{source}")).with_source(e))?;
        let newest = metas
            .into_iter()
            .filter(|m| m.location.parts().all(|p| !p.as_ref().starts_with('.') && !p.as_ref().starts_with('_')))
            .max_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        let Some(newest) = newest else { continue };
        let raw = store
            .get(&newest.location)
            .await
            .map_err(|e| Error::external(format!("reading {root}/{}", newest.location)).with_source(e))?
            .bytes()
            .await
            .map_err(|e| Error::external(format!("reading {root}/{}", newest.location)).with_source(e))?;
        let Ok(body) = bronze_ingest::files::decompress(newest.location.as_ref(), raw) else { continue };
        for line in body.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
            let Some(t) = v.get("event_time") else { continue };
            let Ok(raw) = serde_json::value::to_raw_value(t) else { continue };
            max = max.max(tributary_events::parse_event_time(&raw));
        }
        if let Some(m) = max {
            out.insert(source.clone(), m);
        }
    }
    Ok(out)
}

/// This side's tables of `region` with their max(event_time).
pub async fn tables(cfg: &Config, region: &str) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for s in &cfg.bronze.sources {
        let name = format!("silver/{s}");
        let t = Table::open_existing(&name, &catalog::silver_location(cfg, region, s)).await?;
        out.push(Row {
            table: name,
            sources: vec![s.clone()],
            max_event_us: match t {
                Some(t) => stats_max(&t)?,
                None => None,
            },
        });
    }
    for k in GoldKind::ALL {
        let name = format!("gold/{}", k.table_name());
        let t = Table::open_existing(&name, &catalog::gold_location(cfg, region, k)).await?;
        let max = match t {
            Some(t) => catalog::recorded_max_event_time(&t)?.values().copied().max(),
            None => None,
        };
        out.push(Row { table: name, sources: cfg.bronze.sources.clone(), max_event_us: max });
    }
    Ok(out)
}

/// Parses an instant: RFC 3339 or epoch milliseconds; returns microseconds.
pub fn parse_instant(s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms * 1000);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| Error::user(format!("{s:?}: expected an RFC 3339 time or epoch milliseconds")).with_source(e))
}

/// The report; `Ok((text, caught_up))` where caught_up is false when `at` was given and some
/// table of this side has not processed events up to it.
pub async fn report(cfg: &Config, regions: &[String], at: Option<i64>) -> Result<(String, bool)> {
    let side = if cfg.dr.enabled() { cfg.dr.role.as_str() } else { "this pipeline (dr.role unset)" };
    let mut text = String::new();
    let mut all = true;
    for region in regions {
        let (epoch, serving) = tributary_delta::dr::serving(cfg, region).await?;
        let landing = landing_newest(cfg, region).await?;
        let newest = landing.values().copied().max();
        text.push_str(&format!(
            "{region}: central served by {serving} (epoch {}); this side: {side}; landing zone newest event {}\n",
            epoch.max(0),
            rfc(newest)
        ));
        for row in tables(cfg, region).await? {
            // The newest event of the table's sources in the landing zone.
            let zone = row.sources.iter().filter_map(|s| landing.get(s)).copied().max();
            let mut line = format!("  {:<34} max(event_time) {}", row.table, rfc(row.max_event_us));
            if let Some(lu) = zone {
                line.push_str(&match row.max_event_us {
                    Some(m) => format!("  {:.1}s behind the landing zone", (lu - m).max(0) as f64 / 1e6),
                    None => "  (nothing yet)".into(),
                });
            }
            if let Some(at) = at {
                // Caught up with `at`: it holds events from `at` on, or everything the landing
                // zone holds (the zone has nothing newer for it).
                let ok = row.max_event_us.is_some_and(|m| m >= at || zone.is_some_and(|z| m >= z));
                all &= ok;
                line.push_str(if ok { "  caught up" } else { "  NOT caught up" });
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
    if let Some(at) = at {
        text.push_str(&format!(
            "{side} {} everything up to {}\n",
            if all { "has processed" } else { "has NOT yet processed" },
            rfc(Some(at))
        ));
    }
    Ok((text, all))
}

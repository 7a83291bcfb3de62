//! `tributary events`: prints the pipeline event log.

use deltalake::arrow::array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use tributary_core::{Config, Error, Result};
use tributary_delta::Table;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub timestamp: String,
    pub timestamp_us: i64,
    pub level: String,
    pub stage: String,
    pub region: String,
    pub table: String,
    pub event_type: String,
    pub details: serde_json::Value,
}

/// `--since`: an RFC 3339 time or a duration back from now (`90s`, `15m`, `2h`, `7d`).
pub fn parse_since(s: &str, now_us: i64) -> Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| Error::user(format!("--since {s:?}: expected e.g. 15m, 2h, 7d or an RFC 3339 time")))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(Error::user(format!("--since {s:?}: unit must be s, m, h or d"))),
    };
    Ok(now_us - secs * 1_000_000)
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::internal(format!("event log lacks column {name}")))
}

/// Reads the records at or after `since_us`, oldest first, filtered by the non-empty filters.
pub async fn read(cfg: &Config, since_us: i64, types: &[String], stage: &str, region: &str) -> Result<Vec<Record>> {
    let Some(table) = Table::open_existing("_tributary/event_log", &tributary_delta::event_log::location(cfg)).await?
    else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for b in table.read_all().await? {
        let ts = b
            .column_by_name("timestamp")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| Error::internal("event log lacks timestamp"))?;
        let (level, st, rg, tb, ty, de) = (
            col(&b, "level")?,
            col(&b, "stage")?,
            col(&b, "region")?,
            col(&b, "table")?,
            col(&b, "event_type")?,
            col(&b, "details")?,
        );
        for i in 0..b.num_rows() {
            let t = ts.value(i);
            if t < since_us
                || (!types.is_empty() && !types.iter().any(|x| x == ty.value(i)))
                || (!stage.is_empty() && st.value(i) != stage)
                || (!region.is_empty() && rg.value(i) != region)
            {
                continue;
            }
            out.push(Record {
                timestamp: chrono::DateTime::from_timestamp_micros(t)
                    .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_default(),
                timestamp_us: t,
                level: level.value(i).into(),
                stage: st.value(i).into(),
                region: rg.value(i).into(),
                table: tb.value(i).into(),
                event_type: ty.value(i).into(),
                details: serde_json::from_str(de.value(i)).unwrap_or(serde_json::Value::Null),
            });
        }
    }
    out.sort_by_key(|r| r.timestamp_us);
    Ok(out)
}

pub fn print(records: &[Record], json: bool) {
    for r in records {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{} {:<5} {:<15} {:<8} {:<12} {:<24} {}",
                r.timestamp, r.level, r.event_type, r.stage, r.region, r.table, r.details
            );
        }
    }
}

/// One line per event type of this run, for the demo's closing report.
pub async fn summary(cfg: &Config, since_us: i64) {
    let records = match read(cfg, since_us, &[], "", "").await {
        Ok(r) => r,
        Err(e) => {
            println!("event log: cannot read it: {e}");
            return;
        }
    };
    let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
    for r in &records {
        *by_type.entry(r.event_type.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "event log ({}): {} records this run: {}",
        tributary_delta::event_log::location(cfg),
        records.len(),
        parts.join(", ")
    );
    for r in records.iter().filter(|r| matches!(r.event_type.as_str(), "schema_change" | "drift" | "error")).take(8) {
        println!("  {} {} {} {}", r.event_type, r.region, r.table, r.details);
    }
    println!("  (all of it: tributary events --data {} --since 1h)", cfg.data_root);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_times() {
        let now = 1_800_000_000_000_000;
        assert_eq!(parse_since("15m", now).unwrap(), now - 900_000_000);
        assert_eq!(parse_since("2d", now).unwrap(), now - 2 * 86_400_000_000);
        assert_eq!(parse_since("2026-11-01T00:00:00Z", now).unwrap(), 1_793_491_200_000_000);
        assert!(parse_since("15w", now).unwrap_err().to_string().contains("unit"));
        assert!(parse_since("soon", now).is_err());
    }
}

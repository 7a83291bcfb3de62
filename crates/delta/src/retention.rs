//! Data retention (the brief's 13 months): `event_date` partitions older than
//! `retention.months` are removed from every Delta table under `data_root` — bronze, silver,
//! gold, central, the event log — in one commit per table; the audit table is kept (SOC 2
//! evidence has its own retention). The files stay until VACUUM deletes them.

use crate::{Table, Writer};
use tributary_core::{Config, Result};

/// What one pass removed: (table path under data_root, files).
pub type Report = Vec<(String, usize)>;

/// The first day kept: today minus `months`, as `YYYY-MM-DD`.
pub fn cutoff(today: chrono::NaiveDate, months: u32) -> String {
    today
        .checked_sub_months(chrono::Months::new(months))
        .unwrap_or(chrono::NaiveDate::MIN)
        .format("%Y-%m-%d")
        .to_string()
}

/// One retention pass over every table of `cfg.data_root` (a local path or `s3://`).
pub async fn enforce(cfg: &Config, months: u32, today: chrono::NaiveDate) -> Result<Report> {
    let before = cutoff(today, months);
    let w = Writer { stage: "retention".into(), region: String::new(), threads: 1, attempts: 20 };
    let mut report = Vec::new();
    for rel in crate::store::list_tables(&cfg.data_root).await? {
        if rel == "_tributary/audit" {
            continue;
        }
        let loc = crate::store::join(&cfg.data_root, &rel);
        let Some(mut t) = Table::open_existing(&rel, &loc).await? else { continue };
        let n = match t.drop_partitions_before("event_date", &before, &w).await {
            Ok(n) => n,
            // Another process's pass (or a rewrite) got there first: the next pass sees it.
            Err(e) if e.kind == tributary_core::ErrorKind::Conflict => {
                tracing::info!(table = %rel, error = %e, "retention: table skipped this pass");
                continue;
            }
            Err(e) => return Err(e),
        };
        if n > 0 {
            tracing::info!(table = %rel, files = n, before = %before, "retention: old partitions removed");
            tributary_core::event_log::emit(
                tributary_core::event_log::Level::Info,
                "retention",
                "",
                &rel,
                "user_action",
                serde_json::json!({"action": "retention", "before": before, "files": n}),
            );
            report.push((rel, n));
        }
    }
    Ok(report)
}

/// Runs [`enforce`] every `retention.interval_secs` (when > 0) until `shutdown`.
pub fn spawn(cfg: &Config, shutdown: tributary_core::Shutdown) {
    let every = cfg.retention.interval_secs;
    if every == 0 || cfg.retention.months == 0 {
        return;
    }
    let cfg = cfg.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = enforce(&cfg, cfg.retention.months, chrono::Utc::now().date_naive()).await {
                tracing::warn!(error = %e, "retention pass failed; retried at the next interval");
            }
            if shutdown.sleep(std::time::Duration::from_secs(every)).await {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Commit;
    use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use std::collections::HashMap;
    use std::sync::Arc;

    #[test]
    fn the_cutoff_is_today_minus_the_months() {
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        assert_eq!(cutoff(d("2026-11-23"), 13), "2025-10-23");
        assert_eq!(cutoff(d("2026-03-31"), 1), "2026-02-28");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partitions_older_than_the_retention_go_from_every_table_but_the_audit() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("event_date", DataType::Utf8, false),
        ]));
        let batch = |x: &[i64], d: &str| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(x.to_vec())), Arc::new(StringArray::from(vec![d; x.len()]))],
            )
            .unwrap()
        };
        let w = Writer { stage: "t".into(), region: "r".into(), threads: 1, attempts: 5 };
        for rel in ["regions/r1/silver/billing", "central/events", "_tributary/audit"] {
            let loc = dir.path().join(rel).display().to_string();
            let mut t = Table::open_or_create(rel, &loc, schema.clone(), &["event_date"]).await.unwrap();
            for (x, d) in [(1, "2024-01-15"), (2, "2025-10-22"), (3, "2025-10-23"), (4, "2026-11-23")] {
                t.commit_batch(Commit::new(&[batch(&[x], d)], vec![], HashMap::new(), -1), &w).await.unwrap();
            }
        }
        let cfg = Config { data_root: dir.path().display().to_string(), ..Default::default() };
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let report = enforce(&cfg, 13, today).await.unwrap();
        assert_eq!(report, vec![("central/events".to_string(), 2), ("regions/r1/silver/billing".to_string(), 2)]);
        let xs = |rel: &'static str| {
            let loc = dir.path().join(rel).display().to_string();
            async move { crate::tests::sorted_x(&Table::open_existing(rel, &loc).await.unwrap().unwrap()).await }
        };
        assert_eq!(xs("regions/r1/silver/billing").await, vec![3, 4], "the cutoff day itself is kept");
        assert_eq!(xs("central/events").await, vec![3, 4]);
        assert_eq!(xs("_tributary/audit").await, vec![1, 2, 3, 4], "the audit table is kept");
        // A second pass finds nothing more.
        assert!(enforce(&cfg, 13, today).await.unwrap().is_empty());
    }
}

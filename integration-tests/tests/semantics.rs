//! Issue #5: exact dedup over 30 days of replays, SCD 1/2 entity tables whatever the arrival
//! order, per-source watermarks, and billing finality with adjustment rows — on real Delta
//! tables, through the real binary.

use deltalake::arrow::array::{Array, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray};
use gold_aggregate::window::GoldKind;
use integration_tests::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn landing(p: &Pipeline, region: &str, source: &str) -> PathBuf {
    let d = p.data.join(format!("regions/{region}/landing/{source}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows(b: &[RecordBatch]) -> usize {
    b.iter().map(|x| x.num_rows()).sum()
}

/// Copies every landing file of every region/source whose index passes `pick` under a new name
/// (a re-delivery: bronze ingests each file name once, so these are new files with old events).
fn redeliver(p: &Pipeline, regions: &[&str], prefix: &str, pick: &dyn Fn(usize) -> bool) -> u64 {
    let mut copied = 0;
    for r in regions {
        for s in tributary_core::config::SOURCES {
            let dir = landing(p, r, s);
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|f| f.file_name().unwrap().to_string_lossy().starts_with("part-"))
                .collect();
            files.sort();
            for (i, f) in files.iter().enumerate() {
                if pick(i) {
                    let name = f.file_name().unwrap().to_string_lossy().to_string();
                    std::fs::copy(f, dir.join(format!("{prefix}-{name}"))).unwrap();
                    copied += 1;
                }
            }
        }
    }
    copied
}

async fn silver_total(p: &Pipeline, regions: &[&str]) -> usize {
    let cfg = p.config();
    let mut n = 0;
    for r in regions {
        for s in tributary_core::config::SOURCES {
            n += rows(&read(&silver_transform::table_location(&cfg, r, s)).await.unwrap());
        }
    }
    n
}

/// The duplicates silver counted (commit metadata of every silver commit), per region.
fn duplicates_counted(p: &Pipeline) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p.data.join("regions")).unwrap() {
        for s in tributary_core::config::SOURCES {
            let log = e.as_ref().unwrap().path().join(format!("silver/{s}/_delta_log"));
            for f in std::fs::read_dir(&log).unwrap() {
                let text = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
                for line in text.lines() {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                    if let Some(d) = v.pointer("/commitInfo/tributary.reconciliation/duplicates") {
                        total += d.as_u64().unwrap();
                    }
                }
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_30_days_twice_and_a_random_half_again_is_exact() {
    const REGIONS: &[&str] = &["r1", "r2"];
    // The on-disk path of the dedup index on every lookup: no bucket cache, small merges.
    let p = Pipeline::new(REGIONS)
        .with_env("TRIBUTARY__SILVER__DEDUP__CACHE_MB", "0")
        .with_env("TRIBUTARY__SILVER__DEDUP__COMPACT_MIN_FILES", "3");
    // 30 days of event time (less the generator's 90-minute late events, so everything is
    // within the default 30-day horizon).
    let span = (30 * 1440 - 120).to_string();
    let truth = p
        .generate_with(&GenSpec { events_per_source: 1200, files_per_source: 12, seed: 30 }, &["--span-minutes", &span])
        .unwrap();
    let dir = p.truth_path().parent().unwrap().to_path_buf();
    p.run_to_completion(&[]).unwrap();
    verify_against_truth(&p.config(), &truth, &dir).await.unwrap();
    let silver_rows = silver_total(&p, REGIONS).await;
    assert_eq!(silver_rows as u64, truth.total(|s| s.unique_valid));
    let dups_first = duplicates_counted(&p);
    assert_eq!(dups_first, truth.total(|s| s.duplicates), "the generator's re-sends are counted as duplicates");
    let gold_before = gold_and_entities(&p, REGIONS).await;

    // Replay everything twice, then a random half a third time.
    let files = redeliver(&p, REGIONS, "replay1", &|_| true);
    redeliver(&p, REGIONS, "replay2", &|_| true);
    let mut x = 0x9E37_79B9u64;
    let half: BTreeSet<usize> = (0..12)
        .filter(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.is_multiple_of(2)
        })
        .collect();
    assert!(!half.is_empty() && half.len() < 12);
    redeliver(&p, REGIONS, "replay3", &|i| half.contains(&i));
    assert!(files >= 2 * 4 * 12);
    p.run_to_completion(&[]).unwrap();

    // Silver, gold, central and the entity tables: exactly the ground truth, not one duplicate.
    assert_eq!(silver_total(&p, REGIONS).await, silver_rows);
    assert_eq!(gold_and_entities(&p, REGIONS).await, gold_before, "gold and entity tables changed on replay");
    verify_silver_gold_central(&p, &truth, &dir).await;
    // And every replayed valid event was counted as a duplicate.
    let replayed_valid: u64 = truth.total(|s| s.unique_valid + s.duplicates);
    let dups = duplicates_counted(&p) - dups_first;
    assert!(dups >= 2 * replayed_valid, "{dups} duplicates counted for {replayed_valid} valid events replayed twice+");
}

/// Every layer but bronze/quarantine counts (replays add to those by design) against the truth.
async fn verify_silver_gold_central(p: &Pipeline, truth: &tributary_events::truth::Truth, dir: &Path) {
    verify_layers(&p.config(), truth, dir).await.unwrap();
}

/// Fingerprints of the gold, central and entity tables.
async fn gold_and_entities(p: &Pipeline, _regions: &[&str]) -> BTreeMap<String, String> {
    p.fingerprints()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| {
            k.contains("/gold/") || k.starts_with("central/") || k.contains("job_runs") || k.contains("clusters")
        })
        .collect()
}

fn job(id: &str, run: &str, seq: i64, state: &str, minute: u32) -> String {
    json!({"event_id": id, "event_time": format!("2026-11-01T10:{minute:02}:00Z"), "source": "job", "region": "r1",
           "workspace_id": "ws-1", "customer_id": "c-1", "egress_approved": true,
           "job_id": "job-1", "run_id": run, "state": state, "sequence": seq})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_tables_are_the_same_whatever_the_arrival_order() {
    let events = [
        job("e1", "run-a", 1, "PENDING", 0),
        job("e2", "run-a", 2, "RUNNING", 1),
        job("e3", "run-a", 3, "SUCCEEDED", 2),
        job("e4", "run-b", 1, "PENDING", 3),
        job("e5", "run-b", 5, "DELETED", 4),
        job("e6", "run-b", 3, "RUNNING", 5), // older than the delete, arrives after it below
        job("e7", "run-c", 2, "RUNNING", 6),
        job("e8", "run-c", 2, "FAILED", 7), // a tie on the sequence: event_id decides
    ];
    let orders: [Vec<Vec<usize>>; 3] = [
        vec![vec![0, 1, 2, 3, 4, 5, 6, 7]],
        vec![vec![2], vec![4, 1], vec![5, 0, 7], vec![3, 6]],
        vec![vec![7, 6, 5], vec![4, 3], vec![2, 1, 0]],
    ];
    let mut snapshots = Vec::new();
    for order in &orders {
        let p = Pipeline::new(&["r1"]).with_env("TRIBUTARY__BRONZE__SOURCES", "[\"job\"]");
        for (i, file) in order.iter().enumerate() {
            let lines: Vec<String> = file.iter().map(|k| events[*k].clone()).collect();
            std::fs::write(landing(&p, "r1", "job").join(format!("f{i}.ndjson")), lines.join("\n") + "\n").unwrap();
            // One file per run: each arrives after the previous one was applied.
            p.run_to_completion(&[]).unwrap();
        }
        let cfg = p.config();
        use silver_transform::entities::{current_location, history_location, snapshot};
        let cur = read(&current_location(&cfg, "r1", "job_runs")).await.unwrap();
        let hist = read(&history_location(&cfg, "r1", "job_runs")).await.unwrap();
        snapshots.push(snapshot(&hist, &cur, &["run_id".to_string()]).unwrap());
    }
    assert_eq!(snapshots[0], snapshots[1]);
    assert_eq!(snapshots[0], snapshots[2]);
    let s = &snapshots[0];
    let current: Vec<(&str, &str)> = s.current.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(current, vec![("run-a", "e3"), ("run-c", "e8")], "run-b is deleted; e8 wins the tie on sequence");
    let history: Vec<(&str, &str, i64, Option<i64>, bool)> =
        s.history.iter().map(|(k, e, a, b, d)| (k.as_str(), e.as_str(), *a, *b, *d)).collect();
    assert_eq!(
        history,
        vec![
            ("run-a", "e1", 1, Some(2), false),
            ("run-a", "e2", 2, Some(3), false),
            ("run-a", "e3", 3, None, false),
            ("run-b", "e4", 1, Some(3), false),
            ("run-b", "e5", 5, None, true),
            ("run-b", "e6", 3, Some(5), false),
            ("run-c", "e7", 2, Some(2), false),
            ("run-c", "e8", 2, None, false),
        ]
    );
}

fn bill(id: &str, minute_of_day: u32, customer: &str, sku: &str, dbu: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_time":"2025-11-01T{:02}:{:02}:30Z","source":"billing","region":"r1","workspace_id":"ws-1","customer_id":"{customer}","egress_approved":true,"sku":"{sku}","dbu":{dbu},"usage_start":"2025-11-01T00:00:00Z","usage_end":"2025-11-01T00:01:00Z"}}"#,
        minute_of_day / 60,
        minute_of_day % 60
    )
}

/// Rows of a billing table: (record_type, customer, sku, window_start_us) -> (dbu, count, is_final, reason).
type BillingRows = BTreeMap<(String, String, String, i64), (i128, i64, bool, Option<String>)>;

fn billing_rows(batches: &[RecordBatch]) -> BillingRows {
    let mut m = BTreeMap::new();
    for b in batches {
        let s = |n: &str| b.column_by_name(n).unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let (ty, c, k, r) = (s("record_type"), s("customer_id"), s("sku"), s("reason"));
        let w = b
            .column_by_name("window_start")
            .unwrap()
            .as_any()
            .downcast_ref::<deltalake::arrow::array::TimestampMicrosecondArray>()
            .unwrap()
            .clone();
        let d = b.column_by_name("dbu").unwrap().as_any().downcast_ref::<Decimal128Array>().unwrap().clone();
        let n = b.column_by_name("event_count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        let f = b.column_by_name("is_final").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap().clone();
        for i in 0..b.num_rows() {
            let key = (ty.value(i).to_string(), c.value(i).to_string(), k.value(i).to_string(), w.value(i));
            let reason = r.is_valid(i).then(|| r.value(i).to_string());
            assert!(
                m.insert(key.clone(), (d.value(i), n.value(i), f.value(i), reason)).is_none(),
                "two rows for {key:?}"
            );
        }
    }
    m
}

const HOUR: i64 = 3_600_000_000;
const START: i64 = 1_761_955_200_000_000; // 2025-11-01T00:00Z

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_final_windows_are_exact_and_late_events_become_adjustment_rows() {
    let p = Pipeline::new(&["r1"])
        .with_env("TRIBUTARY__BRONZE__SOURCES", "[\"billing\"]")
        .with_env("TRIBUTARY__GOLD__ALLOWED_LATENESS_SECS", "600");
    // Six hours of billing with no late events: hours 0-4 end before the watermark.
    let truth = p
        .generate_with(
            &GenSpec { events_per_source: 3000, files_per_source: 12, seed: 5 },
            &["--span-minutes", "360", "--late-pct", "0"],
        )
        .unwrap();
    p.run_to_completion(&[]).unwrap();
    let cfg = p.config();
    let loc = gold_aggregate::table_location(&cfg, "r1", GoldKind::Billing);
    let before = billing_rows(&read(&loc).await.unwrap());
    let mut finals = 0;
    for ((ty, c, k, w), (dbu, n, fin, _)) in &before {
        assert_eq!(ty, "window", "no late data yet, so no adjustments");
        let key = format!(
            "r1|{c}|{k}|{}",
            chrono::DateTime::from_timestamp_micros(*w).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        let want: rust_decimal::Decimal = truth.billing_hourly[&key].parse().unwrap();
        assert_eq!(rust_decimal::Decimal::from_i128_with_scale(*dbu, 9).normalize(), want, "{key}");
        assert_eq!(*n as u64, truth.billing_hourly_events[&key], "{key}");
        assert_eq!(*fin, *w + HOUR <= START + 5 * HOUR, "{key}: final exactly when the watermark passed its end");
        finals += *fin as usize;
    }
    assert!(finals > 0 && finals < before.len(), "{finals} of {}", before.len());
    let t = tributary_delta::Table::open_existing("gold", &loc).await.unwrap().unwrap();
    let files_before: BTreeSet<String> = t.files().unwrap().into_iter().map(|f| f.path).collect();

    // Late: three events into final hour 1 of cust-000/JOBS_COMPUTE, one into final hour 2 of a
    // customer with no row there, one into the open hour 5 (on time: no adjustment).
    let late = [
        bill("late-1", 70, "cust-000", "JOBS_COMPUTE", "1.5"),
        bill("late-2", 75, "cust-000", "JOBS_COMPUTE", "2.25"),
        bill("late-3", 119, "cust-000", "JOBS_COMPUTE", "0.000000001"),
        bill("late-4", 150, "cust-new", "SQL_PRO", "10"),
        bill("ontime-5", 330, "cust-new", "SQL_PRO", "4"),
    ];
    std::fs::write(landing(&p, "r1", "billing").join("late-000001.ndjson"), late.join("\n") + "\n").unwrap();
    p.run_to_completion(&[]).unwrap();
    let after = billing_rows(&read(&loc).await.unwrap());
    // Final rows untouched, and the files holding them are still in the table.
    for (k, v) in before.iter().filter(|(_, v)| v.2) {
        assert_eq!(after.get(k), Some(v), "final row {k:?} changed");
    }
    let t = tributary_delta::Table::open_existing("gold", &loc).await.unwrap().unwrap();
    let files_after: BTreeSet<String> = t.files().unwrap().into_iter().map(|f| f.path).collect();
    let final_files_kept = files_before.iter().filter(|f| files_after.contains(*f)).count();
    assert!(final_files_kept > 0, "files of final rows are never removed");
    // Exactly the expected adjustment rows.
    let adjustments: Vec<_> = after.iter().filter(|(k, _)| k.0 == "adjustment").collect();
    assert_eq!(adjustments.len(), 2, "{adjustments:?}");
    let a1 = &after[&("adjustment".to_string(), "cust-000".to_string(), "JOBS_COMPUTE".to_string(), START + HOUR)];
    assert_eq!((a1.0, a1.1, a1.2), (3_750_000_001, 3, true));
    assert!(
        a1.3.as_deref()
            .unwrap()
            .starts_with("late_event: 3 event(s) with event_time in [2025-11-01T01:00:00Z, 2025-11-01T02:00:00Z)")
    );
    let a2 = &after[&("adjustment".to_string(), "cust-new".to_string(), "SQL_PRO".to_string(), START + 2 * HOUR)];
    assert_eq!((a2.0, a2.1, a2.2), (10_000_000_000, 1, true));
    // The on-time event joined its provisional window.
    let w5 = &after[&("window".to_string(), "cust-new".to_string(), "SQL_PRO".to_string(), START + 5 * HOUR)];
    assert_eq!((w5.0, w5.1, w5.2), (4_000_000_000, 1, false));
    // Invoices (window + adjustments) = truth + the late events, nothing dropped.
    let invoice: i128 = after.values().map(|v| v.0).sum();
    let truth_total: rust_decimal::Decimal =
        truth.billing_hourly.values().map(|v| v.parse::<rust_decimal::Decimal>().unwrap()).sum();
    let late_total = rust_decimal::Decimal::new(17_750_000_001, 9);
    assert_eq!(rust_decimal::Decimal::from_i128_with_scale(invoice, 9), truth_total + late_total);
    // Late events are counted in the event log and the metric's source (commit metadata).
    let out = p.command(&["events", "--since", "1h", "--type", "late_events", "--json"]).output().unwrap();
    let recs: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let billing_late: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["table"] == "gold/billing_usage_hourly").collect();
    assert_eq!(billing_late.len(), 1, "{recs:?}");
    assert_eq!(billing_late[0]["details"]["events"], 4);
    assert_eq!(billing_late[0]["details"]["handling"], "adjustment rows");
}

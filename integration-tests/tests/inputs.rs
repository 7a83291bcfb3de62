//! Issue #14: inputs real producers write — byte-order marks, CRLF, blank lines, every spelling
//! of an exact decimal, empty ids, a wrong clock — end to end through the real binary on real
//! Delta tables: each event is exact in silver and gold, or quarantined with a reason.

use deltalake::arrow::array::{Array, Decimal128Array, RecordBatch, StringArray};
use integration_tests::*;
use rust_decimal::Decimal;
use std::path::PathBuf;
use std::str::FromStr;

const REGION: &str = "r1";

fn landing(p: &Pipeline, source: &str) -> PathBuf {
    let d = p.data.join(format!("regions/{REGION}/landing/{source}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A billing event line with `dbu` spelled exactly as given (raw JSON text).
fn billing(id: &str, time: &str, dbu: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_time":"{time}","region":"{REGION}","workspace_id":"w1","customer_id":"c1","sku":"STD","dbu":{dbu}}}"#
    )
}

fn strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let a = b.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..a.len()).map(|i| if a.is_valid(i) { a.value(i).to_string() } else { "<null>".into() }));
    }
    out.sort();
    out
}

fn decimals(batches: &[RecordBatch], name: &str) -> Vec<Decimal> {
    let mut out = Vec::new();
    for b in batches {
        let a = b.column_by_name(name).unwrap().as_any().downcast_ref::<Decimal128Array>().unwrap();
        out.extend((0..a.len()).map(|i| Decimal::from_i128_with_scale(a.value(i), 9)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_producer_inputs_are_exact_or_quarantined_with_a_reason() {
    let p = Pipeline::new(&[REGION]);
    let t = |m: u32| format!("2026-11-01T10:{m:02}:00Z");
    // Every spelling of an exact value at scale 9, 17 significant digits, a quoted one.
    let exact = [
        ("d0", "0.000000007"),
        ("d1", "7e-9"),
        ("d2", "1.5E+3"),
        ("d3", "\"2.25\""),
        ("d4", "12345678.123456789"),
        ("d5", "99999999.999999999"),
        ("d6", "-0.5"),
        ("d7", "70E-10"),
    ];
    let mut lines: Vec<String> = exact.iter().enumerate().map(|(i, (id, d))| billing(id, &t(i as u32), d)).collect();
    // Not exact at scale 9 / not a number: quarantined with the parser's reason.
    lines.push(billing("bad-inexact", &t(20), "1e-10"));
    lines.push(billing("bad-nan", &t(21), "\"abc\""));
    // No key: empty and whitespace-only ids.
    lines.push(billing("", &t(22), "1"));
    lines.push(billing(" \\t ", &t(23), "1"));
    // A producer whose clock says 2125.
    lines.push(billing("future", "2125-01-01T00:00:00Z", "1"));
    // UTF-8 byte-order mark, CRLF endings, blank and whitespace-only lines.
    let mut body = vec![0xEF, 0xBB, 0xBF];
    body.extend((lines.join("\r\n\r\n") + "\r\n \t\r\n").into_bytes());
    std::fs::write(landing(&p, "billing").join("f1.ndjson"), &body).unwrap();
    // A UTF-16 file: quarantined whole, never decoded as garbage lines.
    let mut utf16 = vec![0xFF, 0xFE];
    for u in billing("u16", &t(30), "1").encode_utf16() {
        utf16.extend(u.to_le_bytes());
    }
    std::fs::write(landing(&p, "billing").join("f2.ndjson"), &utf16).unwrap();
    p.run_to_completion(&["--stages", "bronze,silver,gold"]).unwrap();

    let c = p.config();
    let bq = read(&c.region_table(REGION, "bronze/_quarantine")).await.unwrap();
    assert_eq!(strings(&bq, "reason"), ["unsupported_encoding"], "only the UTF-16 file, as one row");
    let bronze = read(&c.region_table(REGION, "bronze/billing")).await.unwrap();
    assert_eq!(bronze.iter().map(|b| b.num_rows()).sum::<usize>(), 13, "the BOM cost no event");
    // Blank lines are counted in the batch's commitInfo, not silently dropped.
    let log = std::fs::read_dir(std::path::Path::new(&c.region_table(REGION, "bronze/billing")).join("_delta_log"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(log.contains("\"blank_lines\":13"), "12 separators + 1 whitespace line: {log}");

    let silver = read(&c.region_table(REGION, "silver/billing")).await.unwrap();
    let mut want_ids: Vec<String> = exact.iter().map(|(id, _)| id.to_string()).collect();
    want_ids.sort();
    assert_eq!(strings(&silver, "event_id"), want_ids);
    let sq = read(&c.region_table(REGION, "silver/_quarantine")).await.unwrap();
    assert_eq!(
        strings(&sq, "reason"),
        ["event_time_in_future", "invalid_field", "invalid_field", "null_key", "null_key"],
        "{:?}",
        strings(&sq, "detail")
    );
    assert!(strings(&sq, "detail").iter().any(|d| d.contains("needs more than 9 fractional digits")));

    // Gold: the hour's DBU is the exact decimal sum of the inputs (no float anywhere).
    // Summed independently (Python's decimal module) from the spellings above.
    let want = Decimal::from_str("112347179.873456809").unwrap();
    let gold = read(&c.region_table(REGION, "gold/billing_usage_hourly")).await.unwrap();
    let got: Decimal = decimals(&gold, "dbu").into_iter().sum();
    assert_eq!(got, want);

    // The 2125 event moved no horizon: later events of today are admitted, not beyond the horizon.
    let later: Vec<String> = (0..20).map(|i| billing(&format!("l{i}"), &t(40 + i), "1")).collect();
    std::fs::write(landing(&p, "billing").join("f3.ndjson"), later.join("\n") + "\n").unwrap();
    p.run_to_completion(&["--stages", "bronze,silver,gold"]).unwrap();
    let silver = read(&c.region_table(REGION, "silver/billing")).await.unwrap();
    assert_eq!(silver.iter().map(|b| b.num_rows()).sum::<usize>(), exact.len() + 20);
    let gold = read(&c.region_table(REGION, "gold/billing_usage_hourly")).await.unwrap();
    assert_eq!(decimals(&gold, "dbu").into_iter().sum::<Decimal>(), want + Decimal::from(20));
}

fn job(id: &str, minute: u32) -> String {
    format!(
        r#"{{"event_id":"{id}","event_time":"2026-11-01T11:{minute:02}:00Z","region":"{REGION}","workspace_id":"w1","job_id":"j","state":"RUNNING","sequence":1}}"#
    )
}

/// Issue #14 item 11: one source whose input table cannot be read holds back only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_source_holds_back_only_itself() {
    let p = Pipeline::new(&[REGION]);
    let c = p.config();
    let write = |source: &str, name: &str, lines: Vec<String>| {
        std::fs::write(landing(&p, source).join(name), lines.join("\n") + "\n").unwrap();
    };
    let audit = |id: String, m: u32| job(&id, m).replace("\"job_id\"", "\"actor\"");
    write("audit", "f1.ndjson", (0..2).map(|i| audit(format!("a{i}"), i)).collect());
    write("job", "f1.ndjson", (0..3).map(|i| job(&format!("j{i}"), i)).collect());
    p.run_to_completion(&["--stages", "bronze,silver"]).unwrap();
    write("audit", "f2.ndjson", (0..2).map(|i| audit(format!("a2{i}"), i)).collect());
    write("job", "f2.ndjson", (0..4).map(|i| job(&format!("j2{i}"), 10 + i)).collect());
    write("billing", "f1.ndjson", vec![billing("b1", "2026-11-01T11:00:00Z", "1.5")]);
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    // Break silver's input for audit (the first flow in order): a garbage commit after the last.
    let log = std::path::Path::new(&c.region_table(REGION, "bronze/audit")).join("_delta_log");
    let last = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| {
            e.unwrap().file_name().to_string_lossy().strip_suffix(".json").and_then(|v| v.parse::<u64>().ok())
        })
        .max()
        .unwrap();
    std::fs::write(log.join(format!("{:020}.json", last + 1)), "this is not a Delta commit\n").unwrap();
    let out =
        p.command(&["standalone", "--exit-when-idle", "--timeout-secs", "20", "--stages", "silver"]).output().unwrap();
    assert!(!out.status.success(), "a failing flow is never reported idle");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("silver/audit"), "the failing flow is named: {}", tail(&out.stderr, 2000));
    let count = |t: &str| {
        let t = c.region_table(REGION, t);
        async move { read(&t).await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>() }
    };
    assert_eq!(count("silver/job").await, 7, "the other sources kept going");
    assert_eq!(count("silver/billing").await, 1);
    assert_eq!(count("silver/audit").await, 2, "the broken one holds what it had");
}

fn lineage(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let f = b.column_by_name("_source_file").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let l = b
            .column_by_name("_source_line")
            .unwrap()
            .as_any()
            .downcast_ref::<deltalake::arrow::array::Int64Array>()
            .unwrap();
        out.extend((0..b.num_rows()).map(|i| format!("{}:{}", f.value(i), l.value(i))));
    }
    out.sort();
    out
}

/// Issue #14 item 7: the file list of a batch commits atomically with its rows. Before, it was a
/// manifest put at `_tributary/batches/<seq>.json` before the commit; two pods racing for the same
/// sequence (rolling update) could leave the loser's list behind, and a restart then counted
/// files as ingested that bronze never got. Here that leftover is planted by hand: it must not
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_writers_file_list_cannot_mark_a_file_done() {
    let p = Pipeline::new(&[REGION]);
    let c = p.config();
    let t = |m: u32| format!("2026-11-01T10:{m:02}:00Z");
    let put = |name: &str, ids: &[&str]| {
        let lines: Vec<String> = ids.iter().enumerate().map(|(i, id)| billing(id, &t(i as u32), "1")).collect();
        std::fs::write(landing(&p, "billing").join(name), lines.join("\n") + "\n").unwrap();
    };
    put("f1.ndjson", &["a1", "a2"]);
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    // What a pod that prepared batch 1 with more files, then lost the commit race, left behind.
    let table = std::path::PathBuf::from(c.region_table(REGION, "bronze/billing"));
    std::fs::create_dir_all(table.join("_tributary/batches")).unwrap();
    std::fs::write(
        table.join("_tributary/batches/000000000001.json"),
        r#"{"seq":1,"source":"billing","files":["billing/f1.ndjson","billing/f2.ndjson","billing/f3.ndjson"]}"#,
    )
    .unwrap();
    put("f2.ndjson", &["b1", "b2"]);
    put("f3.ndjson", &["c1"]);
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    let bronze = read(&c.region_table(REGION, "bronze/billing")).await.unwrap();
    assert_eq!(
        lineage(&bronze),
        [
            "billing/f1.ndjson:1",
            "billing/f1.ndjson:2",
            "billing/f2.ndjson:1",
            "billing/f2.ndjson:2",
            "billing/f3.ndjson:1"
        ]
    );
    // And the list is in the commit itself.
    let log = std::fs::read_to_string(table.join("_delta_log/00000000000000000001.json")).unwrap();
    assert!(log.contains(r#""ingested":[{"from":0,"path":"billing/f1.ndjson","size":254}]"#), "{log}");
}

/// Issue #14 item 8: landing files that change after ingestion. An appended file has its new
/// bytes ingested (a half-written last line was quarantined and is ingested whole once it is
/// complete); a shrunk (rewritten) file goes to quarantine as `landing_file_changed`; a file
/// deleted between the data commit and the quarantine commit does not block recovery; a file
/// archived into a `_` folder is not ingested again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_files_that_change_are_ingested_or_reported_never_silently() {
    let p = Pipeline::new(&[REGION]);
    let c = p.config();
    let t = |m: u32| format!("2026-11-01T10:{m:02}:00Z");
    let dir = landing(&p, "billing");
    let f1 = dir.join("f1.ndjson");
    let third = billing("a3", &t(3), "1");
    // Two lines and the first half of a third: a producer caught mid-write.
    let first = format!("{}\n{}\n{}", billing("a1", &t(1), "1"), billing("a2", &t(2), "1"), &third[..20]);
    std::fs::write(&f1, &first).unwrap();
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    let count = |name: &str| {
        let t = c.region_table(REGION, name);
        async move { read(&t).await.unwrap() }
    };
    assert_eq!(lineage(&count("bronze/billing").await), ["billing/f1.ndjson:1", "billing/f1.ndjson:2"]);
    assert_eq!(strings(&count("bronze/_quarantine").await, "reason"), ["malformed_json"]);

    // The producer finishes the line and appends one more.
    std::fs::write(&f1, format!("{first}{}\n{}\n", &third[20..], billing("a4", &t(4), "1"))).unwrap();
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    assert_eq!(
        lineage(&count("bronze/billing").await),
        ["billing/f1.ndjson:1", "billing/f1.ndjson:2", "billing/f1.ndjson:3", "billing/f1.ndjson:4"],
        "the appended bytes, from the start of the line that was incomplete"
    );

    // A newer file, then it is rewritten shorter: reported, not re-ingested, not ignored.
    std::fs::write(dir.join("f2.ndjson"), format!("{}\n{}\n", billing("b1", &t(5), "1"), billing("b2", &t(6), "1")))
        .unwrap();
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    std::fs::write(dir.join("f2.ndjson"), format!("{}\n", billing("b9", &t(7), "1"))).unwrap();
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    let q = count("bronze/_quarantine").await;
    assert_eq!(strings(&q, "reason"), ["landing_file_changed", "malformed_json"]);
    assert!(
        strings(&q, "detail").iter().any(|d| d.contains("billing/f2.ndjson shrank from")),
        "{:?}",
        strings(&q, "detail")
    );
    assert_eq!(count("bronze/billing").await.iter().map(|b| b.num_rows()).sum::<usize>(), 6);

    // Crash between the data commit and the quarantine commit, then the file is deleted: the
    // restart records it as missing instead of failing the source forever.
    std::fs::write(dir.join("f3.ndjson"), format!("{}\nnot json\n", billing("c1", &t(8), "1"))).unwrap();
    let out = p.standalone(&["--stages", "bronze"], &[("TRIBUTARY_FAULT", "bronze.after_data_commit")]).unwrap();
    assert!(!out.status.success(), "the fault point killed the run");
    std::fs::remove_file(dir.join("f3.ndjson")).unwrap();
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    let q = count("bronze/_quarantine").await;
    assert_eq!(strings(&q, "reason"), ["landing_file_changed", "landing_file_missing", "malformed_json"]);
    assert_eq!(count("bronze/billing").await.iter().map(|b| b.num_rows()).sum::<usize>(), 7, "c1 was committed");

    // Archiving into a `_` folder of the source does not re-ingest.
    std::fs::create_dir_all(dir.join("_archive")).unwrap();
    std::fs::rename(&f1, dir.join("_archive/f1.ndjson")).unwrap();
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
    assert_eq!(count("bronze/billing").await.iter().map(|b| b.num_rows()).sum::<usize>(), 7);
}

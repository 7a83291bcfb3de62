//! Issue #4: schema inference and evolution in bronze, expectations in silver, drift detection
//! and the event log — on real Delta tables, through the real binary.

use deltalake::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::DataType;
use integration_tests::*;
use serde_json::{Value, json};
use std::path::PathBuf;

const REGION: &str = "r1";

fn landing(p: &Pipeline, source: &str) -> PathBuf {
    let d = p.data.join(format!("regions/{REGION}/landing/{source}"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One event line with the envelope and `fields`.
fn event(source: &str, id: &str, minute: u32, fields: Value) -> String {
    let mut m = json!({
        "event_id": id,
        "event_time": format!("2026-11-01T10:{:02}:00Z", minute % 60),
        "source": source,
        "region": REGION,
        "workspace_id": "ws-1",
        "customer_id": "cust-1",
        "egress_approved": true,
    });
    for (k, v) in fields.as_object().unwrap() {
        m[k] = v.clone();
    }
    m.to_string()
}

fn write_file(p: &Pipeline, source: &str, name: &str, lines: &[String]) {
    std::fs::write(landing(p, source).join(name), lines.join("\n") + "\n").unwrap();
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a dyn Array> {
    b.column_by_name(name).map(|c| c.as_ref())
}

fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let a = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        let a = a.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())));
    }
    out
}

async fn bronze(p: &Pipeline, source: &str) -> Vec<RecordBatch> {
    read(&p.config().region_table(REGION, &format!("bronze/{source}"))).await.unwrap()
}

fn rows(b: &[RecordBatch]) -> usize {
    b.iter().map(|x| x.num_rows()).sum()
}

/// `tributary events --json` records, optionally of one type.
fn events(p: &Pipeline, ty: Option<&str>) -> Vec<Value> {
    let mut args = vec!["events", "--since", "1h", "--json"];
    if let Some(t) = ty {
        args.extend(["--type", t]);
    }
    let out = p.command(&args).output().unwrap();
    assert!(out.status.success(), "events failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn bronze_only(p: &Pipeline) {
    p.run_to_completion(&["--stages", "bronze"]).unwrap();
}

fn first_file(p: &Pipeline) {
    let lines: Vec<String> =
        (0..10).map(|i| event("job", &format!("a{i}"), i, json!({"note": format!("n{i}"), "n": i}))).collect();
    write_file(p, "job", "f1.ndjson", &lines);
    let other: Vec<String> = (0..4).map(|i| event("audit", &format!("x{i}"), i, json!({"who": "u"}))).collect();
    write_file(p, "audit", "f1.ndjson", &other);
}

fn second_file(p: &Pipeline) {
    let lines: Vec<String> = (0..10)
        .map(|i| event("job", &format!("b{i}"), i, json!({"note": format!("m{i}"), "n": 100 + i, "extra": i * 7})))
        .collect();
    write_file(p, "job", "f2.ndjson", &lines);
    let other: Vec<String> = (0..3).map(|i| event("audit", &format!("y{i}"), i, json!({"who": "v"}))).collect();
    write_file(p, "audit", "f2.ndjson", &other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_field_mid_stream_in_every_evolution_mode() {
    for mode in ["addNewColumns", "rescue", "failOnNewColumns", "none"] {
        let p = Pipeline::new(&[REGION]).with_env("TRIBUTARY__BRONZE__SCHEMA_EVOLUTION", mode);
        first_file(&p);
        bronze_only(&p);
        let b = bronze(&p, "job").await;
        assert_eq!(rows(&b), 10, "{mode}");
        // Inferred from the first file: a string and a long column.
        assert_eq!(column(&b[0], "note").unwrap().data_type(), &DataType::Utf8, "{mode}");
        assert_eq!(column(&b[0], "n").unwrap().data_type(), &DataType::Int64, "{mode}");

        second_file(&p);
        bronze_only(&p);
        let b = bronze(&p, "job").await;
        let audit = bronze(&p, "audit").await;
        // The other source is never held back.
        assert_eq!(rows(&audit), 7, "{mode}: audit goes on");
        let payloads = strings(&b, "payload");
        let rescued = strings(&b, "_rescued_data");
        match mode {
            "addNewColumns" => {
                assert_eq!(rows(&b), 20);
                let mut extra: Vec<Option<i64>> = Vec::new();
                for batch in &b {
                    let a = batch.column_by_name("extra").expect("extra became a column");
                    let a = a.as_any().downcast_ref::<Int64Array>().expect("extra is a long");
                    extra.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
                }
                let mut values: Vec<i64> = extra.iter().flatten().copied().collect();
                values.sort();
                assert_eq!(values, (0..10).map(|i| i * 7).collect::<Vec<_>>());
                assert_eq!(extra.iter().filter(|v| v.is_none()).count(), 10, "earlier rows have NULL");
                assert!(rescued.iter().all(|r| r.is_none()), "{rescued:?}");
                let changes = events(&p, Some("schema_change"));
                let added: Vec<&Value> =
                    changes.iter().filter(|e| e["table"] == "bronze/job" && e["details"]["version"] == 2).collect();
                assert_eq!(added.len(), 1, "{changes:?}");
                assert_eq!(added[0]["details"]["added"], json!([["extra", "long"]]));
            }
            "rescue" => {
                assert_eq!(rows(&b), 20);
                assert!(column(&b[0], "extra").is_none() && b.iter().all(|x| x.column_by_name("extra").is_none()));
                let with_extra: Vec<Value> =
                    rescued.iter().flatten().map(|r| serde_json::from_str::<Value>(r).unwrap()).collect();
                assert_eq!(with_extra.len(), 10);
                let mut vals: Vec<i64> = with_extra.iter().map(|v| v["extra"].as_i64().unwrap()).collect();
                vals.sort();
                assert_eq!(vals, (0..10).map(|i| i * 7).collect::<Vec<_>>());
            }
            "failOnNewColumns" => {
                assert_eq!(rows(&b), 10, "nothing of the batch with the new field is committed");
                let errors = events(&p, Some("error"));
                let stop = errors
                    .iter()
                    .find(|e| e["table"] == "bronze/job" && e["details"]["stopped"] == true)
                    .unwrap_or_else(|| panic!("no stop record: {errors:?}"));
                let msg = stop["details"]["message"].as_str().unwrap();
                assert!(msg.contains("`extra`") && msg.contains("job/f2.ndjson"), "{msg}");
            }
            "none" => {
                assert_eq!(rows(&b), 20);
                assert!(b.iter().all(|x| x.column_by_name("extra").is_none()));
                assert!(rescued.iter().all(|r| r.is_none()), "{rescued:?}");
            }
            _ => unreachable!(),
        }
        if mode != "failOnNewColumns" {
            // Nothing is lost in any mode: payload keeps every field's exact text.
            assert_eq!(payloads.iter().flatten().filter(|p| p.contains("\"extra\":")).count(), 10, "{mode}");
            let drift = events(&p, Some("drift"));
            let new_field = drift
                .iter()
                .find(|e| e["details"]["kind"] == "new_field" && e["details"]["field"] == "extra")
                .unwrap_or_else(|| panic!("{mode}: no new_field drift record: {drift:?}"));
            assert_eq!(new_field["table"], "bronze/job");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_mid_stream_is_rescued_and_reported() {
    let p = Pipeline::new(&[REGION]);
    first_file(&p);
    bronze_only(&p);
    // `n` was a long; now three rows carry strings and one a float.
    let lines: Vec<String> = (0..10)
        .map(|i| {
            let n = match i {
                0..=2 => json!(format!("seven-{i}")),
                3 => json!(1.5),
                _ => json!(i),
            };
            event("job", &format!("c{i}"), i, json!({"note": "x", "n": n}))
        })
        .collect();
    write_file(&p, "job", "f2.ndjson", &lines);
    bronze_only(&p);
    let b = bronze(&p, "job").await;
    assert_eq!(rows(&b), 20);
    let rescued: Vec<Value> =
        strings(&b, "_rescued_data").into_iter().flatten().map(|r| serde_json::from_str(&r).unwrap()).collect();
    let mut got: Vec<String> = rescued.iter().map(|v| v["n"].to_string()).collect();
    got.sort();
    assert_eq!(got, vec!["\"seven-0\"", "\"seven-1\"", "\"seven-2\"", "1.5"]);
    // The column was never coerced: those rows are NULL, the others typed.
    let mut n_nulls = 0;
    for batch in &b {
        let a = batch.column_by_name("n").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        n_nulls += a.null_count();
    }
    assert_eq!(n_nulls, 4);
    let drift = events(&p, Some("drift"));
    let tc = drift
        .iter()
        .find(|e| e["details"]["kind"] == "type_change" && e["details"]["field"] == "n")
        .unwrap_or_else(|| panic!("no type_change record: {drift:?}"));
    assert_eq!(tc["details"]["rows"], 4);
    assert_eq!(tc["details"]["expected"], "long");
    assert_eq!(tc["details"]["seen"], json!({"string": 3, "number": 1}));
}

const EXPECTATIONS: &str = r#"
[[silver.expectations]]
name = "small"
table = "billing"
expr = "dbu < 1000"
action = "warn"

[[silver.expectations]]
name = "not_test_sku"
table = "billing"
expr = "sku <> 'TEST'"
action = "drop"

[[silver.expectations]]
name = "non_negative"
table = "billing"
expr = "dbu >= 0"
action = "quarantine"

[[silver.expectations]]
name = "recent"
table = "*"
expr = "event_time > '2020-01-01'"
action = "warn"
"#;

/// 100 billing events: 3 with dbu >= 1000, 5 with sku TEST, 10 with negative dbu (disjoint).
fn billing_dataset(p: &Pipeline) {
    let lines: Vec<String> = (0..100)
        .map(|i| {
            let (sku, dbu) = match i {
                0..=2 => ("STD", "1500.5"),
                3..=7 => ("TEST", "1.25"),
                8..=17 => ("STD", "-0.5"),
                _ => ("STD", "2.000000001"),
            };
            let line = event("billing", &format!("bill-{i}"), i, json!({"sku": sku, "dbu": 0}));
            line.replace("\"dbu\":0", &format!("\"dbu\":{dbu}"))
        })
        .collect();
    write_file(p, "billing", "b1.ndjson", &lines);
    let jobs: Vec<String> = (0..5).map(|i| event("job", &format!("j{i}"), i, json!({"job_id": "x"}))).collect();
    write_file(p, "job", "j1.ndjson", &jobs);
}

fn config_file(p: &Pipeline, body: &str) -> String {
    let path = p.data.parent().unwrap().join("tributary.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expectation_actions_give_exact_counts() {
    let p = Pipeline::new(&[REGION]);
    billing_dataset(&p);
    let cfg = config_file(&p, EXPECTATIONS);
    p.run_to_completion(&["--config", &cfg, "--stages", "bronze,silver"]).unwrap();
    let c = p.config();
    let silver = read(&c.region_table(REGION, "silver/billing")).await.unwrap();
    assert_eq!(rows(&silver), 85, "100 - 5 dropped - 10 quarantined");
    let ids = strings(&silver, "event_id");
    assert!(ids.iter().flatten().all(|id| {
        let n: u32 = id.trim_start_matches("bill-").parse().unwrap();
        !(3..=17).contains(&n)
    }));
    let q = read(&c.region_table(REGION, "silver/_quarantine")).await.unwrap();
    let reasons = strings(&q, "reason");
    let rules = strings(&q, "rule");
    let exp: Vec<(String, String)> = reasons
        .iter()
        .zip(&rules)
        .filter(|(r, _)| r.as_deref() == Some("expectation_failed"))
        .map(|(r, x)| (r.clone().unwrap(), x.clone().unwrap()))
        .collect();
    assert_eq!(exp.len(), 10);
    assert!(exp.iter().all(|(_, rule)| rule == "non_negative"));

    let dq = events(&p, Some("data_quality"));
    let billing: Vec<&Value> = dq.iter().filter(|e| e["table"] == "silver/billing").collect();
    let mut counts = std::collections::BTreeMap::<String, (u64, u64)>::new();
    for e in &billing {
        for r in e["details"]["expectations"].as_array().unwrap() {
            let c = counts.entry(r["name"].as_str().unwrap().to_string()).or_default();
            c.0 += r["passed"].as_u64().unwrap();
            c.1 += r["failed"].as_u64().unwrap();
        }
    }
    assert_eq!(counts["small"], (97, 3));
    assert_eq!(counts["not_test_sku"], (95, 5));
    assert_eq!(counts["non_negative"], (90, 10));
    assert_eq!(counts["recent"], (100, 0));
    // The `*` rule runs on job too.
    assert!(dq.iter().any(|e| e["table"] == "silver/job"));
    // Reconciliation: input = written + quarantined + duplicates + dropped.
    let progress = events(&p, Some("flow_progress"));
    let sb: Vec<&Value> = progress.iter().filter(|e| e["table"] == "silver/billing").collect();
    let sum = |k: &str| sb.iter().map(|e| e["details"][k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("input_rows"), sum("written"), sum("quarantined"), sum("dropped")), (100, 85, 10, 5));
    assert!(sb.iter().all(|e| e["details"]["reconciled"] == true));

    // A second run over the same data changes nothing (dropped rows are judged the same way).
    let before = p.fingerprints().unwrap();
    p.run_to_completion(&["--config", &cfg, "--stages", "bronze,silver"]).unwrap();
    assert_eq!(before, p.fingerprints().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fail_expectation_commits_nothing_and_stops_only_its_flow() {
    let p = Pipeline::new(&[REGION]);
    billing_dataset(&p);
    let cfg = config_file(
        &p,
        r#"
[[silver.expectations]]
name = "bounded"
table = "billing"
expr = "dbu < 1000"
action = "fail"
"#,
    );
    p.run_to_completion(&["--config", &cfg, "--stages", "bronze,silver"]).unwrap();
    let c = p.config();
    let silver = tributary_delta::Table::open_existing("s", &c.region_table(REGION, "silver/billing")).await.unwrap();
    let silver_rows = match silver {
        Some(t) => rows(&t.read_all().await.unwrap()),
        None => 0,
    };
    assert_eq!(silver_rows, 0, "nothing of the failing batch is committed");
    let jobs = read(&c.region_table(REGION, "silver/job")).await.unwrap();
    assert_eq!(rows(&jobs), 5, "other flows go on");
    let errors = events(&p, Some("error"));
    let stop = errors
        .iter()
        .find(|e| e["table"] == "silver/billing" && e["details"]["stopped"] == true)
        .unwrap_or_else(|| panic!("no stop record: {errors:?}"));
    let msg = stop["details"]["message"].as_str().unwrap();
    assert!(msg.contains("bounded") && msg.contains("dbu < 1000") && msg.contains("bill-0"), "{msg}");
    assert!(msg.contains("billing/b1.ndjson"), "lineage in the message: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_fires_on_a_crafted_jump_and_stays_quiet_on_normal_data() {
    let p = Pipeline::new(&[REGION])
        .with_env("TRIBUTARY__BRONZE__DRIFT__WINDOW_ROWS", "200")
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1");
    // Normal generated traffic: 1% malformed, steady fields, no unknown fields.
    p.generate_with(
        &GenSpec { events_per_source: 2000, files_per_source: 10, seed: 5 },
        &["--unknown-field-pct", "0", "--malformed-pct", "1"],
    )
    .unwrap();
    bronze_only(&p);
    let quiet = events(&p, Some("drift"));
    assert!(quiet.is_empty(), "drift on normal data: {quiet:?}");

    // The jump, in one process with the baseline: audit events lose `actor` and 30% of the
    // lines are garbage. Restart-fresh processes rebuild the baseline first, so the normal files
    // are replayed into a second pipeline fed the same landing zone.
    let q = Pipeline::new(&[REGION])
        .with_env("TRIBUTARY__BRONZE__DRIFT__WINDOW_ROWS", "200")
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1");
    copy_dir(&p.data.join(format!("regions/{REGION}/landing")), &q.data.join(format!("regions/{REGION}/landing")));
    let mut lines = Vec::new();
    for i in 0..300 {
        if i % 10 < 3 {
            lines.push(format!("{{\"event_id\": \"broken-{i}\", "));
        } else {
            lines.push(event("audit", &format!("jump-{i}"), i, json!({"action": "login", "result": "success"})));
        }
    }
    write_file(&q, "audit", "zz-jump.ndjson", &lines);
    bronze_only(&q);
    let drift = events(&q, Some("drift"));
    let kinds: Vec<(String, String)> = drift
        .iter()
        .filter(|e| e["table"] == "bronze/audit")
        .map(|e| (e["details"]["kind"].as_str().unwrap().into(), e["details"]["field"].as_str().unwrap().into()))
        .collect();
    assert!(kinds.contains(&("malformed_rate".into(), "".into())), "{drift:?}");
    assert!(kinds.contains(&("missing_field".into(), "actor".into())), "{drift:?}");
    // The other sources stayed quiet.
    assert!(drift.iter().all(|e| e["table"] == "bronze/audit"), "{drift:?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

//! Two regions' federators, separate processes, committing to the same central tables at once.

use integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_federators_lose_nothing() {
    let p = Pipeline::new(&["r1", "r2"])
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1")
        .with_env("TRIBUTARY__FEDERATOR__MAX_VERSIONS_PER_BATCH", "1");
    let truth = p.generate(&GenSpec { events_per_source: 300, files_per_source: 10, seed: 5 }).unwrap();
    // Regional layers first (a region never waits for the centre) ...
    p.run_to_completion(&["--stages", "bronze,silver,gold"]).unwrap();
    // ... then both federators at once, one commit per input version, racing for every version.
    p.federators_at_once(&["r1", "r2"]).unwrap();
    verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap()).await.unwrap();
    // The central log interleaves both regions' commits.
    let log = std::fs::read_dir(p.data.join("central/events/_delta_log")).unwrap().count();
    assert!(log > 20, "expected many interleaved central commits, saw {log} log entries");
}

/// Fifty regions' federators (tasks of `tributary bench-central`, each committing through the same
/// `commit_batch` + position protocol as a federator) racing for one central table while a reader
/// scans it: every commit lands once, readers only ever see whole commits, the log is checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_regions_commit_to_one_central_table_at_once_losing_nothing() {
    let p = Pipeline::new(&["r1"]);
    let table = p.data.join("central-50").display().to_string();
    let out = p
        .command(&["bench-central", "--bench-regions", "50", "--commits", "3", "--rows", "20", "--table", &table])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    println!("{}", report.trim());
    assert!(
        report.contains("0 lost, 0 duplicated") && report.contains("every snapshot whole commits only"),
        "{report}"
    );

    // Independently of the benchmark's own check: 150 commits of 20 rows, each (region, seq) once,
    // every region's position at 3, and a checkpoint so a new reader does not replay 150 JSON commits.
    let mut t = tributary_delta::Table::open_existing("central/bench", &table).await.unwrap().unwrap();
    t.refresh().await.unwrap();
    assert_eq!(t.version(), 150);
    let mut seen = std::collections::HashMap::<(String, i64), usize>::new();
    for b in t.read_columns(&["region", "seq"]).await.unwrap() {
        let r = deltalake::arrow::compute::cast(
            b.column_by_name("region").unwrap(),
            &deltalake::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let r = r.as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
        let s = b
            .column_by_name("seq")
            .unwrap()
            .as_any()
            .downcast_ref::<deltalake::arrow::array::Int64Array>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            *seen.entry((r.value(i).to_string(), s.value(i))).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 150, "distinct (region, commit) pairs");
    assert!(seen.values().all(|n| *n == 20), "a commit with other than 20 rows: lost or duplicated rows");
    for r in 0..50 {
        assert_eq!(t.txn_version(&format!("bench-central:region-{r:02}")).await.unwrap(), Some(3));
    }
    let log = std::path::Path::new(&table).join("_delta_log");
    let checkpoints = std::fs::read_dir(&log)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".checkpoint.parquet"))
        .count();
    assert!(checkpoints >= 1 && log.join("_last_checkpoint").exists(), "no checkpoint after 150 commits");
}

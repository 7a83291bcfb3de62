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

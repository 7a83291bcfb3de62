//! Reconciliation end to end, and an independent reader (Python `deltalake`) agreeing with it.

use integration_tests::*;

fn small() -> GenSpec {
    GenSpec { events_per_source: 500, files_per_source: 5, seed: 7 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_matches_ground_truth_exactly() {
    let p = Pipeline::new(&["us-east-1", "eu-west-1", "ap-south-1"]);
    let truth = p.generate(&small()).unwrap();
    // The generator must actually produce each messy case, or this test proves little.
    type Pick = fn(&tributary_events::truth::SourceTruth) -> u64;
    let kinds: [Pick; 4] = [|s| s.duplicates, |s| s.malformed, |s| s.null_id, |s| s.late];
    for kind in kinds {
        assert!(truth.total(kind) > 0, "generator produced none of a messy case");
    }
    let out = p.run_to_completion(&[]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("every layer matches the generator's ground truth exactly"), "{stdout}");
    verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap()).await.unwrap();

    // Running again over the same landing zone adds nothing (files are ingested exactly once).
    let before = p.fingerprints().unwrap();
    p.run_to_completion(&[]).unwrap();
    assert_eq!(before, p.fingerprints().unwrap());

    // Independent reader: the Python deltalake package reads bronze and gold and agrees.
    python_reader_agrees(&p.data.display().to_string(), &p.truth_path(), &[]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_fed_the_same_files_have_the_same_tables() {
    // Same landing files, different batch sizes (so different commits and file layouts). A
    // lateness of one minute makes many of the generator's late events late in gold: lateness
    // is judged per landing file, so the same events are late however the files were batched.
    let a = Pipeline::new(&["r1"]).with_env("TRIBUTARY__GOLD__ALLOWED_LATENESS_SECS", "60");
    let b = Pipeline::new(&["r1"])
        .with_env("TRIBUTARY__GOLD__ALLOWED_LATENESS_SECS", "60")
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1")
        .with_env("TRIBUTARY__SILVER__MAX_VERSIONS_PER_BATCH", "1");
    let spec = GenSpec { events_per_source: 300, files_per_source: 6, seed: 11 };
    a.generate(&spec).unwrap();
    b.generate(&spec).unwrap();
    a.run_to_completion(&[]).unwrap();
    b.run_to_completion(&[]).unwrap();
    let (fa, fb) = (a.fingerprints().unwrap(), b.fingerprints().unwrap());
    assert!(fa.values().all(|v| v != "absent"), "{fa:?}");
    assert_eq!(fa, fb);
}

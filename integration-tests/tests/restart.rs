//! Crash safety: SIGKILL at every named fault point (including between a Delta commit and the
//! bookkeeping after it) and at arbitrary instants; a restart must reach exactly the tables a
//! run without crashes produces — nothing lost, nothing duplicated.

use integration_tests::*;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::OnceLock;

const REGIONS: &[&str] = &["r1", "r2"];

fn spec() -> GenSpec {
    GenSpec { events_per_source: 240, files_per_source: 6, seed: 3 }
}

/// Small batches so every stage commits many times and crash points are hit mid-stream.
fn pipeline() -> Pipeline {
    Pipeline::new(REGIONS)
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "2")
        .with_env("TRIBUTARY__BRONZE__INDEX_EVERY_BATCHES", "2")
        .with_env("TRIBUTARY__SILVER__MAX_VERSIONS_PER_BATCH", "2")
        .with_env("TRIBUTARY__GOLD__MAX_VERSIONS_PER_BATCH", "2")
        .with_env("TRIBUTARY__FEDERATOR__MAX_VERSIONS_PER_BATCH", "2")
        // A short lateness: many late events and adjustment rows, and a crash changes how the
        // files are batched — gold judges lateness per landing file, so the tables still match.
        .with_env("TRIBUTARY__GOLD__ALLOWED_LATENESS_SECS", "60")
}

fn reference() -> &'static BTreeMap<String, String> {
    static R: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    R.get_or_init(|| {
        let p = pipeline();
        p.generate(&spec()).unwrap();
        p.run_to_completion(&[]).unwrap();
        p.fingerprints().unwrap()
    })
}

async fn crash_then_recover(points: &[&str]) {
    let want = reference().clone();
    for point in points {
        assert!(tributary_core::fault::POINTS.contains(point), "unknown fault point {point}");
        let p = pipeline();
        let truth = p.generate(&spec()).unwrap();
        let out = p.standalone(&[], &[("TRIBUTARY_FAULT", &format!("{point}:3"))]).unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{point}: expected the process to die by SIGKILL at its 3rd hit, got {:?}\n{}",
            out.status,
            tail(&out.stderr, 3000)
        );
        p.run_to_completion(&[]).unwrap_or_else(|e| panic!("{point}: restart failed: {e}"));
        verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap())
            .await
            .unwrap_or_else(|e| panic!("{point}: after restart: {e}"));
        assert_eq!(p.fingerprints().unwrap(), want, "{point}: tables differ from a run without crashes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_bronze_then_restart_is_exact() {
    crash_then_recover(&[
        "bronze.before_write",
        "bronze.after_upload_before_commit",
        "bronze.after_data_commit",
        "bronze.after_quarantine_commit",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_silver_then_restart_is_exact() {
    crash_then_recover(&[
        "silver.before_commit",
        "silver.after_data_commit",
        "silver.after_index_commit",
        "silver.after_quarantine_commit",
        "silver.entity_after_history_commit",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_gold_and_federator_then_restart_is_exact() {
    crash_then_recover(&[
        "gold.before_commit",
        "gold.after_commit",
        "federator.before_commit",
        "federator.after_events_commit",
        "federator.after_gold_commit",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_arbitrary_instants_then_restart_is_exact() {
    let want = reference().clone();
    let p = pipeline();
    let truth = p.generate(&spec()).unwrap();
    for delay_ms in [300u64, 700, 1200, 1900] {
        let mut child = p
            .command(&["standalone", "--exit-when-idle", "--timeout-secs", "300"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
    }
    p.run_to_completion(&[]).unwrap();
    verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap()).await.unwrap();
    assert_eq!(p.fingerprints().unwrap(), want);
}

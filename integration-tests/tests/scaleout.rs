//! Several bronze replicas sharing one landing zone (`bronze.landing_slots`): they split the
//! files, a replica that dies (SIGKILL, no goodbye) has its slots taken over, a clean stop hands
//! them over at once, and every layer is exact afterwards — no file ingested twice, none lost.

use integration_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const REGION: &str = "r1";

/// (source, version, member, app_id, ingested paths) of every bronze batch commit, from the logs.
/// (source, table version, member, app_id, files, commit timestamp ms)
type BatchCommit = (String, i64, String, String, Vec<String>, i64);

fn batch_commits(cfg: &tributary_core::Config) -> Vec<BatchCommit> {
    let mut out = Vec::new();
    for source in &cfg.bronze.sources {
        let log = std::path::PathBuf::from(bronze_ingest::table_location(cfg, REGION, source)).join("_delta_log");
        let Ok(dir) = std::fs::read_dir(&log) else { continue };
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            let Some(version) = name.strip_suffix(".json").and_then(|v| v.parse::<i64>().ok()) else { continue };
            for line in std::fs::read_to_string(f.path()).unwrap_or_default().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let Some(b) = v.get("commitInfo").and_then(|c| c.get("tributary.batch")) else { continue };
                let at = v["commitInfo"].get("timestamp").and_then(|t| t.as_i64()).unwrap_or(0);
                let member = b.get("member").and_then(|m| m.as_str()).unwrap_or("").to_string();
                let app_id = b.get("app_id").and_then(|m| m.as_str()).unwrap_or("").to_string();
                let paths = b
                    .get("ingested")
                    .and_then(|i| i.as_array())
                    .map(|a| a.iter().filter_map(|f| f.get("path")?.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                out.push((source.clone(), version, member, app_id, paths, at));
            }
        }
    }
    out
}

fn landing_files(cfg: &tributary_core::Config) -> usize {
    let mut n = 0;
    let mut stack = vec![std::path::PathBuf::from(cfg.landing(REGION))];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            } else if name.contains("json") {
                n += 1;
            }
        }
    }
    n
}

fn member(p: &Pipeline, id: &str, dir: &std::path::Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
    p.command(&["bronze-ingest", "--region", REGION])
        .env("TRIBUTARY__BRONZE__MEMBER_ID", id)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_replicas_share_a_landing_zone_and_take_over_the_slots_of_a_dead_one() {
    let logs = tempfile::tempdir().unwrap();
    let p = Pipeline::new(&[REGION])
        .with_env("TRIBUTARY__BRONZE__LANDING_SLOTS", "4")
        .with_env("TRIBUTARY__BRONZE__MEMBER_HEARTBEAT_SECS", "1")
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1")
        .with_env("TRIBUTARY__BRONZE__INDEX_EVERY_BATCHES", "3")
        .with_env("TRIBUTARY__SERVER__POLL_INTERVAL_MS", "100");
    let truth = p.generate(&GenSpec { events_per_source: 1600, files_per_source: 48, seed: 17 }).unwrap();
    let cfg = {
        let mut c = p.config();
        c.bronze.landing_slots = 4;
        c
    };
    let files = landing_files(&cfg);
    assert!(files >= 4 * 48, "generator wrote {files} landing files");

    let mut a = member(&p, "member-a", logs.path());
    let mut b = member(&p, "member-b", logs.path());
    let log_of = |id: &str| tail(&std::fs::read(logs.path().join(format!("{id}.log"))).unwrap_or_default(), 3000);
    // Both members commit batches, and once each has seen the other they split the slots.
    wait_for("both members to commit 30 batches", 120, || {
        let c = batch_commits(&cfg);
        ["member-a", "member-b"].iter().all(|m| c.iter().filter(|(_, _, who, ..)| who == m).count() >= 30)
    });
    let last_slots = |m: &str| -> BTreeSet<String> {
        let mut c: Vec<_> = batch_commits(&cfg).into_iter().filter(|c| c.2 == m).collect();
        // Newest first by commit time: versions of different source tables do not compare.
        c.sort_by_key(|c| c.5);
        c.iter().rev().take(6).map(|c| c.3.rsplit('/').next().unwrap().to_string()).collect()
    };
    let (a_now, b_now) = (last_slots("member-a"), last_slots("member-b"));
    assert!(a_now.is_disjoint(&b_now), "two live members ingest the same slots: a {a_now:?}, b {b_now:?}");
    // SIGKILL: no goodbye, the heartbeat just stops.
    a.kill().unwrap();
    a.wait().unwrap();
    let mut at_kill: BTreeMap<String, i64> = BTreeMap::new();
    for (source, v, ..) in batch_commits(&cfg) {
        let e = at_kill.entry(source).or_insert(-1);
        *e = (*e).max(v);
    }
    let a_batches = batch_commits(&cfg).iter().filter(|c| c.2 == "member-a").count();
    // b takes a's slots over once a's heartbeat is 3 intervals old, and finishes every file.
    wait_for("every landing file to be ingested", 240, || {
        let done: BTreeSet<String> = batch_commits(&cfg).into_iter().flat_map(|c| c.4).collect();
        done.len() >= files
    });
    let all = batch_commits(&cfg);
    let slot = |app_id: &str| app_id.rsplit('/').next().unwrap().to_string();
    let b_after: BTreeSet<String> = all
        .iter()
        .filter(|(src, v, who, ..)| who == "member-b" && *v > at_kill.get(src).copied().unwrap_or(-1))
        .map(|c| slot(&c.3))
        .collect();
    assert_eq!(
        b_after.len(),
        4,
        "after a died, b should ingest every slot (a had committed {a_batches} batches); b's slots after the kill: {b_after:?}\n{}",
        log_of("member-b")
    );
    assert_eq!(all.iter().filter(|c| c.2 == "member-a").count(), a_batches, "a committed after SIGKILL?");
    eprintln!(
        "{files} landing files in {} batches: member-a {a_batches} before its SIGKILL, member-b {} (slots after the kill: {b_after:?})",
        all.len(),
        all.iter().filter(|c| c.2 == "member-b").count()
    );
    // No landing file in two batches.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, _, _, paths, _) in &all {
        for p in paths {
            *seen.entry(p.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "files ingested twice: {twice:?}");
    assert_eq!(seen.len(), files);

    // A clean stop removes b's heartbeat (its slots are handed over at once).
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(b.id() as i32, libc::SIGTERM);
    }
    wait_with_deadline(&mut b, 60).unwrap();
    let beats = std::path::PathBuf::from(bronze_ingest::quarantine_location(&cfg, REGION))
        .join("_tributary/bronze-members/member-b.json");
    assert!(!beats.exists(), "member-b left its heartbeat behind after SIGTERM:\n{}", log_of("member-b"));

    // A replica with another slot count is refused, and says why.
    let out = p
        .command(&["bronze-ingest", "--region", REGION, "--trigger", "available-now"])
        .env("TRIBUTARY__BRONZE__LANDING_SLOTS", "8")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a replica with landing_slots = 8 started on tables written with 4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("landing_slots = 4"), "{err}");

    // The rest of the pipeline (a single member of bronze finds nothing left): every layer exact.
    p.run_to_completion(&[]).unwrap();
    verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap()).await.unwrap();
}

//! Disaster recovery drill: a primary pipeline on an S3 API (moto, behind a loopback proxy that
//! can be cut) and a secondary on local files, fed the same landing files through dual landing
//! zones, sharing the central tables. The primary is killed mid-pass and its store cut; failover;
//! the secondary serves central; the primary comes back, catches up, failback. Nothing lost or
//! duplicated, both sides' tables equal.

use deltalake::arrow::array::Array as _;
use integration_tests::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A loopback proxy in front of the S3 server; `up = false` is an outage of that store: open
/// connections are cut and new ones are dropped.
struct Cuttable {
    port: u16,
    up: Arc<AtomicBool>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, up: Arc<AtomicBool>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    while up.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn cuttable_proxy(upstream: u16) -> Cuttable {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if !flag.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (f1, f2) = (flag.clone(), flag.clone());
            std::thread::spawn(move || pump(client, server, f1));
            std::thread::spawn(move || pump(s2, c2, f2));
        }
    });
    Cuttable { port, up }
}

/// Copies round `n`'s file of every source from the generator's output into the spool.
fn deliver(staging: &Path, spool: &Path, n: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for src in std::fs::read_dir(staging).unwrap().flatten() {
        for f in std::fs::read_dir(src.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("part-{n:06}.")) {
                let dst = spool.join("r1").join(src.file_name()).join(&name);
                std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
                std::fs::copy(f.path(), &dst).unwrap();
                out.push(f.path());
            }
        }
    }
    assert!(!out.is_empty(), "no files for round {n}");
    out
}

/// event_id and event_time (RFC 3339) of every line of the plain (not gzipped) files.
fn events_of(files: &[PathBuf]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "ndjson")) {
        let Ok(text) = String::from_utf8(std::fs::read(f).unwrap()) else { continue };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if let (Some(id), Some(t)) = (v["event_id"].as_str(), v["event_time"].as_str()) {
                out.push((id.to_string(), t.to_string()));
            }
        }
    }
    out
}

fn pass(p: &Pipeline, who: &str) {
    let out = p.standalone(&[], &[]).unwrap();
    assert!(
        out.status.success(),
        "{who} pass failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli(p: &Pipeline, args: &[&str]) -> (i32, String) {
    let out = p.command(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

async fn central_ids(central: &Path) -> std::collections::HashMap<String, usize> {
    let mut ids = std::collections::HashMap::new();
    let loc = central.join("events").display().to_string();
    let Some(t) = tributary_delta::Table::open_existing("central/events", &loc).await.unwrap() else { return ids };
    for b in t.read_columns(&["event_id"]).await.unwrap() {
        let c = deltalake::arrow::compute::cast(b.column(0), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
        let c = c.as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
        for i in 0..c.len() {
            *ids.entry(c.value(i).to_string()).or_default() += 1;
        }
    }
    ids
}

fn side_tables(p: &Pipeline) -> std::collections::BTreeMap<String, String> {
    p.fingerprints()
        .unwrap()
        .into_iter()
        // Silver and gold row for row (and gold's net content too): the two sides saw the same
        // files in different batches — the standby all at once per pass, the primary as they
        // came, killed and cut off in between — and gold judges lateness per landing file, so
        // the same events are late on both sides and the same window/adjustment rows result.
        .filter(|(k, _)| k.contains("/silver/") || k.contains("/gold/"))
        .map(|(k, v)| (k[k.find("r1/").unwrap_or(0)..].to_string(), v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_drill_failover_failback_loses_nothing_and_both_sides_end_equal() {
    let s3 = s3();
    let bucket = s3.bucket("it-dr").unwrap();
    let proxy = cuttable_proxy(s3.port);
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);

    // The source system: every file generated up front (and the ground truth), delivered in
    // nine rounds through the spool into both landing zones.
    let source = Pipeline::new(&["r1"]);
    let truth = source.generate(&GenSpec { events_per_source: 540, files_per_source: 9, seed: 21 }).unwrap();
    let staging = source.data.join("regions/r1/landing");
    let work = tempfile::tempdir().unwrap();
    let (spool, central, sec_landing) =
        (work.path().join("spool"), work.path().join("central"), work.path().join("secondary-landing"));
    let central_s = central.display().to_string();
    let primary_zone = format!("{bucket}/landing");
    let zones = format!("{primary_zone},{}", sec_landing.display());
    let mut primary = Pipeline::new(&["r1"])
        .with_env("TRIBUTARY__LANDING_ROOT", &format!("{primary_zone}/{{region}}"))
        .with_env("TRIBUTARY__CENTRAL_ROOT", &central_s)
        .with_env("TRIBUTARY__DR__ROLE", "primary")
        // A 1 KiB filter of central's ids after a switch (~10% false positives here) and one
        // cached partition: the exact check against central decides for many rows.
        .with_env("TRIBUTARY__DR__OVERLAP_FILTER_KB", "1")
        .with_env("TRIBUTARY__DR__OVERLAP_CACHE_DATES", "1");
    for (k, v) in s3.env(&via_proxy) {
        primary = primary.with_env(&k, &v);
    }
    primary = primary.with_env("TRIBUTARY__STORAGE__S3__RETRY_TIMEOUT_SECS", "2");
    primary.root = Some(format!("{bucket}/primary"));
    let secondary = Pipeline::new(&["r1"])
        .with_env("TRIBUTARY__LANDING_ROOT", &format!("{}/{{region}}", sec_landing.display()))
        .with_env("TRIBUTARY__CENTRAL_ROOT", &central_s)
        .with_env("TRIBUTARY__DR__ROLE", "secondary")
        .with_env("TRIBUTARY__DR__OVERLAP_FILTER_KB", "1")
        .with_env("TRIBUTARY__DR__OVERLAP_CACHE_DATES", "1");
    let mut mirror_env = source.clone_env();
    for (k, v) in s3.env(&via_proxy) {
        mirror_env.push((k, v));
    }
    mirror_env.push(("TRIBUTARY__STORAGE__S3__RETRY_TIMEOUT_SECS".into(), "2".into()));
    let mirror = || {
        let mut c = source.command(&["mirror-landing", "--spool", &spool.display().to_string(), "--zones", &zones]);
        for (k, v) in &mirror_env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).to_string())
    };

    // Normal operation: the primary serves central, the secondary runs on its schedule.
    for n in 1..=3 {
        deliver(&staging, &spool, n);
    }
    assert_eq!(mirror().0, 0);
    pass(&primary, "primary");
    pass(&secondary, "secondary (standby)");
    let served = central_ids(&central).await;
    assert!(!served.is_empty(), "the primary federated nothing");
    let (_, status) = cli(&secondary, &["dr-status"]);
    assert!(status.contains("central served by primary"), "{status}");

    // Mid-stream: round 4-5 lands, the primary's pass is SIGKILLed, then its store goes away.
    let mut before = Vec::new();
    for n in 4..=5 {
        before.extend(deliver(&staging, &spool, n));
    }
    assert_eq!(mirror().0, 0);
    let mut child = primary
        .command(&["standalone", "--exit-when-idle", "--timeout-secs", "300"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.up.store(false, Ordering::SeqCst);
    // The instant the outage started, in event time: the newest event delivered before it.
    let outage_at = events_of(&before).into_iter().map(|(_, t)| t).max().unwrap();

    // Traffic keeps flowing: rounds 6-7 reach the secondary's zone only; the rest waits in the spool.
    deliver(&staging, &spool, 6);
    let round6 = deliver(&staging, &spool, 7);
    let (code, out) = mirror();
    assert_eq!(code, 3, "the primary's zone is down: files must stay pending: {out}");
    assert!(out.contains("unreachable"), "{out}");

    // Failover, then the secondary's federator takes over. RTO: failover command -> central
    // serves an event that only the secondary has seen.
    let egress: std::collections::HashSet<String> = ["audit", "job", "billing", "cluster_metrics"]
        .iter()
        .flat_map(|s| {
            std::fs::read_to_string(source.truth_path().parent().unwrap().join(format!("ids/r1/{s}.egress.txt")))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let fresh: Vec<String> =
        events_of(&round6).into_iter().map(|(id, _)| id).filter(|id| egress.contains(id)).collect();
    assert!(!fresh.is_empty(), "round 7 has no egress-approved event in a plain file");
    let t0 = Instant::now();
    let (code, out) = cli(&secondary, &["failover", "--region", "r1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("central now served by secondary"), "{out}");
    pass(&secondary, "secondary (active)");
    let ids = central_ids(&central).await;
    let rto = t0.elapsed();
    assert!(fresh.iter().all(|id| ids.contains_key(id)), "central does not serve the secondary's fresh events");
    println!(
        "DR drill: RTO {:.1} s (failover command -> central serves events only the secondary has)",
        rto.as_secs_f64()
    );
    // The fence: a commit carrying the epoch the primary's federator knew (none) is refused now,
    // whatever it holds — what a primary that missed the switch would attempt.
    let mut events =
        tributary_delta::Table::open_existing("central/events", &central.join("events").display().to_string())
            .await
            .unwrap()
            .unwrap();
    let dr_app = tributary_delta::catalog::central_dr_app_id(&tributary_core::Config::default(), "r1");
    let zombie = events
        .commit_batch(
            tributary_delta::Commit::new(
                &[],
                vec![tributary_delta::PositionMove { app_id: dr_app, from: -1, to: -1 }],
                Default::default(),
                -1,
            ),
            &tributary_delta::Writer { stage: "federator".into(), region: "r1".into(), threads: 1, attempts: 3 },
        )
        .await;
    assert!(zombie.is_err_and(|e| e.kind == tributary_core::ErrorKind::Conflict), "a commit of the old epoch landed");
    // Idempotent.
    let (code, out) = cli(&secondary, &["failover", "--region", "r1"]);
    assert!(code == 0 && out.contains("already serves"), "{out}");
    // Has the secondary processed everything from before the outage?
    let (code, out) = cli(&secondary, &["dr-status", "--caught-up-at", &outage_at]);
    assert_eq!(code, 0, "the secondary has not caught up with the outage start:\n{out}");
    assert!(out.contains("central served by secondary"), "{out}");

    // Still flowing on the secondary.
    let round7 = deliver(&staging, &spool, 8);
    assert_eq!(mirror().0, 3);
    pass(&secondary, "secondary (active)");

    // The primary's store is back: the spool delivers its backlog; the primary is behind
    // (dr-status says so), catches up on its own schedule while standing by, then fails back.
    proxy.up.store(true, Ordering::SeqCst);
    let (code, out) = mirror();
    assert_eq!(code, 0, "backlog not delivered to the primary's zone: {out}");
    let latest = events_of(&round7).into_iter().map(|(_, t)| t).max().unwrap();
    let (code, out) = cli(&primary, &["dr-status", "--caught-up-at", &latest]);
    assert_eq!(code, 4, "the primary cannot have caught up yet:\n{out}");
    pass(&primary, "primary (standby, catching up)");
    let (code, out) = cli(&primary, &["dr-status", "--caught-up-at", &latest]);
    assert_eq!(code, 0, "the primary did not catch up:\n{out}");
    let (code, out) = cli(&primary, &["failback", "--region", "r1"]);
    assert!(code == 0 && out.contains("central now served by primary"), "{out}");
    // The primary's federator takes over and is SIGKILLed after its first commit of one silver
    // version: restarted, it must still skip every row the secondary federated meanwhile.
    let out = primary
        .standalone(
            &["--stages", "federator"],
            &[
                ("TRIBUTARY_FAULT", "federator.after_events_commit:1"),
                ("TRIBUTARY__FEDERATOR__MAX_VERSIONS_PER_BATCH", "1"),
            ],
        )
        .unwrap();
    assert!(!out.status.success(), "the fault point did not fire");

    // The last round, both sides to completion.
    deliver(&staging, &spool, 9);
    assert_eq!(mirror().0, 0);
    pass(&primary, "primary (active again)");
    pass(&secondary, "secondary (standby)");

    // RPO 0: central holds every egress-approved event exactly once; each side equals the truth.
    let ids = central_ids(&central).await;
    assert!(ids.values().all(|n| *n == 1), "duplicated rows in central");
    let lost: Vec<_> = egress.iter().filter(|id| !ids.contains_key(*id)).collect();
    println!("DR drill: RPO {} events lost of {} egress-approved", lost.len(), egress.len());
    assert!(lost.is_empty(), "{} events lost", lost.len());
    let truth_dir = source.truth_path().parent().unwrap().to_path_buf();
    for (p, landing) in [
        (&primary, format!("{primary_zone}/{{region}}")),
        (&secondary, format!("{}/{{region}}", sec_landing.display())),
    ] {
        let cfg =
            tributary_core::Config { landing_root: Some(landing), central_root: Some(central_s.clone()), ..p.config() };
        verify_against_truth(&cfg, &truth, &truth_dir).await.unwrap();
    }
    let (a, b) = (side_tables(&primary), side_tables(&secondary));
    assert!(a.len() >= 10 && a.values().all(|v| v != "absent"), "{a:?}");
    assert_eq!(a, b, "primary and secondary silver/gold differ");
    // The equality covers the batch-sensitive case: late events became adjustment rows.
    let billing = secondary.data.join("regions/r1/gold/billing_usage_hourly").display().to_string();
    let t = tributary_delta::Table::open_existing("gold/billing_usage_hourly", &billing).await.unwrap().unwrap();
    let adjustments: usize = t
        .read_columns(&["record_type"])
        .await
        .unwrap()
        .iter()
        .map(|b| {
            let c = b.column(0).as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
            (0..c.len()).filter(|i| c.value(*i) == "adjustment").count()
        })
        .sum();
    assert!(adjustments > 0, "the drill's input should make late billing events (adjustment rows)");
}

/// The standby's schedule (`standalone --every`): each pass picks up what was delivered since,
/// and SIGTERM between or during passes stops it cleanly (exit 0); the tables end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_standby_picks_up_each_delivery_and_stops_cleanly_on_sigterm() {
    use std::io::BufRead;
    let p = Pipeline::new(&["r1"]);
    let truth = p.generate(&GenSpec { events_per_source: 200, files_per_source: 6, seed: 5 }).unwrap();
    // Hold back the last three files of every source: the second delivery.
    let landing = p.data.join("regions/r1/landing");
    let held = tempfile::tempdir().unwrap();
    let mut moved = Vec::new();
    for src in std::fs::read_dir(&landing).unwrap() {
        let src = src.unwrap().path();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.iter().skip(3) {
            let to = held.path().join(format!("{}-{}", moved.len(), f.file_name().unwrap().to_string_lossy()));
            std::fs::rename(f, &to).unwrap();
            moved.push((to, f.clone()));
        }
    }
    assert!(!moved.is_empty());
    let mut child = p
        .command(&["standalone", "--every", "2s", "--timeout-secs", "120"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let l = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
                panic!("no line containing {what:?} within 120 s");
            });
            if l.contains(what) {
                return l;
            }
        }
    };
    let first = wait_for("scheduled pass 1 ");
    assert!(first.contains("finished"), "{first}");
    // Pass 1 saw half the files: the standby is behind the landing zone by exactly the rest.
    let (bronze, _) = bronze_counts(&p.config(), "r1").await.unwrap();
    let after_first: u64 = bronze.values().sum();
    assert!(after_first > 0);
    for (from, to) in &moved {
        std::fs::rename(from, to).unwrap();
    }
    // Pass 2 or 3 (a tick may have begun before the files were back) sees the rest.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = wait_for("scheduled pass ");
        assert!(l.contains("finished"), "{l}");
        if verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the standby never caught up");
    }
    let (bronze, _) = bronze_counts(&p.config(), "r1").await.unwrap();
    assert!(bronze.values().sum::<u64>() > after_first);
    // SIGTERM while it waits for the next tick: it stops at once, exit 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_with_deadline(&mut child, 30).unwrap();
    assert!(status.success(), "{status:?}");
    let last = wait_for("scheduled standby stopped after");
    assert!(last.contains(", 0 failed"), "{last}");
    verify_against_truth(&p.config(), &truth, p.truth_path().parent().unwrap()).await.unwrap();
}

//! Issue #11: the log-exporter's log streams against the real broker. Two log files are written
//! while they are rotated by rename + create and by copytruncate, the exporter is SIGKILLed
//! twice (once while the broker is frozen with a round in its sockets), and the broker is killed
//! for a while: afterwards every line is in Kafka exactly once,
//! and the lines of each log path are in order.

use integration_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TOPIC: &str = "app.logs";
const LINES: u64 = 24_000;

fn sigkill(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Kills the exporter if the test fails half way (no orphan keeps running).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        sigkill(&mut self.0);
    }
}

/// Records in the topic (the sum of the partitions' end offsets; 0 while the broker is away).
fn in_topic(brokers: &str) -> u64 {
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    (0..2).map(|p| c.fetch_watermarks(TOPIC, p, Duration::from_secs(10)).map(|w| w.1 as u64).unwrap_or(0)).sum()
}

/// The exporter's own log lines (librdkafka's connection noise during the outage left out).
fn ours(p: &std::path::Path) -> String {
    let s = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let l: Vec<&str> = s.lines().filter(|l| l.contains("log_exporter") || l.contains("tributary")).collect();
    l[l.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_survive_rotation_a_broker_outage_and_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("broker")).unwrap();
    let kcfg = tributary_core::config::KafkaConfig { brokers: broker.addr(), ..Default::default() };
    tributary_kafka::ensure_topics(&kcfg, &[(TOPIC.to_string(), 2)]).await.unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let p = Pipeline::new(&["r1"]);
    let exporter_log = dir.path().join("exporter.log");
    let streams = format!(
        "[{{name = \"app\", paths = [\"{}/*.log\"], topic = \"{TOPIC}\", max_batch_kbytes = 64}}]",
        logs.display()
    );
    let brokers = broker.addr();
    // The first run SIGKILLs itself between an acknowledged round and its checkpoint; the second
    // fails a round there instead (as if a delivery had failed): both must find the round in
    // Kafka instead of sending it again.
    let faults =
        ["log_exporter.after_ack_before_checkpoint:12", "log_exporter.after_ack_before_checkpoint:8:error", ""];
    let runs = std::cell::Cell::new(0usize);
    let start = || -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&exporter_log).unwrap();
        let fault = faults[runs.get().min(2)];
        runs.set(runs.get() + 1);
        p.command(&["log-exporter"])
            .env("TRIBUTARY_FAULT", fault)
            .env("TRIBUTARY__KAFKA__BROKERS", &brokers)
            .env("TRIBUTARY__LOG_EXPORTER__LOGS", &streams)
            .env("TRIBUTARY__LOG_EXPORTER__LOGS_STATE_DIR", dir.path().join("state"))
            .env("TRIBUTARY__LOG_EXPORTER__POLL_INTERVAL_MS", "100")
            .env("RUST_LOG", "info,buoyant_kernel=warn,deltalake=warn,deltalake_core=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };

    // The writer: two log files, numbered lines, rotated as logrotate would (each rotation done
    // between two writes: logrotate's own copy-then-truncate window is not modelled). Bounded:
    // LINES lines in about 20 s.
    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (logs, written, done) = (logs.clone(), written.clone(), done.clone());
        std::thread::spawn(move || {
            let open = |n: &str| std::fs::OpenOptions::new().create(true).append(true).open(logs.join(n)).unwrap();
            let (mut app, mut web) = (open("app.log"), open("web.log"));
            for seq in 0..LINES {
                let (f, name) = if seq % 3 == 0 { (&mut web, "web") } else { (&mut app, "app") };
                // Lines of varied length, some with non-ASCII text and a tab.
                writeln!(f, "{name} {seq:08} ts={} msg=\"café\tok\" {}", seq * 7, "x".repeat((seq % 97) as usize))
                    .unwrap();
                match seq {
                    6_000 | 18_000 => {
                        // rename + create
                        std::fs::rename(logs.join("app.log"), logs.join(format!("app.log.{seq}"))).unwrap();
                        app = open("app.log");
                    }
                    12_000 => {
                        // copytruncate: the writer keeps its (append-mode) handle
                        std::fs::copy(logs.join("app.log"), logs.join("app.log.copy")).unwrap();
                        std::fs::OpenOptions::new().write(true).truncate(true).open(logs.join("app.log")).unwrap();
                    }
                    _ => {}
                }
                written.store(seq + 1, Ordering::SeqCst);
                if seq % 120 == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut exp = Guard(start());
    let t0 = Instant::now();
    let mut kills = 0;
    let mut outage = false;
    while !done.load(Ordering::SeqCst) {
        let t = t0.elapsed().as_secs_f64();
        if kills == 0 && t > 4.0 {
            sigkill(&mut exp.0);
            kills += 1;
            exp = Guard(start());
        }
        if kills == 1 && t > 9.5 {
            // The broker is frozen first: the round the exporter sends meanwhile waits in the
            // broker's socket, and is applied only after the exporter was SIGKILLed and its
            // successor started. The successor must not count the round before it lands.
            broker.freeze(true);
            tokio::time::sleep(Duration::from_millis(400)).await;
            sigkill(&mut exp.0);
            kills += 1;
            exp = Guard(start());
            tokio::time::sleep(Duration::from_millis(1000)).await;
            broker.freeze(false);
        }
        if !outage && t > 13.0 {
            outage = true;
            broker.kill();
            // Lines keep being written meanwhile. The exporter waits (nothing dropped), and a
            // SIGTERM during the outage stops it cleanly; a new one waits for the broker.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(exp.0.id() as i32, libc::SIGTERM);
            }
            let st = wait_with_deadline(&mut exp.0, 20).unwrap();
            assert!(st.success(), "SIGTERM during a broker outage: {st:?}\n{}", ours(&exporter_log));
            exp = Guard(start());
            tokio::time::sleep(Duration::from_millis(2500)).await;
            broker.restart().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.join().unwrap();
    assert_eq!(kills, 2);

    // Wait until every line arrived, then stop the exporter and read the topic to its end.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = in_topic(&brokers);
        if n >= LINES {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of {LINES} lines in Kafka\n{}", ours(&exporter_log));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(exp.0.id() as i32, libc::SIGTERM);
    }
    assert!(wait_with_deadline(&mut exp.0, 60).unwrap().success(), "the exporter did not stop cleanly");

    let records = read_topic(&broker.addr(), TOPIC, 2);
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_per_key: BTreeMap<String, u64> = BTreeMap::new();
    for (key, line, _, _) in &records {
        let mut parts = line.splitn(3, ' ');
        let name = parts.next().unwrap();
        let seq: u64 = parts.next().unwrap().parse().unwrap_or_else(|_| panic!("a whole line: {line:?}"));
        assert!(key.ends_with(&format!("{name}.log")), "{line:?} under key {key}");
        assert!(line.ends_with(&"x".repeat((seq % 97) as usize)) && line.contains("café\tok"), "{line:?}");
        *seen.entry(seq).or_default() += 1;
        if let Some(prev) = last_per_key.insert(key.clone(), seq) {
            assert!(seq > prev, "{key}: line {seq} after {prev}: out of order");
        }
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(s, n)| (*s, *n)).take(10).collect();
    let missing: Vec<_> = (0..LINES).filter(|s| !seen.contains_key(s)).take(10).collect();
    assert!(
        dups.is_empty() && missing.is_empty(),
        "duplicated {dups:?}, missing {missing:?} ({} records)\n{}",
        records.len(),
        ours(&exporter_log)
    );
    assert_eq!(records.len() as u64, LINES);
    let log = String::from_utf8_lossy(&std::fs::read(&exporter_log).unwrap()).into_owned();
    assert!(log.contains("rotated (renamed)") && log.contains("copy-truncated"), "both rotations were seen:\n{log}");
    assert!(log.contains("letting the broker settle"), "a restart with a round in flight waited for the broker");
    assert!(!log.contains("duplicates from an earlier process"), "no duplicates were seen:\n{}", ours(&exporter_log));
    let recovered = log.matches("already in Kafka: not sent again").count();
    assert!(
        recovered >= 2,
        "the crash and the failed round after an acknowledgement were recovered from Kafka ({recovered})"
    );
    eprintln!("{recovered} in-flight runs found in Kafka at restarts");
    eprintln!(
        "{} lines exactly once after 2 SIGKILLs, a 4 s broker outage with a SIGTERM in it, 2 renames and a copytruncate",
        records.len()
    );
}

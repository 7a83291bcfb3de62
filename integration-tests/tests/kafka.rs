//! Kafka → bronze against a real Kafka-protocol broker (tansu), started by the test: exactly once
//! in a consumer group, through rebalances, crashes at named points and a broker restart; the
//! group's committed offsets equal the table's txn versions; commit notices wake downstream.

use integration_tests::*;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tributary_events::truth::Truth;

const REGION: &str = "r1";
const PARTITIONS: i32 = 4;

struct Kafka {
    p: Pipeline,
    broker: Broker,
    truth: Truth,
    _dir: tempfile::TempDir,
}

fn setup(events_per_source: u64, files: u64, env: &[(&str, &str)]) -> Kafka {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).unwrap();
    let mut p = Pipeline::new(&[REGION])
        .with_env("TRIBUTARY__KAFKA__BROKERS", &broker.addr())
        .with_env("TRIBUTARY__KAFKA__GROUP_ID", "it-bronze")
        .with_env("TRIBUTARY__KAFKA__MAX_BATCH_WAIT_MS", "500");
    for (k, v) in env {
        p = p.with_env(k, v);
    }
    let truth = p
        .generate_with(
            &GenSpec { events_per_source, files_per_source: files, seed: 21 },
            &["--kafka", "--partitions", &PARTITIONS.to_string()],
        )
        .unwrap();
    Kafka { p, broker, truth, _dir: dir }
}

impl Kafka {
    /// The ingest command; its log goes to a file (a pipe nobody reads would block it).
    fn ingest(&self, extra: &[&str]) -> std::process::Command {
        let mut args = vec!["bronze-ingest", "--from", "kafka", "--region", REGION];
        args.extend_from_slice(extra);
        let mut c = self.p.command(&args);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        c.stdout(Stdio::null()).stderr(log);
        c
    }

    fn log_path(&self) -> std::path::PathBuf {
        self._dir.path().join("ingest.log")
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read(self.log_path()).unwrap_or_default(), 4000)
    }

    fn topics(&self) -> Vec<(String, i32)> {
        let cfg = self.config();
        cfg.bronze
            .sources
            .iter()
            .flat_map(|s| {
                let t = cfg.kafka.topic_for(s).replace("{region}", REGION);
                (0..PARTITIONS).map(move |p| (t.clone(), p))
            })
            .collect()
    }

    fn config(&self) -> tributary_core::Config {
        let mut c = self.p.config();
        c.kafka.brokers = self.broker.addr();
        c
    }

    fn expected_rows(&self) -> u64 {
        self.truth.regions[REGION].values().map(|s| s.bronze_rows()).sum()
    }

    async fn rows(&self) -> u64 {
        bronze_counts(&self.config(), REGION).await.map(|(r, _)| r.values().sum()).unwrap_or(0)
    }

    async fn wait_rows(&self, at_least: u64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let n = self.rows().await;
            if n >= at_least {
                return;
            }
            assert!(Instant::now() < deadline, "bronze reached only {n} of {at_least} rows within {secs}s");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Exact totals, no offset twice, and group offsets = txn versions + 1.
    async fn verify(&self) {
        let cfg = self.config();
        let (rows, q) = bronze_counts(&cfg, REGION).await.unwrap();
        for (source, t) in &self.truth.regions[REGION] {
            assert_eq!(rows[source], t.bronze_rows(), "bronze/{source} rows");
            assert_eq!(q.get(source).copied().unwrap_or(0), t.malformed, "bronze quarantine of {source}");
        }
        let unique = bronze_kafka_positions_unique(&cfg, REGION).await.unwrap();
        assert_eq!(unique, self.expected_rows());
        let topics = self.topics();
        let txns = kafka_txn_versions(&cfg, REGION, &topics).await.unwrap();
        let offsets = group_offsets(&cfg.kafka.brokers, "it-bronze", &topics).unwrap();
        let want: BTreeMap<(String, i32), i64> = txns.iter().map(|(k, v)| (k.clone(), v + 1)).collect();
        assert_eq!(offsets, want, "consumer-group offsets must equal the bronze txn versions + 1");
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    wait_with_deadline(child, 60).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_200k_events_exactly_once() {
    let k = setup(50_000, 20, &[("TRIBUTARY__KAFKA__MAX_BATCH_RECORDS", "20000")]);
    let total_lines: u64 = k.truth.regions[REGION].values().map(|s| s.lines).sum();
    assert!(total_lines >= 200_000, "{total_lines}");
    let started = Instant::now();
    let mut c = k.ingest(&["--trigger", "available-now"]).spawn().unwrap();
    let st = wait_with_deadline(&mut c, 1200).unwrap();
    assert!(st.success(), "ingest failed: {}", k.log_tail());
    eprintln!("kafka→bronze: {total_lines} messages in {:.1}s (debug build)", started.elapsed().as_secs_f64());
    k.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_join_and_leave_keeps_totals_exact() {
    let k = setup(6_000, 6, &[("TRIBUTARY__KAFKA__MAX_BATCH_RECORDS", "500")]);
    let mut a = k.ingest(&[]).spawn().unwrap();
    k.wait_rows(1, 120).await;
    let mut b = k.ingest(&[]).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let sa = sigterm(&mut a);
    assert!(sa.success(), "first member did not leave cleanly: {sa:?} {}", k.log_tail());
    k.wait_rows(k.expected_rows(), 300).await;
    // Let the last offset commit land, then stop the second member.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sb = sigterm(&mut b);
    assert!(sb.success(), "second member: {sb:?} {}", k.log_tail());
    k.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_kafka_fault_points_then_restart_is_exact() {
    for point in ["kafka.before_upload", "kafka.after_upload_before_commit", "kafka.after_commit_before_offset_commit"]
    {
        // Static membership: the restarted member takes its partitions back at once (tansu 0.6
        // does not evict a SIGKILLed dynamic member; see the README).
        let k = setup(
            2_000,
            4,
            &[("TRIBUTARY__KAFKA__MAX_BATCH_RECORDS", "300"), ("TRIBUTARY__KAFKA__INSTANCE_ID", "ingest-0")],
        );
        let mut c = k.ingest(&[]).env("TRIBUTARY_FAULT", format!("{point}:3")).spawn().unwrap();
        let st = wait_with_deadline(&mut c, 300).unwrap();
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{point}: expected SIGKILL, got {st:?}: {}", k.log_tail());
        let mut r = k.ingest(&["--trigger", "available-now"]).spawn().unwrap();
        let st = wait_with_deadline(&mut r, 300).unwrap_or_else(|e| panic!("{point}: restart: {e}\n{}", k.log_tail()));
        assert!(st.success(), "{point}: restart failed: {}", k.log_tail());
        k.verify().await;
    }
}

/// Issue #14 item 9: a batch that fails (here: an injected error before its upload) is read
/// again from the table's positions at once. Before, the seek back happened only when the next
/// message of the partition arrived, so the partitions whose whole backlog was in that batch
/// (quiet ones) were never read again and `--trigger available-now` never exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_of_quiet_partitions_is_read_again_at_once() {
    let k = setup(300, 1, &[]);
    let mut c = k
        .ingest(&["--trigger", "available-now"])
        .env("TRIBUTARY_FAULT", "kafka.before_upload:1:error")
        .spawn()
        .unwrap();
    let st = wait_with_deadline(&mut c, 120).unwrap_or_else(|e| panic!("{e}\n{}", k.log_tail()));
    assert!(st.success(), "ingest failed: {}", k.log_tail());
    assert!(k.log_tail().contains("injected failure at kafka.before_upload"), "the fault fired: {}", k.log_tail());
    k.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_recovers_by_itself() {
    let mut k = setup(6_000, 6, &[("TRIBUTARY__KAFKA__MAX_BATCH_RECORDS", "500")]);
    let mut c = k.ingest(&[]).spawn().unwrap();
    k.wait_rows(1, 120).await;
    k.broker.restart().unwrap();
    k.wait_rows(k.expected_rows(), 300).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = sigterm(&mut c);
    assert!(st.success(), "{st:?}: {}", k.log_tail());
    k.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_notices_wake_silver_instead_of_its_poll() {
    // Silver polls only every 10 minutes here: it can only finish in time if notices wake it.
    // Small bronze batches: many commits, many notices.
    let k = setup(
        1_000,
        2,
        &[("TRIBUTARY__SERVER__POLL_INTERVAL_MS", "600000"), ("TRIBUTARY__KAFKA__MAX_BATCH_RECORDS", "200")],
    );
    let grpc = free_port();
    let silver_log = k._dir.path().join("silver.log");
    let mut silver =
        k.p.command(&["silver-transform", "--region", REGION, "--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .env("RUST_LOG", "warn,tributary_kafka=info,tributary_core=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&silver_log).unwrap())
            .spawn()
            .unwrap();
    // Bronze starts only once silver listens for notices (its first pass found nothing).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&silver_log).unwrap_or_default().contains("listening for commit notices") {
        assert!(
            Instant::now() < deadline,
            "silver never listened: {}",
            std::fs::read_to_string(&silver_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut bronze = k.ingest(&[]).spawn().unwrap();
    let want: u64 = k.truth.regions[REGION].values().map(|s| s.unique_valid).sum();
    let cfg = k.config();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut n = 0;
        for s in &cfg.bronze.sources {
            if let Ok(Some(t)) =
                tributary_delta::Table::open_existing("s", &silver_transform::table_location(&cfg, REGION, s)).await
            {
                n += t.stats(None).unwrap().row_count as u64;
            }
        }
        if n == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "silver has {n} of {want} rows: notices did not wake it\nsilver: {}\nbronze: {}",
            tail(&std::fs::read(&silver_log).unwrap_or_default(), 3000),
            k.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = std::process::Command::new(bin())
        .args(["status", "--addr", &format!("http://127.0.0.1:{grpc}"), "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let wakeups: u64 = v["stages"][0]["counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "notice_wakeups")
        .map(|c| c["value"].as_u64().unwrap())
        .sum();
    assert!(wakeups > 0, "{v}");
    assert!(sigterm(&mut bronze).success());
    assert!(sigterm(&mut silver).success());
}

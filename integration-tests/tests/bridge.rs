//! Issue #11: kafka2prom members in one consumer group, scraped by a real Prometheus (Debian's
//! package, started here on loopback) while members join and leave under load. Afterwards every
//! raw sample Prometheus stored is checked: no series ever went backwards, no series was exposed
//! by two members at once, and the last value of every series is the last one produced.

use integration_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOPIC: &str = "tributary.metrics";
const INSTANCES: usize = 8;

struct Member {
    child: Child,
    port: u16,
}

fn member(p: &Pipeline, broker: &str, name: &str, log: &std::path::Path, port: u16) -> Member {
    let admin = free_port();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log.join(format!("{name}.log"))).unwrap();
    let child = p
        .command(&[
            "kafka2prom",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .env("TRIBUTARY__KAFKA__BROKERS", broker)
        .env("TRIBUTARY__KAFKA2PROM__COMMIT_INTERVAL_MS", "200")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Member { child, port }
}

fn dump(instance: &str, seq: u64, ts_ms: i64) -> String {
    let text = format!(
        "# TYPE bridge_test_seq counter\nbridge_test_seq_total{{job=\"it\"}} {seq}\n# TYPE bridge_test_latency_seconds histogram\nbridge_test_latency_seconds_bucket{{le=\"0.1\"}} {seq}\nbridge_test_latency_seconds_bucket{{le=\"+Inf\"}} {}\nbridge_test_latency_seconds_sum {}.5\nbridge_test_latency_seconds_count {}\n# EOF\n",
        seq * 2,
        seq,
        seq * 2
    );
    tributary_core::metrics_dump::render(instance, ts_ms, &text)
}

fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = wait_with_deadline(child, 60).unwrap();
    assert!(st.success(), "member did not leave cleanly: {st:?}");
}

/// A broker on loopback with the dumps topic (4 partitions), a pipeline for the commands.
async fn setup() -> (tempfile::TempDir, Broker, Pipeline, tributary_core::config::KafkaConfig) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).unwrap();
    let kcfg = tributary_core::config::KafkaConfig { brokers: broker.addr(), ..Default::default() };
    tributary_kafka::ensure_topics(&kcfg, &[(TOPIC.to_string(), 4)]).await.unwrap();
    (dir, broker, Pipeline::new(&["r1"]), kcfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka2prom_members_never_regress_or_double_expose_a_series() {
    let (dir, broker, p, kcfg) = setup().await;

    let mut a = member(&p, &broker.addr(), "a", dir.path(), free_port());
    let mut b = member(&p, &broker.addr(), "b", dir.path(), free_port());

    // Prometheus scraping the members every second; our `instance` label is kept (honor_labels),
    // the member is a target label.
    let prom_port = free_port();
    // c joins later, on a port Prometheus scrapes from the start (down until then).
    let c_member_port = free_port();
    let config = |ports: &[(u16, &str)]| {
        let targets: String = ports
            .iter()
            .map(|(port, name)| {
                format!("      - targets: ['127.0.0.1:{port}']\n        labels: {{member: '{name}'}}\n")
            })
            .collect();
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: kafka2prom\n    honor_labels: true\n    static_configs:\n{targets}"
        )
    };
    std::fs::write(dir.path().join("prometheus.yml"), config(&[(a.port, "a"), (b.port, "b"), (c_member_port, "c")]))
        .unwrap();
    let prom_log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prom = Command::new(prometheus_bin())
        .args([
            &format!("--config.file={}", dir.path().join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ])
        .stdout(Stdio::null())
        .stderr(prom_log)
        .spawn()
        .unwrap();

    // Producer: INSTANCES instances dump every 250 ms for 24 s (bounded: 96 dumps each), keyed
    // by instance so every value of a series lands in one partition.
    let producer: FutureProducer =
        tributary_kafka::client_config(&kcfg).unwrap().set("acks", "1").set("linger.ms", "5").create().unwrap();
    let started = Instant::now();
    let rounds = 96u64;
    let mut c: Option<Member> = None;
    let mut a_left = false;
    for seq in 1..=rounds {
        let now = tributary_core::now_ms();
        for i in 0..INSTANCES {
            let inst = format!("pod-{i}");
            let body = dump(&inst, seq, now);
            producer.send(FutureRecord::to(TOPIC).key(&inst).payload(&body), Duration::from_secs(10)).await.unwrap();
        }
        let t = started.elapsed();
        if c.is_none() && t > Duration::from_secs(8) {
            // A third member joins under load (on the port Prometheus already scrapes).
            c = Some(member(&p, &broker.addr(), "c", dir.path(), c_member_port));
        }
        if !a_left && t > Duration::from_secs(16) {
            stop(&mut a.child); // a member leaves under load
            a_left = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the last dumps be exposed and scraped.
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Every raw sample Prometheus stored for the counter, per series and member.
    let window = started.elapsed().as_secs() + 30;
    let q = url_encode(&format!("bridge_test_seq_total[{window}s]"));
    let (code, body) = http_get(prom_port, &format!("/api/v1/query?query={q}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut per_series: BTreeMap<String, Vec<(f64, String, f64)>> = BTreeMap::new();
    for r in v["data"]["result"].as_array().unwrap() {
        let inst = r["metric"]["instance"].as_str().unwrap().to_string();
        let member = r["metric"]["member"].as_str().unwrap().to_string();
        for pt in r["values"].as_array().unwrap() {
            let ts = pt[0].as_f64().unwrap();
            let val: f64 = pt[1].as_str().unwrap().parse().unwrap();
            per_series.entry(inst.clone()).or_default().push((ts, member.clone(), val));
        }
    }
    assert_eq!(per_series.len(), INSTANCES, "every instance's series was exposed: {:?}", per_series.keys());
    let mut handovers = 0;
    for (inst, mut pts) in per_series {
        pts.sort_by(|x, y| x.0.total_cmp(&y.0));
        for w in pts.windows(2) {
            assert!(w[1].2 >= w[0].2, "{inst}: went backwards {:?} -> {:?}", w[0], w[1]);
        }
        // Ownership periods never overlap: with both members scraped every second, a series
        // exposed by two members at once would alternate between them scrape after scrape. The
        // join and the leave can move it at most a few times.
        let mut owners: Vec<&str> = Vec::new();
        for (_, m, _) in &pts {
            if owners.last() != Some(&m.as_str()) {
                owners.push(m.as_str());
            }
        }
        handovers += owners.len() - 1;
        let last = pts.last().unwrap();
        assert_eq!(last.2, rounds as f64, "{inst}: the last dump's value is exposed at the end ({owners:?})");
        assert!(owners.len() <= 4, "{inst}: exposed by alternating members {owners:?}");
        eprintln!("{inst}: {} raw samples, owners {owners:?}", pts.len());
    }
    assert!(handovers > 0, "the join and the leave moved at least one partition");

    if let Some(mut c) = c {
        stop(&mut c.child);
    }
    stop(&mut b.child);
    let _ = prom.kill();
    let _ = prom.wait();
}

/// The whole bridge: a running service writes metric dumps, the log-exporter ships them to the
/// broker keyed by instance, kafka2prom exposes the service's own series. A restarted exporter
/// neither resends nor skips a dump (its state file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_metric_dumps_reach_kafka2prom_through_the_log_exporter() {
    let (dir, broker, p, kcfg) = setup().await;
    p.generate(&GenSpec { events_per_source: 50, files_per_source: 1, seed: 5 }).unwrap();
    let dumps = dir.path().join("dumps");
    let log = |n: &str| std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join(n)).unwrap();
    let mut service = p
        .command(&["bronze-ingest", "--region", "r1"])
        .env("TRIBUTARY__METRICS__DUMP_DIR", &dumps)
        .env("TRIBUTARY__METRICS__DUMP_INTERVAL_SECS", "1")
        .env("TRIBUTARY__METRICS__INSTANCE", "bronze-0")
        .stdout(Stdio::null())
        .stderr(log("bronze.log"))
        .spawn()
        .unwrap();
    let exporter = || {
        p.command(&["log-exporter", "--dumps", dumps.to_str().unwrap()])
            .env("TRIBUTARY__KAFKA__BROKERS", broker.addr())
            .env("TRIBUTARY__LOG_EXPORTER__POLL_INTERVAL_MS", "200")
            .stdout(Stdio::null())
            .stderr(log("exporter.log"))
            .spawn()
            .unwrap()
    };
    let mut exp = exporter();
    let mut k2p = member(&p, &broker.addr(), "k2p", dir.path(), free_port());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, body) = http_get(k2p.port, "/metrics").unwrap_or_default();
        if body.lines().any(|l| l.starts_with("tributary_rows_total{") && l.contains("instance=\"bronze-0\"")) {
            assert!(body.contains("# TYPE tributary_rows counter"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service's rows counter never reached kafka2prom:\n{body}\n{}",
            tail(&std::fs::read(dir.path().join("exporter.log")).unwrap_or_default(), 2000)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The service stops (its last dump is written at shutdown); the exporter ships it.
    stop(&mut service);
    let last = std::fs::read(dumps.join("bronze-0.prom")).unwrap();
    let (h, _) = tributary_core::metrics_dump::split(&last).unwrap();
    let state_path = dumps.join(".log-exporter.state.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_exporter_state(&state_path).get("bronze-0.prom") != Some(&h.timestamp_ms) {
        assert!(Instant::now() < deadline, "the last dump was not shipped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(&mut exp);
    let count = |g: &str| {
        let k = kcfg.clone();
        let g = g.to_string();
        async move { tributary_kafka::count_to_end(&k, &[TOPIC.to_string()], &g, Duration::from_secs(30)).await.unwrap().0 }
    };
    let before = count("count-1").await;
    let mut again = exporter();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut again);
    assert_eq!(count("count-2").await, before, "a restarted exporter resent nothing");
    stop(&mut k2p.child);
}

fn log_exporter_state(path: &std::path::Path) -> BTreeMap<String, i64> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

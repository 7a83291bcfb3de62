//! Backfill a landing-time range of files into bronze, exactly once beside the live flow.

use integration_tests::*;

use std::time::{Duration, SystemTime};

fn set_mtime(p: &std::path::Path, rfc3339: &str) {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap();
    let st = SystemTime::UNIX_EPOCH + Duration::from_millis(t.timestamp_millis() as u64);
    std::fs::File::options().write(true).open(p).unwrap().set_modified(st).unwrap();
}

async fn bronze_rows(p: &Pipeline, source: &str) -> usize {
    read(&p.data.join(format!("regions/r1/bronze/{source}")).display().to_string())
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_ingests_a_landing_time_range_once_and_the_layers_become_exact() {
    let p = Pipeline::new(&["r1"]);
    let truth = p.generate(&GenSpec { events_per_source: 300, files_per_source: 3, seed: 11 }).unwrap();
    let cfg = p.config();
    // Two billing files landed in an archive instead of the landing zone; the archive also holds
    // a copy of a file the pipeline ingests (a replayed file), and one outside the time range.
    let landing = p.data.join("regions/r1/landing/billing");
    let archive = p.data.join("archive");
    std::fs::create_dir_all(archive.join("billing")).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&landing).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    for n in &names[1..] {
        std::fs::rename(landing.join(n), archive.join("billing").join(n)).unwrap();
        set_mtime(&archive.join("billing").join(n), "2026-11-20T10:00:00Z");
    }
    std::fs::copy(landing.join(&names[0]), archive.join("billing").join(&names[0])).unwrap();
    set_mtime(&archive.join("billing").join(&names[0]), "2026-11-20T23:59:59Z");
    std::fs::copy(archive.join("billing").join(&names[1]), archive.join("billing/zz-outside.ndjson")).unwrap();
    set_mtime(&archive.join("billing/zz-outside.ndjson"), "2026-11-21T00:00:00Z");

    p.run_to_completion(&[]).unwrap();
    let err = verify_layers(&cfg, &truth, &p.data.join("truth")).await.unwrap_err();
    assert!(err.to_string().contains("billing"), "billing should be short before the backfill: {err}");
    let before = bronze_rows(&p, "billing").await;

    let backfill = |id: &str, from: &str| {
        let mut c = p.command(&["backfill", "--region", "r1", "--source", "billing", "--from", from]);
        c.args(["--to", "2026-11-21T00:00:00Z", "--landing", archive.to_str().unwrap(), "--id", id, "--json"]);
        c.env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1");
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = backfill("fix-1", "2026-11-20T00:00:00Z");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let prog: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(prog["files_total"], 3, "the range holds 3 archive files (not the one at its end): {prog}");
    assert_eq!(prog["files_done"], 3);
    // The progress bar: a line per batch when stderr is not a terminal.
    assert!(err.contains("backfill fix-1 [") && err.contains("] 1/3 files") && err.contains("] 3/3 files"), "{err}");
    let added = prog["rows"].as_u64().unwrap() as usize;
    assert_eq!(bronze_rows(&p, "billing").await, before + added, "the backfill appended its rows");

    // Downstream catches up: silver drops the replayed file's events by event_id, and every layer
    // equals the ground truth.
    p.run_to_completion(&[]).unwrap();
    verify_layers(&cfg, &truth, &p.data.join("truth")).await.unwrap();

    // The same backfill again: nothing left to do; bronze unchanged.
    let (code, out, err) = backfill("fix-1", "2026-11-20T00:00:00Z");
    assert_eq!(code, Some(0), "{err}");
    let again: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((again["files_done"].as_u64(), again["rows"].as_u64()), (Some(3), Some(0)), "{again}");
    assert_eq!(bronze_rows(&p, "billing").await, before + added);
    // Its id with another range is refused; a range with nothing in it does nothing.
    let (code, _, err) = backfill("fix-1", "2026-11-19T00:00:00Z");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("started with other arguments"), "{err}");
    let (code, out, err) = backfill("empty", "2026-11-20T23:59:59.500Z");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"files_total\":0"), "{out}");

    // Every run is in the audit table.
    let audit = read(&p.data.join("_tributary/audit").display().to_string()).await.unwrap();
    let mut outcomes = Vec::new();
    for b in &audit {
        use deltalake::arrow::array::AsArray;
        let (m, o) = (
            b.column_by_name("method").unwrap().as_string::<i32>(),
            b.column_by_name("outcome").unwrap().as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            if m.value(i) == "Backfill" {
                outcomes.push(o.value(i).to_string());
            }
        }
    }
    outcomes.sort();
    assert_eq!(outcomes, ["error", "ok", "ok", "ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_backfill_reads_the_offsets_of_a_timestamp_range_once() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker")).unwrap();
    let p = Pipeline::new(&["r1"]).with_env("TRIBUTARY__KAFKA__BROKERS", &broker.addr());
    let cfg = tributary_core::Config {
        kafka: tributary_core::config::KafkaConfig { brokers: broker.addr(), ..Default::default() },
        ..p.config()
    };
    let topic = cfg.kafka.topic_for("billing").replace("{region}", "r1");
    tributary_kafka::ensure_topics(&cfg.kafka, &[(topic.clone(), 2)]).await.unwrap();
    let producer: FutureProducer = tributary_kafka::client_config(&cfg.kafka).unwrap().create().unwrap();
    let ms = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
    let event = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":"2025-11-01T01:00:00Z","region":"r1","workspace_id":"w1","customer_id":"c1","sku":"STD","dbu":1}}"#
        )
    };
    let mut sends = Vec::new();
    for (hour, ts) in [(9, "2026-11-20T09:00:00Z"), (10, "2026-11-20T10:00:00Z"), (11, "2026-11-20T11:00:00Z")] {
        for i in 0..10 {
            let id = format!("h{hour}-{i}");
            // One event of the range spread over lines (pretty-printed JSON).
            let payload = if hour == 10 && i == 3 {
                serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&event(&id)).unwrap()).unwrap()
            } else {
                event(&id)
            };
            sends.push((id, payload, i % 2, ms(ts) + i as i64));
        }
        if hour == 10 {
            // Not JSON, with a line break: bronze quarantines it (with its reason), never drops it.
            sends.push(("junk".into(), "not json\nat all".into(), 0, ms("2026-11-20T10:00:30Z")));
        }
    }
    for (id, payload, part, ts) in &sends {
        producer
            .send(
                FutureRecord::to(&topic).key(id).payload(payload).partition(*part).timestamp(*ts),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let run = |from: &str, to: &str| {
        let out = p
            .command(&["backfill", "--region", "r1", "--source", "billing", "--kafka", "--from", from, "--to", to])
            .args(["--id", "k-1", "--json"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run("2026-11-20T09:30:00Z", "2026-11-20T10:30:00Z");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(err.contains("11 messages of 2 partitions exported from Kafka"), "{err}");
    let prog: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((prog["rows"].as_u64(), prog["quarantined"].as_u64()), (Some(10), Some(1)), "{prog}");
    // Exactly the 10:00 events, their lineage naming topic, partition and offsets.
    let rows = read(&p.data.join("regions/r1/bronze/billing").display().to_string()).await.unwrap();
    let mut ids = Vec::new();
    for b in &rows {
        use deltalake::arrow::array::AsArray;
        let (e, f) = (
            b.column_by_name("event_id").unwrap().as_string::<i32>(),
            b.column_by_name("_source_file").unwrap().as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            ids.push(e.value(i).to_string());
            assert!(f.value(i).starts_with(&format!("billing/kafka-{topic}-p0000")), "{}", f.value(i));
        }
    }
    ids.sort();
    let want: Vec<String> = {
        let mut w: Vec<String> = (0..10).map(|i| format!("h10-{i}")).collect();
        w.sort();
        w
    };
    assert_eq!(ids, want);
    // Resumed or repeated: nothing read again, nothing appended.
    let (code, out, err) = run("2026-11-20T09:30:00Z", "2026-11-20T10:30:00Z");
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("exported from Kafka"), "a frozen plan is not exported again: {err}");
    let again: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(again["rows"].as_u64(), Some(0));
}

//! Tables and landing zones on a real S3 API (moto's server on loopback): every layer exact, the
//! same tables as on local files, readable by the Python reader; concurrent federators committing
//! to central tables on S3 by conditional put; a store that ignores conditional writes refused.

use integration_tests::*;
use std::io::{Read, Write};

const SECRET: &str = "not-a-secret-0";

/// A pipeline whose tables live under `bucket/data` and landing zones under `bucket/landing/<region>`,
/// fed the landing files `local` generated.
async fn on_s3(local: &Pipeline, bucket: &str, endpoint: &str) -> Pipeline {
    let s3 = s3();
    for r in &local.regions {
        let n = s3
            .upload_dir(&local.data.join(format!("regions/{r}/landing")), &format!("{bucket}/landing/{r}"))
            .await
            .unwrap();
        assert!(n > 0, "no landing files for {r}");
    }
    let regions: Vec<&str> = local.regions.iter().map(String::as_str).collect();
    let mut p = Pipeline::new(&regions).with_env("TRIBUTARY__LANDING_ROOT", &format!("{bucket}/landing/{{region}}"));
    for (k, v) in s3.env(endpoint) {
        p = p.with_env(&k, &v);
    }
    p.root = Some(format!("{bucket}/data"));
    p
}

fn aws_env() -> Vec<(String, String)> {
    let s3 = s3();
    vec![
        ("AWS_ENDPOINT_URL".into(), s3.endpoint.clone()),
        ("AWS_ALLOW_HTTP".into(), "true".into()),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_landing_zones_on_s3_are_exact_equal_to_local_files_and_read_by_python() {
    let s3 = s3();
    let bucket = s3.bucket("it-layers").unwrap();
    let local = Pipeline::new(&["r1", "r2"]);
    let truth = local.generate(&GenSpec { events_per_source: 250, files_per_source: 4, seed: 3 }).unwrap();
    let remote = on_s3(&local, &bucket, &s3.endpoint).await;
    let out = remote.run_to_completion(&[]).unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!logs.contains(SECRET), "the S3 secret appeared in the output");
    assert!(!remote.data.exists(), "a pipeline on S3 wrote local files under {}", remote.data.display());
    verify_against_truth(&remote.config(), &truth, local.truth_path().parent().unwrap()).await.unwrap();

    // The same landing files on local disk give the same logical tables.
    local.run_to_completion(&[]).unwrap();
    let (fl, fr) = (local.fingerprints().unwrap(), remote.fingerprints().unwrap());
    assert!(fr.values().all(|v| v != "absent"), "{fr:?}");
    assert_eq!(fl, fr, "tables on S3 differ from the same pipeline on local files");

    // Ingested once: a second run over the same S3 landing zone changes nothing.
    remote.run_to_completion(&[]).unwrap();
    assert_eq!(fr, remote.fingerprints().unwrap());

    // An independent reader (Python deltalake, its own S3 client) agrees with the truth.
    python_reader_agrees(&format!("{bucket}/data"), &local.truth_path(), &aws_env()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_federators_on_s3_lose_nothing() {
    let s3 = s3();
    let bucket = s3.bucket("it-federators").unwrap();
    let local = Pipeline::new(&["r1", "r2"]);
    let truth = local.generate(&GenSpec { events_per_source: 150, files_per_source: 6, seed: 5 }).unwrap();
    let p = on_s3(&local, &bucket, &s3.endpoint)
        .await
        .with_env("TRIBUTARY__BRONZE__MAX_FILES_PER_BATCH", "1")
        .with_env("TRIBUTARY__FEDERATOR__MAX_VERSIONS_PER_BATCH", "1");
    p.run_to_completion(&["--stages", "bronze,silver,gold"]).unwrap();
    // Both regions' federators at once, one commit per input version, racing for each central
    // version through PUT If-None-Match on the same _delta_log keys.
    p.federators_at_once(&["r1", "r2"]).unwrap();
    verify_against_truth(&p.config(), &truth, local.truth_path().parent().unwrap()).await.unwrap();
    let central = tributary_delta::Table::open_existing("central/events", &format!("{bucket}/data/central/events"))
        .await
        .unwrap()
        .unwrap();
    let version = central.version();
    assert!(version > 20, "expected many interleaved central commits, saw version {version}");
}

/// A loopback proxy in front of the S3 server that drops `If-None-Match` from every request: a
/// store without conditional writes (the fault a plain proxy or an old S3-compatible store injects).
fn proxy_without_conditional_writes(upstream: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else { continue };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // Same length, so Content-Length and framing stay valid.
                    let mut chunk = buf[..n].to_vec();
                    for needle in [&b"if-none-match:"[..], &b"If-None-Match:"[..]] {
                        while let Some(i) = chunk.windows(needle.len()).position(|w| w == needle) {
                            chunk[i..i + needle.len()].copy_from_slice(b"x-not-checked:");
                        }
                    }
                    if server.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_writes_is_refused_before_any_commit() {
    let s3 = s3();
    let bucket = s3.bucket("it-no-conditional").unwrap();
    let local = Pipeline::new(&["r1"]);
    local.generate(&GenSpec { events_per_source: 20, files_per_source: 1, seed: 1 }).unwrap();
    let endpoint = format!("http://127.0.0.1:{}", proxy_without_conditional_writes(s3.port));
    let p = on_s3(&local, &bucket, &endpoint).await;
    let out = p
        .command(&["bronze-ingest", "--region", "r1", "--trigger", "available-now"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bronze ran on a store without conditional writes");
    assert!(err.contains("If-None-Match") && err.contains("concurrent Delta"), "{}", tail(&out.stderr, 3000));
    assert!(!err.contains(SECRET) && !String::from_utf8_lossy(&out.stdout).contains(SECRET), "secret logged");
    // Nothing was committed: no table exists in the bucket.
    let t =
        tributary_delta::Table::open_existing("bronze/audit", &format!("{bucket}/data/regions/r1/bronze/audit")).await;
    assert!(matches!(t, Ok(None)), "a table was created on the unsafe store");
}

/// A small partitioned table written by the test: `rows` rows per call, one file per region.
async fn append(t: &mut tributary_delta::Table, from: i64, rows: i64) {
    use deltalake::arrow::array::{Int64Array, StringArray};
    let ids: Vec<i64> = (from..from + rows).collect();
    let regions: Vec<&str> = ids.iter().map(|i| if i % 2 == 0 { "eu" } else { "us" }).collect();
    let batch = deltalake::arrow::array::RecordBatch::try_new(
        t.schema(),
        vec![std::sync::Arc::new(Int64Array::from(ids.clone())), std::sync::Arc::new(StringArray::from(regions))],
    )
    .unwrap();
    let adds = t.write_files(&[batch]).await.unwrap();
    let actions = adds.into_iter().map(tributary_delta::Action::Add).collect();
    t.commit(actions, vec![], Default::default(), 10).await.unwrap();
}

fn fingerprint_of(p: &Pipeline, table: &str) -> String {
    let out = p.command(&["fingerprint", "--table", table]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    line.trim().rsplit('\t').next().unwrap().to_string()
}

/// `clone` through the binary; returns its report line.
fn clone(p: &Pipeline, from: &str, to: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = p.command(&["clone", from, to]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn number_before(s: &str, word: &str) -> usize {
    let i = s.find(word).unwrap_or_else(|| panic!("{word:?} not in {s}"));
    s[..i].trim_end().rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_clone_across_stores_is_incremental_propagates_removals_and_resumes_after_a_crash() {
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let s3 = s3();
    let bucket = s3.bucket("it-clone").unwrap();
    let mut p = Pipeline::new(&["r1"]);
    for (k, v) in s3.env(&s3.endpoint) {
        p = p.with_env(&k, &v);
    }
    let src_loc = p.data.join("src").display().to_string();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("region", DataType::Utf8, true),
    ]));
    let mut src = tributary_delta::Table::open_or_create("src", &src_loc, schema, &["region"]).await.unwrap();
    for i in 0..3 {
        append(&mut src, i * 100, 100).await;
    }
    let dst = format!("{bucket}/clone");

    // First run, killed after its 2nd file copy: nothing committed; the next run resumes.
    let out = clone(&p, &src_loc, &dst, &[("TRIBUTARY_FAULT", "clone.after_file_copy:2")]);
    assert!(!out.status.success(), "the fault did not fire: {}", String::from_utf8_lossy(&out.stdout));
    let t = tributary_delta::Table::open_existing("dst", &dst).await.unwrap();
    assert!(t.is_none_or(|t| t.files().unwrap().is_empty()), "a killed clone committed files");
    let out = clone(&p, &src_loc, &dst, &[]);
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{:?} {line}{}", out.status, String::from_utf8_lossy(&out.stderr));
    let (copied, resumed) = (number_before(&line, "files copied"), number_before(&line, "resumed"));
    assert!(resumed >= 2 && copied + resumed == 6, "{line}");
    assert_eq!(fingerprint_of(&p, &src_loc), fingerprint_of(&p, &dst));
    assert!(fingerprint_of(&p, &dst).starts_with("300:"));

    // Again at the same source version: nothing to do.
    let line = String::from_utf8_lossy(&clone(&p, &src_loc, &dst, &[]).stdout).to_string();
    assert!(line.contains("up to date"), "{line}");

    // Two more commits: only their files are copied.
    append(&mut src, 300, 100).await;
    append(&mut src, 400, 100).await;
    let line = String::from_utf8_lossy(&clone(&p, &src_loc, &dst, &[]).stdout).to_string();
    assert_eq!((number_before(&line, "files copied"), number_before(&line, "resumed")), (4, 0), "{line}");
    assert_eq!(fingerprint_of(&p, &src_loc), fingerprint_of(&p, &dst));

    // Compaction removes the 10 small files: the clone removes them too and adds the 2 new ones.
    let w = tributary_delta::Writer { stage: "test".into(), region: String::new(), threads: 1, attempts: 10 };
    let c = src.compact(2, &w).await.unwrap();
    assert_eq!(c.files_removed, 10);
    let line = String::from_utf8_lossy(&clone(&p, &src_loc, &dst, &[]).stdout).to_string();
    assert_eq!((number_before(&line, "files copied"), number_before(&line, "removed;")), (2, 10), "{line}");
    let cloned = tributary_delta::Table::open_existing("dst", &dst).await.unwrap().unwrap();
    assert_eq!(cloned.files().unwrap().len(), 2);
    assert_eq!(fingerprint_of(&p, &src_loc), fingerprint_of(&p, &dst));
    assert_eq!(cloned.partition_columns(), ["region".to_string()]);

    // A location holding another table is refused.
    let out = clone(&p, &p.data.join("src").display().to_string(), &src_loc, &[]);
    assert!(!out.status.success());
    let out = clone(&p, &dst, &src_loc, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a clone"), "{}", String::from_utf8_lossy(&out.stderr));

    // Back from S3 to local disk, and the Python reader (its own S3 client) reads the clone.
    let back = p.data.join("back").display().to_string();
    assert!(clone(&p, &dst, &back, &[]).status.success());
    assert_eq!(fingerprint_of(&p, &back), fingerprint_of(&p, &src_loc));
    let py = std::process::Command::new(python())
        // os._exit: the reader's S3 runtime threads can abort the interpreter's normal shutdown
        // ("terminate called without an active exception") after the answer is printed.
        .args([
            "-c",
            "import os, sys; from deltalake import DeltaTable; t = DeltaTable(sys.argv[1]).to_pyarrow_table(); \
                      print(t.num_rows, sum(t.column('id').to_pylist()), flush=True); os._exit(0)",
            &dst,
        ])
        .envs(aws_env())
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), format!("500 {}", (0..500).sum::<i64>()));
}

/// `tributary fork`: a table on local disk moved to S3 while a writer commits every ~25 ms and a
/// downstream reader follows it version by version — the first fork SIGKILLed right after its
/// freeze, a second one finishing it: no row lost or duplicated for either, the writer's position
/// carried over, the writer held back only while the table was frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_moves_a_live_table_to_s3_while_a_writer_and_a_reader_go_on() {
    use deltalake::arrow::array::{Array, Int64Array};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use std::time::{Duration, Instant};
    use tributary_delta::{Commit, PositionMove, Table, Writer};
    const COMMITS: i64 = 120;
    const ROWS: i64 = 20;
    let s3 = s3();
    let bucket = s3.bucket("it-fork").unwrap();
    let mut p = Pipeline::new(&["r1"]);
    for (k, v) in s3.env(&s3.endpoint) {
        p = p.with_env(&k, &v);
    }
    let src = p.data.join("src").display().to_string();
    let dst = format!("{bucket}/forked");
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
    ]));
    Table::open_or_create("src", &src, schema.clone(), &[]).await.unwrap();

    // The writer commits at least COMMITS times and goes on until it has committed 10 times at
    // the new location (bounded); `last` tells the reader how many commits there are.
    let last = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writer = {
        let (src, schema, last) = (src.clone(), schema.clone(), last.clone());
        tokio::spawn(async move {
            let mut t = Table::open_existing("src", &src).await.unwrap().unwrap();
            let w = Writer { stage: "fork-test".into(), region: "r1".into(), threads: 1, attempts: 100 };
            let (mut lat, mut moved, started) = (Vec::new(), 0, Instant::now());
            let mut seq = 0;
            while seq < COMMITS || (moved < 10 && started.elapsed() < Duration::from_secs(150)) {
                seq += 1;
                let b = deltalake::arrow::array::RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        std::sync::Arc::new(Int64Array::from((0..ROWS).map(|i| seq * 1000 + i).collect::<Vec<_>>())),
                        std::sync::Arc::new(Int64Array::from(vec![seq; ROWS as usize])),
                    ],
                )
                .unwrap();
                let c = Instant::now();
                let moves = vec![PositionMove { app_id: "writer".into(), from: seq - 1, to: seq }];
                t.commit_batch(Commit::new(&[b], moves, Default::default(), 0), &w).await.unwrap();
                lat.push(c.elapsed().as_secs_f64() * 1000.0);
                if t.url.as_str().starts_with("s3://") {
                    moved += 1;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            last.store(seq, std::sync::atomic::Ordering::SeqCst);
            (lat, t.url.to_string(), seq)
        })
    };
    let reader = {
        let (src, last) = (src.clone(), last.clone());
        tokio::spawn(async move {
            let mut t = Table::open_existing("src", &src).await.unwrap().unwrap();
            let (mut pos, mut ids) = (0i64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(240);
            while Instant::now() < deadline {
                let n = last.load(std::sync::atomic::Ordering::SeqCst);
                if n > 0 && ids.len() >= (n * ROWS) as usize {
                    break;
                }
                let latest = t.latest_version().await.unwrap();
                if latest > pos {
                    for (_, b) in t.read_versions(pos, latest).await.unwrap() {
                        let c = b.column_by_name("id").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
                        ids.extend((0..c.len()).map(|i| c.value(i)));
                    }
                    pos = latest;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (ids, t.url.to_string())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The first fork is killed right after it froze the table (its writer now waits); the
    // second finishes it.
    let mut crashing = p.command(&["fork", &src, &dst]);
    crashing.env("TRIBUTARY_FAULT", "fork.after_freeze");
    let out = tokio::task::spawn_blocking(move || crashing.output().unwrap()).await.unwrap();
    assert!(!out.status.success(), "the fault point did not fire: {}", String::from_utf8_lossy(&out.stdout));
    let mut cmd = p.command(&["fork", &src, &dst]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted fork"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let (mut lat, writer_at, commits) = writer.await.unwrap();
    let (ids, reader_at) = reader.await.unwrap();
    assert!(writer_at.starts_with("s3://") && reader_at.starts_with("s3://"), "{writer_at} {reader_at}");

    // The reader saw every row once, across the move.
    let distinct: std::collections::HashSet<i64> = ids.iter().copied().collect();
    assert_eq!((ids.len(), distinct.len()), ((commits * ROWS) as usize, (commits * ROWS) as usize));
    // The table at its new home: every row once, the writer's position at its last commit.
    let mut t = Table::open_existing("dst", &dst).await.unwrap().unwrap();
    t.refresh().await.unwrap();
    let mut rows = Vec::new();
    for b in t.read_columns(&["id"]).await.unwrap() {
        let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
        rows.extend((0..c.len()).map(|i| c.value(i)));
    }
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), (commits * ROWS) as usize);
    assert_eq!(t.txn_version("writer").await.unwrap(), Some(commits));
    // The old location redirects new handles.
    let again = Table::open_existing("src", &src).await.unwrap().unwrap();
    assert!(again.url.as_str().starts_with("s3://"), "{}", again.url);
    lat.sort_by(f64::total_cmp);
    println!(
        "{} — writer commit latency while forking: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        report.trim(),
        lat[lat.len() / 2],
        lat[(lat.len() * 99) / 100],
        lat[lat.len() - 1]
    );
}

/// Retention on an `s3://` data root: every table found by listing the bucket (a pipeline's
/// layout: region tables, central, the event log and the audit table) loses its partitions older
/// than the retention in one commit each; the audit table is kept; a second pass is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_on_an_s3_data_root_drops_old_partitions_from_every_table_but_the_audit() {
    use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let s3 = s3();
    let root = format!("{}/data", s3.bucket("it-retention").unwrap());
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("event_date", DataType::Utf8, false),
    ]));
    let w = tributary_delta::Writer { stage: "test".into(), region: "r1".into(), threads: 1, attempts: 10 };
    let rels =
        ["regions/r1/silver/billing", "regions/r1/gold/billing_usage_daily", "central/events", "_tributary/audit"];
    for rel in rels {
        let loc = tributary_delta::store::join(&root, rel);
        let mut t = tributary_delta::Table::open_or_create(rel, &loc, schema.clone(), &["event_date"]).await.unwrap();
        for (x, d) in [(1, "2024-01-15"), (2, "2025-10-22"), (3, "2025-10-23"), (4, "2026-11-23")] {
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![std::sync::Arc::new(Int64Array::from(vec![x])), std::sync::Arc::new(StringArray::from(vec![d]))],
            )
            .unwrap();
            t.commit_batch(tributary_delta::Commit::new(&[b], vec![], Default::default(), -1), &w).await.unwrap();
        }
    }
    let mut found = tributary_delta::store::list_tables(&root).await.unwrap();
    found.sort();
    let mut want: Vec<String> = rels.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "tables found by listing the bucket");
    let cfg = tributary_core::Config { data_root: root.clone(), ..Default::default() };
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    let report = tributary_delta::retention::enforce(&cfg, 13, today).await.unwrap();
    assert_eq!(
        report,
        vec![
            ("central/events".to_string(), 2),
            ("regions/r1/gold/billing_usage_daily".to_string(), 2),
            ("regions/r1/silver/billing".to_string(), 2)
        ]
    );
    for rel in rels {
        let t = tributary_delta::Table::open_existing(rel, &tributary_delta::store::join(&root, rel))
            .await
            .unwrap()
            .unwrap();
        let mut xs: Vec<i64> = t
            .read_columns(&["x"])
            .await
            .unwrap()
            .iter()
            .flat_map(|b| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
            .collect();
        xs.sort();
        let expect = if rel == "_tributary/audit" { vec![1, 2, 3, 4] } else { vec![3, 4] };
        assert_eq!(xs, expect, "{rel}");
    }
    assert!(tributary_delta::retention::enforce(&cfg, 13, today).await.unwrap().is_empty());
}

/// Rows of the table at `loc` (total, with `customer_id` = `cust`).
async fn rows_of_customer(loc: &str, cust: &str) -> (usize, usize) {
    use deltalake::arrow::array::Array as _;
    let Some(t) = tributary_delta::Table::open_existing("t", loc).await.unwrap() else { return (0, 0) };
    let mut n = (0, 0);
    for b in t.read_columns(&["customer_id"]).await.unwrap() {
        let c = deltalake::arrow::compute::cast(b.column(0), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
        let c = c.as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
        n.0 += c.len();
        n.1 += (0..c.len()).filter(|i| c.is_valid(*i) && c.value(*i) == cust).count();
    }
    n
}

/// Forget on an `s3://` data root: tables found by listing the bucket, every row of the customer
/// deleted from the row tables, invoices kept under the tag, dead files holding the customer
/// deleted from the bucket, and the proof (every Parquet and log object in the bucket read back)
/// finds nothing. A second run of the same request is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_on_an_s3_data_root_erases_every_layer_and_proves_it() {
    let s3 = s3();
    let bucket = s3.bucket("it-forget").unwrap();
    let local = Pipeline::new(&["r1"]);
    local.generate(&GenSpec { events_per_source: 300, files_per_source: 2, seed: 9 }).unwrap();
    let remote = on_s3(&local, &bucket, &s3.endpoint).await;
    remote.run_to_completion(&[]).unwrap();
    let cfg = remote.config();
    let cust = "cust-007";
    let loc = |rel: &str| tributary_delta::store::join(&cfg.data_root, rel);
    let mut row_tables = vec!["central/events".to_string()];
    for s in &cfg.bronze.sources {
        row_tables.push(format!("regions/r1/bronze/{s}"));
        row_tables.push(format!("regions/r1/silver/{s}"));
    }
    let mut before = std::collections::BTreeMap::new();
    for t in &row_tables {
        before.insert(t.clone(), rows_of_customer(&loc(t), cust).await);
    }
    assert!(before["regions/r1/silver/billing"].1 > 0, "the customer has billing rows: {before:?}");
    let invoice = |loc: String| async move {
        let t = tributary_delta::Table::open_existing("b", &loc).await.unwrap().unwrap();
        let sums = gold_aggregate::billing_sums(&t.read_all().await.unwrap()).unwrap();
        let mut per_window: std::collections::BTreeMap<(String, i64), (i128, i64)> = Default::default();
        for ((_, sku, w), (d, n)) in sums {
            let e = per_window.entry((sku, w)).or_default();
            e.0 += d;
            e.1 += n;
        }
        per_window
    };
    let billing_before = invoice(loc("regions/r1/gold/billing_usage_hourly")).await;

    let o = tributary_delta::forget::forget(&cfg, cust, None, std::time::Duration::from_secs(30)).await.unwrap();
    eprintln!(
        "forget on S3: {} rows deleted, {} redacted, {} files deleted, proof over {} Parquet + {} log objects in {:.1}s",
        o.rows_deleted(),
        o.rows_redacted(),
        o.files_deleted,
        o.proof.parquet_files,
        o.proof.log_files,
        o.seconds
    );
    assert!(o.proof.hits.is_empty(), "{:?}", o.proof.hits);
    assert!(o.proof.parquet_files > 20 && o.proof.log_files > 20, "{:?}", o.proof);
    assert!(o.files_deleted > 0);
    for t in &row_tables {
        let (all, theirs) = before[t];
        assert_eq!(rows_of_customer(&loc(t), cust).await, (all - theirs, 0), "{t} after the erasure");
    }
    assert_eq!(invoice(loc("regions/r1/gold/billing_usage_hourly")).await, billing_before, "invoice totals changed");
    assert!(!remote.data.exists(), "forget on S3 wrote local files");
    // Repeating the request changes nothing and proves again.
    let again = tributary_delta::forget::forget(&cfg, cust, Some(&o.request_id), std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!((again.rows_deleted(), again.files_deleted), (0, 0));
    assert!(again.proof.hits.is_empty());
}

//! The exactly-once bookkeeping against real Delta tables on local disk.

use crate::{Commit, PositionMove, Table, Writer, schemas, txn};
use deltalake::arrow::array::{Int64Array, RecordBatch};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use std::collections::HashMap;
use std::sync::Arc;
use tributary_core::ErrorKind;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
}

fn batch(v: &[i64]) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(v.to_vec()))]).unwrap()
}

async fn rows(t: &mut Table) -> usize {
    t.refresh().await.unwrap();
    t.read_all().await.unwrap().iter().map(|b| b.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writer_cannot_commit_a_position_another_writer_moved() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut live = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    // The zombie loaded the table when the partition was at offset 9.
    let mut zombie = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    let adds = live.write_files(&[batch(&[1, 2, 3])]).await.unwrap();
    live.commit(adds.into_iter().map(crate::Action::Add).collect(), vec![txn("p/topic/0", 9)], HashMap::new(), 0)
        .await
        .unwrap();
    zombie.refresh().await.unwrap();
    assert_eq!(zombie.txn_version("p/topic/0").await.unwrap(), Some(9));
    // The partition moves to another member, which commits offsets 10..=20.
    let adds = live.write_files(&[batch(&[10, 20])]).await.unwrap();
    live.commit_contended(
        adds.into_iter().map(crate::Action::Add).collect(),
        &[PositionMove { app_id: "p/topic/0".into(), from: 9, to: 20 }],
        HashMap::new(),
        ("test", "r"),
        5,
        -1,
    )
    .await
    .unwrap();
    // The zombie still believes it owns offsets 10..=15 and tries to commit them on its stale
    // snapshot: Delta's conflict checker (same app_id) rejects it.
    let adds = zombie.write_files(&[batch(&[10, 15])]).await.unwrap();
    let err = zombie
        .commit(
            adds.clone().into_iter().map(crate::Action::Add).collect(),
            vec![txn("p/topic/0", 15)],
            HashMap::new(),
            3,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    // Through the contended path too: after a reload it sees the position moved and stops.
    let err = zombie
        .commit_contended(
            adds.into_iter().map(crate::Action::Add).collect(),
            &[PositionMove { app_id: "p/topic/0".into(), from: 9, to: 15 }],
            HashMap::new(),
            ("test", "r"),
            5,
            -1,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("moved to 20"), "{err}");
    assert_eq!(rows(&mut live).await, 5, "the zombie's rows must not be in the table");
    assert_eq!(live.txn_version("p/topic/0").await.unwrap(), Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_different_positions_both_land() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut a = Table::open_or_create("t", &loc, schemas::quarantine(), schemas::QUARANTINE_PARTITIONS).await.unwrap();
    let mut b = Table::open_or_create("t", &loc, schemas::quarantine(), schemas::QUARANTINE_PARTITIONS).await.unwrap();
    // Both start from the same snapshot; b commits second and must retry past a's version.
    a.commit(vec![], vec![txn("p/r1", 1)], HashMap::new(), 0).await.unwrap();
    let v = b
        .commit_contended(
            vec![],
            &[PositionMove { app_id: "p/r2".into(), from: -1, to: 1 }],
            HashMap::new(),
            ("test", "r"),
            5,
            -1,
        )
        .await
        .unwrap();
    assert!(v >= 2);
    b.refresh().await.unwrap();
    assert_eq!(b.txn_version("p/r1").await.unwrap(), Some(1));
    assert_eq!(b.txn_version("p/r2").await.unwrap(), Some(1));
}

fn writer() -> Writer {
    Writer { stage: "test".into(), region: "r".into(), threads: 2, attempts: 5 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_batch_rewrites_partitions_and_fences_a_zombie_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut live = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    let mv = |from, to| vec![PositionMove { app_id: "p/in".into(), from, to }];
    live.commit_batch(Commit::new(&[batch(&[1, 2])], mv(-1, 0), HashMap::new(), -1), &writer()).await.unwrap();
    let mut zombie = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    // A rewrite: the two rows are replaced by their sum, in one commit with the position.
    let old: std::collections::HashSet<String> = live.files().unwrap().into_iter().map(|f| f.path).collect();
    live.commit_batch(
        Commit::new(&[batch(&[3]), batch(&[4])], mv(0, 1), HashMap::new(), -1).replacing(old.clone()).file_per_batch(),
        &writer(),
    )
    .await
    .unwrap();
    assert_eq!(rows(&mut live).await, 2);
    assert_eq!(live.files().unwrap().len(), 2, "file per batch");
    // A zombie that decided on version 0 would remove the same files and move 0 → 1 again.
    let err = zombie
        .commit_batch(Commit::new(&[batch(&[3])], mv(0, 1), HashMap::new(), -1).replacing(old), &writer())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(sorted_x(&live).await, vec![3, 4]);
    // Versions read back as (version, rows) in commit order (version 0 created the table).
    let read: Vec<(i64, usize)> =
        live.read_versions(-1, 2).await.unwrap().iter().map(|(v, b)| (*v, b.num_rows())).collect();
    assert_eq!(read, vec![(1, 2), (2, 1), (2, 1)]);
}

/// Issue #14 item 9 (last part): two members adding different columns at once. The metadata
/// action of each is built on the snapshot its rows were typed with; the one that commits second
/// must not overwrite the first one's schema (dropping its column): it gets a conflict, and its
/// redo on the new state keeps both columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schema_evolutions_never_drop_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut a = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    let mut b = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    let w = writer();
    let evolved = |t: &mut Table, col: &str, v: i64| {
        let md = t.evolve(&[Field::new(col, DataType::Int64, true)], &[]).unwrap();
        let rows = RecordBatch::try_new(
            t.schema(),
            t.schema().fields().iter().map(|_| Arc::new(Int64Array::from(vec![v])) as _).collect(),
        )
        .unwrap();
        (md, rows)
    };
    let (md_a, rows_a) = evolved(&mut a, "col_a", 1);
    let (md_b, rows_b) = evolved(&mut b, "col_b", 2);
    let mv = |p: &str| vec![PositionMove { app_id: p.into(), from: -1, to: 0 }];
    a.commit_batch(Commit::new(&[rows_a], mv("p/t/0"), HashMap::new(), -1).evolving(Some(md_a)), &w).await.unwrap();
    let err = b
        .commit_batch(Commit::new(&[rows_b], mv("p/t/1"), HashMap::new(), -1).evolving(Some(md_b)), &w)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    // The redo, as the stage does it after a failed batch: refresh, re-type, evolve on the new state.
    b.refresh().await.unwrap();
    b.sync_schema().unwrap();
    let (md_b, rows_b) = evolved(&mut b, "col_b", 2);
    b.commit_batch(Commit::new(&[rows_b], mv("p/t/1"), HashMap::new(), -1).evolving(Some(md_b)), &w).await.unwrap();
    let mut t = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    t.refresh().await.unwrap();
    t.sync_schema().unwrap();
    let names: Vec<String> = t.schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["x", "col_a", "col_b"]);
    assert_eq!(rows(&mut t).await, 2);
}

fn pschema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false), Field::new("p", DataType::Utf8, false)]))
}

fn pbatch(v: &[i64], p: &str) -> RecordBatch {
    RecordBatch::try_new(
        pschema(),
        vec![
            Arc::new(Int64Array::from(v.to_vec())),
            Arc::new(deltalake::arrow::array::StringArray::from(vec![p; v.len()])),
        ],
    )
    .unwrap()
}

async fn xs(t: &mut Table) -> Vec<i64> {
    t.refresh().await.unwrap();
    sorted_x(t).await
}

/// Column `x` (Int64) of every live row of `t`, sorted.
pub(crate) async fn sorted_x(t: &Table) -> Vec<i64> {
    let mut all: Vec<i64> = t
        .read_all()
        .await
        .unwrap()
        .iter()
        .flat_map(|b| b.column_by_name("x").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
        .collect();
    all.sort();
    all
}

/// Issue #13: OPTIMIZE with `dataChange=false`. Fewer files, every row once; appends committed
/// while it runs are kept; incremental readers see only the appends, not the rewritten rows; a
/// compaction whose files another writer rewrote meanwhile is refused (no duplicate rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_once_beside_concurrent_appends_and_is_fenced_by_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut t = Table::open_or_create("t", &loc, pschema(), &["p"]).await.unwrap();
    for i in 0..4 {
        t.commit_batch(Commit::new(&[pbatch(&[i * 10, i * 10 + 1], "a")], vec![], HashMap::new(), -1), &writer())
            .await
            .unwrap();
        t.commit_batch(Commit::new(&[pbatch(&[100 + i], "b")], vec![], HashMap::new(), -1), &writer()).await.unwrap();
    }
    assert_eq!(t.files().unwrap().len(), 8);
    let before = xs(&mut t).await;
    let from_version = t.version();
    let mut appender = Table::open_or_create("t", &loc, pschema(), &["p"]).await.unwrap();
    let w = writer();
    let (report, ()) = tokio::join!(t.compact(2, &w), async {
        for i in 0..5 {
            appender
                .commit_batch(Commit::new(&[pbatch(&[1000 + i], "a")], vec![], HashMap::new(), -1), &writer())
                .await
                .unwrap();
        }
    });
    let report = report.unwrap();
    assert_eq!((report.partitions, report.files_removed, report.skipped), (2, 8, 0), "{report:?}");
    let mut want = before.clone();
    want.extend(1000..1005);
    want.sort();
    assert_eq!(xs(&mut t).await, want, "every row once, the concurrent appends included");
    assert!(t.files().unwrap().len() <= 2 + 5, "{} files", t.files().unwrap().len());
    // Incremental readers (silver reading bronze) see the five appends and nothing else.
    t.refresh().await.unwrap();
    let mut seen: Vec<i64> = t
        .read_versions(from_version, t.version())
        .await
        .unwrap()
        .iter()
        .flat_map(|(_, b)| {
            b.column_by_name("x").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (1000..1005).collect::<Vec<_>>());
    // A compaction that read partition b, while another writer rewrote b: refused.
    let mut zombie = Table::open_or_create("t", &loc, pschema(), &["p"]).await.unwrap();
    zombie.refresh().await.unwrap();
    let b_files: std::collections::HashSet<String> = zombie
        .files()
        .unwrap()
        .into_iter()
        .filter(|f| f.partition_values.get("p") == Some(&Some("b".into())))
        .map(|f| f.path)
        .collect();
    assert!(!b_files.is_empty());
    t.commit_batch(
        Commit::new(&[pbatch(&[100, 101, 102, 103], "b")], vec![], HashMap::new(), -1).replacing(b_files.clone()),
        &writer(),
    )
    .await
    .unwrap();
    let err = zombie
        .commit_batch(
            Commit::new(&[pbatch(&[100, 101, 102, 103], "b")], vec![], HashMap::new(), -1)
                .replacing(b_files)
                .compaction(),
            &writer(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(xs(&mut t).await, want, "no row twice");
}

/// Notices published by this test binary (the process-wide sink).
static NOTICES: std::sync::Mutex<Vec<tributary_core::notices::CommitNotice>> = std::sync::Mutex::new(Vec::new());
struct Capture;
impl tributary_core::notices::NoticeSink for Capture {
    fn publish(&self, n: tributary_core::notices::CommitNotice) {
        NOTICES.lock().unwrap().push(n);
    }
}

/// `00-<trace id>-<span id>-<flags>` -> (trace id, span id).
fn ids(tp: &str) -> (String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[1].to_string(), p[2].to_string())
}

#[tokio::test(flavor = "current_thread")]
async fn a_commit_carries_its_trace_context_to_its_notice_and_its_readers_commits() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // The global default (a thread-local one races other tests registering the same callsites).
    tracing::subscriber::set_global_default(subscriber).expect("the only test installing a subscriber");
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    tributary_core::notices::install(Box::new(Capture));
    let dir = tempfile::tempdir().unwrap();
    let w = Writer { stage: "t".into(), region: "r".into(), threads: 1, attempts: 3 };
    let up_loc = dir.path().join("up").display().to_string();
    let down_loc = dir.path().join("down").display().to_string();
    let mut up = Table::open_or_create("up", &up_loc, schema(), &[]).await.unwrap();
    let mut down = Table::open_or_create("down", &down_loc, schema(), &[]).await.unwrap();
    // The upstream stage commits and announces.
    let v = tributary_core::telemetry::in_pass(async {
        let v = up.commit_batch(Commit::new(&[batch(&[1])], vec![], HashMap::new(), -1), &w).await.unwrap();
        up.notice("t", "r", v, 1, 0);
        v
    })
    .await;
    let notice = NOTICES.lock().unwrap().iter().find(|n| n.name == "up").cloned().expect("a notice");
    let tp = notice.traceparent.clone().expect("the notice carries the trace context");
    let logged = up.commit_metadata(v, crate::TRACEPARENT_KEY).await.unwrap();
    assert_eq!(logged, Some(serde_json::Value::String(tp.clone())), "the commitInfo carries the same");
    // The notice survives its wire format.
    let wire: tributary_core::notices::CommitNotice =
        serde_json::from_slice(&serde_json::to_vec(&notice).unwrap()).unwrap();
    assert_eq!(wire.traceparent.as_deref(), Some(tp.as_str()));
    // The downstream pass reads that version: its commit continues the trace, as a child.
    let dv = tributary_core::telemetry::in_pass(async {
        let read = up.read_versions(-1, v).await.unwrap();
        assert_eq!(read.len(), 1);
        let a = down.commit_batch(Commit::new(&[batch(&[1])], vec![], HashMap::new(), -1), &w).await.unwrap();
        // A second commit of the same batch (say, its quarantine) stays in the trace too.
        let b = down.commit_batch(Commit::new(&[batch(&[2])], vec![], HashMap::new(), -1), &w).await.unwrap();
        (a, b)
    })
    .await;
    for v in [dv.0, dv.1] {
        let d = down.commit_metadata(v, crate::TRACEPARENT_KEY).await.unwrap();
        let d = d.and_then(|v| v.as_str().map(str::to_string)).expect("downstream trace context");
        assert_eq!(ids(&d).0, ids(&tp).0, "the downstream commit is in the upstream's trace");
        assert_ne!(ids(&d).1, ids(&tp).1, "with a span of its own");
    }
    // Outside a traced pass, a commit starts its own trace.
    let lone = down.commit_batch(Commit::new(&[batch(&[3])], vec![], HashMap::new(), -1), &w).await.unwrap();
    let l = down.commit_metadata(lone, crate::TRACEPARENT_KEY).await.unwrap().unwrap();
    assert_ne!(ids(l.as_str().unwrap()).0, ids(&tp).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_so_replay_stays_bounded() {
    // Every commit path goes through `Table::commit`/`commit_batch`, whose post-commit hook writes
    // a checkpoint every `delta.checkpointInterval` versions (deltalake's default: 100), so
    // opening a table replays at most that many JSON commits after the last checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut t = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    for i in 0..101 {
        let adds = t.write_files(&[batch(&[i])]).await.unwrap();
        t.commit(adds.into_iter().map(crate::Action::Add).collect(), vec![], HashMap::new(), 3).await.unwrap();
    }
    let log: Vec<String> = std::fs::read_dir(dir.path().join("t/_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(log.iter().any(|f| f == "_last_checkpoint"), "{log:?}");
    assert!(log.iter().any(|f| f.starts_with("00000000000000000099.checkpoint")), "{log:?}");
    assert_eq!(rows(&mut t).await, 101);
}

/// Every type our tables use, a partition column with two values in one batch, nulls, NaN,
/// sub-millisecond and whole-second timestamps, a text column without statistics.
fn mixed_batch() -> RecordBatch {
    use deltalake::arrow::array::{
        BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, StringArray, TimestampMicrosecondArray,
    };
    use deltalake::arrow::datatypes::TimeUnit;
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
        Field::new("event_time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("egress_approved", DataType::Boolean, true),
        Field::new("n", DataType::Int32, true),
        Field::new("x", DataType::Int64, false),
        Field::new("f", DataType::Float64, true),
        Field::new("dbu", DataType::Decimal128(38, 6), true),
        Field::new("d", DataType::Date32, true),
        Field::new("never", DataType::Int64, true),
        Field::new("event_date", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![Some("e1"), None, Some("e3"), Some("e4"), Some("e5")])),
            Arc::new(StringArray::from(vec![Some("job"), Some("audit"), None, Some("billing"), Some("job")])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![
                    Some(1_761_955_200_000_000),
                    Some(1_761_955_200_123_456),
                    None,
                    Some(1_762_041_599_999_999),
                    Some(1_762_000_000_000_500),
                ])
                .with_timezone("UTC"),
            ),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false), Some(true), Some(true)])),
            Arc::new(Int32Array::from(vec![Some(-4), Some(7), None, Some(i32::MAX), Some(0)])),
            Arc::new(Int64Array::from(vec![1, -9, 3, i64::MAX, 5])),
            Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(-1.5), Some(2.25), None, Some(1e300)])),
            Arc::new(
                Decimal128Array::from(vec![Some(1_234_567), Some(-5), None, Some(99_999_999_999_999_999), Some(0)])
                    .with_precision_and_scale(38, 6)
                    .unwrap(),
            ),
            Arc::new(Date32Array::from(vec![Some(20_000), None, Some(-3), Some(20_400), Some(1)])),
            Arc::new(Int64Array::from(vec![None::<i64>; 5])),
            Arc::new(StringArray::from(vec!["2025-11-01", "2025-11-01", "2025-11-02", "2025-11-02", "2025-11-01"])),
        ],
    )
    .unwrap()
}

fn by_partition(adds: &[deltalake::kernel::Add]) -> Vec<(String, serde_json::Value)> {
    let mut v: Vec<(String, serde_json::Value)> = adds
        .iter()
        .map(|a| {
            let p = a.partition_values.get("event_date").cloned().flatten().unwrap_or_default();
            (p, serde_json::from_str(a.stats.as_deref().unwrap()).unwrap())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_data_files_carry_the_same_add_actions_as_deltalakes_writer() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let b = mixed_batch();
    let mut t = Table::open_or_create("t", &loc, b.schema(), &["event_date"]).await.unwrap();
    let ours = t.write_files(std::slice::from_ref(&b)).await.unwrap();
    let theirs = t.write_with_deltalake(vec![vec![b.clone()]], false).await.unwrap();
    assert_eq!(ours.len(), 2, "one file per partition value: {ours:?}");
    assert_eq!(by_partition(&ours), by_partition(&theirs), "statistics differ from deltalake's");
    for a in &ours {
        let dir_part = format!("event_date={}/", a.partition_values["event_date"].as_deref().unwrap());
        assert!(a.path.starts_with(&dir_part) && a.path.ends_with("-c000.snappy.parquet"), "{}", a.path);
        assert_eq!(a.size as u64, std::fs::metadata(dir.path().join("t").join(&a.path)).unwrap().len());
    }
    // Readable through deltalake, every row once with its partition value.
    t.commit(ours.into_iter().map(crate::Action::Add).collect(), vec![], HashMap::new(), 0).await.unwrap();
    let back = t.read_all().await.unwrap();
    let back = deltalake::arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
    assert_eq!(back.num_rows(), 5);
    let days = back.column_by_name("event_date").unwrap();
    let days = deltalake::arrow::array::AsArray::as_string::<i32>(days.as_ref());
    assert_eq!(days.iter().filter(|d| *d == Some("2025-11-02")).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_partition_value_goes_through_deltalakes_writer() {
    use deltalake::arrow::array::StringArray;
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("eu"), None, Some("us")])),
        ],
    )
    .unwrap();
    let mut t = Table::open_or_create("t", &loc, schema, &["region"]).await.unwrap();
    let adds = t.write_files(&[b]).await.unwrap();
    assert_eq!(adds.len(), 3);
    assert!(adds.iter().any(|a| a.path.starts_with("region=__HIVE_DEFAULT_PARTITION__/")), "{adds:?}");
    t.commit(adds.into_iter().map(crate::Action::Add).collect(), vec![], HashMap::new(), 0).await.unwrap();
    assert_eq!(rows(&mut t).await, 3);
}

/// A reader's batch is bounded by the bytes of the data files it will decode: as many versions
/// as fit under the bound, at least one whatever its size, and the rest on the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_read_within_a_byte_bound_at_least_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut t = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    // Versions 1..=4 of 10, 1000, 10 and 10 rows.
    for (k, n) in [10i64, 1000, 10, 10].into_iter().enumerate() {
        let rows: Vec<i64> = (0..n).collect();
        let mv = vec![PositionMove { app_id: "p/in".into(), from: k as i64 - 1, to: k as i64 }];
        t.commit_batch(Commit::new(&[batch(&rows)], mv, HashMap::new(), -1), &writer()).await.unwrap();
    }
    let sizes: Vec<u64> =
        t.changes(0, 4).await.unwrap().iter().map(|(_, adds)| adds.iter().map(|a| a.size as u64).sum()).collect();
    assert!(sizes[1] > sizes[0] + sizes[2], "the 1000-row version is the large one: {sizes:?}");
    let read = |after, bound| {
        let t = &t;
        async move {
            let (last, b) = t.read_versions_within(after, 4, bound).await.unwrap();
            (last, b.iter().map(|(_, b)| b.num_rows()).sum::<usize>())
        }
    };
    // A bound below the first version still reads it; one that the second would cross stops
    // before it.
    assert_eq!(read(0, 1).await, (1, 10));
    assert_eq!(read(0, sizes[0] + sizes[1] - 1).await, (1, 10));
    // The large version alone is over the bound but read; the small ones after it then fit.
    assert_eq!(read(1, 1).await, (2, 1000));
    assert_eq!(read(2, sizes[2] + sizes[3]).await, (4, 20));
    assert_eq!(read(0, u64::MAX).await, (4, 1030));
    // Nothing after the last version.
    assert_eq!(read(4, u64::MAX).await, (4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_reading_only_some_columns_decodes_those_and_restores_partitions() {
    use deltalake::arrow::array::{Array, StringArray};
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut t = Table::open_or_create("t", &loc, pschema(), &["p"]).await.unwrap();
    let mv = |from, to| vec![PositionMove { app_id: "p/in".into(), from, to }];
    t.commit_batch(Commit::new(&[pbatch(&[1, 2], "a")], mv(-1, 0), HashMap::new(), -1), &writer()).await.unwrap();
    // Version 2 adds a column `y`; the file of version 1 does not have it.
    let md = t.evolve(&[Field::new("y", DataType::Utf8, true)], &[]).unwrap();
    let rows = RecordBatch::try_new(
        t.schema(),
        vec![
            Arc::new(Int64Array::from(vec![3])),
            Arc::new(StringArray::from(vec!["b"])),
            Arc::new(StringArray::from(vec!["big"])),
        ],
    )
    .unwrap();
    t.commit_batch(Commit::new(&[rows], mv(0, 1), HashMap::new(), -1).evolving(Some(md)), &writer()).await.unwrap();

    let mut r = Table::open_or_create("t", &loc, pschema(), &["p"]).await.unwrap().reading_only(["y", "p", "nope"]);
    r.refresh().await.unwrap();
    r.sync_schema().unwrap();
    let read = r.read_versions(0, 2).await.unwrap();
    let mut got: Vec<(i64, Option<String>, String)> = Vec::new();
    for (v, b) in &read {
        // Schema order, only the named columns the table has: no `x`, no `nope`.
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["p", "y"]);
        let p = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let y = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..b.num_rows() {
            got.push((*v, y.is_valid(i).then(|| y.value(i).to_string()), p.value(i).to_string()));
        }
    }
    assert_eq!(
        got,
        [(1, None, "a".to_string()), (1, None, "a".to_string()), (2, Some("big".to_string()), "b".to_string())]
    );
    // Another handle of it reads the same way; the table's own schema is untouched.
    assert_eq!(r.handle().read_all().await.unwrap().iter().map(|b| b.num_columns()).max(), Some(2));
    assert_eq!(r.schema().fields().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_finds_new_versions_without_loading_the_table_until_its_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let mut w = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    let mut r = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
    let start = r.version();
    let mv = |from, to| vec![PositionMove { app_id: "p/in".into(), from, to }];
    for k in 0..3i64 {
        w.commit_batch(Commit::new(&[batch(&[k])], mv(k - 1, k), HashMap::new(), -1), &writer()).await.unwrap();
    }
    // The reader sees the three appends by number and reads them, its snapshot left where it was.
    assert_eq!(r.latest_version().await.unwrap(), w.version());
    assert_eq!(r.version(), start, "appends alone do not load the table");
    let got: Vec<i64> = r
        .read_versions(start, w.version())
        .await
        .unwrap()
        .iter()
        .flat_map(|(_, b)| b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec())
        .collect();
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(r.latest_version().await.unwrap(), w.version(), "nothing new");
    // A schema change is loaded.
    let md = w.evolve(&[Field::new("y", DataType::Int64, true)], &[]).unwrap();
    let rows = RecordBatch::try_new(
        w.schema(),
        vec![Arc::new(Int64Array::from(vec![3])), Arc::new(Int64Array::from(vec![30]))],
    )
    .unwrap();
    w.commit_batch(Commit::new(&[rows], mv(2, 3), HashMap::new(), -1).evolving(Some(md)), &writer()).await.unwrap();
    assert_eq!(r.latest_version().await.unwrap(), w.version());
    assert_eq!(r.version(), w.version(), "a metadata change loads the table");
    r.sync_schema().unwrap();
    assert_eq!(r.schema().fields().len(), 2, "the loaded snapshot has the new column");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_log_files_are_deleted_when_a_checkpoint_is_written() {
    // Our commits skip deltalake's per-commit search for expired log files (it lists the whole
    // `_delta_log`) and run it after a commit that wrote a checkpoint instead: the log must
    // still shrink at each checkpoint, and a table that disables the cleanup keeps its log.
    async fn log_after_commits(cleanup: &str) -> (tempfile::TempDir, Vec<String>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("t").display().to_string();
        let mut t = Table::open_or_create("t", &loc, schema(), &[]).await.unwrap();
        let props = HashMap::from([
            ("delta.checkpointInterval".to_string(), "5".to_string()),
            ("delta.logRetentionDuration".to_string(), "interval 0 seconds".to_string()),
            ("delta.enableExpiredLogCleanup".to_string(), cleanup.to_string()),
        ]);
        let table = t.table.clone().set_tbl_properties().with_properties(props).await.unwrap();
        assert_eq!(table.version(), Some(1));
        t.refresh().await.unwrap();
        for i in 0..10 {
            let adds = t.write_files(&[batch(&[i])]).await.unwrap();
            t.commit(adds.into_iter().map(crate::Action::Add).collect(), vec![], HashMap::new(), 3).await.unwrap();
        }
        assert_eq!(t.version(), 11);
        let mut log: Vec<String> = std::fs::read_dir(dir.path().join("t/_delta_log"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.starts_with("000"))
            .collect();
        log.sort();
        let mut reader = Table::open_existing("t", &loc).await.unwrap().unwrap();
        let n = rows(&mut reader).await;
        (dir, log, n)
    }
    let (_d, log, n) = log_after_commits("true").await;
    assert_eq!(n, 10, "the table reads whole from its checkpoint");
    let kept = |v: u32| format!("{v:020}.json");
    assert_eq!(
        log,
        vec![format!("{:020}.checkpoint.parquet", 9), kept(9), kept(10), kept(11)],
        "commits before the newest checkpoint are gone, the ones after it are kept"
    );
    let (_d, log, n) = log_after_commits("false").await;
    assert_eq!(n, 10);
    assert!(log.contains(&kept(0)) && log.contains(&kept(8)), "cleanup disabled: {log:?}");
}

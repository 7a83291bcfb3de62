//! The exactly-once bookkeeping against real Delta tables on local disk.

use crate::{PositionMove, Table, schemas, txn};
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
        )
        .await
        .unwrap();
    assert!(v >= 2);
    b.refresh().await.unwrap();
    assert_eq!(b.txn_version("p/r1").await.unwrap(), Some(1));
    assert_eq!(b.txn_version("p/r2").await.unwrap(), Some(1));
}

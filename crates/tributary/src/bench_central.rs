//! `tributary bench-central`: N simulated regions' federators committing to one central table at
//! once, through the commit protocol every federator uses (`Table::commit_batch`: files written,
//! the region's position checked, rows + `txn` committed atomically, backing off while other
//! regions win the race for the next version), while a reader queries the table. Prints commit
//! latency p50/p99, lost races per commit, rows/s, the reader's query latency and what it saw,
//! and checks that nothing was lost or duplicated.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tributary_core::{Error, Result};
use tributary_delta::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use tributary_delta::arrow::datatypes::{DataType, Field, Schema};
use tributary_delta::{Commit, PositionMove, Table, Writer};

pub struct Spec {
    pub table: String,
    pub regions: usize,
    pub commits: usize,
    pub rows: usize,
    pub attempts: u32,
}

/// The `p` quantile (0..=1) of already sorted values; 0 when there are none.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn batch(schema: &Arc<Schema>, region: &str, seq: i64, rows: usize) -> Result<RecordBatch> {
    let payload = "x".repeat(200);
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![region; rows])),
            Arc::new(Int64Array::from(vec![seq; rows])),
            Arc::new(Int64Array::from((0..rows as i64).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec![payload.as_str(); rows])),
        ],
    )
    .map_err(|e| Error::internal("bench batch").with_source(e))
}

/// (rows, distinct region/seq commits) of the table as one reader sees it.
async fn scan(t: &Table) -> Result<(usize, HashSet<(String, i64)>)> {
    let mut seen = HashSet::new();
    let mut rows = 0;
    for b in t.read_columns(&["region", "seq"]).await? {
        let col = |name: &str, ty: &DataType| {
            let c = b.column_by_name(name).ok_or_else(|| Error::internal(format!("no {name} column")))?;
            tributary_delta::arrow::compute::cast(c, ty)
                .map_err(|e| Error::internal(format!("{name} column")).with_source(e))
        };
        let (r, s) = (col("region", &DataType::Utf8)?, col("seq", &DataType::Int64)?);
        let r = r.as_any().downcast_ref::<StringArray>().ok_or_else(|| Error::internal("region column"))?;
        let s = s.as_any().downcast_ref::<Int64Array>().ok_or_else(|| Error::internal("seq column"))?;
        rows += b.num_rows();
        for i in 0..b.num_rows() {
            seen.insert((r.value(i).to_string(), s.value(i)));
        }
    }
    Ok((rows, seen))
}

pub async fn run(spec: Spec) -> Result<String> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("row", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, false),
    ]));
    let base = Table::open_or_create("central/bench", &spec.table, schema.clone(), &[]).await?;
    if base.version() > 0 {
        return Err(Error::user(format!("{}: not empty; the benchmark needs a fresh table", spec.table)));
    }
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));

    // The reader: a full scan of (region, seq) in a loop; every snapshot must hold whole commits only.
    let reader = {
        let (done, table, rows_per_commit) = (done.clone(), spec.table.clone(), spec.rows);
        tokio::spawn(async move {
            let mut t = Table::open_existing("central/bench", &table).await?.ok_or_else(|| Error::internal("table"))?;
            let (mut lat, mut last_rows, mut queries) = (Vec::new(), 0usize, 0usize);
            while !done.load(Ordering::Relaxed) {
                let q = Instant::now();
                t.refresh().await?;
                let (rows, commits) = scan(&t).await?;
                lat.push(q.elapsed().as_secs_f64() * 1000.0);
                queries += 1;
                if rows != commits.len() * rows_per_commit {
                    return Err(Error::internal(format!(
                        "reader saw {rows} rows for {} commits at version {}: a partial or duplicated commit",
                        commits.len(),
                        t.version()
                    )));
                }
                if rows < last_rows {
                    return Err(Error::internal(format!("reader saw the table shrink: {last_rows} -> {rows}")));
                }
                last_rows = rows;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok::<_, Error>((lat, queries))
        })
    };

    let mut writers = Vec::new();
    for r in 0..spec.regions {
        let (table, schema, rows, commits, attempts) =
            (spec.table.clone(), schema.clone(), spec.rows, spec.commits, spec.attempts);
        writers.push(tokio::spawn(async move {
            let region = format!("region-{r:02}");
            let w = Writer { stage: "bench-central".into(), region: region.clone(), threads: 1, attempts };
            let mut t = Table::open_existing("central/bench", &table).await?.ok_or_else(|| Error::internal("table"))?;
            let app_id = format!("bench-central:{region}");
            let mut out = Vec::new();
            for seq in 1..=commits as i64 {
                let b = [batch(&schema, &region, seq, rows)?];
                let c = Instant::now();
                t.commit_batch(
                    Commit::new(
                        &b,
                        vec![PositionMove { app_id: app_id.clone(), from: seq - 1, to: seq }],
                        Default::default(),
                        0,
                    ),
                    &w,
                )
                .await?;
                out.push((c.elapsed().as_secs_f64() * 1000.0, t.last_commit_retries));
            }
            Ok::<_, Error>(out)
        }));
    }
    let mut lat = Vec::new();
    let mut retries = Vec::new();
    for w in writers {
        for (ms, r) in w.await.map_err(|e| Error::internal("writer task").with_source(e))?? {
            lat.push(ms);
            retries.push(r);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (mut qlat, queries) = reader.await.map_err(|e| Error::internal("reader task").with_source(e))??;

    // Exactly once: every region's every commit, once, and each region's position at its last.
    let mut t = Table::open_existing("central/bench", &spec.table).await?.ok_or_else(|| Error::internal("table"))?;
    t.refresh().await?;
    let (rows, commits) = scan(&t).await?;
    let want = spec.regions * spec.commits;
    let mut per_region: BTreeMap<String, usize> = BTreeMap::new();
    for (r, _) in &commits {
        *per_region.entry(r.clone()).or_default() += 1;
    }
    if rows != want * spec.rows || commits.len() != want || per_region.values().any(|n| *n != spec.commits) {
        return Err(Error::internal(format!(
            "central holds {rows} rows in {} commits, expected {} rows in {want} commits",
            commits.len(),
            want * spec.rows
        )));
    }
    for r in 0..spec.regions {
        let app_id = format!("bench-central:region-{r:02}");
        if t.txn_version(&app_id).await? != Some(spec.commits as i64) {
            return Err(Error::internal(format!("{app_id}: position is not at {}", spec.commits)));
        }
    }
    lat.sort_by(f64::total_cmp);
    qlat.sort_by(f64::total_cmp);
    let total_retries: u64 = retries.iter().sum();
    let max_retries = retries.iter().max().copied().unwrap_or(0);
    let checkpoints = {
        use futures::TryStreamExt as _;
        let log = tributary_delta::store::root_store(&format!("{}/_delta_log", spec.table.trim_end_matches('/')))?;
        let files: Vec<_> =
            log.list(None).try_collect().await.map_err(|e| Error::external("listing the log").with_source(e))?;
        files.iter().filter(|m| m.location.as_ref().contains(".checkpoint")).count()
    };
    Ok(format!(
        "bench-central: {} regions x {} commits x {} rows into one table in {wall:.1}s: {:.0} rows/s, {:.1} commits/s; \
         commit latency p50 {:.0} ms p99 {:.0} ms max {:.0} ms; lost races per commit mean {:.2} max {max_retries}; \
         reader: {queries} full scans, p50 {:.0} ms p99 {:.0} ms, every snapshot whole commits only; \
         final: {rows} rows, {want} commits, 0 lost, 0 duplicated, version {} ({} checkpoints)",
        spec.regions,
        spec.commits,
        spec.rows,
        (want * spec.rows) as f64 / wall,
        want as f64 / wall,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        total_retries as f64 / want.max(1) as f64,
        pct(&qlat, 0.5),
        pct(&qlat, 0.99),
        t.version(),
        checkpoints,
    ))
}

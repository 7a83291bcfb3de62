//! Backfill a time range of landing files into bronze, exactly once.
//!
//! A backfill reads the landing files of one source whose landing time (modification time) is in
//! `[from, to)` — from the region's landing zone or any other (an archive, a zone the files
//! landed in by mistake) — and appends them to the bronze table through the commit protocol under
//! its own position (`<pipeline>/backfill/<id>/<region>/<source>`, version = files committed), so
//! it runs beside the live flow without touching its position and resumes where it stopped
//! after a crash. The file list is frozen at the first run in `_tributary/backfill/<id>.json`
//! beside the table: a re-run of the same id continues that plan (and refuses other arguments).
//! Events that bronze already holds are appended again (bronze keeps what arrived); silver's
//! dedup drops them by `event_id`, so silver, gold and central stay exact.

use crate::{BronzeIngest, Decoded, STAGE, files, schema};
use deltalake::Path;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tributary_core::{Config, Error, Result};
use tributary_delta::{Commit, PositionMove};

/// What to backfill.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub region: String,
    pub source: String,
    /// Landing zone to read (default: the region's).
    pub landing: Option<String>,
    /// Landing-time range `[from, to)`, ms since the epoch (for a Kafka backfill: the messages'
    /// timestamps, already applied by [`export_kafka`]).
    pub from_ms: i64,
    pub to_ms: i64,
    /// Every file of the landing zone (an export of Kafka messages), whatever its landing time.
    pub all_files: bool,
}

/// The frozen plan of a backfill.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Plan {
    id: String,
    source: String,
    landing: String,
    from_ms: i64,
    to_ms: i64,
    files: Vec<files::LandingFile>,
}

/// How far a backfill is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub id: String,
    pub app_id: String,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Rows and quarantined rows committed by this run.
    pub rows: u64,
    pub quarantined: u64,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// [`run`], reading Kafka first when `spec.all_files` says the source is the topic: the range's
/// messages become the files of `<data_root>/_tributary/backfill-export/<region>/<id>` (skipped
/// when the plan is frozen already: a resumed backfill keeps its inputs).
pub async fn run_any(cfg: Arc<Config>, spec: &mut Spec, on_progress: impl FnMut(&Progress)) -> Result<Progress> {
    if spec.all_files {
        if !valid_id(&spec.id) {
            return Err(Error::user("backfill id: 1 to 64 letters, digits, '-' or '_'"));
        }
        let dir = std::path::Path::new(&cfg.data_root)
            .join(format!("_tributary/backfill-export/{}/{}", spec.region, spec.id));
        spec.landing = Some(dir.display().to_string());
        if !plan_exists(&cfg, &spec.region, &spec.source, &spec.id).await? {
            let e = export_kafka(&cfg, &spec.region, &spec.source, spec.from_ms, spec.to_ms, &dir).await?;
            tracing::info!(id = %spec.id, messages = e.messages, ranges = ?e.ranges, "backfill: Kafka range exported");
            eprintln!(
                "backfill {}: {} messages of {} partitions exported from Kafka ({:?})",
                spec.id,
                e.messages,
                e.ranges.len(),
                e.ranges
            );
        }
    }
    run(cfg, spec, on_progress).await
}

/// Runs (or resumes) the backfill to its end, calling `on_progress` after each batch.
pub async fn run(cfg: Arc<Config>, spec: &Spec, mut on_progress: impl FnMut(&Progress)) -> Result<Progress> {
    if !valid_id(&spec.id) {
        return Err(Error::user("backfill id: 1 to 64 letters, digits, '-' or '_'"));
    }
    if spec.from_ms >= spec.to_ms {
        return Err(Error::user("backfill range: --from must be before --to"));
    }
    if !cfg.bronze.sources.contains(&spec.source) {
        return Err(Error::user(format!("source {:?} is not one of {:?}", spec.source, cfg.bronze.sources)));
    }
    if !cfg.regions.contains(&spec.region) {
        return Err(Error::user(format!("region {:?} is not one of {:?}", spec.region, cfg.regions)));
    }
    let landing = spec.landing.clone().unwrap_or_else(|| cfg.landing(&spec.region));
    let app_id = tributary_delta::catalog::bronze_backfill_app_id(&cfg, &spec.region, &spec.source, &spec.id);
    let id_for = app_id.clone();
    let mut b = BronzeIngest::build_with(
        cfg.clone(),
        &spec.region,
        landing.clone(),
        std::slice::from_ref(&spec.source),
        |_| id_for.clone(),
    )
    .await?;
    let plan = plan(&mut b, spec, &landing).await?;
    let mut p = Progress {
        id: spec.id.clone(),
        app_id: app_id.clone(),
        files_total: plan.files.len() as u64,
        bytes_total: plan.files.iter().map(|f| f.size).sum(),
        ..Default::default()
    };
    b.flows[0].table.refresh().await?;
    b.quarantine.get_mut().refresh().await?;
    let mut done = b.flows[0].table.txn_version(&app_id).await?.unwrap_or(0);
    let mut q_done = b.quarantine.get_mut().txn_version(&app_id).await?.unwrap_or(0);
    // A crash between the data and the quarantine commit: the quarantine rows of those files.
    if q_done < done {
        let files = &plan.files[q_done as usize..done as usize];
        let d = b.decode_files(&spec.source, files).await?;
        let moves = vec![PositionMove { app_id: app_id.clone(), from: q_done, to: done }];
        b.quarantine
            .get_mut()
            .commit_batch(Commit::new(&d.quarantine, moves, meta(spec, done, files.len()), 0), &b.writer)
            .await?;
        q_done = done;
    }
    let set = |p: &mut Progress, done: i64| {
        p.files_done = done as u64;
        p.bytes_done = plan.files[..done as usize].iter().map(|f| f.size).sum();
    };
    set(&mut p, done);
    on_progress(&p);
    while (done as usize) < plan.files.len() {
        let batch = files::take_batch(
            plan.files[done as usize..].to_vec(),
            cfg.bronze.max_files_per_batch,
            cfg.bronze.max_bytes_per_batch,
        );
        let n = batch.len() as i64;
        let Decoded { rows, quarantine, lines_in, .. } = b.decode_files(&spec.source, &batch).await?;
        let f = &mut b.flows[0];
        let prepared = match schema::prepare(&mut f.table, f.mode, &f.hints, rows)? {
            schema::Step::Ready(p) => p,
            schema::Step::Stop(message) => return Err(Error::user(message)),
        };
        let quarantined: u64 = quarantine.iter().map(|q| q.num_rows() as u64).sum();
        let moves = vec![PositionMove { app_id: app_id.clone(), from: done, to: done + n }];
        let version = f
            .table
            .commit_batch(
                Commit::new(&prepared.batches, moves, meta(spec, done + n, batch.len()), 0)
                    .evolving(prepared.metadata.clone()),
                &b.writer,
            )
            .await?;
        schema::committed(&spec.region, &f.table.name, &prepared, &mut f.drift, lines_in, quarantined);
        f.table.notice(STAGE, &spec.region, version, prepared.rows, tributary_delta::max_event_ms(&prepared.batches));
        let moves = vec![PositionMove { app_id: app_id.clone(), from: q_done, to: done + n }];
        b.quarantine
            .get_mut()
            .commit_batch(Commit::new(&quarantine, moves, meta(spec, done + n, batch.len()), 0), &b.writer)
            .await?;
        done += n;
        q_done = done;
        p.rows += prepared.rows;
        p.quarantined += quarantined;
        set(&mut p, done);
        on_progress(&p);
    }
    Ok(p)
}

fn meta(spec: &Spec, to: i64, files: usize) -> HashMap<String, serde_json::Value> {
    HashMap::from([(
        "tributary.backfill".to_string(),
        serde_json::json!({"id": spec.id, "source": spec.source, "files_done": to, "batch_files": files,
                           "from_ms": spec.from_ms, "to_ms": spec.to_ms}),
    )])
}

/// The frozen file list of the backfill: read, or made now from a listing of the landing zone.
async fn plan(b: &mut BronzeIngest, spec: &Spec, landing: &str) -> Result<Plan> {
    let store = b.flows[0].table.table.object_store();
    let path = Path::from(format!("_tributary/backfill/{}.json", spec.id));
    match store.get(&path).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| Error::external("reading the backfill plan").with_source(e))?;
            let plan: Plan = serde_json::from_slice(&bytes)
                .map_err(|e| Error::internal(format!("corrupt backfill plan {}", spec.id)).with_source(e))?;
            if (plan.source.as_str(), plan.landing.as_str(), plan.from_ms, plan.to_ms)
                != (spec.source.as_str(), landing, spec.from_ms, spec.to_ms)
            {
                return Err(Error::user(format!(
                    "backfill {} was started with other arguments (source {}, landing {}, range {}..{} ms); \
                     give a new id or the same arguments",
                    spec.id, plan.source, plan.landing, plan.from_ms, plan.to_ms
                )));
            }
            Ok(plan)
        }
        Err(object_store::Error::NotFound { .. }) => {
            let listed = files::list_above(&b.landing, b.landing_root.as_deref(), &spec.source, None).await?;
            let files = listed
                .into_iter()
                .filter(|m| spec.all_files || (spec.from_ms..spec.to_ms).contains(&m.last_modified.timestamp_millis()))
                .map(|m| files::LandingFile::whole(m.location.as_ref(), m.size))
                .collect();
            let plan = Plan {
                id: spec.id.clone(),
                source: spec.source.clone(),
                landing: landing.to_string(),
                from_ms: spec.from_ms,
                to_ms: spec.to_ms,
                files,
            };
            let body = serde_json::to_vec(&plan).map_err(|e| Error::internal("backfill plan").with_source(e))?;
            // Put-if-absent: two runs of the same id agree on one plan.
            match store.put_opts(&path, body.into(), object_store::PutMode::Create.into()).await {
                Ok(_) => Ok(plan),
                Err(object_store::Error::AlreadyExists { .. }) => Box::pin(self::plan(b, spec, landing)).await,
                Err(e) => Err(Error::external("writing the backfill plan").with_source(e)),
            }
        }
        Err(e) => Err(Error::external("reading the backfill plan").with_source(e)),
    }
}

/// What [`export_kafka`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Export {
    pub dir: String,
    /// (partition, first offset, end offset exclusive) per partition with messages in range.
    pub ranges: Vec<(i32, i64, i64)>,
    pub messages: u64,
    /// True when the backfill's plan already existed (nothing exported again).
    pub skipped: bool,
}

/// Whether backfill `id` of `source` already froze its plan (then its inputs are not re-read).
pub async fn plan_exists(cfg: &Config, region: &str, source: &str, id: &str) -> Result<bool> {
    let loc = tributary_delta::catalog::bronze_location(cfg, region, source);
    let Some(t) = tributary_delta::Table::open_existing(&format!("bronze/{source}"), &loc).await? else {
        return Ok(false);
    };
    match t.table.object_store().head(&Path::from(format!("_tributary/backfill/{id}.json"))).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(Error::external("reading the backfill plan").with_source(e)),
    }
}

/// Copies the messages of `source`'s topic whose timestamps are in `[from_ms, to_ms)` — per
/// partition from the first offset at or after `from_ms` to the first at or after `to_ms` (the
/// broker's offsets-by-timestamp lookup) — into one NDJSON file per partition under
/// `<dir>/<source>/` (written under a temporary name, then renamed), named by topic, partition
/// and offsets, so a file backfill over `dir` ingests them with their offsets in their lineage.
/// A payload spread over several lines is compacted to one (JSON) or has its line breaks
/// replaced (anything else, which bronze then quarantines with its reason).
pub async fn export_kafka(
    cfg: &Config,
    region: &str,
    source: &str,
    from_ms: i64,
    to_ms: i64,
    dir: &std::path::Path,
) -> Result<Export> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    use std::time::{Duration, Instant};
    let topic = cfg.kafka.topic_for(source).replace("{region}", region);
    let consumer: BaseConsumer = tributary_kafka::client_config(&cfg.kafka)?
        .set("group.id", format!("{}-backfill-{}-{}", cfg.kafka.group_id, std::process::id(), tributary_core::now_ms()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| Error::external("creating the backfill consumer").with_source(e))?;
    let out_dir = dir.join(source);
    std::fs::create_dir_all(&out_dir)?;
    let topic2 = topic.clone();
    // librdkafka's calls block: off the runtime's workers.
    tokio::task::spawn_blocking(move || -> Result<Export> {
        let timeout = Duration::from_secs(10);
        let md = consumer
            .fetch_metadata(Some(&topic2), timeout)
            .map_err(|e| Error::external(format!("metadata of {topic2}")).with_source(e))?;
        let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        if parts.is_empty() {
            return Err(Error::user(format!("topic {topic2} has no partitions (does it exist?)")));
        }
        let lookup = |ts: i64| -> Result<HashMap<i32, Offset>> {
            let mut tpl = TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition_offset(&topic2, *p, Offset::Offset(ts))
                    .map_err(|e| Error::internal("offset lookup").with_source(e))?;
            }
            let r = consumer
                .offsets_for_times(tpl, timeout)
                .map_err(|e| Error::external(format!("offsets of {topic2} by timestamp {ts}")).with_source(e))?;
            Ok(r.elements().iter().map(|e| (e.partition(), e.offset())).collect())
        };
        let (starts, ends) = (lookup(from_ms)?, lookup(to_ms)?);
        let mut export = Export { dir: out_dir.display().to_string(), ..Default::default() };
        for p in &parts {
            let (_, high) = consumer
                .fetch_watermarks(&topic2, *p, timeout)
                .map_err(|e| Error::external(format!("watermarks of {topic2}[{p}]")).with_source(e))?;
            let start = match starts.get(p) {
                Some(Offset::Offset(o)) => *o,
                _ => continue, // nothing at or after `from`
            };
            let end = match ends.get(p) {
                Some(Offset::Offset(o)) => *o,
                _ => high, // nothing at or after `to`: up to the end
            };
            if start >= end {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic2, *p, Offset::Offset(start))
                .map_err(|e| Error::internal("assign").with_source(e))?;
            consumer.assign(&tpl).map_err(|e| Error::external("assigning the backfill partition").with_source(e))?;
            let mut body: Vec<u8> = Vec::new();
            let mut next = start;
            let deadline = Instant::now() + Duration::from_secs(300);
            while next < end {
                if Instant::now() > deadline {
                    return Err(Error::external(format!(
                        "{topic2}[{p}]: offsets {next}..{end} not delivered within 300 s"
                    )));
                }
                let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
                let m = m.map_err(|e| Error::external(format!("reading {topic2}[{p}]")).with_source(e))?;
                if m.offset() < next || m.offset() >= end {
                    continue;
                }
                let payload = m.payload().unwrap_or_default();
                if payload.contains(&b'\n') || payload.contains(&b'\r') {
                    match serde_json::from_slice::<serde_json::Value>(payload) {
                        Ok(v) => body.extend(serde_json::to_vec(&v).unwrap_or_default()),
                        Err(_) => {
                            body.extend(payload.iter().map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b }))
                        }
                    }
                } else {
                    body.extend_from_slice(payload);
                }
                body.push(b'\n');
                export.messages += 1;
                next = m.offset() + 1;
            }
            let name = format!("kafka-{}-p{p:05}-{start:012}-{end:012}.ndjson", topic2.replace(['/', '\\'], "_"));
            let tmp = out_dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &body)?;
            std::fs::rename(&tmp, out_dir.join(&name))?;
            export.ranges.push((*p, start, end));
        }
        Ok(export)
    })
    .await
    .map_err(|e| Error::internal("backfill export task").with_source(e))?
}

//! bronze-ingest: landing files → one bronze Delta table per source, exactly once.
//!
//! Each batch of files gets a sequence number. The Delta commit carries
//! `txn(app_id = <pipeline>/landing/<region>/<source>, version = seq)` with the data, and the
//! batch's file list (path, bytes ingested) in its `commitInfo` (`tributary.batch.ingested`): the
//! list is part of the atomic commit, so a writer that loses a race (two pods during a rolling
//! update) leaves nothing behind that could count a file as done. On start the committed
//! sequence is read from the table and the commits since the last index say which files are
//! done. The quarantine table carries its own txn for the same sequence.
//!
//! Discovery is incremental (`files::Discovery`): a lexical frontier below which every file is
//! ingested plus the few ingested files above it, snapshotted every `index_every_batches` batches
//! (older index files, and the per-batch manifests earlier versions wrote, are then deleted), so
//! memory, restart and poll cost do not grow with history.

pub mod backfill;
pub mod builder;
pub mod files;
pub mod kafka;
pub mod members;
pub mod schema;

use crate::builder::{BronzeRows, Lineage, QuarantineRows};
use deltalake::arrow::array::RecordBatch;
use deltalake::{ObjectStore, Path};
use futures::StreamExt as _;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tributary_core::metrics::BatchCommitted;
use tributary_core::stage::Stage;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::{Commit, PositionMove, Table, Writer, schemas};
use tributary_proto::v1::{InputPosition, StageStatus};

pub const STAGE: &str = "bronze";

/// Lines decoded at once (across the worker threads) before they are moved into the batch's
/// columns: ~4–16 MiB of decoded events at 1–4 KB, reused chunk after chunk.
const DECODE_CHUNK_LINES: usize = 4096;

/// Decodes `items` (landing lines, Kafka messages) `DECODE_CHUNK_LINES` at a time on the CPU
/// pool and hands each item with its result to `each`, in order: a batch's decoded events never
/// all exist beside the columns `each` moves them into. The first error of `each` stops it.
pub(crate) fn decode_in_chunks<T: Sync>(
    items: &[T],
    threads: usize,
    source: &str,
    max_bytes: usize,
    bytes_of: impl Fn(&T) -> &[u8] + Sync,
    mut each: impl FnMut(&T, std::result::Result<tributary_events::Decoded, tributary_events::Reject>) -> Result<()>,
) -> Result<()> {
    for chunk in items.chunks(DECODE_CHUNK_LINES) {
        let decoded = tributary_core::parallel_map(chunk, threads, 512, |x| {
            tributary_events::decode_event(bytes_of(x), source, max_bytes)
        });
        for (x, d) in chunk.iter().zip(decoded) {
            each(x, d)?;
        }
    }
    Ok(())
}

/// The per-batch file list earlier versions wrote beside the table (read for their batches only).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    seq: i64,
    source: String,
    files: Vec<String>,
}

/// A snapshot of what is ingested up to `seq`: the discovery state (frontier + the few ingested
/// files above it). Indexes written before the frontier existed hold every file in `files`.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    seq: i64,
    source: String,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    discovery: Option<files::Discovery>,
}

struct Flow {
    source: String,
    app_id: String,
    /// This flow's slot of the source's landing files, of `slots` (`bronze.landing_slots`).
    slot: u32,
    slots: u32,
    table: Table,
    /// Sequence recorded in the data table.
    seq: i64,
    /// Sequence recorded in the quarantine table for this source.
    quarantine_seq: i64,
    /// Which landing files are ingested (frontier + recent): memory independent of history.
    discovery: files::Discovery,
    /// File lists of committed batches, kept until quarantine has caught up.
    manifests: HashMap<i64, Vec<files::LandingFile>>,
    mode: schema::Mode,
    hints: Vec<(String, tributary_core::field_type::FieldType)>,
    drift: schema::DriftTracker,
    /// Set when the source was stopped (`failOnNewColumns`); the other sources go on.
    stopped: Option<String>,
}

pub struct BronzeIngest {
    cfg: Arc<Config>,
    region: String,
    landing: Arc<dyn ObjectStore>,
    landing_uri: String,
    /// The landing zone's local directory (walked with pruning), when it is local.
    landing_root: Option<std::path::PathBuf>,
    flows: Vec<Flow>,
    /// Shared by the flows, which run concurrently (`bronze.parallel_flows`).
    quarantine: tokio::sync::Mutex<Table>,
    writer: Writer,
    /// A failing source backs off alone; the others keep ingesting.
    health: tributary_core::stage::FlowHealth,
    next_flow: usize,
    /// One handle per source table, from which the flows of owned slots are made.
    bases: Vec<(String, Table)>,
    /// Replicas sharing the landing zone (`bronze.landing_slots` > 1).
    members: Option<members::Members>,
}

/// One batch of landing files decoded: bronze rows, quarantine rows, event lines read (+ one per
/// unreadable file) and blank lines skipped.
struct Decoded {
    rows: BronzeRows,
    quarantine: Vec<RecordBatch>,
    lines_in: u64,
    blank_lines: u64,
}

pub use tributary_delta::catalog::{
    bronze_location as table_location, bronze_quarantine_location as quarantine_location,
};

impl BronzeIngest {
    pub async fn build(cfg: Arc<Config>, region: &str) -> Result<Self> {
        let (landing, sources) = (cfg.landing(region), cfg.bronze.sources.clone());
        let app_id = |source: &str| tributary_delta::catalog::bronze_landing_app_id(&cfg, region, source);
        let mut me = Self::build_with(cfg.clone(), region, landing, &sources, app_id).await?;
        me.check_layout().await?;
        let slots = cfg.bronze.landing_slots;
        if slots > 1 {
            let id = if cfg.bronze.member_id.is_empty() { members::default_id() } else { cfg.bronze.member_id.clone() };
            let mut m = members::Members::new(
                me.quarantine.get_mut().table.object_store(),
                id,
                slots,
                cfg.bronze.member_heartbeat_secs,
            );
            m.beat().await?;
            m.start_beating();
            tracing::info!(member = %m.id, slots, owned = ?m.owned(), "bronze shares the landing zone");
            me.members = Some(m);
            me.rebuild_flows()?;
        }
        Ok(me)
    }

    fn new_flow(cfg: &Config, source: &str, app_id: String, table: Table, slot: u32, slots: u32) -> Result<Flow> {
        Ok(Flow {
            source: source.to_string(),
            app_id,
            slot,
            slots,
            table,
            seq: 0,
            quarantine_seq: 0,
            discovery: files::Discovery::default(),
            manifests: HashMap::new(),
            mode: schema::Mode::parse(cfg.bronze.evolution_mode(source))?,
            hints: schema::hints(&cfg.bronze, source)?,
            drift: schema::DriftTracker::new(cfg.bronze.drift.clone()),
            stopped: None,
        })
    }

    /// One flow per (source, owned slot); each loads its position from the table before it runs.
    fn rebuild_flows(&mut self) -> Result<()> {
        let Some(m) = &self.members else { return Ok(()) };
        let slots = self.cfg.bronze.landing_slots;
        let owned = m.owned();
        let mut flows = Vec::new();
        for (source, table) in &self.bases {
            for &slot in &owned {
                let app_id =
                    tributary_delta::catalog::bronze_landing_slot_app_id(&self.cfg, &self.region, source, slot, slots);
                flows.push(Self::new_flow(&self.cfg, source, app_id, table.handle(), slot, slots)?);
            }
        }
        self.flows = flows;
        self.health = tributary_core::stage::FlowHealth::new(self.flows.len());
        self.health.reload_all();
        self.next_flow = 0;
        Ok(())
    }

    /// Refuses to start when a source's table was ingested with another `bronze.landing_slots`:
    /// each slot has its own position, so a changed count would ingest every file again.
    async fn check_layout(&mut self) -> Result<()> {
        let want = self.cfg.bronze.landing_slots as i64;
        for (source, table) in &mut self.bases {
            table.refresh().await?;
            let single = tributary_delta::catalog::bronze_landing_app_id(&self.cfg, &self.region, source);
            if want > 1 && table.txn_version(&single).await?.is_some() {
                return Err(Error::user(format!(
                    "bronze/{source} was ingested with bronze.landing_slots = 1, this replica has {want}: each slot \
                     keeps its own exactly-once position, so the slot count of a table cannot change (the files would \
                     be ingested again); keep 1"
                )));
            }
            let mut v = table.version();
            let stop = (v - 64).max(0);
            while v >= stop && v > 0 {
                if let Some(meta) = table.commit_metadata(v, "tributary.batch").await? {
                    let had = meta.get("slots").and_then(|x| x.as_i64()).unwrap_or(1);
                    if had != want {
                        return Err(Error::user(format!(
                            "bronze/{source} was ingested with bronze.landing_slots = {had}, this replica has {want}: \
                             each slot keeps its own exactly-once position, so the slot count of a table cannot change \
                             (the files would be ingested again); keep {had}"
                        )));
                    }
                    break;
                }
                v -= 1;
            }
        }
        Ok(())
    }

    /// Flows of `sources` reading `landing_uri`, each recording its position under `app_id(source)`
    /// (the service's flows, or a backfill's).
    async fn build_with(
        cfg: Arc<Config>,
        region: &str,
        landing_uri: String,
        sources: &[String],
        app_id: impl Fn(&str) -> String,
    ) -> Result<Self> {
        let landing = files::landing_store(&landing_uri)?;
        let quarantine = Table::open_or_create(
            "bronze/_quarantine",
            &quarantine_location(&cfg, region),
            schemas::quarantine(),
            schemas::QUARANTINE_PARTITIONS,
        )
        .await?;
        let mut flows = Vec::new();
        let mut bases = Vec::new();
        for source in sources {
            let table = Table::open_or_create(
                &format!("bronze/{source}"),
                &table_location(&cfg, region, source),
                schemas::bronze(),
                schemas::BRONZE_PARTITIONS,
            )
            .await?;
            bases.push((source.clone(), table.handle()));
            flows.push(Self::new_flow(&cfg, source, app_id(source), table, 0, 1)?);
        }
        let landing_root = (!landing_uri.contains("://") || landing_uri.starts_with("file://"))
            .then(|| std::path::PathBuf::from(landing_uri.strip_prefix("file://").unwrap_or(&landing_uri)));
        let mut me = Self {
            health: tributary_core::stage::FlowHealth::new(flows.len()),
            writer: Writer::new(STAGE, region, &cfg),
            cfg,
            region: region.to_string(),
            landing,
            landing_uri,
            landing_root,
            flows,
            quarantine: tokio::sync::Mutex::new(quarantine),
            next_flow: 0,
            bases,
            members: None,
        };
        me.recover().await?;
        Ok(me)
    }

    fn manifest_path(seq: i64) -> Path {
        Path::from(format!("_tributary/batches/{seq:012}.json"))
    }

    /// Where a flow keeps its discovery snapshots: one folder per slot when the landing zone is
    /// shared (the slots of a source commit to the same table).
    fn batches_dir(flow: &Flow) -> String {
        if flow.slots > 1 {
            format!("_tributary/batches/slot-{}-of-{}", flow.slot, flow.slots)
        } else {
            "_tributary/batches".into()
        }
    }

    fn index_path(flow: &Flow, seq: i64) -> Path {
        Path::from(format!("{}/index-{seq:012}.json", Self::batches_dir(flow)))
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        what: &str,
    ) -> Result<T> {
        let bytes = store
            .get(path)
            .await
            .map_err(|e| Error::external(format!("reading {what}")).with_source(e))?
            .bytes()
            .await
            .map_err(|e| Error::external(format!("reading {what}")).with_source(e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("corrupt {what}")).with_source(e))
    }

    /// Rebuilds the discovery state from the table: the newest index snapshot at or below the
    /// committed sequence, then the manifests after it. The index is found by direct reads at the
    /// multiples of `every` below the sequence (no listing of the manifest folder, whose size grows
    /// with history); only when none is there (the setting changed) is the folder listed.
    async fn load_flow(flow: &mut Flow, quarantine: &Table, every: i64) -> Result<()> {
        flow.table.refresh().await?;
        flow.seq = flow.table.txn_version(&flow.app_id).await?.unwrap_or(0);
        flow.quarantine_seq = quarantine.txn_version(&flow.app_id).await?.unwrap_or(0);
        flow.discovery = files::Discovery::default();
        flow.manifests.clear();
        let store = flow.table.table.object_store();
        let every = every.max(1);
        let mut index: Option<Index> = None;
        let mut probe = flow.seq - flow.seq % every;
        for _ in 0..3 {
            if probe <= 0 {
                break;
            }
            match store.get(&Self::index_path(flow, probe)).await {
                Ok(r) => {
                    let bytes = r.bytes().await.map_err(|e| Error::external("reading batch index").with_source(e))?;
                    index = Some(serde_json::from_slice(&bytes).map_err(|e| {
                        Error::internal(format!("corrupt batch index {probe} of {}", flow.table.name)).with_source(e)
                    })?);
                    break;
                }
                Err(object_store::Error::NotFound { .. }) => probe -= every,
                Err(e) => return Err(Error::external("reading batch index").with_source(e)),
            }
        }
        if index.is_none() && flow.seq > 0 {
            let listed: Vec<deltalake::ObjectMeta> =
                futures::TryStreamExt::try_collect(store.list(Some(&Path::from(Self::batches_dir(flow)))))
                    .await
                    .map_err(|e| {
                        Error::external(format!("listing batch manifests of {}", flow.table.name)).with_source(e)
                    })?;
            let own = format!("{}/index-", Self::batches_dir(flow));
            let found = listed
                .iter()
                .filter(|m| m.location.as_ref().starts_with(&own))
                .filter_map(|m| {
                    m.location.filename()?.strip_prefix("index-")?.strip_suffix(".json")?.parse::<i64>().ok()
                })
                .filter(|s| *s <= flow.seq)
                .max();
            if let Some(found) = found {
                index = Some(
                    Self::read_json(
                        &store,
                        &Self::index_path(flow, found),
                        &format!("batch index {found} of {}", flow.table.name),
                    )
                    .await?,
                );
            }
        }
        let index_seq = index.as_ref().map(|i| i.seq).unwrap_or(0);
        if let Some(idx) = index {
            flow.discovery = match idx.discovery {
                Some(d) => d,
                None => files::Discovery {
                    frontier: None,
                    recent: idx.files.into_iter().collect(),
                    sizes: Default::default(),
                },
            };
        }
        let after = index_seq.min(flow.quarantine_seq);
        let batches = Self::batches_from_log(flow, after).await?;
        for s in (after + 1)..=flow.seq {
            let files = batches.get(&s).cloned().unwrap_or_default();
            if s > index_seq {
                flow.discovery.record(&files);
            }
            if s > flow.quarantine_seq {
                flow.manifests.insert(s, files);
            }
        }
        Ok(())
    }

    /// The file lists of the batches `(after, seq]`, from the commits' `commitInfo`, newest
    /// first until `after` is reached (normally at most `index_every_batches` commits). Batches
    /// committed by earlier versions have their list in a manifest file beside the table instead
    /// (paths only: `UNKNOWN_SIZE`).
    async fn batches_from_log(flow: &Flow, after: i64) -> Result<HashMap<i64, Vec<files::LandingFile>>> {
        let mut out: HashMap<i64, Vec<files::LandingFile>> = HashMap::new();
        let wanted = (flow.seq - after).max(0) as usize;
        let mut v = flow.table.version();
        while v >= 0 && out.len() < wanted {
            let meta = flow.table.commit_metadata(v, "tributary.batch").await?;
            v -= 1;
            let Some(meta) = meta else { continue };
            // The slots of a source share its table: only this flow's batches count. Commits
            // without an app_id were written before slots existed (one flow per source).
            match meta.get("app_id").and_then(|x| x.as_str()) {
                Some(owner) if owner != flow.app_id => continue,
                None if flow.slots > 1 => continue,
                _ => {}
            }
            let Some(seq) = meta.get("seq").and_then(|x| x.as_i64()) else { continue };
            if seq <= after {
                break;
            }
            if seq > flow.seq || out.contains_key(&seq) {
                continue;
            }
            if let Some(list) = meta.get("ingested") {
                let files: Vec<files::LandingFile> = serde_json::from_value(list.clone()).map_err(|e| {
                    Error::internal(format!("corrupt file list of batch {seq} in {}", flow.table.name)).with_source(e)
                })?;
                out.insert(seq, files);
            }
        }
        let store = flow.table.table.object_store();
        for s in (after + 1)..=flow.seq {
            if out.contains_key(&s) {
                continue;
            }
            let m: Manifest = Self::read_json(
                &store,
                &Self::manifest_path(s),
                &format!("file list of batch {s} of {} (not in its commit, no manifest)", flow.table.name),
            )
            .await?;
            out.insert(s, m.files.iter().map(|p| files::LandingFile::whole(p, files::UNKNOWN_SIZE)).collect());
        }
        Ok(out)
    }

    /// Every `bronze.index_every_batches` committed batches, snapshot the discovery state so a
    /// restart reads one index plus at most that many manifests; the manifests and indexes older
    /// than the previous snapshot are deleted (nothing reads them any more), so the folder stays
    /// small however long the pipeline runs.
    async fn maybe_write_index(flow: &Flow, every: i64) -> Result<()> {
        let every = every.max(1);
        if flow.seq % every != 0 {
            return Ok(());
        }
        let idx = Index {
            seq: flow.seq,
            source: flow.source.clone(),
            files: vec![],
            discovery: Some(flow.discovery.clone()),
        };
        let store = flow.table.table.object_store();
        store
            .put(&Self::index_path(flow, flow.seq), serde_json::to_vec(&idx).unwrap_or_default().into())
            .await
            .map_err(|e| Error::external("writing batch index").with_source(e))?;
        let stale_to = flow.seq - every;
        for s in (stale_to - every + 1).max(1)..=stale_to {
            for p in [Self::manifest_path(s), Self::index_path(flow, s)] {
                match store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(path = %p, error = %e, "could not delete an old batch manifest"),
                }
            }
        }
        Ok(())
    }

    fn shared(&self) -> Shared<'_> {
        Shared {
            cfg: &self.cfg,
            region: &self.region,
            landing: &self.landing,
            landing_uri: &self.landing_uri,
            landing_root: self.landing_root.as_deref(),
            writer: &self.writer,
            member: self.members.as_ref().map(|m| m.id.as_str()),
            quarantine: &self.quarantine,
        }
    }

    async fn decode_files(&self, source: &str, batch: &[files::LandingFile]) -> Result<Decoded> {
        self.shared().decode_files(source, batch).await
    }
}

/// What became of one flow in a pass.
enum Pass {
    /// Not started: membership was due to be read again first.
    Skipped,
    /// Ran (after reloading from its tables when it had failed before).
    Ran { reloaded: bool, result: Result<u64> },
}

/// What the flows of one bronze service share while they run concurrently
/// (`bronze.parallel_flows`): settings and handles, and the region's quarantine table behind a
/// lock (its commits go one at a time; each carries its own flow's txn, so they never conflict).
struct Shared<'a> {
    cfg: &'a Config,
    region: &'a str,
    landing: &'a Arc<dyn ObjectStore>,
    landing_uri: &'a str,
    landing_root: Option<&'a std::path::Path>,
    writer: &'a Writer,
    member: Option<&'a str>,
    quarantine: &'a tokio::sync::Mutex<Table>,
}

impl Shared<'_> {
    /// Reads and decodes files into bronze rows (typed later, once the schema is decided) and
    /// quarantine rows. The JSON work runs on `bronze.threads` threads over contiguous chunks of
    /// the batch's lines; rows are then appended in file/line order, so the result does not
    /// depend on the thread count.
    async fn decode_files(&self, source: &str, batch: &[files::LandingFile]) -> Result<Decoded> {
        let now = tributary_core::now_ms() * 1000;
        let mut raws: Vec<(files::LandingFile, std::result::Result<bytes::Bytes, files::Unreadable>)> =
            Vec::with_capacity(batch.len());
        for f in batch {
            let location = Path::from(f.path.as_str());
            // Lineage is the path inside the landing zone (`<source>/<file>`), so two pipelines fed
            // the same files (DR) hold the same logical rows whatever their landing roots.
            let raw = match self.landing.get(&location).await {
                Ok(r) => Ok(r
                    .bytes()
                    .await
                    .map_err(|e| Error::external(format!("reading landing file {}", f.path)).with_source(e))?),
                // Deleted after it was listed (or, on recovery, after its rows were committed):
                // reported in quarantine, never a stuck source.
                Err(object_store::Error::NotFound { .. }) => Err((
                    "landing_file_missing",
                    format!("{} was deleted before it could be read (bytes {}..{})", f.path, f.from, f.size),
                    bytes::Bytes::new(),
                )),
                Err(e) => {
                    return Err(Error::external(format!("reading landing file {}", f.path)).with_source(e));
                }
            };
            raws.push((f.clone(), raw));
        }
        let source_owned = source.to_string();
        let max_bytes = self.cfg.bronze.max_event_bytes;
        let threads = self.cfg.server.threads();
        tokio::task::spawn_blocking(move || {
            // gunzip on the worker threads too, a file per item (it was 5% of bronze, serial).
            let bodies: Vec<(String, files::Body, usize)> =
                tributary_core::parallel_map(&raws, threads, 1, |(f, raw)| match (raw, &f.changed) {
                    (Err(u), _) => (f.path.clone(), Err(u.clone()), 0),
                    (Ok(raw), Some(why)) => {
                        (f.path.clone(), Err(("landing_file_changed", why.clone(), raw.clone())), 0)
                    }
                    (Ok(raw), None) => {
                        let (body, base) = files::part(f, raw.clone());
                        (f.path.clone(), body, base)
                    }
                });
            drop(raws);
            let mut blank_lines = 0u64;
            let mut lines: Vec<(usize, usize, &[u8])> = Vec::new();
            for (fi, b, base) in
                bodies.iter().enumerate().filter_map(|(fi, (_, b, base))| b.as_ref().ok().map(|b| (fi, b, *base)))
            {
                for (li, l) in files::all_lines(b) {
                    if files::is_blank(l) {
                        blank_lines += 1;
                    } else {
                        lines.push((fi, base + li, l));
                    }
                }
            }
            let line_bytes: usize = lines.iter().map(|l| l.2.len()).sum();
            let mut bronze = BronzeRows::with_capacity(&source_owned, now, lines.len(), line_bytes);
            let mut quarantine = QuarantineRows::new(now);
            let mut lines_in = 0u64;
            decode_in_chunks(
                &lines,
                threads,
                &source_owned,
                max_bytes,
                |&(_, _, l)| l,
                |&(fi, idx, line), d| {
                    lines_in += 1;
                    let file_uri = bodies[fi].0.as_str();
                    match d {
                        Ok(d) => bronze.push(d, &Lineage::File { path: file_uri, line: idx as i64 }),
                        Err(r) => quarantine.push(
                            &source_owned,
                            r.code(),
                            None,
                            &r.detail(),
                            line,
                            None,
                            Some(file_uri),
                            Some(idx as i64),
                            None,
                        ),
                    }
                    Ok(())
                },
            )?;
            for (file_uri, b, _) in &bodies {
                if let Err((code, e, raw)) = b {
                    lines_in += 1;
                    quarantine.push(&source_owned, code, None, e, raw, None, Some(file_uri), None, None);
                }
            }
            Ok(Decoded { rows: bronze, quarantine: quarantine.finish()?, lines_in, blank_lines })
        })
        .await
        .map_err(|e| Error::internal("bronze decode task failed").with_source(e))?
    }

    /// Brings the quarantine table up to the data table's sequence for one flow.
    async fn catch_up_quarantine(&self, flow: &mut Flow) -> Result<()> {
        let (source, app_id, from, to) = {
            let f = &*flow;
            (f.source.clone(), f.app_id.clone(), f.quarantine_seq, f.seq)
        };
        if from >= to {
            return Ok(());
        }
        let mut batch = Vec::new();
        for s in (from + 1)..=to {
            batch.extend(flow.manifests.get(&s).cloned().unwrap_or_default());
        }
        let q = self.decode_files(&source, &batch).await?.quarantine;
        let rows: u64 = q.iter().map(|b| b.num_rows() as u64).sum();
        let meta = HashMap::from([("tributary.recovered_batches".to_string(), serde_json::json!([from + 1, to]))]);
        self.quarantine
            .lock()
            .await
            .commit_batch(
                Commit::new(&q, vec![PositionMove { app_id: app_id.clone(), from, to }], meta, 0),
                self.writer,
            )
            .await?;
        tracing::warn!(source, from, to, rows, "quarantine caught up with bronze after a restart");
        let f = &mut *flow;
        f.quarantine_seq = to;
        f.manifests.clear();
        Ok(())
    }

    async fn run_flow(&self, flow: &mut Flow) -> Result<u64> {
        if flow.stopped.is_some() {
            return Ok(0);
        }
        self.catch_up_quarantine(flow).await?;
        let source = flow.source.clone();
        let listed =
            files::list_above(self.landing, self.landing_root, &source, flow.discovery.frontier.as_deref()).await?;
        // A shared landing zone: this flow's slot only (its frontier is over its own files).
        let listed = if flow.slots > 1 {
            let (slot, slots) = (flow.slot, flow.slots);
            listed
                .into_iter()
                .filter(|m| tributary_delta::catalog::landing_slot(m.location.as_ref(), slots) == slot)
                .collect()
        } else {
            listed
        };
        // The frontier moves over what is already ingested (the batch committed last poll).
        flow.discovery.advance(&listed);
        let min_age = self.cfg.bronze.min_file_age_secs as i64;
        let now = chrono::Utc::now();
        let mut pending = Vec::new();
        for m in listed {
            // The age rule of the landing contract, for producers that cannot rename into place.
            if min_age > 0 && (now - m.last_modified).num_seconds() < min_age {
                continue;
            }
            let path = m.location.to_string();
            let gz = path.ends_with(".gz");
            pending.push(match flow.discovery.seen(&path, m.size) {
                files::Seen::New => files::LandingFile::whole(&path, m.size),
                files::Seen::Done => continue,
                files::Seen::Grown { from } if !gz => {
                    tracing::info!(file = %path, from, to = m.size, "landing file grew after ingestion: ingesting the appended bytes");
                    files::LandingFile { path, size: m.size, from, changed: None }
                }
                files::Seen::Grown { from } => files::LandingFile {
                    changed: Some(format!(
                        "{path} grew from {from} to {} bytes after it was ingested; a gzip file is not resumed, so its current bytes are kept here and not ingested again",
                        m.size
                    )),
                    ..files::LandingFile::whole(&path, m.size)
                },
                files::Seen::Shrunk { was } => files::LandingFile {
                    changed: Some(format!(
                        "{path} shrank from {was} to {} bytes after it was ingested (rewritten or truncated); its current bytes are kept here and not ingested again",
                        m.size
                    )),
                    ..files::LandingFile::whole(&path, m.size)
                },
            });
        }
        let batch =
            files::take_batch(pending, self.cfg.bronze.max_files_per_batch, self.cfg.bronze.max_bytes_per_batch);
        if batch.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        // The table is the checkpoint: re-read it so a concurrent writer is noticed before work.
        {
            let f = &mut *flow;
            f.table.expect_positions(&[(&f.app_id, f.seq)], 0).await?;
        }
        let seq = flow.seq + 1;

        let Decoded { rows, quarantine: q, lines_in, blank_lines } = self.decode_files(&source, &batch).await?;
        let prepared = {
            let f = &mut *flow;
            match schema::prepare(&mut f.table, f.mode, &f.hints, rows)? {
                schema::Step::Ready(p) => p,
                schema::Step::Stop(message) => {
                    tributary_core::event_log::flow_stopped(STAGE, self.region, &f.table.name, &message);
                    f.stopped = Some(message);
                    return Ok(0);
                }
            }
        };
        let written: u64 = prepared.rows;
        let quarantined: u64 = q.iter().map(|b| b.num_rows() as u64).sum();
        fault::point("bronze.before_write");
        let app_id = flow.app_id.clone();
        let member = self.member;
        let summary = serde_json::json!({"seq": seq, "app_id": app_id, "slots": flow.slots, "member": member,
                                         "landing": self.landing_uri, "files": batch.len(), "lines": lines_in, "blank_lines": blank_lines, "rows": written, "quarantined": quarantined});
        let quarantine_meta = HashMap::from([("tributary.batch".to_string(), summary.clone())]);
        let mut with_files = summary;
        with_files["ingested"] =
            serde_json::to_value(&batch).map_err(|e| Error::internal("file list").with_source(e))?;
        let meta = HashMap::from([("tributary.batch".to_string(), with_files)]);
        let moves = vec![PositionMove { app_id: app_id.clone(), from: seq - 1, to: seq }];
        let version = flow
            .table
            .commit_batch(
                Commit::new(&prepared.batches, moves, meta, 0)
                    .evolving(prepared.metadata.clone())
                    .fault("bronze.after_upload_before_commit"),
                self.writer,
            )
            .await?;
        fault::point("bronze.after_data_commit");
        tributary_core::metrics::blank_lines(self.region, &source, blank_lines);
        {
            let f = &mut *flow;
            schema::committed(self.region, &f.table.name, &prepared, &mut f.drift, lines_in, quarantined);
        }
        let max_event_ms = tributary_delta::max_event_ms(&prepared.batches);
        flow.table.notice(STAGE, self.region, version, written, max_event_ms);
        {
            let f = &mut *flow;
            f.seq = seq;
            f.discovery.record(&batch);
            f.manifests.insert(seq, batch.clone());
        }
        // Quarantine: its own txn for the same sequence, committed even when empty so that a
        // restart knows it has caught up; fenced like the data commit.
        let moves = vec![PositionMove { app_id: app_id.clone(), from: flow.quarantine_seq, to: seq }];
        self.quarantine.lock().await.commit_batch(Commit::new(&q, moves, quarantine_meta, 0), self.writer).await?;
        fault::point("bronze.after_quarantine_commit");
        {
            let f = &mut *flow;
            f.quarantine_seq = seq;
            f.manifests.clear();
        }
        BronzeIngest::maybe_write_index(&*flow, self.cfg.bronze.index_every_batches).await?;
        tributary_core::metrics::landing_discovery(self.region, &source, flow.discovery.recent.len() as u64);
        BatchCommitted {
            stage: STAGE,
            region: self.region,
            table: &format!("bronze/{source}"),
            version,
            input_rows: lines_in,
            written,
            quarantined,
            duplicates: 0,
            dropped: 0,
            seconds: started.elapsed().as_secs_f64(),
            input_position: &format!("{app_id}={seq}"),
            max_event_ms,
        }
        .emit();
        Ok(lines_in.max(1))
    }
}

#[tonic::async_trait]
impl Stage for BronzeIngest {
    fn stage(&self) -> &str {
        STAGE
    }
    fn region(&self) -> &str {
        &self.region
    }

    async fn run_once(&mut self) -> Result<u64> {
        if let Some(m) = self.members.as_mut()
            && m.beat().await?
        {
            self.rebuild_flows()?;
        }
        // Up to `bronze.parallel_flows` flows (sources, slots) at once, each with its own batch,
        // table and commit: their decode, typing, Parquet encoding and commits overlap, so a
        // region's sources use every core. Round-robin start, so when fewer run at once than
        // there are flows no source starves.
        let n = self.flows.len();
        let parallel = self.cfg.bronze.parallel_flows.max(1);
        let every = self.cfg.bronze.index_every_batches;
        let start = self.next_flow;
        let order = |k: usize| (k + n - start) % n.max(1);
        // The flows are lent to the pass (each future borrows its own one mutably beside the
        // shared parts) and put back when it ends; nothing in between returns early, and the
        // stage loop always awaits a pass to its end (it is never cancelled midway).
        let mut flows = std::mem::take(&mut self.flows);
        let shared = self.shared();
        // With replicas sharing the landing zone, no flow starts once membership is due to be
        // read again: a long pass must not keep running slots that moved to another replica.
        let recheck = self.members.as_ref().map(|m| m.next_check());
        let health = &self.health;
        let mut due: Vec<(usize, bool, &mut Flow)> = flows
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| health.due(*i))
            .map(|(i, f)| (i, health.needs_reload(i), f))
            .collect();
        due.sort_by_key(|(i, _, _)| order(*i));
        let shared = &shared;
        type Run<'a> = futures::future::BoxFuture<'a, (usize, Pass)>;
        let runs: Vec<Run<'_>> = due
            .into_iter()
            .map(|(i, reload, flow)| -> Run<'_> {
                Box::pin(async move {
                    if recheck.is_some_and(|t| Instant::now() >= t) {
                        return (i, Pass::Skipped);
                    }
                    let mut reloaded = false;
                    let result = async {
                        if reload {
                            let mut q = shared.quarantine.lock().await;
                            q.refresh().await?;
                            Self::load_flow(flow, &q, every).await?;
                            reloaded = true;
                        }
                        shared.run_flow(flow).await
                    }
                    .await;
                    (i, Pass::Ran { reloaded, result })
                })
            })
            .collect();
        let outcomes: Vec<(usize, Pass)> = futures::stream::iter(runs).buffer_unordered(parallel).collect().await;
        self.flows = flows;
        let mut total = 0;
        // The next pass starts at the first flow this one skipped (or one further round-robin).
        let mut first_skipped: Option<usize> = None;
        for (i, pass) in outcomes {
            match pass {
                Pass::Skipped => {
                    if first_skipped.is_none_or(|f| order(i) < order(f)) {
                        first_skipped = Some(i);
                    }
                }
                Pass::Ran { reloaded, result } => {
                    if reloaded {
                        self.health.reloaded(i);
                    }
                    total += self
                        .health
                        .record(i, result, STAGE, &self.region, || format!("bronze/{}", self.flows[i].source));
                }
            }
        }
        self.next_flow = first_skipped.unwrap_or((self.next_flow + 1) % n.max(1));
        // Skipped flows may have work: this pass is not an idle one.
        if first_skipped.is_some() {
            total = total.max(1);
        }
        Ok(total)
    }

    fn caught_up(&self) -> bool {
        self.health.healthy()
    }

    async fn recover(&mut self) -> Result<()> {
        // Each flow reloads itself (isolated) before its next run: see `run_once`.
        self.health.reload_all();
        Ok(())
    }

    async fn stopping(&mut self) {
        // Hand this replica's slots to the others now rather than after the heartbeat expires.
        if let Some(m) = self.members.as_mut() {
            m.leave().await;
        }
    }

    async fn status(&mut self) -> StageStatus {
        let mut tables = Vec::new();
        let mut positions = Vec::new();
        let quarantine_name = self.quarantine.get_mut().name.clone();
        let stopped: Vec<&str> = self.flows.iter().filter_map(|f| f.stopped.as_deref()).collect();
        for f in &self.flows {
            tables.push(f.table.status(Some("event_time")));
            positions.push(InputPosition {
                app_id: f.app_id.clone(),
                output_table: f.table.name.clone(),
                version: f.seq,
            });
            positions.push(InputPosition {
                app_id: f.app_id.clone(),
                output_table: quarantine_name.clone(),
                version: f.quarantine_seq,
            });
        }
        tables.push(self.quarantine.get_mut().status(None));
        StageStatus {
            stage: STAGE.into(),
            region: self.region.clone(),
            tables,
            positions,
            counters: tributary_core::metrics::stage_counters(STAGE, &self.region),
            last_error: self.health.last_error(&stopped),
        }
    }
}

/// Runs the service for one region until `shutdown`.
pub async fn run(
    cfg: Arc<Config>,
    region: &str,
    shutdown: tributary_core::Shutdown,
    notices: Option<tributary_core::stage::NoticeHook>,
) -> Result<()> {
    let stage = BronzeIngest::build(cfg.clone(), region).await?;
    tributary_core::stage::serve_stages(STAGE, &cfg, vec![Box::new(stage)], shutdown, notices).await
}

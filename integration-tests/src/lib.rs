//! Harness for the end-to-end suites: runs the real `tributary` binary against real Delta tables
//! in temporary directories and checks every layer against the generator's ground truth.

use anyhow::{Context, Result, bail, ensure};
use deltalake::arrow::array::{
    Array, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use gold_aggregate::window::GoldKind;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tributary_core::Config;
use tributary_delta::Table;
use tributary_events::truth::Truth;

/// The `tributary` binary (built by `make test` before the suite runs).
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("TRIBUTARY_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/tributary");
    assert!(p.exists(), "{} not found: build it first (`cargo build --bins`; `make test` does)", p.display());
    p
}

/// A pipeline in a temporary directory.
pub struct Pipeline {
    _dir: tempfile::TempDir,
    /// Local directory: generator output, truth, and the tables unless `root` says otherwise.
    pub data: PathBuf,
    /// `data_root` of the services when not `data` (an `s3://` URI).
    pub root: Option<String>,
    pub regions: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub struct GenSpec {
    pub events_per_source: u64,
    pub files_per_source: u64,
    pub seed: u64,
}

impl Pipeline {
    pub fn new(regions: &[&str]) -> Self {
        let dir = tempfile::Builder::new().prefix("tributary-it-").tempdir().expect("tempdir");
        let data = dir.path().join("data");
        Self { _dir: dir, data, root: None, regions: regions.iter().map(|s| s.to_string()).collect(), env: vec![] }
    }

    pub fn clone_env(&self) -> Vec<(String, String)> {
        self.env.clone()
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .arg("--data")
            .arg(self.root.clone().unwrap_or_else(|| self.data.display().to_string()))
            .arg("--regions")
            .arg(self.regions.join(","))
            .env("RUST_LOG", "warn")
            .env_remove("TRIBUTARY_FAULT");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn generate(&self, g: &GenSpec) -> Result<Truth> {
        self.generate_with(g, &[])
    }

    pub fn generate_with(&self, g: &GenSpec, extra: &[&str]) -> Result<Truth> {
        let (e, f, s) = (g.events_per_source.to_string(), g.files_per_source.to_string(), g.seed.to_string());
        let mut args = vec!["generate", "--events-per-source", &e, "--files-per-source", &f, "--seed", &s];
        args.extend_from_slice(extra);
        let out = self.command(&args).output()?;
        ensure!(out.status.success(), "generate failed: {}", String::from_utf8_lossy(&out.stderr));
        Truth::load(&self.truth_path())
    }

    pub fn truth_path(&self) -> PathBuf {
        self.data.join("truth/truth.json")
    }

    /// Runs `standalone --exit-when-idle` with extra args/env; returns the output.
    pub fn standalone(&self, extra: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut args = vec!["standalone", "--exit-when-idle", "--timeout-secs", "300"];
        args.extend_from_slice(extra);
        let mut c = self.command(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        Ok(c.stdout(Stdio::piped()).stderr(Stdio::piped()).output()?)
    }

    pub fn run_to_completion(&self, extra: &[&str]) -> Result<Output> {
        let out = self.standalone(extra, &[])?;
        ensure!(
            out.status.success(),
            "standalone failed ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            tail(&out.stderr, 4000)
        );
        Ok(out)
    }

    /// Runs one `central-federator --trigger available-now` per region, all at once (separate
    /// processes racing for the central tables' versions); fails unless every one succeeds.
    pub fn federators_at_once(&self, regions: &[&str]) -> Result<()> {
        let children: Vec<_> = regions
            .iter()
            .map(|region| {
                self.command(&["central-federator", "--region", region, "--trigger", "available-now"])
                    .env("RUST_LOG", "warn,tributary_core=warn")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<std::io::Result<_>>()?;
        for (region, child) in regions.iter().zip(children) {
            let out = child.wait_with_output()?;
            ensure!(out.status.success(), "federator {region}: {}", tail(&out.stderr, 3000));
        }
        Ok(())
    }

    pub fn config(&self) -> Config {
        let data_root = self.root.clone().unwrap_or_else(|| self.data.display().to_string());
        Config { data_root, regions: self.regions.clone(), ..Config::default() }
    }

    /// `tributary fingerprint`: table -> fingerprint of its logical content.
    pub fn fingerprints(&self) -> Result<BTreeMap<String, String>> {
        let out = self.command(&["fingerprint"]).output()?;
        ensure!(out.status.success(), "fingerprint failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect())
    }
}

pub fn tail(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(b);
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_string()
}

fn strs(b: &RecordBatch, name: &str) -> Result<StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
        .with_context(|| format!("column {name}"))
}
fn i64s(b: &RecordBatch, name: &str) -> Result<Int64Array> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned())
        .with_context(|| format!("column {name}"))
}
fn times(b: &RecordBatch, name: &str) -> Result<TimestampMicrosecondArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>().cloned())
        .with_context(|| format!("column {name}"))
}
fn decs(b: &RecordBatch, name: &str) -> Result<Decimal128Array> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Decimal128Array>().cloned())
        .with_context(|| format!("column {name}"))
}

pub async fn read(location: &str) -> Result<Vec<RecordBatch>> {
    let t = Table::open_existing("t", location).await?.with_context(|| format!("no table at {location}"))?;
    Ok(t.read_all().await?)
}

fn ms_rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn dec_text(v: i128) -> String {
    rust_decimal::Decimal::from_i128_with_scale(v, tributary_events::contract::DECIMAL_SCALE).normalize().to_string()
}

fn ids_file(truth_dir: &Path, region: &str, name: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(truth_dir.join("ids").join(region).join(name))?;
    Ok(text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

fn counts_by(batches: &[RecordBatch], col: &str) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for b in batches {
        let c = strs(b, col)?;
        for i in 0..c.len() {
            *m.entry(c.value(i).to_string()).or_insert(0) += 1;
        }
    }
    Ok(m)
}

/// (region|source|workspace|minute -> count) from a gold/central event-count table.
fn gold_counts(batches: &[RecordBatch], region: &str) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for b in batches {
        let (r, s, w, t, n) = (
            strs(b, "region")?,
            strs(b, "source")?,
            strs(b, "workspace_id")?,
            times(b, "window_start")?,
            i64s(b, "event_count")?,
        );
        for i in 0..b.num_rows() {
            if r.value(i) != region {
                continue;
            }
            let k = format!("{}|{}|{}|{}", r.value(i), s.value(i), w.value(i), ms_rfc3339(t.value(i)));
            ensure!(m.insert(k.clone(), n.value(i) as u64).is_none(), "duplicate gold row {k}");
        }
    }
    Ok(m)
}

/// (region|customer|sku|window -> (exact dbu text, events)) from a billing table: window and
/// adjustment rows summed (the invoice); at most one `window` row per key.
pub fn gold_billing(batches: &[RecordBatch], region: &str) -> Result<BTreeMap<String, (String, u64)>> {
    let mut m: BTreeMap<String, (i128, u64)> = BTreeMap::new();
    let mut windows = BTreeSet::new();
    for b in batches {
        let (r, c, k, t, d, n, ty) = (
            strs(b, "region")?,
            strs(b, "customer_id")?,
            strs(b, "sku")?,
            times(b, "window_start")?,
            decs(b, "dbu")?,
            i64s(b, "event_count")?,
            strs(b, "record_type")?,
        );
        for i in 0..b.num_rows() {
            if r.value(i) != region {
                continue;
            }
            let key = format!("{}|{}|{}|{}", r.value(i), c.value(i), k.value(i), ms_rfc3339(t.value(i)));
            if ty.value(i) == "window" {
                ensure!(windows.insert(key.clone()), "duplicate billing window row {key}");
            }
            let e = m.entry(key).or_insert((0, 0));
            e.0 += d.value(i);
            e.1 += n.value(i) as u64;
        }
    }
    Ok(m.into_iter().map(|(k, (d, n))| (k, (dec_text(d), n))).collect())
}

/// Rolls a truth map keyed "region|a|b|<RFC 3339 window start>" up to windows of `unit_us`.
fn roll_up<V: Copy + std::ops::AddAssign + Default>(m: &BTreeMap<String, V>, unit_us: i64) -> BTreeMap<String, V> {
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let (head, t) = k.rsplit_once('|').unwrap_or(("", k));
        let us = chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp_micros()).unwrap_or(0);
        *out.entry(format!("{head}|{}", ms_rfc3339(us.div_euclid(unit_us) * unit_us))).or_default() += *v;
    }
    out
}

fn sorted_ids(batches: &[RecordBatch], filter: Option<(&str, &str)>) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for b in batches {
        let ids = strs(b, "event_id")?;
        let f = match filter {
            Some((col, _)) => Some(strs(b, col)?),
            None => None,
        };
        for i in 0..ids.len() {
            if let (Some(f), Some((_, want))) = (&f, filter)
                && f.value(i) != want
            {
                continue;
            }
            v.push(ids.value(i).to_string());
        }
    }
    v.sort();
    Ok(v)
}

/// Checks every layer of every region, and the central tables, against the ground truth.
pub async fn verify_against_truth(cfg: &Config, truth: &Truth, truth_dir: &Path) -> Result<()> {
    verify(cfg, truth, truth_dir, true).await
}

/// As `verify_against_truth` but without bronze and quarantine row counts (which re-delivered
/// files add to by design): silver, gold, central and the entity tables.
pub async fn verify_layers(cfg: &Config, truth: &Truth, truth_dir: &Path) -> Result<()> {
    verify(cfg, truth, truth_dir, false).await
}

async fn verify(cfg: &Config, truth: &Truth, truth_dir: &Path, counts: bool) -> Result<()> {
    let central_events = read(&central_federator::events_location(cfg)).await?;
    let central_counts = read(&central_federator::gold_location(cfg, GoldKind::EventCounts)).await?;
    let central_billing = read(&central_federator::gold_location(cfg, GoldKind::Billing)).await?;
    for region in &cfg.regions {
        let rt = truth.regions.get(region).with_context(|| format!("truth has no region {region}"))?;
        let bq = counts_by(&read(&bronze_ingest::quarantine_location(cfg, region)).await?, "source")?;
        let sq = counts_by(&read(&silver_transform::quarantine_location(cfg, region)).await?, "source")?;
        for (source, t) in rt {
            let bronze: u64 = read(&bronze_ingest::table_location(cfg, region, source))
                .await?
                .iter()
                .map(|b| b.num_rows() as u64)
                .sum();
            let q = bq.get(source).copied().unwrap_or(0);
            if counts {
                ensure!(
                    bronze == t.bronze_rows(),
                    "{region}/bronze/{source}: {bronze} rows, truth {}",
                    t.bronze_rows()
                );
                ensure!(q == t.malformed, "{region}/bronze quarantine {source}: {q}, truth {}", t.malformed);
            }
            let silver = read(&silver_transform::table_location(cfg, region, source)).await?;
            let ids = sorted_ids(&silver, None)?;
            let want = ids_file(truth_dir, region, &format!("{source}.txt"))?;
            ensure!(
                ids.len() == want.len(),
                "{region}/silver/{source}: {} rows, truth {} unique valid",
                ids.len(),
                want.len()
            );
            ensure!(ids == want, "{region}/silver/{source}: event_ids differ from the unique valid set");
            let q = sq.get(source).copied().unwrap_or(0);
            ensure!(
                !counts || q == t.null_id,
                "{region}/silver quarantine {source}: {q}, truth {} null ids",
                t.null_id
            );
            let central = sorted_ids(&central_events, Some(("region", region)))?;
            let _ = central;
            let mut c_ids = Vec::new();
            for b in &central_events {
                let (r, s, id) = (strs(b, "region")?, strs(b, "source")?, strs(b, "event_id")?);
                for i in 0..b.num_rows() {
                    if r.value(i) == region && s.value(i) == source {
                        c_ids.push(id.value(i).to_string());
                    }
                }
            }
            c_ids.sort();
            let want = ids_file(truth_dir, region, &format!("{source}.egress.txt"))?;
            ensure!(
                c_ids.len() == want.len(),
                "central/events {region}/{source}: {} rows, truth {} egress-approved",
                c_ids.len(),
                want.len()
            );
            ensure!(c_ids == want, "central/events {region}/{source}: ids differ from the egress-approved set");
        }
        // Gold counts: exactly the truth's per-minute counts.
        let gold =
            gold_counts(&read(&gold_aggregate::table_location(cfg, region, GoldKind::EventCounts)).await?, region)?;
        let want: BTreeMap<String, u64> = truth
            .event_counts_minute
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{region}|")))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if gold != want {
            let diff: Vec<_> = gold.iter().filter(|(k, v)| want.get(*k) != Some(v)).take(5).collect();
            bail!(
                "{region}/gold/event_counts_minute differs from truth ({} vs {} rows), e.g. {diff:?}",
                gold.len(),
                want.len()
            );
        }
        ensure!(
            gold_counts(&central_counts, region)? == gold,
            "central/event_counts_minute for {region} differs from the region's gold"
        );
        // Gold billing: exact decimal sums.
        let billing =
            gold_billing(&read(&gold_aggregate::table_location(cfg, region, GoldKind::Billing)).await?, region)?;
        let want: BTreeMap<String, (String, u64)> = truth
            .billing_hourly
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{region}|")))
            .map(|(k, v)| (k.clone(), (v.clone(), truth.billing_hourly_events.get(k).copied().unwrap_or(0))))
            .collect();
        if billing != want {
            let diff: Vec<_> = billing.iter().filter(|(k, v)| want.get(*k) != Some(v)).take(5).collect();
            bail!(
                "{region}/gold/billing_usage_hourly differs from truth ({} vs {} rows), e.g. {diff:?}",
                billing.len(),
                want.len()
            );
        }
        ensure!(
            gold_billing(&central_billing, region)? == billing,
            "central/billing_usage_hourly for {region} differs from the region's gold"
        );
    }
    for region in &cfg.regions {
        verify_rollups(cfg, truth, region).await?;
        verify_entities(cfg, region).await?;
    }
    verify_region_watermarks(cfg).await?;
    let regions: BTreeSet<String> = counts_by(&central_events, "region")?.into_keys().collect();
    ensure!(regions.iter().all(|r| cfg.regions.contains(r)), "central holds rows of unknown regions: {regions:?}");
    Ok(())
}

/// Free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits for a child with a deadline; kills it when the deadline passes.
pub fn wait_with_deadline(child: &mut std::process::Child, secs: u64) -> Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            bail!("process did not finish within {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A real Kafka-protocol broker (tansu, sqlite storage) on a loopback port, started and stopped
/// by the test itself.
pub struct Broker {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: PathBuf,
}

pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TRIBUTARY_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/tributary/tansu-0.6.0/bin/tansu");
    assert!(p.exists(), "tansu broker not found at {} (`make test` installs it; or set TRIBUTARY_TANSU)", p.display());
    p
}

impl Broker {
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut b = Self { child: None, port: free_port(), dir: dir.to_path_buf() };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log"))?;
        let child = Command::new(tansu_bin())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
                "--silent",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tansu")?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            ensure!(std::time::Instant::now() < deadline, "tansu did not listen on {} within 30s", self.port);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL the broker (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker: requests sent meanwhile wait in its
    /// sockets and are applied when it thaws, in an order no client controls.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, if frozen { libc::SIGSTOP } else { libc::SIGCONT });
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The consumer group's committed offsets per (topic, partition).
pub fn group_offsets(brokers: &str, group: &str, topics: &[(String, i32)]) -> Result<BTreeMap<(String, i32), i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (t, p) in topics {
        tpl.add_partition(t, *p);
    }
    let got = c.committed_offsets(tpl, std::time::Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for e in got.elements() {
        let o = match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => -1,
        };
        out.insert((e.topic().to_string(), e.partition()), o);
    }
    Ok(out)
}

/// The bronze tables' txn versions per (topic, partition) for a Kafka pipeline.
pub async fn kafka_txn_versions(
    cfg: &Config,
    region: &str,
    topics: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), i64>> {
    let mut out = BTreeMap::new();
    for source in &cfg.bronze.sources {
        let t = Table::open_existing("b", &bronze_ingest::table_location(cfg, region, source))
            .await?
            .context("bronze table")?;
        let topic = cfg.kafka.topic_for(source).replace("{region}", region);
        for (tt, p) in topics.iter().filter(|(tt, _)| *tt == topic) {
            let v = t.txn_version(&bronze_ingest::kafka::app_id(&cfg.pipeline, tt, *p)).await?.unwrap_or(-1);
            out.insert((tt.clone(), *p), v);
        }
    }
    Ok(out)
}

/// Bronze rows and quarantined rows per source of one region.
pub async fn bronze_counts(cfg: &Config, region: &str) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>)> {
    let mut rows = BTreeMap::new();
    for source in &cfg.bronze.sources {
        let n = match Table::open_existing("b", &bronze_ingest::table_location(cfg, region, source)).await? {
            Some(t) => t.stats(None)?.row_count as u64,
            None => 0,
        };
        rows.insert(source.clone(), n);
    }
    let q = match Table::open_existing("q", &bronze_ingest::quarantine_location(cfg, region)).await? {
        Some(_) => counts_by(&read(&bronze_ingest::quarantine_location(cfg, region)).await?, "source")?,
        None => BTreeMap::new(),
    };
    Ok((rows, q))
}

/// No event_id appears twice in a bronze table (Kafka exactly-once check: keys are event_ids,
/// and the generator's duplicates are separate messages, so compare per (partition, offset)).
pub async fn bronze_kafka_positions_unique(cfg: &Config, region: &str) -> Result<u64> {
    let mut n = 0;
    for source in &cfg.bronze.sources {
        let mut seen = BTreeSet::new();
        for b in read(&bronze_ingest::table_location(cfg, region, source)).await? {
            let parts = b
                .column_by_name("_kafka_partition")
                .and_then(|c| c.as_any().downcast_ref::<deltalake::arrow::array::Int32Array>().cloned())
                .context("_kafka_partition")?;
            let offs = i64s(&b, "_kafka_offset")?;
            for i in 0..b.num_rows() {
                ensure!(
                    seen.insert((parts.value(i), offs.value(i))),
                    "{source}: offset {}/{} twice in bronze",
                    parts.value(i),
                    offs.value(i)
                );
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Hourly and daily counts and daily billing: the truth's minute and hourly figures rolled up.
async fn verify_rollups(cfg: &Config, truth: &Truth, region: &str) -> Result<()> {
    let minute: BTreeMap<String, u64> = truth
        .event_counts_minute
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{region}|")))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (kind, unit) in [(GoldKind::EventCountsHourly, 3_600_000_000i64), (GoldKind::EventCountsDaily, 86_400_000_000)]
    {
        let got = gold_counts(&read(&gold_aggregate::table_location(cfg, region, kind)).await?, region)?;
        ensure!(got == roll_up(&minute, unit), "{region}/gold/{} differs from the truth rolled up", kind.table_name());
    }
    let mut hourly: BTreeMap<String, (rust_decimal::Decimal, u64)> = BTreeMap::new();
    for (k, v) in truth.billing_hourly.iter().filter(|(k, _)| k.starts_with(&format!("{region}|"))) {
        let d: rust_decimal::Decimal = v.parse()?;
        hourly.insert(k.clone(), (d, truth.billing_hourly_events.get(k).copied().unwrap_or(0)));
    }
    let mut daily: BTreeMap<String, (rust_decimal::Decimal, u64)> = BTreeMap::new();
    for (k, (d, n)) in hourly {
        let rolled = roll_up(&BTreeMap::from([(k, 0u64)]), 86_400_000_000);
        let key = rolled.into_keys().next().unwrap_or_default();
        let e = daily.entry(key).or_default();
        e.0 += d;
        e.1 += n;
    }
    let want: BTreeMap<String, (String, u64)> =
        daily.into_iter().map(|(k, (d, n))| (k, (d.normalize().to_string(), n))).collect();
    let got = gold_billing(&read(&gold_aggregate::table_location(cfg, region, GoldKind::BillingDaily)).await?, region)?;
    ensure!(got == want, "{region}/gold/billing_usage_daily differs from the truth rolled up");
    Ok(())
}

/// The entity tables against an independent reading of silver: per key, the change with the
/// greatest (sequence, event_id) is the current row unless it is a delete; history holds every
/// change with a non-NULL key and sequence, each ending where the key's next one starts.
async fn verify_entities(cfg: &Config, region: &str) -> Result<()> {
    use silver_transform::entities::{current_location, history_location};
    for e in cfg.silver.entities.iter().filter(|e| cfg.bronze.sources.contains(&e.source)) {
        let silver = read(&silver_transform::table_location(cfg, region, &e.source)).await?;
        let mut best: BTreeMap<String, (i64, String, bool)> = BTreeMap::new();
        let mut changes = 0usize;
        for b in &silver {
            let keys = strs(b, &e.keys[0])?;
            let ids = strs(b, "event_id")?;
            let seq: Vec<Option<i64>> = match b.column_by_name(&e.sequence_by).map(|c| c.data_type().clone()) {
                Some(deltalake::arrow::datatypes::DataType::Int64) => {
                    let a = i64s(b, &e.sequence_by)?;
                    (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect()
                }
                _ => {
                    let a = times(b, &e.sequence_by)?;
                    (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect()
                }
            };
            let state = b.column_by_name("state").map(|_| strs(b, "state")).transpose()?;
            for (i, s) in seq.into_iter().enumerate() {
                let (Some(s), true) = (s, keys.is_valid(i)) else { continue };
                changes += 1;
                let deleted = e.delete_when.is_some()
                    && state.as_ref().is_some_and(|st| st.is_valid(i) && st.value(i) == "DELETED");
                let cand = (s, ids.value(i).to_string(), deleted);
                let entry = best.entry(keys.value(i).to_string()).or_insert(cand.clone());
                if (cand.0, &cand.1) > (entry.0, &entry.1) {
                    *entry = cand;
                }
            }
        }
        let want: BTreeMap<String, String> = best.into_iter().filter(|(_, v)| !v.2).map(|(k, v)| (k, v.1)).collect();
        let cur = read(&current_location(cfg, region, &e.name)).await?;
        let hist = read(&history_location(cfg, region, &e.name)).await?;
        let snap = silver_transform::entities::snapshot(&hist, &cur, &e.keys)?;
        ensure!(snap.current == want, "{region}/silver/{}: current state differs from silver's latest changes", e.name);
        ensure!(
            snap.history.len() == changes,
            "{region}/silver/{}_history: {} rows, silver has {changes} changes",
            e.name,
            snap.history.len()
        );
        ensure!(changes > 0, "{region}/silver/{}: no changes at all; the check proves nothing", e.name);
    }
    Ok(())
}

/// `central/region_watermarks`: per region and source, the max event_time equals silver's.
async fn verify_region_watermarks(cfg: &Config) -> Result<()> {
    let wm = read(&central_federator::watermarks_location(cfg)).await?;
    // The run's lateness may come from the environment, so: one lateness for every row.
    let mut lateness: Option<i64> = None;
    for region in &cfg.regions {
        for source in &cfg.bronze.sources {
            let mut max = None;
            for b in read(&silver_transform::table_location(cfg, region, source)).await? {
                let t = times(&b, "event_time")?;
                for i in 0..t.len() {
                    max = max.max(Some(t.value(i)));
                }
            }
            let mut seen = None;
            for b in &wm {
                let (r, s, g, m, w) = (
                    strs(b, "region")?,
                    strs(b, "source")?,
                    strs(b, "gold_table")?,
                    times(b, "max_event_time")?,
                    times(b, "watermark")?,
                );
                for i in 0..b.num_rows() {
                    if r.value(i) == region && s.value(i) == source && g.value(i) == "event_counts_minute" {
                        ensure!(seen.is_none(), "two region_watermarks rows for {region}/{source}");
                        let l = m.value(i) - w.value(i);
                        ensure!(
                            l >= 0 && *lateness.get_or_insert(l) == l,
                            "{region}/{source}: watermark != max - lateness"
                        );
                        seen = Some(m.value(i));
                    }
                }
            }
            ensure!(
                seen == max,
                "central/region_watermarks {region}/{source}: {seen:?}, silver max event_time {max:?}"
            );
        }
    }
    Ok(())
}

/// A plain HTTP/1.0 GET on loopback (no chunked encoding): (status code, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `prometheus` binary: `TRIBUTARY_PROMETHEUS`, else from `PATH` (`make test` installs
/// Debian's package).
pub fn prometheus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TRIBUTARY_PROMETHEUS") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("prometheus");
        if p.exists() {
            return p;
        }
    }
    panic!("prometheus not found (`make test` installs it: apt-get install prometheus; or set TRIBUTARY_PROMETHEUS)");
}

/// Every record of partitions `0..partitions` of `topic`, read from the start to the end offsets
/// of the moment: (key, payload, partition, offset), each partition in order.
pub fn read_topic(brokers: &str, topic: &str, partitions: i32) -> Vec<(String, String, i32, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use std::time::{Duration, Instant};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut out = Vec::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(30)).unwrap();
        if high > 0 {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(0)).unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    while ends.iter().any(|(p, h)| next.get(p).copied().unwrap_or(0) < *h) {
        assert!(Instant::now() < deadline, "reading {topic} timed out at {next:?} of {ends:?}");
        if let Some(m) = c.poll(Duration::from_millis(500)) {
            let m = m.unwrap();
            next.insert(m.partition(), m.offset() + 1);
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                m.partition(),
                m.offset(),
            ));
        }
    }
    out
}

/// A real S3 API: moto's server on a loopback port, one per test process (it exits with the
/// process), each test in its own bucket. The test process's own table reads go to it too
/// (`tributary_delta::store` is configured once, with a credentials file).
pub struct S3 {
    pub port: u16,
    pub endpoint: String,
    pub credentials_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn s3() -> &'static S3 {
    static S3_SERVER: std::sync::OnceLock<S3> = std::sync::OnceLock::new();
    S3_SERVER.get_or_init(|| S3::start().expect("starting the S3 API server (moto)"))
}

impl S3 {
    fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tributary-s3-").tempdir()?;
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/s3_server.py");
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let mut child = Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting moto (`make test-deps` installs it into .cache/venv)")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = child.try_wait()? {
                bail!(
                    "moto exited ({st}): {}",
                    std::fs::read_to_string(dir.path().join("moto.log")).unwrap_or_default()
                );
            }
            ensure!(std::time::Instant::now() < deadline, "moto did not listen on {port} within 60s");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let credentials_file = dir.path().join("credentials");
        std::fs::write(
            &credentials_file,
            "[default]\naws_access_key_id = testing\naws_secret_access_key = not-a-secret-0\n",
        )?;
        let me = Self { port, endpoint: format!("http://127.0.0.1:{port}"), credentials_file, _dir: dir };
        tributary_delta::store::configure(&me.settings(&me.endpoint))?;
        Ok(me)
    }

    /// `[storage.s3]` pointing at `endpoint` (this server, or a proxy in front of it).
    pub fn settings(&self, endpoint: &str) -> tributary_core::config::S3Config {
        tributary_core::config::S3Config {
            endpoint: endpoint.to_string(),
            region: "us-east-1".into(),
            allow_http: true,
            credentials_file: self.credentials_file.display().to_string(),
            retry_timeout_secs: 5,
            ..Default::default()
        }
    }

    /// The environment that points a `tributary` process at `endpoint`.
    pub fn env(&self, endpoint: &str) -> Vec<(String, String)> {
        vec![
            ("TRIBUTARY__STORAGE__S3__ENDPOINT".into(), endpoint.to_string()),
            ("TRIBUTARY__STORAGE__S3__ALLOW_HTTP".into(), "true".into()),
            ("TRIBUTARY__STORAGE__S3__REGION".into(), "us-east-1".into()),
            ("TRIBUTARY__STORAGE__S3__RETRY_TIMEOUT_SECS".into(), "5".into()),
            ("TRIBUTARY__STORAGE__S3__CREDENTIALS_FILE".into(), self.credentials_file.display().to_string()),
        ]
    }

    /// Creates bucket `name` (moto takes an unsigned CreateBucket); returns `s3://name`.
    pub fn bucket(&self, name: &str) -> Result<String> {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            c,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut resp = String::new();
        c.read_to_string(&mut resp)?;
        ensure!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
            "create bucket {name}: {}",
            resp.lines().next().unwrap_or("")
        );
        Ok(format!("s3://{name}"))
    }

    /// Copies every file under the local `dir` to `uri` (same relative keys).
    pub async fn upload_dir(&self, dir: &Path, uri: &str) -> Result<usize> {
        use deltalake::logstore::object_store::ObjectStoreExt as _;
        let store = tributary_delta::store::root_store(uri)?;
        let mut stack = vec![dir.to_path_buf()];
        let mut n = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                let key = p.strip_prefix(dir)?.to_string_lossy().to_string();
                store.put(&deltalake::Path::from(key), std::fs::read(&p)?.into()).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The Python with the test dependencies (`make test-deps`: .cache/venv).
pub fn python() -> PathBuf {
    PathBuf::from(std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| "python3".into()))
}

/// The independent reader: `python/check_tables.py` (the Python `deltalake` package) reads the
/// bronze, quarantine and gold tables under `data_root` and must agree with the truth.
pub fn python_reader_agrees(data_root: &str, truth: &Path, env: &[(String, String)]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/check_tables.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(data_root)
        .arg(truth)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .with_context(|| format!("cannot run {} (`make test` installs the Python reader)", python().display()))?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("agrees"),
        "python reader check failed (`make test` installs deltalake into .cache/venv):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

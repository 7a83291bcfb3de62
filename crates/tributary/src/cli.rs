use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tributary_core::{Config, Shutdown};
use tributary_events::generator::GenConfig;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "Telemetry lakehouse pipeline: bronze → silver → gold → central on Delta Lake"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
pub struct Common {
    /// TOML config file (defaults < file < TRIBUTARY__SECTION__KEY environment variables).
    #[arg(long, short = 'c', env = "TRIBUTARY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides `data_root`.
    #[arg(long)]
    pub data: Option<String>,
    /// Overrides `regions` (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub regions: Option<Vec<String>>,
    /// Overrides `server.grpc_addr`.
    #[arg(long)]
    pub grpc_addr: Option<String>,
    /// Overrides `server.admin_addr`.
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// Overrides `kafka.brokers` (enables commit notices, and Kafka ingest with --from kafka).
    #[arg(long)]
    pub brokers: Option<String>,
    /// `continuous` (default) keeps polling; `available-now` processes what is there and exits.
    #[arg(long, default_value = "continuous", value_parser = ["continuous", "available-now"])]
    pub trigger: String,
}

impl Common {
    pub fn load(&self) -> Result<Config, String> {
        let mut cfg = Config::load(self.config.as_deref()).map_err(|e| e.to_string())?;
        if let Some(d) = &self.data {
            cfg.data_root = d.clone();
        }
        if let Some(r) = &self.regions {
            cfg.regions = r.clone();
        }
        if let Some(a) = &self.grpc_addr {
            cfg.server.grpc_addr = a.clone();
        }
        if let Some(a) = &self.admin_addr {
            cfg.server.admin_addr = a.clone();
        }
        if let Some(b) = &self.brokers {
            cfg.kafka.brokers = b.clone();
        }
        let cfg = cfg.validate().map_err(|e| e.to_string())?;
        tributary_delta::store::configure(&cfg.storage.s3).map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

#[derive(Args, Clone)]
pub struct GenArgs {
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// New events per region and source (duplicates come on top).
    #[arg(long, default_value_t = 2000)]
    pub events_per_source: u64,
    #[arg(long, default_value_t = 8)]
    pub files_per_source: u64,
    #[arg(long, default_value_t = 3.0)]
    pub dup_pct: f64,
    #[arg(long, default_value_t = 2.0)]
    pub late_pct: f64,
    #[arg(long, default_value_t = 10.0)]
    pub out_of_order_pct: f64,
    #[arg(long, default_value_t = 1.0)]
    pub malformed_pct: f64,
    #[arg(long, default_value_t = 0.5)]
    pub null_id_pct: f64,
    #[arg(long, default_value_t = 2.0)]
    pub unknown_field_pct: f64,
    /// Every n-th file with a UTF-8 byte-order mark, CRLF endings and trailing blank lines (0 = none).
    #[arg(long, default_value_t = 4)]
    pub bom_every: u64,
    /// Share of billing `dbu` values at the column's edges (scale 9, 17 digits) in exponent,
    /// quoted and plain spellings.
    #[arg(long, default_value_t = 10.0)]
    pub decimal_edge_pct: f64,
    /// Share of events with an empty or whitespace-only event_id (silver: `null_key`).
    #[arg(long, default_value_t = 0.5)]
    pub empty_id_pct: f64,
    /// Target events/s (all regions and sources together); unlimited when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Real-time mode for freshness measurements: write `--rate` events/s for this many seconds,
    /// one file per region and source every `--live-interval-ms`, each event stamped with the
    /// time it is written (clean events; the messy knobs and the ground truth do not apply).
    #[arg(long, requires = "rate")]
    pub live_secs: Option<u64>,
    #[arg(long, default_value_t = 1000)]
    pub live_interval_ms: u64,
    #[arg(long, default_value = "part")]
    pub file_prefix: String,
    /// Approximate size range of generated events in bytes (the contract says 1-4 KB).
    #[arg(long, default_value_t = 1024)]
    pub event_size_min: usize,
    #[arg(long, default_value_t = 4096)]
    pub event_size_max: usize,
    /// Event times are spread over this many minutes from 2025-11-01T00:00Z (43200 = 30 days).
    #[arg(long, default_value_t = 180)]
    pub span_minutes: i64,
}

impl GenArgs {
    pub fn to_config(&self, cfg: &Config) -> GenConfig {
        GenConfig {
            seed: self.seed,
            regions: cfg.regions.clone(),
            sources: cfg.bronze.sources.clone(),
            events_per_source: self.events_per_source,
            files_per_source: self.files_per_source,
            dup_pct: self.dup_pct,
            late_pct: self.late_pct,
            out_of_order_pct: self.out_of_order_pct,
            malformed_pct: self.malformed_pct,
            null_id_pct: self.null_id_pct,
            unknown_field_pct: self.unknown_field_pct,
            bom_every: self.bom_every,
            decimal_edge_pct: self.decimal_edge_pct,
            empty_id_pct: self.empty_id_pct,
            rate: self.rate,
            file_prefix: self.file_prefix.clone(),
            size_min: self.event_size_min,
            size_max: self.event_size_max.max(self.event_size_min + 1),
            span_minutes: self.span_minutes.max(1),
            ..GenConfig::default()
        }
    }
}

/// TLS for gRPC clients; mTLS when a client certificate is given.
#[derive(Args, Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificate that signed the server's certificate (enables TLS).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Server name to verify (default: the address's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
}

impl ClientTls {
    pub fn apply(&self, mut ep: tonic::transport::Endpoint) -> Result<tonic::transport::Endpoint, String> {
        let Some(ca) = &self.ca_cert else {
            return Ok(ep);
        };
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let mut tls =
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        if let Some(d) = &self.tls_domain {
            tls = tls.domain_name(d.clone());
        }
        if let (Some(c), Some(k)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(read(c)?, read(k)?));
        }
        ep = ep.tls_config(tls).map_err(|e| format!("invalid TLS settings: {e}"))?;
        Ok(ep)
    }
}

#[derive(Subcommand)]
enum AdminOp {
    /// DR: the secondary pipeline serves REGION in central from now on (admin).
    Failover {
        #[arg(long)]
        region: String,
    },
    /// DR: the primary serves REGION in central again (admin).
    Failback {
        #[arg(long)]
        region: String,
    },
    /// Stop starting passes of a stage of a region (operator).
    Pause {
        #[arg(long)]
        stage: String,
        #[arg(long)]
        region: String,
    },
    /// Resume a paused stage (operator).
    Resume {
        #[arg(long)]
        stage: String,
        #[arg(long)]
        region: String,
    },
    /// Start a pass of a stage of a region now (operator).
    Trigger {
        #[arg(long)]
        stage: String,
        #[arg(long)]
        region: String,
    },
    /// Write a Delta checkpoint of a table given by its path under data_root (admin).
    Checkpoint {
        #[arg(long)]
        table: String,
    },
    /// OPTIMIZE a table: each partition's small files rewritten into one, dataChange=false (admin).
    Compact {
        #[arg(long)]
        table: String,
        #[arg(long, default_value_t = 2)]
        min_files: u32,
    },
    /// Remove event_date partitions older than the retention from every table now (admin).
    Retention {
        /// 0 = the service's retention.months.
        #[arg(long, default_value_t = 0)]
        months: u32,
    },
    /// VACUUM a table: delete files removed longer ago than the retention (admin).
    Vacuum {
        #[arg(long)]
        table: String,
        #[arg(long, default_value_t = 168)]
        retention_hours: u32,
        #[arg(long)]
        dry_run: bool,
    },
    /// Forget a customer: erase them from every table, delete the files, prove it (admin).
    /// The id is read from --customer-id-file or stdin when not given (keeps it out of shell
    /// history and process listings).
    Forget {
        #[arg(long)]
        customer_id: Option<String>,
        #[arg(long)]
        customer_id_file: Option<std::path::PathBuf>,
        /// Repeat an earlier request (idempotent); a new request otherwise.
        #[arg(long, default_value = "")]
        request_id: String,
        /// How long readers of a rewritten table may take to read past the erasure.
        #[arg(long, default_value_t = 300)]
        wait_secs: u32,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The erasure requests with their 7-day deadlines (operator); exit 5 when one is overdue.
    ForgetStatus {
        #[arg(long)]
        json: bool,
    },
    /// Backfill a landing-time (or, with --kafka, message-time) range of a source into bronze on
    /// the service, with a progress bar (admin). See `tributary backfill`.
    Backfill {
        #[command(flatten)]
        range: BackfillArgs,
        /// A landing zone under the service's data_root (default: the region's).
        #[arg(long, conflicts_with = "kafka")]
        landing: Option<String>,
    },
}

/// What both backfill commands take.
#[derive(clap::Args)]
struct BackfillArgs {
    #[arg(long)]
    region: String,
    #[arg(long)]
    source: String,
    /// Start of the range (RFC 3339), inclusive: landing time, or message time with --kafka.
    #[arg(long)]
    from: String,
    /// End of the range (RFC 3339), exclusive.
    #[arg(long)]
    to: String,
    /// Names the backfill (its position and plan); default `<source>-<from ms>-<to ms>`.
    #[arg(long)]
    id: Option<String>,
    /// Read the source's Kafka topic instead: per partition the offsets whose message
    /// timestamps are in [--from, --to) (the broker's offsets-by-timestamp lookup).
    #[arg(long)]
    kafka: bool,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl BackfillArgs {
    /// The backfill, with the range parsed and the id defaulted.
    fn spec(self, landing: Option<String>) -> Result<(bronze_ingest::backfill::Spec, bool), String> {
        let parse = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| d.timestamp_millis())
                .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
        };
        let (from_ms, to_ms) = (parse(&self.from)?, parse(&self.to)?);
        let id = self.id.unwrap_or_else(|| format!("{}-{from_ms}-{to_ms}", self.source));
        let spec = bronze_ingest::backfill::Spec {
            id,
            region: self.region,
            source: self.source,
            landing,
            from_ms,
            to_ms,
            all_files: self.kafka,
        };
        Ok((spec, self.json))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write deterministic telemetry into every region's landing zone, plus ground truth.
    Generate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        gen_args: GenArgs,
        /// Also produce the generated traffic to the source topics (keyed by event_id).
        #[arg(long)]
        kafka: bool,
        /// Partitions of topics created by --kafka.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Run every stage of every region in one process on local files (no broker).
    Standalone {
        #[command(flatten)]
        common: Common,
        /// Generate traffic into the landing zones first.
        #[arg(long)]
        generate: bool,
        #[command(flatten)]
        gen_args: GenArgs,
        /// Exit once every stage has nothing left to do (same as --trigger available-now).
        #[arg(long)]
        exit_when_idle: bool,
        /// Stages to run (comma separated): bronze, silver, gold, federator.
        #[arg(long, value_delimiter = ',', default_value = "bronze,silver,gold,federator")]
        stages: Vec<String>,
        /// Give up (exit code 2) after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// A scheduled standby (DR secondary): one available-now pass every interval (`90`, `30s`,
        /// `5m`, `1h`) until SIGTERM/SIGINT; a pass that overruns skips the ticks it missed, a
        /// failed pass is reported and the next tick retries. Implies `--trigger available-now`.
        #[arg(long, value_parser = parse_interval)]
        every: Option<std::time::Duration>,
        /// With --every: stop after this many passes (exit code 1 if any failed).
        #[arg(long, requires = "every")]
        max_passes: Option<u64>,
    },
    /// bronze-ingest for one region: landing files → bronze tables.
    BronzeIngest {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        region: String,
        /// Where events come from: landing `files` or Kafka topics (consumer group).
        #[arg(long, default_value = "files", value_parser = ["files", "kafka"])]
        from: String,
    },
    /// kafka2prom: metric dumps from Kafka (`kafka2prom.topic`) exposed on `/metrics` for
    /// Prometheus; every replica joins the group `kafka2prom.group_id`.
    Kafka2prom {
        #[command(flatten)]
        common: Common,
        /// Where the exposed series are served (overrides `kafka2prom.listen`).
        #[arg(long)]
        listen: Option<String>,
    },
    /// log-exporter: ships metric dumps (keyed by instance) and log files (rotation-safe, exactly
    /// once) to Kafka, and mirrors landing files into two zones (`log_exporter.*` settings).
    LogExporter {
        #[command(flatten)]
        common: Common,
        /// Folder of the dumps (overrides `log_exporter.dumps_dir` / `metrics.dump_dir`).
        #[arg(long)]
        dumps: Option<String>,
    },
    /// silver-transform for one region: bronze → silver (dedup, validation).
    SilverTransform {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        region: String,
    },
    /// gold-aggregate for one region: silver → gold windows.
    GoldAggregate {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        region: String,
    },
    /// central-federator: regions' silver and gold → central tables.
    CentralFederator {
        #[command(flatten)]
        common: Common,
        /// Regions to federate (repeatable / comma separated); default: all configured.
        #[arg(long = "region", value_delimiter = ',')]
        region: Vec<String>,
    },
    /// Benchmark of silver's dedup index: N distinct keys over 30 days of event time, then a
    /// replay of some of them; prints keys/s, lookups/s, false positives and peak RSS.
    BenchDedup {
        /// Where the index table is written (a scratch directory; removed first).
        #[arg(long, default_value = "./data/bench-dedup")]
        dir: String,
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 50_000)]
        batch: u64,
        /// Keys looked up again at the end (all must be found).
        #[arg(long, default_value_t = 200_000)]
        replay: u64,
        #[arg(long, default_value_t = 32)]
        bloom_mb: u64,
        #[arg(long, default_value_t = 64)]
        cache_mb: u64,
        #[arg(long, default_value_t = 16)]
        buckets: u32,
    },
    /// Benchmark: the dedup Bloom filter's false-positive rate after N keys streamed in event
    /// time over several horizons: sliced by event time (forgets with the horizon) vs. one filter
    /// of the same memory that never forgets.
    BenchBloom {
        #[arg(long, default_value_t = 100_000_000)]
        keys: u64,
        /// Bloom memory (MiB), as `silver.dedup.bloom_mb`.
        #[arg(long, default_value_t = 32)]
        mb: u64,
        /// The keys' event times span this many horizons.
        #[arg(long, default_value_t = 10)]
        horizons: u64,
        #[arg(long, default_value_t = 4)]
        slices: u32,
    },
    /// Benchmark helper (scripts/bench_bridge.py): produces one round of metric dumps for
    /// kafka2prom — `instances` dumps of `series` gauges each, keyed by instance — and prints
    /// `round <r> sent <n> dumps <samples> samples <bytes> bytes in <s>s`.
    BenchBridgeProduce {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "tributary.metrics")]
        topic: String,
        #[arg(long, default_value_t = 100)]
        instances: u32,
        /// Series per instance.
        #[arg(long, default_value_t = 10_000)]
        series: u32,
        /// Round number: every sample's value (a later round's dumps are newer).
        #[arg(long, default_value_t = 1)]
        round: u64,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
    /// Benchmark: one landing poll with N files already ingested (incremental discovery vs. a
    /// full listing and a set of every name).
    BenchDiscovery {
        #[arg(long, default_value = "./.cache/bench-discovery")]
        dir: String,
        #[arg(long, default_value_t = 1_000_000)]
        files: u64,
    },
    /// Benchmark: one commit's latency as a table grows (appends with deltalake's default
    /// post-commit hook, appends with ours, commits that replace the previous file).
    BenchCommits {
        #[arg(long, default_value = "./.cache/bench-commits")]
        dir: String,
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
        versions: u64,
    },
    /// Benchmark: `--bench-regions` simulated regions' federators committing to one central table
    /// at once (the federators' commit protocol) while a reader scans it; prints commit latency
    /// p50/p99, lost races per commit, rows/s, and fails unless nothing is lost or duplicated.
    BenchCentral {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        bench_regions: usize,
        #[arg(long, default_value_t = 20)]
        commits: usize,
        #[arg(long, default_value_t = 200)]
        rows: usize,
        /// Table location (path or URI); default `<data_root>/_bench/central-<unix ms>`.
        #[arg(long)]
        table: Option<String>,
    },
    /// Benchmark helper: the broker's own ceiling — a plain consumer that only counts the
    /// messages of the source topics of `--regions` (fresh group, from the beginning).
    BenchKafkaCeiling {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Operator actions through a service's Admin gRPC API (mTLS: the client certificate's role
    /// decides; every call is audited in `<data_root>/_tributary/audit`).
    Admin {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[command(flatten)]
        tls: ClientTls,
        #[command(subcommand)]
        op: AdminOp,
    },
    /// Load and validate the configuration (file, environment, flags) and print it as JSON;
    /// exit 1 with the offending field when it is invalid. Touches nothing.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
    /// Ask a service's gRPC health (grpc.health.v1.Health/Check): exit 0 when it is SERVING
    /// (the Helm chart's `helm test` pods run this).
    Health {
        /// e.g. http://127.0.0.1:50051, or https://host:port with --ca-cert for TLS.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[command(flatten)]
        tls: ClientTls,
        /// The service name to check; empty = the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Print a service's PipelineStatus.
    Status {
        /// e.g. http://127.0.0.1:50051, or https://host:port with --ca-cert for TLS.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        #[command(flatten)]
        tls: ClientTls,
        /// Read row counts and max event_time from the Delta logs too.
        #[arg(long)]
        stats: bool,
        /// Ask the service to answer for every region it knows (`federator.status_endpoints`),
        /// each within its deadline; unanswered regions are listed and the answer marked partial
        /// (exit code 3).
        #[arg(long)]
        all_regions: bool,
        #[arg(long)]
        json: bool,
    },
    /// Backfill the landing files of one source that landed in [--from, --to) into bronze,
    /// exactly once beside the live flow (resumable: run the same --id again); a progress bar on
    /// stderr; recorded in the audit table.
    Backfill {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        range: BackfillArgs,
        /// Landing zone to read (default: the region's), e.g. an archive.
        #[arg(long, conflicts_with = "kafka")]
        landing: Option<String>,
    },
    /// Print the reconciliation table of a data directory (generated → bronze → … → central).
    Report {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        json: bool,
    },
    /// Print order-independent fingerprints of every table's logical content.
    Fingerprint {
        #[command(flatten)]
        common: Common,
        /// Only this table (path or URI), one line: `<uri>\t<fingerprint>`.
        #[arg(long)]
        table: Option<String>,
    },
    /// Move a live Delta table to another location or store (local ↔ s3://) while its writers
    /// go on: copy rounds, a short freeze for the last increment, then a redirect every writer
    /// and reader follows (same versions, positions and history at the new location).
    Fork {
        #[command(flatten)]
        common: Common,
        /// The table now (path or URI).
        source: String,
        /// Where it will live (path or URI): empty, or a fork of it interrupted before.
        target: String,
        /// A copy round that finds at most this many new commits is the last before the freeze.
        #[arg(long, default_value_t = 2)]
        quiet: usize,
    },
    /// Disaster recovery: make the secondary pipeline serve REGION in the central tables (its
    /// federator takes over; the primary's commits are refused from then on). Idempotent.
    Failover {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', required = true)]
        region: Vec<String>,
    },
    /// Disaster recovery: make the primary serve REGION in the central tables again. Idempotent.
    Failback {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_delimiter = ',', required = true)]
        region: Vec<String>,
    },
    /// Disaster recovery status of this side: which side serves each region in central, each
    /// table's max(event_time) against the landing zone's newest event, and with --caught-up-at
    /// whether every table has processed events up to that instant (exit code 4 if not).
    DrStatus {
        #[command(flatten)]
        common: Common,
        /// Regions (default: all of the config's).
        #[arg(long, value_delimiter = ',')]
        region: Vec<String>,
        /// RFC 3339 time or epoch milliseconds, e.g. when the outage started.
        #[arg(long)]
        caught_up_at: Option<String>,
    },
    /// One pass of the dual-landing-zone mirror: every file of the spool is written into every
    /// zone (local path or s3:// URI) and removed from the spool once all zones hold it; a zone
    /// that cannot be reached keeps its files in the spool for the next pass. Exit code 3 when
    /// files are left pending.
    MirrorLanding {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        spool: String,
        /// The zones, comma separated (e.g. the primary's and the secondary's landing roots).
        #[arg(long, value_delimiter = ',', required = true)]
        zones: Vec<String>,
    },
    /// Deep-clone a Delta table to another location or store (local ↔ s3://), incrementally:
    /// a second run copies only the files added since and removes the ones removed since;
    /// resumable after a crash; S3 settings from the config (`[storage.s3]`).
    Clone {
        #[command(flatten)]
        common: Common,
        /// Source table (path or URI).
        source: String,
        /// Target table (path or URI): empty, or an earlier clone of the same source.
        target: String,
    },
    /// Print the pipeline event log (`<data_root>/_tributary/event_log`), oldest first.
    Events {
        #[command(flatten)]
        common: Common,
        /// RFC 3339 time, or a duration back from now: 90s, 15m, 2h, 7d.
        #[arg(long, default_value = "1d")]
        since: String,
        /// Only these event types (repeatable / comma separated): flow_progress, data_quality,
        /// schema_change, drift, commit_conflict, error, user_action.
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        #[arg(long, default_value = "")]
        stage: String,
        #[arg(long, default_value = "")]
        region: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// Runs `f` on a new runtime with telemetry (the OTLP exporter needs the runtime to start, and
/// its last spans are flushed while the runtime still runs).
fn traced<F: std::future::Future<Output = ExitCode>>(
    service: &str,
    cfg: &tributary_core::config::TelemetryConfig,
    f: impl FnOnce() -> F,
) -> ExitCode {
    let rt = runtime();
    let guard = {
        let _in = rt.enter();
        tributary_core::telemetry::init(service, cfg)
    };
    let code = rt.block_on(f());
    let _in = rt.enter();
    drop(guard);
    code
}

fn dr_switch(common: Common, region: Vec<String>, to: &'static str) -> ExitCode {
    let cfg = match common.load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    runtime().block_on(async move {
        start_event_log(&cfg, "dr");
        let by = std::env::var("USER").map(|u| format!("cli:{u}")).unwrap_or_else(|_| "cli".into());
        let mut code = ExitCode::SUCCESS;
        for r in &region {
            match tributary_delta::dr::switch(&cfg, r, to, &by).await {
                Ok(s) => println!("{s}"),
                Err(e) => code = fail(e),
            }
        }
        tributary_core::event_log::flush().await;
        code
    })
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// `90` (seconds), `30s`, `5m`, `1h`.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number of seconds or e.g. 30s, 5m, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m or h)")),
    };
    if secs == 0 {
        return Err("the interval must be at least one second".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Generate { common, gen_args, kafka, partitions } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            if let Err(e) = crate::standalone::generate(&cfg, &gen_args) {
                return fail(e);
            }
            if kafka {
                return traced("tributary-generate", &cfg.telemetry.clone(), || async move {
                    match crate::standalone::produce(&cfg, partitions).await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => fail(e),
                    }
                });
            }
            ExitCode::SUCCESS
        }
        Cmd::Standalone { common, generate, gen_args, exit_when_idle, stages, timeout_secs, every, max_passes } => {
            let exit_when_idle = exit_when_idle || common.trigger == "available-now" || every.is_some();
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            tributary_delta::admin::register(&cfg, "standalone");
            crate::standalone::register_backfill();
            if generate && let Err(e) = crate::standalone::generate(&cfg, &gen_args) {
                return fail(e);
            }
            traced("tributary-standalone", &cfg.telemetry.clone(), || async move {
                let started_us = tributary_core::now_ms() * 1000;
                start_event_log(&cfg, "standalone");
                let cfg = Arc::new(cfg);
                if let Some(every) = every {
                    return crate::standalone::every(cfg, &stages, every, max_passes, timeout_secs).await;
                }
                let code = crate::standalone::run(cfg.clone(), &stages, exit_when_idle, timeout_secs).await;
                tributary_core::event_log::flush().await;
                if exit_when_idle && cfg.event_log.enabled {
                    crate::events::summary(&cfg, started_us).await;
                }
                code
            })
        }
        Cmd::BronzeIngest { common, region, from } => service(common, "bronze-ingest", move |cfg, sd, n| async move {
            if from == "kafka" {
                bronze_ingest::kafka::run(cfg, &region, sd, n).await
            } else {
                bronze_ingest::run(cfg, &region, sd, n).await
            }
        }),
        Cmd::Kafka2prom { common, listen } => service(common, "kafka2prom", move |cfg, sd, _n| async move {
            let mut c = (*cfg).clone();
            if let Some(l) = listen {
                c.kafka2prom.listen = l;
            }
            kafka2prom::run(Arc::new(c), sd).await
        }),
        Cmd::LogExporter { common, dumps } => service(common, "log-exporter", move |cfg, sd, _n| async move {
            let mut c = (*cfg).clone();
            if let Some(d) = dumps {
                c.log_exporter.dumps_dir = d;
            }
            log_exporter::run(Arc::new(c), sd).await
        }),
        Cmd::SilverTransform { common, region } => service(common, "silver-transform", move |cfg, sd, n| async move {
            silver_transform::run(cfg, &region, sd, n).await
        }),
        Cmd::GoldAggregate { common, region } => service(common, "gold-aggregate", move |cfg, sd, n| async move {
            gold_aggregate::run(cfg, &region, sd, n).await
        }),
        Cmd::CentralFederator { common, region } => {
            service(common, "central-federator", move |cfg, sd, n| async move {
                let regions = if region.is_empty() { cfg.regions.clone() } else { region };
                central_federator::run(cfg, &regions, sd, n).await
            })
        }
        Cmd::Status { addr, tls, stats, all_regions, json } => {
            runtime().block_on(status(addr, tls, stats, all_regions, json))
        }
        Cmd::Health { addr, tls, service } => runtime().block_on(health(addr, tls, service)),
        Cmd::CheckConfig { common } => match common.load() {
            Ok(cfg) => match serde_json::to_string_pretty(&cfg) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("cannot print the configuration: {e}")),
            },
            Err(e) => fail(e),
        },
        Cmd::Admin { addr, tls, op } => runtime().block_on(admin(addr, tls, op)),
        Cmd::Backfill { common, range, landing } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let (spec, json) = match range.spec(landing) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            traced("tributary-backfill", &cfg.telemetry.clone(), || crate::standalone::backfill(cfg, spec, json))
        }
        Cmd::Report { common, json } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            runtime().block_on(async move {
                match crate::report::Report::collect(&cfg).await {
                    Ok(r) => {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                        } else {
                            r.print();
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::Events { common, since, types, stage, region, json } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            for t in &types {
                if !tributary_core::event_log::EVENT_TYPES.contains(&t.as_str()) {
                    return fail(format!(
                        "unknown event type {t:?}; known: {}",
                        tributary_core::event_log::EVENT_TYPES.join(", ")
                    ));
                }
            }
            let since_us = match crate::events::parse_since(&since, tributary_core::now_ms() * 1000) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            runtime().block_on(async move {
                match crate::events::read(&cfg, since_us, &types, &stage, &region).await {
                    Ok(records) => {
                        crate::events::print(&records, json);
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::BenchDedup { dir, keys, batch, replay, bloom_mb, cache_mb, buckets } => {
            let cfg = tributary_core::config::DedupConfig {
                horizon_days: 30,
                buckets,
                bloom_mb,
                cache_mb,
                ..Default::default()
            };
            match runtime().block_on(crate::report::bench_dedup(&dir, &cfg, keys, batch.max(1), replay)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Cmd::BenchBloom { keys, mb, horizons, slices } => {
            crate::report::bench_bloom(keys, mb, horizons, slices);
            ExitCode::SUCCESS
        }
        Cmd::BenchDiscovery { dir, files } => match runtime().block_on(crate::report::bench_discovery(&dir, files)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::BenchCommits { dir, versions } => match runtime().block_on(crate::report::bench_commits(&dir, versions)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Cmd::BenchBridgeProduce { brokers, topic, instances, series, round, partitions } => {
            match runtime()
                .block_on(crate::report::bench_bridge_produce(&brokers, &topic, instances, series, round, partitions))
            {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
        Cmd::BenchCentral { common, bench_regions, commits, rows, table } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let table = table.unwrap_or_else(|| {
                tributary_core::config::join(&cfg.data_root, &format!("_bench/central-{}", tributary_core::now_ms()))
            });
            let spec = crate::bench_central::Spec {
                table,
                regions: bench_regions,
                commits,
                rows,
                attempts: cfg.commit_attempts as u32,
            };
            match runtime().block_on(crate::bench_central::run(spec)) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::BenchKafkaCeiling { common, timeout_secs } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let topics: Vec<String> = cfg
                .regions
                .iter()
                .flat_map(|r| cfg.bronze.sources.iter().map(|s| cfg.kafka.topic_for(s).replace("{region}", r)))
                .collect();
            let group = format!("tributary-ceiling-{}", tributary_core::now_ms());
            match runtime().block_on(tributary_kafka::count_to_end(
                &cfg.kafka,
                &topics,
                &group,
                std::time::Duration::from_secs(timeout_secs),
            )) {
                Ok((n, bytes, secs)) => {
                    println!(
                        "broker ceiling: {n} messages ({:.0} MB) in {secs:.2}s = {:.0} msgs/s (plain consumer, count only)",
                        bytes as f64 / 1e6,
                        n as f64 / secs.max(1e-9)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Fork { common, source, target, quiet } => {
            if let Err(e) = common.load() {
                return fail(e);
            }
            runtime().block_on(async move {
                match tributary_delta::fork::fork(&source, &target, quiet, |m| eprintln!("{m}")).await {
                    Ok(r) => {
                        println!("{r}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::Failover { common, region } => dr_switch(common, region, "secondary"),
        Cmd::Failback { common, region } => dr_switch(common, region, "primary"),
        Cmd::DrStatus { common, region, caught_up_at } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let at = match caught_up_at.as_deref().map(crate::dr_status::parse_instant).transpose() {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let regions = if region.is_empty() { cfg.regions.clone() } else { region };
            runtime().block_on(async move {
                match crate::dr_status::report(&cfg, &regions, at).await {
                    Ok((text, caught_up)) => {
                        print!("{text}");
                        if caught_up { ExitCode::SUCCESS } else { ExitCode::from(4) }
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::MirrorLanding { common, spool, zones } => {
            if let Err(e) = common.load() {
                return fail(e);
            }
            runtime().block_on(async move {
                let zones: Vec<_> = match zones.iter().map(|z| log_exporter::landing::Zone::open(z)).collect() {
                    Ok(z) => z,
                    Err(e) => return fail(e),
                };
                match log_exporter::landing::mirror_once(std::path::Path::new(&spool), &zones).await {
                    Ok(m) => {
                        let down: std::collections::BTreeSet<&str> =
                            m.pending.iter().map(|(_, z, _)| z.as_str()).collect();
                        println!(
                            "mirror: {} files into {} zones, {} conflicts kept aside, {} pending{}",
                            m.files.len(),
                            zones.len(),
                            m.conflicts.len(),
                            m.pending.iter().map(|(f, _, _)| f).collect::<std::collections::BTreeSet<_>>().len(),
                            if down.is_empty() {
                                String::new()
                            } else {
                                format!(" (unreachable: {})", down.into_iter().collect::<Vec<_>>().join(", "))
                            }
                        );
                        if m.pending.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) }
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::Clone { common, source, target } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            runtime().block_on(async move {
                let started = std::time::Instant::now();
                match tributary_delta::clone::clone_table(&source, &target, cfg.commit_attempts).await {
                    Ok(r) => {
                        println!("clone {source} -> {target}: {r} in {:.2}s", started.elapsed().as_secs_f64());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::Fingerprint { common, table: Some(table) } => {
            if let Err(e) = common.load() {
                return fail(e);
            }
            runtime().block_on(async move {
                let fp = match tributary_delta::Table::open_existing(&table, &table).await {
                    Ok(Some(t)) => tributary_delta::fingerprint::table_fingerprint(&t).await.map(|f| f.to_string()),
                    Ok(None) => Ok("absent".into()),
                    Err(e) => Err(e),
                };
                match fp {
                    Ok(fp) => {
                        println!("{table}\t{fp}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
        Cmd::Fingerprint { common, table: None } => {
            let cfg = match common.load() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            runtime().block_on(async move {
                match crate::report::fingerprints(&cfg).await {
                    Ok(fps) => {
                        for (t, fp) in fps {
                            println!("{t}\t{fp}");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            })
        }
    }
}

/// Commit notices over Kafka when brokers are configured: publish after every commit, wake on
/// the inputs' notices.
fn notice_hook(cfg: &Config) -> Result<Option<tributary_core::stage::NoticeHook>, String> {
    if cfg.kafka.brokers.is_empty() || !cfg.kafka.publish_notices {
        return Ok(None);
    }
    tributary_kafka::KafkaNotices::install(&cfg.kafka).map_err(|e| e.to_string())?;
    let k = cfg.kafka.clone();
    Ok(Some(Box::new(move |interest, sd| tributary_kafka::spawn_listener(&k, interest, sd).map(|_| ()))))
}

/// Starts the event-log writer and records the start as a `user_action`.
fn start_event_log(cfg: &Config, service: &str) {
    tributary_delta::event_log::start(cfg);
    let args: Vec<String> = std::env::args().skip(1).collect();
    tributary_core::event_log::emit(
        tributary_core::event_log::Level::Info,
        service,
        "",
        "",
        "user_action",
        serde_json::json!({"action": "start", "args": args, "build_version": tributary_core::BUILD_VERSION}),
    );
}

fn service<F, Fut>(common: Common, name: &'static str, f: F) -> ExitCode
where
    F: FnOnce(Arc<Config>, Shutdown, Option<tributary_core::stage::NoticeHook>) -> Fut,
    Fut: std::future::Future<Output = tributary_core::Result<()>>,
{
    let cfg = match common.load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    tributary_delta::admin::register(&cfg, name);
    if name == "bronze-ingest" {
        crate::standalone::register_backfill();
    }
    let available_now = common.trigger == "available-now";
    traced(name, &cfg.telemetry.clone(), || async move {
        let sd = Shutdown::new();
        sd.install_signal_handlers();
        if available_now {
            sd.exit_when_idle();
        }
        let hook = match notice_hook(&cfg) {
            Ok(h) => h,
            Err(e) => return fail(e),
        };
        start_event_log(&cfg, name);
        // The owners of the last layer of each install sweep retention on a schedule.
        if matches!(name, "gold-aggregate" | "central-federator") {
            tributary_delta::retention::spawn(&cfg, sd.clone());
            tributary_delta::forget::spawn_deadline_gauge(&cfg, std::time::Duration::from_secs(60), sd.clone());
        }
        let result = f(Arc::new(cfg), sd, hook).await;
        if let Err(e) = &result {
            tributary_core::event_log::emit(
                tributary_core::event_log::Level::Error,
                name,
                "",
                "",
                "error",
                serde_json::json!({"message": e.to_string(), "fatal": true}),
            );
        }
        tributary_core::event_log::flush().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

/// A gRPC channel to `addr` (TLS settings applied), or the message to fail with.
async fn connect(addr: &str, tls: &ClientTls) -> Result<tonic::transport::Channel, String> {
    connect_for(addr, tls, std::time::Duration::from_secs(10)).await
}

/// Like [`connect`], with calls allowed up to `timeout`.
async fn connect_for(
    addr: &str,
    tls: &ClientTls,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("invalid address {addr}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(timeout);
    tls.apply(endpoint)?.connect().await.map_err(|e| format!("cannot connect to {addr}: {e}"))
}

async fn admin(addr: String, tls: ClientTls, op: AdminOp) -> ExitCode {
    use tributary_proto::v1::{
        BackfillRequest, CompactRequest, DrRequest, FlowRef, ForgetRequest, ForgetStatusRequest, RetentionRequest,
        TableRef, VacuumRequest, admin_client::AdminClient,
    };
    let (mut json, mut overdue_exit) = (false, false);
    let timeout = match &op {
        // Rewriting every table takes longer than the usual call.
        AdminOp::Forget { wait_secs, .. } => std::time::Duration::from_secs(*wait_secs as u64 + 3600),
        AdminOp::Backfill { .. } => std::time::Duration::from_secs(7 * 24 * 3600),
        _ => std::time::Duration::from_secs(10),
    };
    let mut c = match connect_for(&addr, &tls, timeout).await {
        Ok(c) => AdminClient::new(c),
        Err(e) => return fail(e),
    };
    let r = match op {
        AdminOp::Failover { region } => c.failover(DrRequest { region }).await,
        AdminOp::Failback { region } => c.failback(DrRequest { region }).await,
        AdminOp::Pause { stage, region } => c.pause_flow(FlowRef { stage, region }).await,
        AdminOp::Resume { stage, region } => c.resume_flow(FlowRef { stage, region }).await,
        AdminOp::Trigger { stage, region } => c.trigger_run(FlowRef { stage, region }).await,
        AdminOp::Checkpoint { table } => c.checkpoint(TableRef { table }).await,
        AdminOp::Compact { table, min_files } => c.compact(CompactRequest { table, min_files }).await,
        AdminOp::Retention { months } => c.enforce_retention(RetentionRequest { months }).await,
        AdminOp::Vacuum { table, retention_hours, dry_run } => {
            c.vacuum(VacuumRequest { table, retention_hours, dry_run }).await
        }
        AdminOp::Forget { customer_id, customer_id_file, request_id, wait_secs, json: j } => {
            json = j;
            let id = match (customer_id, customer_id_file) {
                (Some(id), _) => id,
                (None, Some(f)) => match std::fs::read_to_string(&f) {
                    Ok(s) => s.trim().to_string(),
                    Err(e) => return fail(format!("reading {}: {e}", f.display())),
                },
                (None, None) => {
                    let mut s = String::new();
                    if let Err(e) = std::io::stdin().read_line(&mut s) {
                        return fail(format!("reading the customer id from stdin: {e}"));
                    }
                    s.trim().to_string()
                }
            };
            c.forget(ForgetRequest { customer_id: id, request_id, wait_secs }).await
        }
        AdminOp::Backfill { range, landing } => {
            let (b, json) = match range.spec(landing) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let req = BackfillRequest {
                region: b.region,
                source: b.source,
                from_ms: b.from_ms,
                to_ms: b.to_ms,
                landing: b.landing.unwrap_or_default(),
                id: b.id,
                kafka: b.all_files,
            };
            return match c.backfill(req).await {
                Ok(stream) => backfill_progress(stream.into_inner(), json).await,
                Err(e) => admin_error(&e),
            };
        }
        AdminOp::ForgetStatus { json: j } => {
            json = j;
            let r = c.forget_status(ForgetStatusRequest {}).await;
            overdue_exit = true;
            r
        }
    };
    match r {
        Ok(r) => {
            let r = r.into_inner();
            if json {
                println!("{}", r.json);
            } else {
                println!("{}", r.message);
                for f in &r.files {
                    println!("  {f}");
                }
            }
            if overdue_exit && r.files.iter().any(|f| f.ends_with(" OVERDUE")) {
                return ExitCode::from(5);
            }
            ExitCode::SUCCESS
        }
        Err(e) => admin_error(&e),
    }
}

/// An admin call's failure: exit 4 when refused, 1 otherwise.
fn admin_error(e: &tonic::Status) -> ExitCode {
    eprintln!("error: {} ({:?})", e.message(), e.code());
    ExitCode::from(match e.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => 4,
        _ => 1,
    })
}

/// Draws a backfill's progress stream; the last item is the outcome.
async fn backfill_progress(
    mut stream: tonic::Streaming<tributary_proto::v1::BackfillProgress>,
    json: bool,
) -> ExitCode {
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                crate::standalone::draw_progress(&crate::standalone::progress_from_proto(&p));
                if p.done {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string(&crate::standalone::progress_from_proto(&p)).unwrap_or_default()
                        );
                    } else {
                        println!(
                            "backfill {} ({}): {}/{} files, {} rows, {} quarantined",
                            p.id, p.app_id, p.files_done, p.files_total, p.rows, p.quarantined
                        );
                    }
                    return ExitCode::SUCCESS;
                }
            }
            Ok(None) => return fail("the backfill stream ended without an outcome"),
            Err(e) => return admin_error(&e),
        }
    }
}

async fn health(addr: String, tls: ClientTls, service: String) -> ExitCode {
    use tributary_core::health_pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let channel = match connect(&addr, &tls).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match HealthClient::new(channel).check(HealthCheckRequest { service: service.clone() }).await {
        Ok(r) => {
            let status = ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown);
            println!("{addr} {}: {}", if service.is_empty() { "(server)" } else { &service }, status.as_str_name());
            if status == ServingStatus::Serving { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => fail(format!("health check of {addr} failed: {} ({:?})", e.message(), e.code())),
    }
}

async fn status(addr: String, tls: ClientTls, stats: bool, all_regions: bool, json: bool) -> ExitCode {
    use tributary_proto::v1::{GetStatusRequest, pipeline_status_client::PipelineStatusClient};
    let mut client = match connect(&addr, &tls).await {
        Ok(c) => PipelineStatusClient::new(c),
        Err(e) => return fail(e),
    };
    let resp = match client.get_status(GetStatusRequest { include_table_stats: stats, all_regions }).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return fail(format!("GetStatus failed: {} ({:?})", e.message(), e.code()));
        }
    };
    let code = if resp.partial { ExitCode::from(3) } else { ExitCode::SUCCESS };
    if json {
        let v = serde_json::json!({
            "service": resp.service, "pipeline": resp.pipeline, "build_version": resp.build_version,
            "started_unix_ms": resp.started_unix_ms,
            "stages": resp.stages.iter().map(stage_json).collect::<Vec<_>>(),
            "partial": resp.partial,
            "regions": resp.regions.iter().map(|r| serde_json::json!({
                "region": r.region, "endpoint": r.endpoint, "ok": r.ok, "error": r.error,
                "elapsed_ms": r.elapsed_ms, "service": r.service,
                "stages": r.stages.iter().map(stage_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return code;
    }
    println!("service {} (pipeline {}, build {})", resp.service, resp.pipeline, resp.build_version);
    resp.stages.iter().for_each(print_stage);
    for r in &resp.regions {
        if r.ok {
            println!("\n== region {} — {} at {} ({} ms)", r.region, r.service, r.endpoint, r.elapsed_ms);
            r.stages.iter().for_each(print_stage);
        } else {
            println!("\n== region {} — {} did NOT answer: {}", r.region, r.endpoint, r.error);
        }
    }
    if resp.partial {
        println!("\nPARTIAL: some regions did not answer (above)");
    }
    code
}

fn stage_json(s: &tributary_proto::v1::StageStatus) -> serde_json::Value {
    serde_json::json!({
        "stage": s.stage, "region": s.region, "last_error": s.last_error,
        "tables": s.tables.iter().map(|t| serde_json::json!({"name": t.name, "uri": t.uri, "version": t.version,
            "last_commit_unix_ms": t.last_commit_unix_ms, "max_event_time_unix_ms": t.max_event_time_unix_ms,
            "row_count": t.row_count, "file_count": t.file_count})).collect::<Vec<_>>(),
        "positions": s.positions.iter().map(|p| serde_json::json!({"app_id": p.app_id, "output_table": p.output_table, "version": p.version})).collect::<Vec<_>>(),
        "counters": s.counters.iter().map(|c| serde_json::json!({"name": c.name, "labels": c.labels, "value": c.value})).collect::<Vec<_>>(),
    })
}

fn print_stage(s: &tributary_proto::v1::StageStatus) {
    println!(
        "\n[{} / {}]{}",
        s.stage,
        s.region,
        if s.last_error.is_empty() { String::new() } else { format!("  last error: {}", s.last_error) }
    );
    println!("  {:<36} {:>8} {:>10} {:>8} {:>25}", "table", "version", "rows", "files", "max event_time");
    for t in &s.tables {
        let max = chrono::DateTime::from_timestamp_millis(t.max_event_time_unix_ms)
            .filter(|_| t.max_event_time_unix_ms > 0)
            .map(|d| d.to_rfc3339())
            .unwrap_or_else(|| "-".into());
        println!("  {:<36} {:>8} {:>10} {:>8} {:>25}", t.name, t.version, t.row_count, t.file_count, max);
    }
    println!("  input positions:");
    for p in &s.positions {
        println!("    {:<60} -> {:<28} {}", p.app_id, p.output_table, p.version);
    }
    if !s.counters.is_empty() {
        println!("  counters:");
        for c in &s.counters {
            println!("    {:<22} {:<34} {}", c.name, c.labels.get("table").cloned().unwrap_or_default(), c.value);
        }
    }
}

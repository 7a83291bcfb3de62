//! Typed configuration: defaults < TOML file < `TRIBUTARY__SECTION__KEY` environment variables.
//!
//! `Config::load` parses, `Config::validate` checks everything that can be checked without
//! touching disk or network; only the services' `build` steps do I/O.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Pipeline name; prefixes every Delta txn app_id.
    pub pipeline: String,
    /// Root directory (or file:// URI) under which region and central tables live.
    pub data_root: String,
    /// Regions this deployment serves. Region services take the one given by `--region`.
    pub regions: Vec<String>,
    /// Landing zone root; `{region}` is replaced. Default `<data_root>/regions/{region}/landing`.
    pub landing_root: Option<String>,
    /// Central tables root. Default `<data_root>/central`.
    pub central_root: Option<String>,
    /// Commit attempts of every stage while other writers win the race for a table's next
    /// version (50+ regions' federators on the central tables); backoff with jitter in between.
    pub commit_attempts: usize,
    pub bronze: BronzeConfig,
    pub silver: SilverConfig,
    pub gold: GoldConfig,
    pub federator: FederatorConfig,
    pub kafka: KafkaConfig,
    pub server: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub event_log: EventLogConfig,
    pub metrics: MetricsConfig,
    pub kafka2prom: Kafka2PromConfig,
    pub log_exporter: LogExporterConfig,
    pub retention: RetentionConfig,
    pub storage: StorageConfig,
    pub dr: DrConfig,
}

/// Primary and secondary pipelines (disaster recovery): two deployments with the same config
/// except `role`, each with its own landing zone and tables, sharing `central_root`. Which side
/// serves central is recorded in the central tables (`tributary failover` / `failback`); `active`
/// names the side that serves before any switch was recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DrConfig {
    /// `""` (no DR: the federator always serves), `primary` or `secondary`.
    pub role: String,
    /// The side that serves central before any failover: `primary` (default) or `secondary`.
    pub active: String,
    /// After a switch, per region: the Bloom filter of the event_ids central already holds
    /// (KiB, default 65536 = 64 MiB). Fixed memory; more ids only mean more exact checks
    /// against central.
    pub overlap_filter_kb: u64,
    /// After a switch, per region: how many `(region, event_date)` partitions of central's ids
    /// the exact check keeps loaded.
    pub overlap_cache_dates: usize,
}

impl Default for DrConfig {
    fn default() -> Self {
        Self { role: String::new(), active: "primary".into(), overlap_filter_kb: 65536, overlap_cache_dates: 4 }
    }
}

impl DrConfig {
    pub fn enabled(&self) -> bool {
        !self.role.is_empty()
    }
    /// The side serving at `epoch` (0 = no switch recorded; each switch adds one).
    pub fn active_at(&self, epoch: i64) -> &'static str {
        let initial_primary = self.active != "secondary";
        if (epoch.max(0) % 2 == 0) == initial_primary { "primary" } else { "secondary" }
    }
}

/// Object stores: any root (`data_root`, `landing_root`, `central_root`) may be an `s3://bucket/prefix`
/// URI; local paths stay the default. Credentials are never part of the config: they come from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity,
/// instance metadata) or from `s3.credentials_file`, and are never logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub s3: S3Config,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// S3 API endpoint (MinIO, moto, Ceph...); empty = AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: String,
    /// Region; empty = `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub region: String,
    /// Permit plain `http://` endpoints (a loopback test store); refused otherwise.
    pub allow_http: bool,
    /// `bucket.host/key` requests instead of path style `host/bucket/key`.
    pub virtual_hosted_style: bool,
    /// AWS shared-credentials file (INI: `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_session_token`) read at start; empty = environment / instance credentials.
    pub credentials_file: String,
    /// Profile (section) of `credentials_file`.
    pub profile: String,
    /// How long one store request is retried before it fails (a store that is down fails the
    /// pass, which is retried by the stage loop; short enough for a failover drill).
    pub retry_timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: String::new(),
            allow_http: false,
            virtual_hosted_style: false,
            credentials_file: String::new(),
            profile: "default".into(),
            retry_timeout_secs: 30,
        }
    }
}

/// Data retention: `event_date` partitions older than `months` are removed from every table
/// under `data_root` (the audit table excepted), every `interval_secs` by gold-aggregate and
/// central-federator (0, the default = only on demand, `tributary admin retention`: the
/// generator's fixed event-time base would otherwise age out of a demo); VACUUM deletes the
/// files once they are past its own retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub months: u32,
    pub interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { months: 13, interval_secs: 0 }
    }
}

/// log-exporter: ships metric dumps to Kafka.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogExporterConfig {
    /// Folder of the dumps; empty = `metrics.dump_dir`.
    pub dumps_dir: String,
    /// Topic; none = `kafka2prom.topic`.
    pub topic: Option<String>,
    /// Where shipped dump timestamps are recorded; empty = `<dumps_dir>/.log-exporter.state.json`.
    pub state_file: String,
    pub poll_interval_ms: u64,
    /// `acks` of the metric-dump stream (relaxed by default: the next dump replaces a lost one).
    pub metrics_acks: String,
    /// librdkafka's producer buffer bound (`queue.buffering.max.kbytes`).
    pub max_buffer_kbytes: u64,
    /// Metric dumps read and not yet acknowledged (a broker outage) are kept up to this many
    /// KiB; past it the oldest are dropped (counted). Log lines are never dropped: the files are
    /// their buffer.
    pub metrics_buffer_kbytes: u64,
    /// Log streams tailed to Kafka (rotation-safe, exactly once; see the README).
    pub logs: Vec<LogStreamConfig>,
    /// Where the log streams' checkpoints live (`<name>.json` per stream).
    pub logs_state_dir: String,
    /// After a restart with a round in flight, wait this long once the broker answers before
    /// counting what of the round is in Kafka: a request the killed process had already written
    /// to its socket can still be applied by the broker meanwhile (see the README).
    pub recovery_settle_ms: u64,
    /// Landing files put here (renamed into place) are copied into every `landing_zones` entry,
    /// then removed: the dual landing zones of a primary/secondary pair.
    pub landing_spool: String,
    pub landing_zones: Vec<String>,
}

/// One tailed log stream of the log-exporter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogStreamConfig {
    pub name: String,
    /// Glob patterns of the files to tail (`/var/log/app/*.log`).
    pub paths: Vec<String>,
    pub topic: String,
    /// `all` (default) produces idempotently; anything else turns idempotence off.
    pub acks: String,
    /// Bytes read from one file per round (the memory bound per file).
    pub max_batch_kbytes: u64,
}

impl Default for LogStreamConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            paths: Vec::new(),
            topic: String::new(),
            acks: "all".into(),
            max_batch_kbytes: 1024,
        }
    }
}

impl Default for LogExporterConfig {
    fn default() -> Self {
        Self {
            dumps_dir: String::new(),
            topic: None,
            state_file: String::new(),
            poll_interval_ms: 1000,
            metrics_acks: "1".into(),
            max_buffer_kbytes: 65536,
            metrics_buffer_kbytes: 65536,
            logs: Vec::new(),
            logs_state_dir: String::new(),
            recovery_settle_ms: 5000,
            landing_spool: String::new(),
            landing_zones: Vec::new(),
        }
    }
}

/// kafka2prom: metric dumps from Kafka exposed on `/metrics` for Prometheus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Kafka2PromConfig {
    /// Topic of the metric dumps (keyed by emitting instance).
    pub topic: String,
    /// One consumer group for every replica.
    pub group_id: String,
    /// Where the exposed series are served (`/metrics`, Prometheus text 0.0.4).
    pub listen: String,
    /// Dumps queued per partition before the partition is paused (noisy-neighbour isolation).
    pub queue_capacity: usize,
    /// A full queue whose oldest dump is older than this switches the partition to emergency
    /// mode: the oldest queued dump is dropped (counted) instead of pausing, so fresh data gets
    /// through.
    pub emergency_age_secs: u64,
    /// A series not refreshed for this long is dropped (counted).
    pub ttl_secs: u64,
    /// Expose each sample with its dump's timestamp (see the README on `honor_timestamps`).
    pub expose_timestamps: bool,
    /// How often exposed offsets are committed to the group (also on every revoke).
    pub commit_interval_ms: u64,
}

impl Default for Kafka2PromConfig {
    fn default() -> Self {
        Self {
            topic: "tributary.metrics".into(),
            group_id: "tributary-kafka2prom".into(),
            listen: "127.0.0.1:9464".into(),
            queue_capacity: 16,
            emergency_age_secs: 120,
            ttl_secs: 300,
            expose_timestamps: false,
            commit_interval_ms: 1000,
        }
    }
}

/// Metric dumps (`core::metrics_dump`): the whole registry written to a file at an interval, for
/// the log-exporter to ship where Prometheus cannot scrape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Folder of the dumps (`<dump_dir>/<instance>.prom`); empty (default) = no dumps.
    pub dump_dir: String,
    pub dump_interval_secs: u64,
    /// The emitting instance named in every dump; empty = `<service>-<hostname>`.
    pub instance: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { dump_dir: String::new(), dump_interval_secs: 30, instance: String::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BronzeConfig {
    /// Sources ingested; each has its landing directory `<landing>/<source>/`.
    pub sources: Vec<String>,
    pub max_files_per_batch: usize,
    pub max_bytes_per_batch: u64,
    /// How many flows (sources, or slots of a shared landing zone) ingest a batch at once. Each
    /// runs its own batch of up to `max_bytes_per_batch` (so peak memory grows with it); their
    /// decode, Parquet encoding and commits overlap. Default 2.
    pub parallel_flows: usize,
    /// Events larger than this are quarantined with reason `oversized`.
    pub max_event_bytes: usize,
    /// Every this many batches the set of ingested files is snapshotted, so a restart reads one
    /// index plus the file lists of at most this many commits.
    pub index_every_batches: i64,
    /// The landing contract's age rule, for producers that cannot write under a temp name and
    /// rename: a file is taken only once it has not been modified for this long. 0 (default):
    /// files are complete when they appear (rename into place).
    pub min_file_age_secs: u64,
    /// Several bronze replicas share one landing zone: each source's files are split into this
    /// many slots by a stable hash of their path, each slot with its own exactly-once position
    /// (`txn`) and discovery state, and the live replicas divide the slots among themselves
    /// (like partitions in a consumer group). 1 (default): one position per source, one replica
    /// at a time. Fixed for the life of the tables: changing it is refused at start.
    pub landing_slots: u32,
    /// How this replica names itself among the replicas sharing the landing zone (default: the
    /// host name, which is the pod name on Kubernetes, plus the process id).
    pub member_id: String,
    /// Each replica writes a heartbeat this often; one not renewed for 3 intervals is dead and
    /// its slots go to the others.
    pub member_heartbeat_secs: u64,
    /// Schema evolution of sources without their own setting: `addNewColumns` (new fields become
    /// new columns), `rescue` (the schema never changes; unknown fields go to `_rescued_data`),
    /// `failOnNewColumns` (a new field stops that source) or `none` (new fields stay in `payload`).
    pub schema_evolution: String,
    /// Per-source settings, keyed by source.
    pub source_options: std::collections::BTreeMap<String, SourceOptions>,
    pub drift: DriftConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceOptions {
    /// Overrides `bronze.schema_evolution` for this source.
    pub schema_evolution: Option<String>,
    /// Types that override inferred ones: `"dbu decimal(38,9), duration_ms long"`. The data
    /// contract's typed fields are hinted by default; these win over them.
    pub schema_hints: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    pub enabled: bool,
    /// Rates are judged over windows of at least this many rows (several small batches add up).
    pub window_rows: u64,
    /// A field's null-or-absent rate rising by more than this (absolute, 0..1) over its baseline.
    pub null_rate_jump: f64,
    /// The malformed (quarantined) line rate rising by more than this over its baseline.
    pub malformed_rate_jump: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self { enabled: true, window_rows: 1000, null_rate_jump: 0.25, malformed_rate_jump: 0.05 }
    }
}

pub const EVOLUTION_MODES: &[&str] = &["addNewColumns", "rescue", "failOnNewColumns", "none"];

impl BronzeConfig {
    /// The schema evolution mode of `source`.
    pub fn evolution_mode(&self, source: &str) -> &str {
        self.source_options
            .get(source)
            .and_then(|o| o.schema_evolution.as_deref())
            .unwrap_or(self.schema_evolution.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SilverConfig {
    /// Bronze versions read per silver commit at most.
    pub max_versions_per_batch: usize,
    /// Bytes of bronze data files (Parquet, as committed) read per silver commit at most — at
    /// least one version, whatever its size. Bounds silver's memory when it catches up a backlog
    /// of large bronze versions; also bounds each batch of the entity tables over silver.
    pub max_bytes_per_batch: u64,
    /// An event whose event_time is more than this after it landed in bronze (`_ingested_at`) is
    /// quarantined as `event_time_in_future` (a producer's wrong clock): it would otherwise move
    /// the dedup horizon and every gold watermark ahead of all real events.
    pub max_future_secs: i64,
    /// Data-quality expectations, evaluated on every batch of the silver table they name.
    pub expectations: Vec<ExpectationConfig>,
    /// Exact dedup by (source, event_id) over an event-time horizon, in bounded memory.
    pub dedup: DedupConfig,
    /// Entity tables upserted by key with SEQUENCE BY ordering (SCD type 1 and 2).
    pub entities: Vec<EntityConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Keys are remembered for this long in event time (behind the flow's max event_time). An
    /// event older than that cannot be proven new and goes to quarantine
    /// (`beyond_dedup_horizon`), never silently in or out.
    pub horizon_days: i64,
    /// Hash buckets of the on-disk key index (`silver/_dedup/<source>`, one partition each).
    pub buckets: u32,
    /// Fixed size of the in-memory Bloom filter in front of the index (MiB). Only keys it may
    /// hold are looked up on disk; its size, not the key count, bounds memory.
    pub bloom_mb: u64,
    /// The Bloom filter is split into this many slices of event time (plus one), each dropped
    /// when the horizon passes it, so it forgets expired keys. More slices forget sooner but a
    /// lookup asks each of them.
    pub bloom_slices: u32,
    /// Memory for index buckets kept loaded between batches (MiB, LRU; 0 = none).
    pub cache_mb: u64,
    /// Small files of one bucket merged once there are this many.
    pub compact_min_files: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self { horizon_days: 30, buckets: 16, bloom_mb: 32, bloom_slices: 4, cache_mb: 64, compact_min_files: 8 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EntityConfig {
    /// Tables `silver/<name>` (SCD type 1: current state) and `silver/<name>_history` (type 2).
    pub name: String,
    /// The silver table (source) the changes come from.
    pub source: String,
    /// Key columns.
    pub keys: Vec<String>,
    /// The ordering column (an integer or timestamp silver column); ties broken by event_id.
    pub sequence_by: String,
    /// `APPLY AS DELETE WHEN`: a boolean SQL expression over the silver row.
    #[serde(default)]
    pub delete_when: Option<String>,
}

pub fn default_entities() -> Vec<EntityConfig> {
    vec![
        EntityConfig {
            name: "job_runs".into(),
            source: "job".into(),
            keys: vec!["run_id".into()],
            sequence_by: "sequence".into(),
            delete_when: Some("state = 'DELETED'".into()),
        },
        EntityConfig {
            name: "clusters".into(),
            source: "cluster_metrics".into(),
            keys: vec!["cluster_id".into()],
            sequence_by: "event_time".into(),
            delete_when: None,
        },
    ]
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExpectationConfig {
    pub name: String,
    /// The source whose silver table the rule applies to, or `*` for every source.
    pub table: String,
    /// A boolean SQL expression over the silver row, e.g. `dbu >= 0`. NULL counts as failed.
    pub expr: String,
    /// `warn` (keep, count), `drop` (remove, count), `quarantine` (to silver/_quarantine with the
    /// rule) or `fail` (stop the table's flow; nothing of the batch is committed).
    pub action: String,
}

pub const EXPECTATION_ACTIONS: &[&str] = &["warn", "drop", "quarantine", "fail"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventLogConfig {
    /// Write records to `<data_root>/_tributary/event_log`. Off: records only go to the log.
    pub enabled: bool,
    /// Buffered records are appended at least this often.
    pub flush_interval_ms: u64,
}

impl Default for EventLogConfig {
    fn default() -> Self {
        Self { enabled: true, flush_interval_ms: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GoldConfig {
    pub max_versions_per_batch: usize,
    /// Watermark = max committed event_time - allowed lateness.
    pub allowed_lateness_secs: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FederatorConfig {
    /// Only rows whose boolean field of this name is true leave the region.
    pub egress_field: String,
    pub max_versions_per_batch: usize,
    /// The gRPC status endpoints of every region's services, for the global `PipelineStatus`
    /// (`tributary status --all-regions`): region -> ["http(s)://host:port", ...].
    pub status_endpoints: std::collections::BTreeMap<String, Vec<String>>,
    /// How long each endpoint may take before it is reported as not answering.
    pub status_deadline_ms: u64,
    /// TLS to the endpoints (https): the CA that signed them, and this service's client
    /// certificate and key when they require mTLS.
    pub status_ca_path: Option<std::path::PathBuf>,
    pub status_client_cert_path: Option<std::path::PathBuf>,
    pub status_client_key_path: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, e.g. `127.0.0.1:9092`. Empty: no Kafka (files only, no commit notices).
    pub brokers: String,
    /// Consumer group of bronze-ingest.
    pub group_id: String,
    /// Static group membership (`group.instance.id`), e.g. the StatefulSet pod name: a restarted
    /// member takes its partitions back at once instead of waiting for the broker to evict the
    /// old session. Empty = dynamic membership.
    pub instance_id: String,
    /// Topic per source; a source missing here uses `<topic_prefix><source>`.
    pub topics: std::collections::BTreeMap<String, String>,
    pub topic_prefix: String,
    /// Commit notices: every stage publishes one per commit; downstream stages wake on them.
    pub commits_topic: String,
    pub publish_notices: bool,
    /// Bronze batch: flush at this many records, bytes or milliseconds, whichever comes first.
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    pub max_batch_wait_ms: u64,
    /// How often group consumers report librdkafka statistics (their lag per partition,
    /// `tributary_kafka_consumer_lag`); 0 = never.
    pub statistics_interval_ms: u64,
    /// plaintext | ssl | sasl_plaintext | sasl_ssl
    pub security_protocol: String,
    /// PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with a sasl_* protocol)
    pub sasl_mechanism: String,
    pub sasl_username: String,
    /// Name of the environment variable holding the SASL password (never the password itself).
    pub sasl_password_env: String,
    pub ssl_ca_location: String,
    pub ssl_certificate_location: String,
    pub ssl_key_location: String,
    /// Further librdkafka properties passed through as they are (no secrets here: use *_env).
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "tributary-bronze".into(),
            statistics_interval_ms: 15_000,
            instance_id: String::new(),
            topics: Default::default(),
            topic_prefix: "tributary.".into(),
            commits_topic: "tributary.commits".into(),
            publish_notices: true,
            max_batch_records: 50_000,
            max_batch_bytes: 64 * 1024 * 1024,
            max_batch_wait_ms: 1000,
            security_protocol: "plaintext".into(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password_env: "TRIBUTARY_KAFKA_SASL_PASSWORD".into(),
            ssl_ca_location: String::new(),
            ssl_certificate_location: String::new(),
            ssl_key_location: String::new(),
            properties: Default::default(),
        }
    }
}

impl KafkaConfig {
    pub fn topic_for(&self, source: &str) -> String {
        self.topics.get(source).cloned().unwrap_or_else(|| format!("{}{source}", self.topic_prefix))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address (status, health, reflection). Empty disables the server.
    pub grpc_addr: String,
    /// Admin HTTP listen address (/metrics, /healthz). Empty disables it.
    pub admin_addr: String,
    pub poll_interval_ms: u64,
    /// A caught-up stage waits at least this long before it looks for input again, whatever
    /// commit notices arrive meanwhile, so the upstream commits of that time become one batch
    /// (one commit per table) instead of one batch each. A stage with a backlog runs its batches
    /// back to back regardless. Trades up to this much freshness per layer for fewer commits:
    /// per-commit costs (the Delta log replay, listings, checkpoints, gold's partition rewrites)
    /// dominate a live pipeline's CPU. 0 = react to every upstream commit. Not applied to Kafka
    /// bronze (it batches by `kafka.max_batch_wait_ms`).
    pub min_batch_interval_ms: u64,
    /// Threads a stage spreads a batch's CPU work over (bronze: decoding and Parquet encoding;
    /// silver: validation), each on one contiguous chunk; the Delta commit stays one per batch.
    /// 0 = one per core.
    pub worker_threads: usize,
    pub tls: Option<TlsConfig>,
    /// Roles by client-certificate Common Name: `viewer`, `operator`, `admin` -> [CN, ...]
    /// (mTLS: `tls.client_ca_path`). Empty: admin calls are refused, status stays open.
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

impl ServerConfig {
    /// `worker_threads`, or one per core when 0 (at most 64).
    pub fn threads(&self) -> usize {
        if self.worker_threads > 0 {
            self.worker_threads.min(64)
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(64)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    pub log_format: String,
    /// tracing EnvFilter directive; RUST_LOG wins when set.
    pub log_filter: String,
    /// OTLP/gRPC endpoint for traces; OTEL_EXPORTER_OTLP_ENDPOINT wins when set. Empty = off.
    pub otlp_endpoint: String,
}

pub const SOURCES: &[&str] = &["audit", "job", "billing", "cluster_metrics"];

impl Default for Config {
    fn default() -> Self {
        Self {
            pipeline: "tributary".into(),
            data_root: "./data".into(),
            regions: vec!["us-east-1".into()],
            landing_root: None,
            central_root: None,
            commit_attempts: 100,
            bronze: BronzeConfig::default(),
            silver: SilverConfig::default(),
            gold: GoldConfig::default(),
            federator: FederatorConfig::default(),
            kafka: KafkaConfig::default(),
            server: ServerConfig::default(),
            telemetry: TelemetryConfig::default(),
            event_log: EventLogConfig::default(),
            metrics: MetricsConfig::default(),
            kafka2prom: Kafka2PromConfig::default(),
            log_exporter: LogExporterConfig::default(),
            retention: RetentionConfig::default(),
            storage: StorageConfig::default(),
            dr: DrConfig::default(),
        }
    }
}
impl Default for BronzeConfig {
    fn default() -> Self {
        Self {
            sources: SOURCES.iter().map(|s| s.to_string()).collect(),
            max_files_per_batch: 64,
            max_bytes_per_batch: 32 * 1024 * 1024,
            parallel_flows: 2,
            max_event_bytes: 1024 * 1024,
            index_every_batches: 32,
            min_file_age_secs: 0,
            landing_slots: 1,
            member_id: String::new(),
            member_heartbeat_secs: 5,
            schema_evolution: "addNewColumns".into(),
            source_options: Default::default(),
            drift: DriftConfig::default(),
        }
    }
}
impl Default for SilverConfig {
    fn default() -> Self {
        Self {
            max_versions_per_batch: 64,
            max_bytes_per_batch: 64 << 20,
            max_future_secs: 3600,
            expectations: Vec::new(),
            dedup: DedupConfig::default(),
            entities: default_entities(),
        }
    }
}
impl Default for GoldConfig {
    fn default() -> Self {
        Self { max_versions_per_batch: 64, allowed_lateness_secs: 600 }
    }
}
impl Default for FederatorConfig {
    fn default() -> Self {
        Self {
            egress_field: "egress_approved".into(),
            max_versions_per_batch: 64,
            status_endpoints: Default::default(),
            status_deadline_ms: 2000,
            status_ca_path: None,
            status_client_cert_path: None,
            status_client_key_path: None,
        }
    }
}
impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: String::new(),
            admin_addr: String::new(),
            poll_interval_ms: 500,
            min_batch_interval_ms: 1000,
            worker_threads: 0,
            tls: None,
            roles: Default::default(),
        }
    }
}
impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "pretty".into(),
            log_filter:
                "info,buoyant_kernel=warn,deltalake_core=warn,deltalake=warn,deltalake_core::kernel::transaction=off"
                    .into(),
            otlp_endpoint: String::new(),
        }
    }
}

impl Config {
    /// Loads defaults, then the file (if any), then `TRIBUTARY__*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut value = toml::Table::new();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            value = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse { path: path.display().to_string(), message: e.to_string() })?;
        }
        let env: Vec<(String, String)> = std::env::vars().collect();
        apply_env(&mut value, &env)?;
        Self::from_table(value, path.map(|p| p.display().to_string()).unwrap_or_else(|| "<defaults>".into()))
    }

    /// Parses a TOML document (no environment overrides).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let value = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Parse { path: "<string>".into(), message: e.to_string() })?;
        Self::from_table(value, "<string>".into())
    }

    fn from_table(value: toml::Table, origin: String) -> Result<Self, ConfigError> {
        let cfg: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: origin, message: e.to_string() })?;
        cfg.validate()
    }

    /// Pure validation; returns the validated config.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.pipeline.is_empty() || !self.pipeline.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(format!("pipeline name {:?} must be non-empty [A-Za-z0-9_-]", self.pipeline));
        }
        if self.data_root.is_empty() {
            return bad("data_root must not be empty".into());
        }
        if !matches!(self.dr.role.as_str(), "" | "primary" | "secondary") {
            return bad(format!("dr.role {:?} must be \"primary\" or \"secondary\" (or empty: no DR)", self.dr.role));
        }
        if !matches!(self.dr.active.as_str(), "primary" | "secondary") {
            return bad(format!("dr.active {:?} must be \"primary\" or \"secondary\"", self.dr.active));
        }
        if self.regions.is_empty() {
            return bad("regions must list at least one region".into());
        }
        if self.silver.max_future_secs < 0 {
            return bad("silver.max_future_secs must not be negative".into());
        }
        if self.commit_attempts == 0 {
            return bad("commit_attempts must be at least 1".into());
        }
        for r in &self.regions {
            if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return bad(format!("region name {r:?} must be non-empty [A-Za-z0-9_-]"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.regions {
            if !seen.insert(r) {
                return bad(format!("region {r:?} is listed twice"));
            }
        }
        for s in &self.bronze.sources {
            if !SOURCES.contains(&s.as_str()) {
                return bad(format!("unknown source {s:?}; known sources: {}", SOURCES.join(", ")));
            }
        }
        if self.bronze.parallel_flows == 0 || self.bronze.parallel_flows > 64 {
            return bad("bronze.parallel_flows must be between 1 and 64".into());
        }
        if self.bronze.max_files_per_batch == 0 || self.bronze.max_bytes_per_batch == 0 {
            return bad("bronze.max_files_per_batch and bronze.max_bytes_per_batch must be > 0".into());
        }
        if self.kafka2prom.queue_capacity == 0
            || self.kafka2prom.ttl_secs == 0
            || self.kafka2prom.commit_interval_ms == 0
        {
            return bad("kafka2prom.queue_capacity, ttl_secs and commit_interval_ms must be > 0".into());
        }
        if self.metrics.dump_interval_secs == 0 {
            return bad("metrics.dump_interval_secs must be > 0".into());
        }
        if !self.metrics.instance.is_empty() && !crate::metrics_dump::valid_instance(&self.metrics.instance) {
            return bad(format!("metrics.instance {:?}: use letters, digits, '-', '_', '.'", self.metrics.instance));
        }
        if !(1..=256).contains(&self.bronze.landing_slots) {
            return bad("bronze.landing_slots must be between 1 and 256".into());
        }
        if self.bronze.member_heartbeat_secs == 0 {
            return bad("bronze.member_heartbeat_secs must be > 0".into());
        }
        if self.bronze.member_id.len() > 128
            || !self.bronze.member_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad("bronze.member_id: up to 128 letters, digits, '-', '_' or '.'".into());
        }
        if self.bronze.index_every_batches < 1 {
            return bad("bronze.index_every_batches must be >= 1".into());
        }
        for (source, mode) in std::iter::once(("*", self.bronze.schema_evolution.as_str())).chain(
            self.bronze
                .source_options
                .iter()
                .filter_map(|(s, o)| o.schema_evolution.as_deref().map(|m| (s.as_str(), m))),
        ) {
            if !EVOLUTION_MODES.contains(&mode) {
                return bad(format!(
                    "schema evolution mode {mode:?} of source {source:?} must be one of {}",
                    EVOLUTION_MODES.join(", ")
                ));
            }
        }
        for (source, o) in &self.bronze.source_options {
            if !SOURCES.contains(&source.as_str()) {
                return bad(format!("bronze.source_options names unknown source {source:?}"));
            }
            if let Err(e) = crate::field_type::parse_hints(&o.schema_hints) {
                return bad(format!("bronze.source_options.{source}.schema_hints: {e}"));
            }
        }
        let d = &self.bronze.drift;
        if d.window_rows == 0
            || !(0.0..=1.0).contains(&d.null_rate_jump)
            || !(0.0..=1.0).contains(&d.malformed_rate_jump)
        {
            return bad("bronze.drift: window_rows must be > 0 and the rate jumps within 0..1".into());
        }
        let mut names = std::collections::HashSet::new();
        for e in &self.silver.expectations {
            if e.name.is_empty() || !e.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return bad(format!("expectation name {:?} must be non-empty [A-Za-z0-9_-]", e.name));
            }
            if !names.insert((&e.table, &e.name)) {
                return bad(format!("expectation {:?} is declared twice for table {:?}", e.name, e.table));
            }
            if e.table != "*" && !SOURCES.contains(&e.table.as_str()) {
                return bad(format!("expectation {:?}: table {:?} is not a source (or `*`)", e.name, e.table));
            }
            if !EXPECTATION_ACTIONS.contains(&e.action.as_str()) {
                return bad(format!(
                    "expectation {:?}: action {:?} must be one of {}",
                    e.name,
                    e.action,
                    EXPECTATION_ACTIONS.join(", ")
                ));
            }
            if e.expr.trim().is_empty() {
                return bad(format!("expectation {:?} has an empty expression", e.name));
            }
        }
        let dd = &self.silver.dedup;
        if dd.horizon_days < 1 || dd.buckets == 0 || dd.buckets > 4096 || dd.bloom_mb == 0 || dd.compact_min_files < 2 {
            return bad(
                "silver.dedup: horizon_days >= 1, buckets 1..=4096, bloom_mb >= 1 and compact_min_files >= 2".into()
            );
        }
        let mut entity_names = std::collections::HashSet::new();
        for e in &self.silver.entities {
            if e.name.is_empty() || !e.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                return bad(format!("silver.entities: name {:?} must be non-empty [a-z0-9_]", e.name));
            }
            if !entity_names.insert(&e.name) || SOURCES.contains(&e.name.as_str()) {
                return bad(format!("silver.entities: name {:?} is used twice or is a source name", e.name));
            }
            if !SOURCES.contains(&e.source.as_str()) {
                return bad(format!("silver.entities.{}: source {:?} is not a source", e.name, e.source));
            }
            if e.keys.is_empty() || e.sequence_by.is_empty() {
                return bad(format!("silver.entities.{}: keys and sequence_by are required", e.name));
            }
        }
        if self.event_log.flush_interval_ms == 0 {
            return bad("event_log.flush_interval_ms must be > 0".into());
        }
        if self.bronze.max_event_bytes < 64 {
            return bad("bronze.max_event_bytes must be at least 64".into());
        }
        if self.silver.max_versions_per_batch == 0
            || self.gold.max_versions_per_batch == 0
            || self.federator.max_versions_per_batch == 0
        {
            return bad("max_versions_per_batch must be > 0".into());
        }
        if self.silver.max_bytes_per_batch == 0 {
            return bad("silver.max_bytes_per_batch must be > 0".into());
        }
        if self.gold.allowed_lateness_secs < 0 {
            return bad("gold.allowed_lateness_secs must be >= 0".into());
        }
        if self.federator.egress_field.is_empty() {
            return bad("federator.egress_field must not be empty".into());
        }
        let k = &self.kafka;
        if !matches!(k.security_protocol.as_str(), "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl") {
            return bad(format!(
                "kafka.security_protocol {:?} must be plaintext, ssl, sasl_plaintext or sasl_ssl",
                k.security_protocol
            ));
        }
        if k.security_protocol.starts_with("sasl")
            && !matches!(k.sasl_mechanism.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512")
        {
            return bad(format!(
                "kafka.sasl_mechanism {:?} must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                k.sasl_mechanism
            ));
        }
        for key in k.properties.keys() {
            if key.contains("password") || key.contains("secret") || key.contains("sasl.jaas") {
                return bad(format!(
                    "kafka.properties.{key}: secrets come from the environment (kafka.sasl_password_env), not the config file"
                ));
            }
        }
        if k.max_batch_records == 0 || k.max_batch_bytes == 0 || k.max_batch_wait_ms == 0 {
            return bad("kafka.max_batch_records, max_batch_bytes and max_batch_wait_ms must be > 0".into());
        }
        for s in k.topics.keys() {
            if !SOURCES.contains(&s.as_str()) {
                return bad(format!("kafka.topics: unknown source {s:?}"));
            }
        }
        if self.server.poll_interval_ms == 0 {
            return bad("server.poll_interval_ms must be > 0".into());
        }
        for (name, addr) in [("grpc_addr", &self.server.grpc_addr), ("admin_addr", &self.server.admin_addr)] {
            if !addr.is_empty() && addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!("server.{name} {addr:?} is not a socket address like 127.0.0.1:50051"));
            }
        }
        if !matches!(self.telemetry.log_format.as_str(), "pretty" | "json") {
            return bad(format!("telemetry.log_format {:?} must be pretty or json", self.telemetry.log_format));
        }
        let roots = [
            ("data_root", Some(&self.data_root)),
            ("landing_root", self.landing_root.as_ref()),
            ("central_root", self.central_root.as_ref()),
        ];
        for (name, root) in roots {
            let Some(root) = root else { continue };
            if let Some((scheme, rest)) = root.split_once("://") {
                if !matches!(scheme, "file" | "s3" | "s3a") {
                    return bad(format!(
                        "{name} {root:?}: scheme {scheme}:// is not supported (local paths, file://, s3://)"
                    ));
                }
                if scheme != "file" && rest.split('/').next().unwrap_or("").is_empty() {
                    return bad(format!("{name} {root:?} names no bucket"));
                }
            }
        }
        let ep = &self.storage.s3.endpoint;
        if ep.starts_with("http://") && !self.storage.s3.allow_http {
            return bad(format!(
                "storage.s3.endpoint {ep:?} is plain http: set storage.s3.allow_http = true (test stores only)"
            ));
        }
        if !ep.is_empty() && !ep.starts_with("http://") && !ep.starts_with("https://") {
            return bad(format!("storage.s3.endpoint {ep:?} must start with http:// or https://"));
        }
        Ok(self)
    }

    /// Root URI/path of one region's tables.
    pub fn region_root(&self, region: &str) -> String {
        join(&self.data_root, &format!("regions/{region}"))
    }
    pub fn landing(&self, region: &str) -> String {
        match &self.landing_root {
            Some(l) => l.replace("{region}", region),
            None => join(&self.region_root(region), "landing"),
        }
    }
    pub fn central_root(&self) -> String {
        self.central_root.clone().unwrap_or_else(|| join(&self.data_root, "central"))
    }
    /// Location of a region table, e.g. `bronze/billing`.
    pub fn region_table(&self, region: &str, name: &str) -> String {
        join(&self.region_root(region), name)
    }
    pub fn central_table(&self, name: &str) -> String {
        join(&self.central_root(), name)
    }
}

/// Joins a relative path onto a root that may be a path or a URI.
pub fn join(root: &str, rel: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), rel.trim_start_matches('/'))
}

/// Applies `TRIBUTARY__A__B=value` overrides: keys lowercased, values parsed as TOML when they
/// parse (numbers, booleans, arrays), else taken as strings.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("TRIBUTARY__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env { var: k.clone(), message: "empty key segment".into() });
        }
        let parsed = format!("x = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("x"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        let mut cur = &mut *table;
        for seg in &path[..path.len() - 1] {
            let entry = cur.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env { var: k.clone(), message: format!("{seg} is not a section") });
                }
            };
        }
        cur.insert(path[path.len() - 1].clone(), parsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_settings_are_validated_with_names() {
        let bad = |t: &str| Config::from_toml_str(t).unwrap_err().to_string();
        assert!(bad("[bronze]\nschema_evolution = \"merge\"\n").contains("merge"));
        assert!(bad("[bronze.source_options.billing]\nschema_hints = \"dbu money\"\n").contains("dbu money"));
        assert!(bad("[bronze.source_options.nope]\n").contains("nope"));
        let e =
            "[[silver.expectations]]\nname = \"r\"\ntable = \"billing\"\nexpr = \"dbu >= 0\"\naction = \"explode\"\n";
        assert!(bad(e).contains("explode"));
        let ok = Config::from_toml_str(
            "[bronze]\nschema_evolution = \"rescue\"\n[bronze.source_options.job]\nschema_evolution = \"none\"\n",
        )
        .unwrap();
        assert_eq!(ok.bronze.evolution_mode("job"), "none");
        assert_eq!(ok.bronze.evolution_mode("audit"), "rescue");
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_rejected_with_its_name() {
        let err = Config::from_toml_str("pipeline = \"p\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::from_toml_str("regions = []").is_err());
        assert!(Config::from_toml_str("[server]\ngrpc_addr = \"nope\"").is_err());
        assert!(Config::from_toml_str("[bronze]\nsources = [\"nosuch\"]").is_err());
        assert!(Config::from_toml_str("pipeline = \"a/b\"").is_err());
        assert!(Config::from_toml_str("[bronze]\nlanding_slots = 0").is_err());
        assert!(Config::from_toml_str("[bronze]\nlanding_slots = 257").is_err());
        assert!(Config::from_toml_str("[bronze]\nmember_id = \"a/../b\"").is_err());
        assert!(Config::from_toml_str("[bronze]\nlanding_slots = 16\nmember_id = \"bronze-7c9f-x\"").is_ok());
        let secret = Config::from_toml_str("[kafka.properties]\n\"sasl.password\" = \"hunter2\"").unwrap_err();
        assert!(secret.to_string().contains("environment") && !secret.to_string().contains("hunter2"), "{secret}");
        assert!(
            Config::from_toml_str("[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"").is_err()
        );
    }

    #[test]
    fn env_overrides_file() {
        let mut t: toml::Table = "pipeline = \"p\"\n[gold]\nallowed_lateness_secs = 5".parse().unwrap();
        apply_env(
            &mut t,
            &[
                ("TRIBUTARY__GOLD__ALLOWED_LATENESS_SECS".into(), "42".into()),
                ("TRIBUTARY__DATA_ROOT".into(), "/tmp/x".into()),
                ("OTHER".into(), "1".into()),
            ],
        )
        .unwrap();
        let c = Config::from_table(t, "t".into()).unwrap();
        assert_eq!(c.gold.allowed_lateness_secs, 42);
        assert_eq!(c.data_root, "/tmp/x");
        assert_eq!(c.pipeline, "p");
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().and_then(|e| e.to_str()) == Some("toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n > 0, "no example configs found in {}", dir.display());
    }
}

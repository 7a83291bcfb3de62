//! The loop every stage runs: process what is available, publish status, sleep, repeat; on a
//! failed batch, log it, back off and resume from what the output tables say.

use crate::Shutdown;
use crate::metrics::batch_failed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tributary_proto::v1::StageStatus;

/// Flows (stage, region) an operator paused in this process.
static PAUSED: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Pauses or resumes a stage of a region in this process; whether anything changed.
pub fn set_paused(stage: &str, region: &str, paused: bool) -> bool {
    let mut p = PAUSED.lock().unwrap_or_else(|e| e.into_inner());
    let key = (stage.to_string(), region.to_string());
    if paused { p.insert(key) } else { p.remove(&key) }
}

/// The wake-up of every running stage loop of this process, by (stage, region).
type Waker = ((String, String), std::sync::Weak<tokio::sync::Notify>);
static WAKERS: std::sync::Mutex<Vec<Waker>> = std::sync::Mutex::new(Vec::new());

/// Starts a pass of the stage loops of (stage, region) now; how many were woken.
pub fn trigger(stage: &str, region: &str) -> usize {
    let mut w = WAKERS.lock().unwrap_or_else(|e| e.into_inner());
    w.retain(|(_, n)| n.strong_count() > 0);
    let mut n = 0;
    for ((s, r), waker) in w.iter() {
        if s == stage
            && r == region
            && let Some(waker) = waker.upgrade()
        {
            waker.notify_one();
            n += 1;
        }
    }
    n
}

pub fn is_paused(stage: &str, region: &str) -> bool {
    PAUSED.lock().unwrap_or_else(|e| e.into_inner()).contains(&(stage.to_string(), region.to_string()))
}

/// One unit of a pipeline (a bronze flow set, a silver transform, ...).
#[tonic::async_trait]
pub trait Stage: Send + 'static {
    /// Stage name for logs and metrics, e.g. `bronze`.
    fn stage(&self) -> &str;
    fn region(&self) -> &str;
    /// Processes what is available now (bounded work). Returns input units processed; 0 = idle.
    async fn run_once(&mut self) -> crate::Result<u64>;
    /// Drops in-memory state and reloads it from the output tables (after an error).
    async fn recover(&mut self) -> crate::Result<()>;
    /// Current status (positions from the tables, versions, counters).
    async fn status(&mut self) -> StageStatus;
    /// URIs of the Delta tables this stage reads; a commit notice for one wakes the stage.
    fn inputs(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether a pass that found nothing means "caught up". A Kafka consumer still joining its
    /// group, or behind the partitions' high watermarks, says no.
    fn caught_up(&self) -> bool {
        true
    }
    /// How long to wait after a pass that found nothing. Stages whose `run_once` already blocks
    /// waiting for input (a Kafka consumer) return a short pause instead of the poll interval.
    fn idle_sleep(&self, poll: Duration) -> Duration {
        poll
    }
    /// The part of an idle wait no commit notice cuts short (`server.min_batch_interval_ms`);
    /// stages that batch by time themselves (a Kafka consumer) return zero.
    fn min_batch_interval(&self, configured: Duration) -> Duration {
        configured
    }
    /// Called once when the stage's loop ends on shutdown (hand work over, say goodbye).
    async fn stopping(&mut self) {}
}

/// Wires commit notices to stages: given table URI -> wakers, start delivering wake-ups.
pub type NoticeHook = Box<
    dyn FnOnce(std::collections::HashMap<String, Vec<Arc<tokio::sync::Notify>>>, Shutdown) -> crate::Result<()> + Send,
>;

/// Shared progress bookkeeping, so a supervisor can tell when every stage is idle.
#[derive(Default)]
pub struct Progress {
    work: AtomicU64,
    stages: RwLock<Vec<Arc<StageProgress>>>,
}

#[derive(Default)]
pub struct StageProgress {
    pub name: String,
    /// Value of the work counter when this stage last started a pass that found nothing.
    idle_at: AtomicU64,
    idle_valid: std::sync::atomic::AtomicBool,
    pub units: AtomicU64,
    pub busy_micros: AtomicU64,
    pub failures: AtomicU64,
}

impl Progress {
    pub fn register(&self, name: String) -> Arc<StageProgress> {
        let p = Arc::new(StageProgress { name, ..Default::default() });
        self.stages.write().unwrap_or_else(|e| e.into_inner()).push(p.clone());
        p
    }
    /// True when, since the last work anywhere, every stage has completed a pass that found
    /// nothing to do.
    pub fn all_idle(&self) -> bool {
        let now = self.work.load(Ordering::SeqCst);
        let stages = self.stages.read().unwrap_or_else(|e| e.into_inner());
        !stages.is_empty()
            && stages.iter().all(|s| s.idle_valid.load(Ordering::SeqCst) && s.idle_at.load(Ordering::SeqCst) == now)
    }
    pub fn stages(&self) -> Vec<Arc<StageProgress>> {
        self.stages.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs `stage` until shutdown, publishing its status into `status` after every pass.
pub async fn run_loop(
    mut stage: Box<dyn Stage>,
    poll: Duration,
    min_batch: Duration,
    shutdown: Shutdown,
    progress: Arc<Progress>,
    status: Arc<RwLock<StageStatus>>,
    wake: Arc<tokio::sync::Notify>,
) {
    let me = progress.register(format!("{}/{}", stage.stage(), stage.region()));
    WAKERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(((stage.stage().to_string(), stage.region().to_string()), Arc::downgrade(&wake)));
    let mut backoff = Duration::from_millis(100);
    let mut need_recover = false;
    while !shutdown.is_triggered() {
        if need_recover {
            if let Err(e) = stage.recover().await {
                batch_failed(stage.stage(), stage.region(), "recover", &e);
                me.failures.fetch_add(1, Ordering::Relaxed);
                if shutdown.sleep(backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            need_recover = false;
        }
        if is_paused(stage.stage(), stage.region()) {
            // Paused by an operator (Admin/PauseFlow): no new pass until resumed.
            me.idle_valid.store(false, Ordering::SeqCst);
            let mut st = stage.status().await;
            st.last_error = "paused by an operator".into();
            *status.write().unwrap_or_else(|e| e.into_inner()) = st;
            if shutdown.sleep(poll.min(Duration::from_millis(500))).await {
                break;
            }
            continue;
        }
        let counter_before = progress.work.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let result = crate::telemetry::in_pass(stage.run_once()).await;
        me.busy_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut st = stage.status().await;
        if let Ok(units) = &result {
            crate::metrics::backlog(stage.stage(), stage.region(), *units);
        }
        match result {
            Ok(0) => {
                if stage.caught_up() {
                    me.idle_at.store(counter_before, Ordering::SeqCst);
                    me.idle_valid.store(true, Ordering::SeqCst);
                } else {
                    me.idle_valid.store(false, Ordering::SeqCst);
                }
                backoff = Duration::from_millis(100);
                *status.write().unwrap_or_else(|e| e.into_inner()) = st;
                // First the minimum interval, which notices do not cut short (what arrives
                // meanwhile becomes one batch), then until the poll interval passes or a commit
                // notice for an input arrives.
                let min = stage.min_batch_interval(min_batch);
                if !min.is_zero() && shutdown.sleep(min).await {
                    break;
                }
                let woken = tokio::select! {
                    stop = shutdown.sleep(stage.idle_sleep(poll).saturating_sub(min)) => if stop { break } else { false },
                    _ = wake.notified() => true,
                };
                if woken {
                    tracing::debug!(stage = stage.stage(), "woken by a commit notice");
                    crate::metrics::notice_wakeup(stage.stage(), stage.region());
                }
            }
            Ok(n) => {
                me.units.fetch_add(n, Ordering::Relaxed);
                progress.work.fetch_add(1, Ordering::SeqCst);
                me.idle_valid.store(false, Ordering::SeqCst);
                backoff = Duration::from_millis(100);
                *status.write().unwrap_or_else(|e| e.into_inner()) = st;
            }
            Err(e) => {
                if e.kind == crate::ErrorKind::Conflict {
                    crate::metrics::commit_conflict(stage.stage(), stage.region(), "batch", 0, &e.to_string());
                } else {
                    batch_failed(stage.stage(), stage.region(), "batch", &e);
                }
                me.failures.fetch_add(1, Ordering::Relaxed);
                me.idle_valid.store(false, Ordering::SeqCst);
                st.last_error = e.to_string();
                *status.write().unwrap_or_else(|e| e.into_inner()) = st;
                need_recover = true;
                if shutdown.sleep(backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    stage.stopping().await;
}

/// Status provider over the snapshots published by `run_loop`.
pub struct SharedStatus(pub Vec<Arc<RwLock<StageStatus>>>);

#[tonic::async_trait]
impl crate::status::StatusProvider for SharedStatus {
    async fn stages(&self, include_table_stats: bool) -> Vec<StageStatus> {
        self.0
            .iter()
            .map(|s| {
                let mut st = s.read().unwrap_or_else(|e| e.into_inner()).clone();
                if !include_table_stats {
                    for t in &mut st.tables {
                        t.row_count = 0;
                        t.max_event_time_unix_ms = 0;
                    }
                }
                st
            })
            .collect()
    }
}

/// Stages spawned as tasks, with what a supervisor needs to watch them.
pub struct Running {
    pub progress: Arc<Progress>,
    pub statuses: Vec<Arc<RwLock<StageStatus>>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Input table URI -> the wakers of the stages reading it (for commit notices).
    pub interest: std::collections::HashMap<String, Vec<Arc<tokio::sync::Notify>>>,
}

/// Spawns one `run_loop` per stage.
pub fn spawn_stages(stages: Vec<Box<dyn Stage>>, poll: Duration, min_batch: Duration, shutdown: &Shutdown) -> Running {
    let progress = Arc::new(Progress::default());
    let mut running =
        Running { progress: progress.clone(), statuses: Vec::new(), tasks: Vec::new(), interest: Default::default() };
    for s in stages {
        let st = Arc::new(RwLock::new(StageStatus {
            stage: s.stage().into(),
            region: s.region().into(),
            ..Default::default()
        }));
        running.statuses.push(st.clone());
        let wake = Arc::new(tokio::sync::Notify::new());
        for input in s.inputs() {
            running.interest.entry(input).or_default().push(wake.clone());
        }
        running.tasks.push(tokio::spawn(run_loop(s, poll, min_batch, shutdown.clone(), progress.clone(), st, wake)));
    }
    running
}

/// Starts the status gRPC server and the admin HTTP server when their addresses are configured.
pub async fn start_servers(
    service: &str,
    cfg: &crate::Config,
    statuses: Vec<Arc<RwLock<StageStatus>>>,
    shutdown: &Shutdown,
) -> crate::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut servers = Vec::new();
    if !cfg.server.grpc_addr.is_empty() {
        let svc = crate::status::StatusService {
            service: service.into(),
            pipeline: cfg.pipeline.clone(),
            started_unix_ms: crate::now_ms(),
            provider: Arc::new(SharedStatus(statuses)),
            fan_out: Arc::new(crate::status::FanOut::from_config(&cfg.federator)?),
        };
        servers.push(crate::server::serve_grpc(&cfg.server, svc, shutdown.clone()).await?.1);
    }
    if !cfg.server.admin_addr.is_empty() {
        servers.push(crate::server::serve_admin(&cfg.server.admin_addr, shutdown.clone()).await?.1);
    }
    Ok(servers)
}

/// Runs `stages` as one service: status gRPC + admin HTTP when configured, a loop per stage,
/// until `shutdown`.
pub async fn serve_stages(
    service: &str,
    cfg: &crate::Config,
    stages: Vec<Box<dyn Stage>>,
    shutdown: Shutdown,
    notices: Option<NoticeHook>,
) -> crate::Result<()> {
    let Running { progress, statuses, tasks, interest } = spawn_stages(
        stages,
        Duration::from_millis(cfg.server.poll_interval_ms),
        Duration::from_millis(cfg.server.min_batch_interval_ms),
        &shutdown,
    );
    if let Some(hook) = notices
        && !interest.is_empty()
    {
        hook(interest, shutdown.clone())?;
    }
    let servers = start_servers(service, cfg, statuses, &shutdown).await?;
    let dump = (!cfg.metrics.dump_dir.is_empty()).then(|| {
        tokio::spawn(crate::metrics_dump::run(
            std::path::PathBuf::from(&cfg.metrics.dump_dir),
            crate::metrics_dump::instance_name(&cfg.metrics.instance, service),
            Duration::from_secs(cfg.metrics.dump_interval_secs),
            shutdown.clone(),
        ))
    });
    if shutdown.wants_exit_when_idle() {
        while !shutdown.is_triggered() {
            if progress.all_idle() {
                tracing::info!(service, "available-now: every stage is idle, stopping");
                shutdown.trigger();
                break;
            }
            shutdown.sleep(Duration::from_millis(100)).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    for s in servers {
        let _ = s.await;
    }
    if let Some(d) = dump {
        let _ = d.await;
    }
    Ok(())
}

/// Failure isolation between the flows of one stage (a source, a region, an entity table): a
/// failing flow backs off on its own (100 ms doubling to 30 s) and is reloaded from its tables
/// before its next try, while the other flows keep their freshness. The stage reports itself
/// caught up only when no flow is failing, so `--exit-when-idle` never mistakes a failing flow for
/// a finished one.
pub struct FlowHealth {
    flows: Vec<Health>,
}

#[derive(Default)]
struct Health {
    retry_at: Option<std::time::Instant>,
    backoff: Duration,
    reload: bool,
    last_error: Option<String>,
}

impl FlowHealth {
    pub fn new(n: usize) -> Self {
        Self { flows: (0..n).map(|_| Health::default()).collect() }
    }
    /// Whether flow `i` may run now (not backing off after a failure).
    pub fn due(&self, i: usize) -> bool {
        self.flows[i].retry_at.is_none_or(|t| std::time::Instant::now() >= t)
    }
    /// Whether flow `i` failed and must be reloaded from its tables before it runs again.
    pub fn needs_reload(&self, i: usize) -> bool {
        self.flows[i].reload
    }
    /// Every flow is (re)loaded from its tables before its next run, each on its own: a flow whose
    /// tables cannot be read at start fails alone instead of failing the stage.
    pub fn reload_all(&mut self) {
        for h in &mut self.flows {
            h.reload = true;
        }
    }
    pub fn reloaded(&mut self, i: usize) {
        self.flows[i].reload = false;
    }
    /// Flow `i` ran without error.
    pub fn ok(&mut self, i: usize) {
        let h = &mut self.flows[i];
        h.retry_at = None;
        h.backoff = Duration::ZERO;
        h.last_error = None;
    }
    /// Flow `i` (`name`, e.g. `bronze/billing`) failed: counted and logged like a failed batch
    /// (a lost race as a conflict), backed off, reloaded before its next try.
    pub fn failed(&mut self, i: usize, stage: &str, region: &str, name: &str, e: &crate::Error) {
        if e.kind == crate::ErrorKind::Conflict {
            crate::metrics::commit_conflict(stage, region, name, 0, &e.to_string());
        } else {
            batch_failed(stage, region, name, e);
        }
        let h = &mut self.flows[i];
        h.backoff = (h.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
        h.retry_at = Some(std::time::Instant::now() + h.backoff);
        h.reload = true;
        h.last_error = Some(format!("{name}: {e}"));
    }
    /// Records the outcome of running flow `i` (`ok` or `failed`); returns the units of work done.
    pub fn record(
        &mut self,
        i: usize,
        result: crate::Result<u64>,
        stage: &str,
        region: &str,
        name: impl FnOnce() -> String,
    ) -> u64 {
        match result {
            Ok(n) => {
                self.ok(i);
                n
            }
            Err(e) => {
                self.failed(i, stage, region, &name(), &e);
                0
            }
        }
    }
    /// No flow is failing.
    pub fn healthy(&self) -> bool {
        self.flows.iter().all(|h| h.last_error.is_none())
    }
    /// The failing flows' last errors, for the status RPC.
    pub fn errors(&self) -> Vec<String> {
        self.flows.iter().filter_map(|h| h.last_error.clone()).collect()
    }
    /// The status RPC's `last_error`: the stage's stopped flows (`stopped`, e.g. a `fail`
    /// expectation), then the failing flows' last errors.
    pub fn last_error(&self, stopped: &[&str]) -> String {
        stopped.iter().map(|s| s.to_string()).chain(self.errors()).collect::<Vec<_>>().join("; ")
    }
}

#[cfg(test)]
mod flow_health_tests {
    use super::*;

    #[test]
    fn a_failing_flow_backs_off_alone_and_is_reloaded_before_its_next_try() {
        let mut h = FlowHealth::new(2);
        assert!(h.due(0) && h.due(1) && h.healthy());
        h.failed(0, "bronze", "r1", "bronze/billing", &crate::Error::external("disk full"));
        assert!(!h.due(0), "backing off");
        assert!(h.due(1), "the other flow is not held back");
        assert!(h.needs_reload(0) && !h.needs_reload(1));
        assert!(!h.healthy());
        assert_eq!(h.errors(), vec!["bronze/billing: disk full".to_string()]);
        assert_eq!(h.last_error(&["x stopped"]), "x stopped; bronze/billing: disk full");
        std::thread::sleep(Duration::from_millis(120));
        assert!(h.due(0));
        h.reloaded(0);
        h.ok(0);
        assert!(h.healthy() && !h.needs_reload(0));
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Input arrives one unit every 20 ms (an upstream committing 50 times a second) and each
    /// arrival notifies the stage; the stage takes whatever has arrived in one batch.
    struct Follower {
        arrived: Arc<AtomicU64>,
        taken: u64,
        batches: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl Stage for Follower {
        fn stage(&self) -> &str {
            "silver"
        }
        fn region(&self) -> &str {
            "pacing-test"
        }
        async fn run_once(&mut self) -> crate::Result<u64> {
            let new = self.arrived.load(Ordering::SeqCst) - self.taken;
            if new > 0 {
                self.taken += new;
                self.batches.fetch_add(1, Ordering::SeqCst);
            }
            Ok(new)
        }
        async fn recover(&mut self) -> crate::Result<()> {
            Ok(())
        }
        async fn status(&mut self) -> StageStatus {
            StageStatus::default()
        }
        fn inputs(&self) -> Vec<String> {
            vec!["upstream".into()]
        }
    }

    /// (batches, units taken) after 2 s of arrivals with this minimum interval.
    async fn batches_with(min_batch: Duration) -> (u64, u64) {
        let (arrived, batches) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stage = Follower { arrived: arrived.clone(), taken: 0, batches: batches.clone() };
        let shutdown = Shutdown::new();
        let running = spawn_stages(vec![Box::new(stage)], Duration::from_millis(500), min_batch, &shutdown);
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            arrived.fetch_add(1, Ordering::SeqCst);
            for w in &running.interest["upstream"] {
                w.notify_one();
            }
        }
        // Long enough for a last pass after the last arrival.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let taken = running.progress.stages.read().unwrap()[0].units.load(Ordering::SeqCst);
        shutdown.trigger();
        for t in running.tasks {
            t.await.unwrap();
        }
        (batches.load(Ordering::SeqCst), taken)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caught_up_stage_batches_the_commits_of_its_minimum_interval() {
        // Every notice starts a pass: about one batch per upstream commit.
        let (eager, taken) = batches_with(Duration::ZERO).await;
        assert_eq!(taken, 100);
        assert!(eager >= 50, "{eager} batches without a minimum interval");
        // 500 ms minimum: what arrives meanwhile is one batch (2 s of arrivals: ~4-5 batches;
        // the bound leaves room for a loaded machine stretching the 20 ms sleeps).
        let (paced, taken) = batches_with(Duration::from_millis(500)).await;
        assert_eq!(taken, 100, "nothing is left behind");
        assert!(
            (2..=12).contains(&paced) && paced * 4 < eager,
            "{paced} batches with a 500 ms minimum, {eager} without"
        );
    }
}

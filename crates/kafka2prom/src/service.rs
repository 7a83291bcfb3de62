//! The kafka2prom consumer-group member.
//!
//! Ordering per partition is kept by one worker per partition (a tokio task) fed by a bounded
//! queue. The consumer loop only routes messages: when a partition's queue is full the partition
//! alone is paused (the message in hand is parked and the partition resumes once its worker made
//! room), unless the oldest queued dump is older than `emergency_age_secs`: then the oldest dump is
//! dropped (counted) so the freshest data gets through.
//!
//! Exposure and offsets: a worker applies a dump to the store under one lock with the partition's
//! ownership check and records the offset as exposed; the consumer loop commits exposed offsets
//! every `commit_interval_ms`. On revoke the rebalance callback (which runs before the partitions
//! are handed over) takes the same lock, evicts the partition's series, commits its exposed offset
//! synchronously and drops its queue: no dump of a revoked partition can be exposed afterwards, and
//! the next owner starts right after the last exposed dump, so a series never goes back.

use crate::store::Store;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tributary_core::config::Kafka2PromConfig;
use tributary_core::{Config, Error, Result, Shutdown};
use tributary_promtext::Format;

struct Queued {
    offset: i64,
    payload: Vec<u8>,
    /// Kafka message timestamp (the dump's produce time), for the emergency-mode age.
    produced_ms: i64,
}

struct PartQueue {
    generation: u64,
    q: VecDeque<Queued>,
    /// Received while the queue was full: kept, and the partition paused until there is room.
    parked: Option<Queued>,
    notify: Arc<Notify>,
}

/// Under one lock: what is exposed, which partitions this member owns (and since which
/// assignment), and the offset up to which each partition's dumps are exposed.
struct State {
    store: Store,
    owned: HashMap<i32, u64>,
    exposed: HashMap<i32, i64>,
    next_generation: u64,
}

struct Shared {
    topic: String,
    cfg: Kafka2PromConfig,
    state: Mutex<State>,
    queues: Mutex<HashMap<i32, PartQueue>>,
    /// Partitions assigned by the last rebalance, for the loop to start their workers.
    assigned: Mutex<Vec<(i32, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn stats(&self, stats: rdkafka::Statistics) {
        tributary_kafka::record_lag(&self.shared.cfg.group_id, &stats);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = r else { return };
        let parts: Vec<i32> =
            list.elements().iter().filter(|e| e.topic() == self.shared.topic).map(|e| e.partition()).collect();
        let mut commit = TopicPartitionList::new();
        {
            let mut st = lock(&self.shared.state);
            for p in &parts {
                st.owned.remove(p);
                let n = st.store.evict_partition(*p);
                tributary_core::metrics::bridge("evicted", n);
                if let Some(o) = st.exposed.remove(p) {
                    let _ = commit.add_partition_offset(&self.shared.topic, *p, Offset::Offset(o + 1));
                }
            }
            tributary_core::metrics::Metrics::global().bridge_series.set(st.store.series() as i64);
        }
        {
            let mut qs = lock(&self.shared.queues);
            for p in &parts {
                if let Some(q) = qs.remove(p) {
                    q.notify.notify_one();
                }
            }
        }
        if commit.count() > 0
            && let Err(e) = c.commit(&commit, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "committing exposed offsets on revoke failed");
        }
        tracing::info!(partitions = ?parts, "partitions revoked: their series are evicted");
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(list) => {
                let parts: Vec<i32> =
                    list.elements().iter().filter(|e| e.topic() == self.shared.topic).map(|e| e.partition()).collect();
                let mut st = lock(&self.shared.state);
                let mut out = Vec::new();
                for p in parts {
                    st.next_generation += 1;
                    let g = st.next_generation;
                    st.owned.insert(p, g);
                    out.push((p, g));
                }
                drop(st);
                tracing::info!(partitions = ?out.iter().map(|x| x.0).collect::<Vec<_>>(), "partitions assigned");
                lock(&self.shared.assigned).extend(out);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Applies one dump of partition `p` (assignment `generation`) at `offset`.
fn process(shared: &Shared, p: i32, generation: u64, m: &Queued) {
    if let Some(d) = tributary_core::fault::slow(&format!("kafka2prom.apply.p{p}")) {
        std::thread::sleep(d);
    }
    let now = tributary_core::now_ms();
    let (header, body) = match tributary_core::metrics_dump::split(&m.payload) {
        Ok(x) => x,
        Err(e) => {
            tributary_core::metrics::bridge("invalid_dump", 1);
            tracing::warn!(topic = %shared.topic, partition = p, offset = m.offset, error = %e, "not a metric dump; skipped");
            mark_exposed(shared, p, generation, m.offset);
            return;
        }
    };
    let prepared = crate::store::prepare(&header.instance, body, Format::OpenMetrics);
    if let Some(first) = prepared.errors.first() {
        let n = prepared.errors.len();
        tributary_core::metrics::bridge("invalid_line", n as u64);
        tracing::warn!(topic = %shared.topic, partition = p, offset = m.offset, instance = %header.instance,
            line = first.line, error = %first.message, errors = n, "invalid lines in a metric dump (skipped, the rest kept)");
    }
    let mut st = lock(&shared.state);
    if st.owned.get(&p) != Some(&generation) {
        return; // revoked meanwhile: never exposed
    }
    let applied = st.store.apply_prepared(p, header.timestamp_ms, prepared, now);
    st.exposed.insert(p, m.offset);
    tributary_core::metrics::Metrics::global().bridge_series.set(st.store.series() as i64);
    drop(st);
    tributary_core::metrics::bridge("updated", applied.updated);
    tributary_core::metrics::bridge("older_dropped", applied.older_dropped);
}

fn mark_exposed(shared: &Shared, p: i32, generation: u64, offset: i64) {
    let mut st = lock(&shared.state);
    if st.owned.get(&p) == Some(&generation) {
        st.exposed.insert(p, offset);
    }
}

/// The worker of one partition assignment: in order, until the partition is revoked.
async fn worker(shared: Arc<Shared>, p: i32, generation: u64, notify: Arc<Notify>, shutdown: Shutdown) {
    loop {
        let next = {
            let mut qs = lock(&shared.queues);
            match qs.get_mut(&p) {
                Some(q) if q.generation == generation => q.q.pop_front(),
                _ => return,
            }
        };
        match next {
            Some(m) => {
                let s = shared.clone();
                // Parsing is CPU work: off the runtime's I/O threads.
                let _ = tokio::task::spawn_blocking(move || process(&s, p, generation, &m)).await;
            }
            None => {
                if shutdown.is_triggered() {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), notify.notified()).await;
            }
        }
    }
}

/// Runs one kafka2prom member until `shutdown`.
pub async fn run(cfg: Arc<Config>, shutdown: Shutdown) -> Result<()> {
    let k = &cfg.kafka2prom;
    let shared = Arc::new(Shared {
        topic: k.topic.clone(),
        cfg: k.clone(),
        state: Mutex::new(State {
            store: Store::new(),
            owned: HashMap::new(),
            exposed: HashMap::new(),
            next_generation: 0,
        }),
        queues: Mutex::new(HashMap::new()),
        assigned: Mutex::new(Vec::new()),
    });
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        tributary_kafka::group_consumer_config(&cfg.kafka, &k.group_id, &cfg.kafka.instance_id)?
            .create_with_context(Ctx { shared: shared.clone() })
            .map_err(|e| Error::external("creating the kafka2prom consumer").with_source(e))?,
    );
    consumer
        .subscribe(&[k.topic.as_str()])
        .map_err(|e| Error::external(format!("subscribing to {}", k.topic)).with_source(e))?;
    let (addr, http) = serve(k.listen.as_str(), shared.clone(), shutdown.clone()).await?;
    tracing::info!(topic = %k.topic, group = %k.group_id, %addr, "kafka2prom member started");
    let servers = tributary_core::stage::start_servers("kafka2prom", &cfg, Vec::new(), &shutdown).await?;

    let mut last_commit = std::time::Instant::now();
    let mut last_expire = std::time::Instant::now();
    while !shutdown.is_triggered() {
        let received = tokio::select! {
            r = consumer.recv() => Some(r),
            _ = tokio::time::sleep(Duration::from_millis(200)) => None,
            _ = shutdown.wait() => break,
        };
        start_workers(&shared, &shutdown);
        match received {
            Some(Ok(m)) if m.topic() == shared.topic => {
                let q = Queued {
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    produced_ms: m.timestamp().to_millis().unwrap_or_else(tributary_core::now_ms),
                };
                route(&shared, &consumer, m.partition(), q);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "Kafka receive error (retrying)");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {}
        }
        resume_with_room(&shared, &consumer);
        if last_commit.elapsed() >= Duration::from_millis(k.commit_interval_ms) {
            commit_exposed(&shared, &consumer, CommitMode::Async);
            last_commit = std::time::Instant::now();
        }
        // A pass over every series: every tenth of the TTL (1–30 s), not more often.
        if last_expire.elapsed() >= Duration::from_secs((k.ttl_secs / 10).clamp(1, 30)) {
            let mut st = lock(&shared.state);
            let n = st.store.expire(tributary_core::now_ms(), k.ttl_secs as i64 * 1000);
            tributary_core::metrics::Metrics::global().bridge_series.set(st.store.series() as i64);
            drop(st);
            tributary_core::metrics::bridge("expired", n);
            last_expire = std::time::Instant::now();
        }
    }
    // Leaving: expose nothing more, commit what was exposed, then leave the group.
    commit_exposed(&shared, &consumer, CommitMode::Sync);
    consumer.unsubscribe();
    shutdown.trigger();
    let _ = http.await;
    for s in servers {
        let _ = s.await;
    }
    Ok(())
}

fn start_workers(shared: &Arc<Shared>, shutdown: &Shutdown) {
    let new: Vec<(i32, u64)> = std::mem::take(&mut *lock(&shared.assigned));
    for (p, g) in new {
        let notify = Arc::new(Notify::new());
        lock(&shared.queues)
            .insert(p, PartQueue { generation: g, q: VecDeque::new(), parked: None, notify: notify.clone() });
        tokio::spawn(worker(shared.clone(), p, g, notify, shutdown.clone()));
    }
}

fn tpl(topic: &str, p: i32) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    l.add_partition(topic, p);
    l
}

/// Queues a message for its partition's worker: pause when full, or in emergency mode drop the
/// oldest queued dump.
fn route(shared: &Shared, consumer: &StreamConsumer<Ctx>, p: i32, m: Queued) {
    let cap = shared.cfg.queue_capacity;
    let emergency_ms = shared.cfg.emergency_age_secs as i64 * 1000;
    let mut qs = lock(&shared.queues);
    let Some(q) = qs.get_mut(&p) else { return }; // not (or no longer) ours
    if q.parked.is_some() {
        // Already paused: a message fetched before the pause took effect. Keep order: it goes
        // behind the parked one only when there is room, so re-fetch it after the resume.
        return;
    }
    if q.q.len() < cap {
        q.q.push_back(m);
        q.notify.notify_one();
        return;
    }
    let oldest_age = q.q.front().map(|f| tributary_core::now_ms() - f.produced_ms).unwrap_or(0);
    if oldest_age > emergency_ms {
        q.q.pop_front();
        tributary_core::metrics::bridge("dropped_oldest", 1);
        q.q.push_back(m);
        q.notify.notify_one();
        return;
    }
    // Park this message and pause only this partition. Messages after it that were already
    // fetched are purged by the pause (or skipped above); the resume seeks to the one after it.
    q.parked = Some(m);
    let _ = consumer.pause(&tpl(&shared.topic, p));
}

fn resume_with_room(shared: &Shared, consumer: &StreamConsumer<Ctx>) {
    let cap = shared.cfg.queue_capacity;
    let mut qs = lock(&shared.queues);
    for (p, q) in qs.iter_mut() {
        if q.parked.is_some() && q.q.len() < cap {
            let m = q.parked.take().expect("checked");
            let next = m.offset + 1;
            q.q.push_back(m);
            q.notify.notify_one();
            let _ = consumer.seek(&shared.topic, *p, Offset::Offset(next), Duration::from_secs(1));
            let _ = consumer.resume(&tpl(&shared.topic, *p));
        }
    }
}

fn commit_exposed(shared: &Shared, consumer: &StreamConsumer<Ctx>, mode: CommitMode) {
    let mut l = TopicPartitionList::new();
    {
        let st = lock(&shared.state);
        for (p, o) in &st.exposed {
            if st.owned.contains_key(p) {
                let _ = l.add_partition_offset(&shared.topic, *p, Offset::Offset(o + 1));
            }
        }
    }
    if l.count() > 0
        && let Err(e) = consumer.commit(&l, mode)
    {
        tracing::debug!(error = %e, "committing exposed offsets failed (retried next interval)");
    }
}

async fn serve(
    addr: &str,
    shared: Arc<Shared>,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::routing::get;
    let addr: SocketAddr = addr.parse().map_err(|_| Error::user(format!("invalid kafka2prom.listen {addr:?}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::user(format!("cannot bind kafka2prom.listen {addr}")).with_source(e))?;
    let local = listener.local_addr()?;
    let timestamps = shared.cfg.expose_timestamps;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let shared = shared.clone();
            async move {
                let body = lock(&shared.state).store.render(timestamps);
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            }
        }),
    );
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await {
            tracing::error!(error = %e, "kafka2prom HTTP server failed");
        }
    });
    Ok((local, handle))
}

//! Kafka → bronze, exactly once, as a member of a consumer group.
//!
//! - Each commit to a bronze table carries one `txn` per partition (`<pipeline>/<topic>/<partition>`,
//!   version = last offset in the commit) with the data; the quarantine table carries its own.
//! - On every assignment, and after every failed batch, the positions are read from the tables
//!   (never from memory or the group's committed offsets) and the consumer seeks each partition
//!   to the first offset its table does not hold — at once, so a quiet partition whose batch was
//!   dropped is read again without waiting for a new message. Messages at or below a table's
//!   position are skipped (a replay after a crash between the Delta commit and the offset
//!   commit). A seek that fails fails the batch (the stage recovers and seeks again); it never
//!   continues from the broker's position, which would skip offsets silently.
//! - Rebalance events are applied one at a time, in order; one that fails stays queued with the
//!   ones after it (none is dropped) and the stage recovers before reading any message.
//! - Before committing, the txn versions are re-read: if another member moved them (this member
//!   is a zombie that lost the partition) the batch is dropped, not committed. A concurrent commit
//!   of the same app_id is rejected by Delta's conflict checker.
//! - After the Delta commits succeed, the same offsets (+1) are committed to the consumer group,
//!   so lag tools see the real lag.
//! - Batches flush at `kafka.max_batch_records` / `max_batch_bytes` / `max_batch_wait_ms`; the
//!   consumer does not poll while a batch is flushed, so memory is bounded by the batch size plus
//!   librdkafka's bounded prefetch queue (which keeps filling meanwhile: no pause, whose purge of
//!   the fetched messages made every batch wait for a refetch).

use crate::STAGE;
use crate::builder::{BronzeRows, Lineage, QuarantineRows};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tributary_core::metrics::BatchCommitted;
use tributary_core::stage::Stage;
use tributary_core::{Config, Error, Result, fault};
use tributary_delta::{Commit, PositionMove, Table, Writer, schemas};
use tributary_proto::v1::{InputPosition, StageStatus};

type Tp = (String, i32);

#[derive(Debug)]
enum Event {
    Assign(Vec<Tp>),
    Revoke(Vec<Tp>),
}

fn tps(list: &TopicPartitionList) -> Vec<Tp> {
    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

/// Records rebalances; the ingest loop applies them before touching any message.
pub struct Ctx {
    events: Arc<Mutex<Vec<Event>>>,
    group: String,
}

impl ClientContext for Ctx {
    fn stats(&self, stats: rdkafka::Statistics) {
        tributary_kafka::record_lag(&self.group, &stats);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = r {
            tracing::info!(partitions = ?tps(list), "partitions revoked");
            self.events.lock().unwrap_or_else(|p| p.into_inner()).push(Event::Revoke(tps(list)));
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        match r {
            Rebalance::Assign(list) => {
                tracing::info!(partitions = ?tps(list), "partitions assigned");
                self.events.lock().unwrap_or_else(|p| p.into_inner()).push(Event::Assign(tps(list)));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

struct PartState {
    data_pos: i64,
    q_pos: i64,
    buffered_to: i64,
    seeked: bool,
}

struct Buffered {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp_us: Option<i64>,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

struct TopicOut {
    source: String,
    table: Table,
    mode: crate::schema::Mode,
    hints: Vec<(String, tributary_core::field_type::FieldType)>,
    drift: crate::schema::DriftTracker,
    /// `failOnNewColumns` stopped this source: its partitions stay paused, nothing is committed.
    stopped: Option<String>,
}

pub struct KafkaIngest {
    cfg: Arc<Config>,
    region: String,
    consumer: StreamConsumer<Ctx>,
    events: Arc<Mutex<Vec<Event>>>,
    topics: HashMap<String, TopicOut>,
    quarantine: Table,
    writer: Writer,
    assigned: BTreeMap<Tp, PartState>,
    buffer: Vec<Buffered>,
    buffer_bytes: usize,
    skipped_replays: u64,
    caught_up: bool,
    /// When the first message arrived and how many were taken since: the backlog drain rate is
    /// logged at the first catch-up (what `make bench` compares with the broker's ceiling).
    first_message: Option<Instant>,
    messages_taken: u64,
    drain_reported: bool,
}

pub fn app_id(pipeline: &str, topic: &str, partition: i32) -> String {
    format!("{pipeline}/{topic}/{partition}")
}

impl KafkaIngest {
    pub async fn build(cfg: Arc<Config>, region: &str) -> Result<Self> {
        let k = &cfg.kafka;
        let events = Arc::new(Mutex::new(Vec::new()));
        let consumer: StreamConsumer<Ctx> =
            tributary_kafka::group_consumer_config(k, &k.group_id, &k.instance_id.replace("{region}", region))?
                .create_with_context(Ctx { events: events.clone(), group: k.group_id.clone() })
                .map_err(|e| Error::external("creating the Kafka consumer").with_source(e))?;
        let quarantine = Table::open_or_create(
            "bronze/_quarantine",
            &crate::quarantine_location(&cfg, region),
            schemas::quarantine(),
            schemas::QUARANTINE_PARTITIONS,
        )
        .await?;
        let mut topics = HashMap::new();
        for source in &cfg.bronze.sources {
            let table = Table::open_or_create(
                &format!("bronze/{source}"),
                &crate::table_location(&cfg, region, source),
                schemas::bronze(),
                schemas::BRONZE_PARTITIONS,
            )
            .await?;
            topics.insert(
                k.topic_for(source).replace("{region}", region),
                TopicOut {
                    source: source.clone(),
                    table,
                    mode: crate::schema::Mode::parse(cfg.bronze.evolution_mode(source))?,
                    hints: crate::schema::hints(&cfg.bronze, source)?,
                    drift: crate::schema::DriftTracker::new(cfg.bronze.drift.clone()),
                    stopped: None,
                },
            );
        }
        let names: Vec<&str> = topics.keys().map(|s| s.as_str()).collect();
        consumer.subscribe(&names).map_err(|e| Error::external(format!("subscribing to {names:?}")).with_source(e))?;
        tracing::info!(topics = ?names, group = %k.group_id, "Kafka ingest subscribed");
        Ok(Self {
            writer: Writer::new(STAGE, region, &cfg),
            cfg,
            region: region.into(),
            consumer,
            events,
            topics,
            quarantine,
            assigned: BTreeMap::new(),
            buffer: Vec::new(),
            buffer_bytes: 0,
            skipped_replays: 0,
            caught_up: false,
            first_message: None,
            messages_taken: 0,
            drain_reported: false,
        })
    }

    async fn positions_for(&mut self, tp: &Tp) -> Result<(i64, i64)> {
        let id = app_id(&self.cfg.pipeline, &tp.0, tp.1);
        let out =
            self.topics.get_mut(&tp.0).ok_or_else(|| Error::internal(format!("assigned unknown topic {}", tp.0)))?;
        let d = out.table.txn_version(&id).await?.unwrap_or(-1);
        let q = self.quarantine.txn_version(&id).await?.unwrap_or(-1);
        Ok((d, q))
    }

    /// Applies pending rebalances in order: positions come from the tables. An event that fails
    /// goes back to the front of the queue with the ones after it.
    async fn apply_events(&mut self) -> Result<()> {
        loop {
            let next = {
                let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
                if q.is_empty() {
                    return Ok(());
                }
                q.remove(0)
            };
            if let Err((e, ev)) = self.apply_event(next).await {
                self.events.lock().unwrap_or_else(|p| p.into_inner()).insert(0, ev);
                return Err(e);
            }
        }
    }

    async fn apply_event(&mut self, ev: Event) -> std::result::Result<(), (Error, Event)> {
        match ev {
            Event::Revoke(list) => {
                for tp in &list {
                    self.assigned.remove(tp);
                }
                let before = self.buffer.len();
                self.buffer.retain(|m| !list.contains(&(m.topic.clone(), m.partition)));
                self.buffer_bytes = self.buffer.iter().map(|m| m.payload.len()).sum();
                if before != self.buffer.len() {
                    tracing::info!(
                        dropped = before - self.buffer.len(),
                        "dropped uncommitted messages of revoked partitions"
                    );
                }
                Ok(())
            }
            Event::Assign(list) => match self.assign(&list).await {
                Ok(()) => Ok(()),
                Err(e) => Err((e, Event::Assign(list))),
            },
        }
    }

    /// Reads the positions of `list` from the tables and seeks each partition to the first
    /// offset its tables do not hold.
    async fn assign(&mut self, list: &[Tp]) -> Result<()> {
        for t in self.topics.values_mut() {
            t.table.refresh().await?;
        }
        self.quarantine.refresh().await?;
        let mut repair = TopicPartitionList::new();
        for tp in list {
            let (d, q) = self.positions_for(tp).await?;
            tracing::info!(topic = %tp.0, partition = tp.1, data_txn = d, quarantine_txn = q, "resuming from the table");
            if d >= 0 {
                let _ = repair.add_partition_offset(&tp.0, tp.1, Offset::Offset(d + 1));
            }
            // Buffered messages of this partition are not in the table: dropped, read again.
            self.buffer.retain(|m| (m.topic.as_str(), m.partition) != (tp.0.as_str(), tp.1));
            self.assigned.insert(tp.clone(), PartState { data_pos: d, q_pos: q, buffered_to: d.min(q), seeked: false });
            self.seek_to_table(tp)?;
        }
        self.buffer_bytes = self.buffer.iter().map(|m| m.payload.len()).sum();
        // A crash between the table commit and the group commit leaves the group offset behind
        // the table; if no new message arrives for that partition, no batch would ever repair it
        // and lag tools (and KEDA) would report a backlog that does not exist. The table is the
        // truth, so the group is brought up to it on every assignment. Failure is only logged.
        if repair.count() > 0
            && let Err(e) = self.consumer.commit(&repair, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "aligning consumer-group offsets with the table positions failed");
        }
        Ok(())
    }

    /// Seeks a partition to the first offset its tables do not hold. Right after an assignment
    /// librdkafka may not have started the partition's fetcher and refuses with a state error:
    /// then the seek happens when its first message arrives (`handle`), which it does, since
    /// the fetch starts at the group's committed offset (committed only after the tables).
    fn seek_to_table(&mut self, tp: &Tp) -> Result<()> {
        let Some(st) = self.assigned.get_mut(tp) else { return Ok(()) };
        let want = st.buffered_to + 1;
        match self.consumer.seek(&tp.0, tp.1, Offset::Offset(want), Duration::from_secs(5)) {
            Ok(()) => {
                st.seeked = true;
                Ok(())
            }
            Err(rdkafka::error::KafkaError::Seek(msg)) if msg.contains("state") || msg.contains("State") => {
                tracing::debug!(topic = %tp.0, partition = tp.1, want, error = %msg, "seek deferred to the first message");
                Ok(())
            }
            Err(e) => Err(Error::external(format!("seeking {}[{}] to offset {want}", tp.0, tp.1)).with_source(e)),
        }
    }

    fn handle(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        ts_ms: Option<i64>,
        payload: &[u8],
        traceparent: Option<String>,
    ) -> Result<()> {
        let Some(st) = self.assigned.get_mut(&(topic.to_string(), partition)) else {
            return Ok(());
        };
        if offset <= st.buffered_to {
            // Already in the table (or the buffer): a replay after a crash or a redelivery.
            self.skipped_replays += 1;
            return Ok(());
        }
        if offset > st.buffered_to + 1 && !st.seeked {
            // The broker started later than the table's position (group offsets reset or ahead):
            // go back once to the first offset the table does not hold.
            st.seeked = true;
            let want = st.buffered_to + 1;
            return match self.consumer.seek(topic, partition, Offset::Offset(want), Duration::from_secs(5)) {
                Ok(()) => {
                    tracing::warn!(
                        topic,
                        partition,
                        got = offset,
                        want,
                        "broker position ahead of the table; seeking back"
                    );
                    Ok(())
                }
                // Never go on from the broker's position: that would skip [want, offset) silently.
                Err(e) => {
                    st.seeked = false;
                    Err(Error::external(format!(
                        "{topic}[{partition}]: the broker delivered offset {offset} but the table holds up to {}; seeking back to {want} failed",
                        want - 1
                    ))
                    .with_source(e))
                }
            };
        }
        if offset > st.buffered_to + 1 && st.buffered_to >= 0 {
            tracing::warn!(
                topic,
                partition,
                from = st.buffered_to + 1,
                to = offset - 1,
                "offsets missing in Kafka (retention or compaction)"
            );
        }
        st.seeked = true;
        st.buffered_to = offset;
        self.first_message.get_or_insert_with(Instant::now);
        self.messages_taken += 1;
        self.buffer_bytes += payload.len();
        self.buffer.push(Buffered {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_us: ts_ms.map(|m| m * 1000),
            payload: payload.to_vec(),
            traceparent,
        });
        Ok(())
    }

    /// True when partitions are assigned and every one is committed up to its high watermark.
    fn check_caught_up(&self) -> bool {
        if self.assigned.is_empty() {
            return false;
        }
        // The high watermarks librdkafka cached from its fetch responses (every response, empty
        // long polls included, so at most `fetch.wait.max.ms` old after the idle wait) answer
        // without a round trip. Asking the broker per partition queued each request behind the
        // consumer's long-poll fetch on the same connection: 16 partitions took ~9 s against
        // tansu, as long as draining 100K messages. The broker is asked only while unknown.
        tokio::task::block_in_place(|| {
            self.assigned.iter().filter(|((t, _), _)| self.topics.get(t).is_none_or(|o| o.stopped.is_none())).all(
                |((t, p), st)| {
                    let next = st.data_pos.min(st.q_pos) + 1;
                    if let Some(high) = tributary_kafka::cached_high_watermark(&self.consumer, t, *p) {
                        return next >= high;
                    }
                    match self.consumer.fetch_watermarks(t, *p, Duration::from_secs(5)) {
                        Ok((_low, high)) => next >= high,
                        Err(_) => false,
                    }
                },
            )
        })
    }

    fn full(&self) -> bool {
        self.buffer.len() >= self.cfg.kafka.max_batch_records || self.buffer_bytes >= self.cfg.kafka.max_batch_bytes
    }

    async fn flush(&mut self) -> Result<u64> {
        let started = Instant::now();
        let span = tracing::info_span!("bronze.kafka.commit", messages = self.buffer.len());
        if let Some(tp) = self.buffer.iter().find_map(|m| m.traceparent.clone()) {
            let _ = span.set_parent(tributary_kafka::trace::context_from(&tp));
        }
        // The fetcher keeps running while the batch is written: its queue is bounded by
        // `queued.max.messages.kbytes`, and pausing would purge what it already fetched (every
        // batch would then wait for a refetch from the broker).
        let result = tracing::Instrument::instrument(self.flush_inner(started), span).await;
        self.pause_stopped();
        result
    }

    /// Keeps the partitions of stopped sources paused (also after a rebalance assigns them).
    fn pause_stopped(&self) {
        let mut l = TopicPartitionList::new();
        for (t, p) in self.assigned.keys() {
            if self.topics.get(t).is_some_and(|o| o.stopped.is_some()) {
                l.add_partition(t, *p);
            }
        }
        if l.count() > 0 {
            let _ = self.consumer.pause(&l);
        }
    }

    async fn flush_inner(&mut self, started: Instant) -> Result<u64> {
        let now_us = tributary_core::now_ms() * 1000;
        let max_event_bytes = self.cfg.bronze.max_event_bytes;
        let pipeline = self.cfg.pipeline.clone();
        let buffer = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        let mut by_topic: BTreeMap<String, Vec<&Buffered>> = BTreeMap::new();
        for m in &buffer {
            by_topic.entry(m.topic.clone()).or_default().push(m);
        }
        let mut total_in = 0u64;
        let mut offsets = TopicPartitionList::new();
        for (topic, msgs) in by_topic {
            let out = self.topics.get_mut(&topic).ok_or_else(|| Error::internal(format!("unknown topic {topic}")))?;
            if out.stopped.is_some() {
                // Not committed, so not lost: a restart after the config is fixed reads them again.
                continue;
            }
            let source = out.source.clone();
            let payload_bytes: usize = msgs.iter().map(|m| m.payload.len()).sum();
            let mut rows = BronzeRows::with_capacity(&source, now_us, msgs.len(), payload_bytes);
            let mut q = QuarantineRows::new(now_us);
            let mut last: BTreeMap<i32, i64> = BTreeMap::new();
            let mut max_event_time = 0i64;
            let threads = self.cfg.server.threads();
            // Pushing rows is CPU work too: the whole loop hands the worker's other tasks off.
            tributary_core::cpu_section(|| {
                crate::decode_in_chunks(
                    &msgs,
                    threads,
                    &source,
                    max_event_bytes,
                    |m| &m.payload,
                    |m, decoded| {
                        let st = self
                            .assigned
                            .get(&(topic.clone(), m.partition))
                            .ok_or_else(|| Error::internal("message of an unassigned partition"))?;
                        let lineage = Lineage::Kafka {
                            topic: &topic,
                            partition: m.partition,
                            offset: m.offset,
                            timestamp_us: m.timestamp_us,
                        };
                        match decoded {
                            Ok(d) => {
                                if m.offset > st.data_pos {
                                    max_event_time = max_event_time.max(d.event_time.unwrap_or(0) / 1000);
                                    rows.push(d, &lineage);
                                }
                            }
                            Err(r) => {
                                if m.offset > st.q_pos {
                                    q.push(
                                        &source,
                                        r.code(),
                                        None,
                                        &r.detail(),
                                        &m.payload,
                                        None,
                                        None,
                                        None,
                                        Some(&lineage.json()),
                                    );
                                }
                            }
                        }
                        last.insert(m.partition, m.offset);
                        Ok(())
                    },
                )
            })?;
            let written = rows.len() as u64;
            let quarantined = q.len() as u64;
            total_in += msgs.len() as u64;
            let mut data_moves = Vec::new();
            let mut q_moves = Vec::new();
            for (p, to) in &last {
                let st = &self.assigned[&(topic.clone(), *p)];
                let id = app_id(&pipeline, &topic, *p);
                if *to > st.data_pos {
                    data_moves.push(PositionMove { app_id: id.clone(), from: st.data_pos, to: *to });
                }
                if *to > st.q_pos {
                    q_moves.push(PositionMove { app_id: id, from: st.q_pos, to: *to });
                }
            }
            let meta = HashMap::from([(
                "tributary.kafka_batch".to_string(),
                serde_json::json!({"topic": topic, "messages": msgs.len(), "rows": written, "quarantined": quarantined,
                                   "offsets": last.iter().map(|(p, o)| (p.to_string(), *o)).collect::<BTreeMap<_, _>>()}),
            )]);
            let mut version = out.table.version();
            out.table.refresh().await?;
            let prepared = match crate::schema::prepare(&mut out.table, out.mode, &out.hints, rows)? {
                crate::schema::Step::Ready(p) => p,
                crate::schema::Step::Stop(message) => {
                    tributary_core::event_log::flow_stopped(STAGE, &self.region, &out.table.name, &message);
                    out.stopped = Some(message);
                    continue;
                }
            };
            if !data_moves.is_empty() {
                fault::check("kafka.before_upload")?;
                version = out
                    .table
                    .commit_batch(
                        Commit::new(&prepared.batches, data_moves.clone(), meta.clone(), -1)
                            .evolving(prepared.metadata.clone())
                            .fault("kafka.after_upload_before_commit"),
                        &self.writer,
                    )
                    .await?;
                for mv in &data_moves {
                    if let Some(p) = parse_partition(&mv.app_id)
                        && let Some(st) = self.assigned.get_mut(&(topic.clone(), p))
                    {
                        st.data_pos = mv.to;
                    }
                }
                out.table.notice(STAGE, &self.region, version, written, max_event_time);
                crate::schema::committed(
                    &self.region,
                    &out.table.name,
                    &prepared,
                    &mut out.drift,
                    msgs.len() as u64,
                    quarantined,
                );
            }
            if !q_moves.is_empty() {
                let qbatches = q.finish()?;
                self.quarantine.commit_batch(Commit::new(&qbatches, q_moves.clone(), meta, -1), &self.writer).await?;
                for mv in &q_moves {
                    if let Some(p) = parse_partition(&mv.app_id)
                        && let Some(st) = self.assigned.get_mut(&(topic.clone(), p))
                    {
                        st.q_pos = mv.to;
                    }
                }
            }
            for (p, o) in &last {
                let _ = offsets.add_partition_offset(&topic, *p, Offset::Offset(o + 1));
            }
            BatchCommitted {
                stage: STAGE,
                region: &self.region,
                table: &format!("bronze/{source}"),
                version,
                input_rows: msgs.len() as u64,
                written,
                quarantined,
                duplicates: 0,
                dropped: 0,
                seconds: started.elapsed().as_secs_f64(),
                input_position: &last.iter().map(|(p, o)| format!("{topic}/{p}={o}")).collect::<Vec<_>>().join(","),
                max_event_ms: max_event_time,
            }
            .emit();
        }
        fault::point("kafka.after_commit_before_offset_commit");
        // The table is the truth; the group offsets are for lag tools. A failure here is logged.
        if offsets.count() > 0
            && let Err(e) = self.consumer.commit(&offsets, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "committing consumer-group offsets failed; the Delta txn positions remain authoritative");
        }
        Ok(total_in.max(1))
    }
}

fn parse_partition(app_id: &str) -> Option<i32> {
    app_id.rsplit('/').next()?.parse().ok()
}

#[tonic::async_trait]
impl Stage for KafkaIngest {
    fn stage(&self) -> &str {
        STAGE
    }
    fn region(&self) -> &str {
        &self.region
    }

    async fn run_once(&mut self) -> Result<u64> {
        let wait = Duration::from_millis(self.cfg.kafka.max_batch_wait_ms);
        let batch_start = Instant::now();
        loop {
            self.apply_events().await?;
            if self.full() {
                break;
            }
            let left = wait.saturating_sub(batch_start.elapsed());
            if left.is_zero() {
                break;
            }
            let received = match tokio::time::timeout(left, self.consumer.recv()).await {
                Err(_) => None,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka receive error (retrying)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    None
                }
                Ok(Ok(m)) => Some((
                    m.topic().to_string(),
                    m.partition(),
                    m.offset(),
                    m.timestamp().to_millis(),
                    m.payload().unwrap_or_default().to_vec(),
                    tributary_kafka::trace::traceparent(m.headers()),
                )),
            };
            if let Some((t, p, o, ts, payload, tp)) = received {
                // A rebalance seen during recv() is applied before its messages are used.
                self.apply_events().await?;
                self.handle(&t, p, o, ts, &payload, tp)?;
            }
        }
        self.apply_events().await?;
        if self.buffer.is_empty() {
            self.caught_up = self.check_caught_up();
            if self.caught_up
                && !self.drain_reported
                && let Some(first) = self.first_message
            {
                self.drain_reported = true;
                let secs = first.elapsed().as_secs_f64();
                tracing::info!(
                    messages = self.messages_taken,
                    secs,
                    rate = self.messages_taken as f64 / secs.max(1e-9),
                    "kafka backlog drained: caught up with every partition's high watermark since the first message"
                );
            }
            return Ok(0);
        }
        self.caught_up = false;
        self.flush().await
    }

    fn caught_up(&self) -> bool {
        self.caught_up
    }

    fn idle_sleep(&self, _poll: Duration) -> Duration {
        // run_once already waited up to max_batch_wait_ms for messages.
        Duration::from_millis(10)
    }

    fn min_batch_interval(&self, _configured: Duration) -> Duration {
        Duration::ZERO
    }

    async fn recover(&mut self) -> Result<()> {
        // Drop what is buffered, re-read every position from the tables and seek there now (a
        // quiet partition would otherwise never be read again), after any pending rebalance.
        self.buffer.clear();
        self.buffer_bytes = 0;
        self.apply_events().await?;
        let assigned: Vec<Tp> = self.assigned.keys().cloned().collect();
        self.assign(&assigned).await
    }

    async fn status(&mut self) -> StageStatus {
        let mut tables = Vec::new();
        for t in self.topics.values() {
            tables.push(t.table.status(Some("event_time")));
        }
        tables.push(self.quarantine.status(None));
        let mut positions = Vec::new();
        for ((t, p), st) in &self.assigned {
            let id = app_id(&self.cfg.pipeline, t, *p);
            let name = self.topics.get(t).map(|o| o.table.name.clone()).unwrap_or_default();
            positions.push(InputPosition { app_id: id.clone(), output_table: name, version: st.data_pos });
            positions.push(InputPosition { app_id: id, output_table: self.quarantine.name.clone(), version: st.q_pos });
        }
        let mut counters = tributary_core::metrics::stage_counters(STAGE, &self.region);
        counters.push(tributary_proto::v1::Counter {
            name: "kafka_replayed_messages_skipped".into(),
            labels: Default::default(),
            value: self.skipped_replays,
        });
        StageStatus {
            stage: STAGE.into(),
            region: self.region.clone(),
            tables,
            positions,
            counters,
            last_error: self.topics.values().filter_map(|o| o.stopped.as_deref()).collect::<Vec<_>>().join("; "),
        }
    }
}

/// Runs Kafka ingest for one region until `shutdown`.
pub async fn run(
    cfg: Arc<Config>,
    region: &str,
    shutdown: tributary_core::Shutdown,
    notices: Option<tributary_core::stage::NoticeHook>,
) -> Result<()> {
    let stage = KafkaIngest::build(cfg.clone(), region).await?;
    tributary_core::stage::serve_stages("bronze-ingest-kafka", &cfg, vec![Box::new(stage)], shutdown, notices).await
}

//! The Kafka half of a log stream: exactly once from file bytes to records.
//!
//! Every line is one record, keyed `<instance>:<path the file was first seen at>` (`instance` is
//! `metrics.instance`, else `log-exporter-<hostname>`): one log path's lines, across rotations,
//! stay in one partition, in order, and the key tells the records of this exporter from other
//! exporters' in the same partition. The partition is chosen here from the key (FNV-1a modulo the
//! partition count), so where a file's records are is always known. The record is the bare line:
//! no headers (tansu's SQLite storage fetches headers with a query per record that scans every
//! header it holds, which stalls fetches once a topic holds tens of thousands of them).
//!
//! Exactly once across a crash, with a small write-ahead record in the checkpoint file:
//! 1. before a round is sent, the runs of lines it sends (`[start, end)` of each file, in send
//!    order) are written to the checkpoint as `inflight`, with each partition's end offset if the
//!    checkpoint does not know it yet;
//! 2. after the broker acknowledged every record, the files' offsets and the partitions' next
//!    offsets move and `inflight` is cleared, in one atomic write.
//!
//! After a crash (or a failed delivery) the records of each key that are in Kafka after the
//! partition's checkpointed offset are counted; with `acks=all` the producer is idempotent, so
//! per partition they are a prefix of what was sent, in order: the first `n` lines of that key's
//! in-flight runs. Those are marked done; the rest is sent again.
//!
//! Never dropped: delivery has no timeout (`message.timeout.ms=0`) and nothing more is read from a
//! file until its previous run was acknowledged. During a broker outage the exporter holds at most
//! one run per file (`max_batch_kbytes`) in memory; the files on disk are the buffer.

use crate::tail::{self, Chunk, Tailer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tributary_core::config::LogStreamConfig;
use tributary_core::{Config, Error, Result, Shutdown};

/// FNV-1a: stable across versions and processes (the partition of a key must never change).
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// Counts the records per key in partition `p` of `topic` from offset `from` to its end; also
/// returns the end.
pub fn count_keys(cfg: &Config, topic: &str, p: i32, from: i64) -> Result<(BTreeMap<Vec<u8>, u64>, i64)> {
    let c: BaseConsumer = tributary_kafka::client_config(&cfg.kafka)?
        // assign() needs a group id in rust-rdkafka; nothing is committed to it.
        .set("group.id", "tributary-log-exporter-readback")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| Error::external("creating the read-back consumer").with_source(e))?;
    let (_, high) = c
        .fetch_watermarks(topic, p, Duration::from_secs(30))
        .map_err(|e| Error::external(format!("reading the end of {topic}/{p}")).with_source(e))?;
    let mut found = BTreeMap::new();
    if from >= high {
        return Ok((found, high));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(from.max(0)))
        .map_err(|e| Error::external("assigning the read-back partition").with_source(e))?;
    c.assign(&tpl).map_err(|e| Error::external("assigning the read-back partition").with_source(e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut next = from.max(0);
    while next < high {
        if std::time::Instant::now() > deadline {
            return Err(Error::external(format!("reading back {topic}/{p} from {from} to {high} timed out at {next}")));
        }
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                *found.entry(m.key().unwrap_or_default().to_vec()).or_insert(0) += 1;
            }
            // Transient (a broker restarting): librdkafka reconnects; the deadline bounds it.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "read-back poll");
                std::thread::sleep(Duration::from_millis(200));
            }
            None => {}
        }
    }
    Ok((found, high))
}

struct Stream {
    cfg: Arc<Config>,
    s: LogStreamConfig,
    state_path: PathBuf,
    tailer: Tailer,
    producer: FutureProducer,
    partitions: i32,
    instance: String,
    shutdown: Shutdown,
}

impl Stream {
    fn save(&self) -> Result<()> {
        crate::save_json(&self.state_path, &self.tailer.state)
    }

    fn kafka_key(&self, fid: &str) -> Vec<u8> {
        format!("{}:{}", self.instance, self.tailer.state.files[fid].key).into_bytes()
    }

    /// Settles the in-flight runs with what the broker holds (after a crash, `after_restart`, or
    /// a failed delivery in this process).
    async fn recover(&mut self, after_restart: bool) -> Result<()> {
        if self.tailer.state.inflight.is_empty() {
            return Ok(());
        }
        let settle = self.cfg.log_exporter.recovery_settle_ms;
        if after_restart && settle > 0 {
            self.settle(settle).await?;
        }
        let inflight = std::mem::take(&mut self.tailer.state.inflight);
        for p in self.partitions_of(&inflight) {
            let from = self.tailer.state.partitions.get(&p).copied().unwrap_or(0);
            let (cfg, topic) = (self.cfg.clone(), self.s.topic.clone());
            let (mut counts, high) = retry(&self.s.name, &self.shutdown, "reading back the log topic", move || {
                count_keys(&cfg, &topic, p, from)
            })
            .await?;
            let mine: Vec<&tail::Inflight> = inflight
                .iter()
                .filter(|r| self.tailer.state.files.get(&r.id).is_some_and(|t| t.partition == p))
                .collect();
            for r in &mine {
                let key = self.kafka_key(&r.id);
                let have = counts.entry(key).or_insert(0);
                if *have == 0 {
                    continue;
                }
                let Some(buf) = self.tailer.reread(&r.id, r.start, r.end)? else {
                    tracing::warn!(stream = %self.s.name, file = %r.id, "a file changed under an in-flight run; it is read again from its checkpoint");
                    continue;
                };
                let ends = tail::line_ends(&buf, r.start);
                let n = (*have as usize).min(ends.len());
                *have -= n as u64;
                self.tailer.acknowledged(&r.id, ends[n - 1]);
                tracing::info!(stream = %self.s.name, file = %self.tailer.state.files[&r.id].path, lines = n,
                    "lines sent before a restart or a failure were already in Kafka: not sent again");
                tributary_core::metrics::exporter(&self.s.name, "recovered", n as u64);
            }
            // More records of an in-flight key than the round sent: a request of an earlier
            // process landed after an earlier recovery counted (duplicates already in Kafka).
            for r in mine {
                let key = self.kafka_key(&r.id);
                if let Some(extra) = counts.remove(&key).filter(|n| *n > 0) {
                    tracing::warn!(stream = %self.s.name, file = %self.tailer.state.files[&r.id].path, records = extra,
                        "more records of this file in Kafka than its in-flight round sent: duplicates from an earlier process");
                    tributary_core::metrics::exporter(&self.s.name, "duplicates_seen", extra);
                }
            }
            self.tailer.state.partitions.insert(p, high);
        }
        self.save()
    }

    /// The partitions of the files of `runs`, each once.
    fn partitions_of(&self, runs: &[tail::Inflight]) -> Vec<i32> {
        let mut parts: Vec<i32> =
            runs.iter().filter_map(|r| self.tailer.state.files.get(&r.id).map(|t| t.partition)).collect();
        parts.sort();
        parts.dedup();
        parts
    }

    /// The end offset of partition `p`, waiting for the broker while it is unreachable.
    async fn partition_end(&self, p: i32) -> Result<i64> {
        let (producer, topic) = (self.producer.clone(), self.s.topic.clone());
        retry(&self.s.name, &self.shutdown, "reading the log partition's end", move || {
            producer
                .client()
                .fetch_watermarks(&topic, p, Duration::from_secs(30))
                .map(|w| w.1)
                .map_err(|e| Error::external(format!("reading the end of {topic}/{p}")).with_source(e))
        })
        .await
    }

    /// The killed process may have written a produce request to its socket that the broker has
    /// not applied yet; counted before it lands, its lines would be sent twice (out of order).
    /// Waits until the broker answers, then `settle_ms` longer — following the files meanwhile,
    /// so a rotation during the wait is not missed.
    async fn settle(&mut self, settle_ms: u64) -> Result<()> {
        for p in self.partitions_of(&self.tailer.state.inflight) {
            self.partition_end(p).await?;
        }
        tracing::info!(stream = %self.s.name, runs = self.tailer.state.inflight.len(), settle_ms,
            "a round was in flight when the previous process stopped; letting the broker settle before counting it");
        let until = std::time::Instant::now() + Duration::from_millis(settle_ms);
        let step = Duration::from_millis(self.cfg.log_exporter.poll_interval_ms.clamp(10, 1000));
        while std::time::Instant::now() < until {
            self.scan()?;
            if self.shutdown.sleep(step.min(until.saturating_duration_since(std::time::Instant::now()))).await {
                return Err(Error::external("stopped while settling the in-flight round"));
            }
        }
        Ok(())
    }

    /// Brings the tracked files up to date, reports what changed, and keeps it in the checkpoint.
    fn scan(&mut self) -> Result<()> {
        let n = self.partitions;
        let noticed = self.tailer.scan(tributary_core::now_ms(), &|k| partition_for(k, n))?;
        let name = &self.s.name;
        for (from, to) in &noticed.renamed {
            tracing::info!(stream = %name, %from, %to, "log file rotated (renamed); following its inode");
        }
        for (copy, of) in &noticed.copies {
            tracing::info!(stream = %name, %copy, %of, "log file copy-truncated; reading the rest from the copy");
        }
        if noticed.lost_truncated_bytes > 0 {
            tracing::warn!(stream = %name, files = ?noticed.truncated, bytes = noticed.lost_truncated_bytes,
                "a log file was truncated before it was read to its end and no copy was found");
            tributary_core::metrics::exporter(name, "lost_truncated_bytes", noticed.lost_truncated_bytes);
        }
        for p in &noticed.lost_deleted {
            tracing::warn!(stream = %name, file = %p, "a log file was deleted while the exporter was down, before it was read to its end");
            tributary_core::metrics::exporter(name, "lost_deleted", 1);
        }
        if noticed != tail::Noticed::default() {
            self.save()?;
        }
        Ok(())
    }

    /// Sends one run of lines of each file (all in flight at once), waits until every record is
    /// acknowledged, then checkpoints. Returns whether anything was shipped.
    async fn ship(&mut self, chunks: &[Chunk]) -> Result<bool> {
        for c in chunks {
            let p = self.tailer.state.files[&c.id].partition;
            if self.tailer.state.partitions.contains_key(&p) {
                continue;
            }
            let high = self.partition_end(p).await?;
            self.tailer.state.partitions.insert(p, high);
        }
        // The write-ahead record: what is about to be in flight.
        self.tailer.state.inflight = chunks
            .iter()
            .map(|c| tail::Inflight {
                id: c.id.clone(),
                start: self.tailer.state.files[&c.id].offset,
                end: *c.ends.last().expect("non-empty chunk"),
            })
            .collect();
        self.save()?;
        let mut pending = Vec::with_capacity(chunks.len());
        for c in chunks {
            let p = self.tailer.state.files[&c.id].partition;
            let key = self.kafka_key(&c.id);
            let mut futs = Vec::with_capacity(c.lines.len());
            for line in &c.lines {
                let mut rec = FutureRecord::to(&self.s.topic).key(key.as_slice()).payload(line.as_slice()).partition(p);
                loop {
                    match self.producer.send_result(rec) {
                        Ok(f) => {
                            futs.push(f);
                            break;
                        }
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            r,
                        )) => {
                            rec = r;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => return Err(Error::external("producing a log line").with_source(e)),
                    }
                }
            }
            pending.push((c, p, futs));
        }
        let mut failed = false;
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut shipped = 0u64;
        let mut acked: Vec<(String, u64)> = Vec::new();
        for (c, p, futs) in pending {
            let mut ok = true;
            for f in futs {
                // No delivery timeout: during an outage this waits, until a shutdown (the
                // in-flight record in the checkpoint settles the round at the next start).
                let r = tokio::select! {
                    r = f => r,
                    _ = self.shutdown.wait() => return Ok(false),
                };
                match r {
                    Ok(Ok(d)) => {
                        let e = next.entry(p).or_insert(0);
                        *e = (*e).max(d.offset + 1);
                    }
                    Ok(Err((e, _))) => {
                        ok = false;
                        tracing::warn!(stream = %self.s.name, error = %e, "a log line was not acknowledged");
                    }
                    Err(_) => ok = false,
                }
            }
            if ok {
                acked.push((c.id.clone(), *c.ends.last().expect("non-empty chunk")));
                shipped += c.lines.len() as u64;
            } else {
                failed = true;
            }
        }
        if !failed && tributary_core::fault::check("log_exporter.after_ack_before_checkpoint").is_err() {
            failed = true;
        }
        if failed {
            // What reached the broker is counted from the broker itself.
            self.recover(false).await?;
            return Ok(false);
        }
        for (fid, end) in acked {
            self.tailer.acknowledged(&fid, end);
        }
        for (p, n) in next {
            let e = self.tailer.state.partitions.entry(p).or_insert(0);
            *e = (*e).max(n);
        }
        self.tailer.state.inflight.clear();
        self.save()?;
        tributary_core::metrics::exporter(&self.s.name, "shipped", shipped);
        Ok(shipped > 0)
    }
}

/// Runs blocking Kafka work until it succeeds: during a broker outage nothing is sent, the lines
/// wait in their files.
async fn retry<T: Send + 'static>(
    stream: &str,
    shutdown: &Shutdown,
    what: &str,
    f: impl Fn() -> Result<T> + Send + Sync + 'static,
) -> Result<T> {
    let f = Arc::new(f);
    loop {
        let g = f.clone();
        match tokio::task::spawn_blocking(move || g()).await.map_err(|e| Error::internal(format!("{what}: {e}")))? {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "{what} failed; retrying");
                if shutdown.sleep(Duration::from_secs(2)).await {
                    return Err(Error::external(format!("{what}: stopped while the broker was unreachable")));
                }
            }
        }
    }
}

fn partition_count(cfg: &Config, topic: &str) -> Result<i32> {
    let c: BaseConsumer = tributary_kafka::client_config(&cfg.kafka)?
        .create()
        .map_err(|e| Error::external("creating a metadata client").with_source(e))?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| Error::external(format!("reading the metadata of {topic}")).with_source(e))?;
    let n = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    if n == 0 {
        return Err(Error::user(format!("log topic {topic} does not exist (or has no partitions)")));
    }
    Ok(n)
}

/// Tails one stream until `shutdown`.
pub async fn run_stream(cfg: Arc<Config>, s: LogStreamConfig, shutdown: Shutdown) -> Result<()> {
    if s.name.is_empty() || s.paths.is_empty() || s.topic.is_empty() {
        return Err(Error::user(format!("log stream {:?} needs a name, paths and a topic", s.name)));
    }
    let dir = &cfg.log_exporter.logs_state_dir;
    if dir.is_empty() {
        return Err(Error::user("log_exporter.logs_state_dir must be set when log streams are configured"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::external(format!("creating {dir}")).with_source(e))?;
    let state_path = Path::new(dir).join(format!("{}.json", s.name));
    let idempotent = s.acks == "all";
    let producer: FutureProducer = tributary_kafka::client_config(&cfg.kafka)?
        .set("acks", &s.acks)
        .set("enable.idempotence", if idempotent { "true" } else { "false" })
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", cfg.log_exporter.max_buffer_kbytes.to_string())
        .create()
        .map_err(|e| Error::external("creating the log producer").with_source(e))?;
    // The broker may be down at start: wait for it (the files keep the lines meanwhile).
    let partitions = loop {
        let (c, t) = (cfg.clone(), s.topic.clone());
        match tokio::task::spawn_blocking(move || partition_count(&c, &t)).await {
            Ok(Ok(n)) => break n,
            Ok(Err(e)) => tracing::warn!(stream = %s.name, error = %e, "waiting for the log topic"),
            Err(e) => return Err(Error::internal(format!("metadata task: {e}"))),
        }
        if shutdown.sleep(Duration::from_secs(2)).await {
            return Ok(());
        }
    };
    let tailer = Tailer::new(s.paths.clone(), crate::load_json(&state_path)?);
    let instance = tributary_core::metrics_dump::instance_name(&cfg.metrics.instance, "log-exporter");
    let mut st = Stream {
        cfg: cfg.clone(),
        s: s.clone(),
        state_path,
        tailer,
        producer,
        partitions,
        instance,
        shutdown: shutdown.clone(),
    };
    // The files of in-flight runs must be open to be read again: scan first. What it found (a
    // file renamed or created while the exporter was down) is kept at once: if this process
    // stops before its first round, the next one still knows the files and can follow a rotated
    // one by inode even if it is renamed again to a name the globs miss.
    st.scan()?;
    if let Err(e) = st.recover(true).await {
        return if shutdown.is_triggered() { Ok(()) } else { Err(e) };
    }
    tracing::info!(stream = %s.name, topic = %s.topic, paths = ?s.paths, acks = %s.acks, idempotent, "log-exporter tailing");
    let max = (s.max_batch_kbytes.max(1) * 1024) as usize;
    while !shutdown.is_triggered() {
        st.scan()?;
        let now = tributary_core::now_ms();
        // Per key, a file is read only once every file before it (rotated away earlier) has been
        // read to its end: one log path's lines go out in the order they were written.
        let mut chunks = Vec::new();
        let mut held: std::collections::HashSet<String> = std::collections::HashSet::new();
        for fid in st.tailer.order() {
            let key = st.tailer.state.files[&fid].key.clone();
            if held.contains(&key) {
                continue;
            }
            match st.tailer.read(&fid, max, now)? {
                Some(c) => {
                    chunks.push(c);
                    held.insert(key);
                }
                None if !st.tailer.drained(&fid) => {
                    held.insert(key);
                }
                None => {}
            }
        }
        let shipped = match chunks.is_empty() {
            true => false,
            false => match st.ship(&chunks).await {
                Ok(x) => x,
                Err(_) if shutdown.is_triggered() => break,
                Err(e) => return Err(e),
            },
        };
        st.tailer.close_finished(now);
        if !shipped && shutdown.sleep(Duration::from_millis(cfg.log_exporter.poll_interval_ms)).await {
            break;
        }
    }
    st.save()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_partition_never_changes() {
        // Pinned values: a change of the hash would move a log path's lines to another partition
        // on upgrade and break their order.
        assert_eq!(partition_for("/var/log/app/app.log", 4), partition_for("/var/log/app/app.log", 4));
        assert_eq!(partition_for("", 7), (0xcbf2_9ce4_8422_2325u64 % 7) as i32);
        assert!((0..12).all(|p| partition_for(&format!("k{p}"), 3) < 3));
    }
}

//! log-exporter (issue #11). Three jobs, each optional, in one process:
//! - **metric dumps** (this file): ships the dumps every service writes to `metrics.dump_dir` to
//!   Kafka for kafka2prom;
//! - **log streams** ([`logs`], [`tail`]): tails files matched by globs, rotation-safe, exactly
//!   once, never dropping a line;
//! - **dual landing zones** ([`landing`]): copies every landing file of a spool into two zones.
//!
//! Metric dumps:
//! Every `log_exporter.poll_interval_ms` each `<instance>.prom` of the folder is looked at (its
//! header line only); a dump newer than the last one read from that file (by the timestamp in its
//! header) is read whole into the [`DumpBuffer`] and produced, in order, as one message keyed by
//! its instance — so every value of an instance's series lands in one partition, in order — with
//! `log_exporter.metrics_acks` (default `1`: a lost dump is replaced by the next one 30 s later,
//! as in seed 003). Once the broker acknowledged it, the timestamp is recorded in the state file
//! (written atomically), so a restart neither resends nor skips the file's current dump.
//! During a broker outage dumps wait in the buffer, bounded by `log_exporter.metrics_buffer_kbytes`:
//! past it the oldest waiting dumps are dropped (counted `dropped_oldest`). One round of sends is
//! in flight at a time (held by librdkafka, bounded by `max_buffer_kbytes`), so memory stays
//! below the two bounds plus one dump, whatever the backlog.

pub mod landing;
pub mod logs;
pub mod tail;

use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tributary_core::{Config, Error, Result, Shutdown};

/// What was shipped: dump file name -> timestamp of the last dump the broker acknowledged.
pub type State = BTreeMap<String, i64>;

/// Reads a JSON state file; a missing file is the default state.
pub fn load_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::user(format!("corrupt log-exporter state {}", path.display())).with_source(e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::external(format!("reading {}", path.display())).with_source(e)),
    }
}

/// Writes a JSON state file atomically and durably: a temporary file, synced, renamed.
pub fn save_json<T: serde::Serialize>(path: &Path, s: &T) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| Error::external(format!("writing {}", tmp.display())).with_source(e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec(s).unwrap_or_default()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::external(format!("renaming {}", tmp.display())).with_source(e))
}

/// A dump due for shipping: newer than what was read from its file before.
#[derive(Debug, PartialEq)]
pub struct Due {
    pub file: String,
    pub instance: String,
    pub timestamp_ms: i64,
    pub body: Vec<u8>,
}

/// Files of the folder that are not dumps: (file name, why).
pub type NotDumps = Vec<(String, String)>;

/// Reads a file's first line (at most 4 KiB: a dump header is far shorter).
fn first_line(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::BufRead;
    let mut line = Vec::new();
    std::io::BufReader::new(std::io::Read::take(std::fs::File::open(path)?, 4096)).read_until(b'\n', &mut line)?;
    Ok(line)
}

/// Hands `on_due` every dump of `dir` for which `is_new(file, timestamp)` holds, one at a time
/// (only its header is read otherwise). Files that are not dumps are returned and skipped.
pub fn scan(dir: &Path, is_new: impl Fn(&str, i64) -> bool, mut on_due: impl FnMut(Due)) -> Result<NotDumps> {
    let mut bad = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(bad),
        Err(e) => return Err(Error::external(format!("listing {}", dir.display())).with_source(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".prom") && !n.starts_with('.'))
        .collect();
    names.sort();
    let read =
        |name: &str, whole: bool| match if whole { std::fs::read(dir.join(name)) } else { first_line(&dir.join(name)) }
        {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None), // replaced meanwhile
            Err(e) => Err(Error::external(format!("reading {name}")).with_source(e)),
        };
    for name in names {
        let Some(head) = read(&name, false)? else { continue };
        match tributary_core::metrics_dump::split(&head) {
            Ok((h, _)) if is_new(&name, h.timestamp_ms) => {}
            Ok(_) => continue,
            Err(e) => {
                bad.push((name, e));
                continue;
            }
        }
        // The file may have been replaced since its header was read: the whole one decides.
        let Some(body) = read(&name, true)? else { continue };
        match tributary_core::metrics_dump::split(&body) {
            Ok((h, _)) if is_new(&name, h.timestamp_ms) => {
                on_due(Due { file: name, instance: h.instance, timestamp_ms: h.timestamp_ms, body })
            }
            Ok(_) => {}
            Err(e) => bad.push((name, e)),
        }
    }
    Ok(bad)
}

/// Dumps read and not yet acknowledged, oldest first, bounded by bytes: past the bound the
/// oldest dumps that are not in flight are dropped. The newest dump is always kept (a single
/// dump larger than the bound still ships).
pub struct DumpBuffer<F> {
    q: std::collections::VecDeque<(Due, Option<F>)>,
    bytes: usize,
    cap: usize,
    /// Per file: the newest timestamp read (queued or shipped).
    newest: BTreeMap<String, i64>,
}

impl<F> DumpBuffer<F> {
    pub fn new(cap_bytes: usize, shipped: &State) -> Self {
        Self { q: Default::default(), bytes: 0, cap: cap_bytes, newest: shipped.clone() }
    }

    /// Whether a dump of `file` taken at `ts` was not read before.
    pub fn is_new(&self, file: &str, ts: i64) -> bool {
        self.newest.get(file).is_none_or(|t| ts > *t)
    }

    /// Queues a dump; returns how many older waiting dumps were dropped to stay in the bound.
    pub fn push(&mut self, d: Due) -> u64 {
        self.newest.insert(d.file.clone(), d.timestamp_ms);
        self.bytes += d.body.len();
        self.q.push_back((d, None));
        let mut dropped = 0;
        let mut i = 0;
        while self.bytes > self.cap && i + 1 < self.q.len() {
            if self.q[i].1.is_some() {
                i += 1; // in flight: librdkafka holds it, it cannot be taken back
                continue;
            }
            let (d, _) = self.q.remove(i).expect("index checked");
            self.bytes -= d.body.len();
            dropped += 1;
        }
        dropped
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Whether a round of sends is still unresolved.
    pub fn in_flight(&self) -> bool {
        self.q.iter().any(|(_, f)| f.is_some())
    }

    /// Starts a send for every waiting dump, oldest first, until `send` refuses one.
    pub fn send_waiting(&mut self, mut send: impl FnMut(&Due) -> Option<F>) {
        for (d, f) in self.q.iter_mut().filter(|(_, f)| f.is_none()) {
            match send(d) {
                Some(x) => *f = Some(x),
                None => break,
            }
        }
    }

    /// Resolves the sends `poll` can answer: `Some(true)` = acknowledged (removed and returned),
    /// `Some(false)` = failed (waiting again), `None` = still in flight.
    pub fn resolve(&mut self, mut poll: impl FnMut(&mut F) -> Option<bool>) -> (Vec<Due>, u64) {
        let mut acked = Vec::new();
        let mut failed = 0;
        let mut keep = std::collections::VecDeque::with_capacity(self.q.len());
        for (d, f) in self.q.drain(..) {
            match f {
                Some(mut fut) => match poll(&mut fut) {
                    Some(true) => {
                        self.bytes -= d.body.len();
                        acked.push(d);
                    }
                    Some(false) => {
                        failed += 1;
                        keep.push_back((d, None));
                    }
                    None => keep.push_back((d, Some(fut))),
                },
                None => keep.push_back((d, None)),
            }
        }
        self.q = keep;
        (acked, failed)
    }
}

/// Runs every configured job of the exporter until `shutdown`; the first failing job stops all.
pub async fn run(cfg: Arc<Config>, shutdown: Shutdown) -> Result<()> {
    let c = &cfg.log_exporter;
    let dumps = if c.dumps_dir.is_empty() { &cfg.metrics.dump_dir } else { &c.dumps_dir };
    let mut jobs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>> = Vec::new();
    if !dumps.is_empty() {
        jobs.push(Box::pin(run_dumps(cfg.clone(), PathBuf::from(dumps), shutdown.clone())));
    }
    for s in &c.logs {
        jobs.push(Box::pin(logs::run_stream(cfg.clone(), s.clone(), shutdown.clone())));
    }
    if !c.landing_spool.is_empty() {
        jobs.push(Box::pin(run_landing(cfg.clone(), shutdown.clone())));
    }
    if jobs.is_empty() {
        return Err(Error::user(
            "log-exporter has nothing to do: set log_exporter.dumps_dir (or metrics.dump_dir), log_exporter.logs or log_exporter.landing_spool",
        ));
    }
    // Its own gRPC health/status and admin HTTP (`/metrics`), like every service.
    let servers = tributary_core::stage::start_servers("log-exporter", &cfg, Vec::new(), &shutdown).await?;
    let (first, _, rest) = futures::future::select_all(jobs.into_iter().map(tokio::spawn)).await;
    let r = first.map_err(|e| Error::internal(format!("log-exporter job: {e}"))).and_then(|r| r);
    shutdown.trigger();
    for j in rest {
        let _ = j.await;
    }
    for s in servers {
        let _ = s.await;
    }
    r
}

async fn run_landing(cfg: Arc<Config>, shutdown: Shutdown) -> Result<()> {
    let c = &cfg.log_exporter;
    if c.landing_zones.len() < 2 {
        return Err(Error::user("log_exporter.landing_zones needs two zones (the primary's and the secondary's)"));
    }
    let spool = PathBuf::from(&c.landing_spool);
    let zones: Vec<landing::Zone> = c.landing_zones.iter().map(|z| landing::Zone::open(z)).collect::<Result<_>>()?;
    tracing::info!(spool = %spool.display(), zones = ?c.landing_zones, "log-exporter mirroring landing files");
    loop {
        let m = landing::mirror_once(&spool, &zones).await?;
        tributary_core::metrics::exporter("landing", "mirrored", m.files.len() as u64);
        tributary_core::metrics::exporter("landing", "conflict", m.conflicts.len() as u64);
        if shutdown.sleep(Duration::from_millis(c.poll_interval_ms)).await {
            return Ok(());
        }
    }
}

async fn run_dumps(cfg: Arc<Config>, dir: PathBuf, shutdown: Shutdown) -> Result<()> {
    use futures::FutureExt;
    let c = &cfg.log_exporter;
    let state_path =
        if c.state_file.is_empty() { dir.join(".log-exporter.state.json") } else { PathBuf::from(&c.state_file) };
    let mut state: State = load_json(&state_path)?;
    let producer: FutureProducer = tributary_kafka::client_config(&cfg.kafka)?
        .set("acks", &c.metrics_acks)
        .set("linger.ms", "20")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.kbytes", c.max_buffer_kbytes.to_string())
        .create()
        .map_err(|e| Error::external("creating the log-exporter producer").with_source(e))?;
    let topic = c.topic.clone().unwrap_or_else(|| cfg.kafka2prom.topic.clone());
    tracing::info!(dir = %dir.display(), %topic, acks = %c.metrics_acks, buffer_kbytes = c.metrics_buffer_kbytes,
        "log-exporter shipping metric dumps");
    let mut warned: BTreeMap<String, String> = BTreeMap::new();
    let mut buffer: DumpBuffer<rdkafka::producer::DeliveryFuture> =
        DumpBuffer::new(c.metrics_buffer_kbytes as usize * 1024, &state);
    let mut failing = false;
    loop {
        let stopping = shutdown.is_triggered();
        if !stopping {
            let mut dropped = 0;
            let mut queued = 0;
            let bad = {
                let b = &mut buffer;
                let newest: BTreeMap<String, i64> = b.newest.clone();
                scan(
                    &dir,
                    |f, t| newest.get(f).is_none_or(|n| t > *n),
                    |d| {
                        queued += 1;
                        dropped += b.push(d);
                    },
                )?
            };
            tributary_core::metrics::exporter("dumps", "queued", queued);
            if dropped > 0 {
                tributary_core::metrics::exporter("dumps", "dropped_oldest", dropped);
                tracing::warn!(
                    dropped,
                    buffered_bytes = buffer.bytes(),
                    "metric dump buffer full: oldest dumps dropped"
                );
            }
            for (name, e) in bad {
                if warned.get(&name) != Some(&e) {
                    tracing::warn!(file = %name, error = %e, "not a metric dump; skipped");
                    warned.insert(name, e);
                }
            }
        } else {
            // Leaving: give what is in flight up to 5 s to be acknowledged, and record it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while buffer.in_flight() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let (acked, _) = buffer.resolve(|f| f.now_or_never().map(|r| matches!(r, Ok(Ok(_)))));
                if record_acked(&mut state, acked) {
                    save_json(&state_path, &state)?;
                }
            }
        }
        let (acked, failed) = buffer.resolve(|f| match f.now_or_never() {
            None => None,
            Some(Ok(Ok(_))) => Some(true),
            Some(Ok(Err((e, _)))) => {
                if !failing {
                    tracing::warn!(error = %e, "shipping metric dumps failed; they wait in the buffer and are retried");
                }
                Some(false)
            }
            Some(Err(_)) => Some(false),
        });
        failing = failed > 0 || (failing && acked.is_empty());
        tributary_core::metrics::exporter("dumps", "failed", failed);
        if record_acked(&mut state, acked) {
            save_json(&state_path, &state)?;
        }
        if stopping {
            if !buffer.is_empty() {
                tracing::warn!(
                    dumps = buffer.len(),
                    "stopping with metric dumps not acknowledged (the files' current dumps are read again at start)"
                );
            }
            return Ok(());
        }
        // One round in flight at a time: the rest waits here, in the bounded buffer.
        if !buffer.in_flight() {
            buffer.send_waiting(|d| {
                producer.send_result(FutureRecord::to(&topic).key(&d.instance).payload(&d.body)).ok()
            });
        }
        shutdown.sleep(Duration::from_millis(c.poll_interval_ms)).await;
    }
}

/// Records acknowledged dumps in the state (and counts them); whether there were any.
fn record_acked(state: &mut State, acked: Vec<Due>) -> bool {
    tributary_core::metrics::exporter("dumps", "shipped", acked.len() as u64);
    let any = !acked.is_empty();
    for d in acked {
        let t = state.entry(d.file).or_insert(d.timestamp_ms);
        *t = (*t).max(d.timestamp_ms);
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(d: &Path, newest: &State) -> (Vec<Due>, NotDumps) {
        let mut out = Vec::new();
        let bad = scan(d, |f, t| newest.get(f).is_none_or(|n| t > *n), |x| out.push(x)).unwrap();
        (out, bad)
    }

    #[test]
    fn only_dumps_newer_than_the_state_are_due_and_the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tributary_core::metrics_dump::write_once(d, "a", 100, "x 1\n# EOF\n").unwrap();
        tributary_core::metrics_dump::write_once(d, "b", 100, "x 2\n# EOF\n").unwrap();
        std::fs::write(d.join("junk.prom"), "not a dump\n").unwrap();
        std::fs::write(d.join(".a.prom.tmp"), "half").unwrap();
        let mut state = State::new();
        let (due1, bad) = due(d, &state);
        assert_eq!(due1.iter().map(|x| x.instance.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(bad.len(), 1);
        state.insert("a.prom".into(), 100);
        let path = d.join(".state.json");
        save_json(&path, &state).unwrap();
        let state: State = load_json(&path).unwrap();
        let (due2, _) = due(d, &state);
        assert_eq!(due2.iter().map(|x| x.instance.as_str()).collect::<Vec<_>>(), ["b"], "a was shipped already");
        tributary_core::metrics_dump::write_once(d, "a", 200, "x 3\n# EOF\n").unwrap();
        let (due3, _) = due(d, &state);
        assert_eq!(due3.len(), 2, "a's newer dump is due again");
    }

    fn dump(file: &str, ts: i64, bytes: usize) -> Due {
        Due { file: file.into(), instance: file.into(), timestamp_ms: ts, body: vec![b'x'; bytes] }
    }

    #[test]
    fn the_buffer_drops_the_oldest_waiting_dumps_past_its_bound_never_one_in_flight() {
        let mut b: DumpBuffer<u32> = DumpBuffer::new(300, &State::new());
        assert_eq!(b.push(dump("a", 1, 100)), 0);
        // Round 1 in flight: the send of a@1 is pending (an outage).
        b.send_waiting(|_| Some(7));
        for ts in 2..=6 {
            b.push(dump("a", ts, 100));
        }
        assert!(b.bytes() <= 300, "{}", b.bytes());
        // a@1 is librdkafka's now: kept; of the waiting ones the oldest went first.
        let kept: Vec<i64> = b.q.iter().map(|(d, _)| d.timestamp_ms).collect();
        assert_eq!(kept, [1, 5, 6]);
        assert!(!b.is_new("a", 6) && b.is_new("a", 7));
        // The in-flight send fails: a@1 waits again and is the next to be dropped.
        let (acked, failed) = b.resolve(|_| Some(false));
        assert_eq!((acked.len(), failed), (0, 1));
        assert_eq!(b.push(dump("a", 7, 100)), 1);
        assert_eq!(b.q.iter().map(|(d, _)| d.timestamp_ms).collect::<Vec<_>>(), [5, 6, 7]);
        // The broker is back: everything is sent in order and acknowledged.
        let mut sent = Vec::new();
        b.send_waiting(|d| {
            sent.push(d.timestamp_ms);
            Some(0)
        });
        assert_eq!(sent, [5, 6, 7]);
        let (acked, _) = b.resolve(|_| Some(true));
        assert_eq!(acked.len(), 3);
        assert_eq!((b.len(), b.bytes()), (0, 0));
        // A single dump larger than the bound still ships.
        assert_eq!(b.push(dump("big", 1, 1000)), 0);
        assert_eq!(b.len(), 1);
    }
}

//! log-exporter (issue #11). Three jobs, each optional, in one process:
//! - **metric dumps** (this file): ships the dumps every service writes to `metrics.dump_dir` to
//!   Kafka for kafka2prom;
//! - **log streams** ([`logs`], [`tail`]): tails files matched by globs, rotation-safe, exactly
//!   once, never dropping a line;
//! - **dual landing zones** ([`landing`]): copies every landing file of a spool into two zones.
//!
//! Metric dumps:
//! Every `log_exporter.poll_interval_ms` each `<instance>.prom` of the folder is read; a dump
//! newer than the last one shipped from that file (by the timestamp in its header) is produced as
//! one message keyed by its instance — so every value of an instance's series lands in one
//! partition, in order — with `log_exporter.metrics_acks` (default `1`: a lost dump is replaced by
//! the next one 30 s later, as in seed 003). Once the broker acknowledged it, the timestamp is
//! recorded in the state file (written atomically), so a restart neither resends nor skips a dump.
//! During a broker outage only the newest dump of each file is held (the file itself is replaced
//! in place): older ones are superseded, counted, never queued without bound.

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

/// A dump due for shipping: newer than what the state says was shipped from its file.
#[derive(Debug, PartialEq)]
pub struct Due {
    pub file: String,
    pub instance: String,
    pub timestamp_ms: i64,
    pub body: Vec<u8>,
}

/// Files of the folder that are not dumps: (file name, why).
pub type NotDumps = Vec<(String, String)>;

/// The dumps of `dir` newer than `state` (pure apart from reading the folder). Files that are
/// not dumps are reported in the second list and skipped.
pub fn due(dir: &Path, state: &State) -> Result<(Vec<Due>, NotDumps)> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, bad)),
        Err(e) => return Err(Error::external(format!("listing {}", dir.display())).with_source(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".prom") && !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let body = match std::fs::read(dir.join(&name)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // replaced meanwhile
            Err(e) => return Err(Error::external(format!("reading {name}")).with_source(e)),
        };
        match tributary_core::metrics_dump::split(&body) {
            Ok((h, _)) if state.get(&name).is_none_or(|t| h.timestamp_ms > *t) => {
                out.push(Due { file: name, instance: h.instance, timestamp_ms: h.timestamp_ms, body })
            }
            Ok(_) => {}
            Err(e) => bad.push((name, e)),
        }
    }
    Ok((out, bad))
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
    let (first, _, rest) = futures::future::select_all(jobs.into_iter().map(tokio::spawn)).await;
    let r = first.map_err(|e| Error::internal(format!("log-exporter job: {e}"))).and_then(|r| r);
    shutdown.trigger();
    for j in rest {
        let _ = j.await;
    }
    r
}

async fn run_landing(cfg: Arc<Config>, shutdown: Shutdown) -> Result<()> {
    let c = &cfg.log_exporter;
    if c.landing_zones.len() < 2 {
        return Err(Error::user("log_exporter.landing_zones needs two zones (the primary's and the secondary's)"));
    }
    let spool = PathBuf::from(&c.landing_spool);
    let zones: Vec<PathBuf> = c.landing_zones.iter().map(PathBuf::from).collect();
    tracing::info!(spool = %spool.display(), zones = ?zones, "log-exporter mirroring landing files");
    loop {
        let (s, z) = (spool.clone(), zones.clone());
        let m = tokio::task::spawn_blocking(move || landing::mirror_once(&s, &z))
            .await
            .map_err(|e| Error::internal(format!("landing task: {e}")))??;
        tributary_core::metrics::exporter("landing", "mirrored", m.files.len() as u64);
        tributary_core::metrics::exporter("landing", "conflict", m.conflicts.len() as u64);
        if shutdown.sleep(Duration::from_millis(c.poll_interval_ms)).await {
            return Ok(());
        }
    }
}

async fn run_dumps(cfg: Arc<Config>, dir: PathBuf, shutdown: Shutdown) -> Result<()> {
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
    tracing::info!(dir = %dir.display(), %topic, acks = %c.metrics_acks, "log-exporter shipping metric dumps");
    let mut warned: BTreeMap<String, String> = BTreeMap::new();
    // Per file: the timestamp of a dump that could not be delivered (a newer one supersedes it).
    let mut failed: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let (due, bad) = due(&dir, &state)?;
        for (name, e) in bad {
            if warned.get(&name) != Some(&e) {
                tracing::warn!(file = %name, error = %e, "not a metric dump; skipped");
                warned.insert(name, e);
            }
        }
        let mut changed = false;
        for d in due {
            if let Some(old) = failed.get(&d.file)
                && *old < d.timestamp_ms
            {
                tributary_core::metrics::exporter("dumps", "superseded", 1);
                failed.remove(&d.file);
            }
            let rec = FutureRecord::to(&topic).key(&d.instance).payload(&d.body);
            match producer.send(rec, Duration::from_secs(35)).await {
                Ok(_) => {
                    state.insert(d.file.clone(), d.timestamp_ms);
                    failed.remove(&d.file);
                    tributary_core::metrics::exporter("dumps", "shipped", 1);
                    changed = true;
                }
                Err((e, _)) => {
                    tracing::warn!(file = %d.file, error = %e, "shipping a metric dump failed; the newest dump is retried next poll");
                    failed.insert(d.file.clone(), d.timestamp_ms);
                }
            }
        }
        if changed {
            save_json(&state_path, &state)?;
        }
        if shutdown.sleep(Duration::from_millis(c.poll_interval_ms)).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dumps_newer_than_the_state_are_due_and_the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tributary_core::metrics_dump::write_once(d, "a", 100, "x 1\n# EOF\n").unwrap();
        tributary_core::metrics_dump::write_once(d, "b", 100, "x 2\n# EOF\n").unwrap();
        std::fs::write(d.join("junk.prom"), "not a dump\n").unwrap();
        std::fs::write(d.join(".a.prom.tmp"), "half").unwrap();
        let mut state = State::new();
        let (due1, bad) = due(d, &state).unwrap();
        assert_eq!(due1.iter().map(|x| x.instance.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(bad.len(), 1);
        state.insert("a.prom".into(), 100);
        let path = d.join(".state.json");
        save_json(&path, &state).unwrap();
        let state: State = load_json(&path).unwrap();
        let (due2, _) = due(d, &state).unwrap();
        assert_eq!(due2.iter().map(|x| x.instance.as_str()).collect::<Vec<_>>(), ["b"], "a was shipped already");
        tributary_core::metrics_dump::write_once(d, "a", 200, "x 3\n# EOF\n").unwrap();
        let (due3, _) = due(d, &state).unwrap();
        assert_eq!(due3.len(), 2, "a's newer dump is due again");
    }
}

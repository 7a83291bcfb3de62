//! Metric dumps (issue #11): every service writes its whole metrics registry to a file every
//! `metrics.dump_interval_secs`, for places Prometheus cannot scrape. The log-exporter tails
//! these files and produces them to Kafka; kafka2prom exposes them again.
//!
//! A dump is `<dump_dir>/<instance>.prom`, replaced atomically (written as `.<instance>.prom.tmp`
//! in the same folder, then renamed), so a reader never sees half a dump. Its first line names
//! the emitting instance and the dump's timestamp; the rest is the registry in OpenMetrics text
//! (ending in `# EOF`):
//!
//! ```text
//! # tributary-dump v1 instance=bronze-ingest-0 timestamp_ms=1795437014068
//! # TYPE tributary_rows counter
//! ...
//! # EOF
//! ```

use crate::{Error, Result, Shutdown};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The first line of a dump.
pub const HEADER: &str = "# tributary-dump v1";

/// A dump's preamble: who wrote it and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpHeader {
    pub instance: String,
    pub timestamp_ms: i64,
}

/// Renders a dump: the header line, then `exposition` (OpenMetrics text).
pub fn render(instance: &str, timestamp_ms: i64, exposition: &str) -> String {
    format!("{HEADER} instance={instance} timestamp_ms={timestamp_ms}\n{exposition}")
}

/// Splits a dump into its header and the exposition after it.
pub fn split(dump: &[u8]) -> std::result::Result<(DumpHeader, &[u8]), String> {
    let end = dump.iter().position(|b| *b == b'\n').ok_or("a dump has no header line")?;
    let first = std::str::from_utf8(&dump[..end]).map_err(|_| "the dump header is not UTF-8")?;
    let rest = first.strip_prefix(HEADER).ok_or_else(|| format!("not a tributary dump: {:?}", truncate(first)))?;
    let mut instance = None;
    let mut timestamp_ms = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("instance", v)) if !v.is_empty() => instance = Some(v.to_string()),
            Some(("timestamp_ms", v)) => timestamp_ms = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    let header = DumpHeader {
        instance: instance.ok_or("the dump header has no instance")?,
        timestamp_ms: timestamp_ms.ok_or("the dump header has no valid timestamp_ms")?,
    };
    Ok((header, &dump[end + 1..]))
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// An instance name safe as a file name and a header token.
pub fn valid_instance(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with('.')
}

/// Writes one dump atomically; returns its path.
pub fn write_once(dir: &Path, instance: &str, timestamp_ms: i64, exposition: &str) -> Result<PathBuf> {
    if !valid_instance(instance) {
        return Err(Error::user(format!("metrics.instance {instance:?}: use letters, digits, '-', '_', '.'")));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::external(format!("creating {}", dir.display())).with_source(e))?;
    let path = dir.join(format!("{instance}.prom"));
    let tmp = dir.join(format!(".{instance}.prom.tmp"));
    std::fs::write(&tmp, render(instance, timestamp_ms, exposition))
        .map_err(|e| Error::external(format!("writing {}", tmp.display())).with_source(e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::external(format!("renaming {} into place", tmp.display())).with_source(e))?;
    Ok(path)
}

/// The instance name of this process: `metrics.instance`, else `<service>-<hostname>`.
pub fn instance_name(configured: &str, service: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid{}", std::process::id()));
    let name: String = format!("{service}-{host}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    name
}

/// Dumps the process registry every `interval` until `shutdown` (and once more at shutdown, so
/// the last values are not lost). A failed write is logged and retried next interval.
pub async fn run(dir: PathBuf, instance: String, interval: Duration, shutdown: Shutdown) {
    loop {
        let stop = shutdown.sleep(interval).await;
        let now = crate::now_ms();
        let text = crate::metrics::Metrics::global().encode();
        let (d, i) = (dir.clone(), instance.clone());
        match tokio::task::spawn_blocking(move || write_once(&d, &i, now, &text)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "metric dump failed"),
            Err(e) => tracing::warn!(error = %e, "metric dump task failed"),
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_is_written_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_once(dir.path(), "bronze-0", 1_700_000_000_123, "# TYPE a gauge\na 1\n# EOF\n").unwrap();
        let raw = std::fs::read(&p).unwrap();
        let (h, rest) = split(&raw).unwrap();
        assert_eq!(h, DumpHeader { instance: "bronze-0".into(), timestamp_ms: 1_700_000_000_123 });
        assert_eq!(rest, b"# TYPE a gauge\na 1\n# EOF\n");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["bronze-0.prom"], "no temp file left behind");
        assert!(write_once(dir.path(), "../x", 1, "").is_err(), "an instance cannot escape the folder");
        assert!(split(b"a 1\n").is_err());
        assert!(split(b"# tributary-dump v1 instance=x\n").is_err());
    }
}

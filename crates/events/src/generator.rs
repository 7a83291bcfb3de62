//! `tributary generate`: deterministic telemetry for N regions and the four sources, written as
//! NDJSON files (plain and gzip) into each region's landing zone, with the messy cases dialled
//! in by percentage, plus the ground truth.

use crate::rng::Rng;
use crate::truth::{SourceTruth, Truth};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub regions: Vec<String>,
    pub sources: Vec<String>,
    /// New events per region and source (duplicates come on top).
    pub events_per_source: u64,
    pub files_per_source: u64,
    /// Event time of the first event, ms since epoch.
    pub start_ms: i64,
    /// Event times spread over this many minutes.
    pub span_minutes: i64,
    pub dup_pct: f64,
    pub late_pct: f64,
    pub late_minutes: i64,
    pub out_of_order_pct: f64,
    pub malformed_pct: f64,
    pub null_id_pct: f64,
    pub unknown_field_pct: f64,
    pub egress_pct: f64,
    /// Every n-th file is gzip-compressed (0 = none).
    pub gzip_every: u64,
    /// Every n-th file is written the way Windows tools write it: a UTF-8 byte-order mark, CRLF
    /// line endings, and a blank and a whitespace-only line at the end (0 = none).
    pub bom_every: u64,
    /// Share of billing events whose `dbu` sits at the edges of the column (scale 9: a few
    /// billionths, 17 significant digits) spelled as real producers do (exponent forms, a quoted
    /// string, plain).
    pub decimal_edge_pct: f64,
    /// Share of events whose `event_id` is empty or whitespace only (silver: `null_key`).
    pub empty_id_pct: f64,
    /// Target events/s across everything; None = as fast as possible.
    pub rate: Option<f64>,
    /// Prefix of file names, so several runs can share a landing zone.
    pub file_prefix: String,
    /// Serialized event size is drawn uniformly from [min, max) bytes (approximately).
    pub size_min: usize,
    pub size_max: usize,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            regions: vec!["us-east-1".into(), "eu-west-1".into(), "ap-south-1".into()],
            sources: crate::SOURCES.iter().map(|s| s.to_string()).collect(),
            events_per_source: 2_000,
            files_per_source: 8,
            start_ms: 1_761_955_200_000, // 2025-11-01T00:00:00Z
            span_minutes: 180,
            dup_pct: 3.0,
            late_pct: 2.0,
            late_minutes: 90,
            out_of_order_pct: 10.0,
            malformed_pct: 1.0,
            null_id_pct: 0.5,
            unknown_field_pct: 2.0,
            egress_pct: 70.0,
            gzip_every: 3,
            bom_every: 4,
            decimal_edge_pct: 10.0,
            empty_id_pct: 0.5,
            rate: None,
            file_prefix: "part".into(),
            size_min: 1024,
            size_max: 4096,
        }
    }
}

pub struct GenOutput {
    pub truth: Truth,
    pub files_written: u64,
    pub bytes_written: u64,
    pub lines_written: u64,
}

const SKUS: &[&str] = &["JOBS_COMPUTE", "ALL_PURPOSE_COMPUTE", "SQL_PRO", "DLT_CORE", "SERVERLESS_SQL"];
const ACTIONS: &[&str] =
    &["login", "createCluster", "deleteCluster", "runNow", "updatePermissions", "getSecret", "listJobs"];
const STATES: &[&str] = &["PENDING", "RUNNING", "SUCCEEDED", "FAILED"];
const NODE_TYPES: &[&str] = &["m5.xlarge", "r5.2xlarge", "c5.4xlarge", "i3.xlarge"];

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

fn floor_to(ms: i64, unit_ms: i64) -> i64 {
    ms.div_euclid(unit_ms) * unit_ms
}

/// What a line's `event_id` holds.
#[derive(Clone, Copy)]
enum IdKind {
    Real,
    Null,
    /// Empty or whitespace only.
    Blank(&'static str),
}

/// One generated valid event, before serialisation.
struct Ev {
    id: String,
    time_ms: i64,
    workspace: String,
    customer: String,
    egress: bool,
    billing: Option<(String, Decimal)>,
    /// How `dbu` is spelled in the JSON (exact text of the value above).
    dbu_text: Option<String>,
}

impl Ev {
    /// A valid event of `source` with its id and time given; the rest drawn from `rng` (a `dbu`
    /// for billing, with `edge_pct` of them at the column's edges).
    fn draw(rng: &mut Rng, cfg: &GenConfig, region: &str, source: &str, id: String, time_ms: i64, edge_pct: f64) -> Ev {
        let billing_dbu = (source == "billing").then(|| dbu(rng, edge_pct));
        Ev {
            id,
            time_ms,
            workspace: format!("ws-{region}-{}", rng.below(8)),
            customer: format!("cust-{:03}", rng.below(40)),
            egress: rng.pct(cfg.egress_pct),
            billing: billing_dbu.as_ref().map(|(d, _)| ((*rng.pick(SKUS)).to_string(), *d)),
            dbu_text: billing_dbu.map(|(_, t)| t),
        }
    }
}

/// A billing `dbu`: usually a 6-decimal value written plainly; with `edge_pct` one at the
/// column's edges (scale 9) in one of the spellings producers use. Returns the value and its
/// JSON text (exactly equal to the value).
fn dbu(rng: &mut Rng, edge_pct: f64) -> (Decimal, String) {
    if !rng.pct(edge_pct) {
        let d = Decimal::new(rng.below(50_000_000) as i64 + 1, 6);
        return (d, d.to_string());
    }
    let mantissa: i64 = match rng.below(3) {
        0 => rng.below(9) as i64 + 1,                                           // 0.00000000x
        1 => 10_000_000_000_000_000 + rng.below(89_999_999_999_999_999) as i64, // 17 digits
        _ => rng.below(1_000_000_000) as i64 + 1,
    };
    let d = Decimal::new(mantissa, 9);
    let text = match rng.below(4) {
        0 => d.to_string(),
        1 => format!("{mantissa}e-9"),
        2 => format!("{mantissa}0E-10"),
        _ => format!("\"{d}\""),
    };
    (d, text)
}

fn build_line(
    rng: &mut Rng,
    source: &str,
    region: &str,
    ev: &Ev,
    id: IdKind,
    unknown: bool,
    size: (usize, usize),
) -> String {
    let mut m = serde_json::Map::new();
    m.insert(
        "event_id".into(),
        match id {
            IdKind::Real => ev.id.clone().into(),
            IdKind::Null => serde_json::Value::Null,
            IdKind::Blank(b) => b.into(),
        },
    );
    // Mix both event_time encodings the contract allows.
    if rng.pct(20.0) {
        m.insert("event_time".into(), ev.time_ms.into());
    } else {
        m.insert("event_time".into(), rfc3339_ms(ev.time_ms).into());
    }
    m.insert("source".into(), source.into());
    m.insert("region".into(), region.into());
    m.insert("workspace_id".into(), ev.workspace.clone().into());
    m.insert("customer_id".into(), ev.customer.clone().into());
    m.insert("egress_approved".into(), ev.egress.into());
    let mut dbu_text = None;
    match source {
        "audit" => {
            m.insert("actor".into(), format!("user-{}@corp.example", rng.below(500)).into());
            m.insert("action".into(), (*rng.pick(ACTIONS)).into());
            m.insert("resource".into(), format!("/workspaces/{}/clusters/{}", ev.workspace, rng.alnum(8)).into());
            m.insert("result".into(), if rng.pct(95.0) { "success" } else { "denied" }.into());
            m.insert("source_ip".into(), format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(256)).into());
        }
        "job" => {
            m.insert("job_id".into(), format!("job-{}", rng.below(200)).into());
            m.insert("run_id".into(), format!("run-{}", rng.below(5000)).into());
            // A few runs are deleted (the entity tables apply them as deletes).
            let state = if rng.pct(3.0) { "DELETED" } else { *rng.pick(STATES) };
            m.insert("state".into(), state.into());
            m.insert("sequence".into(), (rng.below(8) + 1).into());
            m.insert("duration_ms".into(), rng.below(3_600_000).into());
        }
        "billing" => {
            let (sku, dbu) = ev.billing.clone().unwrap_or_default();
            m.insert("sku".into(), sku.into());
            m.insert("dbu".into(), serde_json::Value::Null); // placeholder, replaced with exact text
            dbu_text = Some(ev.dbu_text.clone().unwrap_or_else(|| dbu.to_string()));
            m.insert("usage_start".into(), rfc3339_ms(ev.time_ms).into());
            m.insert("usage_end".into(), rfc3339_ms(ev.time_ms + 60_000).into());
            m.insert("usage_unit".into(), "DBU".into());
        }
        _ => {
            m.insert("cluster_id".into(), format!("cl-{}", rng.below(300)).into());
            m.insert("cpu_pct".into(), serde_json::json!((rng.below(10_000) as f64) / 100.0));
            m.insert("mem_pct".into(), serde_json::json!((rng.below(10_000) as f64) / 100.0));
            m.insert("num_workers".into(), rng.below(64).into());
            m.insert("node_type".into(), (*rng.pick(NODE_TYPES)).into());
        }
    }
    if unknown {
        m.insert(format!("x_new_field_{}", rng.below(3)), rng.alnum(6).into());
    }
    let target = size.0 + rng.below(size.1.saturating_sub(size.0).max(1) as u64) as usize;
    let base = serde_json::to_string(&m).unwrap_or_default();
    // Pad with realistic-looking attributes up to the target size, serialising once.
    let mut attrs = serde_json::Map::new();
    let mut need = target.saturating_sub(base.len() + 16);
    let mut k = 0;
    while need > 24 {
        let len = need.saturating_sub(14).clamp(1, 200);
        attrs.insert(format!("attr_{k:02}"), rng.alnum(len).into());
        need = need.saturating_sub(len + 14);
        k += 1;
    }
    let line = if attrs.is_empty() {
        base
    } else {
        m.insert("attributes".into(), serde_json::Value::Object(attrs));
        serde_json::to_string(&m).unwrap_or_default()
    };
    let mut line = line;
    if let Some(d) = dbu_text {
        line = line.replacen("\"dbu\":null", &format!("\"dbu\":{d}"), 1);
    }
    line
}

fn malformed_line(rng: &mut Rng, good: &str) -> Vec<u8> {
    match rng.below(3) {
        0 => good.as_bytes()[..good.len() / 2].to_vec(),
        1 => {
            let mut b = good.as_bytes().to_vec();
            let at = b.len() / 3;
            b[at] = 0xFF;
            b
        }
        _ => b"[\"not\",\"an\",\"object\"]".to_vec(),
    }
}

/// Writes the traffic and returns the ground truth (also written to `truth_path`).
pub fn generate(
    cfg: &GenConfig,
    landing_for_region: &dyn Fn(&str) -> PathBuf,
    truth_path: Option<&Path>,
) -> anyhow::Result<GenOutput> {
    let mut truth = Truth { seed: cfg.seed, ..Default::default() };
    let mut files_written = 0;
    let mut bytes_written = 0;
    let mut lines_written = 0;
    let started = std::time::Instant::now();
    let total_events = (cfg.regions.len() * cfg.sources.len()) as u64 * cfg.events_per_source;
    let mut billing: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut ids_out: BTreeMap<(String, String), (Vec<String>, Vec<String>)> = BTreeMap::new();

    for (ri, region) in cfg.regions.iter().enumerate() {
        let landing = landing_for_region(region);
        for (si, source) in cfg.sources.iter().enumerate() {
            let mut rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add((ri * 16 + si) as u64));
            let dir = landing.join(source);
            std::fs::create_dir_all(&dir)?;
            let mut st = SourceTruth::default();
            let mut recent: Vec<String> = Vec::new();
            let mut unique: Vec<String> = Vec::new();
            let mut egress_ids: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            let per_file = cfg.events_per_source.div_ceil(cfg.files_per_source.max(1)).max(1);
            let span_ms = cfg.span_minutes.max(1) * 60_000;
            let mut made = 0u64;
            let mut file_no = 0u64;
            while made < cfg.events_per_source {
                let mut lines: Vec<Vec<u8>> = Vec::new();
                let mut in_file = 0;
                while in_file < per_file && made < cfg.events_per_source {
                    if !recent.is_empty() && rng.pct(cfg.dup_pct) {
                        let pick = recent[rng.below(recent.len() as u64) as usize].clone();
                        lines.push(pick.into_bytes());
                        st.duplicates += 1;
                        continue;
                    }
                    let i = made;
                    made += 1;
                    in_file += 1;
                    let mut time_ms = cfg.start_ms
                        + (i as i64 * span_ms) / cfg.events_per_source.max(1) as i64
                        + rng.below(1000) as i64;
                    let late = rng.pct(cfg.late_pct);
                    if late {
                        time_ms -= cfg.late_minutes * 60_000;
                    }
                    let id = format!("{region}-{source}-{}-{i:08}", cfg.file_prefix);
                    let ev = Ev::draw(&mut rng, cfg, region, source, id, time_ms, cfg.decimal_edge_pct);
                    if rng.pct(cfg.malformed_pct) {
                        let good = build_line(
                            &mut rng,
                            source,
                            region,
                            &ev,
                            IdKind::Real,
                            false,
                            (cfg.size_min, cfg.size_max),
                        );
                        lines.push(malformed_line(&mut rng, &good));
                        st.malformed += 1;
                        continue;
                    }
                    if rng.pct(cfg.null_id_pct) {
                        lines.push(
                            build_line(
                                &mut rng,
                                source,
                                region,
                                &ev,
                                IdKind::Null,
                                false,
                                (cfg.size_min, cfg.size_max),
                            )
                            .into_bytes(),
                        );
                        st.null_id += 1;
                        continue;
                    }
                    if rng.pct(cfg.empty_id_pct) {
                        let blank = IdKind::Blank(["", " ", "\t  "][rng.below(3) as usize]);
                        lines.push(
                            build_line(&mut rng, source, region, &ev, blank, false, (cfg.size_min, cfg.size_max))
                                .into_bytes(),
                        );
                        st.null_id += 1;
                        continue;
                    }
                    let unknown = rng.pct(cfg.unknown_field_pct);
                    let line =
                        build_line(&mut rng, source, region, &ev, IdKind::Real, unknown, (cfg.size_min, cfg.size_max));
                    if unknown {
                        st.unknown_fields += 1;
                    }
                    if late {
                        st.late += 1;
                    }
                    if seen.insert(ev.id.clone()) {
                        st.unique_valid += 1;
                        unique.push(ev.id.clone());
                        if ev.egress {
                            st.egress_unique += 1;
                            egress_ids.push(ev.id.clone());
                        }
                        let minute = rfc3339_ms(floor_to(ev.time_ms, 60_000));
                        *truth
                            .event_counts_minute
                            .entry(format!("{region}|{source}|{}|{minute}", ev.workspace))
                            .or_insert(0) += 1;
                        if let Some((sku, dbu)) = &ev.billing {
                            let hour = rfc3339_ms(floor_to(ev.time_ms, 3_600_000));
                            let key = format!("{region}|{}|{sku}|{hour}", ev.customer);
                            *billing.entry(key.clone()).or_insert(Decimal::ZERO) += *dbu;
                            *truth.billing_hourly_events.entry(key).or_insert(0) += 1;
                        }
                    }
                    recent.push(line.clone());
                    if recent.len() > 5000 {
                        recent.remove(0);
                    }
                    lines.push(line.into_bytes());
                }
                // Out-of-order delivery within the file.
                let n = lines.len();
                for j in 0..n {
                    if rng.pct(cfg.out_of_order_pct) {
                        let k = rng.below(n as u64) as usize;
                        lines.swap(j, k);
                    }
                }
                file_no += 1;
                let gz = cfg.gzip_every > 0 && file_no.is_multiple_of(cfg.gzip_every);
                let name = format!("{}-{:06}.ndjson{}", cfg.file_prefix, file_no, if gz { ".gz" } else { "" });
                let tmp = dir.join(format!(".tmp-{name}"));
                let windows = cfg.bom_every > 0 && file_no.is_multiple_of(cfg.bom_every);
                let mut body = Vec::new();
                if windows {
                    body.extend_from_slice(&[0xEF, 0xBB, 0xBF]);
                }
                let eol: &[u8] = if windows { b"\r\n" } else { b"\n" };
                for l in &lines {
                    body.extend_from_slice(l);
                    body.extend_from_slice(eol);
                }
                if windows {
                    body.extend_from_slice(b"\r\n \t\r\n");
                }
                let bytes = if gz {
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(&body)?;
                    enc.finish()?
                } else {
                    body
                };
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, dir.join(&name))?;
                files_written += 1;
                bytes_written += bytes.len() as u64;
                lines_written += lines.len() as u64;
                st.lines += lines.len() as u64;
                st.files += 1;
                if let Some(rate) = cfg.rate.filter(|r| *r > 0.0) {
                    let due = std::time::Duration::from_secs_f64(lines_written as f64 / rate);
                    let el = started.elapsed();
                    if due > el {
                        std::thread::sleep(due - el);
                    }
                }
            }
            truth.regions.entry(region.clone()).or_default().insert(source.clone(), st);
            ids_out.insert((region.clone(), source.clone()), (unique, egress_ids));
        }
    }
    truth.billing_hourly = billing.into_iter().map(|(k, v)| (k, v.normalize().to_string())).collect();
    let _ = total_events;
    if let Some(p) = truth_path {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
            for ((region, source), (unique, egress)) in &ids_out {
                let d = dir.join("ids").join(region);
                std::fs::create_dir_all(&d)?;
                let mut u = unique.clone();
                u.sort();
                std::fs::write(d.join(format!("{source}.txt")), u.join("\n"))?;
                let mut e = egress.clone();
                e.sort();
                std::fs::write(d.join(format!("{source}.egress.txt")), e.join("\n"))?;
            }
        }
        std::fs::write(p, serde_json::to_string_pretty(&truth)?)?;
    }
    Ok(GenOutput { truth, files_written, bytes_written, lines_written })
}

/// What a real-time run wrote.
#[derive(Debug, Default)]
pub struct LiveOutput {
    pub files_written: u64,
    pub bytes_written: u64,
    pub lines_written: u64,
    /// Ticks that started after their due time (the generator could not keep the rate).
    pub late_ticks: u64,
}

/// Real-time traffic for freshness measurements: every `interval`, one file per region and source
/// with that interval's share of `rate` events/s, each stamped with the wall-clock time it is
/// written (so "now - newest event time visible in a table" is how long landed data takes to
/// become visible there). Clean events (unique ids, no messy knobs) of `cfg.size_min..size_max`
/// bytes; files land by rename. Bounded: `duration / interval` ticks.
pub fn generate_live(
    cfg: &GenConfig,
    landing_for_region: &dyn Fn(&str) -> PathBuf,
    rate: f64,
    duration: std::time::Duration,
    interval: std::time::Duration,
) -> anyhow::Result<LiveOutput> {
    anyhow::ensure!(rate > 0.0, "a live run needs --rate > 0");
    let interval = interval.max(std::time::Duration::from_millis(50));
    let flows = (cfg.regions.len() * cfg.sources.len()).max(1);
    let per_flow_tick = rate * interval.as_secs_f64() / flows as f64;
    let mut rngs: Vec<Rng> =
        (0..flows as u64).map(|i| Rng::new(cfg.seed.wrapping_mul(7_919).wrapping_add(i))).collect();
    let mut carry = vec![0f64; flows];
    let mut made = vec![0u64; flows];
    let mut out = LiveOutput::default();
    let started = std::time::Instant::now();
    let mut tick = 0u64;
    loop {
        let due = interval * tick as u32;
        if due >= duration {
            break;
        }
        let el = started.elapsed();
        if due > el {
            std::thread::sleep(due - el);
        } else if el - due > interval {
            out.late_ticks += 1;
        }
        tick += 1;
        for (ri, region) in cfg.regions.iter().enumerate() {
            let dir_region = landing_for_region(region);
            for (si, source) in cfg.sources.iter().enumerate() {
                let f = ri * cfg.sources.len() + si;
                carry[f] += per_flow_tick;
                let n = carry[f].floor() as u64;
                carry[f] -= n as f64;
                if n == 0 {
                    continue;
                }
                let rng = &mut rngs[f];
                let now_ms = chrono::Utc::now().timestamp_millis();
                let mut body = Vec::with_capacity(n as usize * (cfg.size_min + cfg.size_max) / 2);
                for _ in 0..n {
                    let i = made[f];
                    made[f] += 1;
                    let id = format!("{region}-{source}-{}-live-{i:010}", cfg.file_prefix);
                    let ev = Ev::draw(rng, cfg, region, source, id, now_ms, 0.0);
                    body.extend_from_slice(
                        build_line(rng, source, region, &ev, IdKind::Real, false, (cfg.size_min, cfg.size_max))
                            .as_bytes(),
                    );
                    body.push(b'\n');
                }
                let dir = dir_region.join(source);
                std::fs::create_dir_all(&dir)?;
                let name = format!("{}-live-{tick:08}.ndjson", cfg.file_prefix);
                let tmp = dir.join(format!(".tmp-{name}"));
                std::fs::write(&tmp, &body)?;
                std::fs::rename(&tmp, dir.join(&name))?;
                out.files_written += 1;
                out.bytes_written += body.len() as u64;
                out.lines_written += n;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_run_writes_the_rate_stamped_now_and_stops() {
        let root = std::env::temp_dir().join(format!("trib-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = &root;
        let cfg = GenConfig { regions: vec!["r1".into()], size_min: 200, size_max: 400, ..GenConfig::default() };
        let before = chrono::Utc::now().timestamp_millis();
        let out = generate_live(
            &cfg,
            &|r| dir.join(r),
            400.0,
            std::time::Duration::from_millis(1000),
            std::time::Duration::from_millis(250),
        )
        .unwrap();
        let after = chrono::Utc::now().timestamp_millis();
        // 4 ticks x 4 sources x 25 events.
        assert_eq!(out.lines_written, 400, "{out:?}");
        assert_eq!(out.files_written, 16);
        let mut ids = std::collections::HashSet::new();
        for s in crate::SOURCES {
            for e in std::fs::read_dir(dir.join("r1").join(s)).unwrap() {
                let body = std::fs::read(e.unwrap().path()).unwrap();
                for (_, line) in crate::lines::lines(&body) {
                    let d = crate::decode_event(line, s, 1 << 20).expect("valid event");
                    let id = d.event_id.clone().expect("an id");
                    assert!(ids.insert(id.clone()), "duplicate id {id}");
                    let t = d.event_time.expect("an event time") / 1000;
                    assert!(t >= before && t <= after, "event time {t} outside the run [{before}, {after}]");
                }
            }
        }
        assert_eq!(ids.len(), 400);
        assert!(
            generate_live(&cfg, &|r| dir.join(r), 0.0, std::time::Duration::ZERO, std::time::Duration::ZERO).is_err()
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    use super::*;

    #[test]
    fn deterministic_and_consistent() {
        let dir = std::env::temp_dir().join(format!("trib-gen-{}", std::process::id()));
        let cfg = GenConfig { events_per_source: 300, files_per_source: 3, ..Default::default() };
        let a = generate(&cfg, &|r| dir.join("a").join(r), None).unwrap();
        let b = generate(&cfg, &|r| dir.join("b").join(r), None).unwrap();
        assert_eq!(a.truth, b.truth);
        for r in &cfg.regions {
            for s in &cfg.sources {
                let st = &a.truth.regions[r][s];
                assert_eq!(st.lines, 300 + st.duplicates);
                assert_eq!(st.unique_valid + st.malformed + st.null_id, 300);
                let fa = std::fs::read_dir(dir.join("a").join(r).join(s)).unwrap().count();
                assert_eq!(fa as u64, st.files);
            }
        }
        // Every line decodes or is counted malformed; sizes within 1-4 KB for valid events.
        let mut decoded = 0u64;
        let mut rejected = 0u64;
        for r in &cfg.regions {
            for s in &cfg.sources {
                for f in std::fs::read_dir(dir.join("a").join(r).join(s)).unwrap() {
                    let p = f.unwrap().path();
                    let raw = std::fs::read(&p).unwrap();
                    let body = if p.extension().unwrap() == "gz" {
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out).unwrap();
                        out
                    } else {
                        raw
                    };
                    let body = body.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(&body).to_vec();
                    for (_, line) in crate::lines::lines(&body) {
                        match crate::decode_event(line, s, 1 << 20) {
                            Ok(d) => {
                                decoded += 1;
                                if d.event_id.is_some() {
                                    assert!((1000..4200).contains(&line.len()), "size {}", line.len());
                                }
                            }
                            Err(_) => rejected += 1,
                        }
                    }
                }
            }
        }
        assert_eq!(rejected, a.truth.total(|s| s.malformed));
        assert_eq!(decoded, a.truth.total(|s| s.bronze_rows()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

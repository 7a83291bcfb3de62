//! The reconciliation table: generated → bronze (+ quarantine) → silver (+ quarantine,
//! duplicates) → gold → central, per region and source; and table fingerprints.

use deltalake::arrow::array::{Array, Decimal128Array, Int64Array, StringArray};
use gold_aggregate::window::GoldKind;
use serde::Serialize;
use std::collections::BTreeMap;
use tributary_core::{Config, Result};
use tributary_delta::Table;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub region: String,
    pub source: String,
    pub generated: Option<u64>,
    pub bronze: u64,
    pub bronze_quarantined: u64,
    pub silver_quarantined: u64,
    pub duplicates_removed: u64,
    pub silver: u64,
    pub gold_events: u64,
    pub central: u64,
    pub expected_silver: Option<u64>,
    pub expected_central: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// region -> (gold DBU, central DBU) as exact decimal text.
    pub billing_dbu: BTreeMap<String, (String, String)>,
    pub all_match: Option<bool>,
}

async fn rows_by_partition(location: &str, partition: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    if let Some(t) = Table::open_existing("q", location).await? {
        for f in t.files()? {
            let key = f.partition_values.get(partition).cloned().flatten().unwrap_or_default();
            *out.entry(key).or_insert(0) += f.num_records.unwrap_or(0) as u64;
        }
    }
    Ok(out)
}

async fn row_count(location: &str) -> Result<u64> {
    Ok(match Table::open_existing("t", location).await? {
        Some(t) => t.stats(None)?.row_count as u64,
        None => 0,
    })
}

fn dec(v: i128) -> String {
    rust_decimal::Decimal::from_i128_with_scale(v, tributary_events::contract::DECIMAL_SCALE).normalize().to_string()
}

fn sum_dbu(batches: &[deltalake::arrow::array::RecordBatch], region: Option<&str>) -> i128 {
    let mut total = 0i128;
    for b in batches {
        let (Some(d), Some(r)) = (
            b.column_by_name("dbu").and_then(|c| c.as_any().downcast_ref::<Decimal128Array>()),
            b.column_by_name("region").and_then(|c| c.as_any().downcast_ref::<StringArray>()),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            if region.is_none_or(|x| r.value(i) == x) {
                total += d.value(i);
            }
        }
    }
    total
}

impl Report {
    pub async fn collect(cfg: &Config) -> Result<Self> {
        let truth = tributary_events::truth::Truth::load(&crate::standalone::truth_path(cfg)).ok();
        let central_events = Table::open_existing("central/events", &central_federator::events_location(cfg)).await?;
        let central_batches = match &central_events {
            Some(t) => t.read_all().await?,
            None => vec![],
        };
        let mut central_counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for b in &central_batches {
            let (Some(r), Some(s)) = (
                b.column_by_name("region").and_then(|c| c.as_any().downcast_ref::<StringArray>()),
                b.column_by_name("source").and_then(|c| c.as_any().downcast_ref::<StringArray>()),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                *central_counts.entry((r.value(i).to_string(), s.value(i).to_string())).or_insert(0) += 1;
            }
        }
        let central_billing =
            match Table::open_existing("central/billing", &central_federator::gold_location(cfg, GoldKind::Billing))
                .await?
            {
                Some(t) => t.read_all().await?,
                None => vec![],
            };
        let mut report = Report::default();
        let mut all_match = truth.is_some();
        for region in &cfg.regions {
            let bq = rows_by_partition(&bronze_ingest::quarantine_location(cfg, region), "source").await?;
            let sq = rows_by_partition(&silver_transform::quarantine_location(cfg, region), "source").await?;
            let mut gold_by_source: BTreeMap<String, u64> = BTreeMap::new();
            if let Some(t) =
                Table::open_existing("gold", &gold_aggregate::table_location(cfg, region, GoldKind::EventCounts))
                    .await?
            {
                for b in t.read_all().await? {
                    let (Some(s), Some(n)) = (
                        b.column_by_name("source").and_then(|c| c.as_any().downcast_ref::<StringArray>()),
                        b.column_by_name("event_count").and_then(|c| c.as_any().downcast_ref::<Int64Array>()),
                    ) else {
                        continue;
                    };
                    for i in 0..b.num_rows() {
                        *gold_by_source.entry(s.value(i).to_string()).or_insert(0) += n.value(i) as u64;
                    }
                }
            }
            let gold_billing =
                match Table::open_existing("gold", &gold_aggregate::table_location(cfg, region, GoldKind::Billing))
                    .await?
                {
                    Some(t) => t.read_all().await?,
                    None => vec![],
                };
            report.billing_dbu.insert(
                region.clone(),
                (dec(sum_dbu(&gold_billing, None)), dec(sum_dbu(&central_billing, Some(region)))),
            );
            for source in &cfg.bronze.sources {
                let bronze = row_count(&bronze_ingest::table_location(cfg, region, source)).await?;
                let silver = row_count(&silver_transform::table_location(cfg, region, source)).await?;
                let silver_q = sq.get(source).copied().unwrap_or(0);
                let t = truth.as_ref().and_then(|t| t.regions.get(region)).and_then(|m| m.get(source));
                let row = Row {
                    region: region.clone(),
                    source: source.clone(),
                    generated: t.map(|t| t.lines),
                    bronze,
                    bronze_quarantined: bq.get(source).copied().unwrap_or(0),
                    silver_quarantined: silver_q,
                    duplicates_removed: bronze.saturating_sub(silver + silver_q),
                    silver,
                    gold_events: gold_by_source.get(source).copied().unwrap_or(0),
                    central: central_counts.get(&(region.clone(), source.clone())).copied().unwrap_or(0),
                    expected_silver: t.map(|t| t.unique_valid),
                    expected_central: t.map(|t| t.egress_unique),
                };
                if let Some(t) = t {
                    all_match &= row.generated == Some(row.bronze + row.bronze_quarantined)
                        && row.bronze_quarantined == t.malformed
                        && row.silver == t.unique_valid
                        && row.gold_events == t.unique_valid
                        && row.central == t.egress_unique;
                }
                report.rows.push(row);
            }
        }
        report.all_match = truth.map(|_| all_match);
        Ok(report)
    }

    pub fn print(&self) {
        println!(
            "\nreconciliation (generated = bronze + bronze quarantine; bronze = silver + silver quarantine + duplicates):"
        );
        println!(
            "  {:<12} {:<16} {:>9} {:>9} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "region",
            "source",
            "generated",
            "bronze",
            "b.quar",
            "s.quar",
            "dups",
            "silver",
            "(truth)",
            "gold",
            "central",
            "(truth)"
        );
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        for r in &self.rows {
            println!(
                "  {:<12} {:<16} {:>9} {:>9} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
                r.region,
                r.source,
                opt(r.generated),
                r.bronze,
                r.bronze_quarantined,
                r.silver_quarantined,
                r.duplicates_removed,
                r.silver,
                opt(r.expected_silver),
                r.gold_events,
                r.central,
                opt(r.expected_central)
            );
        }
        println!("  billing DBU per region (gold = central):");
        for (region, (g, c)) in &self.billing_dbu {
            println!("    {region:<12} gold {g:>22}   central {c:>22}   {}", if g == c { "ok" } else { "MISMATCH" });
        }
        match self.all_match {
            Some(true) => println!("  every layer matches the generator's ground truth exactly"),
            Some(false) => println!("  MISMATCH against the generator's ground truth"),
            None => println!("  (no ground truth file; nothing to compare against)"),
        }
    }
}

/// Fingerprints of every table of the pipeline (logical columns only).
pub async fn fingerprints(cfg: &Config) -> Result<Vec<(String, String)>> {
    let mut locations: Vec<(String, String)> = Vec::new();
    for region in &cfg.regions {
        for source in &cfg.bronze.sources {
            locations.push((format!("{region}/bronze/{source}"), bronze_ingest::table_location(cfg, region, source)));
            locations
                .push((format!("{region}/silver/{source}"), silver_transform::table_location(cfg, region, source)));
        }
        locations.push((format!("{region}/bronze/_quarantine"), bronze_ingest::quarantine_location(cfg, region)));
        locations.push((format!("{region}/silver/_quarantine"), silver_transform::quarantine_location(cfg, region)));
        for e in cfg.silver.entities.iter().filter(|e| cfg.bronze.sources.contains(&e.source)) {
            use silver_transform::entities::{current_location, history_location};
            locations.push((format!("{region}/silver/{}", e.name), current_location(cfg, region, &e.name)));
            locations.push((format!("{region}/silver/{}_history", e.name), history_location(cfg, region, &e.name)));
        }
        for k in GoldKind::ALL {
            locations
                .push((format!("{region}/gold/{}", k.table_name()), gold_aggregate::table_location(cfg, region, k)));
        }
    }
    locations.push(("central/events".into(), central_federator::events_location(cfg)));
    for k in GoldKind::ALL {
        locations.push((format!("central/{}", k.table_name()), central_federator::gold_location(cfg, k)));
    }
    let mut out = Vec::new();
    for (name, loc) in locations {
        let table = Table::open_existing(&name, &loc).await?;
        let fp = match &table {
            Some(t) => tributary_delta::fingerprint::table_fingerprint(t).await?.to_string(),
            None => "absent".into(),
        };
        // Gold tables also by net content (sums per business key): equal across pipelines
        // that saw the same events in different batches (see `net_fingerprint`).
        if name.contains("/gold/") || (name.starts_with("central/") && name != "central/events") {
            let net = match &table {
                Some(t) => tributary_delta::fingerprint::net_fingerprint(t).await?.to_string(),
                None => "absent".into(),
            };
            out.push((format!("{name}@net"), net));
        }
        out.push((name, fp));
    }
    Ok(out)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `tributary bench-dedup`: see the CLI help.
pub async fn bench_dedup(
    dir: &str,
    cfg: &tributary_core::config::DedupConfig,
    keys: u64,
    batch: u64,
    replay: u64,
) -> Result<()> {
    use silver_transform::dedup::{DAY_US, DedupIndex};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| tributary_core::Error::user(format!("{dir}: {e}")))?;
    let loc = std::path::Path::new(dir).join("index").to_string_lossy().to_string();
    let writer = tributary_delta::Writer::new("bench", "bench", &tributary_core::Config::default());
    let mut idx = DedupIndex::open(cfg, "bench/_dedup", &loc, "bench/dedup", writer).await?;
    let start_us = 1_761_955_200_000_000i64;
    let span = 30 * DAY_US;
    let id = |i: u64| format!("bench-{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    println!(
        "dedup bench: {keys} distinct keys over 30 days of event time, batches of {batch}, bloom {} MiB, bucket cache {} MiB, {} buckets",
        cfg.bloom_mb, cfg.cache_mb, cfg.buckets
    );
    let t0 = std::time::Instant::now();
    let mut version = 0i64;
    let mut at = 0u64;
    let mut next_report = keys / 10;
    let mut found = 0u64;
    while at < keys {
        let n = batch.min(keys - at);
        let ks: Vec<(String, i64)> =
            (at..at + n).map(|i| (id(i), start_us + (i as i128 * span as i128 / keys as i128) as i64)).collect();
        let refs: Vec<&str> = ks.iter().map(|k| k.0.as_str()).collect();
        found += idx.contains(&refs).await?.into_iter().filter(|x| *x).count() as u64;
        idx.append(&ks, version).await?;
        version += 1;
        at += n;
        if at >= next_report || at == keys {
            println!(
                "  {at:>10} keys  {:>9.0} keys/s  peak RSS {:>7.1} MiB  bloom fpr {:.2e}  false positives {}  files {}",
                at as f64 / t0.elapsed().as_secs_f64(),
                peak_rss_mib(),
                idx.bloom_fpr(),
                idx.stats.false_positives,
                idx.table.files()?.len()
            );
            next_report += keys / 10;
        }
    }
    if found > 0 {
        return Err(tributary_core::Error::internal(format!("{found} new keys were reported as known")));
    }
    let insert_s = t0.elapsed().as_secs_f64();
    // Replay: keys spread over the whole horizon, all known.
    let t1 = std::time::Instant::now();
    let loads0 = idx.stats.bucket_loads;
    let mut known = 0u64;
    let step = (keys / replay.max(1)).max(1);
    let sample: Vec<String> = (0..keys).step_by(step as usize).take(replay as usize).map(id).collect();
    for chunk in sample.chunks(batch as usize) {
        let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
        known += idx.contains(&refs).await?.into_iter().filter(|x| *x).count() as u64;
    }
    if known != sample.len() as u64 {
        return Err(tributary_core::Error::internal(format!("replay found {known} of {} keys", sample.len())));
    }
    let bytes: u64 = idx.table.files()?.iter().map(|f| f.size.max(0) as u64).sum();
    println!(
        "inserted {keys} keys in {insert_s:.1} s ({:.0} keys/s); replayed {} known keys in {:.1} s ({:.0} lookups/s, {} bucket loads), all found",
        keys as f64 / insert_s,
        sample.len(),
        t1.elapsed().as_secs_f64(),
        sample.len() as f64 / t1.elapsed().as_secs_f64(),
        idx.stats.bucket_loads - loads0
    );
    println!(
        "index: {} files, {:.1} MiB on disk; bloom {} MiB (fpr {:.2e}), bucket cache {:.1} MiB; false positives {} of {} lookups",
        idx.table.files()?.len(),
        bytes as f64 / 1048576.0,
        idx.bloom_bytes() / 1048576,
        idx.bloom_fpr(),
        idx.cache_bytes() as f64 / 1048576.0,
        idx.stats.false_positives,
        idx.stats.lookups
    );
    println!("peak RSS {:.1} MiB", peak_rss_mib());
    Ok(())
}

/// `tributary bench-bloom`: `keys` keys whose event times advance evenly over `horizons`
/// dedup horizons (30 days), inserted into the sliced filter silver uses and into one plain
/// filter of the same memory; at the end 1M keys never inserted are looked up in both, and
/// every key still within the horizon is checked to be found (no false negatives).
pub fn bench_bloom(keys: u64, mb: u64, horizons: u64, slices: u32) {
    use silver_transform::dedup::{Bloom, DAY_US, SlicedBloom};
    let horizon = 30 * DAY_US;
    let bytes = (mb * 1024 * 1024) as usize;
    let mut sliced = SlicedBloom::new(bytes, horizon, slices);
    let mut plain = Bloom::new(sliced.capacity_bytes());
    let span = horizon * horizons.max(1) as i64;
    let time_of = |i: u64| (i as i128 * span as i128 / keys.max(1) as i128) as i64;
    let t = std::time::Instant::now();
    let mut key = String::with_capacity(32);
    for i in 0..keys {
        use std::fmt::Write as _;
        key.clear();
        let _ = write!(key, "evt-{i:016x}");
        let et = time_of(i);
        sliced.insert(&key, et);
        plain.insert(&key);
    }
    let max = time_of(keys.saturating_sub(1));
    let insert_s = t.elapsed().as_secs_f64();
    let probes = 1_000_000u64;
    let (mut fp_sliced, mut fp_plain) = (0u64, 0u64);
    let t = std::time::Instant::now();
    for i in 0..probes {
        let k = format!("new-{i:016x}");
        fp_sliced += sliced.may_contain(&k) as u64;
        fp_plain += plain.may_contain(&k) as u64;
    }
    let probe_s = t.elapsed().as_secs_f64();
    // No false negatives within the horizon (a sample of them).
    let within: Vec<u64> = (0..keys).rev().take_while(|i| time_of(*i) >= max - horizon).step_by(97).collect();
    let missed = within.iter().filter(|i| !sliced.may_contain(&format!("evt-{:016x}", **i))).count();
    assert_eq!(missed, 0, "a key within the horizon was missing from the sliced filter");
    let in_horizon = keys as f64 / horizons.max(1) as f64;
    println!(
        "bloom: {keys} keys over {horizons} horizons (~{in_horizon:.0} within the horizon at the end), {} MiB",
        sliced.capacity_bytes() / (1024 * 1024)
    );
    println!(
        "  sliced by event time ({slices}+1 slices, {} live): false-positive rate {:.4} (expected {:.4})",
        sliced.live_slices(),
        fp_sliced as f64 / probes as f64,
        sliced.fpr()
    );
    println!(
        "  one filter that never forgets:            false-positive rate {:.4} (expected {:.4})",
        fp_plain as f64 / probes as f64,
        plain.fpr()
    );
    println!(
        "  {} of the keys within the horizon checked: none missing; insert {:.0} ns/key (both filters), probe {:.0} ns (both)",
        within.len(),
        insert_s * 1e9 / keys.max(1) as f64,
        probe_s * 1e9 / probes as f64
    );
}

/// `tributary bench-discovery`: the cost of one landing poll when `files` files are already
/// ingested (laid out as `<source>/<day>/<hour>/part-N.ndjson`, 1,000 per hour folder), with the
/// incremental discovery (frontier + recent, pruned walk) against the old way (list everything,
/// filter through a set of every ingested name). Prints poll time and the memory each keeps.
pub async fn bench_discovery(dir: &str, files: u64) -> Result<()> {
    use bronze_ingest::files::{Discovery, landing_store, list_above};
    let root = std::path::Path::new(dir).join("landing");
    let marker = root.join(format!(".complete-{files}"));
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&root);
        let t = std::time::Instant::now();
        for i in 0..files {
            let folder =
                root.join("audit").join(format!("day-{:05}", i / 24_000)).join(format!("h{:02}", (i / 1000) % 24));
            if i % 1000 == 0 {
                std::fs::create_dir_all(&folder).map_err(|e| tributary_core::Error::user(format!("{dir}: {e}")))?;
            }
            std::fs::File::create(folder.join(format!("part-{i:09}.ndjson")))
                .map_err(|e| tributary_core::Error::user(format!("{dir}: {e}")))?;
        }
        std::fs::write(&marker, b"").map_err(|e| tributary_core::Error::user(format!("{dir}: {e}")))?;
        println!("created {files} empty landing files in {:.1}s", t.elapsed().as_secs_f64());
    }
    let store = landing_store(root.to_str().unwrap_or_default())?;
    // The frontier after ingesting all of them, and one new file landing in the newest folder.
    let last = files - 1;
    let frontier = format!("audit/day-{:05}/h{:02}/part-{last:09}.ndjson", last / 24_000, (last / 1000) % 24);
    let newest = root.join(format!("audit/day-{:05}/h{:02}/part-{files:09}.ndjson", last / 24_000, (last / 1000) % 24));
    std::fs::write(&newest, b"{}\n").map_err(|e| tributary_core::Error::user(format!("{dir}: {e}")))?;
    let d = Discovery { frontier: Some(frontier), ..Default::default() };
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let new = list_above(&store, Some(&root), "audit", d.frontier.as_deref()).await?;
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(new.len(), 2, "the frontier file (watched for growth) and the one new file");
    }
    times.sort_by(f64::total_cmp);
    let state_bytes = serde_json::to_vec(&d).map(|v| v.len()).unwrap_or(0);
    println!(
        "incremental discovery, {files} files ingested: poll (list above the frontier) median {:.1} ms; state {state_bytes} bytes",
        times[2] * 1e3
    );
    // The old way: list everything, keep every ingested name in a set.
    let rss0 = tributary_core::process_usage().1;
    let t = std::time::Instant::now();
    let all = list_above(&store, Some(&root), "audit", None).await?;
    let done: std::collections::HashSet<String> = all
        .iter()
        .filter(|m| m.location.as_ref() != frontier_of(&newest, &root))
        .map(|m| m.location.to_string())
        .collect();
    let new: Vec<_> = all.iter().filter(|m| !done.contains(m.location.as_ref())).collect();
    let full = t.elapsed().as_secs_f64();
    let rss1 = tributary_core::process_usage().1;
    println!(
        "old way (full listing + set of every ingested name): poll {:.0} ms, {} new, set of {} names; peak RSS grew {:.0} MiB",
        full * 1e3,
        new.len(),
        done.len(),
        (rss1 - rss0).max(0.0)
    );
    let _ = std::fs::remove_file(&newest);
    Ok(())
}

fn frontier_of<'a>(file: &'a std::path::Path, root: &std::path::Path) -> &'a str {
    file.strip_prefix(root).ok().and_then(|p| p.to_str()).unwrap_or_default()
}

/// The text of one bench dump body (Prometheus text, valid as OpenMetrics with `# EOF`): `series`
/// gauges `bench_bridge_value{shard,series}` whose value is the round.
pub fn bench_bridge_body(series: u32, round: u64, eof: bool) -> String {
    use std::fmt::Write;
    let mut t = String::with_capacity(series as usize * 48 + 128);
    t.push_str("# HELP bench_bridge_value A benchmark gauge.\n# TYPE bench_bridge_value gauge\n");
    for k in 0..series {
        let _ = writeln!(t, "bench_bridge_value{{shard=\"{}\",series=\"s{k}\"}} {round}", k % 16);
    }
    if eof {
        t.push_str("# EOF\n");
    }
    t
}

/// One round of the kafka2prom benchmark's dumps, produced and acknowledged (acks=1).
pub async fn bench_bridge_produce(
    brokers: &str,
    topic: &str,
    instances: u32,
    series: u32,
    round: u64,
    partitions: i32,
) -> tributary_core::Result<String> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let k = tributary_core::config::KafkaConfig { brokers: brokers.to_string(), ..Default::default() };
    tributary_kafka::ensure_topics(&k, &[(topic.to_string(), partitions)]).await?;
    let producer: FutureProducer = tributary_kafka::client_config(&k)?
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("message.max.bytes", "16000000")
        .create()
        .map_err(|e| tributary_core::Error::external("creating the bench producer").with_source(e))?;
    let body = bench_bridge_body(series, round, true);
    let t0 = std::time::Instant::now();
    let mut bytes = 0usize;
    let mut pending = Vec::new();
    for i in 0..instances {
        let inst = format!("bench-{i}");
        let msg = tributary_core::metrics_dump::render(&inst, tributary_core::now_ms(), &body);
        bytes += msg.len();
        let p = producer.clone();
        let topic = topic.to_string();
        pending.push(tokio::spawn(async move {
            p.send(FutureRecord::to(&topic).key(&inst).payload(&msg), std::time::Duration::from_secs(60))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }));
    }
    for f in pending {
        f.await
            .map_err(|e| tributary_core::Error::internal(format!("send task: {e}")))?
            .map_err(|e| tributary_core::Error::external("producing a bench dump").with_source(e))?;
    }
    Ok(format!(
        "round {round} sent {instances} dumps {} samples {bytes} bytes in {:.3}s",
        instances as u64 * series as u64,
        t0.elapsed().as_secs_f64()
    ))
}

/// `tributary bench-commits`: what one commit costs as a table grows. Three tables get `versions`
/// one-row commits each, one after the other: appends committed the way deltalake's post-commit
/// hook does by default (after every commit, list the whole log for expired files — reproduced by
/// calling its `cleanup_metadata` after each commit); appends through `Table::commit` (that
/// search only after a commit that wrote a checkpoint); and commits through `Table::commit` that
/// each replace the previous file (the log grows, the table stays one file). Prints commit
/// latency p50/p99 over the first and the last 10% of the versions, and CPU-seconds.
pub async fn bench_commits(dir: &str, versions: u64) -> Result<()> {
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    let _ = std::fs::remove_dir_all(dir);
    let tenth = (versions / 10).max(1) as usize;
    let phases = [
        ("appends, deltalake's default (expired-log search after every commit)", "per-commit", true, false),
        ("appends, Table::commit (that search after a checkpoint only)", "ours", false, false),
        ("each commit replaces the previous file (1 live file), Table::commit", "replace", false, true),
    ];
    for (name, sub, per_commit_cleanup, replace) in phases {
        let loc = format!("{dir}/{sub}");
        let mut t = Table::open_or_create("bench", &loc, schema.clone(), &[]).await?;
        let cpu0 = tributary_core::process_usage().0;
        let mut times = Vec::with_capacity(versions as usize);
        let mut previous: Option<String> = None;
        for i in 0..versions {
            let b = deltalake::arrow::array::RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(vec![i as i64]))],
            )
            .map_err(|e| tributary_core::Error::internal("bench batch").with_source(e))?;
            let adds = t.write_files(&[b]).await?;
            let path = adds.first().map(|a| a.path.clone());
            let mut actions: Vec<tributary_delta::Action> = match previous.take() {
                Some(p) if replace => t.remove_actions(&std::collections::HashSet::from([p]))?,
                _ => Vec::new(),
            };
            actions.extend(adds.into_iter().map(tributary_delta::Action::Add));
            let started = std::time::Instant::now();
            t.commit(actions, vec![], Default::default(), 3).await?;
            if per_commit_cleanup {
                deltalake::checkpoints::cleanup_metadata(&t.table, None)
                    .await
                    .map_err(|e| tributary_core::Error::external("cleanup_metadata").with_source(e))?;
            }
            times.push(started.elapsed().as_secs_f64());
            previous = path;
        }
        let cpu = tributary_core::process_usage().0 - cpu0;
        let ms = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (crate::bench_central::pct(&v, 0.5) * 1e3, crate::bench_central::pct(&v, 0.99) * 1e3)
        };
        let (first, last) = (ms(times[..tenth].to_vec()), ms(times[times.len() - tenth..].to_vec()));
        println!(
            "{name}: {versions} commits, {cpu:.1} CPU-s; commit latency first {tenth}: p50 {:.2} ms p99 {:.2} ms; last {tenth}: p50 {:.2} ms p99 {:.2} ms",
            first.0, first.1, last.0, last.1
        );
    }
    Ok(())
}

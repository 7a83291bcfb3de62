//! `tributary standalone`: every stage of every region in one process, the same stage code as
//! the separate services, talking only through the Delta tables.

use crate::cli::GenArgs;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tributary_core::stage::{Stage, spawn_stages, start_servers};
use tributary_core::{Config, Shutdown};

pub fn truth_path(cfg: &Config) -> std::path::PathBuf {
    std::path::Path::new(&cfg.data_root).join("truth").join("truth.json")
}

pub fn generate(cfg: &Config, args: &GenArgs) -> Result<(), String> {
    if cfg.data_root.contains("://") {
        return Err("generate writes local files: data_root must be a local path".into());
    }
    let gc = args.to_config(cfg);
    let started = Instant::now();
    let landing = |r: &str| std::path::PathBuf::from(cfg.landing(r));
    if let Some(secs) = args.live_secs {
        let out = tributary_events::generator::generate_live(
            &gc,
            &landing,
            args.rate.unwrap_or(0.0),
            Duration::from_secs(secs),
            Duration::from_millis(args.live_interval_ms),
        )
        .map_err(|e| e.to_string())?;
        println!(
            "live: {}; {} ticks started late",
            written(out.lines_written, out.files_written, out.bytes_written, started),
            out.late_ticks
        );
        return Ok(());
    }
    let out =
        tributary_events::generator::generate(&gc, &landing, Some(&truth_path(cfg))).map_err(|e| e.to_string())?;
    println!(
        "generated for {} regions x {} sources: {}; truth: {}",
        gc.regions.len(),
        gc.sources.len(),
        written(out.lines_written, out.files_written, out.bytes_written, started),
        truth_path(cfg).display()
    );
    Ok(())
}

/// "N lines (F files, X MB) in S s (R events/s)" since `started`.
fn written(lines: u64, files: u64, bytes: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    format!(
        "{lines} lines ({files} files, {:.1} MB) in {secs:.2}s ({:.0} events/s)",
        bytes as f64 / 1e6,
        lines as f64 / secs.max(1e-9)
    )
}

/// Produces the generated landing files of every region to the source topics.
pub async fn produce(cfg: &Config, partitions: i32) -> Result<(), String> {
    let k = &cfg.kafka;
    let mut topics: Vec<(String, i32)> = vec![(k.commits_topic.clone(), 1)];
    for region in &cfg.regions {
        for s in &cfg.bronze.sources {
            topics.push((k.topic_for(s).replace("{region}", region), partitions));
        }
    }
    tributary_kafka::ensure_topics(k, &topics).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut total = 0;
    for region in &cfg.regions {
        for s in &cfg.bronze.sources {
            let dir = std::path::PathBuf::from(cfg.landing(region)).join(s);
            let topic = k.topic_for(s).replace("{region}", region);
            total += tributary_kafka::produce_files(k, &dir, s, &topic).await.map_err(|e| e.to_string())?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("produced {total} messages to Kafka in {secs:.2}s ({:.0} msg/s)", total as f64 / secs.max(1e-9));
    Ok(())
}

async fn build_stages(cfg: &Arc<Config>, which: &[String]) -> tributary_core::Result<Vec<Box<dyn Stage>>> {
    for w in which {
        if !["bronze", "silver", "gold", "federator"].contains(&w.as_str()) {
            return Err(tributary_core::Error::user(format!(
                "unknown stage {w:?}; stages: bronze, silver, gold, federator"
            )));
        }
    }
    let on = |s: &str| which.iter().any(|w| w == s);
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    for region in &cfg.regions {
        if on("bronze") {
            stages.push(Box::new(bronze_ingest::BronzeIngest::build(cfg.clone(), region).await?));
        }
        if on("silver") {
            stages.push(Box::new(silver_transform::SilverTransform::build(cfg.clone(), region).await?));
        }
        if on("gold") {
            stages.push(Box::new(gold_aggregate::GoldAggregate::build(cfg.clone(), region).await?));
        }
        if on("federator") {
            // One federator per region, as in production: they commit to the central tables at once.
            stages.push(Box::new(
                central_federator::CentralFederator::build(cfg.clone(), std::slice::from_ref(region)).await?,
            ));
        }
    }
    Ok(stages)
}

/// `standalone --every`: the scheduled standby. One available-now pass per tick (fixed rate from
/// the start; a pass longer than the interval skips the ticks it missed, never overlaps), until
/// SIGTERM/SIGINT (a signal stops the running pass cleanly: every stage is exactly once across a
/// stop) or `max_passes`. A failed pass is reported and recorded; the next tick retries.
pub async fn every(
    cfg: Arc<Config>,
    which: &[String],
    interval: Duration,
    max_passes: Option<u64>,
    timeout_secs: Option<u64>,
) -> ExitCode {
    let outer = Shutdown::new();
    outer.install_signal_handlers();
    let start = Instant::now();
    let (mut pass, mut failed) = (0u64, 0u64);
    loop {
        pass += 1;
        let began = Instant::now();
        let code = run(cfg.clone(), which, true, timeout_secs).await;
        let ok = code == ExitCode::SUCCESS;
        if !ok {
            failed += 1;
            tributary_core::event_log::emit(
                tributary_core::event_log::Level::Error,
                "standalone",
                "",
                "",
                "error",
                serde_json::json!({"message": format!("scheduled pass {pass} failed"), "fatal": false}),
            );
        }
        // The next tick after now, on the fixed-rate grid from the start.
        let ticks = (start.elapsed().as_secs_f64() / interval.as_secs_f64()).floor() as u32 + 1;
        let next = start + interval * ticks;
        let wait = next.saturating_duration_since(Instant::now());
        let done = outer.is_triggered() || max_passes.is_some_and(|m| pass >= m);
        println!(
            "scheduled pass {pass} {} in {:.2}s{}",
            if ok { "finished" } else { "FAILED" },
            began.elapsed().as_secs_f64(),
            if done { String::new() } else { format!("; next pass in {:.1}s", wait.as_secs_f64()) }
        );
        if done || outer.sleep(wait).await {
            break;
        }
    }
    println!("scheduled standby stopped after {pass} pass(es), {failed} failed");
    if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

pub async fn run(cfg: Arc<Config>, which: &[String], exit_when_idle: bool, timeout_secs: Option<u64>) -> ExitCode {
    let shutdown = Shutdown::new();
    shutdown.install_signal_handlers();
    let started = Instant::now();
    let stages = match build_stages(&cfg, which).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Standalone has no broker: no commit notices, a short poll instead.
    let running = spawn_stages(
        stages,
        Duration::from_millis(cfg.server.poll_interval_ms.min(200)),
        Duration::from_millis(cfg.server.min_batch_interval_ms),
        &shutdown,
    );
    tributary_delta::forget::spawn_deadline_gauge(&cfg, Duration::from_secs(5), shutdown.clone());
    let (progress, statuses, tasks) = (running.progress, running.statuses, running.tasks);
    if let Err(e) = start_servers("standalone", &cfg, statuses.clone(), &shutdown).await {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let mut timed_out = false;
    loop {
        if shutdown.sleep(Duration::from_millis(100)).await {
            break;
        }
        if exit_when_idle && progress.all_idle() {
            // Confirm: still idle a moment later.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if progress.all_idle() {
                shutdown.trigger();
                break;
            }
        }
        // A stage task that ended while the pipeline runs has panicked: stop at once, loudly.
        if tasks.iter().any(|t| t.is_finished()) {
            eprintln!("error: a stage stopped unexpectedly (panic; see the log above)");
            timed_out = true;
            shutdown.trigger();
            break;
        }
        if let Some(t) = timeout_secs
            && started.elapsed() > Duration::from_secs(t)
        {
            eprintln!("error: standalone did not become idle within {t}s");
            timed_out = true;
            shutdown.trigger();
            break;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu, rss) = tributary_core::process_usage();
    println!("\npipeline idle after {wall:.2}s; process cpu {cpu:.2}s (user+sys), peak RSS {rss:.0} MiB");
    println!("per stage (units = input rows; all regions together):");
    println!(
        "  {:<12} {:>12} {:>10} {:>14} {:>14} {:>9}",
        "stage", "rows", "busy s", "rows/busy s", "rows/wall s", "failures"
    );
    let mut agg: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    for p in progress.stages() {
        let kind = p.name.split('/').next().unwrap_or("").to_string();
        let e = agg.entry(kind).or_default();
        e.0 += p.units.load(Ordering::Relaxed);
        e.1 += p.busy_micros.load(Ordering::Relaxed);
        e.2 += p.failures.load(Ordering::Relaxed);
    }
    for k in ["bronze", "silver", "gold", "federator"] {
        if let Some((units, busy, fails)) = agg.get(k) {
            let busy_s = *busy as f64 / 1e6;
            println!(
                "  {:<12} {:>12} {:>10.2} {:>14.0} {:>14.0} {:>9}",
                k,
                units,
                busy_s,
                *units as f64 / busy_s.max(1e-9),
                *units as f64 / wall.max(1e-9),
                fails
            );
        }
    }
    for s in &statuses {
        let st = s.read().unwrap_or_else(|e| e.into_inner());
        if !st.last_error.is_empty() {
            println!("  last error in {}/{}: {}", st.stage, st.region, st.last_error);
        }
    }
    match crate::report::Report::collect(&cfg).await {
        Ok(r) => r.print(),
        Err(e) => eprintln!("error: building the reconciliation report: {e}"),
    }
    if timed_out { ExitCode::from(2) } else { ExitCode::SUCCESS }
}

/// `tributary backfill`: runs a backfill to its end with a progress bar on stderr (redrawn on a
/// terminal, a line per batch otherwise) and records it in the audit table.
pub async fn backfill(cfg: Config, mut spec: bronze_ingest::backfill::Spec, json: bool) -> ExitCode {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let args = serde_json::json!({"id": spec.id, "region": spec.region, "source": spec.source,
                                  "landing": spec.landing, "from_ms": spec.from_ms, "to_ms": spec.to_ms});
    let result = bronze_ingest::backfill::run_any(Arc::new(cfg.clone()), &mut spec, draw_progress).await;
    if tty {
        eprintln!();
    }
    let who = format!("local:{}", std::env::var("USER").unwrap_or_default());
    let (outcome, message) = match &result {
        Ok(p) => {
            ("ok", format!("{}/{} files, {} rows, {} quarantined", p.files_done, p.files_total, p.rows, p.quarantined))
        }
        Err(e) => ("error", e.to_string()),
    };
    let rec = tributary_delta::admin::AuditRecord {
        caller: &who,
        role: None,
        method: "Backfill",
        arguments: args,
        outcome,
        message: &message,
    };
    if let Err(e) =
        tributary_delta::admin::append_audit(&tributary_delta::admin::audit_location(&cfg), "cli", &[rec]).await
    {
        eprintln!("error: the audit record could not be written: {e}");
        return ExitCode::from(1);
    }
    match result {
        Ok(p) => {
            if json {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
            } else {
                println!("backfill {} ({}): {message}", p.id, p.app_id);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The backfill progress bar on stderr: redrawn in place on a terminal, a line per update
/// otherwise.
pub fn draw_progress(p: &bronze_ingest::backfill::Progress) {
    use std::io::{IsTerminal, Write};
    const W: u64 = 30;
    let filled = (p.files_done * W).checked_div(p.files_total).unwrap_or(W);
    let bar: String = (0..W).map(|i| if i < filled { '#' } else { '.' }).collect();
    let line = format!(
        "backfill {} [{bar}] {}/{} files  {:.1}/{:.1} MB  {} rows  {} quarantined",
        p.id,
        p.files_done,
        p.files_total,
        p.bytes_done as f64 / 1e6,
        p.bytes_total as f64 / 1e6,
        p.rows,
        p.quarantined
    );
    let mut e = std::io::stderr().lock();
    let _ = if e.is_terminal() { write!(e, "\r{line}") } else { writeln!(e, "{line}") };
    let _ = e.flush();
}

fn progress_to_proto(p: &bronze_ingest::backfill::Progress) -> tributary_proto::v1::BackfillProgress {
    tributary_proto::v1::BackfillProgress {
        id: p.id.clone(),
        app_id: p.app_id.clone(),
        files_total: p.files_total,
        files_done: p.files_done,
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        rows: p.rows,
        quarantined: p.quarantined,
        done: false,
    }
}

pub fn progress_from_proto(p: &tributary_proto::v1::BackfillProgress) -> bronze_ingest::backfill::Progress {
    bronze_ingest::backfill::Progress {
        id: p.id.clone(),
        app_id: p.app_id.clone(),
        files_total: p.files_total,
        files_done: p.files_done,
        bytes_total: p.bytes_total,
        bytes_done: p.bytes_done,
        rows: p.rows,
        quarantined: p.quarantined,
    }
}

/// The `Backfill` admin RPC of a process that runs bronze.
pub fn register_backfill() {
    tributary_delta::admin::register_backfill(Box::new(|cfg, b, tx| {
        Box::pin(async move {
            let id = if b.id.is_empty() { format!("{}-{}-{}", b.source, b.from_ms, b.to_ms) } else { b.id };
            let mut spec = bronze_ingest::backfill::Spec {
                id,
                region: b.region,
                source: b.source,
                landing: (!b.landing.is_empty()).then_some(b.landing),
                from_ms: b.from_ms,
                to_ms: b.to_ms,
                all_files: b.kafka,
            };
            // Progress is best effort (a slow client skips updates); the outcome always arrives.
            let p = bronze_ingest::backfill::run_any(cfg, &mut spec, |p| {
                let _ = tx.try_send(Ok(progress_to_proto(p)));
            })
            .await?;
            Ok(progress_to_proto(&p))
        })
    }));
}

//! Named fault-injection points for crash tests.
//!
//! `TRIBUTARY_FAULT=<point>[:<n>]` makes the process SIGKILL itself the n-th time (default: first)
//! execution reaches `fault::point("<point>")`. `<point>:<n>:error` instead makes the n-th pass
//! through `fault::check("<point>")` return an error (a failed batch, not a crash), at the points
//! that can fail a batch: the `*.after_upload_before_commit` points, `kafka.before_upload` and
//! `log_exporter.after_ack_before_checkpoint` (there: as if a delivery had failed).
//! `<point>:slow<ms>` stalls every pass through `fault::slow("<point>")` (a slow partition
//! for kafka2prom's isolation test: `kafka2prom.apply.p<N>`).
//! Several points may be given, comma separated. Without the variable a point costs one relaxed
//! atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Every point compiled into the services, so tests and docs can enumerate them.
pub const POINTS: &[&str] = &[
    "bronze.before_write",
    "bronze.after_upload_before_commit",
    "bronze.after_data_commit",
    "bronze.after_quarantine_commit",
    "silver.before_commit",
    "silver.after_data_commit",
    "silver.after_quarantine_commit",
    "silver.after_index_commit",
    "silver.entity_after_history_commit",
    "gold.before_commit",
    "gold.after_commit",
    "federator.before_commit",
    "federator.after_events_commit",
    "federator.after_gold_commit",
    "kafka.before_upload",
    "kafka.after_upload_before_commit",
    "kafka.after_commit_before_offset_commit",
    "log_exporter.after_ack_before_checkpoint",
    "clone.after_file_copy",
    "fork.after_freeze",
];

struct Plan {
    /// point -> (hit that fires, fail with an error instead of SIGKILL)
    targets: HashMap<String, (u64, bool)>,
    /// point -> delay on every pass (`<point>:slow<ms>`)
    slow: HashMap<String, std::time::Duration>,
    hits: Mutex<HashMap<String, u64>>,
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
static TOTAL_HITS: AtomicU64 = AtomicU64::new(0);

fn plan() -> &'static Option<Plan> {
    PLAN.get_or_init(|| {
        let spec = std::env::var("TRIBUTARY_FAULT").ok()?;
        let mut targets = HashMap::new();
        let mut slow = HashMap::new();
        for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut it = part.split(':');
            let name = it.next().unwrap_or_default();
            if let Some(ms) = part.rsplit(':').next().and_then(|m| m.strip_prefix("slow")).and_then(|m| m.parse().ok())
            {
                slow.insert(name.to_string(), std::time::Duration::from_millis(ms));
                continue;
            }
            let n = it.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1).max(1);
            let error = it.next() == Some("error");
            targets.insert(name.to_string(), (n, error));
        }
        if targets.is_empty() && slow.is_empty() {
            ENABLED.store(false, Ordering::Relaxed);
            return None;
        }
        Some(Plan { targets, slow, hits: Mutex::new(HashMap::new()) })
    })
}

/// Marks a named crash point. Kills the process with SIGKILL when the plan says so.
pub fn point(name: &str) {
    let _ = check(name);
}

/// A slow point: how long to stall at `name` when the plan says `<name>:slow<ms>` (a slow
/// consumer or disk for isolation tests), else nothing.
pub fn slow(name: &str) -> Option<std::time::Duration> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    plan().as_ref()?.slow.get(name).copied()
}

/// A crash point that can also fail: SIGKILL as `point`, or an error when the plan marks the
/// point `:error`.
pub fn check(name: &str) -> crate::Result<()> {
    if !ENABLED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let Some(plan) = plan() else {
        ENABLED.store(false, Ordering::Relaxed);
        return Ok(());
    };
    let Some(&(target, error)) = plan.targets.get(name) else {
        return Ok(());
    };
    let hit = {
        let mut hits = plan.hits.lock().unwrap_or_else(|p| p.into_inner());
        let h = hits.entry(name.to_string()).or_insert(0);
        *h += 1;
        *h
    };
    TOTAL_HITS.fetch_add(1, Ordering::Relaxed);
    if hit == target && error {
        eprintln!("tributary: fault injection: error at {name} (hit {hit})");
        return Err(crate::Error::external(format!("injected failure at {name}")));
    }
    if hit == target {
        eprintln!("tributary: fault injection: SIGKILL at {name} (hit {hit})");
        // SAFETY: raising a signal on our own process has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
    Ok(())
}

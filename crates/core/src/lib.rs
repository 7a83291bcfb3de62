//! Shared pieces of every Tributary service: configuration, errors, telemetry, metrics,
//! fault injection, shutdown and the gRPC/admin server scaffolding.

pub mod authz;
pub mod config;
pub mod der;
pub mod error;
pub mod event_log;
pub mod fault;
pub mod field_type;
pub mod metrics;
pub mod metrics_dump;
pub mod notices;
pub mod server;
pub mod shutdown;
pub mod stage;
pub mod status;
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use error::{Error, ErrorKind, Result};
pub use shutdown::Shutdown;
/// grpc.health.v1 messages and client (the CLI's `health` command, the chart's `helm test`).
pub use tonic_health::pb as health_pb;

/// Build version reported by status RPCs.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Installs rustls' process-wide crypto provider (ring). Several providers are compiled into the
/// binary through dependencies, so rustls cannot pick one by itself; call once at start-up,
/// before any TLS server or client is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// CPU seconds (user + system, all threads) this process has used so far, and its peak resident
/// set size in MiB: the cost figures the benchmark harness reads.
pub fn process_usage() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as f64 / 1024.0)
}

/// `f` over `items` on up to `threads` threads, each taking one contiguous chunk of at least
/// `min_per_thread` items; the results come back in input order. Small inputs stay on the
/// calling thread.
///
/// The threads are the process's one pool of long-lived decode workers (`rayon`, as many as
/// there are cores), not threads spawned per call: memory a worker allocated for one batch is
/// reused by the same worker for the next. With a thread per call every batch's decoded
/// events came from a fresh allocator heap, so a stage's peak RSS held several batches' worth
/// of freed-but-unreusable pages (README, Speed).
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    min_per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    let threads = threads.clamp(1, items.len().div_ceil(min_per_thread.max(1)).max(1));
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let Some(pool) = decode_pool() else {
        // No pool (its threads could not be started): the work is done, on this thread.
        return items.iter().map(&f).collect();
    };
    let chunk = items.len().div_ceil(threads);
    let parts: Vec<Vec<R>> =
        pool.install(|| items.par_chunks(chunk).map(|c| c.iter().map(&f).collect::<Vec<R>>()).collect());
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part);
    }
    out
}

/// The pool behind `parallel_map`: one thread per core, started on first use (`None`, logged
/// once, if the OS refuses the threads). A panic in a task is re-raised in the caller (rayon's
/// behaviour), as with scoped threads before.
fn decode_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("tributary-cpu-{i}"))
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "cannot start the CPU worker pool: decoding on one thread"))
            .ok()
    })
    .as_ref()
}

/// Runs CPU-bound `f` from async code: on a multi-threaded tokio runtime the worker hands its
/// other tasks off first (`block_in_place`); elsewhere (a current-thread runtime, no runtime) it
/// simply runs.
pub fn cpu_section<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod parallel_tests {
    #[test]
    fn parallel_map_keeps_order_whatever_the_threads() {
        let items: Vec<u64> = (0..10_000).collect();
        let want: Vec<u64> = items.iter().map(|x| x * 3).collect();
        for threads in [1, 2, 3, 7, 64] {
            assert_eq!(super::parallel_map(&items, threads, 100, |x| x * 3), want, "threads {threads}");
        }
        assert!(super::parallel_map(&Vec::<u64>::new(), 4, 1, |x| *x).is_empty());
    }
}

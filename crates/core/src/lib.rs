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

/// `f` over `items` on up to `threads` scoped threads, each taking one contiguous chunk of at
/// least `min_per_thread` items; the results come back in input order. Small inputs stay on the
/// calling thread.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    min_per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().div_ceil(min_per_thread.max(1)).max(1));
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|c| scope.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                // A panic in `f` is a bug; surface it where it happened.
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
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

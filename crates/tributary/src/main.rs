//! `tributary`: every service as a subcommand, the embedded standalone pipeline, the traffic
//! generator and the status client.

mod bench_central;
mod cli;
mod dr_status;
mod events;
mod report;
mod standalone;

/// The process allocator is glibc's malloc with **one arena per core** instead of its default of
/// eight per core. Measured in release on the 2-core machine (README, "The allocator"): glibc's
/// default and mimalloc (used until 2026-12-03, freed memory kept 10 s) both held two to four
/// times the live heap — a bronze batch peaked at ~230 MiB of live allocations and 610–690 MiB
/// of RSS, every stage in one process at 1.8–2.0 GiB during a live soak: freed batch memory
/// held beside the live heap instead of being reused. With as many arenas as cores: bronze
/// 310–370 MiB, the soak 405–473 MiB; bronze's CPU the same or lower, silver's and the
/// federator's 10–35% higher in the measured pairs (glibc gives large freed buffers back to the
/// OS, so they are faulted in again). `MALLOC_ARENA_MAX` (or
/// `GLIBC_TUNABLES=glibc.malloc.arena_max=N`) still overrides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if tuned {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = std::ffi::c_int::try_from(cores).unwrap_or(std::ffi::c_int::MAX);
    // SAFETY: sets one glibc malloc parameter before this process starts any thread; mallopt
    // is safe to call at any time and only affects arenas created afterwards.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}

/// Other C libraries keep their own allocator policy.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    tributary_core::install_crypto_provider();
    cli::main()
}

//! `tributary`: every service as a subcommand, the embedded standalone pipeline, the traffic
//! generator and the status client.

mod bench_central;
mod cli;
mod dr_status;
mod events;
mod report;
mod standalone;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    /// mimalloc's runtime option setter (the C library linked by the `mimalloc` crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}
/// `mi_option_purge_delay` in mimalloc.h.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
/// How long freed memory stays with the process before it is returned to the OS (ms), unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. mimalloc's own default (1 s) is shorter than the gap
/// between two batches of a stage, so every batch faulted its memory in again: with all stages in
/// one process that was ~100K page faults per 100K events and ~30% of the CPU zeroing pages
/// (measured in release; README, Speed). 10 s keeps a busy service's working set; an idle one
/// still gives it back.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn main() -> std::process::ExitCode {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the process allocator; mimalloc allows that at
        // any time (it is read when freed memory is purged).
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    tributary_core::install_crypto_provider();
    cli::main()
}

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

fn main() -> std::process::ExitCode {
    tributary_core::install_crypto_provider();
    cli::main()
}

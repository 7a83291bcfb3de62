//! `tributary`: every service as a subcommand, the embedded standalone pipeline, the traffic
//! generator and the status client.

mod cli;
mod report;
mod standalone;

fn main() -> std::process::ExitCode {
    cli::main()
}

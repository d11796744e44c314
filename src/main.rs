//! The `otpgate` binary: parse the command line, start tracing, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = otpgate::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OTPGATE_LOG").unwrap_or_else(|_| "otpgate=info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otpgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(otpgate::cli::run(cli))
}

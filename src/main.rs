//! The `otpgate` binary: parse the command line, start tracing, run.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: the profile of the SMPP
/// benchmark spent about a quarter of the server's CPU in glibc's malloc and
/// free (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = otpgate::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(log_filter(matches!(cli.command, otpgate::cli::Command::Serve(_))))
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

/// `OTPGATE_LOG` (default `otpgate=info` for `serve`, `warn` for the other commands), with the protocol libraries held
/// at `warn` whatever it says: at debug they log whole PDUs and SMTP lines,
/// which carry OTP codes and AUTH credentials.
fn log_filter(serving: bool) -> tracing_subscriber::EnvFilter {
    let default = if serving { "otpgate=info" } else { "otpgate=warn" };
    let wanted = std::env::var("OTPGATE_LOG").unwrap_or_else(|_| default.into());
    let filter = format!("{wanted},rusmpp=warn,rusmppc=warn,rusmpp_core=warn,mailin=warn");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("otpgate=info"))
}

//! otpgate's benchmark harness (issue 7): one command runs each workload
//! against otpgate and against a minimal baseline on the same machine in the
//! same run, and prints throughput, p50/p99 latency, peak memory and the
//! ratio otpgate / baseline, then which targets were met.
//!
//! ```sh
//! cargo run --release --example bench              # everything but the soak, about 5 minutes
//! cargo run --release --example bench -- --quick   # a few minutes
//! cargo run --release --example bench -- --soak    # adds the 10-minute memory soak
//! ```
//!
//! otpgate runs as a child process (the release binary, real clock, a fresh
//! data directory per workload); each baseline runs as a child process too
//! (this program with the hidden `baseline` subcommand), so both sides get
//! their peak memory from `/proc/PID/status` the same way. The load clients
//! run in this process. See BENCHMARKS.md for the method and the results.

mod baseline;
mod child;
mod durability;
mod http;
mod otp_flow;
mod overload;
mod report;
mod smpp;
mod smtp;
mod stats;
mod workloads;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks otpgate against minimal baselines (BENCHMARKS.md)")]
struct Args {
    /// Short runs (a few minutes in all) for a quick look.
    #[arg(long)]
    quick: bool,
    /// Also run the 10-minute memory soak at half the sustained maximum
    /// issue rate.
    #[arg(long)]
    soak: bool,
    /// Soak length in seconds (default 600).
    #[arg(long, default_value_t = 600)]
    soak_seconds: u64,
    /// Soak at this many OTPs a second instead of half the measured
    /// maximum (skips the HTTP workload when it is not asked for).
    #[arg(long)]
    soak_rate: Option<f64>,
    /// A top-level config line for the soak's server, e.g.
    /// `log_retention = 5000`, to reach a cap sooner.
    #[arg(long)]
    soak_setting: Option<String>,
    /// Only these workloads: smpp, smtp, http, durability, overload (or
    /// one protocol's part of it: overload-smpp, overload-smtp, overload-http).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The otpgate binary; by default the harness builds and uses
    /// target/release/otpgate.
    #[arg(long)]
    otpgate: Option<PathBuf>,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Subcommand)]
enum Child {
    /// Serve a baseline (smpp, smtp, http) until killed.
    #[command(hide = true)]
    Baseline { kind: String },
    /// Run a durability workload (log, raw) and print its result.
    #[command(hide = true)]
    Durability {
        kind: String,
        dir: PathBuf,
        seconds: f64,
        tasks: usize,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match args.child {
        Some(Child::Baseline { kind }) => {
            runtime.block_on(baseline::serve(&kind));
            std::process::ExitCode::SUCCESS
        }
        Some(Child::Durability {
            kind,
            dir,
            seconds,
            tasks,
        }) => {
            runtime.block_on(durability::child(&kind, &dir, seconds, tasks));
            std::process::ExitCode::SUCCESS
        }
        None => {
            let settings = workloads::Settings {
                quick: args.quick,
                soak: args.soak.then(|| workloads::Soak {
                    length: std::time::Duration::from_secs(args.soak_seconds),
                    rate: args.soak_rate,
                    setting: args.soak_setting.unwrap_or_default(),
                }),
                only: args.only,
                otpgate: args.otpgate,
            };
            runtime.block_on(workloads::run_all(settings))
        }
    }
}

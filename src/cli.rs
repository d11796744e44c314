//! The command line: `serve` (and the commands built on it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "otpgate",
    version,
    about = "OTP service with a simulated Japanese SMS and email network and a troubleshooting desk"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Start the HTTP API, the SMSC and the SMTP server.
    Serve(ServeArgs),
}

#[derive(Args, Clone, Default)]
pub struct ServeArgs {
    /// HTTP address (port 0 picks a free port).
    #[arg(long)]
    pub http: Option<String>,
    /// SMPP address, or `off`.
    #[arg(long)]
    pub smpp: Option<String>,
    /// SMTP address, or `off`.
    #[arg(long)]
    pub smtp: Option<String>,
    /// Data directory (default ./otpgate-data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Time stands still until advanced over HTTP.
    #[arg(long)]
    pub virtual_clock: bool,
    /// Where the virtual clock starts (RFC 3339).
    #[arg(long)]
    pub clock_start: Option<String>,
    /// The simulation seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A directory of carrier files instead of the built-in set.
    #[arg(long)]
    pub carriers: Option<PathBuf>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            http: self.http.clone(),
            smpp: self.smpp.clone(),
            smtp: self.smtp.clone(),
            data: self.data.clone(),
            config: self.config.clone(),
            virtual_clock: self.virtual_clock,
            clock_start: self.clock_start.clone(),
            seed: self.seed,
            carriers: self.carriers.clone(),
        }
    }
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otpgate: config: {e}");
            return ExitCode::from(2);
        }
    };
    let running = match crate::app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otpgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", running.listening_line());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

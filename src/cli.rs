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
    /// Run scenario files (against an in-process server unless --server is given).
    Run(RunArgs),
    /// "I haven't received my code": the troubleshooting report for a member, phone or email.
    Diagnose(DiagnoseArgs),
    /// Start a server on the embedded defaults and play a short story across carriers.
    Demo(DemoArgs),
    /// Follow the delivery log live: one line per event as it happens.
    Watch(WatchArgs),
}

#[derive(Args, Clone)]
pub struct WatchArgs {
    /// The running server (default http://127.0.0.1:8080).
    #[arg(long)]
    pub server: Option<String>,
    /// Only messages sent by this: an ESME's system_id, `smtp`, `handset`, or `otpgate` for the OTP core.
    #[arg(long)]
    pub origin: Option<String>,
    /// Only `sms` or `email`.
    #[arg(long)]
    pub channel: Option<String>,
    /// Only messages to this number (any spelling) or address.
    #[arg(long)]
    pub to: Option<String>,
    /// Only this member's messages.
    #[arg(long)]
    pub member: Option<String>,
    /// One JSON object per line (the message as it is now and the event).
    #[arg(long)]
    pub json: bool,
    /// The admin token, when the server listens beyond loopback.
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Args, Clone, Default)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Keep serving after the story, until Ctrl-C, to look around in the console.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Clone)]
pub struct DiagnoseArgs {
    /// A member ID.
    #[arg(long, conflicts_with_all = ["phone", "email", "message_id"])]
    pub member: Option<String>,
    /// A phone number in any spelling.
    #[arg(long, conflicts_with_all = ["email", "message_id"])]
    pub phone: Option<String>,
    /// An email address.
    #[arg(long, conflicts_with = "message_id")]
    pub email: Option<String>,
    /// A message id: the SMSC's (a submit_sm_resp's or a receipt's), the
    /// SMTP server's (after "queued as") or the delivery log's. The report
    /// is for the member or destination that message went to.
    #[arg(long)]
    pub message_id: Option<String>,
    /// ja or en (default: the member's language).
    #[arg(long)]
    pub lang: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Ask a running server (default http://127.0.0.1:8080 unless --data is given).
    #[arg(long, conflicts_with = "data")]
    pub server: Option<String>,
    /// Read a data directory directly (the server must not be running on it).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The admin token, when the server listens beyond loopback.
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Scenario files (TOML; see fixtures/scenarios/README.md).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// A running otpgate (started with --virtual-clock), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub server: Option<String>,
    /// The admin token, when that server listens beyond loopback.
    #[arg(long)]
    pub token: Option<String>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
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
        Command::Run(args) => run_scenarios(args).await,
        Command::Diagnose(args) => diagnose(args).await,
        Command::Demo(args) => demo(args).await,
        Command::Watch(args) => watch(args).await,
    }
}

/// Prints each event of `/v1/events` until the server ends the stream
/// (it stopped: exit 0) or refuses it (exit 1).
async fn watch(args: WatchArgs) -> ExitCode {
    let base = args.server.clone().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let api = match crate::http::client::ApiClient::new(&base, args.token.clone()) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("otpgate: --server: {e}");
            return ExitCode::from(2);
        }
    };
    let query = crate::watch::query(&[
        ("origin", args.origin.as_deref()),
        ("channel", args.channel.as_deref()),
        ("to", args.to.as_deref()),
        ("member_id", args.member.as_deref()),
    ]);
    let streamed = api
        .events(&format!("/v1/events{query}"), |event, data| {
            use std::io::Write;
            let line = match (event, serde_json::from_str::<serde_json::Value>(data)) {
                (_, Ok(_)) if args.json => data.to_string(),
                ("delivery", Ok(v)) => crate::watch::line(&v),
                ("lagged", Ok(v)) => format!("(missed {} events: read /v1/messages for them)", v["missed"]),
                _ => return,
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        })
        .await;
    match streamed {
        Ok(()) => {
            eprintln!("otpgate: the server ended the stream");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otpgate: {e}");
            ExitCode::FAILURE
        }
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

async fn run_scenarios(args: RunArgs) -> ExitCode {
    let mut results = Vec::new();
    let mut refused = false;
    for file in &args.files {
        let scenario = match crate::scenario::load(file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("otpgate: {e}");
                refused = true;
                continue;
            }
        };
        let name = file.display().to_string();
        let result = match &args.server {
            Some(url) => match crate::http::client::ApiClient::new(url, args.token.clone()) {
                Ok(api) => crate::scenario::runner::run(&api, &name, &scenario).await,
                Err(e) => {
                    eprintln!("otpgate: --server: {e}");
                    return ExitCode::from(2);
                }
            },
            None => match run_in_process(&name, &scenario).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("otpgate: {name}: {e}");
                    refused = true;
                    continue;
                }
            },
        };
        print!("{}", crate::scenario::runner::render(&result));
        results.push(result);
    }
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, crate::scenario::junit::render(&results)) {
            eprintln!("otpgate: --junit {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!(
        "{} passed, {} failed",
        results.len() - failed,
        failed + usize::from(refused)
    );
    if failed > 0 || refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts a private server (fresh data directory, virtual clock, the
/// scenario's seed, free ports), plays the scenario, and stops it.
pub async fn run_in_process(
    name: &str,
    scenario: &crate::scenario::Scenario,
) -> Result<crate::scenario::runner::ScenarioResult, String> {
    let dir = std::env::temp_dir().join(format!(
        "otpgate-scenario-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut config = Config::load(Overrides {
        http: Some("127.0.0.1:0".into()),
        smpp: Some("127.0.0.1:0".into()),
        smtp: Some("127.0.0.1:0".into()),
        data: Some(dir.clone()),
        virtual_clock: true,
        seed: Some(scenario.seed),
        ..Overrides::default()
    })
    .map_err(|e| e.to_string())?;
    config.load_demo = false;
    let running = crate::app::start(config).await.map_err(|e| e.to_string())?;
    let api = crate::http::client::ApiClient::new(&running.base_url(), None)?;
    let result = crate::scenario::runner::run(&api, name, scenario).await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

async fn diagnose(args: DiagnoseArgs) -> ExitCode {
    let who = [&args.member, &args.phone, &args.email, &args.message_id]
        .into_iter()
        .find_map(|w| w.clone());
    let Some(who) = who else {
        eprintln!("otpgate: diagnose needs --member, --phone, --email or --message-id");
        return ExitCode::from(2);
    };
    if let Some(l) = &args.lang {
        if l != "ja" && l != "en" {
            eprintln!("otpgate: --lang must be ja or en");
            return ExitCode::from(2);
        }
    }
    let answer = match &args.data {
        Some(dir) => diagnose_data_dir(dir, &args, &who),
        None => diagnose_server(&args, &who).await,
    };
    match answer {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otpgate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn diagnose_data_dir(dir: &std::path::Path, args: &DiagnoseArgs, who: &str) -> Result<String, String> {
    let config = Config::load(Overrides {
        data: Some(dir.to_path_buf()),
        ..Overrides::default()
    })
    .map_err(|e| e.to_string())?;
    let (desk, clock) = crate::app::open_desk(&config).map_err(|e| e.to_string())?;
    let subject = match &args.member {
        Some(id) => crate::desk::Subject::Member(desk.service.member(id).map_err(|e| e.to_string())?),
        None => desk.lookup(who).map_err(|e| e.to_string())?,
    };
    let report = desk
        .report(&subject, args.lang.as_deref(), clock.now())
        .map_err(|e| e.to_string())?;
    if args.json {
        serde_json::to_string_pretty(&report)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string())
    } else {
        Ok(crate::diagnose::render_text(&report))
    }
}

async fn diagnose_server(args: &DiagnoseArgs, who: &str) -> Result<String, String> {
    let base = args.server.clone().unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let api = crate::http::client::ApiClient::new(&base, args.token.clone())?;
    let path = match &args.member {
        Some(id) => format!("/v1/diagnostics/members/{}", crate::http::client::segment(id)),
        None => format!("/v1/diagnostics/destinations/{}", crate::http::client::segment(who)),
    };
    let mut query = vec![];
    if let Some(l) = &args.lang {
        query.push(format!("lang={l}"));
    }
    if !args.json {
        query.push("format=text".to_string());
    }
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let (status, body) = api.call("GET", &path, None).await?;
    if status != 200 {
        return Err(format!(
            "{status}: {}",
            body["error"]["message"].as_str().unwrap_or(&body.to_string())
        ));
    }
    Ok(match body {
        serde_json::Value::String(text) => text,
        other => serde_json::to_string_pretty(&other).unwrap_or_default() + "\n",
    })
}

async fn demo(args: DemoArgs) -> ExitCode {
    let mut overrides = args.serve.overrides();
    overrides.virtual_clock = true;
    let data = overrides
        .data
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("otpgate-demo-{}", std::process::id())));
    let fresh_dir = overrides.data.is_none();
    overrides.data = Some(data.clone());
    let mut config = match Config::load(overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otpgate: config: {e}");
            return ExitCode::from(2);
        }
    };
    config.load_demo = false;
    let running = match crate::app::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("otpgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", running.listening_line());
    let base = running.base_url();
    let told = match crate::http::client::ApiClient::new(&base, None) {
        Ok(api) => crate::demo::play(&api, &base).await,
        Err(e) => Err(e),
    };
    let code = match told {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("otpgate: the demo stopped: {e}");
            ExitCode::FAILURE
        }
    };
    if args.keep {
        println!("Serving until Ctrl-C.");
        wait_for_signal().await;
    }
    running.stop().await;
    if fresh_dir {
        let _ = std::fs::remove_dir_all(&data);
    }
    code
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

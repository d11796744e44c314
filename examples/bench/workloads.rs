//! The workloads of issue 7 and the run that strings them together: the
//! durability, SMPP and SMTP workloads live here, the OTP flow over HTTP in
//! [`crate::otp_flow`], overload and the memory soak in [`crate::overload`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::child::Server;
use crate::otp_flow::http_workload;
use crate::overload::{overload, soak, Protocols};
use crate::report::{load_average, Report, Row};
use crate::{smpp, smtp};

pub struct Settings {
    pub quick: bool,
    pub soak: Option<Soak>,
    pub only: Vec<String>,
    pub otpgate: Option<PathBuf>,
}
/// The memory soak: how long, at what rate (half the HTTP maximum when
/// `None`), with which extra config line.
pub struct Soak {
    pub length: Duration,
    pub rate: Option<f64>,
    pub setting: String,
}

/// What every workload needs: the binary, a scratch directory, the config.
pub(crate) struct Env {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) quick: bool,
    pub(crate) carriers: PathBuf,
}

impl Env {
    /// A measured run's length.
    pub(crate) fn secs(&self, full: u64, quick: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }

    /// A fresh data directory for one otpgate instance.
    pub(crate) fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A config file: no demo data, the fast carrier files, a 1-second
    /// cooldown (so that each benchmark member can get its next code a
    /// second later instead of a minute), and `extra` TOML.
    pub(crate) fn config(&self, name: &str, extra: &str, otp_extra: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        let text = format!(
            "demo = false\ncarriers = {:?}\n{extra}\n[otp]\ncooldown_seconds = 1\n{otp_extra}",
            self.carriers.display().to_string()
        );
        std::fs::write(&path, text).expect("write a config file");
        path
    }

    pub(crate) async fn otpgate(&self, name: &str, extra: &str) -> Server {
        let config = self.config(name, extra, "");
        Server::otpgate(&self.bin, &self.data(name), &config).await
    }

    pub(crate) async fn baseline(&self, kind: &str) -> Server {
        Server::baseline(kind, &self.dir.join(format!("baseline-{kind}.log"))).await
    }
}

/// The carrier files with a short delivery delay (0 to 100 ms, median
/// 5 ms) on every host network, so receipts come back quickly under the
/// real clock. Everything else about the carriers is unchanged.
fn fast_carriers(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("carriers");
    let target = dir.join("carriers");
    std::fs::create_dir_all(&target).expect("create the carriers directory");
    for entry in std::fs::read_dir(&source).expect("read carriers/") {
        let path = entry.expect("a carrier file").path();
        let name = path.file_name().expect("a file name").to_owned();
        let text = std::fs::read_to_string(&path).expect("read a carrier file");
        let mut in_delay = false;
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with('[') {
                in_delay = line.trim() == "[delay]";
            }
            let key = line.split('=').next().unwrap_or("").trim();
            let replaced = match (in_delay, key) {
                (true, "min_ms") => Some("min_ms = 0"),
                (true, "median_ms") => Some("median_ms = 5"),
                (true, "p99_ms") => Some("p99_ms = 50"),
                (true, "max_ms") => Some("max_ms = 100"),
                _ => None,
            };
            out.push_str(replaced.unwrap_or(line));
            out.push('\n');
        }
        std::fs::write(target.join(name), out).expect("write a carrier file");
    }
    target
}

/// Builds the release binary unless one was given.
fn otpgate_binary(given: Option<PathBuf>) -> PathBuf {
    if let Some(bin) = given {
        return bin;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    eprintln!("building the release otpgate binary (no-op when up to date)...");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "otpgate", "--manifest-path"])
        .arg(&manifest)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build --release failed");
    // This example lives in target/release/examples/; the binary one up.
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("otpgate"))
        .expect("target/release")
}

pub async fn run_all(settings: Settings) -> ExitCode {
    let bin = otpgate_binary(settings.otpgate.clone());
    // Kept when a run fails, so the servers' logs can be read.
    let scratch = tempfile::Builder::new()
        .prefix("otpgate-bench-")
        .tempdir()
        .expect("a scratch directory")
        .keep();
    let env = Env {
        carriers: fast_carriers(&scratch),
        bin,
        dir: scratch.clone(),
        quick: settings.quick,
    };
    let wanted = |name: &str| settings.only.is_empty() || settings.only.iter().any(|o| o == name);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let header = format!(
        "otpgate benchmarks ({} mode), {} cores, load average at start {}, {}",
        if settings.quick { "quick" } else { "full" },
        cores,
        load_average(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    eprintln!("{header}\nscratch directory {}", env.dir.display());
    let mut report = Report::default();
    let started = Instant::now();
    let mut http_max = None;
    if wanted("durability") {
        durability(&env, &mut report).await;
    }
    if wanted("smpp") {
        smpp_workload(&env, &mut report).await;
    }
    if wanted("smtp") {
        smtp_workload(&env, &mut report).await;
    }
    let soak_needs_max = settings.soak.as_ref().is_some_and(|s| s.rate.is_none());
    if wanted("http") || soak_needs_max {
        http_max = Some(http_workload(&env, &mut report, wanted("http")).await);
    }
    let part = |protocol: &str| wanted("overload") || wanted(&format!("overload-{protocol}"));
    let protocols = Protocols {
        smpp: part("smpp"),
        smtp: part("smtp"),
        http: part("http"),
    };
    if protocols.smpp || protocols.smtp || protocols.http {
        overload(&env, &mut report, &protocols).await;
    }
    if let Some(settings) = &settings.soak {
        if let Some(rate) = settings.rate.or(http_max.map(|max| max / 2.0)) {
            soak(&env, &mut report, settings, rate).await;
        }
    }
    report.note(format!(
        "run took {:.0} s; load average at the end {}",
        started.elapsed().as_secs_f64(),
        load_average()
    ));
    report.print(&header);
    let _ = std::fs::remove_dir_all(&scratch);
    if report.checks.iter().all(|c| c.met) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

// ----- durability -----

async fn durability_child(env: &Env, kind: &str, seconds: f64, tasks: usize) -> Value {
    let exe = std::env::current_exe().expect("own path");
    let dir = env.dir.join(format!("durability-{kind}"));
    let output = tokio::process::Command::new(exe)
        .args(["durability", kind])
        .arg(&dir)
        .args([seconds.to_string(), tasks.to_string()])
        .output()
        .await
        .expect("run the durability child");
    assert!(
        output.status.success(),
        "durability child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("the durability child's JSON")
}

async fn durability(env: &Env, report: &mut Report) {
    eprintln!("durability: raw fdatasync loop vs the delivery log under concurrency");
    let seconds = env.secs(8, 3).as_secs_f64();
    let raw = durability_child(env, "raw", seconds, 1).await;
    let log = durability_child(env, "log", seconds, 256).await;
    let rate = |v: &Value| v["ops"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(1.0);
    let row = |report: &mut Report, name: &str, server: &'static str, v: &Value, ratio: Option<f64>, note: &str| {
        let ops = v["ops"].as_f64().unwrap_or(0.0);
        report.rows.push(Row {
            workload: name.to_string(),
            server,
            rate: rate(v),
            unit: "writes",
            p50: v["p50_ms"].as_f64(),
            p99: v["p99_ms"].as_f64(),
            peak_kib: v["peak_rss_kib"].as_u64().unwrap_or(0),
            cpu_us_per_op: (ops > 0.0).then(|| v["cpu_seconds"].as_f64().unwrap_or(0.0) * 1e6 / ops),
            ratio,
            note: note.to_string(),
        });
    };
    let ratio = rate(&log) / rate(&raw).max(1e-9);
    eprintln!(
        "  raw {:.0} writes/s, delivery log {:.0} acknowledged writes/s",
        rate(&raw),
        rate(&log)
    );
    row(
        report,
        "durable write: 4 KiB + fdatasync",
        "baseline",
        &raw,
        None,
        "one at a time",
    );
    row(
        report,
        "durable write: delivery log create/append",
        "otpgate",
        &log,
        Some(ratio),
        "256 tasks, each acked after Store::flush",
    );
    report.check(
        "group commit: acknowledged log writes ≥ 5 × one-at-a-time fdatasync",
        format!("{:.0} vs {:.0} /s = {ratio:.1}×", rate(&log), rate(&raw)),
        ratio >= 5.0,
    );
}

// ----- SMPP -----

pub(crate) fn smpp_load(
    addr: SocketAddr,
    account: &str,
    duration: Duration,
    rate: Option<f64>,
    grace: Duration,
) -> smpp::Load {
    smpp::Load {
        addr,
        system_id: account.into(),
        password: account.into(),
        binds: 4,
        window: 10,
        duration,
        rate,
        receipt_grace: grace,
        numbers: 10_000,
    }
}

async fn smpp_workload(env: &Env, report: &mut Report) {
    eprintln!("smpp: 4 transceiver binds, window 10, registered_delivery=1");
    let base = env.baseline("smpp").await;
    let cpu0 = base.usage().cpu_seconds;
    let mut b = smpp::run(smpp_load(
        base.smpp.expect("smpp address"),
        "bench",
        env.secs(5, 2),
        None,
        Duration::from_secs(5),
    ))
    .await;
    let bu = base.stop().await;
    let server = env.otpgate("smpp", "").await;
    let cpu1 = server.usage().cpu_seconds;
    let mut o = smpp::run(smpp_load(
        server.smpp.expect("smpp address"),
        "otpgate",
        env.secs(10, 3),
        None,
        Duration::from_secs(60),
    ))
    .await;
    let ou = server.stop().await;
    let ratio = o.submit_rate() / b.submit_rate().max(1e-9);
    report.row(
        "SMPP submit_sm → submit_sm_resp",
        "baseline",
        b.submit_rate(),
        "submits",
        &mut b.submits.latency,
        bu,
        bu.cpu_seconds - cpu0,
        None,
        "echo SMSC, rusmpp codec",
    );
    report.row(
        "SMPP submit_sm → submit_sm_resp",
        "otpgate",
        o.submit_rate(),
        "submits",
        &mut o.submits.latency,
        ou,
        ou.cpu_seconds - cpu1,
        Some(ratio),
        "acked after the delivery log and SMSC record are durable",
    );
    let receipt_ratio = o.receipt_rate() / b.receipt_rate().max(1e-9);
    report.row(
        "SMPP submit_sm → receipt (deliver_sm)",
        "baseline",
        b.receipt_rate(),
        "receipts",
        &mut b.receipt_latency,
        bu,
        0.0,
        None,
        "",
    );
    report.row(
        "SMPP submit_sm → receipt (deliver_sm)",
        "otpgate",
        o.receipt_rate(),
        "receipts",
        &mut o.receipt_latency,
        ou,
        0.0,
        Some(receipt_ratio),
        "carrier delay 0–100 ms (median 5) + durable delivery events",
    );
    report.check(
        "SMPP: ≥ 50,000 submits/s",
        format!("{:.0} submits/s", o.submit_rate()),
        o.submit_rate() >= 50_000.0,
    );
    report.check(
        "SMPP: ≥ 0.15 × echo SMSC",
        format!("{:.0} / {:.0} = {ratio:.3}", o.submit_rate(), b.submit_rate()),
        ratio >= 0.15,
    );
    report.check(
        "SMPP: every receipt delivered",
        format!(
            "{} receipts for {} acknowledged submits ({} refused, {} errors, {} unanswered)",
            o.receipts, o.submits.ok, o.submits.refused, o.submits.errors, o.submits.timeouts
        ),
        o.receipts == o.submits.ok && o.submits.timeouts == 0,
    );
}

// ----- SMTP -----

pub(crate) fn smtp_load(addr: SocketAddr, connections: usize, duration: Duration, rate: Option<f64>) -> smtp::Load {
    smtp::Load {
        addr,
        connections,
        duration,
        rate,
        reply_timeout: Duration::from_secs(2),
    }
}

async fn smtp_workload(env: &Env, report: &mut Report) {
    eprintln!("smtp: 8 connections, small messages, one transaction at a time");
    let base = env.baseline("smtp").await;
    let cpu0 = base.usage().cpu_seconds;
    let mut b = smtp::run(smtp_load(base.smtp.expect("smtp address"), 8, env.secs(5, 2), None)).await;
    let bu = base.stop().await;
    let server = env.otpgate("smtp", "").await;
    let cpu1 = server.usage().cpu_seconds;
    let mut o = smtp::run(smtp_load(server.smtp.expect("smtp address"), 8, env.secs(10, 3), None)).await;
    let ou = server.stop().await;
    let ratio = o.rate() / b.rate().max(1e-9);
    report.row(
        "SMTP message (MAIL … 250 after DATA)",
        "baseline",
        b.rate(),
        "msgs",
        &mut b.tally.latency,
        bu,
        bu.cpu_seconds - cpu0,
        None,
        "sink that discards",
    );
    report.row(
        "SMTP message (MAIL … 250 after DATA)",
        "otpgate",
        o.rate(),
        "msgs",
        &mut o.tally.latency,
        ou,
        ou.cpu_seconds - cpu1,
        Some(ratio),
        "captured durably before 250",
    );
    report.check(
        "SMTP: ≥ 5,000 messages/s captured durably",
        format!(
            "{:.0} msgs/s ({} errors, {} refused, {} lost)",
            o.rate(),
            o.tally.errors,
            o.tally.refused,
            o.tally.timeouts
        ),
        o.rate() >= 5_000.0 && o.tally.errors == 0,
    );
    report.check(
        "SMTP: ≥ 0.15 × sink",
        format!("{:.0} / {:.0} = {ratio:.3}", o.rate(), b.rate()),
        ratio >= 0.15,
    );
}

//! Overload at twice each protocol's maximum, and the memory soak at half
//! the maximum issue rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::child::{Server, Usage};
use crate::http;
use crate::otp_flow::{http_load, issued, receipts_logged, setup_members};
use crate::report::{fmt_ms, Report};
use crate::stats::Tally;
use crate::workloads::{smpp_load, smtp_load, Env, Soak};
use crate::{smpp, smtp};

/// An answer later than this counts as a timeout: a client would have given
/// up (and an OTP user would have pressed "resend").
const DEADLINE: Duration = Duration::from_secs(2);

/// The overload runs' SMPP client: a window far wider than the SMSC's
/// `submit_window` (32 a session), so submits are sent when they are due
/// rather than held back in the client, and the SMSC's refusals can show.
fn wide(load: smpp::Load) -> smpp::Load {
    smpp::Load { window: 256, ..load }
}

/// The overload runs' SMTP and HTTP clients open up to this many
/// connections, under the servers' caps (1,024 each), as messages and
/// requests fall due and none is free.
const OPEN_CONNECTIONS: usize = 1000;

/// Each protocol on a fresh instance: its maximum first (closed loop), then
/// twice that offered open loop with the same connections.
/// Which protocols an overload run covers (`--only overload` is all three;
/// `overload-smpp`, `overload-smtp` and `overload-http` pick).
pub(crate) struct Protocols {
    pub smpp: bool,
    pub smtp: bool,
    pub http: bool,
}

pub(crate) async fn overload(env: &Env, report: &mut Report, protocols: &Protocols) {
    if protocols.smpp {
        overload_smpp(env, report).await;
    }
    if protocols.smtp {
        overload_smtp(env, report).await;
    }
    if protocols.http {
        overload_http(env, report).await;
    }
}

/// The overload run's length, and the maximum's.
fn lengths(env: &Env) -> (Duration, Duration) {
    (env.secs(10, 3), env.secs(5, 2))
}

async fn overload_smpp(env: &Env, report: &mut Report) {
    let (d, half) = lengths(env);
    // SMPP as configured by default (no per-account limit), then with the
    // account limited to the maximum: over it the SMSC answers
    // ESME_RTHROTTLED.
    let server = env.otpgate("overload-smpp", "").await;
    let addr = server.smpp.expect("smpp address");
    fill_past_the_cap(addr).await;
    eprintln!("overload: SMPP measuring the maximum (closed loop)...");
    let max = smpp::run(smpp_load(addr, "otpgate", half, None, Duration::from_secs(60)))
        .await
        .submit_rate();
    eprintln!(
        "overload: SMPP maximum {max:.0}/s; offering {:.0}/s, no account limit",
        2.0 * max
    );
    let cpu0 = server.usage().cpu_seconds;
    let mut o = smpp::run(wide(smpp_load(
        addr,
        "otpgate",
        d,
        Some(2.0 * max),
        Duration::from_secs(60),
    )))
    .await;
    let u = server.stop().await;
    overload_rows(
        report,
        "SMPP, no account limit (default)",
        &mut o.submits,
        d,
        max,
        u,
        u.cpu_seconds - cpu0,
        "ESME_RTHROTTLED",
    );

    // An operator sets an account's throughput under what the server
    // sustains (here 90% of it); the bucket then refuses the excess at once.
    // Restarted on the same data, so past the cap as well.
    let limit = (0.9 * max).floor().max(1.0) as u64;
    let extra = format!("[[accounts]]\nsystem_id = \"bench\"\npassword = \"bench\"\nthroughput_per_sec = {limit}\n");
    let config = env.config("overload-smpp-limited", &extra, "");
    let server = Server::otpgate(&env.bin, &env.data("overload-smpp"), &config).await;
    eprintln!(
        "overload: SMPP offering {:.0}/s to an account limited to {limit}/s",
        2.0 * max
    );
    let cpu0 = server.usage().cpu_seconds;
    let mut o = smpp::run(wide(smpp_load(
        server.smpp.expect("smpp address"),
        "bench",
        d,
        Some(2.0 * max),
        Duration::from_secs(60),
    )))
    .await;
    let u = server.stop().await;
    overload_rows(
        report,
        &format!("SMPP, account limited to {limit}/s"),
        &mut o.submits,
        d,
        max,
        u,
        u.cpu_seconds - cpu0,
        "ESME_RTHROTTLED",
    );
}

/// How many messages or OTPs put a store a tenth past the default
/// `log_retention`, which the delivery log, the SMSC and the OTP core each
/// keep.
fn past_the_cap() -> u64 {
    let cap = otpgate::delivery::log::DEFAULT_RETENTION as u64;
    cap + cap / 10
}

/// Submits (closed loop, as the maximum is measured) until the SMSC has
/// taken a tenth more messages than it keeps, so that the maximum and the
/// overload after it are measured in the steady state a server under load
/// stays in: every new message makes retention remove an old one. From
/// an empty store the first 100,000 messages cost less, and a maximum
/// measured then is a burst the server does not sustain.
async fn fill_past_the_cap(addr: std::net::SocketAddr) {
    let goal = past_the_cap();
    let mut taken = 0;
    eprintln!("overload: SMPP filling the store past its retention cap ({goal} messages)...");
    while taken < goal {
        let o = smpp::run(smpp_load(
            addr,
            "otpgate",
            Duration::from_secs(2),
            None,
            Duration::from_secs(60),
        ))
        .await;
        assert!(o.submits.ok > 0, "the SMSC took no submit while filling");
        taken += o.submits.ok;
        eprintln!(
            "  fill: {} submits, {} receipts, receipts span {:?}",
            o.submits.ok, o.receipts, o.receipt_span
        );
    }
}

async fn overload_smtp(env: &Env, report: &mut Report) {
    let (d, half) = lengths(env);
    // SMTP: the maximum over 64 connections, closed loop; then twice it
    // offered by a client that opens connections when messages fall due,
    // as configured by default (no limit set; `shed_after_ms` refuses
    // MAIL while captures lag).
    let server = env.otpgate("overload-smtp", "").await;
    let addr = server.smtp.expect("smtp address");
    let max = smtp::run(smtp_load(addr, 64, half, None)).await.rate();
    eprintln!(
        "overload: SMTP maximum {max:.0}/s over 64 connections; offering {:.0}/s",
        2.0 * max
    );
    let cpu0 = server.usage().cpu_seconds;
    let mut o = smtp::run_when_due(smtp_load(addr, OPEN_CONNECTIONS, d, Some(2.0 * max))).await;
    let u = server.stop().await;
    overload_rows(
        report,
        &format!(
            "SMTP, connections opened when due (default: shed_after_ms = {})",
            otpgate::smtp::DEFAULT_SHED_AFTER_MS
        ),
        &mut o.tally,
        d,
        max,
        u,
        u.cpu_seconds - cpu0,
        "421/451",
    );

    // The same with admission control set and the default shedding off,
    // so that each limit is measured alone, each on a new instance: the
    // message rate under what the server sustains (over it MAIL is
    // answered 451 4.3.2 at once), the sessions capped at the 64 the
    // maximum was measured with (one more is answered 421 at connect), and
    // the transactions in progress capped at those 64 (past it MAIL is
    // answered 451 at once, on a connection already open).
    let limit = (0.9 * max).floor().max(1.0) as u64;
    for (data, name, setting) in [
        (
            "overload-smtp-rate",
            format!("max_messages_per_sec = {limit}"),
            format!("[smtp]\nshed_after_ms = 0\nmax_messages_per_sec = {limit}\n"),
        ),
        (
            "overload-smtp-sessions",
            "max_connections = 64".to_string(),
            "[smtp]\nshed_after_ms = 0\nmax_connections = 64\n".to_string(),
        ),
        (
            "overload-smtp-in-flight",
            "max_in_flight = 64".to_string(),
            "[smtp]\nshed_after_ms = 0\nmax_in_flight = 64\n".to_string(),
        ),
    ] {
        let server = env.otpgate(data, &setting).await;
        eprintln!("overload: SMTP offering {:.0}/s with {name}", 2.0 * max);
        let cpu0 = server.usage().cpu_seconds;
        let mut o = smtp::run_when_due(smtp_load(
            server.smtp.expect("smtp address"),
            OPEN_CONNECTIONS,
            d,
            Some(2.0 * max),
        ))
        .await;
        let u = server.stop().await;
        overload_rows(
            report,
            &format!("SMTP, connections opened when due, {name}"),
            &mut o.tally,
            d,
            max,
            u,
            u.cpu_seconds - cpu0,
            "421/451",
        );
    }
}

async fn overload_http(env: &Env, report: &mut Report) {
    let (d, half) = lengths(env);
    // HTTP issue over 256 connections. Members are reused round robin, so
    // the per-destination cap is raised and there are enough members that
    // each is asked again only after its 1-second cooldown. The maximum is
    // measured with no effective in-flight limit (the default, 32 per
    // core, would refuse part of a 256-connection closed loop); the
    // `max_in_flight = 64` run below is that default on 2 cores.
    let count = if env.quick { 8_000 } else { 20_000 };
    let config = env.config(
        "overload-http",
        "[http]\nmax_in_flight = 1024\n",
        "sends_per_window = 1000000\n",
    );
    let server = Server::otpgate(&env.bin, &env.data("overload-http"), &config).await;
    let addr = server.http.expect("http address");
    eprintln!("overload: HTTP issue; setting up {count} members...");
    let members = Arc::new(setup_members(addr, count, "O").await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cycle = |offset: usize| -> http::Requests {
        let members = members.clone();
        Arc::new(move |i| {
            let m = &members[(i as usize + offset) % members.len()];
            let body = json!({"member_id": m.id, "purpose": "login"}).to_string();
            Some(http::request("POST", "/v1/otps", Some(&body)))
        })
    };
    // Past the retention caps first, as the SMPP overload is (see
    // [`fill_past_the_cap`]): each OTP issued there makes retention remove
    // an old OTP, message and SMSC record, the state the overload runs in.
    let filled = http_fill_past_the_cap(addr, &cycle).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The maximum the server sustains: each OTP issued leaves delivery work
    // (the attempt, the receipt) running after its answer, so the closed
    // loop's answer rate is a burst. Sustained is the rate at which the
    // OTPs issued had their receipts logged, when lower.
    eprintln!("overload: HTTP issue measuring the maximum (closed loop)...");
    let issue_start_ms = chrono::Utc::now().timestamp_millis();
    let mut load = http_load(addr, 256, half, None, cycle(filled));
    load.keep_bodies = true;
    let first = http::run(load).await;
    let burst = first.rate();
    let message_ids = issued(&first).into_iter().map(|(_, o)| o.message_id).collect();
    let (times, _, _) = receipts_logged(addr, message_ids).await;
    let last_receipt = times.iter().copied().max().unwrap_or(issue_start_ms);
    let sustained = times.len() as f64 / ((last_receipt - issue_start_ms).max(1) as f64 / 1000.0);
    let max = burst.min(sustained);
    eprintln!("overload: HTTP issue burst {burst:.0}/s, receipts logged {sustained:.0}/s");
    let offset = filled + answered(&first.tally);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reuse = count as f64 / (2.0 * max);
    eprintln!(
        "overload: HTTP issue maximum {max:.0}/s over 256 connections; offering {:.0}/s (each member every {reuse:.1} s)",
        2.0 * max
    );
    if reuse < 1.2 {
        report.note(format!(
            "HTTP overload: members are reused every {reuse:.1} s, close to the 1 s cooldown: some 429s may be send limits, not overload"
        ));
    }
    let cpu0 = server.usage().cpu_seconds;
    let mut o = http::run(http_overload_load(addr, d, 2.0 * max, cycle(offset))).await;
    let u = server.stop().await;
    overload_rows(
        report,
        "HTTP issue, connections opened when due, max_in_flight = 1024",
        &mut o.tally,
        d,
        max,
        u,
        u.cpu_seconds - cpu0,
        "429/503",
    );
    let offset = offset + answered(&o.tally);

    // Again on the same data (the members are set up already), restarted
    // with admission control set: first the request rate under what the
    // server sustains (over it POST /v1/otps is answered 429 at once), then
    // a cap on requests in flight near what the maximum needed (over it,
    // 503 at once). A rate limit only refuses once the server really does
    // more than the limit; the cap adapts to what it does on the day.
    let limit = (0.9 * max).floor().max(1.0) as u64;
    let used = http_restarted(
        env,
        report,
        &format!("max_requests_per_sec = {limit}"),
        cycle(offset),
        max,
        d,
    )
    .await;
    http_restarted(
        env,
        report,
        &format!("max_in_flight = {HTTP_IN_FLIGHT}"),
        cycle(offset + used),
        max,
        d,
    )
    .await;
}

/// Issues OTPs closed loop, over the 256 connections of the maximum, until
/// the OTP core, the delivery log and the SMSC each hold more than their
/// default retention cap. Answers how many requests it used.
async fn http_fill_past_the_cap(addr: std::net::SocketAddr, cycle: &impl Fn(usize) -> http::Requests) -> usize {
    let goal = past_the_cap();
    let (mut issued, mut used) = (0, 0);
    eprintln!("overload: HTTP issue filling the store past its retention caps ({goal} OTPs)...");
    while issued < goal {
        let o = http::run(http_load(addr, 256, Duration::from_secs(2), None, cycle(used))).await;
        assert!(o.tally.ok > 0, "no OTP was issued while filling");
        issued += o.tally.ok;
        used += answered(&o.tally);
        eprintln!(
            "  fill: {} issued, {} refused, {} errors",
            o.tally.ok, o.tally.refused, o.tally.errors
        );
    }
    used
}

/// The HTTP overload's client: open loop at `rate`, starting with the 256
/// connections the maximum was measured with and opening more when a
/// request falls due and none is free, up to [`OPEN_CONNECTIONS`]. As
/// 256 connections alone it was a closed loop past the server's maximum:
/// the excess waited in the client, late, where no limit of the server
/// could refuse it.
fn http_overload_load(addr: std::net::SocketAddr, d: Duration, rate: f64, requests: http::Requests) -> http::Load {
    let mut load = http_load(addr, 256, d, Some(rate), requests);
    load.timeout = DEADLINE + Duration::from_secs(3);
    load.grow_to = Some(OPEN_CONNECTIONS);
    load
}

/// Requests in flight for the capped HTTP run: the default on 2 cores
/// (32 a core). 96 and 128 served no more past the caps (BENCHMARKS.md,
/// thirteenth round).
const HTTP_IN_FLIGHT: usize = 64;

fn answered(tally: &Tally) -> usize {
    (tally.ok + tally.refused + tally.errors + tally.timeouts) as usize
}

/// The HTTP issue overload on the data of the first HTTP run, restarted
/// with `setting` in its `[http]` table. Answers how many requests it
/// used, so that the next run asks other members first.
async fn http_restarted(
    env: &Env,
    report: &mut Report,
    setting: &str,
    requests: http::Requests,
    max: f64,
    d: Duration,
) -> usize {
    let name = format!("overload-http-{}", setting.split(' ').next().unwrap_or("limited"));
    // Only the limit under test: without an in-flight cap of its own the
    // run gets one that never binds, not the default.
    let in_flight = if setting.starts_with("max_in_flight") {
        ""
    } else {
        "max_in_flight = 1024\n"
    };
    let config = env.config(
        &name,
        &format!("[http]\n{setting}\n{in_flight}"),
        "sends_per_window = 1000000\n",
    );
    let server = Server::otpgate(&env.bin, &env.data("overload-http"), &config).await;
    let addr = server.http.expect("http address");
    // Past the members' 1-second cooldown from the run before.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    eprintln!("overload: HTTP issue offering {:.0}/s with {setting}", 2.0 * max);
    let cpu0 = server.usage().cpu_seconds;
    let mut o = http::run(http_overload_load(addr, d, 2.0 * max, requests)).await;
    let u = server.stop().await;
    overload_rows(
        report,
        &format!("HTTP issue, connections opened when due, {setting}"),
        &mut o.tally,
        d,
        max,
        u,
        u.cpu_seconds - cpu0,
        "429/503",
    );
    answered(&o.tally)
}

/// One overload run against its maximum: what was served in time, what was
/// refused (and how fast), what came too late or never.
#[allow(clippy::too_many_arguments)]
fn overload_rows(
    report: &mut Report,
    name: &str,
    tally: &mut Tally,
    offered_for: Duration,
    max: f64,
    usage: Usage,
    cpu: f64,
    answer: &str,
) {
    let secs = offered_for.as_secs_f64().max(1e-9);
    let offered = 2.0 * max * secs;
    let late = tally.latency.count_above(DEADLINE);
    let in_time = tally.ok.saturating_sub(late);
    let served = in_time as f64 / secs;
    let answered = tally.ok + tally.refused + tally.errors + tally.timeouts;
    let unsent = (offered - answered as f64).max(0.0).round() as u64;
    let refusal_p99 = tally.refusal_latency.percentile_ms(99.0);
    let service_p99 = tally.service_latency.percentile_ms(99.0);
    report.row(
        &format!("overload 2×: {name}"),
        "otpgate",
        served,
        "in time",
        &mut tally.latency,
        usage,
        cpu,
        None,
        format!(
            "max {max:.0}/s, offered {:.0}/s for {secs:.0} s: {in_time} in time, {late} later than {} s (p99 from sending {} ms), {} refused ({answer}, p99 {} ms from sending), {} no answer, {} errors, {unsent} never sent",
            2.0 * max,
            DEADLINE.as_secs(),
            fmt_ms(service_p99),
            tally.refused,
            fmt_ms(refusal_p99),
            tally.timeouts,
            tally.errors,
        ),
    );
    report.check(
        format!("overload {name}: ≥ 90% of the maximum served at 2× offered"),
        format!("{served:.0}/s of {max:.0}/s = {:.0}%", 100.0 * served / max.max(1e-9)),
        served >= 0.9 * max,
    );
    report.check(
        format!("overload {name}: the rest refused at once ({answer}), none by timeout"),
        format!(
            "{} refused (p99 {} ms); {late} answered after {} s, {} never answered, {unsent} never sent",
            tally.refused,
            fmt_ms(refusal_p99),
            DEADLINE.as_secs(),
            tally.timeouts,
        ),
        late == 0 && tally.timeouts == 0 && tally.errors == 0 && unsent == 0 && refusal_p99.unwrap_or(0.0) < 100.0,
    );
}

// ----- soak -----

pub(crate) async fn soak(env: &Env, report: &mut Report, settings: &Soak, rate: f64) {
    let (length, rate) = (settings.length, rate.max(1.0));
    // Each member is asked again every members / rate seconds: well past
    // its 1-second cooldown.
    let members_needed = ((rate * 3.0) as usize).max(2_000);
    eprintln!(
        "soak: issuing OTPs at {rate:.0}/s for {:.0} s, sampling memory{}",
        length.as_secs_f64(),
        if settings.setting.is_empty() {
            String::new()
        } else {
            format!(" ({})", settings.setting)
        }
    );
    // Members are reused (each gets a code every members / rate seconds),
    // so the per-destination cap is raised for the soak.
    let config = env.config(
        "soak",
        &settings.setting,
        "sends_per_window = 1000000\nwindow_seconds = 60\n",
    );
    let server = Server::otpgate(&env.bin, &env.data("soak"), &config).await;
    let addr = server.http.expect("http address");
    let members = Arc::new(setup_members(addr, members_needed, "S").await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pid = server.pid();
    let sampler = tokio::spawn({
        async move {
            let mut samples = Vec::new();
            let start = Instant::now();
            while start.elapsed() < length {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                samples.push((start.elapsed().as_secs(), rss));
                eprintln!(
                    "  soak t={:>4}s rss {:.1} MiB",
                    start.elapsed().as_secs(),
                    rss as f64 / 1024.0
                );
            }
            samples
        }
    });
    let members_for = members.clone();
    let requests: http::Requests = Arc::new(move |i| {
        let m = &members_for[(i as usize) % members_for.len()];
        let body = json!({"member_id": m.id, "purpose": "login"}).to_string();
        Some(http::request("POST", "/v1/otps", Some(&body)))
    });
    let cpu0 = server.usage().cpu_seconds;
    let mut o = http::run(http_load(addr, 64, length, Some(rate), requests)).await;
    let samples = sampler.await.expect("the memory sampler");
    let u = server.stop().await;
    // Mean RSS over the samples taken in (from, to] seconds.
    let mean = |from: u64, to: u64| {
        let v: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t > from && *t <= to)
            .map(|(_, r)| *r)
            .collect();
        v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0
    };
    let secs = length.as_secs();
    let (early, third, late) = (mean(0, 60), mean(secs / 2, secs * 3 / 4), mean(secs * 3 / 4, secs));
    report.row(
        "soak: issue OTPs at half the sustained max",
        "otpgate",
        o.rate(),
        "OTPs",
        &mut o.tally.latency,
        u,
        u.cpu_seconds - cpu0,
        None,
        format!(
            "{:.0} s; RSS first minute {early:.0} MiB, third quarter {third:.0} MiB, last quarter {late:.0} MiB; errors {}, refused {}, timeouts {}",
            length.as_secs_f64(),
            o.tally.errors,
            o.tally.refused,
            o.tally.timeouts
        ),
    );
    report.note(format!(
        "soak RSS samples (s, MiB): {}",
        samples
            .iter()
            .map(|(t, r)| format!("{t}:{:.0}", *r as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    // Flat once warm: the first minutes fill caches and the retention caps
    // (the delivery log's 100,000 messages take 100,000 / rate seconds),
    // so the second half is what must not grow. Its quarters are compared,
    // each longer than a tooth of the sawtooth RSS draws (about two
    // minutes), so where a tooth falls does not decide.
    report.check(
        "memory flat over the soak at half the sustained maximum rate",
        format!("third quarter {third:.0} MiB, last quarter {late:.0} MiB (first minute {early:.0} MiB)"),
        late <= third * 1.10 + 8.0,
    );
}

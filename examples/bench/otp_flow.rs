//! The OTP flow over HTTP: members with verified phones (set up, not
//! measured), then issuing one OTP to each, waiting for each receipt to be
//! logged, verifying each code at the maximum rate and at half of it; the
//! hello-world baseline for the ratio.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::child::Server;
use crate::http::{self, Conn};
use crate::report::Report;
use crate::stats::Latencies;
use crate::workloads::Env;

/// A benchmark member: a verified phone on docomo and SMS notifications.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) id: String,
    /// National digits, as the handset routes take them.
    number: String,
}

pub(crate) async fn setup_members(addr: SocketAddr, count: usize, prefix: &str) -> Vec<Member> {
    let members: Vec<Member> = (0..count)
        .map(|i| Member {
            id: format!("{prefix}{i:06}"),
            number: format!("090{:08}", 10_000_000 + i),
        })
        .collect();
    let members = Arc::new(members);
    let mut tasks = Vec::new();
    let workers = 32;
    let started = Instant::now();
    for w in 0..workers {
        let members = members.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            for m in members.iter().skip(w).step_by(workers) {
                let step = Instant::now();
                let (s, v) = conn
                    .json(
                        "POST",
                        "/v1/members",
                        Some(&json!({"id": m.id, "residence": "JP", "locale": "en"})),
                    )
                    .await;
                assert_eq!(s, 201, "create member: {v}");
                slow_step(addr, "create member", &m.id, step, started).await;
                let step = Instant::now();
                let path = format!("/v1/members/{}/phone", m.id);
                let (s, v) = conn.json("POST", &path, Some(&json!({"number": m.number}))).await;
                assert_eq!(s, 202, "register phone: {v}");
                slow_step(addr, "register phone", &m.id, step, started).await;
                let step = Instant::now();
                let code = read_code(&mut conn, &m.number, None).await;
                slow_step(addr, "code on the handset", &m.id, step, started).await;
                let step = Instant::now();
                let path = format!("/v1/members/{}/phone/verify", m.id);
                let (s, v) = conn.json("POST", &path, Some(&json!({"code": code}))).await;
                assert_eq!(s, 200, "verify phone: {v}");
                slow_step(addr, "verify phone", &m.id, step, started).await;
                let step = Instant::now();
                let path = format!("/v1/members/{}/notification", m.id);
                let (s, v) = conn.json("PUT", &path, Some(&json!({"channel": "sms"}))).await;
                assert_eq!(s, 200, "notification: {v}");
                slow_step(addr, "notification", &m.id, step, started).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a setup worker");
    }
    Arc::try_unwrap(members).unwrap_or_else(|m| (*m).clone())
}

/// Setup is not measured, but a step that takes long is worth seeing: it
/// names the member so that its delivery log can be read.
async fn slow_step(addr: SocketAddr, what: &str, member: &str, step: Instant, started: Instant) {
    let took = step.elapsed();
    if took < Duration::from_secs(1) {
        return;
    }
    let (_, log) = Conn::new(addr)
        .json("GET", &format!("/v1/messages?member_id={member}"), None)
        .await;
    let events: Vec<String> = log["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["events"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            format!(
                "{} {}",
                e["at"].as_str().unwrap_or("?"),
                e["kind"].as_str().unwrap_or("?")
            )
        })
        .collect();
    eprintln!(
        "  slow setup step: {what} for {member} took {:.1} s (at {:.1} s); its log: {}",
        took.as_secs_f64(),
        (step - started).as_secs_f64(),
        events.join(", ")
    );
}

/// The newest code on a handset (waiting for delivery), other than `not`.
async fn read_code(conn: &mut Conn, number: &str, not: Option<&str>) -> String {
    let path = format!("/v1/sim/handsets/{number}/otp");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = conn.json("GET", &path, None).await;
        if s == 200 {
            if let Some(code) = v["code"].as_str() {
                if Some(code) != not {
                    return code.to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "no code reached {number}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An issued OTP as the issue answer gave it.
pub(crate) struct Issued {
    otp_id: String,
    pub(crate) message_id: String,
}

pub(crate) fn issue_requests(members: &Arc<Vec<Member>>, purpose: &'static str) -> http::Requests {
    let members = members.clone();
    Arc::new(move |i| {
        let m = members.get(i as usize)?;
        let body = json!({"member_id": m.id, "purpose": purpose}).to_string();
        Some(http::request("POST", "/v1/otps", Some(&body)))
    })
}

pub(crate) fn issued(outcome: &http::Outcome) -> Vec<(u64, Issued)> {
    outcome
        .bodies
        .iter()
        .filter_map(|(i, body)| {
            let v: Value = serde_json::from_slice(body).ok()?;
            Some((
                *i,
                Issued {
                    otp_id: v["id"].as_str()?.to_string(),
                    message_id: v["message_id"].as_str()?.to_string(),
                },
            ))
        })
        .collect()
}

/// Waits until every message's delivery log shows the SMPP receipt the OTP
/// core recorded; answers the receipt times (ms since the epoch) and the
/// latency from `queued` to `receipt` per message.
pub(crate) async fn receipts_logged(addr: SocketAddr, message_ids: Vec<String>) -> (Vec<i64>, Latencies, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending = message_ids;
    let mut times = Vec::new();
    let mut latency = Latencies::default();
    let mut by_stage: [Latencies; STAGES.len()] = Default::default();
    while !pending.is_empty() && Instant::now() < deadline {
        let chunk = Arc::new(std::mem::take(&mut pending));
        let workers = 16;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let chunk = chunk.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut found = Vec::new();
                let mut missing = Vec::new();
                for id in chunk.iter().skip(w).step_by(workers) {
                    let (_, v) = conn.json("GET", &format!("/v1/messages/{id}"), None).await;
                    let events = v["events"].as_array().cloned().unwrap_or_default();
                    let at = |kind: &str| {
                        events
                            .iter()
                            .find(|e| e["kind"] == kind)
                            .and_then(|e| e["at"].as_str())
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(|t| t.timestamp_millis())
                    };
                    match (at("queued"), at("receipt")) {
                        (Some(q), Some(r)) => {
                            let stages = STAGES.map(|(from, to)| at(from).zip(at(to)).map(|(a, b)| b - a));
                            found.push((q, r, stages))
                        }
                        _ => missing.push(id.clone()),
                    }
                }
                (found, missing)
            }));
        }
        for t in tasks {
            let (found, missing) = t.await.expect("a receipt reader");
            for (q, r, stages) in found {
                times.push(r);
                latency.record(Duration::from_millis((r - q).max(0) as u64));
                for (stage, took) in by_stage.iter_mut().zip(stages) {
                    if let Some(took) = took {
                        stage.record(Duration::from_millis(took.max(0) as u64));
                    }
                }
            }
            pending.extend(missing);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let stages: Vec<String> = STAGES
        .iter()
        .zip(by_stage.iter_mut())
        .map(|((from, to), l)| {
            let (p50, p99) = (l.percentile_ms(50.0), l.percentile_ms(99.0));
            format!(
                "{from} → {to} p50 {:.0} p99 {:.0}",
                p50.unwrap_or(0.0),
                p99.unwrap_or(0.0)
            )
        })
        .collect();
    eprintln!("  where a receipt's time goes (ms): {}", stages.join("; "));
    (times, latency, pending.len())
}

/// The delivery log's steps between an OTP's `queued` and its `receipt`.
const STAGES: [(&str, &str); 4] = [
    ("queued", "smsc_accepted"),
    ("smsc_accepted", "submitted"),
    ("smsc_accepted", "delivered"),
    ("delivered", "receipt"),
];

fn verify_requests(otps: Arc<Vec<(String, String)>>) -> http::Requests {
    Arc::new(move |i| {
        let (otp_id, code) = otps.get(i as usize)?;
        let body = json!({"code": code}).to_string();
        Some(http::request("POST", &format!("/v1/otps/{otp_id}/verify"), Some(&body)))
    })
}

/// More OTPs to verify, not measured: for each purpose one to every
/// member, its codes read once their receipts are logged (a code read
/// earlier could be the round before's).
async fn more_codes(addr: SocketAddr, members: &Arc<Vec<Member>>, purposes: &[&'static str]) -> Vec<(String, String)> {
    let mut codes = Vec::new();
    for &purpose in purposes {
        eprintln!("http: issuing {} more OTPs ({purpose}, not measured)", members.len());
        let mut load = http_load(
            addr,
            64,
            Duration::from_secs(600),
            None,
            issue_requests(members, purpose),
        );
        load.keep_bodies = true;
        let outcome = http::run(load).await;
        eprintln!("  {:.0} OTPs/s", outcome.rate());
        let round = issued(&outcome);
        let _ = receipts_logged(addr, round.iter().map(|(_, o)| o.message_id.clone()).collect()).await;
        codes.extend(codes_for(addr, members, &round).await);
    }
    codes
}

/// Reads each member's newest code for the OTPs just issued to them.
async fn codes_for(addr: SocketAddr, members: &Arc<Vec<Member>>, issued: &[(u64, Issued)]) -> Vec<(String, String)> {
    let pairs: Arc<Vec<(String, String)>> = Arc::new(
        issued
            .iter()
            .map(|(i, o)| (members[*i as usize].number.clone(), o.otp_id.clone()))
            .collect(),
    );
    let workers = 16;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let pairs = pairs.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut out = Vec::new();
            for (number, otp_id) in pairs.iter().skip(w).step_by(workers) {
                out.push((otp_id.clone(), read_code(&mut conn, number, None).await));
            }
            out
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.expect("a code reader"));
    }
    out
}

pub(crate) fn http_load(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    requests: http::Requests,
) -> http::Load {
    http::Load {
        addr,
        connections,
        duration,
        rate,
        timeout: Duration::from_secs(5),
        requests,
        keep_bodies: false,
        grow_to: None,
    }
}

/// Answers otpgate's sustained maximum issue rate: the lower of the
/// closed-loop issue rate and the rate their receipts were logged at.
pub(crate) async fn http_workload(env: &Env, report: &mut Report, measure: bool) -> f64 {
    let hello_rate = if measure {
        eprintln!("http: hello-world baseline, 64 connections");
        let base = env.baseline("http").await;
        let cpu0 = base.usage().cpu_seconds;
        let hello: http::Requests = Arc::new(|_| Some(http::request("GET", "/", None)));
        let mut b = http::run(http_load(
            base.http.expect("http address"),
            64,
            env.secs(5, 2),
            None,
            hello,
        ))
        .await;
        let bu = base.stop().await;
        report.row(
            "HTTP hello-world GET",
            "baseline",
            b.rate(),
            "req",
            &mut b.tally.latency,
            bu,
            bu.cpu_seconds - cpu0,
            None,
            "hyper, JSON body",
        );
        b.rate()
    } else {
        0.0
    };
    let count = if env.quick { 3_000 } else { 20_000 };
    // Throughput, not admission: 64 connections must never meet the
    // default in-flight cap (32 per core).
    // Each member gets an OTP for each of up to nine purposes (below), more
    // than the default five sends in ten minutes to one number.
    let config = env.config("http", "[http]\nmax_in_flight = 1024\n", "sends_per_window = 1000000\n");
    let server = Server::otpgate(&env.bin, &env.data("http"), &config).await;
    let addr = server.http.expect("http address");
    eprintln!("http: setting up {count} members with verified phones (not measured)...");
    let t = Instant::now();
    let members = Arc::new(setup_members(addr, count, "B").await);
    eprintln!("  setup took {:.1} s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_millis(1100)).await; // the 1 s cooldown

    // Issue: closed loop over every member once.
    eprintln!("http: issuing one OTP to each member, 64 connections");
    let cpu0 = server.usage().cpu_seconds;
    let issue_start_ms = chrono::Utc::now().timestamp_millis();
    let mut load = http_load(
        addr,
        64,
        Duration::from_secs(600),
        None,
        issue_requests(&members, "login"),
    );
    load.keep_bodies = true;
    let mut issue = http::run(load).await;
    let cpu_issue = server.usage().cpu_seconds - cpu0;
    let issued_a = issued(&issue);
    let (times, mut e2e_latency, missing) =
        receipts_logged(addr, issued_a.iter().map(|(_, o)| o.message_id.clone()).collect()).await;
    let last_receipt = times.iter().copied().max().unwrap_or(issue_start_ms);
    let e2e_rate = times.len() as f64 / ((last_receipt - issue_start_ms).max(1) as f64 / 1000.0);
    let issue_rate = issue.rate();

    // Verify at the maximum rate: each OTP once, with its right code. One
    // OTP a member lasts about half a second at that rate, against the
    // hello-world's five, so more rounds are issued first (not measured).
    let mut codes = codes_for(addr, &members, &issued_a).await;
    let more: &[&'static str] = if env.quick {
        &[]
    } else {
        &["v2", "v3", "v4", "v5", "v6"]
    };
    codes.extend(more_codes(addr, &members, more).await);
    let codes = Arc::new(codes);
    eprintln!("http: verifying {} codes, 64 connections", codes.len());
    let cpu0 = server.usage().cpu_seconds;
    let mut verify = http::run(http_load(
        addr,
        64,
        Duration::from_secs(600),
        None,
        verify_requests(codes),
    ))
    .await;
    let cpu_verify = server.usage().cpu_seconds - cpu0;
    let verify_max = verify.rate();

    // Verify at half that rate, open loop, with new OTPs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rounds: &[&'static str] = if env.quick {
        &["payment"]
    } else {
        &["payment", "h2", "h3"]
    };
    let codes_b = Arc::new(more_codes(addr, &members, rounds).await);
    let half = verify_max / 2.0;
    eprintln!("http: verifying {} codes open loop at {half:.0}/s", codes_b.len());
    let mut verify_half = http::run(http_load(
        addr,
        64,
        Duration::from_secs(600),
        Some(half),
        verify_requests(codes_b),
    ))
    .await;
    let su = server.stop().await;

    if measure {
        report.row(
            "HTTP issue OTP (POST /v1/otps)",
            "otpgate",
            issue_rate,
            "OTPs",
            &mut issue.tally.latency,
            su,
            cpu_issue,
            Some(issue_rate / hello_rate.max(1e-9)),
            "answered after SMPP submit_sm_resp and its log event",
        );
        report.row(
            "HTTP issue → receipt logged",
            "otpgate",
            e2e_rate,
            "OTPs",
            &mut e2e_latency,
            su,
            0.0,
            None,
            "queued → receipt event in the delivery log",
        );
        report.row(
            "HTTP verify (max, closed loop)",
            "otpgate",
            verify_max,
            "verifies",
            &mut verify.tally.latency,
            su,
            cpu_verify,
            Some(verify_max / hello_rate.max(1e-9)),
            "right code, each OTP once",
        );
        report.row(
            "HTTP verify (open loop, half max)",
            "otpgate",
            verify_half.rate(),
            "verifies",
            &mut verify_half.tally.latency,
            su,
            0.0,
            None,
            format!("offered {half:.0}/s"),
        );
        report.check(
            "HTTP: ≥ 10,000 OTPs issued/s durably",
            format!(
                "{issue_rate:.0} issued/s ({} errors, {} lost); end to end with receipt logged {e2e_rate:.0}/s, {missing} receipts missing",
                issue.tally.errors, issue.tally.timeouts
            ),
            issue_rate >= 10_000.0 && e2e_rate >= 10_000.0 && missing == 0,
        );
        let ratio = verify_max / hello_rate.max(1e-9);
        report.check(
            "HTTP: verify ≥ 0.3 × hello-world",
            format!(
                "{verify_max:.0} / {hello_rate:.0} = {ratio:.3} ({} errors)",
                verify.tally.errors
            ),
            ratio >= 0.3 && verify.tally.errors == 0,
        );
        let p99 = verify_half.tally.latency.percentile_ms(99.0).unwrap_or(f64::INFINITY);
        report.check(
            "HTTP: verify p99 < 5 ms at half the maximum rate",
            format!("p99 {p99:.2} ms at {half:.0}/s offered"),
            p99 < 5.0 && verify_half.tally.errors == 0,
        );
    }
    // The sustained maximum: what the server keeps up with end to end,
    // not the closed-loop burst (each issued OTP leaves delivery work
    // running after its answer). The soak runs at half of it, as the
    // HTTP overload runs at twice it.
    issue_rate.min(e2e_rate)
}

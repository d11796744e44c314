//! Reliability (issue 7): what must hold when the server is killed, raced,
//! watched for plain codes, and fed bad input. Every suite has a short
//! version in the default `cargo test` and its full counts under
//! `OTPGATE_SLOW=1` (see RELIABILITY.md):
//!
//! - crash: SIGKILL at random moments under mixed HTTP, SMPP and SMTP load;
//!   after each restart everything acknowledged is there and consistent,
//!   and pending messages reach a final state;
//! - concurrency: simultaneous right codes give exactly one success;
//!   simultaneous wrong codes count exactly five attempts, then lock;
//! - no plain codes: an otpgate pointed at an external SMSC and relay (a
//!   second otpgate) keeps no code in its data or logs, and the simulating
//!   one keeps them only in handset inboxes and mailboxes;
//! - bad input at the edges: truncated, oversized, malformed and stalled
//!   clients on HTTP, SMPP and SMTP;
//! - fuzz corpus: the kept cargo-fuzz corpus replayed through the same
//!   targets, and a seeded mutation loop over it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::child::{files_under, try_http, ChildServer};
use common::esme::{self, Bind, Esme};
use common::{enc, fuzzing, Api, TestServer};

/// Whether the full counts run (`OTPGATE_SLOW=1`).
fn slow() -> bool {
    std::env::var("OTPGATE_SLOW").is_ok_and(|v| v == "1")
}

/// `full` under OTPGATE_SLOW=1, else `quick`, saying which.
fn count(what: &str, quick: usize, full: usize) -> usize {
    if slow() {
        full
    } else {
        eprintln!("{what}: short run ({quick}); OTPGATE_SLOW=1 runs {full}");
        quick
    }
}

/// Polls `probe` until it answers `Some`, at most `tries` times, without
/// sleeping: each probe is a round trip to the server.
async fn poll<T, F, Fut>(tries: usize, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..tries {
        if let Some(v) = probe().await {
            return Some(v);
        }
        tokio::task::yield_now().await;
    }
    None
}

// ===========================================================================
// Shared checks on the delivery log.

/// Every message of the delivery log, newest first, through the paginated list.
async fn all_messages(api: &Api) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/v1/messages?limit=500&before={}", enc(b)),
            None => "/v1/messages?limit=500".to_string(),
        };
        let (s, b) = api.get(&path).await;
        assert_eq!(s, 200, "{path}: {b}");
        out.extend(b["items"].as_array().expect("items").iter().cloned());
        match b["next"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => return out,
        }
    }
}

const FINAL: [&str; 4] = ["delivered", "failed", "expired", "rejected"];
const STATES: [&str; 7] = [
    "queued",
    "submitted",
    "enroute",
    "delivered",
    "failed",
    "expired",
    "rejected",
];

/// A message is consistent when its events are numbered 1..n without gaps
/// and its `state` is what its events say (the first event's state, then
/// each later one's until a final state is reached).
fn check_consistent(message: &Value) -> Result<(), String> {
    let id = message["id"].as_str().ok_or("no id")?;
    let events = message["events"].as_array().ok_or("no events")?;
    if events.is_empty() {
        return Err(format!("{id}: no events"));
    }
    let mut state = "queued";
    for (i, e) in events.iter().enumerate() {
        let want = format!("{id}.{}", i + 1);
        if e["id"] != want.as_str() {
            return Err(format!("{id}: event {} is numbered {}", i + 1, e["id"]));
        }
        if let Some(s) = e["state"].as_str() {
            if !STATES.contains(&s) {
                return Err(format!("{id}: unknown state {s}"));
            }
            if i == 0 || !FINAL.contains(&state) {
                state = s;
            }
        }
    }
    if message["state"] != state {
        return Err(format!(
            "{id}: state {} but its events say {state}: {message}",
            message["state"]
        ));
    }
    Ok(())
}

// ===========================================================================
// Crash: SIGKILL under mixed load.

const CRASH_SMS_MEMBERS: [(&str, &str, &str); 2] = [
    ("C-DOCOMO", "09011110001", "docomo"),
    ("C-SOFTBANK", "08011110002", "softbank"),
];
const CRASH_EMAIL_MEMBERS: [(&str, &str); 2] = [("C-MAIL1", "c1@example.com"), ("C-MAIL2", "c2@example.net")];
const CRASH_ESME_PHONES: [&str; 3] = ["09022220001", "08022220002", "07022220003"];
const CRASH_MAILBOXES: [&str; 2] = ["inbox1@example.com", "inbox2@example.org"];

/// Something the server acknowledged before it was killed.
#[derive(Debug, Clone)]
enum Ack {
    /// `201` to POST /v1/otps.
    Otp { id: String, message_id: String },
    /// `200 verified`.
    Verified { otp_id: String },
    /// `submit_sm_resp` OK.
    Smpp { message_id: String },
    /// `250 ... queued as <id>` after DATA.
    Mail { id: String },
}

type Acks = Arc<Mutex<Vec<Ack>>>;

fn record(acks: &Acks, ack: Ack) {
    acks.lock().unwrap_or_else(|e| e.into_inner()).push(ack);
}

/// Issues OTPs round-robin; for email members also reads the code from the
/// mailbox and verifies it. Ends at the first failed exchange (the kill).
async fn otp_load(http: SocketAddr, members: Vec<(String, Option<String>)>, acks: Acks, stop: Arc<AtomicBool>) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let (member, mailbox) = &members[i % members.len()];
        i += 1;
        let body = json!({"member_id": member, "purpose": "login"}).to_string();
        let otp = match try_http(http, "POST", "/v1/otps", Some(&body)).await {
            Ok((201, otp)) => otp,
            Ok(_) => continue,
            Err(_) => return,
        };
        let id = otp["id"].as_str().unwrap_or_default().to_string();
        record(
            &acks,
            Ack::Otp {
                id: id.clone(),
                message_id: otp["message_id"].as_str().unwrap_or_default().to_string(),
            },
        );
        let Some(mailbox) = mailbox else { continue };
        let code = match try_http(http, "GET", &format!("/v1/sim/mailboxes/{}/otp", enc(mailbox)), None).await {
            Ok((200, b)) => b["code"].as_str().unwrap_or_default().to_string(),
            Ok(_) => continue,
            Err(_) => return,
        };
        let body = json!({ "code": code }).to_string();
        match try_http(http, "POST", &format!("/v1/otps/{id}/verify"), Some(&body)).await {
            Ok((200, _)) => record(&acks, Ack::Verified { otp_id: id }),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Moves the virtual clock in small steps, so deliveries, retries and
/// receipts happen while the kill can land.
async fn clock_load(http: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if try_http(http, "POST", "/v1/sim/clock/advance", Some(r#"{"seconds":2}"#))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// An ESME on rusmppc submitting with receipts requested, answering every
/// deliver_sm it is sent.
async fn smpp_load(addr: SocketAddr, round: u32, acks: Acks, stop: Arc<AtomicBool>) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (client, mut events) = rusmppc::ConnectionBuilder::new()
        .disable_interface_version_check()
        .no_enquire_link_interval()
        .response_timeout(Duration::from_secs(10))
        .connected(stream);
    let bind = rusmpp::pdus::BindTransceiver::builder()
        .system_id(std::str::FromStr::from_str("otpgate").expect("system_id"))
        .password(std::str::FromStr::from_str("otpgate").expect("password"))
        .interface_version(rusmpp::values::InterfaceVersion::Smpp3_4)
        .build();
    if client.bind_transceiver(bind).await.is_err() {
        return;
    }
    let answering = client.clone();
    let drain = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let rusmppc::Event::Incoming(command) = event {
                if let Some(rusmpp::Pdu::DeliverSm(_)) = command.pdu() {
                    let resp = rusmpp::pdus::DeliverSmResp::new(rusmpp::types::COctetString::empty(), vec![]);
                    if answering
                        .deliver_sm_resp(command.sequence_number(), resp)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let to = CRASH_ESME_PHONES[i % CRASH_ESME_PHONES.len()];
        let text = format!("reliability round {round} message {i}");
        i += 1;
        let pdu = esme::sms(to, &text).pdus().remove(0);
        match client.submit_sm(pdu).await {
            Ok(resp) => record(
                &acks,
                Ack::Smpp {
                    message_id: resp.message_id().as_str().to_string(),
                },
            ),
            Err(rusmppc::error::Error::UnexpectedResponse { .. }) => {}
            Err(_) => break,
        }
    }
    drain.abort();
}

/// A tolerant SMTP client: every step may meet a dead server.
struct LoadSmtp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl LoadSmtp {
    async fn connect(addr: SocketAddr) -> Result<LoadSmtp, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (read, writer) = stream.into_split();
        let mut client = LoadSmtp {
            reader: BufReader::new(read),
            writer,
        };
        client.reply().await?;
        Ok(client)
    }

    /// The code and the text of the last line of one reply.
    async fn reply(&mut self) -> Result<(u16, String), String> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .map_err(|_| "reply timeout".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or("not a reply")?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line.trim_end().to_string()));
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> Result<(u16, String), String> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.reply().await
    }
}

/// Sends mail to the crash mailboxes over one connection, recording each
/// `250 queued as`.
async fn smtp_load(addr: SocketAddr, round: u32, acks: Acks, stop: Arc<AtomicBool>) {
    let run = async {
        let mut smtp = LoadSmtp::connect(addr).await?;
        smtp.cmd("EHLO load.example").await?;
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let to = CRASH_MAILBOXES[i % CRASH_MAILBOXES.len()];
            i += 1;
            smtp.cmd("MAIL FROM:<load@tester.example>").await?;
            smtp.cmd(&format!("RCPT TO:<{to}>")).await?;
            let (code, _) = smtp.cmd("DATA").await?;
            if code != 354 {
                smtp.cmd("RSET").await?;
                continue;
            }
            let body = String::from_utf8(common::smtp_client::plain_message(
                "load@tester.example",
                to,
                &format!("round {round} mail {i}"),
                "hello",
            ))
            .unwrap_or_default();
            smtp.writer
                .write_all(format!("{body}.\r\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let (code, text) = smtp.reply().await?;
            if code == 250 {
                if let Some(id) = text.split("queued as ").nth(1) {
                    record(
                        &acks,
                        Ack::Mail {
                            id: id.trim().to_string(),
                        },
                    );
                }
            }
        }
        Ok::<(), String>(())
    };
    let _ = run.await;
}

/// Checks everything acknowledged so far, then moves the clock four days
/// (past every carrier's validity) and checks that nothing is left pending.
async fn check_after_restart(api: &Api, acks: &[Ack], round: u32) {
    let (s, b) = api.get("/healthz").await;
    assert_eq!(s, 200, "round {round}: healthz after restart: {b}");
    let messages = all_messages(api).await;
    let by_id: HashMap<&str, &Value> = messages
        .iter()
        .map(|m| (m["id"].as_str().unwrap_or_default(), m))
        .collect();
    let by_smsc: HashMap<&str, &Value> = messages
        .iter()
        .filter_map(|m| Some((m["smsc_message_id"].as_str()?, m)))
        .collect();
    for m in &messages {
        if let Err(e) = check_consistent(m) {
            panic!("round {round}: inconsistent message after restart: {e}");
        }
    }
    for ack in acks {
        match ack {
            Ack::Otp { id, message_id } => {
                let (s, otp) = api.get(&format!("/v1/otps/{id}")).await;
                assert_eq!(s, 200, "round {round}: acknowledged OTP {id} is gone: {otp}");
                assert_eq!(otp["message_id"], message_id.as_str(), "round {round}: {otp}");
                let m = by_id
                    .get(message_id.as_str())
                    .unwrap_or_else(|| panic!("round {round}: the message of acknowledged OTP {id} is gone"));
                assert_eq!(m["otp_id"], id.as_str(), "round {round}: {m}");
                // 201 comes after the channel's answer was logged.
                assert_ne!(
                    m["state"], "queued",
                    "round {round}: acknowledged OTP still queued: {m}"
                );
            }
            Ack::Verified { otp_id } => {
                let (s, otp) = api.get(&format!("/v1/otps/{otp_id}")).await;
                assert_eq!(s, 200, "round {round}: {otp}");
                assert_eq!(
                    otp["status"], "verified",
                    "round {round}: verified OTP lost its state: {otp}"
                );
            }
            Ack::Smpp { message_id } => {
                assert!(
                    by_smsc.contains_key(message_id.as_str()),
                    "round {round}: submit_sm_resp {message_id} is not in the delivery log"
                );
            }
            Ack::Mail { id } => {
                let (s, b) = api.get(&format!("/v1/mail/{id}")).await;
                assert_eq!(s, 200, "round {round}: mail {id} acknowledged with 250 is gone: {b}");
            }
        }
    }
    // Pending messages resume: past every validity, nothing is left open.
    api.advance(4 * 86_400).await;
    let messages = all_messages(api).await;
    let open: Vec<String> = messages
        .iter()
        .filter(|m| !FINAL.contains(&m["state"].as_str().unwrap_or_default()))
        .map(|m| format!("{} {} {} {}", m["id"], m["origin"], m["channel"], m["state"]))
        .collect();
    assert!(
        open.is_empty(),
        "round {round}: messages left pending four days after the restart:\n{}",
        open.join("\n")
    );
    for m in &messages {
        if let Err(e) = check_consistent(m) {
            panic!("round {round}: inconsistent message after resuming: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sigkill_under_mixed_load_loses_nothing_acknowledged() {
    let rounds = count("crash rounds", 3, 24) as u32;
    let seed: u64 = std::env::var("OTPGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("crash: seed {seed} (OTPGATE_CRASH_SEED={seed} replays the kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("otpgate.toml");
    std::fs::write(&config, "[otp]\ncooldown_seconds = 0\nsends_per_window = 1000000\n").expect("config");
    let config = config.display().to_string();
    let mut server = ChildServer::start(
        &dir.path().join("data"),
        &dir.path().join("server.log"),
        &["--virtual-clock", "--seed", "7", "--config", &config],
        &[],
    )
    .await;

    // The world: SMS and email members, handsets for the ESME's messages.
    let api = server.api();
    for (id, number, carrier) in CRASH_SMS_MEMBERS {
        api.sms_member(id, number, carrier).await;
    }
    for (id, email) in CRASH_EMAIL_MEMBERS {
        let (s, b) = api
            .post(
                "/v1/members",
                json!({"id": id, "locale": "en", "residence": "JP", "email": email}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        assert_eq!(b["notification"], "email", "{b}");
    }
    for number in CRASH_ESME_PHONES {
        let (s, b) = api
            .put(&format!("/v1/sim/handsets/{number}"), json!({"carrier": "docomo"}))
            .await;
        assert!(s == 200 || s == 201, "{b}");
    }

    let acks: Acks = Arc::default();
    let started = Instant::now();
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let sms_members = CRASH_SMS_MEMBERS
            .iter()
            .map(|(id, _, _)| (id.to_string(), None))
            .collect();
        let email_members = CRASH_EMAIL_MEMBERS
            .iter()
            .map(|(id, email)| (id.to_string(), Some(email.to_string())))
            .collect();
        let http = server.http;
        let smpp = server.smpp.expect("smpp");
        let smtp = server.smtp.expect("smtp");
        let tasks = vec![
            tokio::spawn(otp_load(http, sms_members, acks.clone(), stop.clone())),
            tokio::spawn(otp_load(http, email_members, acks.clone(), stop.clone())),
            tokio::spawn(clock_load(http, stop.clone())),
            tokio::spawn(smpp_load(smpp, round, acks.clone(), stop.clone())),
            tokio::spawn(smtp_load(smtp, round, acks.clone(), stop.clone())),
        ];
        // The random moment: the load runs for this long, then SIGKILL.
        let load_ms = rng.gen_range(150..1500);
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        server.kill().await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
                panic!("round {round}: a load task did not notice the kill");
            }
        }
        server.restart().await;
        let snapshot = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &snapshot {
            *kinds
                .entry(match a {
                    Ack::Otp { .. } => "otp",
                    Ack::Verified { .. } => "verified",
                    Ack::Smpp { .. } => "submit_sm_resp",
                    Ack::Mail { .. } => "smtp 250",
                })
                .or_default() += 1;
        }
        eprintln!("crash round {round}: killed after {load_ms} ms; acknowledged so far {kinds:?}");
        check_after_restart(&server.api(), &snapshot, round).await;
    }
    let total = acks.lock().unwrap_or_else(|e| e.into_inner()).len();
    assert!(total > 0, "the load acknowledged nothing: the test tested nothing");
    eprintln!(
        "crash: {rounds} kills, {total} acknowledgements checked, {:?}",
        started.elapsed()
    );
    server.terminate().await;
}

// ===========================================================================
// Concurrency: single use and exact attempt counting.

/// Opens one connection per request, then sends them all at once (after
/// every handshake), and returns the answers in request order.
async fn fire(http: SocketAddr, requests: Vec<(String, String)>) -> Vec<(u16, Value)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(requests.len()));
    let mut tasks = Vec::new();
    for (path, body) in requests {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(http).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method("POST")
                .uri(path)
                .header("host", "otpgate")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            barrier.wait().await;
            let resp = sender.send_request(req).await.expect("response");
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// An email member (the code is in the mailbox as soon as the OTP is issued).
async fn email_member(api: &Api, id: &str, address: &str) {
    let (s, b) = api
        .post(
            "/v1/members",
            json!({"id": id, "locale": "en", "residence": "JP", "email": address}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
}

/// Issues an OTP and reads its code from the mailbox.
async fn issue_and_read(api: &Api, member: &str, address: &str) -> (String, String) {
    let (s, otp) = api.post("/v1/otps", json!({"member_id": member})).await;
    assert_eq!(s, 201, "{otp}");
    let id = otp["id"].as_str().expect("otp id").to_string();
    let path = format!("/v1/sim/mailboxes/{}/otp", enc(address));
    let code = poll(60, || async {
        let (s, b) = api.get(&path).await;
        if s == 200 && b["otp_id"].as_str().is_none_or(|o| o == id) {
            return b["code"].as_str().map(str::to_string);
        }
        api.advance(5).await;
        None
    })
    .await
    .expect("the code reaches the mailbox");
    (id, code)
}

async fn fast_limits_server() -> TestServer {
    TestServer::start_with(|c| {
        c.otp.cooldown_seconds = 0;
        c.otp.sends_per_window = 1_000_000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_simultaneous_right_codes_give_exactly_one_success() {
    let trials = count("right-code trials", 20, 1000);
    let server = fast_limits_server().await;
    let address = "race@example.com";
    email_member(&server, "RACE", address).await;
    let started = Instant::now();
    for trial in 0..trials {
        let (id, code) = issue_and_read(&server, "RACE", address).await;
        let body = json!({ "code": code }).to_string();
        let answers = fire(
            server.http,
            (0..64)
                .map(|_| (format!("/v1/otps/{id}/verify"), body.clone()))
                .collect(),
        )
        .await;
        let wins = answers.iter().filter(|(s, _)| *s == 200).count();
        let losers: BTreeSet<String> = answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .map(|(s, b)| format!("{s} {}", common::error_code(b)))
            .collect();
        assert_eq!(wins, 1, "trial {trial}: {wins} successes; others {losers:?}");
        assert_eq!(
            losers,
            BTreeSet::from(["409 already_used".to_string()]),
            "trial {trial}"
        );
        let (_, otp) = server.get(&format!("/v1/otps/{id}")).await;
        assert_eq!(otp["status"], "verified", "trial {trial}: {otp}");
    }
    eprintln!("right codes: {trials} trials of 64 in {:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_simultaneous_wrong_codes_count_exactly_five_then_lock() {
    let trials = count("wrong-code trials", 2, 20);
    let server = fast_limits_server().await;
    let address = "guess@example.com";
    email_member(&server, "GUESS", address).await;
    for trial in 0..trials {
        let (id, code) = issue_and_read(&server, "GUESS", address).await;
        let right: u32 = code.parse().expect("six digits");
        let requests = (1..=200u32)
            .map(|k| {
                let wrong = format!("{:06}", (right + k) % 1_000_000);
                (format!("/v1/otps/{id}/verify"), json!({ "code": wrong }).to_string())
            })
            .collect();
        let answers = fire(server.http, requests).await;
        let mut left: Vec<u64> = answers
            .iter()
            .filter(|(s, _)| *s == 400)
            .map(|(_, b)| {
                assert_eq!(common::error_code(b), "invalid_code", "{b}");
                b["error"]["attempts_left"].as_u64().expect("attempts_left")
            })
            .collect();
        left.sort_unstable();
        assert_eq!(left, vec![0, 1, 2, 3, 4], "trial {trial}: the counted attempts");
        let others: BTreeSet<String> = answers
            .iter()
            .filter(|(s, _)| *s != 400)
            .map(|(s, b)| format!("{s} {}", common::error_code(b)))
            .collect();
        assert_eq!(others, BTreeSet::from(["423 locked".to_string()]), "trial {trial}");
        // Locked: even the right code is refused now.
        let (s, b) = server
            .post(&format!("/v1/otps/{id}/verify"), json!({ "code": code }))
            .await;
        assert_eq!((s, common::error_code(&b)), (423, "locked"), "trial {trial}: {b}");
        let (_, otp) = server.get(&format!("/v1/otps/{id}")).await;
        assert_eq!(otp["attempts_left"], 0, "trial {trial}: {otp}");
    }
    server.stop().await;
}

// ===========================================================================
// No plain codes: the OTP core against an external SMSC and relay.

/// Where each code occurs in `bytes` as a whole number (not inside a longer
/// digit run), with some context.
fn find_codes(bytes: &[u8], codes: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut hits = Vec::new();
    for code in codes {
        let needle = code.as_bytes();
        let mut from = 0;
        while let Some(at) = bytes[from..].windows(needle.len()).position(|w| w == needle) {
            let start = from + at;
            let end = start + needle.len();
            let digit_before = start > 0 && bytes[start - 1].is_ascii_digit();
            let digit_after = end < bytes.len() && bytes[end].is_ascii_digit();
            if !digit_before && !digit_after {
                let lo = start.saturating_sub(60);
                let hi = (end + 60).min(bytes.len());
                hits.push((code.clone(), String::from_utf8_lossy(&bytes[lo..hi]).into_owned()));
            }
            from = end;
        }
    }
    hits
}

/// The trees of a stopped server's sled database that hold any of the
/// codes, with one example each.
fn trees_holding(data: &Path, codes: &BTreeSet<String>) -> BTreeMap<String, String> {
    let db = sled::Config::new()
        .path(data.join("db"))
        .open()
        .expect("open the sled db");
    let mut found = BTreeMap::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("tree");
        for item in tree.iter() {
            let (key, value) = item.expect("read the tree");
            let hits = [find_codes(&key, codes), find_codes(&value, codes)].concat();
            if let Some((code, context)) = hits.into_iter().next() {
                found
                    .entry(String::from_utf8_lossy(&name).into_owned())
                    .or_insert(format!("{code} in …{context}…"));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plain_code_is_kept_when_the_smsc_and_relay_are_external() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Every otpgate line at trace: if a code can reach a log, this sees it.
    let log_env = [("OTPGATE_LOG", "info,otpgate=trace")];
    let mut world = ChildServer::start(
        &dir.path().join("world"),
        &dir.path().join("world.log"),
        &["--virtual-clock", "--seed", "7"],
        &log_env,
    )
    .await;
    let config = dir.path().join("core.toml");
    std::fs::write(
        &config,
        format!(
            "[sms_out]\naddr = \"{}\"\nsystem_id = \"otpgate\"\npassword = \"otpgate\"\n\n[email_out]\nrelay = \"{}\"\n",
            world.smpp.expect("world smpp"),
            world.smtp.expect("world smtp"),
        ),
    )
    .expect("core config");
    let config = config.display().to_string();
    let mut core = ChildServer::start(
        &dir.path().join("core"),
        &dir.path().join("core.log"),
        &[
            "--virtual-clock",
            "--seed",
            "7",
            "--smpp",
            "off",
            "--smtp",
            "off",
            "--config",
            &config,
        ],
        &log_env,
    )
    .await;
    let (w, c) = (world.api(), core.api());
    let mut codes = BTreeSet::new();

    // SMS members on three carriers, in both languages: the four steps of
    // registration, then an OTP each, a wrong try, a resend and the right code.
    let sms = [
        ("N-DOCOMO", "09033330001", "docomo", "ja"),
        ("N-SOFTBANK", "08033330002", "softbank", "en"),
        ("N-AU", "07033330003", "au", "ja"),
    ];
    for (id, number, carrier, locale) in sms {
        let (s, b) = w
            .put(&format!("/v1/sim/handsets/{number}"), json!({"carrier": carrier}))
            .await;
        assert!(s == 200 || s == 201, "{b}");
        let (s, b) = c
            .post(
                "/v1/members",
                json!({"id": id, "locale": locale, "residence": "JP", "email": format!("{}@example.com", id.to_lowercase())}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = c
            .post(&format!("/v1/members/{id}/phone"), json!({"number": number}))
            .await;
        assert_eq!(s, 202, "{b}");
        let sent = w.code_on_handset(number, None).await;
        codes.insert(sent["code"].as_str().expect("code").to_string());
        let (s, b) = c
            .post(&format!("/v1/members/{id}/phone/verify"), json!({"code": sent["code"]}))
            .await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = c
            .put(&format!("/v1/members/{id}/notification"), json!({"channel": "sms"}))
            .await;
        assert_eq!(s, 200, "{b}");
        c.advance(61).await;
        let (s, otp) = c.post("/v1/otps", json!({"member_id": id, "purpose": "login"})).await;
        assert_eq!(s, 201, "{otp}");
        let first = w.code_on_handset(number, Some(&sent)).await;
        codes.insert(first["code"].as_str().expect("code").to_string());
        c.advance(61).await;
        let otp_id = otp["id"].as_str().expect("id");
        let (s, again) = c.post(&format!("/v1/otps/{otp_id}/resend"), json!({})).await;
        assert_eq!(s, 201, "{again}");
        let second = w.code_on_handset(number, Some(&first)).await;
        let code = second["code"].as_str().expect("code").to_string();
        codes.insert(code.clone());
        let new_id = again["id"].as_str().expect("id");
        let (s, b) = c
            .post(&format!("/v1/otps/{new_id}/verify"), json!({"code": "000000"}))
            .await;
        assert!(s == 400 || code == "000000", "{b}");
        let (s, b) = c
            .post(&format!("/v1/otps/{new_id}/verify"), json!({ "code": code }))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    // Email members: the relay is the world's SMTP server.
    for (id, address, locale) in [
        ("N-MAIL-JA", "n-ja@example.com", "ja"),
        ("N-MAIL-EN", "n-en@example.org", "en"),
    ] {
        email_member(&c, id, address).await;
        let _ = locale;
        for _ in 0..2 {
            let (s, otp) = c.post("/v1/otps", json!({"member_id": id, "purpose": "login"})).await;
            assert_eq!(s, 201, "{otp}");
            let path = format!("/v1/sim/mailboxes/{}/otp", enc(address));
            let code = poll(60, || async {
                let (s, b) = w.get(&path).await;
                if s == 200 && !codes.contains(b["code"].as_str().unwrap_or_default()) {
                    return b["code"].as_str().map(str::to_string);
                }
                w.advance(5).await;
                None
            })
            .await
            .expect("the code reaches the world's mailbox");
            codes.insert(code.clone());
            let otp_id = otp["id"].as_str().expect("id");
            let (s, b) = c
                .post(&format!("/v1/otps/{otp_id}/verify"), json!({ "code": code }))
                .await;
            assert_eq!(s, 200, "{b}");
            c.advance(61).await;
        }
    }
    // Every SMS final in the world, its receipt back in the core's log.
    w.advance(600).await;
    let core_messages = poll(200, || async {
        let all = all_messages(&c).await;
        let done = all
            .iter()
            .all(|m| FINAL.contains(&m["state"].as_str().unwrap_or_default()));
        done.then_some(all)
    })
    .await
    .expect("every core message reaches a final state through receipts and SMTP replies");
    assert!(core_messages.len() >= 11, "{} messages", core_messages.len());
    assert!(codes.len() >= 10, "only {} distinct codes", codes.len());

    world.terminate().await;
    core.terminate().await;

    // The core: not one code in any file of its data directory or its log.
    let mut hits = Vec::new();
    for file in files_under(&core.data).into_iter().chain([core.log.clone()]) {
        let bytes = std::fs::read(&file).expect("read");
        for (code, context) in find_codes(&bytes, &codes) {
            hits.push(format!("{}: {code} in …{context}…", file.display()));
        }
    }
    assert!(
        hits.is_empty(),
        "plain codes in the OTP core's data or log:\n{}",
        hits.join("\n")
    );
    assert!(core.log_text().lines().count() > 10, "the core logged almost nothing");

    // The world: its log holds none, and of its stored trees only the
    // handset inboxes and the mailboxes (the capture) do.
    let log_hits = find_codes(&std::fs::read(&world.log).expect("world log"), &codes);
    assert!(log_hits.is_empty(), "plain codes in the world's log: {log_hits:?}");
    let trees = trees_holding(&world.data, &codes);
    let allowed = ["inbox", "mail_raw", "mail_messages", "mail_mailbox_entries"];
    let elsewhere: Vec<String> = trees
        .iter()
        .filter(|(name, _)| !allowed.contains(&name.as_str()))
        .map(|(name, example)| format!("{name}: {example}"))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the world keeps plain codes outside inboxes and mailboxes:\n{}",
        elsewhere.join("\n")
    );
    assert!(
        trees.contains_key("inbox"),
        "the search found nothing at all: {trees:?}"
    );
}

// ===========================================================================
// Fuzz corpus: replay and a seeded mutation loop (plain #[test]: the socket
// targets run their own runtime).

fn run_target(name: &str, target: fn(&[u8]), mutations: usize) {
    let corpus = fuzzing::corpus(name);
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
    for (file, input) in &corpus {
        let result = std::panic::catch_unwind(|| target(input));
        assert!(result.is_ok(), "{name}: fuzz/corpus/{name}/{file} fails");
    }
    let mut rng = fuzzing::Xorshift::new(0x5eed ^ name.len() as u64);
    for i in 0..mutations {
        let base = &corpus[rng.below(corpus.len())].1;
        let input = fuzzing::mutate(&mut rng, base, &corpus);
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            let path = std::env::temp_dir().join(format!("otpgate-{name}-crash-{i}"));
            let _ = std::fs::write(&path, &input);
            panic!("{name}: mutation {i} fails; input saved to {}", path.display());
        }
    }
}

fn fuzz_mutations() -> usize {
    count("fuzz mutations per target", 100, 20_000)
}

#[test]
fn fuzz_corpus_smpp_codec() {
    run_target("smpp_codec", fuzzing::smpp_codec, fuzz_mutations() * 10);
}

#[test]
fn fuzz_corpus_smpp_session() {
    run_target("smpp_session", fuzzing::smpp_session, fuzz_mutations());
}

#[test]
fn fuzz_corpus_smtp_session() {
    run_target("smtp_session", fuzzing::smtp_session, fuzz_mutations());
}

#[test]
fn fuzz_corpus_carrier_file() {
    run_target("carrier_file", fuzzing::carrier_file, fuzz_mutations());
}

#[test]
fn fuzz_corpus_scenario_file() {
    run_target("scenario_file", fuzzing::scenario_file, fuzz_mutations() * 10);
}

#[test]
fn fuzz_corpus_json_body() {
    run_target("json_body", fuzzing::json_body, fuzz_mutations());
}

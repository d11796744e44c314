//! Reliability (issue 7): what must hold when the server is killed,
//! stopped, cut off from power, short of disk, raced, watched for plain
//! codes, and fed bad input. Every suite has a short version in the default
//! `cargo test` and its full counts under `OTPGATE_SLOW=1` (see
//! RELIABILITY.md):
//!
//! - crash: SIGKILL at random moments under mixed HTTP, SMPP and SMTP load;
//!   after each restart everything acknowledged is there and consistent,
//!   and pending messages reach a final state; the same with SIGTERM,
//!   which must also stop the server cleanly;
//! - power cut: the disk image copied mid-load (root and a loop device);
//! - full disk: new work refused at once with each protocol's answer, taken
//!   again once space is freed; a disk that really fills fails safe;
//! - failing disk: writes and syncs answer EIO (a preloaded shim); nothing
//!   is acknowledged from then on, even once the disk answers again;
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
use std::path::{Path, PathBuf};
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
    /// `submit_multi_resp` OK, to `destinations` numbers, none refused.
    SmppMulti { message_id: String, destinations: usize },
    /// `250 ... queued as <id>` after DATA; `large` for a mail over
    /// [`LARGE_MAIL_BYTES`] (stored by sled in a file of its own).
    Mail { id: String, large: bool },
}

/// Every acknowledgement the load received, in order; the kill waits on it.
#[derive(Default)]
struct AckLog {
    acks: Mutex<Vec<Ack>>,
    grew: tokio::sync::Notify,
}

type Acks = Arc<AckLog>;

impl AckLog {
    fn snapshot(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn len(&self) -> usize {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Returns once at least `n` acknowledgements have arrived.
    async fn reach(&self, n: usize) {
        loop {
            let grew = self.grew.notified();
            if self.len() >= n {
                return;
            }
            grew.await;
        }
    }
}

fn record(acks: &Acks, ack: Ack) {
    acks.acks.lock().unwrap_or_else(|e| e.into_inner()).push(ack);
    acks.grew.notify_waiters();
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
    if client
        .bind_transceiver(esme::transceiver_bind("otpgate", "otpgate"))
        .await
        .is_err()
    {
        return;
    }
    let answering = client.clone();
    let drain = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let rusmppc::Event::Incoming(command) = event {
                let answered = match command.pdu() {
                    Some(rusmpp::Pdu::DeliverSm(_)) => {
                        let resp = rusmpp::pdus::DeliverSmResp::new(rusmpp::types::COctetString::empty(), vec![]);
                        answering.deliver_sm_resp(command.sequence_number(), resp).await
                    }
                    // The SMSC says goodbye (a SIGTERM): answered, as a
                    // well-behaved ESME does.
                    Some(rusmpp::Pdu::Unbind) => answering.unbind_resp(command.sequence_number()).await,
                    _ => Ok(()),
                };
                if answered.is_err() {
                    return;
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

/// An ESME sending `submit_multi` to two of the crash phones at a time, over
/// a raw connection (rusmppc has no `submit_multi`); it answers what the
/// SMSC sends meanwhile (a receipt meant for the other ESME of its account,
/// the goodbye of a SIGTERM).
async fn smpp_multi_load(addr: SocketAddr, round: u32, acks: Acks, stop: Arc<AtomicBool>) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let mut conn = tokio_util::codec::Framed::new(stream, rusmpp::tokio_codec::CommandCodec::new());
    let bind = esme::transceiver_bind("otpgate", "otpgate");
    if !matches!(tolerant_call(&mut conn, 1, bind).await, Some(c) if c.status() == rusmpp::CommandStatus::EsmeRok) {
        return;
    }
    let mut seq = 2;
    while !stop.load(Ordering::Relaxed) {
        let to = [0, 1].map(|k| CRASH_ESME_PHONES[(seq as usize + k) % CRASH_ESME_PHONES.len()]);
        let text = format!("reliability round {round} multi {seq}");
        let mut multi = esme::submit_multi(esme::SENDER, &to, &text);
        multi.registered_delivery = rusmpp::values::RegisteredDelivery::from(1);
        let Some(answer) = tolerant_call(&mut conn, seq, multi).await else {
            break;
        };
        if let Some(rusmpp::Pdu::SubmitMultiResp(resp)) = answer.pdu() {
            if answer.status() == rusmpp::CommandStatus::EsmeRok && resp.unsuccess_sme().is_empty() {
                record(
                    &acks,
                    Ack::SmppMulti {
                        message_id: resp.message_id.as_str().to_string(),
                        destinations: to.len(),
                    },
                );
            }
        }
        seq += 1;
    }
}

/// Sends `pdu` as `seq` and reads on to its answer, answering the SMSC's
/// own requests on the way; `None` once the server is gone or says goodbye.
async fn tolerant_call(conn: &mut esme::RawConn, seq: u32, pdu: impl Into<rusmpp::Pdu>) -> Option<rusmpp::Command> {
    use futures::SinkExt;
    use rusmpp::{Command, CommandStatus, Pdu};
    conn.send(Command::new(CommandStatus::EsmeRok, seq, pdu)).await.ok()?;
    loop {
        let command = tokio::time::timeout(Duration::from_secs(10), conn.next())
            .await
            .ok()??
            .ok()?;
        let (reply, goodbye): (Pdu, bool) = match command.pdu() {
            Some(Pdu::DeliverSm(_)) => {
                let resp = rusmpp::pdus::DeliverSmResp::new(rusmpp::types::COctetString::empty(), vec![]);
                (resp.into(), false)
            }
            Some(Pdu::Unbind) => (Pdu::UnbindResp, true),
            _ if command.sequence_number() == seq => return Some(command),
            _ => continue,
        };
        conn.send(Command::new(CommandStatus::EsmeRok, command.sequence_number(), reply))
            .await
            .ok()?;
        if goodbye {
            return None;
        }
    }
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
            let large = i.is_multiple_of(25);
            let text = if large { large_mail_text() } else { "hello".to_string() };
            let body = String::from_utf8(common::smtp_client::plain_message(
                "load@tester.example",
                to,
                &format!("round {round} mail {i}"),
                &text,
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
                            large,
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
            Ack::SmppMulti {
                message_id,
                destinations,
            } => {
                let (s, found) = api.get(&format!("/v1/messages?smsc_message_id={message_id}")).await;
                let logged = found["items"].as_array().map_or(0, Vec::len);
                assert_eq!(
                    (s, logged),
                    (200, *destinations),
                    "round {round}: submit_multi_resp {message_id}'s destinations in the delivery log: {found}"
                );
            }
            Ack::Mail { id, large } => {
                let (s, b) = api.get(&format!("/v1/mail/{id}")).await;
                assert_eq!(s, 200, "round {round}: mail {id} acknowledged with 250 is gone: {b}");
                if *large {
                    let (s, raw) = api.get(&format!("/v1/mail/{id}/raw")).await;
                    let raw = raw.as_str().unwrap_or_default();
                    assert!(
                        s == 200 && raw.len() > LARGE_MAIL_BYTES && raw.contains(LARGE_MAIL_END),
                        "round {round}: large mail {id} came back damaged ({s}, {} bytes)",
                        raw.len()
                    );
                }
            }
        }
    }
    // Pending messages resume: past every validity, nothing is left open.
    api.advance(4 * 86_400).await;
    let messages = all_messages(api).await;
    let open: Vec<String> = messages
        .iter()
        .filter(|m| !FINAL.contains(&m["state"].as_str().unwrap_or_default()))
        .map(|m| m.to_string())
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

/// The seed of a crash test's random moments: `var` if set, else the time.
fn crash_seed(what: &str, var: &str) -> u64 {
    let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    });
    eprintln!("{what}: seed {seed} ({var}={seed} replays the moments)");
    seed
}

/// Starts a server for the crash tests on `data`, and sets up its world:
/// SMS and email members, and handsets for the ESME's messages.
async fn crash_server(dir: &Path, data: &Path) -> ChildServer {
    crash_server_with(dir, data, "").await
}

/// The crash tests' configuration: no send limits, and `settings` (top-level
/// keys) first.
fn write_crash_config(dir: &Path, settings: &str) -> PathBuf {
    let config = dir.join("otpgate.toml");
    let text = format!("{settings}[otp]\ncooldown_seconds = 0\nsends_per_window = 1000000\n");
    std::fs::write(&config, text).expect("config");
    config
}

async fn crash_server_with(dir: &Path, data: &Path, settings: &str) -> ChildServer {
    let config = write_crash_config(dir, settings);
    let config = config.display().to_string();
    let server = ChildServer::start(
        data,
        &dir.join("server.log"),
        &["--virtual-clock", "--seed", "7", "--config", &config],
        &[],
    )
    .await;
    set_up_crash_world(&server.api()).await;
    server
}

/// The crash tests' world: SMS and email members, and handsets for the
/// ESME's messages.
async fn set_up_crash_world(api: &Api) {
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
}

/// Every 25th mail of the load is this large: sled keeps a leaf of such
/// values in a blob file of its own, which must be as durable as its log.
const LARGE_MAIL_BYTES: usize = 200 * 1024;
const LARGE_MAIL_END: &str = "end of the large mail";

fn large_mail_text() -> String {
    let line = "x".repeat(70);
    let mut text = String::with_capacity(LARGE_MAIL_BYTES + 1024);
    while text.len() <= LARGE_MAIL_BYTES {
        text.push_str(&line);
        text.push_str("\r\n");
    }
    text.push_str(LARGE_MAIL_END);
    text
}

/// One round's mixed load: OTPs to SMS and email members (email codes read
/// and verified), the virtual clock moving, an ESME submitting, another
/// sending `submit_multi`, and an SMTP client sending, until `stop` or the
/// server is gone.
struct MixedLoad {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MixedLoad {
    fn start(server: &ChildServer, round: u32, acks: &Acks) -> MixedLoad {
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
            tokio::spawn(smpp_multi_load(smpp, round, acks.clone(), stop.clone())),
            tokio::spawn(smtp_load(smtp, round, acks.clone(), stop.clone())),
        ];
        MixedLoad { stop, tasks }
    }

    /// Waits for `more` acknowledgements after `now`: the random moment
    /// lands amid the load, whatever its pace on this machine.
    async fn until(acks: &Acks, round: u32, more: usize) {
        let target = acks.len() + more;
        if tokio::time::timeout(Duration::from_secs(60), acks.reach(target))
            .await
            .is_err()
        {
            panic!("round {round}: the load stalled before {more} more acknowledgements");
        }
    }

    /// Ends the load once the server is gone: every task must notice.
    async fn end(self, round: u32) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
                panic!("round {round}: a load task did not notice the kill");
            }
        }
    }
}

/// How many acknowledgements of each kind.
fn ack_kinds(acks: &[Ack]) -> BTreeMap<&'static str, usize> {
    let mut kinds = BTreeMap::new();
    for a in acks {
        *kinds
            .entry(match a {
                Ack::Otp { .. } => "otp",
                Ack::Verified { .. } => "verified",
                Ack::Smpp { .. } => "submit_sm_resp",
                Ack::SmppMulti { .. } => "submit_multi_resp",
                Ack::Mail { .. } => "smtp 250",
            })
            .or_default() += 1;
    }
    kinds
}

/// After a restart: everything acknowledged so far is checked.
async fn check_round(server: &ChildServer, acks: &Acks, round: u32, what: &str) {
    let snapshot = acks.snapshot();
    eprintln!("{what}; so far {:?}", ack_kinds(&snapshot));
    check_after_restart(&server.api(), &snapshot, round).await;
}

/// The end of a crash test, which must have checked something.
async fn end_crash_test(mut server: ChildServer, acks: &Acks, summary: &str, started: Instant) {
    let total = acks.len();
    assert!(total > 0, "the load acknowledged nothing: the test tested nothing");
    eprintln!("{summary}, {total} acknowledgements checked, {:?}", started.elapsed());
    server.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sigkill_under_mixed_load_loses_nothing_acknowledged() {
    let rounds = count("crash rounds", 3, 24) as u32;
    stop_under_load("crash", rounds, 120, Stop::Kill).await;
}

/// A rolling restart: SIGTERM under the mixed load, as a supervisor or an
/// orchestrator stops a server. It must stop cleanly within 20 s (open
/// sessions said goodbye to, the store closed) and lose nothing it
/// acknowledged, however busy it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_mixed_load_stops_cleanly_and_loses_nothing_acknowledged() {
    let rounds = count("SIGTERM rounds", 2, 12) as u32;
    stop_under_load("SIGTERM", rounds, 400, Stop::Terminate).await;
}

/// How a round of [`stop_under_load`] stops the server.
#[derive(Clone, Copy)]
enum Stop {
    /// SIGKILL: no goodbye, no flush.
    Kill,
    /// SIGTERM, and a clean exit within 20 s.
    Terminate,
}

/// Rounds of the mixed load, each ended by `stop` after 1 to `most` more
/// acknowledgements (a random moment); after each restart everything
/// acknowledged so far is checked.
async fn stop_under_load(name: &str, rounds: u32, most: usize, stop: Stop) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(crash_seed(name, "OTPGATE_CRASH_SEED"));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = crash_server(dir.path(), &dir.path().join("data")).await;

    let acks: Acks = Arc::default();
    let started = Instant::now();
    for round in 1..=rounds {
        let load = MixedLoad::start(&server, round, &acks);
        let more = rng.gen_range(1..most);
        MixedLoad::until(&acks, round, more).await;
        let stopping = Instant::now();
        let how = match stop {
            Stop::Kill => {
                server.kill().await;
                "killed"
            }
            Stop::Terminate => {
                server.terminate().await;
                "stopped"
            }
        };
        let took = stopping.elapsed();
        load.end(round).await;
        server.restart().await;
        let what = format!("{name} round {round}: {how} after {more} more acknowledgements, in {took:?}");
        check_round(&server, &acks, round, &what).await;
    }
    end_crash_test(server, &acks, &format!("{name}: {rounds} rounds"), started).await;
}

// ===========================================================================
// Power cut: what a crash of the machine leaves on the disk.

/// Runs a command; its standard output, or what it said on failure.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn shown(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// An ext4 file system on a loop device over a sparse image file, to hold
/// a server's data directory. [`Disk::cut`] copies the image as a power
/// cut would leave the disk: what the server synced is in the copy, and of
/// the rest only what the kernel happened to write back. The journal is
/// committed only when something is synced (`commit=600`), so unsynced
/// data and unsynced metadata (a file created, renamed or grown) are lost
/// as on a machine whose power goes. `data=writeback` is the harsher mode:
/// a file's new size can be committed without its data, which then reads
/// as zeros.
struct Disk {
    image: PathBuf,
    mount: PathBuf,
    device: Option<String>,
}

impl Disk {
    /// Formats and mounts an image of `gib` GiB under `dir`, or says why
    /// this machine cannot (not root, no loop devices, less than 2 GiB
    /// free for the image and its copy). The image is sparse and its
    /// journal left unwritten: it takes what the server writes, a few
    /// hundred MiB at most.
    fn new(dir: &Path, gib: u64) -> Result<Disk, String> {
        let free: u64 = run("df", &["--output=avail", "-B1", shown(dir)])?
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("df said nothing readable")?;
        if free < 2 << 30 {
            return Err(format!("{} MiB free under {}", free >> 20, dir.display()));
        }
        let image = dir.join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(gib << 30).map_err(|e| e.to_string())?;
        let lazy = "lazy_itable_init=1,lazy_journal_init=1";
        run("mkfs.ext4", &["-q", "-F", "-E", lazy, shown(&image)])?;
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        let mut disk = Disk {
            image,
            mount,
            device: None,
        };
        disk.attach("ordered")?;
        Ok(disk)
    }

    fn attach(&mut self, data_mode: &str) -> Result<(), String> {
        let device = run("losetup", &["--find", "--show", shown(&self.image)])?;
        self.device = Some(device.clone());
        let options = format!("commit=600,data={data_mode}");
        run("mount", &["-t", "ext4", "-o", &options, &device, shown(&self.mount)])?;
        Ok(())
    }

    fn detach(&mut self) {
        if let Some(device) = self.device.take() {
            if run("umount", &[shown(&self.mount)]).is_err() {
                let _ = run("umount", &["-l", shown(&self.mount)]);
            }
            let _ = run("losetup", &["-d", &device]);
        }
    }

    /// The image as it is at this instant, copied aside.
    fn cut(&self) -> PathBuf {
        let cut = self.image.with_extension("cut");
        run("cp", &["--sparse=always", shown(&self.image), shown(&cut)]).expect("copy the image");
        cut
    }

    /// Power on from `cut`: the old disk goes, the copy is mounted where it
    /// was (ext4 replays its journal), now in `data_mode`.
    fn power_on(&mut self, cut: &Path, data_mode: &str) {
        self.detach();
        std::fs::rename(cut, &self.image).expect("the cut image replaces the disk");
        self.attach(data_mode).expect("mount the cut image");
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A disk of the test's own, or `None` after saying loudly why this
/// machine cannot give one (`OTPGATE_POWER_CUT=1` makes that a failure).
fn own_disk(test: &str, dir: &Path, gib: u64) -> Option<Disk> {
    match Disk::new(dir, gib) {
        Ok(disk) => Some(disk),
        Err(why) if std::env::var("OTPGATE_POWER_CUT").is_ok_and(|v| v == "1") => {
            panic!("{test}: this machine cannot give it a disk of its own: {why}")
        }
        Err(why) => {
            eprintln!(
                "{test}: SKIPPED, this machine cannot give it a disk of its own ({why}); \
                 it needs root, losetup and 2 GiB free; OTPGATE_POWER_CUT=1 makes this a failure"
            );
            None
        }
    }
}

/// The crash test again, but the machine loses its power instead of the
/// server being killed: the server is stopped where it is (SIGSTOP), the
/// disk image is copied as it stands, the server is killed, and a new one
/// starts on the copy. Everything acknowledged must have been synced, so
/// it must all be there; ext4's two data modes alternate by round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_under_mixed_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(mut disk) = own_disk("power cut", dir.path(), 4) else {
        return;
    };
    let rounds = count("power-cut rounds", 2, 20) as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(crash_seed("power cut", "OTPGATE_POWER_CUT_SEED"));
    let mut server = crash_server(dir.path(), &disk.mount.join("data")).await;

    let acks: Acks = Arc::default();
    let started = Instant::now();
    for round in 1..=rounds {
        let load = MixedLoad::start(&server, round, &acks);
        // Odd rounds run for seconds, past several checkpoints (every 2 s
        // while writes come): log files written over, sled's files synced.
        let more = if round % 2 == 1 {
            rng.gen_range(800..1600)
        } else {
            rng.gen_range(1..120)
        };
        MixedLoad::until(&acks, round, more).await;
        server.freeze();
        let cut = disk.cut();
        server.kill().await;
        load.end(round).await;
        let mode = if round % 2 == 1 { "writeback" } else { "ordered" };
        disk.power_on(&cut, mode);
        server.restart().await;
        let what = format!("power cut round {round} ({mode} next): after {more} more acknowledgements");
        check_round(&server, &acks, round, &what).await;
    }
    end_crash_test(server, &acks, &format!("power cut: {rounds} cuts"), started).await;
}

// ===========================================================================
// A full disk: new work refused at once, nothing acknowledged lost.

/// Bytes free to an unprivileged writer on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let stat = rustix::fs::statvfs(path).expect("statvfs");
    stat.f_bavail * stat.f_frsize
}

/// Takes the disk's free space down to `leave` bytes with a file of the
/// test's own (allocated, not written), and returns its path.
fn fill_disk(disk: &Disk, leave: u64) -> PathBuf {
    let ballast = disk.mount.join("ballast");
    let _ = std::fs::remove_file(&ballast);
    let size = free_bytes(&disk.mount).saturating_sub(leave);
    run("fallocate", &["-l", &size.to_string(), shown(&ballast)]).expect("fallocate the ballast");
    ballast
}

/// What an operator does: removes the ballast and commits the file
/// system's journal, so the blocks count as free (the disk is mounted with
/// a 10-minute commit interval).
fn free_disk(disk: &Disk, ballast: &Path) {
    std::fs::remove_file(ballast).expect("remove the ballast");
    run("sync", &["-f", shown(&disk.mount)]).expect("sync the file system");
}

/// Sends 200 KiB mails on one connection until the server refuses one at
/// MAIL (the reply is returned) or after DATA; a mail taken is recorded.
async fn mail_until_refused(smtp: SocketAddr, acks: &Acks, what: &str) -> (u16, String) {
    let mut client = LoadSmtp::connect(smtp).await.expect("connect to SMTP");
    client.cmd("EHLO filler.example").await.expect("EHLO");
    for i in 0..5_000 {
        let (code, text) = client.cmd("MAIL FROM:<filler@tester.example>").await.expect("MAIL");
        if code != 250 {
            return (code, text);
        }
        let to = CRASH_MAILBOXES[i % CRASH_MAILBOXES.len()];
        client.cmd(&format!("RCPT TO:<{to}>")).await.expect("RCPT");
        let (code, text) = client.cmd("DATA").await.expect("DATA");
        assert_eq!(code, 354, "{what}: DATA: {text}");
        let body = String::from_utf8(common::smtp_client::plain_message(
            "filler@tester.example",
            to,
            &format!("{what}: filler {i}"),
            &large_mail_text(),
        ))
        .expect("UTF-8");
        client
            .writer
            .write_all(format!("{body}.\r\n").as_bytes())
            .await
            .expect("send the mail");
        let (code, text) = client.reply().await.expect("the answer to DATA");
        match text.split("queued as ").nth(1) {
            Some(id) if code == 250 => record(
                acks,
                Ack::Mail {
                    id: id.trim().to_string(),
                    large: true,
                },
            ),
            _ => assert!(code == 452 || code == 451, "{what}: after DATA: {code} {text}"),
        }
    }
    panic!("{what}: 5,000 mails of 200 KiB and the server never refused one");
}

/// One new message of each protocol, with the answers it got: SMTP's to
/// MAIL (and the mail's id once taken), SMPP's `command_status` (0 when
/// taken, the message id recorded), HTTP's status and error code for an
/// OTP (recorded when issued).
async fn try_each_protocol(server: &ChildServer, acks: &Acks) -> (u16, u32, (u16, String)) {
    let mut smtp = common::smtp_client::RawSmtp::connect(server.smtp.expect("smtp")).await;
    smtp.expect("EHLO probe.example", 250).await;
    let mail = smtp.cmd("MAIL FROM:<probe@tester.example>").await;
    if mail.code == 250 {
        let to = CRASH_MAILBOXES[0];
        smtp.expect(&format!("RCPT TO:<{to}>"), 250).await;
        smtp.expect("DATA", 354).await;
        let message = common::smtp_client::plain_message("probe@tester.example", to, "probe", &large_mail_text());
        let done = smtp.data_body(&message).await;
        assert_eq!(done.code, 250, "{}", done.text());
        let text = done.text();
        let id = text.split("queued as ").nth(1).expect("a queued id").trim().to_string();
        record(acks, Ack::Mail { id, large: true });
    }
    let esme = Esme::bind(server.smpp.expect("smpp"), Bind::Transmitter).await;
    let status = match esme.submit(&esme::sms(CRASH_ESME_PHONES[0], "probe")).await {
        Ok(message_id) => {
            record(acks, Ack::Smpp { message_id });
            0
        }
        Err(status) => status,
    };
    esme.unbind().await;
    let (member, _, _) = CRASH_SMS_MEMBERS[0];
    let (code, otp) = server
        .api()
        .post("/v1/otps", json!({"member_id": member, "purpose": "probe"}))
        .await;
    if code == 201 {
        record(
            acks,
            Ack::Otp {
                id: otp["id"].as_str().unwrap_or_default().to_string(),
                message_id: otp["message_id"].as_str().unwrap_or_default().to_string(),
            },
        );
    }
    let error = otp["error"]["code"].as_str().unwrap_or_default().to_string();
    (mail.code, status, (code, error))
}

/// The disk fills under the mixed load. With `min_free_mib` the server
/// refuses new work with each protocol's own answer (SMTP 452 4.3.1,
/// SMPP ESME_RMSGQFUL, HTTP 507) while reads go on, and takes work again
/// as soon as space is freed, without a restart. Without it the disk
/// really fills: the store fails, every protocol refuses at once (451
/// 4.3.0, ESME_RSYSERR, 503), `/healthz` says so, reads go on (those sled
/// can no longer make answer 503) and SIGTERM still stops the server.
/// After the space is freed and the server restarted, everything
/// acknowledged in both halves is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_at_once_and_loses_nothing_acknowledged() {
    // Where the load is when the disk fills differs run to run: the slow
    // run repeats it (one shutdown in five or so hung before its fixes).
    for round in 1..=count("full-disk rounds", 1, 10) {
        let dir = tempfile::tempdir().expect("temp dir");
        let Some(disk) = own_disk("full disk", dir.path(), 1) else {
            return;
        };
        full_disk_round(dir.path(), &disk, round).await;
    }
}

async fn full_disk_round(dir: &Path, disk: &Disk, round: usize) {
    const MIB: u64 = 1 << 20;
    let data = disk.mount.join("data");
    let mut server = crash_server_with(dir, &data, "min_free_mib = 32\n").await;
    let acks: Acks = Arc::default();
    let started = Instant::now();

    // Half one: kept free space.
    let ballast = fill_disk(disk, 56 * MIB);
    let load = MixedLoad::start(&server, 1, &acks);
    let (code, text) = mail_until_refused(server.smtp.expect("smtp"), &acks, "kept free space").await;
    load.end(1).await;
    assert_eq!(
        (code, text.as_str()),
        (452, "452 4.3.1 Insufficient system storage, try again later")
    );
    let refused = try_each_protocol(&server, &acks).await;
    assert_eq!(refused, (452, 0x14, (507, "insufficient_storage".to_string())));
    let api = server.api();
    let (s, health) = api.get("/healthz").await;
    assert_eq!((s, health["status"].as_str()), (200, Some("low_on_space")), "{health}");
    let metrics = api.metrics().await;
    assert_eq!(metrics.value("otpgate_store_refusing{reason=\"low_space\"}"), 1.0);
    assert!(
        free_bytes(&disk.mount) > 8 * MIB,
        "the margin held: the disk never filled"
    );
    check_reads(&api, &acks, "while refusing for space").await;
    free_disk(disk, &ballast);
    let taken = try_each_protocol(&server, &acks).await;
    assert_eq!(
        taken,
        (250, 0, (201, String::new())),
        "taken again once space was freed"
    );
    let (s, health) = api.get("/healthz").await;
    assert_eq!((s, health["status"].as_str()), (200, Some("ok")), "{health}");

    // Half two: no free space kept, the disk fills.
    server.terminate().await;
    write_crash_config(dir, "min_free_mib = 0\n");
    let ballast = fill_disk(disk, 24 * MIB);
    server.restart().await;
    let load = MixedLoad::start(&server, 2, &acks);
    let (code, text) = mail_until_refused(server.smtp.expect("smtp"), &acks, "a full disk").await;
    load.end(2).await;
    assert_eq!(
        (code, text.as_str()),
        (
            451,
            "451 4.3.0 Local error in processing: storage failed, try again later"
        )
    );
    let refused = try_each_protocol(&server, &acks).await;
    assert_eq!(refused, (451, 0x08, (503, "storage_failed".to_string())));
    let api = server.api();
    let (s, health) = api.get("/healthz").await;
    assert_eq!((s, health["status"].as_str()), (503, Some("failed")), "{health}");
    check_reads(&api, &acks, "after the store failed").await;
    // Before sled was patched, its flush at shutdown could wait for ever
    // for a buffer a failed blob write had left claimed.
    server.terminate().await;
    free_disk(disk, &ballast);
    server.restart().await;
    check_round(&server, &acks, 2, "full disk: restarted with space freed").await;
    end_crash_test(server, &acks, &format!("full disk round {round}"), started).await;
}

/// The failing-disk shim (`tests/common/failing_disk.c`) built with the
/// machine's C compiler into `dir`, or `None` after saying why it cannot
/// be (`OTPGATE_POWER_CUT=1` makes that a failure, as for the loop-device
/// tests).
fn failing_disk_shim(dir: &Path) -> Option<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/failing_disk.c");
    let shim = dir.join("failing_disk.so");
    let built = run(
        "cc",
        &["-shared", "-fPIC", "-O2", "-o", shown(&shim), shown(&source), "-ldl"],
    );
    match built {
        Ok(_) => Some(shim),
        Err(why) if std::env::var("OTPGATE_POWER_CUT").is_ok_and(|v| v == "1") => {
            panic!("failing disk: the shim does not build: {why}")
        }
        Err(why) => {
            eprintln!("failing disk: SKIPPED, the shim does not build with `cc` ({why})");
            None
        }
    }
}

/// The disk starts failing under the mixed load: from a random moment every
/// write to a file and every sync answers EIO (a preloaded shim, as a dying
/// disk or a lost network volume would). The server must notice at its
/// next write, refuse new work at once with each protocol's answer for a
/// failed store (451 4.3.0, ESME_RSYSERR, 503 `storage_failed`), say so on
/// `/healthz`, and go on refusing once the disk answers again: after a
/// failed `fsync` the kernel may have dropped the pages it could not
/// write, so a later successful one proves nothing about them
/// (PostgreSQL's "fsyncgate", 2018). A server that retried and went on
/// would acknowledge work resting on writes that are gone. SIGTERM must
/// still stop it, and after a restart on the healed disk everything
/// acknowledged before the failure is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_stops_acknowledgements_for_good_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(shim) = failing_disk_shim(dir.path()) else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(crash_seed("failing disk", "OTPGATE_CRASH_SEED"));
    let failing = dir.path().join("the-disk-is-failing");
    // The slow run also lets the load go on for several checkpoints (one
    // every 2 s), so the disk fails during sled's writes and syncs too.
    let most = if slow() { 3_000 } else { 300 };
    for round in 1..=count("failing-disk rounds", 2, 10) as u32 {
        let data = dir.path().join(format!("data-{round}"));
        let config = write_crash_config(dir.path(), "");
        let mut server = ChildServer::start(
            &data,
            &dir.path().join("server.log"),
            &[
                "--virtual-clock",
                "--seed",
                "7",
                "--config",
                &config.display().to_string(),
            ],
            &[
                ("LD_PRELOAD", &shim.display().to_string()),
                ("OTPGATE_FAILING_DISK", &failing.display().to_string()),
            ],
        )
        .await;
        set_up_crash_world(&server.api()).await;
        let acks: Acks = Arc::default();
        let started = Instant::now();
        let load = MixedLoad::start(&server, round, &acks);
        let more = rng.gen_range(1..most);
        MixedLoad::until(&acks, round, more).await;
        std::fs::write(&failing, b"").expect("the disk starts failing");
        let before = acks.len();
        load.end(round).await;
        let what = format!("failing disk round {round} (after {more} acknowledgements)");
        // The load's last writes may have met the failing disk already;
        // if not, an OTP issued now does (its write cannot be synced).
        let api = server.api();
        let (member, _, _) = CRASH_SMS_MEMBERS[0];
        let (s, b) = api
            .post("/v1/otps", json!({"member_id": member, "purpose": "probe"}))
            .await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (503, Some("storage_failed")),
            "{what}: an OTP issued on a failing disk: {b}"
        );
        let (s, health) = api.get("/healthz").await;
        assert_eq!(
            (s, health["status"].as_str()),
            (503, Some("failed")),
            "{what}: {health}"
        );
        let refused = (451, 0x08, (503, "storage_failed".to_string()));
        let after = acks.len();
        assert_eq!(
            try_each_protocol(&server, &acks).await,
            refused,
            "{what}: while failing"
        );

        std::fs::remove_file(&failing).expect("the disk answers again");
        assert_eq!(
            try_each_protocol(&server, &acks).await,
            refused,
            "{what}: once the disk answered again"
        );
        assert_eq!(acks.len(), after, "{what}: acknowledged on a store that had failed");
        check_reads(&api, &acks, &format!("{what}, after the store failed")).await;
        server.terminate().await;
        server.restart().await;
        let (s, health) = server.api().get("/healthz").await;
        assert_eq!((s, health["status"].as_str()), (200, Some("ok")), "{what}: {health}");
        check_round(
            &server,
            &acks,
            round,
            &format!("{what}: {before} acknowledged when it failed, {after} in all; restarted on the healed disk"),
        )
        .await;
        let log = server.log_text();
        let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "{what}: the server panicked:\n{}", panics.join("\n"));
        end_crash_test(server, &acks, &what, started).await;
    }
}

/// Reads answer while writes are refused: the last mail and OTP taken.
/// Once the store failed, a read sled can no longer make (sled stops
/// reading too once its own write failed) may be refused, but as a
/// storage failure, never an internal error.
async fn check_reads(api: &Api, acks: &Acks, what: &str) {
    let failed = what.contains("failed");
    let answered = |s: u16, b: &Value| s == 200 || (failed && s == 503 && b["error"]["code"] == "storage_failed");
    let snapshot = acks.snapshot();
    let mail = snapshot.iter().rev().find_map(|a| match a {
        Ack::Mail { id, .. } => Some(id),
        _ => None,
    });
    let (s, b) = api.get(&format!("/v1/mail/{}", mail.expect("a mail was taken"))).await;
    assert!(answered(s, &b), "{what}: reading a mail: {s} {b}");
    let otp = snapshot.iter().rev().find_map(|a| match a {
        Ack::Otp { id, .. } => Some(id),
        _ => None,
    });
    let (s, b) = api.get(&format!("/v1/otps/{}", otp.expect("an OTP was issued"))).await;
    assert!(answered(s, &b), "{what}: reading an OTP: {s} {b}");
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

/// A server whose send limits never refuse, and whose HTTP admission lets
/// 200 requests in at once: these tests are about the OTP core under
/// concurrency, not about the 503s past `max_in_flight` (32 per core by
/// default), which `tests/overload.rs` covers.
async fn fast_limits_server() -> TestServer {
    TestServer::start_with(|c| {
        c.otp.cooldown_seconds = 0;
        c.otp.sends_per_window = 1_000_000;
        c.http_admission.max_in_flight = 1024;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_simultaneous_right_codes_give_exactly_one_success() {
    let trials = count("right-code trials", 20, 1000);
    let server = fast_limits_server().await;
    let started = Instant::now();
    for trial in 0..trials {
        // A fresh member every 25 trials: a verify reads all of the
        // member's OTPs (to name a superseded code), and a member with a
        // thousand of them is not what this test is about.
        let member = format!("RACE-{}", trial / 25);
        let address = format!("race-{}@example.com", trial / 25);
        if trial % 25 == 0 {
            email_member(&server, &member, &address).await;
        }
        let (id, code) = issue_and_read(&server, &member, &address).await;
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
    // Every code issued so far: a wrong code that matched one of the
    // member's earlier OTPs (which each new one supersedes) would rightly
    // be answered `superseded`, not `invalid_code`.
    let mut issued = BTreeSet::new();
    for trial in 0..trials {
        let (id, code) = issue_and_read(&server, "GUESS", address).await;
        let right: u32 = code.parse().expect("six digits");
        issued.insert(right);
        let requests = (1..)
            .map(|k| (right + k) % 1_000_000)
            .filter(|wrong| !issued.contains(wrong))
            .take(200)
            .map(|wrong| {
                let wrong = format!("{wrong:06}");
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
        // An SMS ends with the SMSC's receipt; an email with the relay's 250.
        let done = all.iter().all(|m| {
            let state = m["state"].as_str().unwrap_or_default();
            FINAL.contains(&state) || (m["channel"] == "email" && state == "submitted")
        });
        done.then_some(all)
    })
    .await
    .expect("every core SMS reaches a final state through receipts, every email the relay");
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
fn fuzz_corpus_mail_view() {
    run_target("mail_view", fuzzing::mail_view, fuzz_mutations() * 10);
}

#[test]
fn fuzz_corpus_json_body() {
    run_target("json_body", fuzzing::json_body, fuzz_mutations());
}

// ===========================================================================
// Bad input at the edges.

/// Writes `input` (half-closing after it when `close` is set) and reads what
/// the server says until it closes or `wait` passes; `None` on the timeout.
async fn exchange(addr: SocketAddr, input: &[u8], close: bool, wait: Duration) -> Option<Vec<u8>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&input).await;
        if close {
            let _ = write.shutdown().await;
        }
        // Held open until the reader is done, so no close is implied.
        write
    });
    let mut answer = Vec::new();
    let reading = async {
        let mut chunk = [0u8; 8192];
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let finished = tokio::time::timeout(wait, reading).await.is_ok();
    writer.abort();
    finished.then_some(answer)
}

/// The status of an HTTP answer, or 0 when the server closed without one.
fn http_status(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of an HTTP answer.
fn http_json(answer: &[u8]) -> Value {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |a| a + 4);
    serde_json::from_slice(&answer[at..]).unwrap_or(Value::Null)
}

/// `(raw request, expected status, expected error code or "")`: the server
/// must answer exactly that, then close (every request says `close`).
async fn check_http(addr: SocketAddr, what: &str, request: &[u8], close: bool, status: u16, code: &str) {
    let answer = exchange(addr, request, close, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("{what}: no answer and no close within 20 s"));
    let got = http_status(&answer);
    let body = http_json(&answer);
    assert_eq!(
        (got, common::error_code(&body)),
        (status, code),
        "{what}: {}",
        String::from_utf8_lossy(&answer[..answer.len().min(400)])
    );
}

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n{headers}\r\n").into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_edge_answers_truncated_oversized_and_malformed_requests_with_4xx() {
    let server = TestServer::start().await;
    let a = server.http;
    let json_len = |b: &[u8]| format!("content-type: application/json\r\ncontent-length: {}\r\n", b.len());
    // Truncated: the body ends before its content-length (the client
    // half-closes): a bad request, not an oversized one.
    check_http(
        a,
        "truncated body",
        &post("/v1/members", "content-length: 100\r\n", br#"{"id":"T"#),
        true,
        400,
        "malformed_request",
    )
    .await;
    // Truncated: the head never ends; the server just closes.
    let answer = exchange(
        a,
        b"POST /v1/members HTTP/1.1\r\nhost: x\r\n",
        true,
        Duration::from_secs(20),
    )
    .await
    .expect("a truncated head is closed");
    assert!(matches!(http_status(&answer), 0 | 400), "{answer:?}");
    // Oversized: a body past 1 MiB, announced and sent; a head past hyper's buffer.
    let big = vec![b'7'; 2 * 1024 * 1024];
    check_http(
        a,
        "oversized body",
        &post("/v1/members", &json_len(&big), &big),
        false,
        413,
        "body_too_large",
    )
    .await;
    let mut huge_head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    huge_head.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(a, &huge_head, false, Duration::from_secs(20))
        .await
        .expect("answered");
    assert!(
        matches!(http_status(&answer), 400 | 413 | 431),
        "oversized head: {}",
        http_status(&answer)
    );
    // Malformed: the request line, the chunking, the JSON, the fields.
    check_http(a, "garbage request line", b"HELLO THERE\r\n\r\n", false, 400, "").await;
    check_http(
        a,
        "bad chunk size",
        &post(
            "/v1/members",
            "transfer-encoding: chunked\r\n",
            b"zz\r\nhello\r\n0\r\n\r\n",
        ),
        false,
        400,
        "malformed_request",
    )
    .await;
    let cases: [(&str, &[u8], u16, &str); 6] = [
        ("broken JSON", br#"{"id": "#, 400, "malformed_json"),
        ("not UTF-8", b"{\"id\": \"\xff\xfe\"}", 400, "malformed_json"),
        ("nested too deep", &[b'['; 100_000], 400, "malformed_json"),
        ("wrong type", br#"{"id": 42}"#, 422, "invalid_request"),
        ("array body", b"[1, 2, 3]", 422, "invalid_request"),
        (
            "NUL in a field",
            br#"{"id": "a\u0000b", "locale": "ja", "residence": "JP"}"#,
            422,
            "invalid_request",
        ),
    ];
    for (what, body, status, code) in cases {
        check_http(
            a,
            what,
            &post("/v1/members", &json_len(body), body),
            false,
            status,
            code,
        )
        .await;
    }
    let body = br#"{"seconds": 1e308}"#;
    check_http(
        a,
        "a huge advance",
        &post("/v1/sim/clock/advance", &json_len(body), body),
        false,
        422,
        "invalid_request",
    )
    .await;
    // The others are still served.
    let (s, b) = server.get("/healthz").await;
    assert_eq!(s, 200, "{b}");
    email_member(&server, "EDGE", "edge@example.com").await;
    let (id, code) = issue_and_read(&server, "EDGE", "edge@example.com").await;
    let (s, b) = server
        .post(&format!("/v1/otps/{id}/verify"), json!({ "code": code }))
        .await;
    assert_eq!(s, 200, "{b}");
    server.stop().await;
}

/// One PDU's header off the stream: (command_id, command_status, sequence).
async fn read_pdu(stream: &mut TcpStream) -> Option<(u32, u32, u32)> {
    let mut head = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let mut body = vec![0u8; (word(0) as usize).saturating_sub(16)];
    stream.read_exact(&mut body).await.ok()?;
    Some((word(4), word(8), word(12)))
}

/// Sends `pdu` and expects the answer `(command_id, status)` for `seq`.
async fn check_smpp(stream: &mut TcpStream, what: &str, pdu: &[u8], expect: (u32, u32)) {
    stream.write_all(pdu).await.expect("write");
    let (id, status, _) = read_pdu(stream).await.unwrap_or_else(|| panic!("{what}: no answer"));
    assert_eq!((id, status), expect, "{what}: got 0x{id:08X} status 0x{status:08X}");
}

/// Whether the server closes the connection within `wait`.
async fn closes_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut sink = [0u8; 1024];
    let reading = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(wait, reading).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smpp_edge_answers_truncated_oversized_and_malformed_pdus_and_keeps_serving() {
    let server = TestServer::start().await;
    server.handset("09011110001", json!({"carrier": "docomo"})).await;
    let submit = |seq: u32, body: &[u8]| fuzzing::smpp_pdu(0x0000_0004, seq, body);
    let good_body = b"\0\x00\x000354600124\0\x01\x01819011110001\0\x00\x00\x00\0\0\x01\x00\x00\x00\x05hello".to_vec();
    let mut s = TcpStream::connect(server.smpp).await.expect("connect");
    // Before a bind, submit_sm is out of place.
    check_smpp(
        &mut s,
        "submit before bind",
        &submit(1, &good_body),
        (0x8000_0004, 0x04),
    )
    .await;
    check_smpp(&mut s, "bind", &fuzzing::smpp_bind(), (0x8000_0009, 0)).await;
    // Malformed bodies: the operation's error response; an unknown command:
    // generic_nack; never silence.
    let mut bad = TcpStream::connect(server.smpp).await.expect("connect");
    check_smpp(&mut bad, "bind", &fuzzing::smpp_bind(), (0x8000_0009, 0)).await;
    for (what, pdu, answer_id) in [
        ("a body cut short", submit(2, b"\0\x00"), 0x8000_0004),
        ("no NUL in source_addr", submit(3, &[b'9'; 40]), 0x8000_0004),
        (
            "sm_length past the end",
            submit(
                4,
                b"\0\x00\x00a\0\x01\x01819011110001\0\x00\x00\x00\0\0\x01\x00\x00\x00\xffhi",
            ),
            0x8000_0004,
        ),
        (
            "an unknown command",
            fuzzing::smpp_pdu(0x0000_0123, 5, b"xyz"),
            0x8000_0000,
        ),
    ] {
        bad.write_all(&pdu).await.expect("write");
        let (id, status, _) = read_pdu(&mut bad).await.unwrap_or_else(|| panic!("{what}: no answer"));
        assert!(
            status != 0 && id == answer_id,
            "{what}: 0x{id:08X} status 0x{status:08X}"
        );
    }
    let mut bad_dest = good_body.clone();
    bad_dest.splice(16..29, b"not-a-phone\0".iter().copied());
    check_smpp(
        &mut bad,
        "an impossible destination",
        &submit(6, &bad_dest),
        (0x8000_0004, 0x0B),
    )
    .await;
    // The connection still works after all that.
    check_smpp(
        &mut bad,
        "enquire_link",
        &fuzzing::smpp_pdu(0x15, 7, b""),
        (0x8000_0015, 0),
    )
    .await;
    check_smpp(&mut bad, "a good submit", &submit(8, &good_body), (0x8000_0004, 0)).await;
    // Oversized: a command_length no PDU has ends the connection after a nack.
    let mut huge = fuzzing::smpp_pdu(0x0000_0004, 9, b"");
    huge[..4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    check_smpp(&mut bad, "command_length 2 GiB", &huge, (0x8000_0000, 0x02)).await;
    assert!(
        closes_within(&mut bad, Duration::from_secs(10)).await,
        "closed after a bad length"
    );
    // Truncated: half a PDU, then the ESME leaves.
    let mut cut = TcpStream::connect(server.smpp).await.expect("connect");
    check_smpp(&mut cut, "bind", &fuzzing::smpp_bind(), (0x8000_0009, 0)).await;
    let whole = submit(10, &good_body);
    cut.write_all(&whole[..whole.len() / 2]).await.expect("write");
    cut.shutdown().await.expect("half-close");
    assert!(
        closes_within(&mut cut, Duration::from_secs(10)).await,
        "a truncated PDU's session ends"
    );
    // The first connection and a new ESME are still served.
    check_smpp(&mut s, "a good submit", &submit(11, &good_body), (0x8000_0004, 0)).await;
    let esme = Esme::bind(server.smpp, Bind::Transmitter).await;
    esme.send(&esme::sms("09011110001", "still serving")).await;
    esme.unbind().await;
    server.stop().await;
}

/// Reads SMTP replies until one whose code is final (no `-` continuation).
async fn smtp_reply(stream: &mut BufReader<TcpStream>) -> Option<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read_line(&mut line))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return (!all.is_empty()).then_some(all);
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Some(all);
        }
    }
}

async fn smtp_says(stream: &mut BufReader<TcpStream>, what: &str, send: &[u8], code: &str) -> String {
    stream.get_mut().write_all(send).await.expect("write");
    let reply = smtp_reply(stream).await.unwrap_or_else(|| panic!("{what}: no reply"));
    assert!(reply.starts_with(code), "{what}: expected {code}, got {reply:?}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_edge_answers_truncated_oversized_and_malformed_input_and_keeps_serving() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 64 * 1024).await;
    let connect = || async {
        let mut s = BufReader::new(TcpStream::connect(server.smtp).await.expect("connect"));
        let greeting = smtp_reply(&mut s).await.expect("greeting");
        assert!(greeting.starts_with("220 "), "{greeting}");
        s
    };
    let mut s = connect().await;
    smtp_says(&mut s, "EHLO", b"EHLO edge.example\r\n", "250").await;
    // Oversized: a command line past the limit, SIZE past the maximum, DATA past it.
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 20_000));
    long.extend_from_slice(b"\r\n");
    smtp_says(&mut s, "an overlong line", &long, "500 5.5.2").await;
    smtp_says(&mut s, "still talking", b"NOOP\r\n", "250").await;
    smtp_says(
        &mut s,
        "SIZE too big",
        b"MAIL FROM:<a@example.com> SIZE=999999999999\r\n",
        "552",
    )
    .await;
    smtp_says(&mut s, "MAIL", b"MAIL FROM:<a@example.com>\r\n", "250").await;
    smtp_says(&mut s, "RCPT", b"RCPT TO:<big@example.com>\r\n", "250").await;
    smtp_says(&mut s, "DATA", b"DATA\r\n", "354").await;
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..2000 {
        body.extend_from_slice(&[b'y'; 78]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    smtp_says(&mut s, "a message past SIZE", &body, "552").await;
    // Malformed: bad paths, bad commands, binary junk.
    smtp_says(&mut s, "a broken path", b"MAIL FROM:<<<a@\r\n", "5").await;
    smtp_says(&mut s, "an unknown command", b"FROB\r\n", "500").await;
    smtp_says(&mut s, "binary junk", b"\0\x01\x02\xff\xfe\r\n", "500").await;
    smtp_says(&mut s, "RCPT before MAIL", b"RCPT TO:<b@example.com>\r\n", "503").await;
    smtp_says(&mut s, "DATA before MAIL", b"DATA\r\n", "503").await;
    // Too many mistakes: the server gives up with 421 and closes.
    let mut gave_up = None;
    for _ in 0..20 {
        s.get_mut().write_all(b"FROB\r\n").await.expect("write");
        match smtp_reply(&mut s).await {
            Some(r) if r.starts_with("421") => {
                gave_up = Some(r);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(gave_up.is_some(), "no 421 after repeated errors");
    // Truncated: a command without its line end, then the client leaves.
    let answer = exchange(
        server.smtp,
        b"EHLO cut.example\r\nMAIL FROM:<a@exa",
        true,
        Duration::from_secs(20),
    )
    .await
    .expect("a truncated command's session ends");
    assert!(String::from_utf8_lossy(&answer).starts_with("220 "), "{answer:?}");
    // Truncated DATA: the client leaves mid-message; nothing is stored.
    let answer = exchange(
        server.smtp,
        b"EHLO cut.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<cut@example.com>\r\nDATA\r\nSubject: cut\r\n\r\nhalf",
        true,
        Duration::from_secs(20),
    )
    .await
    .expect("a truncated DATA's session ends");
    assert!(!String::from_utf8_lossy(&answer).contains("queued as"), "{answer:?}");
    let (_, list) = server.get("/v1/mail?q=cut%40example.com").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    // Others are served.
    let mut ok = common::smtp_client::RawSmtp::connect(server.smtp).await;
    ok.expect("EHLO fine.example", 250).await;
    let t = ok
        .transaction(
            "a@example.com",
            &["fine@example.com"],
            &common::smtp_client::plain_message("a@example.com", "fine@example.com", "fine", "ok"),
        )
        .await;
    assert!(t.queued_id().is_some(), "{t:?}");
    ok.quit().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_on_every_edge_time_out_and_do_not_block_the_others() {
    let server = TestServer::start().await;
    let stall = |addr: SocketAddr, bytes: &'static [u8]| async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        s
    };
    let mut bound_half = stall(server.smpp, b"").await;
    bound_half.write_all(&fuzzing::smpp_bind()).await.expect("bind");
    let (id, status, _) = read_pdu(&mut bound_half).await.expect("bind_resp");
    assert_eq!((id, status), (0x8000_0009, 0));
    bound_half
        .write_all(&fuzzing::smpp_pdu(4, 2, b"\0\0")[..10])
        .await
        .expect("half");
    let mut stalled = [
        ("HTTP, nothing sent", stall(server.http, b"").await),
        (
            "HTTP, half a head",
            stall(server.http, b"POST /v1/otps HTTP/1.1\r\nhost: x\r\n").await,
        ),
        (
            "HTTP, half a body",
            stall(
                server.http,
                b"POST /v1/otps HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"member",
            )
            .await,
        ),
        ("SMPP, nothing sent", stall(server.smpp, b"").await),
        (
            "SMPP, half a header",
            stall(server.smpp, b"\x00\x00\x00\x2f\x00\x00").await,
        ),
        ("SMPP, bound, half a PDU", bound_half),
        ("SMTP, after the greeting", stall(server.smtp, b"").await),
        (
            "SMTP, inside DATA",
            stall(
                server.smtp,
                b"EHLO s.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<s@example.com>\r\nDATA\r\nhalf",
            )
            .await,
        ),
    ];
    // While they stall, everyone else is served on every edge.
    let (s, b) = server.get("/healthz").await;
    assert_eq!(s, 200, "{b}");
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    esme.unbind().await;
    let mut smtp = common::smtp_client::RawSmtp::connect(server.smtp).await;
    smtp.expect("EHLO other.example", 250).await;
    smtp.quit().await;
    if !slow() {
        eprintln!("stalled clients: the timeouts themselves (up to 5 min) run under OTPGATE_SLOW=1");
        server.stop().await;
        return;
    }
    // Each stalled connection ends with its protocol's timeout: SMTP's
    // 5-minute idle limit (RFC 5321 4.5.3.2) is the longest.
    let started = Instant::now();
    let waits = stalled.iter_mut().map(|(what, stream)| async move {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        let reading = async {
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(Duration::from_secs(330), reading).await.is_ok();
        (
            *what,
            closed,
            String::from_utf8_lossy(&seen).into_owned(),
            started.elapsed(),
        )
    });
    let results = futures::future::join_all(waits).await;
    let mut failures = Vec::new();
    for (what, closed, seen, after) in results {
        eprintln!("{what}: closed={closed} after {after:?}: {:?}", seen.lines().last());
        if !closed {
            failures.push(format!("{what}: still open after 330 s"));
        } else if what.starts_with("SMTP") && !seen.contains("421 4.4.2") {
            failures.push(format!("{what}: closed without 421 4.4.2: {seen:?}"));
        } else if what == "HTTP, half a body" && !seen.starts_with("HTTP/1.1 408") {
            failures.push(format!("{what}: closed without 408: {seen:?}"));
        } else if what == "SMPP, bound, half a PDU" && !seen.contains("\0\0\0\u{10}\0\0\0\u{6}") {
            failures.push(format!("{what}: closed without an unbind: {seen:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.stop().await;
}

// ===========================================================================
// Storage under contention.

/// Found by the stable fuzz loop (SMTP DATA and SMPP submits to one server
/// at once): sled 0.34 holds a process-wide read lock while a flush waits
/// for its log to be written, and a transaction queued for the write lock
/// then stops the log writer from taking the read lock. Every tokio worker
/// ended up blocked and the server hung. Mixed transactions, flushes and
/// id generation on shared trees must all finish.
#[test]
fn store_transactions_and_flushes_under_contention_do_not_deadlock() {
    let rounds = count("store contention rounds", 200, 2000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = otpgate::store::Store::open(dir.path()).expect("store");
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let counter = progress.clone();
    // The load runs on a runtime of its own: if it deadlocks, its workers
    // are stuck and only a thread outside it can still notice.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let a = store.tree("a").expect("tree");
            let b = store.tree("b").expect("tree");
            // Large values fill sled's IO buffers, whose writes then go to
            // its thread pool, where the waiting flushes sit.
            let filler = "x".repeat(16 * 1024);
            let mut tasks = Vec::new();
            for worker in 0..16 {
                let (store, a, b, filler, counter) =
                    (store.clone(), a.clone(), b.clone(), filler.clone(), counter.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..rounds {
                        let key = format!("{worker}-{i}");
                        if worker % 2 == 0 {
                            let mut batch = store.batch();
                            batch.put(&a, &key, &filler).expect("put");
                            batch.put(&b, &key, &i).expect("put");
                            store.apply(batch).expect("apply");
                        } else {
                            a.put(&key, &filler).expect("put");
                            store.next_id().expect("id");
                        }
                        store.flush().await.expect("flush");
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for task in tasks {
                task.await.expect("worker");
            }
        });
        let _ = done_tx.send(());
    });
    // Done, or stuck: no operation finished for 15 s.
    let mut last = 0;
    loop {
        match done_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(()) => break,
            Err(_) => {
                let now = progress.load(Ordering::Relaxed);
                assert!(
                    now > last,
                    "transactions and flushes deadlocked after {now} of {} operations",
                    16 * rounds
                );
                last = now;
            }
        }
    }
}

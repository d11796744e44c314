//! The SMTP workload: concurrent clients, each on a kept-open connection,
//! sending small messages one after another: MAIL, RCPT and DATA, the
//! three in one write where the server advertises PIPELINING (otpgate and
//! the sink both do, as a sending MTA would use it), then the message and
//! the dot. Latency is
//! from MAIL FROM to the 250 after the dot. Closed loop by default; with a
//! `rate` it is open loop (message `i` due at `i / rate`, latency from the
//! due time).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::{due, Tally};

#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    /// How long a reply may take before the client gives up on it.
    pub reply_timeout: Duration,
}

pub struct Outcome {
    pub tally: Tally,
    pub span: Duration,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

pub async fn run(load: Load) -> Outcome {
    let start = Instant::now() + Duration::from_millis(100);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..load.connections {
        tasks.push(tokio::spawn(worker_task(load.clone(), worker, start, next.clone())));
    }
    let mut tally = Tally::default();
    let mut last = start;
    for task in tasks {
        let (t, l) = task.await.expect("an SMTP worker");
        tally.merge(t);
        last = last.max(l);
    }
    Outcome {
        tally,
        span: last.saturating_duration_since(start),
    }
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
    /// The server advertised PIPELINING.
    pipelining: bool,
}

/// A reply's code, or `None` when the connection broke or timed out.
async fn reply(conn: &mut Conn, timeout: Duration) -> Option<u16> {
    let read = async {
        loop {
            conn.line.clear();
            match conn.reader.read_until(b'\n', &mut conn.line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            // An EHLO line naming the extension.
            let keyword = conn.line.get(4..).map(|k| k.trim_ascii_end());
            conn.pipelining |= keyword.is_some_and(|k| k.eq_ignore_ascii_case(b"PIPELINING"));
            if conn.line.len() < 4 || conn.line[3] != b'-' {
                return std::str::from_utf8(conn.line.get(..3)?).ok()?.parse().ok();
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

async fn command(conn: &mut Conn, text: &[u8], timeout: Duration) -> Option<u16> {
    conn.writer.write_all(text).await.ok()?;
    reply(conn, timeout).await
}

/// Connects and greets; the banner's code when it is not 220.
async fn connect(load: &Load) -> Result<Conn, Option<u16>> {
    let stream = tokio::time::timeout(load.reply_timeout, TcpStream::connect(load.addr))
        .await
        .map_err(|_| None)?
        .map_err(|_| None)?;
    let _ = stream.set_nodelay(true);
    let (read, writer) = stream.into_split();
    let mut conn = Conn {
        reader: BufReader::new(read),
        writer,
        line: Vec::new(),
        pipelining: false,
    };
    match reply(&mut conn, load.reply_timeout).await {
        Some(220) => {}
        other => return Err(other),
    }
    match command(&mut conn, b"EHLO bench.example\r\n", load.reply_timeout).await {
        Some(250) => Ok(conn),
        other => Err(other),
    }
}

fn message(index: u64) -> Vec<u8> {
    format!(
        "From: Bench <bench@bench.example>\r\n\
         To: user{n}@example.com\r\n\
         Subject: Your one-time password\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0900\r\n\
         Message-ID: <bench-{index}@bench.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Your one-time password is 482913. It is valid for 10 minutes.\r\n\
         Do not share it with anyone.\r\n\
         .\r\n",
        n = index % 1000,
    )
    .into_bytes()
}

/// What one message's transaction came to.
enum Sent {
    Ok,
    /// 421 or 451: the server's own "not now". `clean` when it was a 451 to
    /// MAIL: no transaction is open and the connection goes on.
    Refused {
        clean: bool,
    },
    Error,
    /// No answer in time or a broken connection: the connection is gone.
    Lost,
}

fn classify(code: Option<u16>) -> Option<Sent> {
    match code {
        Some(250) | Some(354) => None,
        Some(421) | Some(451) => Some(Sent::Refused { clean: false }),
        Some(_) => Some(Sent::Error),
        None => Some(Sent::Lost),
    }
}

async fn send_one(conn: &mut Conn, index: u64, timeout: Duration) -> Sent {
    if conn.pipelining {
        return send_pipelined(conn, index, timeout).await;
    }
    let rcpt = format!("RCPT TO:<user{}@example.com>\r\n", index % 1000);
    let steps: [&[u8]; 3] = [b"MAIL FROM:<bench@bench.example>\r\n", rcpt.as_bytes(), b"DATA\r\n"];
    for (i, step) in steps.into_iter().enumerate() {
        let code = command(conn, step, timeout).await;
        match classify(code) {
            None => {}
            Some(Sent::Refused { .. }) => {
                return Sent::Refused {
                    clean: i == 0 && code == Some(451),
                }
            }
            Some(outcome) => return outcome,
        }
    }
    match command(conn, &message(index), timeout).await {
        Some(250) => Sent::Ok,
        other => classify(other).unwrap_or(Sent::Error),
    }
}

/// One message with MAIL, RCPT and DATA in one write (RFC 2920).
async fn send_pipelined(conn: &mut Conn, index: u64, timeout: Duration) -> Sent {
    let group = format!(
        "MAIL FROM:<bench@bench.example>\r\nRCPT TO:<user{}@example.com>\r\nDATA\r\n",
        index % 1000
    );
    if conn.writer.write_all(group.as_bytes()).await.is_err() {
        return Sent::Lost;
    }
    let mail = reply(conn, timeout).await;
    if mail == Some(421) {
        // The server closes after 421.
        return Sent::Refused { clean: false };
    }
    let rcpt = reply(conn, timeout).await;
    let data = reply(conn, timeout).await;
    if data == Some(354) {
        return match command(conn, &message(index), timeout).await {
            Some(250) => Sent::Ok,
            other => classify(other).unwrap_or(Sent::Error),
        };
    }
    if [rcpt, data].contains(&Some(421)) {
        return Sent::Refused { clean: false };
    }
    // A 451 to MAIL opened nothing (RCPT and DATA then got 503).
    if mail == Some(451) && data.is_some() {
        return Sent::Refused { clean: true };
    }
    [mail, rcpt, data].into_iter().find_map(classify).unwrap_or(Sent::Error)
}

/// Counts a connect that failed: refused (421 at the banner), another
/// error, or no answer. Returns when.
fn tally_connect_failure(tally: &mut Tally, code: Option<u16>, at: Instant) -> Instant {
    let now = Instant::now();
    match code.map(|c| classify(Some(c))) {
        Some(Some(Sent::Refused { .. })) => {
            tally.refused += 1;
            tally.refusal_latency.record(now - at);
        }
        Some(_) => tally.errors += 1,
        None => tally.timeouts += 1,
    }
    now
}

/// What to do with a connection after a message.
enum After {
    Keep,
    /// Send RSET; keep the connection if it answers 250.
    Reset,
    Close,
}

/// Counts one message's outcome (latency from when it was due, service
/// latency from when it was sent).
fn tally_sent(tally: &mut Tally, outcome: Sent, at: Instant, sent: Instant, now: Instant) -> After {
    match outcome {
        Sent::Ok => {
            tally.ok += 1;
            tally.latency.record(now - at);
            tally.service_latency.record(now - sent);
            After::Keep
        }
        Sent::Refused { clean } => {
            tally.refused += 1;
            tally.refusal_latency.record(now - sent);
            // A 451 to MAIL opened nothing: the next message goes on the
            // same connection, as a real client's retry would. After 421
            // the server closes; after a later 451 start clean.
            if clean {
                After::Keep
            } else {
                After::Close
            }
        }
        Sent::Error => {
            tally.errors += 1;
            After::Reset
        }
        Sent::Lost => {
            tally.timeouts += 1;
            After::Close
        }
    }
}

async fn worker_task(load: Load, worker: usize, start: Instant, next: Arc<AtomicU64>) -> (Tally, Instant) {
    let mut tally = Tally::default();
    let mut last = start;
    let end = start + load.duration;
    let mut conn: Option<Conn> = None;
    // Stagger connects a little so the listener is not hit all at once.
    tokio::time::sleep(Duration::from_millis(worker as u64)).await;
    tokio::time::sleep_until(start).await;
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let at = match load.rate {
            Some(rate) => {
                let at = due(start, rate, index);
                if at >= end {
                    break;
                }
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                at
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        if conn.is_none() {
            match connect(&load).await {
                Ok(c) => conn = Some(c),
                Err(code) => {
                    last = tally_connect_failure(&mut tally, code, at);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let sent = Instant::now();
        let outcome = send_one(c, index, load.reply_timeout).await;
        let now = Instant::now();
        last = now;
        match tally_sent(&mut tally, outcome, at, sent, now) {
            After::Keep => {}
            After::Reset => {
                if command(c, b"RSET\r\n", load.reply_timeout).await != Some(250) {
                    conn = None;
                }
            }
            After::Close => conn = None,
        }
    }
    if let Some(mut c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(1), command(&mut c, b"QUIT\r\n", load.reply_timeout)).await;
    }
    (tally, last)
}

/// Open loop with connections opened when messages fall due: message `i`
/// goes out at `i / rate` on an idle connection, or on a new one when none
/// is idle (up to `load.connections`), the way a sending MTA with a queue
/// opens more connections. So the offered rate reaches the server, which
/// must then refuse the excess itself (421 at connect past its connection
/// cap, 451 at MAIL past its message rate) rather than leave it queued in
/// the client.
pub async fn run_when_due(load: Load) -> Outcome {
    let rate = load.rate.expect("an open-loop rate");
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + load.duration;
    let idle: Arc<std::sync::Mutex<Vec<Conn>>> = Arc::default();
    let open = Arc::new(tokio::sync::Semaphore::new(load.connections));
    // Told when a connection goes back to `idle` or closes.
    let freed = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0.. {
        let at = due(start, rate, index);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        // An idle connection, else room for a new one, else wait for
        // either (the wait counts as late).
        let (reused, permit) = loop {
            let returned = freed.notified();
            if let Some(conn) = idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                break (Some(conn), None);
            }
            if let Ok(permit) = open.clone().try_acquire_owned() {
                break (None, Some(permit));
            }
            returned.await;
        };
        let (load, idle, open, freed) = (load.clone(), idle.clone(), open.clone(), freed.clone());
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut conn = match reused {
                Some(conn) => conn,
                None => match connect(&load).await {
                    Ok(conn) => {
                        // The permit now belongs to the connection.
                        if let Some(p) = permit {
                            p.forget();
                        }
                        conn
                    }
                    Err(code) => {
                        let now = tally_connect_failure(&mut tally, code, at);
                        drop(permit);
                        freed.notify_one();
                        return (tally, now);
                    }
                },
            };
            let sent = Instant::now();
            let outcome = send_one(&mut conn, index, load.reply_timeout).await;
            let now = Instant::now();
            let keep = match tally_sent(&mut tally, outcome, at, sent, now) {
                After::Keep => true,
                After::Reset => command(&mut conn, b"RSET\r\n", load.reply_timeout).await == Some(250),
                After::Close => false,
            };
            if keep {
                idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            } else {
                open.add_permits(1);
            }
            freed.notify_one();
            (tally, now)
        });
    }
    let mut tally = Tally::default();
    let mut last = start;
    while let Some(done) = tasks.join_next().await {
        let (t, l) = done.expect("an SMTP sender");
        tally.merge(t);
        last = last.max(l);
    }
    for mut conn in idle.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        tokio::spawn(async move {
            let _ = conn.writer.write_all(b"QUIT\r\n").await;
        });
    }
    Outcome {
        tally,
        span: last.saturating_duration_since(start),
    }
}

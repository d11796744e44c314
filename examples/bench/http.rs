//! A small HTTP/1.1 load client in the manner of wrk: raw keep-alive
//! connections, pre-formatted requests, responses read by Content-Length.
//! It stays out of the way on a 2-core machine, and it is the same client
//! against otpgate and the hyper hello-world.
//!
//! Closed loop by default (each connection sends its next request when the
//! previous one is answered); with a `rate`, open loop: request `i` is due
//! at `i / rate` and its latency counts from then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stats::Tally;

/// One connection.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: BytesMut,
}

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub fn request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    match body {
        Some(body) => format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: bench\r\n\r\n"),
    }
    .into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Sends one request and reads its answer; `None` when the connection
    /// broke or the answer did not come within `timeout` (the connection is
    /// then dropped).
    pub async fn call(&mut self, req: &[u8], timeout: Duration) -> Option<Answer> {
        let answer = tokio::time::timeout(timeout, self.exchange(req)).await.ok().flatten();
        if answer.is_none() {
            self.stream = None;
            self.buf.clear();
        }
        answer
    }

    /// Opens the connection unless it is open; a failure is left to the
    /// next call, which tries again.
    pub async fn connect(&mut self) {
        if self.stream.is_none() {
            if let Ok(stream) = TcpStream::connect(self.addr).await {
                let _ = stream.set_nodelay(true);
                self.stream = Some(stream);
                self.buf.clear();
            }
        }
    }

    async fn exchange(&mut self, req: &[u8]) -> Option<Answer> {
        self.connect().await;
        let stream = self.stream.as_mut()?;
        stream.write_all(req).await.ok()?;
        // Headers.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).ok()?;
        let status: u16 = head.get(9..12)?.parse().ok()?;
        let mut length = 0usize;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                close = true;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // The servers measured here always send Content-Length.
                return None;
            }
        }
        while self.buf.len() < head_end + length {
            if stream.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.advance(head_end + length);
        if close {
            self.stream = None;
        }
        Some(Answer { status, body })
    }

    /// A JSON call for the setup phases; panics on a broken connection.
    pub async fn json(&mut self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        let req = request(method, path, body.as_deref());
        let answer = self
            .call(&req, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        (answer.status, answer.json())
    }
}

/// Makes request `i`, or `None` when there are no more.
pub type Requests = Arc<dyn Fn(u64) -> Option<Vec<u8>> + Send + Sync>;

#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub requests: Requests,
    /// Keep each 2xx answer's body, by request index.
    pub keep_bodies: bool,
    /// Open loop only: when a request falls due and no connection is free,
    /// open another, up to this many in all (as many independent clients
    /// would), instead of holding the request back until one is free.
    pub grow_to: Option<usize>,
}

pub struct Outcome {
    pub tally: Tally,
    pub span: Duration,
    pub bodies: Vec<(u64, Vec<u8>)>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.tally.ok as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

pub async fn run(load: Load) -> Outcome {
    // Connected before the clock starts, as wrk does: otherwise the first
    // request on each connection also waits for its handshake.
    let mut conns = Vec::new();
    for _ in 0..load.connections {
        let mut conn = Conn::new(load.addr);
        conn.connect().await;
        conns.push(conn);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let free = Arc::new(AtomicUsize::new(0));
    // Asked for one more connection by the pacer.
    let (grow, mut grown) = mpsc::unbounded_channel::<()>();
    let growth = load.grow_to.map(|most| Growth {
        free: free.clone(),
        grow,
        room: most.saturating_sub(load.connections),
    });
    let next = match load.rate {
        Some(rate) => Next::Paced(Arc::new(tokio::sync::Mutex::new(pace(
            start,
            rate,
            load.duration,
            growth,
        )))),
        None => Next::Counter(Arc::new(AtomicU64::new(0))),
    };
    let spawn = |conn: Conn, opened_by_pacer: bool| {
        tokio::spawn(worker(
            conn,
            load.clone(),
            start,
            next.clone(),
            free.clone(),
            opened_by_pacer,
        ))
    };
    let mut tasks: Vec<_> = conns.into_iter().map(|conn| spawn(conn, false)).collect();
    // Without growth the sender is gone already and this ends at once.
    while let Some(()) = grown.recv().await {
        tasks.push(spawn(Conn::new(load.addr), true));
    }
    let mut tally = Tally::default();
    let mut bodies = Vec::new();
    let mut last = start;
    for task in tasks {
        let (t, b, l) = task.await.expect("an HTTP worker");
        tally.merge(t);
        bodies.extend(b);
        last = last.max(l);
    }
    bodies.sort_unstable_by_key(|(i, _)| *i);
    Outcome {
        tally,
        span: last.saturating_duration_since(start),
        bodies,
    }
}

/// How the pacer opens connections when none is free.
struct Growth {
    /// Workers waiting for a request (or about to).
    free: Arc<AtomicUsize>,
    grow: mpsc::UnboundedSender<()>,
    /// How many more may be opened.
    room: usize,
}

/// Where a worker takes its next request from.
#[derive(Clone)]
enum Next {
    /// Closed loop: the next index, at once.
    Counter(Arc<AtomicU64>),
    /// Open loop: indexes released by [`pace`] when due, with their due time.
    Paced(Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>),
}

/// Releases request `i` at `i / rate` from `start` until `duration` ends
/// or nobody takes them any more. A thread that sleeps to each due time
/// (the kernel's high-resolution timers) rather than tokio's timer, which
/// rounds every deadline up to its next millisecond tick: with it, each
/// request went out up to 1 ms after its due time, a lag of the client's
/// own counted in every latency, and requests left in bursts, one per tick.
///
/// With `growth`, a request that falls due while no connection is free
/// first asks for a new one (while there is room).
fn pace(
    start: Instant,
    rate: f64,
    duration: Duration,
    mut growth: Option<Growth>,
) -> mpsc::UnboundedReceiver<(u64, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (start, end) = (start.into_std(), start.into_std() + duration);
    std::thread::spawn(move || {
        for index in 0.. {
            let at = start + Duration::from_secs_f64(index as f64 / rate);
            if at >= end {
                break;
            }
            let now = std::time::Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if let Some(g) = growth.as_mut() {
                if g.room > 0 && g.free.load(Ordering::SeqCst) == 0 && g.grow.send(()).is_ok() {
                    g.room -= 1;
                    // Counted free until it takes a request, so one busy
                    // moment does not open a connection per request.
                    g.free.fetch_add(1, Ordering::SeqCst);
                }
            }
            if tx.send((index, Instant::from_std(at))).is_err() {
                break;
            }
        }
    });
    rx
}

async fn worker(
    mut conn: Conn,
    load: Load,
    start: Instant,
    next: Next,
    free: Arc<AtomicUsize>,
    opened_by_pacer: bool,
) -> (Tally, Vec<(u64, Vec<u8>)>, Instant) {
    let mut tally = Tally::default();
    let mut bodies = Vec::new();
    let mut last = start;
    let end = start + load.duration;
    tokio::time::sleep_until(start).await;
    // A worker the pacer opened was counted free already.
    let mut counted = opened_by_pacer;
    loop {
        if !counted {
            free.fetch_add(1, Ordering::SeqCst);
        }
        counted = false;
        let taken = match &next {
            Next::Counter(counter) => Some((counter.fetch_add(1, Ordering::Relaxed), Instant::now())),
            Next::Paced(due) => due.lock().await.recv().await,
        };
        free.fetch_sub(1, Ordering::SeqCst);
        let Some((index, at)) = taken else { break };
        if at >= end {
            break;
        }
        let Some(req) = (load.requests)(index) else { break };
        let sent = Instant::now();
        let answer = conn.call(&req, load.timeout).await;
        let now = Instant::now();
        last = now;
        match answer {
            Some(a) if (200..300).contains(&a.status) => {
                tally.ok += 1;
                tally.latency.record(now - at);
                tally.service_latency.record(now - sent);
                if load.keep_bodies {
                    bodies.push((index, a.body));
                }
            }
            Some(a) if a.status == 429 || a.status == 503 => {
                tally.refused += 1;
                tally.refusal_latency.record(now - sent);
            }
            Some(_) => tally.errors += 1,
            None => tally.timeouts += 1,
        }
    }
    (tally, bodies, last)
}

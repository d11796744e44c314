//! The durability workload, run in a child process of the harness
//! (`bench durability log|raw DIR SECONDS TASKS`) so that its peak memory
//! is its own:
//!
//! - `log`: otpgate's delivery log on its sled store, called as a library.
//!   `TASKS` concurrent tasks each play messages through their life: one
//!   `DeliveryLog::create` and four `DeliveryLog::append` (submitted,
//!   accepted, delivered, receipt), each acknowledged only once durable
//!   (`Store::flush`). Concurrent flushes share one write, which is what
//!   group commit means here.
//! - `raw`: the floor without group commit: one task writing 4 KiB and
//!   calling `File::sync_data` (fdatasync), one write at a time.
//!
//! It prints one JSON line: acknowledged writes, seconds, p50/p99 latency
//! (ms), peak RSS (KiB) and CPU seconds.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use otpgate::delivery::log::{DeliveryLog, Event, NewMessage, State};
use otpgate::member::Channel;
use otpgate::store::Store;
use serde_json::json;

use crate::stats::Latencies;

pub async fn child(kind: &str, dir: &Path, seconds: f64, tasks: usize) {
    std::fs::create_dir_all(dir).expect("create the durability directory");
    let duration = Duration::from_secs_f64(seconds);
    let (ops, took, mut latency) = match kind {
        "log" => log_workload(dir, duration, tasks).await,
        "raw" => raw_workload(dir, duration),
        other => panic!("no durability workload called {other}"),
    };
    let usage = crate::child::own_usage();
    println!(
        "{}",
        json!({
            "ops": ops,
            "seconds": took.as_secs_f64(),
            "p50_ms": latency.percentile_ms(50.0),
            "p99_ms": latency.percentile_ms(99.0),
            "peak_rss_kib": usage.peak_rss_kib,
            "cpu_seconds": usage.cpu_seconds,
        })
    );
}

fn raw_workload(dir: &Path, duration: Duration) -> (u64, Duration, Latencies) {
    let mut file = std::fs::File::create(dir.join("raw.bin")).expect("create the raw file");
    let block = [0x5au8; 4096];
    let mut latency = Latencies::default();
    let mut ops = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(&block).expect("write 4 KiB");
        file.sync_data().expect("fdatasync");
        latency.record(t.elapsed());
        ops += 1;
    }
    (ops, start.elapsed(), latency)
}

async fn log_workload(dir: &Path, duration: Duration, tasks: usize) -> (u64, Duration, Latencies) {
    let store = Store::open(dir).expect("open the store");
    let log = DeliveryLog::open(&store).expect("open the delivery log");
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let log = log.clone();
        handles.push(tokio::spawn(async move { life_cycles(log, task, deadline).await }));
    }
    let mut ops = 0;
    let mut latency = Latencies::default();
    for h in handles {
        let (n, l) = h.await.expect("a log task");
        ops += n;
        latency.merge(l);
    }
    (ops, start.elapsed(), latency)
}

async fn life_cycles(log: DeliveryLog, task: usize, deadline: Instant) -> (u64, Latencies) {
    let mut ops = 0u64;
    let mut latency = Latencies::default();
    let mut n = 0u64;
    let now = || chrono::Utc::now().timestamp_millis();
    while Instant::now() < deadline {
        n += 1;
        let t = Instant::now();
        let message = log
            .create(
                NewMessage {
                    channel: Channel::Sms,
                    to: format!("+8190{:04}{:04}", task % 10_000, n % 10_000),
                    from: "03-5460-0124".into(),
                    origin: "bench".into(),
                    member_id: Some(format!("B{task}")),
                    otp_id: None,
                    text: "Your code is ******. Valid for 10 minutes.".into(),
                    carrier: Some("docomo".into()),
                    at: now(),
                },
                Event::new("queued", now()).state(State::Queued),
            )
            .await
            .expect("create");
        latency.record(t.elapsed());
        ops += 1;
        let mut submitted = Event::new("submitted", now()).state(State::Submitted);
        submitted.smsc_message_id = Some(format!("{task}-{n}"));
        let events = [
            submitted,
            Event::new("smsc_accepted", now()).state(State::Submitted),
            Event::new("delivered", now()).state(State::Delivered),
            Event::new("receipt", now()).state(State::Delivered),
        ];
        for event in events {
            let t = Instant::now();
            log.append(&message.id, event).await.expect("append");
            latency.record(t.elapsed());
            ops += 1;
        }
    }
    (ops, latency)
}

//! The SMPP workload: several transceiver binds, each keeping at most
//! `window` `submit_sm` unacknowledged, every one with
//! `registered_delivery=1`; every receipt is answered with
//! `deliver_sm_resp`. The client is a raw rusmpp-codec connection (no
//! client library in the way), identical against otpgate and the baseline.
//!
//! It counts acknowledged submits and their latency (submit_sm to
//! submit_sm_resp), and receipts and their latency (submit_sm to the
//! deliver_sm carrying the receipt). Closed loop by default; with a `rate`
//! it is open loop (submits due at fixed times across binds, latency from
//! the due time).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use rusmpp::pdus::{BindTransceiver, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::stats::{due, Latencies, Tally};

#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub system_id: String,
    pub password: String,
    pub binds: usize,
    pub window: usize,
    /// How long submits are sent.
    pub duration: Duration,
    /// Submits per second across all binds; `None` for as fast as answered.
    pub rate: Option<f64>,
    /// How long after the last submit receipts are still awaited.
    pub receipt_grace: Duration,
    /// Destinations cycle over this many numbers.
    pub numbers: u32,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub submits: Tally,
    pub receipts: u64,
    pub receipt_latency: Latencies,
    /// From the first submit to the last submit_sm_resp.
    pub submit_span: Duration,
    /// From the first submit to the last receipt.
    pub receipt_span: Duration,
}

impl Outcome {
    pub fn submit_rate(&self) -> f64 {
        self.submits.ok as f64 / self.submit_span.as_secs_f64().max(1e-9)
    }

    /// Receipts per second, over the time until the last one came.
    pub fn receipt_rate(&self) -> f64 {
        self.receipts as f64 / self.receipt_span.as_secs_f64().max(1e-9)
    }
}

pub async fn run(load: Load) -> Outcome {
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    let receipts = Arc::new(Mutex::new(Receipts::default()));
    for bind in 0..load.binds {
        tasks.push(tokio::spawn(bind_task(load.clone(), bind, start, receipts.clone())));
    }
    let mut out = Outcome::default();
    for task in tasks {
        let (o, last_resp, last_receipt) = task.await.expect("a bind task");
        out.submits.merge(o.submits);
        out.receipts += o.receipts;
        out.receipt_latency.merge(o.receipt_latency);
        out.submit_span = out.submit_span.max(last_resp.saturating_duration_since(start));
        out.receipt_span = out.receipt_span.max(last_receipt.saturating_duration_since(start));
    }
    out
}

/// The receipts awaited, shared by the binds: the SMSC sends a receipt to
/// any receiving bind of the account, not only the one that submitted.
#[derive(Default)]
struct Receipts {
    /// SMSC message id → when its submit was due.
    waiting: HashMap<String, Instant>,
    /// Receipts that came before their submit_sm_resp.
    early: HashSet<String>,
}

fn submit_pdu(n: u64, numbers: u32) -> SubmitSm {
    let dest = format!("8190{:08}", 10_000_000 + (n % u64::from(numbers)));
    SubmitSm::builder()
        .source_addr_ton(Ton::National)
        .source_addr_npi(Npi::Isdn)
        .source_addr(COctetString::from_str("0354600124").expect("source"))
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(COctetString::from_str(&dest).expect("destination"))
        .esm_class(EsmClass::from(0))
        .registered_delivery(RegisteredDelivery::from(1))
        .data_coding(DataCoding::from(1))
        .short_message(OctetString::from_vec(b"Your code is 482913. Valid for 10 minutes.".to_vec()).expect("text"))
        .build()
}

fn receipted_id(command: &Command) -> Option<String> {
    let Some(Pdu::DeliverSm(deliver)) = command.pdu() else {
        return None;
    };
    for tlv in deliver.tlvs() {
        if let Some(TlvValue::ReceiptedMessageId(id)) = tlv.value() {
            return Some(id.as_str().to_string());
        }
    }
    let text = String::from_utf8_lossy(deliver.short_message());
    text.strip_prefix("id:")
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// One bind: returns its tally, when its last submit_sm_resp and its last
/// receipt came.
async fn bind_task(
    load: Load,
    bind: usize,
    start: Instant,
    receipts: Arc<Mutex<Receipts>>,
) -> (Outcome, Instant, Instant) {
    let mut out = Outcome::default();
    let mut last_resp = start;
    let mut last_receipt = start;
    let stream = TcpStream::connect(load.addr).await.expect("connect to the SMSC");
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, CommandCodec::new());
    let bind_pdu = BindTransceiver::builder()
        .system_id(COctetString::from_str(&load.system_id).expect("system_id"))
        .password(COctetString::from_str(&load.password).expect("password"))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    framed
        .send(Command::new(CommandStatus::EsmeRok, 1, bind_pdu))
        .await
        .expect("send bind");
    loop {
        match framed.next().await {
            Some(Ok(c)) if c.id() == CommandId::BindTransceiverResp => {
                assert_eq!(c.status(), CommandStatus::EsmeRok, "bind refused");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("no bind_transceiver_resp: {other:?}"),
        }
    }
    tokio::time::sleep_until(start).await;
    let end = start + load.duration;
    let give_up = end + load.receipt_grace;
    let binds = load.binds as u64;
    // Submit i of this bind is global submit i * binds + bind.
    let mut index: u64 = 0;
    let mut seq: u32 = 1;
    // seq → when the submit was due (the send time, closed loop) and sent.
    let mut waiting_resp: HashMap<u32, (Instant, Instant)> = HashMap::new();
    // SMSC message id → when its submit was due.
    // The next submit's due time while any is left. Open loop, every
    // submit due before `end` is sent, late when the window held it back.
    let next_due = |index: u64, now: Instant| -> Option<Instant> {
        match load.rate {
            Some(rate) => Some(due(start, rate, index * binds + bind as u64)).filter(|&at| at < end),
            None => (now < end).then_some(now),
        }
    };
    loop {
        let now = Instant::now();
        // Send what the window and the schedule allow.
        let mut wrote = false;
        while waiting_resp.len() < load.window {
            let Some(at) = next_due(index, now) else { break };
            if at > now {
                break;
            }
            seq = seq.wrapping_add(1).max(2);
            let pdu = submit_pdu(index * binds + bind as u64, load.numbers);
            index += 1;
            if framed
                .feed(Command::new(CommandStatus::EsmeRok, seq, pdu))
                .await
                .is_err()
            {
                out.submits.timeouts += waiting_resp.len() as u64 + 1;
                return (out, last_resp, last_receipt);
            }
            waiting_resp.insert(seq, (at, Instant::now()));
            wrote = true;
        }
        if wrote && SinkExt::<Command>::flush(&mut framed).await.is_err() {
            out.submits.timeouts += waiting_resp.len() as u64;
            return (out, last_resp, last_receipt);
        }
        let now = Instant::now();
        let upcoming = next_due(index, now);
        if upcoming.is_none()
            && waiting_resp.is_empty()
            && (receipts.lock().expect("receipts").waiting.is_empty() || now >= give_up)
        {
            break;
        }
        if now >= give_up + Duration::from_secs(5) {
            // Submits never answered.
            out.submits.timeouts += waiting_resp.len() as u64;
            break;
        }
        // Wake for the next due submit when the window has room, else for
        // an answer, or at the receipts' deadline.
        let wake = match upcoming {
            Some(at) if waiting_resp.len() < load.window => at,
            Some(_) => give_up + Duration::from_secs(5),
            // Another bind may take this one's receipts (the SMSC sends
            // them to any receiver of the account): look again soon.
            None => give_up
                .min(now + Duration::from_millis(20))
                .max(now + Duration::from_millis(1)),
        };
        let first = tokio::select! {
            item = framed.next() => item,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let mut item = first;
        let mut answered = false;
        loop {
            let command = match item {
                Some(Ok(c)) => c,
                _ => {
                    out.submits.timeouts += waiting_resp.len() as u64;
                    return (out, last_resp, last_receipt);
                }
            };
            let now = Instant::now();
            match command.id() {
                CommandId::SubmitSmResp => {
                    if let Some((at, sent)) = waiting_resp.remove(&command.sequence_number()) {
                        last_resp = now;
                        let status = command.status();
                        if status == CommandStatus::EsmeRok {
                            out.submits.ok += 1;
                            out.submits.latency.record(now - at);
                            out.submits.service_latency.record(now - sent);
                            if let Some(Pdu::SubmitSmResp(resp)) = command.pdu() {
                                let id = resp.message_id().as_str().to_string();
                                let mut receipts = receipts.lock().expect("receipts");
                                if !receipts.early.remove(&id) {
                                    receipts.waiting.insert(id, at);
                                }
                            }
                        } else if status == CommandStatus::EsmeRthrottled {
                            out.submits.refused += 1;
                            out.submits.refusal_latency.record(now - sent);
                        } else {
                            out.submits.errors += 1;
                        }
                    }
                }
                CommandId::DeliverSm => {
                    let resp = DeliverSmResp::new(COctetString::empty(), vec![]);
                    let _ = framed
                        .feed(Command::new(CommandStatus::EsmeRok, command.sequence_number(), resp))
                        .await;
                    answered = true;
                    if let Some(id) = receipted_id(&command) {
                        out.receipts += 1;
                        last_receipt = now;
                        let mut receipts = receipts.lock().expect("receipts");
                        match receipts.waiting.remove(&id) {
                            Some(at) => out.receipt_latency.record(now - at),
                            None => {
                                receipts.early.insert(id);
                            }
                        }
                    }
                }
                CommandId::EnquireLink => {
                    let _ = framed
                        .feed(Command::new(
                            CommandStatus::EsmeRok,
                            command.sequence_number(),
                            Pdu::EnquireLinkResp,
                        ))
                        .await;
                    answered = true;
                }
                CommandId::Unbind => {
                    let _ = framed
                        .send(Command::new(
                            CommandStatus::EsmeRok,
                            command.sequence_number(),
                            Pdu::UnbindResp,
                        ))
                        .await;
                    out.submits.timeouts += waiting_resp.len() as u64;
                    return (out, last_resp, last_receipt);
                }
                _ => {}
            }
            // Handle whatever else already arrived before writing.
            match framed.next().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        if answered && SinkExt::<Command>::flush(&mut framed).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        framed.send(Command::new(CommandStatus::EsmeRok, seq.wrapping_add(1), Pdu::Unbind)),
    )
    .await;
    (out, last_resp, last_receipt)
}

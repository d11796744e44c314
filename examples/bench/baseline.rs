//! The minimal baselines, each the least a server of its protocol can do,
//! run in a child process (`bench baseline smpp|smtp|http`):
//!
//! - an echo SMSC on rusmpp's codec that answers every `submit_sm` at once
//!   and sends its delivery receipt right after (no storage);
//! - an SMTP sink that accepts every message and discards it;
//! - a hyper hello-world that answers `{"message":"Hello, World!"}`.
//!
//! They print `baseline listening smpp=ADDR` (or `smtp=`, `http=`) the way
//! otpgate prints its line, then serve until killed.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rusmpp::pdus::{BindReceiverResp, BindTransceiverResp, BindTransmitterResp, DeliverSm, SubmitSmResp};
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, MessageState, Npi, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

pub async fn serve(kind: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
    let addr = listener.local_addr().expect("local address");
    println!("baseline listening {kind}={addr}");
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ids = ids.clone();
        match kind {
            "smpp" => tokio::spawn(smsc_connection(stream, ids)),
            "smtp" => tokio::spawn(smtp_connection(stream)),
            "http" => tokio::spawn(http_connection(stream)),
            other => panic!("no baseline called {other}"),
        };
    }
}

// ----- the echo SMSC -----

async fn smsc_connection(stream: TcpStream, ids: Arc<AtomicU64>) {
    let mut framed = Framed::new(stream, CommandCodec::new());
    let mut next_seq = 1u32;
    while let Some(Ok(first)) = framed.next().await {
        let mut command = Some(first);
        // Answer everything already read, then write once.
        while let Some(c) = command.take() {
            if !smsc_answer(&mut framed, c, &ids, &mut next_seq).await {
                let _ = SinkExt::<Command>::flush(&mut framed).await;
                return;
            }
            command = framed.next().now_or_never().flatten().and_then(Result::ok);
        }
        if SinkExt::<Command>::flush(&mut framed).await.is_err() {
            return;
        }
    }
}

/// Answers one PDU; `false` when the connection should close.
async fn smsc_answer(
    framed: &mut Framed<TcpStream, CommandCodec>,
    command: Command,
    ids: &AtomicU64,
    next_seq: &mut u32,
) -> bool {
    let seq = command.sequence_number();
    let ok = CommandStatus::EsmeRok;
    let name = || COctetString::from_str("baseline").expect("a short system id");
    let answer: Option<Pdu> = match (command.id(), command.pdu()) {
        (CommandId::BindTransceiver, _) => Some(BindTransceiverResp::new(name(), None).into()),
        (CommandId::BindTransmitter, _) => Some(BindTransmitterResp::new(name(), None).into()),
        (CommandId::BindReceiver, _) => Some(BindReceiverResp::new(name(), None).into()),
        (CommandId::EnquireLink, _) => Some(Pdu::EnquireLinkResp),
        (CommandId::Unbind, _) => {
            let _ = framed.feed(Command::new(ok, seq, Pdu::UnbindResp)).await;
            return false;
        }
        (CommandId::SubmitSm, Some(Pdu::SubmitSm(sm))) => {
            let id = format!("{:010}", ids.fetch_add(1, Ordering::Relaxed));
            let resp = SubmitSmResp::new(COctetString::from_str(&id).expect("digits"), vec![]);
            if framed.feed(Command::new(ok, seq, resp)).await.is_err() {
                return false;
            }
            if u8::from(sm.registered_delivery) & 0x03 != 0 {
                *next_seq = next_seq.wrapping_add(1);
                let receipt = receipt(&id, sm.destination_addr.as_str(), sm.source_addr.as_str());
                if framed.feed(Command::new(ok, *next_seq, receipt)).await.is_err() {
                    return false;
                }
            }
            None
        }
        _ => None,
    };
    match answer {
        Some(pdu) => framed.feed(Command::new(ok, seq, pdu)).await.is_ok(),
        None => true,
    }
}

/// A DELIVRD receipt in the same shape otpgate sends: the standard text and
/// the receipted_message_id and message_state TLVs.
fn receipt(id: &str, dest: &str, source: &str) -> DeliverSm {
    let now = chrono::Utc::now().timestamp_millis();
    let text = otpgate::smsc::receipt_text::format(id, "DELIVRD", 0, now, now, "Your code is 482913");
    let addr = |a: &str| COctetString::from_str(if a.is_empty() { "0" } else { a }).expect("an address");
    DeliverSm::builder()
        .source_addr_ton(Ton::International)
        .source_addr_npi(Npi::Isdn)
        .source_addr(addr(dest))
        .dest_addr_ton(Ton::National)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(addr(source))
        .esm_class(EsmClass::from(0x04))
        .data_coding(DataCoding::from(1))
        .short_message(OctetString::from_vec(text.into_bytes()).expect("a short receipt"))
        .tlvs(vec![
            MessageDeliveryRequestTlvValue::ReceiptedMessageId(COctetString::from_str(id).expect("digits")),
            MessageDeliveryRequestTlvValue::MessageState(MessageState::Delivered),
        ])
        .build()
}

// ----- the SMTP sink -----

async fn smtp_connection(stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut queued = 0u64;
    // Replies to a pipelined group go out in one write, once no whole
    // command is left unread (RFC 2920), as otpgate does.
    let mut out: Vec<u8> = b"220 sink.local ESMTP baseline\r\n".to_vec();
    loop {
        if !reader.buffer().contains(&b'\n') && !out.is_empty() {
            if write.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
        match verb.as_slice() {
            b"EHLO" => out.extend_from_slice(
                b"250-sink.local\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
            ),
            b"HELO" => out.extend_from_slice(b"250 sink.local\r\n"),
            b"MAIL" => out.extend_from_slice(b"250 2.1.0 OK\r\n"),
            b"RCPT" => out.extend_from_slice(b"250 2.1.5 OK\r\n"),
            b"RSET" | b"NOOP" => out.extend_from_slice(b"250 2.0.0 OK\r\n"),
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                let _ = write.write_all(&out).await;
                return;
            }
            b"DATA" => {
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                if !reader.buffer().contains(&b'\n') {
                    if write.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                // Read and discard up to the lone dot.
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == b".\r\n" || line == b".\n" => break,
                        Ok(_) => {}
                    }
                }
                queued += 1;
                out.extend_from_slice(format!("250 2.0.0 Ok: queued as {queued}\r\n").as_bytes());
            }
            _ => out.extend_from_slice(b"500 5.5.2 Command not recognized\r\n"),
        }
    }
}

// ----- the HTTP hello-world -----

async fn http_connection(stream: TcpStream) {
    let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
        let body = Bytes::from_static(br#"{"message":"Hello, World!"}"#);
        let response = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("a valid response");
        Ok::<_, Infallible>(response)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

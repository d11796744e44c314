//! The SMSC as an ESME sees it: `serve` on 127.0.0.1:0 with a fake backend,
//! driven by the rusmppc client and by raw PDUs over TCP. No sleeps: every
//! wait is on a channel or a socket, under a timeout.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{BindTransceiver, BindTransmitter, CancelSm, DeliverSmResp, QuerySm, SubmitSm};
use rusmpp::tlvs::{MessageSubmissionRequestTlvValue, TlvTag, TlvValue};
use rusmpp::types::{AnyOctetString, COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use rusmppc::{ConnectionBuilder, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

use super::codec::{Inbound, Outbound, SmppCodec};
use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// Where a test SMSC's virtual clock starts.
const CLOCK_START: Millis = 1_800_000_000_000;

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Stores submissions in memory, hands out ids m1, m2, ... and reports each
/// submission on a channel.
pub(crate) struct FakeBackend {
    next: AtomicU64,
    stored: Mutex<HashMap<String, Submission>>,
    /// An earlier part's id → the whole message's id.
    parts: Mutex<HashMap<String, String>>,
    seen: mpsc::UnboundedSender<Submission>,
    /// What [`SmscBackend::refusal`] answers (a full disk, say).
    pub(crate) refusing: Mutex<Option<SubmitRefusal>>,
    /// Parts kept, as [`SmscBackend::kept_parts`] gives them to a starting SMSC.
    pub(crate) kept: Mutex<Vec<KeptPart>>,
    /// The long messages the SMSC dropped unfinished, as it handed them over.
    abandoned: mpsc::UnboundedSender<Dropped>,
    pub(crate) abandoned_rx: Mutex<Option<mpsc::UnboundedReceiver<Dropped>>>,
}

impl FakeBackend {
    pub(crate) fn new() -> (Arc<FakeBackend>, mpsc::UnboundedReceiver<Submission>) {
        let (seen, rx) = mpsc::unbounded_channel();
        let (abandoned, abandoned_rx) = mpsc::unbounded_channel();
        let backend = FakeBackend {
            next: AtomicU64::new(1),
            stored: Mutex::new(HashMap::new()),
            parts: Mutex::new(HashMap::new()),
            seen,
            refusing: Mutex::new(None),
            kept: Mutex::new(Vec::new()),
            abandoned,
            abandoned_rx: Mutex::new(Some(abandoned_rx)),
        };
        (Arc::new(backend), rx)
    }

    fn whole_id(&self, id: &str) -> String {
        self.parts
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
}

impl SmscBackend for FakeBackend {
    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<String, SubmitRefusal>> {
        Box::pin(async move {
            if sub.dest_addr.starts_with("000") {
                return Err(SubmitRefusal::InvalidDestination);
            }
            let id = format!("m{}", self.next.fetch_add(1, Ordering::SeqCst));
            let mut parts = self.parts.lock().unwrap();
            parts.extend(sub.part_ids.iter().map(|part| (part.clone(), id.clone())));
            self.stored.lock().unwrap().insert(id.clone(), sub.clone());
            let _ = self.seen.send(sub);
            Ok(id)
        })
    }

    fn query(&self, _system_id: &str, message_id: &str) -> BoxFuture<'_, Option<MessageStatus>> {
        let known = self.stored.lock().unwrap().contains_key(&self.whole_id(message_id));
        Box::pin(async move {
            known.then_some(MessageStatus {
                final_date: None,
                state: 1,
                error_code: 0,
            })
        })
    }

    fn refusal(&self) -> Option<SubmitRefusal> {
        self.refusing.lock().unwrap().clone()
    }

    fn keep_part(&self, part: &KeptPart) -> Result<(), SubmitRefusal> {
        self.kept.lock().unwrap().push(part.clone());
        Ok(())
    }

    fn kept_parts(&self) -> Vec<KeptPart> {
        self.kept.lock().unwrap().clone()
    }

    fn abandon(&self, dropped: Dropped) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        let _ = self.abandoned.send(dropped);
        Box::pin(async { Ok(()) })
    }

    fn cancel(&self, _system_id: &str, message_id: &str) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        let known = self.stored.lock().unwrap().remove(&self.whole_id(message_id)).is_some();
        Box::pin(async move {
            if known {
                Ok(())
            } else {
                Err(SubmitRefusal::NotFound)
            }
        })
    }
}

/// A running SMSC with its fake backend.
pub(crate) struct TestSmsc {
    pub addr: std::net::SocketAddr,
    pub hub: ReceiptHub,
    pub submissions: mpsc::UnboundedReceiver<Submission>,
    pub backend: Arc<FakeBackend>,
    /// The simulation's clock, virtual: partial messages age by it.
    pub clock: Arc<crate::clock::Clock>,
    trigger: crate::shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
}

impl TestSmsc {
    pub(crate) async fn start() -> TestSmsc {
        TestSmsc::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (a restart on the same port).
    pub(crate) async fn start_on(addr: std::net::SocketAddr) -> TestSmsc {
        TestSmsc::start_with(addr, |_| {}).await
    }

    /// Starts with a receipt window of 2 and whatever `adjust` changes.
    pub(crate) async fn start_with(addr: std::net::SocketAddr, adjust: impl FnOnce(&mut SmscConfig)) -> TestSmsc {
        TestSmsc::start_on_backend(addr, FakeBackend::new(), adjust).await
    }

    /// Starts over a backend made (and perhaps filled) by the caller.
    pub(crate) async fn start_on_backend(
        addr: std::net::SocketAddr,
        (backend, submissions): (Arc<FakeBackend>, mpsc::UnboundedReceiver<Submission>),
        adjust: impl FnOnce(&mut SmscConfig),
    ) -> TestSmsc {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = ReceiptHub::new();
        let (trigger, shutdown) = crate::shutdown::channel();
        let mut slow = Account::new("slow", "slow");
        slow.throughput_per_sec = Some(1);
        let mut wide = Account::new("wide", "wide");
        wide.window = Some(4);
        let mut config = SmscConfig {
            accounts: vec![
                Account::new("otpgate", "otpgate"),
                Account::new("esme", "secret"),
                slow,
                wide,
            ],
            window: 2,
            ..SmscConfig::default()
        };
        adjust(&mut config);
        let clock = crate::clock::Clock::virtual_at(CLOCK_START);
        let task = tokio::spawn(serve(
            listener,
            None,
            config,
            backend.clone(),
            hub.clone(),
            clock.clone(),
            shutdown,
        ));
        TestSmsc {
            addr,
            hub,
            submissions,
            backend,
            clock,
            trigger,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        self.trigger.fire();
        within("serve to return", self.task).await.unwrap();
    }
}

async fn connect(addr: std::net::SocketAddr) -> (rusmppc::Client, impl futures::Stream<Item = Event> + Unpin) {
    let stream = TcpStream::connect(addr).await.unwrap();
    ConnectionBuilder::new()
        .disable_interface_version_check()
        .no_enquire_link_interval()
        .connected(stream)
}

/// Closes a client's connection so that stopping the SMSC does not wait for
/// an unbind_resp the test would never send.
async fn hang_up(client: rusmppc::Client) {
    let _ = within("close", client.close_and_wait()).await;
}

fn bind_transceiver(system_id: &str, password: &str) -> BindTransceiver {
    BindTransceiver::builder()
        .system_id(COctetString::from_str(system_id).unwrap())
        .password(COctetString::from_str(password).unwrap())
        .interface_version(InterfaceVersion::Smpp3_4)
        .build()
}

fn status_of(result: Result<impl std::fmt::Debug, rusmppc::error::Error>) -> u32 {
    match result {
        Err(rusmppc::error::Error::UnexpectedResponse { response }) => u32::from(response.status()),
        other => panic!("expected an error response, got {other:?}"),
    }
}

fn submit_sm(dest: &str, data_coding: u8, esm_class: u8, short_message: Vec<u8>) -> SubmitSm {
    SubmitSm::builder()
        .source_addr_ton(Ton::National)
        .source_addr_npi(Npi::Isdn)
        .source_addr(COctetString::from_str("0354600124").unwrap())
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(COctetString::from_str(dest).unwrap())
        .esm_class(EsmClass::from(esm_class))
        .registered_delivery(RegisteredDelivery::from(1))
        .data_coding(DataCoding::from(data_coding))
        .short_message(OctetString::from_vec(short_message).unwrap())
        .build()
}

/// A DELIVRD receipt quoting a code, as the network sends one.
pub(crate) fn receipt(system_id: &str, message_id: &str) -> Receipt {
    Receipt {
        system_id: system_id.into(),
        message_id: message_id.into(),
        source_addr: "819012345678".into(),
        dest_addr: "0354600124".into(),
        stat: "DELIVRD".into(),
        err: 0,
        message_state: 2,
        network_error_code: Some((3, 0)),
        submit_date: crate::clock::DEFAULT_VIRTUAL_START,
        done_date: crate::clock::DEFAULT_VIRTUAL_START + 60_000,
        text: "Your code is 482913".into(),
        part_ids: Vec::new(),
        intermediate: false,
    }
}

/// Raw PDUs over TCP, framed with the SMSC's own codec.
type Raw = Framed<TcpStream, SmppCodec>;

async fn raw(addr: std::net::SocketAddr) -> Raw {
    Framed::new(TcpStream::connect(addr).await.unwrap(), SmppCodec::default())
}

async fn raw_call(conn: &mut Raw, seq: u32, pdu: impl Into<Pdu>) -> Command {
    conn.send(Outbound::command(seq, pdu)).await.unwrap();
    match within("an answer", conn.next()).await {
        Some(Ok(Inbound::Command(command))) => *command,
        other => panic!("expected a PDU, got {other:?}"),
    }
}

#[tokio::test]
async fn binds_and_refuses_bad_credentials() {
    let smsc = TestSmsc::start().await;
    let (first, _first_events) = connect(smsc.addr).await;
    let resp = within("bind", first.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    assert_eq!(resp.system_id.as_str(), "otpgate");
    assert_eq!(resp.sc_interface_version(), Some(InterfaceVersion::Smpp3_4));
    let again = within(
        "second bind",
        first.bind_transceiver(bind_transceiver("esme", "secret")),
    )
    .await;
    assert_eq!(status_of(again), 0x05, "already bound");
    hang_up(first).await;

    let (client, _events) = connect(smsc.addr).await;
    let wrong = within("bind", client.bind_transceiver(bind_transceiver("esme", "wrong"))).await;
    assert_eq!(status_of(wrong), 0x0E);
    let unknown = within("bind", client.bind_transceiver(bind_transceiver("nobody", "x"))).await;
    assert_eq!(status_of(unknown), 0x0F);
    hang_up(client).await;
    smsc.stop().await;
}

#[tokio::test]
async fn submit_gets_an_id_after_the_backend_stored_it() {
    let mut smsc = TestSmsc::start().await;
    let (client, _events) = connect(smsc.addr).await;
    let early = within(
        "submit",
        client.submit_sm(submit_sm("819012345678", 0, 0, b"hi".to_vec())),
    )
    .await;
    assert_eq!(status_of(early), 0x04, "submit before bind");
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();

    let mut sm = submit_sm("819012345678", 0, 0, b"Your code is 482913".to_vec());
    sm.push_tlv(MessageSubmissionRequestTlvValue::Other {
        tag: TlvTag::from(0x1401),
        value: AnyOctetString::from_static_slice(b"ref-1"),
    });
    let resp = within("submit", client.submit_sm(sm)).await.unwrap();
    assert_eq!(resp.message_id().as_str(), "m1");
    let sub = smsc.submissions.try_recv().expect("stored before the answer");
    assert_eq!(sub.text, "Your code is 482913");
    assert_eq!(
        (sub.system_id.as_str(), sub.dest_addr.as_str()),
        ("esme", "819012345678")
    );
    assert_eq!(
        (sub.source_ton, sub.dest_ton, sub.parts, sub.registered_delivery),
        (2, 1, 1, 1)
    );
    assert_eq!(sub.message_ref.as_deref(), Some("ref-1"));

    let refused = within("submit", client.submit_sm(submit_sm("0001", 0, 0, b"x".to_vec()))).await;
    assert_eq!(status_of(refused), 0x0B);
    hang_up(client).await;
    smsc.stop().await;
}

/// The first of two parts of message `reference`, kept `age` ago.
fn kept_part(reference: u16, text: &str, age: Duration) -> KeptPart {
    KeptPart {
        system_id: "esme".into(),
        source: "0354600124".into(),
        dest: "819012345678".into(),
        reference,
        total: 2,
        seq: 1,
        user_data: text.as_bytes().to_vec(),
        part_id: format!("k{reference}"),
        meta: Default::default(),
        kept_at: CLOCK_START - i64::try_from(age.as_millis()).unwrap(),
    }
}

/// Parts of long messages kept from before a restart wait for the rest
/// again and complete with it; one older than the age limit of partial
/// messages is dropped, not made young again by the restart.
#[tokio::test]
async fn kept_parts_wait_again_after_a_restart_unless_too_old() {
    let made = FakeBackend::new();
    *made.0.kept.lock().unwrap() = vec![
        kept_part(7, "hello ", Duration::from_secs(1)),
        kept_part(8, "stale ", Duration::from_secs(11 * 60)),
    ];
    let mut smsc = TestSmsc::start_on_backend("127.0.0.1:0".parse().unwrap(), made, |_| {}).await;
    let mut abandoned = smsc.backend.abandoned_rx.lock().unwrap().take().unwrap();
    let (client, _events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    assert_eq!(
        within("the stale part", abandoned.recv()).await.unwrap(),
        Dropped {
            part_ids: vec!["k8".into()],
            cause: DropCause::TooOld
        }
    );
    let last = |reference: u8, text: &str| {
        submit_sm(
            "819012345678",
            0,
            0x40,
            text::with_udh(reference, 2, 2, text.as_bytes()),
        )
    };
    let resp = within("part", client.submit_sm(last(7, "world"))).await.unwrap();
    assert_eq!(resp.message_id().as_str(), "m1");
    let whole = smsc.submissions.try_recv().expect("the kept part completed");
    assert_eq!(
        (whole.text.as_str(), whole.part_ids.clone()),
        ("hello world", vec!["k7".to_string()])
    );
    within("part", client.submit_sm(last(8, "again"))).await.unwrap();
    assert!(
        smsc.submissions.try_recv().is_err(),
        "the dropped part did not complete anything"
    );
    hang_up(client).await;
    smsc.stop().await;
}

/// A long message whose other parts never come is dropped when the
/// simulation's clock reaches its age limit, with no new part needed to
/// trigger it, and handed to the backend with the ids its parts were
/// acknowledged with: one kept from before a restart, and one whose first
/// part arrives now. A younger one waits on.
#[tokio::test]
async fn partial_messages_are_handed_over_when_the_clock_reaches_their_age_limit() {
    let made = FakeBackend::new();
    *made.0.kept.lock().unwrap() = vec![kept_part(
        1,
        "part ",
        Duration::from_millis(u64::try_from(PARTIAL_MESSAGE_TTL).unwrap() - 30_000),
    )];
    let smsc = TestSmsc::start_on_backend("127.0.0.1:0".parse().unwrap(), made, |_| {}).await;
    let mut abandoned = smsc.backend.abandoned_rx.lock().unwrap().take().unwrap();
    let (client, _events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    let first = submit_sm("819012345678", 0, 0x40, text::with_udh(2, 3, 1, b"one "));
    let first = within("part", client.submit_sm(first)).await.unwrap();
    let first_id = first.message_id().as_str().to_string();
    let second = submit_sm("819012345678", 0, 0x40, text::with_udh(2, 3, 3, b"three"));
    let second = within("part", client.submit_sm(second)).await.unwrap();

    smsc.clock.advance(29_999).await;
    assert!(abandoned.try_recv().is_err(), "both still young enough");
    smsc.clock.advance(1).await;
    assert_eq!(
        within("the older one", abandoned.recv()).await.unwrap(),
        Dropped {
            part_ids: vec!["k1".into()],
            cause: DropCause::TooOld
        }
    );
    smsc.clock.advance(PARTIAL_MESSAGE_TTL - 30_001).await;
    assert!(
        abandoned.try_recv().is_err(),
        "the one begun now waits a millisecond more"
    );
    smsc.clock.advance(1).await;
    let dropped = within("the younger one", abandoned.recv()).await.unwrap();
    assert_eq!(
        (dropped.part_ids, dropped.cause),
        (
            vec![first_id, second.message_id().as_str().to_string()],
            DropCause::TooOld
        )
    );
    hang_up(client).await;
    smsc.stop().await;
}

/// While the backend can take nothing (a full disk), every submit_sm, a
/// part of a long message too, is refused at once with ESME_RMSGQFUL and
/// nothing reaches it; once it can, submits are taken again.
#[tokio::test]
async fn submits_are_refused_at_once_while_the_backend_can_take_nothing() {
    let mut smsc = TestSmsc::start().await;
    let (client, _events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    *smsc.backend.refusing.lock().unwrap() = Some(SubmitRefusal::QueueFull);
    let single = within(
        "submit",
        client.submit_sm(submit_sm("819012345678", 0, 0, b"hi".to_vec())),
    )
    .await;
    assert_eq!(status_of(single), 0x14);
    let part = submit_sm("819012345678", 8, 0x40, text::with_udh(9, 2, 1, &[0, 0x41]));
    assert_eq!(status_of(within("part", client.submit_sm(part)).await), 0x14);
    assert!(smsc.submissions.try_recv().is_err(), "nothing reached the backend");
    *smsc.backend.refusing.lock().unwrap() = None;
    let taken = within(
        "submit",
        client.submit_sm(submit_sm("819012345678", 0, 0, b"hi".to_vec())),
    )
    .await;
    assert_eq!(taken.unwrap().message_id().as_str(), "m1");
    hang_up(client).await;
    smsc.stop().await;
}

#[tokio::test]
async fn gsm_escape_round_trips_through_submit() {
    let mut smsc = TestSmsc::start().await;
    let (client, _events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    let octets = text::gsm7_encode("Price: 5€ [ok]").unwrap();
    within("submit", client.submit_sm(submit_sm("819012345678", 0, 0, octets)))
        .await
        .unwrap();
    assert_eq!(smsc.submissions.try_recv().unwrap().text, "Price: 5€ [ok]");
    hang_up(client).await;
    smsc.stop().await;
}

#[tokio::test]
async fn receivers_cannot_submit_and_throttled_accounts_get_0x58() {
    let smsc = TestSmsc::start().await;
    let mut conn = raw(smsc.addr).await;
    let bind = rusmpp::pdus::BindReceiver::builder()
        .system_id(COctetString::from_str("esme").unwrap())
        .password(COctetString::from_str("secret").unwrap())
        .build();
    assert_eq!(raw_call(&mut conn, 1, bind).await.status(), CommandStatus::EsmeRok);
    let answer = raw_call(&mut conn, 2, submit_sm("819012345678", 0, 0, b"x".to_vec())).await;
    assert_eq!(
        (answer.id(), answer.status()),
        (CommandId::SubmitSmResp, CommandStatus::EsmeRinvbndsts)
    );

    let (client, _events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("slow", "slow")))
        .await
        .unwrap();
    within(
        "submit",
        client.submit_sm(submit_sm("819012345678", 0, 0, b"1".to_vec())),
    )
    .await
    .unwrap();
    let second = within(
        "submit",
        client.submit_sm(submit_sm("819012345678", 0, 0, b"2".to_vec())),
    )
    .await;
    assert_eq!(status_of(second), 0x58);
    hang_up(client).await;
    drop(conn);
    smsc.stop().await;
}

#[tokio::test]
async fn receipts_reach_the_bound_transceiver() {
    let smsc = TestSmsc::start().await;
    // A receipt for an account with no bind waits in the hub.
    let kept = smsc.hub.deliver(receipt("esme", "m-early"));
    assert_eq!(smsc.hub.pending("esme"), 1);

    let (client, mut events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    let live = smsc.hub.deliver(receipt("esme", "m-live"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = within("deliver_sm", events.next()).await.expect("events end");
        let Event::Incoming(command) = event else { continue };
        let seq = command.sequence_number();
        let Some(Pdu::DeliverSm(deliver)) = command.pdu() else {
            continue;
        };
        assert_eq!(u8::from(deliver.esm_class), 0x04);
        let text = String::from_utf8(deliver.short_message().to_vec()).unwrap();
        let receipted = deliver.tlvs().iter().find_map(|t| match t.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => Some(id.as_str().to_string()),
            _ => None,
        });
        let state = deliver.tlvs().iter().find_map(|t| match t.value() {
            Some(TlvValue::MessageState(s)) => Some(u8::from(*s)),
            _ => None,
        });
        assert_eq!(state, Some(2));
        let id = receipted.expect("receipted_message_id TLV");
        assert!(
            text.starts_with(&format!(
                "id:{id} sub:001 dlvrd:001 submit date:2601010000 done date:2601010001 stat:DELIVRD err:000 text:"
            )),
            "{text}"
        );
        seen.push(id);
        let resp = DeliverSmResp::new(COctetString::empty(), vec![]);
        within("deliver_sm_resp", client.deliver_sm_resp(seq, resp))
            .await
            .unwrap();
    }
    seen.sort();
    assert_eq!(seen, vec!["m-early", "m-live"]);
    assert_eq!(within("ack", kept).await, Ok(true));
    assert_eq!(within("ack", live).await, Ok(true));
    hang_up(client).await;
    smsc.stop().await;
}

/// The session drains the hub's queue before it reads a PDU, so when the
/// answer to an enquire_link comes before another deliver_sm, the window
/// held that one back.
#[tokio::test]
async fn each_account_gets_its_own_receipt_window() {
    for (system_id, password, window) in [("esme", "secret", 2), ("wide", "wide", 4)] {
        let smsc = TestSmsc::start().await;
        let mut conn = raw(smsc.addr).await;
        let bound = raw_call(&mut conn, 1, bind_transceiver(system_id, password)).await;
        assert_eq!(bound.status(), CommandStatus::EsmeRok);
        let acks: Vec<_> = (0..window + 1)
            .map(|n| smsc.hub.deliver(receipt(system_id, &format!("m{n}"))))
            .collect();
        let mut sent = Vec::new();
        for _ in 0..window {
            match within("a deliver_sm", conn.next()).await {
                Some(Ok(Inbound::Command(c))) if c.id() == CommandId::DeliverSm => sent.push(c.sequence_number()),
                other => panic!("{system_id}: expected a deliver_sm, got {other:?}"),
            }
        }
        let answer = raw_call(&mut conn, 2, Pdu::EnquireLink).await;
        assert_eq!(
            answer.id(),
            CommandId::EnquireLinkResp,
            "{system_id}: the window is {window}"
        );
        let resp = DeliverSmResp::new(COctetString::empty(), vec![]);
        conn.send(Outbound::command(sent[0], resp)).await.unwrap();
        match within("the last deliver_sm", conn.next()).await {
            Some(Ok(Inbound::Command(c))) if c.id() == CommandId::DeliverSm => {}
            other => panic!("{system_id}: expected a deliver_sm, got {other:?}"),
        }
        assert_eq!(
            within("the first ack", acks.into_iter().next().unwrap()).await,
            Ok(true)
        );
        drop(conn);
        smsc.stop().await;
    }
}

#[tokio::test]
async fn unknown_command_gets_generic_nack_and_the_connection_still_serves() {
    let smsc = TestSmsc::start().await;
    let mut stream = TcpStream::connect(smsc.addr).await.unwrap();
    let mut pdu = Vec::new();
    for word in [16u32, 0x1234_5678, 0, 1] {
        pdu.extend_from_slice(&word.to_be_bytes());
    }
    stream.write_all(&pdu).await.unwrap();
    let mut head = [0u8; 16];
    within("generic_nack", stream.read_exact(&mut head)).await.unwrap();
    assert_eq!(head, [0, 0, 0, 16, 0x80, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1]);

    let mut conn = Framed::new(stream, SmppCodec::default());
    let bind = BindTransmitter::builder()
        .system_id(COctetString::from_str("otpgate").unwrap())
        .password(COctetString::from_str("otpgate").unwrap())
        .build();
    assert_eq!(raw_call(&mut conn, 2, bind).await.status(), CommandStatus::EsmeRok);
    let answer = raw_call(&mut conn, 3, Pdu::EnquireLink).await;
    assert_eq!((answer.id(), answer.sequence_number()), (CommandId::EnquireLinkResp, 3));
    drop(conn);
    smsc.stop().await;
}

/// Answers to PDUs that arrive in one read leave together, but never wait
/// for a PDU only partly arrived: here the answers to two enquire_links
/// come while the third is still cut in half.
#[tokio::test]
async fn answers_are_not_held_back_by_a_pdu_cut_in_half() {
    let smsc = TestSmsc::start().await;
    let mut conn = raw(smsc.addr).await;
    let bind = BindTransmitter::builder()
        .system_id(COctetString::from_str("otpgate").unwrap())
        .password(COctetString::from_str("otpgate").unwrap())
        .build();
    assert_eq!(raw_call(&mut conn, 1, bind).await.status(), CommandStatus::EsmeRok);
    let enquire_link = |seq: u32| -> Vec<u8> { [16u32, 0x15, 0, seq].iter().flat_map(|w| w.to_be_bytes()).collect() };
    let whole = [enquire_link(10), enquire_link(11)].concat();
    let third = enquire_link(12);
    let stream = conn.get_mut();
    stream.write_all(&[&whole[..], &third[..8]].concat()).await.unwrap();
    for seq in [10, 11] {
        match within("an answer while a PDU is half sent", conn.next()).await {
            Some(Ok(Inbound::Command(answer))) => {
                assert_eq!(
                    (answer.id(), answer.sequence_number()),
                    (CommandId::EnquireLinkResp, seq)
                );
            }
            other => panic!("expected enquire_link_resp {seq}, got {other:?}"),
        }
    }
    conn.get_mut().write_all(&third[8..]).await.unwrap();
    match within("the last answer", conn.next()).await {
        Some(Ok(Inbound::Command(answer))) => assert_eq!(answer.sequence_number(), 12),
        other => panic!("expected enquire_link_resp 12, got {other:?}"),
    }
    drop(conn);
    smsc.stop().await;
}

#[tokio::test]
async fn multipart_ucs2_reaches_the_backend_as_one_text() {
    let mut smsc = TestSmsc::start().await;
    let (client, _events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    let whole: String = "ワンタイムパスワードのお知らせ。".chars().cycle().take(150).collect();
    let encoded = text::encode_for_sms(&whole).unwrap();
    assert_eq!(encoded.parts.len(), 3);
    let total = encoded.parts.len() as u8;
    let mut ids = Vec::new();
    // Sent out of order: the last part first.
    for (i, part) in encoded.parts.iter().enumerate().rev() {
        let sm = submit_sm("819012345678", 8, 0x40, text::with_udh(7, total, i as u8 + 1, part));
        let resp = within("part", client.submit_sm(sm)).await.unwrap();
        ids.push(resp.message_id().as_str().to_string());
    }
    let sub = smsc.submissions.try_recv().expect("one submission for the whole");
    assert_eq!(sub.text, whole);
    assert_eq!((sub.parts, sub.data_coding), (3, 8));
    assert!(
        smsc.submissions.try_recv().is_err(),
        "parts reached the backend one by one"
    );
    assert_eq!(
        ids.last().map(String::as_str),
        Some("m1"),
        "the completing part carries the id"
    );
    hang_up(client).await;
    smsc.stop().await;
}

/// A long message may carry 64 KiB of user data, whatever its parts: a
/// part (SAR with a message_payload) that would take it past that is
/// refused with ESME_RINVMSGLEN and the parts before it wait on, so that a
/// peer cannot make the SMSC hold more than its limits.
#[tokio::test]
async fn a_part_that_makes_its_message_longer_than_64_kib_gets_esme_rinvmsglen() {
    let mut smsc = TestSmsc::start().await;
    let mut conn = raw(smsc.addr).await;
    let bind = bind_transceiver("esme", "secret");
    assert_eq!(raw_call(&mut conn, 1, bind).await.status(), CommandStatus::EsmeRok);
    let part = |seq: u8, len: usize| {
        let mut sm = submit_sm("819012345678", 4, 0, vec![]);
        sm.push_tlv(MessageSubmissionRequestTlvValue::MessagePayload(
            rusmpp::values::MessagePayload::new(AnyOctetString::from_vec(vec![b'x'; len])),
        ));
        sm.push_tlv(MessageSubmissionRequestTlvValue::SarMsgRefNum(301));
        sm.push_tlv(MessageSubmissionRequestTlvValue::SarTotalSegments(3));
        sm.push_tlv(MessageSubmissionRequestTlvValue::SarSegmentSeqnum(seq));
        sm
    };
    let big = concat::DEFAULT_MAX_MESSAGE_BYTES / 2;
    assert_eq!(
        raw_call(&mut conn, 2, part(1, big)).await.status(),
        CommandStatus::EsmeRok
    );
    assert_eq!(
        raw_call(&mut conn, 3, part(2, big)).await.status(),
        CommandStatus::EsmeRok
    );
    assert_eq!(
        raw_call(&mut conn, 4, part(3, 1)).await.status(),
        CommandStatus::EsmeRinvmsglen
    );
    assert_eq!(
        raw_call(&mut conn, 5, part(2, big - 1)).await.status(),
        CommandStatus::EsmeRok
    );
    assert_eq!(
        raw_call(&mut conn, 6, part(3, 1)).await.status(),
        CommandStatus::EsmeRok
    );
    let whole = smsc.submissions.try_recv().expect("the message, whole at 64 KiB");
    assert_eq!(whole.part_ids.len(), 2);
    smsc.stop().await;
}

#[tokio::test]
async fn sar_parts_and_payload_are_reassembled_and_queryable() {
    let mut smsc = TestSmsc::start().await;
    let mut conn = raw(smsc.addr).await;
    let bind = bind_transceiver("esme", "secret");
    assert_eq!(raw_call(&mut conn, 1, bind).await.status(), CommandStatus::EsmeRok);
    let mut part_ids = Vec::new();
    for (seq, chunk) in [(1u8, "Hello, "), (2, "world")] {
        let mut sm = submit_sm("819012345678", 1, 0, chunk.as_bytes().to_vec());
        sm.push_tlv(MessageSubmissionRequestTlvValue::SarMsgRefNum(300));
        sm.push_tlv(MessageSubmissionRequestTlvValue::SarTotalSegments(2));
        sm.push_tlv(MessageSubmissionRequestTlvValue::SarSegmentSeqnum(seq));
        let answer = raw_call(&mut conn, 10 + u32::from(seq), sm).await;
        let Some(Pdu::SubmitSmResp(resp)) = answer.pdu() else {
            panic!("{answer:?}")
        };
        part_ids.push(resp.message_id().as_str().to_string());
    }
    assert_eq!(smsc.submissions.try_recv().unwrap().text, "Hello, world");

    let mut sm = submit_sm("819012345678", 0, 0, vec![]);
    sm.push_tlv(MessageSubmissionRequestTlvValue::MessagePayload(
        rusmpp::values::MessagePayload::new(AnyOctetString::from_static_slice(b"from the payload")),
    ));
    assert_eq!(raw_call(&mut conn, 20, sm).await.status(), CommandStatus::EsmeRok);
    assert_eq!(smsc.submissions.try_recv().unwrap().text, "from the payload");

    // The first part's id stands for the whole message.
    let query = QuerySm::builder()
        .message_id(COctetString::from_str(&part_ids[0]).unwrap())
        .build();
    let answer = raw_call(&mut conn, 21, query).await;
    assert_eq!(
        (answer.id(), answer.status()),
        (CommandId::QuerySmResp, CommandStatus::EsmeRok)
    );
    let query = QuerySm::builder()
        .message_id(COctetString::from_str("nope").unwrap())
        .build();
    assert_eq!(
        raw_call(&mut conn, 22, query).await.status(),
        CommandStatus::EsmeRqueryfail
    );

    let cancel = |id: &str| {
        CancelSm::builder()
            .message_id(COctetString::from_str(id).unwrap())
            .build()
    };
    let answer = raw_call(&mut conn, 23, cancel(&part_ids[1])).await;
    assert_eq!(
        (answer.id(), answer.status()),
        (CommandId::CancelSmResp, CommandStatus::EsmeRok)
    );
    let answer = raw_call(&mut conn, 24, cancel(&part_ids[1])).await;
    assert_eq!(answer.status(), CommandStatus::EsmeRcancelfail, "cancelled twice");
    drop(conn);
    smsc.stop().await;
}

#[tokio::test]
async fn shutdown_unbinds_bound_sessions() {
    let smsc = TestSmsc::start().await;
    let (client, mut events) = connect(smsc.addr).await;
    within("bind", client.bind_transceiver(bind_transceiver("esme", "secret")))
        .await
        .unwrap();
    smsc.trigger.fire();
    loop {
        match within("unbind", events.next()).await {
            Some(Event::Incoming(command)) if command.id() == CommandId::Unbind => {
                client.unbind_resp(command.sequence_number()).await.unwrap();
                break;
            }
            Some(_) => continue,
            None => panic!("connection closed without unbind"),
        }
    }
    within("serve to return", smsc.task).await.unwrap();
}

/// A data_sm's `qos_time_to_live` (seconds) becomes a relative validity
/// period, read back as the same time.
#[test]
fn time_to_live_is_written_as_a_relative_validity_period() {
    assert_eq!(session::relative_smpp_time(90), "000000000130000R");
    let ttl = 2 * 86_400 + 3 * 3_600 + 4 * 60 + 5;
    let written = session::relative_smpp_time(ttl);
    assert_eq!(written, "000002030405000R");
    assert_eq!(
        crate::sim::sms::parse_smpp_time(&written, 0),
        Some(i64::from(ttl) * 1000)
    );
    assert_eq!(
        session::relative_smpp_time(u32::MAX),
        "000099235959000R",
        "99 days at most"
    );
}

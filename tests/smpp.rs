//! The embedded SMSC as a user's own SMS application sees it: an ESME built
//! on rusmppc (not otpgate's code) binds to the real server on port 0,
//! submits, and reads delivery receipts off its event stream while the test
//! moves the virtual clock over HTTP. Binds, receipts and their TLVs, bad
//! PDUs, enquire_link and unbind, submit_multi, query_sm, cancel_sm and
//! replace_sm,
//! registered_delivery, validity_period, receipts kept for a later bind,
//! long messages, throttling, seed reproducibility, and the status
//! callbacks a suite waits on instead of polling.

mod common;

use std::collections::BTreeMap;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::esme::{
    multi_id, raw_call, raw_receipt, raw_submit_multi, raw_transceiver, sme, sms, within, Bind, Esme, RawConn, Sms,
    SENDER,
};
use common::handsets::receipt_date;
use common::hooks::HookReceiver;
use common::TestServer;
use otpgate::config::SmscAccount;

const PHONE: &str = "09011110001";
/// Seconds that take any reachable phone past its carrier's longest delay.
const RUN: u64 = 180;

/// A docomo phone that is switched off.
const OFF_PHONE: &str = "09011110002";

/// [`OFF_PHONE`] switched off and [`PHONE`] on, both on docomo, and a
/// transceiver bound to the SMSC.
async fn one_phone_off_one_on(server: &TestServer) -> Esme {
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    Esme::bind(server.smpp, Bind::Transceiver).await
}

/// Binds as `kind` with these credentials and expects `Ok` or the refusal's
/// command_status.
async fn check_bind(server: &TestServer, kind: Bind, system_id: &str, password: &str, expect: Result<(), u32>) {
    let got = match Esme::bind_as(server.smpp, kind, system_id, password).await {
        Ok(esme) => {
            esme.unbind().await;
            Ok(())
        }
        Err(status) => Err(status),
    };
    assert_eq!(got, expect, "{kind:?} bind as {system_id}/{password}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_as_transmitter_receiver_and_transceiver_and_refuses_bad_credentials() {
    let server = TestServer::start().await;
    for kind in [Bind::Transmitter, Bind::Receiver, Bind::Transceiver] {
        check_bind(&server, kind, "otpgate", "otpgate", Ok(())).await;
        check_bind(&server, kind, "otpgate", "wrong", Err(0x0E)).await;
    }
    check_bind(&server, Bind::Transceiver, "nobody", "otpgate", Err(0x0F)).await;
    // The OTP core's account exists, but its password is not the user's.
    check_bind(&server, Bind::Transceiver, "otpgate-core", "otpgate", Err(0x0E)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_message_reaches_the_handset_and_its_receipt_says_delivrd() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let id = esme.send(&sms(PHONE, "Your code is 123456")).await;
    server.advance(RUN).await;
    let receipt = esme.receipt().await;

    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(
        (inbox[0].from.as_str(), inbox[0].text.as_str()),
        ("03-5460-0124", "Your code is 123456")
    );
    assert_eq!(receipt.esm_class, 0x04);
    assert_eq!(
        receipt.text,
        format!(
            "id:{id} sub:001 dlvrd:001 submit date:2601010000 done date:{} stat:DELIVRD err:000 text:Your code is 123456",
            receipt_date(&inbox[0].received_at)
        )
    );
    assert_eq!(receipt.receipted_message_id.as_deref(), Some(id.as_str()));
    assert_eq!(receipt.summary(), "DELIVRD err:000 state:2 nec:-");
    assert_eq!(
        (receipt.source_addr.as_str(), receipt.dest_addr.as_str()),
        ("819011110001", SENDER)
    );

    // The delivery log has the message under the ESME's account, code masked.
    let (_, log) = server.get("/v1/messages?to=%2B819011110001").await;
    let message = &log["items"][0];
    assert_eq!(message["state"], "delivered", "{message}");
    assert_eq!(message["origin"], "otpgate");
    assert_eq!(message["from"], "03-5460-0124");
    assert_eq!(message["smsc_message_id"], id.as_str());
    assert!(
        !log.to_string().contains("123456"),
        "the log holds the plain code: {log}"
    );
    esme.unbind().await;
    server.stop().await;
}

/// A number nobody set up gets the default handset (docomo, reachable):
/// it receives, and the simulation shows that handset for it, without
/// keeping a record per number a client sends to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_nobody_set_up_receives_on_the_default_handset_which_is_not_stored() {
    let server = TestServer::start().await;
    const NEW: &str = "09011119999";
    let (status, _) = server.get("/v1/sim/handsets/09011119999").await;
    assert_eq!(status, 404, "never seen");
    let (_, before) = server.get("/v1/sim/handsets").await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    esme.send(&sms(NEW, "Your code is 123456")).await;
    // Still on its way: the desk knows the phone it goes to all the same.
    let (status, report) = server.get("/v1/diagnostics/destinations/%2B819011119999").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["handset"]["carrier"], "docomo", "{report}");
    server.advance(RUN).await;
    assert_eq!(esme.receipt().await.summary(), "DELIVRD err:000 state:2 nec:-");
    let inbox = server.inbox(NEW).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].from, "03-5460-0124");

    let (status, handset) = server.get("/v1/sim/handsets/09011119999").await;
    assert_eq!(status, 200, "{handset}");
    assert_eq!(handset["carrier"], "docomo", "{handset}");
    let (_, after) = server.get("/v1/sim/handsets").await;
    assert_eq!(after, before, "the default handset is not stored");
    // Set up later, it is created (201), not changed.
    let (status, _) = server
        .put("/v1/sim/handsets/09011119999", json!({"carrier": "au"}))
        .await;
    assert_eq!(status, 201);
    esme.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enquire_link_is_answered_and_unbind_closes_the_connection() {
    let server = TestServer::start().await;
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    within("enquire_link_resp", esme.client.enquire_link())
        .await
        .expect("enquire_link answered");
    let client = esme.client.clone();
    within("unbind_resp", client.unbind()).await.expect("unbind answered");
    within("the SMSC to close the connection", client.closed()).await;
    server.stop().await;
}

/// Writes raw bytes on a fresh connection and expects `expect` back: the
/// 16-octet header of the answer (length, id, status, sequence), a
/// generic_nack or the operation's response.
/// `then_closed` says whether the SMSC must close the connection after it.
async fn check_bad_pdu(server: &TestServer, bytes: &[u8], expect: [u32; 4], then_closed: bool) -> TcpStream {
    let mut stream = TcpStream::connect(server.smpp).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut head = [0u8; 16];
    within("an answer", stream.read_exact(&mut head))
        .await
        .expect("an answer");
    let words: Vec<u32> = head
        .chunks(4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    assert_eq!(words, expect, "answer to {bytes:02X?}");
    if then_closed {
        let mut rest = Vec::new();
        let read = within("the SMSC to close", stream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "more after the nack: {rest:02X?}");
    }
    stream
}

fn pdu(length: u32, command_id: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [length, command_id, 0, seq] {
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.extend_from_slice(body);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pdus_get_the_protocol_answer_and_the_smsc_keeps_serving() {
    let server = TestServer::start().await;
    // An unknown command: generic_nack ESME_RINVCMDID, and the connection stays.
    let mut stream = check_bad_pdu(
        &server,
        &pdu(16, 0x1234_5678, 7, &[]),
        [16, 0x8000_0000, 0x03, 7],
        false,
    )
    .await;
    stream
        .write_all(&pdu(16, 0x0000_0015, 8, &[]))
        .await
        .expect("enquire_link");
    let mut head = [0u8; 16];
    within("enquire_link_resp", stream.read_exact(&mut head))
        .await
        .expect("answer");
    assert_eq!(&head[4..8], &0x8000_0015u32.to_be_bytes(), "still serving");
    // A bind whose system_id never ends: its own response with
    // ESME_RINVSYSID (a body it cannot read; generic_nack is for headers),
    // and the connection stays.
    let broken = pdu(20, 0x0000_0002, 9, &[0xFF; 4]);
    let mut stream = check_bad_pdu(&server, &broken, [16, 0x8000_0002, 0x0F, 9], false).await;
    stream
        .write_all(&pdu(16, 0x0000_0015, 10, &[]))
        .await
        .expect("enquire_link");
    within("enquire_link_resp", stream.read_exact(&mut head))
        .await
        .expect("answer");
    assert_eq!(&head[4..8], &0x8000_0015u32.to_be_bytes(), "still serving");
    // An absurd command_length: generic_nack ESME_RINVCMDLEN, then close.
    check_bad_pdu(
        &server,
        &pdu(0xFFFF_FFFF, 0x0000_0004, 11, &[]),
        [16, 0x8000_0000, 0x02, 11],
        true,
    )
    .await;
    check_bad_pdu(
        &server,
        &pdu(8, 0x0000_0004, 12, &[]),
        [16, 0x8000_0000, 0x02, 12],
        true,
    )
    .await;
    // A submit_sm whose source address never ends: submit_sm_resp
    // ESME_RINVSRCADR, counted in /metrics as the SMSC's refusal.
    let mut body = b"\0\x00\x00".to_vec();
    body.extend_from_slice(&[b'9'; 40]);
    check_bad_pdu(
        &server,
        &pdu(16 + 43, 0x0000_0004, 13, &body),
        [16, 0x8000_0004, 0x0A, 13],
        false,
    )
    .await;
    assert_eq!(submit_answers(&server, ["ok", "other_error"]).await, [0, 1]);

    // The next client is served as if nothing happened.
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let id = esme.send(&sms(PHONE, "after the garbage")).await;
    server.advance(RUN).await;
    let receipt = esme.receipt().await;
    assert_eq!((receipt.id.as_str(), receipt.stat.as_str()), (id.as_str(), "DELIVRD"));
    esme.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_sm_reports_the_state_and_cancel_sm_stops_a_pending_message() {
    let server = TestServer::start_with(|c| {
        c.smsc.accounts.push(SmscAccount {
            system_id: "other".into(),
            password: "other".into(),
            throughput_per_sec: None,
            window: None,
        })
    })
    .await;
    let off = OFF_PHONE;
    let mut esme = one_phone_off_one_on(&server).await;

    let pending = esme.send(&sms(off, "to a phone that is off")).await;
    server.advance(RUN).await;
    assert_eq!(esme.query(&pending).await, Ok((1, 0, String::new())), "ENROUTE");
    assert_eq!(esme.cancel(&pending).await, 0);
    let (state, _, final_date) = esme.query(&pending).await.expect("query after cancel");
    assert_eq!(state, 4, "DELETED");
    assert!(final_date.starts_with("26010100"), "{final_date}");
    assert_eq!(esme.cancel(&pending).await, 0x11, "cancelled twice");
    // Switched on, the phone does not get the cancelled message.
    server.handset(off, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    assert_eq!(server.inbox(off).await, vec![]);

    let delivered = esme.send(&sms(PHONE, "to a phone that is on")).await;
    server.advance(RUN).await;
    let receipt = esme.receipt().await;
    assert_eq!(receipt.id, delivered, "no receipt for the cancelled message");
    let (state, error, final_date) = esme.query(&delivered).await.expect("query");
    assert_eq!((state, error), (2, 0), "DELIVERED");
    assert!(
        final_date.starts_with(&receipt.done_date),
        "{final_date} vs {receipt:?}"
    );
    assert_eq!(esme.cancel(&delivered).await, 0x11, "too late to cancel");

    assert_eq!(esme.query("9999999999").await, Err(0x67), "ESME_RQUERYFAIL");
    // Another account cannot see or cancel this one's messages.
    let other = Esme::bind_as(server.smpp, Bind::Transmitter, "other", "other")
        .await
        .expect("bind other");
    assert_eq!(other.query(&delivered).await, Err(0x67));
    assert_eq!(other.cancel(&delivered).await, 0x11);
    other.unbind().await;
    esme.unbind().await;
    server.stop().await;
}

/// Submits with `registered_delivery` to a new phone in `state`, lets it
/// finish, then sends a marker message that always asks for a receipt: the
/// first receipt that comes back says whether the first message had one.
async fn check_registered_delivery(
    server: &TestServer,
    esme: &mut Esme,
    number: &str,
    registered_delivery: u8,
    state: serde_json::Value,
    expect: Option<&str>,
) {
    server.handset(number, state).await;
    let id = esme
        .send(&sms(number, "registered delivery").registered_delivery(registered_delivery))
        .await;
    server.advance(RUN).await;
    let marker = esme.send(&sms(PHONE, "marker")).await;
    server.advance(RUN).await;
    let first = esme.receipt().await;
    match expect {
        Some(summary) => {
            assert_eq!(first.id, id, "registered_delivery {registered_delivery}: a receipt");
            assert_eq!(first.summary(), summary);
            assert_eq!(esme.receipt().await.id, marker);
        }
        None => assert_eq!(
            first.id, marker,
            "registered_delivery {registered_delivery}: no receipt"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_delivery_0_never_1_always_2_on_failure_only() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let ok = json!({"carrier": "docomo"});
    let full = json!({"carrier": "docomo", "storage_full": true});
    let failed = Some("UNDELIV err:032 state:5 nec:3/32");
    check_registered_delivery(&server, &mut esme, "09022220001", 0, ok.clone(), None).await;
    check_registered_delivery(&server, &mut esme, "09022220002", 0, full.clone(), None).await;
    check_registered_delivery(
        &server,
        &mut esme,
        "09022220003",
        1,
        ok.clone(),
        Some("DELIVRD err:000 state:2 nec:-"),
    )
    .await;
    check_registered_delivery(&server, &mut esme, "09022220004", 1, full.clone(), failed).await;
    check_registered_delivery(&server, &mut esme, "09022220005", 2, ok, None).await;
    check_registered_delivery(&server, &mut esme, "09022220006", 2, full, failed).await;
    esme.unbind().await;
    server.stop().await;
}

/// Submits with `validity` to a phone that stays off and expects EXPIRED
/// with `done date:` `expect_done` once the clock has run `run` seconds.
async fn check_validity(
    server: &TestServer,
    esme: &mut Esme,
    number: &str,
    validity: &str,
    run: u64,
    expect_done: &str,
) {
    server
        .handset(number, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    let id = esme.send(&sms(number, "short validity").validity(validity)).await;
    server.advance(run).await;
    let receipt = esme.receipt().await;
    assert_eq!(receipt.id, id);
    assert_eq!(
        receipt.summary(),
        "EXPIRED err:027 state:3 nec:3/27",
        "validity {validity}"
    );
    assert_eq!(receipt.done_date, expect_done, "validity {validity}");
    assert_eq!(server.inbox(number).await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_period_ends_the_retries_of_an_absent_phone_at_that_time() {
    let server = TestServer::start().await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    // Relative: ten minutes from the submission at 00:00.
    check_validity(
        &server,
        &mut esme,
        "09033330001",
        "000000001000000R",
        11 * 60,
        "2601010010",
    )
    .await;
    // Absolute: 2026-01-01 00:30 at +09:00, with the clock now at 00:11.
    check_validity(
        &server,
        &mut esme,
        "09033330002",
        "260101003000036+",
        20 * 60,
        "2601010030",
    )
    .await;
    // One that cannot be read is the ESME's bug, not the carrier's default.
    for unreadable in ["next tuesday!!!!", "261301000000000+"] {
        let status = esme.submit(&sms(PHONE, "never").validity(unreadable)).await;
        assert_eq!(status, Err(0x62), "{unreadable}: ESME_RINVEXPIRY");
    }
    esme.unbind().await;
    server.stop().await;
}

/// schedule_delivery_time holds a message back: nothing is tried before
/// it, then it is delivered as any other; one after the end of the
/// validity period, or unreadable, is refused with ESME_RINVSCHED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_delivery_time_holds_the_message_until_then() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let held = esme
        .send(&sms(PHONE, "in ten minutes").scheduled("000000001000000R"))
        .await;
    server.advance(9 * 60).await;
    assert_eq!(esme.query(&held).await.map(|q| q.0), Ok(1), "ENROUTE, not tried yet");
    assert!(server.inbox(PHONE).await.is_empty());
    let events = logged_events(&server, PHONE).await;
    assert_eq!(events, ["smsc_accepted"], "no attempt before the time");
    server.advance(60 + RUN).await;
    let receipt = esme.receipt().await;
    assert_eq!((receipt.id.as_str(), receipt.stat.as_str()), (held.as_str(), "DELIVRD"));
    assert_eq!(server.inbox(PHONE).await.len(), 1);

    for refused in ["000004000000000R", "tomorrow please!"] {
        let status = esme.submit(&sms(PHONE, "never").scheduled(refused)).await;
        assert_eq!(status, Err(0x61), "{refused}: ESME_RINVSCHED");
    }
    esme.unbind().await;
    server.stop().await;
}

/// How many submits `/metrics` counts for each of `answers`.
async fn submit_answers<const N: usize>(server: &TestServer, answers: [&str; N]) -> [u64; N] {
    let metrics = server.metrics().await;
    answers.map(|answer| metrics.value(&format!("otpgate_smpp_submit_sm_total{{answer=\"{answer}\"}}")) as u64)
}

/// The store-and-forward queue is bounded: past `max_pending` messages not
/// yet final (a phone that is off keeps its messages until their validity
/// ends) a submit gets ESME_RMSGQFUL, and once some are final submits are
/// taken again; `/metrics` shows how many wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_pending_messages_not_yet_final_a_submit_gets_esme_rmsgqful() {
    let server = TestServer::start_with(|c| c.smsc.max_pending = 2).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    for n in 0..2 {
        esme.send(&sms(OFF_PHONE, &format!("held {n}"))).await;
    }
    assert_eq!(esme.submit(&sms(OFF_PHONE, "one too many")).await, Err(0x14));
    assert_eq!(server.metrics().await.value("otpgate_smsc_pending"), 2.0);
    let answers = ["ok", "queue_full", "throttled"];
    assert_eq!(submit_answers(&server, answers).await, [2, 1, 0]);

    server.handset(OFF_PHONE, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    for _ in 0..2 {
        assert_eq!(esme.receipt().await.stat, "DELIVRD");
    }
    esme.send(&sms(OFF_PHONE, "taken again")).await;
    esme.unbind().await;
    server.stop().await;
}

/// data_sm, SMPP 3.4's other way to submit (the text in message_payload),
/// is taken as submit_sm is: data_sm_resp with the message id, the phone
/// shows the text, and the receipt names that id; its qos_time_to_live
/// ends the retries of a phone that is off, as a validity period does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sm_submits_a_message_as_submit_sm_does() {
    use rusmpp::pdus::DataSm;
    use rusmpp::tlvs::MessageSubmissionRequestTlvValue;
    use rusmpp::types::{AnyOctetString, COctetString};
    use rusmpp::values::{DataCoding, MessagePayload, Npi, RegisteredDelivery, Ton};
    use rusmpp::{CommandStatus, Pdu};
    use std::str::FromStr;
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "au"})).await;
    let mut conn = raw_transceiver(server.smpp).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    fn data_sm(to: &str, text: &'static [u8], ttl: Option<u32>) -> DataSm {
        let mut tlvs = vec![MessageSubmissionRequestTlvValue::MessagePayload(MessagePayload::new(
            AnyOctetString::from_static_slice(text),
        ))];
        tlvs.extend(ttl.map(MessageSubmissionRequestTlvValue::QosTimeToLive));
        DataSm::builder()
            .source_addr_ton(Ton::National)
            .source_addr_npi(Npi::Isdn)
            .source_addr(COctetString::from_str(SENDER).expect("source"))
            .dest_addr_ton(Ton::National)
            .dest_addr_npi(Npi::Isdn)
            .destination_addr(COctetString::from_str(to).expect("destination"))
            .registered_delivery(RegisteredDelivery::from(1))
            .data_coding(DataCoding::from(1))
            .tlvs(tlvs)
            .build()
    }
    async fn submit(conn: &mut RawConn, seq: u32, pdu: DataSm) -> String {
        let answer = raw_call(conn, seq, pdu).await;
        let Some(Pdu::DataSmResp(resp)) = answer.pdu() else {
            panic!("data_sm_resp expected: {answer:?}");
        };
        assert_eq!(answer.status(), CommandStatus::EsmeRok);
        resp.message_id().as_str().to_string()
    }
    let id = submit(&mut conn, 2, data_sm(PHONE, b"Your code is 482913 (data_sm)", None)).await;
    // Ten minutes to live, to a phone that stays off.
    let lives = submit(&mut conn, 3, data_sm(OFF_PHONE, b"ten minutes to live", Some(600))).await;
    server.advance(RUN).await;
    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].text, "Your code is 482913 (data_sm)");
    let delivered = raw_receipt(&mut conn).await;
    assert_eq!(
        (delivered.id.as_str(), delivered.stat.as_str()),
        (id.as_str(), "DELIVRD")
    );
    server.advance(600 - RUN).await;
    let expired = raw_receipt(&mut conn).await;
    assert_eq!(
        (expired.id.as_str(), expired.stat.as_str()),
        (lives.as_str(), "EXPIRED")
    );
    let bye = raw_call(&mut conn, 4, Pdu::Unbind).await;
    assert_eq!(bye.status(), CommandStatus::EsmeRok);
    server.stop().await;
}

/// `replace_sm` over raw rusmpp PDUs: a message still waiting (its phone
/// off, or its delivery scheduled) gets the new text, receipt request and
/// schedule, and the handset shows the new text; the delivery log shows
/// the replacement with the code masked. A wrong source address, an
/// unknown id and a message already delivered get ESME_RREPLACEFAIL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_sm_replaces_a_message_still_waiting_for_delivery() {
    use rusmpp::pdus::{ReplaceSm, SubmitSm};
    use rusmpp::types::{COctetString, EmptyOrFullCOctetString, OctetString};
    use rusmpp::values::{Npi, RegisteredDelivery, Ton};
    use rusmpp::{CommandStatus, Pdu};
    use std::str::FromStr;
    let server = TestServer::start().await;
    let mut conn = raw_transceiver(server.smpp).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    server.handset(PHONE, json!({"carrier": "au"})).await;
    let time = |t: &str| EmptyOrFullCOctetString::from_str(t).expect("an SMPP time");
    let submit = |to: &str, text: &'static [u8], schedule: &str| {
        SubmitSm::builder()
            .source_addr_ton(Ton::National)
            .source_addr_npi(Npi::Isdn)
            .source_addr(COctetString::from_str(SENDER).expect("source"))
            .dest_addr_ton(Ton::National)
            .dest_addr_npi(Npi::Isdn)
            .destination_addr(COctetString::from_str(to).expect("destination"))
            .schedule_delivery_time(time(schedule))
            .registered_delivery(RegisteredDelivery::from(0))
            .short_message(OctetString::from_static_slice(text).expect("text"))
            .build()
    };
    let replace = |id: &str, source: &str, text: &'static [u8], schedule: &str| {
        ReplaceSm::builder()
            .message_id(COctetString::from_str(id).expect("id"))
            .source_addr_ton(Ton::National)
            .source_addr_npi(Npi::Isdn)
            .source_addr(COctetString::from_str(source).expect("source"))
            .schedule_delivery_time(time(schedule))
            .registered_delivery(RegisteredDelivery::from(1))
            .short_message(OctetString::from_static_slice(text).expect("text"))
            .build()
    };
    async fn submitted(conn: &mut RawConn, seq: u32, pdu: SubmitSm) -> String {
        let answer = raw_call(conn, seq, pdu).await;
        let Some(Pdu::SubmitSmResp(resp)) = answer.pdu() else {
            panic!("submit_sm_resp expected: {answer:?}");
        };
        assert_eq!(answer.status(), CommandStatus::EsmeRok);
        resp.message_id().as_str().to_string()
    }
    async fn replaced(conn: &mut RawConn, seq: u32, pdu: ReplaceSm) -> CommandStatus {
        let answer = raw_call(conn, seq, pdu).await;
        assert!(
            matches!(answer.pdu(), Some(Pdu::ReplaceSmResp) | None),
            "replace_sm_resp expected: {answer:?}"
        );
        answer.status()
    }

    // To a phone that is off: waiting, so it can be replaced; the
    // replacement asks for the receipt the original did not.
    let waiting = submitted(&mut conn, 2, submit(OFF_PHONE, b"Your code is 111111", "")).await;
    let new_code = b"Your code is 222222";
    assert_eq!(
        replaced(&mut conn, 3, replace(&waiting, SENDER, new_code, "")).await,
        CommandStatus::EsmeRok
    );
    assert_eq!(
        replaced(&mut conn, 4, replace(&waiting, "0312345678", new_code, "")).await,
        CommandStatus::EsmeRreplacefail,
        "another source address"
    );
    assert_eq!(
        replaced(&mut conn, 5, replace("9999999999", SENDER, new_code, "")).await,
        CommandStatus::EsmeRreplacefail,
        "an unknown id"
    );
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": true}))
        .await;
    server.advance(RUN).await;
    let inbox = server.inbox(OFF_PHONE).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].text, "Your code is 222222");
    let delivered = raw_receipt(&mut conn).await;
    assert_eq!(
        (delivered.id.as_str(), delivered.stat.as_str()),
        (waiting.as_str(), "DELIVRD")
    );
    assert_eq!(
        replaced(&mut conn, 6, replace(&waiting, SENDER, b"too late", "")).await,
        CommandStatus::EsmeRreplacefail,
        "delivered already"
    );
    let (_, log) = server.get("/v1/messages?to=%2B819011110002").await;
    let message = &log["items"][0];
    let kinds: Vec<&str> = message["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"replaced"), "{message}");
    assert!(
        !log.to_string().contains("222222"),
        "the log holds the plain code: {log}"
    );

    // Scheduled an hour on, then brought forward to a minute on.
    let scheduled = submitted(&mut conn, 7, submit(PHONE, b"in an hour", "000000010000000R")).await;
    assert_eq!(
        replaced(
            &mut conn,
            8,
            replace(&scheduled, SENDER, b"in a minute", "000000000100000R")
        )
        .await,
        CommandStatus::EsmeRok
    );
    server.advance(RUN).await;
    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1, "delivered a minute on, not an hour: {inbox:?}");
    assert_eq!(inbox[0].text, "in a minute");
    assert_eq!(raw_receipt(&mut conn).await.id, scheduled);
    let bye = raw_call(&mut conn, 9, Pdu::Unbind).await;
    assert_eq!(bye.status(), CommandStatus::EsmeRok);
    server.stop().await;
}

/// `submit_multi` over raw rusmpp PDUs: one id for every destination,
/// the one the SMSC cannot take listed in `unsuccess_sme`; each phone gets
/// the message, each receipt carries the one id (told apart by its
/// source address); `query_sm` by it is ENROUTE while any destination
/// waits, and `cancel_sm` by it cancels those still waiting. A
/// distribution list gets ESME_RINVDLNAME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_multi_sends_to_each_destination_under_one_id() {
    use futures::StreamExt;
    use rusmpp::pdus::{CancelSm, QuerySm, SubmitMulti};
    use rusmpp::types::{COctetString, OctetString};
    use rusmpp::values::{DestAddress, DistributionListName, MessageState, Npi, RegisteredDelivery, Ton};
    use rusmpp::{Command, CommandStatus, Pdu};
    use std::str::FromStr;
    let server = TestServer::start().await;
    let mut conn = raw_transceiver(server.smpp).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let address = |n: &str| COctetString::from_str(n).expect("an address");
    let multi = |dests: Vec<DestAddress>| {
        SubmitMulti::builder()
            .source_addr_ton(Ton::National)
            .source_addr_npi(Npi::Isdn)
            .source_addr(address(SENDER))
            .dest_address(dests)
            .registered_delivery(RegisteredDelivery::from(1))
            .short_message(OctetString::from_static_slice(b"Your code is 333333").expect("text"))
            .build()
    };
    async fn state_of(conn: &mut RawConn, seq: u32, id: &str) -> MessageState {
        let query = QuerySm::builder()
            .message_id(COctetString::from_str(id).expect("id"))
            .build();
        let answer = raw_call(conn, seq, query).await;
        let Some(Pdu::QuerySmResp(resp)) = answer.pdu() else {
            panic!("query_sm_resp expected: {answer:?}");
        };
        resp.message_state
    }

    let answer = raw_call(&mut conn, 2, multi(vec![sme(PHONE), sme(OFF_PHONE), sme("12")])).await;
    let Some(Pdu::SubmitMultiResp(resp)) = answer.pdu() else {
        panic!("submit_multi_resp expected: {answer:?}");
    };
    assert_eq!(answer.status(), CommandStatus::EsmeRok);
    let id = resp.message_id.as_str().to_string();
    let refused: Vec<(String, CommandStatus)> = resp
        .unsuccess_sme()
        .iter()
        .map(|u| (u.destination_addr.as_str().to_string(), u.error_status_code))
        .collect();
    assert_eq!(refused, [("12".to_string(), CommandStatus::EsmeRinvdstadr)]);

    server.advance(RUN).await;
    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].text, "Your code is 333333");
    let (_, shown) = server.get("/v1/sim/handsets/09011110001/messages").await;
    assert_eq!(
        shown["items"][0]["message_id"],
        id.as_str(),
        "the id the ESME was given"
    );
    let delivered = raw_receipt(&mut conn).await;
    assert_eq!(
        (
            delivered.id.as_str(),
            delivered.stat.as_str(),
            delivered.source_addr.as_str()
        ),
        (id.as_str(), "DELIVRD", "819011110001")
    );
    assert_eq!(
        state_of(&mut conn, 3, &id).await,
        MessageState::Enroute,
        "one still waits"
    );
    // The delivery log finds both destinations' messages by the one id.
    let (_, found) = server.get(&format!("/v1/messages?smsc_message_id={id}")).await;
    let found: Vec<(&str, &str)> = found["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {found}"))
        .iter()
        .map(|m| (m["to"].as_str().unwrap_or("?"), m["state"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(
        found,
        [("+819011110002", "enroute"), ("+819011110001", "delivered")],
        "newest first"
    );
    let (_, none) = server.get("/v1/messages?smsc_message_id=9999999999").await;
    assert_eq!(none["items"], json!([]));

    let cancel = |seq: u32| {
        let pdu = CancelSm::builder()
            .message_id(COctetString::from_str(&id).expect("id"))
            .build();
        Command::new(CommandStatus::EsmeRok, seq, pdu)
    };
    futures::SinkExt::send(&mut conn, cancel(4)).await.expect("cancel_sm");
    let answer = within("cancel_sm_resp", conn.next())
        .await
        .expect("open")
        .expect("a PDU");
    assert_eq!((answer.sequence_number(), answer.status()), (4, CommandStatus::EsmeRok));
    assert_eq!(
        state_of(&mut conn, 5, &id).await,
        MessageState::Deleted,
        "delivered to one, cancelled for the other"
    );
    futures::SinkExt::send(&mut conn, cancel(6)).await.expect("cancel_sm");
    let answer = within("cancel_sm_resp", conn.next())
        .await
        .expect("open")
        .expect("a PDU");
    assert_eq!(
        answer.status(),
        CommandStatus::EsmeRcancelfail,
        "nothing left to cancel"
    );
    assert!(server.inbox(OFF_PHONE).await.is_empty());

    let list = DestAddress::DistributionListName(DistributionListName::new(address("friends")));
    let answer = raw_call(&mut conn, 7, multi(vec![sme(PHONE), list])).await;
    assert_eq!(answer.status(), CommandStatus::EsmeRinvdlname);
    assert_eq!(
        submit_answers(&server, ["ok", "other_error"]).await,
        [1, 1],
        "a submit_multi's answers are counted with submit_sm's"
    );
    let bye = raw_call(&mut conn, 8, Pdu::Unbind).await;
    assert_eq!(bye.status(), CommandStatus::EsmeRok);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_for_a_transmitter_goes_to_a_receiver_or_waits_until_one_binds() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let transmitter = Esme::bind(server.smpp, Bind::Transmitter).await;

    // No receiver bound: the receipt is kept.
    let kept = transmitter.send(&sms(PHONE, "kept for later")).await;
    server.advance(RUN).await;
    let mut receiver = Esme::bind(server.smpp, Bind::Receiver).await;
    let receipt = receiver.receipt().await;
    assert_eq!((receipt.id.as_str(), receipt.stat.as_str()), (kept.as_str(), "DELIVRD"));

    // A receiver bound: the receipt goes to it at once.
    let live = transmitter.send(&sms(PHONE, "to the receiver")).await;
    server.advance(RUN).await;
    let receipt = receiver.receipt().await;
    assert_eq!((receipt.id.as_str(), receipt.stat.as_str()), (live.as_str(), "DELIVRD"));

    // The receiver leaves before the receipt; the next bind gets it.
    receiver.unbind().await;
    let later = transmitter.send(&sms(PHONE, "kept again")).await;
    server.advance(RUN).await;
    let mut transceiver = Esme::bind(server.smpp, Bind::Transceiver).await;
    assert_eq!(transceiver.receipt().await.id, later);
    transmitter.unbind().await;
    transceiver.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_waiting_for_a_bind_survives_a_crash_and_a_restart_and_is_sent_once() {
    let mut server = common::BinServer::start(None).await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let transmitter = Esme::bind(server.smpp, Bind::Transmitter).await;
    let first = transmitter.send(&sms(PHONE, "Your code is 482913")).await;
    let second = transmitter.send(&sms(PHONE, "kept across two restarts")).await;
    server.advance(RUN).await;
    let (state, _, _) = transmitter.query(&first).await.expect("query_sm");
    assert_eq!(state, 2, "delivered before the crash");
    transmitter.hang_up().await;

    server.crash_and_restart().await;
    let mut receiver = Esme::bind(server.smpp, Bind::Receiver).await;
    let got = [receiver.receipt().await, receiver.receipt().await];
    let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    let mut sent = [first.as_str(), second.as_str()];
    sent.sort();
    assert_eq!(ids, sent);
    for receipt in &got {
        assert_eq!(receipt.stat, "DELIVRD", "{}", receipt.text);
        assert_eq!(receipt.receipted_message_id.as_deref(), Some(receipt.id.as_str()));
    }
    // Kept on disk with the quoted digits masked: only the inbox keeps a code.
    let quote = got.iter().find(|r| r.id == first).unwrap();
    assert!(quote.text.ends_with("text:Your code is ******"), "{}", quote.text);
    receiver.unbind().await;

    // Taken: a clean restart does not send them again. The first receipt the
    // next bind gets is for a message submitted after it.
    server.restart().await;
    let mut transceiver = Esme::bind(server.smpp, Bind::Transceiver).await;
    let third = transceiver.send(&sms(PHONE, "after the restarts")).await;
    server.advance(RUN).await;
    assert_eq!(transceiver.receipt().await.id, third);
    transceiver.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_is_known_by_each_parts_id_across_a_crash_and_each_gets_its_receipt() {
    let mut server = common::BinServer::start(None).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let text = "Your one-time password is 482913. ".repeat(6);
    let mut ids = esme.submit_parts(&sms(OFF_PHONE, &text)).await.expect("parts accepted");
    assert_eq!(ids.len(), 2, "two parts of 153 characters at most");
    esme.hang_up().await;

    // The phone is off: after a crash the message is still pending, and
    // the earlier part's id still names it.
    server.crash_and_restart().await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    for id in &ids {
        assert_eq!(esme.query(id).await.map(|q| q.0), Ok(1), "ENROUTE by {id}");
    }
    server.handset(OFF_PHONE, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    let mut receipted = vec![esme.receipt().await.id, esme.receipt().await.id];
    receipted.sort();
    ids.sort();
    assert_eq!(receipted, ids, "a receipt for each part's id");
    for id in &ids {
        assert_eq!(esme.query(id).await.map(|q| q.0), Ok(2), "DELIVERED by {id}");
    }
    esme.unbind().await;
    server.stop().await;
}

/// 200 characters of Japanese: three UCS-2 parts of 67, 67 and 66.
fn two_hundred_japanese_characters() -> String {
    (1..)
        .flat_map(|i| {
            format!("【{i}】ワンタイムパスワードのお知らせです。")
                .chars()
                .collect::<Vec<_>>()
        })
        .take(200)
        .collect()
}

/// Each part of a long message is acknowledged as it comes, so a crash
/// between two parts must lose none that was: after the restart the last
/// part completes the message, which arrives whole, and every part's id
/// gets its receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_acknowledged_before_a_crash_complete_the_message_after_it() {
    let mut server = common::BinServer::start(None).await;
    server.handset(PHONE, json!({"carrier": "au"})).await;
    let text = two_hundred_japanese_characters();
    let mut pdus = sms(PHONE, &text).pdus();
    assert_eq!(pdus.len(), 3);
    let last = pdus.pop().expect("a last part");
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let mut ids = esme.submit_pdus(pdus).await.expect("the first two parts accepted");
    esme.hang_up().await;

    server.crash_and_restart().await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    ids.extend(esme.submit_pdus(vec![last]).await.expect("the last part accepted"));
    server.advance(RUN).await;
    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1, "one message, whole: {inbox:?}");
    assert_eq!(inbox[0].text, text);
    let mut receipted = Vec::new();
    for _ in 0..3 {
        receipted.push(esme.receipt().await.id);
    }
    receipted.sort();
    ids.sort();
    assert_eq!(receipted, ids, "a receipt for each part's id");
    esme.unbind().await;
    server.stop().await;
}

/// A long message whose last part never comes is not lost in silence:
/// while the SMSC waits, each part acknowledged so far is ENROUTE; when
/// its 10 minutes of the simulation's clock end, each part's id gets an
/// EXPIRED receipt and answers EXPIRED, the delivery log shows what came
/// (the code masked) and why nothing was delivered, the phone shows
/// nothing, and a crash after all that does not log the message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_whose_last_part_never_comes_expires_with_a_receipt_for_each_part() {
    let mut server = common::BinServer::start(None).await;
    server.handset(PHONE, json!({"carrier": "au"})).await;
    let text = format!("Your code is 482913. {}", two_hundred_japanese_characters());
    let mut pdus = sms(PHONE, &text).registered_delivery(1).pdus();
    assert_eq!(pdus.len(), 4);
    pdus.remove(2);
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let mut ids = esme.submit_pdus(pdus).await.expect("three parts accepted");
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert_eq!(esme.query(id).await.map(|q| q.0), Ok(1), "ENROUTE by {id}");
    }

    server.advance(9 * 60).await;
    assert_eq!(esme.query(&ids[0]).await.map(|q| q.0), Ok(1), "still waiting");
    server.advance(60).await;
    let mut receipted = Vec::new();
    for _ in 0..3 {
        let receipt = esme.receipt().await;
        assert_eq!((receipt.stat.as_str(), receipt.message_state), ("EXPIRED", Some(3)));
        receipted.push(receipt.id);
    }
    receipted.sort();
    ids.sort();
    assert_eq!(receipted, ids, "a receipt for each part's id");
    for id in &ids {
        assert_eq!(esme.query(id).await.map(|q| q.0), Ok(3), "EXPIRED by {id}");
    }
    assert!(server.inbox(PHONE).await.is_empty(), "the phone shows nothing");
    let (_, log) = server
        .get(&format!("/v1/messages?to={}", common::enc("+819011110001")))
        .await;
    assert_eq!(log["items"].as_array().map(Vec::len), Some(1), "{log}");
    let message = &log["items"][0];
    assert_eq!(message["state"], "expired");
    let logged = message["text"].as_str().unwrap_or_default();
    assert!(logged.starts_with("Your code is ******."), "{logged}");
    assert!(logged.contains('…') && !logged.contains("482913"), "{logged}");
    let last = &message["events"][1];
    assert_eq!(
        (&last["kind"], &last["stat"]),
        (&json!("incomplete"), &json!("EXPIRED"))
    );
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("only parts 1, 2, 4 of 4 came"), "{detail}");
    esme.hang_up().await;

    server.crash_and_restart().await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    assert_eq!(
        esme.query(&ids[1]).await.map(|q| q.0),
        Ok(3),
        "EXPIRED after the restart"
    );
    let (_, log) = server
        .get(&format!("/v1/messages?to={}", common::enc("+819011110001")))
        .await;
    assert_eq!(log["items"].as_array().map(Vec::len), Some(1), "logged once: {log}");
    // A receipt whose answer the crash overtook may come again (never
    // none), still EXPIRED; nothing else comes before a new message's.
    let after = esme.send(&sms(PHONE, "after the restart")).await;
    server.advance(RUN).await;
    loop {
        let receipt = esme.receipt().await;
        if receipt.id == after {
            break;
        }
        assert!(
            ids.contains(&receipt.id) && receipt.stat == "EXPIRED",
            "{}",
            receipt.text
        );
    }
    esme.unbind().await;
    server.stop().await;
}

/// cancel_sm by any part's id cancels a long message still waiting for its
/// other parts: DELETED by each part's id, logged as cancelled, and no
/// receipt, as for a whole message cancelled while pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sm_by_a_parts_id_cancels_a_long_message_still_waiting_for_parts() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let mut pdus = sms(PHONE, &two_hundred_japanese_characters())
        .registered_delivery(1)
        .pdus();
    pdus.pop();
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let ids = esme.submit_pdus(pdus).await.expect("two of three parts accepted");
    assert_eq!(esme.cancel(&ids[1]).await, 0, "cancel_sm_resp OK");
    for id in &ids {
        assert_eq!(esme.query(id).await.map(|q| q.0), Ok(4), "DELETED by {id}");
    }
    assert_ne!(esme.cancel(&ids[0]).await, 0, "nothing left to cancel");
    assert_eq!(logged_events(&server, PHONE).await, ["smsc_accepted", "cancelled"]);
    let after = esme.send(&sms(PHONE, "after the cancel")).await;
    server.advance(RUN).await;
    assert_eq!(esme.receipt().await.id, after, "no receipt for the cancelled one");
    assert_eq!(server.inbox(PHONE).await.len(), 1);
    esme.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_character_japanese_message_arrives_whole_and_in_order() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "au"})).await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let text = two_hundred_japanese_characters();
    let message = sms(PHONE, &text);
    assert_eq!(message.pdus().len(), 3, "67 + 67 + 66 UCS-2 characters");
    let mut ids = esme.submit_parts(&message).await.expect("parts accepted");
    server.advance(RUN).await;

    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1, "one message, not three parts");
    assert_eq!(inbox[0].text, text);
    assert_eq!(inbox[0].from, "03-5460-0124");
    // Each part's id gets the receipt, as a network that receipts every part would.
    let mut receipted = Vec::new();
    for _ in 0..3 {
        let receipt = esme.receipt().await;
        assert_eq!(receipt.summary(), "DELIVRD err:000 state:2 nec:-");
        receipted.push(receipt.id);
    }
    receipted.sort();
    ids.sort();
    assert_eq!(receipted, ids);
    // Any part's id finds the one message in the delivery log.
    for id in &ids {
        let (_, found) = server.get(&format!("/v1/messages?smsc_message_id={id}")).await;
        let items = found["items"].as_array().unwrap_or_else(|| panic!("a list: {found}"));
        assert_eq!(items.len(), 1, "{found}");
        assert_eq!(items[0]["state"], "delivered", "{found}");
    }

    // Parts that arrive last part first are still put together in order.
    let mut backwards = Sms {
        reference: 43,
        ..message
    }
    .pdus();
    backwards.reverse();
    esme.submit_pdus(backwards).await.expect("parts accepted");
    server.advance(RUN).await;
    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[1].text, text);
    for _ in 0..3 {
        assert_eq!(esme.receipt().await.stat, "DELIVRD");
    }
    esme.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_accounts_limit_or_under_carrier_chaos_submits_get_esme_rthrottled() {
    let server = TestServer::start_with(|c| {
        c.smsc.accounts.push(SmscAccount {
            system_id: "slow".into(),
            password: "slow".into(),
            throughput_per_sec: Some(1),
            window: None,
        });
        c.smsc.accounts.push(SmscAccount {
            system_id: "multi".into(),
            password: "multi".into(),
            throughput_per_sec: Some(2),
            window: None,
        });
    })
    .await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    server.handset("09044440001", json!({"carrier": "ahamo"})).await;
    server.handset("08044440002", json!({"carrier": "au"})).await;

    // One a second: of three at once, the first passes.
    let slow = Esme::bind_as(server.smpp, Bind::Transceiver, "slow", "slow")
        .await
        .expect("bind slow");
    let burst = futures::future::join_all((0..3).map(|i| {
        let message = sms(PHONE, &format!("burst {i}"));
        let slow = &slow;
        async move { slow.submit(&message).await.map(|_| ()) }
    }))
    .await;
    assert_eq!(burst, vec![Ok(()), Err(0x58), Err(0x58)]);
    slow.unbind().await;

    // A submit_multi takes a token per destination: three, at two a
    // second, leave the account a second in debt (one a token would have
    // left one for the next submit).
    {
        use rusmpp::types::{COctetString, OctetString};
        use std::str::FromStr;
        let mut conn = common::esme::raw_transceiver_as(server.smpp, "multi", "multi").await;
        let to = [PHONE, "09044440001", "08044440002"];
        multi_id(&raw_submit_multi(&mut conn, 2, SENDER, &to, "to three").await);
        let one = rusmpp::pdus::SubmitSm::builder()
            .source_addr(COctetString::from_str(SENDER).expect("source"))
            .destination_addr(COctetString::from_str(PHONE).expect("destination"))
            .short_message(OctetString::from_static_slice(b"one more").expect("text"))
            .build();
        assert_eq!(
            raw_call(&mut conn, 3, one).await.status(),
            rusmpp::CommandStatus::EsmeRthrottled
        );
    }

    // The default account has no limit.
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let burst = futures::future::join_all((0..5).map(|i| {
        let message = sms(PHONE, &format!("free {i}"));
        let esme = &esme;
        async move { esme.submit(&message).await.map(|_| ()) }
    }))
    .await;
    assert!(burst.iter().all(Result::is_ok), "{burst:?}");

    // Chaos: docomo (and its brand ahamo) throttle every submit; au none.
    let (status, body) = server
        .put(
            "/v1/sim/chaos",
            json!({"enabled": true, "carriers": {"docomo": {"throttle": 1.0}, "au": {"throttle": 0.0, "failure": 0.0, "long_delay": 0.0}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(esme.submit(&sms(PHONE, "docomo")).await, Err(0x58));
    assert_eq!(esme.submit(&sms("09044440001", "ahamo")).await, Err(0x58));
    assert!(esme.submit(&sms("08044440002", "au")).await.is_ok());
    esme.unbind().await;
    server.stop().await;
}

/// Everything an ESME and the handsets can observe of one run: each
/// submission's answer, each receipt, each inbox with its times.
/// An ESME whose window is wider than the SMSC's `submit_window` gets the
/// excess refused with ESME_RTHROTTLED straight away: 400 submits written
/// in one go on one bind are all answered, OK or throttled, and every one
/// answered OK is in the delivery log. (A window of 1 makes the excess
/// certain: the first submit is still waiting for its durable write when
/// the second, already in the same read, comes in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_wider_than_the_smsc_serves_gets_esme_rthrottled_for_the_excess() {
    use futures::{SinkExt, StreamExt};
    use rusmpp::pdus::BindTransmitter;
    use rusmpp::tokio_codec::CommandCodec;
    use rusmpp::types::COctetString;
    use rusmpp::values::InterfaceVersion;
    use rusmpp::{Command, CommandStatus, Pdu};
    use std::str::FromStr;
    use tokio_util::codec::Framed;
    let server = TestServer::start_with(|c| c.smsc.submit_window = 1).await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let stream = TcpStream::connect(server.smpp).await.expect("connect");
    let mut conn = Framed::new(stream, CommandCodec::new());
    let bind = BindTransmitter::builder()
        .system_id(COctetString::from_str("otpgate").expect("system_id"))
        .password(COctetString::from_str("otpgate").expect("password"))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    assert_eq!(raw_call(&mut conn, 1, bind).await.status(), CommandStatus::EsmeRok);
    const N: u32 = 400;
    for i in 0..N {
        let pdu = sms(PHONE, &format!("wide window {i}")).pdus().remove(0);
        conn.feed(Command::new(CommandStatus::EsmeRok, 2 + i, pdu))
            .await
            .expect("queue a submit");
    }
    within("send the burst", SinkExt::<Command>::flush(&mut conn))
        .await
        .expect("send");
    let (mut accepted, mut throttled) = (Vec::new(), 0);
    while accepted.len() + throttled < N as usize {
        let answer = within("a submit_sm_resp", conn.next())
            .await
            .expect("open")
            .expect("a PDU");
        match (answer.status(), answer.pdu()) {
            (CommandStatus::EsmeRok, Some(Pdu::SubmitSmResp(resp))) => {
                accepted.push(resp.message_id().as_str().to_string())
            }
            (CommandStatus::EsmeRthrottled, _) => throttled += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(throttled > 0, "400 at once on one bind exceed a window of 1");
    assert!(!accepted.is_empty(), "the window's worth is served");
    let (_, log) = server.get("/v1/messages?limit=1000").await;
    let logged: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["smsc_message_id"].as_str())
        .collect();
    for id in &accepted {
        assert!(
            logged.contains(&id.as_str()),
            "accepted {id} is not in the delivery log"
        );
    }
    server.stop().await;
}

async fn observed_run(seed: u64) -> Vec<String> {
    let server = TestServer::start_with(|c| c.seed = seed).await;
    let (status, body) = server
        .put(
            "/v1/sim/chaos",
            json!({"enabled": true, "carriers": {
                "docomo": {"failure": 0.3, "long_delay": 0.3, "throttle": 0.1},
                "au": {"failure": 0.3, "long_delay": 0.3, "throttle": 0.1},
                "softbank": {"failure": 0.3, "long_delay": 0.3, "throttle": 0.1},
                "rakuten": {"failure": 0.3, "long_delay": 0.3, "throttle": 0.1}
            }}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let carriers = ["docomo", "au", "softbank", "rakuten", "ahamo", "uq", "ymobile", "povo"];
    let numbers: Vec<String> = (0..16).map(|i| format!("0905555{i:04}")).collect();
    for (i, number) in numbers.iter().enumerate() {
        server
            .handset(number, json!({"carrier": carriers[i % carriers.len()]}))
            .await;
    }
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let mut seen = Vec::new();
    let mut accepted = 0;
    for number in &numbers {
        match esme.submit(&sms(number, &format!("seeded {number}"))).await {
            Ok(id) => {
                accepted += 1;
                seen.push(format!("{number} submitted {id}"));
            }
            Err(status) => seen.push(format!("{number} refused 0x{status:02X}")),
        }
    }
    server.advance(3600).await;
    let mut receipts = BTreeMap::new();
    for _ in 0..accepted {
        let r = esme.receipt().await;
        receipts.insert(r.id.clone(), format!("{} done {}", r.summary(), r.done_date));
    }
    seen.extend(receipts.into_iter().map(|(id, r)| format!("{id}: {r}")));
    for number in &numbers {
        for shown in server.inbox(number).await {
            seen.push(format!("{number} shows {} at {}", shown.from, shown.received_at));
        }
    }
    esme.unbind().await;
    server.stop().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_outcomes_twice() {
    let first = observed_run(7).await;
    let second = observed_run(7).await;
    assert_eq!(first, second);
    // The run exercised the random draws: some failed, some were delayed
    // long, and deliveries did not all land at one time.
    let text = first.join("\n");
    assert!(text.contains("DELIVRD") && text.contains("UNDELIV"), "{text}");
    let other = observed_run(8).await;
    assert_ne!(first, other, "another seed, other outcomes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_callbacks_report_each_event_so_a_suite_waits_without_polling() {
    let mut hooks = HookReceiver::start().await;
    let url = hooks.url.clone();
    let server = TestServer::start_with(|c| c.callback_url = Some(url)).await;
    server.handset(PHONE, json!({"carrier": "softbank"})).await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let id = esme.send(&sms(PHONE, "Your code is 123456")).await;
    server.advance(RUN).await;
    let events = hooks
        .until(|body| body["event"]["smsc_message_id"] == id.as_str() || body["state"] == "delivered")
        .await;
    let accepted = &events[0];
    assert_eq!(accepted["event"]["kind"], "smsc_accepted", "{events:?}");
    assert_eq!(accepted["state"], "submitted");
    let message_id = accepted["message_id"].as_str().expect("message_id");
    let delivered = hooks.until(|body| body["state"] == "delivered").await;
    let delivered = delivered.last().expect("a callback");
    assert_eq!(delivered["message_id"], message_id);
    assert_eq!(delivered["event"]["kind"], "delivered");
    assert_eq!(delivered["channel"], "sms");
    assert_eq!(delivered["to"], "+819011110001");
    assert_eq!(
        (delivered["otp_id"].is_null(), delivered["member_id"].is_null()),
        (true, true)
    );
    assert!(!delivered.to_string().contains("123456"), "no plain code: {delivered}");
    assert_eq!(esme.receipt().await.id, id);

    // An OTP's whole story arrives too, named by its otp_id and member.
    let verification = server.sms_member("M-HOOKS", "09011110009", "docomo").await;
    let (status, otp) = server
        .post("/v1/otps", json!({"member_id": "M-HOOKS", "purpose": "profile"}))
        .await;
    assert_eq!(status, 201, "{otp}");
    server.code_on_handset("09011110009", Some(&verification)).await;
    let story = hooks
        .until(|body| body["otp_id"] == otp["id"] && body["state"] == "delivered")
        .await;
    let delivered = story.last().expect("a callback");
    assert_eq!(delivered["member_id"], "M-HOOKS");
    assert_eq!(delivered["to"], "+819011110009");
    esme.unbind().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_log_retention_the_oldest_final_records_go_and_pending_ones_stay_with_their_log() {
    let server = TestServer::start_with(|c| c.log_retention = 2).await;
    let off = OFF_PHONE;
    let mut esme = one_phone_off_one_on(&server).await;

    // The oldest record stays pending: the phone is off.
    let waiting = esme.send(&sms(off, "waiting for the phone")).await;
    let mut delivered = Vec::new();
    for i in 0..4 {
        delivered.push(esme.send(&sms(PHONE, &format!("message {i}"))).await);
        server.advance(RUN).await;
        assert_eq!(esme.receipt().await.id, delivered[i]);
    }
    // Five records past a cap of two: the pending one and the newest
    // delivered one stay; query_sm no longer finds the others.
    assert_eq!(esme.query(&waiting).await, Ok((1, 0, String::new())), "ENROUTE");
    assert_eq!(esme.query(&delivered[3]).await.map(|q| q.0), Ok(2), "DELIVERED");
    for gone in &delivered[..3] {
        assert_eq!(esme.query(gone).await, Err(0x67), "ESME_RQUERYFAIL for {gone}");
    }
    // The inbox keeps the messages whose records stay.
    let texts: Vec<String> = server.inbox(PHONE).await.into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["message 3"]);
    // The pending message is still delivered when the phone comes back.
    server.handset(off, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    assert_eq!(esme.receipt().await.id, waiting);
    assert_eq!(server.inbox(off).await.len(), 1);
    // Its delivery log message stayed past the cap as well, so the
    // delivery is logged, not lost.
    let (_, log) = server.get("/v1/messages?to=%2B819011110002").await;
    let message = &log["items"][0];
    assert_eq!(message["smsc_message_id"], waiting.as_str(), "{log}");
    assert_eq!(message["state"], "delivered", "{message}");
    esme.unbind().await;
    server.stop().await;
}

/// A `submit_multi`'s one id answers `query_sm` while any of its
/// destinations' records is kept, and is forgotten with the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_log_retention_a_submit_multis_id_answers_until_its_last_record_goes() {
    let server = TestServer::start_with(|c| c.log_retention = 2).await;
    let other = "09011110003";
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    server.handset(other, json!({"carrier": "docomo"})).await;
    let mut raw = raw_transceiver(server.smpp).await;
    let id = multi_id(&raw_submit_multi(&mut raw, 2, SENDER, &[PHONE, other], "to two").await);
    server.advance(RUN).await;
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    assert_eq!(esme.query(&id).await.map(|q| q.0), Ok(2), "DELIVERED to both");
    // One more record past a cap of two takes the multi's first away: its
    // id still answers for the second.
    let later = esme.send(&sms(PHONE, "later")).await;
    server.advance(RUN).await;
    assert_eq!(esme.receipt().await.id, later);
    assert_eq!(esme.query(&id).await.map(|q| q.0), Ok(2), "the second still kept");
    // One more, and the second goes too, with the id.
    let last = esme.send(&sms(PHONE, "last")).await;
    server.advance(RUN).await;
    assert_eq!(esme.receipt().await.id, last);
    assert_eq!(esme.query(&id).await, Err(0x67), "ESME_RQUERYFAIL once all are gone");
    esme.unbind().await;
    raw_call(&mut raw, 3, rusmpp::Pdu::Unbind).await;
    server.stop().await;
}

/// Retention keeps a message still waiting past newer final ones: a
/// `submit_multi`'s one id stays with it, though the destinations listed
/// after it are gone, and goes once it is final and removed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_multis_id_stays_while_a_destination_still_waits_past_the_retention() {
    let server = TestServer::start_with(|c| c.log_retention = 2).await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    let mut raw = raw_transceiver(server.smpp).await;
    let id = multi_id(&raw_submit_multi(&mut raw, 2, SENDER, &[OFF_PHONE, PHONE], "to two").await);
    let mut esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    // Two more past a cap of two: the multi's delivered destination goes,
    // the one to the phone that is off stays.
    for text in ["later", "later still"] {
        esme.send(&sms(PHONE, text)).await;
        server.advance(RUN).await;
        esme.receipt().await;
    }
    assert_eq!(esme.query(&id).await.map(|q| q.0), Ok(1), "ENROUTE: one still waits");
    server.handset(OFF_PHONE, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    assert_eq!(esme.query(&id).await.map(|q| q.0), Ok(2), "DELIVERED once it arrives");
    assert_eq!(server.inbox(OFF_PHONE).await.len(), 1);
    // Final now, it is the oldest record, and goes with the id.
    esme.send(&sms(PHONE, "last")).await;
    server.advance(RUN).await;
    esme.receipt().await;
    assert_eq!(esme.query(&id).await, Err(0x67), "ESME_RQUERYFAIL once all are gone");
    esme.unbind().await;
    raw_call(&mut raw, 3, rusmpp::Pdu::Unbind).await;
    server.stop().await;
}

/// The kinds of the delivery log's events for the message sent to `number`.
async fn logged_events(server: &TestServer, number: &str) -> Vec<String> {
    let (_, log) = server
        .get(&format!(
            "/v1/messages?to={}",
            common::enc(&format!("+81{}", &number[1..]))
        ))
        .await;
    log["items"][0]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a logged message: {log}"))
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_phone_that_becomes_reachable_triggers_the_networks_alert() {
    let server = TestServer::start().await;
    let mut esme = one_phone_off_one_on(&server).await;
    let id = esme.send(&sms(OFF_PHONE, "waiting for the phone")).await;
    // Up to the first attempt (after the carrier's delay), which finds the
    // phone off; the next retry is 60 s after it.
    let mut before = Vec::new();
    for _ in 0..30 {
        server.advance(2).await;
        before = logged_events(&server, OFF_PHONE).await;
        if before.last().map(String::as_str) == Some("retry_scheduled") {
            break;
        }
    }
    assert_eq!(before, ["smsc_accepted", "retry_scheduled"]);

    // Other changes while the phone is off try nothing before the retry
    // the carrier planned (60 s on docomo).
    server
        .handset(OFF_PHONE, json!({"filters": {"blocked_senders": ["0120000000"]}}))
        .await;
    server.handset(OFF_PHONE, json!({"roaming": true})).await;
    server.advance(1).await;
    assert_eq!(logged_events(&server, OFF_PHONE).await, before);
    assert_eq!(esme.query(&id).await.map(|q| q.0), Ok(1), "ENROUTE");

    // Switched on: the alert tries at once, well before the next retry.
    server.handset(OFF_PHONE, json!({"powered_on": true})).await;
    server.advance(1).await;
    assert_eq!(esme.receipt().await.id, id);
    let after = logged_events(&server, OFF_PHONE).await;
    assert_eq!(after.last().map(String::as_str), Some("delivered"), "{after:?}");
    esme.unbind().await;
    server.stop().await;
}

/// SMPP over TLS, as SMPP providers' TLS ports take it: a second listener
/// (`[smpp] tls_listen`) where the handshake comes first. An ESME that
/// trusts the server's certificate binds, submits and gets its receipt
/// there; a client speaking plain SMPP to that port gets no answer and is
/// closed, one that connects and says nothing holds up nobody, and the
/// plain listener serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_esme_binds_over_tls_submits_and_gets_its_receipt() {
    use common::esme::transceiver_bind;
    use futures::{SinkExt, StreamExt};
    use rusmpp::tokio_codec::CommandCodec;
    use tokio_util::codec::Framed;
    let (server, tls_addr) = common::tls::server_with_smpp_tls().await;
    let running = server.running.as_ref().expect("running");
    assert!(
        running.listening_line().ends_with(&format!(" smpps={tls_addr}")),
        "{}",
        running.listening_line()
    );
    server.handset(PHONE, json!({"carrier": "docomo"})).await;

    // Connected and silent: the handshake waits, nobody else does.
    let _silent = TcpStream::connect(tls_addr).await.expect("connect");
    // Plain SMPP on the TLS port: no bind_resp, the connection closes.
    let plain = TcpStream::connect(tls_addr).await.expect("connect");
    let mut plain = Framed::new(plain, CommandCodec::new());
    let bind = transceiver_bind("otpgate", "otpgate");
    within(
        "send",
        plain.send(rusmpp::Command::new(rusmpp::CommandStatus::EsmeRok, 1, bind)),
    )
    .await
    .expect("sent");
    match within("the server's answer", plain.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(answer)) => panic!("plain SMPP answered on the TLS port: {answer:?}"),
    }

    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = within("TLS handshake", common::tls::connector().connect(name, tcp))
        .await
        .expect("handshake with the fixture certificate");
    let mut esme = Esme::bind_over(
        common::esme::over(tls),
        server.smpp,
        Bind::Transceiver,
        "otpgate",
        "otpgate",
    )
    .await
    .expect("bound over TLS");
    let id = esme.send(&sms(PHONE, "Your code is 424242")).await;
    server.advance(RUN).await;
    let receipt = esme.receipt().await;
    assert_eq!((receipt.id.as_str(), receipt.stat.as_str()), (id.as_str(), "DELIVRD"));
    let inbox = server.inbox(PHONE).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].text, "Your code is 424242");

    // The plain listener is unchanged.
    let plain = Esme::bind(server.smpp, Bind::Transceiver).await;
    plain.send(&sms(PHONE, "over plain TCP")).await;
    // The failed handshake is counted, for a QA team whose client cannot
    // connect (the server counts it after closing, so a few reads may come
    // first; the silent client is not counted before its 10 s are up).
    let mut failed = 0.0;
    for _ in 0..1_000 {
        failed = server.metrics().await.value("otpgate_smpp_tls_handshakes_failed_total");
        if failed > 0.0 {
            break;
        }
    }
    assert_eq!(failed, 1.0);
    esme.unbind().await;
    plain.unbind().await;
    server.stop().await;
}

/// SMPP answers no response. A `deliver_sm_resp` whose body cannot be read
/// (a `message_id` that never ends) still settles its receipt by its
/// header's status: no `generic_nack` comes back, and the receipt is not
/// delivered again on the next bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipts_answer_with_an_unreadable_body_settles_it_by_its_header() {
    use common::esme::DeliveryReceipt;
    use futures::{SinkExt, StreamExt};
    use rusmpp::{Command, CommandId, CommandStatus, Pdu};
    fn submitted_id(answer: &Command) -> String {
        match answer.pdu() {
            Some(Pdu::SubmitSmResp(resp)) => resp.message_id().as_str().to_string(),
            _ => panic!("submit_sm_resp expected: {answer:?}"),
        }
    }
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "docomo"})).await;
    let mut conn = raw_transceiver(server.smpp).await;
    let first = submitted_id(&raw_call(&mut conn, 2, sms(PHONE, "first").pdus().remove(0)).await);
    server.advance(RUN).await;
    let receipt = loop {
        let command = within("a receipt", conn.next()).await.expect("open").expect("a PDU");
        if let Some(Pdu::DeliverSm(deliver)) = command.pdu() {
            break (command.sequence_number(), DeliveryReceipt::read(deliver));
        }
    };
    assert_eq!(receipt.1.id, first);
    // deliver_sm_resp, ESME_ROK, its message_id three bytes with no NUL.
    let broken = pdu(19, 0x8000_0005, receipt.0, b"abc");
    within("write", conn.get_mut().write_all(&broken))
        .await
        .expect("written");
    within(
        "send",
        conn.send(Command::new(CommandStatus::EsmeRok, 3, Pdu::EnquireLink)),
    )
    .await
    .expect("enquire_link");
    let next = within("the next PDU", conn.next()).await.expect("open").expect("a PDU");
    assert_eq!(
        (next.id(), next.sequence_number()),
        (CommandId::EnquireLinkResp, 3),
        "no generic_nack for a response: {next:?}"
    );
    let bye = raw_call(&mut conn, 4, Pdu::Unbind).await;
    assert_eq!(bye.id(), CommandId::UnbindResp);
    drop(conn);

    let mut conn = raw_transceiver(server.smpp).await;
    let second = submitted_id(&raw_call(&mut conn, 2, sms(PHONE, "second").pdus().remove(0)).await);
    server.advance(RUN).await;
    assert_eq!(raw_receipt(&mut conn).await.id, second, "the first receipt was settled");
    raw_call(&mut conn, 3, Pdu::Unbind).await;
    server.stop().await;
}

/// `registered_delivery` 0x11 asks for an intermediate notification too:
/// when the first attempt finds the phone off, the ESME gets a `deliver_sm`
/// with esm_class 0x20 (SMPP 3.4 section 5.2.12), ENROUTE with the
/// absence's codes, once; the final receipt (esm_class 0x04) follows when
/// the phone comes back. A message asking only for the final receipt gets
/// no notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_notification_tells_the_esme_its_message_waits_for_an_absent_phone() {
    let server = TestServer::start().await;
    let mut esme = one_phone_off_one_on(&server).await;
    let noticed = esme
        .send(&sms(OFF_PHONE, "asks for both").registered_delivery(0x11))
        .await;
    let final_only = esme.send(&sms(OFF_PHONE, "asks for the final one")).await;
    server.advance(RUN).await;
    let notice = esme.receipt().await;
    assert_eq!(
        (notice.id.as_str(), notice.esm_class, notice.stat.as_str()),
        (noticed.as_str(), 0x20, "ENROUTE")
    );
    assert!(notice.summary().contains("state:1"), "{}", notice.summary());
    // Another retry window passes: no second notification.
    server.advance(3_600).await;
    server.handset(OFF_PHONE, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    let mut finals = [esme.receipt().await, esme.receipt().await];
    finals.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<(&str, u8, &str)> = finals
        .iter()
        .map(|r| (r.id.as_str(), r.esm_class, r.stat.as_str()))
        .collect();
    let mut expected = vec![
        (noticed.as_str(), 0x04, "DELIVRD"),
        (final_only.as_str(), 0x04, "DELIVRD"),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    esme.unbind().await;
    server.stop().await;
}

/// The next `deliver_sm` on a raw connection, answered OK.
async fn next_deliver_sm(conn: &mut RawConn) -> rusmpp::pdus::DeliverSm {
    use futures::{SinkExt, StreamExt};
    use rusmpp::pdus::DeliverSmResp;
    use rusmpp::types::COctetString;
    use rusmpp::{Command, CommandStatus, Pdu};
    loop {
        let command = within("a deliver_sm", conn.next()).await.expect("open").expect("a PDU");
        if let Some(Pdu::DeliverSm(deliver)) = command.pdu() {
            let ok = DeliverSmResp::new(COctetString::empty(), vec![]);
            let answer = Command::new(CommandStatus::EsmeRok, command.sequence_number(), ok);
            within("deliver_sm_resp", conn.send(answer)).await.expect("answered");
            return deliver.clone();
        }
    }
}

/// A simulated phone sends an SMS to an ESME (mobile originated: "reply
/// STOP", "YES to confirm"): `POST /v1/sim/handsets/{number}/send`. The
/// ESME gets a `deliver_sm` with esm_class 0 from the phone's number, in
/// GSM 7-bit or UCS-2 (`message_payload` past 254 octets). One sent for an
/// account with no bind up is kept, across a crash, until it binds. The
/// delivery log has it, findable by its id. A phone that is off, or a
/// request naming no ESME while none or several are bound, gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handset_sends_an_sms_to_an_esme_as_a_deliver_sm() {
    use rusmpp::tlvs::TlvValue;
    let mut server = common::BinServer::start(None).await;
    server.handset(PHONE, json!({"carrier": "au"})).await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    async fn send_from(api: &common::Api, number: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        api.post(&format!("/v1/sim/handsets/{number}/send"), body).await
    }
    let (s, b) = send_from(&server, PHONE, json!({"to": "22471", "text": "STOP"})).await;
    assert_eq!((s, common::error_code(&b)), (409, "no_esme"), "{b}");
    let (s, b) = send_from(
        &server,
        PHONE,
        json!({"to": "22471", "text": "STOP", "system_id": "nobody"}),
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = send_from(
        &server,
        OFF_PHONE,
        json!({"to": "22471", "text": "STOP", "system_id": "otpgate"}),
    )
    .await;
    assert_eq!((s, common::error_code(&b)), (409, "handset_cannot_send"), "{b}");

    // Kept for the account while it has no bind, across a crash.
    let long = "予約を確定します。".repeat(20);
    let (s, kept) = send_from(
        &server,
        PHONE,
        json!({"to": "22471", "text": long, "system_id": "otpgate"}),
    )
    .await;
    assert_eq!(s, 202, "{kept}");
    assert_eq!(kept["system_id"], "otpgate");
    server.crash_and_restart().await;
    let mut conn = raw_transceiver(server.smpp).await;
    let deliver = next_deliver_sm(&mut conn).await;
    assert_eq!(u8::from(deliver.esm_class), 0x00, "a message, not a receipt");
    assert_eq!(deliver.source_addr.as_str(), "819011110001");
    assert_eq!(u8::from(deliver.source_addr_ton), 1, "international");
    assert_eq!(deliver.destination_addr.as_str(), "22471");
    assert_eq!(u8::from(deliver.data_coding), 0x08, "UCS-2");
    let payload = deliver
        .tlvs()
        .iter()
        .find_map(|t| match t.value() {
            Some(TlvValue::MessagePayload(p)) => Some(p.value.to_vec()),
            _ => None,
        })
        .expect("360 octets go in message_payload");
    let units: Vec<u16> = payload.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
    assert_eq!(String::from_utf16(&units).unwrap(), long);

    // With one account bound to receive, it is the default.
    let (s, reply) = send_from(&server, PHONE, json!({"to": "0354600124", "text": "YES"})).await;
    assert_eq!(s, 202, "{reply}");
    let deliver = next_deliver_sm(&mut conn).await;
    assert_eq!(
        (
            deliver.destination_addr.as_str(),
            u8::from(deliver.data_coding),
            deliver.short_message().as_ref()
        ),
        ("0354600124", 0x00, b"YES".as_ref())
    );

    // The delivery log, found by the id the request answered.
    let id = reply["id"].as_str().expect("an id");
    let mut logged = serde_json::Value::Null;
    for _ in 0..1_000 {
        let (_, found) = server.get(&format!("/v1/messages?smsc_message_id={id}")).await;
        logged = found["items"][0].clone();
        if logged["state"] == "delivered" {
            break;
        }
    }
    assert_eq!(logged["origin"], "handset", "{logged:#}");
    assert_eq!(logged["state"], "delivered", "taken by the ESME: {logged:#}");
    assert_eq!(logged["from"], "+819011110001");
    // The desk's search by that id leads to the phone that sent it.
    let (s, report) = server.get(&format!("/v1/diagnostics/destinations/{id}")).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["handset"]["carrier"], "au", "{report}");
    raw_call(&mut conn, 9, rusmpp::Pdu::Unbind).await;
    server.stop().await;
}

/// `set_dpf` (SMPP 3.4 section 4.12): a message to a phone that is off,
/// submitted with the TLV, leaves a delivery pending flag; when the phone
/// is reachable again the ESME gets an `alert_notification` (the phone as
/// source, the address that asked, `ms_availability_status` 0) before the
/// retry delivers and the receipt follows. A message without it gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_dpf_gets_an_alert_notification_when_the_phone_is_back() {
    use futures::StreamExt;
    use rusmpp::tlvs::MessageSubmissionRequestTlvValue;
    use rusmpp::values::SetDpf;
    use rusmpp::Pdu;
    let server = TestServer::start().await;
    server
        .handset(OFF_PHONE, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    server
        .handset("09011110003", json!({"carrier": "docomo", "powered_on": false}))
        .await;
    let mut conn = raw_transceiver(server.smpp).await;
    let mut flagged = sms(OFF_PHONE, "flag me").pdus().remove(0);
    flagged.push_tlv(MessageSubmissionRequestTlvValue::SetDpf(SetDpf::Requested));
    let flagged_id = match raw_call(&mut conn, 2, flagged).await.pdu() {
        Some(Pdu::SubmitSmResp(resp)) => resp.message_id().as_str().to_string(),
        other => panic!("submit_sm_resp expected: {other:?}"),
    };
    raw_call(&mut conn, 3, sms("09011110003", "no flag").pdus().remove(0)).await;
    server.advance(RUN).await; // the first attempts find both phones off
    server.handset("09011110003", json!({"powered_on": true})).await;
    server.handset(OFF_PHONE, json!({"powered_on": true})).await;
    server.advance(RUN).await;
    let mut alerts = Vec::new();
    let mut receipts = Vec::new();
    while receipts.len() < 2 {
        let command = within("a PDU", conn.next()).await.expect("open").expect("a PDU");
        match command.pdu() {
            Some(Pdu::AlertNotification(alert)) => alerts.push(alert.clone()),
            Some(Pdu::DeliverSm(deliver)) => {
                let receipt = common::esme::DeliveryReceipt::read(deliver);
                if receipt.id == flagged_id {
                    assert_eq!(alerts.len(), 1, "the alert comes before the flagged message's retry");
                }
                receipts.push(receipt.id);
                let ok = rusmpp::pdus::DeliverSmResp::new(rusmpp::types::COctetString::empty(), vec![]);
                use futures::SinkExt;
                let answer = rusmpp::Command::new(rusmpp::CommandStatus::EsmeRok, command.sequence_number(), ok);
                within("deliver_sm_resp", conn.send(answer)).await.expect("sent");
            }
            _ => {}
        }
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(
        (alert.source_addr.as_str(), alert.esme_addr.as_str()),
        ("819011110002", SENDER),
        "{alert:?}"
    );
    assert_eq!(u8::from(alert.source_addr_ton), 1);
    assert_eq!(
        alert.ms_availability_status(),
        Some(rusmpp::values::MsAvailabilityStatus::Available)
    );
    raw_call(&mut conn, 9, Pdu::Unbind).await;
    server.stop().await;
}

/// Reads [`PHONE`]'s code with `query` (a long poll) while the app sends
/// `text` and the carrier's delay passes.
async fn sent_while_waiting(server: &TestServer, esme: &Esme, query: String, text: &str) -> (u16, serde_json::Value) {
    let api = common::Api { http: server.http };
    let waiting = tokio::spawn(async move { api.get(&format!("/v1/sim/handsets/{PHONE}/otp?{query}")).await });
    server.long_polls_waiting(1).await;
    esme.send(&sms(PHONE, text)).await;
    server.advance(RUN).await;
    within("the waiting read", waiting).await.expect("task")
}

/// What a QA team's suite does when its own app sends the code: it waits
/// on the phone for a code newer than the last (`?after=`, `?wait=`)
/// while the app submits, and empties the inbox between tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_waits_on_the_phone_for_the_code_its_app_sent_and_empties_the_inbox() {
    let server = TestServer::start().await;
    server.handset(PHONE, json!({"carrier": "softbank"})).await;
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let (_, clock) = server.get("/v1/sim/clock").await;
    let start = clock["now"].as_str().expect("now").to_string();
    let otp = |query: String| {
        let api = common::Api { http: server.http };
        async move { api.get(&format!("/v1/sim/handsets/{PHONE}/otp?{query}")).await }
    };

    // Nothing has arrived: without `wait` the answer is at once.
    let (status, body) = otp(format!("after={}", common::enc(&start))).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("after 2026-01-01T00:00:00+09:00"),
        "{body}"
    );

    // The suite waits; then the app submits, and the carrier's delay passes.
    let query = format!("after={}&wait=60", common::enc(&start));
    let (status, first) = sent_while_waiting(&server, &esme, query, "Your code is 481516").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["code"].as_str(), first["from"].as_str()),
        (Some("481516"), Some("22471"))
    );

    // A second code: the wait for one newer than the first (by its id,
    // exact where times tie) skips the first.
    let first_id = first["message_id"].as_str().expect("message_id").to_string();
    let query = format!("after={first_id}&wait=60");
    let (status, second) = sent_while_waiting(&server, &esme, query, "Your code is 234200").await;
    assert_eq!((status, second["code"].as_str()), (200, Some("234200")), "{second}");

    // Nothing newer than the second: a short wait ends with a 404 that
    // says what was asked.
    let after_second = common::enc(second["received_at"].as_str().expect("received_at"));
    let (status, body) = otp(format!("after={after_second}&wait=0.2")).await;
    assert_eq!((status, common::error_code(&body)), (404, "not_found"), "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or("").contains("within 0.2 s"),
        "{body}"
    );
    let after_first = common::enc(first["received_at"].as_str().expect("received_at"));
    for after in [after_first, first_id] {
        let (_, listed) = server
            .get(&format!("/v1/sim/handsets/{PHONE}/messages?after={after}"))
            .await;
        let texts: Vec<&str> = listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|m| m["text"].as_str())
            .collect();
        assert_eq!(texts, ["Your code is 234200"], "after {after}");
    }

    // Bad parameters are refused, not read as "no filter".
    for query in ["after=%20", "wait=-1", "wait=soon", "wait=NaN"] {
        let (status, body) = otp(query.to_string()).await;
        assert_eq!(
            (status, common::error_code(&body)),
            (422, "invalid_request"),
            "{query}: {body}"
        );
    }

    // Emptied between tests: the phone shows nothing, the log still tells.
    let (status, body) = server
        .http("DELETE", &format!("/v1/sim/handsets/{PHONE}/messages"), None)
        .await;
    assert_eq!((status, &body), (200, &json!({"deleted": 2})));
    assert_eq!(server.inbox(PHONE).await, vec![]);
    assert_eq!(otp(String::new()).await.0, 404);
    let (_, log) = server
        .get(&format!("/v1/messages?to={}", common::enc("+81") + &PHONE[1..]))
        .await;
    let states: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["state"].as_str())
        .collect();
    assert_eq!(states, ["delivered", "delivered"], "{log}");

    // After the emptying, the next code is the newest again.
    let (status, third) = sent_while_waiting(&server, &esme, "wait=60".into(), "Your code is 777001").await;
    assert_eq!((status, third["code"].as_str()), (200, Some("777001")), "{third}");
    esme.unbind().await;
    server.stop().await;
}

/// "My app is connected, why no receipts?": `/v1/smsc` and the console's
/// SMSC page show each account's binds, and the receipts kept for an
/// application bound as a transmitter alone, until a receiver binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smsc_shows_who_is_bound_and_the_receipts_waiting_for_a_receiver() {
    let server = TestServer::start_with_account("qa-app", "secret").await;
    let sender = Esme::bind_as(server.smpp, Bind::Transmitter, "qa-app", "secret")
        .await
        .expect("bound");
    sender.send(&sms(PHONE, "hello").registered_delivery(1)).await;
    server.advance(RUN).await;

    let (status, smsc) = server.get("/v1/smsc").await;
    assert_eq!(status, 200, "{smsc}");
    let account = |smsc: &serde_json::Value, id: &str| {
        smsc["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .find(|a| a["system_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {smsc}"))
    };
    assert_eq!(
        account(&smsc, "qa-app"),
        json!({"system_id": "qa-app", "binds": 1, "can_receive": false, "receipts_waiting": 1})
    );
    assert_eq!(account(&smsc, "otpgate")["binds"], 0);
    assert_eq!(
        account(&smsc, "otpgate-core")["can_receive"],
        true,
        "the core's own bind"
    );
    let bind = smsc["binds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["system_id"] == "qa-app")
        .cloned()
        .expect("qa-app's bind");
    assert_eq!(
        (bind["kind"].as_str(), bind["submitted"].as_u64(), bind["tls"].as_bool()),
        (Some("transmitter"), Some(1), Some(false)),
        "{bind}"
    );
    assert!(
        bind["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{bind}"
    );

    let page = server.html("/console/smsc?lang=en").await;
    assert!(
        page.contains("receipts wait for a bind that can take them") && page.contains("transmitter"),
        "{page}"
    );

    // A receiver of the account takes the kept receipt and answers it.
    let mut receiver = Esme::bind_as(server.smpp, Bind::Receiver, "qa-app", "secret")
        .await
        .expect("bound");
    assert_eq!(receiver.receipt().await.stat, "DELIVRD");
    let delivered = async {
        loop {
            let (_, smsc) = server.get("/v1/smsc").await;
            let answered = smsc["binds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["kind"] == "receiver" && b["delivered"] == 1);
            if answered && account(&smsc, "qa-app")["receipts_waiting"] == 0 {
                return smsc;
            }
            tokio::task::yield_now().await;
        }
    };
    let smsc = within("the receipt answered", delivered).await;
    assert_eq!(account(&smsc, "qa-app")["binds"], 2);
    let page = server.html("/console/smsc?lang=en").await;
    assert!(!page.contains("receipts wait for a bind"), "{page}");

    sender.unbind().await;
    receiver.unbind().await;
    let (_, smsc) = server.get("/v1/smsc").await;
    assert_eq!(account(&smsc, "qa-app")["binds"], 0, "{smsc}");
    server.stop().await;
}

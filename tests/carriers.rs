//! The carrier models as a user's SMS application meets them: an ESME built
//! on rusmppc submits over SMPP to handsets set up over HTTP, the test moves
//! the virtual clock, and reads the receipt (stat, err, message_state and
//! network_error_code) and what the phone shows. Each failure mode, each
//! filter setting, each carrier family with its sender ID, and how long
//! each network keeps trying a phone that is off.

mod common;

use serde_json::{json, Value};

use common::esme::{sms, Bind, DeliveryReceipt, Esme, SENDER};
use common::handsets::{merged, receipt_date};
use common::TestServer;

/// Seconds that take any reachable phone past its carrier's longest delay.
const RUN: u64 = 180;
const HOUR: u64 = 3600;
const DELIVERED: &str = "DELIVRD err:000 state:2 nec:-";
const FILTERED: &str = "REJECTD err:101 state:8 nec:-";
const CONTENT_FILTERED: &str = "REJECTD err:102 state:8 nec:-";
const EXPIRED: &str = "EXPIRED err:027 state:3 nec:3/27";
const OTP_TEXT: &str = "otpgate: your one-time password is 482913";

/// A server, a bound transceiver, and fresh phone numbers.
struct Bench {
    server: TestServer,
    esme: Esme,
    numbers: u32,
}

impl Bench {
    async fn start() -> Bench {
        let server = TestServer::start().await;
        let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
        Bench {
            server,
            esme,
            numbers: 0,
        }
    }

    /// A number no test has used on this server.
    fn number(&mut self) -> String {
        self.numbers += 1;
        format!("0907777{:04}", self.numbers)
    }

    /// The virtual clock now, RFC 3339.
    async fn now(&self) -> String {
        let (status, body) = self.server.get("/v1/sim/clock").await;
        assert_eq!(status, 200, "{body}");
        body["now"].as_str().expect("now").to_string()
    }

    async fn stop(self) {
        self.esme.unbind().await;
        self.server.stop().await;
    }
}

/// One message, as a case of [`check`].
struct Case<'a> {
    state: Value,
    from: &'a str,
    text: &'a str,
}

fn to(state: Value) -> Case<'static> {
    Case {
        state,
        from: SENDER,
        text: OTP_TEXT,
    }
}

impl<'a> Case<'a> {
    fn from(self, from: &'a str) -> Case<'a> {
        Case { from, ..self }
    }

    fn text(self, text: &'a str) -> Case<'a> {
        Case { text, ..self }
    }
}

/// Sends the case's message to a new handset in the case's state, runs the
/// clock [`RUN`] seconds, and checks the receipt's summary and the sender
/// the phone shows (`None`: the inbox stays empty). Answers the receipt.
async fn check(bench: &mut Bench, case: Case<'_>, receipt: &str, shown: Option<&str>) -> DeliveryReceipt {
    let number = bench.number();
    bench.server.handset(&number, case.state.clone()).await;
    let id = bench.esme.send(&sms(&number, case.text).from(case.from)).await;
    bench.server.advance(RUN).await;
    let got = bench.esme.receipt().await;
    let what = format!("{} from {} to {}", case.text, case.from, case.state);
    assert_eq!(got.id, id, "{what}");
    assert_eq!(got.receipted_message_id.as_deref(), Some(id.as_str()), "{what}");
    assert_eq!(got.summary(), receipt, "{what}");
    let inbox = bench.server.inbox(&number).await;
    let senders: Vec<&str> = inbox.iter().map(|m| m.from.as_str()).collect();
    assert_eq!(senders, shown.into_iter().collect::<Vec<_>>(), "{what}");
    if let Some(shown) = inbox.first() {
        assert_eq!(shown.text, case.text, "{what}");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_mode_gives_its_receipt_and_the_phone_shows_nothing() {
    let mut bench = Bench::start().await;
    let b = &mut bench;
    let docomo = |extra: Value| merged(json!({"carrier": "docomo"}), &extra);
    check(b, to(docomo(json!({}))), DELIVERED, Some("03-5460-0124")).await;
    check(
        b,
        to(docomo(json!({"storage_full": true}))),
        "UNDELIV err:032 state:5 nec:3/32",
        None,
    )
    .await;
    check(
        b,
        to(docomo(json!({"sms_plan": false}))),
        "UNDELIV err:011 state:5 nec:3/11",
        None,
    )
    .await;
    check(
        b,
        to(docomo(json!({"call_restriction": true}))),
        "REJECTD err:013 state:8 nec:3/13",
        None,
    )
    .await;
    // Call restriction refuses only the sender profile's number.
    check(
        b,
        to(docomo(json!({"call_restriction": true}))).from("0312345678"),
        DELIVERED,
        Some("03-1234-5678"),
    )
    .await;
    // Abroad with roaming on, SMS still arrives.
    check(
        b,
        to(docomo(json!({"abroad": true, "roaming": true}))),
        DELIVERED,
        Some("03-5460-0124"),
    )
    .await;

    // The network's own failure, under chaos.
    let (status, body) = b
        .server
        .put(
            "/v1/sim/chaos",
            json!({"enabled": true, "carriers": {"docomo": {"failure": 1.0, "throttle": 0.0, "long_delay": 0.0}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    check(b, to(docomo(json!({}))), "UNDELIV err:034 state:5 nec:3/34", None).await;
    let (status, body) = b.server.put("/v1/sim/chaos", json!({"enabled": false})).await;
    assert_eq!(status, 200, "{body}");
    check(b, to(docomo(json!({}))), DELIVERED, Some("03-5460-0124")).await;

    // Absent (off, out of coverage, abroad without roaming): retried, then
    // EXPIRED when docomo's 72 hours end.
    let mut absent = Vec::new();
    for state in [
        json!({"powered_on": false}),
        json!({"in_coverage": false}),
        json!({"abroad": true, "roaming": false}),
    ] {
        let number = b.number();
        b.server.handset(&number, docomo(state)).await;
        absent.push((b.esme.send(&sms(&number, OTP_TEXT)).await, number));
    }
    b.server.advance(73 * HOUR).await;
    for _ in &absent {
        let receipt = b.esme.receipt().await;
        assert_eq!(receipt.summary(), EXPIRED);
        let (_, number) = absent
            .iter()
            .find(|(id, _)| *id == receipt.id)
            .expect("a receipt for an absent phone");
        assert_eq!(b.server.inbox(number).await, vec![]);
    }
    // The delivery log tells why each attempt failed.
    let out_of_coverage = format!("%2B81{}", &absent[1].1[1..]);
    let (_, log) = b.server.get(&format!("/v1/messages?to={out_of_coverage}")).await;
    let reasons: Vec<&str> = log["items"][0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(reasons.first(), Some(&"no_coverage"), "{log}");
    assert_eq!(reasons.last(), Some(&"validity_period_ended"), "{log}");
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_rejects_with_its_code_and_allowed_senders_win_over_all_but_reject_all() {
    let mut bench = Bench::start().await;
    let b = &mut bench;
    let phishing = "Your account has been suspended: https://login.example-bank.top/verify";
    let fraud_phrase = "未納料金があります。至急ご連絡ください。";
    let on = |filters: Value| json!({"carrier": "docomo", "filters": filters});
    let listed = json!(["03-5460-0124"]);

    check(b, to(on(json!({"reject_all": true}))), FILTERED, None).await;
    check(b, to(on(json!({"reject_other_domestic": true}))), FILTERED, None).await;
    check(b, to(on(json!({"blocked_senders": listed}))), FILTERED, None).await;
    // Another number blocked does not stop the OTP.
    check(
        b,
        to(on(json!({"blocked_senders": ["0312345678"]}))),
        DELIVERED,
        Some("03-5460-0124"),
    )
    .await;
    check(
        b,
        to(on(json!({"content_filter": true}))).text(phishing),
        CONTENT_FILTERED,
        None,
    )
    .await;
    check(
        b,
        to(on(json!({"content_filter": true}))).text(fraud_phrase),
        CONTENT_FILTERED,
        None,
    )
    .await;
    // The content filter lets the OTP itself through, and a known domain.
    check(
        b,
        to(on(json!({"content_filter": true}))),
        DELIVERED,
        Some("03-5460-0124"),
    )
    .await;
    check(
        b,
        to(on(json!({"content_filter": true}))).text("Sign in at https://www.jal.co.jp/"),
        DELIVERED,
        Some("03-5460-0124"),
    )
    .await;

    // An allowed sender gets past every setting but reject_all.
    for filters in [
        json!({"reject_other_domestic": true, "allowed_senders": listed}),
        json!({"blocked_senders": listed, "allowed_senders": listed}),
        json!({"content_filter": true, "allowed_senders": listed}),
    ] {
        check(b, to(on(filters)).text(phishing), DELIVERED, Some("03-5460-0124")).await;
    }
    check(
        b,
        to(json!({"carrier": "docomo", "call_restriction": true, "filters": {"allowed_senders": ["0354600124"]}})),
        DELIVERED,
        Some("03-5460-0124"),
    )
    .await;
    check(
        b,
        to(on(json!({"reject_all": true, "allowed_senders": listed}))),
        FILTERED,
        None,
    )
    .await;

    // On SoftBank's network the member lists the number the phone shows.
    let softbank = |filters: Value| json!({"carrier": "softbank", "filters": filters});
    check(
        b,
        to(softbank(
            json!({"reject_other_domestic": true, "allowed_senders": ["22471"]}),
        )),
        DELIVERED,
        Some("22471"),
    )
    .await;
    check(b, to(softbank(json!({"blocked_senders": ["22471"]}))), FILTERED, None).await;
    check(b, to(softbank(json!({"reject_other_domestic": true}))), FILTERED, None).await;
    bench.stop().await;
}

/// Every carrier, brand and MVNO, with the sender its phones show for the
/// profile's number.
const FAMILIES: [(&str, &str); 13] = [
    ("docomo", "03-5460-0124"),
    ("ahamo", "03-5460-0124"),
    ("docomo-mvno", "03-5460-0124"),
    ("au", "03-5460-0124"),
    ("uq", "03-5460-0124"),
    ("povo", "03-5460-0124"),
    ("au-mvno", "03-5460-0124"),
    ("softbank", "22471"),
    ("ymobile", "22471"),
    ("linemo", "22471"),
    ("softbank-mvno", "22471"),
    ("rakuten", "03-5460-0124"),
    ("rakuten-mvno", "03-5460-0124"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_carrier_family_shows_its_sender_and_gives_its_receipts() {
    let mut bench = Bench::start().await;
    let b = &mut bench;
    let (status, carriers) = b.server.get("/v1/carriers").await;
    assert_eq!(status, 200);
    let loaded = carriers.to_string();
    for (carrier, shown) in FAMILIES {
        assert!(loaded.contains(&format!("\"{carrier}\"")), "{carrier} is loaded");
        check(b, to(json!({"carrier": carrier})), DELIVERED, Some(shown)).await;
        check(
            b,
            to(json!({"carrier": carrier, "storage_full": true})),
            "UNDELIV err:032 state:5 nec:3/32",
            None,
        )
        .await;
        // Only the profile's own number becomes 22471; others show as sent.
        check(
            b,
            to(json!({"carrier": carrier})).from("0312345678"),
            DELIVERED,
            Some("03-1234-5678"),
        )
        .await;
    }
    bench.stop().await;
}

/// Sends to a `carrier` phone that is off, runs the clock `hours`, then
/// switches the phone on. Expects EXPIRED at the end of `validity_hours`
/// (`None`: delivered the moment the phone came back).
async fn check_absent(bench: &mut Bench, carrier: &str, hours: u64, validity_hours: Option<i64>) {
    let number = bench.number();
    bench
        .server
        .handset(&number, json!({"carrier": carrier, "powered_on": false}))
        .await;
    let submitted = bench.now().await;
    let id = bench.esme.send(&sms(&number, OTP_TEXT)).await;
    bench.server.advance(hours * HOUR).await;
    let back_at = bench.now().await;
    let still_trying = bench.esme.query(&id).await;
    bench.server.handset(&number, json!({"powered_on": true})).await;
    let receipt = bench.esme.receipt().await;
    assert_eq!(receipt.id, id, "{carrier}");
    let inbox = bench.server.inbox(&number).await;
    match validity_hours {
        Some(validity) => {
            assert_eq!(receipt.summary(), EXPIRED, "{carrier} off for {hours} h");
            let end =
                chrono::DateTime::parse_from_rfc3339(&submitted).expect("now") + chrono::Duration::hours(validity);
            assert_eq!(receipt.done_date, end.format("%y%m%d%H%M").to_string(), "{carrier}");
            assert_eq!(inbox, vec![], "{carrier}");
        }
        None => {
            assert_eq!(
                still_trying.map(|(state, ..)| state),
                Ok(1),
                "{carrier}: ENROUTE while off"
            );
            assert_eq!(receipt.summary(), DELIVERED, "{carrier} off for {hours} h");
            assert_eq!(inbox.len(), 1, "{carrier}");
            assert_eq!(inbox[0].received_at, back_at, "{carrier}: delivered when switched on");
            assert_eq!(receipt.done_date, receipt_date(&back_at), "{carrier}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_off_for_two_hours_gets_the_message_when_switched_on() {
    let mut bench = Bench::start().await;
    check_absent(&mut bench, "docomo", 2, None).await;
    assert_eq!(bench.now().await, "2026-01-01T02:00:00+09:00");
    for carrier in ["au", "softbank", "rakuten"] {
        check_absent(&mut bench, carrier, 2, None).await;
    }
    // Just inside each network's validity, the message still arrives.
    check_absent(&mut bench, "docomo", 71, None).await;
    check_absent(&mut bench, "ymobile", 23, None).await;

    // Back in coverage, or roaming switched on abroad: the same alert.
    for (away, back) in [
        (json!({"in_coverage": false}), json!({"in_coverage": true})),
        (json!({"abroad": true}), json!({"roaming": true})),
    ] {
        let number = bench.number();
        bench
            .server
            .handset(&number, merged(json!({"carrier": "docomo"}), &away))
            .await;
        let id = bench.esme.send(&sms(&number, OTP_TEXT)).await;
        bench.server.advance(2 * HOUR).await;
        bench.server.handset(&number, back).await;
        let receipt = bench.esme.receipt().await;
        assert_eq!(
            (receipt.id.as_str(), receipt.summary().as_str()),
            (id.as_str(), DELIVERED)
        );
        assert_eq!(bench.server.inbox(&number).await.len(), 1);
    }
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_off_too_long_gets_expired_after_its_networks_validity() {
    let mut bench = Bench::start().await;
    check_absent(&mut bench, "docomo", 73, Some(72)).await;
    check_absent(&mut bench, "softbank", 25, Some(24)).await;
    for (carrier, hours, validity) in [
        ("ahamo", 73, 72),
        ("au", 73, 72),
        ("povo", 73, 72),
        ("linemo", 25, 24),
        ("softbank-mvno", 25, 24),
        ("rakuten", 73, 72),
    ] {
        check_absent(&mut bench, carrier, hours, Some(validity)).await;
    }
    bench.stop().await;
}

/// Regression: each change to an absent phone's settings (the network's
/// alert) started one more retry chain, so a message was tried ever more
/// often and its attempts were miscounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_an_absent_phones_settings_does_not_start_a_second_retry_chain() {
    let mut bench = Bench::start().await;
    let number = bench.number();
    bench
        .server
        .handset(&number, json!({"carrier": "docomo", "powered_on": false}))
        .await;
    bench.esme.send(&sms(&number, OTP_TEXT)).await;
    bench.server.advance(10).await;
    for coverage in [true, false, true] {
        bench.server.handset(&number, json!({"in_coverage": coverage})).await;
    }
    bench.server.advance(HOUR).await;
    let now = bench.now().await;

    let (_, log) = bench
        .server
        .get(&format!("/v1/messages?to=%2B81{}", &number[1..]))
        .await;
    let retries: Vec<&Value> = log["items"][0]["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "retry_scheduled")
        .collect();
    let attempts: Vec<u64> = retries.iter().filter_map(|e| e["attempt"].as_u64()).collect();
    assert_eq!(attempts, (1..=retries.len() as u64).collect::<Vec<_>>(), "{log}");
    let instant =
        |text: &Value| chrono::DateTime::parse_from_rfc3339(text.as_str().expect("a time")).expect("RFC 3339");
    let end = chrono::DateTime::parse_from_rfc3339(&now).expect("now");
    let planned_ahead = retries.iter().filter(|e| instant(&e["next_attempt_at"]) > end).count();
    assert_eq!(planned_ahead, 1, "one next attempt, not one per chain: {log}");
    bench.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handset_changes_made_at_once_are_all_kept() {
    let server = TestServer::start().await;
    let path = "/v1/sim/handsets/090-5555-0001";
    let (s, b) = server.put(path, json!({"carrier": "au"})).await;
    assert_eq!(s, 201, "{b}");
    let patches = [
        json!({"powered_on": false}),
        json!({"in_coverage": false}),
        json!({"abroad": true}),
        json!({"roaming": true}),
        json!({"storage_full": true}),
        json!({"sms_plan": false}),
        json!({"call_restriction": true}),
        json!({"filters": {"reject_all": true}}),
    ];
    let answers = futures::future::join_all(patches.iter().map(|p| server.put(path, p.clone()))).await;
    for (s, b) in answers {
        assert_eq!(s, 200, "{b}");
    }
    let (_, handset) = server.get(path).await;
    let kept = |field: &str, want: bool| assert_eq!(handset[field], json!(want), "{field} was lost: {handset}");
    kept("powered_on", false);
    kept("in_coverage", false);
    kept("abroad", true);
    kept("roaming", true);
    kept("storage_full", true);
    kept("sms_plan", false);
    kept("call_restriction", true);
    assert_eq!(handset["filters"]["reject_all"], json!(true), "{handset}");
    assert_eq!(handset["carrier"], "au");
    server.stop().await;
}

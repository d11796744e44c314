//! The SMS spine end to end over real sockets: the four registration steps,
//! sender IDs per carrier, and every OTP rule of DESIGN.md sections 5 and 7.

mod common;

use common::{enc, error_code, TestServer};

use serde_json::json;

const DOCOMO: &str = "090-1111-0001";
const SOFTBANK: &str = "080-2222-0002";

fn digits(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or("").chars().filter(char::is_ascii_digit).collect()
}

fn wrong(code: &serde_json::Value) -> String {
    let n: u32 = code.as_str().unwrap().parse().unwrap();
    format!("{:06}", (n + 1) % 1_000_000)
}

async fn issue(server: &common::Api, member: &str, purpose: &str) -> serde_json::Value {
    let (s, otp) = server
        .post("/v1/otps", json!({"member_id": member, "purpose": purpose}))
        .await;
    assert_eq!(s, 201, "issue: {otp}");
    otp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_steps_then_an_otp_shows_the_carriers_sender() {
    let server = TestServer::start().await;
    let docomo_verification = server.sms_member("M-DOCOMO", DOCOMO, "docomo").await;
    let softbank_verification = server.sms_member("M-SOFTBANK", SOFTBANK, "softbank").await;
    assert_eq!(docomo_verification["from"], "03-5460-0124");
    assert_eq!(softbank_verification["from"], "22471");

    let (_, member) = server.get("/v1/members/M-DOCOMO").await;
    assert_eq!(member["notification"], "sms");
    assert_eq!(member["phone"]["number"], "+819011110001");
    assert_eq!(member["phone"]["verified"], true);

    let otp = issue(&server, "M-DOCOMO", "profile").await;
    assert_eq!(otp["sender"], "03-5460-0124");
    assert_eq!(otp["destination"], "090-****-0001");
    assert_eq!(otp["channel"], "sms");
    assert!(otp.get("code").is_none(), "the answer carries no code: {otp}");
    let got = server.code_on_handset(DOCOMO, Some(&docomo_verification)).await;
    assert_eq!(got["from"], "03-5460-0124");
    assert_eq!(got["code"].as_str().unwrap().len(), 6);

    let otp = issue(&server, "M-SOFTBANK", "profile").await;
    assert_eq!(digits(&otp["sender"]), "22471");
    let got = server.code_on_handset(SOFTBANK, Some(&softbank_verification)).await;
    assert_eq!(got["from"], "22471");

    // The delivery log has the whole story, with the code masked.
    let (_, log) = server
        .get(&format!("/v1/messages?otp_id={}", otp["id"].as_str().unwrap()))
        .await;
    let message = &log["items"][0];
    assert_eq!(message["state"], "delivered", "{message}");
    let kinds = kinds(message);
    assert!(kinds.starts_with(&["queued"]), "{kinds:?}");
    assert!(kinds.contains(&"delivered") && kinds.contains(&"receipt"), "{kinds:?}");
    assert!(message["text"].as_str().unwrap().contains("******"));
    assert!(
        !log.to_string().contains(got["code"].as_str().unwrap()),
        "the log holds the plain code"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_rules_wrong_right_used_expired_locked() {
    let server = TestServer::start().await;
    let verification = server.sms_member("M1", DOCOMO, "docomo").await;

    let otp = issue(&server, "M1", "login").await;
    let code = server.code_on_handset(DOCOMO, Some(&verification)).await;
    let path = format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap());
    let (s, b) = server.post(&path, json!({"code": wrong(&code["code"])})).await;
    assert_eq!((s, error_code(&b)), (400, "invalid_code"));
    assert_eq!(b["error"]["attempts_left"], 4);
    let (s, b) = server.post(&path, json!({"code": code["code"]})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("verified")), "{b}");
    let (s, b) = server.post(&path, json!({"code": code["code"]})).await;
    assert_eq!((s, error_code(&b)), (409, "already_used"));

    server.advance(700).await;
    let otp = issue(&server, "M1", "expiry").await;
    let code = server.code_on_handset(DOCOMO, Some(&code)).await;
    server.advance(601).await;
    let (s, b) = server
        .post(
            &format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap()),
            json!({"code": code["code"]}),
        )
        .await;
    assert_eq!((s, error_code(&b)), (410, "expired"));
    let (_, state) = server.get(&format!("/v1/otps/{}", otp["id"].as_str().unwrap())).await;
    assert_eq!(state["status"], "expired");

    server.advance(700).await;
    let otp = issue(&server, "M1", "lock").await;
    let code = server.code_on_handset(DOCOMO, Some(&code)).await;
    let path = format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap());
    for _ in 0..5 {
        server.post(&path, json!({"code": wrong(&code["code"])})).await;
    }
    let (s, b) = server.post(&path, json!({"code": code["code"]})).await;
    assert_eq!((s, error_code(&b)), (423, "locked"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_supersedes_and_the_old_code_says_so() {
    let server = TestServer::start().await;
    let verification = server.sms_member("M1", SOFTBANK, "softbank").await;
    let first = issue(&server, "M1", "miles").await;
    let first_code = server.code_on_handset(SOFTBANK, Some(&verification)).await;
    server.advance(61).await;
    let (s, second) = server
        .post(&format!("/v1/otps/{}/resend", first["id"].as_str().unwrap()), json!({}))
        .await;
    assert_eq!(s, 201, "{second}");
    assert_ne!(second["id"], first["id"]);
    let second_code = server.code_on_handset(SOFTBANK, Some(&first_code)).await;

    let (s, b) = server
        .post(
            &format!("/v1/otps/{}/verify", first["id"].as_str().unwrap()),
            json!({"code": first_code["code"]}),
        )
        .await;
    assert_eq!((s, error_code(&b)), (409, "superseded"));
    // The old code entered on the new OTP: superseded too, and it counts.
    let path = format!("/v1/otps/{}/verify", second["id"].as_str().unwrap());
    if first_code["code"] != second_code["code"] {
        let (s, b) = server.post(&path, json!({"code": first_code["code"]})).await;
        assert_eq!((s, error_code(&b)), (409, "superseded"));
        let (_, state) = server
            .get(&format!("/v1/otps/{}", second["id"].as_str().unwrap()))
            .await;
        assert_eq!(state["attempts_left"], 4);
    }
    let (s, _) = server.post(&path, json!({"code": second_code["code"]})).await;
    assert_eq!(s, 200);
    let (_, old) = server.get(&format!("/v1/otps/{}", first["id"].as_str().unwrap())).await;
    assert_eq!(old["status"], "superseded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_verifies_give_exactly_one_success() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let verification = server.sms_member("M1", DOCOMO, "docomo").await;
    let otp = issue(&server, "M1", "race").await;
    let code = server.code_on_handset(DOCOMO, Some(&verification)).await;
    let path = format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap());
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let server = server.clone();
        let path = path.clone();
        let code = code["code"].clone();
        tasks.push(tokio::spawn(async move {
            server.post(&path, json!({"code": code})).await.0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_limits_answer_429_with_retry_after() {
    let server = TestServer::start().await;
    server.sms_member("M1", DOCOMO, "docomo").await;
    issue(&server, "M1", "limit").await;
    let (s, b) = server
        .post("/v1/otps", json!({"member_id": "M1", "purpose": "limit"}))
        .await;
    assert_eq!((s, error_code(&b)), (429, "rate_limited"), "{b}");
    let retry_after = b["error"]["retry_after"].as_i64().unwrap();
    assert!((1..=60).contains(&retry_after), "{b}");
    // Five sends in ten minutes are the cap, whatever the cooldown.
    for _ in 0..3 {
        server.advance(61).await;
        issue(&server, "M1", "limit").await;
    }
    server.advance(61).await;
    let (s, b) = server
        .post("/v1/otps", json!({"member_id": "M1", "purpose": "limit"}))
        .await;
    assert_eq!(
        s, 429,
        "the sixth send in ten minutes (the verification SMS counts): {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    let (s, b) = server.http_raw("POST", "/v1/members", Some("{not json")).await;
    assert_eq!((s, error_code(&b)), (400, "malformed_json"));
    let (s, _) = server
        .post(
            "/v1/members",
            json!({"id": "M1", "residence": "JP", "email": "m1@example.com"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, b) = server
        .post("/v1/members/M1/phone", json!({"number": "03-1234-5678"}))
        .await;
    assert_eq!((s, error_code(&b)), (422, "fixed_line_number"));
    let (s, b) = server.post("/v1/members/M1/phone", json!({"number": "12"})).await;
    assert_eq!((s, error_code(&b)), (422, "invalid_number"));
    let (s, b) = server
        .put("/v1/members/M1/notification", json!({"channel": "sms"}))
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = server.get("/v1/members/NOBODY").await;
    assert_eq!((s, error_code(&b)), (404, "not_found"));
    let (s, b) = server
        .post("/v1/otps", json!({"member_id": "NOBODY", "purpose": "x"}))
        .await;
    assert_eq!((s, error_code(&b)), (404, "not_found"));
    let (s, b) = server.get("/v1/no/such/route").await;
    assert_eq!((s, error_code(&b)), (404, "not_found"));
    let (s, b) = server
        .post(
            "/v1/members",
            json!({"id": "M2", "residence": "US", "email": "m2@example.com"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = server
        .post("/v1/members/M2/phone", json!({"number": "090-1234-5678"}))
        .await;
    assert_eq!((s, error_code(&b)), (422, "sms_requires_japan_residence"));
    let (s, b) = server
        .put(&format!("/v1/sim/handsets/{}", enc(DOCOMO)), json!({"carrier": "nope"}))
        .await;
    assert_eq!((s, error_code(&b)), (422, "invalid_request"));
    let (s, _) = server.get("/healthz").await;
    assert_eq!(s, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_of_the_binary_keeps_what_was_acknowledged() {
    let mut server = common::BinServer::start(None).await;
    let verification = server.sms_member("M1", SOFTBANK, "softbank").await;
    let otp = issue(&server, "M1", "login").await;
    let code = server.code_on_handset(SOFTBANK, Some(&verification)).await;
    server.restart().await;
    let (s, member) = server.get("/v1/members/M1").await;
    assert_eq!(s, 200);
    assert_eq!(member["phone"]["verified"], true);
    let (_, log) = server.get("/v1/messages?member_id=M1").await;
    assert_eq!(log["items"].as_array().unwrap().len(), 2, "{log}");
    let (_, clock) = server.get("/v1/sim/clock").await;
    assert_ne!(
        clock["now"], "2026-01-01T00:00:00+09:00",
        "the virtual clock resumes where it stopped"
    );
    // The code issued before the restart still verifies, once.
    let path = format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap());
    let (s, _) = server.post(&path, json!({"code": code["code"]})).await;
    assert_eq!(s, 200);
    let (s, _) = server.post(&path, json!({"code": code["code"]})).await;
    assert_eq!(s, 409);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_simulation_routes_need_the_admin_token() {
    let server = TestServer::start_with(|c| {
        c.http = "0.0.0.0:0".parse().unwrap();
        c.admin_token = Some("s3cret".into());
    })
    .await;
    let port = server.http.port();
    let get = |auth: Option<&'static str>| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET /v1/sim/clock HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get(None).await.starts_with("HTTP/1.1 401"));
    assert!(get(Some("wrong")).await.starts_with("HTTP/1.1 401"));
    assert!(get(Some("s3cret")).await.starts_with("HTTP/1.1 200"));
    // The member and OTP API itself stays open.
    let (s, _) = server.get("/healthz").await;
    assert_eq!(s, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_log_retention_old_records_go_and_codes_that_can_be_used_stay() {
    let server = TestServer::start_with(|c| {
        c.log_retention = 3;
        c.otp.sends_per_window = 100;
    })
    .await;
    let mut last = server.sms_member("M1", DOCOMO, "docomo").await;
    let mut otps = Vec::new();
    for _ in 0..5 {
        otps.push(issue(&server, "M1", "login").await);
        last = server.code_on_handset(DOCOMO, Some(&last)).await;
        // Also waits for the delivery job, retention included, to finish.
        server.advance(61).await;
    }
    let id = |otp: &serde_json::Value| otp["id"].as_str().unwrap().to_string();
    // Six OTPs (the phone's verification and five logins) and six SMS:
    // the newest three of each stay.
    for old in &otps[..2] {
        assert_eq!(server.get(&format!("/v1/otps/{}", id(old))).await.0, 404, "{old}");
    }
    for kept in &otps[2..] {
        assert_eq!(server.get(&format!("/v1/otps/{}", id(kept))).await.0, 200, "{kept}");
    }
    // The phone's verification code went first: verifying the phone again
    // finds no code, rather than an OTP record that is gone.
    let (s, b) = server
        .post("/v1/members/M1/phone/verify", json!({"code": "000000"}))
        .await;
    assert_eq!(s, 404, "{b}");
    assert!(b.to_string().contains("phone verification code"), "{b}");
    let (_, inbox) = server.get(&format!("/v1/sim/handsets/{}/messages", enc(DOCOMO))).await;
    let items = inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{inbox:#}");
    assert_eq!(items[0]["received_at"], last["received_at"], "newest first: {inbox:#}");

    // Codes that can still be used are never removed, however many there
    // are: four members with a pending code each, past a cap of three.
    let mut pending = vec![otps[4].clone()];
    for i in 0..4 {
        let member = format!("E{i}");
        let (s, b) = server
            .post(
                "/v1/members",
                json!({"id": member, "email": format!("e{i}@example.com")}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        pending.push(issue(&server, &member, "login").await);
    }
    server.advance(1).await;
    for otp in &pending {
        let (s, state) = server.get(&format!("/v1/otps/{}", id(otp))).await;
        assert_eq!((s, &state["status"]), (200, &json!("pending")), "{state}");
    }
    // The newest SMS code still verifies.
    let (s, b) = server
        .post(
            &format!("/v1/otps/{}/verify", id(&otps[4])),
            json!({"code": last["code"]}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receipt_quoting_the_start_of_a_short_branded_text_leaves_no_digit_of_the_code_in_the_log() {
    // 【AB】ワンタイムパスワード: and a space are 16 characters, so the
    // 20 the receipt quotes end with the code's first four digits.
    let server = TestServer::start_with(|c| c.sender.brand = "AB".into()).await;
    let verification = server.sms_member("M-BRAND", DOCOMO, "docomo").await;
    let otp = issue(&server, "M-BRAND", "login").await;
    let got = server.code_on_handset(DOCOMO, Some(&verification)).await;
    let code = got["code"].as_str().unwrap();
    let (_, inbox) = server.get(&format!("/v1/sim/handsets/{}/messages", enc(DOCOMO))).await;
    let text = inbox["items"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("【AB】ワンタイムパスワード: {code}")),
        "{text}"
    );

    let (_, log) = server
        .get(&format!("/v1/messages?otp_id={}", otp["id"].as_str().unwrap()))
        .await;
    let events = log["items"][0]["events"].as_array().unwrap().clone();
    let receipt = events
        .iter()
        .find(|e| e["kind"] == "receipt")
        .unwrap_or_else(|| panic!("a receipt event: {events:?}"));
    let detail = receipt["detail"].as_str().unwrap();
    let quoted = &detail[detail.find("text:").expect("the quoted text") + 5..];
    assert!(quoted.ends_with("****"), "the code's start is masked: {detail}");
    assert!(!quoted.contains(&code[..4]), "{detail}");
    assert!(
        detail.contains("stat:DELIVRD"),
        "the receipt's own fields stay: {detail}"
    );
    let (_, report) = server.get("/v1/diagnostics/members/M-BRAND").await;
    for answer in [log.to_string(), report.to_string()] {
        assert!(!answer.contains(&format!(": {}", &code[..4])), "{answer}");
    }
    server.stop().await;
}

/// Ids of the members `GET /v1/members?{query}` finds.
async fn found(server: &common::Api, query: &str) -> Vec<String> {
    let (s, body) = server.get(&format!("/v1/members?{query}")).await;
    assert_eq!(s, 200, "{body}");
    let mut ids: Vec<String> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_found_by_number_and_address_through_changes_and_restarts() {
    let mut server = common::BinServer::start(None).await;
    server.sms_member("FIND-1", DOCOMO, "docomo").await;
    let (s, b) = server
        .post(
            "/v1/members",
            json!({"id": "FIND-2", "email": "Aki.Tanaka@Example.com"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");

    assert_eq!(found(&server, "phone=%2B81%2090%201111%200001").await, ["FIND-1"]);
    assert_eq!(found(&server, "phone=09011110001").await, ["FIND-1"], "any spelling");
    assert_eq!(
        found(&server, "email=aki.tanaka%40example.com").await,
        ["FIND-2"],
        "any case"
    );
    assert_eq!(
        found(&server, "phone=090-1111-0001&email=find-1%40example.com").await,
        ["FIND-1"],
        "once, though both match"
    );
    assert_eq!(
        found(&server, "phone=090-1111-0001&email=aki.tanaka%40example.com").await,
        ["FIND-1", "FIND-2"]
    );

    // A changed address finds the member; the old one no longer does.
    let (s, b) = server
        .put("/v1/members/FIND-2/email", json!({"email": "aki@example.net"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(found(&server, "email=aki.tanaka%40example.com").await.is_empty());
    assert_eq!(found(&server, "email=aki%40example.net").await, ["FIND-2"]);
    assert!(found(&server, "phone=08099998888").await.is_empty());

    // A data directory from before the index: it is built at start-up.
    server.terminate().await;
    {
        let db = sled::open(server.dir.path().join("data").join("db")).expect("open sled");
        assert!(db.drop_tree("member_index").expect("drop the index"));
        db.flush().expect("flush");
    }
    server.restart().await;
    assert_eq!(found(&server, "phone=09011110001").await, ["FIND-1"]);
    assert_eq!(found(&server, "email=AKI%40example.net").await, ["FIND-2"]);
    server.stop().await;
}

/// The kinds of a logged message's events, in order.
fn kinds(message: &serde_json::Value) -> Vec<&str> {
    let events = message["events"].as_array().unwrap();
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

/// The message of an OTP in the delivery log.
async fn logged(server: &common::Api, otp: &serde_json::Value) -> serde_json::Value {
    let (s, log) = server
        .get(&format!("/v1/messages?otp_id={}", otp["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200, "{log}");
    log["items"][0].clone()
}

/// A logged message's newest event.
fn last_event(message: &serde_json::Value) -> serde_json::Value {
    message["events"].as_array().unwrap().last().unwrap().clone()
}

/// Issues a login OTP whose SMS the core could not hand over yet: its
/// message waits `enroute`, its newest event `kind` for `reason`.
async fn issue_held_back(
    server: &common::Api,
    member: &str,
    kind: &str,
    reason: &str,
) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let otp = issue(server, member, "login").await;
    let message = logged(server, &otp).await;
    assert_eq!(message["state"], "enroute", "{message:#}");
    let event = last_event(&message);
    assert_eq!(
        (event["kind"].as_str(), event["reason"].as_str()),
        (Some(kind), Some(reason)),
        "{message:#}"
    );
    (otp, message, event)
}

/// Verifies the code a handset got (`/otp` of the handset), insisting on 200.
async fn verify_ok(server: &common::Api, otp: &serde_json::Value, got: &serde_json::Value) {
    let path = format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap());
    let (s, b) = server.post(&path, json!({"code": got["code"]})).await;
    assert_eq!(s, 200, "{b}");
}

/// How long after an event its next try is set.
fn after_ms(event: &serde_json::Value) -> i64 {
    let time = |k: &str| otpgate::clock::parse_rfc3339(event[k].as_str().unwrap()).unwrap();
    time("next_attempt_at") - time("at")
}

/// The member's findings, as (code, severity, explanation).
async fn findings(server: &common::Api, member: &str) -> Vec<(String, String, String)> {
    let (s, report) = server.get(&format!("/v1/diagnostics/members/{member}?lang=en")).await;
    assert_eq!(s, 200, "{report}");
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or("").to_string();
            (text("code"), text("severity"), text("explanation"))
        })
        .collect()
}

/// ESME_RTHROTTLED is the SMSC saying "not now": the core tries the
/// submit again after 2, 4, 8 and 16 s (while the code is valid) instead
/// of failing the OTP, and the desk says a retry is coming. Once the SMSC
/// takes it, the code arrives and verifies, and the desk has nothing to
/// say about the throttling any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_submit_is_tried_again_and_the_code_arrives() {
    let server = TestServer::start().await;
    let registration = server.sms_member("M-DOCOMO", DOCOMO, "docomo").await;
    let chaos = json!({"enabled": true, "carriers": {"docomo": {"throttle": 1.0, "failure": 0.0, "long_delay": 0.0}}});
    let (s, b) = server.put("/v1/sim/chaos", chaos).await;
    assert_eq!(s, 200, "{b}");

    let (otp, message, refused) = issue_held_back(&server, "M-DOCOMO", "submit_refused", "throttled").await;
    assert_eq!(refused["command_status"], "0x00000058");
    assert_eq!(refused["attempt"], 1);
    assert_eq!(after_ms(&refused), 2_000, "{message:#}");
    let gateway = findings(&server, "M-DOCOMO").await;
    let gateway = gateway.iter().find(|f| f.0 == "gateway_error").expect("gateway_error");
    assert_eq!(gateway.1, "warning", "{gateway:?}");
    assert!(gateway.2.contains("We try again at"), "{gateway:?}");

    // Still throttled at the second try: the next wait is twice as long.
    server.advance(2).await;
    let message = logged(&server, &otp).await;
    let second = last_event(&message);
    assert_eq!(
        (second["attempt"].clone(), second["reason"].clone()),
        (json!(2), json!("throttled"))
    );
    assert_eq!(after_ms(&second), 4_000, "{message:#}");

    let (s, b) = server.put("/v1/sim/chaos", json!({"enabled": false})).await;
    assert_eq!(s, 200, "{b}");
    server.advance(3).await;
    assert_eq!(logged(&server, &otp).await["state"], "enroute");
    server.advance(1).await;
    let got = server.code_on_handset(DOCOMO, Some(&registration)).await;
    verify_ok(&server, &otp, &got).await;
    let message = logged(&server, &otp).await;
    assert_eq!(message["state"], "delivered", "{message:#}");
    let kinds = kinds(&message);
    assert!(
        kinds.starts_with(&["queued", "submit_refused", "submit_refused"]),
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "submitted").count(), 1, "{kinds:?}");
    let after = findings(&server, "M-DOCOMO").await;
    assert!(after.iter().all(|f| f.0 != "gateway_error"), "{after:?}");
    server.stop().await;
}

/// A new member `id` registering the docomo number, whose verification
/// code goes out.
async fn register_phone(core: &common::Api, id: &str) {
    let email = format!("{}@example.com", id.to_lowercase());
    let body = json!({"id": id, "locale": "en", "residence": "JP", "email": email});
    let (s, b) = core.post("/v1/members", body).await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = core
        .post(&format!("/v1/members/{id}/phone"), json!({"number": DOCOMO}))
        .await;
    assert_eq!(s, 202, "{b}");
}

/// The core on the external SMSC at `addr`, plain TCP, the default account.
fn sms_out(addr: std::net::SocketAddr) -> otpgate::config::SmsOut {
    otpgate::config::SmsOut {
        addr: addr.to_string(),
        system_id: "otpgate".into(),
        password: "otpgate".into(),
        window: None,
        tls: false,
        tls_ca: None,
    }
}

/// Whether the core's SMPP client is bound, from `/metrics`.
async fn sms_link_bound(server: &common::Api) -> Option<bool> {
    Some(server.metrics().await.get("otpgate_smpp_client_bound")? == 1.0)
}

/// Waits (each probe a round trip, no sleeping) until the core's link is
/// `bound` or not.
async fn until_link(server: &common::Api, bound: bool) {
    for _ in 0..20_000 {
        if sms_link_bound(server).await == Some(bound) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the SMPP link never became {}", if bound { "bound" } else { "unbound" });
}

/// With the core on an external SMSC (a second otpgate), an SMS sent while
/// the SMSC is not up (not started yet, or restarting) finds no bind:
/// nothing went out, so the core tries again instead of failing it, and
/// once the link is (back) up the code arrives and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_sent_while_the_smsc_is_down_goes_out_once_the_link_is_up() {
    let smsc_addr = {
        let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        spare.local_addr().unwrap()
    };
    // The core starts first, and does not give up on its SMSC.
    let core = TestServer::start_with(|c| c.sms_out = Some(sms_out(smsc_addr))).await;
    assert_eq!(sms_link_bound(&core).await, Some(false));
    register_phone(&core, "M-EXT").await;
    let smsc = TestServer::start_with(|c| c.smpp = Some(smsc_addr)).await;
    until_link(&core, true).await;
    core.advance(2).await;
    let registration = smsc.code_on_handset(DOCOMO, None).await;
    let (s, b) = core
        .post("/v1/members/M-EXT/phone/verify", json!({"code": registration["code"]}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = core
        .put("/v1/members/M-EXT/notification", json!({"channel": "sms"}))
        .await;
    assert_eq!(s, 200, "{b}");
    core.advance(61).await; // past the cooldown the verification SMS started
    assert_eq!(sms_link_bound(&core).await, Some(true));

    smsc.stop().await;
    until_link(&core, false).await;
    let (otp, message, failed) = issue_held_back(&core, "M-EXT", "submit_failed", "gateway_unreachable").await;
    assert_eq!(after_ms(&failed), 2_000, "{message:#}");

    // The SMSC comes back on the same address; the client binds again.
    let smsc = TestServer::start_with(|c| c.smpp = Some(smsc_addr)).await;
    until_link(&core, true).await;
    core.advance(2).await;
    let got = smsc.code_on_handset(DOCOMO, None).await;
    verify_ok(&core, &otp, &got).await;
    let message = logged(&core, &otp).await;
    assert!(
        matches!(message["state"].as_str(), Some("submitted" | "delivered")),
        "{message:#}"
    );
    core.stop().await;
    smsc.stop().await;
}

/// The OTP core submits to an external SMSC over TLS (`[sms_out] tls`,
/// `tls_ca`): a second otpgate's SMPP-over-TLS listener, whose certificate
/// the core checks against the CA file it was given. With the right CA
/// the verification code arrives over TLS; a core that trusts another CA
/// never binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_submits_to_an_external_smsc_over_tls_checking_its_certificate() {
    let (smsc, tls_addr) = common::tls::server_with_smpp_tls().await;
    let core_trusting = |ca: &str| {
        let ca = common::tls::fixture(ca);
        move |c: &mut otpgate::config::Config| {
            c.sms_out = Some(otpgate::config::SmsOut {
                tls: true,
                tls_ca: Some(ca),
                ..sms_out(tls_addr)
            })
        }
    };

    let stranger = TestServer::start_with(core_trusting("other-ca.pem")).await;
    assert_eq!(
        sms_link_bound(&stranger).await,
        Some(false),
        "a certificate from a CA the core does not trust"
    );
    stranger.stop().await;

    let core = TestServer::start_with(core_trusting("cert.pem")).await;
    until_link(&core, true).await;
    register_phone(&core, "M-TLS").await;
    smsc.advance(60).await;
    let got = smsc.code_on_handset(DOCOMO, None).await;
    let (s, b) = core
        .post("/v1/members/M-TLS/phone/verify", json!({"code": got["code"]}))
        .await;
    assert_eq!(s, 200, "{b}");
    core.stop().await;
    smsc.stop().await;
}

//! The email path end to end over real sockets: the OTP core's own SMTP
//! client (mail-send), mail-send used directly, and a hand-written SMTP
//! dialogue all talk to the embedded server on port 0; what they hear, what
//! the mailboxes and the capture show, and what the delivery log records are
//! checked through the HTTP API. STARTTLS and AUTH are checked against the
//! SMTP server started on its own with a test certificate.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use mail_send::mail_builder::MessageBuilder;
use mail_send::{Credentials, SmtpClientBuilder};
use serde_json::{json, Value};

use common::smtp_client::{base64, iso_2022_jp, plain_message, RawSmtp};
use common::{enc, error_code, Api, TestServer};

/// The OTP core's envelope sender (the configuration's default).
const OTP_SENDER: &str = "otp@otpgate.example";
/// The sender the independent clients use: an application outside otpgate.
const APP_SENDER: &str = "alerts@shop.example";

// ---------------------------------------------------------------------------
// Helpers: one per thing the tests look at, so a changed API is one edit.

async fn email_member(api: &Api, id: &str, locale: &str, email: &str) {
    let (s, b) = api
        .post(
            "/v1/members",
            json!({"id": id, "locale": locale, "residence": "JP", "email": email}),
        )
        .await;
    assert_eq!(s, 201, "member {id}: {b}");
    assert_eq!(b["notification"], "email", "{b}");
}

async fn issue(api: &Api, member: &str) -> Value {
    let (s, otp) = api
        .post("/v1/otps", json!({"member_id": member, "purpose": "login"}))
        .await;
    assert_eq!(s, 201, "issue for {member}: {otp}");
    assert_eq!(otp["channel"], "email", "{otp}");
    assert!(otp.get("code").is_none(), "the answer carries no code: {otp}");
    otp
}

async fn verify(api: &Api, otp: &Value, code: &str) -> (u16, Value) {
    api.post(
        &format!("/v1/otps/{}/verify", otp["id"].as_str().unwrap()),
        json!({ "code": code }),
    )
    .await
}

async fn set_mailbox(api: &Api, address: &str, settings: Value) -> Value {
    let (s, b) = api.put(&format!("/v1/sim/mailboxes/{}", enc(address)), settings).await;
    assert_eq!(s, 200, "mailbox {address}: {b}");
    b
}

/// The delivery-log entry of an OTP's email.
async fn otp_log(api: &Api, otp: &Value) -> Value {
    let (s, log) = api
        .get(&format!("/v1/messages?otp_id={}", otp["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 200, "{log}");
    assert_eq!(log["items"].as_array().map(Vec::len), Some(1), "{log}");
    log["items"][0].clone()
}

/// Log entries for an address that came from other applications over SMTP.
async fn external_log(api: &Api, address: &str) -> Vec<Value> {
    let (s, log) = api.get(&format!("/v1/messages?to={}", enc(address))).await;
    assert_eq!(s, 200, "{log}");
    log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["origin"] == "smtp")
        .cloned()
        .collect()
}

fn kinds(message: &Value) -> Vec<String> {
    message["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The message's state is `state`, and one of its events moved it there for
/// `reason` with the SMTP reply code `code`.
fn assert_logged(message: &Value, state: &str, reason: Option<&str>, code: u16) {
    assert_eq!(message["state"], state, "{message:#}");
    let found = message["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["state"] == state && e["smtp_code"] == code && reason.is_none_or(|r| e["reason"] == r));
    assert!(found, "no `{state}` event with {reason:?} and {code}: {message:#}");
}

async fn mailbox_messages(api: &Api, address: &str) -> Vec<Value> {
    let (s, b) = api.get(&format!("/v1/sim/mailboxes/{}/messages", enc(address))).await;
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().unwrap().clone()
}

/// The newest code in the mailbox's inbox, or None (404).
async fn mailbox_code(api: &Api, address: &str) -> Option<String> {
    let (s, b) = api.get(&format!("/v1/sim/mailboxes/{}/otp", enc(address))).await;
    match s {
        200 => Some(b["code"].as_str().unwrap().to_string()),
        404 => None,
        _ => panic!("mailbox otp: {s} {b}"),
    }
}

async fn mail_list(api: &Api, query: &str) -> Value {
    let (s, b) = api.get(&format!("/v1/mail{query}")).await;
    assert_eq!(s, 200, "{b}");
    b
}

fn subjects(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect()
}

/// Sends one message with an independent raw dialogue and returns the
/// transaction's replies.
async fn raw_send(smtp: SocketAddr, to: &str, subject: &str, body: &str) -> common::smtp_client::Transaction {
    let mut client = RawSmtp::connect(smtp).await;
    let tx = client
        .transaction(APP_SENDER, &[to], &plain_message(APP_SENDER, to, subject, body))
        .await;
    client.quit().await;
    tx
}

/// Sends one message with mail-send used directly (not otpgate's client).
async fn mail_send(smtp: SocketAddr, to: &str, subject: &str, body: &str) -> Result<(), mail_send::Error> {
    let message = MessageBuilder::new()
        .from(("Shop", APP_SENDER))
        .to(to)
        .subject(subject)
        .text_body(body);
    let mut client = SmtpClientBuilder::new("127.0.0.1".to_string(), smtp.port())
        .expect("client builder")
        .implicit_tls(false)
        .helo_host("app.example")
        .connect_plain()
        .await?;
    let sent = client.send(message).await;
    let _ = client.quit().await;
    sent.map(drop)
}

// ---------------------------------------------------------------------------
// The OTP email for each locale.

/// Issues an OTP for an email member, reads it through the mailbox and the
/// capture routes, checks the template's language, and verifies the code.
async fn check_otp_email(api: &Api, member: &str, locale: &str, address: &str, subject_has: &str, text_has: &str) {
    email_member(api, member, locale, address).await;
    let otp = issue(api, member).await;
    assert_eq!(otp["sender"], OTP_SENDER, "{otp}");
    let code = mailbox_code(api, address).await.expect("the code reached the inbox");
    assert_eq!(code.len(), 6);

    let inbox = mailbox_messages(api, address).await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["folder"], "inbox");
    assert!(inbox[0]["text"].as_str().unwrap().contains(text_has), "{:#}", inbox[0]);

    // The capture: searchable by address, the detail decoded, the raw source as sent.
    let page = mail_list(api, &format!("?q={}", enc(address))).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    let item = &page["items"][0];
    for field in ["id", "from", "to", "subject", "received_at", "size"] {
        assert!(!item[field].is_null(), "list item lacks {field}: {item}");
    }
    assert_eq!(item["from"], OTP_SENDER);
    assert_eq!(item["to"], json!([address]));
    let id = item["id"].as_str().unwrap();
    let (s, detail) = api.get(&format!("/v1/mail/{id}")).await;
    assert_eq!(s, 200, "{detail}");
    assert!(detail["subject"].as_str().unwrap().contains(subject_has), "{detail:#}");
    assert!(detail["text"].as_str().unwrap().contains(&code), "{detail:#}");
    assert_eq!(detail["parsed"], true);
    assert_eq!(detail["envelope"]["from"], OTP_SENDER);
    let (s, raw) = api.get(&format!("/v1/mail/{id}/raw")).await;
    assert_eq!(s, 200);
    let raw = raw.as_str().expect("raw source as text");
    assert!(raw.contains("Subject: "), "{raw}");
    // Dated by the server's (virtual) clock, not the machine's.
    let (_, clock) = api.get("/v1/sim/clock").await;
    let instant = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or("")).ok();
    assert_eq!(instant(&detail["date"]), instant(&clock["now"]), "{raw}");
    assert!(instant(&clock["now"]).is_some(), "{clock}");
    assert!(raw.is_ascii(), "the OTP mail is 7-bit clean for carrier mail");

    // The delivery log: delivered, the code masked, the SMTP reply kept.
    let logged = otp_log(api, &otp).await;
    assert_logged(&logged, "delivered", None, 250);
    assert_eq!(logged["channel"], "email");
    assert_eq!(logged["to"], address);
    assert!(
        !logged.to_string().contains(&code),
        "the log holds the plain code: {logged}"
    );
    // The mailbox side is recorded before the client hears 250, so the
    // timeline is in the order things happened.
    assert_eq!(kinds(&logged), ["queued", "delivered", "smtp_accepted"]);

    let (s, b) = verify(api, &otp, &code).await;
    assert_eq!(s, 200, "verify: {b}");
    assert_eq!(b["status"], "verified");
    let (s, b) = verify(api, &otp, &code).await;
    assert_eq!((s, error_code(&b)), (409, "already_used"), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_otp_reaches_en_and_ja_members_and_verifies() {
    let server = TestServer::start().await;
    check_otp_email(
        &server,
        "M-EN",
        "en",
        "alice@example.com",
        "Your one-time password",
        "valid for 10 minutes",
    )
    .await;
    // A docomo address whose allow-list (指定受信) names otpgate's domain.
    set_mailbox(
        &server,
        "taro@docomo.ne.jp",
        json!({"allowed_domains": ["otpgate.example"]}),
    )
    .await;
    check_otp_email(
        &server,
        "M-JA",
        "ja",
        "taro@docomo.ne.jp",
        "ワンタイムパスワードのお知らせ",
        "有効期限は10分です",
    )
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Each mailbox failure: the reply an independent client hears, the OTP
// email's delivery-log event, and what the mailbox shows.

struct MailboxCase {
    address: &'static str,
    mailbox: Value,
    /// Where the refusal (or the final answer) comes, its code and enhanced code.
    reply: (&'static str, u16, &'static str),
    /// The delivery-log state and reason for the message.
    log: (&'static str, Option<&'static str>),
    /// The folder the mail lands in; None when the mailbox never shows it.
    folder: Option<&'static str>,
}

async fn check_mailbox_case(server: &TestServer, member: &str, case: MailboxCase) {
    let address = case.address;
    set_mailbox(server, address, case.mailbox.clone()).await;

    // An application's mail, by a hand-written SMTP dialogue.
    let tx = raw_send(server.smtp, address, "Your order", "Order code 111111").await;
    let (stage, code, enhanced) = tx.outcome();
    assert_eq!((stage, code, enhanced.as_str()), case.reply, "{address}: {tx:#?}");
    let external = external_log(server, address).await;
    assert_eq!(external.len(), 1, "{address}: {external:#?}");
    assert_logged(&external[0], case.log.0, case.log.1, code);
    assert_eq!(external[0]["from"], APP_SENDER);

    // The OTP core's email to the same mailbox.
    email_member(server, member, "en", address).await;
    let otp = issue(server, member).await;
    let logged = otp_log(server, &otp).await;
    assert_logged(&logged, case.log.0, case.log.1, code);
    let replies: Vec<&Value> = logged["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("smtp_reply"))
        .collect();
    assert!(
        replies
            .iter()
            .any(|r| r.as_str().unwrap().starts_with(&format!("{code} {enhanced}"))),
        "{address}: the reply is logged: {logged:#}"
    );

    // The mailbox shows both messages in their folder, or nothing at all.
    let shown = mailbox_messages(server, address).await;
    match case.folder {
        Some(folder) => {
            assert_eq!(shown.len(), 2, "{address}: {shown:#?}");
            assert!(shown.iter().all(|m| m["folder"] == folder), "{address}: {shown:#?}");
        }
        None => assert!(shown.is_empty(), "{address}: {shown:#?}"),
    }
    // Only an inbox yields a code.
    assert_eq!(
        mailbox_code(server, address).await.is_some(),
        case.folder == Some("inbox"),
        "{address}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mailbox_state_gives_its_reply_code_and_log_event() {
    let server = TestServer::start().await;
    let filtered = || json!({"allowed_domains": ["friends.example"]});
    let cases = [
        MailboxCase {
            address: "nobody@example.com",
            mailbox: json!({"exists": false}),
            reply: ("rcpt", 550, "5.1.1"),
            log: ("failed", Some("unknown_user")),
            folder: None,
        },
        MailboxCase {
            address: "full@example.com",
            mailbox: json!({"full": true}),
            reply: ("rcpt", 452, "4.2.2"),
            log: ("failed", Some("mailbox_full")),
            folder: None,
        },
        // The carrier MTAs take the RCPT of a full mailbox and refuse the data.
        MailboxCase {
            address: "full@docomo.ne.jp",
            mailbox: json!({"full": true}),
            reply: ("end", 552, "5.2.2"),
            log: ("failed", Some("mailbox_full")),
            folder: None,
        },
        // docomo refuses a sender outside the allow-list after DATA ...
        MailboxCase {
            address: "hanako@docomo.ne.jp",
            mailbox: filtered(),
            reply: ("end", 550, "5.7.1"),
            log: ("rejected", Some("domain_filter")),
            folder: None,
        },
        // ... au and SoftBank answer 250 and drop it without a word.
        MailboxCase {
            address: "jiro@ezweb.ne.jp",
            mailbox: filtered(),
            reply: ("end", 250, "2.0.0"),
            log: ("rejected", Some("domain_filter")),
            folder: None,
        },
        MailboxCase {
            address: "saburo@softbank.ne.jp",
            mailbox: filtered(),
            reply: ("end", 250, "2.0.0"),
            log: ("rejected", Some("domain_filter")),
            folder: None,
        },
        MailboxCase {
            address: "spammy@example.org",
            mailbox: json!({"spam": true}),
            reply: ("end", 250, "2.0.0"),
            log: ("delivered", Some("spam_folder")),
            folder: Some("spam"),
        },
        MailboxCase {
            address: "plain@example.org",
            mailbox: json!({}),
            reply: ("end", 250, "2.0.0"),
            log: ("delivered", None),
            folder: Some("inbox"),
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        check_mailbox_case(&server, &format!("M-CASE-{i}"), case).await;
    }
    // Silently dropped mail is still in the capture, for support to see.
    let page = mail_list(&server, "?q=jiro%40ezweb.ne.jp").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Greylisting.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greylisted_otp_email_is_retried_and_then_verifies() {
    let server = TestServer::start().await;
    let address = "grey@example.net";
    set_mailbox(&server, address, json!({"greylist": true})).await;
    email_member(&server, "M-GREY", "ja", address).await;
    let otp = issue(&server, "M-GREY").await;

    let logged = otp_log(&server, &otp).await;
    assert_logged(&logged, "enroute", Some("greylisted"), 451);
    let retry = logged["events"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["next_attempt_at"].as_str())
        .expect("a retry is scheduled");
    assert_eq!(retry, "2026-01-01T00:05:00+09:00", "{logged:#}");
    assert_eq!(mailbox_code(&server, address).await, None);

    // The OTP core tries again after 300 virtual seconds, and gets through.
    server.advance(299).await;
    assert_eq!(otp_log(&server, &otp).await["state"], "enroute");
    server.advance(1).await;
    let logged = otp_log(&server, &otp).await;
    assert_logged(&logged, "delivered", None, 250);
    assert_eq!(
        kinds(&logged),
        ["queued", "deferred", "smtp_deferred", "delivered", "smtp_accepted"]
    );
    let code = mailbox_code(&server, address).await.expect("the code arrived");
    let (s, b) = verify(&server, &otp, &code).await;
    assert_eq!(s, 200, "{b}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_defers_an_application_until_the_delay_has_passed() {
    let server = TestServer::start().await;
    let address = "grey@example.net";
    set_mailbox(&server, address, json!({"greylist": true})).await;

    let mut client = RawSmtp::connect(server.smtp).await;
    client.expect("EHLO app.example", 250).await;
    client.expect(&format!("MAIL FROM:<{APP_SENDER}>"), 250).await;
    let first = client.expect(&format!("RCPT TO:<{address}>"), 451).await;
    assert_eq!(first.enhanced(), "4.7.1");
    // Too soon: still deferred.
    server.advance(30).await;
    client.expect(&format!("RCPT TO:<{address}>"), 451).await;
    server.advance(31).await;
    client.expect(&format!("RCPT TO:<{address}>"), 250).await;
    client.expect("DATA", 354).await;
    let end = client
        .data_body(&plain_message(APP_SENDER, address, "after the wait", "hello"))
        .await;
    assert_eq!(end.code, 250, "{end:?}");
    client.quit().await;

    // One log entry: the retries continue the deferred attempt's timeline.
    let log = external_log(&server, address).await;
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_logged(&log[0], "delivered", None, 250);
    assert_eq!(kinds(&log[0]), ["deferred", "deferred", "delivered"]);
    assert_eq!(mailbox_messages(&server, address).await.len(), 1);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Limits and broken input.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_gets_552_and_nothing_is_stored() {
    let server = TestServer::start_with(|c| c.max_message_bytes = 4096).await;
    let to = "big@example.com";
    let big = "x".repeat(70);
    let body: String = std::iter::repeat_n(big.as_str(), 100).collect::<Vec<_>>().join("\r\n");

    let mut client = RawSmtp::connect(server.smtp).await;
    let ehlo = client.expect("EHLO app.example", 250).await;
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 4096"), "{ehlo:?}");
    // Declared too large: refused at MAIL.
    let declared = client.expect(&format!("MAIL FROM:<{APP_SENDER}> SIZE=5000"), 552).await;
    assert_eq!(declared.enhanced(), "5.3.4");
    // Undeclared: refused after the data, and the session goes on.
    let tx = client
        .transaction(APP_SENDER, &[to], &plain_message(APP_SENDER, to, "too big", &body))
        .await;
    assert_eq!(tx.outcome(), ("end", 552, "5.3.4".to_string()), "{tx:#?}");
    let tx = client
        .transaction(APP_SENDER, &[to], &plain_message(APP_SENDER, to, "small", "fits"))
        .await;
    assert_eq!(tx.outcome().1, 250, "{tx:#?}");
    client.quit().await;

    // mail-send hears the same.
    match mail_send(server.smtp, to, "too big again", &body).await {
        Err(mail_send::Error::UnexpectedReply(reply)) => assert_eq!(reply.code, 552, "{reply:?}"),
        other => panic!("mail-send: {other:?}"),
    }

    assert_eq!(subjects(&mail_list(&server, "").await), vec!["small"]);
    let inbox = mailbox_messages(&server, to).await;
    assert_eq!(inbox.len(), 1, "{inbox:#?}");
    server.stop().await;
}

/// A pooled client keeps one connection for many messages and sends RSET
/// (and often NOOP) between them, as Nodemailer's pool does. The limits on
/// junk commands (100) and errors (10) are per stretch between messages
/// taken, as in Postfix: past the hundredth message such a client is still
/// served, and a session that sends only junk is still cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_is_served_past_the_junk_and_error_limits() {
    let server = TestServer::start().await;
    let to = "pooled@example.com";
    let mut client = RawSmtp::connect(server.smtp).await;
    for n in 0..120 {
        if n % 40 == 0 {
            // A few unknown commands now and then: 3 × 5 errors in all.
            for _ in 0..5 {
                client.expect("XPING", 500).await;
            }
        }
        let subject = format!("pooled {n}");
        let tx = client
            .transaction(APP_SENDER, &[to], &plain_message(APP_SENDER, to, &subject, "hi"))
            .await;
        assert_eq!(tx.outcome().1, 250, "message {n}: {tx:#?}");
        client.expect("RSET", 250).await;
        client.expect("NOOP", 250).await;
    }
    // Only junk since the last message (its RSET and NOOP, then 98 more):
    // the hundred and first is refused and the session ends.
    for _ in 0..98 {
        client.expect("NOOP", 250).await;
    }
    let cut = client.cmd("NOOP").await;
    assert_eq!((cut.code, cut.enhanced()), (421, "4.7.0"), "{cut:?}");
    assert_eq!(mailbox_messages(&server, to).await.len(), 120);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_a_broken_mime_body_is_still_captured_raw() {
    let server = TestServer::start().await;
    let to = "broken@example.com";
    let mut message = format!(
        "From: {APP_SENDER}\r\nTo: {to}\r\nSubject: broken parts\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"never-closed\"\r\nthis header line has no colon\r\n\r\n\
         --never-closed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         !!!! not base64 at all @@@@\r\n--never-closed\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    message.extend_from_slice(b"\x89PNG\x00\xff\xfe truncated\r\n.leading dot line\r\n");

    let mut client = RawSmtp::connect(server.smtp).await;
    let tx = client.transaction(APP_SENDER, &[to], &message).await;
    assert_eq!(tx.outcome().1, 250, "{tx:#?}");
    let id = tx.queued_id().expect("queued id");
    client.quit().await;

    let (s, detail) = server.get(&format!("/v1/mail/{id}")).await;
    assert_eq!(s, 200, "{detail}");
    assert_eq!(detail["size"], message.len(), "the size counts every byte received");
    let raw = detail["raw"].as_str().unwrap();
    assert!(raw.contains("this header line has no colon"), "{raw}");
    assert!(raw.contains("!!!! not base64 at all @@@@"), "{raw}");
    assert!(raw.contains("\r\n.leading dot line\r\n"), "dot-unstuffed: {raw}");
    let (s, download) = server.get(&format!("/v1/mail/{id}/raw")).await;
    assert_eq!(s, 200);
    assert!(
        download.as_str().unwrap().ends_with(".leading dot line\r\n"),
        "{download}"
    );
    assert_eq!(mailbox_messages(&server, to).await.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iso_2022_jp_mail_is_decoded_in_the_detail() {
    let server = TestServer::start().await;
    let to = "keitai@docomo.ne.jp";
    let mut message = format!(
        "From: {APP_SENDER}\r\nTo: {to}\r\nSubject: =?ISO-2022-JP?B?{}?=\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=ISO-2022-JP\r\nContent-Transfer-Encoding: 7bit\r\n\r\n",
        base64(&iso_2022_jp("おしらせ"))
    )
    .into_bytes();
    message.extend_from_slice(&iso_2022_jp("こんにちは\r\nかくにんばんごう: 314159\r\n"));
    assert!(message.is_ascii(), "ISO-2022-JP is 7-bit");

    let tx = {
        let mut client = RawSmtp::connect(server.smtp).await;
        let tx = client.transaction(APP_SENDER, &[to], &message).await;
        client.quit().await;
        tx
    };
    let id = tx.queued_id().expect("queued");
    let (s, detail) = server.get(&format!("/v1/mail/{id}")).await;
    assert_eq!(s, 200, "{detail}");
    assert_eq!(detail["subject"], "おしらせ", "{detail:#}");
    let text = detail["text"].as_str().unwrap();
    assert!(text.contains("こんにちは"), "{text:?}");
    assert!(text.contains("かくにん"), "{text:?}");
    assert_eq!(mail_list(&server, "").await["items"][0]["subject"], "おしらせ");
    assert_eq!(mailbox_code(&server, to).await.as_deref(), Some("314159"));
    // Search works on the decoded text.
    assert_eq!(
        subjects(&mail_list(&server, &format!("?q={}", enc("こんにちは"))).await),
        vec!["おしらせ"]
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The capture: search, paging, delete, retention.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_searches_pages_and_deletes() {
    let server = TestServer::start().await;
    for (i, to) in [
        "a@example.com",
        "b@example.com",
        "a@example.com",
        "c@example.org",
        "a@example.com",
    ]
    .iter()
    .enumerate()
    {
        mail_send(server.smtp, to, &format!("note {i}"), &format!("body {i} for {to}"))
            .await
            .expect("mail-send delivers");
    }

    // Newest first; search over the recipients, subject and text.
    let all = mail_list(&server, "").await;
    assert_eq!(subjects(&all), ["note 4", "note 3", "note 2", "note 1", "note 0"]);
    assert!(all.get("next").is_none_or(Value::is_null), "{all}");
    assert_eq!(all["items"][0]["from"], APP_SENDER);
    assert!(all["items"][0]["size"].as_u64().unwrap() > 0);
    assert_eq!(
        subjects(&mail_list(&server, "?q=a%40example.com").await),
        ["note 4", "note 2", "note 0"]
    );
    assert_eq!(subjects(&mail_list(&server, "?q=NOTE%203").await), ["note 3"]);
    assert_eq!(subjects(&mail_list(&server, "?q=for%20c%40").await), ["note 3"]);
    assert!(subjects(&mail_list(&server, "?q=nothing-like-this").await).is_empty());

    // Pages of two, following `next`.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    for _ in 0..5 {
        let page = mail_list(&server, &query).await;
        assert!(page["items"].as_array().unwrap().len() <= 2, "{page}");
        seen.extend(subjects(&page));
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["note 4", "note 3", "note 2", "note 1", "note 0"]);
    // A search pages the same way.
    let first = mail_list(&server, "?q=a%40example.com&limit=2").await;
    assert_eq!(subjects(&first), ["note 4", "note 2"]);
    let next = first["next"].as_str().expect("a next page");
    let second = mail_list(&server, &format!("?q=a%40example.com&limit=2&before={next}")).await;
    assert_eq!(subjects(&second), ["note 0"]);

    // Delete one: gone from the list, the detail, the raw route and the mailbox.
    let id = all["items"][1]["id"].as_str().unwrap().to_string();
    let (s, b) = server.http("DELETE", &format!("/v1/mail/{id}"), None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(server.get(&format!("/v1/mail/{id}")).await.0, 404);
    assert_eq!(server.get(&format!("/v1/mail/{id}/raw")).await.0, 404);
    let (s, b) = server.http("DELETE", &format!("/v1/mail/{id}"), None).await;
    assert_eq!((s, error_code(&b)), (404, "not_found"), "{b}");
    assert_eq!(
        subjects(&mail_list(&server, "").await),
        ["note 4", "note 2", "note 1", "note 0"]
    );
    assert!(mailbox_messages(&server, "c@example.org").await.is_empty());

    // Delete all: the capture and the mailboxes are empty; settings stay.
    set_mailbox(&server, "a@example.com", json!({"spam": true})).await;
    let (s, b) = server.http("DELETE", "/v1/mail", None).await;
    assert_eq!(s, 200, "{b}");
    assert!(subjects(&mail_list(&server, "").await).is_empty());
    assert!(mailbox_messages(&server, "a@example.com").await.is_empty());
    assert_eq!(
        server
            .get(&format!("/v1/sim/mailboxes/{}", enc("a@example.com")))
            .await
            .1["spam"],
        true
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capture_keeps_only_the_newest_mail_retention_messages() {
    let server = TestServer::start_with(|c| c.mail_retention = 3).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let tx = raw_send(server.smtp, "keep@example.com", &format!("kept {i}"), "hello").await;
        ids.push(tx.queued_id().expect("queued"));
    }
    assert_eq!(subjects(&mail_list(&server, "").await), ["kept 4", "kept 3", "kept 2"]);
    for id in &ids[..2] {
        assert_eq!(server.get(&format!("/v1/mail/{id}")).await.0, 404, "{id} was dropped");
    }
    let inbox = mailbox_messages(&server, "keep@example.com").await;
    assert_eq!(inbox.len(), 3, "{inbox:#?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_keeps_only_the_newest_log_retention_messages() {
    let server = TestServer::start_with(|c| c.log_retention = 3).await;
    let to = "retained@example.jp";
    for i in 0..5 {
        raw_send(server.smtp, to, &format!("notice {i}"), "hello").await;
    }
    let (s, all) = server.get("/v1/messages").await;
    assert_eq!(s, 200, "{all}");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{all:#}");
    let log = external_log(&server, to).await;
    assert_eq!(log.len(), 3, "the index lost the removed ones too: {log:#?}");
    let newest = log[0]["id"].as_str().unwrap();
    let oldest_kept = log[2]["id"].as_str().unwrap();
    assert!(newest > oldest_kept);
    assert_eq!(server.get(&format!("/v1/messages/{newest}")).await.0, 200);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Mail from other applications in the delivery log.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_an_external_application_appears_in_the_delivery_log() {
    let server = TestServer::start().await;
    let to = "customer@example.jp";
    let tx = raw_send(server.smtp, to, "Shipping notice", "Your parcel is on its way").await;
    let id = tx.queued_id().expect("queued");
    mail_send(server.smtp, to, "Second notice", "again")
        .await
        .expect("sent");

    let log = external_log(&server, to).await;
    assert_eq!(log.len(), 2, "{log:#?}");
    for message in &log {
        assert_eq!(message["channel"], "email");
        assert_eq!(message["from"], APP_SENDER);
        assert_eq!(message["to"], to);
        assert!(message["member_id"].is_null());
        assert_logged(message, "delivered", None, 250);
    }
    // The oldest entry names the capture id the client was given.
    assert!(log[1]["text"].as_str().unwrap().contains(&id), "{:#}", log[1]);
    // An OTP to the same address gets an entry of its own.
    email_member(&server, "M-CUSTOMER", "en", to).await;
    issue(&server, "M-CUSTOMER").await;
    let (_, all) = server.get(&format!("/v1/messages?to={}", enc(to))).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all:#}");
    assert_eq!(external_log(&server, to).await.len(), 2);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// STARTTLS and AUTH, on an SMTP server configured with both.

struct SecureSmtp {
    addr: SocketAddr,
    mail: otpgate::smtp::MailWorld,
    trigger: otpgate::shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
    _store: otpgate::store::Store,
}

impl SecureSmtp {
    async fn start(accounts: &[(&str, &str)]) -> SecureSmtp {
        let store = otpgate::store::Store::temporary().expect("store");
        let clock = otpgate::clock::Clock::virtual_at(otpgate::clock::DEFAULT_VIRTUAL_START);
        let mail = otpgate::smtp::MailWorld::new(&store, clock, 100).expect("mail world");
        let tls = otpgate::smtp::TlsIdentity::load(&common::tls::fixture("cert.pem"), &common::tls::fixture("key.pem"))
            .expect("test certificate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = otpgate::smtp::SmtpConfig {
            auth: accounts.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            ..otpgate::smtp::SmtpConfig::default()
        };
        let (trigger, shutdown) = otpgate::shutdown::channel();
        let task = tokio::spawn(otpgate::smtp::serve_tls(
            listener,
            config,
            Some(tls),
            Arc::new(mail.clone()),
            shutdown,
        ));
        SecureSmtp {
            addr,
            mail,
            trigger,
            task,
            _store: store,
        }
    }

    async fn stop(self) {
        self.trigger.fire();
        self.task.await.expect("the server ends cleanly");
    }

    fn subjects(&self) -> Vec<String> {
        let page = self
            .mail
            .list(None, otpgate::clock::Window::default(), None, 100)
            .expect("list");
        page.items.into_iter().map(|m| m.subject).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_send_upgrades_with_starttls_and_authenticates() {
    let server = SecureSmtp::start(&[("qa", "s3cret")]).await;
    let send = |user: &'static str, password: &'static str, subject: &'static str| {
        let addr = server.addr;
        async move {
            let message = MessageBuilder::new()
                .from(APP_SENDER)
                .to("tls@example.com")
                .subject(subject)
                .text_body("over TLS");
            let mut client = SmtpClientBuilder::new("localhost".to_string(), addr.port())
                .expect("builder")
                .allow_invalid_certs()
                .implicit_tls(false)
                .helo_host("app.example")
                .credentials(Credentials::new(user.to_string(), password.to_string()))
                .timeout(std::time::Duration::from_secs(20))
                .connect()
                .await?;
            let sent = client.send(message).await;
            let _ = client.quit().await;
            sent.map(drop)
        }
    };
    send("qa", "s3cret", "sealed").await.expect("STARTTLS, AUTH and send");
    match send("qa", "wrong", "refused").await {
        Err(mail_send::Error::AuthenticationFailed(reply)) => assert_eq!(reply.code, 535, "{reply:?}"),
        other => panic!("a wrong password: {other:?}"),
    }
    assert_eq!(server.subjects(), ["sealed"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_resets_the_session_and_discards_pipelined_plaintext() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let server = SecureSmtp::start(&[("qa", "s3cret")]).await;

    let mut plain = RawSmtp::connect(server.addr).await;
    let ehlo = plain.expect("EHLO app.example", 250).await;
    assert!(ehlo.has_extension("STARTTLS"), "{ehlo:?}");
    assert!(ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{ehlo:?}");
    // Mail needs AUTH; AUTH PLAIN of "\0qa\0s3cret" works in the clear too.
    let refused = plain.expect(&format!("MAIL FROM:<{APP_SENDER}>"), 530).await;
    assert_eq!(refused.enhanced(), "5.7.0");
    plain.expect("STARTTLS now", 501).await;
    plain.quit().await;

    // STARTTLS with a command pipelined behind it: the command must not run.
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "), "{line}");
    stream.get_mut().write_all(b"EHLO app.example\r\n").await.unwrap();
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        if line.starts_with("250 ") {
            break;
        }
    }
    stream
        .get_mut()
        .write_all(b"STARTTLS\r\nAUTH PLAIN AHFhAHMzY3JldA==\r\n")
        .await
        .unwrap();
    line.clear();
    stream.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 2.0.0"), "{line}");
    assert!(stream.buffer().is_empty());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = common::tls::connector()
        .connect(name, stream.into_inner())
        .await
        .expect("the handshake succeeds with the fixture certificate");
    let mut tls = BufReader::new(tls);
    let mut exchange = async |command: &str| -> String {
        tls.get_mut().write_all(command.as_bytes()).await.unwrap();
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            tls.read_line(&mut line).await.unwrap();
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    };
    // The session starts over: no EHLO yet, not authenticated (the
    // pipelined AUTH was thrown away), and STARTTLS is no longer offered.
    assert!(exchange("MAIL FROM:<a@shop.example>\r\n").await.starts_with("503 "));
    let ehlo = exchange("EHLO app.example\r\n").await;
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(exchange("MAIL FROM:<a@shop.example>\r\n").await.starts_with("530 "));
    assert!(exchange("STARTTLS\r\n").await.starts_with("503 "));
    assert!(exchange("AUTH PLAIN AHFhAHMzY3JldA==\r\n").await.starts_with("235 "));
    assert!(exchange("MAIL FROM:<a@shop.example>\r\n").await.starts_with("250 "));
    assert!(exchange("RCPT TO:<tls@example.com>\r\n").await.starts_with("250 "));
    assert!(exchange("DATA\r\n").await.starts_with("354 "));
    assert!(exchange("Subject: by hand over TLS\r\n\r\nhi\r\n.\r\n")
        .await
        .starts_with("250 "));
    assert!(exchange("QUIT\r\n").await.starts_with("221 "));
    assert_eq!(server.subjects(), ["by hand over TLS"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_starttls_is_neither_offered_nor_accepted() {
    let server = TestServer::start().await;
    let mut client = RawSmtp::connect(server.smtp).await;
    let ehlo = client.expect("EHLO app.example", 250).await;
    assert!(!ehlo.has_extension("STARTTLS"), "{ehlo:?}");
    assert!(!ehlo.has_extension("AUTH"), "{ehlo:?}");
    client.expect("STARTTLS", 502).await;
    client.expect("NOOP", 250).await;
    client.quit().await;
    // mail-send refuses to go on without STARTTLS when asked for it.
    let refused = SmtpClientBuilder::new("127.0.0.1".to_string(), server.smtp.port())
        .expect("builder")
        .implicit_tls(false)
        .connect()
        .await;
    assert!(
        matches!(refused, Err(mail_send::Error::MissingStartTls)),
        "{:?}",
        refused.err()
    );
    server.stop().await;
}

/// The application wiring: `[smtp]` AUTH accounts and certificate reach the
/// embedded server, and the OTP core's own client authenticates with the
/// first account, so OTP emails still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_configured_with_tls_and_auth_offers_both_and_otps_still_arrive() {
    let server = TestServer::start_with(|c| {
        c.smtp_auth = vec![otpgate::config::SmtpAccount {
            username: "qa".into(),
            password: "s3cret".into(),
        }];
        c.smtp_tls = Some(common::tls::files());
    })
    .await;
    let mut client = RawSmtp::connect(server.smtp).await;
    let ehlo = client.expect("EHLO app.example", 250).await;
    assert!(ehlo.has_extension("STARTTLS") && ehlo.has_extension("AUTH"), "{ehlo:?}");
    client.expect(&format!("MAIL FROM:<{APP_SENDER}>"), 530).await;
    client.quit().await;

    let message = MessageBuilder::new()
        .from(APP_SENDER)
        .to("app@example.com")
        .subject("through the configured server")
        .text_body("hi");
    let mut sender = SmtpClientBuilder::new("localhost".to_string(), server.smtp.port())
        .expect("builder")
        .allow_invalid_certs()
        .implicit_tls(false)
        .credentials(Credentials::new("qa".to_string(), "s3cret".to_string()))
        .connect()
        .await
        .expect("STARTTLS and AUTH");
    sender.send(message).await.expect("sent");
    let _ = sender.quit().await;
    assert_eq!(
        subjects(&mail_list(&server, "").await),
        ["through the configured server"]
    );

    email_member(&server, "M-AUTH", "en", "member@example.com").await;
    let otp = issue(&server, "M-AUTH").await;
    let code = mailbox_code(&server, "member@example.com")
        .await
        .expect("the OTP core authenticated and delivered");
    assert_eq!(verify(&server, &otp, &code).await.0, 200);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// A suite reading codes its own app mailed.

/// A suite waits on a mailbox (`?wait=`) while its app mails the code,
/// reads only what came after the last code (`?after=`, by id where the
/// standing virtual clock gives two mails one time), and empties the
/// mailbox between tests without touching another recipient's or the
/// capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_waits_on_the_mailbox_for_the_code_its_app_mailed_and_empties_it() {
    let server = TestServer::start().await;
    let (me, other) = ("suite@example.org", "colleague@example.org");
    let read = |path: String| {
        let api = Api { http: server.http };
        async move { api.get(&path).await }
    };
    let otp = |query: &str| read(format!("/v1/sim/mailboxes/{}/otp?{query}", enc(me)));

    let waiting = tokio::spawn(otp("wait=30"));
    server.long_polls_waiting(1).await;
    mail_send(server.smtp, me, "Your code", "Your code is 350101")
        .await
        .expect("sent");
    let (status, first) = waiting.await.expect("task");
    assert_eq!((status, first["code"].as_str()), (200, Some("350101")), "{first}");
    assert_eq!(first["from"], APP_SENDER);

    // The second mail is captured at the same virtual instant: after the
    // first's time finds nothing, after its id finds the second.
    let first_id = first["id"].as_str().expect("id").to_string();
    let waiting = tokio::spawn(otp(&format!("after={first_id}&wait=30")));
    server.long_polls_waiting(1).await;
    let tx = raw_send(server.smtp, me, "Your code", "Your code is 350102").await;
    assert_eq!(tx.end.expect("DATA answered").code, 250);
    let (status, second) = waiting.await.expect("task");
    assert_eq!((status, second["code"].as_str()), (200, Some("350102")), "{second}");
    assert_eq!(second["received_at"], first["received_at"]);
    let (status, _) = otp(&format!("after={}", enc(first["received_at"].as_str().unwrap()))).await;
    assert_eq!(status, 404);
    let (_, listed) = read(format!("/v1/sim/mailboxes/{}/messages?after={first_id}", enc(me))).await;
    assert_eq!(subjects(&listed).len(), 1, "{listed}");

    // A list waits too: mail to both addresses.
    let second_id = second["id"].as_str().unwrap().to_string();
    let waiting = tokio::spawn(read(format!(
        "/v1/sim/mailboxes/{}/messages?after={second_id}&wait=30",
        enc(me)
    )));
    server.long_polls_waiting(1).await;
    let mut client = RawSmtp::connect(server.smtp).await;
    let both = client
        .transaction(
            APP_SENDER,
            &[me, other],
            &plain_message(APP_SENDER, me, "Team news", "No code here"),
        )
        .await;
    client.quit().await;
    assert_eq!(both.end.expect("DATA answered").code, 250);
    let (status, listed) = waiting.await.expect("task");
    assert_eq!((status, subjects(&listed)), (200, vec!["Team news".to_string()]));

    // Emptied: this mailbox shows nothing; the other recipient and the
    // capture keep theirs.
    let (status, body) = server
        .http("DELETE", &format!("/v1/sim/mailboxes/{}/messages", enc(me)), None)
        .await;
    assert_eq!((status, &body), (200, &json!({"deleted": 3})));
    assert!(mailbox_messages(&server, me).await.is_empty());
    assert_eq!(mailbox_code(&server, me).await, None);
    assert_eq!(mailbox_messages(&server, other).await.len(), 1);
    assert_eq!(mail_list(&server, "").await["items"].as_array().unwrap().len(), 3);
    let (status, body) = server
        .http("DELETE", "/v1/sim/mailboxes/not-an-address/messages", None)
        .await;
    assert_eq!((status, error_code(&body)), (422, "invalid_request"), "{body}");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// SMTP over TLS from the first byte (SMTPS, port 465 style).

/// An app configured for implicit TLS (Nodemailer `secure: true`, Python's
/// `SMTP_SSL`) sends to the server's `tls_listen` port: the handshake
/// first, then the greeting. A plain client there gets nothing and is
/// counted; the plain port still offers STARTTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_arrives_over_implicit_tls_and_a_plain_client_there_gets_no_greeting() {
    let server = TestServer::start_with(|c| {
        c.smtp_tls = Some(common::tls::files());
        c.smtp_tls_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let running = server.running.as_ref().expect("running");
    let tls_addr = running.smtp_tls.expect("an SMTPS listener");
    assert!(
        running.listening_line().ends_with(&format!(" smtps={tls_addr}")),
        "{}",
        running.listening_line()
    );

    // A plain client on the TLS port: no 220, the connection ends.
    let mut plain = tokio::net::TcpStream::connect(tls_addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(b"EHLO plain.example\r\n").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("220"),
        "no greeting in plain text: {read:?} {answer:?}"
    );

    // A raw dialogue over rustls, trusting only the fixture certificate.
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = common::tls::connector().connect(name, tcp).await.expect("handshake");
    let mut client = RawSmtp::over(tls).await;
    let ehlo = client.expect("EHLO app.example", 250).await;
    assert!(!ehlo.has_extension("STARTTLS"), "already encrypted: {ehlo:?}");
    let to = "smtps@example.com";
    let tx = client
        .transaction(
            APP_SENDER,
            &[to],
            &plain_message(APP_SENDER, to, "Sealed", "Your code is 465465"),
        )
        .await;
    assert_eq!(tx.end.as_ref().map(|r| r.code), Some(250), "{tx:?}");
    client.quit().await;
    assert_eq!(mailbox_code(&server, to).await.as_deref(), Some("465465"));

    // mail-send with implicit TLS, as an app's library would.
    let message = MessageBuilder::new()
        .from(APP_SENDER)
        .to(to)
        .subject("Sealed again")
        .text_body("Your code is 465466");
    let mut sender = SmtpClientBuilder::new("localhost".to_string(), tls_addr.port())
        .expect("builder")
        .allow_invalid_certs()
        .implicit_tls(true)
        .helo_host("app.example")
        .connect()
        .await
        .expect("implicit TLS connect");
    sender.send(message).await.expect("sent");
    let _ = sender.quit().await;
    assert_eq!(mailbox_code(&server, to).await.as_deref(), Some("465466"));

    // The plain port is unchanged: it offers STARTTLS.
    let mut plain = RawSmtp::connect(server.smtp).await;
    assert!(plain.expect("EHLO app.example", 250).await.has_extension("STARTTLS"));
    plain.quit().await;
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("otpgate_smtp_tls_handshakes_failed_total"), 1.0);
    server.stop().await;
}

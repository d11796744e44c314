//! Admission control (issue 7): past its limits each protocol refuses at
//! once with its own answer (HTTP 503 or 429 with `Retry-After`, SMTP
//! 451), and nothing waits in a queue. Real server on port 0, clients
//! written by hand.

mod common;

use common::raw_http::{request_head, RawHttp};
use common::smtp_client::RawSmtp;
use common::TestServer;

fn assert_overloaded(answer: &common::raw_http::Answer) {
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.error_code(), "overloaded", "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"), "{answer:?}");
    assert_eq!(answer.body["error"]["retry_after"], 1, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_in_flight_cap_a_request_gets_503_at_once_and_health_and_long_polls_pass() {
    let server = TestServer::start_with(|c| c.http_admission.max_in_flight = 1).await;

    // One request held mid-body: `100 Continue` says the server admitted it
    // and is reading its body, so it holds the only slot.
    let body = r#"{"id": "HELD", "residence": "JP", "locale": "en"}"#;
    let mut held = RawHttp::connect(server.http).await;
    held.send(&request_head("POST", "/v1/members", body.len(), true)).await;
    assert_eq!(held.answer().await.status, 100);
    held.send(&body.as_bytes()[..10]).await;

    // Refused at once (the held request is still waiting for its body, so
    // this answer cannot have waited for a slot), reads and writes alike.
    let mut other = RawHttp::connect(server.http).await;
    assert_overloaded(&other.call("GET", "/v1/members", None).await);
    assert_overloaded(&other.call("POST", "/v1/members", Some(r#"{"id": "M2"}"#)).await);
    // Health, metrics and long polls are never refused by the cap.
    assert_eq!(other.call("GET", "/healthz", None).await.status, 200);
    let metrics = other.call("GET", "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    let wait = other.call("GET", "/v1/messages/NOPE/wait?timeout=0", None).await;
    assert_eq!((wait.status, wait.error_code()), (404, "not_found"), "{wait:?}");
    // A read with `?wait=` is a long poll too; without it, a read.
    let code = other.call("GET", "/v1/sim/handsets/09011110001/otp?wait=0", None).await;
    assert_eq!((code.status, code.error_code()), (404, "not_found"), "{code:?}");
    let code = other
        .call("GET", "/v1/sim/mailboxes/a@example.com/otp?wait=0", None)
        .await;
    assert_eq!((code.status, code.error_code()), (404, "not_found"), "{code:?}");
    assert_overloaded(&other.call("GET", "/v1/sim/handsets/09011110001/otp", None).await);

    // The held request finishes; its slot is free again.
    held.send(&body.as_bytes()[10..]).await;
    let created = held.answer().await;
    assert_eq!(created.status, 201, "{created:?}");
    let members = other.call("GET", "/v1/members", None).await;
    assert_eq!(members.status, 200, "{members:?}");
    assert_eq!(members.body["items"][0]["id"], "HELD");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_request_rate_changes_get_429_with_retry_after_and_reads_pass() {
    let server = TestServer::start_with(|c| c.http_admission.max_requests_per_sec = Some(1)).await;
    let mut client = RawHttp::connect(server.http).await;
    // One change a second: the first takes the token (and is refused for
    // what it says), the next right after it is over the rate.
    let first = client.call("POST", "/v1/members", Some("[]")).await;
    assert_eq!(first.status, 422, "{first:?}");
    let refused = client.call("POST", "/v1/members", Some(r#"{"id": "M1"}"#)).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.error_code(), "rate_limited");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.body["error"]["retry_after"], 1);
    // Reads are not metered, and the connection goes on after a 429.
    let members = client.call("GET", "/v1/members", None).await;
    assert_eq!(members.status, 200, "{members:?}");
    assert_eq!(members.body["items"], serde_json::json!([]));
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("otpgate_http_refused_total{reason=\"rate\"}"), 1.0);
    // A server this idle never made a write wait for sled.
    assert_eq!(metrics.value("otpgate_store_write_waits_total"), 0.0);
    metrics.value("otpgate_store_pending_bytes");
    assert_eq!(metrics.value("otpgate_store_write_wait_seconds_total"), 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_a_new_connection_gets_503_and_is_closed() {
    let server = TestServer::start_with(|c| c.http_admission.max_connections = 1).await;
    // This connection holds the only place once it has been answered.
    let mut first = RawHttp::connect(server.http).await;
    assert_eq!(first.call("GET", "/healthz", None).await.status, 200);

    let mut second = RawHttp::connect(server.http).await;
    let refused = second.call("GET", "/healthz", None).await;
    assert_overloaded(&refused);
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(second.closed_by_server().await, "the refused connection stays open");

    // The connection that got in is served as before.
    assert_eq!(first.call("GET", "/healthz", None).await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_message_rate_smtp_mail_gets_451_and_the_session_goes_on() {
    let server = TestServer::start_with(|c| c.smtp_max_messages_per_sec = Some(1)).await;
    let mut client = RawSmtp::connect(server.smtp).await;
    client.expect("EHLO app.example", 250).await;
    client.expect("MAIL FROM:<app@example.com>", 250).await;
    client.expect("RSET", 250).await;
    // One transaction a second: the next MAIL is deferred, not kept waiting.
    let refused = client.expect("MAIL FROM:<app@example.com>", 451).await;
    assert_eq!(refused.enhanced(), "4.3.2", "{refused:?}");
    assert!(refused.text().contains("try again later"), "{refused:?}");
    // Nothing was opened, and the session is still there.
    client.expect("RCPT TO:<someone@example.com>", 503).await;
    client.expect("NOOP", 250).await;
    client.quit().await;
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("otpgate_smtp_refused_total{reason=\"busy\"}"), 1.0);
    assert_eq!(metrics.value("otpgate_smtp_accepted_total"), 0.0);
    server.stop().await;
}

/// Short of disk space (here: more kept free than any disk has), a request
/// that writes gets 507 `insufficient_storage` with `Retry-After` and
/// SMTP's MAIL `452 4.3.1`, at once; reads, health and metrics go on and
/// say why. (tests/reliability.rs fills a real disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_of_disk_space_writes_get_507_and_mail_452_while_reads_go_on() {
    let server = TestServer::start_with(|c| c.min_free_mib = 1 << 40).await;
    let mut http = RawHttp::connect(server.http).await;
    let body = r#"{"id": "LATE", "residence": "JP", "locale": "en"}"#;
    let refused = http.call("POST", "/v1/members", Some(body)).await;
    assert_eq!(refused.status, 507, "{refused:?}");
    assert_eq!(refused.error_code(), "insufficient_storage", "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("10"), "{refused:?}");
    let message = refused.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("min_free_mib"), "{message}");
    assert_eq!(http.call("GET", "/v1/members", None).await.status, 200);
    let health = http.call("GET", "/healthz", None).await;
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("low_on_space")),
        "{health:?}"
    );
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("otpgate_store_refusing{reason=\"low_space\"}"), 1.0);
    assert_eq!(metrics.value("otpgate_http_refused_total{reason=\"storage\"}"), 1.0);

    let mut smtp = RawSmtp::connect(server.smtp).await;
    smtp.expect("EHLO tester.example", 250).await;
    let mail = smtp.cmd("MAIL FROM:<qa@tester.example>").await;
    assert_eq!((mail.code, mail.enhanced()), (452, "4.3.1"), "{}", mail.text());
    smtp.quit().await;
    let metrics = server.metrics().await;
    assert_eq!(metrics.value("otpgate_smtp_refused_total{reason=\"storage\"}"), 1.0);
    server.stop().await;
}

/// A long poll in flight when the server stops gets the answer its time
/// running out would give, not a connection cut after the stop's grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_in_flight_are_answered_when_the_server_stops() {
    let server = TestServer::start().await;
    let api = common::Api { http: server.http };
    let (s, member) = server
        .post(
            "/v1/members",
            serde_json::json!({"id": "M1", "email": "m1@example.com", "residence": "JP"}),
        )
        .await;
    assert_eq!(s, 201, "{member}");
    let (s, otp) = server
        .post("/v1/otps", serde_json::json!({"member_id": "M1", "purpose": "login"}))
        .await;
    assert_eq!(s, 201, "{otp}");
    let message = otp["message_id"].as_str().expect("message_id").to_string();
    let code = tokio::spawn(async move { api.get("/v1/sim/handsets/09011112222/otp?wait=60").await });
    let api = common::Api { http: server.http };
    let logged = tokio::spawn(async move {
        api.get(&format!("/v1/messages/{message}/wait?state=expired&timeout=60"))
            .await
    });
    server.long_polls_waiting(2).await;
    let stopping = tokio::spawn(server.stop());
    let (status, answer) = code.await.expect("answered");
    assert_eq!((status, common::error_code(&answer)), (404, "not_found"), "{answer}");
    let (status, logged) = logged.await.expect("answered");
    assert_eq!(status, 200, "{logged}");
    assert_eq!(logged["timed_out"], true, "the message as it is: {logged}");
    stopping.await.expect("stopped");
}

//! `GET /v1/events`: the delivery log live, as server-sent events, read by
//! hyper's client as a browser's `EventSource` would, while an ESME
//! (rusmppc) and the OTP core send.

mod common;

use std::time::Duration;

use common::esme::{sms, within, Bind, Esme};
use common::smtp_client::{plain_message, RawSmtp};
use common::TestServer;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use serde_json::Value;

/// One open stream, read block by block (blocks end with a blank line).
struct Events {
    body: Incoming,
    buffer: String,
}

/// One block: its `event:` (`message` when it names none), its `id:` and
/// its `data:` as JSON; comments are skipped.
#[derive(Debug)]
struct Block {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Events {
    async fn open(server: &TestServer, query: &str) -> Events {
        let (status, content_type, body) = get(server, &format!("/v1/events{query}")).await;
        assert_eq!(status, 200, "GET /v1/events{query}");
        assert_eq!(content_type, "text/event-stream");
        let mut events = Events {
            body,
            buffer: String::new(),
        };
        // The stream says it is open at once, before any event.
        let first = within("the stream's first block", events.raw_block()).await;
        assert!(first.is_some_and(|b| b.starts_with("retry: ")), "first block");
        events
    }

    /// The next block as written, or None when the stream ended.
    async fn raw_block(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_string();
                self.buffer.drain(..end + 2);
                return Some(block);
            }
            let frame = self.body.frame().await?.expect("the stream reads");
            if let Some(data) = frame.data_ref() {
                self.buffer.push_str(std::str::from_utf8(data).expect("UTF-8"));
            }
        }
    }

    /// The next event (comments skipped); None when the stream ended.
    async fn next(&mut self) -> Option<Block> {
        loop {
            let raw = within("an event", self.raw_block()).await?;
            let mut block = Block {
                event: "message".into(),
                id: None,
                data: Value::Null,
            };
            let mut data = String::new();
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    block.event = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    block.id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if data.is_empty() {
                continue;
            }
            block.data = serde_json::from_str(&data).expect("data is JSON");
            return Some(block);
        }
    }

    /// Events until one of the message `id` reaches `state`.
    async fn until_state(&mut self, id: &str, state: &str) -> Vec<Block> {
        let mut seen = Vec::new();
        loop {
            let block = self.next().await.expect("the stream is open");
            let done = block.data["id"] == id && block.data["state"] == state;
            seen.push(block);
            if done {
                return seen;
            }
        }
    }
}

async fn get(server: &TestServer, path: &str) -> (u16, String, Incoming) {
    let stream = tokio::net::TcpStream::connect(server.http).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "otpgate")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (resp.status().as_u16(), content_type, resp.into_body())
}

/// A QA team watches its own ESME's traffic, and a dashboard everything:
/// each event arrives once durable, in order, with the message as it is
/// now and codes masked; the OTP core's own SMS is in the dashboard's
/// stream and not in the team's; the server's stop ends both streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_each_event_live_filtered_by_origin_with_codes_masked() {
    let server = TestServer::start_with_account("qa-app", "secret").await;
    let esme = Esme::bind_as(server.smpp, Bind::Transceiver, "qa-app", "secret")
        .await
        .expect("bound");
    let mut mine = Events::open(&server, &format!("?origin={}", esme.system_id)).await;
    let mut all = Events::open(&server, "").await;
    assert_eq!(server.metrics().await.value("otpgate_http_event_streams_open"), 2.0);

    // The core's verification SMS first, then the ESME's.
    let verification = server.sms_member("M-EV", "090-5555-0001", "docomo").await;
    let code = verification["code"].as_str().expect("code").to_string();
    let smsc_id = esme.send(&sms("09055550002", "Your code is 135799")).await;
    server.advance(120).await;
    let (_, found) = server.get(&format!("/v1/messages?smsc_message_id={smsc_id}")).await;
    let id = found["items"][0]["id"].as_str().expect("logged").to_string();

    let seen = mine.until_state(&id, "delivered").await;
    assert!(
        seen.iter().all(|b| b.event == "delivery" && b.data["id"] == id),
        "only the ESME's message in its stream: {seen:?}"
    );
    let names: Vec<&str> = seen.iter().map(|b| b.data["event"]["kind"].as_str().unwrap()).collect();
    let (_, logged) = server.get(&format!("/v1/messages/{id}")).await;
    let logged_names: Vec<&str> = logged["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(names, logged_names, "every event, in the log's order");
    let last = &seen.last().unwrap().data;
    assert_eq!(last["text"], "Your code is ******", "{last}");
    assert_eq!(
        (last["channel"].as_str(), last["origin"].as_str()),
        (Some("sms"), Some(esme.system_id.as_str()))
    );
    assert_eq!(seen[0].id.as_deref(), Some(id.as_str()));

    let everything = all.until_state(&id, "delivered").await;
    assert!(
        everything
            .iter()
            .any(|b| b.data["origin"] == "otpgate" && b.data["member_id"] == "M-EV"),
        "the core's SMS is in the unfiltered stream: {everything:?}"
    );
    let text = format!("{everything:?}");
    assert!(!text.contains(&code) && !text.contains("135799"), "no code: {text}");

    // Bad filters are refused before a stream opens.
    for bad in ["?channel=fax", "?to=not-a-number"] {
        let (status, _, _) = get(&server, &format!("/v1/events{bad}")).await;
        assert_eq!(status, 422, "{bad}");
    }

    esme.unbind().await;
    let stop = tokio::spawn(server.stop());
    assert!(
        within("the stream to end at the stop", mine.next()).await.is_none(),
        "the stream ends"
    );
    assert!(within("the other stream to end", all.next()).await.is_none());
    tokio::time::timeout(Duration::from_secs(3), stop)
        .await
        .expect("the stop does not wait for the streams")
        .expect("stopped");
}

/// Streams are capped: the one past the cap gets 503 at once, and a
/// stream closed by its client frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_cap_are_refused_and_a_closed_one_frees_its_place() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    for _ in 0..otpgate::http::events::MOST_STREAMS {
        open.push(Events::open(&server, "?channel=email").await);
    }
    let (status, _, _) = get(&server, "/v1/events").await;
    assert_eq!(status, 503);
    drop(open.pop());
    // The server finds the closed stream when it writes to it: each mail's
    // events are written to every stream of email.
    let most = otpgate::http::events::MOST_STREAMS as u64;
    server
        .gauge_reads("otpgate_http_event_streams_open", most - 1, || async {
            let mut smtp = RawSmtp::connect(server.smtp).await;
            let to = ["taro@docomo.ne.jp"];
            let mail = plain_message("qa@example.com", to[0], "ping", "hello");
            smtp.transaction("qa@example.com", &to, &mail).await;
            smtp.quit().await;
        })
        .await;
    let (status, _, _) = get(&server, "/v1/events").await;
    assert_eq!(status, 200, "a closed stream's place is given back");
    drop(open);
    server.stop().await;
}

/// `otpgate watch` follows the log from a terminal: one readable line per
/// event of the filtered stream (or JSON with `--json`), and it exits 0
/// when the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otpgate_watch_prints_a_line_per_event_and_ends_with_the_server() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start().await;
    let watch = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_otpgate"));
        cmd.args([
            "watch",
            "--server",
            &format!("http://{}", server.http),
            "--channel",
            "email",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        cmd.spawn().expect("otpgate watch starts")
    };
    let mut lines_child = watch(&["--to", "hanako@EZweb.ne.jp"]);
    let mut json_child = watch(&["--json"]);
    server
        .gauge_reads("otpgate_http_event_streams_open", 2, || async {})
        .await;
    let mut lines = tokio::io::BufReader::new(lines_child.stdout.take().unwrap()).lines();
    let mut json = tokio::io::BufReader::new(json_child.stdout.take().unwrap()).lines();

    let mut smtp = RawSmtp::connect(server.smtp).await;
    for to in ["taro@docomo.ne.jp", "hanako@ezweb.ne.jp"] {
        let mail = plain_message("qa@example.com", to, "code", "Your code is 482913");
        smtp.transaction("qa@example.com", &[to], &mail).await;
    }
    smtp.quit().await;

    let line = within("a line", lines.next_line())
        .await
        .expect("reads")
        .expect("a line");
    assert!(line.contains("Email → hanako@ezweb.ne.jp  smtp  delivered  "), "{line}");
    let first = within("a JSON line", json.next_line())
        .await
        .expect("reads")
        .expect("a line");
    let first: Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(
        (first["to"].as_str(), first["event"]["kind"].as_str()),
        (Some("taro@docomo.ne.jp"), Some("delivered")),
        "{first}"
    );
    let second = within("a JSON line", json.next_line())
        .await
        .expect("reads")
        .expect("a line");
    assert!(!second.contains("482913"), "codes masked: {second}");

    server.stop().await;
    for child in [&mut lines_child, &mut json_child] {
        let status = within("watch to exit", child.wait()).await.expect("exit status");
        assert!(status.success(), "{status}");
    }
    let rest = within("the rest", lines.next_line()).await.expect("reads");
    assert_eq!(rest, None, "nothing more after the first mail's one line");
}

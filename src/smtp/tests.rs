//! The SMTP server and the mail world end to end: `serve` on 127.0.0.1:0 with
//! [`MailWorld`] on a temporary store and a virtual clock, driven by
//! otpgate's own client (mail-send) and by a raw SMTP dialogue.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::*;
use crate::clock::{Clock, Window};
use crate::delivery::email::{send_otp, EmailClientConfig, OutgoingEmail, SendOutcome};
use crate::store::Store;

/// How many captured mails the capture lists, or a search of it.
fn listed(world: &MailWorld, q: Option<&str>) -> usize {
    world.list(q, Window::default(), None, 100).unwrap().items.len()
}

struct World {
    addr: SocketAddr,
    world: MailWorld,
    clock: Arc<Clock>,
    events: Arc<Mutex<Vec<MailEvent>>>,
    trigger: crate::shutdown::Trigger,
    server: tokio::task::JoinHandle<()>,
}

async fn start(config: SmtpConfig) -> World {
    start_with_tls(config, None).await
}

async fn start_with_tls(config: SmtpConfig, tls: Option<TlsIdentity>) -> World {
    let store = Store::temporary().unwrap();
    let clock = Clock::virtual_at(0);
    let world = MailWorld::new(&store, clock.clone(), 100).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    world.set_observer(Arc::new(move |event| -> BoxFuture<'static, ()> {
        sink.lock().unwrap().push(event);
        Box::pin(async {})
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = crate::shutdown::channel();
    let server = tokio::spawn(serve_tls(listener, config, tls, Arc::new(world.clone()), shutdown));
    World {
        addr,
        world,
        clock,
        events,
        trigger,
        server,
    }
}

impl World {
    /// Makes `address` a mailbox that does not exist (a mistyped address).
    async fn unknown_user(&self, address: &str) -> Mailbox {
        let patch = MailboxPatch {
            exists: Some(false),
            ..Default::default()
        };
        self.world.put_mailbox(address, patch).await.unwrap()
    }

    fn client(&self) -> EmailClientConfig {
        EmailClientConfig {
            relay: self.addr.to_string(),
            from: "noreply@otpgate.example".into(),
            hello: "otpgate.example".into(),
            implicit_tls: false,
            credentials: None,
        }
    }

    async fn stop(self) {
        self.trigger.fire();
        self.server.await.unwrap();
    }
}

fn otp(to: &str, locale: &str, code: &str) -> OutgoingEmail {
    OutgoingEmail {
        to: to.into(),
        locale: locale.into(),
        code: code.into(),
        valid_minutes: 10,
        purpose: "login".into(),
        brand: "otpgate".into(),
        sent_at: crate::clock::DEFAULT_VIRTUAL_START,
    }
}

/// An independent client: raw SMTP over a TcpStream.
struct Dialogue {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Dialogue {
    async fn open(addr: SocketAddr) -> (Dialogue, String) {
        let (reader, writer) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut d = Dialogue {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = d.reply().await;
        (d, greeting)
    }

    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.unwrap() == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends a line and checks the reply's code; returns the reply.
    async fn check(&mut self, line: &str, code: u16) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        let reply = self.reply().await;
        assert!(
            reply.starts_with(&code.to_string()),
            "{line:?} -> {reply:?} (want {code})"
        );
        reply
    }

    /// A whole transaction; returns the reply to the end of DATA.
    async fn mail(&mut self, from: &str, to: &str, body: &[u8]) -> String {
        self.check(&format!("MAIL FROM:<{from}>"), 250).await;
        self.check(&format!("RCPT TO:<{to}>"), 250).await;
        self.check("DATA", 354).await;
        self.send(body).await;
        self.send(b"\r\n.\r\n").await;
        self.reply().await
    }

    /// One transaction that must be accepted: the answer after DATA is 250.
    async fn deliver(&mut self, from: &str, to: &str, body: &[u8]) {
        let answer = self.mail(from, to, body).await;
        assert!(answer.starts_with("250 "), "{answer}");
    }
}

#[tokio::test]
async fn an_otp_sent_with_mail_send_is_captured_listed_and_readable() {
    let w = start(SmtpConfig::default()).await;
    let outcome = send_otp(&w.client(), &otp("Taro@Example.COM", "ja", "402931")).await;
    let SendOutcome::Accepted { reply } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = crate::delivery::email::queued_id(&reply).unwrap().to_string();

    let page = w.world.list(None, Window::default(), None, 10).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, id);
    assert_eq!(page.items[0].subject, "【otpgate】ワンタイムパスワードのお知らせ");
    assert_eq!(page.items[0].from, "noreply@otpgate.example");
    assert_eq!(page.items[0].received_at, crate::clock::rfc3339(0));
    assert_eq!(page.next, None);

    let detail = w.world.get(&id).unwrap().unwrap();
    assert!(detail.text.as_deref().unwrap().contains("ワンタイムパスワード：402931"));
    assert!(detail.headers.iter().any(|h| h.name.eq_ignore_ascii_case("subject")));
    assert!(detail.raw.contains("Subject: "));
    assert_eq!(detail.size, detail.raw.len());

    // The domain is case-insensitive, the local part is not.
    let code = w.world.newest_code("Taro@example.com").unwrap().unwrap();
    assert_eq!(
        (code.code.as_str(), code.from.as_str()),
        ("402931", "noreply@otpgate.example")
    );
    let inbox = w.world.mailbox_messages("Taro@EXAMPLE.com").unwrap();
    assert_eq!(inbox[0].folder, Some(Folder::Inbox));
    assert!(inbox[0].text.as_deref().unwrap().contains("402931"));
    assert_eq!(page.items[0].text, None, "the capture list stays lean");
    assert!(w.world.mailbox_messages("taro@example.com").unwrap().is_empty());

    assert_eq!(listed(&w.world, Some("ワンタイム")), 1);
    assert_eq!(listed(&w.world, Some("TARO@")), 1);
    assert_eq!(listed(&w.world, Some("no such text")), 0);

    let events = w.events.lock().unwrap().clone();
    let outcomes: Vec<_> = events.iter().map(|e| (e.stage, e.code, e.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (MailStage::Rcpt, 250, Outcome::Accepted),
            (MailStage::Data, 250, Outcome::Accepted)
        ]
    );
    assert_eq!(events[1].message_id.as_deref(), Some(id.as_str()));
    w.stop().await;
}

#[tokio::test]
async fn a_raw_dialogue_is_captured_and_paged() {
    let w = start(SmtpConfig::default()).await;
    let (mut d, greeting) = Dialogue::open(w.addr).await;
    assert!(greeting.starts_with("220 otpgate.local"), "{greeting}");
    let ehlo = d.check("EHLO tester", 250).await;
    assert!(ehlo.contains("250-SIZE 10485760\r\n"), "{ehlo}");
    d.check("VRFY postmaster", 502).await;
    for n in 0..3 {
        let body = format!("From: qa@example.com\r\nTo: anyone@example.net\r\nSubject: capture check {n}\r\n\r\nhello from a raw client\r\n");
        let reply = d.mail("qa@example.com", "anyone@example.net", body.as_bytes()).await;
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    d.check("QUIT", 221).await;

    let first = w.world.list(None, Window::default(), None, 2).unwrap();
    assert_eq!(
        first.items.iter().map(|m| m.subject.as_str()).collect::<Vec<_>>(),
        ["capture check 2", "capture check 1"]
    );
    let second = w.world.list(None, Window::default(), first.next.as_deref(), 2).unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.next, None);
    let detail = w.world.get(&second.items[0].id).unwrap().unwrap();
    assert!(detail.text.unwrap().contains("hello from a raw client"));
    assert_eq!(detail.envelope.helo, "tester");

    assert!(w.world.delete(&second.items[0].id).await.unwrap());
    assert_eq!(listed(&w.world, None), 2);
    w.world.delete_all().await.unwrap();
    assert_eq!(listed(&w.world, None), 0);
    w.stop().await;
}

#[tokio::test]
async fn an_unknown_user_is_refused_at_rcpt() {
    let w = start(SmtpConfig::default()).await;
    assert!(!w.unknown_user("typo@docomo.ne.jp").await.exists);
    let outcome = send_otp(&w.client(), &otp("typo@docomo.ne.jp", "ja", "111111")).await;
    assert_eq!(
        outcome,
        SendOutcome::Rejected {
            code: 550,
            enhanced: "5.1.1".into(),
            text: "<typo@docomo.ne.jp>: Recipient address rejected: User unknown".into(),
            stage: "rcpt".into(),
        }
    );
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("HELO tester", 250).await;
    d.check("MAIL FROM:<qa@example.com>", 250).await;
    let reply = d.check("RCPT TO:<typo@DOCOMO.ne.jp>", 550).await;
    assert!(reply.starts_with("550 5.1.1 "), "{reply}");
    d.check("DATA", 554).await;
    assert_eq!(listed(&w.world, None), 0);
    w.stop().await;
}

#[tokio::test]
async fn a_full_mailbox_answers_452_and_a_full_carrier_mailbox_552_after_data() {
    let w = start(SmtpConfig::default()).await;
    let full = MailboxPatch {
        full: Some(true),
        ..Default::default()
    };
    w.world.put_mailbox("full@example.com", full.clone()).await.unwrap();
    let outcome = send_otp(&w.client(), &otp("full@example.com", "en", "222222")).await;
    assert_eq!(
        outcome,
        SendOutcome::TryLater {
            code: 452,
            enhanced: "4.2.2".into(),
            text: "Mailbox full".into()
        }
    );

    w.world.put_mailbox("full@ezweb.ne.jp", full).await.unwrap();
    let outcome = send_otp(&w.client(), &otp("full@ezweb.ne.jp", "ja", "222222")).await;
    assert!(
        matches!(&outcome, SendOutcome::Rejected { code: 552, stage, .. } if stage == "data"),
        "{outcome:?}"
    );
    assert_eq!(listed(&w.world, None), 0);
    w.stop().await;
}

#[tokio::test]
async fn greylisting_defers_the_first_attempt_and_passes_a_retry_after_the_delay() {
    let w = start(SmtpConfig::default()).await;
    w.world
        .put_mailbox(
            "grey@example.com",
            MailboxPatch {
                greylist: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mail = otp("grey@example.com", "en", "333333");
    let first = send_otp(&w.client(), &mail).await;
    assert_eq!(
        first,
        SendOutcome::TryLater {
            code: 451,
            enhanced: "4.7.1".into(),
            text: "Greylisted, try again later".into()
        }
    );
    w.clock.advance(30_000).await;
    assert!(matches!(
        send_otp(&w.client(), &mail).await,
        SendOutcome::TryLater { code: 451, .. }
    ));
    w.clock.advance(31_000).await;
    let retry = send_otp(&w.client(), &mail).await;
    assert!(matches!(retry, SendOutcome::Accepted { .. }), "{retry:?}");
    assert_eq!(w.world.newest_code("grey@example.com").unwrap().unwrap().code, "333333");
    let deferred = w
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.outcome == Outcome::Deferred)
        .count();
    assert_eq!(deferred, 2);
    w.stop().await;
}

/// Senders are whatever clients say, so the greylist keeps at most its
/// cap of (recipient, sender) pairs: past it the oldest are forgotten, and
/// such a sender is greylisted afresh, as an expired entry of a
/// greylisting server is.
#[tokio::test]
async fn the_greylist_forgets_its_oldest_pairs_past_its_cap() {
    let store = Store::temporary().unwrap();
    let clock = Clock::virtual_at(0);
    let world = MailWorld::new(&store, clock.clone(), 10).unwrap();
    world.keep_greylist(3);
    let patch = MailboxPatch {
        greylist: Some(true),
        ..Default::default()
    };
    world.put_mailbox("grey@example.com", patch).await.unwrap();
    let senders: Vec<String> = (0..6).map(|i| format!("s{i}@example.com")).collect();
    for sender in &senders {
        let first = world.rcpt(sender, "grey@example.com").await;
        assert!(matches!(first, RcptVerdict::Reject { code: 451, .. }), "{first:?}");
    }
    clock.advance(61_000).await;
    let mut passed = Vec::new();
    for sender in senders.iter().rev() {
        passed.push(world.rcpt(sender, "grey@example.com").await == RcptVerdict::Accept);
    }
    assert_eq!(passed, [true, true, true, false, false, false], "newest first");
    assert_eq!(store.tree("mail_greylist").unwrap().len(), 3);
    assert_eq!(store.tree("mail_greylist_order").unwrap().len(), 3);
}

#[tokio::test]
async fn an_oversized_message_answers_552_and_is_not_stored() {
    let w = start(SmtpConfig {
        max_message_bytes: 1024,
        ..SmtpConfig::default()
    })
    .await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("EHLO tester", 250).await;
    d.check("MAIL FROM:<qa@example.com> SIZE=4096", 552).await;
    let body = format!("Subject: big\r\n\r\n{}", "0123456789abcdef\r\n".repeat(200));
    let reply = d.mail("qa@example.com", "u@example.com", body.as_bytes()).await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    // One very long line is read in chunks and refused the same way.
    let long = format!("Subject: long\r\n\r\n{}", "x".repeat(200_000));
    let reply = d.mail("qa@example.com", "u@example.com", long.as_bytes()).await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert_eq!(listed(&w.world, None), 0);
    // The session goes on.
    let reply = d
        .mail("qa@example.com", "u@example.com", b"Subject: small\r\n\r\nok")
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    w.stop().await;
}

#[tokio::test]
async fn a_broken_mime_body_is_captured_raw() {
    let w = start(SmtpConfig::default()).await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("EHLO tester", 250).await;
    let body = "From: qa@example.com\r\n\
                Subject: broken\r\n\
                MIME-Version: 1.0\r\n\
                Content-Type: multipart/mixed; boundary=\"zzz\r\n\
                \r\n\
                --zzz\r\n\
                Content-Type: text/plain; charset=x-unknown\r\n\
                Content-Transfer-Encoding: base64\r\n\
                \r\n\
                !!!! not base64 ####\r\n\
                --zz";
    let reply = d.mail("qa@example.com", "u@example.com", body.as_bytes()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let id = w.world.list(None, Window::default(), None, 1).unwrap().items[0]
        .id
        .clone();
    let detail = w.world.get(&id).unwrap().unwrap();
    assert_eq!(detail.raw, body.to_string() + "\r\n");
    assert_eq!(
        w.world.raw(&id).unwrap().unwrap(),
        (body.to_string() + "\r\n").into_bytes()
    );

    // Not even a header: still kept as received.
    let reply = d.mail("qa@example.com", "u@example.com", b"\x00\xff\xfe garbage").await;
    assert!(reply.starts_with("250 "), "{reply}");
    let id = w.world.list(None, Window::default(), None, 1).unwrap().items[0]
        .id
        .clone();
    assert_eq!(w.world.raw(&id).unwrap().unwrap(), b"\x00\xff\xfe garbage\r\n");
    w.stop().await;
}

#[tokio::test]
async fn an_iso_2022_jp_message_is_decoded() {
    let w = start(SmtpConfig::default()).await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("EHLO tester", 250).await;
    // "テスト" in ISO-2022-JP, in the subject (B encoded) and the body.
    let body = b"From: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?= <jp@example.jp>\r\n\
                 Subject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=\r\n\
                 MIME-Version: 1.0\r\n\
                 Content-Type: text/plain; charset=ISO-2022-JP\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\
                 \r\n\
                 \x1b$B%F%9%H\x1b(B 654321\r\n";
    let reply = d.mail("jp@example.jp", "u@example.com", body).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let item = &w.world.list(Some("テスト"), Window::default(), None, 1).unwrap().items[0];
    assert_eq!(item.subject, "テスト");
    assert_eq!(item.from, "jp@example.jp");
    let detail = w.world.get(&item.id).unwrap().unwrap();
    assert!(detail.text.unwrap().contains("テスト 654321"));
    assert_eq!(w.world.newest_code("u@example.com").unwrap().unwrap().code, "654321");
    w.stop().await;
}

#[tokio::test]
async fn carrier_domain_filters_reject_or_drop() {
    let w = start(SmtpConfig::default()).await;
    let filter = MailboxPatch {
        allowed_domains: Some(vec!["airline.example".into()]),
        ..Default::default()
    };
    w.world.put_mailbox("u@docomo.ne.jp", filter.clone()).await.unwrap();
    w.world.put_mailbox("u@au.com", filter.clone()).await.unwrap();
    w.world
        .put_mailbox(
            "spam@example.com",
            MailboxPatch {
                spam: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let docomo = send_otp(&w.client(), &otp("u@docomo.ne.jp", "ja", "444444")).await;
    assert!(
        matches!(&docomo, SendOutcome::Rejected { code: 550, enhanced, stage, .. } if enhanced == "5.7.1" && stage == "data"),
        "{docomo:?}"
    );

    let au = send_otp(&w.client(), &otp("u@au.com", "ja", "555555")).await;
    let SendOutcome::Accepted { reply } = au else {
        panic!("{au:?}")
    };
    let id = crate::delivery::email::queued_id(&reply).unwrap().to_string();
    assert!(w.world.mailbox_messages("u@au.com").unwrap().is_empty());
    assert_eq!(w.world.newest_code("u@au.com").unwrap(), None);
    let detail = w.world.get(&id).unwrap().unwrap();
    assert_eq!(detail.deliveries[0].outcome, Outcome::Dropped);

    let spam = send_otp(&w.client(), &otp("spam@example.com", "en", "666666")).await;
    assert!(matches!(spam, SendOutcome::Accepted { .. }));
    let listed = w.world.mailbox_messages("spam@example.com").unwrap();
    assert_eq!(listed[0].folder, Some(Folder::Spam));
    assert_eq!(
        w.world.newest_code("spam@example.com").unwrap(),
        None,
        "only the inbox counts"
    );

    let allowed = EmailClientConfig {
        from: "otp@mail.airline.example".into(),
        ..w.client()
    };
    assert!(matches!(
        send_otp(&allowed, &otp("u@au.com", "ja", "777777")).await,
        SendOutcome::Accepted { .. }
    ));
    assert_eq!(w.world.newest_code("u@au.com").unwrap().unwrap().code, "777777");

    let outcomes: Vec<_> = w
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.stage == MailStage::Data)
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        outcomes,
        vec![Outcome::Rejected, Outcome::Dropped, Outcome::Spam, Outcome::Accepted]
    );
    w.stop().await;
}

#[tokio::test]
async fn auth_is_required_and_checked_when_accounts_are_configured() {
    let w = start(SmtpConfig {
        auth: vec![("qa".into(), "s3cret".into())],
        ..SmtpConfig::default()
    })
    .await;
    let mail = otp("u@example.com", "en", "888888");
    let anonymous = send_otp(&w.client(), &mail).await;
    assert!(
        matches!(&anonymous, SendOutcome::Rejected { code: 530, stage, .. } if stage == "mail"),
        "{anonymous:?}"
    );
    let wrong = EmailClientConfig {
        credentials: Some(("qa".into(), "nope".into())),
        ..w.client()
    };
    let refused = send_otp(&wrong, &mail).await;
    assert!(
        matches!(&refused, SendOutcome::Rejected { code: 535, stage, .. } if stage == "auth"),
        "{refused:?}"
    );
    let right = EmailClientConfig {
        credentials: Some(("qa".into(), "s3cret".into())),
        ..w.client()
    };
    assert!(matches!(send_otp(&right, &mail).await, SendOutcome::Accepted { .. }));
    w.stop().await;
}

#[tokio::test]
async fn the_otp_core_client_sends_in_plain_text_where_starttls_is_offered() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls");
    let tls = TlsIdentity::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let w = start_with_tls(
        SmtpConfig {
            auth: vec![("qa".into(), "s3cret".into())],
            ..SmtpConfig::default()
        },
        Some(tls),
    )
    .await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    let ehlo = d.check("EHLO tester", 250).await;
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    d.check("QUIT", 221).await;
    let core = EmailClientConfig {
        credentials: Some(("qa".into(), "s3cret".into())),
        ..w.client()
    };
    let sent = send_otp(&core, &otp("u@example.com", "ja", "777777")).await;
    assert!(matches!(sent, SendOutcome::Accepted { .. }), "{sent:?}");
    assert_eq!(w.world.newest_code("u@example.com").unwrap().unwrap().code, "777777");
    w.stop().await;
}

#[tokio::test]
async fn shutdown_says_421_to_open_sessions_and_waits_for_them() {
    let w = start(SmtpConfig::default()).await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("EHLO tester", 250).await;
    d.check("MAIL FROM:<qa@example.com>", 250).await;
    w.trigger.fire();
    let goodbye = d.reply().await;
    assert_eq!(goodbye, "421 4.3.2 Service shutting down\r\n");
    w.server.await.unwrap();
    assert!(TcpStream::connect(w.addr).await.is_err());
}

#[tokio::test]
async fn connections_beyond_the_cap_are_told_to_come_back() {
    let w = start(SmtpConfig {
        max_connections: 1,
        ..SmtpConfig::default()
    })
    .await;
    let (mut first, _) = Dialogue::open(w.addr).await;
    first.check("NOOP", 250).await;
    let (_second, greeting) = Dialogue::open(w.addr).await;
    assert!(greeting.starts_with("421 4.7.0"), "{greeting}");
    first.check("QUIT", 221).await;
    w.stop().await;
}

#[tokio::test]
async fn past_max_in_flight_mail_is_told_to_come_back_until_a_transaction_ends() {
    let w = start(SmtpConfig {
        max_in_flight: Some(1),
        ..SmtpConfig::default()
    })
    .await;
    let (mut first, _) = Dialogue::open(w.addr).await;
    let (mut second, _) = Dialogue::open(w.addr).await;
    first.check("EHLO one", 250).await;
    second.check("EHLO two", 250).await;
    // The first holds the one slot from MAIL on; the second is refused at
    // once, as often as it asks, and no error is counted against it.
    first.check("MAIL FROM:<a@example.com>", 250).await;
    for _ in 0..12 {
        let refusal = second.check("MAIL FROM:<b@example.com>", 451).await;
        assert!(refusal.starts_with("451 4.3.2 "), "{refusal}");
    }
    // RSET gives the slot back.
    first.check("RSET", 250).await;
    second
        .deliver("b@example.com", "r@example.com", b"Subject: two\r\n\r\nbody")
        .await;
    // So does the answer after DATA, and a connection that goes away.
    first
        .deliver("a@example.com", "r@example.com", b"Subject: one\r\n\r\nbody")
        .await;
    second.check("MAIL FROM:<b@example.com>", 250).await;
    first.check("MAIL FROM:<a@example.com>", 451).await;
    drop(second);
    let mut answer = String::new();
    for _ in 0..100 {
        first.send(b"MAIL FROM:<a@example.com>\r\n").await;
        answer = first.reply().await;
        if answer.starts_with("250") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        answer.starts_with("250 "),
        "the closed session's slot came back: {answer}"
    );
    first.check("QUIT", 221).await;
    assert_eq!(listed(&w.world, None), 2);
    w.stop().await;
}

#[tokio::test]
async fn overlong_commands_are_refused_and_the_session_goes_on() {
    let w = start(SmtpConfig::default()).await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check(&format!("EHLO {}", "x".repeat(10_000)), 500).await;
    d.check("EHLO tester", 250).await;
    w.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_timed_out() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 10).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = crate::shutdown::channel();
    let limits = Limits {
        idle_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let server = tokio::spawn(serve_with(
        Listeners::plain(listener),
        SmtpConfig::default(),
        None,
        limits,
        Arc::new(world),
        shutdown,
    ));
    let (mut d, _) = Dialogue::open(addr).await;
    let bye = d.reply().await;
    assert!(bye.starts_with("421 4.4.2"), "{bye}");
    trigger.fire();
    server.await.unwrap();
}

#[tokio::test]
async fn retention_removes_the_oldest_messages() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 2).unwrap();
    for n in 0..3 {
        let envelope = Envelope {
            helo: "h".into(),
            from: "a@example.com".into(),
            rcpts: vec!["r@example.com".into()],
            peer: "p".into(),
        };
        let verdict = world
            .data(envelope, format!("Subject: {n}\r\n\r\nbody {n}00000\r\n").into_bytes())
            .await;
        assert!(matches!(verdict, DataVerdict::Accepted { .. }));
    }
    let subjects: Vec<_> = world
        .list(None, Window::default(), None, 10)
        .unwrap()
        .items
        .into_iter()
        .map(|m| m.subject)
        .collect();
    assert_eq!(subjects, ["2", "1"]);
    assert_eq!(world.mailbox_messages("r@example.com").unwrap().len(), 2);
    assert_eq!(world.newest_code("r@example.com").unwrap().unwrap().code, "200000");
}

/// A server whose admission control reads a manual ticker, so that a test
/// moves time instead of waiting for it.
struct Ticked {
    addr: SocketAddr,
    ticker: crate::admission::Ticker,
    trigger: crate::shutdown::Trigger,
    server: tokio::task::JoinHandle<()>,
}

async fn start_ticked(config: SmtpConfig, backend: Arc<dyn MailBackend>) -> Ticked {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = crate::shutdown::channel();
    let ticker = crate::admission::Ticker::manual();
    let limits = Limits {
        ticker: ticker.clone(),
        ..Limits::default()
    };
    let server = tokio::spawn(serve_with(
        Listeners::plain(listener),
        config,
        None,
        limits,
        backend,
        shutdown,
    ));
    Ticked {
        addr,
        ticker,
        trigger,
        server,
    }
}

impl Ticked {
    async fn stop(self) {
        self.trigger.fire();
        self.server.await.unwrap();
    }
}

#[tokio::test]
async fn over_the_message_rate_mail_is_deferred_with_451_until_the_bucket_refills() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 10).unwrap();
    let config = SmtpConfig {
        max_messages_per_sec: Some(2),
        ..SmtpConfig::default()
    };
    let t = start_ticked(config, Arc::new(world.clone())).await;
    let (addr, ticker) = (t.addr, t.ticker.clone());
    let (mut d, _) = Dialogue::open(addr).await;
    d.check("EHLO tester", 250).await;
    for n in 0..2 {
        d.deliver(
            "qa@example.com",
            "r@example.com",
            format!(
                "Subject: {n}

body"
            )
            .as_bytes(),
        )
        .await;
    }
    // Two a second: the third, and every retry within the same instant, is
    // told to come back later. The refusals are not the client's mistakes,
    // so more of them than the error limit leave the session open.
    for _ in 0..12 {
        let refusal = d.check("MAIL FROM:<qa@example.com>", 451).await;
        assert!(refusal.starts_with("451 4.3.2 "), "{refusal}");
    }
    // No transaction was opened by a refused MAIL.
    d.check("RCPT TO:<r@example.com>", 503).await;
    // A pipelining client sends RCPT and DATA behind its MAIL: after the
    // refusal they are answered 503 and, being the server's doing, count
    // no error either (six groups hold twelve 503s, past the limit of 10).
    for _ in 0..6 {
        d.send(b"MAIL FROM:<qa@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
            .await;
        for code in [451, 503, 503] {
            expect_code(&mut d, code).await;
        }
    }
    // Half a second brings one token back.
    ticker.advance(Duration::from_millis(500));
    d.deliver("qa@example.com", "r@example.com", b"Subject: 2\r\n\r\nbody")
        .await;
    d.check("MAIL FROM:<qa@example.com>", 451).await;
    d.check("QUIT", 221).await;
    assert_eq!(listed(&world, None), 3);
    t.stop().await;
}

/// The mail world behind a gate: each capture waits for a permit, so a
/// test holds several at once while it moves the admission ticker, as a
/// server that has fallen behind would.
struct Gated {
    world: MailWorld,
    gate: Arc<tokio::sync::Semaphore>,
    arrived: tokio::sync::watch::Sender<usize>,
}

impl MailBackend for Gated {
    fn rcpt(&self, from: &str, to: &str) -> BoxFuture<'_, RcptVerdict> {
        self.world.rcpt(from, to)
    }

    fn data(&self, envelope: Envelope, raw: Vec<u8>) -> BoxFuture<'_, DataVerdict> {
        Box::pin(async move {
            self.arrived.send_modify(|n| *n += 1);
            self.gate.acquire().await.expect("gate open").forget();
            self.world.data(envelope, raw).await
        })
    }
}

#[tokio::test]
async fn while_transactions_lag_past_shed_after_mail_gets_451_until_they_catch_up() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 100).unwrap();
    let (arrived, mut arrivals) = tokio::sync::watch::channel(0);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let backend = Gated {
        world: world.clone(),
        gate: gate.clone(),
        arrived,
    };
    let config = SmtpConfig {
        shed_after: Some(Duration::from_millis(50)),
        ..SmtpConfig::default()
    };
    let t = start_ticked(config, Arc::new(backend)).await;
    let (addr, ticker) = (t.addr, t.ticker.clone());

    // Eight messages reach the end of DATA and wait for their capture until
    // 60 ms of the ticker's time after it: a queue.
    let mut senders = Vec::new();
    for n in 0..8 {
        let (mut d, _) = Dialogue::open(addr).await;
        d.check("EHLO tester", 250).await;
        d.check("MAIL FROM:<qa@example.com>", 250).await;
        d.check("RCPT TO:<r@example.com>", 250).await;
        d.check("DATA", 354).await;
        d.send(format!("Subject: {n}\r\n\r\nbody\r\n.\r\n").as_bytes()).await;
        senders.push(d);
    }
    arrivals.wait_for(|n| *n == 8).await.unwrap();
    ticker.advance(Duration::from_millis(60));
    gate.add_permits(8);
    for d in &mut senders {
        let answer = d.reply().await;
        assert!(answer.starts_with("250 "), "{answer}");
    }
    // The window they finished in is still open: admitted.
    let (mut client, _) = Dialogue::open(addr).await;
    client.check("EHLO tester", 250).await;
    client.check("MAIL FROM:<qa@example.com>", 250).await;
    client.check("RSET", 250).await;
    // Once it closes, even its quickest took longer than 50 ms: the next
    // window refuses at once, without counting errors against anyone.
    ticker.advance(Duration::from_millis(40));
    for _ in 0..12 {
        let refusal = client.check("MAIL FROM:<qa@example.com>", 451).await;
        assert!(refusal.starts_with("451 4.3.2 "), "{refusal}");
    }
    // A window with nothing waiting: admitted again.
    ticker.advance(Duration::from_millis(100));
    gate.add_permits(1);
    client
        .deliver("qa@example.com", "r@example.com", b"Subject: after\r\n\r\nbody")
        .await;
    client.check("QUIT", 221).await;
    assert_eq!(listed(&world, None), 9);
    t.stop().await;
}

/// Clients that take 60 ms between MAIL and the end of their DATA (round
/// trips to a distant network) on a server that captures at once: the
/// server is not behind, and the next MAIL is taken. Timed from MAIL,
/// every transaction of such clients would look like a queue.
#[tokio::test]
async fn slow_clients_between_mail_and_data_are_not_a_server_behind() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 100).unwrap();
    let config = SmtpConfig {
        shed_after: Some(Duration::from_millis(50)),
        ..SmtpConfig::default()
    };
    let t = start_ticked(config, Arc::new(world.clone())).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (mut d, _) = Dialogue::open(t.addr).await;
        d.check("EHLO tester", 250).await;
        d.check("MAIL FROM:<qa@example.com>", 250).await;
        d.check("RCPT TO:<r@example.com>", 250).await;
        clients.push(d);
    }
    t.ticker.advance(Duration::from_millis(60));
    for (n, d) in clients.iter_mut().enumerate() {
        d.check("DATA", 354).await;
        d.check(&format!("Subject: {n}\r\n\r\nbody\r\n."), 250).await;
    }
    // The window those eight finished in closes: its quickest capture took
    // no time.
    t.ticker.advance(Duration::from_millis(100));
    clients[0].check("MAIL FROM:<qa@example.com>", 250).await;
    assert_eq!(listed(&world, None), 8);
    t.stop().await;
}

/// Reads one reply of a group and checks its code.
async fn expect_code(d: &mut Dialogue, code: u16) -> String {
    let reply = d.reply().await;
    assert!(reply.starts_with(&code.to_string()), "{reply:?} (want {code})");
    reply
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_and_a_refusal_stops_the_data() {
    let w = start(SmtpConfig::default()).await;
    w.unknown_user("typo@docomo.ne.jp").await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    let ehlo = d.check("EHLO tester", 250).await;
    assert!(ehlo.contains("250-PIPELINING\r\n"), "{ehlo}");

    // One group: the envelope with a refused recipient, then DATA.
    d.send(b"MAIL FROM:<qa@example.com>\r\nRCPT TO:<typo@docomo.ne.jp>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n")
        .await;
    for code in [250, 550, 250, 354] {
        expect_code(&mut d, code).await;
    }
    // The message, its end and QUIT in one write.
    d.send(b"Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n").await;
    expect_code(&mut d, 250).await;
    expect_code(&mut d, 221).await;
    let page = w.world.list(None, Window::default(), None, 10).unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].subject, "pipelined");

    // Every recipient refused: DATA is refused too, so the lines after it
    // are read as commands, not as a message.
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("EHLO tester", 250).await;
    d.send(b"MAIL FROM:<qa@example.com>\r\nRCPT TO:<typo@docomo.ne.jp>\r\nDATA\r\nNOOP\r\n")
        .await;
    for code in [250, 550, 554, 250] {
        expect_code(&mut d, code).await;
    }
    d.check("QUIT", 221).await;
    assert_eq!(listed(&w.world, None), 1);
    w.stop().await;
}

#[tokio::test]
async fn replies_are_written_once_no_whole_command_is_left_unread() {
    let w = start(SmtpConfig::default()).await;
    let (mut d, _) = Dialogue::open(w.addr).await;
    d.check("EHLO tester", 250).await;
    // Two whole commands and the start of a third: the two are answered
    // without waiting for the rest of the third.
    d.send(b"MAIL FROM:<qa@example.com>\r\nRCPT TO:<a@example.net>\r\nDA")
        .await;
    expect_code(&mut d, 250).await;
    expect_code(&mut d, 250).await;
    d.send(b"TA\r\n").await;
    expect_code(&mut d, 354).await;
    d.send(b"Subject: split\r\n\r\nhi\r\n.\r\n").await;
    expect_code(&mut d, 250).await;
    w.stop().await;
}

/// A stream that plays `input` and records each write separately.
struct Recorded {
    input: std::io::Cursor<Vec<u8>>,
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl tokio::io::AsyncRead for Recorded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let at = self.input.position() as usize;
        let rest = &self.input.get_ref()[at..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.input.set_position((at + n) as u64);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Recorded {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes.lock().unwrap().push(buf.to_vec());
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn the_replies_to_a_pipelined_group_leave_in_one_write() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 100).unwrap();
    let server = Arc::new(session::Server::new(
        SmtpConfig::default(),
        None,
        Limits::default(),
        Arc::new(world.clone()),
    ));
    let mut session = session::Session::new(server, [127, 0, 0, 1].into(), "127.0.0.1:1".into());
    let writes = Arc::new(Mutex::new(Vec::new()));
    let stream = Recorded {
        input: std::io::Cursor::new(
            b"EHLO tester\r\nMAIL FROM:<qa@example.com>\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n\
              Subject: one write\r\n\r\nhi\r\n.\r\nQUIT\r\n"
                .to_vec(),
        ),
        writes: writes.clone(),
    };
    let (_trigger, mut shutdown) = crate::shutdown::channel();
    let ending = converse(stream, &mut session, None, &mut shutdown).await.unwrap();
    assert!(matches!(ending, Ending::Closed));
    let writes: Vec<String> = writes
        .lock()
        .unwrap()
        .iter()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    let codes: Vec<&str> = writes[0]
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect();
    assert_eq!(codes, ["250", "250", "250", "250", "354", "250", "221"]);
    assert_eq!(listed(&world, None), 1);
}

/// The mail world behind a store that can take nothing (a full disk).
struct Refusing {
    world: MailWorld,
    refusal: Mutex<Option<crate::store::Refusal>>,
}

impl MailBackend for Refusing {
    fn rcpt(&self, from: &str, to: &str) -> BoxFuture<'_, RcptVerdict> {
        self.world.rcpt(from, to)
    }

    fn data(&self, envelope: Envelope, raw: Vec<u8>) -> BoxFuture<'_, DataVerdict> {
        self.world.data(envelope, raw)
    }

    fn refusal(&self) -> Option<crate::store::Refusal> {
        self.refusal.lock().unwrap().clone()
    }
}

/// Short of disk space, MAIL gets `452 4.3.1` (as from Postfix) and so
/// does a message whose transaction began before; a failed store gets
/// `451 4.3.0`. Nothing is kept, no error is counted, and mail is taken
/// again once there is room.
#[tokio::test]
async fn short_of_storage_mail_is_refused_with_452_and_taken_again_after() {
    let store = Store::temporary().unwrap();
    let world = MailWorld::new(&store, Clock::virtual_at(0), 100).unwrap();
    let backend = Arc::new(Refusing {
        world: world.clone(),
        refusal: Mutex::new(None),
    });
    let t = start_ticked(SmtpConfig::default(), backend.clone()).await;
    let low = crate::store::Refusal::LowOnSpace {
        free_mib: 10,
        min_free_mib: 256,
    };
    let (mut d, _) = Dialogue::open(t.addr).await;
    d.check("EHLO tester", 250).await;
    // Begun with room; the disk fills during DATA.
    d.check("MAIL FROM:<qa@example.com>", 250).await;
    d.check("RCPT TO:<r@example.com>", 250).await;
    d.check("DATA", 354).await;
    *backend.refusal.lock().unwrap() = Some(low);
    d.send(b"Subject: late\r\n\r\nbody\r\n.\r\n").await;
    assert!(d.reply().await.starts_with("452 4.3.1 "));
    for _ in 0..5 {
        let reply = d.check("MAIL FROM:<qa@example.com>", 452).await;
        assert_eq!(reply, "452 4.3.1 Insufficient system storage, try again later\r\n");
        // The group's RCPT and DATA are excused, as after a shed MAIL.
        d.check("RCPT TO:<r@example.com>", 503).await;
        d.check("DATA", 503).await;
    }
    *backend.refusal.lock().unwrap() = Some(crate::store::Refusal::Failed("disk full".into()));
    d.check("MAIL FROM:<qa@example.com>", 451).await;
    *backend.refusal.lock().unwrap() = None;
    let done = d
        .mail("qa@example.com", "r@example.com", b"Subject: now\r\n\r\nbody\r\n")
        .await;
    assert!(done.starts_with("250 "), "{done}");
    assert_eq!(
        world.list(None, Window::default(), None, 10).unwrap().items.len(),
        1,
        "only the last was kept"
    );
    d.check("QUIT", 221).await;
    t.stop().await;
}

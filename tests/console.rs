//! The support console end to end: a member whose code never arrives (an au
//! phone with "reject all" switched on after registration), then every page
//! an agent opens, in Japanese and English, over real HTTP, and the member
//! page in a real headless browser (Debian's chromium).

mod common;

use common::browser;
use common::pages::escaped;
use common::smtp_client::{plain_message, RawSmtp};
use common::{enc, TestServer};

use serde_json::{json, Value};

const MEMBER: &str = "M-AU-REJECT";
const NUMBER: &str = "070-3333-0003";
const E164: &str = "+817033330003";

/// The failing case through the real flows; answers the verification code
/// (which did reach the phone) and the top finding of the JSON report in
/// Japanese and English.
async fn failing_case(server: &TestServer) -> (String, Value, Value) {
    let verification = server.sms_member(MEMBER, NUMBER, "au").await;
    server.handset(NUMBER, json!({"filters": {"reject_all": true}})).await;
    let (s, otp) = server
        .post("/v1/otps", json!({"member_id": MEMBER, "purpose": "login"}))
        .await;
    assert_eq!(s, 201, "issue: {otp}");
    server.advance(120).await;
    let top = |lang: &'static str| async move {
        let (s, report) = server
            .get(&format!("/v1/diagnostics/members/{MEMBER}?lang={lang}"))
            .await;
        assert_eq!(s, 200, "{report}");
        assert_eq!(report["findings"][0]["code"], "blocked_by_sms_filter", "{report}");
        report["findings"][0].clone()
    };
    let (ja, en) = (top("ja").await, top("en").await);
    (verification["code"].as_str().unwrap_or_default().to_string(), ja, en)
}

fn text(v: &Value) -> String {
    escaped(v.as_str().unwrap_or_else(|| panic!("a string: {v}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_tells_an_agent_why_the_code_did_not_arrive() {
    let server = TestServer::start().await;
    let (code, ja, en) = failing_case(&server).await;

    // The member page: the top finding first, then the evidence.
    let page = server.page(&format!("/console/members/{MEMBER}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    let csp = page.csp.unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "no scripts or remote assets: {csp}");
    let body = page.body;
    assert!(body.contains(r#"<html lang="ja">"#), "Japanese by default");
    for field in ["title", "explanation", "remediation"] {
        assert!(
            body.contains(&text(&ja[field])),
            "the top finding's {field} in Japanese: {body}"
        );
    }
    let top = body.find(&text(&ja["title"])).unwrap_or(usize::MAX);
    let timeline = body
        .find("REJECTD")
        .expect("the timeline shows the SMPP receipt status");
    assert!(top < timeline, "the finding comes before the evidence");
    assert!(body.contains(r#"<li class="fail">"#), "failures are highlighted");
    assert!(body.contains("070-****-0003"), "the destination, masked");
    assert!(
        !body.contains("3333-0003") && !body.contains(E164),
        "no unmasked number on the page"
    );
    assert!(body.contains("03-5460-0124"), "the sender ID the au phone shows");
    assert!(
        !code.is_empty() && !body.contains(&code),
        "no plain code on the member page"
    );
    assert!(!body.contains("<script"), "no JavaScript");
    assert!(
        !body.contains("src=") && !body.contains("https:") && !body.contains("http:"),
        "nothing fetched from elsewhere"
    );
    assert!(body.contains("name=\"viewport\""), "readable on a phone");

    // English, and the switch between the two.
    let body = server.html(&format!("/console/members/{MEMBER}?lang=en")).await;
    assert!(body.contains(r#"<html lang="en">"#));
    assert!(body.contains(&text(&en["title"])), "the top finding in English: {body}");
    assert!(body.contains(&text(&en["remediation"])));
    assert!(
        body.contains(&escaped(&format!("/console/members/{MEMBER}?lang=ja"))),
        "a switch to Japanese"
    );

    // Search: any spelling of the number, the email, the ID.
    for q in [
        NUMBER,
        "+81 70 3333 0003",
        "07033330003",
        "m-au-reject@example.com",
        MEMBER,
    ] {
        let page = server.page(&format!("/console/search?q={}&lang=en", enc(q))).await;
        assert_eq!(page.status, 303, "search {q}: {}", page.body);
        assert_eq!(
            page.location.as_deref(),
            Some(format!("/console/members/{MEMBER}?lang=en").as_str()),
            "{q}"
        );
    }
    let page = server
        .page(&format!("/console/search?q={}", enc("090-9999-0009")))
        .await;
    assert_eq!(page.status, 303, "a number no member has");
    assert_eq!(
        page.location.as_deref(),
        Some("/console/destinations/+819099990009?lang=ja")
    );
    let body = server.html("/console/destinations/+819099990009?lang=en").await;
    assert!(body.contains("No member has this destination"), "{body}");
    let page = server
        .page(&format!("/console/search?q={}", enc("<b>nobody</b>")))
        .await;
    assert_eq!(page.status, 404);
    assert!(
        page.body.contains("&lt;b&gt;nobody&lt;&#x2f;b&gt;"),
        "the query, escaped: {}",
        page.body
    );
    assert!(!page.body.contains("<b>nobody"), "never unescaped");

    // Unknown things are HTML pages, not JSON errors or panics.
    for path in [
        "/console/members/NOBODY",
        "/console/handsets/090-0000-0000",
        "/console/nowhere?lang=en",
    ] {
        let page = server.page(path).await;
        assert_eq!(page.status, 404, "{path}");
        assert!(
            page.content_type.starts_with("text/html"),
            "{path}: {}",
            page.content_type
        );
        assert!(page.body.contains("</html>"), "{path}: {}", page.body);
    }

    // Home: the search box, the member and the failed message.
    let body = server.html("/").await;
    assert!(body.contains(r#"action="/console/search""#), "{body}");
    assert!(
        body.contains(MEMBER) && body.contains("rejected"),
        "recent members and failures: {body}"
    );

    // The handset as the phone shows it: the verification SMS that did
    // arrive, its sender, and au's own name for the setting that blocks.
    let page = server.page(&format!("/console/members/{MEMBER}/handset")).await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some(format!("/console/handsets/{E164}?lang=ja").as_str())
    );
    let body = server.html(&format!("/console/handsets/{}", enc(E164))).await;
    assert!(body.contains(&code), "the phone holds the delivered text");
    assert!(body.contains("03-5460-0124"));
    assert!(body.contains(r#"<tr class="bad">"#), "the blocking setting is flagged");
    assert!(body.contains("au"));

    let body = server.html("/console/mailboxes/m-au-reject@example.com?lang=en").await;
    assert!(body.contains("Address exists") && body.contains(MEMBER), "{body}");

    // Carriers: both sender displays and settings under their real names.
    let body = server.html("/console/carriers").await;
    assert!(body.contains("22471") && body.contains("03-5460-0124"));
    assert!(
        body.contains(&escaped("電話番号メール拒否・許可")),
        "SoftBank's setting in Japanese"
    );
    let body = server.html("/console/carriers?lang=en").await;
    assert!(body.contains("Reject all"), "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_page_reads_right_in_a_real_browser() {
    let Some(chromium) = browser::chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; CI must install it (apt-get install -y chromium)"
        );
        eprintln!("skipped: chromium not installed (apt-get install -y chromium)");
        return;
    };
    let server = TestServer::start().await;
    let (_, ja, en) = failing_case(&server).await;
    let url = |lang: &str| format!("http://{}/console/members/{MEMBER}?lang={lang}", server.http);

    let dom = browser::dump_dom(&chromium, &url("ja")).await;
    let title = ja["title"].as_str().unwrap_or_default();
    assert!(
        dom.contains(&escaped(title)) || dom.contains(title),
        "the top finding in the DOM: {dom}"
    );
    assert!(dom.contains("REJECTD"), "{dom}");

    let shots = tempfile::tempdir().expect("temp dir");
    let png = shots.path().join("member.png");
    browser::screenshot(&chromium, &url("ja"), &png, 390, 844).await;
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(browser::png_size(&bytes), Some((390, 844)), "a phone-sized PNG");
    assert!(bytes.len() > 20_000, "a screenshot with content, {} bytes", bytes.len());
    // To look at it: OTPGATE_CONSOLE_SCREENSHOTS=dir cargo test --test console
    if let Some(dir) = std::env::var_os("OTPGATE_CONSOLE_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::copy(&png, dir.join("member-ja.png")).expect("keep the screenshot");
        browser::screenshot(&chromium, &url("en"), &dir.join("member-en.png"), 390, 844).await;
    }
    let _ = en;
    server.stop().await;
}

/// A QA team's ESME or mail client holds only the ids the server
/// answered; the agent pastes one into the console's search (or asks the
/// API or the CLI) and lands on the diagnosis of whoever the message went
/// to: the member registered with that number or address, else the
/// destination itself. A long message is found by any part's id; an id
/// naming several destinations (a `submit_multi`'s, a mail's to two
/// recipients) lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_finds_a_message_by_the_id_the_smsc_gave_its_esme() {
    use common::esme::{multi_id, raw_submit_multi, raw_transceiver, sms, Bind, Esme, SENDER};
    const STRANGER: &str = "09022220002";
    let server = TestServer::start().await;
    server.sms_member("M-DOCOMO", "090-1111-0001", "docomo").await;
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    let long = "A long message for the member: ".repeat(8);
    let parts = esme.submit_parts(&sms("09011110001", &long)).await.expect("accepted");
    assert_eq!(parts.len(), 2, "two parts: {parts:?}");
    let to_stranger = esme.send(&sms(STRANGER, "hello")).await;
    let mut raw = raw_transceiver(server.smpp).await;
    let multi = multi_id(&raw_submit_multi(&mut raw, 2, SENDER, &["09011110001", STRANGER], "to two").await);
    server.advance(60).await;
    // The OTP core's own message, by the id its SMSC gave it.
    let (_, core) = server.get("/v1/messages?member_id=M-DOCOMO").await;
    let core_id = core["items"][0]["smsc_message_id"]
        .as_str()
        .expect("an SMSC id")
        .to_string();

    let search = |q: String| {
        let server = &server;
        async move { server.page(&format!("/console/search?q={}&lang=en", enc(&q))).await }
    };
    let body = server.html("/console/members/M-DOCOMO?lang=en").await;
    assert!(
        body.contains(&format!("message_id: {core_id}")),
        "the timeline names the SMSC's id: {body}"
    );
    let (_, report) = server.get("/v1/diagnostics/members/M-DOCOMO?lang=en&format=text").await;
    let report = report.as_str().unwrap_or_default();
    assert!(
        report.contains(&format!("message id {core_id}")),
        "so does the text report: {report}"
    );
    for id in parts.iter().chain([&core_id]) {
        let page = search(format!(" {id} ")).await;
        assert_eq!(page.status, 303, "search {id}: {}", page.body);
        assert_eq!(
            page.location.as_deref(),
            Some("/console/members/M-DOCOMO?lang=en"),
            "{id}"
        );
    }
    let page = search(to_stranger.clone()).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location.as_deref(),
        Some("/console/destinations/+819022220002?lang=en")
    );
    let page = server
        .page(&format!("/console/destinations/{}", enc(&to_stranger)))
        .await;
    assert_eq!(page.status, 200, "the id as a destination: {}", page.body);
    assert!(page.body.contains("090-****-0002"), "the destination it names, masked");

    // One id for two destinations: a link to each.
    let page = search(multi.clone()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("names messages to several destinations"),
        "{}",
        page.body
    );
    for href in [
        "/console/members/M-DOCOMO?lang=en",
        "/console/destinations/+819022220002?lang=en",
    ] {
        assert!(page.body.contains(&escaped(href)), "a link to {href}: {}", page.body);
    }
    assert!(!page.body.contains("2222-0002"), "the number masked in the list");
    let page = server.page(&format!("/console/destinations/{multi}?lang=en")).await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location.as_deref(),
        Some(format!("/console/search?q={multi}&lang=en").as_str())
    );

    // The SMTP server's id from `250 ... queued as`, and the delivery log's own.
    let mut smtp = RawSmtp::connect(server.smtp).await;
    let mail = |to: &[&str]| plain_message("app@qa.example", &to.join(", "), "Your code", "Code: 123456");
    let both = ["m-docomo@example.com", "stranger@example.net"];
    let to_both = smtp.transaction("app@qa.example", &both, &mail(&both)).await;
    let to_both = to_both.queued_id().expect("queued");
    let only = ["Stranger@Example.net"];
    let to_one = smtp.transaction("app@qa.example", &only, &mail(&only)).await;
    let to_one = to_one.queued_id().expect("queued");
    smtp.quit().await;
    let page = search(to_one).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location.as_deref(),
        Some("/console/destinations/stranger@example.net?lang=en")
    );
    let page = search(to_both.clone()).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for href in [
        "/console/members/M-DOCOMO?lang=en",
        "/console/destinations/stranger@example.net?lang=en",
    ] {
        assert!(page.body.contains(&escaped(href)), "a link to {href}: {}", page.body);
    }
    let log_id = core["items"][0]["id"].as_str().expect("a log id").to_string();
    let page = search(log_id).await;
    assert_eq!(page.location.as_deref(), Some("/console/members/M-DOCOMO?lang=en"));

    let page = search("0000999999".into()).await;
    assert_eq!(page.status, 404, "an id the SMSC never gave: {}", page.body);

    // The JSON diagnosis by the id, and a 409 naming both for the multi's.
    let (s, report) = server.get(&format!("/v1/diagnostics/destinations/{}", parts[0])).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["member_id"], "M-DOCOMO");
    let (s, report) = server.get(&format!("/v1/diagnostics/destinations/{to_stranger}")).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["member_id"], Value::Null, "{report}");
    assert_eq!(report["messages"][0]["to"], "+819022220002", "{report}");
    let (s, conflict) = server.get(&format!("/v1/diagnostics/destinations/{multi}")).await;
    assert_eq!(s, 409, "{conflict}");
    let message = conflict["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("M-DOCOMO") && message.contains("+819022220002"),
        "{message}"
    );

    // The CLI asks the same server.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["diagnose", "--message-id", &parts[1], "--json", "--server"])
        .arg(format!("http://{}", server.http))
        .output()
        .expect("otpgate diagnose");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["member_id"], "M-DOCOMO");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["diagnose", "--message-id", &multi, "--server"])
        .arg(format!("http://{}", server.http))
        .output()
        .expect("otpgate diagnose");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("409") && said.contains("+819022220002"), "{said}");
    server.stop().await;
}

/// A 1×1 PNG.
const LOGO_PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// A mail with a text part, an HTML part that tries to run a script and
/// load a remote image and shows an inline logo (`cid:`), and an
/// attachment.
fn html_mail(to: &str) -> Vec<u8> {
    format!(
        "From: Shop <noreply@shop.example>\r\nTo: {to}\r\nSubject: Your shop code\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n\
         --mix\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
         --alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour code is 246801\r\n\
         --alt\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n\
         --rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><body><h1 style=\"color:#c00\">Your code</h1><p id=\"code\">246801</p>\
         <img id=\"logo\" src=\"cid:logo@shop.example\">\
         <a href=\"https://shop.example/login?t=k7Q&amp;u=42\">Sign in</a> <a href=\"javascript:steal()\">x</a>\
         <img src=\"http://tracker.example/open.png\">\
         <script>document.body.innerHTML = 'SCRIPT RAN'</script></body></html>\r\n\
         --rel\r\nContent-Type: image/png\r\nContent-ID: <logo@shop.example>\r\n\
         Content-Disposition: inline; filename=\"logo.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {LOGO_PNG}\r\n--rel--\r\n\
         --alt--\r\n\
         --mix\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         JVBERi0xLjQK\r\n--mix--\r\n"
    )
    .into_bytes()
}

/// QA watching traffic rather than one member: the delivery log lists
/// every message (OTPs and an ESME's alike) by state and channel, each
/// with its events; the mail capture lists every mail, searchable, each
/// with what its recipients' mailboxes did, and its HTML in a frame whose
/// policy runs no script, checked in a real browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_pages_show_every_message_and_every_mail() {
    use common::esme::{sms, Bind, Esme};
    let server = TestServer::start().await;
    let verification = server.sms_member("M-LOG", "090-4444-0004", "docomo").await;
    let code = verification["code"].as_str().expect("code").to_string();
    server
        .handset("09044440005", json!({"carrier": "au", "filters": {"reject_all": true}}))
        .await;
    let esme = Esme::bind(server.smpp, Bind::Transceiver).await;
    esme.send(&sms("09044440005", "Your code is 135799")).await;
    server.advance(120).await;
    let mut smtp = RawSmtp::connect(server.smtp).await;
    let to = ["taro@docomo.ne.jp"];
    let sent = smtp.transaction("noreply@shop.example", &to, &html_mail(to[0])).await;
    let mail_id = sent.queued_id().expect("queued");
    smtp.quit().await;

    // The log: everything, then one state, then one channel.
    let all = server.html("/console/messages?lang=en").await;
    for expected in [
        "SMS → 090-****-0005",
        "SMS → 090-****-0004",
        "Email → t***@docomo.ne.jp",
        "REJECTD",
    ] {
        assert!(all.contains(&escaped(expected)), "{expected} in the log: {all}");
    }
    assert!(
        !all.contains(&code) && !all.contains("135799"),
        "no code in the log: {all}"
    );
    let rejected = server.html("/console/messages?state=rejected&lang=en").await;
    assert!(
        rejected.contains("090-****-0005") && !rejected.contains("090-****-0004"),
        "{rejected}"
    );
    assert!(
        rejected.contains(r#"<option value="rejected" selected>"#),
        "the filter shown: {rejected}"
    );
    let email = server.html("/console/messages?channel=email&lang=en").await;
    assert!(
        email.contains("t***@docomo.ne.jp") && !email.contains("SMS →"),
        "{email}"
    );
    let (_, api) = server.get("/v1/messages?state=rejected").await;
    assert_eq!(api["items"].as_array().map(Vec::len), Some(1), "{api}");
    let (status, api) = server.get("/v1/messages?state=lost").await;
    assert_eq!((status, common::error_code(&api)), (422, "invalid_request"), "{api}");

    // One message, every event, the code masked.
    let (_, found) = server.get("/v1/messages?to=%2B819044440005").await;
    let id = found["items"][0]["id"].as_str().expect("id").to_string();
    let message = server.html(&format!("/console/messages/{id}?lang=en")).await;
    for expected in [
        "smsc_accepted",
        "stat: REJECTD",
        "reason: reject_all",
        "Your code is ******",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert!(!message.contains("135799"), "{message}");
    assert!(
        message.contains(&escaped("/console/handsets/+819044440005?lang=en")),
        "{message}"
    );
    assert_eq!(server.page("/console/messages/m999?lang=en").await.status, 404);

    // The phone's and the mailbox's pages lead to each message's own.
    let (_, verification_log) = server.get("/v1/messages?member_id=M-LOG").await;
    let logged = verification_log["items"][0]["id"].as_str().expect("logged").to_string();
    let phone = server.html("/console/handsets/+819044440004?lang=en").await;
    assert!(
        phone.contains(&escaped(&format!("/console/messages/{logged}?lang=en"))),
        "{phone}"
    );
    let mailbox = server.html("/console/mailboxes/taro@docomo.ne.jp?lang=en").await;
    assert!(
        mailbox.contains(&escaped(&format!("/console/mail/{mail_id}?lang=en"))),
        "{mailbox}"
    );

    // Searches as a browser's form sends them: a space as `+`, a `+` as
    // `%2B` (the number as the member says it, `+81 90 4444 0004`).
    let search = server.page("/console/search?q=%2B81+90+4444+0004&lang=en").await;
    assert_eq!(search.status, 303, "{}", search.body);
    assert_eq!(search.location.as_deref(), Some("/console/members/M-LOG?lang=en"));

    // The mail capture: searchable, and one mail whole.
    let list = server.html("/console/mail?q=shop+code&lang=en").await;
    assert!(list.contains("Your shop code") && list.contains(&mail_id), "{list}");
    // Mailpit's words: a field to look in, an attachment to have.
    for (q, found) in [
        ("has%3Aattachment", 1),
        ("from%3Ashop.example%20subject%3A%22shop%20code%22", 1),
        ("from%3Adocomo", 0),
        ("to%3Adocomo%20246801", 1),
    ] {
        let (_, page) = server.get(&format!("/v1/mail?q={q}")).await;
        assert_eq!(page["items"].as_array().map(Vec::len), Some(found), "{q}: {page}");
    }
    let list = server
        .html("/console/mail?q=has%3Aattachment+from%3Ashop&lang=en")
        .await;
    assert!(list.contains("Your shop code"), "{list}");
    let none = server.html("/console/mail?q=nothing-like-it&lang=en").await;
    assert!(none.contains("No mail.") && !none.contains("Your shop code"), "{none}");
    let mail = server.html(&format!("/console/mail/{mail_id}?lang=en")).await;
    for expected in [
        "delivered to the inbox",
        "Your code is 246801",
        "invoice.pdf",
        "noreply@shop.example",
        &escaped(&format!("/console/mail/{mail_id}/html")),
        &escaped(&format!("/v1/mail/{mail_id}/raw")),
    ] {
        assert!(mail.contains(expected), "{expected}: {mail}");
    }
    assert!(!mail.contains("<script"), "{mail}");
    let html = server.page(&format!("/console/mail/{mail_id}/html")).await;
    assert_eq!(html.status, 200);
    let csp = html.csp.unwrap_or_default();
    assert!(
        csp.starts_with("sandbox;") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(html.body.contains(r#"<p id="code">246801</p>"#), "{}", html.body);
    // The inline logo is in the frame as data, which its policy allows.
    assert!(
        html.body
            .contains(&format!(r#"<img id="logo" src="data:image/png;base64,{LOGO_PNG}">"#)),
        "{}",
        html.body
    );
    assert_eq!(server.page("/console/mail/000000000999/html").await.status, 404);

    // Each part, listed with its type and size, downloads by itself: as
    // an attachment, whatever its type, never shown from this origin.
    let (_, detail) = server.get(&format!("/v1/mail/{mail_id}")).await;
    assert_eq!(
        detail["parts"],
        json!([
            {"index": 0, "name": "logo.png", "content_type": "image/png", "size": 70,
             "content_id": "logo@shop.example", "inline": true},
            {"index": 1, "name": "invoice.pdf", "content_type": "application/pdf", "size": 9, "inline": false},
        ]),
        "{detail}"
    );
    for href in ["/parts/0", "/parts/1"] {
        assert!(
            mail.contains(&escaped(&format!("/v1/mail/{mail_id}{href}"))),
            "{href}: {mail}"
        );
    }
    // The links, for a suite that follows a magic link: the anchors'
    // (entities decoded); only a web link is clickable in the console.
    assert_eq!(
        detail["links"],
        json!(["https://shop.example/login?t=k7Q&u=42", "javascript:steal()"]),
        "{detail}"
    );
    assert!(
        mail.contains(&format!(
            r#"<a href="{}" target="_blank" rel="noopener noreferrer">"#,
            escaped("https://shop.example/login?t=k7Q&u=42")
        )),
        "{mail}"
    );
    assert!(!mail.contains(r#"href="javascript"#), "{mail}");
    let pdf = server.page(&format!("/v1/mail/{mail_id}/parts/1")).await;
    assert_eq!((pdf.status, pdf.content_type.as_str()), (200, "application/pdf"));
    assert_eq!(pdf.bytes, b"%PDF-1.4\n");
    assert_eq!(
        pdf.disposition.as_deref(),
        Some("attachment; filename=\"invoice.pdf\"; filename*=UTF-8''invoice.pdf")
    );
    assert!(pdf.csp.is_some_and(|csp| csp.starts_with("sandbox")));
    let logo = server.page(&format!("/v1/mail/{mail_id}/parts/0")).await;
    assert_eq!((logo.status, logo.bytes.len()), (200, 70));
    assert_eq!(logo.bytes[1..4], *b"PNG");
    let (status, body) = server.get(&format!("/v1/mail/{mail_id}/parts/2")).await;
    assert_eq!((status, common::error_code(&body)), (404, "not_found"), "{body}");
    let (status, body) = server.get(&format!("/v1/mail/{mail_id}/parts/first")).await;
    assert_eq!((status, common::error_code(&body)), (422, "invalid_request"), "{body}");
    let (status, _) = server.get("/v1/mail/000000000999/parts/0").await;
    assert_eq!(status, 404);

    if let Some(chromium) = browser::chromium() {
        // The HTML as a browser shows it: the script does not run.
        let url = format!("http://{}/console/mail/{mail_id}/html", server.http);
        let dom = browser::dump_dom(&chromium, &url).await;
        // Had it run, the body would hold only its words.
        assert!(dom.contains(r#"<p id="code">246801</p>"#), "{dom}");
        let url = format!("http://{}/console/mail/{mail_id}?lang=ja", server.http);
        let dom = browser::dump_dom(&chromium, &url).await;
        assert!(dom.contains("受信トレイに配信") && dom.contains("<iframe"), "{dom}");
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI must install chromium");
    }
    esme.unbind().await;
    server.stop().await;
}

/// "The member says they tried at about 10:15": the delivery log and the
/// mail capture narrowed to a span of time, in the API (RFC 3339) and in
/// the console (a browser's `datetime-local`, read as Japan time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_the_capture_are_narrowed_to_a_span_of_time() {
    let server = TestServer::start().await;
    let mut smtp = RawSmtp::connect(server.smtp).await;
    let to = ["hanako@ezweb.ne.jp"];
    let mut ids = Vec::new();
    for n in 1..=3 {
        let sent = smtp
            .transaction(
                "noreply@shop.example",
                &to,
                &plain_message("noreply@shop.example", to[0], &format!("Hour {n}"), "hello"),
            )
            .await;
        ids.push(sent.queued_id().expect("queued"));
        server.advance(3600).await;
    }
    smtp.quit().await;
    let (_, page) = server.get("/v1/mail").await;
    let at: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .rev()
        .map(|m| m["received_at"].as_str().expect("received_at").to_string())
        .collect();
    assert_eq!(at.len(), 3, "{page}");

    // The API: since included, until not.
    let (_, page) = server
        .get(&format!("/v1/mail?since={}&until={}", enc(&at[1]), enc(&at[2])))
        .await;
    let subjects: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Hour 2"], "{page}");
    let (_, page) = server.get(&format!("/v1/mail?since={}", enc(&at[1]))).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    let (_, log) = server
        .get(&format!("/v1/messages?channel=email&until={}", enc(&at[1])))
        .await;
    let logged: Vec<&str> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["created_at"].as_str().unwrap())
        .collect();
    assert_eq!(logged, [at[0].as_str()], "{log}");
    for bad in ["/v1/mail?since=yesterday", "/v1/messages?until=10:15"] {
        let (status, body) = server.get(bad).await;
        assert_eq!(
            (status, common::error_code(&body)),
            (422, "invalid_request"),
            "{bad}: {body}"
        );
    }

    // The console: times as a browser's form sends them, to the second,
    // in Japan time (the received_at above is +09:00).
    let local = |t: &str| t[..19].to_string();
    let list = server
        .html(&format!(
            "/console/mail?since={}&until={}&lang=en",
            local(&at[1]),
            local(&at[2])
        ))
        .await;
    assert!(
        list.contains("Hour 2") && !list.contains("Hour 1") && !list.contains("Hour 3"),
        "{list}"
    );
    assert!(
        list.contains(&format!(r#"name="since" value="{}""#, local(&at[1]))),
        "the form keeps what was asked: {list}"
    );
    let log = server
        .html(&format!(
            "/console/messages?channel=email&since={}&lang=en",
            local(&at[2])
        ))
        .await;
    assert_eq!(log.matches("Email → ").count(), 1, "{log}");
    // A time the console cannot read is said so, and filters nothing.
    let odd = server.html("/console/mail?since=about+ten&lang=en").await;
    assert!(
        odd.contains("Give times as") && odd.contains("Hour 1") && odd.contains("aria-invalid"),
        "{odd}"
    );
    server.stop().await;
}

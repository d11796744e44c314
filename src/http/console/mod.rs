//! The support console: server-rendered HTML for an agent on a phone call with
//! a member who says "I haven't received my code". Search by member ID, phone
//! or email; the member's diagnosis (the top finding first, big) with the
//! timeline below; the simulated handset and mailbox as the member sees them;
//! the carriers and their settings; and the traffic pages (`traffic.rs`):
//! the delivery log and the mail capture. Japanese or English
//! (`?lang=ja|en`, Japanese by default), readable on a phone screen.
//!
//! It asks the same [`Desk`](crate::desk::Desk) as the JSON API and
//! `otpgate diagnose`, so all three tell one story. It must never use
//! JavaScript or fetch anything from elsewhere (its answers carry a
//! Content-Security-Policy that forbids both), and it must never show a plain
//! code anywhere but the handset, mailbox and captured-mail pages, which
//! show what the simulated phone, mailbox or mail server holds, as the
//! member's own screen would.
//! The templates live in `templates/` and are compiled into the binary.

mod traffic;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use bytes::Bytes;
use chrono::TimeZone;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, LOCATION};
use hyper::{Response, StatusCode};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{json, Map, Value};

use super::{text_response, ApiResult, Ctx, Req};

use crate::carrier::{Carrier, CarrierKind, HandsetState, Setting};
use crate::clock::{self, Millis};
use crate::delivery::log::{Event, Message, Query, State};
use crate::desk::Subject;
use crate::member::{self, Channel, Member};
use crate::service::ServiceError;
use crate::smtp::{Folder, MailError};

/// Inline styles only: scripts, images from elsewhere, frames but the
/// console's own (a mail's HTML, under a policy of its own) and form posts
/// to other sites are all refused by the browser.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; \
                   frame-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// How many recent members and failed messages the home page lists.
const RECENT: usize = 10;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Ja,
    En,
}

impl Lang {
    /// `?lang=en` gives English; anything else Japanese, the console's default.
    fn of(query: Option<&str>) -> Lang {
        match query {
            Some(l) if l.eq_ignore_ascii_case("en") => Lang::En,
            _ => Lang::Ja,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    fn other(self) -> Lang {
        match self {
            Lang::Ja => Lang::En,
            Lang::En => Lang::Ja,
        }
    }

    fn pick<S: Into<String>>(self, ja: S, en: S) -> String {
        match self {
            Lang::Ja => ja.into(),
            Lang::En => en.into(),
        }
    }
}

/// The fixed words of the pages, `t.key` in the templates: key, Japanese,
/// English.
const WORDS: &[(&str, &str, &str)] = &[
    ("app", "otpgate サポートコンソール", "otpgate support console"),
    ("home", "ホーム", "Home"),
    ("carriers", "携帯電話会社", "Carriers"),
    ("carrier", "携帯電話会社", "Carrier"),
    (
        "search_label",
        "会員ID・電話番号・メールアドレス・メッセージIDで検索",
        "Search by member ID, phone number, email or message ID",
    ),
    (
        "search_hint",
        "電話番号はどの書き方でも検索できます（090-1234-5678、+81 90 1234 5678）。メッセージIDは submit_sm_resp・配信通知の id、またはメール送信時の「queued as」の後の id です。",
        "Phone numbers in any spelling (090-1234-5678, +81 90 1234 5678). A message ID is a submit_sm_resp's or a receipt's id, or the id after an SMTP reply's \"queued as\".",
    ),
    ("search", "検索", "Search"),
    (
        "not_found_for",
        "該当する会員・宛先・メッセージが見つかりません：",
        "No member, destination or message found for:",
    ),
    (
        "enter_query",
        "会員ID、電話番号、メールアドレス、またはメッセージIDを入力してください。",
        "Enter a member ID, a phone number, an email address or a message ID.",
    ),
    (
        "several_for",
        "このメッセージIDは複数の宛先へのメッセージです：",
        "This message ID names messages to several destinations:",
    ),
    ("recent_members", "最近登録された会員", "Recent members"),
    ("recent_failures", "最近の配信失敗", "Recent failed messages"),
    ("none", "なし", "None"),
    ("member", "会員", "member"),
    ("destination", "宛先", "destination"),
    ("page", "ページ", "page"),
    ("handset_word", "携帯電話", "handset"),
    ("mailbox_word", "メールボックス", "mailbox"),
    (
        "no_member_for_destination",
        "この宛先を登録している会員はいません。配信記録と端末の状態から診断しています。",
        "No member has this destination. The diagnosis below comes from the delivery log and the device's state.",
    ),
    ("top_finding", "最も可能性の高い原因", "Most likely cause"),
    ("remediation", "お客様へのご案内", "Tell the member"),
    ("other_findings", "その他の所見", "Other findings"),
    ("evidence", "根拠", "Evidence"),
    ("at_a_glance", "登録と送信元", "Registration and sender"),
    ("timeline", "経緯（古い順）", "Timeline (oldest first)"),
    ("no_events", "記録はまだありません。", "Nothing recorded yet."),
    ("failed", "失敗", "Failed"),
    ("open_handset", "携帯電話の画面を見る", "Open the handset"),
    ("open_mailbox", "メールボックスを見る", "Open the mailbox"),
    ("api_json", "診断 JSON（API）", "Diagnosis as JSON (API)"),
    ("generated_at", "診断時刻", "Diagnosed at"),
    ("handset", "携帯電話（シミュレーター）", "Handset (simulated)"),
    ("sender_shown", "OTPのSMSの送信元表示", "OTP SMS shows as from"),
    ("state", "状態", "State"),
    ("inbox", "SMS受信一覧（新しい順）", "SMS inbox (newest first)"),
    (
        "inbox_note",
        "端末に表示されるとおりの送信元と本文です。",
        "Sender ID and text exactly as the phone shows them.",
    ),
    ("empty_inbox", "受信したSMSはありません。", "No SMS received."),
    ("mailbox", "メールボックス（シミュレーター）", "Mailbox (simulated)"),
    ("mail_messages", "受信メール（新しい順）", "Messages (newest first)"),
    ("empty_mailbox", "メールはありません。", "No messages."),
    ("show_text", "本文を表示", "Show the text"),
    (
        "members_here",
        "この宛先を登録している会員",
        "Members with this destination",
    ),
    (
        "carriers_intro",
        "各社の送信元表示、SMSの有効期間と再送間隔、受信設定の名称です。",
        "How each carrier shows the sender, how long it keeps retrying an SMS, and what its settings are called.",
    ),
    ("sender_number", "送信元番号", "Sender number"),
    ("kind", "種別", "Kind"),
    ("network", "回線", "Network"),
    ("portal", "設定する場所", "Where members change settings"),
    ("validity", "SMSの有効期間", "SMS validity"),
    ("retry", "再送間隔", "Retry schedule"),
    ("delay", "配信にかかる時間", "Delivery time"),
    ("mail_domains", "キャリアメールのドメイン", "Carrier mail domains"),
    ("settings", "受信設定の名称", "Settings, as the carrier names them"),
    ("harmless", "影響なし", "does not block"),
    ("back_home", "ホームへ戻る", "Back to the console home"),
    ("log", "配信記録", "Delivery log"),
    ("whole_log", "すべての配信記録を見る", "The whole delivery log"),
    (
        "log_intro",
        "すべてのメッセージ（新しい順）。OTPもお客様のアプリがSMPP・SMTPで送ったものも含みます。",
        "Every message, newest first: OTPs and what your own apps sent over SMPP and SMTP.",
    ),
    ("all_states", "すべての状態", "Every state"),
    ("all_channels", "SMSとメール", "SMS and email"),
    ("channel", "経路", "Channel"),
    ("show", "表示", "Show"),
    ("older", "さらに古いもの", "Older"),
    ("no_messages", "該当するメッセージはありません。", "No messages."),
    ("message_word", "メッセージ", "message"),
    ("message", "メッセージ", "Message"),
    ("events", "イベント（古い順）", "Events (oldest first)"),
    ("diagnosis", "診断を見る", "Open the diagnosis"),
    ("to", "宛先", "To"),
    ("from", "送信元", "From"),
    ("origin", "送信したもの", "Sent by"),
    ("otp", "OTP", "OTP"),
    ("smsc_message_id", "SMSCのメッセージID", "SMSC message ID"),
    ("text_masked", "本文（コードは伏せ字）", "Text (codes masked)"),
    ("mail", "メール", "Mail"),
    (
        "mail_intro",
        "SMTPサーバーが受け取ったすべてのメール（新しい順）。件名・送信元・宛先・本文で検索できます。",
        "Every mail the SMTP server took, newest first. Search by subject, sender, recipient or text.",
    ),
    ("mail_search", "メールを検索", "Search the mail"),
    (
        "mail_search_hint",
        "語はすべて含むものを探します。from: to: subject: で場所を指定、has:attachment で添付ありに絞れます。",
        "Finds mail with every word; from:, to: and subject: look in one place, has:attachment keeps mail with files.",
    ),
    ("no_mail", "メールはありません。", "No mail."),
    ("mail_word", "メール", "mail"),
    ("subject", "件名", "Subject"),
    ("received", "受信時刻", "Received"),
    ("size", "サイズ（バイト）", "Size (bytes)"),
    ("envelope", "エンベロープ", "Envelope"),
    ("recipients", "宛先ごとの結果", "What each recipient's mailbox did"),
    ("headers", "ヘッダー", "Headers"),
    ("text", "本文（テキスト）", "Text"),
    ("html", "本文（HTML）", "HTML"),
    (
        "html_note",
        "スクリプトは実行せず、外部の画像も読み込まずに表示しています。",
        "Shown without running scripts or loading remote images.",
    ),
    ("attachments", "添付ファイル", "Attachments"),
    ("links", "リンク", "Links"),
    (
        "smsc_intro",
        "いまSMSCにbindしているESMEと、アカウントごとの受信待ちの配信通知です。",
        "The ESMEs bound to the SMSC now, and each account's receipts waiting for a bind.",
    ),
    ("smsc_off", "SMPPは無効です（--smpp off）。", "SMPP is off (--smpp off)."),
    ("accounts", "アカウント", "Accounts"),
    ("binds_now", "bind中", "Binds now"),
    ("receipts_waiting", "待ちの通知", "Receipts waiting"),
    ("core_account", "OTPコア", "the OTP core"),
    (
        "receipts_stranded",
        "配信通知が届け先を待っています。配信通知とMOはreceiverかtransceiverのbindにだけ届きます。transmitterだけでbindしているアプリには届きません。",
        "receipts wait for a bind that can take them. Receipts and mobile-originated messages go only to a receiver or transceiver bind; an application bound as a transmitter alone never gets them.",
    ),
    ("submits_taken", "受け付けた送信", "submits taken"),
    ("deliver_sm_answered", "応答したdeliver_sm", "deliver_sm answered"),
    ("no_binds", "bindしているESMEはありません。", "No ESME is bound."),
    ("since", "この時刻から", "From"),
    ("until", "この時刻まで", "Until"),
    ("bad_time", "時刻は 2026-11-28T10:15 の形で指定してください（日本時間）。", "Give times as 2026-11-28T10:15 (Japan time)."),
    ("inline_part", "インライン", "inline"),
    ("raw_source", "受信したままのソース（.eml）", "Source as received (.eml)"),
    ("mail_json", "メール JSON（API）", "Mail as JSON (API)"),
    ("message_json", "メッセージ JSON（API）", "Message as JSON (API)"),
    ("peer", "接続元", "Client address"),
    (
        "not_parsed",
        "MIME構造を解析できませんでした。ソースは完全に保存されています。",
        "The MIME structure could not be parsed; the source is kept whole.",
    ),
];

fn word(lang: Lang, key: &str) -> String {
    WORDS
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, ja, en)| lang.pick(*ja, *en))
        .unwrap_or_else(|| key.to_string())
}

/// The templates, compiled into the binary so it runs from anywhere.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("home.html", include_str!("../templates/home.html")),
    ("search_form.html", include_str!("../templates/search_form.html")),
    ("smsc.html", include_str!("../templates/smsc.html")),
    ("span.html", include_str!("../templates/span.html")),
    ("report.html", include_str!("../templates/report.html")),
    ("handset.html", include_str!("../templates/handset.html")),
    ("mailbox.html", include_str!("../templates/mailbox.html")),
    ("carriers.html", include_str!("../templates/carriers.html")),
    ("log.html", include_str!("../templates/log.html")),
    ("message.html", include_str!("../templates/message.html")),
    ("mail_list.html", include_str!("../templates/mail_list.html")),
    ("mail.html", include_str!("../templates/mail.html")),
    ("problem.html", include_str!("../templates/problem.html")),
];

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A misspelt name fails the render (and the tests) instead of
        // printing nothing; `{% if x %}` on a missing field stays allowed.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_filter("when", |at: i64| when(at, "%Y-%m-%d %H:%M:%S"));
        env.add_filter("short_when", |at: i64| when(at, "%m/%d %H:%M:%S"));
        for (name, source) in TEMPLATES {
            if let Err(e) = env.add_template(name, source) {
                // The templates are part of the binary and covered by the
                // tests; a broken one shows as a 500 on its page.
                tracing::error!(template = name, error = %e, "console template does not compile");
            }
        }
        env
    })
}

/// A time in Japan time, as the agent and the member read it.
fn when(at: Millis, format: &str) -> String {
    match clock::jst().timestamp_millis_opt(at).single() {
        Some(t) => t.format(format).to_string(),
        None => clock::rfc3339(at),
    }
}

/// What a page handler answers.
enum Answer {
    Html(StatusCode, String),
    Redirect(String),
}

/// Why a page could not be shown.
enum Problem {
    /// What was not found, in the page language.
    NotFound(String),
    /// Logged; the agent gets a generic page.
    Internal(String),
}

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Problem {
        match e {
            ServiceError::NotFound(what) => Problem::NotFound(what.to_string()),
            other => Problem::Internal(other.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for Problem {
    fn from(e: crate::store::StoreError) -> Problem {
        Problem::Internal(e.to_string())
    }
}

type PageResult = Result<Answer, Problem>;

/// Where a member's codes land, as simulated.
#[derive(Clone, Copy)]
enum Device {
    Handset,
    Mailbox,
}

/// Answers `GET /` and `GET /console/...`: always an HTML page or a
/// redirect; an unknown member is a 404 page, not a JSON error.
pub fn route(ctx: &Ctx, req: &Req) -> ApiResult {
    // The console's queries come from its own forms and links.
    let req = &req.as_form();
    let page = Page {
        ctx,
        req,
        lang: Lang::of(req.query("lang")),
    };
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let answer = match segs.as_slice() {
        [] | ["console"] => page.home(StatusCode::OK, None),
        ["console", "search"] => page.search(),
        ["console", "members", id] => page.member(id),
        ["console", "members", id, "handset"] => page.members_device(id, Device::Handset),
        ["console", "members", id, "mailbox"] => page.members_device(id, Device::Mailbox),
        ["console", "destinations", destination] => page.destination(destination),
        ["console", "handsets", number] => page.handset(number),
        ["console", "mailboxes", address] => page.mailbox(address),
        ["console", "carriers"] => page.carriers(),
        ["console", "smsc"] => page.smsc(),
        ["console", "messages"] => page.log(),
        ["console", "messages", id] => page.log_message(id),
        ["console", "mail"] => page.mail_list(),
        ["console", "mail", id] => page.mail(id),
        ["console", "mail", id, "html"] => return Ok(traffic::mail_html(ctx, id)),
        _ => Err(Problem::NotFound(word(page.lang, "page"))),
    };
    Ok(match answer.unwrap_or_else(|p| page.problem(p)) {
        Answer::Html(status, body) => html_response(status, body),
        Answer::Redirect(to) => redirect(&to),
    })
}

fn html_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    html_under(status, body, CSP)
}

/// An HTML answer under the security policy `csp`, never cached, sending
/// no referrer.
fn html_under(status: StatusCode, body: String, csp: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text_response(status, "text/html; charset=utf-8", body);
    let headers = resp.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(csp));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

/// A 303 to a console page; [`Page::href`] builds targets in plain ASCII.
fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut resp = html_response(StatusCode::SEE_OTHER, String::new());
    match HeaderValue::from_str(to) {
        Ok(v) => {
            resp.headers_mut().insert(LOCATION, v);
        }
        Err(_) => *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    resp
}

/// Percent-encodes one path segment or query value, keeping what reads well
/// in an address bar (`+81...`, `name@example.jp`).
fn enc(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'+' | b'@' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Percent-encodes a query value for the console's own links, which it
/// reads as a form's (`+` a space): a `+` is written `%2B`.
fn enc_value(value: &str) -> String {
    enc(value).replace('+', "%2B")
}

/// A phone number or an address, masked as the desk shows destinations.
fn masked(destination: &str) -> String {
    if destination.contains('@') {
        member::mask_email(destination)
    } else {
        member::mask_number(destination)
    }
}

fn ms_to_s(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// An event's protocol detail as name and value pairs: the SMSC's message
/// id (what the QA team's ESME was given, and what the search takes), SMPP
/// `stat`, `err`, `network_error_code` and `command_status`, the SMTP
/// reply, and the model's reason and attempt number.
fn codes(e: &Event) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut push = |name: &'static str, value: Option<String>| {
        if let Some(v) = value {
            out.push((name, v));
        }
    };
    push("message_id", e.smsc_message_id.clone());
    push("stat", e.stat.clone());
    push("err", e.err.clone());
    push("network_error_code", e.network_error_code.clone());
    push("command_status", e.command_status.clone());
    push(
        "SMTP",
        e.smtp_code.map(|code| {
            let reply = e.smtp_reply.as_deref().unwrap_or("");
            // Replies are kept with their code or without it.
            if reply.starts_with(&code.to_string()) {
                reply.to_string()
            } else {
                format!("{code} {reply}").trim().to_string()
            }
        }),
    );
    push("reason", e.reason.clone());
    push("attempt", e.attempt.map(|a| a.to_string()));
    out
}

/// The protocol detail of a message's latest event that has any, on one
/// line.
fn last_codes(m: &Message) -> Option<String> {
    let last = m.events.iter().rev().find(|e| !codes(e).is_empty())?;
    Some(
        codes(last)
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// One request's rendering context.
struct Page<'a> {
    ctx: &'a Ctx,
    req: &'a Req,
    lang: Lang,
}

impl Page<'_> {
    /// A console URL in the page language.
    fn href(&self, segments: &[&str]) -> String {
        href_in(segments, self.lang)
    }

    /// This page in the other language, its other query parameters kept.
    fn switch_href(&self) -> String {
        let segments: Vec<&str> = self.req.segments.iter().map(String::as_str).collect();
        let mut href = href_in(&segments, self.lang.other());
        for (key, value) in &self.req.query {
            if key != "lang" {
                href.push_str(&format!("&{}={}", enc_value(key), enc_value(value)));
            }
        }
        href
    }

    fn words(&self) -> Value {
        let map: Map<String, Value> = WORDS
            .iter()
            .map(|(key, ja, en)| (key.to_string(), json!(self.lang.pick(*ja, *en))))
            .collect();
        Value::Object(map)
    }

    /// Renders `template` with what every page has: the words, the language
    /// switch and the navigation.
    fn render(&self, template: &str, status: StatusCode, title: &str, mut data: Value) -> PageResult {
        if let Some(obj) = data.as_object_mut() {
            obj.insert("t".into(), self.words());
            obj.insert("lang".into(), json!(self.lang.code()));
            obj.insert("title".into(), json!(title));
            obj.insert(
                "switch".into(),
                json!({
                    "href": self.switch_href(),
                    "lang": self.lang.other().code(),
                    "label": self.lang.pick("English", "日本語"),
                }),
            );
            obj.insert("home_href".into(), json!(self.href(&[])));
            obj.insert("carriers_href".into(), json!(self.href(&["console", "carriers"])));
            obj.insert("smsc_href".into(), json!(self.href(&["console", "smsc"])));
            obj.insert("log_href".into(), json!(self.href(&["console", "messages"])));
            obj.insert("mail_href".into(), json!(self.href(&["console", "mail"])));
        }
        let body = templates()
            .get_template(template)
            .and_then(|t| t.render(&data))
            .map_err(|e| Problem::Internal(format!("rendering {template}: {e:#}")))?;
        Ok(Answer::Html(status, body))
    }

    fn problem(&self, problem: Problem) -> Answer {
        let l = self.lang;
        let (status, heading, message) = match problem {
            Problem::NotFound(what) => (
                StatusCode::NOT_FOUND,
                l.pick("見つかりません", "Not found"),
                l.pick(format!("該当する{what}が見つかりません。"), format!("No such {what}.")),
            ),
            Problem::Internal(cause) => {
                tracing::error!(error = %cause, "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    l.pick("エラー", "Error"),
                    l.pick(
                        "内部エラーが発生しました。サーバーのログを確認してください。",
                        "Internal error; see the server log.",
                    ),
                )
            }
        };
        let data = json!({"heading": heading, "message": message, "q": ""});
        match self.render("problem.html", status, &heading, data) {
            Ok(answer) => answer,
            // The layout itself failed: a bare page still says what happened.
            Err(_) => Answer::Html(status, format!("<!doctype html><title>{status}</title><p>{status}</p>")),
        }
    }

    // --- home and search -----------------------------------------------------

    /// The search box, recent members and recent failed messages; `notice`
    /// says why a search found nothing.
    fn home(&self, status: StatusCode, notice: Option<Value>) -> PageResult {
        let ctx = self.ctx;
        let mut members = ctx.service.all_members()?;
        members.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        let members: Vec<Value> = members.iter().take(RECENT).map(|m| self.member_row(m)).collect();
        let (recent, _) = ctx.log.query(&Query {
            limit: 500,
            ..Query::default()
        })?;
        let failures: Vec<Value> = recent
            .iter()
            .filter(|m| m.state.is_failure())
            .take(RECENT)
            .map(|m| self.failure_row(m))
            .collect();
        let data = json!({
            "notice": notice,
            "q": self.req.query("q").unwrap_or(""),
            "members": members,
            "failures": failures,
        });
        self.render("home.html", status, &word(self.lang, "home"), data)
    }

    fn member_row(&self, m: &Member) -> Value {
        let carrier = m
            .phone
            .as_ref()
            .and_then(|p| self.ctx.desk.handset(&p.number).ok().flatten())
            .and_then(|h| self.ctx.world.carriers.get(&h.carrier))
            .map(|c| c.name(self.lang.code()).to_string());
        json!({
            "id": m.id,
            "href": self.href(&["console", "members", &m.id]),
            "phone": m.phone.as_ref().map(|p| member::mask_number(&p.number)),
            "email": m.email.as_deref().map(member::mask_email),
            "notification": m.notification.map(|c| self.channel_words(c)),
            "carrier": carrier,
        })
    }

    fn failure_row(&self, m: &Message) -> Value {
        json!({
            "href": self.diagnosis_href(m),
            "at": m.updated_at,
            "channel": self.channel_words(m.channel),
            "to": masked(&m.to),
            "member_id": m.member_id,
            "state": self.state_words(m.state),
            "codes": last_codes(m),
        })
    }

    /// The diagnosis a message belongs to: its member's, else its
    /// destination's.
    fn diagnosis_href(&self, m: &Message) -> String {
        match &m.member_id {
            Some(id) => self.href(&["console", "members", id]),
            None => self.href(&["console", "destinations", &m.to]),
        }
    }

    /// `拒否（rejected）` / `rejected`: the agent's words and the log's.
    fn state_words(&self, state: State) -> String {
        let ja = match state {
            State::Queued => "受付",
            State::Submitted => "送信済み",
            State::Enroute => "配信中",
            State::Delivered => "配信済み",
            State::Failed => "配信失敗",
            State::Expired => "期限切れ",
            State::Rejected => "拒否",
        };
        self.lang
            .pick(format!("{ja}（{}）", state.as_str()), state.as_str().to_string())
    }

    fn channel_words(&self, channel: Channel) -> String {
        match channel {
            Channel::Sms => "SMS".to_string(),
            Channel::Email => self.lang.pick("メール", "Email"),
        }
    }

    /// `?q=`: a member goes to their page, a destination no member has to
    /// its own page (a message id to its member's or destination's), an id
    /// naming several destinations home with a link to each, anything else
    /// home with a notice.
    fn search(&self) -> PageResult {
        let Some(q) = self.req.query("q").map(str::trim).filter(|q| !q.is_empty()) else {
            return self.home(
                StatusCode::OK,
                Some(json!({"kind": "hint", "text": word(self.lang, "enter_query")})),
            );
        };
        match self.ctx.desk.lookup_all(q) {
            Ok(found) if found.len() == 1 => Ok(Answer::Redirect(self.subject_href(&found[0]))),
            Ok(found) => {
                let links: Vec<Value> = found
                    .iter()
                    .map(|s| {
                        let label = match s {
                            Subject::Member(m) => m.id.clone(),
                            Subject::Destination(d) => masked(d),
                        };
                        json!({"href": self.subject_href(s), "label": label})
                    })
                    .collect();
                let text = format!("{} {q}", word(self.lang, "several_for"));
                self.home(
                    StatusCode::OK,
                    Some(json!({"kind": "several", "text": text, "links": links})),
                )
            }
            Err(ServiceError::NotFound(_) | ServiceError::Member(_)) => self.home(
                StatusCode::NOT_FOUND,
                Some(json!({"kind": "missing", "text": format!("{} {q}", word(self.lang, "not_found_for"))})),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// The page of a member or of a destination no member has.
    fn subject_href(&self, subject: &Subject) -> String {
        match subject {
            Subject::Member(m) => self.href(&["console", "members", &m.id]),
            Subject::Destination(d) => self.href(&["console", "destinations", d]),
        }
    }

    // --- the diagnosis -------------------------------------------------------

    fn member(&self, id: &str) -> PageResult {
        let ctx = self.ctx;
        let member = ctx.service.member(id).map_err(|e| self.not_found_as(e, "member"))?;
        let dossier = ctx.desk.dossier(&Subject::Member(member.clone()))?;
        let report = ctx.desk.diagnose(&dossier, Some(self.lang.code()), ctx.clock.now());
        let messages = dossier.messages;
        let mut links = Vec::new();
        // Through the member, so this page never holds an unmasked number.
        if let Some(phone) = &member.phone {
            links.push(self.link(
                "open_handset",
                &["console", "members", &member.id, "handset"],
                &phone.number,
            ));
        }
        if let Some(email) = &member.email {
            links.push(self.link("open_mailbox", &["console", "members", &member.id, "mailbox"], email));
        }
        links.push(json!({
            "href": format!("/v1/diagnostics/members/{}?lang={}", enc(&member.id), self.lang.code()),
            "label": word(self.lang, "api_json"),
            "detail": "",
        }));
        let data = json!({
            "heading": self.lang.pick(format!("会員 {}", member.id), format!("Member {}", member.id)),
            "subject_note": Value::Null,
            "report": self.report_view(&report, &messages, None)?,
            "links": links,
        });
        self.render("report.html", StatusCode::OK, &member.id, data)
    }

    /// The member's handset or mailbox page, by redirect.
    fn members_device(&self, id: &str, device: Device) -> PageResult {
        let member = self
            .ctx
            .service
            .member(id)
            .map_err(|e| self.not_found_as(e, "member"))?;
        let target = match device {
            Device::Handset => member.phone.map(|p| self.href(&["console", "handsets", &p.number])),
            Device::Mailbox => member.email.map(|e| self.href(&["console", "mailboxes", &e])),
        };
        let what = match device {
            Device::Handset => "handset_word",
            Device::Mailbox => "mailbox_word",
        };
        target
            .map(Answer::Redirect)
            .ok_or_else(|| Problem::NotFound(word(self.lang, what)))
    }

    fn destination(&self, destination: &str) -> PageResult {
        let ctx = self.ctx;
        let found = ctx
            .desk
            .lookup_all(destination)
            .map_err(|e| self.not_found_as(e, "destination"))?;
        let d = match found.as_slice() {
            [Subject::Destination(d)] => d.clone(),
            [member] => return Ok(Answer::Redirect(self.subject_href(member))),
            // A message id naming several: the search page lists them.
            _ => {
                return Ok(Answer::Redirect(format!(
                    "/console/search?q={}&lang={}",
                    enc_value(destination),
                    self.lang.code()
                )))
            }
        };
        let dossier = ctx.desk.dossier(&Subject::Destination(d.clone()))?;
        let report = ctx.desk.diagnose(&dossier, Some(self.lang.code()), ctx.clock.now());
        let messages = dossier.messages;
        let link = if d.contains('@') {
            self.link("open_mailbox", &["console", "mailboxes", &d], &d)
        } else {
            self.link("open_handset", &["console", "handsets", &d], &d)
        };
        let heading = self
            .lang
            .pick(format!("宛先 {}", masked(&d)), format!("Destination {}", masked(&d)));
        let data = json!({
            "heading": heading,
            "subject_note": word(self.lang, "no_member_for_destination"),
            "report": self.report_view(&report, &messages, Some(&d))?,
            "links": [link],
        });
        self.render("report.html", StatusCode::OK, &masked(&d), data)
    }

    /// A link to a handset or mailbox page, labelled with the destination
    /// masked.
    fn link(&self, label: &str, segments: &[&str], destination: &str) -> Value {
        json!({"href": self.href(segments), "label": word(self.lang, label), "detail": masked(destination)})
    }

    /// A lookup that found nothing becomes a 404 page naming `what`.
    fn not_found_as(&self, e: ServiceError, what: &str) -> Problem {
        match e {
            ServiceError::NotFound(_) | ServiceError::Member(_) => Problem::NotFound(word(self.lang, what)),
            other => other.into(),
        }
    }

    /// The report as the template reads it: the report's own JSON plus words
    /// for the severities, the registration as lines to read out, and each
    /// timeline line's protocol codes from its delivery-log event.
    /// `destination` is the phone or address of a report with no member.
    fn report_view(
        &self,
        report: &crate::diagnose::Report,
        messages: &[Message],
        destination: Option<&str>,
    ) -> Result<Value, Problem> {
        let mut view = serde_json::to_value(report).map_err(|e| Problem::Internal(e.to_string()))?;
        if let Some(findings) = view.get_mut("findings").and_then(Value::as_array_mut) {
            for f in findings {
                let severity = f.get("severity").and_then(Value::as_str).unwrap_or("info");
                f["severity_label"] = json!(self.severity_words(severity));
            }
        }
        let by_id: HashMap<&str, &Message> = messages.iter().map(|m| (m.id.as_str(), m)).collect();
        // Events of one message with the same kind and time match in order,
        // so each line gets its own codes.
        let mut used: HashSet<(&str, usize)> = HashSet::new();
        if let Some(timeline) = view.get_mut("timeline").and_then(Value::as_array_mut) {
            for entry in timeline {
                let subject = entry.get("subject").and_then(Value::as_str).unwrap_or("");
                let kind = entry.get("kind").and_then(Value::as_str).unwrap_or("");
                let at = entry.get("at").and_then(Value::as_i64).unwrap_or(0);
                let mut detail = Vec::new();
                let mut channel = Value::Null;
                if let Some(msg) = by_id.get(subject) {
                    channel = json!(self.channel_words(msg.channel));
                    let found = msg
                        .events
                        .iter()
                        .enumerate()
                        .find(|(i, e)| e.at == at && e.kind == kind && !used.contains(&(msg.id.as_str(), *i)));
                    if let Some((i, event)) = found {
                        used.insert((msg.id.as_str(), i));
                        detail = codes(event)
                            .into_iter()
                            .map(|(name, value)| json!({"name": name, "value": value}))
                            .collect();
                    }
                }
                entry["codes"] = json!(detail);
                entry["channel"] = channel;
            }
        }
        let glance = self.glance(view.get("registration").unwrap_or(&Value::Null), destination);
        view["glance"] = json!(glance);
        Ok(view)
    }

    /// The registration as lines an agent reads out first: where the codes
    /// go (masked), the sender the phone shows, the carrier.
    fn glance(&self, r: &Value, destination: Option<&str>) -> Vec<Value> {
        let l = self.lang;
        let s = |key: &str| r.get(key).and_then(Value::as_str).map(str::to_string);
        let dash = || "-".to_string();
        let line = |label: String, value: String, big: bool| json!({"label": label, "value": value, "big": big});
        let notification = match s("destination").as_deref() {
            _ if destination.is_some() => destination.map(masked).unwrap_or_default(),
            Some("sms") => format!("SMS → {}", s("phone").unwrap_or_else(dash)),
            Some("email") => format!("{} → {}", l.pick("メール", "Email"), s("email").unwrap_or_else(dash)),
            _ => l.pick("未設定", "not set"),
        };
        // The sender the member must look for stands out for the channel in use.
        let by_email = s("destination").as_deref() == Some("email");
        let sms_sender = s("sms_sender").map(|v| line(l.pick("SMSの送信元表示", "SMS shows as from"), v, !by_email));
        let email_sender = s("email_sender").map(|v| line(l.pick("メールの送信元", "Emails come from"), v, by_email));
        let (first, second) = if by_email {
            (email_sender, sms_sender)
        } else {
            (sms_sender, email_sender)
        };
        let mut lines = vec![line(l.pick("通知先", "Codes go to"), notification, true)];
        lines.extend(first);
        lines.push(line(
            l.pick("携帯電話会社", "Carrier"),
            s("carrier").unwrap_or_else(dash),
            false,
        ));
        let phone = match (s("phone"), r.get("phone_verified").and_then(Value::as_bool)) {
            (Some(p), Some(true)) => l.pick(format!("{p}（認証済み）"), format!("{p} (verified)")),
            (Some(p), Some(false)) => l.pick(format!("{p}（未認証）"), format!("{p} (not verified)")),
            (Some(p), None) => p,
            (None, _) => dash(),
        };
        lines.push(line(l.pick("携帯電話番号", "Phone"), phone, false));
        lines.push(line(
            l.pick("メールアドレス", "Email"),
            s("email").unwrap_or_else(dash),
            false,
        ));
        lines.extend(second);
        let locale = format!(
            "{} / {}",
            s("locale").unwrap_or_else(dash),
            s("residence").unwrap_or_else(dash)
        );
        lines.push(line(l.pick("言語 / 居住国", "Language / residence"), locale, false));
        lines
    }

    fn severity_words(&self, severity: &str) -> String {
        match severity {
            "error" => self.lang.pick("エラー", "Error"),
            "warning" => self.lang.pick("注意", "Warning"),
            _ => self.lang.pick("情報", "Info"),
        }
    }

    // --- the simulated world -------------------------------------------------

    fn handset(&self, number: &str) -> PageResult {
        let ctx = self.ctx;
        let missing = || Problem::NotFound(word(self.lang, "handset_word"));
        let number = member::parse_mobile(number).map_err(|_| missing())?;
        let state = ctx.desk.handset(&number)?.ok_or_else(missing)?;
        let carrier = ctx.world.carriers.get(&state.carrier);
        let inbox: Vec<Value> = ctx
            .world
            .inbox(&number)?
            .iter()
            .rev()
            .map(|m| {
                // The message in the delivery log, by the id the SMSC gave it.
                let logged = ctx.log.id_by_smsc_id(&m.message_id).ok().flatten();
                json!({
                    "from": m.from,
                    "text": m.text,
                    "at": m.received_at,
                    "message_id": m.message_id,
                    "href": logged.map(|id| self.href(&["console", "messages", &id])),
                })
            })
            .collect();
        let data = json!({
            "number": member::display_number(&number),
            "carrier": carrier.map_or_else(|| state.carrier.clone(), |c| c.name(self.lang.code()).to_string()),
            "sender": ctx.world.shown_sender(&number),
            "rows": self.handset_rows(&state, carrier),
            "inbox": inbox,
            "members": self.members_with(Some(&number), None)?,
        });
        self.render("handset.html", StatusCode::OK, &member::display_number(&number), data)
    }

    /// The handset's state line by line, settings under the carrier's own
    /// names; `bad` marks what keeps an SMS away.
    fn handset_rows(&self, h: &HandsetState, carrier: Option<&Carrier>) -> Vec<Value> {
        let l = self.lang;
        let on_off = |on: bool| {
            if on {
                l.pick("オン", "on")
            } else {
                l.pick("オフ", "off")
            }
        };
        let row = |label: String, value: String, bad: bool| json!({"label": label, "value": value, "bad": bad});
        let named = |pick: fn(&Carrier) -> &Setting, fallback: &str| -> String {
            carrier.map_or_else(|| fallback.to_string(), |c| pick(c).name(l.code()).to_string())
        };
        let list = |items: &[String]| {
            if items.is_empty() {
                l.pick("なし", "none")
            } else {
                items.join(", ")
            }
        };
        let f = &h.filters;
        vec![
            row(l.pick("電源", "Power"), on_off(h.powered_on), !h.powered_on),
            row(
                l.pick("電波", "Coverage"),
                if h.in_coverage {
                    l.pick("圏内", "in coverage")
                } else {
                    l.pick("圏外", "out of coverage")
                },
                !h.in_coverage,
            ),
            row(
                l.pick("海外", "Abroad"),
                if h.abroad {
                    l.pick("海外にいる", "yes")
                } else {
                    l.pick("国内", "no (in Japan)")
                },
                h.abroad && !h.roaming,
            ),
            row(l.pick("国際ローミング", "Roaming"), on_off(h.roaming), false),
            row(
                l.pick("メモリー", "Storage"),
                if h.storage_full {
                    l.pick("満杯", "full")
                } else {
                    l.pick("空きあり", "has room")
                },
                h.storage_full,
            ),
            row(
                l.pick("SMS契約", "SMS plan"),
                if h.sms_plan {
                    l.pick("あり", "yes")
                } else {
                    l.pick("なし（データ専用SIM）", "none (data-only SIM)")
                },
                !h.sms_plan,
            ),
            row(
                named(|c| &c.settings.call_restriction, "call_restriction"),
                on_off(h.call_restriction),
                h.call_restriction,
            ),
            row(
                named(|c| &c.settings.reject_all, "reject_all"),
                on_off(f.reject_all),
                f.reject_all,
            ),
            row(
                named(|c| &c.settings.reject_other_domestic, "reject_other_domestic"),
                on_off(f.reject_other_domestic),
                f.reject_other_domestic,
            ),
            row(
                named(|c| &c.settings.content_filter, "content_filter"),
                on_off(f.content_filter),
                false,
            ),
            row(
                named(|c| &c.settings.blocked_senders, "blocked_senders"),
                list(&f.blocked_senders),
                !f.blocked_senders.is_empty(),
            ),
            row(
                named(|c| &c.settings.allowed_senders, "allowed_senders"),
                list(&f.allowed_senders),
                false,
            ),
        ]
    }

    fn mailbox(&self, address: &str) -> PageResult {
        let ctx = self.ctx;
        let mailbox = ctx.mail.get_mailbox(address).map_err(|e| self.mail_problem(e))?;
        let l = self.lang;
        let messages: Vec<Value> = ctx
            .mail
            .mailbox_messages(&mailbox.address)
            .map_err(|e| self.mail_problem(e))?
            .into_iter()
            .map(|m| {
                let spam = m.folder == Some(Folder::Spam);
                json!({
                    "href": self.href(&["console", "mail", &m.id]),
                    "folder": if spam { l.pick("迷惑メール", "spam") } else { l.pick("受信トレイ", "inbox") },
                    "spam": spam,
                    "subject": m.subject,
                    "from": m.from,
                    "at": clock::parse_rfc3339(&m.received_at),
                    "received_at": m.received_at,
                    "text": m.text,
                })
            })
            .collect();
        let yes_no = |on: bool| {
            if on {
                l.pick("はい", "yes")
            } else {
                l.pick("いいえ", "no")
            }
        };
        let row = |label: String, value: String, bad: bool| json!({"label": label, "value": value, "bad": bad});
        let domains = if mailbox.allowed_domains.is_empty() {
            l.pick("設定なし（すべて受信）", "none set (takes everything)")
        } else {
            mailbox.allowed_domains.join(", ")
        };
        let rows = vec![
            row(
                l.pick("アドレスが存在する", "Address exists"),
                yes_no(mailbox.exists),
                !mailbox.exists,
            ),
            row(l.pick("容量超過", "Mailbox full"), yes_no(mailbox.full), mailbox.full),
            row(
                l.pick("グレーリスティング", "Greylisting"),
                yes_no(mailbox.greylist),
                mailbox.greylist,
            ),
            row(
                l.pick("迷惑メールフォルダーへ振り分け", "Sorted into spam"),
                yes_no(mailbox.spam),
                mailbox.spam,
            ),
            row(
                l.pick("指定受信（許可ドメイン）", "Allowed domains (指定受信)"),
                domains,
                false,
            ),
        ];
        let data = json!({
            "address": mailbox.address,
            "rows": rows,
            "messages": messages,
            "members": self.members_with(None, Some(&mailbox.address))?,
        });
        self.render("mailbox.html", StatusCode::OK, &mailbox.address, data)
    }

    fn mail_problem(&self, e: MailError) -> Problem {
        match e {
            MailError::InvalidAddress => Problem::NotFound(word(self.lang, "mailbox_word")),
            MailError::Store(e) => e.into(),
        }
    }

    fn members_with(&self, phone: Option<&str>, email: Option<&str>) -> Result<Vec<Value>, Problem> {
        Ok(self
            .ctx
            .service
            .find_members(phone, email)?
            .iter()
            .map(|m| json!({"id": m.id, "href": self.href(&["console", "members", &m.id])}))
            .collect())
    }

    // --- carriers ------------------------------------------------------------

    fn carriers(&self) -> PageResult {
        let l = self.lang;
        let set = &self.ctx.world.carriers;
        let profile = &self.ctx.world.profile;
        let items: Vec<Value> = set
            .all()
            .into_iter()
            .map(|c| {
                let kind = match c.kind {
                    CarrierKind::Host => l.pick("回線事業者", "network"),
                    CarrierKind::Brand => l.pick("サブブランド", "brand"),
                    CarrierKind::Mvno => "MVNO".to_string(),
                };
                let host = set.get(&c.host).map_or_else(|| c.host.clone(), |h| h.name(l.code()).to_string());
                let s = &c.settings;
                let blocking = [
                    &s.reject_all,
                    &s.reject_other_domestic,
                    &s.content_filter,
                    &s.blocked_senders,
                    &s.allowed_senders,
                    &s.call_restriction,
                    &s.mail_domain_filter,
                ];
                let settings: Vec<Value> = blocking
                    .into_iter()
                    .map(|setting| (setting, false))
                    .chain(s.harmless.iter().map(|setting| (setting, true)))
                    .map(|(setting, harmless)| json!({"name": setting.name(l.code()), "harmless": harmless}))
                    .collect();
                let d = &c.delay;
                json!({
                    "id": c.id,
                    "name": c.name(l.code()),
                    "kind": kind,
                    "host": host,
                    "portal": l.pick(&c.portal_ja, &c.portal_en),
                    "sender": c.displayed_sender(&profile.number, profile),
                    "hides_number": !c.shows_fixed_line_numbers,
                    "validity": l.pick(format!("{} 時間", c.validity_hours), format!("{} h", c.validity_hours)),
                    "retry": c.retry_schedule_seconds.iter().map(|s| duration(*s, l)).collect::<Vec<_>>().join(" → "),
                    "delay": l.pick(
                        format!("通常 {:.1} 秒（{:.1}〜{:.0} 秒）", ms_to_s(d.median_ms), ms_to_s(d.min_ms), ms_to_s(d.max_ms)),
                        format!("typically {:.1} s ({:.1} to {:.0} s)", ms_to_s(d.median_ms), ms_to_s(d.min_ms), ms_to_s(d.max_ms)),
                    ),
                    "mail_domains": c.mail_domains.join(", "),
                    "settings": settings,
                })
            })
            .collect();
        let data = json!({"carriers": items, "sender_number": member::display_number(&profile.number)});
        self.render("carriers.html", StatusCode::OK, &word(l, "carriers"), data)
    }
}

/// `90` → `1分30秒` / `1 min 30 s`.
fn duration(seconds: u32, lang: Lang) -> String {
    let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(lang.pick(format!("{h}時間"), format!("{h} h")));
    }
    if m > 0 {
        parts.push(lang.pick(format!("{m}分"), format!("{m} min")));
    }
    if s > 0 || parts.is_empty() {
        parts.push(lang.pick(format!("{s}秒"), format!("{s} s")));
    }
    parts.join(if lang == Lang::Ja { "" } else { " " })
}

/// A console URL: the path from `segments`, then `?lang=`.
fn href_in(segments: &[&str], lang: Lang) -> String {
    let path: String = segments.iter().map(|s| format!("/{}", enc(s))).collect();
    let path = if path.is_empty() { "/".to_string() } else { path };
    format!("{path}?lang={}", lang.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = templates();
        for (name, _) in TEMPLATES {
            assert!(env.get_template(name).is_ok(), "{name} does not compile");
        }
    }

    #[test]
    fn paths_are_encoded_readably() {
        assert_eq!(
            href_in(&["console", "handsets", "+819012345678"], Lang::Ja),
            "/console/handsets/+819012345678?lang=ja"
        );
        assert_eq!(
            href_in(&["console", "mailboxes", "taro@example.jp"], Lang::En),
            "/console/mailboxes/taro@example.jp?lang=en"
        );
        assert_eq!(href_in(&[], Lang::En), "/?lang=en");
        assert_eq!(enc("a b/c?&"), "a%20b%2Fc%3F%26");
        assert_eq!(enc("会"), "%E4%BC%9A");
    }

    #[test]
    fn durations_and_words_read_naturally() {
        assert_eq!(duration(60, Lang::Ja), "1分");
        assert_eq!(duration(5400, Lang::Ja), "1時間30分");
        assert_eq!(duration(90, Lang::En), "1 min 30 s");
        assert_eq!(duration(0, Lang::En), "0 s");
        assert_eq!(word(Lang::En, "home"), "Home");
        assert_eq!(word(Lang::Ja, "home"), "ホーム");
    }
}

//! The console's traffic pages, for whoever watches messages go by rather
//! than one member's case: the delivery log (every message, newest first,
//! by state, channel and time, each with its timeline) and the mail capture
//! (every mail the SMTP server took, searchable by words and time, each with its envelope,
//! what each recipient's mailbox did, headers, text, attachments, and its
//! HTML in a frame of its own that runs no script and loads nothing).

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use super::{codes, last_codes, masked, word, Page, PageResult, Problem};
use crate::clock::{self, Millis, Window};
use crate::delivery::log::{Message, Query, State};
use crate::member::Channel;
use crate::smtp::capture::{Delivery, Outcome};
use crate::smtp::Folder;

/// Messages or mails on one page of a list.
const PAGE: usize = 50;

/// The policy of a mail's HTML, shown in the mail page's frame: a sandbox
/// (no script, no form, an origin of its own), inline styles and inline
/// images only, framed by the console alone. A mail's remote images would
/// tell its sender who read it and when; they are not fetched.
const MAIL_HTML_CSP: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                             frame-ancestors 'self'";

impl Page<'_> {
    /// `/console/messages?state=&channel=&before=`: the delivery log.
    pub(super) fn log(&self) -> PageResult {
        let state = self.req.query("state").and_then(State::named);
        let channel = self.req.query("channel").and_then(Channel::named);
        let span = self.span();
        let (messages, next) = self.ctx.log.query(&Query {
            state,
            channel,
            window: span.window,
            before: self.req.query("before").map(str::to_string),
            limit: PAGE,
            ..Query::default()
        })?;
        let rows: Vec<Value> = messages.iter().map(|m| self.log_row(m)).collect();
        let state_options: Vec<Value> = State::ALL
            .iter()
            .map(|s| json!({"value": s.as_str(), "label": self.state_words(*s), "selected": state == Some(*s)}))
            .collect();
        let channel_options: Vec<Value> = Channel::ALL
            .iter()
            .map(|c| json!({"value": c.as_str(), "label": self.channel_words(*c), "selected": channel == Some(*c)}))
            .collect();
        let older = next.map(|before| {
            let filters = [
                ("state", state.map(State::as_str)),
                ("channel", channel.map(Channel::as_str)),
            ];
            self.older_href("messages", &filters, &span, &before)
        });
        let data = json!({
            "messages": rows,
            "states": state_options,
            "channels": channel_options,
            "span": span.shown(),
            "older": older,
        });
        self.render("log.html", StatusCode::OK, &word(self.lang, "log"), data)
    }

    fn log_row(&self, m: &Message) -> Value {
        json!({
            "href": self.href(&["console", "messages", &m.id]),
            "id": m.id,
            "at": m.updated_at,
            "channel": self.channel_words(m.channel),
            "to": masked(&m.to),
            "from": m.from,
            "origin": m.origin,
            "member_id": m.member_id,
            "state": self.state_words(m.state),
            "failure": m.state.is_failure(),
            "codes": last_codes(m),
        })
    }

    /// `/console/messages/{id}`: one message and every event of it.
    pub(super) fn log_message(&self, id: &str) -> PageResult {
        let m = self
            .ctx
            .log
            .get(id)?
            .ok_or_else(|| Problem::NotFound(word(self.lang, "message_word")))?;
        let events: Vec<Value> = m
            .events
            .iter()
            .map(|e| {
                let failure = e.state.is_some_and(State::is_failure);
                json!({
                    "at": e.at,
                    "kind": e.kind,
                    "state": e.state.map(|s| self.state_words(s)),
                    "detail": e.detail,
                    "failure": failure,
                    "codes": codes(e).into_iter().map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let device = match m.channel {
            Channel::Sms => (
                word(self.lang, "open_handset"),
                self.href(&["console", "handsets", &m.to]),
            ),
            Channel::Email => (
                word(self.lang, "open_mailbox"),
                self.href(&["console", "mailboxes", &m.to]),
            ),
        };
        let mut links = vec![json!({"label": device.0, "href": device.1})];
        links.push(json!({"label": word(self.lang, "diagnosis"), "href": self.diagnosis_href(&m)}));
        links.push(
            json!({"label": word(self.lang, "message_json"), "href": format!("/v1/messages/{}", super::enc(&m.id))}),
        );
        let facts = [
            ("state", Some(self.state_words(m.state))),
            ("channel", Some(self.channel_words(m.channel))),
            ("to", Some(masked(&m.to))),
            ("from", Some(m.from.clone())),
            ("origin", Some(m.origin.clone())),
            ("member", m.member_id.clone()),
            ("otp", m.otp_id.clone()),
            ("smsc_message_id", m.smsc_message_id.clone()),
            ("carrier", m.carrier.clone()),
            ("text_masked", Some(m.text.clone())),
        ];
        let facts: Vec<Value> = facts
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| json!({"label": word(self.lang, key), "value": v})))
            .collect();
        let data = json!({
            "id": m.id,
            "failure": m.state.is_failure(),
            "facts": facts,
            "events": events,
            "links": links,
        });
        self.render("message.html", StatusCode::OK, &m.id, data)
    }

    /// `/console/mail?q=&before=`: the mail capture, newest first.
    pub(super) fn mail_list(&self) -> PageResult {
        let q = self.req.query("q").map(str::trim).filter(|q| !q.is_empty());
        let span = self.span();
        let page = self
            .ctx
            .mail
            .list(q, span.window, self.req.query("before"), PAGE)
            .map_err(|e| self.mail_problem(e))?;
        let rows: Vec<Value> = page
            .items
            .iter()
            .map(|m| {
                json!({
                    "href": self.href(&["console", "mail", &m.id]),
                    "id": m.id,
                    "subject": m.subject,
                    "from": m.from,
                    "to": m.to.join(", "),
                    "at": clock::parse_rfc3339(&m.received_at),
                    "size": m.size,
                })
            })
            .collect();
        let older = page
            .next
            .map(|before| self.older_href("mail", &[("q", q)], &span, &before));
        let data = json!({
            "mails": rows,
            "q": q.unwrap_or(""),
            "span": span.shown(),
            "older": older,
        });
        self.render("mail_list.html", StatusCode::OK, &word(self.lang, "mail"), data)
    }

    /// `/console/smsc`: who is bound to the SMSC now, and each account's
    /// receipts waiting for a bind that can receive them.
    pub(super) fn smsc(&self) -> PageResult {
        let Some(smsc) = &self.ctx.smsc else {
            let data = json!({"listening": false, "accounts": [], "binds": []});
            return self.render("smsc.html", StatusCode::OK, "SMSC", data);
        };
        let binds = smsc.binds.list();
        let accounts: Vec<Value> = smsc
            .accounts(&binds)
            .iter()
            .map(|a| {
                let core = a.system_id == crate::app::CORE_SYSTEM_ID;
                // The common mistake: bound to submit only, so the receipts
                // an application asked for pile up here.
                let stranded = a.receipts_waiting > 0 && !a.can_receive;
                json!({
                    "system_id": a.system_id,
                    "core": core,
                    "binds": a.binds,
                    "receipts_waiting": a.receipts_waiting,
                    "stranded": stranded,
                })
            })
            .collect();
        let binds: Vec<Value> = binds
            .iter()
            .map(|b| {
                json!({
                    "session": b.session,
                    "system_id": b.system_id,
                    "kind": b.kind,
                    "peer": b.peer,
                    "tls": b.tls,
                    "at": b.bound_at,
                    "submitted": b.submitted,
                    "delivered": b.delivered,
                })
            })
            .collect();
        let data = json!({
            "listening": true,
            "accounts": accounts,
            "binds": binds,
            "log_href": self.href(&["console", "messages"]),
        });
        self.render("smsc.html", StatusCode::OK, "SMSC", data)
    }

    /// The time filters of a list page as its form sends them.
    fn span(&self) -> Span<'_> {
        let since = self.req.query("since").map(str::trim).filter(|t| !t.is_empty());
        let until = self.req.query("until").map(str::trim).filter(|t| !t.is_empty());
        Span {
            since,
            until,
            window: Window {
                since: since.and_then(form_time),
                until: until.and_then(form_time),
            },
        }
    }

    /// The link to a list's next page: its filters, its time span and
    /// where the page stopped.
    fn older_href(&self, list: &str, filters: &[(&str, Option<&str>)], span: &Span, before: &str) -> String {
        let mut href = self.href(&["console", list]);
        let pairs =
            filters
                .iter()
                .copied()
                .chain([("since", span.since), ("until", span.until), ("before", Some(before))]);
        for (key, value) in pairs {
            if let Some(value) = value {
                href.push_str(&format!("&{key}={}", super::enc_value(value)));
            }
        }
        href
    }

    /// `/console/mail/{id}`: one captured mail.
    pub(super) fn mail(&self, id: &str) -> PageResult {
        let mail = self
            .ctx
            .mail
            .get(id)
            .map_err(|e| self.mail_problem(e))?
            .ok_or_else(|| Problem::NotFound(word(self.lang, "mail_word")))?;
        let deliveries: Vec<Value> = mail.deliveries.iter().map(|d| self.delivery_row(d)).collect();
        let headers: Vec<Value> = mail
            .headers
            .iter()
            .map(|h| json!({"name": h.name, "value": h.value}))
            .collect();
        let data = json!({
            "id": mail.id,
            "subject": mail.subject,
            "from": mail.from,
            "to": mail.to.join(", "),
            "at": clock::parse_rfc3339(&mail.received_at),
            "size": mail.size,
            "envelope": {
                "helo": mail.envelope.helo,
                "from": if mail.envelope.from.is_empty() { "<>".to_string() } else { mail.envelope.from.clone() },
                "peer": mail.envelope.peer,
            },
            "deliveries": deliveries,
            "headers": headers,
            "text": mail.text,
            "html_href": mail.html.as_ref().map(|_| format!("/console/mail/{}/html", super::enc(&mail.id))),
            // Only web links are made clickable (a `javascript:` one
            // would run here), and open away from the console.
            "links": mail.links.iter().map(|l| {
                let web = l.starts_with("https://") || l.starts_with("http://");
                json!({"text": l, "href": web.then_some(l)})
            }).collect::<Vec<Value>>(),
            "parts": mail.parts.iter().map(|p| json!({
                "name": p.name.clone().unwrap_or_else(|| format!("part-{}", p.index)),
                "href": format!("/v1/mail/{}/parts/{}", super::enc(&mail.id), p.index),
                "content_type": p.content_type,
                "size": p.size,
                "inline": p.inline,
            })).collect::<Vec<Value>>(),
            "parsed": mail.parsed,
            "raw_href": format!("/v1/mail/{}/raw", super::enc(&mail.id)),
            "json_href": format!("/v1/mail/{}", super::enc(&mail.id)),
        });
        let title = if mail.subject.is_empty() {
            mail.id.clone()
        } else {
            mail.subject.clone()
        };
        self.render("mail.html", StatusCode::OK, &title, data)
    }

    fn delivery_row(&self, d: &Delivery) -> Value {
        let l = self.lang;
        let outcome = match (d.outcome, d.folder) {
            (Outcome::Accepted, _) | (_, Some(Folder::Inbox)) => l.pick("受信トレイに配信", "delivered to the inbox"),
            (Outcome::Spam, _) | (_, Some(Folder::Spam)) => l.pick("迷惑メールに振り分け", "put in the spam folder"),
            (Outcome::Dropped, _) => l.pick(
                "250で受け付けた後、受信設定で破棄",
                "answered 250, then dropped by the mailbox's filter",
            ),
            (Outcome::Rejected, _) => l.pick("拒否", "refused"),
            (Outcome::Deferred, _) => l.pick("一時的に拒否（再送待ち）", "refused for now (to be retried)"),
        };
        json!({
            "recipient": d.recipient,
            "href": self.href(&["console", "mailboxes", &d.recipient]),
            "outcome": outcome,
            "failure": matches!(d.outcome, Outcome::Dropped | Outcome::Rejected | Outcome::Deferred),
            "reply": d.refusal.as_ref().map(|r| format!("{} {} {}", r.code, r.enhanced, r.text)),
        })
    }
}

/// A list page's time filters: as typed, and as the window they make.
struct Span<'a> {
    since: Option<&'a str>,
    until: Option<&'a str>,
    window: Window,
}

impl Span<'_> {
    /// The values written back into the form; one that is not a time is
    /// shown with a flag rather than dropped.
    fn shown(&self) -> Value {
        let field = |typed: Option<&str>, read: Option<Millis>| {
            json!({
                "value": typed.unwrap_or(""),
                "bad": typed.is_some() && read.is_none(),
            })
        };
        json!({
            "since": field(self.since, self.window.since),
            "until": field(self.until, self.window.until),
        })
    }
}

/// A time from a console form: a browser's `datetime-local`
/// (`2026-11-28T10:15`, with or without seconds) in Japan time, as the
/// console shows every time, or a full RFC 3339 time.
fn form_time(text: &str) -> Option<Millis> {
    clock::parse_rfc3339(text).or_else(|| {
        [
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%d %H:%M",
            "%Y-%m-%d %H:%M:%S",
        ]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .and_then(|naive| naive.and_local_timezone(clock::jst()).single())
        .map(|t| t.timestamp_millis())
    })
}

/// `/console/mail/{id}/html`: the mail's HTML as its sender wrote it, its
/// inline images (`cid:`) made `data:` URIs, under [`MAIL_HTML_CSP`]; a
/// plain 404 when the mail has none.
pub(super) fn mail_html(ctx: &super::Ctx, id: &str) -> Response<http_body_util::Full<bytes::Bytes>> {
    let html = ctx.mail.html_with_images(id).unwrap_or_else(|e| {
        tracing::error!(error = %e, "reading a mail's HTML");
        None
    });
    let (status, body) = match html {
        Some(html) => (StatusCode::OK, html),
        None => (StatusCode::NOT_FOUND, String::new()),
    };
    super::html_under(status, body, MAIL_HTML_CSP)
}

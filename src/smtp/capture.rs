//! The simulated mail world: mailboxes with their settings, and the capture
//! store that keeps every message the SMTP server accepted.
//!
//! [`MailWorld`] is the [`MailBackend`] otpgate runs: at RCPT and after DATA
//! it applies the pure rules of [`super::mailbox`] to the stored mailbox and
//! greylist state, and it stores each accepted message (raw bytes, envelope,
//! the parsed view and one entry per recipient's mailbox) durably before the
//! server may answer 250. The HTTP layer reads and changes the world through
//! its service methods, which return plain serde structs. It must never read
//! the system time (only the injected [`Clock`]), never lose a message
//! because its MIME does not parse, and never log a message's content.

use std::sync::{Arc, Mutex, RwLock};

use futures::future::BoxFuture;
use mail_parser::{MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use super::mailbox::{
    decide_delivery, decide_rcpt, greylist_state, normalize_address, Disposition, Greylist, Mailbox, MailboxPatch,
    RcptDecision, Reply,
};
use super::parts::{self, MailPart};
use super::search::{self, Search};
use super::{DataVerdict, Envelope, MailBackend, RcptVerdict};
use crate::changes::{After, Changes};
use crate::clock::{rfc3339, Clock, Millis, Window};
use crate::store::retention::Retention;
use crate::store::{Batch, Store, StoreError, Tree};

/// Separates the address from the rest of a composite key; it cannot occur
/// in an address the SMTP server accepts.
const KEY_SEPARATOR: char = '\u{1f}';

/// At most this many header fields of one message are kept in its view.
const MAX_HEADERS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("not an email address")]
    InvalidAddress,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A mailbox folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Folder {
    Inbox,
    Spam,
}

/// What happened to a message, or a recipient, at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Taken (at RCPT) or delivered to the inbox (after DATA).
    Accepted,
    /// Delivered to the spam folder.
    Spam,
    /// Answered 250 and silently dropped by the domain filter.
    Dropped,
    /// Refused with a 5xx reply.
    Rejected,
    /// Refused with a 4xx reply: the sender should retry.
    Deferred,
}

impl Outcome {
    fn of_refusal(code: u16) -> Outcome {
        if (400..500).contains(&code) {
            Outcome::Deferred
        } else {
            Outcome::Rejected
        }
    }
}

/// The SMTP step an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailStage {
    Rcpt,
    Data,
}

/// One recipient's result at RCPT or after DATA, for the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailEvent {
    pub stage: MailStage,
    pub at: Millis,
    /// The envelope sender ("" for the null sender).
    pub from: String,
    /// The recipient, domain in lower case.
    pub recipient: String,
    /// The reply the client got for this recipient (after DATA: the reply to
    /// the whole message when the recipient took it, else its own refusal).
    pub code: u16,
    pub enhanced: String,
    pub text: String,
    /// The capture id, once the message is stored.
    pub message_id: Option<String>,
    pub outcome: Outcome,
}

/// Called for every RCPT and DATA outcome, after it is durable. The SMTP
/// reply waits for the returned future, so whatever the observer records
/// (the delivery log) is in place, in order, before the client hears the
/// answer.
pub type MailObserver = Arc<dyn Fn(MailEvent) -> BoxFuture<'static, ()> + Send + Sync>;

/// A list item: `GET /v1/mail`, a mailbox's messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailSummary {
    pub id: String,
    /// The From header's address, or the envelope sender without one.
    pub from: String,
    /// The envelope recipients.
    pub to: Vec<String>,
    pub subject: String,
    pub received_at: String,
    pub size: usize,
    /// Set in a mailbox's list: where the message landed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub folder: Option<Folder>,
    /// Set in a mailbox's list: the text as the mailbox shows it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
}

/// A page of the capture, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailPage {
    pub items: Vec<MailSummary>,
    /// Pass as `before` for the next page; None on the last page.
    pub next: Option<String>,
}

/// The newest code that reached a mailbox's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewestCode {
    pub code: String,
    pub from: String,
    pub received_at: String,
    /// The captured message's id (`/v1/mail/{id}`; `?after=` takes it).
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderField {
    pub name: String,
    pub value: String,
}

/// What became of the message for one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub recipient: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub folder: Option<Folder>,
    /// The refusal, for a recipient that refused a message others took.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refusal: Option<Reply>,
}

/// One captured message in full: `GET /v1/mail/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailDetail {
    pub id: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub received_at: String,
    pub size: usize,
    /// The Date header, RFC 3339.
    pub date: Option<String>,
    pub headers: Vec<HeaderField>,
    /// The decoded text body (converted from HTML when there is no text part).
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<String>,
    /// The attachments and inline images, with their types and sizes.
    #[serde(default)]
    pub parts: Vec<MailPart>,
    /// The HTML's anchors, then the text's addresses, each once: a
    /// sign-in mail's magic link.
    #[serde(default)]
    pub links: Vec<String>,
    /// The source as received; bytes that are not UTF-8 shown as U+FFFD.
    pub raw: String,
    /// False when the MIME structure could not be parsed; `raw` is complete.
    pub parsed: bool,
    pub envelope: Envelope,
    pub deliveries: Vec<Delivery>,
}

/// A message as stored (without its raw bytes, kept in their own tree).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMail {
    id: String,
    received_at: Millis,
    size: usize,
    envelope: Envelope,
    from: String,
    subject: String,
    date: Option<String>,
    headers: Vec<HeaderField>,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<String>,
    parsed: bool,
    deliveries: Vec<Delivery>,
}

/// What removing a stored message needs of it: whose mailboxes list it.
/// Read instead of the whole [`StoredMail`], so retention does not copy
/// every old message's text and headers to find them.
#[derive(Deserialize)]
struct Recipients {
    deliveries: Vec<RecipientOnly>,
}

#[derive(Deserialize)]
struct RecipientOnly {
    recipient: String,
}

impl StoredMail {
    fn summary(&self) -> MailSummary {
        MailSummary {
            id: self.id.clone(),
            from: self.from.clone(),
            to: self.envelope.rcpts.clone(),
            subject: self.subject.clone(),
            received_at: rfc3339(self.received_at),
            size: self.size,
            folder: None,
            text: None,
        }
    }

    fn fields(&self) -> search::Fields<'_> {
        search::Fields {
            from: &self.from,
            envelope_from: &self.envelope.from,
            to: &self.envelope.rcpts,
            subject: &self.subject,
            text: self.text.as_deref(),
            attachments: self.attachments.len(),
        }
    }
}

/// A message in one recipient's mailbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MailboxEntry {
    id: String,
    folder: Folder,
    dropped: bool,
}

/// Raw message bytes as a JSON string without loss.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "lowercase")]
enum RawSource {
    Utf8(String),
    /// One char per byte (U+0000..U+00FF), for sources that are not UTF-8.
    Latin1(String),
}

impl RawSource {
    fn encode(bytes: &[u8]) -> RawSource {
        match std::str::from_utf8(bytes) {
            Ok(text) => RawSource::Utf8(text.to_string()),
            Err(_) => RawSource::Latin1(bytes.iter().map(|&b| char::from(b)).collect()),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            RawSource::Utf8(text) => text.into_bytes(),
            RawSource::Latin1(text) => text.chars().map(|c| u32::from(c).min(255) as u8).collect(),
        }
    }
}

/// The parsed view of a message.
struct Parsed {
    from: Option<String>,
    subject: String,
    date: Option<String>,
    headers: Vec<HeaderField>,
    text: Option<String>,
    html: Option<String>,
    attachments: Vec<String>,
    parsed: bool,
}

impl Parsed {
    fn unparsed() -> Parsed {
        Parsed {
            from: None,
            subject: String::new(),
            date: None,
            headers: Vec::new(),
            text: None,
            html: None,
            attachments: Vec::new(),
            parsed: false,
        }
    }
}

/// Messages up to this size are parsed on the session's own task (tens of
/// microseconds); larger ones on the blocking pool, off the workers. Handing
/// every small message to another thread cost more than parsing it: the
/// hand-off and its wake-ups were 5% of the SMTP benchmark's samples
/// (BENCHMARKS.md, sixteenth round).
const PARSE_IN_PLACE_BYTES: usize = 64 * 1024;

/// Parses with mail-parser; a message it cannot read, or a panic inside
/// it, leaves an unparsed view and the raw bytes intact.
fn parse_message(raw: &[u8]) -> Parsed {
    std::panic::catch_unwind(|| parse_view(raw)).unwrap_or_else(|_| Parsed::unparsed())
}

fn parse_view(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Parsed::unparsed();
    };
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_string);
    let subject = message.subject().unwrap_or_default().to_string();
    let date = message.date().map(|d| d.to_rfc3339());
    let headers = message
        .headers_raw()
        .take(MAX_HEADERS)
        .map(|(name, value)| HeaderField {
            name: name.to_string(),
            value: unfold(value),
        })
        .collect();
    let text = message.body_text(0).map(|t| t.into_owned());
    let has_html = message.html_part(0).is_some_and(|p| p.is_text_html());
    let html = if has_html {
        message.body_html(0).map(|h| h.into_owned())
    } else {
        None
    };
    let attachments = message
        .attachments()
        .map(|p| p.attachment_name().unwrap_or("(unnamed)").to_string())
        .collect();
    Parsed {
        from,
        subject,
        date,
        headers,
        text,
        html,
        attachments,
        parsed: true,
    }
}

/// A header value on one line.
fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first run of exactly six ASCII digits.
pub fn find_code(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut start = None;
    for (i, b) in bytes.iter().chain(std::iter::once(&b' ')).enumerate() {
        match (b.is_ascii_digit(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s == 6 {
                    return Some(&text[s..i]);
                }
                start = None;
            }
            _ => {}
        }
    }
    None
}

/// The simulated mail world; cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct MailWorld {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<Clock>,
    /// The most messages kept (`mail_retention`); the oldest go first.
    retention: Retention,
    /// Message id -> [`StoredMail`].
    messages: Tree,
    /// Message id -> [`RawSource`].
    raw: Tree,
    /// `address \x1f id` -> [`MailboxEntry`].
    entries: Tree,
    /// Address -> [`Mailbox`], for mailboxes someone configured.
    mailboxes: Tree,
    /// `recipient \x1f sender` -> when the pair was first seen.
    greylist: Tree,
    /// Order of first sight (`{n:015}` -> (pair, first seen)), oldest
    /// first, for the greylist's retention.
    greylist_order: Tree,
    /// The most pairs the greylist remembers ([`GREYLIST_KEPT`]): senders
    /// are whatever clients say, so it would grow with traffic.
    greylist_retention: Retention,
    /// Serialises explicit deletes.
    removing: Mutex<()>,
    observer: RwLock<Option<MailObserver>>,
    /// Woken when a message reached a mailbox and is durable there, for
    /// readers waiting for one (`?wait=`).
    arrivals: Changes,
}

/// The most (recipient, sender) pairs the greylist remembers; past it the
/// oldest are forgotten.
pub const GREYLIST_KEPT: usize = 100_000;

impl MailWorld {
    pub fn new(store: &Store, clock: Arc<Clock>, retention: usize) -> Result<MailWorld, StoreError> {
        let messages = store.tree("mail_messages")?;
        let greylist_order = store.tree("mail_greylist_order")?;
        Ok(MailWorld {
            inner: Arc::new(Inner {
                store: store.clone(),
                clock,
                retention: Retention::new(retention, messages.len()),
                messages,
                raw: store.tree("mail_raw")?,
                entries: store.tree("mail_mailbox_entries")?,
                mailboxes: store.tree("mail_mailboxes")?,
                greylist: store.tree("mail_greylist")?,
                greylist_retention: Retention::new(GREYLIST_KEPT, greylist_order.len()),
                greylist_order,
                removing: Mutex::new(()),
                observer: RwLock::new(None),
                arrivals: Changes::default(),
            }),
        })
    }

    /// Receives every RCPT and DATA outcome (after it is durable). The call
    /// is made on the SMTP connection's task and the reply waits for it:
    /// keep it short.
    pub fn set_observer(&self, observer: MailObserver) {
        *self.inner.observer.write().unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    /// Changes a mailbox (creating it from the catch-all default); omitted
    /// fields keep their value. Durable when it returns. Turning greylisting
    /// on forgets the senders this mailbox had already let through.
    pub async fn put_mailbox(&self, address: &str, patch: MailboxPatch) -> Result<Mailbox, MailError> {
        let address = normalize_address(address).ok_or(MailError::InvalidAddress)?;
        let inner = &self.inner;
        let (before, after) = loop {
            let current: Option<Mailbox> = inner.mailboxes.get(&address)?;
            let mut next = current.clone().unwrap_or_else(|| Mailbox::catch_all(&address));
            let before = next.clone();
            patch.apply(&mut next);
            next.address = address.clone();
            match inner.mailboxes.compare_and_swap(&address, current.as_ref(), &next) {
                Ok(()) => break (before, next),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if after.greylist && !before.greylist {
            for key in inner.greylist.keys_with_prefix(&format!("{address}{KEY_SEPARATOR}"))? {
                inner.greylist.remove(&key)?;
            }
        }
        inner.store.flush().await?;
        Ok(after)
    }

    /// The mailbox, or the catch-all default for an address nobody set up.
    pub fn get_mailbox(&self, address: &str) -> Result<Mailbox, MailError> {
        let address = normalize_address(address).ok_or(MailError::InvalidAddress)?;
        Ok(self.mailbox(&address)?)
    }

    /// The messages in the mailbox's inbox and spam folder, newest first,
    /// with their folder and text (silently dropped ones are not there).
    pub fn mailbox_messages(&self, address: &str) -> Result<Vec<MailSummary>, MailError> {
        self.mailbox_messages_after(address, None)
    }

    /// [`MailWorld::mailbox_messages`], only what arrived after `after` if
    /// given.
    pub fn mailbox_messages_after(&self, address: &str, after: Option<&After>) -> Result<Vec<MailSummary>, MailError> {
        let address = normalize_address(address).ok_or(MailError::InvalidAddress)?;
        let mut out = Vec::new();
        for (entry, mail) in self.shown_newest_first(&address, after)? {
            let text = Some(mail.text.clone().unwrap_or_default());
            out.push(MailSummary {
                folder: Some(entry.folder),
                text,
                ..mail.summary()
            });
        }
        Ok(out)
    }

    /// The newest six-digit code in the text of a message that reached the
    /// mailbox's inbox.
    pub fn newest_code(&self, address: &str) -> Result<Option<NewestCode>, MailError> {
        self.newest_code_after(address, None)
    }

    /// [`MailWorld::newest_code`], only in what arrived after `after` if
    /// given.
    pub fn newest_code_after(&self, address: &str, after: Option<&After>) -> Result<Option<NewestCode>, MailError> {
        let address = normalize_address(address).ok_or(MailError::InvalidAddress)?;
        for (entry, mail) in self.shown_newest_first(&address, after)? {
            if entry.folder != Folder::Inbox {
                continue;
            }
            if let Some(code) = mail.text.as_deref().and_then(find_code) {
                return Ok(Some(NewestCode {
                    code: code.to_string(),
                    from: mail.from.clone(),
                    received_at: rfc3339(mail.received_at),
                    id: mail.id.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// Empties a mailbox (both folders), as its owner deleting every
    /// message; returns how many it showed. The capture (`/v1/mail`) keeps
    /// them, as a mail server's log would. Durable when it returns.
    pub async fn clear_mailbox(&self, address: &str) -> Result<usize, MailError> {
        let address = normalize_address(address).ok_or(MailError::InvalidAddress)?;
        let shown = {
            let _one_at_a_time = self.inner.removing.lock().unwrap_or_else(|e| e.into_inner());
            let entries: Vec<(String, MailboxEntry)> = self.inner.entries.scan_prefix(&entry_prefix(&address))?;
            let mut batch = self.inner.store.batch();
            for (key, _) in &entries {
                batch.remove(&self.inner.entries, key);
            }
            self.inner.store.apply(batch)?;
            entries.iter().filter(|(_, e)| !e.dropped).count()
        };
        self.inner.store.flush().await?;
        Ok(shown)
    }

    /// What readers waiting for a mailbox wait on, keyed by address as
    /// [`normalize_address`] writes it.
    pub fn arrivals(&self) -> &Changes {
        &self.inner.arrivals
    }

    /// The messages a mailbox shows (dropped ones are not), newest first,
    /// only those that arrived after `after` if given.
    fn shown_newest_first(
        &self,
        address: &str,
        after: Option<&After>,
    ) -> Result<Vec<(MailboxEntry, StoredMail)>, StoreError> {
        let entries: Vec<(String, MailboxEntry)> = self.inner.entries.scan_prefix(&entry_prefix(address))?;
        let mut shown = Vec::new();
        for (_, entry) in entries {
            if entry.dropped {
                continue;
            }
            if let Some(mail) = self.inner.messages.get::<StoredMail>(&entry.id)? {
                shown.push((entry, mail));
            }
        }
        if let Some(after) = after {
            shown = after.keep_newer(shown, |(entry, _)| &entry.id, |(_, mail)| mail.received_at);
        }
        shown.reverse();
        Ok(shown)
    }

    /// The capture, newest first, optionally filtered by a search (words
    /// found in from, to, subject or text, any case; `from:`, `to:`,
    /// `subject:`, `has:attachment`: [`Search`]) and by the time it arrived;
    /// `before` is the `next` of the previous page.
    pub fn list(
        &self,
        q: Option<&str>,
        window: Window,
        before: Option<&str>,
        limit: usize,
    ) -> Result<MailPage, MailError> {
        let limit = limit.clamp(1, 1000);
        let search = q.and_then(Search::parse);
        let mut cursor = before.map(str::to_string);
        let mut items = Vec::new();
        loop {
            let batch: Vec<(String, StoredMail)> = self.inner.messages.iter_rev(cursor.as_deref(), 64)?;
            if batch.is_empty() {
                return Ok(MailPage { items, next: None });
            }
            for (key, mail) in batch {
                cursor = Some(key);
                // Ids sort by arrival: past `since` nothing further passes.
                if window.is_before(mail.received_at) {
                    return Ok(MailPage { items, next: None });
                }
                if !window.holds(mail.received_at) || search.as_ref().is_some_and(|s| !s.matches(&mail.fields())) {
                    continue;
                }
                items.push(mail.summary());
                if items.len() == limit {
                    let more = !self
                        .inner
                        .messages
                        .iter_rev::<serde_json::Value>(cursor.as_deref(), 1)?
                        .is_empty();
                    return Ok(MailPage {
                        items,
                        next: if more { cursor } else { None },
                    });
                }
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<MailDetail>, MailError> {
        let Some(mail) = self.inner.messages.get::<StoredMail>(id)? else {
            return Ok(None);
        };
        let raw = self.raw(id)?.unwrap_or_default();
        let links = super::links::of(mail.html.as_deref(), mail.text.as_deref());
        Ok(Some(MailDetail {
            id: mail.id,
            from: mail.from,
            to: mail.envelope.rcpts.clone(),
            subject: mail.subject,
            received_at: rfc3339(mail.received_at),
            size: mail.size,
            date: mail.date,
            headers: mail.headers,
            text: mail.text,
            html: mail.html,
            attachments: mail.attachments,
            parts: parts::list(&raw),
            links,
            raw: String::from_utf8_lossy(&raw).into_owned(),
            parsed: mail.parsed,
            envelope: mail.envelope,
            deliveries: mail.deliveries,
        }))
    }

    /// The recipients of a captured message (each of its deliveries'),
    /// read without its text; `None` for an id the capture does not hold.
    pub fn recipients(&self, id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let mail = self.inner.messages.get::<Recipients>(id)?;
        Ok(mail.map(|m| m.deliveries.into_iter().map(|d| d.recipient).collect()))
    }

    /// One attachment or inline part of a captured message and its bytes;
    /// `None` when there is no such message or part.
    pub fn part(&self, id: &str, index: usize) -> Result<Option<(MailPart, Vec<u8>)>, MailError> {
        Ok(self.raw(id)?.and_then(|raw| parts::get(&raw, index)))
    }

    /// A captured message's HTML with its inline images (`cid:`) made
    /// `data:` URIs, for the console's frame; `None` without HTML.
    pub fn html_with_images(&self, id: &str) -> Result<Option<String>, MailError> {
        let Some(html) = self.inner.messages.get::<StoredMail>(id)?.and_then(|m| m.html) else {
            return Ok(None);
        };
        let raw = self.raw(id)?.unwrap_or_default();
        Ok(Some(parts::inline_images(&html, &raw)))
    }

    /// The message exactly as received (for a `.eml` download).
    pub fn raw(&self, id: &str) -> Result<Option<Vec<u8>>, MailError> {
        Ok(self.inner.raw.get::<RawSource>(id)?.map(RawSource::into_bytes))
    }

    /// Removes one message; false when there was none. Durable when it
    /// returns.
    pub async fn delete(&self, id: &str) -> Result<bool, MailError> {
        let removed = {
            let _one_at_a_time = self.inner.removing.lock().unwrap_or_else(|e| e.into_inner());
            self.remove_message(id)?
        };
        self.inner.store.flush().await?;
        Ok(removed)
    }

    /// Empties the capture (mailbox settings stay). Durable when it returns.
    pub async fn delete_all(&self) -> Result<(), MailError> {
        {
            let _one_at_a_time = self.inner.removing.lock().unwrap_or_else(|e| e.into_inner());
            self.inner.messages.clear()?;
            self.inner.raw.clear()?;
            self.inner.entries.clear()?;
            self.inner.retention.emptied();
        }
        self.inner.store.flush().await?;
        Ok(())
    }

    fn mailbox(&self, address: &str) -> Result<Mailbox, StoreError> {
        Ok(self
            .inner
            .mailboxes
            .get(address)?
            .unwrap_or_else(|| Mailbox::catch_all(address)))
    }

    /// Removes a message, its raw bytes and its mailbox entries; the caller
    /// holds `removing`.
    fn remove_message(&self, id: &str) -> Result<bool, StoreError> {
        let mut batch = self.inner.store.batch();
        if !self.removals(id, &mut batch)? {
            return Ok(false);
        }
        self.inner.store.apply(batch)?;
        self.inner.retention.removed();
        Ok(true)
    }

    /// Adds to `batch` the removal of a message, its raw bytes and its
    /// mailbox entries; false when there is no such message.
    fn removals(&self, id: &str, batch: &mut Batch) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let Some(mail) = inner.messages.get::<Recipients>(id)? else {
            return Ok(false);
        };
        batch.remove(&inner.messages, id);
        batch.remove(&inner.raw, id);
        for delivery in &mail.deliveries {
            batch.remove(&inner.entries, &format!("{}{id}", entry_prefix(&delivery.recipient)));
        }
        Ok(true)
    }

    /// Remembers at most `pairs` greylisted pairs from now on.
    #[cfg(test)]
    pub(crate) fn keep_greylist(&self, pairs: usize) {
        self.inner.greylist_retention.keep(pairs);
    }

    /// Remembers a greylisted pair's first attempt, and forgets the
    /// oldest pairs past [`GREYLIST_KEPT`]: a pair forgotten is greylisted
    /// again, as a greylisting server's expired entry is.
    fn remember_pair(&self, pair: &str, now: Millis) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut batch = inner.store.batch();
        batch.put(&inner.greylist, pair, &now)?;
        let order = format!("{:015}", inner.store.next_id()?);
        batch.put(&inner.greylist_order, &order, &(pair, now))?;
        inner.store.apply(batch)?;
        inner.greylist_retention.added();
        inner.greylist_retention.remove_oldest(
            "greylist pairs",
            &inner.store,
            &inner.greylist_order,
            |order, batch| {
                // Unless the pair was seen afresh since (its mailbox turned
                // greylisting on again): that sighting has its own entry.
                if let Some((pair, first_seen)) = inner.greylist_order.get::<(String, Millis)>(order)? {
                    if inner.greylist.get::<Millis>(&pair)? == Some(first_seen) {
                        batch.remove(&inner.greylist, &pair);
                    }
                }
                batch.remove(&inner.greylist_order, order);
                Ok(Some(()))
            },
        );
        Ok(())
    }

    /// Removes the oldest messages past the retention (see [`Retention`]).
    fn enforce_retention(&self) {
        let inner = &self.inner;
        inner
            .retention
            .remove_oldest("mail capture", &inner.store, &inner.messages, |id, batch| {
                Ok(self.removals(id, batch)?.then_some(()))
            });
    }

    async fn emit(&self, event: MailEvent) {
        let observer = self.inner.observer.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(observer) = observer {
            observer(event).await;
        }
    }

    /// RCPT: the mailbox's answer, remembering a greylisted first attempt.
    async fn check_rcpt(&self, from: &str, to: &str) -> RcptVerdict {
        let now = self.inner.clock.now();
        let Some(address) = normalize_address(to) else {
            return RcptVerdict::Reject {
                code: 501,
                enhanced: "5.1.3".into(),
                text: "Bad recipient address syntax".into(),
            };
        };
        let sender = normalize_address(from).unwrap_or_default();
        let decided = (|| -> Result<RcptDecision, StoreError> {
            let mailbox = self.mailbox(&address)?;
            let greylist = if mailbox.greylist {
                let key = format!("{address}{KEY_SEPARATOR}{sender}");
                let state = greylist_state(self.inner.greylist.get(&key)?, now);
                if state == Greylist::FirstAttempt {
                    self.remember_pair(&key, now)?;
                }
                state
            } else {
                Greylist::Passed
            };
            Ok(decide_rcpt(&mailbox, greylist))
        })();
        let reply = match decided {
            Ok(RcptDecision::Accept) => Reply {
                code: 250,
                enhanced: "2.1.5".into(),
                text: "Recipient OK".into(),
            },
            Ok(RcptDecision::Refuse(reply)) => reply,
            Err(error) => {
                tracing::warn!(%error, "mailbox lookup failed");
                temporary_failure()
            }
        };
        let outcome = if reply.code == 250 {
            Outcome::Accepted
        } else {
            Outcome::of_refusal(reply.code)
        };
        self.emit(MailEvent {
            stage: MailStage::Rcpt,
            at: now,
            from: from.to_string(),
            recipient: address,
            code: reply.code,
            enhanced: reply.enhanced.clone(),
            text: reply.text.clone(),
            message_id: None,
            outcome,
        })
        .await;
        if reply.code == 250 {
            RcptVerdict::Accept
        } else {
            RcptVerdict::Reject {
                code: reply.code,
                enhanced: reply.enhanced,
                text: reply.text,
            }
        }
    }

    /// After DATA: each recipient's disposition, then the message stored
    /// durably if anyone takes it.
    async fn accept(&self, envelope: Envelope, raw: Vec<u8>) -> Result<DataVerdict, StoreError> {
        let now = self.inner.clock.now();
        let mut decisions = Vec::with_capacity(envelope.rcpts.len());
        for rcpt in &envelope.rcpts {
            let address = normalize_address(rcpt).unwrap_or_else(|| rcpt.clone());
            let mailbox = self.mailbox(&address)?;
            let disposition = decide_delivery(&mailbox, &envelope.from);
            decisions.push((address, disposition));
        }
        let refusal_of = |d: &Disposition| match d {
            Disposition::Refused(reply) => Some(reply.clone()),
            _ => None,
        };
        if decisions.iter().all(|(_, d)| refusal_of(d).is_some()) {
            // Nobody takes it: refuse the whole message with the first reason.
            let first = decisions.iter().find_map(|(_, d)| refusal_of(d)).unwrap_or(Reply {
                code: 554,
                enhanced: "5.5.1".into(),
                text: "No valid recipients".into(),
            });
            for (address, d) in &decisions {
                let reply = refusal_of(d).unwrap_or_else(|| first.clone());
                self.emit(refusal_event(MailStage::Data, now, &envelope.from, address, &reply))
                    .await;
            }
            return Ok(DataVerdict::Reject {
                code: first.code,
                enhanced: first.enhanced,
                text: first.text,
            });
        }

        let size = raw.len();
        let (raw, parsed) = if size <= PARSE_IN_PLACE_BYTES {
            let parsed = parse_message(&raw);
            (raw, parsed)
        } else {
            match tokio::task::spawn_blocking(move || {
                let parsed = parse_message(&raw);
                (raw, parsed)
            })
            .await
            {
                Ok(done) => done,
                Err(_) => {
                    return Ok(DataVerdict::Reject {
                        code: 451,
                        enhanced: "4.3.0".into(),
                        text: "Temporary local problem, try again later".into(),
                    })
                }
            }
        };
        let id = format!("{:012}", self.inner.store.next_id()?);
        let deliveries: Vec<Delivery> = decisions
            .iter()
            .map(|(address, d)| {
                let (outcome, folder, refusal) = match d {
                    Disposition::Inbox => (Outcome::Accepted, Some(Folder::Inbox), None),
                    Disposition::Spam => (Outcome::Spam, Some(Folder::Spam), None),
                    Disposition::Dropped => (Outcome::Dropped, None, None),
                    Disposition::Refused(reply) => (Outcome::of_refusal(reply.code), None, Some(reply.clone())),
                };
                Delivery {
                    recipient: address.clone(),
                    outcome,
                    folder,
                    refusal,
                }
            })
            .collect();
        let from = parsed.from.clone().unwrap_or_else(|| envelope.from.clone());
        let stored = StoredMail {
            id: id.clone(),
            received_at: now,
            size,
            envelope: envelope.clone(),
            from,
            subject: parsed.subject,
            date: parsed.date,
            headers: parsed.headers,
            text: parsed.text,
            html: parsed.html,
            attachments: parsed.attachments,
            parsed: parsed.parsed,
            deliveries: deliveries.clone(),
        };
        let inner = &self.inner;
        let mut batch = inner.store.batch();
        batch.put(&inner.messages, &id, &stored)?;
        batch.put(&inner.raw, &id, &RawSource::encode(&raw))?;
        for delivery in &deliveries {
            let entry = match delivery.outcome {
                Outcome::Accepted | Outcome::Spam => MailboxEntry {
                    id: id.clone(),
                    folder: delivery.folder.unwrap_or(Folder::Inbox),
                    dropped: false,
                },
                Outcome::Dropped => MailboxEntry {
                    id: id.clone(),
                    folder: Folder::Inbox,
                    dropped: true,
                },
                Outcome::Rejected | Outcome::Deferred => continue,
            };
            batch.put(
                &inner.entries,
                &format!("{}{id}", entry_prefix(&delivery.recipient)),
                &entry,
            )?;
        }
        // Written, then made durable by the first sync after it: the
        // delivery log's for the first event below (the store's log
        // replays a prefix), or the one at the end.
        inner.store.apply(batch)?;
        inner.retention.added();

        let queued = format!("Ok: queued as {id}");
        for delivery in &deliveries {
            let event = match &delivery.refusal {
                Some(reply) => refusal_event(MailStage::Data, now, &envelope.from, &delivery.recipient, reply),
                None => MailEvent {
                    stage: MailStage::Data,
                    at: now,
                    from: envelope.from.clone(),
                    recipient: delivery.recipient.clone(),
                    code: 250,
                    enhanced: "2.0.0".into(),
                    text: queued.clone(),
                    message_id: Some(id.clone()),
                    outcome: delivery.outcome,
                },
            };
            self.emit(MailEvent {
                message_id: Some(id.clone()),
                ..event
            })
            .await;
        }
        inner.store.flush().await?;
        for delivery in &deliveries {
            if delivery.folder.is_some() {
                inner.arrivals.changed(&delivery.recipient);
            }
        }
        tracing::info!(id = %id, size, recipients = deliveries.len(), "mail captured");
        self.enforce_retention();
        Ok(DataVerdict::Accepted { id })
    }
}

fn entry_prefix(address: &str) -> String {
    format!("{address}{KEY_SEPARATOR}")
}

fn temporary_failure() -> Reply {
    Reply {
        code: 451,
        enhanced: "4.3.0".into(),
        text: "Temporary local problem, try again later".into(),
    }
}

fn refusal_event(stage: MailStage, at: Millis, from: &str, recipient: &str, reply: &Reply) -> MailEvent {
    MailEvent {
        stage,
        at,
        from: from.to_string(),
        recipient: recipient.to_string(),
        code: reply.code,
        enhanced: reply.enhanced.clone(),
        text: reply.text.clone(),
        message_id: None,
        outcome: Outcome::of_refusal(reply.code),
    }
}

impl MailBackend for MailWorld {
    fn rcpt(&self, from: &str, to: &str) -> BoxFuture<'_, RcptVerdict> {
        let (from, to) = (from.to_string(), to.to_string());
        Box::pin(async move { self.check_rcpt(&from, &to).await })
    }

    fn refusal(&self) -> Option<crate::store::Refusal> {
        self.inner.store.refusal()
    }

    fn data(&self, envelope: Envelope, raw: Vec<u8>) -> BoxFuture<'_, DataVerdict> {
        Box::pin(async move {
            match self.accept(envelope, raw).await {
                Ok(verdict) => verdict,
                Err(error) => {
                    tracing::warn!(%error, "mail could not be stored");
                    let reply = temporary_failure();
                    DataVerdict::Reject {
                        code: reply.code,
                        enhanced: reply.enhanced,
                        text: reply.text,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_six_digit_runs() {
        assert_eq!(find_code("code: 123456."), Some("123456"));
        assert_eq!(find_code("1234567 then 654321"), Some("654321"));
        assert_eq!(find_code("call 03-5460-0124"), None);
        assert_eq!(find_code("ワンタイムパスワード：987654\n"), Some("987654"));
        assert_eq!(find_code("000001"), Some("000001"));
    }

    #[test]
    fn raw_sources_round_trip() {
        for bytes in [
            b"plain ascii\r\n".to_vec(),
            "日本語".as_bytes().to_vec(),
            vec![0x82, 0xa0, 0x00, 0xff],
        ] {
            let json = serde_json::to_string(&RawSource::encode(&bytes)).unwrap();
            let back: RawSource = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_bytes(), bytes);
        }
    }
}

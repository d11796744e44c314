//! The delivery log: every message otpgate sent or carried, with the
//! timeline of what happened to it, durable before anything is acknowledged.
//!
//! Both sides write here: the OTP core's channels (queued, submitted, the
//! receipt or SMTP reply) and the simulated network (accepted by the SMSC,
//! retry scheduled, delivered to the handset). A message's `state` follows
//! from its events. Texts are kept with codes masked: never a plain code.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::changes::Changes;
use crate::clock::{Millis, Window};
use crate::member::Channel;
use crate::store::retention::Retention;
use crate::store::{Store, StoreError, Tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Submitted,
    Enroute,
    Delivered,
    Failed,
    Expired,
    Rejected,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Delivered | State::Failed | State::Expired | State::Rejected
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Submitted => "submitted",
            State::Enroute => "enroute",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Rejected => "rejected",
        }
    }

    /// A final state that is not `delivered`.
    pub fn is_failure(self) -> bool {
        self.is_final() && self != State::Delivered
    }

    /// Every state, in the order a message goes through them.
    pub const ALL: [State; 7] = [
        State::Queued,
        State::Submitted,
        State::Enroute,
        State::Delivered,
        State::Failed,
        State::Expired,
        State::Rejected,
    ];

    /// The state named `name` (`delivered`, ...), as [`State::as_str`] writes it.
    pub fn named(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The log state for an SMPP receipt `stat`.
    pub fn from_stat(stat: &str) -> Option<State> {
        match stat {
            "DELIVRD" => Some(State::Delivered),
            "UNDELIV" => Some(State::Failed),
            "REJECTD" => Some(State::Rejected),
            "EXPIRED" => Some(State::Expired),
            "DELETED" => Some(State::Failed),
            "ENROUTE" | "ACCEPTD" => Some(State::Enroute),
            _ => None,
        }
    }
}

/// One thing that happened to a message, with its protocol detail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub at: Millis,
    /// `queued`, `submitted`, `submit_refused`, `accepted`, `retry_scheduled`,
    /// `delivered`, `failed`, `rejected`, `expired`, `incomplete` (a long
    /// message whose other parts never came), `receipt`, `smtp_reply`, ...
    pub kind: String,
    /// The state this event moves the message to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// Why, in the words of the model: `absent_subscriber`, `storage_full`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smsc_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    pub fn new(kind: &str, at: Millis) -> Event {
        Event {
            kind: kind.to_string(),
            at,
            ..Event::default()
        }
    }

    pub fn state(mut self, state: State) -> Event {
        self.state = Some(state);
        self
    }

    pub fn reason(mut self, reason: &str) -> Event {
        self.reason = Some(reason.to_string());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Event {
        self.detail = Some(detail.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub channel: Channel,
    /// E.164 number or email address.
    pub to: String,
    /// The sender as the handset shows it (SMS) or the envelope sender (email).
    pub from: String,
    /// `otpgate` for the OTP core, else the SMPP system_id or `smtp`.
    pub origin: String,
    pub member_id: Option<String>,
    pub otp_id: Option<String>,
    /// The text with codes masked (`******`).
    pub text: String,
    pub smsc_message_id: Option<String>,
    /// The carrier of the handset, when known.
    pub carrier: Option<String>,
    pub state: State,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub events: Vec<Event>,
}

/// What retention reads of a message to decide and to remove its index
/// entries: the events are skipped, not decoded.
#[derive(Deserialize)]
struct MessageHead {
    to: String,
    member_id: Option<String>,
    otp_id: Option<String>,
    smsc_message_id: Option<String>,
    state: State,
    updated_at: Millis,
}

/// A new message to log.
pub struct NewMessage {
    pub channel: Channel,
    pub to: String,
    pub from: String,
    pub origin: String,
    pub member_id: Option<String>,
    pub otp_id: Option<String>,
    pub text: String,
    pub carrier: Option<String>,
    pub at: Millis,
}

/// Filters for [`DeliveryLog::query`].
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub member_id: Option<String>,
    pub to: Option<String>,
    pub otp_id: Option<String>,
    /// The messages the SMSC knows by any of these ids (those one id an
    /// ESME was given names: a `submit_multi`'s destinations).
    pub smsc_message_ids: Option<Vec<String>>,
    pub before: Option<String>,
    pub limit: usize,
    /// Only messages in this state now.
    pub state: Option<State>,
    pub channel: Option<Channel>,
    /// Only messages created in this window.
    pub window: Window,
}

/// The most messages one page of [`DeliveryLog::query`] reads past those it
/// keeps: a filter that matches few (a state, a channel) answers a short
/// page with a `next` cursor, rather than reading the whole log at once.
pub const MOST_READ_PER_PAGE: usize = 5_000;

impl Query {
    /// Whether `m` passes the member, `to`, OTP, state, channel and time
    /// filters.
    fn keeps(&self, m: &Message) -> bool {
        self.member_id.as_ref().is_none_or(|v| m.member_id.as_ref() == Some(v))
            && self.to.as_ref().is_none_or(|v| &m.to == v)
            && self.otp_id.as_ref().is_none_or(|v| m.otp_id.as_ref() == Some(v))
            && self.state.is_none_or(|s| m.state == s)
            && self.channel.is_none_or(|c| m.channel == c)
            && self.window.holds(m.created_at)
    }
}

/// A message just written, with the event written with it, not yet
/// durable: [`DeliveryLog::publish`] makes it so.
pub struct Written {
    pub message: Message,
    pub event: Event,
}

/// Observers are told of each event after it is durable (status callbacks).
pub type Observer = Arc<dyn Fn(&Message, &Event) + Send + Sync>;

#[derive(Clone)]
pub struct DeliveryLog {
    store: Store,
    messages: Tree,
    /// `kind\0value\0message id` → message id, for member, to, otp and smsc lookups.
    index: Tree,
    /// Serialises read-modify-write of one message (striped by id).
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
    observers: Arc<std::sync::RwLock<Vec<Observer>>>,
    /// Woken on every event of a message, for long polls on it.
    changed: Changes,
    retention: Arc<Retention>,
}

/// Messages kept unless [`DeliveryLog::keep`] says otherwise.
pub const DEFAULT_RETENTION: usize = 100_000;

/// How long after its last event a message that is not final yet is kept
/// past the retention: the longest validity period of the shipped carrier
/// models, so a message the SMSC still holds keeps its log until its last
/// attempt can tell it. One that never hears again (an external SMSC that
/// sends no receipt) goes after that.
pub const OPEN_KEPT_MS: Millis = 72 * 3_600_000;

fn message_key(n: u64) -> String {
    format!("m{n:012}")
}

impl DeliveryLog {
    pub fn open(store: &Store) -> Result<DeliveryLog, StoreError> {
        let messages = store.tree("messages")?;
        Ok(DeliveryLog {
            store: store.clone(),
            index: store.tree("message_index")?,
            locks: Arc::new((0..crate::LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()),
            observers: Arc::new(std::sync::RwLock::new(Vec::new())),
            changed: Changes::default(),
            retention: Arc::new(Retention::new(DEFAULT_RETENTION, messages.len())),
            messages,
        })
    }

    /// Keeps at most `messages` (at least one); the oldest go first.
    pub fn keep(&self, messages: usize) {
        self.retention.keep(messages);
    }

    /// Removes the oldest messages past the retention, with their index
    /// entries (see [`Retention`]); `now` is the time of the event just
    /// written. A message that is not final stays while it may still move
    /// ([`OPEN_KEPT_MS`]).
    fn enforce_retention(&self, now: Millis) {
        self.retention
            .remove_oldest("delivery log", &self.store, &self.messages, |id, batch| {
                // Under the message's lock, so an append cannot write it back.
                // Not waited for: one being appended to now waits for the next
                // turn.
                let Ok(guard) = self.lock_for(id).try_lock() else {
                    return Ok(None);
                };
                let message = self.messages.get::<MessageHead>(id)?;
                if message
                    .as_ref()
                    .is_some_and(|m| !m.state.is_final() && now - m.updated_at < OPEN_KEPT_MS)
                {
                    return Ok(None);
                }
                if let Some(message) = message {
                    batch.remove(&self.index, &format!("to\0{}\0{id}", message.to));
                    if let Some(m) = &message.member_id {
                        batch.remove(&self.index, &format!("member\0{m}\0{id}"));
                    }
                    if let Some(o) = &message.otp_id {
                        batch.remove(&self.index, &format!("otp\0{o}\0{id}"));
                    }
                    if let Some(s) = &message.smsc_message_id {
                        batch.remove(&self.index, &format!("smsc\0{s}"));
                    }
                }
                batch.remove(&self.messages, id);
                Ok(Some(guard))
            })
    }

    pub fn observe(&self, observer: Observer) {
        self.observers.write().unwrap_or_else(|e| e.into_inner()).push(observer);
    }

    fn lock_for(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let hash = id
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[hash % self.locks.len()]
    }

    fn index_put(&self, kind: &str, value: &str, id: &str) -> Result<(), StoreError> {
        self.index.put(&format!("{kind}\0{value}\0{id}"), &id)
    }

    /// Logs a new message with its first event; durable when this returns.
    pub async fn create(&self, new: NewMessage, first: Event) -> Result<Message, StoreError> {
        let written = self.write_create(new, first)?;
        let message = written.message.clone();
        self.publish(written).await?;
        Ok(message)
    }

    /// Writes a new message without waiting for it to be durable: the
    /// caller adds writes of its own and then hands the result to
    /// [`DeliveryLog::publish`]. The store's log is replayed as a prefix,
    /// so one sync after all of them covers every one, in this order.
    pub fn write_create(&self, new: NewMessage, first: Event) -> Result<Written, StoreError> {
        let id = message_key(self.store.next_id()?);
        let mut first = first;
        first.id = format!("{id}.1");
        let state = first.state.unwrap_or(State::Queued);
        let message = Message {
            id: id.clone(),
            channel: new.channel,
            to: new.to,
            from: new.from,
            origin: new.origin,
            member_id: new.member_id,
            otp_id: new.otp_id,
            text: new.text,
            smsc_message_id: first.smsc_message_id.clone(),
            carrier: new.carrier,
            state,
            created_at: new.at,
            updated_at: new.at,
            events: vec![first.clone()],
        };
        self.messages.put(&id, &message)?;
        self.retention.added();
        self.index_put("to", &message.to, &id)?;
        if let Some(m) = &message.member_id {
            self.index_put("member", m, &id)?;
        }
        if let Some(o) = &message.otp_id {
            self.index_put("otp", o, &id)?;
        }
        if let Some(s) = &message.smsc_message_id {
            self.index.put(&format!("smsc\0{s}"), &id)?;
        }
        Ok(Written { message, event: first })
    }

    /// Appends an event; the state moves unless the message is already final
    /// (a late receipt never undoes a delivery). Durable when this returns.
    pub async fn append(&self, id: &str, event: Event) -> Result<Option<Message>, StoreError> {
        let Some(written) = self.write_append(id, event, |_| {}).await? else {
            return Ok(None);
        };
        let message = written.message.clone();
        self.publish(written).await?;
        Ok(Some(message))
    }

    /// Appends an event after `edit` has changed the message (who it is
    /// for, the sender shown), without waiting for it to be durable; see
    /// [`DeliveryLog::write_create`].
    pub async fn write_append(
        &self,
        id: &str,
        event: Event,
        edit: impl FnOnce(&mut Message),
    ) -> Result<Option<Written>, StoreError> {
        let _guard = self.lock_for(id).lock().await;
        let Some(mut message) = self.messages.get::<Message>(id)? else {
            return Ok(None);
        };
        edit(&mut message);
        let mut event = event;
        event.id = format!("{id}.{}", message.events.len() + 1);
        if let Some(state) = event.state {
            if !message.state.is_final() {
                message.state = state;
            }
        }
        if let Some(s) = &event.smsc_message_id {
            if message.smsc_message_id.is_none() {
                message.smsc_message_id = Some(s.clone());
                self.index.put(&format!("smsc\0{s}"), &id.to_string())?;
            }
        }
        message.updated_at = message.updated_at.max(event.at);
        message.events.push(event.clone());
        self.messages.put(id, &message)?;
        Ok(Some(Written { message, event }))
    }

    /// Waits until what was written (and everything before it) is durable,
    /// then tells the observers.
    pub async fn publish(&self, written: Written) -> Result<(), StoreError> {
        self.store.flush().await?;
        self.notify(&written.message, &written.event);
        if written.message.state.is_final() {
            self.retention.may_go(&written.message.id);
        }
        self.enforce_retention(written.event.at);
        Ok(())
    }

    /// Waits until `done` holds for the message or `timeout` (real time)
    /// passes; returns the message as it is then.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: std::time::Duration,
        done: impl Fn(&Message) -> bool,
    ) -> Result<Option<Message>, StoreError> {
        let found = self
            .changed
            .wait_until(id, timeout, || match self.get(id)? {
                None => Ok::<_, StoreError>(Some(None)),
                Some(m) if done(&m) => Ok(Some(Some(m))),
                Some(_) => Ok(None),
            })
            .await?;
        match found {
            Some(answer) => Ok(answer),
            None => self.get(id),
        }
    }

    fn notify(&self, message: &Message, event: &Event) {
        self.changed.changed(&message.id);
        for observer in self.observers.read().unwrap_or_else(|e| e.into_inner()).iter() {
            observer(message, event);
        }
    }

    pub fn get(&self, id: &str) -> Result<Option<Message>, StoreError> {
        self.messages.get(id)
    }

    /// The id of the message the SMSC knows as `smsc_id` (the message
    /// itself not read).
    pub fn id_by_smsc_id(&self, smsc_id: &str) -> Result<Option<String>, StoreError> {
        self.index.get(&format!("smsc\0{smsc_id}"))
    }

    /// After a restart, closes what the crash left open and nothing will
    /// move forward: for each message not yet final, `settle` answers the
    /// event that settles it, or `None` when something resumes it (a
    /// pending SMS in the simulated network, a receipt still due from an
    /// external SMSC). Returns how many it settled.
    pub async fn settle_after_restart(&self, settle: impl Fn(&Message) -> Option<Event>) -> Result<usize, StoreError> {
        let mut settled = 0;
        for id in self.messages.keys_with_prefix("m")? {
            let Some(message) = self.get(&id)? else { continue };
            if message.state.is_final() {
                continue;
            }
            if let Some(event) = settle(&message) {
                self.append(&id, event).await?;
                settled += 1;
            }
        }
        Ok(settled)
    }

    /// Messages newest first, filtered; `before` is a message id cursor.
    pub fn query(&self, q: &Query) -> Result<(Vec<Message>, Option<String>), StoreError> {
        let limit = if q.limit == 0 { 100 } else { q.limit.min(1000) };
        if let Some(smsc_ids) = &q.smsc_message_ids {
            return self.query_by_smsc_ids(smsc_ids, q, limit);
        }
        let filter = [("member", &q.member_id), ("to", &q.to), ("otp", &q.otp_id)]
            .into_iter()
            .find_map(|(kind, v)| v.as_ref().map(|v| (kind, v.clone())));
        // Newest first, read only as far as the page needs: message ids
        // sort by age, and so do the index entries under one value.
        let (prefix, strip) = match &filter {
            Some((kind, value)) => {
                let prefix = format!("{kind}\0{value}\0");
                let strip = prefix.len();
                (prefix, strip)
            }
            None => ("m".to_string(), 0),
        };
        let before = q.before.as_ref().map(|b| format!("{}{b}", &prefix[..strip]));
        let source = match &filter {
            Some(_) => &self.index,
            None => &self.messages,
        };
        let mut out = Vec::new();
        let mut passed = 0;
        for key in source.keys_rev(&prefix, before.as_deref()) {
            let key = key?;
            let id = &key[strip..];
            let Some(m) = self.get(id)? else { continue };
            // Ids sort by age, so past `since` nothing further can pass.
            if q.window.is_before(m.created_at) {
                return Ok((out, None));
            }
            if q.keeps(&m) {
                if out.len() == limit {
                    let next = out.last().map(|m: &Message| m.id.clone());
                    return Ok((out, next));
                }
                out.push(m);
            } else {
                passed += 1;
                if passed == MOST_READ_PER_PAGE {
                    return Ok((out, Some(id.to_string())));
                }
            }
        }
        Ok((out, None))
    }

    /// [`DeliveryLog::query`] for the messages the SMSC knows by `smsc_ids`:
    /// a few, read through the index at once.
    fn query_by_smsc_ids(
        &self,
        smsc_ids: &[String],
        q: &Query,
        limit: usize,
    ) -> Result<(Vec<Message>, Option<String>), StoreError> {
        let mut out = Vec::new();
        for smsc_id in smsc_ids {
            let Some(id) = self.id_by_smsc_id(smsc_id)? else {
                continue;
            };
            if let Some(m) = self.get(&id)? {
                out.push(m);
            }
        }
        out.retain(|m| q.keeps(m) && q.before.as_ref().is_none_or(|before| m.id < *before));
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out.dedup_by(|a, b| a.id == b.id);
        let next = (out.len() > limit).then(|| out[limit - 1].id.clone());
        out.truncate(limit);
        Ok((out, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_retention_the_oldest_messages_go_with_their_index_entries() {
        let log = DeliveryLog::open(&Store::temporary().unwrap()).unwrap();
        log.keep(2);
        let mut ids = Vec::new();
        for n in 0..4 {
            let mut finished = Event::new("delivered", n).state(State::Delivered);
            finished.smsc_message_id = Some(format!("s{n}"));
            ids.push(log.create(new(&format!("+81901111000{n}")), finished).await.unwrap().id);
        }
        assert!(log.get(&ids[0]).unwrap().is_none() && log.get(&ids[1]).unwrap().is_none());
        assert!(by_smsc_id(&log, "s1").is_none());
        assert_eq!(by_smsc_id(&log, "s3").unwrap().id, ids[3]);
        let (kept, _) = log
            .query(&Query {
                member_id: Some("M1".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            kept.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            vec![ids[3].clone(), ids[2].clone()]
        );
        assert_eq!(
            log.index.len(),
            2 * 4,
            "to, member, otp and smsc entries of the two kept"
        );
        assert!(log.append(&ids[0], Event::new("late", 9)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_message_not_final_stays_past_the_retention_while_it_may_still_move() {
        let log = DeliveryLog::open(&Store::temporary().unwrap()).unwrap();
        log.keep(1);
        let submit = |n: u32, at: Millis| {
            let log = log.clone();
            async move {
                let new = NewMessage {
                    at,
                    ..new(&format!("+81901111000{n}"))
                };
                let accepted = Event::new("smsc_accepted", at).state(State::Submitted);
                log.create(new, accepted).await.unwrap().id
            }
        };
        let open = submit(0, 0).await;
        let done = submit(1, 1).await;
        log.append(&done, Event::new("delivered", 2).state(State::Delivered))
            .await
            .unwrap();
        submit(2, 3).await;
        assert!(log.get(&open).unwrap().is_some(), "still pending: kept");
        assert!(log.get(&done).unwrap().is_none(), "final: removed");
        let delivered = log
            .append(&open, Event::new("delivered", 4).state(State::Delivered))
            .await
            .unwrap();
        assert!(delivered.is_some(), "its late delivery is logged");
        submit(3, 5).await;
        assert!(log.get(&open).unwrap().is_none(), "final now: removed");

        let silent = submit(4, 6).await;
        submit(5, 6 + OPEN_KEPT_MS - 1).await;
        assert!(log.get(&silent).unwrap().is_some());
        submit(6, 6 + OPEN_KEPT_MS).await;
        assert!(
            log.get(&silent).unwrap().is_none(),
            "never heard of again: removed in the end"
        );
    }

    /// A state filter that matches few reads at most
    /// [`MOST_READ_PER_PAGE`] messages for a page and says where to go on.
    #[tokio::test]
    async fn a_rare_state_answers_short_pages_that_go_on_where_they_stopped() {
        let log = DeliveryLog::open(&Store::temporary().unwrap()).unwrap();
        let mut rejected = Vec::new();
        for n in 0..MOST_READ_PER_PAGE + 10 {
            let at = n as Millis;
            let id = log
                .create(
                    new(&format!("+8190{n:08}")),
                    Event::new("smsc_accepted", at).state(State::Submitted),
                )
                .await
                .unwrap()
                .id;
            if n == 3 || n == MOST_READ_PER_PAGE + 5 {
                log.append(&id, Event::new("rejected", at).state(State::Rejected))
                    .await
                    .unwrap();
                rejected.push(id);
            }
        }
        let page = |before: Option<String>| {
            log.query(&Query {
                state: Some(State::Rejected),
                channel: Some(Channel::Sms),
                before,
                limit: 10,
                ..Query::default()
            })
            .unwrap()
        };
        let (first, next) = page(None);
        assert_eq!(first.iter().map(|m| &m.id).collect::<Vec<_>>(), [&rejected[1]]);
        let next = next.expect("read its most, it says where it stopped");
        let (second, end) = page(Some(next));
        assert_eq!(second.iter().map(|m| &m.id).collect::<Vec<_>>(), [&rejected[0]]);
        assert_eq!(end, None);
        let email = log.query(&Query {
            channel: Some(Channel::Email),
            limit: 10,
            ..Query::default()
        });
        assert!(email.unwrap().0.is_empty());
    }

    /// The message the SMSC knows as `smsc_id`, through the index.
    fn by_smsc_id(log: &DeliveryLog, smsc_id: &str) -> Option<Message> {
        let id = log.id_by_smsc_id(smsc_id).unwrap()?;
        log.get(&id).unwrap()
    }

    /// The SMSC's ids of a `submit_multi`'s destinations find their
    /// messages newest first, a page at a time, with the other filters.
    #[tokio::test]
    async fn messages_are_found_by_the_smsc_ids_a_page_at_a_time() {
        let log = DeliveryLog::open(&Store::temporary().unwrap()).unwrap();
        let mut ids = Vec::new();
        for n in 0..3 {
            let mut accepted = Event::new("smsc_accepted", n).state(State::Submitted);
            accepted.smsc_message_id = Some(format!("s{n}"));
            ids.push(
                log.create(new(&format!("+8190111100{n:02}")), accepted)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let smsc_ids = ["s0", "s1", "s2", "unknown"].map(String::from).to_vec();
        let page = |before: Option<String>, member: &str| Query {
            smsc_message_ids: Some(smsc_ids.clone()),
            member_id: Some(member.into()),
            before,
            limit: 2,
            ..Default::default()
        };
        let found = |(messages, next): (Vec<Message>, Option<String>)| {
            (messages.into_iter().map(|m| m.id).collect::<Vec<_>>(), next)
        };
        let first = found(log.query(&page(None, "M1")).unwrap());
        assert_eq!(first, (vec![ids[2].clone(), ids[1].clone()], Some(ids[1].clone())));
        let rest = found(log.query(&page(first.1, "M1")).unwrap());
        assert_eq!(rest, (vec![ids[0].clone()], None));
        assert_eq!(
            found(log.query(&page(None, "M2")).unwrap()),
            (vec![], None),
            "another member's"
        );
    }

    fn new(to: &str) -> NewMessage {
        NewMessage {
            channel: Channel::Sms,
            to: to.into(),
            from: "03-5460-0124".into(),
            origin: "otpgate".into(),
            member_id: Some("M1".into()),
            otp_id: Some("o1".into()),
            text: "code ******".into(),
            carrier: None,
            at: 0,
        }
    }

    #[tokio::test]
    async fn events_move_the_state_but_never_undo_a_final_one() {
        let log = DeliveryLog::open(&Store::temporary().unwrap()).unwrap();
        let m = log
            .create(new("+819011110001"), Event::new("queued", 0).state(State::Queued))
            .await
            .unwrap();
        let mut submitted = Event::new("submitted", 1).state(State::Submitted);
        submitted.smsc_message_id = Some("42".into());
        log.append(&m.id, submitted).await.unwrap();
        log.append(&m.id, Event::new("delivered", 2).state(State::Delivered))
            .await
            .unwrap();
        let after = log
            .append(&m.id, Event::new("retry_scheduled", 3).state(State::Enroute))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.state, State::Delivered);
        assert_eq!(by_smsc_id(&log, "42").unwrap().id, m.id);
        let (found, _) = log
            .query(&Query {
                member_id: Some("M1".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].events.len(), 4);
    }
}

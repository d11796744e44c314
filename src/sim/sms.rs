//! The simulated SMS network behind the embedded SMSC: it stores each
//! submitted message, lets the handset's carrier decide each delivery
//! attempt, retries absent phones on the carrier's schedule until the
//! validity ends, and sends receipts back through the SMSC.
//!
//! Every random draw comes from a generator seeded with the simulation seed
//! and the message id, so one seed gives the same outcomes on every run,
//! whatever order the messages interleave in.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::carrier::{Attempt, Carrier, Outcome, ReceiptCodes};
use crate::clock::{Clock, Millis};
use crate::delivery::log::{DeliveryLog, Event, Message, NewMessage, State, Written};
use crate::member::{self, Channel};
use crate::sim::{InboxMessage, World};
use crate::smsc::{
    DropCause, Dropped, KeptPart, MessageStatus, MobileOriginated, MultiSubmitted, Receipt, ReceiptHub, Replacement,
    SmscBackend, Submission, SubmitRefusal,
};
use crate::store::retention::Retention;
use crate::store::{Store, StoreError, Tree};

/// Resolves once the ESME answered a receipt (dropped if it never did).
type ReceiptAnswered = tokio::sync::oneshot::Receiver<()>;

/// One message in the SMSC's store-and-forward queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmsRecord {
    pub id: String,
    pub system_id: String,
    /// The source address as submitted.
    pub source: String,
    /// E.164 destination.
    pub to: String,
    pub text: String,
    pub registered_delivery: u8,
    pub submitted_at: Millis,
    /// The end of validity: an absent phone past this gets EXPIRED.
    pub expires_at: Millis,
    pub attempts: u32,
    /// `ENROUTE` until final, then the receipt stat.
    pub stat: String,
    pub final_at: Option<Millis>,
    pub err: u16,
    pub message_state: u8,
    pub log_id: String,
    /// When the next planned attempt is due. A planned attempt that finds
    /// another time here was replaced (the network's alert tried earlier and
    /// planned anew) and does nothing, so one message never has two retry
    /// chains.
    #[serde(default)]
    pub next_attempt_at: Option<Millis>,
    /// The handset inbox entry this message became, removed with the
    /// record when the retention lets the record go.
    #[serde(default)]
    pub inbox_key: Option<String>,
    /// The ids of a long message's earlier parts (see `Inner::parts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_ids: Vec<String>,
    /// The one id of the `submit_multi` this message is a destination of:
    /// its receipts carry it, and `query_sm` and `cancel_sm` take it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_id: Option<String>,
    /// The submitted data coding, which a `replace_sm`'s text is read in
    /// (records from before it was kept: the GSM default alphabet).
    #[serde(default)]
    pub data_coding: u8,
    /// Submitted with `set_dpf`: an alert_notification goes to its ESME
    /// when the phone, absent at an attempt, becomes reachable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub set_dpf: bool,
}

/// Why a delivery attempt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The first delivery or a retry, planned for this time.
    Planned(Millis),
    /// The network's alert (the phone may be back) or a restart: whatever
    /// was planned, try now.
    Now,
}

impl SmsRecord {
    fn is_final(&self) -> bool {
        self.stat != "ENROUTE"
    }

    /// The id its ESME was given: a `submit_multi`'s one, else its own.
    fn given_id(&self) -> String {
        self.multi_id.clone().unwrap_or_else(|| self.id.clone())
    }
}

#[derive(Clone)]
pub struct SmsNetwork {
    inner: Arc<Inner>,
}

/// What an id the SMSC gave an ESME names, read from the SMSC's own trees:
/// the network answers query_sm, cancel_sm and replace_sm through it, and
/// the troubleshooting desk a support agent's search by that id.
#[derive(Clone)]
pub struct SmscIds {
    /// An earlier part's id of a long message → the whole message's id,
    /// so query_sm and cancel_sm by a part's id work after a restart too;
    /// removed with the record.
    parts: Tree,
    /// A `submit_multi`'s one id → the ids of its destinations' messages;
    /// removed with the last of them.
    multis: Tree,
}

impl SmscIds {
    pub fn open(store: &Store) -> Result<SmscIds, StoreError> {
        Ok(SmscIds {
            parts: store.tree("sms_parts")?,
            multis: store.tree("sms_multi")?,
        })
    }

    /// The whole message's id for a long message's part's id; any other id
    /// as it is.
    fn whole(&self, id: &str) -> Result<String, StoreError> {
        Ok(self.parts.get::<String>(id)?.unwrap_or_else(|| id.to_string()))
    }

    /// The ids of the messages `message_id` names: a `submit_multi`'s one
    /// per destination, else the one it (or a long message's part's id)
    /// names.
    pub fn named(&self, message_id: &str) -> Result<Vec<String>, StoreError> {
        match self.multis.get::<Vec<String>>(message_id)? {
            Some(ids) => Ok(ids),
            None => Ok(vec![self.whole(message_id)?]),
        }
    }
}

struct Inner {
    store: Store,
    records: Tree,
    /// `{to}\0{id}` for messages not yet final.
    pending: Tree,
    /// Receipts not yet taken by an ESME, by message id: written with the
    /// final record, removed once the hub is done with them, handed to the
    /// hub again by `resume` after a restart.
    receipts: Tree,
    /// What the ids an ESME was given name (long messages' parts,
    /// `submit_multi`s).
    ids: SmscIds,
    /// Parts of long messages acknowledged before their last part, by part
    /// id (`SmscBackend::keep_part`); removed with the whole message's
    /// record, or when the SMSC drops them unfinished.
    kept_parts: Tree,
    /// Messages simulated handsets sent to ESMEs, by id, until an ESME
    /// answered them (or the hub gave them up).
    mobile: Tree,
    /// The SMSC's accounts (system_ids) a handset's message may go to: all
    /// but the OTP core's own.
    accounts: std::sync::RwLock<Vec<String>>,
    world: World,
    log: DeliveryLog,
    clock: Arc<Clock>,
    hub: ReceiptHub,
    seed: u64,
    /// The OTP core's own system_id: its receipts are awaited, so that a
    /// clock advance answers after the delivery log has them.
    internal_system_id: String,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// How many records are kept (the log's `log_retention`): past it the
    /// oldest final ones go, with the inbox messages they became.
    retention: Retention,
    /// Messages not yet final (the `pending` entries), and the most there
    /// may be (`max_pending`): past it a submit gets ESME_RMSGQFUL, as a
    /// store-and-forward queue that is full answers.
    pending_count: AtomicUsize,
    max_pending: AtomicUsize,
}

/// The most messages the SMSC holds not yet final, by default.
pub const DEFAULT_MAX_PENDING: usize = 1_000_000;

/// A place in the SMSC's queue, taken before a submit writes anything;
/// given back when the submit fails before its queue entry is written.
struct QueueSlot<'a> {
    count: &'a AtomicUsize,
    taken: bool,
}

impl QueueSlot<'_> {
    /// The queue entry is written: the slot stays taken until the message
    /// is final.
    fn fill(mut self) {
        self.taken = false;
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        if self.taken {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The destination of a submit_sm in E.164, or why it cannot be one.
pub fn destination_e164(addr: &str, ton: u8) -> Result<String, SubmitRefusal> {
    let digits: String = addr.chars().filter(|c| c.is_ascii_digit()).collect();
    let spelled = if ton == 1 || addr.starts_with('+') {
        format!("+{digits}")
    } else {
        addr.to_string()
    };
    member::parse_mobile(&spelled).map_err(|_| SubmitRefusal::InvalidDestination)
}

/// Parses an SMPP time (`YYMMDDhhmmsstnnp`): absolute with a quarter-hour
/// offset, or relative (`R`). Returns an absolute time.
pub fn parse_smpp_time(text: &str, now: Millis) -> Option<Millis> {
    let b = text.as_bytes();
    if b.len() != 16 || !b[..15].iter().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let num = |i: usize| -> i64 { ((b[i] - b'0') as i64) * 10 + (b[i + 1] - b'0') as i64 };
    let (yy, mo, dd, hh, mi, ss) = (num(0), num(2), num(4), num(6), num(8), num(10));
    match b[15] {
        b'R' => Some(now + ((((yy * 365 + mo * 30 + dd) * 24 + hh) * 60 + mi) * 60 + ss) * 1000),
        sign @ (b'+' | b'-') => {
            let offset_min = num(13) * 15 * if sign == b'+' { 1 } else { -1 };
            let date = chrono::NaiveDate::from_ymd_opt(2000 + yy as i32, mo as u32, dd as u32)?;
            let dt = date.and_hms_opt(hh as u32, mi as u32, ss as u32)?;
            Some(dt.and_utc().timestamp_millis() - offset_min * 60_000)
        }
        _ => None,
    }
}

impl SmsNetwork {
    pub fn open(
        store: &Store,
        world: World,
        log: DeliveryLog,
        clock: Arc<Clock>,
        hub: ReceiptHub,
        seed: u64,
        internal_system_id: String,
    ) -> Result<SmsNetwork, StoreError> {
        let records = store.tree("sms_records")?;
        let pending = store.tree("sms_pending")?;
        Ok(SmsNetwork {
            inner: Arc::new(Inner {
                store: store.clone(),
                retention: Retention::new(crate::delivery::log::DEFAULT_RETENTION, records.len()),
                records,
                pending_count: AtomicUsize::new(pending.len()),
                max_pending: AtomicUsize::new(DEFAULT_MAX_PENDING),
                pending,
                receipts: store.tree("sms_receipts")?,
                ids: SmscIds::open(store)?,
                kept_parts: store.tree("sms_kept_parts")?,
                mobile: store.tree("sms_mobile")?,
                accounts: std::sync::RwLock::new(Vec::new()),
                world,
                log,
                clock,
                hub,
                seed,
                internal_system_id,
                locks: (0..crate::LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            }),
        })
    }

    /// Keeps at most `records` SMS records (at least one).
    pub fn keep(&self, records: usize) {
        self.inner.retention.keep(records);
    }

    /// Holds at most `messages` not yet final (at least one).
    pub fn hold_at_most(&self, messages: usize) {
        self.inner.max_pending.store(messages.max(1), Ordering::SeqCst);
    }

    /// How many messages the SMSC holds not yet final.
    pub fn pending(&self) -> usize {
        self.inner.pending_count.load(Ordering::SeqCst)
    }

    /// A place in the queue, or ESME_RMSGQFUL when it is full.
    fn queue_slot(&self) -> Result<QueueSlot<'_>, SubmitRefusal> {
        let (count, max) = (&self.inner.pending_count, self.inner.max_pending.load(Ordering::SeqCst));
        match count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)) {
            Ok(_) => Ok(QueueSlot { count, taken: true }),
            Err(_) => {
                tracing::debug!(max, "submit_sm refused: the queue is full");
                Err(SubmitRefusal::QueueFull)
            }
        }
    }

    /// A message left the queue (made final, or a stray entry dropped).
    fn left_queue(&self) {
        let _ = self
            .inner
            .pending_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| Some(n.saturating_sub(1)));
    }

    fn lock_for(&self, id: &str) -> &tokio::sync::Mutex<()> {
        let locks = &self.inner.locks;
        &locks[(stable_hash(id) % locks.len() as u64) as usize]
    }

    /// Removes the oldest final records past the retention, with the inbox
    /// messages they became; pending ones stay (see [`Retention`]).
    /// Runs after a record is added (past the cap) or made final
    /// (removable).
    fn enforce_retention(&self) {
        let inner = &self.inner;
        inner
            .retention
            .remove_oldest("SMS records", &inner.store, &inner.records, |id, batch| {
                // Not waited for: the caller may hold one of the (shared)
                // stripes itself, and a record being worked on is not one to
                // remove.
                let Ok(guard) = self.lock_for(id).try_lock() else {
                    return Ok(None);
                };
                match inner.records.get::<SmsRecord>(id)? {
                    Some(rec) if rec.is_final() => {
                        if let Some(key) = &rec.inbox_key {
                            inner.world.remove_inbox(batch, key);
                        }
                        for part in &rec.part_ids {
                            batch.remove(&inner.ids.parts, part);
                        }
                        batch.remove(&inner.records, id);
                        // The shared id goes with the last of its
                        // destinations' messages, whichever that is (a
                        // pending one stays past newer final ones).
                        if let Some(multi) = &rec.multi_id {
                            let ids = inner.ids.multis.get::<Vec<String>>(multi)?.unwrap_or_default();
                            // Newest first: retention removes the oldest
                            // first, so the newest answer at once.
                            let mut any_kept = false;
                            for other in ids.iter().rev() {
                                if !batch.removes(&inner.records, other) && inner.records.contains(other)? {
                                    any_kept = true;
                                    break;
                                }
                            }
                            if !any_kept {
                                batch.remove(&inner.ids.multis, multi);
                            }
                        }
                        Ok(Some(guard))
                    }
                    _ => Ok(None),
                }
            })
    }

    fn rng(&self, id: &str, attempt: u32, salt: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.inner.seed ^ stable_hash(id) ^ ((attempt as u64) << 40) ^ salt)
    }

    /// The handset's carrier model, with the chaos overrides of `PUT
    /// /v1/sim/chaos`: borrowed, and copied only when an override applies
    /// (a copy per attempt was 7% of the SMSC's CPU).
    fn carrier_for(&self, carrier_id: &str) -> Option<Cow<'_, Carrier>> {
        let set = &self.inner.world.carriers;
        let carrier = set
            .get(carrier_id)
            .or_else(|| set.get(&self.inner.world.default_carrier))?;
        let chaos = self.inner.world.chaos();
        let rates = chaos
            .carriers
            .get(&carrier.id)
            .or_else(|| chaos.carriers.get(&carrier.host));
        let Some(rates) = rates else {
            return Some(Cow::Borrowed(carrier));
        };
        let mut carrier = carrier.clone();
        if let Some(v) = rates.throttle {
            carrier.chaos.throttle = v;
        }
        if let Some(v) = rates.failure {
            carrier.chaos.failure = v;
        }
        if let Some(v) = rates.long_delay {
            carrier.chaos.long_delay = v;
        }
        Some(Cow::Owned(carrier))
    }

    fn schedule(&self, id: String, at: Millis, trigger: Trigger) {
        let net = self.clone();
        self.inner.clock.schedule(
            at,
            Box::new(move |now| Box::pin(async move { net.attempt(&id, now, trigger).await })),
        );
    }

    /// Hands a receipt to the hub; its stored copy goes once the hub is done
    /// with it (the ESME answered, or the hub gave it up: too many waiting,
    /// or refused). When the server stops first the copy stays, and the next
    /// start sends it again: an ESME may see a receipt twice, never none.
    /// The returned receiver fires when the hub is done.
    fn send_receipt(&self, id: String, receipt: Receipt) -> ReceiptAnswered {
        let acked = self.inner.hub.deliver(receipt);
        let receipts = self.inner.receipts.clone();
        let (done, finished) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if acked.await.is_ok() {
                if let Err(e) = receipts.remove(&id) {
                    tracing::warn!(message_id = %id, error = %e, "forgetting a sent receipt");
                }
                let _ = done.send(());
            }
        });
        finished
    }

    /// Re-schedules every message still pending, after a restart, and hands
    /// the hub the receipts and handsets' messages no ESME took before it.
    pub fn resume(&self) -> Result<usize, StoreError> {
        let waiting = self.inner.receipts.scan_prefix::<Receipt>("")?;
        if !waiting.is_empty() {
            tracing::info!(
                receipts = waiting.len(),
                "receipts from before the restart wait for their ESMEs"
            );
        }
        for (id, receipt) in waiting {
            drop(self.send_receipt(id, receipt));
        }
        for (_, (message, log_id)) in self.inner.mobile.scan_prefix::<(MobileOriginated, String)>("")? {
            self.send_mobile_to_esme(message, log_id);
        }
        let now = self.inner.clock.now();
        let mut resumed = 0;
        for (key, id) in self.inner.pending.scan_prefix::<String>("")? {
            match self.inner.records.get::<SmsRecord>(&id)? {
                Some(rec) if !rec.is_final() => {
                    self.schedule(id, now, Trigger::Now);
                    resumed += 1;
                }
                // A crash cut a submit or a final write in two.
                _ => {
                    self.inner.pending.remove(&key)?;
                    self.left_queue();
                }
            }
        }
        Ok(resumed)
    }

    /// What a restart makes of a delivery-log SMS that is not final: `None`
    /// while this network still holds it pending ([`SmsNetwork::resume`]
    /// tries it again); its outcome when the network finished it but the
    /// crash came before the log heard; otherwise (the crash came between
    /// the log and the network's store, or before the submit was answered)
    /// it failed, interrupted.
    pub fn settle_after_restart(&self, message: &Message, now: Millis) -> Option<Event> {
        let record = match &message.smsc_message_id {
            // A handset's message still held for its ESME goes out again.
            Some(id) if self.inner.mobile.contains(id).unwrap_or(false) => return None,
            Some(id) => self.inner.records.get::<SmsRecord>(id).ok().flatten(),
            None => None,
        };
        match record {
            Some(rec) if !rec.is_final() => None,
            Some(rec) => {
                let mut event = Event::new("restored", rec.final_at.unwrap_or(now))
                    .detail("final outcome restored after a restart");
                event.state = State::from_stat(&rec.stat).or(Some(State::Failed));
                event.stat = Some(rec.stat.clone());
                event.err = Some(format!("{:03}", rec.err));
                Some(event)
            }
            None => Some(
                Event::new("interrupted", now)
                    .state(State::Failed)
                    .reason("interrupted_by_restart")
                    .detail("the server stopped before the SMSC stored this message"),
            ),
        }
    }

    /// The SMSC's accounts a handset's message may go to (all but the OTP
    /// core's own, which is left out here).
    pub fn serve_accounts(&self, system_ids: Vec<String>) {
        let own = &self.inner.internal_system_id;
        let accounts = system_ids.into_iter().filter(|s| s != own).collect();
        *self.inner.accounts.write().unwrap_or_else(|e| e.into_inner()) = accounts;
    }

    /// A simulated handset sends `text` to `to`, an ESME's short code or
    /// number: the SMSC hands it to a receiving bind of `system_id` (by
    /// default the one account bound to receive now) as a `deliver_sm`,
    /// keeping it until one binds. Durable, and in the delivery log, when
    /// it returns; the log says when the ESME took it.
    pub async fn send_from_handset(
        &self,
        number: &str,
        to: &str,
        text: &str,
        system_id: Option<&str>,
    ) -> Result<MobileSent, MobileRefusal> {
        let inner = &self.inner;
        if to.is_empty() || to.len() > 20 || !to.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
            return Err(MobileRefusal::Invalid(format!(
                "`to` must be an address of at most 20 letters or digits, not `{to}`"
            )));
        }
        let length = text.chars().count();
        if length == 0 || length > MAX_MOBILE_CHARS {
            return Err(MobileRefusal::Invalid(format!(
                "`text` must have 1 to {MAX_MOBILE_CHARS} characters, not {length}"
            )));
        }
        let accounts = inner.accounts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let system_id = match system_id {
            Some(s) if accounts.iter().any(|a| a == s) => s.to_string(),
            Some(s) => {
                return Err(MobileRefusal::Invalid(format!(
                    "`{s}` is not an SMSC account a handset can send to (accounts: {})",
                    accounts.join(", ")
                )))
            }
            None => {
                let bound: Vec<String> = inner
                    .hub
                    .receiving_accounts()
                    .into_iter()
                    .filter(|a| accounts.contains(a))
                    .collect();
                match bound.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(MobileRefusal::NoEsme(
                            "no ESME is bound to receive; bind one, or name its account in `system_id` to keep the message until it binds".into(),
                        ))
                    }
                    several => {
                        return Err(MobileRefusal::NoEsme(format!(
                            "several accounts are bound to receive ({}); name one in `system_id`",
                            several.join(", ")
                        )))
                    }
                }
            }
        };
        let handset = inner.world.handset_or_default(number).map_err(MobileRefusal::Store)?;
        if let Some(cause) = handset.absent() {
            return Err(MobileRefusal::Handset(format!(
                "the phone cannot send: {}",
                cause.code()
            )));
        }
        if !handset.in_service || !handset.sms_plan {
            return Err(MobileRefusal::Handset(
                "the phone cannot send SMS: its number is out of service or its plan is data only".into(),
            ));
        }
        let now = inner.clock.now();
        let id = format!("{:010}", inner.store.next_id().map_err(MobileRefusal::Store)?);
        let message = MobileOriginated {
            system_id: system_id.clone(),
            id: id.clone(),
            source_addr: number.trim_start_matches('+').to_string(),
            dest_addr: to.to_string(),
            text: text.to_string(),
        };
        let mut sent = Event::new("sent_by_handset", now)
            .state(State::Enroute)
            .detail(format!("from the handset to {to}, for the ESME account {system_id}"));
        sent.smsc_message_id = Some(id.clone());
        let new = NewMessage {
            channel: Channel::Sms,
            to: to.to_string(),
            from: number.to_string(),
            origin: HANDSET_ORIGIN.into(),
            member_id: None,
            otp_id: None,
            text: crate::otp::mask_digits(text),
            carrier: Some(handset.carrier.clone()),
            at: now,
        };
        let written = inner.log.write_create(new, sent).map_err(MobileRefusal::Store)?;
        let log_id = written.message.id.clone();
        inner
            .mobile
            .put(&id, &(&message, &log_id))
            .map_err(MobileRefusal::Store)?;
        // One sync makes both durable: the store's log replays a prefix.
        inner.log.publish(written).await.map_err(MobileRefusal::Store)?;
        self.send_mobile_to_esme(message, log_id.clone());
        Ok(MobileSent { id, system_id, log_id })
    }

    /// Hands a handset's message to the hub; once an ESME answered (or the
    /// hub gave it up) the log says so and the stored copy goes. When the
    /// server stops first the copy stays, and the next start sends it
    /// again: an ESME may see it twice, never not at all.
    fn send_mobile_to_esme(&self, message: MobileOriginated, log_id: String) {
        let answered = self.inner.hub.deliver_mobile(message.clone());
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let Ok(taken) = answered.await else {
                return;
            };
            let now = inner.clock.now();
            let event = if taken {
                Event::new("taken_by_esme", now)
                    .state(State::Delivered)
                    .detail(format!("deliver_sm answered by {}", message.system_id))
            } else {
                Event::new("refused_by_esme", now)
                    .state(State::Failed)
                    .reason("esme_refused")
                    .detail(format!(
                        "deliver_sm refused by {}, or too many waiting",
                        message.system_id
                    ))
            };
            if let Err(e) = inner.log.append(&log_id, event).await {
                tracing::error!(message_id = %message.id, error = %e, "logging a handset's message");
            }
            if let Err(e) = inner.mobile.remove(&message.id) {
                tracing::warn!(message_id = %message.id, error = %e, "forgetting a handset's message");
            }
        });
    }

    /// The network's alert: a handset that was absent became reachable, so
    /// pending messages to it are tried at once.
    pub async fn handset_changed(&self, number: &str) {
        let ids = match self.inner.pending.scan_prefix::<String>(&format!("{number}\0")) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "reading pending messages");
                return;
            }
        };
        // An alert_notification first, once per ESME address, for the
        // messages submitted with set_dpf that found the phone absent.
        let mut alerted: Vec<(String, String)> = Vec::new();
        for (_, id) in &ids {
            let Ok(Some(rec)) = self.inner.records.get::<SmsRecord>(id) else {
                continue;
            };
            let key = (rec.system_id.clone(), rec.source.clone());
            if rec.set_dpf && rec.attempts > 0 && !rec.is_final() && !alerted.contains(&key) {
                self.inner.hub.alert(crate::smsc::Alert {
                    system_id: rec.system_id.clone(),
                    ms_addr: rec.to.trim_start_matches('+').to_string(),
                    esme_addr: rec.source.clone(),
                    message_id: rec.given_id(),
                });
                alerted.push(key);
            }
        }
        for (_, id) in ids {
            self.attempt(&id, self.inner.clock.now(), Trigger::Now).await;
        }
    }

    pub fn record(&self, id: &str) -> Result<Option<SmsRecord>, StoreError> {
        self.inner.records.get(id)
    }

    /// Stores a submitted message (`multi`: the id of the `submit_multi`
    /// it came in) and plans its first delivery attempt.
    async fn accept(&self, sub: Submission, multi: Option<&str>) -> Result<String, SubmitRefusal> {
        let inner = &self.inner;
        let to = destination_e164(&sub.dest_addr, sub.dest_ton)?;
        let now = inner.clock.now();
        let handset = inner.world.handset_or_default(&to).map_err(sys)?;
        let carrier = self
            .carrier_for(&handset.carrier)
            .ok_or_else(|| SubmitRefusal::System("no carrier models loaded".into()))?;
        let id = format!("{:010}", inner.store.next_id().map_err(sys)?);
        let chaos = inner.world.chaos();
        if chaos.enabled && carrier.chaos_throttle(&mut self.rng(&id, 0, 1)) {
            return Err(SubmitRefusal::Throttled);
        }
        let slot = self.queue_slot()?;
        let expires_at = expiry(sub.validity_period.as_deref(), now, carrier.validity_ms())?;
        let scheduled = scheduled_delivery(sub.schedule_delivery_time.as_deref(), now, expires_at)?;
        let shown = carrier.displayed_sender(&sub.source_addr, &inner.world.profile);
        let mut accepted = Event::new("smsc_accepted", now).state(State::Submitted).detail(format!(
            "accepted for {} ({})",
            member::display_number(&to),
            carrier.id
        ));
        accepted.smsc_message_id = Some(id.clone());
        if let Some(multi) = multi {
            accepted.detail = accepted
                .detail
                .map(|d| format!("{d}; a destination of submit_multi {multi}, the id its receipts carry"));
        }
        if let Some(at) = scheduled {
            accepted.detail = accepted
                .detail
                .map(|d| format!("{d}; delivery scheduled for {}", crate::clock::rfc3339(at)));
        }
        // The log entry, the queue entry and the record are written in that
        // order and made durable by one sync: the store's log replays a
        // prefix, so a crash between them leaves only states that
        // `resume` and the log's `settle_after_restart` already handle.
        let written = self
            .log_accepted(&sub, &to, &carrier.id, shown, accepted)
            .await
            .map_err(sys)?
            .ok_or_else(|| SubmitRefusal::System("the logged message vanished".into()))?;
        let log_id = written.message.id.clone();
        let first_attempt_at = scheduled.unwrap_or(now)
            + carrier
                .delivery_delay_ms(&mut self.rng(&id, 0, 2), chaos.enabled)
                .max(0);
        let record = SmsRecord {
            id: id.clone(),
            system_id: sub.system_id,
            source: sub.source_addr,
            to: to.clone(),
            text: sub.text,
            registered_delivery: sub.registered_delivery,
            set_dpf: sub.set_dpf,
            submitted_at: now,
            expires_at,
            attempts: 0,
            stat: "ENROUTE".into(),
            final_at: None,
            err: 0,
            message_state: 1,
            log_id,
            next_attempt_at: Some(first_attempt_at),
            inbox_key: None,
            part_ids: sub.part_ids,
            multi_id: multi.map(str::to_string),
            data_coding: sub.data_coding,
        };
        // The queue entry first: a crash between the two writes leaves an
        // entry without a record, which `resume` drops; the other order
        // would leave a record that nothing resumes. (Not a multi-tree
        // transaction: sled's halved the SMSC's throughput.)
        inner.pending.put(&format!("{to}\0{id}"), &id).map_err(sys)?;
        slot.fill();
        for part in &record.part_ids {
            inner.ids.parts.put(part, &id).map_err(sys)?;
            // Now part of the whole: synced with it below, so a crash keeps
            // either the kept part or the message, never both or neither.
            inner.kept_parts.remove(part).map_err(sys)?;
        }
        inner.records.put(&id, &record).map_err(sys)?;
        inner.retention.added();
        inner.log.publish(written).await.map_err(sys)?;
        self.schedule(id.clone(), first_attempt_at, Trigger::Planned(first_attempt_at));
        self.enforce_retention();
        Ok(id)
    }

    /// A `submit_multi` ([`SmscBackend::submit_multi`]): each destination
    /// a message of its own, as a `submit_sm`'s, under one id that its
    /// receipts carry; the id's list of messages made durable after them.
    /// The destinations are taken together, so that their syncs are one
    /// group commit (one after another, 255 took 45–80 ms).
    async fn accept_multi(&self, subs: Vec<Submission>) -> Result<MultiSubmitted, SubmitRefusal> {
        let inner = &self.inner;
        let multi = format!("{:010}", inner.store.next_id().map_err(sys)?);
        let accepts = subs.into_iter().map(|sub| self.accept(sub, Some(&multi)));
        let (mut ids, mut refused) = (Vec::new(), Vec::new());
        for (index, accepted) in futures::future::join_all(accepts).await.into_iter().enumerate() {
            match accepted {
                Ok(id) => ids.push(id),
                Err(refusal) => refused.push((index, refusal)),
            }
        }
        if ids.is_empty() {
            let first = refused.into_iter().next().map(|(_, refusal)| refusal);
            return Err(first.unwrap_or(SubmitRefusal::Status(0x33)));
        }
        inner.ids.multis.put(&multi, &ids).map_err(sys)?;
        inner.store.flush().await.map_err(sys)?;
        Ok((multi, refused))
    }

    /// The ids of the messages an id an ESME was given names
    /// ([`SmscIds::named`]).
    pub fn ids_named(&self, message_id: &str) -> Result<Vec<String>, StoreError> {
        self.inner.ids.named(message_id)
    }

    /// Logs the SMSC's acceptance of `sub`: as an event of the message its
    /// `message_ref` names (the OTP core's own, which now shows the carrier
    /// and the sender the phone will show), else as a new message with
    /// its text masked. Written, not yet durable ([`DeliveryLog::publish`]);
    /// `None` if the named message vanished meanwhile.
    async fn log_accepted(
        &self,
        sub: &Submission,
        to: &str,
        carrier_id: &str,
        shown: String,
        accepted: Event,
    ) -> Result<Option<Written>, StoreError> {
        let log = &self.inner.log;
        let existing = match &sub.message_ref {
            Some(r) => log.get(r)?,
            None => None,
        };
        if let Some(m) = existing {
            let carrier_id = carrier_id.to_string();
            return log
                .write_append(&m.id, accepted, |m| {
                    m.carrier = Some(carrier_id);
                    m.from = shown;
                })
                .await;
        }
        let new = NewMessage {
            channel: Channel::Sms,
            to: to.to_string(),
            from: shown,
            origin: sub.system_id.clone(),
            member_id: None,
            otp_id: None,
            text: crate::otp::mask_digits(&sub.text),
            carrier: Some(carrier_id.to_string()),
            at: accepted.at,
        };
        log.write_create(new, accepted).map(Some)
    }

    /// One delivery attempt, when it falls due.
    async fn attempt(&self, id: &str, now: Millis, trigger: Trigger) {
        match self.try_attempt(id, now, trigger).await {
            // The OTP core records the receipt before it answers; waiting
            // here (the message's lock released) makes a clock advance
            // answer after the log has it.
            Ok(Some(answered)) => self.wait_for_the_core(answered).await,
            Ok(None) => {}
            Err(e) => tracing::error!(message_id = id, error = %e, "delivery attempt failed"),
        }
    }

    /// Waits (5 s at most) for the OTP core to answer a receipt, while its
    /// session is bound: with none (its link dropped, or the server is
    /// stopping) the receipt waits in the hub for the next bind, and an
    /// advance of the clock, or a shutdown, need not wait 5 s for it.
    async fn wait_for_the_core(&self, answered: ReceiptAnswered) {
        let hub = &self.inner.hub;
        let mut detaches = hub.detaches();
        let give_up = tokio::time::sleep(std::time::Duration::from_secs(5));
        tokio::pin!(answered, give_up);
        while hub.can_receive(&self.inner.internal_system_id) {
            tokio::select! {
                _ = &mut answered => return,
                _ = &mut give_up => return,
                changed = detaches.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Returns, when the attempt sent the OTP core a receipt, what tells
    /// that the core answered it.
    async fn try_attempt(
        &self,
        id: &str,
        now: Millis,
        trigger: Trigger,
    ) -> Result<Option<ReceiptAnswered>, StoreError> {
        let inner = &self.inner;
        let _guard = self.lock_for(id).lock().await;
        let Some(mut rec) = inner.records.get::<SmsRecord>(id)? else {
            return Ok(None);
        };
        if rec.is_final() {
            return Ok(None);
        }
        if let Trigger::Planned(due) = trigger {
            if rec.next_attempt_at.is_some_and(|planned| planned != due) {
                // An alert tried earlier and planned another retry.
                return Ok(None);
            }
        }
        let handset = inner.world.handset_or_default(&rec.to)?;
        let Some(carrier) = self.carrier_for(&handset.carrier) else {
            return Ok(None);
        };
        if now >= rec.expires_at {
            let codes = carrier.expired_receipt();
            let event = Event::new("expired", now)
                .state(State::Expired)
                .reason("validity_period_ended");
            return self.finish(rec, codes, event, now).await;
        }
        let chaos = inner.world.chaos().enabled;
        let attempt = Attempt {
            handset: &handset,
            source: &rec.source,
            source_is_domestic_other_carrier: true,
            text: &rec.text,
            chaos,
        };
        let outcome = carrier.decide(&attempt, &inner.world.profile, &mut self.rng(id, rec.attempts + 1, 3));
        rec.attempts += 1;
        match outcome {
            Outcome::Delivered { shown_sender } => {
                rec.inbox_key = Some(inner.world.push_inbox(
                    &rec.to,
                    InboxMessage {
                        from: shown_sender.clone(),
                        text: rec.text.clone(),
                        received_at: now,
                        message_id: rec.given_id(),
                    },
                )?);
                let event = Event::new("delivered", now)
                    .state(State::Delivered)
                    .detail(format!("shown on the handset from {shown_sender}"));
                let to = rec.to.clone();
                let answered = self.finish(rec, carrier.delivered_receipt(), event, now).await?;
                inner.world.arrived(&to);
                Ok(answered)
            }
            Outcome::Absent { cause } => {
                let next = (now + carrier.retry_delay_ms(rec.attempts)).min(rec.expires_at);
                let mut event = Event::new("retry_scheduled", now)
                    .state(State::Enroute)
                    .reason(cause.code());
                event.attempt = Some(rec.attempts);
                event.next_attempt_at = Some(next);
                let codes = carrier.expired_receipt();
                event.err = Some(format!("{:03}", codes.err));
                event.network_error_code = codes.network_error_code.map(|(t, c)| format!("{t}:{c}"));
                rec.next_attempt_at = Some(next);
                let notice = intermediate_asked(&rec, &codes, now);
                let mut batch = inner.store.batch();
                batch.put(&inner.records, id, &rec)?;
                if let Some(notice) = &notice {
                    batch.put(&inner.receipts, &intermediate_key(id), &stored_copy(notice))?;
                }
                inner.store.apply(batch)?;
                // Durable with the log's event: the store's log replays a prefix.
                inner.log.append(&rec.log_id, event).await?;
                if let Some(notice) = notice {
                    drop(self.send_receipt(intermediate_key(id), notice));
                }
                self.schedule(id.to_string(), next, Trigger::Planned(next));
                Ok(None)
            }
            Outcome::Failed { cause, receipt } => {
                let state = State::from_stat(&receipt.stat).unwrap_or(State::Failed);
                let kind = if state == State::Rejected { "rejected" } else { "failed" };
                let event = Event::new(kind, now).state(state).reason(cause.code());
                self.finish(rec, receipt, event, now).await
            }
        }
    }

    /// A `replace_sm` ([`SmscBackend::replace`]): a message of `system_id`
    /// from the same source, not yet final, gets the new text, receipt
    /// request and, when given, validity and schedule (a schedule plans
    /// the next attempt anew; a validity ending before the planned attempt
    /// brings it forward to the end). The record and the log's event and
    /// text (masked) are durable before it returns; the handset gets the
    /// new text at delivery. `false` if message `id` is not one to replace.
    async fn replace_pending(
        &self,
        system_id: &str,
        id: &str,
        replacement: &Replacement,
    ) -> Result<bool, SubmitRefusal> {
        let inner = &self.inner;
        let _guard = self.lock_for(id).lock().await;
        let mut rec = match inner.records.get::<SmsRecord>(id).map_err(sys)? {
            Some(r) if r.system_id == system_id && r.source == replacement.source_addr && !r.is_final() => r,
            _ => return Ok(false),
        };
        let now = inner.clock.now();
        let expires_at = match replacement.validity_period.as_deref() {
            Some(given) => {
                let handset = inner.world.handset_or_default(&rec.to).map_err(sys)?;
                let carrier = self
                    .carrier_for(&handset.carrier)
                    .ok_or_else(|| SubmitRefusal::System("no carrier models loaded".into()))?;
                expiry(Some(given), now, carrier.validity_ms())?
            }
            None => rec.expires_at,
        };
        let scheduled = scheduled_delivery(replacement.schedule_delivery_time.as_deref(), now, expires_at)?;
        rec.text = crate::smsc::text::decode(rec.data_coding, &replacement.short_message);
        rec.registered_delivery = replacement.registered_delivery;
        rec.expires_at = expires_at;
        let planned = rec.next_attempt_at;
        let next = match scheduled {
            Some(at) => Some(at),
            None => planned.map(|at| at.min(expires_at)),
        };
        rec.next_attempt_at = next;
        let mut event = Event::new("replaced", now).reason("replace_sm");
        if let Some(at) = scheduled {
            event = event.detail(format!("delivery scheduled for {}", crate::clock::rfc3339(at)));
        }
        let masked = crate::otp::mask_digits(&rec.text);
        inner.records.put(id, &rec).map_err(sys)?;
        let written = inner
            .log
            .write_append(&rec.log_id, event, |m| m.text = masked)
            .await
            .map_err(sys)?;
        match written {
            Some(written) => inner.log.publish(written).await.map_err(sys)?,
            None => inner.store.flush().await.map_err(sys)?,
        }
        if let Some(at) = next.filter(|at| Some(*at) != planned) {
            self.schedule(id.to_string(), at, Trigger::Planned(at));
        }
        Ok(true)
    }

    /// A `cancel_sm` of message `id`: DELETED, no receipt, logged; `false`
    /// if it is not one to cancel (another account's, or final).
    async fn cancel_pending(&self, system_id: &str, id: &str) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let _guard = self.lock_for(id).lock().await;
        let mut rec = match inner.records.get::<SmsRecord>(id)? {
            Some(r) if r.system_id == system_id && !r.is_final() => r,
            _ => return Ok(false),
        };
        let now = inner.clock.now();
        rec.stat = "DELETED".into();
        rec.message_state = 4;
        rec.final_at = Some(now);
        rec.next_attempt_at = None;
        self.store_final(&rec, None)?;
        let event = Event::new("cancelled", now).state(State::Failed).reason("cancel_sm");
        inner.log.append(&rec.log_id, event).await?;
        inner.retention.may_go(&rec.id);
        Ok(true)
    }

    /// Settles a long message the SMSC dropped unfinished
    /// ([`SmscBackend::abandon`]): it becomes a final record, EXPIRED with
    /// the carrier's codes, so that query_sm by any of its parts' ids
    /// answers, the ESME gets the receipt it asked for (each part's id a
    /// copy) and the log shows what came; its kept parts go in the same
    /// write. Done once: parts found again after a crash cut this short are
    /// only let go, and a log entry already written is reused.
    async fn abandon_parts(&self, dropped: &Dropped) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut kept = Vec::new();
        for id in &dropped.part_ids {
            // A part whose keeping failed was never acknowledged.
            if let Some(part) = inner.kept_parts.get::<KeptPart>(id)? {
                kept.push(part);
            }
        }
        let Some((id, sub)) = crate::smsc::incomplete_submission(&kept) else {
            return Ok(());
        };
        let _guard = self.lock_for(&id).lock().await;
        let let_go = |batch: &mut crate::store::Batch| {
            for part in &kept {
                batch.remove(&inner.kept_parts, &part.part_id);
            }
        };
        let to = destination_e164(&sub.dest_addr, sub.dest_ton).ok();
        let handset = match &to {
            Some(to) if inner.records.get::<SmsRecord>(&id)?.is_none() => Some(inner.world.handset_or_default(to)?),
            _ => None,
        };
        let carrier = handset.as_ref().and_then(|h| self.carrier_for(&h.carrier));
        let (Some(to), Some(carrier)) = (to, carrier) else {
            // Settled before a crash, or a destination no message could
            // have (the last part would have been refused): let go.
            let mut batch = inner.store.batch();
            let_go(&mut batch);
            return inner.store.apply(batch);
        };
        let now = inner.clock.now();
        let came_at = kept.iter().map(|p| p.kept_at).min().unwrap_or(now);
        let came = parts_that_came(&kept);
        let why = match dropped.cause {
            DropCause::TooOld => "the other parts did not come within 10 minutes",
            DropCause::TooMany => "the SMSC held as many partial long messages as it may, and this was the oldest",
            DropCause::StartedOver => "a part under the same reference announced another number of parts",
            DropCause::Cancelled => "cancelled by cancel_sm",
        };
        let cancelled = dropped.cause == DropCause::Cancelled;
        // Cancelled, it is DELETED without a receipt, as a whole message's
        // cancel is.
        let codes = match cancelled {
            false => carrier.expired_receipt(),
            true => ReceiptCodes {
                stat: "DELETED".into(),
                err: 0,
                message_state: 4,
                network_error_code: None,
            },
        };
        let mut accepted = Event::new("smsc_accepted", came_at)
            .state(State::Submitted)
            .detail(format!(
                "accepted {came} of a long message for {} ({})",
                member::display_number(&to),
                carrier.id
            ));
        accepted.smsc_message_id = Some(id.clone());
        let mut incomplete = match cancelled {
            false => Event::new("incomplete", now)
                .state(State::Expired)
                .reason("long_message_incomplete"),
            true => Event::new("cancelled", now).state(State::Failed).reason("cancel_sm"),
        }
        .detail(format!("only {came} came: {why}; nothing was delivered"));
        incomplete.stat = Some(codes.stat.clone());
        incomplete.err = Some(format!("{:03}", codes.err));
        incomplete.network_error_code = codes.network_error_code.map(|(t, c)| format!("{t}:{c}"));
        let (log_id, written) = match inner.log.id_by_smsc_id(&id)? {
            Some(log_id) => (log_id, None),
            None => {
                let shown = carrier.displayed_sender(&sub.source_addr, &inner.world.profile);
                let log_id = match self.log_accepted(&sub, &to, &carrier.id, shown, accepted).await? {
                    Some(written) => written.message.id,
                    // The message its reference named went meanwhile.
                    None => sub.message_ref.clone().unwrap_or_default(),
                };
                let written = inner.log.write_append(&log_id, incomplete, |_| {}).await?;
                (log_id, written)
            }
        };
        let record = SmsRecord {
            id: id.clone(),
            system_id: sub.system_id,
            source: sub.source_addr,
            to,
            text: crate::otp::mask_digits(&sub.text),
            registered_delivery: sub.registered_delivery,
            set_dpf: sub.set_dpf,
            submitted_at: came_at,
            expires_at: now,
            attempts: 0,
            stat: codes.stat.clone(),
            final_at: Some(now),
            err: codes.err,
            message_state: codes.message_state,
            log_id,
            next_attempt_at: None,
            inbox_key: None,
            part_ids: sub.part_ids,
            multi_id: None,
            data_coding: sub.data_coding,
        };
        let receipt = receipt_asked(&record, &codes, &sub.text, now).filter(|_| !cancelled);
        let mut batch = inner.store.batch();
        batch.put(&inner.records, &id, &record)?;
        for part in &record.part_ids {
            batch.put(&inner.ids.parts, part, &id)?;
        }
        let_go(&mut batch);
        if let Some(receipt) = &receipt {
            batch.put(&inner.receipts, &id, &stored_copy(receipt))?;
        }
        inner.store.apply(batch)?;
        inner.retention.added();
        match written {
            Some(written) => inner.log.publish(written).await?,
            None => inner.store.flush().await?,
        }
        inner.retention.may_go(&id);
        drop(_guard);
        self.enforce_retention();
        if let Some(receipt) = receipt {
            drop(self.send_receipt(id, receipt));
        }
        Ok(())
    }

    /// Stores a final record, takes it off the pending queue and keeps the
    /// receipt it asked for until an ESME takes it, in one write: a crash
    /// keeps all of it or none.
    fn store_final(&self, rec: &SmsRecord, receipt: Option<&Receipt>) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut batch = inner.store.batch();
        batch.put(&inner.records, &rec.id, rec)?;
        batch.remove(&inner.pending, &format!("{}\0{}", rec.to, rec.id));
        if let Some(receipt) = receipt {
            batch.put(&inner.receipts, &rec.id, receipt)?;
        }
        inner.store.apply(batch)?;
        self.left_queue();
        Ok(())
    }

    /// Makes a message final, logs it and sends the receipt it asked for.
    async fn finish(
        &self,
        mut rec: SmsRecord,
        codes: ReceiptCodes,
        mut event: Event,
        now: Millis,
    ) -> Result<Option<ReceiptAnswered>, StoreError> {
        let inner = &self.inner;
        rec.stat = codes.stat.clone();
        rec.err = codes.err;
        rec.message_state = codes.message_state;
        rec.final_at = Some(now);
        rec.next_attempt_at = None;
        event.stat = Some(codes.stat.clone());
        event.err = Some(format!("{:03}", codes.err));
        event.network_error_code = codes.network_error_code.map(|(t, c)| format!("{t}:{c}"));
        event.attempt = Some(rec.attempts);
        // The receipt quotes the start of the text; after that the SMSC has
        // no use for it. Like a real SMSC's store-and-forward queue it holds
        // the text (an OTP code) only while the message is pending: once
        // final only the handset's inbox has it.
        let receipt = receipt_asked(&rec, &codes, &rec.text, now);
        rec.text = crate::otp::mask_digits(&rec.text);
        // The receipt is stored with the final record: a crash before an
        // ESME takes it leaves it for the next start. The stored copy quotes
        // the text with its digits masked, since only the handset's inbox
        // may keep a code; a receipt sent again after a restart shows that.
        let stored = receipt.as_ref().map(stored_copy);
        self.store_final(&rec, stored.as_ref())?;
        if let Some(written) = inner.log.write_append(&rec.log_id, event, |_| {}).await? {
            inner.log.publish(written).await?;
        } else {
            inner.store.flush().await?;
        }
        inner.retention.may_go(&rec.id);
        self.enforce_retention();
        let Some(receipt) = receipt else {
            return Ok(None);
        };
        let answered = self.send_receipt(rec.id.clone(), receipt);
        Ok((rec.system_id == inner.internal_system_id).then_some(answered))
    }
}

/// What `query_sm` answers for the records an id names (one, or a
/// `submit_multi`'s destinations): ENROUTE while any is, else DELIVERED
/// if all were, else the first that was not; dated by the last to end.
fn status_of(records: &[SmsRecord]) -> Option<MessageStatus> {
    let status = |r: &SmsRecord| MessageStatus {
        final_date: r.final_at,
        state: r.message_state,
        error_code: r.err.min(255) as u8,
    };
    if let Some(waiting) = records.iter().find(|r| !r.is_final()) {
        return Some(status(waiting));
    }
    let last_end = records.iter().filter_map(|r| r.final_at).max();
    let telling = records.iter().find(|r| r.stat != "DELIVRD").or(records.first())?;
    Some(MessageStatus {
        final_date: last_end,
        ..status(telling)
    })
}

/// When a message's validity ends: the `validity_period` given, held
/// within the carrier's own (`carrier_validity` from `now`), or the
/// carrier's when none is given. One that cannot be read is refused with
/// ESME_RINVEXPIRY: the carrier's in its place would hide the ESME's bug.
fn expiry(given: Option<&str>, now: Millis, carrier_validity: Millis) -> Result<Millis, SubmitRefusal> {
    let end = now + carrier_validity;
    match given {
        None => Ok(end),
        Some(given) => match parse_smpp_time(given, now) {
            Some(at) => Ok(at.clamp(now, end)),
            None => Err(SubmitRefusal::Status(0x62)),
        },
    }
}

/// When a submit_sm's `schedule_delivery_time` asks the first delivery to
/// be tried: `None` for now (none given, or one already past). A time that
/// cannot be read, or that falls after the message's validity ends, is
/// refused with ESME_RINVSCHED, as an SMSC that honours it does.
fn scheduled_delivery(given: Option<&str>, now: Millis, expires_at: Millis) -> Result<Option<Millis>, SubmitRefusal> {
    let Some(given) = given else {
        return Ok(None);
    };
    match parse_smpp_time(given, now) {
        Some(at) if at > expires_at => Err(SubmitRefusal::Status(0x61)),
        Some(at) => Ok((at > now).then_some(at)),
        None => Err(SubmitRefusal::Status(0x61)),
    }
}

/// The receipt a message made final with `codes` at `now` owes its ESME,
/// if its `registered_delivery` asked for one (1: any outcome, 2: a
/// failure); it quotes the start of `text`.
fn receipt_asked(rec: &SmsRecord, codes: &ReceiptCodes, text: &str, now: Millis) -> Option<Receipt> {
    let wanted = match rec.registered_delivery & 0x03 {
        1 => true,
        2 => codes.stat != "DELIVRD",
        _ => false,
    };
    wanted.then(|| receipt_of(rec, codes, text, now))
}

/// The receipt of `rec` with `codes` at `now`, quoting the start of `text`.
fn receipt_of(rec: &SmsRecord, codes: &ReceiptCodes, text: &str, now: Millis) -> Receipt {
    Receipt {
        system_id: rec.system_id.clone(),
        message_id: rec.given_id(),
        source_addr: rec.to.trim_start_matches('+').to_string(),
        dest_addr: rec.source.clone(),
        stat: codes.stat.clone(),
        err: codes.err,
        message_state: codes.message_state,
        network_error_code: codes.network_error_code,
        submit_date: rec.submitted_at,
        done_date: now,
        text: text.chars().take(20).collect(),
        part_ids: rec.part_ids.clone(),
        intermediate: false,
    }
}

/// The delivery log's `origin` of a message a simulated handset sent.
pub const HANDSET_ORIGIN: &str = "handset";

/// The longest text a simulated handset sends (ten UCS-2 parts).
pub const MAX_MOBILE_CHARS: usize = 670;

/// A handset's message the SMSC took.
#[derive(Debug, Clone)]
pub struct MobileSent {
    /// Its id, as the ESME's `deliver_sm` does not carry it but the log
    /// and the desk's search take it.
    pub id: String,
    pub system_id: String,
    /// Its delivery-log message.
    pub log_id: String,
}

/// Why a handset's message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MobileRefusal {
    #[error("{0}")]
    Invalid(String),
    /// No ESME to send it to was named or bound.
    #[error("{0}")]
    NoEsme(String),
    /// The phone cannot send now (off, out of coverage, no SMS plan).
    #[error("{0}")]
    Handset(String),
    #[error(transparent)]
    Store(StoreError),
}

/// The intermediate notification a message whose first attempt found its
/// phone absent owes its ESME, if its `registered_delivery` asked for one
/// (bit 0x10): ENROUTE, with the absence's error codes. Sent once, not for
/// every retry of a phone off for days.
fn intermediate_asked(rec: &SmsRecord, codes: &ReceiptCodes, now: Millis) -> Option<Receipt> {
    (rec.registered_delivery & 0x10 != 0 && rec.attempts == 1).then(|| Receipt {
        stat: "ENROUTE".into(),
        message_state: 1,
        intermediate: true,
        ..receipt_of(rec, codes, &rec.text, now)
    })
}

/// Where an intermediate notification waits for its ESME: beside the
/// message's final receipt, which is stored under the message's id.
fn intermediate_key(id: &str) -> String {
    format!("{id}\0intermediate")
}

/// A receipt as it is stored until an ESME takes it: its quoted text with
/// the digits masked, since only a handset's inbox may keep a code.
fn stored_copy(receipt: &Receipt) -> Receipt {
    Receipt {
        text: crate::smsc::receipt_text::star_digits(&receipt.text),
        ..receipt.clone()
    }
}

/// How the parts of a long message that came are told in the log.
fn parts_that_came(kept: &[KeptPart]) -> String {
    let mut seqs: Vec<u8> = kept.iter().map(|p| p.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let total = kept.first().map_or(0, |p| p.total);
    let list: Vec<String> = seqs.iter().map(u8::to_string).collect();
    match list.len() {
        1 => format!("part {} of {total}", list[0]),
        _ => format!("parts {} of {total}", list.join(", ")),
    }
}

fn sys(e: StoreError) -> SubmitRefusal {
    SubmitRefusal::System(e.to_string())
}

impl SmscBackend for SmsNetwork {
    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<String, SubmitRefusal>> {
        Box::pin(self.accept(sub, None))
    }

    fn submit_multi(&self, subs: Vec<Submission>) -> BoxFuture<'_, Result<MultiSubmitted, SubmitRefusal>> {
        Box::pin(self.accept_multi(subs))
    }

    fn keep_part(&self, part: &KeptPart) -> Result<(), SubmitRefusal> {
        self.inner.kept_parts.put(&part.part_id, part).map_err(sys)
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        Box::pin(async move { self.inner.store.flush().await.map_err(sys) })
    }

    fn kept_parts(&self) -> Vec<KeptPart> {
        match self.inner.kept_parts.scan_prefix::<KeptPart>("") {
            Ok(kept) => kept.into_iter().map(|(_, part)| part).collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not read the kept parts of long messages");
                Vec::new()
            }
        }
    }

    fn abandon(&self, dropped: Dropped) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        Box::pin(async move { self.abandon_parts(&dropped).await.map_err(sys) })
    }

    fn refusal(&self) -> Option<SubmitRefusal> {
        let refusal = self.inner.store.refusal()?;
        tracing::debug!(%refusal, "submit_sm refused");
        Some(match refusal.is_temporary() {
            true => SubmitRefusal::QueueFull,
            false => SubmitRefusal::System(refusal.to_string()),
        })
    }

    fn query(&self, system_id: &str, message_id: &str) -> BoxFuture<'_, Option<MessageStatus>> {
        let records: Vec<SmsRecord> = self
            .ids_named(message_id)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| self.record(id).ok().flatten())
            .filter(|r| r.system_id == system_id)
            .collect();
        let found = status_of(&records);
        // A part of a long message still waiting for the rest is en route.
        let found = found.or_else(|| {
            let kept = self.inner.kept_parts.get::<KeptPart>(message_id).ok().flatten()?;
            (kept.system_id == system_id).then_some(MessageStatus {
                final_date: None,
                state: 1,
                error_code: 0,
            })
        });
        Box::pin(async move { found })
    }

    fn replace(
        &self,
        system_id: &str,
        message_id: &str,
        replacement: Replacement,
    ) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        let system_id = system_id.to_string();
        let message_id = message_id.to_string();
        Box::pin(async move {
            // A submit_multi's destinations together, their syncs one group
            // commit (as in `accept_multi`).
            let ids = self.ids_named(&message_id).map_err(sys)?;
            let replaces = ids.iter().map(|id| self.replace_pending(&system_id, id, &replacement));
            let mut replaced = false;
            for result in futures::future::join_all(replaces).await {
                replaced |= result?;
            }
            match replaced {
                true => Ok(()),
                false => Err(SubmitRefusal::NotFound),
            }
        })
    }

    fn cancel(&self, system_id: &str, message_id: &str) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        let system_id = system_id.to_string();
        let message_id = message_id.to_string();
        Box::pin(async move {
            let ids = self.ids_named(&message_id).map_err(sys)?;
            let cancels = ids.iter().map(|id| self.cancel_pending(&system_id, id));
            let mut cancelled = false;
            for result in futures::future::join_all(cancels).await {
                cancelled |= result.map_err(sys)?;
            }
            match cancelled {
                true => Ok(()),
                false => Err(SubmitRefusal::System("no pending message with that id".into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smpp_times() {
        assert_eq!(parse_smpp_time("000000010000000R", 0), Some(3_600_000));
        // 2026-01-01 00:00:00 at +09:00 (36 quarter hours)
        assert_eq!(
            parse_smpp_time("260101000000036+", 0),
            Some(crate::clock::DEFAULT_VIRTUAL_START)
        );
        assert_eq!(parse_smpp_time("garbage", 0), None);
    }

    #[test]
    fn scheduled_deliveries() {
        let now = crate::clock::DEFAULT_VIRTUAL_START;
        let end = now + 86_400_000;
        assert_eq!(scheduled_delivery(None, now, end), Ok(None));
        assert_eq!(
            scheduled_delivery(Some("000000000500000R"), now, end),
            Ok(Some(now + 300_000))
        );
        // 2025-01-01 00:00 UTC: past, so now.
        assert_eq!(scheduled_delivery(Some("250101000000000+"), now, end), Ok(None));
        assert_eq!(
            scheduled_delivery(Some("000002000000000R"), now, end),
            Err(SubmitRefusal::Status(0x61)),
            "two days, past the validity"
        );
        assert_eq!(
            scheduled_delivery(Some("soon"), now, end),
            Err(SubmitRefusal::Status(0x61))
        );
    }

    #[test]
    fn destinations() {
        assert_eq!(destination_e164("819012345678", 1).ok(), Some("+819012345678".into()));
        assert_eq!(destination_e164("09012345678", 0).ok(), Some("+819012345678".into()));
        assert!(destination_e164("0354600124", 0).is_err());
    }
}

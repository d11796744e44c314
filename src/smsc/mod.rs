//! The embedded SMPP 3.4 SMSC: the listener that otpgate's own client and
//! any user's ESME (Kannel, smpplib, node-smpp, Jasmin) bind to, submit
//! messages through and receive delivery receipts from.
//!
//! It is built like the other protocol servers: [`codec`] frames PDUs without
//! touching a socket, `session` runs one connection with an explicit state,
//! [`serve`] accepts connections under a cap and stops them with `unbind` at
//! shutdown. What happens to a message after `submit_sm` is the
//! [`SmscBackend`]'s business; receipts come back through the
//! [`ReceiptHub`]. Only this module and [`crate::delivery::sms`] know the
//! SMPP wire format.
//!
//! It must never answer `submit_sm_resp` OK before the backend has stored
//! the message, never `unwrap()` on what a peer sent, and never log message
//! text (it carries OTP codes).

pub mod binds;
pub mod codec;
mod concat;
mod hub;
pub mod receipt_text;
mod session;
pub(crate) use session::DEFAULT_SUBMIT_WINDOW;
pub mod text;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use rusmpp::CommandStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::admission::Throttle;
use crate::clock::{Clock, Millis};
use crate::shutdown::Shutdown;
use crate::tls::TlsIdentity;

pub use concat::{DropCause, Dropped};
pub use hub::ReceiptHub;
pub use session::incomplete_submission;

/// An ESME account: who may bind, and how fast it may submit.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub system_id: String,
    pub password: String,
    /// submit_sm PDUs per second before ESME_RTHROTTLED; `None` (or 0) for
    /// no limit.
    pub throughput_per_sec: Option<u32>,
    /// deliver_sm unanswered at once on a session of this account; `None`
    /// for the SMSC's [`SmscConfig::window`].
    pub window: Option<usize>,
}

impl Account {
    pub fn new(system_id: impl Into<String>, password: impl Into<String>) -> Account {
        Account {
            system_id: system_id.into(),
            password: password.into(),
            throughput_per_sec: None,
            window: None,
        }
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("system_id", &self.system_id)
            .field("password", &"<hidden>")
            .field("throughput_per_sec", &self.throughput_per_sec)
            .field("window", &self.window)
            .finish()
    }
}

/// How the SMSC answered `submit_sm`, `data_sm` and `submit_multi`, for
/// `/metrics`: taken, or refused and why, so a load test can tell
/// otpgate's refusals from its own.
#[derive(Debug, Default)]
pub struct SmscCounters {
    pub submits_ok: AtomicU64,
    /// ESME_RTHROTTLED: an account's rate, a session's `submit_window`, or
    /// the carrier chaos.
    pub throttled: AtomicU64,
    /// ESME_RMSGQFUL: `max_pending` reached, or the disk short of space.
    pub queue_full: AtomicU64,
    /// Any other error status (a bad destination, a system error ...).
    pub refused_other: AtomicU64,
    /// Connections to the TLS listener whose handshake failed or timed out
    /// (a client speaking plain SMPP there, or one that does not trust the
    /// certificate).
    pub tls_handshakes_failed: AtomicU64,
}

impl SmscCounters {
    fn count(&self, status: CommandStatus) {
        let counter = match status {
            CommandStatus::EsmeRok => &self.submits_ok,
            CommandStatus::EsmeRthrottled => &self.throttled,
            CommandStatus::EsmeRmsgqful => &self.queue_full,
            _ => &self.refused_other,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The SMSC's configuration, validated by whoever builds it.
#[derive(Debug, Clone)]
pub struct SmscConfig {
    pub accounts: Vec<Account>,
    /// Connections served at once; further ones wait in the accept backlog.
    pub max_connections: usize,
    /// Most deliver_sm PDUs a session may have unanswered; more receipts queue.
    pub window: usize,
    /// Requests a session may have in progress (backend calls); past it
    /// `submit_sm`, `query_sm` and `cancel_sm` get ESME_RTHROTTLED at once.
    pub submit_window: usize,
    /// Largest PDU accepted; a longer `command_length` closes the connection.
    pub max_pdu_len: usize,
    /// Counted answers, shared with whoever reports them.
    pub counters: Arc<SmscCounters>,
    /// The sessions bound now, shared with whoever shows them.
    pub binds: binds::Binds,
}

impl Default for SmscConfig {
    /// The default user account `otpgate`/`otpgate` (DESIGN.md section 3),
    /// 256 connections, a window of 10 and 64 KiB PDUs.
    fn default() -> Self {
        SmscConfig {
            accounts: vec![Account::new("otpgate", "otpgate")],
            max_connections: 256,
            window: 10,
            submit_window: DEFAULT_SUBMIT_WINDOW,
            max_pdu_len: codec::DEFAULT_MAX_PDU_LEN,
            counters: Arc::default(),
            binds: binds::Binds::default(),
        }
    }
}

/// A message as an ESME submitted it, decoded and, if it came in parts,
/// reassembled.
#[derive(Clone, PartialEq, Eq)]
pub struct Submission {
    pub system_id: String,
    pub source_addr: String,
    pub source_ton: u8,
    pub source_npi: u8,
    pub dest_addr: String,
    pub dest_ton: u8,
    pub dest_npi: u8,
    /// Decoded and, for long messages, reassembled.
    pub text: String,
    pub data_coding: u8,
    /// How many submit_sm made it (1 for short).
    pub parts: u8,
    /// The raw byte; low 2 bits: 0 none, 1 final, 2 failure only.
    pub registered_delivery: u8,
    /// Raw SMPP time string if given.
    pub validity_period: Option<String>,
    /// Raw SMPP time string if given: no delivery is tried before it.
    pub schedule_delivery_time: Option<String>,
    /// Vendor TLV 0x1401 (ASCII): the reference otpgate's own client puts on
    /// each part so the delivery log can match the submission to its message.
    pub message_ref: Option<String>,
    /// The ids the SMSC gave the earlier parts of a long message (empty for
    /// a short one): they stand for the whole in query_sm and cancel_sm,
    /// and each gets a copy of its receipt.
    pub part_ids: Vec<String>,
    /// `set_dpf`: an alert_notification is wanted when a phone that was
    /// absent for this message becomes reachable.
    pub set_dpf: bool,
}

/// A `submit_multi`'s one id, and the index of each submission the
/// backend did not take, with why.
pub type MultiSubmitted = (String, Vec<(usize, SubmitRefusal)>);

/// What a `replace_sm` puts in place of a message still waiting for
/// delivery. No `Debug`: the text may carry a code.
#[derive(Clone)]
pub struct Replacement {
    /// As the ESME gives it: it must be the original message's.
    pub source_addr: String,
    /// The new text, encoded in the original message's data coding
    /// (`replace_sm` has none of its own).
    pub short_message: Vec<u8>,
    /// Raw SMPP times, when given: the original's stay otherwise.
    pub schedule_delivery_time: Option<String>,
    pub validity_period: Option<String>,
    /// Always given: it replaces the original's.
    pub registered_delivery: u8,
}

/// Submission's Debug leaves the text out: it carries OTP codes.
impl std::fmt::Debug for Submission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("system_id", &self.system_id)
            .field("source_addr", &self.source_addr)
            .field("dest_addr", &self.dest_addr)
            .field("text", &format_args!("<{} chars>", self.text.chars().count()))
            .field("data_coding", &self.data_coding)
            .field("parts", &self.parts)
            .field("registered_delivery", &self.registered_delivery)
            .field("validity_period", &self.validity_period)
            .field("schedule_delivery_time", &self.schedule_delivery_time)
            .field("message_ref", &self.message_ref)
            .finish_non_exhaustive()
    }
}

/// Why the SMSC refuses a submission, a cancel or a query; each maps to one
/// SMPP `command_status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitRefusal {
    /// ESME_RTHROTTLED 0x58.
    #[error("throttled")]
    Throttled,
    /// ESME_RINVDSTADR 0x0B.
    #[error("invalid destination address")]
    InvalidDestination,
    /// ESME_RINVSRCADR 0x0A.
    #[error("invalid source address")]
    InvalidSource,
    /// ESME_RMSGQFUL 0x14.
    #[error("message queue full")]
    QueueFull,
    /// No such message: ESME_RCANCELFAIL 0x11 for cancel_sm, ESME_RQUERYFAIL
    /// 0x67 for query_sm, ESME_RINVMSGID 0x0C otherwise.
    #[error("no such message")]
    NotFound,
    /// The message can no longer be cancelled: ESME_RCANCELFAIL 0x11.
    #[error("cannot cancel")]
    CancelFailed,
    /// ESME_RSYSERR 0x08; the text is logged, never sent.
    #[error("system error: {0}")]
    System(String),
    /// Any other status, e.g. a carrier's submit-time refusal in the simulation.
    #[error("command_status 0x{0:08X}")]
    Status(u32),
}

impl SubmitRefusal {
    /// The `command_status` for this refusal in a `submit_sm_resp`.
    pub fn command_status(&self) -> u32 {
        match self {
            SubmitRefusal::Throttled => 0x58,
            SubmitRefusal::InvalidDestination => 0x0B,
            SubmitRefusal::InvalidSource => 0x0A,
            SubmitRefusal::QueueFull => 0x14,
            SubmitRefusal::NotFound => 0x0C,
            SubmitRefusal::CancelFailed => 0x11,
            SubmitRefusal::System(_) => 0x08,
            SubmitRefusal::Status(status) => *status,
        }
    }
}

/// What `query_sm` reports about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageStatus {
    pub final_date: Option<Millis>,
    /// SMPP message_state: 1 ENROUTE, 2 DELIVERED, 3 EXPIRED, 4 DELETED,
    /// 5 UNDELIVERABLE, 6 ACCEPTED, 7 UNKNOWN, 8 REJECTED.
    pub state: u8,
    pub error_code: u8,
}

/// What the SMSC does with messages: the rest of otpgate (the delivery log
/// and the carrier model) implements it.
pub trait SmscBackend: Send + Sync + 'static {
    /// Stores the message durably and returns the SMSC message id; the SMSC
    /// answers submit_sm_resp only after this returns Ok.
    fn submit(&self, sub: Submission) -> BoxFuture<'_, Result<String, SubmitRefusal>>;
    /// Stores one message per destination of a `submit_multi`, all under
    /// one id, which it returns with the index of each submission it could
    /// not take and why; an error if it took none. Not offered unless a
    /// backend says otherwise (ESME_RINVCMDID).
    fn submit_multi(&self, _subs: Vec<Submission>) -> BoxFuture<'_, Result<MultiSubmitted, SubmitRefusal>> {
        Box::pin(async { Err(SubmitRefusal::Status(0x03)) })
    }
    /// `message_id` may be an earlier part's id of a long message
    /// ([`Submission::part_ids`]); it stands for the whole, here and in
    /// `cancel`.
    fn query(&self, system_id: &str, message_id: &str) -> BoxFuture<'_, Option<MessageStatus>>;
    fn cancel(&self, system_id: &str, message_id: &str) -> BoxFuture<'_, Result<(), SubmitRefusal>>;
    /// Replaces a message of `system_id` still waiting for delivery
    /// (`replace_sm`), matched by its id and its source address. Ok once
    /// the change is durable; a message that is final, another account's
    /// or unknown is [`SubmitRefusal::NotFound`] (ESME_RREPLACEFAIL).
    fn replace(
        &self,
        _system_id: &str,
        _message_id: &str,
        _replacement: Replacement,
    ) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        Box::pin(async { Err(SubmitRefusal::NotFound) })
    }
    /// Keeps a part of a long message until its message is whole (made
    /// durable by [`SmscBackend::sync`] before the part's `submit_sm_resp`):
    /// the submit of the whole message ([`Submission::part_ids`] names the
    /// parts) lets it go, and a restarted SMSC takes the kept parts back
    /// ([`SmscBackend::kept_parts`]). Called when the part is added, before
    /// any later part can complete the message, so the whole's submit
    /// always comes after.
    fn keep_part(&self, _part: &KeptPart) -> Result<(), SubmitRefusal> {
        Ok(())
    }
    /// Returns once everything kept so far is durable.
    fn sync(&self) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        Box::pin(async { Ok(()) })
    }
    /// The parts kept and not yet in a whole message, for a starting SMSC.
    fn kept_parts(&self) -> Vec<KeptPart> {
        Vec::new()
    }
    /// A long message the SMSC dropped unfinished (its other parts did not
    /// come in time, too many were waiting, it started over, or its ESME
    /// cancelled it): its kept parts need not be kept any more, and each
    /// part was acknowledged with an id its ESME may query and may have
    /// asked a receipt for. Ok once that is settled durably.
    fn abandon(&self, _dropped: Dropped) -> BoxFuture<'_, Result<(), SubmitRefusal>> {
        Box::pin(async { Ok(()) })
    }
    /// Why no new message can be taken now, if none can: asked before each
    /// `submit_sm`, part of a long message or not, so that it is refused at
    /// once rather than failed half-way (a full disk, a failed store).
    fn refusal(&self) -> Option<SubmitRefusal> {
        None
    }
}

/// A part of a long message that arrived before the others, as the backend
/// keeps it ([`SmscBackend::keep_part`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeptPart {
    pub system_id: String,
    pub source: String,
    pub dest: String,
    /// The long message's reference number (UDH or SAR).
    pub reference: u16,
    pub total: u8,
    pub seq: u8,
    /// The part's user data, headers removed, still encoded.
    pub user_data: Vec<u8>,
    /// The message id its `submit_sm_resp` carried.
    pub part_id: String,
    pub meta: session::PartMeta,
    /// When it arrived, by the simulation's clock (partial messages age by
    /// it), so a restart does not make an old part young again.
    pub kept_at: Millis,
}

/// A message a simulated handset sent to an ESME (mobile originated), on
/// its way to a receiving bind of `system_id` as a `deliver_sm` with
/// esm_class 0.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MobileOriginated {
    /// The account it goes to.
    pub system_id: String,
    pub id: String,
    /// The handset's number, E.164 without the `+`.
    pub source_addr: String,
    /// The address the handset sent it to: the ESME's short code or number.
    pub dest_addr: String,
    pub text: String,
}

/// Its Debug leaves the text out, as a receipt's does.
impl std::fmt::Debug for MobileOriginated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MobileOriginated")
            .field("system_id", &self.system_id)
            .field("id", &self.id)
            .field("source_addr", &self.source_addr)
            .field("dest_addr", &self.dest_addr)
            .finish_non_exhaustive()
    }
}

/// An `alert_notification` (SMPP 3.4 section 4.12): a phone that was
/// absent for a message submitted with `set_dpf` is reachable again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The account that submitted the message.
    pub system_id: String,
    /// The phone, E.164 without the `+`.
    pub ms_addr: String,
    /// The message's source address: the ESME address that asked.
    pub esme_addr: String,
    /// The message that asked, for the log.
    pub message_id: String,
}

/// What the SMSC hands a receiving bind: a `deliver_sm` (receipts and
/// handsets' messages) or an `alert_notification`.
#[derive(Debug, Clone)]
pub enum Delivery {
    Receipt(Receipt),
    Mobile(MobileOriginated),
    Alert(Alert),
}

impl Delivery {
    /// The account whose receiving binds take it.
    pub fn system_id(&self) -> &str {
        match self {
            Delivery::Receipt(r) => &r.system_id,
            Delivery::Mobile(m) => &m.system_id,
            Delivery::Alert(a) => &a.system_id,
        }
    }

    /// The id it is about: the receipted message's, the MO message's, or
    /// the message that asked for the alert.
    pub fn message_id(&self) -> &str {
        match self {
            Delivery::Receipt(r) => &r.message_id,
            Delivery::Mobile(m) => &m.id,
            Delivery::Alert(a) => &a.message_id,
        }
    }
}

/// A delivery receipt to send to the ESME that submitted the message.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The account that submitted.
    pub system_id: String,
    pub message_id: String,
    /// The receipt's source = the original destination.
    pub source_addr: String,
    /// = the original source.
    pub dest_addr: String,
    /// DELIVRD, UNDELIV, EXPIRED, REJECTD, ENROUTE, DELETED, UNKNOWN, ACCEPTD.
    pub stat: String,
    /// Printed as 3 digits.
    pub err: u16,
    /// SMPP message_state TLV value (2 DELIVERED, 3 EXPIRED, 5 UNDELIVERABLE, 8 REJECTED ...).
    pub message_state: u8,
    /// (network type 1=ANSI-136, 2=IS-95, 3=GSM ..., error code).
    pub network_error_code: Option<(u8, u16)>,
    pub submit_date: Millis,
    pub done_date: Millis,
    /// The message's first 20 characters for the text: field.
    pub text: String,
    /// The earlier parts' ids of a long message: each gets a copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_ids: Vec<String>,
    /// An intermediate delivery notification (esm_class 0x20, asked with
    /// `registered_delivery` bit 0x10): the message is not final yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub intermediate: bool,
}

/// Receipt's Debug leaves the quoted text out: it can carry an OTP code.
impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("system_id", &self.system_id)
            .field("message_id", &self.message_id)
            .field("source_addr", &self.source_addr)
            .field("dest_addr", &self.dest_addr)
            .field("stat", &self.stat)
            .field("err", &self.err)
            .field("message_state", &self.message_state)
            .field("network_error_code", &self.network_error_code)
            .field("submit_date", &self.submit_date)
            .field("done_date", &self.done_date)
            .field("intermediate", &self.intermediate)
            .finish_non_exhaustive()
    }
}

/// Vendor TLV tag whose ASCII value is otpgate's own message reference
/// ([`Submission::message_ref`]); its client puts it on every part.
pub const TAG_MESSAGE_REF: u16 = 0x1401;

/// Partial long messages kept at most, across all accounts.
const MAX_PARTIAL_MESSAGES: usize = 10_000;
/// A long message whose parts do not all arrive within this (by the
/// simulation's clock) is dropped, and the parts that came are answered
/// EXPIRED ([`SmscBackend::abandon`]).
pub const PARTIAL_MESSAGE_TTL: Millis = 10 * 60 * 1000;
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What every session of one SMSC shares.
pub(crate) struct Shared {
    pub config: SmscConfig,
    pub backend: Arc<dyn SmscBackend>,
    pub hub: ReceiptHub,
    pub throttle: Throttle,
    pub partials: Mutex<concat::Reassembler<session::PartMeta>>,
    pub next_session: AtomicU64,
    /// The simulation's clock: partial messages age by it.
    pub clock: Arc<Clock>,
}

/// The reassembler a starting SMSC begins with: the parts of long messages
/// acknowledged before a restart wait for the rest again, their age
/// counted from when they arrived; those already past the age limit are
/// dropped (and handed to [`SmscBackend::abandon`] by the caller).
fn take_back_kept_parts(backend: &dyn SmscBackend, now: Millis) -> concat::Reassembler<session::PartMeta> {
    let mut partials = concat::Reassembler::new(MAX_PARTIAL_MESSAGES, PARTIAL_MESSAGE_TTL);
    let kept = backend.kept_parts();
    if !kept.is_empty() {
        tracing::info!(
            parts = kept.len(),
            "parts of long messages from before the restart wait for the rest"
        );
    }
    for part in kept {
        let key = concat::PartKey {
            system_id: part.system_id,
            source: part.source,
            dest: part.dest,
            reference: part.reference,
        };
        let part_of = concat::Part {
            seq: part.seq,
            user_data: part.user_data,
            meta: part.meta,
            part_id: part.part_id,
        };
        // A part "kept" after now (a virtual clock started earlier than the
        // last run's) counts as kept now.
        partials.keep(key, part.total, part_of, part.kept_at.min(now));
    }
    partials.expire(now);
    partials
}

/// Drops the partial messages too old at `now` and hands them to the
/// backend, under the reassembler's lock as a session does.
fn expire_partials(shared: &Shared, now: Millis) {
    let mut partials = shared.partials.lock().unwrap_or_else(|e| e.into_inner());
    partials.expire(now);
    hand_over_dropped(&mut partials, &shared.backend);
}

/// Has the clock drop what is still partial at `at`
/// ([`concat::Reassembler::deadline`]); a message completed by then is
/// gone already, and the job does nothing for it. The job holds the SMSC
/// weakly: one that stopped is not kept alive by its deadlines.
fn expire_partials_at(shared: &Arc<Shared>, at: Millis) {
    let weak = Arc::downgrade(shared);
    shared.clock.schedule(
        at,
        Box::new(move |now| {
            Box::pin(async move {
                if let Some(shared) = weak.upgrade() {
                    expire_partials(&shared, now);
                }
            })
        }),
    );
}

/// Hands the backend each long message the reassembler dropped unfinished
/// since it was last asked ([`SmscBackend::abandon`], in a task of its
/// own); called under its lock.
fn hand_over_dropped(partials: &mut concat::Reassembler<session::PartMeta>, backend: &Arc<dyn SmscBackend>) {
    for dropped in partials.take_dropped() {
        tracing::info!(
            parts = dropped.part_ids.len(),
            cause = ?dropped.cause,
            "a long message that never completed was dropped"
        );
        let backend = backend.clone();
        tokio::spawn(async move {
            if let Err(refusal) = backend.abandon(dropped).await {
                // Its kept parts stay: the next start drops them again.
                tracing::error!(%refusal, "could not settle a long message that never completed");
            }
        });
    }
}

/// The SMSC's second listener: SMPP over TLS from the first byte, as SMPP
/// providers' TLS ports take it (SMPP 3.4 has no STARTTLS).
pub struct TlsListener {
    pub listener: TcpListener,
    pub identity: TlsIdentity,
}

/// How long a client on the TLS listener has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves SMPP on `listener` (and SMPP over TLS on `tls`) until `shutdown`
/// fires, then unbinds every bound session and returns once all
/// connection tasks have finished. Partial long messages age by `clock`,
/// the simulation's.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsListener>,
    config: SmscConfig,
    backend: Arc<dyn SmscBackend>,
    hub: ReceiptHub,
    clock: Arc<Clock>,
    mut shutdown: Shutdown,
) {
    let partials = take_back_kept_parts(backend.as_ref(), clock.now());
    let shared = Arc::new(Shared {
        config,
        backend,
        hub,
        throttle: Throttle::default(),
        partials: Mutex::new(partials),
        next_session: AtomicU64::new(1),
        clock,
    });
    {
        let mut partials = shared.partials.lock().unwrap_or_else(|e| e.into_inner());
        hand_over_dropped(&mut partials, &shared.backend);
        for at in partials.deadlines() {
            expire_partials_at(&shared, at);
        }
    }
    let permits = Arc::new(Semaphore::new(shared.config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut tls_backoff = ACCEPT_BACKOFF_MIN;
    tracing::info!(addr = ?listener.local_addr().ok(), tls = ?tls.as_ref().and_then(|t| t.listener.local_addr().ok()), "SMSC listening");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_task_end(joined),
            accepted = accept(&listener, &permits, &mut backoff) => {
                let Some((stream, peer, permit)) = accepted else { break };
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    session::run(Box::new(stream), peer, false, shared, shutdown).await;
                    drop(permit);
                });
            }
            accepted = accept_tls(tls.as_ref(), &permits, &mut tls_backoff) => {
                let Some((stream, peer, permit)) = accepted else { break };
                let Some(tls) = &tls else { continue };
                let acceptor = tls.identity.acceptor().clone();
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    run_over_tls(acceptor, stream, peer, shared, shutdown).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    drop(tls);
    while let Some(joined) = tasks.join_next().await {
        log_task_end(joined);
    }
    tracing::info!("SMSC stopped");
}

/// Waits for room under the connection cap, then for a connection; accept
/// errors (out of descriptors, a reset before accept) are retried with a
/// growing pause. `None` only if the semaphore is closed.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    backoff: &mut Duration,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = permits.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                *backoff = ACCEPT_BACKOFF_MIN;
                return Some((stream, peer, permit));
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?*backoff, "SMPP accept failed");
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Runs a connection to the TLS listener once its handshake is done; one
/// that fails or times out is counted and closed.
async fn run_over_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
) {
    let handshake = tokio::select! {
        _ = shutdown.wait() => return,
        done = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => done,
    };
    let error = match handshake {
        Ok(Ok(stream)) => return session::run(Box::new(stream), peer, true, shared, shutdown).await,
        Ok(Err(error)) => error.to_string(),
        Err(_) => "timed out".to_string(),
    };
    let failed = &shared.config.counters.tls_handshakes_failed;
    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%peer, %error, "SMPP TLS handshake failed");
}

/// [`accept`] on the TLS listener; never ready without one.
async fn accept_tls(
    tls: Option<&TlsListener>,
    permits: &Arc<Semaphore>,
    backoff: &mut Duration,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    match tls {
        Some(tls) => accept(&tls.listener, permits, backoff).await,
        None => std::future::pending().await,
    }
}

fn log_task_end(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined {
        tracing::error!(%error, "SMPP session task failed");
    }
}

#[cfg(test)]
pub(crate) mod tests;

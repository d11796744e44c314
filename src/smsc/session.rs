//! One SMPP connection to the SMSC: the bind, the operations an ESME may ask
//! for in each bind state, the window of delivery receipts sent to it, and
//! the goodbye (`unbind`) at shutdown.
//!
//! The connection's [`State`] changes in one place, [`Session::enter`], which
//! is also where a receiving bind joins and leaves the receipt hub. Backend
//! calls run concurrently (up to the configured `submit_window`; past it an ESME whose
//! window is wider is answered ESME_RTHROTTLED at once, never left waiting)
//! and each answer is sent when its call returns, so `submit_sm_resp` OK
//! always follows the durable store. Errors end only this connection and are logged here; message text
//! is never logged.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::Io;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use rusmpp::pdus::{
    AlertNotification, BindReceiverResp, BindTransceiverResp, BindTransmitterResp, DataSm, DataSmResp, DeliverSm,
    QuerySmResp, ReplaceSm, SubmitMulti, SubmitMultiResp, SubmitSm, SubmitSmResp,
};
use rusmpp::tlvs::{MessageDeliveryRequestTlvValue, TlvValue};
use rusmpp::types::{COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{
    DataCoding, DestAddress, ErrorCodeNetworkType, EsmClass, InterfaceVersion, MessageState, MsAvailabilityStatus,
    NetworkErrorCode, Npi, ServiceType, SmeAddress, Ton, UnsuccessSme,
};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tracing::Instrument;

use super::codec::{CodecError, Inbound, Outbound, SmppCodec};
use super::concat::{Added, Complete, PartKey};
use super::hub::Queued;
use super::{
    receipt_text, text, Alert, Delivery, KeptPart, MobileOriginated, Receipt, Shared, Submission, SubmitRefusal,
    TAG_MESSAGE_REF,
};
use crate::shutdown::Shutdown;

/// Backend calls one session may have running by default
/// ([`super::SmscConfig::submit_window`]); `submit_sm`, `query_sm` and
/// `cancel_sm` past it are answered ESME_RTHROTTLED at once (admission
/// control: a refusal the ESME retries, rather than a queue it cannot see).
pub(crate) const DEFAULT_SUBMIT_WINDOW: usize = 32;
/// How long an ESME may leave a deliver_sm unanswered before the SMSC gives
/// up on the bind (its receipts go back to the hub).
const DELIVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the SMSC waits for `unbind_resp` when it says goodbye.
const UNBIND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long running backend calls may take to finish when the session ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one PDU may take to write before the peer counts as gone (it
/// stopped reading); shorter once the session is saying goodbye.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// SMPP's session_init_timer: how long a connection may stay unbound
/// before the SMSC closes it, so idle or stalled connections do not hold
/// the connection cap.
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// SMPP's inactivity_timer: a bound ESME that sends no PDU at all (not even
/// `enquire_link`) for this long is unbound and its connection closed.
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(300);
/// The SMSC's own name in bind responses.
const SMSC_SYSTEM_ID: &str = "otpgate";

/// What a session may do, by the bind the ESME asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindKind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl BindKind {
    fn as_str(self) -> &'static str {
        match self {
            BindKind::Transmitter => "transmitter",
            BindKind::Receiver => "receiver",
            BindKind::Transceiver => "transceiver",
        }
    }

    fn can_submit(self) -> bool {
        matches!(self, BindKind::Transmitter | BindKind::Transceiver)
    }

    fn can_receive(self) -> bool {
        matches!(self, BindKind::Receiver | BindKind::Transceiver)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Connected, not bound yet.
    Open,
    Bound {
        kind: BindKind,
        system_id: String,
    },
    /// Unbound by either side; the connection is closing.
    Unbound,
}

/// What the session remembers of each part of a long message besides its
/// text: the fields the whole message's [`Submission`] takes from its parts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartMeta {
    source_ton: u8,
    source_npi: u8,
    dest_ton: u8,
    dest_npi: u8,
    data_coding: u8,
    registered_delivery: u8,
    validity_period: Option<String>,
    message_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule_delivery_time: Option<String>,
    /// The `set_dpf` TLV asked for an alert_notification.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    set_dpf: bool,
}

/// A submit_sm, read.
enum Incoming {
    Single(Submission),
    Part {
        key: PartKey,
        total: u8,
        seq: u8,
        user_data: Vec<u8>,
        meta: PartMeta,
    },
}

/// A backend call that returned, with what its answer needs.
enum Finished {
    Submit {
        seq: u32,
        system_id: String,
        result: Result<String, SubmitRefusal>,
        /// The parts of a long message, put back if the store failed.
        whole: Option<Complete<PartMeta>>,
        /// `submit_sm_resp` or `data_sm_resp`.
        resp: CommandId,
    },
    /// A `submit_multi`: its one id and the destinations refused, or why
    /// none was taken.
    SubmitMulti {
        seq: u32,
        system_id: String,
        result: Result<(String, Vec<UnsuccessSme>), SubmitRefusal>,
    },
    Query {
        seq: u32,
        message_id: String,
        result: Option<super::MessageStatus>,
    },
    /// A `cancel_sm` or a `replace_sm` (`resp` says which answer it gets).
    Change {
        seq: u32,
        resp: CommandId,
        result: Result<(), SubmitRefusal>,
    },
}

/// What to do after a PDU.
enum Flow {
    Continue,
    Close,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the peer stopped reading")]
    WriteTimeout,
}

struct Session {
    id: u64,
    shared: Arc<Shared>,
    state: State,
    framed: Framed<Box<dyn Io>, SmppCodec>,
    in_flight: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// Receipts the hub routed here; present while bound to receive.
    receipts: Option<mpsc::UnboundedReceiver<Queued>>,
    /// Receipts waiting for room in the window.
    waiting: VecDeque<Queued>,
    /// deliver_sm sent and not answered yet, by sequence number.
    outstanding: BTreeMap<u32, (Queued, Instant)>,
    /// How many may be outstanding: the account's window, else the SMSC's.
    window: usize,
    next_seq: u32,
    write_timeout: Duration,
    /// Answers written to the connection's buffer and not yet flushed.
    unflushed: bool,
    /// When the connection opened, for [`BIND_TIMEOUT`].
    opened: Instant,
    /// When the ESME last sent a whole PDU, for [`INACTIVITY_TIMEOUT`].
    heard: Instant,
    peer: SocketAddr,
    tls: bool,
    /// What this bind did, shown in [`super::binds::Binds`]; present while
    /// bound.
    counts: Option<Arc<super::binds::Counts>>,
}

/// Runs one connection until the ESME unbinds or leaves, the connection
/// breaks, or shutdown; logs how it ended.
pub(crate) async fn run(stream: Box<dyn Io>, peer: SocketAddr, tls: bool, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("smpp", session = id, %peer);
    async move {
        let codec = SmppCodec::new(shared.config.max_pdu_len);
        let window = shared.config.window;
        let mut session = Session {
            id,
            shared,
            state: State::Open,
            framed: Framed::new(stream, codec),
            in_flight: FuturesUnordered::new(),
            receipts: None,
            waiting: VecDeque::new(),
            outstanding: BTreeMap::new(),
            window,
            next_seq: 1,
            write_timeout: WRITE_TIMEOUT,
            unflushed: false,
            opened: Instant::now(),
            heard: Instant::now(),
            peer,
            tls,
            counts: None,
        };
        tracing::debug!("connected");
        match session.serve(&mut shutdown).await {
            Ok(reason) => tracing::debug!(reason, "session ended"),
            Err(error) => tracing::info!(%error, "session ended by an error"),
        }
        session.enter(State::Unbound);
    }
    .instrument(span)
    .await
}

async fn next_receipt(receipts: &mut Option<mpsc::UnboundedReceiver<Queued>>) -> Option<Queued> {
    match receipts {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn serve(&mut self, shutdown: &mut Shutdown) -> Result<&'static str, SessionError> {
        loop {
            self.send_receipts().await?;
            // Answers go out together: a PDU already read is answered
            // before they are flushed (under load an ESME's window
            // arrives in one read, and its answers leave in one write).
            if self.unflushed && !self.frame_waiting() {
                self.flush().await?;
            }
            let deadline = self.outstanding.values().map(|(_, at)| *at).min();
            let quiet_until = match self.state {
                State::Open => self.opened + BIND_TIMEOUT,
                _ => self.heard + INACTIVITY_TIMEOUT,
            };
            tokio::select! {
                biased;
                _ = shutdown.wait() => {
                    self.goodbye().await?;
                    return Ok("shutdown");
                }
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finish(done).await?;
                }
                Some(queued) = next_receipt(&mut self.receipts) => self.waiting.push_back(queued),
                _ = sleep_until(deadline) => {
                    tracing::warn!("ESME left a deliver_sm unanswered; unbinding");
                    self.goodbye().await?;
                    return Ok("deliver_sm timeout");
                }
                _ = tokio::time::sleep_until(quiet_until) => {
                    if matches!(self.state, State::Open) {
                        tracing::info!("no bind in time; closing");
                        return Ok("no bind in time");
                    }
                    tracing::info!("ESME silent too long; unbinding");
                    self.goodbye().await?;
                    return Ok("inactivity timeout");
                }
                frame = self.framed.next() => {
                    self.heard = Instant::now();
                    match frame {
                        None => return Ok("peer closed the connection"),
                        Some(Err(CodecError::BadLength { sequence_number, length, .. })) => {
                            tracing::info!(length, "impossible command_length; closing");
                            self.send_now(Outbound::generic_nack(CommandStatus::EsmeRinvcmdlen, sequence_number)).await?;
                            return Ok("bad command_length");
                        }
                        Some(Err(error)) => return Err(error.into()),
                        Some(Ok(Inbound::Invalid(invalid))) => {
                            tracing::debug!(
                                command_id = format_args!("0x{:08X}", invalid.command_id),
                                answer_id = format_args!("0x{:08X}", invalid.answer_id),
                                status = ?invalid.status,
                                reason = %invalid.reason,
                                "answering an invalid PDU"
                            );
                            let answer_id = CommandId::from(invalid.answer_id);
                            self.reject(answer_id, invalid.status, invalid.sequence_number).await?;
                        }
                        Some(Ok(Inbound::Command(command))) => {
                            if let Flow::Close = self.on_command(*command).await? {
                                return Ok("unbound by the ESME");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The one place the state changes. A receiving bind joins the hub when
    /// it is entered and hands its receipts back when it is left.
    fn enter(&mut self, next: State) {
        if self.counts.take().is_some() {
            self.shared.config.binds.leave(self.id);
        }
        if let State::Bound { kind, system_id } = &next {
            self.counts = Some(self.shared.config.binds.join(super::binds::Bind {
                session: self.id,
                system_id: system_id.clone(),
                kind: kind.as_str(),
                peer: self.peer.to_string(),
                tls: self.tls,
                bound_at: self.shared.clock.now(),
                submitted: 0,
                delivered: 0,
            }));
        }
        if let State::Bound { kind, system_id } = &self.state {
            if kind.can_receive() {
                if let Some(rx) = self.receipts.take() {
                    let mut held: Vec<Queued> = std::mem::take(&mut self.outstanding)
                        .into_values()
                        .map(|(q, _)| q)
                        .collect();
                    held.extend(self.waiting.drain(..));
                    self.shared.hub.detach(system_id, self.id, rx, held);
                }
            }
        }
        if let State::Bound { kind, system_id } = &next {
            if kind.can_receive() {
                self.receipts = Some(self.shared.hub.attach(system_id, self.id));
            }
        }
        tracing::debug!(from = ?self.state, to = ?next, "session state");
        self.state = next;
    }

    /// Writes a PDU to the connection's buffer; the serve loop flushes it
    /// before it waits for anything (the buffer is flushed at once when
    /// it grows past the codec's limit).
    async fn send(&mut self, item: Outbound) -> Result<(), SessionError> {
        match tokio::time::timeout(self.write_timeout, self.framed.feed(item)).await {
            Ok(result) => {
                self.unflushed = true;
                Ok(result?)
            }
            Err(_) => Err(SessionError::WriteTimeout),
        }
    }

    /// Writes a PDU and everything buffered before it, at once: for the
    /// last words before the session ends.
    async fn send_now(&mut self, item: Outbound) -> Result<(), SessionError> {
        self.send(item).await?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        match tokio::time::timeout(self.write_timeout, self.framed.flush()).await {
            Ok(result) => {
                self.unflushed = false;
                Ok(result?)
            }
            Err(_) => Err(SessionError::WriteTimeout),
        }
    }

    /// Whether a whole PDU is already read and waiting to be decoded.
    fn frame_waiting(&self) -> bool {
        let buffered = self.framed.read_buffer();
        buffered
            .get(..4)
            .is_some_and(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize <= buffered.len())
    }

    /// A submit the SMSC took, counted for `/metrics` and for this bind.
    fn count_submitted(&self) {
        self.shared.config.counters.count(CommandStatus::EsmeRok);
        if let Some(counts) = &self.counts {
            counts.submitted();
        }
    }

    async fn reject(&mut self, id: CommandId, status: CommandStatus, seq: u32) -> Result<(), SessionError> {
        if matches!(
            id,
            CommandId::SubmitSmResp | CommandId::DataSmResp | CommandId::SubmitMultiResp
        ) {
            self.shared.config.counters.count(status);
        }
        self.send(Outbound::Bare {
            command_id: u32::from(id),
            status,
            sequence_number: seq,
        })
        .await
    }

    fn next_sequence(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = if seq >= 0x7FFF_FFFF { 1 } else { seq + 1 };
        seq
    }

    /// The account bound to submit, if the session may submit.
    fn submitter(&self) -> Option<String> {
        match &self.state {
            State::Bound { kind, system_id } if kind.can_submit() => Some(system_id.clone()),
            _ => None,
        }
    }

    async fn on_command(&mut self, command: Command) -> Result<Flow, SessionError> {
        let (id, status, seq, pdu) = command.into_parts().raw();
        match (id, pdu) {
            (CommandId::BindTransmitter, Some(Pdu::BindTransmitter(b))) => {
                self.on_bind(BindKind::Transmitter, seq, b.system_id.as_str(), b.password.as_str())
                    .await?
            }
            (CommandId::BindReceiver, Some(Pdu::BindReceiver(b))) => {
                self.on_bind(BindKind::Receiver, seq, b.system_id.as_str(), b.password.as_str())
                    .await?
            }
            (CommandId::BindTransceiver, Some(Pdu::BindTransceiver(b))) => {
                self.on_bind(BindKind::Transceiver, seq, b.system_id.as_str(), b.password.as_str())
                    .await?
            }
            (CommandId::EnquireLink, _) => self.send(Outbound::command(seq, Pdu::EnquireLinkResp)).await?,
            (CommandId::Unbind, _) => {
                self.drain_in_flight().await?;
                self.send_now(Outbound::command(seq, Pdu::UnbindResp)).await?;
                self.enter(State::Unbound);
                return Ok(Flow::Close);
            }
            (CommandId::SubmitSm, Some(Pdu::SubmitSm(sm))) => {
                self.on_submit(seq, CommandId::SubmitSmResp, SubmitFields::from(&sm))
                    .await?
            }
            (CommandId::DataSm, Some(Pdu::DataSm(sm))) => {
                self.on_submit(seq, CommandId::DataSmResp, SubmitFields::from(&sm))
                    .await?
            }
            (CommandId::SubmitMulti, Some(Pdu::SubmitMulti(sm))) => self.on_submit_multi(seq, &sm).await?,
            (CommandId::QuerySm, Some(Pdu::QuerySm(query))) => {
                let message_id = query.message_id.as_str().to_string();
                self.on_query(seq, message_id).await?
            }
            (CommandId::CancelSm, Some(Pdu::CancelSm(cancel))) => {
                let message_id = cancel.message_id.as_str().to_string();
                self.on_cancel(seq, message_id).await?
            }
            (CommandId::ReplaceSm, Some(Pdu::ReplaceSm(replace))) => self.on_replace(seq, &replace).await?,
            (CommandId::DeliverSmResp, _) => self.on_deliver_sm_resp(seq, status),
            (CommandId::GenericNack, _) => {
                tracing::info!(?status, seq, "ESME sent generic_nack");
                self.on_deliver_sm_resp(seq, status);
            }
            (id, _) if id.is_response() => {
                tracing::debug!(?id, seq, "ignoring an unexpected response");
            }
            (id, _) => {
                tracing::debug!(?id, "unsupported operation");
                self.send(Outbound::generic_nack(CommandStatus::EsmeRinvcmdid, seq))
                    .await?;
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_bind(&mut self, kind: BindKind, seq: u32, system_id: &str, password: &str) -> Result<(), SessionError> {
        let resp_id = match kind {
            BindKind::Transmitter => CommandId::BindTransmitterResp,
            BindKind::Receiver => CommandId::BindReceiverResp,
            BindKind::Transceiver => CommandId::BindTransceiverResp,
        };
        let status = match &self.state {
            State::Bound { .. } => CommandStatus::EsmeRalybnd,
            State::Unbound => CommandStatus::EsmeRinvbndsts,
            State::Open => self.authenticate(system_id, password),
        };
        if status != CommandStatus::EsmeRok {
            tracing::info!(system_id, ?kind, ?status, "bind refused");
            return self.reject(resp_id, status, seq).await;
        }
        let name = COctetString::from_str(SMSC_SYSTEM_ID).unwrap_or_default();
        let version = Some(InterfaceVersion::Smpp3_4);
        let pdu = match kind {
            BindKind::Transmitter => Pdu::BindTransmitterResp(BindTransmitterResp::new(name, version)),
            BindKind::Receiver => Pdu::BindReceiverResp(BindReceiverResp::new(name, version)),
            BindKind::Transceiver => Pdu::BindTransceiverResp(BindTransceiverResp::new(name, version)),
        };
        self.send(Outbound::command(seq, pdu)).await?;
        tracing::info!(system_id, ?kind, "bound");
        if let Some(window) = self.account(system_id).and_then(|a| a.window) {
            self.window = window;
        }
        self.enter(State::Bound {
            kind,
            system_id: system_id.to_string(),
        });
        Ok(())
    }

    fn account(&self, system_id: &str) -> Option<&super::Account> {
        self.shared.config.accounts.iter().find(|a| a.system_id == system_id)
    }

    fn authenticate(&self, system_id: &str, password: &str) -> CommandStatus {
        match self.account(system_id) {
            None => CommandStatus::EsmeRinvsysid,
            Some(account) if bool::from(account.password.as_bytes().ct_eq(password.as_bytes())) => {
                CommandStatus::EsmeRok
            }
            Some(_) => CommandStatus::EsmeRinvpaswd,
        }
    }

    /// Whether the session already runs all the backend calls it may.
    fn saturated(&self) -> bool {
        self.in_flight.len() >= self.shared.config.submit_window.max(1)
    }

    /// The account of a session that may submit `messages` messages now
    /// (a `submit_multi`'s destinations), or why it may not: not bound to
    /// submit, its window full, its account over its rate, or the backend
    /// unable to take anything.
    fn may_submit(&self, messages: usize) -> Result<String, CommandStatus> {
        let system_id = self.submitter().ok_or(CommandStatus::EsmeRinvbndsts)?;
        if self.saturated() {
            return Err(CommandStatus::EsmeRthrottled);
        }
        let per_sec = self.account(&system_id).and_then(|a| a.throughput_per_sec);
        let messages = u32::try_from(messages).unwrap_or(u32::MAX);
        if !self
            .shared
            .throttle
            .admit(&system_id, per_sec, Instant::now(), messages)
        {
            return Err(CommandStatus::EsmeRthrottled);
        }
        if let Some(refusal) = self.shared.backend.refusal() {
            return Err(CommandStatus::from(refusal.command_status()));
        }
        Ok(system_id)
    }

    /// A `submit_sm` or a `data_sm` (`resp` says which answer it gets):
    /// both submit a message, a `data_sm` with its text in the
    /// `message_payload` TLV.
    async fn on_submit(&mut self, seq: u32, resp: CommandId, sm: SubmitFields<'_>) -> Result<(), SessionError> {
        let system_id = match self.may_submit(1) {
            Ok(system_id) => system_id,
            Err(status) => return self.reject(resp, status, seq).await,
        };
        let incoming = match read_submit(&system_id, &sm) {
            Ok(incoming) => incoming,
            Err(status) => {
                tracing::debug!(?status, "submit_sm refused");
                return self.reject(resp, status, seq).await;
            }
        };
        let (submission, whole) = match incoming {
            Incoming::Single(submission) => (submission, None),
            Incoming::Part {
                key,
                total,
                seq: part,
                user_data,
                meta,
            } => {
                let backend = self.shared.backend.clone();
                let now = self.shared.clock.now();
                let mut kept = KeptPart {
                    system_id: key.system_id.clone(),
                    source: key.source.clone(),
                    dest: key.dest.clone(),
                    reference: key.reference,
                    total,
                    seq: part,
                    user_data: user_data.clone(),
                    part_id: String::new(),
                    meta: meta.clone(),
                    kept_at: now,
                };
                let (added, kept) = {
                    let mut partials = self.shared.partials.lock().unwrap_or_else(|e| e.into_inner());
                    let message = key.clone();
                    let added = partials.add(key, total, part, user_data, meta, now, part_message_id);
                    super::hand_over_dropped(&mut partials, &backend);
                    // A message this part started gets its deadline.
                    match partials.deadline(&message) {
                        Some(at) if at == now.saturating_add(super::PARTIAL_MESSAGE_TTL) => {
                            super::expire_partials_at(&self.shared, at)
                        }
                        _ => {}
                    }
                    // Kept as it is added, under the lock: the part that
                    // completes the message, and the whole's submit that
                    // lets the kept parts go, come after.
                    let kept = match &added {
                        Added::Buffered { part_id } => {
                            kept.part_id = part_id.clone();
                            Some(backend.keep_part(&kept))
                        }
                        Added::Complete(_) | Added::TooLong => None,
                    };
                    (added, kept)
                };
                match added {
                    Added::TooLong => {
                        tracing::debug!(part, total, "a part that makes its message too long refused");
                        return self.reject(resp, CommandStatus::EsmeRinvmsglen, seq).await;
                    }
                    Added::Buffered { part_id } => {
                        tracing::debug!(part, total, message_id = %part_id, "part buffered");
                        // Durable before its submit_sm_resp, as a whole
                        // message is: after a restart the SMSC takes it back
                        // and the last part still completes the message.
                        let failed = Finished::Submit {
                            seq,
                            system_id: system_id.clone(),
                            result: Err(SubmitRefusal::System("keeping the part stopped unexpectedly".into())),
                            whole: None,
                            resp,
                        };
                        self.run(failed, async move {
                            let result = match kept {
                                Some(Err(refusal)) => Err(refusal),
                                _ => backend.sync().await.map(|()| part_id),
                            };
                            Finished::Submit {
                                seq,
                                system_id,
                                result,
                                whole: None,
                                resp,
                            }
                        });
                        return Ok(());
                    }
                    Added::Complete(complete) => (whole_submission(&system_id, &complete), Some(complete)),
                }
            }
        };
        let backend = self.shared.backend.clone();
        let failed = Finished::Submit {
            seq,
            system_id: system_id.clone(),
            result: Err(SubmitRefusal::System("the submit stopped unexpectedly".into())),
            whole: None,
            resp,
        };
        self.run(failed, async move {
            let result = backend.submit(submission).await;
            Finished::Submit {
                seq,
                system_id,
                result,
                whole,
                resp,
            }
        });
        Ok(())
    }

    /// A `submit_multi`: one message per destination, all under one id
    /// (its receipts carry it, `query_sm` and `cancel_sm` take it). A
    /// destination the SMSC cannot take is listed in the answer's
    /// `unsuccess_sme` with its reason; none taken, the first reason is
    /// the answer's. Distribution lists are not offered
    /// (ESME_RINVDLNAME), nor a long message in parts (ESME_RSUBMITFAIL:
    /// its parts would each go to every destination).
    async fn on_submit_multi(&mut self, seq: u32, sm: &SubmitMulti) -> Result<(), SessionError> {
        let resp = CommandId::SubmitMultiResp;
        let system_id = match self.may_submit(sm.dest_address().len()) {
            Ok(system_id) => system_id,
            Err(status) => return self.reject(resp, status, seq).await,
        };
        let mut to = Vec::new();
        let mut refused = Vec::new();
        for dest in sm.dest_address() {
            let DestAddress::SmeAddress(sme) = dest else {
                return self.reject(resp, CommandStatus::EsmeRinvdlname, seq).await;
            };
            match read_submit(&system_id, &SubmitFields::of_multi(sm, sme)) {
                Ok(Incoming::Single(submission)) => to.push((sme.clone(), submission)),
                Ok(Incoming::Part { .. }) => return self.reject(resp, CommandStatus::EsmeRsubmitfail, seq).await,
                Err(status) => refused.push(unsuccess(sme, status)),
            }
        }
        if to.is_empty() {
            let status = match refused.first() {
                Some(first) => first.error_status_code,
                None => CommandStatus::EsmeRinvnumdests,
            };
            return self.reject(resp, status, seq).await;
        }
        let backend = self.shared.backend.clone();
        let failed = Finished::SubmitMulti {
            seq,
            system_id: system_id.clone(),
            result: Err(SubmitRefusal::System("the submit stopped unexpectedly".into())),
        };
        self.run(failed, async move {
            let (dests, submissions): (Vec<SmeAddress>, Vec<Submission>) = to.into_iter().unzip();
            let result = backend.submit_multi(submissions).await.map(|(id, failures)| {
                for (index, refusal) in failures {
                    log_refusal(&refusal);
                    let status = CommandStatus::from(refusal.command_status());
                    refused.push(unsuccess(&dests[index], status));
                }
                (id, refused)
            });
            Finished::SubmitMulti { seq, system_id, result }
        });
        Ok(())
    }

    async fn answer_submit(&mut self, seq: u32, resp: CommandId, message_id: &str) -> Result<(), SessionError> {
        match COctetString::from_str(message_id) {
            Ok(id) => {
                self.count_submitted();
                let pdu = match resp {
                    CommandId::DataSmResp => Pdu::from(DataSmResp::new(id, vec![])),
                    _ => Pdu::from(SubmitSmResp::new(id, vec![])),
                };
                self.send(Outbound::command(seq, pdu)).await
            }
            Err(error) => {
                tracing::error!(message_id, %error, "message id cannot travel in SMPP");
                self.reject(resp, CommandStatus::EsmeRsyserr, seq).await
            }
        }
    }

    /// The account of a session that may ask about or change a message it
    /// submitted now, or why it may not.
    fn may_ask(&self) -> Result<String, CommandStatus> {
        let system_id = self.submitter().ok_or(CommandStatus::EsmeRinvbndsts)?;
        if self.saturated() {
            return Err(CommandStatus::EsmeRthrottled);
        }
        Ok(system_id)
    }

    async fn on_query(&mut self, seq: u32, message_id: String) -> Result<(), SessionError> {
        let system_id = match self.may_ask() {
            Ok(system_id) => system_id,
            Err(status) => return self.reject(CommandId::QuerySmResp, status, seq).await,
        };
        let backend = self.shared.backend.clone();
        let failed = Finished::Query {
            seq,
            message_id: message_id.clone(),
            result: None,
        };
        self.run(failed, async move {
            let result = backend.query(&system_id, &message_id).await;
            Finished::Query {
                seq,
                message_id,
                result,
            }
        });
        Ok(())
    }

    async fn on_cancel(&mut self, seq: u32, message_id: String) -> Result<(), SessionError> {
        let resp = CommandId::CancelSmResp;
        let system_id = match self.may_ask() {
            Ok(system_id) => system_id,
            Err(status) => return self.reject(resp, status, seq).await,
        };
        if message_id.is_empty() {
            // Cancelling by source and destination alone is not offered.
            return self
                .reject(CommandId::CancelSmResp, CommandStatus::EsmeRcancelfail, seq)
                .await;
        }
        let backend = self.shared.backend.clone();
        let failed = Finished::Change {
            seq,
            resp,
            result: Err(SubmitRefusal::System("the cancel stopped unexpectedly".into())),
        };
        // A long message still waiting for parts is cancelled here, by any
        // of the parts' ids; the backend settles it before the answer.
        let waiting = {
            let mut partials = self.shared.partials.lock().unwrap_or_else(|e| e.into_inner());
            partials.cancel(&system_id, &message_id)
        };
        self.run(failed, async move {
            let result = match waiting {
                Some(dropped) => backend.abandon(dropped).await,
                None => backend.cancel(&system_id, &message_id).await,
            };
            Finished::Change { seq, resp, result }
        });
        Ok(())
    }

    /// A `replace_sm`: a message still waiting for delivery gets new text
    /// (in its original data coding), and the schedule, validity and
    /// receipt request given.
    async fn on_replace(&mut self, seq: u32, replace: &ReplaceSm) -> Result<(), SessionError> {
        let resp = CommandId::ReplaceSmResp;
        let system_id = match self.may_ask() {
            Ok(system_id) => system_id,
            Err(status) => return self.reject(resp, status, seq).await,
        };
        let given = |time: &str| Some(time.to_string()).filter(|t| !t.is_empty());
        let short_message = match replace.message_payload() {
            Some(payload) if replace.short_message().is_empty() => payload.value.to_vec(),
            _ => replace.short_message().to_vec(),
        };
        let replacement = super::Replacement {
            source_addr: replace.source_addr.as_str().to_string(),
            short_message,
            schedule_delivery_time: given(replace.schedule_delivery_time.as_str()),
            validity_period: given(replace.validity_period.as_str()),
            registered_delivery: u8::from(replace.registered_delivery),
        };
        let message_id = replace.message_id.as_str().to_string();
        let backend = self.shared.backend.clone();
        let failed = Finished::Change {
            seq,
            resp,
            result: Err(SubmitRefusal::System("the replace stopped unexpectedly".into())),
        };
        self.run(failed, async move {
            let result = backend.replace(&system_id, &message_id, replacement).await;
            Finished::Change { seq, resp, result }
        });
        Ok(())
    }

    /// Runs a backend call as a task of its own, so the session goes on
    /// reading (and refusing past its window) while the call works; run
    /// inside the session's task, the calls' work delayed every read.
    /// `failed` answers the PDU if the task panics.
    fn run(&mut self, failed: Finished, call: impl std::future::Future<Output = Finished> + Send + 'static) {
        let task = tokio::spawn(call);
        self.in_flight.push(Box::pin(async move {
            task.await.unwrap_or_else(|error| {
                tracing::error!(%error, "a backend call failed");
                failed
            })
        }));
    }

    /// Answers a backend call that returned.
    async fn finish(&mut self, done: Finished) -> Result<(), SessionError> {
        match done {
            Finished::Submit {
                seq,
                system_id,
                result: Ok(message_id),
                resp,
                ..
            } => {
                self.shared.hub.note_submitted(&system_id, &message_id, self.id);
                tracing::debug!(%message_id, "submitted");
                self.answer_submit(seq, resp, &message_id).await
            }
            Finished::Submit {
                seq,
                result: Err(refusal),
                whole,
                resp,
                ..
            } => {
                if let Some(complete) = whole {
                    let now = self.shared.clock.now();
                    let mut partials = self.shared.partials.lock().unwrap_or_else(|e| e.into_inner());
                    let message = complete.key.clone();
                    partials.restore(complete, now);
                    if let Some(at) = partials.deadline(&message) {
                        super::expire_partials_at(&self.shared, at);
                    }
                }
                log_refusal(&refusal);
                let status = CommandStatus::from(refusal.command_status());
                self.reject(resp, status, seq).await
            }
            Finished::SubmitMulti {
                seq,
                system_id,
                result: Ok((message_id, refused)),
            } => {
                let Ok(id) = COctetString::from_str(&message_id) else {
                    tracing::error!(message_id, "message id cannot travel in SMPP");
                    return self
                        .reject(CommandId::SubmitMultiResp, CommandStatus::EsmeRsyserr, seq)
                        .await;
                };
                self.shared.hub.note_submitted(&system_id, &message_id, self.id);
                self.count_submitted();
                tracing::debug!(%message_id, refused = refused.len(), "submitted to several destinations");
                let pdu = SubmitMultiResp::new(id, refused, vec![]);
                self.send(Outbound::command(seq, pdu)).await
            }
            Finished::SubmitMulti {
                seq,
                result: Err(refusal),
                ..
            } => {
                log_refusal(&refusal);
                let status = CommandStatus::from(refusal.command_status());
                self.reject(CommandId::SubmitMultiResp, status, seq).await
            }
            Finished::Query {
                seq,
                message_id,
                result: Some(found),
            } => {
                let final_date = found
                    .final_date
                    .map(receipt_text::smpp_absolute_time)
                    .and_then(|t| EmptyOrFullCOctetString::from_str(&t).ok())
                    .unwrap_or_default();
                let pdu = COctetString::from_str(&message_id)
                    .map(|id| QuerySmResp::new(id, final_date, MessageState::from(found.state), found.error_code));
                match pdu {
                    Ok(pdu) => self.send(Outbound::command(seq, pdu)).await,
                    Err(_) => {
                        self.reject(CommandId::QuerySmResp, CommandStatus::EsmeRqueryfail, seq)
                            .await
                    }
                }
            }
            Finished::Query { seq, result: None, .. } => {
                self.reject(CommandId::QuerySmResp, CommandStatus::EsmeRqueryfail, seq)
                    .await
            }
            Finished::Change {
                seq,
                resp,
                result: Ok(()),
            } => {
                let pdu = match resp {
                    CommandId::ReplaceSmResp => Pdu::ReplaceSmResp,
                    _ => Pdu::CancelSmResp,
                };
                self.send(Outbound::command(seq, pdu)).await
            }
            Finished::Change {
                seq,
                resp,
                result: Err(refusal),
            } => {
                // Whatever the backend's reason, the ESME learns the change
                // failed (ESME_RCANCELFAIL, ESME_RREPLACEFAIL); only
                // throttling, or a status of its own (a schedule that
                // cannot be read), says more.
                tracing::debug!(%refusal, ?resp, "change refused");
                let status = match refusal {
                    SubmitRefusal::Throttled | SubmitRefusal::Status(_) => {
                        CommandStatus::from(refusal.command_status())
                    }
                    _ if resp == CommandId::ReplaceSmResp => CommandStatus::EsmeRreplacefail,
                    _ => CommandStatus::EsmeRcancelfail,
                };
                self.reject(resp, status, seq).await
            }
        }
    }

    /// Lets running backend calls finish and answers them, so that nothing
    /// stored goes unanswered when the session ends.
    async fn drain_in_flight(&mut self) -> Result<(), SessionError> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some(done)) => self.finish(done).await?,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        running = self.in_flight.len(),
                        "backend calls still running at session end"
                    );
                    break;
                }
            }
        }
        if self.unflushed {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends receipts while the window has room.
    async fn send_receipts(&mut self) -> Result<(), SessionError> {
        while self.outstanding.len() < self.window.max(1) {
            let Some(queued) = self.waiting.pop_front() else {
                break;
            };
            // No alert_notification_resp exists: an alert is done once written.
            let (pdu, answered) = match &queued.item {
                Delivery::Receipt(receipt) => (receipt_pdu(receipt).map(Pdu::from), true),
                Delivery::Mobile(message) => (mobile_pdu(message).map(Pdu::from), true),
                Delivery::Alert(alert) => (alert_pdu(alert).map(Pdu::from), false),
            };
            match pdu {
                Ok(pdu) => {
                    let seq = self.next_sequence();
                    self.send(Outbound::command(seq, pdu)).await?;
                    tracing::debug!(message_id = %queued.item.message_id(), seq, "sent to the ESME");
                    if answered {
                        self.outstanding.insert(seq, (queued, Instant::now() + DELIVER_TIMEOUT));
                    } else {
                        queued.finish(true);
                    }
                }
                Err(reason) => {
                    tracing::warn!(message_id = %queued.item.message_id(), reason, "cannot be sent to the ESME");
                    queued.finish(false);
                }
            }
        }
        Ok(())
    }

    fn on_deliver_sm_resp(&mut self, seq: u32, status: CommandStatus) {
        match self.outstanding.remove(&seq) {
            Some((queued, _)) => {
                if status != CommandStatus::EsmeRok {
                    tracing::info!(message_id = %queued.item.message_id(), ?status, "ESME refused a deliver_sm");
                } else if let Some(counts) = &self.counts {
                    counts.delivered();
                }
                queued.finish(status == CommandStatus::EsmeRok);
            }
            None => tracing::debug!(seq, "answer to no outstanding deliver_sm"),
        }
    }

    /// Says goodbye to a bound ESME: finishes running calls, sends `unbind`
    /// and waits briefly for `unbind_resp`, still taking receipt answers.
    async fn goodbye(&mut self) -> Result<(), SessionError> {
        self.write_timeout = UNBIND_TIMEOUT;
        self.drain_in_flight().await?;
        if !matches!(self.state, State::Bound { .. }) {
            return Ok(());
        }
        let seq = self.next_sequence();
        self.send_now(Outbound::command(seq, Pdu::Unbind)).await?;
        let deadline = Instant::now() + UNBIND_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Ok(Some(Ok(Inbound::Command(command)))) => match command.id() {
                    CommandId::UnbindResp => break,
                    // Both sides said goodbye at once.
                    CommandId::Unbind => {
                        self.send_now(Outbound::command(command.sequence_number(), Pdu::UnbindResp))
                            .await?;
                        break;
                    }
                    CommandId::DeliverSmResp => self.on_deliver_sm_resp(command.sequence_number(), command.status()),
                    _ => {}
                },
                Ok(Some(Ok(Inbound::Invalid(_)))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => break,
            }
        }
        self.enter(State::Unbound);
        Ok(())
    }
}

/// A client's refusal is routine; a system error is ours and logged with its cause.
fn log_refusal(refusal: &SubmitRefusal) {
    match refusal {
        SubmitRefusal::System(cause) => tracing::error!(%cause, "backend failed to store a submission"),
        other => tracing::debug!(refusal = %other, "submit_sm refused"),
    }
}

/// A fresh message id for a part of a long message that is not the last to
/// arrive: 16 hex digits, random, so it cannot collide with the backend's ids
/// in practice.
fn part_message_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// What a `submit_sm`, a `data_sm` or one destination of a `submit_multi`
/// say of the message they submit; a `data_sm` has no `short_message` (its
/// text is in `message_payload`), no validity period and no schedule.
struct SubmitFields<'a> {
    source_addr: &'a str,
    source_ton: u8,
    source_npi: u8,
    dest_addr: &'a str,
    dest_ton: u8,
    dest_npi: u8,
    esm_class: u8,
    registered_delivery: u8,
    data_coding: u8,
    validity_period: &'a str,
    schedule_delivery_time: &'a str,
    short_message: &'a [u8],
    tlvs: &'a [rusmpp::tlvs::Tlv],
}

/// A [`SubmitFields`] from the fields `submit_sm`, `data_sm` and
/// `submit_multi` share, the destination (one of a `submit_multi`'s), and
/// the three a `data_sm` lacks.
macro_rules! submit_fields {
    ($sm:expr, $dest:expr, $validity:expr, $schedule:expr, $short_message:expr) => {
        SubmitFields {
            source_addr: $sm.source_addr.as_str(),
            source_ton: u8::from($sm.source_addr_ton),
            source_npi: u8::from($sm.source_addr_npi),
            dest_addr: $dest.destination_addr.as_str(),
            dest_ton: u8::from($dest.dest_addr_ton),
            dest_npi: u8::from($dest.dest_addr_npi),
            esm_class: u8::from($sm.esm_class),
            registered_delivery: u8::from($sm.registered_delivery),
            data_coding: u8::from($sm.data_coding),
            validity_period: $validity,
            schedule_delivery_time: $schedule,
            short_message: $short_message,
            tlvs: $sm.tlvs(),
        }
    };
}

impl<'a> From<&'a SubmitSm> for SubmitFields<'a> {
    fn from(sm: &'a SubmitSm) -> Self {
        submit_fields!(
            sm,
            sm,
            sm.validity_period.as_str(),
            sm.schedule_delivery_time.as_str(),
            sm.short_message()
        )
    }
}

impl<'a> From<&'a DataSm> for SubmitFields<'a> {
    fn from(sm: &'a DataSm) -> Self {
        submit_fields!(sm, sm, "", "", &[])
    }
}

impl<'a> SubmitFields<'a> {
    /// One destination's share of a `submit_multi`.
    fn of_multi(sm: &'a SubmitMulti, dest: &'a SmeAddress) -> Self {
        submit_fields!(
            sm,
            dest,
            sm.validity_period.as_str(),
            sm.schedule_delivery_time.as_str(),
            sm.short_message()
        )
    }
}

/// A destination of a `submit_multi` the SMSC did not take, and why.
fn unsuccess(dest: &SmeAddress, status: CommandStatus) -> UnsuccessSme {
    UnsuccessSme::new(
        dest.dest_addr_ton,
        dest.dest_addr_npi,
        dest.destination_addr.clone(),
        status,
    )
}

/// `seconds` from now as a relative SMPP time (`00MMDDhhmmss000R`, at most
/// 99 days), as `validity_period` is written.
pub(super) fn relative_smpp_time(seconds: u32) -> String {
    let seconds = seconds.min(99 * 86_400 + 86_399);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (hours, rest) = (rest / 3_600, rest % 3_600);
    format!("0000{days:02}{hours:02}{:02}{:02}000R", rest / 60, rest % 60)
}

/// Reads a submit: its addresses and text, and whether it is a whole
/// message or part of a long one (UDH or SAR TLVs). Refusals carry the
/// status to answer with.
fn read_submit(system_id: &str, sm: &SubmitFields<'_>) -> Result<Incoming, CommandStatus> {
    let source = sm.source_addr.to_string();
    let dest = sm.dest_addr.to_string();
    if dest.is_empty() {
        return Err(CommandStatus::EsmeRinvdstadr);
    }
    let mut payload = None;
    let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
    let mut message_ref = None;
    let mut time_to_live = None;
    let mut set_dpf = false;
    for tlv in sm.tlvs {
        match tlv.value() {
            Some(TlvValue::SetDpf(dpf)) => set_dpf = u8::from(*dpf) == 1,
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.to_vec()),
            Some(TlvValue::QosTimeToLive(seconds)) => time_to_live = Some(*seconds),
            Some(TlvValue::SarMsgRefNum(r)) => sar_ref = Some(*r),
            Some(TlvValue::SarTotalSegments(t)) => sar_total = Some(*t),
            Some(TlvValue::SarSegmentSeqnum(s)) => sar_seq = Some(*s),
            Some(TlvValue::Other { tag, value }) if u16::from(*tag) == TAG_MESSAGE_REF => {
                let text: String = value
                    .iter()
                    .take_while(|&&b| b != 0)
                    .map(|&b| if b.is_ascii() { char::from(b) } else { '?' })
                    .collect();
                message_ref = Some(text);
            }
            _ => {}
        }
    }
    let short_message: &[u8] = sm.short_message;
    let body: Vec<u8> = match payload {
        Some(payload) if short_message.is_empty() => payload,
        _ => short_message.to_vec(),
    };
    let esm_class = sm.esm_class;
    let (concat, user_data) = if esm_class & text::ESM_UDHI != 0 {
        let (concat, data) = text::split_udh(&body).map_err(|_| CommandStatus::EsmeRinvesmclass)?;
        (concat, data.to_vec())
    } else {
        (None, body)
    };
    let concat = match (concat, sar_ref, sar_total, sar_seq) {
        (Some(concat), ..) => Some(concat),
        (None, Some(reference), Some(total), Some(seq)) => {
            if total == 0 || seq == 0 || seq > total {
                return Err(CommandStatus::EsmeRinvtlvval);
            }
            Some(text::Concat { reference, total, seq })
        }
        _ => None,
    };
    let validity = sm.validity_period;
    let scheduled = sm.schedule_delivery_time;
    let meta = PartMeta {
        source_ton: sm.source_ton,
        source_npi: sm.source_npi,
        dest_ton: sm.dest_ton,
        dest_npi: sm.dest_npi,
        data_coding: sm.data_coding,
        registered_delivery: sm.registered_delivery,
        // A data_sm says how long to try in `qos_time_to_live` (seconds).
        validity_period: match (validity.is_empty(), time_to_live) {
            (false, _) => Some(validity.to_string()),
            (true, Some(seconds)) => Some(relative_smpp_time(seconds)),
            (true, None) => None,
        },
        message_ref,
        schedule_delivery_time: (!scheduled.is_empty()).then(|| scheduled.to_string()),
        set_dpf,
    };
    match concat {
        Some(concat) if concat.total > 1 => Ok(Incoming::Part {
            key: PartKey {
                system_id: system_id.to_string(),
                source,
                dest,
                reference: concat.reference,
            },
            total: concat.total,
            seq: concat.seq,
            user_data,
            meta,
        }),
        _ => Ok(Incoming::Single(submission(
            system_id, source, dest, &user_data, meta, 1,
        ))),
    }
}

fn submission(
    system_id: &str,
    source: String,
    dest: String,
    user_data: &[u8],
    meta: PartMeta,
    parts: u8,
) -> Submission {
    Submission {
        system_id: system_id.to_string(),
        source_addr: source,
        source_ton: meta.source_ton,
        source_npi: meta.source_npi,
        dest_addr: dest,
        dest_ton: meta.dest_ton,
        dest_npi: meta.dest_npi,
        text: text::decode(meta.data_coding, user_data),
        data_coding: meta.data_coding,
        parts,
        registered_delivery: meta.registered_delivery,
        validity_period: meta.validity_period,
        schedule_delivery_time: meta.schedule_delivery_time,
        message_ref: meta.message_ref,
        part_ids: Vec::new(),
        set_dpf: meta.set_dpf,
    }
}

/// A long message that never completed, from the parts that came (as the
/// backend kept them): their text in order of their number, `…` standing
/// for each run of missing parts; the other fields from the first part, the
/// reference from any. Its id is that of the part that came last, as a
/// whole message's is its completing part's, and `part_ids` names the
/// others. `None` when no part came.
pub fn incomplete_submission(kept: &[KeptPart]) -> Option<(String, Submission)> {
    let mut parts: Vec<&KeptPart> = kept.iter().collect();
    parts.sort_by_key(|p| p.seq);
    parts.dedup_by_key(|p| p.seq);
    let last = parts.iter().max_by_key(|p| (p.kept_at, p.seq))?.part_id.clone();
    let first = parts[0];
    let mut meta = first.meta.clone();
    if meta.message_ref.is_none() {
        meta.message_ref = parts.iter().find_map(|p| p.meta.message_ref.clone());
    }
    let mut text = String::new();
    let mut next = 1u16;
    for part in &parts {
        if u16::from(part.seq) != next {
            text.push('…');
        }
        text.push_str(&text::decode(part.meta.data_coding, &part.user_data));
        next = u16::from(part.seq) + 1;
    }
    if next <= u16::from(first.total) {
        text.push('…');
    }
    let part_ids = parts
        .iter()
        .map(|p| p.part_id.clone())
        .filter(|id| *id != last)
        .collect();
    let arrived = u8::try_from(parts.len()).unwrap_or(u8::MAX);
    let base = submission(
        &first.system_id,
        first.source.clone(),
        first.dest.clone(),
        &[],
        meta,
        arrived,
    );
    Some((last, Submission { text, part_ids, ..base }))
}

/// The whole message from its parts: the text is decoded from the joined
/// octets (so an escape or a surrogate pair cut between parts survives), the
/// other fields come from the first part, the reference from any part.
fn whole_submission(system_id: &str, complete: &Complete<PartMeta>) -> Submission {
    let mut meta = complete.parts.first().map(|p| p.meta.clone()).unwrap_or_default();
    if meta.message_ref.is_none() {
        meta.message_ref = complete.parts.iter().find_map(|p| p.meta.message_ref.clone());
    }
    Submission {
        part_ids: complete.earlier_ids(),
        ..submission(
            system_id,
            complete.key.source.clone(),
            complete.key.dest.clone(),
            &complete.user_data(),
            meta,
            complete.total,
        )
    }
}

/// TON and NPI for a receipt address, which [`Receipt`] gives as a string:
/// a national number (leading 0) or an international one (digits, or '+'
/// and digits) on ISDN, anything else alphanumeric.
fn address(addr: &str) -> (Ton, Npi, &str) {
    let digits = addr.strip_prefix('+').unwrap_or(addr);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let ton = if digits.starts_with('0') { 2 } else { 1 };
        (Ton::from(ton), Npi::from(1), digits)
    } else {
        (Ton::from(5), Npi::from(0), addr)
    }
}

/// The alert_notification for a phone reachable again: the phone as the
/// source, the ESME address that asked, `ms_availability_status` available.
pub(crate) fn alert_pdu(alert: &Alert) -> Result<AlertNotification, String> {
    let (esme_ton, esme_npi, esme) = address(&alert.esme_addr);
    Ok(AlertNotification::new(
        Ton::International,
        Npi::Isdn,
        COctetString::from_str(&alert.ms_addr).map_err(|e| format!("source address: {e}"))?,
        esme_ton,
        esme_npi,
        COctetString::from_str(esme).map_err(|e| format!("esme address: {e}"))?,
        Some(MsAvailabilityStatus::Available),
    ))
}

/// The deliver_sm that carries a mobile-originated message (esm_class 0):
/// GSM 7-bit (unpacked) when the text fits it, else UCS-2; past 254 octets
/// in `message_payload`. Or why it cannot be built.
pub(crate) fn mobile_pdu(message: &MobileOriginated) -> Result<DeliverSm, String> {
    let (dest_ton, dest_npi, dest) = address(&message.dest_addr);
    let (data_coding, octets) = match text::gsm7_encode(&message.text) {
        Some(octets) => (text::DCS_GSM7, octets),
        None => (text::DCS_UCS2, text::ucs2_encode(&message.text)),
    };
    let (short_message, tlvs) = if octets.len() > 254 {
        let payload = MessageDeliveryRequestTlvValue::MessagePayload(rusmpp::values::MessagePayload::new(
            rusmpp::types::AnyOctetString::from_vec(octets),
        ));
        (OctetString::empty(), vec![payload])
    } else {
        (
            OctetString::from_vec(octets).map_err(|e| format!("text: {e}"))?,
            Vec::new(),
        )
    };
    Ok(DeliverSm::builder()
        .service_type(ServiceType::default())
        .source_addr_ton(Ton::International)
        .source_addr_npi(Npi::Isdn)
        .source_addr(COctetString::from_str(&message.source_addr).map_err(|e| format!("source address: {e}"))?)
        .dest_addr_ton(dest_ton)
        .dest_addr_npi(dest_npi)
        .destination_addr(COctetString::from_str(dest).map_err(|e| format!("destination address: {e}"))?)
        .esm_class(EsmClass::from(0x00))
        .data_coding(DataCoding::from(data_coding))
        .short_message(short_message)
        .tlvs(tlvs)
        .build())
}

/// The deliver_sm that carries a receipt, or why it cannot be built.
pub(crate) fn receipt_pdu(receipt: &Receipt) -> Result<DeliverSm, String> {
    let (source_ton, source_npi, source) = address(&receipt.source_addr);
    let (dest_ton, dest_npi, dest) = address(&receipt.dest_addr);
    let body = receipt_text::format(
        &receipt.message_id,
        &receipt.stat,
        receipt.err,
        receipt.submit_date,
        receipt.done_date,
        &receipt.text,
    );
    let mut body = body.into_bytes();
    body.truncate(255);
    let mut tlvs = vec![
        MessageDeliveryRequestTlvValue::ReceiptedMessageId(
            COctetString::from_str(&receipt.message_id).map_err(|e| format!("message id: {e}"))?,
        ),
        MessageDeliveryRequestTlvValue::MessageState(MessageState::from(receipt.message_state)),
    ];
    if let Some((network, code)) = receipt.network_error_code {
        tlvs.push(MessageDeliveryRequestTlvValue::NetworkErrorCode(NetworkErrorCode::new(
            ErrorCodeNetworkType::from(network),
            code,
        )));
    }
    Ok(DeliverSm::builder()
        .service_type(ServiceType::default())
        .source_addr_ton(source_ton)
        .source_addr_npi(source_npi)
        .source_addr(COctetString::from_str(source).map_err(|e| format!("source address: {e}"))?)
        .dest_addr_ton(dest_ton)
        .dest_addr_npi(dest_npi)
        .destination_addr(COctetString::from_str(dest).map_err(|e| format!("destination address: {e}"))?)
        // SMPP 3.4 section 5.2.12: an SMSC delivery receipt, or an
        // intermediate delivery notification.
        .esm_class(EsmClass::from(if receipt.intermediate { 0x20 } else { 0x04 }))
        .data_coding(DataCoding::from(text::DCS_IA5))
        .short_message(OctetString::from_vec(body).map_err(|e| format!("text: {e}"))?)
        .tlvs(tlvs)
        .build())
}

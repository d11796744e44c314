//! otpgate's own SMPP client (an ESME, on rusmppc): it binds as a
//! transceiver to the SMSC (the embedded one, or a real one by
//! configuration), submits OTP messages, and hands delivery receipts to the
//! delivery log through a [`ReceiptSink`].
//!
//! It answers `deliver_sm_resp` only after the sink has recorded the receipt,
//! reconnects with backoff when the link drops, and unbinds at shutdown. It
//! must never log message text or the receipt's quoted text (they carry OTP
//! codes); the text encodings and the split of long messages come from
//! [`crate::smsc::text`], shared with the SMSC.

use std::collections::{HashSet, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rusmpp::pdus::{BindTransceiver, DeliverSm, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::{MessageSubmissionRequestTlvValue, TlvTag, TlvValue};
use rusmpp::types::{AnyOctetString, COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmpp::{Command, CommandId, Pdu};
use rusmppc::{ConnectionBuilder, Event};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::shutdown::Shutdown;
use crate::smsc::{receipt_text, text, TAG_MESSAGE_REF};

/// Where and as whom to bind.
#[derive(Clone)]
pub struct SmsClientConfig {
    /// `host:port` of the SMSC.
    pub addr: String,
    pub system_id: String,
    pub password: String,
    /// Messages being submitted at once; the rest wait their turn. An SMSC
    /// answers ESME_RTHROTTLED past its own window, which would fail the
    /// OTP.
    pub window: usize,
    /// TLS from the first byte, checking the SMSC's certificate for
    /// `addr`'s host; `None`: plain TCP.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for SmsClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsClientConfig")
            .field("addr", &self.addr)
            .field("system_id", &self.system_id)
            .field("password", &"<hidden>")
            .field("window", &self.window)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One SMS to send.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingSms {
    /// The sender, e.g. "0354600124" (national) or a short code.
    pub from: String,
    /// The destination in E.164, e.g. "+819012345678".
    pub to_e164: String,
    pub text: String,
    /// Sent as vendor TLV 0x1401 on every part so the SMSC side can tie the
    /// submission to the delivery log's message.
    pub message_ref: String,
}

/// OutgoingSms's Debug leaves the text out: it carries the OTP code.
impl std::fmt::Debug for OutgoingSms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingSms")
            .field("from", &self.from)
            .field("to_e164", &self.to_e164)
            .field("message_ref", &self.message_ref)
            .finish_non_exhaustive()
    }
}

/// A delivery receipt as the SMSC sent it.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingReceipt {
    /// From the receipted_message_id TLV, else the text's `id:` field.
    pub message_id: String,
    pub stat: String,
    pub err: String,
    pub message_state: Option<u8>,
    pub network_error_code: Option<(u8, u16)>,
    /// The text's `done date:` field, raw (YYMMDDhhmm).
    pub done_date: Option<String>,
    /// The receipt text with the quoted message's digits masked
    /// ([`receipt_text::mask_quoted`]): the code's first digits can be
    /// among the 20 characters it quotes.
    pub text: String,
}

/// IncomingReceipt's Debug leaves the text out: even masked, a log line has
/// no use for the quoted message.
impl std::fmt::Debug for IncomingReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingReceipt")
            .field("message_id", &self.message_id)
            .field("stat", &self.stat)
            .field("err", &self.err)
            .field("message_state", &self.message_state)
            .field("network_error_code", &self.network_error_code)
            .field("done_date", &self.done_date)
            .finish_non_exhaustive()
    }
}

/// Where receipts go: the delivery log.
pub trait ReceiptSink: Send + Sync + 'static {
    /// Records the receipt durably; the client answers deliver_sm_resp only after this returns.
    fn on_receipt(&self, receipt: IncomingReceipt) -> BoxFuture<'_, ()>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    /// No bound connection right now (reconnecting).
    #[error("not connected to the SMSC")]
    NotConnected,
    /// The SMSC answered with this command_status (bind or submit_sm).
    #[error("SMSC answered command_status 0x{0:08X}")]
    Status(u32),
    /// The connection failed; a submission may or may not have arrived.
    #[error("SMPP connection: {0}")]
    Io(String),
    /// The SMSC did not answer in time; a submission may or may not have arrived.
    #[error("SMSC did not answer in time")]
    Timeout,
    /// The message cannot be expressed in SMPP (address too long, text too long).
    #[error("cannot send: {0}")]
    Invalid(String),
}

/// How long to wait for the SMSC's answer to any request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ENQUIRE_LINK_INTERVAL: Duration = Duration::from_secs(30);
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long the goodbye (unbind, close) may take at shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_PDU_LEN: usize = 64 * 1024;
/// Ids of earlier parts of long messages remembered, to drop their receipts.
const MAX_PART_IDS: usize = 10_000;

/// The link's current state, watched by submitters.
#[derive(Clone, Default)]
struct Link {
    client: Option<rusmppc::Client>,
    /// Successful binds so far.
    binds: u64,
    /// The link task has finished (after shutdown).
    stopped: bool,
}

struct Inner {
    link: watch::Sender<Link>,
    /// One permit per message being submitted ([`SmsClientConfig::window`]).
    window: tokio::sync::Semaphore,
    next_reference: AtomicU8,
    /// Ids the SMSC gave to parts of a long message other than the last.
    /// The SMSC receipts them too (one receipt per part, as networks do);
    /// the delivery log tracks the message by the last part's id, so their
    /// receipts are answered and dropped here. In memory only: after a
    /// restart such receipts reach the sink as unknown ids.
    part_ids: Mutex<PartIds>,
}

#[derive(Default)]
struct PartIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

/// A handle on the SMPP link; clones share it.
#[derive(Clone)]
pub struct SmsClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsClient")
            .field("connected", &self.is_connected())
            .finish()
    }
}

type Events = BoxStream<'static, Event>;

impl SmsClient {
    /// Binds as a transceiver; reconnects (with backoff) when the connection
    /// drops; stops on shutdown (unbind first). Fails if the SMSC refuses
    /// the first bind (credentials, a bad system_id), so that a wrong
    /// configuration shows at start. An SMSC that cannot be reached yet
    /// (not started, restarting) is only logged: the client keeps trying
    /// as after a drop, and submits meanwhile get [`SmsError::NotConnected`].
    pub async fn start(
        config: SmsClientConfig,
        sink: Arc<dyn ReceiptSink>,
        shutdown: Shutdown,
    ) -> Result<SmsClient, SmsError> {
        let first = match connect_and_bind(&config).await {
            Ok(bound) => Some(bound),
            Err(error @ (SmsError::Io(_) | SmsError::Timeout)) => {
                tracing::error!(addr = %config.addr, %error, "the SMSC cannot be reached; retrying until it can");
                None
            }
            Err(refused) => return Err(refused),
        };
        let (link, _) = watch::channel(Link {
            client: first.as_ref().map(|(client, _)| client.clone()),
            binds: u64::from(first.is_some()),
            stopped: false,
        });
        let inner = Arc::new(Inner {
            link,
            window: tokio::sync::Semaphore::new(config.window.max(1)),
            next_reference: AtomicU8::new(rand::random()),
            part_ids: Mutex::new(PartIds::default()),
        });
        if first.is_some() {
            tracing::info!(addr = %config.addr, system_id = %config.system_id, "SMPP client bound");
        }
        let task = inner.clone();
        tokio::spawn(async move {
            supervise(&task, config, sink, shutdown, first).await;
            task.link.send_modify(|link| {
                link.client = None;
                link.stopped = true;
            });
        });
        Ok(SmsClient { inner })
    }

    /// Whether a bound connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().client.is_some()
    }

    /// Submits with registered_delivery=1, dest TON international (digits
    /// without '+'), GSM-7 when the text fits the GSM alphabet else UCS-2
    /// (0x08), split with UDH when too long (153 GSM-7 septets / 67 UCS-2
    /// chars per part; 160/70 when single); TLV 0x1401 = message_ref on every
    /// part. Returns the SMSC message id (of the last part) or an error
    /// carrying the command_status.
    pub async fn submit(&self, sms: OutgoingSms) -> Result<String, SmsError> {
        let _turn = self.inner.window.acquire().await.map_err(|_| SmsError::NotConnected)?;
        let client = self.inner.link.borrow().client.clone().ok_or(SmsError::NotConnected)?;
        let encoded = text::encode_for_sms(&sms.text).map_err(|e| SmsError::Invalid(e.to_string()))?;
        let dest: String = sms.to_e164.chars().filter(char::is_ascii_digit).collect();
        let dest = COctetString::from_str(&dest).map_err(|e| SmsError::Invalid(format!("destination: {e}")))?;
        let (source_ton, source_npi, source) = source_address(&sms.from);
        let source = COctetString::from_str(&source).map_err(|e| SmsError::Invalid(format!("source: {e}")))?;
        let total = encoded.parts.len();
        let total_u8 = u8::try_from(total).map_err(|_| SmsError::Invalid("too many parts".into()))?;
        let reference = self.inner.next_reference.fetch_add(1, Ordering::Relaxed);
        let mut ids = Vec::with_capacity(total);
        for (index, part) in encoded.parts.iter().enumerate() {
            let (esm_class, short_message) = if total > 1 {
                let seq = u8::try_from(index + 1).unwrap_or(u8::MAX);
                (text::ESM_UDHI, text::with_udh(reference, total_u8, seq, part))
            } else {
                (0, part.clone())
            };
            let short_message =
                OctetString::from_vec(short_message).map_err(|e| SmsError::Invalid(format!("text: {e}")))?;
            let sm = SubmitSm::builder()
                .source_addr_ton(source_ton)
                .source_addr_npi(source_npi)
                .source_addr(source.clone())
                .dest_addr_ton(Ton::International)
                .dest_addr_npi(Npi::Isdn)
                .destination_addr(dest.clone())
                .esm_class(EsmClass::from(esm_class))
                .registered_delivery(RegisteredDelivery::from(1))
                .data_coding(DataCoding::from(encoded.data_coding))
                .short_message(short_message)
                .push_tlv(MessageSubmissionRequestTlvValue::Other {
                    tag: TlvTag::from(TAG_MESSAGE_REF),
                    value: AnyOctetString::from_vec(sms.message_ref.clone().into_bytes()),
                })
                .build();
            let resp = client.submit_sm(sm).await.map_err(map_error)?;
            ids.push(resp.message_id().as_str().to_string());
        }
        let last = ids.pop().ok_or_else(|| SmsError::Invalid("empty message".into()))?;
        if !ids.is_empty() {
            let mut part_ids = self.inner.part_ids.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                if part_ids.set.insert(id.clone()) {
                    part_ids.order.push_back(id);
                }
            }
            while part_ids.order.len() > MAX_PART_IDS {
                if let Some(old) = part_ids.order.pop_front() {
                    part_ids.set.remove(&old);
                }
            }
        }
        Ok(last)
    }

    /// Resolves once the client has stopped after shutdown: unbound (or
    /// given up trying) and closed.
    pub async fn stopped(&self) {
        let mut rx = self.inner.link.subscribe();
        let _ = rx.wait_for(|link| link.stopped).await;
    }

    /// Waits until the client has bound `count` times in all (tests use it
    /// to see a reconnect).
    #[cfg(test)]
    async fn until_binds(&self, count: u64) {
        let mut rx = self.inner.link.subscribe();
        let _ = rx.wait_for(|link| link.binds >= count && link.client.is_some()).await;
    }
}

impl Inner {
    fn set_client(&self, client: Option<rusmppc::Client>) {
        self.link.send_modify(|link| {
            if client.is_some() {
                link.binds += 1;
            }
            link.client = client;
        });
    }

    /// Takes the id out of the part list if it is there.
    fn is_earlier_part(&self, message_id: &str) -> bool {
        let mut part_ids = self.part_ids.lock().unwrap_or_else(|e| e.into_inner());
        part_ids.set.remove(message_id)
    }
}

fn map_error(error: rusmppc::error::Error) -> SmsError {
    use rusmppc::error::Error;
    match error {
        Error::UnexpectedResponse { response } => SmsError::Status(u32::from(response.status())),
        Error::ResponseTimeout { .. } => SmsError::Timeout,
        Error::ConnectionClosed | Error::ConnectionClosedByPeer => SmsError::Io("connection closed".into()),
        other => SmsError::Io(other.to_string()),
    }
}

/// TON/NPI for the sender: international with '+', national for digits
/// (03-5460-0124 as 0354600124, short codes like 22471), alphanumeric else.
fn source_address(from: &str) -> (Ton, Npi, String) {
    let trimmed = from.trim();
    if let Some(rest) = trimmed.strip_prefix('+') {
        let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
        return (Ton::International, Npi::Isdn, digits);
    }
    let digits: String = trimmed.chars().filter(|c| *c != '-' && *c != ' ').collect();
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        (Ton::National, Npi::Isdn, digits)
    } else {
        (Ton::Alphanumeric, Npi::Unknown, trimmed.to_string())
    }
}

async fn connect_and_bind(config: &SmsClientConfig) -> Result<(rusmppc::Client, Events), SmsError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&config.addr))
        .await
        .map_err(|_| SmsError::Timeout)?
        .map_err(|e| SmsError::Io(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let builder = ConnectionBuilder::new()
        .disable_interface_version_check()
        .max_command_length(MAX_PDU_LEN)
        .enquire_link_interval(ENQUIRE_LINK_INTERVAL)
        .response_timeout(RESPONSE_TIMEOUT);
    let stream: Box<dyn crate::tls::Io> = match &config.tls {
        Some(connector) => {
            let name = server_name(&config.addr)?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
                .await
                .map_err(|_| SmsError::Timeout)?
                .map_err(|e| SmsError::Io(format!("TLS: {e}")))?;
            Box::new(tls)
        }
        None => Box::new(stream),
    };
    let (client, events) = builder.connected(stream);
    let bind = BindTransceiver::builder()
        .system_id(COctetString::from_str(&config.system_id).map_err(|e| SmsError::Invalid(format!("system_id: {e}")))?)
        .password(COctetString::from_str(&config.password).map_err(|e| SmsError::Invalid(format!("password: {e}")))?)
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    if let Err(error) = client.bind_transceiver(bind).await {
        let _ = client.close().await;
        return Err(map_error(error));
    }
    Ok((client, events.boxed()))
}

/// The name a TLS SMSC's certificate must carry: `addr`'s host, a DNS name
/// or an IP address.
fn server_name(addr: &str) -> Result<rustls_pki_types::ServerName<'static>, SmsError> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| SmsError::Invalid(format!("`{host}` is no host name for TLS")))
}

/// How a connection ended.
enum End {
    Shutdown,
    Dropped,
}

/// Keeps the link up until shutdown: serves each connection's incoming
/// PDUs, and binds again, with a doubling pause, after a drop or when
/// there was no first bind.
async fn supervise(
    inner: &Inner,
    config: SmsClientConfig,
    sink: Arc<dyn ReceiptSink>,
    mut shutdown: Shutdown,
    mut bound: Option<(rusmppc::Client, Events)>,
) {
    loop {
        let (client, mut events) = match bound.take() {
            Some(link) => link,
            None => match bind_again(&config, &mut shutdown).await {
                Some(link) => {
                    inner.set_client(Some(link.0.clone()));
                    tracing::info!(addr = %config.addr, "SMPP client bound");
                    link
                }
                None => return,
            },
        };
        let end = serve_connection(inner, &client, &mut events, sink.as_ref(), &mut shutdown).await;
        inner.set_client(None);
        if let End::Shutdown = end {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.unbind()).await;
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, client.close_and_wait()).await;
            tracing::info!("SMPP client unbound");
            return;
        }
        let _ = client.close().await;
        tracing::warn!(addr = %config.addr, "SMPP link dropped; reconnecting");
    }
}

/// Connects and binds until it works, pausing 0.1 s, then twice as long
/// each time up to 30 s; `None` at shutdown.
async fn bind_again(config: &SmsClientConfig, shutdown: &mut Shutdown) -> Option<(rusmppc::Client, Events)> {
    let mut pause = RECONNECT_MIN;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        match connect_and_bind(config).await {
            Ok(link) => return Some(link),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?pause, "SMPP reconnect failed");
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Serves one bound connection. PDUs from the SMSC are handled
/// concurrently (as many as the SMSC's window sends at once): each receipt
/// waits for its durable log event before its `deliver_sm_resp`, and one
/// at a time that wait capped the receipts at one per sync.
async fn serve_connection(
    inner: &Inner,
    client: &rusmppc::Client,
    events: &mut Events,
    sink: &dyn ReceiptSink,
    shutdown: &mut Shutdown,
) -> End {
    let mut handling = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return End::Shutdown,
            Some(handled) = handling.next(), if !handling.is_empty() => {
                if let Err(error) = handled {
                    tracing::warn!(%error, "SMPP answer failed");
                    return End::Dropped;
                }
                if client.is_closed() {
                    return End::Dropped;
                }
            }
            event = events.next() => match event {
                None => return End::Dropped,
                Some(Event::Error(error)) => tracing::warn!(%error, "SMPP link error"),
                Some(Event::Incoming(command)) => handling.push(on_incoming(inner, client, command, sink)),
            },
        }
    }
}

/// Acts on a PDU the SMSC sent: receipts go to the sink and are answered
/// after it returns; `unbind` is answered and ends the connection.
async fn on_incoming(
    inner: &Inner,
    client: &rusmppc::Client,
    command: Command,
    sink: &dyn ReceiptSink,
) -> Result<(), rusmppc::error::Error> {
    let seq = command.sequence_number();
    match (command.id(), command.pdu()) {
        (CommandId::DeliverSm, Some(Pdu::DeliverSm(deliver))) => {
            match read_receipt(deliver) {
                Some(receipt) if inner.is_earlier_part(&receipt.message_id) => {
                    tracing::debug!(message_id = %receipt.message_id, "receipt for an earlier part");
                }
                Some(receipt) => {
                    tracing::debug!(message_id = %receipt.message_id, stat = %receipt.stat, "receipt");
                    sink.on_receipt(receipt).await;
                }
                None => tracing::debug!("deliver_sm that is not a receipt; acknowledged and ignored"),
            }
            client
                .deliver_sm_resp(seq, DeliverSmResp::new(COctetString::empty(), vec![]))
                .await
        }
        (CommandId::Unbind, _) => {
            client.unbind_resp(seq).await?;
            client.close().await
        }
        (id, _) if id.is_response() => Ok(()),
        (id, _) => {
            tracing::debug!(?id, "unexpected operation from the SMSC");
            client.generic_nack(seq).await
        }
    }
}

/// Reads a deliver_sm as a delivery receipt: esm_class says so, or it has a
/// receipted_message_id TLV, or its text reads as one. `None` for anything
/// else (a mobile-originated message).
fn read_receipt(deliver: &DeliverSm) -> Option<IncomingReceipt> {
    let mut receipted = None;
    let mut message_state = None;
    let mut network_error_code = None;
    let mut payload = None;
    for tlv in deliver.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => receipted = Some(id.as_str().to_string()),
            Some(TlvValue::MessageState(state)) => message_state = Some(u8::from(*state)),
            Some(TlvValue::NetworkErrorCode(code)) => {
                network_error_code = Some((u8::from(code.network_type), code.error_code))
            }
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.to_vec()),
            _ => {}
        }
    }
    let short_message: &[u8] = deliver.short_message();
    let raw = match payload {
        Some(payload) if short_message.is_empty() => payload,
        _ => short_message.to_vec(),
    };
    let raw = text::latin1_decode(&raw);
    let fields = receipt_text::parse(&raw);
    let flagged = u8::from(deliver.esm_class) & 0x3C == 0x04;
    if !flagged && receipted.is_none() && fields.is_none() {
        return None;
    }
    let fields = fields.unwrap_or_default();
    let message_id = receipted.unwrap_or(fields.id);
    if message_id.is_empty() {
        return None;
    }
    Some(IncomingReceipt {
        message_id,
        stat: fields.stat,
        err: fields.err,
        message_state,
        network_error_code,
        done_date: (!fields.done_date.is_empty()).then_some(fields.done_date),
        text: receipt_text::mask_quoted(&raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smsc::tests::TestSmsc;
    use crate::smsc::Receipt;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(5);

    async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    struct ChannelSink(mpsc::UnboundedSender<IncomingReceipt>);

    impl ReceiptSink for ChannelSink {
        fn on_receipt(&self, receipt: IncomingReceipt) -> BoxFuture<'_, ()> {
            let _ = self.0.send(receipt);
            Box::pin(async {})
        }
    }

    fn config(addr: std::net::SocketAddr) -> SmsClientConfig {
        SmsClientConfig {
            addr: addr.to_string(),
            system_id: "otpgate".into(),
            password: "otpgate".into(),
            window: 10,
            tls: None,
        }
    }

    /// A short code message to the usual test number.
    fn code_sms(message_ref: &str) -> OutgoingSms {
        OutgoingSms {
            from: "0354600124".into(),
            to_e164: "+819012345678".into(),
            text: "code 111111".into(),
            message_ref: message_ref.into(),
        }
    }

    fn receipt_for(message_id: &str) -> Receipt {
        Receipt {
            system_id: "otpgate".into(),
            message_id: message_id.into(),
            source_addr: "819012345678".into(),
            dest_addr: "0354600124".into(),
            stat: "UNDELIV".into(),
            err: 22,
            message_state: 5,
            network_error_code: Some((3, 22)),
            submit_date: crate::clock::DEFAULT_VIRTUAL_START,
            done_date: crate::clock::DEFAULT_VIRTUAL_START + 120_000,
            text: "認証コード 123456".into(),
            part_ids: Vec::new(),
            intermediate: false,
        }
    }

    #[tokio::test]
    async fn submits_and_passes_receipts_to_the_sink() {
        let mut smsc = TestSmsc::start().await;
        let (tx, mut receipts) = mpsc::unbounded_channel();
        let (trigger, shutdown) = crate::shutdown::channel();
        let client = within(
            "start",
            SmsClient::start(config(smsc.addr), Arc::new(ChannelSink(tx)), shutdown),
        )
        .await
        .unwrap();
        let sms = OutgoingSms {
            from: "03-5460-0124".into(),
            to_e164: "+819012345678".into(),
            text: "認証コード 123456".into(),
            message_ref: "msg-1".into(),
        };
        let id = within("submit", client.submit(sms)).await.unwrap();
        let sub = smsc.submissions.try_recv().unwrap();
        assert_eq!(sub.text, "認証コード 123456");
        assert_eq!((sub.dest_addr.as_str(), sub.dest_ton), ("819012345678", 1));
        assert_eq!((sub.source_addr.as_str(), sub.source_ton), ("0354600124", 2));
        assert_eq!((sub.data_coding, sub.registered_delivery), (8, 1));
        assert_eq!(sub.message_ref.as_deref(), Some("msg-1"));

        let acked = smsc.hub.deliver(receipt_for(&id));
        let got = within("receipt", receipts.recv()).await.unwrap();
        assert_eq!(got.message_id, id);
        assert_eq!((got.stat.as_str(), got.err.as_str()), ("UNDELIV", "022"));
        assert_eq!(got.message_state, Some(5));
        assert_eq!(got.network_error_code, Some((3, 22)));
        assert_eq!(got.done_date.as_deref(), Some("2601010002"));
        assert_eq!(within("ack", acked).await, Ok(true));

        // A long message: one submission, one receipt at the sink.
        let long: String = "ワンタイムパスワードのお知らせ。".chars().cycle().take(200).collect();
        let sms = OutgoingSms {
            from: "22471".into(),
            to_e164: "+819012345678".into(),
            text: long.clone(),
            message_ref: "msg-2".into(),
        };
        let id = within("submit", client.submit(sms)).await.unwrap();
        let sub = smsc.submissions.try_recv().unwrap();
        assert_eq!((sub.text.as_str(), sub.parts), (long.as_str(), 3));
        assert_eq!(sub.message_ref.as_deref(), Some("msg-2"));
        let acked = smsc.hub.deliver(receipt_for(&id));
        assert_eq!(within("receipt", receipts.recv()).await.unwrap().message_id, id);
        assert_eq!(within("ack", acked).await, Ok(true));
        assert!(
            receipts.try_recv().is_err(),
            "receipts for earlier parts reach the sink"
        );

        trigger.fire();
        within("client to stop", client.stopped()).await;
        smsc.stop().await;
    }

    #[tokio::test]
    async fn wrong_password_fails_at_start() {
        let smsc = TestSmsc::start().await;
        let (tx, _receipts) = mpsc::unbounded_channel();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let mut bad = config(smsc.addr);
        bad.password = "nope".into();
        let result = within("start", SmsClient::start(bad, Arc::new(ChannelSink(tx)), shutdown)).await;
        assert_eq!(result.err(), Some(SmsError::Status(0x0E)));
        smsc.stop().await;
    }

    /// A client to `addr` whose receipts go nowhere, with its shutdown.
    async fn start_client(addr: std::net::SocketAddr) -> (Result<SmsClient, SmsError>, crate::shutdown::Trigger) {
        let (tx, _receipts) = mpsc::unbounded_channel();
        let (trigger, shutdown) = crate::shutdown::channel();
        let client = within(
            "start",
            SmsClient::start(config(addr), Arc::new(ChannelSink(tx)), shutdown),
        )
        .await;
        (client, trigger)
    }

    #[tokio::test]
    async fn reconnects_after_the_smsc_comes_back() {
        let smsc = TestSmsc::start().await;
        let addr = smsc.addr;
        let (client, trigger) = start_client(addr).await;
        let client = client.unwrap();
        smsc.stop().await;
        let again = TestSmsc::start_on(addr).await;
        within("reconnect", client.until_binds(2)).await;
        assert!(within("submit", client.submit(code_sms("r"))).await.is_ok());
        trigger.fire();
        within("client to stop", client.stopped()).await;
        assert!(!client.is_connected());
        again.stop().await;
    }

    #[tokio::test]
    async fn starts_before_the_smsc_and_binds_once_it_is_up() {
        let addr = {
            let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            spare.local_addr().unwrap()
        };
        let (client, trigger) = start_client(addr).await;
        let client = client.expect("an SMSC that is not up yet is no reason to fail");
        assert!(!client.is_connected());
        assert_eq!(client.submit(code_sms("early")).await, Err(SmsError::NotConnected));
        let smsc = TestSmsc::start_on(addr).await;
        within("first bind", client.until_binds(1)).await;
        assert!(within("submit", client.submit(code_sms("late"))).await.is_ok());
        trigger.fire();
        within("client to stop", client.stopped()).await;
        smsc.stop().await;
    }

    /// Holds each receipt until the test lets it through, so that their
    /// deliver_sm_resp go out together.
    struct GatedSink {
        arrived: mpsc::UnboundedSender<()>,
        gate: tokio::sync::Semaphore,
    }

    impl ReceiptSink for GatedSink {
        fn on_receipt(&self, _receipt: IncomingReceipt) -> BoxFuture<'_, ()> {
            let _ = self.arrived.send(());
            Box::pin(async move {
                if let Ok(permit) = self.gate.acquire().await {
                    permit.forget();
                }
            })
        }
    }

    /// rusmppc 0.4.0 takes at most five requests from its queue per
    /// wake-up and then waits for the next PDU from the SMSC. A deliver_sm_resp
    /// brings none back, so after a batch of them whatever came behind sat
    /// unsent until the enquire_link timer (30 s) woke the connection: a
    /// burst of receipts stalled every OTP for up to 30 s. vendor/rusmppc
    /// has the fix.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_behind_a_batch_of_receipt_answers_goes_out_at_once() {
        let smsc = TestSmsc::start_with("127.0.0.1:0".parse().unwrap(), |c| c.window = 16).await;
        let (arrived, mut arrivals) = mpsc::unbounded_channel();
        let sink = Arc::new(GatedSink {
            arrived,
            gate: tokio::sync::Semaphore::new(0),
        });
        let (trigger, shutdown) = crate::shutdown::channel();
        let client = within("start", SmsClient::start(config(smsc.addr), sink.clone(), shutdown))
            .await
            .unwrap();
        let mut ids = Vec::new();
        for n in 0..12 {
            ids.push(
                within("submit", client.submit(code_sms(&format!("r{n}"))))
                    .await
                    .unwrap(),
            );
        }
        let acked = futures::future::join_all(ids.iter().map(|id| smsc.hub.deliver(receipt_for(id))));
        let acked = tokio::spawn(acked);
        for _ in &ids {
            within("a receipt to reach the sink", arrivals.recv()).await;
        }
        sink.gate.add_permits(ids.len());
        let late = within("the submit behind the answers", client.submit(code_sms("r99"))).await;
        assert!(late.is_ok(), "{late:?}");
        let acked = within("the receipts' answers", acked).await.unwrap();
        assert!(acked.iter().all(|a| *a == Ok(true)), "{acked:?}");
        trigger.fire();
        within("client to stop", client.stopped()).await;
        smsc.stop().await;
    }

    /// rusmppc 0.4.0, told to close while the SMSC read nothing, polled
    /// the blocked socket in a loop instead of waiting for it: an OTP core
    /// stopping in front of a stalled SMSC spun a CPU, and on a one-thread
    /// runtime nothing else ran again. vendor/rusmppc has the fix. The
    /// client runs on a one-thread runtime of its own, so that a spin shows
    /// as a step that never comes.
    #[test]
    fn closing_in_front_of_an_smsc_that_reads_nothing_waits_instead_of_spinning() {
        let (steps, progress) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // 64 bytes of room: the submit below fills it.
                let (ours, mut smsc) = tokio::io::duplex(64);
                let (client, _events) = ConnectionBuilder::new().no_enquire_link_interval().connected(ours);
                let sender = client.clone();
                let submit = SubmitSm::builder()
                    .short_message(OctetString::from_vec(vec![b'x'; 200]).unwrap())
                    .build();
                tokio::spawn(async move { sender.no_wait().submit_sm(submit).await });
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                client.close().await.unwrap();
                tokio::task::yield_now().await;
                let _ = steps.send("the runtime runs other tasks while the connection closes");
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while tokio::io::AsyncReadExt::read(&mut smsc, &mut buf)
                        .await
                        .is_ok_and(|n| n > 0)
                    {}
                });
                client.closed().await;
                let _ = steps.send("closed once the SMSC read");
            });
        });
        for step in [
            "the runtime runs other tasks while the connection closes",
            "closed once the SMSC read",
        ] {
            assert_eq!(progress.recv_timeout(Duration::from_secs(10)), Ok(step));
        }
    }

    /// An SMSC that takes one submission at a time answers the rest of a
    /// burst ESME_RTHROTTLED: the client's window keeps them waiting
    /// instead, so no OTP fails for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_waits_for_the_window_instead_of_being_throttled() {
        let smsc = TestSmsc::start_with("127.0.0.1:0".parse().unwrap(), |c| c.submit_window = 1).await;
        let (tx, _receipts) = mpsc::unbounded_channel();
        let (trigger, shutdown) = crate::shutdown::channel();
        let narrow = SmsClientConfig {
            window: 1,
            ..config(smsc.addr)
        };
        let client = within("start", SmsClient::start(narrow, Arc::new(ChannelSink(tx)), shutdown))
            .await
            .unwrap();
        let burst = (0..32).map(|n| client.submit(code_sms(&format!("r{n}"))));
        let answers = within("the burst", futures::future::join_all(burst)).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        trigger.fire();
        within("client to stop", client.stopped()).await;
        smsc.stop().await;
    }

    #[test]
    fn reads_receipts_without_tlvs_and_skips_other_messages() {
        let mut deliver = DeliverSm::builder()
            .esm_class(EsmClass::from(0x04))
            .short_message(
                OctetString::from_static_slice(b"id:abc sub:001 dlvrd:001 submit date:2601010000 done date:2601010001 stat:DELIVRD err:000 text:hi")
                    .unwrap(),
            )
            .build();
        let receipt = read_receipt(&deliver).unwrap();
        assert_eq!((receipt.message_id.as_str(), receipt.stat.as_str()), ("abc", "DELIVRD"));
        assert_eq!(receipt.message_state, None);
        deliver = DeliverSm::builder()
            .short_message(OctetString::from_static_slice(b"hello from a phone").unwrap())
            .build();
        assert_eq!(read_receipt(&deliver), None);
    }

    #[test]
    fn sender_addresses() {
        assert_eq!(
            source_address("03-5460-0124"),
            (Ton::National, Npi::Isdn, "0354600124".into())
        );
        assert_eq!(
            source_address("+81354600124"),
            (Ton::International, Npi::Isdn, "81354600124".into())
        );
        assert_eq!(
            source_address("OTPGATE"),
            (Ton::Alphanumeric, Npi::Unknown, "OTPGATE".into())
        );
    }
}

//! An ESME for the integration tests, built on rusmppc and rusmpp rather
//! than on otpgate's own SMPP code: it binds to the server's SMSC, submits
//! (splitting long texts into UDH parts itself), reads delivery receipts off
//! its event stream and answers them. `query_sm` and `cancel_sm`, which
//! rusmppc does not offer, go over a second connection framed with rusmpp's
//! own codec.
//!
//! Nothing here sleeps: every wait is on a socket or the event stream, under
//! a real-time timeout, while the test moves the virtual clock.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use rusmpp::pdus::{BindReceiver, BindTransceiver, BindTransmitter, CancelSm, DeliverSmResp, QuerySm, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::{COctetString, EmptyOrFullCOctetString, OctetString};
use rusmpp::values::{DataCoding, DestAddress, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, SmeAddress, Ton};
use rusmpp::{Command, CommandStatus, Pdu};
use rusmppc::{ConnectionBuilder, Event};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// The sender profile's number as an ESME submits it.
pub const SENDER: &str = "0354600124";

/// How long any one answer or receipt may take in real time.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`], naming what timed out.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Transmitter,
    Receiver,
    Transceiver,
}

/// A message to submit. Built with [`sms`] and adjusted with its setters.
#[derive(Debug, Clone)]
pub struct Sms {
    pub to: String,
    pub from: String,
    pub text: String,
    pub registered_delivery: u8,
    pub validity_period: Option<String>,
    pub schedule_delivery_time: Option<String>,
    /// The UDH reference of a long message.
    pub reference: u8,
}

/// A message to `to` (national, e.g. `09011110001`) from [`SENDER`],
/// asking for a receipt whatever happens.
pub fn sms(to: &str, text: &str) -> Sms {
    Sms {
        to: to.to_string(),
        from: SENDER.to_string(),
        text: text.to_string(),
        registered_delivery: 1,
        validity_period: None,
        schedule_delivery_time: None,
        reference: 42,
    }
}

impl Sms {
    pub fn registered_delivery(mut self, value: u8) -> Sms {
        self.registered_delivery = value;
        self
    }

    /// An SMPP time, e.g. `000000001000000R` for ten minutes.
    pub fn validity(mut self, period: &str) -> Sms {
        self.validity_period = Some(period.to_string());
        self
    }

    /// An SMPP time, e.g. `000000000500000R` for in five minutes.
    pub fn scheduled(mut self, at: &str) -> Sms {
        self.schedule_delivery_time = Some(at.to_string());
        self
    }

    pub fn from(mut self, source: &str) -> Sms {
        self.from = source.to_string();
        self
    }

    /// The submit_sm PDUs: one for a short text; for a long one, UCS-2 (or
    /// IA5) parts of 67 (or 153) characters behind a concatenation UDH,
    /// written here rather than by the server's code.
    pub fn pdus(&self) -> Vec<SubmitSm> {
        let ascii = self.text.is_ascii();
        let (data_coding, unit) = if ascii { (1u8, 153) } else { (8u8, 67) };
        let single = if ascii { 160 } else { 70 };
        let encode = |chars: &[char]| -> Vec<u8> {
            let s: String = chars.iter().collect();
            if ascii {
                s.into_bytes()
            } else {
                s.encode_utf16().flat_map(u16::to_be_bytes).collect()
            }
        };
        let chars: Vec<char> = self.text.chars().collect();
        if chars.len() <= single {
            return vec![self.pdu(data_coding, 0, encode(&chars))];
        }
        let parts: Vec<&[char]> = chars.chunks(unit).collect();
        let total = parts.len() as u8;
        parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let mut body = vec![0x05, 0x00, 0x03, self.reference, total, i as u8 + 1];
                body.extend(encode(part));
                self.pdu(data_coding, 0x40, body)
            })
            .collect()
    }

    fn pdu(&self, data_coding: u8, esm_class: u8, body: Vec<u8>) -> SubmitSm {
        let validity = self.validity_period.as_deref().unwrap_or("");
        let scheduled = self.schedule_delivery_time.as_deref().unwrap_or("");
        SubmitSm::builder()
            .source_addr_ton(Ton::National)
            .source_addr_npi(Npi::Isdn)
            .source_addr(COctetString::from_str(&self.from).expect("source address"))
            .dest_addr_ton(Ton::National)
            .dest_addr_npi(Npi::Isdn)
            .destination_addr(COctetString::from_str(&self.to).expect("destination address"))
            .esm_class(EsmClass::from(esm_class))
            .validity_period(EmptyOrFullCOctetString::from_str(validity).expect("validity period"))
            .schedule_delivery_time(EmptyOrFullCOctetString::from_str(scheduled).expect("schedule"))
            .registered_delivery(RegisteredDelivery::from(self.registered_delivery))
            .data_coding(DataCoding::from(data_coding))
            .short_message(OctetString::from_vec(body).expect("short message"))
            .build()
    }
}

/// A delivery receipt as the ESME read it off a deliver_sm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    pub esm_class: u8,
    /// The receipt's source: the original destination.
    pub source_addr: String,
    pub dest_addr: String,
    /// The whole receipt text.
    pub text: String,
    /// The text's `id:`, `stat:`, `err:`, `submit date:` and `done date:`.
    pub id: String,
    pub stat: String,
    pub err: String,
    pub submit_date: String,
    pub done_date: String,
    /// The TLVs.
    pub receipted_message_id: Option<String>,
    pub message_state: Option<u8>,
    pub network_error_code: Option<(u8, u16)>,
}

impl DeliveryReceipt {
    /// `stat err:NNN state:S nec:T/C` (`nec:-` without the TLV): what a
    /// test compares, in one line.
    pub fn summary(&self) -> String {
        let nec = match self.network_error_code {
            Some((network, code)) => format!("{network}/{code}"),
            None => "-".to_string(),
        };
        let state = self.message_state.map_or("-".to_string(), |s| s.to_string());
        format!("{} err:{} state:{state} nec:{nec}", self.stat, self.err)
    }

    pub fn read(deliver: &rusmpp::pdus::DeliverSm) -> DeliveryReceipt {
        let text = String::from_utf8_lossy(deliver.short_message().as_ref()).into_owned();
        // Fields before `text:`, which quotes the message and may contain anything.
        let head = text.split(" text:").next().unwrap_or("");
        let field = |key: &str| -> String {
            head.split(&format!("{key}:"))
                .nth(1)
                .map(|rest| rest.split(' ').next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let field_with_space = |key: &str| -> String {
            head.split(&format!("{key}:"))
                .nth(1)
                .map(|rest| rest.chars().take(10).collect())
                .unwrap_or_default()
        };
        let mut receipt = DeliveryReceipt {
            esm_class: u8::from(deliver.esm_class),
            source_addr: deliver.source_addr.as_str().to_string(),
            dest_addr: deliver.destination_addr.as_str().to_string(),
            id: field("id"),
            stat: field("stat"),
            err: field("err"),
            submit_date: field_with_space("submit date"),
            done_date: field_with_space("done date"),
            text,
            receipted_message_id: None,
            message_state: None,
            network_error_code: None,
        };
        for tlv in deliver.tlvs() {
            match tlv.value() {
                Some(TlvValue::ReceiptedMessageId(id)) => receipt.receipted_message_id = Some(id.as_str().to_string()),
                Some(TlvValue::MessageState(state)) => receipt.message_state = Some(u8::from(*state)),
                Some(TlvValue::NetworkErrorCode(code)) => {
                    receipt.network_error_code = Some((u8::from(code.network_type), code.error_code))
                }
                _ => {}
            }
        }
        receipt
    }
}

/// The `command_status` of a refused request.
pub fn refused_status(error: rusmppc::error::Error) -> u32 {
    match error {
        rusmppc::error::Error::UnexpectedResponse { response } => u32::from(response.status()),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// A bound ESME with its event stream.
pub struct Esme {
    pub addr: SocketAddr,
    pub system_id: String,
    pub password: String,
    pub client: rusmppc::Client,
    events: Box<dyn Stream<Item = Event> + Unpin + Send>,
}

/// Connects without binding.
pub async fn connect(addr: SocketAddr) -> (rusmppc::Client, Box<dyn Stream<Item = Event> + Unpin + Send>) {
    let stream = within("connect", TcpStream::connect(addr)).await.expect("connect smpp");
    over(stream)
}

/// A client over a connection already open (TLS, say), not bound.
pub fn over<S>(stream: S) -> (rusmppc::Client, Box<dyn Stream<Item = Event> + Unpin + Send>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (client, events) = ConnectionBuilder::new()
        .disable_interface_version_check()
        .no_enquire_link_interval()
        .response_timeout(WAIT)
        .connected(stream);
    (client, Box::new(events))
}

impl Esme {
    /// Binds with the default account `otpgate`/`otpgate`.
    pub async fn bind(addr: SocketAddr, kind: Bind) -> Esme {
        Esme::bind_as(addr, kind, "otpgate", "otpgate")
            .await
            .unwrap_or_else(|status| panic!("bind refused: 0x{status:08X}"))
    }

    /// Binds with an account, or answers the refusal's command_status.
    pub async fn bind_as(addr: SocketAddr, kind: Bind, system_id: &str, password: &str) -> Result<Esme, u32> {
        Esme::bind_over(connect(addr).await, addr, kind, system_id, password).await
    }

    /// Binds over a client from [`over`] (`addr`: where a second,
    /// plain connection for `query_sm` and `cancel_sm` goes).
    pub async fn bind_over(
        (client, events): (rusmppc::Client, Box<dyn Stream<Item = Event> + Unpin + Send>),
        addr: SocketAddr,
        kind: Bind,
        system_id: &str,
        password: &str,
    ) -> Result<Esme, u32> {
        let id = COctetString::from_str(system_id).expect("system_id");
        let pw = COctetString::from_str(password).expect("password");
        let version = InterfaceVersion::Smpp3_4;
        let answer = match kind {
            Bind::Transmitter => {
                let bind = BindTransmitter::builder()
                    .system_id(id)
                    .password(pw)
                    .interface_version(version)
                    .build();
                within("bind", client.bind_transmitter(bind)).await.map(|_| ())
            }
            Bind::Receiver => {
                let bind = BindReceiver::builder()
                    .system_id(id)
                    .password(pw)
                    .interface_version(version)
                    .build();
                within("bind", client.bind_receiver(bind)).await.map(|_| ())
            }
            Bind::Transceiver => {
                let bind = BindTransceiver::builder()
                    .system_id(id)
                    .password(pw)
                    .interface_version(version)
                    .build();
                within("bind", client.bind_transceiver(bind)).await.map(|_| ())
            }
        };
        match answer {
            Ok(()) => Ok(Esme {
                addr,
                system_id: system_id.to_string(),
                password: password.to_string(),
                client,
                events,
            }),
            Err(error) => {
                let status = refused_status(error);
                let _ = within("close", client.close_and_wait()).await;
                Err(status)
            }
        }
    }

    /// Submits every part in order; answers each part's message id, or the
    /// first refusal's command_status.
    pub async fn submit_parts(&self, sms: &Sms) -> Result<Vec<String>, u32> {
        self.submit_pdus(sms.pdus()).await
    }

    /// Submits these PDUs in this order; answers each one's message id, or
    /// the first refusal's command_status.
    pub async fn submit_pdus(&self, pdus: Vec<SubmitSm>) -> Result<Vec<String>, u32> {
        let mut ids = Vec::new();
        for pdu in pdus {
            match within("submit_sm_resp", self.client.submit_sm(pdu)).await {
                Ok(resp) => ids.push(resp.message_id().as_str().to_string()),
                Err(error) => return Err(refused_status(error)),
            }
        }
        Ok(ids)
    }

    /// Submits; answers the message id (the last part's for a long text),
    /// or the refusal's command_status.
    pub async fn submit(&self, sms: &Sms) -> Result<String, u32> {
        let ids = self.submit_parts(sms).await?;
        Ok(ids.last().cloned().unwrap_or_default())
    }

    /// Submits and expects success.
    pub async fn send(&self, sms: &Sms) -> String {
        self.submit(sms)
            .await
            .unwrap_or_else(|status| panic!("submit refused: 0x{status:08X}"))
    }

    /// The next delivery receipt, answered with deliver_sm_resp OK.
    pub async fn receipt(&mut self) -> DeliveryReceipt {
        loop {
            let event = within("a deliver_sm receipt", self.events.next())
                .await
                .expect("the connection closed before a receipt");
            let Event::Incoming(command) = event else {
                continue;
            };
            let seq = command.sequence_number();
            let Some(Pdu::DeliverSm(deliver)) = command.pdu() else {
                continue;
            };
            let receipt = DeliveryReceipt::read(deliver);
            let resp = DeliverSmResp::new(COctetString::empty(), vec![]);
            within("deliver_sm_resp", self.client.deliver_sm_resp(seq, resp))
                .await
                .expect("deliver_sm_resp sent");
            return receipt;
        }
    }

    /// `query_sm` for a message of this account: (message_state, error_code,
    /// final_date) or the refusal's command_status.
    pub async fn query(&self, message_id: &str) -> Result<(u8, u8, String), u32> {
        let pdu = QuerySm::builder()
            .message_id(COctetString::from_str(message_id).expect("message id"))
            .source_addr(COctetString::from_str(SENDER).expect("source"))
            .build();
        let answer = self.side_call(pdu).await;
        match answer.pdu() {
            Some(Pdu::QuerySmResp(resp)) if answer.status() == CommandStatus::EsmeRok => Ok((
                u8::from(resp.message_state),
                resp.error_code,
                resp.final_date.as_str().to_string(),
            )),
            _ => Err(u32::from(answer.status())),
        }
    }

    /// `cancel_sm` for a message of this account: the command_status.
    pub async fn cancel(&self, message_id: &str) -> u32 {
        let pdu = CancelSm::builder()
            .message_id(COctetString::from_str(message_id).expect("message id"))
            .source_addr(COctetString::from_str(SENDER).expect("source"))
            .build();
        u32::from(self.side_call(pdu).await.status())
    }

    /// One request over a fresh transmitter bind of the same account,
    /// framed with rusmpp's codec.
    async fn side_call(&self, pdu: impl Into<Pdu>) -> Command {
        let stream = within("connect", TcpStream::connect(self.addr)).await.expect("connect");
        let mut conn = Framed::new(stream, CommandCodec::new());
        let bind = BindTransmitter::builder()
            .system_id(COctetString::from_str(&self.system_id).expect("system_id"))
            .password(COctetString::from_str(&self.password).expect("password"))
            .interface_version(InterfaceVersion::Smpp3_4)
            .build();
        let bound = raw_call(&mut conn, 1, bind).await;
        assert_eq!(bound.status(), CommandStatus::EsmeRok, "side bind");
        let answer = raw_call(&mut conn, 2, pdu).await;
        let _ = raw_call(&mut conn, 3, Pdu::Unbind).await;
        answer
    }

    /// Unbinds and waits for the SMSC to close the connection: the client's
    /// events end when it reads the end of the stream. (Waiting instead for
    /// the client's own close timed out twice under a loaded `cargo test`,
    /// after the unbind_resp had come; it also passed if the SMSC never
    /// closed.)
    pub async fn unbind(mut self) {
        within("unbind_resp", self.client.unbind()).await.expect("unbind");
        within("the SMSC to close the connection", async {
            while self.events.next().await.is_some() {}
        })
        .await;
    }

    /// Closes the connection without unbinding.
    pub async fn hang_up(self) {
        let _ = within("close", self.client.close_and_wait()).await;
    }
}

/// A connection framed with rusmpp's codec, for PDUs rusmppc does not send.
pub type RawConn = Framed<TcpStream, CommandCodec>;

/// A raw connection bound as a transceiver with the default account
/// (sequence number 1).
pub async fn raw_transceiver(addr: SocketAddr) -> RawConn {
    raw_transceiver_as(addr, "otpgate", "otpgate").await
}

/// A raw connection bound as a transceiver with this account.
pub async fn raw_transceiver_as(addr: SocketAddr, system_id: &str, password: &str) -> RawConn {
    let stream = within("connect", TcpStream::connect(addr)).await.expect("connect");
    let mut conn = Framed::new(stream, CommandCodec::new());
    let bind = transceiver_bind(system_id, password);
    assert_eq!(raw_call(&mut conn, 1, bind).await.status(), CommandStatus::EsmeRok);
    conn
}

/// A `bind_transceiver` for SMPP 3.4 with this account.
pub fn transceiver_bind(system_id: &str, password: &str) -> BindTransceiver {
    BindTransceiver::builder()
        .system_id(COctetString::from_str(system_id).expect("system_id"))
        .password(COctetString::from_str(password).expect("password"))
        .interface_version(InterfaceVersion::Smpp3_4)
        .build()
}

/// The next receipt on a raw connection, answered.
pub async fn raw_receipt(conn: &mut RawConn) -> DeliveryReceipt {
    loop {
        let command = within("a receipt", conn.next()).await.expect("open").expect("a PDU");
        if let Some(Pdu::DeliverSm(deliver)) = command.pdu() {
            let receipt = DeliveryReceipt::read(deliver);
            let ok = DeliverSmResp::new(COctetString::empty(), vec![]);
            let answer = Command::new(CommandStatus::EsmeRok, command.sequence_number(), ok);
            within("deliver_sm_resp", conn.send(answer))
                .await
                .expect("deliver_sm_resp");
            return receipt;
        }
    }
}

/// A `submit_multi` destination: a national number.
pub fn sme(number: &str) -> DestAddress {
    let addr = COctetString::from_str(number).expect("an address");
    DestAddress::SmeAddress(SmeAddress::new(Ton::National, Npi::Isdn, addr))
}

/// A `submit_multi` of `text` from `source` to `numbers`, sent as `seq`:
/// its answer.
pub async fn raw_submit_multi(conn: &mut RawConn, seq: u32, source: &str, numbers: &[&str], text: &str) -> Command {
    raw_call(conn, seq, submit_multi(source, numbers, text)).await
}

/// A `submit_multi` of `text` from `source` to `numbers`, no receipt asked.
pub fn submit_multi(source: &str, numbers: &[&str], text: &str) -> rusmpp::pdus::SubmitMulti {
    rusmpp::pdus::SubmitMulti::builder()
        .source_addr(COctetString::from_str(source).expect("source"))
        .dest_address(numbers.iter().map(|n| sme(n)).collect())
        .short_message(rusmpp::types::OctetString::from_str(text).expect("text"))
        .build()
}

/// The id a `submit_multi_resp` gave.
pub fn multi_id(answer: &Command) -> String {
    match answer.pdu() {
        Some(Pdu::SubmitMultiResp(resp)) if answer.status() == CommandStatus::EsmeRok => {
            resp.message_id.as_str().to_string()
        }
        _ => panic!("submit_multi_resp OK expected: {answer:?}"),
    }
}

/// One request and its answer over a connection framed with rusmpp's codec.
pub async fn raw_call(conn: &mut RawConn, seq: u32, pdu: impl Into<Pdu>) -> Command {
    within("send", conn.send(Command::new(CommandStatus::EsmeRok, seq, pdu)))
        .await
        .expect("send a PDU");
    loop {
        match within("an answer", conn.next()).await {
            Some(Ok(command)) if command.sequence_number() == seq => return command,
            Some(Ok(_)) => continue,
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}
